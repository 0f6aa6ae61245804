"""Web pages and viewer data of ``medhub serve`` (medhub.serve.web, medhub.serve.viewer_data).

The jobs here are made the way the worker makes them: the real CT series (and a real NIfTI CT)
in ``DATA/jobs/<id>/input`` and the pipeline's output in ``.../output``, with the ct-body model
(thresholds, no weights, seconds). The app is the real one (:func:`medhub.serve.app.create_app`),
driven in-process without its worker pool: these tests are about what the pages and the viewer
endpoints serve, the browser test runs whole jobs.
"""

from __future__ import annotations

import gzip
import json
import re
import shutil
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

fastapi = pytest.importorskip("fastapi", reason="medhub serve needs fastapi (pip install 'medhub[serve]')")
from conftest import shared_path  # noqa: E402
from fastapi.testclient import TestClient  # noqa: E402

from medhub.data.volume import Volume  # noqa: E402
from medhub.errors import MedhubError  # noqa: E402
from medhub.serve import viewer_data  # noqa: E402
from medhub.serve.app import create_app  # noqa: E402
from medhub.serve.settings import ServeSettings  # noqa: E402

CT_SERIES = "ct/totalsegmentator_example_ct_dicom"
CT_NIFTI = "ct/totalsegmentator_nifti/example_ct_sm.nii.gz"
DICOM_JOB = "a" * 32
NIFTI_JOB = "b" * 32
TOKEN = "s3cret-token"


def _run_job(data_dir: Path, job_id: str, source: Path) -> Path:
    """Lay out one finished ct-body job as the worker does: input/ (uploaded files) and output/."""
    from medhub.hub.catalog import get_model
    from medhub.hub.workflow import load_workflow_file
    from medhub.pipeline.run import RunOptions, run

    job = data_dir / "jobs" / job_id
    if source.is_dir():
        shutil.copytree(source, job / "input" / source.name)
        input_path = job / "input"
    else:
        (job / "input").mkdir(parents=True)
        input_path = job / "input" / source.name
        shutil.copy(source, input_path)
    entry = get_model("ct-body")
    workflow = load_workflow_file(entry.workflow("default"))
    workflow.execute.append("write_nifti")  # as the service does: the viewer needs NIfTI labels
    run(entry, RunOptions(input_path=input_path, output_dir=job / "output", workflow=workflow))
    return job


@pytest.fixture(scope="session")
def data_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    ct, nifti = shared_path(CT_SERIES), shared_path(CT_NIFTI)
    root = tmp_path_factory.mktemp("serve-web")
    _run_job(root, DICOM_JOB, ct)
    _run_job(root, NIFTI_JOB, nifti)
    return root


@pytest.fixture(scope="session")
def client(data_dir: Path) -> TestClient:
    return TestClient(create_app(ServeSettings(data_dir=data_dir)))


@pytest.fixture(scope="session")
def token_client(data_dir: Path) -> TestClient:
    return TestClient(create_app(ServeSettings(data_dir=data_dir, token=TOKEN)))


def _series(data_dir: Path, job_id: str) -> str:
    (folder,) = [p.name for p in (data_dir / "jobs" / job_id / "output").iterdir() if p.is_dir()]
    return folder


def _report(data_dir: Path, job_id: str) -> dict:
    return json.loads((data_dir / "jobs" / job_id / "output" / "medhub-report.json").read_text())


def _visible_cards(html: str) -> dict[str, bool]:
    """Model id → shown (the catalog marks filtered-out cards ``hidden``)."""
    cards = re.findall(r'<article class="card model-card" id="model-([a-z0-9-]+)"[^>]*?( hidden)?>', html, re.S)
    return {name: not hidden for name, hidden in cards}


# ----------------------------------------------------------------------------------- pages


def test_catalog_lists_every_model_and_filters_by_query(client: TestClient) -> None:
    from medhub.hub.catalog import find_models, list_models

    page = client.get("/")
    assert page.status_code == 200 and "text/html" in page.headers["content-type"]
    shown = _visible_cards(page.text)
    assert set(shown) == {card.id for card in list_models()} and all(shown.values())
    assert "/static/catalog.js" in page.text and 'data-filter="modality"' in page.text

    filtered = _visible_cards(client.get("/", params={"modality": "CT"}).text)
    assert {name for name, on in filtered.items() if on} == {card.id for card in find_models(modality="CT")}
    assert filtered["ct-body"] and not filtered["deepbet"]
    # an alias the cards do not spell out (BRAIN finds HEAD models) gives the same answer as `medhub models`
    brain = _visible_cards(client.get("/", params={"body_part": "brain", "task": "segmentation"}).text)
    expected = {card.id for card in find_models(body_part="brain", task="segmentation")}
    assert {name for name, on in brain.items() if on} == expected and "deepbet" in expected


def test_catalog_cards_carry_the_facets_the_page_filters_on(client: TestClient) -> None:
    """The page's JS filters on data attributes; they must agree with catalog.matches for each offered value."""
    html = client.get("/").text
    card = re.search(r'<article[^>]*id="model-ct-body"[^>]*>', html, re.S).group(0)
    assert 'data-modality="CT"' in card
    assert "CHEST" in re.search(r'data-body_part="([^"]*)"', card).group(1).split()
    assert "segmentation" in re.search(r'data-task="([^"]*)"', card).group(1).split()
    deepbet = re.search(r'<article[^>]*id="model-deepbet"[^>]*>', html, re.S).group(0)
    assert 'data-modality="MR"' in deepbet


def test_model_page_shows_card_citation_licences_segments_and_commands(client: TestClient) -> None:
    from medhub.hub.catalog import get_model
    from medhub.segdb import get_segment

    card = get_model("ct-body").card
    page = client.get("/models/ct-body")
    assert page.status_code == 200
    text = page.text
    assert card.title in text and card.citation in text
    assert card.licence.code in text and card.licence.weights in text
    for label, segment_id in card.outputs.segments.items():
        spec = get_segment(segment_id)
        row = re.search(rf'<tr data-label="{label}">.*?</tr>', text, re.S).group(0)
        assert spec.name in row and f"rgb({','.join(str(c) for c in spec.color)})" in row and spec.type.value in row
    assert "medhub run ct-body --input" in text
    assert 'Authorization: Bearer $MEDHUB_TOKEN' in text and "-F model=ct-body" in text
    assert "http://testserver/api/jobs" in text
    assert "rtstruct" in text  # the second workflow is listed


def test_unknown_model_and_bad_job_id_are_404_pages(client: TestClient) -> None:
    page = client.get("/models/no-such-model")
    assert page.status_code == 404 and "unknown model" in page.text
    assert client.get("/jobs/..%2F..%2Fetc").status_code == 404


def test_try_page_offers_every_model_with_its_workflows(client: TestClient) -> None:
    from medhub.hub.catalog import list_entries

    page = client.get("/try", params={"model": "ct-body"})
    assert page.status_code == 200
    assert 'webkitdirectory' in page.text and 'id="files-input"' in page.text
    data = json.loads(re.search(r'<script type="application/json" id="models-data">(.*?)</script>',
                                page.text, re.S).group(1))
    assert {m["id"]: sorted(m["workflows"]) for m in data} == {e.id: sorted(e.workflows) for e in list_entries()}
    assert re.search(r'<option value="ct-body" selected>', page.text)


def test_job_page_is_a_shell_without_token(token_client: TestClient) -> None:
    page = token_client.get(f"/jobs/{DICOM_JOB}")
    assert page.status_code == 200 and DICOM_JOB in page.text
    for plane in ("axial", "coronal", "sagittal"):
        assert f'id="{plane}-canvas"' in page.text
    assert token_client.get("/static/viewer.js").status_code == 200


# ----------------------------------------------------------------------------------- viewer data


def _arrays(client: TestClient, job_id: str, series: str, **kwargs: object) -> tuple[dict, np.ndarray, np.ndarray]:
    base = f"/api/jobs/{job_id}/viewer/{series}"
    meta = client.get(f"{base}/meta", **kwargs)
    assert meta.status_code == 200, meta.text
    meta = meta.json()
    shape = tuple(meta["shape"])
    image = client.get(f"{base}/image.bin", **kwargs)
    labels = client.get(f"{base}/labels.bin", **kwargs)
    assert image.status_code == labels.status_code == 200
    image = np.frombuffer(image.content, dtype="<i2").reshape(shape, order="F")
    labels = np.frombuffer(labels.content, dtype=np.uint8).reshape(shape, order="F")
    return meta, image, labels


def test_viewer_serves_the_dicom_input_and_its_labels(client: TestClient, data_dir: Path) -> None:
    """The arrays are the series' voxels in HU and the job's label NIfTI, voxel for voxel."""
    from medhub.inputs.load import load_series
    from medhub.inputs.scan import scan

    series = _series(data_dir, DICOM_JOB)
    meta, image, labels = _arrays(client, DICOM_JOB, series)
    (found,) = scan(data_dir / "jobs" / DICOM_JOB / "input").series
    volume = load_series(found)
    assert meta["shape"] == list(volume.array.shape) == [512, 512, 20]
    assert meta["spacing"] == pytest.approx(list(volume.spacing), abs=1e-4)
    assert meta["orientation"] == "LPS" and meta["modality"] == "CT" and meta["subsample"] == 1
    assert np.array_equal(image, volume.array.astype(np.int16))  # this series is stored L, P, S already
    stored = nib.load(data_dir / "jobs" / DICOM_JOB / "output" / series / "ct-body.nii.gz")
    ras = np.asarray(nib.as_closest_canonical(stored).dataobj)
    assert np.array_equal(labels, ras[::-1, ::-1, :])  # RAS → LPS: flip x and y
    assert meta["window"] == [-160.0, 240.0] and "lung" in meta["window_presets"]


def test_segment_volumes_agree_with_the_models_report(client: TestClient, data_dir: Path) -> None:
    """ct-body reports body volume including bone; the viewer's per-label volumes add up to it."""
    meta = client.get(f"/api/jobs/{DICOM_JOB}/viewer/{_series(data_dir, DICOM_JOB)}/meta").json()
    values = _report(data_dir, DICOM_JOB)["series"][0]["values"]
    volumes = meta["volumes_ml"]
    assert volumes["BONE"] == pytest.approx(values["bone_volume_ml"], abs=0.01)
    total = volumes["BODY"] + volumes["BONE"] + volumes["LEFT_LUNG"] + volumes["RIGHT_LUNG"] + volumes["LUNG"]
    assert total == pytest.approx(values["body_volume_ml"], abs=0.05)
    body = next(s for s in meta["segments"] if s["id"] == "BODY")
    assert body["label"] == 1 and body["name"] == "Body" and len(body["color"]) == 3 and body["voxels"] > 0


def test_viewer_reorients_a_ras_nifti_job_to_lps(client: TestClient, data_dir: Path) -> None:
    """A NIfTI stored R, A, S is shown L, P, S: image and labels flipped alike, nothing else changed."""
    source = nib.load(shared_path(CT_NIFTI))
    assert nib.aff2axcodes(source.affine) == ("R", "A", "S")
    series = _series(data_dir, NIFTI_JOB)
    assert series == "example_ct_sm"
    meta, image, labels = _arrays(client, NIFTI_JOB, series)
    assert np.array_equal(image, np.asarray(source.dataobj)[::-1, ::-1, :])
    written = nib.load(data_dir / "jobs" / NIFTI_JOB / "output" / series / "ct-body.nii.gz")
    assert np.array_equal(labels, np.asarray(written.dataobj)[::-1, ::-1, :])
    assert meta["spacing"] == pytest.approx([3.0, 3.0, 3.0])
    assert meta["affine_lps"][0][0] > 0 and meta["affine_lps"][1][1] > 0  # axes now point to L and P
    assert labels.any() and meta["modality"] == ""  # CT recognised from its values: presets offered
    assert "soft tissue" in meta["window_presets"]


def test_binary_data_is_sent_gzip_encoded_or_plain(client: TestClient, data_dir: Path) -> None:
    base = f"/api/jobs/{DICOM_JOB}/viewer/{_series(data_dir, DICOM_JOB)}"
    encoded = client.get(f"{base}/image.bin", headers={"Accept-Encoding": "gzip"})
    plain = client.get(f"{base}/image.bin", headers={"Accept-Encoding": "identity"})
    assert encoded.headers["content-encoding"] == "gzip"
    assert "content-encoding" not in plain.headers
    assert int(encoded.headers["content-length"]) < len(plain.content) == 512 * 512 * 20 * 2
    assert encoded.content == plain.content  # the client inflated it


def test_viewer_endpoints_need_the_token(token_client: TestClient, data_dir: Path) -> None:
    base = f"/api/jobs/{DICOM_JOB}/viewer/{_series(data_dir, DICOM_JOB)}"
    assert token_client.get(f"{base}/meta").status_code == 401
    assert token_client.get(f"{base}/labels.bin", params={"token": "wrong"}).status_code == 401
    assert token_client.get(f"{base}/meta", headers={"Authorization": f"Bearer {TOKEN}"}).status_code == 200
    assert token_client.get(f"{base}/labels.bin", params={"token": TOKEN}).status_code == 200


@pytest.mark.parametrize("job_id, series", [
    ("c" * 32, "x"),  # no such job
    (DICOM_JOB, "no-such-series"),
    (DICOM_JOB, ".."),
    (DICOM_JOB, "%2E%2E"),
    ("..", "jobs"),
])
def test_unknown_jobs_and_series_are_404_with_a_message(client: TestClient, job_id: str, series: str) -> None:
    response = client.get(f"/api/jobs/{job_id}/viewer/{series}/meta")
    assert response.status_code == 404
    assert response.json()["detail"]


def test_cache_is_reused_and_rebuilt_when_the_labels_change(client: TestClient, data_dir: Path) -> None:
    series = _series(data_dir, NIFTI_JOB)
    job = data_dir / "jobs" / NIFTI_JOB
    files = viewer_data.viewer_files(job, series)
    before = files.meta.stat().st_mtime_ns
    assert viewer_data.viewer_files(job, series).meta.stat().st_mtime_ns == before
    label_file = job / "output" / series / "ct-body.nii.gz"
    original = label_file.read_bytes()
    try:
        image = nib.load(label_file)
        zeros = np.zeros(image.shape, dtype=np.uint8)
        nib.save(nib.Nifti1Image(zeros, image.affine), label_file)
        meta = client.get(f"/api/jobs/{NIFTI_JOB}/viewer/{series}/meta").json()
        assert all(s["voxels"] == 0 for s in meta["segments"])
    finally:
        label_file.write_bytes(original)
    assert client.get(f"/api/jobs/{NIFTI_JOB}/viewer/{series}/meta").json()["volumes_ml"]["BODY"] > 100


def test_labels_on_another_grid_are_refused(data_dir: Path, tmp_path: Path) -> None:
    """An overlay that does not fit the image must not be drawn: a clear 422, not a wrong picture."""
    job = tmp_path / "job"
    shutil.copytree(data_dir / "jobs" / NIFTI_JOB, job)
    series = _series(data_dir, NIFTI_JOB)
    label_file = job / "output" / series / "ct-body.nii.gz"
    image = nib.load(label_file)
    shifted = image.affine.copy()
    shifted[:3, 3] += 5.0
    nib.save(nib.Nifti1Image(np.asarray(image.dataobj), shifted), label_file)
    with pytest.raises(MedhubError, match="does not match the input volume"):
        viewer_data.viewer_files(job, series)


# ----------------------------------------------------------------------------------- array helpers


def _volume(shape: tuple[int, int, int], affine_lps: np.ndarray) -> Volume:
    rng = np.random.default_rng(0)
    return Volume(array=rng.integers(-1000, 1000, size=shape).astype(np.int16), affine_lps=affine_lps)


def test_any_voxel_order_gives_the_same_viewer_arrays() -> None:
    """The same patient space stored in permuted and flipped voxel orders looks identical in the viewer."""
    base = _volume((6, 5, 4), np.diag([0.8, 0.9, 2.5, 1.0]))
    labels = (base.array > 500).astype(np.uint8)
    reference = viewer_data.viewer_arrays(base, labels)
    # store it as (z, -x, y): axis 0 = S, axis 1 = R (flipped L), axis 2 = P
    array = np.transpose(base.array, (2, 0, 1))[:, ::-1, :]
    affine = np.zeros((4, 4))
    affine[2, 0] = 2.5
    affine[0, 1] = -0.8
    affine[1, 2] = 0.9
    affine[0, 3] = 0.8 * 5
    affine[3, 3] = 1
    other = Volume(array=np.ascontiguousarray(array), affine_lps=affine)
    other_labels = np.transpose(labels, (2, 0, 1))[:, ::-1, :]
    result = viewer_data.viewer_arrays(other, np.ascontiguousarray(other_labels))
    assert np.array_equal(result[1], reference[1]) and np.array_equal(result[2], reference[2])
    assert result[0]["spacing"] == reference[0]["spacing"] == [0.8, 0.9, 2.5]
    assert np.allclose(result[0]["affine_lps"], reference[0]["affine_lps"])


def test_large_images_are_subsampled_in_plane_but_volumes_use_every_voxel() -> None:
    volume = _volume((1100, 40, 3), np.diag([0.5, 0.5, 1.0, 1.0]))
    labels = np.zeros(volume.array.shape, dtype=np.uint8)
    labels[:7, :, :] = 4  # 7 columns: a stride of 3 keeps 3 of them
    meta, image, labels_out = viewer_data.viewer_arrays(volume, labels)
    assert meta["subsample"] == 3 and meta["shape"] == [367, 14, 3] and image.shape == labels_out.shape
    assert meta["spacing"] == [1.5, 1.5, 1.0]
    assert np.array_equal(image, volume.array[::3, ::3, :])
    label_four = next(s for s in meta["segments"] if s["label"] == 4)
    assert label_four["voxels"] == 7 * 40 * 3
    assert label_four["volume_ml"] == pytest.approx(7 * 40 * 3 * 0.25 / 1000, abs=1e-3)


def test_float_images_keep_their_values_through_the_int16_scale() -> None:
    """MR/PET arrays in floats are scaled into int16; value_scale maps them back within one step."""
    volume = Volume(array=np.linspace(0.0, 1.0, 4 * 4 * 4, dtype=np.float32).reshape(4, 4, 4),
                    affine_lps=np.eye(4), modality="MR")
    meta, image, _ = viewer_data.viewer_arrays(volume, np.zeros((4, 4, 4), dtype=np.uint8))
    slope, intercept = meta["value_scale"]
    assert np.allclose(image * slope + intercept, volume.array, atol=slope)
    assert "soft tissue" not in meta["window_presets"]  # MR: no CT windows
    low, high = meta["window"]
    assert -32768 <= low < high <= 32767


def test_gzip_files_hold_fortran_order(data_dir: Path) -> None:
    """The documented byte order: x fastest (checked on the cached file itself, not through the client)."""
    series = _series(data_dir, NIFTI_JOB)
    files = viewer_data.viewer_files(data_dir / "jobs" / NIFTI_JOB, series)
    meta = files.read_meta()
    raw = np.frombuffer(gzip.decompress(files.image.read_bytes()), dtype="<i2")
    source = np.asarray(nib.load(shared_path(CT_NIFTI)).dataobj)[::-1, ::-1, :]
    assert raw.size == np.prod(meta["shape"])
    assert raw[1] == source[1, 0, 0] and raw[meta["shape"][0]] == source[0, 1, 0]
