"""Batches: many series in one run, a kill at any moment, ``--resume``, and Dask workers.

The cohort is built from the real Philips head CT: six series of contiguous slices, each with
its own UIDs, in one flat folder, plus one series whose pixel data cannot be decoded.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pydicom
import pytest
from conftest import shared_path
from pydicom.encaps import encapsulate
from pydicom.uid import JPEG2000Lossless, generate_uid

SERIES = 6
SLICES = 12


def _medhub(*args: str, **kwargs) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "medhub", *args], capture_output=True, text=True, timeout=600,
                          check=False, **kwargs)


@pytest.fixture(scope="module")
def cohort(tmp_path_factory: pytest.TempPathFactory) -> Path:
    files = [p for p in shared_path("ct/philips_phantom_head_1mm").iterdir() if p.is_file()]
    files.sort(key=lambda p: float(pydicom.dcmread(p, stop_before_pixels=True).ImagePositionPatient[2]))
    folder = tmp_path_factory.mktemp("cohort")
    for number in range(SERIES + 1):
        series_uid, study_uid = generate_uid(), generate_uid()
        for index, source in enumerate(files[number * SLICES:(number + 1) * SLICES]):
            dataset = pydicom.dcmread(source)
            dataset.SeriesInstanceUID, dataset.StudyInstanceUID = series_uid, study_uid
            dataset.SOPInstanceUID = dataset.file_meta.MediaStorageSOPInstanceUID = generate_uid()
            dataset.SeriesDescription = f"part {number}"
            if number == SERIES and index in (3, 4, 5):  # the broken one: 3 garbage JPEG 2000 codestreams in a row
                dataset.PixelData = encapsulate([b"\xff\x4f\xff\x51" + b"\x00" * 60])
                dataset["PixelData"].VR = "OB"
                dataset.file_meta.TransferSyntaxUID = JPEG2000Lossless
            dataset.save_as(folder / f"f{number}_{index:02d}.dcm", enforce_file_format=True)
    return folder


def _outputs(out: Path) -> dict[str, tuple[int, bytes]]:
    """Relative path → (frames, pixel data) of every SEG: what must be equal between two runs.

    UIDs and dates differ between runs by design; the segmentation itself must not.
    """
    result = {}
    for path in sorted(out.rglob("*.seg.dcm")):
        dataset = pydicom.dcmread(path)
        result[str(path.relative_to(out))] = (int(dataset.NumberOfFrames), dataset.PixelData)
    return result


@pytest.fixture(scope="module")
def uninterrupted(cohort: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("full") / "out"
    result = _medhub("run", "ct-body", "--input", str(cohort), "--output", str(out), "--set", "select.min_slices=5")
    assert result.returncode == 1, result.stderr  # the broken series fails, the six others are written
    return out


def test_a_failed_series_never_stops_the_others(uninterrupted: Path) -> None:
    report = json.loads((uninterrupted / "medhub-report.json").read_text())
    statuses = sorted(entry["status"] for entry in report["series"])
    assert statuses == ["failed"] + ["succeeded"] * SERIES
    assert len(_outputs(uninterrupted)) == SERIES


def test_kill_then_resume_gives_the_same_outputs(cohort: Path, uninterrupted: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    process = subprocess.Popen(
        [sys.executable, "-m", "medhub", "run", "ct-body", "--input", str(cohort), "--output", str(out),
         "--set", "select.min_slices=5", "--json-progress"],
        stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
    )
    done = 0
    assert process.stdout is not None
    for line in process.stdout:
        event = json.loads(line)
        if event["event"] == "series_done":
            done += 1
        if done == 2:  # two series finished: kill in the middle of the third
            os.kill(process.pid, signal.SIGKILL)
            break
    process.wait(timeout=60)
    assert process.returncode == -signal.SIGKILL
    assert not (out / "medhub-report.json").exists()  # the run never finished
    named = [p for p in out.rglob("*") if p.is_file() and not p.name.startswith(".")]
    for path in named:  # every visible output file is complete
        if path.suffix == ".dcm":
            pydicom.dcmread(path)

    resumed = _medhub("run", "ct-body", "--input", str(cohort), "--output", str(out), "--set", "select.min_slices=5",
                      "--resume", "--json-progress")
    assert resumed.returncode == 1, resumed.stderr
    events = [json.loads(line) for line in resumed.stdout.splitlines()]
    skipped = [e for e in events if e["event"] == "series_done" and e.get("resumed")]
    assert len(skipped) >= 2
    assert _outputs(out) == _outputs(uninterrupted)
    assert [p for p in out.rglob(".*.partial")] == []
    report = json.loads((out / "medhub-report.json").read_text())
    assert sorted(e["status"] for e in report["series"]) == ["failed"] + ["succeeded"] * SERIES


def test_resume_with_another_workflow_recomputes(cohort: Path, uninterrupted: Path, tmp_path: Path) -> None:
    """The journal is tied to model, version and workflow: a changed workflow does not reuse outputs."""
    import shutil

    out = tmp_path / "out"
    shutil.copytree(uninterrupted, out)
    result = _medhub("run", "ct-body", "--input", str(cohort), "--output", str(out), "--set", "select.min_slices=6",
                     "--resume", "--json-progress")
    events = [json.loads(line) for line in result.stdout.splitlines()]
    assert not [e for e in events if e["event"] == "series_done" and e.get("resumed")]


def test_resume_redoes_only_the_series_whose_file_was_rewritten(cohort: Path, uninterrupted: Path,
                                                               tmp_path: Path) -> None:
    """Same SOP UIDs, but one file rewritten (a new modification time): that series is done again, the others not."""
    import shutil

    out, changed = tmp_path / "out", tmp_path / "cohort"
    shutil.copytree(uninterrupted, out)
    shutil.copytree(cohort, changed)  # copy2 keeps the modification times
    rewritten = changed / "f2_05.dcm"
    os.utime(rewritten, ns=(rewritten.stat().st_atime_ns, rewritten.stat().st_mtime_ns + 10**9))
    result = _medhub("run", "ct-body", "--input", str(changed), "--output", str(out), "--set", "select.min_slices=5",
                     "--resume", "--json-progress")
    assert result.returncode == 1, result.stderr
    done = [json.loads(line) for line in result.stdout.splitlines()]
    done = [e for e in done if e["event"] == "series_done"]
    assert sum(1 for e in done if e.get("resumed")) == SERIES - 1
    report = json.loads((out / "medhub-report.json").read_text())
    (redone,) = [e for e in report["series"] if e["description"] == "part 2"]
    assert redone["notes"][0].startswith("redone: the input changed since the earlier result (the same SOP Instance")
    assert _outputs(out) == _outputs(uninterrupted)


def test_local_dask_cluster_gives_the_same_outputs(cohort: Path, uninterrupted: Path, tmp_path: Path) -> None:
    pytest.importorskip("dask.distributed")
    out = tmp_path / "out"
    result = _medhub("run", "ct-body", "--input", str(cohort), "--output", str(out), "--set", "select.min_slices=5",
                     "--workers", "2")
    assert result.returncode == 1, result.stderr
    assert _outputs(out) == _outputs(uninterrupted)
    report = json.loads((out / "medhub-report.json").read_text())
    failed = [e for e in report["series"] if e["status"] == "failed"]
    assert len(failed) == 1 and "cannot decode" in failed[0]["reason"]


def test_unreachable_scheduler_is_one_line(cohort: Path, tmp_path: Path) -> None:
    pytest.importorskip("dask.distributed")
    result = _medhub("run", "ct-body", "--input", str(cohort), "--output", str(tmp_path / "o"),
                     "--scheduler", "tcp://127.0.0.1:9")
    assert result.returncode == 2
    assert result.stderr.strip().startswith("medhub: cannot reach the Dask scheduler at tcp://127.0.0.1:9")
    assert len(result.stderr.strip().splitlines()) == 1
