"""``medhub new`` then ``medhub check``: a fresh package passes, and each kind of mistake is one failing line.

The scaffold's sample is a synthetic CT phantom written with medhub.inputs.synth (valid DICOM, checked
with dciodvfy below); the catalog tests run the same package on real scanner data.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from medhub.authoring.check import check_model
from medhub.authoring.new import create, model_names
from medhub.errors import MedhubError
from medhub.inputs.sample import write_ct_phantom


def medhub(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "medhub", *args], capture_output=True, text=True, cwd=cwd,
                          env={**os.environ, "COLUMNS": "80"}, check=False, timeout=300)


@pytest.fixture
def project(tmp_path) -> Path:
    """A fresh scaffold with its reference written by the first check (as ``medhub new`` does)."""
    return create("mymodel", tmp_path)


def failures(project: Path, **kwargs) -> list[str]:
    return [r.line() for r in check_model(str(project), **kwargs) if r.failed]


def test_new_then_check_passes_in_an_empty_folder(tmp_path):
    proc = medhub("new", "mymodel", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert "next: pip install -e ./mymodel " in proc.stdout  # issue 13: the step that makes `medhub models` list it
    root = tmp_path / "mymodel"
    written = sorted(p.relative_to(root).as_posix() for p in root.rglob("*") if p.is_file())
    assert written == ["pyproject.toml", "src/mymodel/__init__.py", "src/mymodel/card.yaml",
                       "src/mymodel/reference/labels.nii.gz", "src/mymodel/reference/values.json",
                       "src/mymodel/runner.py", "src/mymodel/workflows/default.yml", "tests/test_model.py"]
    python = sum(len(p.read_text().splitlines()) for p in (root / "src").rglob("*.py"))
    assert python <= 25  # the model is its own lines only: the hub does the rest (issue 11)
    pyproject = (root / "pyproject.toml").read_text()
    assert '[project.entry-points."medhub.models"]\nmymodel = "mymodel"' in pyproject
    card = yaml.safe_load((root / "src/mymodel/card.yaml").read_text())
    assert card["sample"]["generator"] == "medhub.inputs.sample:write_ct_phantom"

    proc = medhub("check", "mymodel", cwd=tmp_path)  # a path relative to the current folder
    assert proc.returncode == 0, proc.stdout + proc.stderr
    lines = proc.stdout.splitlines()
    assert lines[-1] == "all checks passed"
    assert "OK   reference: BONE Dice 1.0000" in lines
    assert not [line for line in lines if line.startswith("FAIL")]

    proc = medhub("new", "mymodel", cwd=tmp_path)
    assert proc.returncode == 2 and "exists and is not empty" in proc.stderr


def test_the_scaffolds_own_tests_pass(project):
    proc = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", str(project / "tests")],
                          capture_output=True, text=True, cwd=project, check=False, timeout=300,
                          env={**os.environ, "PYTHONPATH": os.pathsep.join(
                              [str(project / "src"), *filter(None, [os.environ.get("PYTHONPATH")])])})
    assert proc.returncode == 0, proc.stdout[-3000:]
    assert "1 passed" in proc.stdout


def test_the_sample_is_valid_dicom_and_the_same_bytes_every_time(tmp_path, assert_valid_dicom):
    first = write_ct_phantom(tmp_path / "a", "mymodel")
    files = sorted(first.iterdir())
    assert len(files) == 12
    assert_valid_dicom(files[0])
    again = sorted(write_ct_phantom(tmp_path / "b", "mymodel").iterdir())
    assert [f.read_bytes() for f in files] == [f.read_bytes() for f in again]


def test_broken_card_gives_one_line_per_problem_with_the_fix(project):
    card = project / "src" / "mymodel" / "card.yaml"
    text = card.read_text()
    card.write_text(text.replace("title:", "titel:").replace("training_type: algorithmic", "training_type: manual")
                    .replace("min_slices: 5", "min_slices: 0"))
    proc = medhub("check", str(project), cwd=project)
    assert proc.returncode == 1
    lines = proc.stdout.splitlines()
    fails = [line for line in lines if line.startswith("FAIL")]
    assert len(fails) == 4, proc.stdout
    assert any("title: missing required field 'title': rename 'titel' to 'title'" in f for f in fails)
    assert any("titel: unknown field 'titel': did you mean 'title'?" in f for f in fails)
    assert any("training_type: Input should be 'supervised'" in f and "(got 'manual')" in f for f in fails)
    assert any("inputs.0.min_slices: Input should be greater than or equal to 1" in f for f in fails)
    assert lines[-1] == "4 check(s) failed"


def test_broken_runner_is_one_line_with_file_and_line(project):
    runner = project / "src" / "mymodel" / "runner.py"
    runner.write_text(runner.read_text().replace("import numpy as np", "import numpy as = np"))
    fails = failures(project)
    assert len(fails) == 2
    assert fails[0].startswith("FAIL runner: importing mymodel.runner raised SyntaxError")
    line = 1 + runner.read_text().splitlines().index("import numpy as = np")
    assert fails[0].endswith(f"(runner.py, line {line}): fix {runner}:{line}")
    assert fails[1] == "FAIL run: not run: fix the runner first"

    runner.write_text("class Model:\n    pass\n")
    assert failures(project)[0] == (f"FAIL runner: model mymodel: mymodel.runner defines no class named 'Runner': "
                                    f"add 'class Runner(medhub.Runner)' to {runner}")
    runner.write_text("class Runner:\n    def predict(self, volume, params):\n        return volume.array > 0\n")
    assert failures(project)[0] == (f"FAIL runner: model mymodel: mymodel.runner.Runner does not subclass "
                                    f"medhub.Runner: add 'class Runner(medhub.Runner)' to {runner}")


def test_changed_outputs_fail_the_reference_comparison_until_it_is_rewritten(project):
    workflow = project / "src" / "mymodel" / "workflows" / "default.yml"
    workflow.write_text(workflow.read_text() + "modules:\n  predict: {threshold: 720}\n")  # half of the bone
    fails = failures(project)
    assert len(fails) == 2, fails
    assert fails[0].startswith("FAIL reference: BONE Dice 0.")
    assert "< 0.99: fix the model, or if the change is intended: medhub check" in fails[0]
    assert fails[1].startswith("FAIL reference: value bone_volume_ml = ") and "reference 2.17" in fails[1]

    assert failures(project, write_reference=True) == []
    assert json.loads((project / "src/mymodel/reference/values.json").read_text())["bone_volume_ml"] < 2.17
    assert failures(project) == []


def test_unknown_segment_workflow_mismatch_and_missing_weights_are_reported(project, tmp_path, monkeypatch):
    monkeypatch.setenv("MEDHUB_WEIGHTS_CACHE", str(tmp_path / "cache"))
    monkeypatch.delenv("MEDHUB_WEIGHTS_MIRROR", raising=False)
    card = project / "src" / "mymodel" / "card.yaml"
    text = card.read_text().replace("1: BONE ", "1: BONES ").replace("volume_of: BONE ", "volume_of: BONES ")
    card.write_text(text.replace(
        "weights: []", f"weights:\n  - name: net.pt\n    url: file://{tmp_path}/net.pt\n    sha256: {'a' * 64}\n"))
    workflow = project / "src" / "mymodel" / "workflows" / "default.yml"
    modules = 'modules:\n  select: {input: "dicom:mod=mr"}\n  predict: {threshold: 300}\n'
    workflow.write_text(workflow.read_text() + modules)
    rtstruct = workflow.with_name("rtstruct.yml")  # a second workflow with a typo in a predict key
    rtstruct.write_text(workflow.read_text().replace("select: {input: \"dicom:mod=mr\"}", "select: {}")
                        .replace("threshold:", "treshold:"))
    fails = failures(project)
    assert any(f.startswith("FAIL workflows:") and "rtstruct.yml: modules.predict.treshold: model mymodel has no "
               "parameter 'treshold'; did you mean 'threshold'?" in f for f in fails), fails
    assert any(f.startswith("FAIL segments: label 1: 'BONES' is not in the segment database; did you mean BONE")
               for f in fails)
    assert any(f.startswith("FAIL workflows:") and "'dicom:mod=mr' is none of the card's input queries" in f
               for f in fails)
    weights = next(f for f in fails if f.startswith("FAIL weights:"))
    assert "net.pt not found" in weights and "(or run: medhub pull mymodel)" in weights


def test_missing_sample_and_reference_say_what_to_add(project):
    card_path = project / "src" / "mymodel" / "card.yaml"
    data = yaml.safe_load(card_path.read_text())
    del data["sample"]["reference"]
    card_path.write_text(yaml.safe_dump(data))
    assert failures(project) == ["FAIL reference: the card has no sample.reference: add 'reference: {folder: "
                                 "reference}' under sample, then run medhub check PATH --write-reference and review it"]
    del data["sample"]
    card_path.write_text(yaml.safe_dump(data))
    fails = failures(project)
    assert len(fails) == 1 and fails[0].startswith("FAIL sample: the card has no 'sample': add sample:")


def test_check_by_catalog_name_and_bad_names():
    results = check_model("ct-body")
    assert results[0].line().startswith("OK   card: ct-body")
    assert any(r.line().startswith("OK   runner: medhub.models.ct_body.runner.Runner") for r in results)
    with pytest.raises(MedhubError, match="unknown model 'no-such-model'"):
        check_model("no-such-model")
    with pytest.raises(MedhubError, match="use letters, digits and dashes"):
        model_names("1model")
    assert model_names("My_Model") == ("my-model", "my_model")
