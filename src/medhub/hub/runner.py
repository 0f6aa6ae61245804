"""What a model is to the pipeline: a runner with ``load`` once and ``predict`` per series.

A built-in model is a folder ``medhub/models/<package_name>/`` holding ``card.yaml``,
``runner.py`` (a class named ``Runner`` implementing :class:`ModelRunner`) and
``workflows/<name>.yml``.
"""

from __future__ import annotations

import os
from typing import Any, Protocol

import numpy as np

from medhub.data.prediction import Prediction
from medhub.data.volume import Volume
from medhub.errors import MedhubError


class ModelRunner(Protocol):
    """The two calls a runner implements. ``params`` come from the workflow's ``predict`` module."""

    def load(self, device: str, params: dict[str, Any]) -> None:
        """Load weights once per process; called before the first ``predict``."""

    def predict(self, volume: Volume, params: dict[str, Any]) -> Prediction:
        """Run on one volume; must not modify ``volume``."""


def available_cpus() -> int:
    """CPUs this process may use (its affinity mask, e.g. a batch job's allocation), for torch's thread count."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def brain_mask_prediction(mask: np.ndarray, volume: Volume, model_id: str) -> Prediction:
    """A brain-extraction result: one BRAIN segment and its volume in ml.

    The mask must lie on the volume's own grid: a mask of another shape is refused, since a
    shifted mask is worse than none.
    """
    if mask.shape != volume.array.shape:
        raise MedhubError(f"model {model_id}: mask shape {mask.shape} differs from volume {volume.array.shape}")
    mask = mask.astype(bool)
    voxel_ml = abs(float(np.linalg.det(volume.affine_lps[:3, :3]))) / 1000.0
    return Prediction(
        labels=mask.astype(np.uint8),
        segments={1: "BRAIN"},
        values={"brain_volume_ml": round(float(mask.sum()) * voxel_ml, 3)},
    )
