"""The worker of an isolated model: runs in the model's own venv, answers :class:`~medhub.hub.isolated.IsolatedRunner`.

Started as ``<venv>/bin/python -m medhub.hub.isolated_worker MODULE FOLDER``. It imports only
numpy, pydicom, medhub's data model and :mod:`medhub.hub.runner` (what a venv built by
:mod:`medhub.hub.envs` is sure to hold), then the model's own ``Runner``, which it loads with
the hub's :class:`~medhub.hub.runner.RunnerContext`; see :mod:`medhub.hub.isolated` for the protocol.
"""

from __future__ import annotations

import importlib
import importlib.util
import json
import os
import sys
import traceback
import types
from pathlib import Path
from typing import IO, Any

import numpy as np

from medhub.data.prediction import Prediction
from medhub.data.volume import Volume
from medhub.errors import MedhubError, SeriesSkipped
from medhub.hub.runner import Runner, context_from_json, start


def _to_json(value: Any) -> Any:
    """``json.dumps`` default: numpy scalars and arrays in a model's values."""
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    raise TypeError(f"value of type {type(value).__name__} cannot be sent back from the worker")


def _import_runner(module: str, folder: Path) -> type[Runner]:
    """The model's ``Runner`` class: import ``<module>.runner`` from the venv, else from ``folder``.

    Built-in models import normally (medhub is linked into the venv). A plugin package is
    installed in medhub's environment, not in the venv, so it is loaded from its folder under
    its own name, without exposing the rest of that environment.
    """
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
    if not isinstance(runner, type) or not issubclass(runner, Runner):
        raise MedhubError(f"{folder / 'runner.py'} defines no class Runner(medhub.Runner)")
    return runner


def _answer(result: Any, labels_file: str) -> dict[str, Any]:
    """What the runner returned, for the proxy: the label map into ``labels_file``, the rest as JSON."""
    if isinstance(result, np.ndarray):
        np.save(labels_file, result, allow_pickle=False)
        return {"labels": True, "segments": None, "values": {}}
    if not isinstance(result, Prediction):
        raise MedhubError(f"predict returned {type(result).__name__}; return a label array or a medhub.Prediction")
    if result.embedding is not None:
        raise MedhubError("an embedding model cannot run in an isolated environment yet")
    if result.labels is not None:
        np.save(labels_file, result.labels, allow_pickle=False)
    return {"labels": result.labels is not None, "segments": {str(k): v for k, v in result.segments.items()},
            "values": result.values}


def _serve(module: str, folder: Path, protocol: IO[str]) -> None:
    """Answer requests from stdin until ``close`` or end of input."""
    runner: Runner | None = None
    for line in sys.stdin:
        request = json.loads(line)
        op = request.get("op")
        try:
            if op == "close":
                return
            if op == "load":
                runner = _import_runner(module, folder)()
                start(runner, context_from_json(request["context"]))
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
                answer = _answer(runner.predict(volume, request["params"]), request["labels"])
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
    """Worker entry point: ``python -m medhub.hub.isolated_worker MODULE FOLDER``."""
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 2:
        print("usage: python -m medhub.hub.isolated_worker MODULE FOLDER (started by medhub, not by hand)",
              file=sys.stderr)
        return 2
    protocol = os.fdopen(os.dup(1), "w", encoding="utf-8")
    os.dup2(2, 1)  # the model's prints (Python or C) go to stderr, never into the protocol
    sys.stdout = sys.stderr
    _serve(args[0], Path(args[1]).resolve(), protocol)
    return 0


if __name__ == "__main__":
    sys.exit(main())
