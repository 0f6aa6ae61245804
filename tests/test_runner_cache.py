"""The process's runner cache (hub/runtime.RunnerCache): one loaded runner per model and device,
loaded again when a caller asks for other parameters (a server's jobs may use several workflows)."""

from __future__ import annotations

from medhub.hub.catalog import get_model
from medhub.hub.runtime import RunnerCache


def test_a_runner_is_reused_for_the_same_parameters_and_loaded_again_for_others() -> None:
    cache, model = RunnerCache(), get_model("ct-body")
    first = cache.get(model, "cpu", {})
    assert cache.get(model, "cpu", dict(model.card.parameter_defaults())) is first  # the same, defaults spelled out
    other = cache.get(model, "cpu", {"bone_hu": 300})
    assert other is not first and other.context is not None and other.context.params["bone_hu"] == 300
    assert first.context is None  # the replaced runner was closed
    assert cache.get(model, "cpu", {"bone_hu": 300}) is other
