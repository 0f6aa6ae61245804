"""Run a model's runner in its own venv, as a worker subprocess that exchanges files.

:class:`IsolatedRunner` stands in for a model's :class:`~medhub.hub.runner.Runner` (the hub's
:class:`~medhub.hub.runtime.ModelRunner` drives it like any runner): its ``load`` starts ONE
worker (``<venv>/bin/python -m medhub.hub.isolated_worker``) that imports the model's real
``Runner`` and loads it once with the same :class:`~medhub.hub.runner.RunnerContext` (sent as
JSON); each ``predict`` then costs one volume written and one label map read, not a model load.
What the model returns comes back as it was returned (a label array, or a Prediction's labels,
segments and values), and the hub checks it against the card in this process. The worker lives until the proxy is closed
or the main process exits (and ends by itself when its stdin closes, so it never outlives a
killed parent).

Protocol: one JSON object per line on the worker's stdin, one JSON answer per line on its
stdout. Arrays travel as uncompressed ``.npy`` files in a private work folder (``np.save``
of a CT is a memory copy; gzip would cost seconds, see DESIGN.md). The affine travels in the
JSON as a list of floats (``json`` round-trips floats exactly), so the runner sees the same
``Volume.array`` and ``Volume.affine_lps`` as in process. ``Volume.source`` (the pydicom
headers) is not sent: a runner works on voxels and geometry, the writers use the source.

The worker redirects its own file descriptor 1 to stderr before importing the model, so
anything a model prints (even from C code) cannot corrupt the protocol; stderr goes to a log
file whose tail comes back with an error (:attr:`IsolatedModelError.details`).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import tempfile
import threading
import weakref
from collections.abc import Mapping
from pathlib import Path
from typing import IO, Any

import numpy as np

from medhub.data.prediction import Prediction
from medhub.data.volume import Volume
from medhub.errors import MedhubError, SeriesSkipped
from medhub.hub.envs import env_python
from medhub.hub.runner import Runner, RunnerContext

STDERR_TAIL_LINES = 40


class IsolatedModelError(MedhubError):
    """A model failed inside its environment; ``details`` holds its traceback and stderr tail."""

    def __init__(self, message: str, details: str = "") -> None:
        super().__init__(message)
        self.details = details


class IsolatedRunner(Runner):
    """Proxy for a model runner living in the venv ``env_path`` (built by :func:`medhub.hub.envs.ensure_env`)."""

    def __init__(self, entry: Any, env_path: Path, *, work_root: Path | None = None) -> None:
        self.entry = entry
        self.env_path = Path(env_path)
        self.work_root = work_root
        self.worker_info: dict[str, Any] = {}
        self._process: subprocess.Popen[str] | None = None
        self._workdir: Path | None = None
        self._log: IO[str] | None = None
        self._counter = 0
        self._finalizer: weakref.finalize | None = None
        self._lock = threading.Lock()  # one request at a time on the worker's pipes (threads of `medhub serve`)

    @property
    def model_id(self) -> str:
        return self.entry.card.id

    # -- Runner --------------------------------------------------------------------------------
    def load(self, context: RunnerContext) -> None:
        """Start the worker in the venv and load the model there (once), with the hub's context."""
        if self._process is not None:
            self.close()
        python = env_python(self.env_path)
        if not python.exists():
            raise MedhubError(f"model {self.model_id}: no environment at {self.env_path} (run: medhub pull "
                              f"{self.model_id})")
        self._workdir = Path(tempfile.mkdtemp(prefix=f"medhub-{self.model_id}-", dir=self.work_root))
        self._log = open(self._workdir / "worker.log", "w+", encoding="utf-8")  # noqa: SIM115 (closed in close)
        environment = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME", "PYTHONSTARTUP")}
        environment.update(VIRTUAL_ENV=str(self.env_path), PYTHONNOUSERSITE="1", PYTHONUNBUFFERED="1")
        self._process = subprocess.Popen(
            [str(python), "-m", "medhub.hub.isolated_worker", self.entry.module, str(Path(self.entry.path).resolve())],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=self._log, text=True, encoding="utf-8",
            cwd=self._workdir, env=environment,
        )
        self._finalizer = weakref.finalize(self, _shutdown, self._process, self._log, self._workdir)
        try:
            answer = self._call({"op": "load", "context": context.to_json()})
        except BaseException:
            self.close()
            raise
        self.worker_info = {k: v for k, v in answer.items() if k != "ok"}

    def predict(self, volume: Volume, params: Mapping[str, Any]) -> Prediction | np.ndarray:
        """Send the volume to the worker, run the real runner there, read its result back."""
        if self._process is None or self._workdir is None:
            raise MedhubError(f"model {self.model_id}: predict called before load")
        with self._lock:
            return self._predict(volume, params)

    def _predict(self, volume: Volume, params: Mapping[str, Any]) -> Prediction | np.ndarray:
        assert self._workdir is not None
        self._counter += 1
        volume_file = self._workdir / f"volume-{self._counter}.npy"
        labels_file = self._workdir / f"labels-{self._counter}.npy"
        try:
            np.save(volume_file, np.asarray(volume.array), allow_pickle=False)
            answer = self._call({
                "op": "predict",
                "volume": volume_file.name,
                "labels": labels_file.name,
                "affine_lps": np.asarray(volume.affine_lps, dtype=float).tolist(),
                "modality": volume.modality,
                "findings": list(volume.findings),
                "metadata": _json_safe(volume.metadata),
                "params": dict(params),
            })
            labels = np.load(labels_file, allow_pickle=False) if answer["labels"] else None
        finally:
            volume_file.unlink(missing_ok=True)
            labels_file.unlink(missing_ok=True)
        if labels is not None and answer["segments"] is None:  # the runner returned a bare label array
            return labels
        segments = {int(value): str(name) for value, name in answer["segments"].items()}
        return Prediction(labels=labels, segments=segments, values=answer["values"])

    # -- lifetime ------------------------------------------------------------------------------
    def close(self) -> None:
        """Stop the worker and delete the work folder (also done automatically at exit)."""
        if self._finalizer is not None:
            self._finalizer()
        self._process = None
        self._workdir = None
        self._log = None

    def __enter__(self) -> IsolatedRunner:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- protocol ------------------------------------------------------------------------------
    def _call(self, request: dict[str, Any]) -> dict[str, Any]:
        process = self._process
        assert process is not None and process.stdin is not None and process.stdout is not None
        try:
            process.stdin.write(json.dumps(request) + "\n")
            process.stdin.flush()
            line = process.stdout.readline()
        except (BrokenPipeError, OSError):
            line = ""
        if not line:
            code = process.wait(timeout=10)
            tail = self.stderr_tail()
            last = tail.strip().splitlines()[-1] if tail.strip() else "no output"
            raise IsolatedModelError(
                f"model {self.model_id}: its worker process ended (exit code {code}): {last}", details=tail
            )
        answer = json.loads(line)
        if answer.get("ok"):
            return answer
        message = str(answer.get("message") or "unknown error").splitlines()[0]
        if answer.get("kind") == "skipped":
            raise SeriesSkipped(message)
        details = str(answer.get("traceback", "")) + "\n--- worker stderr ---\n" + self.stderr_tail()
        if answer.get("kind") == "medhub":
            raise IsolatedModelError(message, details=details)
        raise IsolatedModelError(f"model {self.model_id} failed in its environment: {message}", details=details)

    def stderr_tail(self, lines: int = STDERR_TAIL_LINES) -> str:
        """The last lines the worker wrote to stderr (what ``--debug`` shows)."""
        if self._log is None:
            return ""
        self._log.flush()
        text = (self._workdir / "worker.log").read_text(encoding="utf-8", errors="replace") if self._workdir else ""
        return "\n".join(text.splitlines()[-lines:])


def _shutdown(process: subprocess.Popen[str], log: IO[str], workdir: Path) -> None:
    """Ask the worker to stop, kill it if it does not, remove the work folder."""
    try:
        if process.poll() is None and process.stdin is not None:
            try:
                process.stdin.write(json.dumps({"op": "close"}) + "\n")
                process.stdin.close()
            except OSError:
                pass
            try:
                process.wait(timeout=5)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(timeout=5)
    finally:
        for stream in (process.stdout, log):
            try:
                if stream is not None:
                    stream.close()
            except OSError:
                pass
        shutil.rmtree(workdir, ignore_errors=True)


def _json_safe(data: dict[str, Any]) -> dict[str, Any]:
    """The entries of ``data`` that JSON can carry (volume metadata is informational)."""
    safe = {}
    for key, value in data.items():
        try:
            json.dumps(value)
        except (TypeError, ValueError):
            continue
        safe[str(key)] = value
    return safe
