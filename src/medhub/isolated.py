"""Run a model's runner in its own venv, as a worker subprocess that exchanges files.

:class:`IsolatedRunner` is a :class:`~medhub.models.base.ModelRunner` for the pipeline: its
``load`` starts ONE worker (``<venv>/bin/python -m medhub.isolated``) that imports the
model's real ``Runner`` and calls its ``load`` once; each ``predict`` then costs one volume
written and one label map read, not a model load. The worker lives until the proxy is closed
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
import sys
import tempfile
import threading
import traceback
import types
import weakref
from pathlib import Path
from typing import IO, Any

import numpy as np

from medhub.errors import MedhubError, SeriesSkipped
from medhub.models.base import Prediction
from medhub.volume import Volume

STDERR_TAIL_LINES = 40


class IsolatedModelError(MedhubError):
    """A model failed inside its environment; ``details`` holds its traceback and stderr tail."""

    def __init__(self, message: str, details: str = "") -> None:
        super().__init__(message)
        self.details = details


class IsolatedRunner:
    """Proxy for a model runner living in the venv ``env_path`` (built by :func:`medhub.envs.ensure_env`)."""

    isolated = True  # tells the pipeline's runner cache which kind it holds

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

    # -- ModelRunner ---------------------------------------------------------------------------
    def load(self, device: str, params: dict[str, Any]) -> None:
        """Start the worker in the venv and load the model there (once)."""
        from medhub.envs import env_python

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
            [str(python), "-m", "medhub.isolated", self.entry.module, str(Path(self.entry.path).resolve())],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=self._log, text=True, encoding="utf-8",
            cwd=self._workdir, env=environment,
        )
        self._finalizer = weakref.finalize(self, _shutdown, self._process, self._log, self._workdir)
        try:
            answer = self._call({"op": "load", "device": device, "params": params})
        except BaseException:
            self.close()
            raise
        self.worker_info = {k: v for k, v in answer.items() if k != "ok"}

    def predict(self, volume: Volume, params: dict[str, Any]) -> Prediction:
        """Send the volume to the worker, run the real runner there, read its label map back."""
        if self._process is None or self._workdir is None:
            raise MedhubError(f"model {self.model_id}: predict called before load")
        with self._lock:
            return self._predict(volume, params)

    def _predict(self, volume: Volume, params: dict[str, Any]) -> Prediction:
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
                "params": params,
            })
            labels = np.load(labels_file, allow_pickle=False)
        finally:
            volume_file.unlink(missing_ok=True)
            labels_file.unlink(missing_ok=True)
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


def _to_json(value: Any) -> Any:
    """``json.dumps`` default: numpy scalars and arrays in a model's values."""
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    raise TypeError(f"value of type {type(value).__name__} cannot be sent back from the worker")


# -- the worker (runs inside the model's venv) ------------------------------------------------
def _import_runner(module: str, folder: Path) -> type:
    """The model's ``Runner`` class: import ``<module>.runner`` from the venv, else from ``folder``.

    Built-in models import normally (medhub is linked into the venv). A plugin package is
    installed in medhub's environment, not in the venv, so it is loaded from its folder under
    its own name, without exposing the rest of that environment.
    """
    import importlib
    import importlib.util

    try:
        spec = importlib.util.find_spec(module)
    except ImportError:
        spec = None
    here = spec is not None and spec.submodule_search_locations and any(
        Path(p).resolve() == folder for p in spec.submodule_search_locations
    )
    if not here:
        init = folder / "__init__.py"
        if init.is_file():
            package_spec = importlib.util.spec_from_file_location(module, init,
                                                                  submodule_search_locations=[str(folder)])
            if package_spec is None or package_spec.loader is None:
                raise MedhubError(f"cannot load the model package {module} from {folder}")
            package = importlib.util.module_from_spec(package_spec)
            sys.modules[module] = package
            package_spec.loader.exec_module(package)
        else:  # a plain folder (card.yaml + runner.py): a namespace-like package
            package = types.ModuleType(module)
            package.__path__ = [str(folder)]
            sys.modules[module] = package
    runner = getattr(importlib.import_module(f"{module}.runner"), "Runner", None)
    if not isinstance(runner, type):
        raise MedhubError(f"{folder / 'runner.py'} defines no class named 'Runner'")
    return runner


def _serve(module: str, folder: Path, protocol: IO[str]) -> None:
    """Answer requests from stdin until ``close`` or end of input."""
    runner: Any = None
    for line in sys.stdin:
        request = json.loads(line)
        op = request.get("op")
        try:
            if op == "close":
                return
            if op == "load":
                runner = _import_runner(module, folder)()
                runner.load(request["device"], request["params"])
                answer: dict[str, Any] = {"python": sys.version.split()[0], "numpy": np.__version__,
                                          "executable": sys.executable}
            elif op == "predict":
                if runner is None:
                    raise MedhubError("predict before load")
                volume = Volume(
                    array=np.load(request["volume"], allow_pickle=False),
                    affine_lps=np.array(request["affine_lps"], dtype=float),
                    modality=request["modality"],
                    findings=list(request["findings"]),
                    metadata=dict(request["metadata"]),
                )
                prediction = runner.predict(volume, request["params"])
                np.save(request["labels"], np.asarray(prediction.labels), allow_pickle=False)
                answer = {"segments": {str(k): v for k, v in prediction.segments.items()},
                          "values": prediction.values}
            else:
                raise MedhubError(f"unknown request {op!r}")
            reply = json.dumps({"ok": True, **answer}, default=_to_json)
        except SeriesSkipped as exc:
            reply = json.dumps({"ok": False, "kind": "skipped", "message": exc.reason})
        except MedhubError as exc:
            reply = json.dumps({"ok": False, "kind": "medhub", "message": str(exc),
                                "traceback": traceback.format_exc()})
        except Exception as exc:
            traceback.print_exc()
            reply = json.dumps({"ok": False, "kind": "error", "message": f"{type(exc).__name__}: {exc}",
                                "traceback": traceback.format_exc()})
        protocol.write(reply + "\n")
        protocol.flush()


def main(argv: list[str] | None = None) -> int:
    """Worker entry point: ``python -m medhub.isolated MODULE FOLDER``."""
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 2:
        print("usage: python -m medhub.isolated MODULE FOLDER (started by medhub, not by hand)", file=sys.stderr)
        return 2
    protocol = os.fdopen(os.dup(1), "w", encoding="utf-8")
    os.dup2(2, 1)  # the model's prints (Python or C) go to stderr, never into the protocol
    sys.stdout = sys.stderr
    _serve(args[0], Path(args[1]).resolve(), protocol)
    return 0


if __name__ == "__main__":
    sys.exit(main())
