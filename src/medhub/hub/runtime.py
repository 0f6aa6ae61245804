"""Models as the hub runs them: checked, loaded once per process and device, each prediction checked.

:class:`ModelRunner` does for every model what used to be repeated in each runner (see
:mod:`medhub.hub.runner`): it checks the device against the card and the machine, fetches and
verifies the card's weights, decides whether the model runs here or in its own environment
(:class:`~medhub.hub.isolated.IsolatedRunner`), hands the model's :class:`~medhub.hub.runner.Runner`
its :class:`~medhub.hub.runner.RunnerContext`, refuses ``predict`` before ``load`` and volumes
that are not 3D, and checks what the runner returns against the card.

Loading a model costs seconds to minutes (weights, an isolated worker), so :data:`RUNNERS`
keeps each loaded model for the life of the process: a cohort of a thousand series, the jobs of
``medhub serve``, the heads that embed through an encoder all share it. A runner is not
assumed to be thread-safe, so its callers take turns under :meth:`RunnerCache.lock`:
concurrent jobs of ``medhub serve`` take turns on one model while different models run side by
side. The CLI pays an uncontended lock per series.
"""

from __future__ import annotations

import threading
from collections.abc import Mapping
from typing import Any

from medhub.data.prediction import Prediction
from medhub.data.volume import Volume
from medhub.errors import MedhubError, SeriesSkipped
from medhub.hub.catalog import ModelEntry, pull_weights
from medhub.hub.devices import check_device
from medhub.hub.envs import needs_isolation, require_env
from medhub.hub.isolated import IsolatedRunner
from medhub.hub.runner import Runner, RunnerContext, available_cpus, finish, start

RunnerKey = tuple[str, str]  # (model id, device)


class ModelRunner:
    """One model's runner as the hub runs it: ``load(device, params)`` once, then ``predict`` per volume.

    ``runner`` is the model's own :class:`~medhub.hub.runner.Runner`; when None, :meth:`load`
    makes one in this process, or an :class:`~medhub.hub.isolated.IsolatedRunner` when the
    card's requirements are not met here (or ``MEDHUB_ISOLATION=always``).
    """

    def __init__(self, entry: ModelEntry, runner: Runner | None = None) -> None:
        self.entry = entry
        self.runner = runner
        self.context: RunnerContext | None = None

    @property
    def model_id(self) -> str:
        return self.entry.card.id

    @property
    def isolated(self) -> bool:
        return isinstance(self.runner, IsolatedRunner)

    def load(self, device: str, params: Mapping[str, Any]) -> None:
        """Check the device, verify the weights, then load the model (in its own environment if it needs one)."""
        card = self.entry.card
        params = {**card.parameter_defaults(), **params}
        checked = check_device(device, card)
        weights = pull_weights(self.entry, progress=False, only=[w.name for w in card.weights if w.needed(params)])
        try:
            threads = max(1, int(params.get("threads") or available_cpus()))
        except (TypeError, ValueError):
            raise MedhubError(f"model {card.id}: threads must be a whole number, got {params.get('threads')!r}"
                              ) from None
        context = RunnerContext(card=card, folder=self.entry.path, weights=weights, device=checked,
                                params=dict(params), threads=threads)
        if self.runner is None:
            isolated = needs_isolation(card)
            self.runner = IsolatedRunner(self.entry, require_env(self.entry)) if isolated else self.entry.new_runner()
        if isinstance(self.runner, IsolatedRunner):
            self.runner.load(context)  # the worker calls start() in the model's environment
        else:
            start(self.runner, context)
        self.context = context

    def predict(self, volume: Volume, params: Mapping[str, Any]) -> Prediction:
        """The model's result on one volume, checked against the volume and the card (see :func:`finish`)."""
        if self.context is None or self.runner is None:
            raise MedhubError(f"model {self.model_id}: predict called before load")
        if volume.array.ndim != 3:
            raise SeriesSkipped(f"{self.model_id} needs a 3D volume, got an array of shape {volume.array.shape}")
        card = self.entry.card
        return finish(self.runner.predict(volume, {**card.parameter_defaults(), **params}), volume, card)

    def close(self) -> None:
        """Stop an isolated worker; the next :meth:`predict` needs a new :meth:`load`."""
        if isinstance(self.runner, IsolatedRunner):
            self.runner.close()
        self.context = None


class RunnerCache:
    """Loaded models keyed by (model id, device), each with the lock its callers take turns on."""

    def __init__(self) -> None:
        self._runners: dict[RunnerKey, ModelRunner] = {}
        self._locks: dict[RunnerKey, threading.RLock] = {}
        self._guard = threading.Lock()

    def lock(self, model_id: str, device: str) -> threading.RLock:
        """The lock of one (model, device): held while it loads and while it predicts."""
        with self._guard:
            return self._locks.setdefault((model_id, device), threading.RLock())

    def get(self, model: ModelEntry, device: str, params: Mapping[str, Any]) -> ModelRunner:
        """The model's runner, loaded on first use (see :func:`loaded_runner`).

        A runner loaded with other parameters is loaded again: ``load`` may choose weights and
        networks by them (TotalSegmentator's ``fast``, HD-BET's folds), so a server job of one
        workflow must never predict with the runner another workflow loaded.
        """
        key = (model.card.id, device)
        with self.lock(*key):
            cached = self._runners.get(key)
            wanted = {**model.card.parameter_defaults(), **params}
            if cached is not None and (cached.isolated != needs_isolation(model.card)  # MEDHUB_ISOLATION changed
                                       or cached.context is None or cached.context.params != wanted):
                self.forget(*key)
                cached = None
            if cached is None:
                runner = ModelRunner(model)
                runner.load(device, params)
                self._runners[key] = cached = runner
            return cached

    def forget(self, model_id: str, device: str) -> None:
        """Drop a runner (and stop its worker, if isolated): the next use loads it afresh."""
        with self.lock(model_id, device):
            runner = self._runners.pop((model_id, device), None)
        if runner is not None:
            runner.close()


RUNNERS = RunnerCache()
"""The process's runners (a model loaded by ``medhub run`` is the one ``embed`` and the server reuse)."""


def loaded_runner(model: ModelEntry, device: str, params: Mapping[str, Any]) -> ModelRunner:
    """The model's runner, loaded once per process and device, then reused across series and runs.

    A model whose card requirements this environment does not satisfy (or any model under
    ``MEDHUB_ISOLATION=always``) runs in the model's own venv, in one worker kept for the process.
    The venv must have been built (``medhub pull``, ``medhub run --pull``): loading a model never builds one.
    """
    return RUNNERS.get(model, device, params)
