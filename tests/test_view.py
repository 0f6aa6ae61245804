"""``medhub view OUT``: the result page on a CLI run's output folder, and the SEG read back for it.

A CLI run writes a DICOM SEG and no NIfTI by default, so the viewer reads the SEG back onto the
input images (``inputs/segread.py``): checked against the pipeline's own NIfTI labels on the
real Philips head CT, and against the frames of a SEG written by another tool (dcmqi). The
command itself runs as a user runs it, on a free port; the app's answers are checked in-process.
The browser test of the page is in ``test_view_browser.py``.
"""

from __future__ import annotations

import hashlib
import json
import re
import shutil
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import nibabel as nib
import numpy as np
import pydicom
import pytest
from conftest import shared_path

from medhub.errors import MedhubError
from medhub.inputs.load import load_series
from medhub.inputs.scan import scan
from medhub.inputs.segread import read_seg_labels
from medhub.writers.nifti import dcm2niix_order

fastapi = pytest.importorskip("fastapi", reason="medhub view needs fastapi (pip install 'medhub[serve]')")
from fastapi.testclient import TestClient  # noqa: E402
from typer.testing import CliRunner  # noqa: E402

from medhub.cli.main import app  # noqa: E402
from medhub.serve.view import create_view_app  # noqa: E402

PHILIPS = "ct/philips_phantom_head_1mm"
DCMQI = "seg/dcmqi_segmentations"


def medhub(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "medhub", *args], capture_output=True, text=True, timeout=600,
                          check=False)


def tree_digest(root: Path) -> dict[str, str]:
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def ct_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """ct-body with --nifti on 24 slices of the real Philips head CT (it has UIDs: a SEG is written too)."""
    folder = tmp_path_factory.mktemp("view")
    files = sorted(shared_path(PHILIPS).iterdir(),
                   key=lambda p: float(pydicom.dcmread(p, stop_before_pixels=True).ImagePositionPatient[2]))
    source = folder / "in"
    source.mkdir()
    for path in files[58:82]:
        shutil.copyfile(path, source / path.name)
    out = folder / "out"
    result = medhub("run", "ct-body", "--input", str(source), "--output", str(out), "--nifti")
    assert result.returncode == 0, result.stderr
    return source, out


def _entry(out: Path) -> dict:
    report = json.loads((out / "medhub-report.json").read_text())
    return next(e for e in report["series"] if e["status"] == "succeeded")


def test_our_seg_read_back_equals_the_runs_own_label_map(ct_run) -> None:
    source, out = ct_run
    entry = _entry(out)
    seg = next(out / o for o in entry["outputs"] if o.endswith(".seg.dcm"))
    nifti = nib.load(next(out / o for o in entry["outputs"] if o.endswith("ct-body.nii.gz")))
    volume = load_series(scan(source).series[0])
    read = read_seg_labels(seg, volume, {"BODY": 1, "LEFT_LUNG": 2, "RIGHT_LUNG": 3, "BONE": 4, "LUNG": 5})
    # The NIfTI is in dcm2niix's voxel order (rows reversed for this CT): the SEG's labels, put in that order, equal it.
    in_dcm2niix_order, affine = dcm2niix_order(read.labels, volume.affine_lps, acquisition_3d=False)
    expected = np.asarray(nifti.dataobj).astype(np.uint8)
    assert in_dcm2niix_order.shape == expected.shape and expected.any()
    np.testing.assert_array_equal(in_dcm2niix_order, expected)
    np.testing.assert_allclose(affine, nifti.affine, atol=1e-4)
    assert read.segments[1][0] == "BODY"  # the Tracking ID gives the label value back


def test_a_seg_written_by_dcmqi_lands_on_its_source_slices() -> None:
    """dcmqi's liver SEG (no 'spatial locations preserved' flag) on its 3 real CT slices: frame for frame."""
    root = shared_path(DCMQI)
    volume = load_series(next(s for s in scan(root / "ct-3slice").series if s.modality == "CT"))
    read = read_seg_labels(root / "liver.dcm", volume)
    seg = pydicom.dcmread(root / "liver.dcm")
    frames = seg.pixel_array
    uids = [str(plane.dataset.SOPInstanceUID) for plane in volume.source.planes]
    for index, item in enumerate(seg.PerFrameFunctionalGroupsSequence):
        k = uids.index(item.DerivationImageSequence[0].SourceImageSequence[0].ReferencedSOPInstanceUID)
        np.testing.assert_array_equal(read.labels[:, :, k].T, frames[index])
    assert read.labels.sum() > 10_000 and read.segments == {1: ("", "Liver")}
    with pytest.raises(MedhubError, match="segments overlap"):  # five overlapping segments: not one label map
        read_seg_labels(root / "partial_overlaps.dcm", volume)


def test_a_seg_of_another_series_is_refused(ct_run) -> None:
    _, out = ct_run
    seg = next(out / o for o in _entry(out)["outputs"] if o.endswith(".seg.dcm"))
    root = shared_path(DCMQI)
    other = load_series(next(s for s in scan(root / "ct-3slice").series if s.modality == "CT"))
    with pytest.raises(MedhubError, match="references none of this series' images"):
        read_seg_labels(seg, other)


def test_view_app_shows_the_folder_as_a_finished_job_without_writing_to_it(ct_run, tmp_path: Path) -> None:
    source, out = ct_run
    before = tree_digest(out)
    client = TestClient(create_view_app(out, source, tmp_path / "cache"))
    home = client.get("/", follow_redirects=False)
    assert home.status_code == 307
    job_id = home.headers["location"].rsplit("/", 1)[1]
    page = client.get(f"/jobs/{job_id}")
    assert page.status_code == 200 and 'id="axial-canvas"' in page.text and "Try a model" not in page.text
    job = client.get(f"/api/jobs/{job_id}").json()
    assert job["status"] == "succeeded" and job["model"] == "ct-body"
    kinds = {r["kind"] for r in job["results"]}
    assert {"seg", "nifti", "report"} <= kinds
    entry = _entry(out)
    meta = client.get(f"/api/jobs/{job_id}/viewer/{entry['key']}/meta").json()
    assert meta["shape"] == [512, 512, 24] and meta["unit"] == "HU"
    body = next(s for s in meta["segments"] if s["id"] == "BODY")
    assert body["voxels"] > 0 and len(body["color"]) == 3
    seg_path = next(o for o in entry["outputs"] if o.endswith(".seg.dcm"))
    download = client.get(f"/api/jobs/{job_id}/results/{seg_path}")
    assert download.status_code == 200 and download.content[128:132] == b"DICM"
    assert client.get(f"/api/jobs/{job_id}/results/../in/x.dcm").status_code == 404
    assert client.get(f"/api/jobs/{'0' * 32}").status_code == 404
    mistyped = client.get(f"/jobs/{job_id[:-1]}x")
    assert mistyped.status_code == 404 and "text/html" in mistyped.headers["content-type"]
    assert "Job not found" in mistyped.text
    assert tree_digest(out) == before  # nothing written into the output folder


def test_view_reads_the_seg_when_there_is_no_nifti(ct_run, tmp_path: Path) -> None:
    """A default CLI run writes only the SEG: its labels come from the SEG, identical to the NIfTI."""
    source, out = ct_run
    copy = tmp_path / "out"
    shutil.copytree(out, copy)
    entry = _entry(copy)
    labels_file = next(copy / o for o in entry["outputs"] if o.endswith("ct-body.nii.gz"))
    # the label map in dcm2niix's order (rows reversed) back to DICOM's, which is L, P, S for this axial CT
    expected = np.asarray(nib.load(labels_file).dataobj)[:, ::-1, :]
    labels_file.unlink()  # the image (also .nii.gz) stays: the viewer must not take it for labels
    client = TestClient(create_view_app(copy, source, tmp_path / "cache"))
    job_id = client.get("/", follow_redirects=False).headers["location"].rsplit("/", 1)[1]
    base = f"/api/jobs/{job_id}/viewer/{entry['key']}"
    meta = client.get(f"{base}/meta").json()
    labels = np.frombuffer(client.get(f"{base}/labels.bin").content, dtype=np.uint8).reshape(meta["shape"], order="F")
    # the viewer's arrays are in LPS order; the Philips axial CT is already L, P, S
    np.testing.assert_array_equal(labels, expected)
    # it opens in the middle of the segmented region, on slices that hold labels
    for axis, position in enumerate(meta["start"]):
        others = tuple(a for a in range(3) if a != axis)
        occupied = np.flatnonzero(expected.any(axis=others))
        assert abs(position - (occupied[0] + occupied[-1]) / 2) <= 1 + np.diff(occupied).max()
        assert expected.take(position, axis=axis).any()


@pytest.mark.parametrize(("setup", "message"), [
    ("missing", "no such folder"),
    ("no-report", "holds no medhub-report.json"),
    ("input-gone", "are not there any more; give them with --input"),
])
def test_view_refuses_with_one_line(tmp_path: Path, ct_run, setup: str, message: str) -> None:
    source, out = ct_run
    target = tmp_path / "out"
    if setup == "no-report":
        target.mkdir()
    elif setup == "input-gone":
        shutil.copytree(out, target)
        report = json.loads((target / "medhub-report.json").read_text())
        report["input_path"] = str(tmp_path / "gone")
        (target / "medhub-report.json").write_text(json.dumps(report))
    result = CliRunner().invoke(app, ["view", str(target), "--no-browser"])
    assert result.exit_code == 2, result.output
    assert message in result.stderr and len(result.stderr.strip().splitlines()) == 1, result.stderr


def test_view_command_serves_the_page_and_prints_its_address(ct_run) -> None:
    _, out = ct_run
    process = subprocess.Popen([sys.executable, "-m", "medhub", "view", str(out), "--no-browser"],
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        line = process.stdout.readline()
        found = re.search(r"http://127\.0\.0\.1:(\d+)/", line)
        assert found, line + process.stderr.read()
        deadline = time.monotonic() + 60
        while True:
            try:
                with urllib.request.urlopen(found.group(0), timeout=5) as response:
                    html = response.read().decode()
                    break
            except OSError:
                if time.monotonic() > deadline or process.poll() is not None:
                    raise
                time.sleep(0.3)
        assert response.url.startswith(found.group(0) + "jobs/") and 'id="axial-canvas"' in html
    finally:
        process.terminate()
        process.wait(timeout=20)


def test_view_of_a_nifti_run_reads_the_input_file_the_report_names(tmp_path: Path) -> None:
    """``--input scan.nii.gz``: the report names the file; the viewer reads it and the NIfTI labels."""
    source = shared_path("ct/totalsegmentator_nifti/example_ct_sm.nii.gz")
    out = tmp_path / "out"
    result = CliRunner().invoke(app, ["run", "ct-body", "--input", str(source), "--output", str(out)])
    assert result.exit_code == 0, result.output
    report = json.loads((out / "medhub-report.json").read_text())
    assert Path(report["input_path"]) == source.resolve()
    client = TestClient(create_view_app(out, source, tmp_path / "cache"))
    job_id = client.get("/", follow_redirects=False).headers["location"].rsplit("/", 1)[1]
    meta = client.get(f"/api/jobs/{job_id}/viewer/example_ct_sm/meta").json()
    assert meta["shape"] == list(nib.load(source).shape) and meta["unit"] == "HU"
    assert next(s for s in meta["segments"] if s["id"] == "BODY")["voxels"] > 1000


def test_a_browser_is_opened_only_where_there_is_one(monkeypatch: pytest.MonkeyPatch) -> None:
    """Over SSH (no display, no $BROWSER) only the address is printed: no text browser takes the terminal."""
    from medhub.cli.view import browser_available

    for name in ("BROWSER", "DISPLAY", "WAYLAND_DISPLAY"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setattr(sys, "platform", "linux")
    assert browser_available() is False
    monkeypatch.setenv("BROWSER", "firefox")
    assert browser_available() is True
