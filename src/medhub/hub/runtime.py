"""The runners this process has loaded: one per model and device, loaded once, used by one caller at a time.

Loading a model costs seconds to minutes (weights, an isolated worker), so a runner is loaded
on first use and kept for the life of the process: a cohort of a thousand series, the jobs of
``medhub serve``, the heads that embed through an encoder all share it. A runner is not
assumed to be thread-safe, so its callers take turns under :meth:`RunnerCache.lock`:
concurrent jobs of ``medhub serve`` take turns on one model while different models run side by
side. The CLI pays an uncontended lock per series.
"""

from __future__ import annotations

import threading
from typing import Any

from medhub.hub.envs import ensure_env, needs_isolation
from medhub.hub.isolated import IsolatedRunner
from medhub.hub.runner import ModelRunner

RunnerKey = tuple[str, str]  # (model id, device)


class RunnerCache:
    """Loaded runners keyed by (model id, device), each with the lock its callers take turns on."""

    def __init__(self) -> None:
        self._runners: dict[RunnerKey, ModelRunner] = {}
        self._locks: dict[RunnerKey, threading.RLock] = {}
        self._guard = threading.Lock()

    def lock(self, model_id: str, device: str) -> threading.RLock:
        """The lock of one (model, device): held while it loads and while it predicts."""
        with self._guard:
            return self._locks.setdefault((model_id, device), threading.RLock())

    def get(self, model: Any, device: str, params: dict[str, Any]) -> ModelRunner:
        """The model's runner, loaded on first use (see :func:`loaded_runner`)."""
        key = (model.card.id, device)
        with self.lock(*key):
            isolated = needs_isolation(model.card)
            cached = self._runners.get(key)
            if cached is not None and bool(getattr(cached, "isolated", False)) != isolated:  # MEDHUB_ISOLATION changed
                self.forget(*key)
                cached = None
            if cached is None:
                runner: ModelRunner = IsolatedRunner(model, ensure_env(model)) if isolated else model.new_runner()
                runner.load(device, params)
                self._runners[key] = cached = runner
            return cached

    def forget(self, model_id: str, device: str) -> None:
        """Drop a runner (and stop its worker, if isolated): the next use loads it afresh."""
        with self.lock(model_id, device):
            runner = self._runners.pop((model_id, device), None)
        if runner is not None:
            getattr(runner, "close", lambda: None)()


RUNNERS = RunnerCache()
"""The process's runners (a model loaded by ``medhub run`` is the one ``embed`` and the server reuse)."""


def loaded_runner(model: Any, device: str, params: dict[str, Any]) -> ModelRunner:
    """The model's runner, loaded once per process and device, then reused across series and runs.

    A model whose card requirements this environment does not satisfy (or any model under
    ``MEDHUB_ISOLATION=always``) gets an :class:`~medhub.hub.isolated.IsolatedRunner`: its real
    runner runs in the model's own venv (built on first use), in one worker kept for the process.
    """
    return RUNNERS.get(model, device, params)
