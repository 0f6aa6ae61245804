"""One model describer: ``medhub info`` and the server's model page say the same about a model.

Both call :func:`medhub.hub.listing.describe_model`; the weights' states come from the one
decision in :func:`medhub.hub.weight_store.weight_state`, as for ``medhub pull``'s status.
"""

from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from medhub.cli.main import app
from medhub.hub.catalog import get_model, weights_status
from medhub.hub.weight_store import WeightState
from medhub.segdb import describe_segment


@pytest.mark.parametrize("model", ["ct-body", "deepbet", "lungmask"])
def test_info_and_the_server_describe_a_model_alike(model: str) -> None:
    pytest.importorskip("fastapi")
    from medhub.serve.api import model_detail

    result = CliRunner().invoke(app, ["info", model, "--json"])
    assert result.exit_code == 0, result.output
    info = json.loads(result.stdout[result.stdout.index("{"):])
    detail = model_detail(model, "http://medhub.test/")
    assert detail["segments"] == info["segments"] and detail["card"] == info["card"]
    assert detail["workflows"] == info["workflows"] and detail["cli"] == info["run"]
    assert detail["curl"].endswith(f"-F model={model} -F workflow=default -F files=@series.zip "
                                   "http://medhub.test/api/jobs")
    segments = get_model(model).card.outputs.segments
    assert [row["id"] for row in info["segments"]] == [segments[label] for label in sorted(segments)]
    assert all("error" not in row and row["name"] and len(row["color"]) == 3 for row in info["segments"])
    states = [row["state"] for row in info["weights"]]
    assert states == [s.state.value for s in weights_status(get_model(model))]
    assert all(state in set(WeightState) for state in states)


def test_an_unknown_segment_keeps_its_row_with_the_reason() -> None:
    row = describe_segment(7, "NO_SUCH_STRUCTURE")
    assert row == {"label": 7, "id": "NO_SUCH_STRUCTURE", "name": "NO_SUCH_STRUCTURE", "color": [128, 128, 128],
                   "category": None, "type": None, "modifier": None, "error": "not in the segment database"}
    brain = describe_segment(1, "BRAIN")
    assert brain["type"] == {"value": "12738006", "scheme": "SCT", "meaning": "Brain"} and "error" not in brain
