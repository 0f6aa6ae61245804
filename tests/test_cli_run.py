"""End to end: ``medhub run`` / ``medhub doctor`` as a user runs them, on a flat folder of real DICOM.

The folder mixes a real head CT, a real CT without UIDs, an MR series, SEG / RTSTRUCT / SR objects,
a secondary capture, a scout, a truncated file and text files. Every series must end with a valid
result or a reason, the input folder must not change, and no partial file may be left behind.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import subprocess
import sys
from pathlib import Path

import highdicom as hd
import nibabel as nib
import numpy as np
import pydicom
import pytest
from conftest import shared_path
from pydicom.encaps import encapsulate
from pydicom.uid import JPEG2000Lossless, SecondaryCaptureImageStorage, generate_uid

from medhub.data.geometry import labels_to_source
from medhub.hub.catalog import get_model
from medhub.hub.runtime import ModelRunner
from medhub.inputs.load import load_series
from medhub.inputs.scan import scan
from medhub.inputs.synth import write_dicom_series

PHILIPS = "ct/philips_phantom_head_1mm"
NO_UID_CT = "ct/totalsegmentator_example_ct_dicom"


def medhub(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    """Run the real command line in a subprocess, as a user would."""
    return subprocess.run([sys.executable, "-m", "medhub", *args], capture_output=True, text=True, cwd=cwd,
                          timeout=900, check=False)


def tree_digest(root: Path) -> dict[str, str]:
    """Path → SHA-256 of every file under root (to prove the input is never modified)."""
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


def philips_by_position() -> list[Path]:
    """The Philips CT files in slice order (their file names are not), so a slice range is contiguous."""
    files = [p for p in shared_path(PHILIPS).iterdir() if p.is_file()]
    return sorted(files, key=lambda p: float(pydicom.dcmread(p, stop_before_pixels=True).ImagePositionPatient[2]))


def _copy_renamed(sources: list[Path], target: Path, prefix: str) -> None:
    for index, source in enumerate(sources):
        shutil.copyfile(source, target / f"{prefix}_{index:03d}")


def _derived_series(sources: list[Path], target: Path, prefix: str, **changes: object) -> None:
    """Copies of real slices as a new series with some attributes changed (scouts, secondary captures)."""
    series_uid = generate_uid()
    for index, source in enumerate(sources):
        dataset = pydicom.dcmread(source)
        dataset.SeriesInstanceUID = series_uid
        dataset.SOPInstanceUID = generate_uid()
        dataset.file_meta.MediaStorageSOPInstanceUID = dataset.SOPInstanceUID
        for keyword, value in changes.items():
            setattr(dataset, keyword, value)
        if "SOPClassUID" in changes:
            dataset.file_meta.MediaStorageSOPClassUID = changes["SOPClassUID"]
        dataset.save_as(target / f"{prefix}_{index:03d}.dcm")


@pytest.fixture(scope="module")
def flat_folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One flat folder with everything a PACS export throws at a user."""
    philips = sorted(p for p in shared_path(PHILIPS).iterdir() if p.is_file())
    folder = tmp_path_factory.mktemp("flat")
    _copy_renamed(philips, folder, "ct")
    _copy_renamed(sorted(shared_path(NO_UID_CT).iterdir()), folder, "nouid")
    shutil.copyfile(shared_path("seg/dcmqi_segmentations/liver.dcm"), folder / "seg_liver")
    shutil.copyfile(shared_path("rtstruct/pydicom/rtstruct.dcm"), folder / "rtstruct_nopreamble")
    shutil.copyfile(shared_path("seg/dcmqi_sr_example/sr.dcm"), folder / "report_sr")
    _derived_series(philips[:3], folder, "scout", ImageType=["ORIGINAL", "PRIMARY", "LOCALIZER"], SeriesNumber=99)
    _derived_series(philips[60:72], folder, "sc", SOPClassUID=SecondaryCaptureImageStorage, SeriesNumber=98)
    t1 = nib.load(shared_path("mr/brainchop_t1_crop.nii.gz"))
    crop = np.asarray(t1.dataobj)[96:160, 96:160, 120:132].astype(np.float32)
    ras_to_lps = np.diag([-1.0, -1.0, 1.0, 1.0])
    mr_dir = tmp_path_factory.mktemp("mr")
    for index, path in enumerate(write_dicom_series(crop, ras_to_lps @ t1.affine, mr_dir, modality="MR",
                                                     series_description="T1 crop")):
        shutil.copyfile(path, folder / f"mr_{index:03d}")
    truncated = philips[0].read_bytes()
    (folder / "broken_ct").write_bytes(truncated[: len(truncated) // 2])
    (folder / "notes.txt").write_text("exported by the scanner\n")
    (folder / "manifest.json").write_text('{"study": "x"}\n')
    return folder


@pytest.fixture(scope="module")
def flat_run(flat_folder: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[subprocess.CompletedProcess[str],
                                                                                  Path, dict[str, str]]:
    before = tree_digest(flat_folder)
    out = tmp_path_factory.mktemp("out") / "results"
    result = medhub("run", "ct-body", "--input", str(flat_folder), "--output", str(out), "--rtstruct")
    return result, out, before


def _report(out: Path) -> dict:
    return json.loads((out / "medhub-report.json").read_text())


def test_flat_folder_gives_one_result_per_suitable_series_and_a_reason_for_every_other(flat_run) -> None:
    result, out, _ = flat_run
    assert result.returncode == 0, result.stderr
    report = _report(out)
    by_description = {}
    for entry in report["series"]:
        assert entry["status"] in {"succeeded", "rejected", "skipped"}, entry
        if entry["status"] != "succeeded":
            assert entry["reason"], f"series without a reason: {entry}"
        by_description.setdefault(entry["modality"], []).append(entry)
    succeeded = [e for e in report["series"] if e["status"] == "succeeded"]
    assert len(succeeded) == 2  # the Philips CT (SEG + RTSTRUCT) and the CT without UIDs (NIfTI)
    reasons = " | ".join(e["reason"] for e in report["series"] if e["status"] != "succeeded")
    for expected in ("MR, model needs CT", "SEG", "RTSTRUCT", "SR", "secondary capture", "localizer"):
        assert expected in reasons, f"missing reason {expected!r} in: {reasons}"
    assert report["non_dicom_files"] == 2
    assert [Path(u["path"]).name for u in report["unreadable"]] == ["broken_ct"]
    assert report["unreadable"][0]["reason"]
    assert report["model"] == "ct-body" and report["medhub_version"] and report["workflow"] == "default"
    assert report["device"] == "cpu"


def test_series_without_uids_gets_nifti_and_says_why(flat_run) -> None:
    _, out, _ = flat_run
    entry = next(e for e in _report(out)["series"] if e["key"].startswith("nouid-"))
    assert entry["status"] == "succeeded"
    # the label map and its labels; no image (the run did not ask for --nifti)
    assert [Path(o).name for o in entry["outputs"]] == ["ct-body.nii.gz", "ct-body.labels.json"]
    assert any("StudyInstanceUID" in note for note in entry["notes"]), entry["notes"]
    image = nib.load(out / entry["outputs"][0])
    assert image.shape == (512, 512, 20)
    assert set(np.unique(np.asarray(image.dataobj)).tolist()) >= {0, 1}


def test_seg_and_rtstruct_are_valid_and_equal_the_label_map(flat_run, flat_folder: Path, assert_valid_dicom) -> None:
    _, out, _ = flat_run
    entry = next(e for e in _report(out)["series"] if e["status"] == "succeeded" and e["series_instance_uid"])
    names = sorted(Path(o).name for o in entry["outputs"])
    assert names == ["ct-body.rtstruct.dcm", "ct-body.seg.dcm"]
    assert Path(entry["outputs"][0]).parent.name == entry["series_instance_uid"]
    for output in entry["outputs"]:
        assert_valid_dicom(out / output)
    assert set(entry["timings"]) >= {"load", "predict", "write_seg", "write_rtstruct"}

    # The label map medhub wrote must equal the model's own label map on the source planes, voxel for voxel.
    series = next(s for s in scan(flat_folder).series if s.series_instance_uid == entry["series_instance_uid"])
    volume = load_series(series)
    model = get_model("ct-body")
    runner = ModelRunner(model)
    runner.load("cpu", {})
    prediction = runner.predict(volume, {})
    expected = labels_to_source(volume, prediction.labels)
    seg = hd.seg.segread(out / next(o for o in entry["outputs"] if o.endswith(".seg.dcm")))
    uids = [plane.dataset.SOPInstanceUID for plane in volume.source.planes]
    present = sorted(v for v in prediction.segments if (prediction.labels == v).any())
    read_back = seg.get_pixels_by_source_instance(uids, segment_numbers=list(range(1, len(present) + 1)),
                                                  combine_segments=True, relabel=True)
    remapped = np.zeros_like(expected)
    for number, value in enumerate(present, start=1):
        remapped[expected == value] = number
    np.testing.assert_array_equal(read_back, remapped)
    tracking = {s.segment_number: s.tracking_id for s in seg.SegmentSequence}
    assert [tracking[n] for n in range(1, len(present) + 1)] == [prediction.segments[v] for v in present]


def test_input_folder_is_untouched_and_no_partial_files(flat_run, flat_folder: Path) -> None:
    _, out, before = flat_run
    assert tree_digest(flat_folder) == before
    leftovers = [p for p in out.rglob("*") if p.name.endswith(".partial") or p.name.startswith(".")]
    assert leftovers == []


def test_doctor_reports_series_and_findings_without_a_model(flat_folder: Path) -> None:
    result = medhub("doctor", str(flat_folder), "--json")
    assert result.returncode == 0, result.stderr
    diagnosis = json.loads(result.stdout)
    assert len(diagnosis["series"]) == 8
    assert diagnosis["non_dicom_files"] == 2 and len(diagnosis["unreadable"]) == 1
    by_modality = {item["modality"] for item in diagnosis["series"]}
    assert {"CT", "MR", "SEG", "RTSTRUCT", "SR"} <= by_modality
    text = medhub("doctor", str(shared_path("edge/dicom2nifti_tests/failing")))
    assert text.returncode == 0
    assert "gantry tilt" in text.stdout and "missing slice" in text.stdout


def test_json_progress_streams_one_event_per_line(tmp_path: Path) -> None:
    source = shared_path(NO_UID_CT)
    result = medhub("run", "ct-body", "--input", str(source), "--output", str(tmp_path / "o"), "--json-progress")
    assert result.returncode == 0, result.stderr
    events = [json.loads(line) for line in result.stdout.splitlines()]
    kinds = [event["event"] for event in events]
    assert kinds[0] == "scan_file" and kinds[-1] == "run_done"
    assert {"scan_done", "selected", "series_start", "step", "series_done"} <= set(kinds)
    done = next(event for event in events if event["event"] == "series_done")
    assert done["status"] == "succeeded"


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--input", "/nonexistent/folder"], "input not found: /nonexistent/folder"),
        (["--input", "{text_only}"], "no DICOM series found"),
        (["--set", "predict"], "expected module.param=value"),
        (["--workflow", "nope"], "has no workflow 'nope'"),
    ],
)
def test_nothing_to_do_exits_2_with_one_line(tmp_path: Path, args: list[str], message: str) -> None:
    text_only = tmp_path / "text"
    text_only.mkdir()
    (text_only / "a.txt").write_text("not dicom")
    args = [a.replace("{text_only}", str(text_only)) for a in args]
    if "--input" not in args:
        args += ["--input", str(shared_path(NO_UID_CT))]
    result = medhub("run", "ct-body", *args, "--output", str(tmp_path / "out"))
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and message in lines[0], result.stderr
    assert "Traceback" not in result.stderr + result.stdout


@pytest.mark.parametrize(
    ("model", "device", "message"),
    [  # one of each refusal the command line adds to hub/devices.py (every name and machine case: test_devices.py)
        ("ct-body", "cuda:0", "model ct-body does not run on cuda: its card lists cpu only"),
        ("deepbet", "cuda", "--device cuda: this machine has no usable CUDA device"),
    ],
)
def test_a_device_the_card_or_the_machine_cannot_use_exits_2_before_any_work(
    tmp_path: Path, model: str, device: str, message: str
) -> None:
    """Issue 10: never a silent CPU run, never a failure after scanning; nothing is written."""
    torch = pytest.importorskip("torch")
    if device.startswith("cuda") and torch.cuda.is_available() or device == "mps" and torch.backends.mps.is_available():
        pytest.skip(f"this machine has {device}")
    out = tmp_path / "out"
    result = medhub("run", model, "--input", str(shared_path(NO_UID_CT)), "--output", str(out), "--device", device)
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and message in lines[0], result.stderr
    assert not out.exists()  # refused before the scan: not even the report


def test_no_matching_series_exits_2_and_still_writes_the_report(tmp_path: Path) -> None:
    result = medhub("run", "deepbet", "--input", str(shared_path(NO_UID_CT)), "--output", str(tmp_path / "out"))
    assert result.returncode == 2
    assert "no series" in result.stderr and "CT, model needs MR" in result.stderr
    report = _report(tmp_path / "out")
    assert report["series"][0]["status"] == "rejected"


def test_unknown_model_names_the_available_ones(tmp_path: Path) -> None:
    result = medhub("run", "nosuchmodel", "--input", str(tmp_path), "--output", str(tmp_path / "o"))
    assert result.returncode == 2
    assert "unknown model 'nosuchmodel'" in result.stderr and "ct-body" in result.stderr


def test_one_broken_series_fails_alone_exit_1(tmp_path: Path) -> None:
    """A CT whose pixel data cannot be decoded fails with its reason; the good series is still written."""
    folder = tmp_path / "in"
    folder.mkdir()
    philips = philips_by_position()
    _copy_renamed(sorted(shared_path(NO_UID_CT).iterdir()), folder, "good")
    _derived_series(philips[:12], folder, "bad", SeriesDescription="broken pixels")
    victims = sorted(folder.glob("bad_*"))[5:8]  # three in a row: more than the 2 missing slices interpolated
    for victim in victims:
        dataset = pydicom.dcmread(victim)
        # A well-formed file whose JPEG 2000 codestream is garbage: the scan accepts it, decoding fails.
        dataset.PixelData = encapsulate([b"\xff\x4f\xff\x51" + b"\x00" * 60])
        dataset["PixelData"].VR = "OB"
        dataset.file_meta.TransferSyntaxUID = JPEG2000Lossless
        dataset.save_as(victim, enforce_file_format=True)
    result = medhub("run", "ct-body", "--input", str(folder), "--output", str(tmp_path / "out"))
    assert result.returncode == 1, result.stdout + result.stderr
    report = _report(tmp_path / "out")
    statuses = {e["description"]: (e["status"], e["reason"]) for e in report["series"]}
    assert statuses["broken pixels"][0] == "failed" and victims[0].name in statuses["broken pixels"][1]
    assert "3 missing slices" in statuses["broken pixels"][1]
    assert statuses["CT Body 3.0"][0] == "succeeded"


def test_workflow_config_and_overrides(tmp_path: Path) -> None:
    config = tmp_path / "wf.yml"
    config.write_text("general: {name: mine}\nexecute: [select, load, predict, write_nifti]\n"
                      "modules:\n  select: {input: 'dicom:mod=ct', min_slices: 5}\n")
    out = tmp_path / "out"
    result = medhub("run", "ct-body", "--input", str(shared_path(NO_UID_CT)), "--output", str(out),
                    "--config", str(config), "--set", "write_nifti.compress=false",
                    "--template", "{modality}/{series_description}")
    assert result.returncode == 0, result.stderr
    report = _report(out)
    assert report["workflow"] == "mine"
    # The workflow names write_nifti: the label map, its labels and the image (no SeriesNumber: 0), uncompressed.
    assert report["series"][0]["outputs"] == ["CT/CT_Body_3.0.nii", "CT/CT_Body_3.0.labels.json",
                                              "CT/CT_Body_3.0_0.nii"]
    assert all((out / o).is_file() for o in report["series"][0]["outputs"])


def test_nifti_input_writes_nifti(tmp_path: Path) -> None:
    source = shared_path("ct/totalsegmentator_nifti/example_ct_sm.nii.gz")
    out = tmp_path / "out"
    result = medhub("run", "ct-body", "--input", str(source), "--output", str(out))
    assert result.returncode == 0, result.stderr
    entry = _report(out)["series"][0]
    written = nib.load(out / entry["outputs"][0])
    original = nib.load(source)
    np.testing.assert_allclose(written.affine, original.affine, atol=1e-4)
    assert written.shape == original.shape
    assert entry["values"]["body_volume_ml"] > 0


def test_output_inside_input_is_refused(tmp_path: Path) -> None:
    folder = tmp_path / "in"
    shutil.copytree(shared_path(NO_UID_CT), folder)
    result = medhub("run", "ct-body", "--input", str(folder), "--output", str(folder / "out"))
    assert result.returncode == 2 and "inside the input folder" in result.stderr
    assert not (folder / "out").exists()
