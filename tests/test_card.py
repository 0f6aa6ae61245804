"""The model card: schema export, backwards compatibility, one-line problems with fixes, MHub export."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import yaml

from medhub.errors import MedhubError
from medhub.hub.card import (
    ModelCard,
    WeightsSpec,
    card_json_schema,
    card_json_schema_text,
    card_problems,
    load_card,
)
from medhub.hub.catalog import BUILTIN_ROOT
from medhub.hub.weights import WeightFile

DOCS = Path(__file__).resolve().parents[1] / "docs"
SHA = "ab" * 32


def example_card() -> dict:
    """The complete example card of docs/model-card.md (so the documentation cannot drift from the code)."""
    text = (DOCS / "model-card.md").read_text(encoding="utf-8")
    block = re.search(r"```yaml\n(.*?)```", text, re.S)
    assert block, "docs/model-card.md lost its example card"
    return yaml.safe_load(block.group(1))


def builtin_cards() -> list[Path]:
    return sorted(BUILTIN_ROOT.glob("*/card.yaml"))


def test_committed_schema_equals_the_generated_one():
    committed = (DOCS / "model-card.schema.json").read_text(encoding="utf-8")
    assert committed == card_json_schema_text(), "run: medhub schema -o docs/model-card.schema.json"


def test_schema_accepts_every_built_in_card_and_the_documented_example():
    jsonschema = pytest.importorskip("jsonschema")
    validator = jsonschema.Draft202012Validator(card_json_schema())
    cards = [yaml.safe_load(p.read_text()) for p in builtin_cards()] + [example_card()]
    assert len(cards) >= 3
    for data in cards:
        as_json = json.loads(json.dumps(data, default=str))  # YAML dates → ISO strings, as in a JSON card
        errors = [e.message for e in validator.iter_errors(as_json)]
        assert not errors, f"{data['id']}: {errors[:3]}"
    broken = {**example_card(), "modality": "CT", "colour": 1}
    messages = " ".join(e.message for e in validator.iter_errors(json.loads(json.dumps(broken, default=str))))
    assert "'colour' was unexpected" in messages and "is not of type 'array'" in messages


def test_every_built_in_card_still_validates():
    for path in builtin_cards():
        card = load_card(path)
        assert card.package_name == path.parent.name


def test_the_documented_example_uses_every_optional_section():
    card = ModelCard.model_validate(example_card())
    assert card.inputs[0].format == "dicom" and card.inputs[0].modality == "CT"
    assert card.outputs.kinds == ["segmentation", "prediction", "classification"]
    assert card.training_data[0].cases == 131 and card.evaluation_data[0].name.startswith("an in-house")
    assert card.dates is not None and card.dates.weights.isoformat() == "2024-03-01"
    assert [p.uri for p in card.publications][1] == "https://arxiv.org/abs/0000.00000"
    assert card.memory is not None and card.memory.gpu_gb == 4
    assert card.sample is not None and card.sample.reference is not None
    assert card.sample.reference.segment_voxels == {"LIVER": 1612400} and card.sample.reference.inline
    assert card.sample.dicom and card.parameters["threshold"].allowed() == "a number from 0 to 1 (exclusive)"
    downloadable, bundled = card.weights
    assert isinstance(downloadable.weight_file(), WeightFile) and downloadable.weight_file().size == 123456789
    assert bundled.bundled_in == "liver-seg-weights"
    with pytest.raises(MedhubError, match="bundled in liver-seg-weights"):
        bundled.weight_file()


def test_every_problem_is_one_line_naming_the_field_and_the_fix():
    data = example_card()
    data["bodypart"] = data.pop("body_part")
    del data["title"], data["source"]
    data["task"] = "segment"
    data["id"] = "Liver Seg"
    data["inputs"][0]["min_slice"] = data["inputs"][0].pop("min_slices")
    data["weights"][0]["sha256"] = "xyz"
    data["weights"].append({"name": "b.pt", "url": "https://example.org/b.pt"})
    data["requirements"].append("torch >= = 2")
    data["version"] = 1.2
    data["sample"]["generator"] = "not a generator"
    problems = card_problems(data, "src/liver_seg/card.yaml")
    text = "\n".join(problems)
    assert all("\n" not in p and p.startswith("src/liver_seg/card.yaml: ") for p in problems)
    assert "bodypart: unknown field 'bodypart': did you mean 'body_part'?" in text
    assert "body_part: missing required field 'body_part': rename 'bodypart' to 'body_part'" in text
    assert "title: add the required field 'title'" in text
    assert "source: add the required field 'source' (where the code lives" in text
    assert "task: Input should be 'segmentation'" in text and "(got 'segment')" in text
    assert "id: model id must be lower-case words joined by dashes" in text
    assert "inputs.0.min_slice: unknown field 'min_slice': did you mean 'min_slices'?" in text
    assert "weights.0.sha256: sha256 must be 64 hex digits (run: sha256sum FILE)" in text
    assert "weights.2: weights file 'b.pt' has a url but no sha256 (run: sha256sum b.pt)" in text
    assert "requirements: not a PEP 508 requirement like 'torch==2.13.0': 'torch >= = 2'" in text
    assert "sample.generator: generator must be 'module:function'" in text
    assert "version: Input should be a valid string: put the value in quotes (YAML read 1.2 as a number)" in text
    assert len(problems) == 12


def test_sample_needs_exactly_one_source_and_weights_need_a_source():
    data = example_card()
    data["sample"]["path"] = "sample/ct"
    assert card_problems(data) == ["card.yaml: sample: give exactly one of path, url, generator (got path, url)"]
    with pytest.raises(ValueError, match="needs a 'url'"):
        WeightsSpec(name="w.pt")
    spec = WeightsSpec(name="w.pt", url="file:///w.pt", sha256=SHA.upper())
    assert spec.sha256 == SHA and spec.weight_file() == WeightFile(name="w.pt", url="file:///w.pt", sha256=SHA)
    with pytest.raises(ValueError, match="relative path"):
        WeightsSpec(name="../w.pt", url="file:///w.pt", sha256=SHA)


def test_load_card_reports_the_first_problem_and_how_many_more(tmp_path):
    path = tmp_path / "card.yaml"
    data = example_card()
    data["bodypart"] = data.pop("body_part")
    data["version"] = None
    path.write_text(yaml.safe_dump(data))
    with pytest.raises(MedhubError) as info:
        load_card(path)
    message = str(info.value)
    assert message.startswith(f"{path}: invalid model card at '")
    assert "(and 2 more; run: medhub check)" in message and "\n" not in message
    path.write_text("id: [unclosed")
    with pytest.raises(MedhubError, match=r"card.yaml: not valid YAML"):
        load_card(path)
    path.write_text("- a list")
    with pytest.raises(MedhubError, match="must be a mapping of fields"):
        load_card(path)
    (tmp_path / "card.json").write_text(json.dumps(example_card(), default=str))
    assert load_card(tmp_path / "card.json").id == "liver-seg"


def test_mhub_meta_export_carries_outputs_dates_licences_and_publications():
    meta = ModelCard.model_validate(example_card()).to_mhub_meta()
    assert meta["summary"]["inputs"][0]["format"] == "DICOM"
    assert meta["summary"]["inputs"][0]["slicethickness"] == "0.5 to 5 mm"
    assert meta["summary"]["inputs"][0]["contrast"] is True
    types = [o["type"] for o in meta["summary"]["outputs"]]
    assert types == ["Segmentation", "Prediction", "Classification"]
    assert meta["summary"]["data"]["training"]["vol_samples"] == 131
    assert meta["details"]["date"] == {"weights": "2024-03-01", "code": "2024-03-15", "pub": "2024-06-01"}
    assert meta["details"]["license"] == {"code": "Apache-2.0", "weights": "CC-BY-4.0"}
    assert meta["details"]["publications"][0] == {"title": "The paper", "uri": "https://doi.org/10.0000/example"}
