"""What the hub does once for every model (hub.runtime.ModelRunner, hub.runner): the tests of the runner contract.

A tiny model package is written per test (card + runner.py); the built-in models' own tests run
the same machinery on real networks and real data.
"""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import yaml

import medhub
from medhub.data.prediction import Prediction
from medhub.data.volume import Volume
from medhub.errors import MedhubError, SeriesSkipped
from medhub.hub import weight_store as weights_module
from medhub.hub.card import ModelCard, card_problems
from medhub.hub.catalog import ModelEntry, entry_from_folder
from medhub.hub.runner import RunnerContext, card_view, context_from_json, finish
from medhub.hub.runtime import ModelRunner

CARD = {
    "id": "probe-model", "name": "probe", "title": "probe", "description": "a test model", "version": "1.0",
    "modality": ["CT"], "body_part": "CHEST", "inputs": [{"query": "dicom:mod=ct"}],
    "outputs": {"segments": {1: "BONE", 2: "LIVER"},
                "values": [{"name": "bone_ml", "volume_of": "BONE"}, {"name": "liver_ml", "volume_of": "LIVER"},
                           {"name": "score"}]},
    "architecture": "threshold", "training_type": "algorithmic", "licence": {"code": "MIT", "weights": "none"},
    "source": "tests/test_runner.py", "requirements": ["torch"], "devices": ["cpu"],
}

RUNNER = '''
from pathlib import Path
import numpy as np
import medhub

CALLS = []


class Runner(medhub.Runner):
    def load(self, context):
        CALLS.append(("load", context))
        self.threads = __import__("torch").get_num_threads()

    def predict(self, volume, params):
        CALLS.append(("predict", dict(params)))
        kind = params.get("return", "array")
        labels = (np.asarray(volume.array) > 0).astype(np.uint8) + (np.asarray(volume.array) > 100)
        if kind == "array":
            return labels
        if kind == "prediction":
            return medhub.Prediction(labels=labels, segments={1: "BONE", 2: "LIVER"}, values={"score": 0.5})
        if kind == "wrong-shape":
            return labels[:, :, :1]
        if kind == "wrong-id":
            return medhub.Prediction(labels=labels, segments={1: "BONE", 2: "SPLEEN"})
        return "not a label map"
'''


def write_model(root: Path, card: dict | None = None, runner: str = RUNNER, name: str = "probe_model") -> ModelEntry:
    folder = root / name
    folder.mkdir(parents=True)
    (folder / "__init__.py").write_text("")
    (folder / "card.yaml").write_text(yaml.safe_dump(card or CARD))
    (folder / "runner.py").write_text(textwrap.dedent(runner))
    return entry_from_folder(folder, name)


@pytest.fixture
def probe(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> ModelEntry:
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setenv("MEDHUB_WEIGHTS_CACHE", str(tmp_path / "cache"))
    yield write_model(tmp_path)
    for module in [m for m in sys.modules if m.startswith("probe_model")]:
        del sys.modules[module]


def volume(shape: tuple[int, ...] = (4, 3, 2)) -> Volume:
    array = np.zeros(shape, np.int16)
    array[0, 0, 0] = 50  # BONE
    array[1, 1, 1] = 500  # LIVER
    array[2, 2, 1] = 600  # LIVER
    return Volume(array=array, affine_lps=np.diag([2.0, 2.0, 2.5, 1.0]))  # 10 mm³ = 0.01 ml per voxel


# ----------------------------------------------------------------------------------- Prediction


def test_prediction_refuses_what_no_writer_could_use() -> None:
    labels = np.zeros((2, 2, 2), np.uint8)
    cases = [
        (dict(labels=np.zeros((2, 2))), "must be a 3D label map [x, y, z], got shape (2, 2)"),
        (dict(labels=np.zeros((2, 2, 2), np.float32)), "must hold integer label values, got dtype float32"),
        (dict(labels=np.full((2, 2, 2), 300, np.int16), segments={1: "BONE"}), "must lie in 0..255, found 300..300"),
        (dict(labels=np.full((2, 2, 2), 3, np.uint8), segments={1: "BONE"}), "holds label values [3] that segments"),
        (dict(labels=labels, segments={0: "BONE"}), "label value 0 must be an integer 1..255"),
        (dict(labels=labels, segments={1: ""}), "label 1 needs a segment database ID"),
        (dict(labels=[[[1]]], segments={1: "BONE"}), "must be a numpy array, got list"),
        (dict(segments={1: "BONE"}), "there is no label map"),
        (dict(values={1: 2.0}), "must map names (str) to values"),
    ]
    for kwargs, message in cases:
        with pytest.raises(MedhubError) as error:
            Prediction(**kwargs)
        assert message in str(error.value), kwargs


def test_prediction_stores_labels_as_uint8_and_counts_them() -> None:
    mask = np.zeros((3, 3, 3), bool)
    mask[0, 0, :] = True
    prediction = Prediction(labels=mask, segments={1: "BRAIN"})
    assert prediction.labels.dtype == np.uint8 and prediction.present == {1} and prediction.voxels(1) == 3
    wide = Prediction(labels=np.full((2, 2, 2), 7, np.int64), segments={7: "LIVER"})
    assert wide.labels.dtype == np.uint8 and wide.voxels(7) == 8 and wide.present == {7}
    assert Prediction(values={"probability": 0.9}).present == set()


# ----------------------------------------------------------------------------------- the hub around a runner


def test_a_bare_label_array_gets_the_cards_segments_and_volumes(probe: ModelEntry) -> None:
    runner = ModelRunner(probe)
    runner.load("cpu", {})
    prediction = runner.predict(volume(), {})
    assert prediction.segments == {1: "BONE", 2: "LIVER"}
    assert prediction.values == {"bone_ml": 0.01, "liver_ml": 0.02}  # 1 and 2 voxels of 0.01 ml
    full = runner.predict(volume(), {"return": "prediction"})
    assert full.values == {"bone_ml": 0.01, "liver_ml": 0.02, "score": 0.5}


@pytest.mark.parametrize(("kind", "message"), [
    ("wrong-shape", "model probe-model returned labels of shape (4, 3, 1) for a volume of shape (4, 3, 2)"),
    ("wrong-id", "model probe-model: label 2 is 'SPLEEN' in its prediction but 'LIVER' on its card"),
    ("text", "model probe-model: predict returned str; return a label array or a medhub.Prediction"),
])
def test_what_a_runner_returns_is_checked_against_the_volume_and_the_card(probe: ModelEntry, kind: str,
                                                                          message: str) -> None:
    runner = ModelRunner(probe)
    runner.load("cpu", {})
    with pytest.raises(MedhubError) as error:
        runner.predict(volume(), {"return": kind})
    assert str(error.value) == message


def test_a_label_the_card_does_not_declare_is_refused() -> None:
    card = ModelCard.model_validate(CARD)
    with pytest.raises(MedhubError, match=r"^model probe-model: the label map holds label values \[3\]"):
        finish(np.full((2, 2, 2), 3, np.uint8), Volume(np.zeros((2, 2, 2)), np.eye(4)), card)


def test_no_predict_before_load_and_only_3d_volumes(probe: ModelEntry) -> None:
    runner = ModelRunner(probe)
    with pytest.raises(MedhubError, match="^model probe-model: predict called before load$"):
        runner.predict(volume(), {})
    runner.load("cpu", {})
    with pytest.raises(SeriesSkipped, match=r"^probe-model needs a 3D volume, got an array of shape \(4, 3, 2, 2\)"):
        runner.predict(volume((4, 3, 2, 2)), {})
    calls = [call for call, _ in sys.modules["probe_model.runner"].CALLS]
    assert calls == ["load"]  # the runner itself saw neither call


def test_load_gets_the_checked_context_and_torch_threads(probe: ModelEntry) -> None:
    runner = ModelRunner(probe)
    runner.load("cpu", {"threads": 1, "alpha": 2})
    ((call, context),) = sys.modules["probe_model.runner"].CALLS
    assert call == "load" and context is runner.context is runner.runner.context
    assert (context.card, context.folder, context.device) == (probe.card, probe.path, "cpu")
    assert context.params == {"threads": 1, "alpha": 2} and context.threads == 1 and dict(context.weights) == {}
    assert runner.runner.threads == 1  # the card requires torch: the hub set its threads before load


def test_a_device_the_card_does_not_list_fails_before_the_runner_loads(probe: ModelEntry) -> None:
    with pytest.raises(MedhubError, match="^model probe-model does not run on cuda: its card lists cpu only$"):
        ModelRunner(probe).load("cuda", {})
    assert sys.modules.get("probe_model.runner") is None or sys.modules["probe_model.runner"].CALLS == []


def test_weights_are_verified_before_load_and_a_missing_one_is_one_line(tmp_path: Path,
                                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setenv("MEDHUB_WEIGHTS_CACHE", str(tmp_path / "cache"))
    monkeypatch.delenv("MEDHUB_WEIGHTS_MIRROR", raising=False)
    fast, full = tmp_path / "fast.bin", tmp_path / "full.bin"
    fast.write_bytes(b"fast weights")
    card = {**CARD, "id": "weighty-model", "weights": [
        {"name": "fast.bin", "url": f"file://{fast}", "sha256": hashlib.sha256(b"fast weights").hexdigest(),
         "when": {"fast": True}},
        {"name": "full.bin", "url": f"file://{full}", "sha256": "0" * 64, "when": {"fast": False}}]}
    entry = write_model(tmp_path, card, name="weighty_model")
    runner = ModelRunner(entry)
    runner.load("cpu", {"fast": True})  # the full model's file is absent: not needed in fast mode
    assert dict(runner.context.weights) == {"fast.bin": tmp_path / "cache" / "weighty-model" / "fast.bin"}
    with pytest.raises(MedhubError) as error:
        ModelRunner(entry).load("cpu", {"fast": False})
    assert "\n" not in str(error.value) and str(error.value).startswith("weights for weighty-model: full.bin")
    assert [call for call, _ in sys.modules["weighty_model.runner"].CALLS] == ["load"]  # the second never loaded
    del sys.modules["weighty_model.runner"], sys.modules["weighty_model"]


def test_a_wheels_weights_file_is_hashed_once_per_install(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MEDHUB_WEIGHTS_CACHE", str(tmp_path / "cache"))
    installed = tmp_path / "site-packages" / "0.model"
    installed.parent.mkdir()
    installed.write_bytes(b"fold zero")
    digest = hashlib.sha256(b"fold zero").hexdigest()
    hashed: list[Path] = []
    real = weights_module.sha256_file
    monkeypatch.setattr(weights_module, "sha256_file", lambda path: hashed.append(path) or real(path))
    assert weights_module.installed_file_matches("m", "0.model", installed, digest)
    assert weights_module.installed_file_matches("m", "0.model", installed, digest)
    assert hashed == [installed]  # the second check read the record
    assert not weights_module.installed_file_matches("m", "0.model", installed, "1" * 64)
    installed.write_bytes(b"fold 0 tampered")  # a reinstall or an edit changes size and mtime: hashed again
    assert not weights_module.installed_file_matches("m", "0.model", installed, digest)


# ----------------------------------------------------------------------------------- card and context


def test_volume_of_must_name_a_segment_of_the_card() -> None:
    bad = json.loads(json.dumps(CARD))
    bad["outputs"]["values"][0]["volume_of"] = "SPLEEN"
    assert card_problems(bad) == ["card.yaml: outputs: value 'bone_ml': volume_of 'SPLEEN' is not one of the "
                                  "segments (BONE, LIVER)"]
    bad["outputs"]["values"][0] = {"name": "bone_ml", "volume_of": "BONE", "unit": "mm3"}
    assert "is the volume of BONE: type float, unit ml" in card_problems(bad)[0]


def test_the_context_crosses_to_a_worker_as_json_with_the_card_readable_by_attribute() -> None:
    card = ModelCard.model_validate(CARD)
    context = RunnerContext(card=card, folder=Path("/m"), weights={"a/b.pt": Path("/w/b.pt")}, device="cpu",
                            params={"threshold": 0.5}, threads=3)
    back = context_from_json(json.loads(json.dumps(context.to_json())))
    assert (back.folder, dict(back.weights), back.device, dict(back.params), back.threads) == (
        Path("/m"), {"a/b.pt": Path("/w/b.pt")}, "cpu", {"threshold": 0.5}, 3)
    assert back.card.id == back.model_id == "probe-model" and back.card.outputs.segments == {1: "BONE", 2: "LIVER"}
    assert back.card.outputs.values[0].volume_of == "BONE" and back.card["version"] == "1.0"
    with pytest.raises(AttributeError, match="the card has no field 'nope'"):
        _ = card_view({"id": "x"}).nope


# ----------------------------------------------------------------------------------- the public face


def test_the_public_api_is_lazy_and_complete() -> None:
    code = ("import sys, medhub; print(sorted(m for m in ('numpy', 'pydantic', 'torch', 'medhub.hub.runner') "
            "if m in sys.modules)); medhub.Runner; print('medhub.hub.runner' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.split()
    assert out == ["[]", "True"]  # `import medhub` costs nothing; the first name imports its module
    from medhub.hub.runner import Runner

    assert medhub.Runner is Runner and medhub.Prediction is Prediction and medhub.Volume is Volume
    assert medhub.SeriesSkipped is SeriesSkipped and medhub.MedhubError is MedhubError
    assert {"Runner", "RunnerContext", "Volume", "Prediction", "SeriesSkipped", "MedhubError",
            "require_module"} <= set(dir(medhub))
    with pytest.raises(AttributeError, match="module 'medhub' has no attribute 'Runer'"):
        _ = medhub.Runer
