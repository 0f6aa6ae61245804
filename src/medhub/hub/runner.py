"""What a model is to the hub: a :class:`Runner` that loads once and predicts per series.

A model's ``runner.py`` holds ``class Runner(medhub.Runner)`` with the lines only that model
has; the hub (:class:`medhub.hub.runtime.ModelRunner`) does everything every model needs once:

* before ``load``: the device is checked against the card and the machine, the card's weights
  files are fetched and verified, torch's CPU threads are set (for a card that requires
  torch), and the workflow's ``predict`` parameters are laid over the card's defaults; all of
  it arrives as one :class:`RunnerContext`, also kept as ``self.context``;
* around ``predict``: a runner is never called before ``load`` nor with a volume that is not 3D,
  and what it returns is checked against the card: a bare label array becomes a
  :class:`~medhub.data.prediction.Prediction` with the card's segments, the label map must have
  the volume's shape and use only the card's label values, and every card value with
  ``volume_of`` gets the segment's volume in ml.

This module is also imported by the isolated worker (:mod:`medhub.hub.isolated_worker`) in a
model's own venv, where pydantic may be missing: it imports numpy and medhub's data model only.
"""

from __future__ import annotations

import importlib
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType
from typing import TYPE_CHECKING, Any

import numpy as np

from medhub.data.prediction import Prediction
from medhub.data.volume import Volume
from medhub.errors import MedhubError
from medhub.hub.weight_store import install_hint, medhub_extra_command

if TYPE_CHECKING:
    from medhub.hub.card import ModelCard

TORCH_FAMILY = frozenset({"torch", "torchvision", "torchaudio"})
_REQUIREMENT_NAME = re.compile(r"^\s*([A-Za-z0-9][A-Za-z0-9._-]*)")


@dataclass(frozen=True)
class RunnerContext:
    """What the hub has checked and prepared before a runner loads.

    ``card``: the model card (in an isolated environment a read-only copy of its fields, since
    pydantic may not be installed there). ``folder``: the model's folder (card.yaml, runner.py).
    ``weights``: every weights file the card declares for these parameters, name → verified
    local path. ``device``: ``cpu``, ``cuda``, ``cuda:N`` or ``mps``, usable on this machine and
    listed on the card. ``params``: the card's parameter defaults, overridden by the workflow's
    ``predict`` parameters. ``threads``: the CPU
    threads the model may use (torch's are already set to it).
    """

    card: ModelCard
    folder: Path
    weights: Mapping[str, Path] = field(default_factory=dict)
    device: str = "cpu"
    params: Mapping[str, Any] = field(default_factory=dict)
    threads: int = 1

    @property
    def model_id(self) -> str:
        return str(self.card.id)

    def to_json(self) -> dict[str, Any]:
        """The context as JSON data, for the isolated worker (:func:`context_from_json` reads it back)."""
        return {"card": self.card.model_dump(mode="json"), "folder": str(self.folder),
                "weights": {name: str(path) for name, path in self.weights.items()}, "device": self.device,
                "params": dict(self.params), "threads": self.threads}


class Runner:
    """Base class of a model's runner: ``class Runner(medhub.Runner)`` in the model's ``runner.py``.

    Override :meth:`predict` (and :meth:`load` when the model has weights to load). The
    constructor takes no arguments; the hub sets ``self.context`` before it calls ``load``.
    """

    context: RunnerContext

    def load(self, context: RunnerContext) -> None:
        """Load weights once per process (``context.weights``, ``context.device``); the default loads nothing."""

    def predict(self, volume: Volume, params: Mapping[str, Any]) -> Prediction | np.ndarray:
        """One volume's result: a label map on the volume's grid (the card's segments) or a full Prediction.

        ``volume.array`` is 3D, indexed ``[x, y, z]``; it must not be modified. ``params`` are the
        workflow's ``predict`` parameters over the card's defaults (every declared default is
        there). Raise :class:`~medhub.errors.SeriesSkipped` for a volume the model cannot handle.
        """
        raise NotImplementedError(f"{type(self).__module__}.{type(self).__name__} must implement predict()")


def available_cpus() -> int:
    """CPUs this process may use (its affinity mask, e.g. a batch job's allocation), for torch's thread count."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def require_module(module: str, model_id: str, *, pip_name: str | None = None, extra: str | None = None) -> ModuleType:
    """Import an optional dependency of a model, or raise a one-line error saying what to install.

    Runners call this inside ``load`` so that the catalog never imports heavy packages.
    """
    try:
        return importlib.import_module(module)
    except ImportError as exc:
        package = pip_name or module
        if exc.name is not None and exc.name.split(".")[0] != module.split(".")[0]:
            # the package is there but one of *its* own imports fails: say which one
            raise MedhubError(
                f"model {model_id}: the package '{package}' is installed but cannot be imported ({exc})"
            ) from None
        hint = medhub_extra_command(extra) if extra else install_hint(package)
        raise MedhubError(f"model {model_id} needs the package '{package}' ({hint})") from None


def requires_torch(card: Any) -> bool:
    """Whether the card's requirements name torch (or torchvision/torchaudio)."""
    names = (_REQUIREMENT_NAME.match(spec) for spec in card.requirements)
    return any(match is not None and match.group(1).lower() in TORCH_FAMILY for match in names)


def start(runner: Runner, context: RunnerContext) -> None:
    """Prepare this process for the model and load it: torch's threads, ``runner.context``, ``runner.load``.

    Called where the runner lives: in this process, or in the isolated worker.
    """
    if requires_torch(context.card):
        try:
            import torch
        except ImportError:
            raise MedhubError(f"model {context.model_id} needs the package 'torch' (pip install torch)") from None
        torch.set_num_threads(max(1, context.threads))
    runner.context = context
    runner.load(context)


def finish(result: Any, volume: Volume, card: ModelCard) -> Prediction:
    """What ``predict`` returned, checked against the volume and the card, with the card's volumes in ml."""
    model = card.id
    if isinstance(result, np.ndarray):
        try:
            prediction = Prediction(labels=result, segments=dict(card.outputs.segments))
        except MedhubError as exc:
            raise MedhubError(f"model {model}: {exc}") from None
    elif isinstance(result, Prediction):
        prediction = result
    else:
        raise MedhubError(f"model {model}: predict returned {type(result).__name__}; return a label array "
                          "or a medhub.Prediction")
    if prediction.labels is None:
        return prediction
    if prediction.labels.shape != volume.array.shape:
        raise MedhubError(f"model {model} returned labels of shape {prediction.labels.shape} for a volume of shape "
                          f"{volume.array.shape}")
    declared = card.outputs.segments
    for value, segment_id in prediction.segments.items():
        if declared.get(value) != segment_id:
            expected = f"'{declared[value]}'" if value in declared else "not declared"
            raise MedhubError(f"model {model}: label {value} is '{segment_id}' in its prediction but {expected} on "
                              f"its card")
    label_of = {segment_id: value for value, segment_id in declared.items()}
    voxel_ml = volume.voxel_volume_ml
    volumes = {spec.name: round(prediction.voxels(label_of[spec.volume_of]) * voxel_ml, 3)
               for spec in card.outputs.values if spec.volume_of is not None}
    prediction.values = {**volumes, **prediction.values}
    return prediction


def context_from_json(data: Mapping[str, Any]) -> RunnerContext:
    """A context sent by :meth:`RunnerContext.to_json`, with the card as a read-only view of its fields."""
    return RunnerContext(card=card_view(data["card"]), folder=Path(data["folder"]),
                         weights={name: Path(path) for name, path in data["weights"].items()},
                         device=str(data["device"]), params=dict(data["params"]), threads=int(data["threads"]))


class _Fields(dict[str, Any]):
    """A card's JSON data read like the parsed card: ``card.outputs.values`` as well as ``card["outputs"]``.

    A field wins over a dict method of the same name (``outputs.values`` is the card's list).
    """

    def __getattribute__(self, name: str) -> Any:
        if not name.startswith("_") and dict.__contains__(self, name):
            return dict.__getitem__(self, name)
        return super().__getattribute__(name)

    def __getattr__(self, name: str) -> Any:
        raise AttributeError(f"the card has no field '{name}'")


def card_view(data: Any) -> Any:
    """The parsed card's shape from its JSON data, without pydantic: nested fields, ``segments`` keyed by int."""
    if isinstance(data, dict):
        view = _Fields({key: card_view(value) for key, value in data.items()})
        segments = view.get("outputs", {}).get("segments") if isinstance(view.get("outputs"), dict) else None
        if isinstance(segments, dict):
            view["outputs"]["segments"] = {int(value): name for value, name in segments.items()}
        return view
    if isinstance(data, list):
        return [card_view(item) for item in data]
    return data
