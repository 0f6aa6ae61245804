"""Test model for isolated environments: threshold + 3D connected components, on numpy 1.x only.

``Runner.predict`` refuses to run unless numpy's major version is ``required_numpy_major``
(1, which the card's ``numpy<2`` gets in the model's venv but medhub's environment does not
have): a result from this runner proves the isolated path ran. The tests compute the same
algorithm in process through a subclass that sets ``required_numpy_major = None``.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np
from scipy import ndimage as ndi

import medhub

LARGEST, OTHER = 1, 2


def threshold_components(hu: np.ndarray, voxel_ml: float, threshold_hu: float, min_ml: float) -> np.ndarray:
    """Label 1 = largest 26-connected component above ``threshold_hu``; 2 = the others of >= ``min_ml``."""
    labels, count = ndi.label(hu > threshold_hu, structure=ndi.generate_binary_structure(3, 3))
    result = np.zeros(hu.shape, dtype=np.uint8)
    if count == 0:
        return result
    sizes = ndi.histogram(labels, 0, count, count + 1).astype(np.int64)
    sizes[0] = 0
    keep = sizes * voxel_ml >= min_ml
    keep[0] = False
    code = np.where(keep, OTHER, 0).astype(np.uint8)
    code[int(sizes.argmax())] = LARGEST
    return code[labels]


class Runner(medhub.Runner):
    """No weights; checks the numpy version at load and predict."""

    required_numpy_major: int | None = 1

    def _check_numpy(self) -> None:
        major = int(np.__version__.split(".")[0])
        if self.required_numpy_major is not None and major != self.required_numpy_major:
            raise medhub.MedhubError(
                f"isolated-threshold needs numpy {self.required_numpy_major}.x, runs with numpy {np.__version__}"
            )

    def load(self, context: medhub.RunnerContext) -> None:
        self._check_numpy()

    def predict(self, volume: medhub.Volume, params: Mapping[str, Any]) -> medhub.Prediction:
        self._check_numpy()
        if params.get("describe_context"):  # what the worker received, for tests/test_isolated.py
            context = self.context
            return medhub.Prediction(values={
                "card": [context.card.id, context.card.outputs.segments == {1: "SKULL", 2: "BONE"}],
                "folder": str(context.folder), "device": context.device, "params": dict(context.params),
                "threads": context.threads, "weights": {k: str(v) for k, v in context.weights.items()}})
        voxel_ml = volume.voxel_volume_ml
        labels = threshold_components(np.asarray(volume.array), voxel_ml, float(params["threshold_hu"]),
                                      float(params["min_ml"]))
        counts = np.bincount(labels.ravel(), minlength=3)
        components = int(ndi.label(labels > 0, structure=ndi.generate_binary_structure(3, 3))[1])
        return medhub.Prediction(
            labels=labels,
            segments={v: name for v, name in ((LARGEST, "SKULL"), (OTHER, "BONE")) if counts[v]},
            values={"components": components, "largest_ml": round(float(counts[LARGEST]) * voxel_ml, 3)},
        )
