"""The step registry: a workflow's ``execute`` drives the steps, and every parameter is checked first.

Unit tests of the registry, of the per-series plan (which steps really run for which source and
model) and of :func:`check_workflow`; then the real command line on real DICOM: a bad ``--set``
is refused before any work, and a run writes exactly the steps ``--json-progress`` announced,
validated by dciodvfy.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import shared_path

from medhub.errors import MedhubError
from medhub.hub.card import OutputSpec, ParameterSpec, ValueSpec
from medhub.hub.catalog import get_model
from medhub.hub.workflow import Workflow
from medhub.pipeline.steps import (
    STEPS,
    ModelOutput,
    Phase,
    SourceKind,
    StepName,
    model_outputs,
    series_steps,
)
from medhub.pipeline.workflows import check_workflow, resolve_workflow

THREE_SLICE_CT = "seg/dcmqi_segmentations/ct-3slice"  # 3 real GE CT slices with their UIDs
NO_UID_CT = "ct/totalsegmentator_example_ct_dicom"


def medhub(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "medhub", *args], capture_output=True, text=True, timeout=600,
                          check=False)


def workflow(execute: list[str], **modules: dict) -> Workflow:
    return Workflow.model_validate({"execute": execute, "modules": modules})


# ------------------------------------------------------------------------------------ registry


def test_every_step_name_is_registered_once_with_its_declared_parameters() -> None:
    assert list(STEPS) == list(StepName)
    for name, step in STEPS.items():
        assert step.name is name
        assert all(isinstance(spec, ParameterSpec) and spec.description for spec in step.parameters.values())
    assert [s for s, step in STEPS.items() if step.phase is not Phase.OUTPUT] == ["select", "load", "predict",
                                                                               "check_result"]


def test_model_outputs_follow_the_card() -> None:
    ct_body = get_model("ct-body").card
    assert model_outputs(ct_body) == {ModelOutput.LABELS}
    assert model_outputs(get_model("ct-fm-astra").card) == {ModelOutput.EMBEDDING}
    values_only = ct_body.model_copy(update={"outputs": OutputSpec(values=[ValueSpec(name="score")])})
    assert model_outputs(values_only) == {ModelOutput.VALUES}


SEG = [StepName.SELECT, StepName.LOAD, StepName.PREDICT, StepName.WRITE_SEG]


@pytest.mark.parametrize(
    ("requested", "outputs", "source", "expected"),
    [
        (SEG, {ModelOutput.LABELS}, SourceKind.DICOM, ["load", "predict", "check_result", "write_seg"]),
        # a SEG cannot reference a series without UIDs: NIfTI instead (today's behaviour, now announced)
        (SEG, {ModelOutput.LABELS}, SourceKind.DICOM_WITHOUT_UIDS, ["load", "predict", "check_result", "write_nifti"]),
        (SEG, {ModelOutput.LABELS}, SourceKind.NIFTI, ["load", "predict", "check_result", "write_nifti"]),
        ([*SEG, StepName.WRITE_NIFTI, StepName.WRITE_RTSTRUCT], {ModelOutput.LABELS}, SourceKind.DICOM,
         ["load", "predict", "check_result", "write_seg", "write_nifti", "write_rtstruct"]),
        # a workflow that names no output of a DICOM series writes none (the report still has the values)
        (SEG[:3], {ModelOutput.LABELS}, SourceKind.DICOM, ["load", "predict", "check_result"]),
        (SEG[:3], {ModelOutput.EMBEDDING}, SourceKind.DICOM, ["load", "predict", "check_result", "write_embedding"]),
        ([*SEG, StepName.WRITE_RTSTRUCT], {ModelOutput.EMBEDDING}, SourceKind.DICOM,
         ["load", "predict", "check_result", "write_embedding"]),
        ([*SEG[:3], StepName.WRITE_SR], {ModelOutput.VALUES}, SourceKind.DICOM,
         ["load", "predict", "check_result", "write_values", "write_sr"]),
        ([*SEG[:3], StepName.WRITE_SR], {ModelOutput.VALUES}, SourceKind.NIFTI,
         ["load", "predict", "check_result", "write_values", "write_sr"]),
        # check_result runs after predict whether the workflow names it or not, and always before the outputs
        ([*SEG[:3], StepName.CHECK_RESULT, StepName.WRITE_SEG], {ModelOutput.LABELS}, SourceKind.DICOM,
         ["load", "predict", "check_result", "write_seg"]),
        ([*SEG[:3], StepName.CHECK_RESULT, StepName.WRITE_SR], {ModelOutput.VALUES}, SourceKind.DICOM,
         ["load", "predict", "check_result", "write_values", "write_sr"]),
    ],
)
def test_series_steps_are_exactly_the_steps_that_run(requested, outputs, source, expected) -> None:
    assert series_steps(requested, outputs, source) == expected


# ------------------------------------------------------------------------------------ checking


@pytest.fixture(scope="module")
def ct_body():
    return get_model("ct-body")


@pytest.mark.parametrize(
    ("execute", "modules", "message"),
    [
        (["select", "load", "predict", "write_sef"], {},
         "execute: write_sef: not a step medhub runs; did you mean 'write_seg'? (steps: select, load, predict"),
        (["select", "load", "write_seg"], {}, "execute: must name select, load, predict; it lacks predict"),
        (["select", "load", "write_seg", "predict"], {}, "execute: steps out of order (select, load, write_seg, "
                                                         "predict); expected select, load, predict, write_seg"),
        (["select", "load", "predict", "write_seg", "write_seg"], {}, "execute: write_seg named more than once"),
        (["select", "load", "predict", "write_seg"], {"write_seg": {"lablemap": True}},
         "write_seg.lablemap: step write_seg has no parameter 'lablemap'; did you mean 'labelmap'? "
         "(parameters: body_part_examined, labelmap, path, series_description)"),
        (["select", "load", "predict", "write_seg"], {"write_seg": {"labelmap": "maybe"}},
         "write_seg.labelmap=maybe: labelmap of step write_seg must be true or false"),
        (["select", "load", "predict", "write_seg"], {"write_nifti": {"compress": 1}},
         "write_nifti.compress=1: compress of step write_nifti must be true or false"),
        (["select", "load", "predict", "write_seg"], {"write_nifti": {"path": "{series_uid}/labels.nrrd"}},
         "write_nifti.path={series_uid}/labels.nrrd: path of step write_nifti must end in .nii.gz or .nii"),
        (["select", "load", "predict", "write_seg"], {"writeseg": {"labelmap": True}},
         "writeseg: not a step medhub runs; did you mean 'write_seg'?"),
        (["select", "load", "predict", "write_sr"], {"write_sr": {"labelmap": True}},
         "write_sr.labelmap: step write_sr has no parameter 'labelmap'; (parameters: path)"),
        (["select", "load", "predict"], {"write_embedding": {"x": 1}},
         "write_embedding.x: step write_embedding has no parameter 'x'; (it has no parameters)"),
        (["select", "load", "predict"], {"select": {"min_slice": 3}},
         "select.min_slice: no selection rule 'min_slice'; did you mean 'min_slices'?"),
        (["select", "load", "predict"], {"predict": {"body_HU": 3}},
         "predict.body_HU: model ct-body has no parameter 'body_HU'; did you mean 'body_hu'?"),
    ],
)
def test_check_workflow_refuses_with_one_line_naming_the_key(ct_body, execute, modules, message) -> None:
    with pytest.raises(MedhubError) as caught:
        check_workflow(workflow(execute, **modules), ct_body.card)
    assert message in str(caught.value)
    assert "\n" not in str(caught.value)


def test_every_built_in_workflow_passes_the_check() -> None:
    from medhub.hub.catalog import list_entries
    from medhub.hub.workflow import load_workflow_file

    checked = 0
    for entry in list_entries():
        for path in entry.workflows.values():
            check_workflow(load_workflow_file(path), entry.card)
            checked += 1
    assert checked >= 12


def test_resolve_applies_overrides_switches_and_checks(ct_body) -> None:
    resolved = resolve_workflow(ct_body, overrides=["write_nifti.compress=false"],
                                add_steps=[StepName.WRITE_RTSTRUCT, StepName.WRITE_NIFTI], labelmap=True)
    assert resolved.execute == ["select", "load", "predict", "write_seg", "write_rtstruct", "write_nifti"]
    assert resolved.params("write_seg")["labelmap"] is True
    assert resolved.params("write_nifti") == {"compress": False}
    with pytest.raises(MedhubError, match="model ct-body has no workflow 'nope'; available: default, rtstruct"):
        resolve_workflow(ct_body, name="nope")
    with pytest.raises(MedhubError, match=r"write_seg.labelmap=3: labelmap of step write_seg must be true or false"):
        resolve_workflow(ct_body, overrides=["write_seg.labelmap=3"])


# ------------------------------------------------------------------------------------ the real command line


def test_a_bad_set_is_refused_before_any_work(tmp_path: Path) -> None:
    out = tmp_path / "out"
    result = medhub("run", "ct-body", "--input", str(shared_path(THREE_SLICE_CT)), "--output", str(out),
                    "--set", "write_seg.labelmap=maybe")
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "write_seg.labelmap=maybe: labelmap of step write_seg must be true or false" in lines[0]
    assert not out.exists()  # nothing scanned, nothing written


def test_run_writes_exactly_the_announced_steps_valid_dicom(tmp_path: Path, assert_valid_dicom) -> None:
    """ct-body on 3 real CT slices: SEG, RTSTRUCT, NIfTI in execute order; every step announced and run."""
    out = tmp_path / "out"
    result = medhub("run", "ct-body", "--input", str(shared_path(THREE_SLICE_CT)), "--output", str(out),
                    "--set", "select.min_slices=1", "--rtstruct", "--nifti", "--json-progress")
    assert result.returncode == 0, result.stderr
    events = [json.loads(line) for line in result.stdout.splitlines()]
    start = next(e for e in events if e["event"] == "series_start")
    assert start["steps"] == ["load", "predict", "check_result", "write_seg", "write_rtstruct", "write_nifti"]
    ran = [e["step"] for e in events if e["event"] == "step"]
    assert ran == start["steps"]  # exactly: predict's model_load is timed in the report, not a step of its own
    assert [e["step"] for e in events if e["event"] == "step_done"] == start["steps"]
    entry = json.loads((out / "medhub-report.json").read_text())["series"][0]
    assert entry["status"] == "succeeded"
    assert [Path(o).name for o in entry["outputs"]] == [
        "ct-body.seg.dcm", "ct-body.rtstruct.dcm", "ct-body.nii.gz", "ct-body.labels.json",
        "none_2.nii.gz"]  # --nifti: the label map, its labels, the image (no SeriesDescription: "none", number 2)
    for output in entry["outputs"][:2]:
        assert_valid_dicom(out / output)


def test_series_without_uids_announces_the_nifti_it_writes(tmp_path: Path) -> None:
    out = tmp_path / "out"
    result = medhub("run", "ct-body", "--input", str(shared_path(NO_UID_CT)), "--output", str(out),
                    "--json-progress")
    assert result.returncode == 0, result.stderr
    events = [json.loads(line) for line in result.stdout.splitlines()]
    start = next(e for e in events if e["event"] == "series_start")
    assert start["steps"] == ["load", "predict", "check_result", "write_nifti"]
    entry = json.loads((out / "medhub-report.json").read_text())["series"][0]
    assert entry["outputs"][0].endswith("ct-body.nii.gz")
    assert any("cannot reference them" in note for note in entry["notes"])
