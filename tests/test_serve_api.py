"""``medhub serve`` REST API: real uvicorn server for the job path, TestClient for the refusals.

Jobs run ct-body (no weights, seconds) on real CT from ../shared/data: the 20-slice Siemens CT
as a zip (its files carry no UIDs: NIfTI only, the report says why), a contiguous 24-slice crop
of the Philips head CT as separate files (SEG + RTSTRUCT, checked with dciodvfy, labels equal
to an in-process ``medhub run`` of the same files), and the TotalSegmentator NIfTI.
"""

from __future__ import annotations

import gzip
import io
import json
import os
import socket
import stat
import threading
import time
import zipfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import nibabel as nib
import numpy as np
import pydicom
import pytest
import uvicorn
from conftest import shared_path
from fastapi.testclient import TestClient
from typer.testing import CliRunner

from medhub.cli.main import app
from medhub.errors import MedhubError
from medhub.hub.catalog import get_model
from medhub.hub.runtime import RUNNERS
from medhub.hub.workflow import load_workflow_file
from medhub.pipeline.run import RunOptions, run
from medhub.serve.app import create_app
from medhub.serve.jobs import job_workflow, parse_options
from medhub.serve.settings import ServeSettings, is_loopback
from medhub.serve.store import INTERRUPTED, Job, JobStatus, JobStore

TOKEN = "test-token-123"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
NO_UID_CT = "ct/totalsegmentator_example_ct_dicom"
PHILIPS = "ct/philips_phantom_head_1mm"
NIFTI_CT = "ct/totalsegmentator_nifti/example_ct_sm.nii.gz"
JOB_TIMEOUT = 300


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class LiveServer:
    """The app under a real uvicorn server in a thread (lifespan, workers, streaming all real)."""

    def __init__(self, settings: ServeSettings) -> None:
        self.settings = settings
        self.app = create_app(settings)
        config = uvicorn.Config(self.app, host=settings.host, port=settings.port, log_level="warning")
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.server.run, daemon=True)
        self.url = f"http://{settings.host}:{settings.port}"

    def __enter__(self) -> LiveServer:
        self.thread.start()
        deadline = time.monotonic() + 30
        while not self.server.started:
            if time.monotonic() > deadline or not self.thread.is_alive():
                raise RuntimeError("uvicorn did not start")
            time.sleep(0.05)
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.should_exit = True
        self.thread.join(30)


@pytest.fixture(scope="module")
def live(tmp_path_factory: pytest.TempPathFactory) -> Iterator[httpx.Client]:
    settings = ServeSettings(data_dir=tmp_path_factory.mktemp("serve-data"), port=free_port(), token=TOKEN,
                             workers=2, max_upload_bytes=200 * 1024 * 1024)
    with LiveServer(settings) as server, httpx.Client(base_url=server.url, headers=AUTH, timeout=120) as client:
        client.data_dir = settings.data_dir  # type: ignore[attr-defined]
        yield client


def wait_for(client: httpx.Client, job_id: str, timeout: float = JOB_TIMEOUT) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        job = client.get(f"/api/jobs/{job_id}").json()
        if job["status"] in ("succeeded", "failed", "cancelled"):
            return job
        time.sleep(0.3)
    raise AssertionError(f"job {job_id} did not finish in {timeout} s: {job}")


def zip_of(folder: Path) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        for path in sorted(folder.iterdir()):
            if path.is_file():
                archive.write(path, f"series/{path.name}")
    return buffer.getvalue()


def philips_crop(count: int = 24) -> list[Path]:
    """A contiguous run of slices from the middle of the Philips head CT (file names are not in slice order)."""
    files = [p for p in shared_path(PHILIPS).iterdir() if p.is_file()]
    files.sort(key=lambda p: float(pydicom.dcmread(p, stop_before_pixels=True).ImagePositionPatient[2]))
    middle = len(files) // 2
    return files[middle - count // 2: middle - count // 2 + count]


# ----------------------------------------------------------------------------------- models


def test_models_list_filters_and_detail(live: httpx.Client) -> None:
    every = {card["id"] for card in live.get("/api/models").json()}
    assert {"ct-body", "deepbet"} <= every
    ct = {card["id"] for card in live.get("/api/models", params={"modality": "CT"}).json()}
    assert "ct-body" in ct and "deepbet" not in ct
    brain = {card["id"] for card in live.get("/api/models", params={"body_part": "BRAIN"}).json()}
    assert "deepbet" in brain and "ct-body" not in brain
    segmenters = {card["id"] for card in live.get("/api/models", params={"task": "segmentation"}).json()}
    assert "ct-body" in segmenters
    assert "ct-body" not in {card["id"] for card in live.get("/api/models", params={"task": "classification"}).json()}

    detail = live.get("/api/models/ct-body").json()
    assert detail["card"]["id"] == "ct-body"
    assert "default" in detail["workflows"] and "rtstruct" in detail["workflows"]
    lungs = {s["id"]: s for s in detail["segments"]}["LEFT_LUNG"]
    assert lungs["label"] == 2 and lungs["type"]["scheme"] == "SCT" and len(lungs["color"]) == 3
    assert detail["cli"].startswith("medhub run ct-body")
    assert "Authorization: Bearer" in detail["curl"] and "/api/jobs" in detail["curl"]

    missing = live.get("/api/models/no-such-model")
    assert missing.status_code == 404 and "unknown model 'no-such-model'" in missing.json()["detail"]


# ----------------------------------------------------------------------------------- jobs


def test_zip_job_streams_progress_then_done_and_gives_nifti_and_report(live: httpx.Client) -> None:
    """The no-UID CT as a zip: SSE shows progress then done; results are the NIfTI labels and the report."""
    response = live.post("/api/jobs", data={"model": "ct-body"},
                         files=[("files", ("ct.zip", zip_of(shared_path(NO_UID_CT)), "application/zip"))])
    assert response.status_code == 201, response.text
    job = response.json()
    assert job["status"] in ("queued", "running") and job["input"]["files"] == 20

    events: list[tuple[str, Any]] = []
    with live.stream("GET", f"/api/jobs/{job['id']}/events", params={"token": TOKEN}, headers={}) as stream:
        assert stream.headers["content-type"].startswith("text/event-stream")
        name = None
        for line in stream.iter_lines():
            if line.startswith("event: "):
                name = line[len("event: "):]
            elif line.startswith("data: "):
                events.append((name, json.loads(line[len("data: "):])))
                if name == "done":
                    break
    kinds = [name for name, _ in events]
    assert kinds[0] == "progress" and kinds[-1] == "done" and kinds.count("done") == 1
    assert {"series_done", "series_total", "step", "series"} <= set(events[0][1])
    final = events[-1][1]
    assert final["status"] == "succeeded", final
    assert final["progress"]["series_done"] == final["progress"]["series_total"] == 1
    # the one series' steps move the bar: fractions strictly between 0 and 1 before the end, never back
    fractions = [data["fraction"] for name, data in events if name == "progress"] + [final["progress"]["fraction"]]
    assert fractions == sorted(fractions) and fractions[-1] == 1.0
    steps = [data for name, data in events if name == "progress" and data["steps_total"]]
    assert steps and all(0 <= d["steps_done"] <= d["steps_total"] for d in steps)
    assert "/jobs/" not in json.dumps(final)  # no server folder in what clients see (report input, output, notes)

    results = {item["kind"]: item for item in final["results"]}
    assert set(results) == {"nifti", "labels", "report"}, final["results"]  # label map + its labels, no image
    assert final["report"]["series"][0]["status"] == "succeeded"
    assert any("cannot reference" in note for note in final["report"]["series"][0]["notes"])

    archive = zipfile.ZipFile(io.BytesIO(live.get(f"/api/jobs/{job['id']}/results").content))
    assert sorted(archive.namelist()) == sorted(item["path"] for item in final["results"])
    one = live.get(f"/api/jobs/{job['id']}/results/{results['nifti']['path']}", params={"token": TOKEN}, headers={})
    assert one.status_code == 200 and one.content == archive.read(results["nifti"]["path"])
    labels = nib.Nifti1Image.from_bytes(gzip.decompress(one.content)).get_fdata()
    assert labels.shape == (512, 512, 20) and set(np.unique(labels)) >= {0, 1}

    listed = live.get("/api/jobs").json()
    assert job["id"] in [item["id"] for item in listed]


def test_dicom_files_job_gives_valid_seg_and_rtstruct_equal_to_medhub_run(live: httpx.Client, tmp_path: Path,
                                                                           assert_valid_dicom) -> None:
    """A 24-slice crop of the Philips CT (about equivalence with the CLI path, not accuracy), sent as files."""
    crop = philips_crop()
    files = [("files", (f"slices/{p.name}", p.read_bytes(), "application/dicom")) for p in crop]
    response = live.post("/api/jobs", data={"model": "ct-body", "options": json.dumps({"rtstruct": True})},
                         files=files)
    assert response.status_code == 201, response.text
    job = wait_for(live, response.json()["id"])
    assert job["status"] == "succeeded", job
    kinds = sorted(item["kind"] for item in job["results"])
    assert kinds == ["labels", "nifti", "report", "rtstruct", "seg"]

    archive = zipfile.ZipFile(io.BytesIO(live.get(f"/api/jobs/{job['id']}/results").content))
    archive.extractall(tmp_path / "api")
    for item in job["results"]:
        path = tmp_path / "api" / item["path"]
        assert path.stat().st_size == item["size"]
        if item["kind"] in ("seg", "rtstruct"):
            assert_valid_dicom(path)
            assert item["series"] and item["path"].startswith(item["series"] + "/")
    seg = pydicom.dcmread(tmp_path / "api" / next(i["path"] for i in job["results"] if i["kind"] == "seg"))
    assert seg.Modality == "SEG" and len(seg.ReferencedSeriesSequence[0].ReferencedInstanceSequence) == len(crop)

    # the same files through the pipeline in this process give the same label map
    local_in = tmp_path / "local-in"
    local_in.mkdir()
    for p in crop:
        (local_in / p.name).write_bytes(p.read_bytes())
    entry = get_model("ct-body")
    workflow = load_workflow_file(entry.workflows["default"])
    workflow.execute.append("write_nifti")
    run(entry, RunOptions(input_path=local_in, output_dir=tmp_path / "local-out", workflow=workflow))
    api_nifti = next(i["path"] for i in job["results"] if i["kind"] == "nifti")
    local = nib.load(next((tmp_path / "local-out").rglob("ct-body.nii.gz"))).get_fdata()  # not the image beside it
    remote = nib.load(tmp_path / "api" / api_nifti).get_fdata()
    assert np.array_equal(local, remote)


def test_jobs_write_the_nifti_image_only_when_asked() -> None:
    """A job always writes the label map (the viewer reads it) and its labels; the image, which the client
    uploaded, only with ``"set": ["write_nifti.image=true"]``."""
    entry = get_model("ct-body")
    default = job_workflow(entry, "default", parse_options(None))
    assert default.runs("write_nifti") and default.params("write_nifti")["image"] is False
    asked = job_workflow(entry, "default", parse_options(json.dumps({"set": ["write_nifti.image=true"]})))
    assert asked.params("write_nifti")["image"] is True


def test_nifti_job(live: httpx.Client) -> None:
    source = shared_path(NIFTI_CT)
    response = live.post("/api/jobs", data={"model": "ct-body", "workflow": "default"},
                         files=[("files", (source.name, source.read_bytes(), "application/gzip"))])
    assert response.status_code == 201, response.text
    assert response.json()["input"]["kind"] == "nifti"
    job = wait_for(live, response.json()["id"])
    assert job["status"] == "succeeded", job
    nifti = next(i for i in job["results"] if i["kind"] == "nifti")
    content = live.get(f"/api/jobs/{job['id']}/results/{nifti['path']}").content
    labels = nib.Nifti1Image.from_bytes(gzip.decompress(content))
    assert labels.shape == nib.load(source).shape
    assert job["report"]["series"][0]["values"]["body_volume_ml"] > 0


def test_delete_cancels_and_removes_files(live: httpx.Client) -> None:
    response = live.post("/api/jobs", data={"model": "ct-body"},
                         files=[("files", ("ct.zip", zip_of(shared_path(NO_UID_CT)), "application/zip"))])
    assert response.status_code == 201
    job_id = response.json()["id"]
    folder = live.data_dir / "jobs" / job_id  # type: ignore[attr-defined]
    assert folder.is_dir()
    assert live.delete(f"/api/jobs/{job_id}").status_code == 204
    assert live.get(f"/api/jobs/{job_id}").status_code == 404
    deadline = time.monotonic() + JOB_TIMEOUT
    while folder.exists() and time.monotonic() < deadline:  # a running job unwinds at its next step
        time.sleep(0.2)
    assert not folder.exists()
    again = live.delete(f"/api/jobs/{job_id}")
    assert again.status_code == 404 and job_id in again.json()["detail"]


# ----------------------------------------------------------------------------------- refusals (in process)


@pytest.fixture
def client(tmp_path: Path) -> Iterator[TestClient]:
    settings = ServeSettings(data_dir=tmp_path / "data", token=TOKEN, max_upload_bytes=5 * 1024 * 1024, max_queued=1,
                             max_unzipped_bytes=10 * 1024 * 1024)
    with TestClient(create_app(settings), headers=AUTH) as test_client:
        yield test_client


def leftover_jobs(client: TestClient) -> list[Path]:
    jobs = client.app.state.settings.jobs_dir
    return list(jobs.iterdir()) if jobs.exists() else []


def test_token_is_required_for_the_api_but_not_for_the_schema(client: TestClient) -> None:
    bare = TestClient(client.app)
    missing = bare.get("/api/models")
    assert missing.status_code == 401 and "Bearer" in missing.json()["detail"]
    wrong = bare.get("/api/jobs", headers={"Authorization": "Bearer nope"})
    assert wrong.status_code == 401 and wrong.json() == {"detail": "wrong API token"}
    assert bare.get("/api/models", params={"token": TOKEN}).status_code == 200
    assert bare.get("/openapi.json").status_code == 200
    assert bare.get("/docs").status_code == 200


def test_a_public_address_needs_a_token() -> None:
    with pytest.raises(MedhubError, match="--token"):
        ServeSettings(data_dir=Path("/tmp/unused"), host="0.0.0.0")
    assert is_loopback("127.0.0.1") and is_loopback("::1") and is_loopback("localhost")
    assert not is_loopback("0.0.0.0") and not is_loopback("192.168.1.4")


def _zip_with(name: str, data: bytes = b"x", *, symlink: bool = False) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        info = zipfile.ZipInfo(name)
        if symlink:
            info.create_system = 3
            info.external_attr = (stat.S_IFLNK | 0o777) << 16
        archive.writestr(info, data)
    return buffer.getvalue()


@pytest.mark.parametrize(("entry", "symlink", "message"), [
    ("../../evil.dcm", False, "leaves the upload folder"),
    ("ok/../../evil.dcm", False, "leaves the upload folder"),
    ("/etc/evil.dcm", False, "absolute path"),
    ("C:\\evil.dcm", False, "absolute path"),
    ("link.dcm", True, "symbolic link"),
])
def test_unsafe_zip_entries_are_refused(client: TestClient, tmp_path: Path, entry: str, symlink: bool,
                                        message: str) -> None:
    data = _zip_with(entry, b"/etc/passwd" if symlink else b"DICM", symlink=symlink)
    response = client.post("/api/jobs", data={"model": "ct-body"}, files=[("files", ("x.zip", data))])
    assert response.status_code == 400, response.text
    assert message in response.json()["detail"]
    assert not (tmp_path / "evil.dcm").exists() and not (tmp_path.parent / "evil.dcm").exists()
    assert leftover_jobs(client) == []


def test_size_limits(client: TestClient) -> None:
    big = os.urandom(6 * 1024 * 1024)
    response = client.post("/api/jobs", data={"model": "ct-body"}, files=[("files", ("big.dcm", big))])
    assert response.status_code == 413 and "limit is 5 MB" in response.json()["detail"]
    # a zip that expands past the unzip limit is refused before extraction (one bit of entropy per byte: ~7 to 1)
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", compression=zipfile.ZIP_DEFLATED) as archive:
        archive.writestr("bits.dcm", bytes(b & 1 for b in os.urandom(12 * 1024 * 1024)))
    assert len(buffer.getvalue()) < 5 * 1024 * 1024
    large = client.post("/api/jobs", data={"model": "ct-body"}, files=[("files", ("large.zip", buffer.getvalue()))])
    assert large.status_code == 413 and "expands to 12 MB, more than the limit of 10 MB" in large.json()["detail"]
    # a small zip that claims to expand 1000 to 1 (a zip bomb) is refused by its ratio, whatever the limit
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", compression=zipfile.ZIP_DEFLATED) as archive:
        archive.writestr("zeros.dcm", bytes(8 * 1024 * 1024))
    assert len(buffer.getvalue()) < 100_000
    bomb = client.post("/api/jobs", data={"model": "ct-body"}, files=[("files", ("bomb.zip", buffer.getvalue()))])
    assert bomb.status_code == 413 and "refused as a zip bomb, nothing extracted" in bomb.json()["detail"]
    assert leftover_jobs(client) == []


def test_size_limit_on_a_real_server(tmp_path: Path) -> None:
    """Over uvicorn: 413 from Content-Length before the body is read, and while a chunked body streams in."""
    settings = ServeSettings(data_dir=tmp_path, port=free_port(), token=TOKEN, max_upload_bytes=1024 * 1024)

    def chunked() -> Iterator[bytes]:
        yield b'--XX\r\nContent-Disposition: form-data; name="model"\r\n\r\nct-body\r\n'
        yield b'--XX\r\nContent-Disposition: form-data; name="files"; filename="a.dcm"\r\n\r\n'
        for _ in range(8):
            yield os.urandom(1024 * 1024)
        yield b"\r\n--XX--\r\n"

    with LiveServer(settings) as server, httpx.Client(base_url=server.url, headers=AUTH, timeout=60) as live_client:
        declared = live_client.post("/api/jobs", data={"model": "ct-body"},
                                    files=[("files", ("big.dcm", os.urandom(8 * 1024 * 1024)))])
        assert declared.status_code == 413 and "limit is 1 MB" in declared.json()["detail"]
        streamed = live_client.post("/api/jobs", content=chunked(),
                                    headers={"content-type": "multipart/form-data; boundary=XX"})
        assert streamed.status_code == 413 and "limit is 1 MB" in streamed.json()["detail"]
    assert not (tmp_path / "jobs").exists() or not any((tmp_path / "jobs").iterdir())


def test_input_is_validated_before_queueing(client: TestClient) -> None:
    def post(**kwargs: Any) -> httpx.Response:
        return client.post("/api/jobs", **kwargs)

    text = post(data={"model": "ct-body"}, files=[("files", ("notes.txt", b"not dicom"))])
    assert text.status_code == 422 and text.json()["detail"].startswith("no DICOM series found in the upload")
    one_ct_slice = next(shared_path(NO_UID_CT).iterdir()).read_bytes()
    few = post(data={"model": "ct-body"}, files=[("files", ("a.dcm", one_ct_slice))])
    assert few.status_code == 422 and "no series in the upload matches model ct-body" in few.json()["detail"]
    wrong_modality = post(data={"model": "deepbet"}, files=[("files", ("a.dcm", one_ct_slice))])
    assert wrong_modality.status_code == 422 and "deepbet" in wrong_modality.json()["detail"]
    assert post(data={"model": "nope"}, files=[("files", ("a.dcm", b"x"))]).json()["detail"].startswith(
        "unknown model 'nope'")
    assert "has no workflow 'fast'" in post(data={"model": "ct-body", "workflow": "fast"},
                                              files=[("files", ("a.dcm", b"x"))]).json()["detail"]
    bad_options = post(data={"model": "ct-body", "options": "{rtstruct: yes"}, files=[("files", ("a.dcm", b"x"))])
    assert bad_options.status_code == 422 and bad_options.json()["detail"].startswith("options: not valid JSON")
    unknown_option = post(data={"model": "ct-body", "options": '{"colour": 1}'}, files=[("files", ("a", b"x"))])
    assert unknown_option.status_code == 422 and "options.colour" in unknown_option.json()["detail"]
    bad_set = post(data={"model": "ct-body", "options": '{"set": ["oops"]}'}, files=[("files", ("a", b"x"))])
    assert bad_set.status_code == 422 and "module.param=value" in bad_set.json()["detail"]
    typo = post(data={"model": "ct-body", "options": '{"set": ["predict.bone_HU=300"]}'},
                files=[("files", ("a", b"x"))])
    assert typo.status_code == 422 and typo.json()["detail"].startswith(
        "predict.bone_HU: model ct-body has no parameter 'bone_HU'; did you mean 'bone_hu'?")
    out_of_range = post(data={"model": "ct-body", "options": '{"set": ["predict.bone_hu=9000"]}'},
                        files=[("files", ("a", b"x"))])
    assert out_of_range.status_code == 422 and out_of_range.json()["detail"] == (
        "predict.bone_hu=9000: bone_hu of model ct-body must be a number from -1024 to 3071")
    bad_rule = post(data={"model": "ct-body", "options": '{"set": ["select.max_slices=0"]}'},
                    files=[("files", ("a", b"x"))])
    assert bad_rule.status_code == 422
    assert bad_rule.json()["detail"].startswith("select.max_slices=0: the rule max_slices")
    no_files = post(data={"model": "ct-body"})
    assert no_files.status_code == 422
    not_multipart = post(json={"model": "ct-body"})
    assert not_multipart.status_code == 422 and "multipart/form-data" in not_multipart.json()["detail"]
    nifti_plus = post(data={"model": "ct-body"}, files=[("files", ("a.nii.gz", b"x")), ("files", ("b.dcm", b"x"))])
    assert nifti_plus.status_code == 422 and "must be the only file" in nifti_plus.json()["detail"]
    bad_nifti = post(data={"model": "ct-body"}, files=[("files", ("a.nii.gz", b"garbage"))])
    assert bad_nifti.status_code == 422 and "not a readable NIfTI" in bad_nifti.json()["detail"]
    assert client.get("/api/jobs/not-an-id").status_code == 422
    assert client.get("/api/jobs/" + "0" * 32).json() == {"detail": f"no job {'0' * 32}"}
    assert client.get("/api/models", params={"modality": "x" * 100}).status_code == 422
    assert leftover_jobs(client) == []
    assert client.get("/api/jobs").json() == []


def test_a_model_that_does_not_run_on_the_servers_device_is_422_before_the_upload_is_stored(tmp_path: Path) -> None:
    """Issue 10: a server started with --device cuda refuses a job for a CPU-only model at submission."""
    settings = ServeSettings(data_dir=tmp_path / "data", token=TOKEN, device="cuda")
    with TestClient(create_app(settings), headers=AUTH) as gpu_client:
        one_ct_slice = next(shared_path(NO_UID_CT).iterdir()).read_bytes()
        response = gpu_client.post("/api/jobs", data={"model": "ct-body"}, files=[("files", ("a.dcm", one_ct_slice))])
        assert response.status_code == 422
        assert response.json()["detail"] == "model ct-body does not run on cuda: its card lists cpu only"
        assert leftover_jobs(gpu_client) == []


def test_a_model_whose_environment_is_not_built_is_422_and_nothing_is_built(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Issue 13: a job never builds a model's environment (minutes, hundreds of MB); `medhub pull` does."""
    monkeypatch.setenv("MEDHUB_ISOLATION", "always")  # ct-body must then run in its own environment
    monkeypatch.setenv("MEDHUB_ENVS", str(tmp_path / "envs"))
    settings = ServeSettings(data_dir=tmp_path / "data", token=TOKEN)
    with TestClient(create_app(settings), headers=AUTH) as test_client:
        one_ct_slice = next(shared_path(NO_UID_CT).iterdir()).read_bytes()
        response = test_client.post("/api/jobs", data={"model": "ct-body"}, files=[("files", ("a.dcm", one_ct_slice))])
        assert response.status_code == 422
        assert response.json()["detail"] == ("model ct-body runs in its own environment (MEDHUB_ISOLATION=always), "
                                             "which is not built yet: run `medhub pull ct-body` first")
        assert leftover_jobs(test_client) == []
    assert not (tmp_path / "envs").exists()


def test_serve_refuses_to_start_on_a_device_this_machine_lacks() -> None:
    torch = pytest.importorskip("torch")
    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    result = CliRunner().invoke(app, ["serve", "--device", "cuda", "--port", str(free_port())])
    assert result.exit_code == 2
    assert "--device cuda: this machine has no usable CUDA device" in result.output
    result = CliRunner().invoke(app, ["serve", "--device", "tpu"])
    assert result.exit_code == 2 and "unknown device 'tpu'" in result.output


def test_concurrency_limit_answers_429(client: TestClient) -> None:
    """With max_queued=1, a second job while the first waits on the model lock is refused."""
    zipped = zip_of(shared_path(NO_UID_CT))
    lock = RUNNERS.lock("ct-body", "cpu")
    with lock:  # the first job cannot get past predict
        first = client.post("/api/jobs", data={"model": "ct-body"}, files=[("files", ("a.zip", zipped))])
        assert first.status_code == 201
        second = client.post("/api/jobs", data={"model": "ct-body"}, files=[("files", ("b.zip", zipped))])
        assert second.status_code == 429 and "limit 1" in second.json()["detail"]
        job_id = first.json()["id"]
        early = client.get(f"/api/jobs/{job_id}/results")
        assert early.status_code == 409 and "results are there when it has finished" in early.json()["detail"]
    deadline = time.monotonic() + JOB_TIMEOUT
    while client.get(f"/api/jobs/{job_id}").json()["status"] not in ("succeeded", "failed"):
        assert time.monotonic() < deadline
        time.sleep(0.2)
    assert client.get(f"/api/jobs/{job_id}").json()["status"] == "succeeded"
    assert len(leftover_jobs(client)) == 1  # only the accepted job has files


def test_delete_of_a_running_job_cancels_it_at_its_next_step(client: TestClient) -> None:
    lock = RUNNERS.lock("ct-body", "cpu")
    with lock:  # the job runs up to predict and waits there
        response = client.post("/api/jobs", data={"model": "ct-body"},
                               files=[("files", ("a.zip", zip_of(shared_path(NO_UID_CT))))])
        assert response.status_code == 201
        job_id = response.json()["id"]
        deadline = time.monotonic() + JOB_TIMEOUT
        while client.get(f"/api/jobs/{job_id}").json()["status"] != "running":
            assert time.monotonic() < deadline
            time.sleep(0.1)
        assert client.delete(f"/api/jobs/{job_id}").status_code == 204
        assert client.get(f"/api/jobs/{job_id}").status_code == 404
        assert client.get("/api/jobs").json() == []
    folder = client.app.state.settings.job_dir(job_id)
    while folder.exists():  # the worker unwinds at the next pipeline event and removes the files
        assert time.monotonic() < deadline
        time.sleep(0.1)
    assert client.app.state.store.get(job_id, include_deleted=True) is None
    # the worker is free again: the next job runs
    again = client.post("/api/jobs", data={"model": "ct-body"},
                        files=[("files", ("a.zip", zip_of(shared_path(NO_UID_CT))))])
    assert again.status_code == 201


# ----------------------------------------------------------------------------------- store


def _job(job_id: str, **changes: Any) -> Job:
    return Job(id=job_id, model="ct-body", workflow="default", options={}, workflow_json="{}", input_path="input",
               input_summary={}, **changes)


def test_store_recovers_interrupted_jobs_once(tmp_path: Path) -> None:
    store = JobStore(tmp_path / "jobs.sqlite3")
    store.add(_job("a" * 32))
    store.add(_job("b" * 32))
    first = store.claim_next()
    assert first is not None and first.id == "a" * 32 and first.attempts == 1
    store.close()

    store = JobStore(tmp_path / "jobs.sqlite3")  # "restart": a is running, b is queued
    assert store.recover(max_attempts=2) == [("a" * 32, "requeued")]
    again = store.get("a" * 32)
    assert again.status == JobStatus.QUEUED and INTERRUPTED in again.notes[0]
    assert store.claim_next().id == "a" * 32  # oldest first
    assert store.recover(max_attempts=2) == [("a" * 32, "failed")]  # interrupted a second time
    failed = store.get("a" * 32)
    assert failed.status == JobStatus.FAILED and failed.error.startswith(INTERRUPTED)
    assert store.get("b" * 32).status == JobStatus.QUEUED
    assert store.active_count() == 1
    assert not store.add_if_room(_job("c" * 32), max_active=1)
    assert store.mark_deleted("b" * 32) == JobStatus.QUEUED and store.get("b" * 32) is None
    assert store.claim_next() is None
    store.close()


def test_progress_counts_the_steps_of_the_running_series() -> None:
    """The bar of a one-series job moves with its steps (model_load is not one of the workflow's steps)."""
    from medhub.serve.jobs import StoreProgress

    class Store:
        def __init__(self) -> None:
            self.seen: list[dict[str, Any]] = []

        def set_progress(self, job_id: str, progress: dict[str, Any]) -> None:
            self.seen.append(dict(progress))

    store = Store()
    sink = StoreProgress(store, "j", threading.Event(), threading.Event())  # type: ignore[arg-type]
    sink.event("selected", chosen=1, rejected=0)
    sink.event("series_start", key="s", steps=["load", "predict", "write_seg", "write_nifti"])
    for step in ("load", "model_load", "predict", "write_seg", "write_nifti"):
        sink.event("step", key="s", step=step)
        sink.event("step_done", key="s", step=step)
    sink.event("series_done", key="s", status="succeeded", reason="")
    fractions = [p["fraction"] for p in store.seen]
    assert fractions == sorted(fractions) and fractions[-1] == 1.0
    assert {0.25, 0.5, 0.75} <= set(fractions)  # each finished step of the single series moves the bar
    assert max(p["steps_done"] for p in store.seen) == 4  # model_load did not count
