"""medhub: run published medical imaging models on raw DICOM, write valid DICOM results.

This package is also the whole API a model needs (docs/adding-a-model.md)::

    from medhub import Prediction, Runner, RunnerContext, SeriesSkipped, Volume

and ``medhub.check_model(folder)`` is ``medhub check`` for a model's own tests.

Each name is imported on first use (``__getattr__``), so ``import medhub`` stays as cheap as
the command line needs; type checkers see the real classes.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

if TYPE_CHECKING:
    from medhub.authoring.check import check_model
    from medhub.data.prediction import Prediction
    from medhub.data.volume import Volume
    from medhub.errors import MedhubError, SeriesSkipped
    from medhub.hub.runner import Runner, RunnerContext, require_module

_EXPORTS = {
    "Runner": "medhub.hub.runner",
    "RunnerContext": "medhub.hub.runner",
    "require_module": "medhub.hub.runner",
    "Volume": "medhub.data.volume",
    "Prediction": "medhub.data.prediction",
    "SeriesSkipped": "medhub.errors",
    "MedhubError": "medhub.errors",
    "check_model": "medhub.authoring.check",
}

__all__ = ["MedhubError", "Prediction", "Runner", "RunnerContext", "SeriesSkipped", "Volume", "__version__",
           "check_model", "require_module"]


def __getattr__(name: str) -> Any:
    """Import a public name from the module that defines it, the first time it is asked for."""
    where = _EXPORTS.get(name)
    if where is None:
        raise AttributeError(f"module 'medhub' has no attribute {name!r}")
    value = getattr(importlib.import_module(where), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *__all__})
