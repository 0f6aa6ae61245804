"""The three brainchop MeshNet models against brainchop itself (the PyPI package, tinygrad + niimath).

The oracle is brainchop 0.2.5's own code, run in subprocesses (see ``brainchop_oracle.py``):
its network alone on a crop, and its whole pipeline (``segment()``) on the full T1. The full
runs take many minutes for the larger models on one core, so they run in the background from
the start of the session and the tests that compare with them run last.

Weights come from ../shared/data/weights/brainchop through MEDHUB_WEIGHTS_MIRROR into a
temporary cache, exactly as a user without network would get them.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import highdicom as hd
import nibabel as nib
import numpy as np
import pytest
from brainchop_oracle import MODEL_FOLDERS, make_home, missing_tools
from conftest import make_sample_mirror, shared_path

from medhub.authoring.check import check_model
from medhub.errors import MedhubError
from medhub.hub.catalog import get_model
from medhub.hub.runtime import ModelRunner
from medhub.inputs.load import load_series
from medhub.inputs.sample import nifti_as_dicom
from medhub.inputs.scan import scan
from medhub.models import brainchop_common as bc
from medhub.segdb import get_segment

T1 = "mr/brainchop_t1_crop.nii.gz"
WEIGHTS = "weights/brainchop"
MODELS = MODEL_FOLDERS


def dice(a: np.ndarray, b: np.ndarray) -> float:
    total = int(a.sum()) + int(b.sum())
    return 1.0 if total == 0 else 2.0 * float(np.logical_and(a, b).sum()) / total


def dice_per_label(ours: np.ndarray, theirs: np.ndarray, labels: list[int]) -> dict[int, float]:
    return {label: dice(ours == label, theirs == label) for label in labels}


# --------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="session")
def weights_env(tmp_path_factory: pytest.TempPathFactory):
    """MEDHUB_WEIGHTS_MIRROR = the shared brainchop weights and the cards' sample T1, a fresh cache; restored after."""
    mirror = make_sample_mirror(tmp_path_factory.mktemp("mirror"))
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("MEDHUB_WEIGHTS_MIRROR", str(mirror))
        patch.setenv("MEDHUB_WEIGHTS_CACHE", str(tmp_path_factory.mktemp("weights-cache")))
        yield mirror


@pytest.fixture(scope="session")
def runners(weights_env) -> dict[str, bc.BrainchopRunner]:
    """Each model's runner, loaded once per session (loading is cheap; the networks are tiny)."""
    pytest.importorskip("torch")
    pytest.importorskip("safetensors")
    loaded = {}
    for model_id in MODELS:
        runner = ModelRunner(get_model(model_id))
        runner.load("cpu", {})
        loaded[model_id] = runner.runner
    return loaded


@pytest.fixture(scope="session")
def brainchop_home(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A HOME for the brainchop subprocess: an empty model listing so that importing it stays offline."""
    reason = missing_tools()
    if reason is not None:
        pytest.skip(reason)
    return make_home(tmp_path_factory.mktemp("brainchop-home"))


def run_brainchop(home: Path, script: str, *args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "HOME": str(home)}
    result = subprocess.run([sys.executable, "-c", textwrap.dedent(script), *args], capture_output=True, text=True,
                            env=env, timeout=1500)
    assert result.returncode == 0, result.stderr[-3000:]
    return result


ORACLE_NETWORK = """
    import sys, numpy as np
    from tinygrad import Tensor
    from brainchop.tiny_meshnet import load_meshnet
    model_dir, image, out = sys.argv[1:4]
    net = load_meshnet(model_dir + "/model.json", model_dir + "/model.pth")
    x = Tensor(np.load(image)[None, None])
    np.save(out, net(x).numpy()[0].astype(np.uint8))
"""


@pytest.fixture(scope="session")
def t1_series(tmp_path_factory: pytest.TempPathFactory):
    """brainchop's T1 written as a DICOM MR series, scanned and loaded back the way ``medhub run`` does."""
    image = nib.load(shared_path(T1))
    # the cards' sample, written as `medhub check` writes it (same bytes, same UIDs), so the check's SEG fits
    folder = nifti_as_dicom(shared_path(T1), tmp_path_factory.mktemp("t1-dicom"), modality="MR", body_part="HEAD")
    series = scan(folder).series
    assert len(series) == 1
    return folder, load_series(series[0]), image


def medhub_cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "medhub", *args], capture_output=True, text=True,
                          env={**os.environ, **(env or {})}, timeout=1500)


def seg_labels(seg_path: Path, volume, segments: dict[int, str]) -> np.ndarray:
    """The SEG read back with highdicom into a label map ``[x, y, z]`` of the card's label values."""
    seg = hd.seg.segread(seg_path)
    uids = [plane.dataset.SOPInstanceUID for plane in volume.source.planes]
    value_of = {s.segment_number: {v: k for k, v in segments.items()}[s.TrackingID] for s in seg.SegmentSequence}
    numbers = sorted(value_of)
    pixels = seg.get_pixels_by_source_instance(uids, segment_numbers=numbers, combine_segments=True, relabel=True)
    labels = np.zeros(pixels.shape, dtype=np.uint8)
    for index, number in enumerate(numbers, start=1):
        labels[pixels == index] = value_of[number]
    return labels.transpose(2, 1, 0)  # (slice, row, column) → [x=column, y=row, z=slice]


def on_volume_grid(labels: np.ndarray, affine_ras: np.ndarray, volume) -> np.ndarray:
    """A label map on brainchop's (NIfTI) grid, reoriented with nibabel onto the DICOM volume's grid.

    The two grids hold the same voxels (the T1 is already on its conformed 256^3 1 mm grid);
    only axis order and direction may differ (the loader orders slices along the normal).
    """
    transform = nib.orientations.ornt_transform(nib.io_orientation(affine_ras), nib.io_orientation(volume.affine_ras))
    moved = nib.orientations.apply_orientation(labels, transform)
    expected = affine_ras @ nib.orientations.inv_ornt_aff(transform, labels.shape)
    np.testing.assert_allclose(expected, volume.affine_ras, atol=1e-3)  # same voxel centres, same grid
    return moved


# --------------------------------------------------------------------------- cards, names, weights


@pytest.mark.parametrize("model_id", sorted(MODELS))
def test_card_weights_are_the_mirror_files_and_segments_are_in_the_database(model_id: str) -> None:
    card = get_model(model_id).card
    mirror = shared_path(WEIGHTS)
    assert card.weights, model_id
    for spec in card.weights:
        path = mirror / spec.name
        assert spec.url and spec.url.startswith("https://raw.githubusercontent.com/neuroneural/brainchop-models/")
        assert spec.url.endswith("/meshnet/" + spec.name)
        assert spec.size == path.stat().st_size, spec.name
        assert spec.sha256 == hashlib.sha256(path.read_bytes()).hexdigest(), spec.name
    for segment_id in card.outputs.segments.values():
        spec = get_segment(segment_id)
        assert spec.type.scheme == "SCT" and spec.type.value.isdigit(), segment_id


def test_subcortical_colormap_names_map_to_the_card_segments() -> None:
    named = bc.colormap_segments(shared_path(WEIGHTS) / "model18cls" / "colormap.json")
    assert named == get_model("brainchop-subcortical").card.outputs.segments
    assert len(named) == 17
    assert bc.freesurfer_to_segment_id("Left-Thalamus") == "LEFT_THALAMUS"
    assert bc.freesurfer_to_segment_id("Right-VentralDC") == "RIGHT_VENTRAL_DC"
    assert bc.freesurfer_to_segment_id("3rd-Ventricle") == "THIRD_VENTRICLE"


def test_weights_that_do_not_fit_the_config_name_the_files(tmp_path: Path) -> None:
    pytest.importorskip("torch")
    from medhub.models.nets.meshnet import load_meshnet

    mirror = shared_path(WEIGHTS)
    with pytest.raises(MedhubError, match=r"model18cls/model.pth does not fit .*model5_gw_ae/model.json"):
        load_meshnet(mirror / "model5_gw_ae" / "model.json", mirror / "model18cls" / "model.pth")
    junk = tmp_path / "model.pth"
    junk.write_bytes(b"not a checkpoint")
    with pytest.raises(MedhubError, match=r"model.pth: neither safetensors nor a torch state dict"):
        load_meshnet(mirror / "model5_gw_ae" / "model.json", junk)


# --------------------------------------------------------------------------- preprocessing and post-processing


def test_conform_reproduces_niimath_on_a_resampled_oblique_free_volume(tmp_path: Path) -> None:
    """niimath -conform (brainchop's step 1) on the T1 resampled to 1.1 x 1.3 x 1.6 mm RAS with float values.

    niimath is built with -ffast-math, so its last float bits may differ: at most one grey level
    on at most 1 voxel in 10^5.
    """
    niimath = shutil.which("niimath")
    if niimath is None:
        pytest.skip("niimath not installed (pip install niimath)")
    from nibabel.processing import resample_from_to

    image = nib.load(shared_path(T1))
    image = nib.Nifti1Image(np.asarray(image.dataobj).astype(np.float32) * 3.7 + 11, image.affine)
    affine = np.diag([1.1, 1.3, 1.6, 1.0])
    affine[:3, 3] = [-110.3, -125.7, -95.2]
    moved = resample_from_to(image, ((200, 190, 150), affine), order=1)
    path = tmp_path / "moved.nii"
    data = np.asarray(moved.dataobj, dtype=np.float32)
    nib.save(nib.Nifti1Image(data, affine), path)
    subprocess.run([niimath, str(path), "-conform", "-gz", "0", str(tmp_path / "ref.nii"), "-odt", "char"],
                   check=True, capture_output=True)
    reference = nib.load(tmp_path / "ref.nii")

    ours, ours_affine = bc.conform(data, affine)
    np.testing.assert_allclose(ours_affine, reference.affine, atol=1e-4)
    difference = np.abs(ours.astype(int) - np.asarray(reference.dataobj).astype(int))
    print(f"conform: {int((difference > 0).sum())} of {difference.size} voxels differ from niimath")
    assert difference.max() <= 1
    assert (difference > 0).mean() < 1e-5


def test_conform_is_the_identity_on_an_already_conformed_volume() -> None:
    """brainchop's T1 is 256^3 LIA at 1 mm: conform only rescales intensities; labels come back voxel for voxel."""
    image = nib.load(shared_path(T1))
    conformed, affine = bc.conform(np.asarray(image.dataobj), image.affine)
    np.testing.assert_allclose(affine, image.affine, atol=1e-4)
    labels = (conformed > 100).astype(np.uint8)
    np.testing.assert_array_equal(bc.labels_to_grid(labels, affine, labels.shape, image.affine), labels)


def test_largest_component_matches_niimath_bwlabel(tmp_path: Path) -> None:
    """brainchop's step 4 (niimath -bwlabel 26, keep the largest cluster) on blobs that touch only at corners."""
    niimath = shutil.which("niimath")
    if niimath is None:
        pytest.skip("niimath not installed (pip install niimath)")
    labels = np.zeros((40, 40, 40), dtype=np.uint8)
    labels[5:20, 5:20, 5:20] = 1
    labels[20:25, 20:25, 20:25] = 2  # touches the first blob at a corner only: 26-connected to it
    labels[30:38, 30:38, 2:10] = 1  # separate, smaller
    labels[2, 35, 35] = 3
    path = tmp_path / "labels.nii"
    nib.save(nib.Nifti1Image(labels, np.eye(4)), path)
    subprocess.run([niimath, str(path), "-bwlabel", "26", "-gz", "0", str(tmp_path / "c.nii"), "-odt", "char"],
                   check=True, capture_output=True)
    clusters = np.asarray(nib.load(tmp_path / "c.nii").dataobj)
    largest = int(np.argmax(np.bincount(clusters.ravel())[1:])) + 1
    expected = np.where(clusters == largest, labels, 0)
    np.testing.assert_array_equal(bc.keep_largest_component(labels), expected)
    assert set(np.unique(expected)) == {0, 1, 2}


# --------------------------------------------------------------------------- the network against tinygrad


@pytest.mark.parametrize("model_id", sorted(MODELS))
def test_meshnet_equals_brainchops_tinygrad_meshnet_on_a_crop(model_id, runners, brainchop_home, tmp_path) -> None:
    """Network equivalence, not accuracy: the same normalised 56^3 crop of the conformed T1 through
    medhub's torch MeshNet and brainchop's tinygrad MeshNet (loaded from the same files).

    A crop keeps CI time small; MeshNet is fully convolutional (mindgrab's GroupNorm then
    normalises over the crop, on both sides alike).
    """
    image = nib.load(shared_path(T1))
    conformed, _ = bc.conform(np.asarray(image.dataobj), image.affine)
    crop = bc.quantile_normalise(conformed)[100:156, 100:156, 100:156]
    np.save(tmp_path / "crop.npy", np.ascontiguousarray(crop))
    started = time.perf_counter()
    run_brainchop(brainchop_home, ORACLE_NETWORK, str(shared_path(WEIGHTS) / MODELS[model_id]),
                  str(tmp_path / "crop.npy"), str(tmp_path / "theirs.npy"))
    theirs = np.load(tmp_path / "theirs.npy")
    oracle_seconds = time.perf_counter() - started
    started = time.perf_counter()
    ours = runners[model_id].run_network(crop)
    ours_seconds = time.perf_counter() - started
    labels = sorted(runners[model_id].context.card.outputs.segments)
    scores = dice_per_label(ours, theirs, labels)
    print(f"{model_id} on a 56^3 crop: voxels equal {np.mean(ours == theirs):.6f}, "
          f"torch {ours_seconds:.1f} s, tinygrad {oracle_seconds:.1f} s; Dice {scores}")
    present = [label for label in labels if (theirs == label).sum() >= 50]
    assert present, "the crop should contain several labels"
    assert np.mean(ours == theirs) >= 0.9999
    assert min(scores[label] for label in present) >= 0.999


# --------------------------------------------------------------------------- DICOM to SEG, whole pipeline


EXPECTED_VALUES = {  # plausible ranges for an adult brain, a guard against a right Dice on a wrong grid
    "brainchop-gwm": {"white_matter_ml": (300, 900), "gray_matter_ml": (300, 1200)},
    "brainchop-mindgrab": {"brain_volume_ml": (1000, 2000)},
    "brainchop-subcortical": {},
}


@pytest.fixture(scope="session")
def dicom_runs(t1_series, weights_env, tmp_path_factory: pytest.TempPathFactory):
    """``medhub check MODEL`` (the card's sample, the T1 as DICOM, through the real pipeline with its
    default workflow, compared with the card's reference values): once per model and session. The
    tests below compare the same run's SEG with brainchop's own result, so the model runs once.

    Returns a function of the model id giving (report entry, SEG path, seconds).
    """
    done: dict[str, tuple[dict, Path, float]] = {}

    def run(model_id: str) -> tuple[dict, Path, float]:
        if model_id not in done:
            work = tmp_path_factory.mktemp(f"{model_id}-check")
            out = work / "output"
            started = time.perf_counter()
            results = check_model(model_id, work_dir=work)
            seconds = time.perf_counter() - started
            lines = [r.line() for r in results]
            assert not [line for line in lines if line.startswith(("FAIL", "WARN run"))], "\n".join(lines)
            assert any(line.startswith("OK   run:") for line in lines) and any(
                line.startswith("OK   reference:") for line in lines), "\n".join(lines)
            entry = next(e for e in json.loads((out / "medhub-report.json").read_text())["series"]
                         if e["status"] == "succeeded")
            done[model_id] = entry, out / next(o for o in entry["outputs"] if o.endswith(".seg.dcm")), seconds
        return done[model_id]

    return run


@pytest.mark.parametrize("model_id", sorted(MODELS))
def test_from_dicom_writes_a_valid_seg_with_every_segment(model_id, t1_series, dicom_runs,
                                                          assert_valid_dicom) -> None:
    """``medhub run`` → a SEG that passes dciodvfy, holds every segment of the card, with plausible volumes."""
    entry, seg_path, seconds = dicom_runs(model_id)
    assert_valid_dicom(seg_path)
    _, volume, _ = t1_series
    card = get_model(model_id).card
    present = sorted(int(v) for v in np.unique(seg_labels(seg_path, volume, card.outputs.segments)) if v)
    print(f"{model_id}: medhub run {seconds:.1f} s, {len(present)} segments, values {entry['values']}")
    assert present == sorted(card.outputs.segments)
    for name, (low, high) in EXPECTED_VALUES[model_id].items():
        assert low < entry["values"][name] < high, (name, entry["values"])


@pytest.mark.brainchop_full_oracle
@pytest.mark.parametrize("model_id", sorted(MODELS))
def test_from_dicom_equals_brainchops_full_run(model_id, t1_series, dicom_runs, background_oracle) -> None:
    """The whole chain (DICOM → SEG read back) against brainchop's own ``segment()`` on the original
    NIfTI, per label, on the full 256^3 volume: Dice ≥ 0.999 for every segment of the card."""
    entry, seg_path, seconds = dicom_runs(model_id)
    _, volume, image = t1_series
    card = get_model(model_id).card
    ours = seg_labels(seg_path, volume, card.outputs.segments)
    oracle_file, oracle_time = background_oracle(MODELS[model_id], timeout=3 * 3600)
    theirs = on_volume_grid(np.load(oracle_file), image.affine, volume)
    labels = sorted(card.outputs.segments)
    scores = dice_per_label(ours, theirs, labels)
    print(f"{model_id} DICOM→SEG vs brainchop's full run: min Dice {min(scores.values()):.6f}, "
          f"{int((ours != theirs).sum())} of {ours.size} voxels differ; medhub run {seconds:.1f} s, "
          f"brainchop {oracle_time}; Dice {scores}")
    assert sorted(int(v) for v in np.unique(theirs) if v) == labels  # the oracle found every segment too
    assert min(scores.values()) >= 0.999


# --------------------------------------------------------------------------- missing weights


def test_missing_weights_give_the_weights_managers_one_line_error(t1_series, tmp_path: Path) -> None:
    """Empty mirror, empty cache, upstream URL unreachable (a proxy on a closed port): the series fails
    with the weights manager's one line as its reason, and the exit code says so."""
    folder, _, _ = t1_series
    mirror = tmp_path / "empty-mirror"
    mirror.mkdir()
    env = {"MEDHUB_WEIGHTS_MIRROR": str(mirror), "MEDHUB_WEIGHTS_CACHE": str(tmp_path / "cache"),
           "HTTPS_PROXY": "http://127.0.0.1:9", "https_proxy": "http://127.0.0.1:9", "NO_PROXY": "", "no_proxy": ""}
    out = tmp_path / "out"
    result = medhub_cli("run", "brainchop-gwm", "--input", str(folder), "--output", str(out), env=env)
    assert result.returncode != 0, result.stdout + result.stderr
    entries = json.loads((out / "medhub-report.json").read_text())["series"]
    assert [e["status"] for e in entries] == ["failed"]
    reason = entries[0]["reason"]
    assert "\n" not in reason
    assert reason.startswith("weights for brainchop-gwm: model5_gw_ae/model.json not found: tried "
                             "https://raw.githubusercontent.com/neuroneural/brainchop-models/3d81b598/meshnet/"
                             "model5_gw_ae/model.json (")
    assert f"MEDHUB_WEIGHTS_MIRROR={mirror} (no such file)" in reason
    assert reason.endswith(f"put it in {mirror / 'brainchop-gwm' / 'model5_gw_ae' / 'model.json'}")
