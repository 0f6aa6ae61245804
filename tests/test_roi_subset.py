"""``--roi-subset``: names checked against the card before any work; only the named segments written.

The end-to-end runs use ct-body (no weights, about a second per series) on the real abdominal CT
of ``ct/totalsegmentator_example_ct_dicom``, rewritten with UIDs (its own files carry none, so a
SEG could not reference them) and cut to 8 slices: a SEG, an RTSTRUCT, a NIfTI and the statistics
each hold only the kept segment, dciodvfy finds no error, and the kept segment's voxels are
exactly those of the run without a subset. TotalSegmentator's weights are not on this machine:
the hand-over to its python API is checked at unit level (what the runner passes upstream), not run.
"""

from __future__ import annotations

import csv
import json
import os
import re
import subprocess
import sys
import time
import zipfile
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np
import pydicom
import pytest
from conftest import shared_path

from medhub.data.prediction import Prediction
from medhub.errors import MedhubError
from medhub.hub.catalog import get_model
from medhub.hub.roi_subset import resolve_roi_subset
from medhub.hub.runner import RunnerContext
from medhub.pipeline.plausibility import check_result

NO_UID_CT = "ct/totalsegmentator_example_ct_dicom"
ROOT = Path(__file__).resolve().parents[1]


def medhub(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "medhub", *args], capture_output=True, text=True, timeout=300,
                          check=False, env=dict(os.environ))


# ----------------------------------------------------------------------------------- names


def test_names_are_the_cards_segment_ids_in_any_case_in_the_cards_order() -> None:
    card = get_model("totalsegmentator").card
    assert resolve_roi_subset(card, ["liver", "Right-Kidney", "SPLEEN,aorta"]) == (
        "SPLEEN", "RIGHT_KIDNEY", "LIVER", "AORTA")
    assert resolve_roi_subset(card, ["liver", "LIVER"]) == ("LIVER",)
    assert resolve_roi_subset(card, []) == ()


@pytest.mark.parametrize(("model", "name", "suggestion"), [
    ("totalsegmentator", "kidney_right", "RIGHT_KIDNEY"),  # TotalSegmentator's own class name
    ("totalsegmentator", "lung_upper_lobe_left", "LEFT_LUNG_UPPER_LOBE"),
    ("ct-body", "bnoe", "BONE"),
    ("brainchop-subcortical", "hipocampus", "HIPPOCAMPUS"),
])
def test_an_unknown_name_is_one_line_with_a_suggestion_and_what_is_allowed(model: str, name: str,
                                                                          suggestion: str) -> None:
    card = get_model(model).card
    with pytest.raises(MedhubError) as info:
        resolve_roi_subset(card, ["LIVER" if model == "totalsegmentator" else card.outputs.segments[1], name])
    message = str(info.value)
    assert "\n" not in message
    assert f"'{name}' is not a segment of model {model}; did you mean {suggestion}?" in message
    if len(card.outputs.segments) <= 20:
        assert ", ".join(card.outputs.segments.values()) in message
    else:
        assert f"has {len(card.outputs.segments)} segments" in message and f"medhub info {model}" in message


def test_a_model_with_one_segment_or_none_refuses_the_option() -> None:
    with pytest.raises(MedhubError, match=r"model deepbet has one segment \(BRAIN\); the option chooses"):
        resolve_roi_subset(get_model("deepbet").card, ["BRAIN"])
    with pytest.raises(MedhubError, match="model ct-fm-astra has no segments"):
        resolve_roi_subset(get_model("ct-fm-astra").card, ["LUNG"])


def test_the_cli_takes_several_names_after_one_flag_as_totalsegmentator_does() -> None:
    from medhub.cli.run import gather_roi_subset

    assert gather_roi_subset(["ct-body", "--roi-subset", "BONE", "BODY", "-i", "x"]) == \
        ["ct-body", "--roi-subset", "BONE,BODY", "-i", "x"]
    assert gather_roi_subset(["ct-body", "-i", "x", "--roi_subset", "liver", "spleen"]) == \
        ["ct-body", "-i", "x", "--roi_subset", "liver,spleen"]
    assert gather_roi_subset(["ct-body", "--roi-subset", "--nifti"]) == ["ct-body", "--roi-subset", "--nifti"]


@pytest.mark.parametrize(("args", "expected"), [
    (["ct-body", "--roi-subset", "BONE", "bnoe"], "medhub: --roi-subset: 'bnoe' is not a segment of model ct-body; "
                                                  "did you mean BONE? model ct-body has the segments BODY, "
                                                  "LEFT_LUNG, RIGHT_LUNG, BONE, LUNG"),
    (["deepbet", "--roi-subset", "BRAIN"], "medhub: --roi-subset: model deepbet has one segment (BRAIN)"),
])
def test_the_cli_refuses_before_any_work(tmp_path: Path, args: list[str], expected: str) -> None:
    out = tmp_path / "out"
    result = medhub("run", args[0], "--input", str(shared_path(NO_UID_CT)), "--output", str(out), *args[1:])
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [result.stderr.strip()]  # one line, no traceback
    assert result.stderr.startswith(expected)
    assert not out.exists()  # nothing claimed, nothing written


# ----------------------------------------------------------------------------------- real runs


@pytest.fixture(scope="module")
def ct_with_uids(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """8 slices of the real abdominal CT, written with UIDs so that a SEG and an RTSTRUCT can reference them."""
    from medhub.inputs.load import load_series
    from medhub.inputs.scan import scan
    from medhub.inputs.synth import write_dicom_series

    volume = load_series(scan(shared_path(NO_UID_CT)).series[0])
    affine = volume.affine_lps.copy()
    affine[:3, 3] = (volume.affine_lps @ np.array([0.0, 0.0, 6.0, 1.0]))[:3]
    out = tmp_path_factory.mktemp("ct-uids")
    write_dicom_series(volume.array[:, :, 6:14], affine, out, modality="CT", series_description="abdomen crop",
                       uid_seed="medhub-test-roi-subset")
    return out


@pytest.fixture(scope="module")
def runs(ct_with_uids: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """ct-body without a subset and with ``--roi-subset bone`` (SEG, RTSTRUCT, NIfTI, statistics)."""
    folders = {}
    for name, extra in (("all", []), ("bone", ["--roi-subset", "bone"])):
        out = tmp_path_factory.mktemp(f"roi-{name}")
        result = medhub("run", "ct-body", "--input", str(ct_with_uids), "--output", str(out), "--rtstruct",
                        "--nifti", "--statistics", *extra)
        assert result.returncode == 0, result.stderr
        folders[name] = out
    return folders


def _one(folder: Path, pattern: str) -> Path:
    found = sorted(folder.rglob(pattern))
    assert len(found) == 1, (pattern, found)
    return found[0]


def test_only_the_named_segment_is_written_and_its_voxels_are_unchanged(runs: dict[str, Path]) -> None:
    everything = np.asarray(nib.load(_one(runs["all"], "ct-body.nii.gz")).dataobj)  # the label map, not the image
    bone = np.asarray(nib.load(_one(runs["bone"], "ct-body.nii.gz")).dataobj)
    bone_value = next(v for v, s in get_model("ct-body").card.outputs.segments.items() if s == "BONE")
    assert len(set(np.unique(everything).tolist()) - {0}) >= 2  # the full run has more than bone
    assert set(np.unique(bone).tolist()) == {0, bone_value}
    assert np.array_equal(bone == bone_value, everything == bone_value)

    with _one(runs["bone"], "*.statistics.csv").open(newline="", encoding="utf-8") as handle:
        assert [row["segment_id"] for row in csv.DictReader(handle)] == ["BONE"]
    statistics = json.loads(_one(runs["bone"], "*.statistics.json").read_text(encoding="utf-8"))
    assert "BONE" in json.dumps(statistics) and "BODY" not in json.dumps(statistics)

    report = json.loads((runs["bone"] / "medhub-report.json").read_text(encoding="utf-8"))
    assert report["roi_subset"] == ["BONE"]
    series = report["series"][0]
    assert series["status"] == "succeeded"
    assert "roi subset: kept BONE (1 of 5 segments)" in series["notes"]
    # the whole result was judged against every range of the card before the other segments were dropped
    ranges = len(get_model("ct-body").card.outputs.plausible)
    assert f"plausible: the result is within the {ranges} ranges of its card" in series["notes"]
    assert json.loads((runs["all"] / "medhub-report.json").read_text(encoding="utf-8"))["roi_subset"] == []


def test_the_seg_and_rtstruct_hold_only_the_named_segment_and_are_valid(runs: dict[str, Path],
                                                                       assert_valid_dicom) -> None:
    seg_path, rtstruct_path = _one(runs["bone"], "*.seg.dcm"), _one(runs["bone"], "*.rtstruct.dcm")
    seg = pydicom.dcmread(seg_path)
    assert [s.SegmentLabel for s in seg.SegmentSequence] == ["Bone"]
    assert seg.SOPClassUID == "1.2.840.10008.5.1.4.1.1.66.4" and seg.SegmentationType == "BINARY"  # the default
    assert len(pydicom.dcmread(_one(runs["all"], "*.seg.dcm")).SegmentSequence) >= 2
    rtstruct = pydicom.dcmread(rtstruct_path)
    assert [roi.ROIName for roi in rtstruct.StructureSetROISequence] == ["Bone"]
    assert_valid_dicom(seg_path)
    assert_valid_dicom(rtstruct_path)


def test_resume_redoes_a_series_made_with_another_subset(ct_with_uids: Path, tmp_path: Path) -> None:
    """--resume takes a finished series only when it kept the same segments: its files would differ otherwise."""
    out = tmp_path / "out"
    first = medhub("run", "ct-body", "--input", str(ct_with_uids), "--output", str(out), "--roi-subset", "BONE")
    assert first.returncode == 0, first.stderr
    same = medhub("run", "ct-body", "--input", str(ct_with_uids), "--output", str(out), "--roi-subset", "bone",
                  "--resume")
    assert same.returncode == 0, same.stderr
    notes = json.loads((out / "medhub-report.json").read_text(encoding="utf-8"))["series"][0]["notes"]
    assert any(note.startswith("resumed:") for note in notes), notes
    other = medhub("run", "ct-body", "--input", str(ct_with_uids), "--output", str(out), "--roi-subset", "BODY",
                   "--resume")
    assert other.returncode == 0, other.stderr
    series = json.loads((out / "medhub-report.json").read_text(encoding="utf-8"))["series"][0]
    assert series["notes"][0].endswith("or another --roi-subset"), series["notes"]
    seg = pydicom.dcmread(_one(out, "*.seg.dcm"))
    assert [s.SegmentLabel for s in seg.SegmentSequence] == ["Body"]


# ----------------------------------------------------------------------------------- the server


def test_the_server_checks_the_names_as_the_cli_does_and_runs_the_subset(tmp_path: Path,
                                                                         ct_with_uids: Path) -> None:
    from fastapi.testclient import TestClient

    from medhub.serve.app import create_app
    from medhub.serve.settings import ServeSettings

    token = "roi-subset-token"
    settings = ServeSettings(data_dir=tmp_path / "data", token=token)
    files = [("files", (p.name, p.read_bytes())) for p in sorted(ct_with_uids.iterdir())]
    with TestClient(create_app(settings), headers={"Authorization": f"Bearer {token}"}) as client:
        typo = client.post("/api/jobs", data={"model": "ct-body", "options": '{"roi_subset": ["bnoe"]}'}, files=files)
        assert typo.status_code == 422
        assert typo.json()["detail"].startswith("--roi-subset: 'bnoe' is not a segment of model ct-body; did you "
                                                "mean BONE?")
        single = client.post("/api/jobs", data={"model": "deepbet", "options": '{"roi_subset": ["BRAIN"]}'},
                             files=files)
        assert single.status_code == 422 and "has one segment (BRAIN)" in single.json()["detail"]
        assert not settings.jobs_dir.exists() or not list(settings.jobs_dir.iterdir())  # nothing stored

        accepted = client.post("/api/jobs", data={"model": "ct-body", "options": '{"roi_subset": ["bone"]}'},
                               files=files)
        assert accepted.status_code == 201, accepted.text
        job = accepted.json()
        assert job["options"]["roi_subset"] == ["BONE"]  # the card's own ID, as the run uses it
        deadline = time.monotonic() + 120
        while job["status"] in ("queued", "running") and time.monotonic() < deadline:
            time.sleep(0.5)
            job = client.get(f"/api/jobs/{job['id']}").json()
        assert job["status"] == "succeeded", job
        assert job["report"]["roi_subset"] == ["BONE"]
        nifti = next(r["path"] for r in job["results"] if r["path"].endswith("/ct-body.nii.gz"))  # not the image
        labels = np.asarray(nib.load(settings.output_dir(job["id"]) / nifti).dataobj)
        assert set(np.unique(labels).tolist()) == {0, 4}
        series = next(r["series"] for r in job["results"] if r["path"] == nifti)
        meta = client.get(f"/api/jobs/{job['id']}/viewer/{series}/meta")
        assert meta.status_code == 200, meta.text
        assert [row["id"] for row in meta.json()["segments"]] == ["BONE"]  # no 0 ml rows for segments not kept


# ----------------------------------------------------------------------------------- plausibility


def test_ranges_naming_segments_the_model_was_not_asked_for_are_left_out() -> None:
    card = get_model("totalsegmentator").card
    labels = np.zeros((8, 8, 4), dtype=np.uint8)
    labels[:4] = 5  # LIVER on the array's low x: the patient's right in LPS
    prediction = Prediction(labels=labels, segments={5: "LIVER"})
    judged = check_result(card, None, prediction, predicted={"LIVER"})
    assert judged.skipped == len(card.outputs.plausible) and not judged.violations
    everything = check_result(card, None, prediction)
    assert everything.skipped == 0 and everything.checks >= len(card.outputs.plausible)


# ----------------------------------------------------------------------------------- TotalSegmentator hand-over


def _totalsegmentator_names() -> dict[int, str]:
    """Label value → TotalSegmentator's class name, from the comments of the card (``5: LIVER  # liver``).

    test_totalsegmentator.py checks these against the package's own class map in its venv.
    """
    text = (ROOT / "src/medhub/models/totalsegmentator/card.yaml").read_text(encoding="utf-8")
    return {int(value): name for value, name in re.findall(r"^\s+(\d+): [A-Z0-9_]+\s+# (\S+)", text, re.M)}


class _RecordingApi:
    """Stands in for ``totalsegmentator.python_api`` (not installed here): records the call, returns a label map."""

    def __init__(self, nib_module: Any) -> None:
        self.nib, self.calls = nib_module, []

    def totalsegmentator(self, image: Any, output: Any, **kwargs: Any) -> Any:
        self.calls.append(kwargs)
        labels = np.zeros(image.shape, dtype=np.uint8)
        labels[:2] = 5  # LIVER
        labels[-2:] = 1  # SPLEEN
        return self.nib.Nifti1Image(labels, image.affine)


def _runner(card: Any, fast: bool, weights: dict[str, Path] | None = None) -> Any:
    from medhub.models.totalsegmentator.runner import Runner

    runner = Runner()
    runner.context = RunnerContext(card=card, folder=ROOT, weights=weights or {}, params={"fast": fast})
    runner._fast, runner._device, runner._nib = fast, "cpu", nib
    runner._class_names, runner._locator_ready = _totalsegmentator_names(), False
    runner._api = _RecordingApi(nib)
    return runner


def test_totalsegmentator_full_mode_hands_the_subset_upstream_by_its_class_names() -> None:
    card = get_model("totalsegmentator").card
    assert card.outputs.roi_subset is True
    names = _totalsegmentator_names()
    assert len(names) == len(card.outputs.segments) and names[5] == "liver" and names[2] == "kidney_right"
    full = _runner(card, fast=False).upstream_arguments({"roi_subset": ["RIGHT_KIDNEY", "LIVER"]})
    assert full["roi_subset_robust"] == ["kidney_right", "liver"]  # the card's order, TotalSegmentator's names
    assert "roi_subset" not in full  # its 6 mm locator (Dataset298) is not on the card: never downloaded behind us
    assert {k: full[k] for k in ("task", "fast", "ml")} == {"task": "total", "fast": False, "ml": True}
    fast = _runner(card, fast=True).upstream_arguments({"roi_subset": ["LIVER"]})
    assert "roi_subset_robust" not in fast and "roi_subset" not in fast  # one 3 mm pass: the hub filters
    assert "roi_subset_robust" not in _runner(card, fast=False).upstream_arguments({})


def test_totalsegmentator_full_mode_prepares_its_locator_through_the_weights_manager(tmp_path: Path,
                                                                                     monkeypatch) -> None:
    """The 3 mm model TotalSegmentator locates the subset with is fetched, verified and unpacked by medhub."""
    from medhub.hub.weights import sha256_file
    from medhub.inputs.nifti import load_nifti

    monkeypatch.setenv("MEDHUB_WEIGHTS_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("MEDHUB_WEIGHTS_MIRROR", str(tmp_path / "mirror"))
    entry = get_model("totalsegmentator")
    folder = "Dataset297_TotalSegmentator_total_3mm_1559subj"
    made = tmp_path / "made" / f"{folder}.zip"
    made.parent.mkdir()
    with zipfile.ZipFile(made, "w") as archive:  # a stand-in release zip with the real layout's top folder
        archive.writestr(f"{folder}/nnUNetTrainer_4000epochs_NoMirroring__nnUNetPlans__3d_fullres/plans.json", "{}")
    weights = [w.model_copy(update={"url": made.as_uri(), "sha256": sha256_file(made), "size": made.stat().st_size})
               if w.name.startswith("Dataset297_") else w for w in entry.card.weights]
    card = entry.card.model_copy(update={"weights": weights})
    runner = _runner(card, fast=False)
    volume = load_nifti(shared_path("ct/totalsegmentator_nifti/example_ct_sm.nii.gz"))
    prediction = runner.predict(volume, {"fast": False, "roi_subset": ["LIVER"]})
    assert runner._api.calls[-1]["roi_subset_robust"] == ["liver"]
    unpacked = tmp_path / "cache" / "totalsegmentator" / "nnunet" / folder
    assert (unpacked / "nnUNetTrainer_4000epochs_NoMirroring__nnUNetPlans__3d_fullres" / "plans.json").is_file()
    assert set(prediction.segments.values()) == {"LIVER", "SPLEEN"}  # what upstream returned; the hub filters next
