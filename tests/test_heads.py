"""Few-shot heads: labels.csv, training with cross-validation, the head on disk, the catalog, the CLI, the SR.

Two layers:

* mechanics (labels, errors, metrics, save/load, registry) with a small deterministic stand-in
  embedder (an intensity histogram) on real CT NIfTI variants: seconds, no network weights;
* the whole path with the real ``ct-fm-astra`` encoder on six real CT series and variants
  (Philips head CT, TotalSegmentator DICOM and NIfTI): ``medhub heads train`` → ``heads list`` →
  ``medhub run NAME`` (JSON, CSV, SR) → ``heads evaluate``, the encoder loaded once per session
  and every embedding computed once (the embedding cache serves the later runs).
"""

from __future__ import annotations

import csv
import hashlib
import json
import shutil
from pathlib import Path
from types import SimpleNamespace

import nibabel as nib
import numpy as np
import pydicom
import pytest
from conftest import shared_path
from typer.testing import CliRunner

import medhub.cli.heads  # noqa: F401 - registers `medhub heads` on the app (as medhub.cli.main does)
from medhub.cli.main import app
from medhub.errors import MedhubError
from medhub.heads.labels import read_labels, resolve_cases
from medhub.heads.metrics import classification_metrics, format_metrics
from medhub.heads.model import HEAD_FILE, load_head
from medhub.heads.registry import find_head, heads_root
from medhub.heads.source import HeadEntry, head_entries
from medhub.heads.train import check_labels, evaluate_head, train_head
from medhub.hub.card import ModelCard
from medhub.hub.runner import RunnerContext
from medhub.hub.workflow import load_workflow_file
from medhub.inputs.load import load_series
from medhub.inputs.scan import scan
from medhub.inputs.synth import write_dicom_series

CT = "ct"
STANDIN_CARD = ModelCard.model_validate({
    "id": "standin-encoder", "name": "standin-encoder", "title": "histogram stand-in", "description": "tests only",
    "version": "1", "task": "regression", "modality": ["CT"], "body_part": "WHOLEBODY",
    "inputs": [{"query": "dicom:mod=ct"}], "outputs": {}, "architecture": "intensity histogram",
    "training_type": "algorithmic", "licence": {"code": "Apache-2.0", "weights": "none"}, "source": "tests",
})


def standin_embedder(encoder: str, volume) -> SimpleNamespace:
    """A deterministic 29-value feature (HU histogram + extent + mean/std) standing in for a real encoder."""
    a = volume.array.astype(np.float32)
    hist = np.histogram(np.clip(a, -1100, 2000), bins=24, range=(-1100, 2000))[0] / a.size
    extent = np.array(volume.shape) * np.array(volume.spacing) / 500
    vector = np.concatenate([hist, extent, [a.mean() / 1000, a.std() / 1000]])
    return SimpleNamespace(vector=vector, key=hashlib.sha256(a.tobytes()).hexdigest(), cached=False)


@pytest.fixture
def heads_dir(tmp_path, monkeypatch) -> Path:
    root = tmp_path / "heads"
    monkeypatch.setenv("MEDHUB_HEADS", str(root))
    return root


@pytest.fixture(scope="module")
def nifti_cases(tmp_path_factory) -> Path:
    """Eight real-CT NIfTI variants of example_ct_sm: four as stored, four 150 HU brighter; labels.csv."""
    root = tmp_path_factory.mktemp("nifti_cases")
    image = nib.load(shared_path("ct/totalsegmentator_nifti/example_ct_sm.nii.gz"))
    data = np.asarray(image.dataobj).astype(np.int16)
    rows = ["series,label"]
    for k in range(4):
        crop = data[k * 4: 100 + k * 4, :, k: 26 + k]
        affine = image.affine.copy()
        affine[:3, 3] = (image.affine @ np.array([k * 4, 0, k, 1]))[:3]
        nib.save(nib.Nifti1Image(crop, affine), root / f"plain_{k}.nii.gz")
        nib.save(nib.Nifti1Image((crop + 150).astype(np.int16), affine), root / f"bright_{k}.nii.gz")
        rows += [f"plain_{k}.nii.gz,plain", f"bright_{k},bright"]
    (root / "labels.csv").write_text("\n".join(rows) + "\n")
    return root


# ---------------------------------------------------------------- labels.csv


def test_labels_csv_spellings_and_comments(tmp_path):
    labels = tmp_path / "labels.csv"
    labels.write_text("# my cohort\nSeries, Class ,note\na.nii.gz, x ,first\n\nb,y,\n")
    rows = read_labels(labels)
    assert [(r.line, r.series, r.label) for r in rows] == [(3, "a.nii.gz", "x"), (5, "b", "y")]


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("", "empty; expected a header 'series,label'"),
        ("uid,diagnosis\n1,x\n", "header must name the columns 'series' and 'label'"),
        ("series,label\n", "no labelled series"),
        ("series,label\na,x\na,y\n", "line 3: series 'a' already labelled on line 2"),
        ("series,label\na,\n", "line 2: empty label"),
        ("series,label\nonlyone\n", "line 2: expected 2 columns, got 1"),
    ],
)
def test_bad_labels_csv_one_line_errors(tmp_path, text, message):
    labels = tmp_path / "labels.csv"
    labels.write_text(text)
    with pytest.raises(MedhubError, match=message) as caught:
        read_labels(labels)
    assert str(labels) in str(caught.value) and "\n" not in str(caught.value)


def test_missing_labels_file(tmp_path):
    with pytest.raises(MedhubError, match="labels file not found"):
        read_labels(tmp_path / "nope.csv")


def test_series_resolved_by_uid_folder_and_nifti_name(tmp_path):
    """A SeriesInstanceUID, a folder of one series (also one without UIDs), a NIfTI name without extension."""
    philips = shared_path("ct/philips_phantom_head_1mm")
    uid = scan(philips).series[0].series_instance_uid
    root = tmp_path / "input"
    (root / "p").mkdir(parents=True)
    (root / "ts").mkdir()
    for name in sorted(p.name for p in philips.iterdir())[:12]:
        (root / "p" / name).symlink_to(philips / name)
    for path in shared_path("ct/totalsegmentator_example_ct_dicom").iterdir():
        (root / "ts" / path.name).symlink_to(path)
    shutil.copy(shared_path("ct/totalsegmentator_nifti/example_ct_sm.nii.gz"), root / "small.nii.gz")
    labels = tmp_path / "labels.csv"
    labels.write_text(f"series,label\n{uid},head\nts,abdomen\nsmall,abdomen\n")
    cases = resolve_cases(labels, root)
    assert [c.resolved.split(":")[0] for c in cases] == ["dicom", "dicom", "nifti"]
    assert cases[0].resolved == f"dicom:{uid}"
    volume = cases[1].load()
    assert volume.shape == (512, 512, 20) and not volume.source.referenceable
    assert cases[2].load().shape == (122, 101, 30)

    labels.write_text(f"series,label\n{uid},head\np,head\n")
    with pytest.raises(MedhubError, match="line 3: 'p' is the same series as line 2"):
        resolve_cases(labels, root)
    labels.write_text("series,label\n1.2.3.4,head\n")
    with pytest.raises(MedhubError, match=r"line 2: series '1\.2\.3\.4' not found under .*input \(not a Series"):
        resolve_cases(labels, root)
    labels.write_text("series,label\n.,head\n")
    with pytest.raises(MedhubError, match="holds 2 series; name one by SeriesInstanceUID"):
        resolve_cases(labels, root)


def test_class_checks():
    assert check_labels(["b", "a", "a", "b"], 2, Path("l.csv")) == ["a", "b"]
    with pytest.raises(MedhubError, match="every series has the label 'a'; a head needs at least 2 classes"):
        check_labels(["a", "a", "a"], 2, Path("l.csv"))
    with pytest.raises(MedhubError, match=r"too few cases for 5-fold .*'b' has 2.*lower --folds"):
        check_labels(["a"] * 5 + ["b"] * 2, 5, Path("l.csv"))
    with pytest.raises(MedhubError, match="--folds must be at least 2"):
        check_labels(["a", "b"], 1, Path("l.csv"))


# ---------------------------------------------------------------- metrics


def test_metrics_binary_perfect_and_useless():
    classes = ["neg", "pos"]
    y = ["neg", "neg", "pos", "pos"]
    perfect = classification_metrics(y, np.array([[1, 0], [1, 0], [0, 1], [0, 1]], float), classes)
    assert perfect["auc"] == 1.0 and perfect["balanced_accuracy"] == 1.0 and perfect["brier"] == 0.0
    assert perfect["calibration"]["ece"] == 0.0
    useless = classification_metrics(y, np.full((4, 2), 0.5), classes)
    assert useless["auc"] == 0.5 and useless["brier"] == 0.25
    assert useless["calibration"]["bins"] == [{"bin": [0.4, 0.6], "cases": 4, "mean_probability": 0.5,
                                               "observed_frequency": 0.5}]
    assert any(line.startswith("AUC: 0.500 (binary)") for line in format_metrics(useless))


def test_metrics_multiclass_one_vs_rest():
    classes = ["a", "b", "c"]
    y = ["a", "b", "c", "a", "b", "c"]
    probs = np.array([[.8, .1, .1], [.1, .8, .1], [.2, .2, .6], [.4, .5, .1], [.3, .6, .1], [.1, .1, .8]])
    m = classification_metrics(y, probs, classes)
    from sklearn.metrics import roc_auc_score

    assert m["auc_kind"] == "one-vs-rest macro"
    assert m["auc"] == pytest.approx(roc_auc_score([0, 1, 2, 0, 1, 2], probs, multi_class="ovr"), abs=1e-4)
    assert m["balanced_accuracy"] == pytest.approx(5 / 6, abs=1e-4)
    assert sum(b["cases"] for b in m["calibration"]["bins"]) == 6
    with pytest.raises(ValueError, match="not classes of the head"):
        classification_metrics(["z"], np.array([[.2, .3, .5]]), classes)


# ---------------------------------------------------------------- training (stand-in embedder)


def test_train_save_reload_evaluate_with_standin(nifti_cases, heads_dir):
    """Mechanics of training on real-CT NIfTI variants with a stand-in encoder (not about accuracy)."""
    head = train_head(nifti_cases / "labels.csv", nifti_cases, "bright-ct", encoder="standin-encoder", folds=4,
                      embedder=standin_embedder, encoder_card=STANDIN_CARD)
    assert head.path == heads_dir / "bright-ct" and heads_root() == heads_dir
    assert head.classes == ["bright", "plain"]
    cv = head.metrics["cross_validation"]
    assert cv["cases"] == 8 and cv["class_counts"] == {"bright": 4, "plain": 4}
    assert cv["auc"] == 1.0 and cv["balanced_accuracy"] == 1.0  # 150 HU apart: trivially separable
    assert 0.0 <= cv["brier"] < 0.25
    assert head.metrics["folds"] == 4 and head.metrics["classifier"] == "logreg"
    for name in ("card.yaml", "head.skops", "head.json", "metrics.json", "training.csv", "workflows/default.yml"):
        assert (head.path / name).is_file(), name
    with (head.path / "training.csv").open() as handle:
        rows = list(csv.DictReader(handle))
    assert len(rows) == 8 and all(r["resolved"].startswith("nifti:") and len(r["embedding_key"]) == 64 for r in rows)

    reloaded = load_head(find_head("bright-ct"))
    card = reloaded.card
    assert card.task == "classification" and card.version == "1"
    assert card.outputs.classifications[0].classes == ["bright", "plain"]
    assert {v.name for v in card.outputs.values} == {"predicted_class", "probability_bright", "probability_plain",
                                                     "encoder"}
    features = np.stack([standin_embedder("", c.load()).vector for c in resolve_cases(nifti_cases / "labels.csv",
                                                                                      nifti_cases)])
    probs = reloaded.predict_proba(features)
    assert probs.shape == (8, 2) and np.allclose(probs.sum(axis=1), 1.0)
    assert np.array_equal(probs, head.predict_proba(features))

    metrics = evaluate_head("bright-ct", nifti_cases / "labels.csv", nifti_cases, embedder=standin_embedder)
    assert metrics["balanced_accuracy"] == 1.0 and len(metrics["cases_detail"]) == 8
    assert metrics["cases_detail"][0]["predicted"] == "plain"

    with pytest.raises(MedhubError, match="a head named 'bright-ct' already exists .*--force"):
        train_head(nifti_cases / "labels.csv", nifti_cases, "bright-ct", encoder="standin-encoder", folds=4,
                   embedder=standin_embedder, encoder_card=STANDIN_CARD)
    again = train_head(nifti_cases / "labels.csv", nifti_cases, "bright-ct", encoder="standin-encoder", folds=2,
                       classifier="linear", embedder=standin_embedder, encoder_card=STANDIN_CARD, force=True)
    assert again.card.version == "2" and again.metrics["classifier"] == "linear"
    assert again.metrics["cross_validation"]["balanced_accuracy"] == 1.0


def test_training_errors_are_one_line(nifti_cases, heads_dir, tmp_path):
    kwargs = {"encoder": "standin-encoder", "embedder": standin_embedder, "encoder_card": STANDIN_CARD}
    with pytest.raises(MedhubError, match="too few cases for 5-fold"):
        train_head(nifti_cases / "labels.csv", nifti_cases, "x-head", folds=5, **kwargs)
    with pytest.raises(MedhubError, match="head name must be lower-case words"):
        train_head(nifti_cases / "labels.csv", nifti_cases, "Bad_Name", **kwargs)
    with pytest.raises(MedhubError, match="unknown classifier 'svm'"):
        train_head(nifti_cases / "labels.csv", nifti_cases, "x-head", classifier="svm", **kwargs)
    with pytest.raises(MedhubError, match="'deepbet' is already a model"):
        train_head(nifti_cases / "labels.csv", nifti_cases, "deepbet", folds=2, **kwargs)
    single = tmp_path / "single.csv"
    single.write_text("series,label\nplain_0,a\nplain_1,a\n")
    with pytest.raises(MedhubError, match="every series has the label 'a'"):
        train_head(single, nifti_cases, "x-head", folds=2, **kwargs)
    assert not (heads_dir / "x-head").exists()


def test_corrupted_or_foreign_head_files_are_refused(nifti_cases, heads_dir):
    head = train_head(nifti_cases / "labels.csv", nifti_cases, "tamper", encoder="standin-encoder", folds=2,
                      embedder=standin_embedder, encoder_card=STANDIN_CARD)
    blob = (head.path / HEAD_FILE).read_bytes()
    (head.path / HEAD_FILE).write_bytes(blob[:-1] + bytes([blob[-1] ^ 1]))
    with pytest.raises(MedhubError, match=r"head\.skops: SHA-256 does not match"):
        load_head(head.path)
    with pytest.raises(MedhubError, match="not a head folder"):
        load_head(nifti_cases)
    with pytest.raises(MedhubError, match="no head named 'nothing'"):
        find_head("nothing")


def test_registry_lists_heads_as_catalog_entries(nifti_cases, heads_dir):
    train_head(nifti_cases / "labels.csv", nifti_cases, "listed", encoder="standin-encoder", folds=2,
               embedder=standin_embedder, encoder_card=STANDIN_CARD)
    (heads_dir / "stray").mkdir()
    problems: list[str] = []
    entries = head_entries(problems)
    assert [e.id for e in entries] == ["listed"]
    assert isinstance(entries[0], HeadEntry) and entries[0].workflows.keys() == {"default"}
    assert problems == [f"head folder {heads_dir / 'stray'} has no card.yaml (not a head; remove it)"]
    runner = entries[0].new_runner()
    assert runner.head_dir == heads_dir / "listed"
    workflow = load_workflow_file(entries[0].workflow("default"))
    assert workflow.execute == ["select", "load", "predict", "write_sr"]
    assert workflow.params("predict") == {"head": "listed"}  # for a runner made without the folder
    from medhub.heads.runner import Runner

    def context(params: dict) -> RunnerContext:
        return RunnerContext(card=entries[0].card, folder=entries[0].path, params=params)

    with pytest.raises(MedhubError, match="needs the encoder model 'standin-encoder', which is not installed"):
        Runner().load(context(workflow.params("predict")))
    with pytest.raises(MedhubError, match="set predict.head=NAME"):
        Runner().load(context({}))

    result = CliRunner().invoke(app, ["heads", "list", "--json"])
    assert result.exit_code == 0, result.output
    rows = json.loads(result.stdout[result.stdout.index("["):])
    assert rows[0]["name"] == "listed" and rows[0]["classes"] == ["bright", "plain"] and rows[0]["cases"] == 8


# ---------------------------------------------------------------- the real encoder, end to end


def _symlink_folder(source: Path, target: Path) -> Path:
    target.mkdir(parents=True)
    for path in sorted(source.iterdir()):
        (target / path.name).symlink_to(path)
    return target


@pytest.fixture(scope="session")
def real_cases(tmp_path_factory) -> Path:
    """Six real CT series and variants, three head and three abdomen, with labels.csv.

    head: the Philips phantom head CT as scanned (140 slices with UIDs), an 80-slice slab of it and a
    384x384 in-plane crop 40 HU brighter (both written as DICOM series by medhub.inputs.synth);
    abdomen: the TotalSegmentator DICOM CT (no UIDs), example_ct_sm.nii.gz, and a crop of example_ct.nii.gz
    30 HU darker (NIfTI).
    """
    root = tmp_path_factory.mktemp("real_cases")
    philips = shared_path("ct/philips_phantom_head_1mm")
    _symlink_folder(philips, root / "philips")
    volume = load_series(scan(philips).series[0])
    a, affine = volume.array, volume.affine_lps
    slab = affine.copy()
    slab[:3, 3] = (affine @ np.array([0, 0, 30, 1]))[:3]
    write_dicom_series(a[:, :, 30:110], slab, root / "philips_slab", modality="CT", series_description="slab")
    crop = affine.copy()
    crop[:3, 3] = (affine @ np.array([64, 64, 0, 1]))[:3]
    write_dicom_series((a[64:448, 64:448, :].astype(np.int32) + 40).astype(np.int16), crop, root / "philips_crop",
                       modality="CT", series_description="crop +40 HU")
    _symlink_folder(shared_path("ct/totalsegmentator_example_ct_dicom"), root / "ts_dicom")
    shutil.copy(shared_path("ct/totalsegmentator_nifti/example_ct_sm.nii.gz"), root / "example_ct_sm.nii.gz")
    image = nib.load(shared_path("ct/totalsegmentator_nifti/example_ct.nii.gz"))
    part = np.asarray(image.dataobj)[10:110, 10:95, 20:100].astype(np.int16) - 30
    shifted = image.affine.copy()
    shifted[:3, 3] = (image.affine @ np.array([10, 10, 20, 1]))[:3]
    nib.save(nib.Nifti1Image(part, shifted), root / "example_ct_crop.nii.gz")
    (root / "labels.csv").write_text("series,label\nphilips,head\nphilips_slab,head\nphilips_crop,head\n"
                                     "ts_dicom,abdomen\nexample_ct_sm.nii.gz,abdomen\nexample_ct_crop,abdomen\n")
    return root


@pytest.fixture(scope="session")
def trained_head(real_cases, tmp_path_factory) -> dict:
    """`medhub heads train` with ct-fm-astra: the six series embedded once into a session cache."""
    pytest.importorskip("torch")
    mp = pytest.MonkeyPatch()
    heads = tmp_path_factory.mktemp("real_heads")
    mp.setenv("MEDHUB_HEADS", str(heads))
    mp.setenv("MEDHUB_CACHE", str(tmp_path_factory.mktemp("embedding_cache")))
    command = ["heads", "train", "--encoder", "ct-fm-astra", "--labels", str(real_cases / "labels.csv"),
               "--input", str(real_cases), "--name", "head-or-abdomen", "--folds", "3"]
    result = CliRunner().invoke(app, command)
    first = (heads / "head-or-abdomen" / "metrics.json").read_text() if result.exit_code == 0 else ""
    # the linear probe on the same labels: every embedding now comes from the cache
    probe = CliRunner().invoke(app, [*command, "--classifier", "linear", "--force"])
    yield {"result": result, "logreg_metrics": first, "probe": probe, "heads": heads, "cases": real_cases}
    mp.undo()


def _check_stored_metrics(cv: dict) -> None:
    """The stored numbers are what scikit-learn computes from the stored out-of-fold probabilities."""
    from sklearn.metrics import balanced_accuracy_score, brier_score_loss, roc_auc_score

    assert cv["cases"] == 6 and cv["class_counts"] == {"abdomen": 3, "head": 3}
    truth = [case["label"] == "head" for case in cv["cases_detail"]]
    p_head = [case["probabilities"]["head"] for case in cv["cases_detail"]]
    for case in cv["cases_detail"]:
        assert sum(case["probabilities"].values()) == pytest.approx(1.0, abs=1e-5)
    assert cv["auc"] == pytest.approx(roc_auc_score(truth, p_head), abs=1e-4)
    assert cv["brier"] == pytest.approx(brier_score_loss(truth, p_head), abs=1e-4)
    predicted = [case["predicted"] == "head" for case in cv["cases_detail"]]
    assert cv["balanced_accuracy"] == pytest.approx(balanced_accuracy_score(truth, predicted), abs=1e-4)
    assert sum(b["cases"] for b in cv["calibration"]["bins"]) == 6 and 0 <= cv["calibration"]["ece"] <= 1


@pytest.mark.slow
def test_real_train_prints_and_stores_sane_metrics(trained_head):
    result = trained_head["result"]
    assert result.exit_code == 0, result.output
    assert "3-fold cross-validation of head-or-abdomen (logreg on ct-fm-astra)" in result.output
    assert "AUC: " in result.output and "saved head head-or-abdomen 1" in result.output
    assert "embedded 6/6: example_ct_crop [abdomen]" in result.output
    metrics = json.loads(trained_head["logreg_metrics"])
    assert metrics["encoder"] == "ct-fm-astra" and metrics["encoder_version"] == "0.1.1"
    assert metrics["classifier"] == "logreg" and metrics["folds"] == 3
    _check_stored_metrics(metrics["cross_validation"])
    assert metrics["cross_validation"]["auc"] >= 0.5  # better than chance even standardised (measured 0.889)
    assert metrics["training_fit"]["balanced_accuracy"] == 1.0

    probe = trained_head["probe"]
    assert probe.exit_code == 0, probe.output
    assert "embedded 1/6: philips [head] (cached)" in probe.output
    assert "saved head head-or-abdomen 2" in probe.output
    folder = trained_head["heads"] / "head-or-abdomen"
    metrics = json.loads((folder / "metrics.json").read_text())
    assert metrics["classifier"] == "linear"
    _check_stored_metrics(metrics["cross_validation"])
    # head CT vs abdominal CT held out: the linear probe on ct-fm-astra separates them
    assert metrics["cross_validation"]["auc"] == 1.0 and metrics["cross_validation"]["balanced_accuracy"] == 1.0
    meta = json.loads((folder / "head.json").read_text())
    assert meta["dimension"] == 2048 and meta["classes"] == ["abdomen", "head"]


@pytest.mark.slow
def test_real_head_runs_as_a_model_json_csv_sr(trained_head, tmp_path, assert_valid_dicom):
    """`medhub run NAME` on DICOM with UIDs (JSON + CSV + SR), DICOM without UIDs and NIfTI (JSON + CSV)."""
    assert trained_head["probe"].exit_code == 0
    cases = trained_head["cases"]
    runner = CliRunner()
    out = tmp_path / "philips_out"
    result = runner.invoke(app, ["run", "head-or-abdomen", "--input", str(cases / "philips"), "--output", str(out)])
    assert result.exit_code == 0, result.output
    report = json.loads((out / "medhub-report.json").read_text())
    entry = report["series"][0]
    assert entry["status"] == "succeeded" and report["model"] == "head-or-abdomen"
    uid = entry["series_instance_uid"]
    base = out / uid / "head-or-abdomen"
    assert sorted(entry["outputs"]) == sorted(f"{uid}/head-or-abdomen{s}" for s in (".sr.dcm", ".values.csv",
                                                                                   ".values.json"))
    values = json.loads(base.with_name(base.name + ".values.json").read_text())["values"]
    assert values["predicted_class"] == "head" and values["encoder"] == "ct-fm-astra 0.1.1"
    probs = {k: v for k, v in values.items() if k.startswith("probability_")}
    assert set(probs) == {"probability_abdomen", "probability_head"}
    assert sum(probs.values()) == pytest.approx(1.0, abs=1e-5) and probs["probability_head"] > 0.5
    with base.with_name(base.name + ".values.csv").open() as handle:
        rows = list(csv.DictReader(handle))
    assert len(rows) == 1 and rows[0]["series_instance_uid"] == uid and rows[0]["predicted_class"] == "head"
    assert float(rows[0]["probability_head"]) == probs["probability_head"]
    sr_path = base.with_name(base.name + ".sr.dcm")
    assert_valid_dicom(sr_path)
    sr = pydicom.dcmread(sr_path)
    assert sr.CurrentRequestedProcedureEvidenceSequence[0].ReferencedSeriesSequence[0].SeriesInstanceUID == uid
    numbers = [float(item.MeasuredValueSequence[0].NumericValue)
               for group in sr.ContentSequence[-1].ContentSequence for item in group.ContentSequence
               if item.ValueType == "NUM"]
    assert numbers == pytest.approx([probs["probability_abdomen"], probs["probability_head"]], abs=1e-5)
    # the embedding of the Philips series came from the cache filled at training time
    assert entry["timings"]["predict"] < 30

    out = tmp_path / "ts_out"
    result = runner.invoke(app, ["run", "head-or-abdomen", "--input", str(cases / "ts_dicom"), "--output", str(out)])
    assert result.exit_code == 0, result.output
    entry = json.loads((out / "medhub-report.json").read_text())["series"][0]
    assert entry["values"]["predicted_class"] == "abdomen"
    assert [Path(o).name for o in sorted(entry["outputs"])] == ["head-or-abdomen.values.csv",
                                                                "head-or-abdomen.values.json"]
    assert any("no SR written" in note and "UID" in note for note in entry["notes"])

    out = tmp_path / "nifti_out"
    result = runner.invoke(app, ["run", "head-or-abdomen", "--input", str(cases / "example_ct_sm.nii.gz"),
                                 "--output", str(out)])
    assert result.exit_code == 0, result.output
    entry = json.loads((out / "medhub-report.json").read_text())["series"][0]
    assert entry["values"]["predicted_class"] == "abdomen"
    assert sorted(entry["outputs"]) == ["example_ct_sm/head-or-abdomen.values.csv",
                                        "example_ct_sm/head-or-abdomen.values.json"]
    assert any(note.startswith("NIfTI input: no DICOM source") for note in entry["notes"])


@pytest.mark.slow
def test_real_head_evaluate_and_reload(trained_head, tmp_path):
    """`heads evaluate` on labelled series (the cached training set: a reload check, not a generalisation claim)."""
    assert trained_head["probe"].exit_code == 0
    cases = trained_head["cases"]
    report = tmp_path / "evaluation.json"
    result = CliRunner().invoke(app, ["heads", "evaluate", "head-or-abdomen", "--labels", str(cases / "labels.csv"),
                                      "--input", str(cases), "--output", str(report)])
    assert result.exit_code == 0, result.output
    assert "balanced accuracy: 1.000" in result.output and "WRONG" not in result.output
    metrics = json.loads(report.read_text())
    assert metrics["cases"] == 6 and metrics["head"] == "head-or-abdomen"
    for case in metrics["cases_detail"]:
        assert sum(case["probabilities"].values()) == pytest.approx(1.0, abs=1e-5)
        assert case["predicted"] == case["label"]

    bad = tmp_path / "bad.csv"
    bad.write_text("series,label\nphilips,liver\n")
    result = CliRunner().invoke(app, ["heads", "evaluate", "head-or-abdomen", "--labels", str(bad),
                                      "--input", str(cases)])
    assert result.exit_code == 2
    assert "label(s) liver are not classes of head head-or-abdomen (abdomen, head)" in result.output


@pytest.mark.slow
def test_real_heads_rest_api(trained_head, tmp_path):
    """/api/heads: list, inspect, train from an upload (embeddings from the session cache), predict, delete."""
    import io
    import zipfile

    from fastapi.testclient import TestClient

    from medhub.serve.app import create_app
    from medhub.serve.heads_api import router
    from medhub.serve.settings import ServeSettings

    assert trained_head["probe"].exit_code == 0
    cases = trained_head["cases"]
    app = create_app(ServeSettings(data_dir=tmp_path / "serve"))
    if not any(getattr(route, "path", "") == "/api/heads" for route in app.routes):
        app.include_router(router)  # until medhub.serve.app includes it
    archive = io.BytesIO()
    with zipfile.ZipFile(archive, "w", zipfile.ZIP_DEFLATED, compresslevel=1) as zipped:
        for folder in ("philips_slab", "philips_crop", "ts_dicom"):
            for path in sorted((cases / folder).iterdir()):
                zipped.write(path, f"{folder}/{path.name}")
        for name in ("example_ct_sm.nii.gz", "example_ct_crop.nii.gz"):
            zipped.write(cases / name, name)
    labels = ("series,label\ndata/philips_slab,head\ndata/philips_crop,head\ndata/ts_dicom,abdomen\n"
              "example_ct_sm,abdomen\nexample_ct_crop,abdomen\n")
    nifti = (cases / "example_ct_sm.nii.gz").read_bytes()
    with TestClient(app) as client:
        listed = client.get("/api/heads")
        assert listed.status_code == 200 and [h["name"] for h in listed.json()] == ["head-or-abdomen"]
        detail = client.get("/api/heads/head-or-abdomen").json()
        assert detail["card"]["task"] == "classification" and detail["metrics"]["cross_validation"]["cases"] == 6

        trained = client.post("/api/heads", data={"name": "api-head", "folds": "2", "classifier": "linear"},
                              files=[("labels", ("labels.csv", labels.encode())),
                                     ("files", ("data.zip", archive.getvalue()))])
        assert trained.status_code == 201, trained.text
        body = trained.json()
        assert body["name"] == "api-head" and body["cases"] == 5 and body["classes"] == ["abdomen", "head"]
        cv = body["metrics"]["cross_validation"]
        assert body["metrics"]["classifier"] == "linear" and body["metrics"]["folds"] == 2
        assert cv["cases"] == 5 and 0.0 <= cv["auc"] <= 1.0 and 0.0 <= cv["brier"] <= 1.0
        assert [c["series"] for c in cv["cases_detail"]][:2] == ["data/philips_slab", "data/philips_crop"]

        predicted = client.post("/api/heads/api-head/predict", files=[("files", ("ct.nii.gz", nifti))])
        assert predicted.status_code == 200, predicted.text
        series = predicted.json()["series"]
        assert len(series) == 1 and series[0]["status"] == "succeeded"
        values = series[0]["values"]
        assert values["predicted_class"] == "abdomen"
        assert values["probability_abdomen"] + values["probability_head"] == pytest.approx(1.0, abs=1e-5)

        single = client.post("/api/heads", data={"name": "bad-head", "folds": "2"},
                             files=[("labels", ("labels.csv", b"series,label\nexample_ct_sm,a\nexample_ct_crop,a\n")),
                                    ("files", ("data.zip", archive.getvalue()))])
        assert single.status_code == 422 and "a head needs at least 2 classes" in single.json()["detail"]
        missing = client.post("/api/heads", data={"name": "bad-head"}, files=[("files", ("ct.nii.gz", nifti))])
        assert missing.status_code == 422 and "labels.csv" in missing.json()["detail"]
        assert client.post("/api/heads/nothing/predict", files=[("files", ("ct.nii.gz", nifti))]).status_code == 404

        assert client.delete("/api/heads/api-head").status_code == 204
        assert client.get("/api/heads/api-head").status_code == 404
