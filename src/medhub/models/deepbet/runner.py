"""deepbet runner: brain mask of a T1-weighted MR volume, entirely in memory.

deepbet's ``BrainExtraction.run`` accepts a nibabel image, reorients it to the closest
canonical (RAS) orientation itself and returns the mask reoriented back to the image's own
voxel order, so the mask lines up with ``Volume.array`` voxel for voxel: no temporary files,
no resampling. deepbet is imported in :meth:`Runner.load` only, so that listing models never
pays for it. The mask becomes the card's BRAIN segment, and the hub reports its volume.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

import medhub


class Runner(medhub.Runner):
    """Builds ``deepbet.BrainExtraction`` once in :meth:`load`; :meth:`predict` runs it per volume."""

    def load(self, context: medhub.RunnerContext) -> None:
        """Load both TorchScript networks (the card's verified ``model.pt`` and ``bbox_model.pt``) onto the device."""
        deepbet = medhub.require_module("deepbet", context.model_id, extra="deepbet")
        self._nib = medhub.require_module("nibabel", context.model_id)
        self._bet = deepbet.BrainExtraction(no_gpu=context.device == "cpu")

    def predict(self, volume: medhub.Volume, params: Mapping[str, Any]) -> np.ndarray:
        """Brain mask in the volume's voxel order.

        ``threshold`` is the probability above which a voxel is brain; ``n_dilate`` adds (>0) or
        removes (<0) voxel layers after deepbet's post-processing (the card declares both).
        """
        image = self._nib.Nifti1Image(np.asarray(volume.array, dtype=np.float32), volume.affine_ras)
        threshold, n_dilate = float(params["threshold"]), int(params["n_dilate"])
        try:
            _, mask_image, _ = self._bet.run(image, threshold=threshold, n_dilate=n_dilate)
        except AssertionError as exc:  # deepbet asserts when its bounding-box network finds no head
            raise medhub.SeriesSkipped(f"deepbet found no brain in this series ({exc})") from None
        return np.asarray(mask_image.dataobj).astype(bool)
