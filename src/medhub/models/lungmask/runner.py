"""lungmask runner: right and left lung of a CT through lungmask's own ``LMInferer``, in memory.

Why this shape:

* lungmask downloads R231 with ``torch.hub`` from GitHub at run time, which fails offline and
  bypasses any checksum. The card declares the file instead, so the hub resolves it through
  medhub's weights manager (cache, SHA-256, ``MEDHUB_WEIGHTS_MIRROR``; a missing file is a
  one-line error) and the runner hands the local path to ``LMInferer(modelpath=...)``: lungmask
  builds its own network with its own ``get_model`` and runs its own ``apply``, so the result is
  lungmask's, not a re-implementation.
* The volume goes in as a SimpleITK image carrying the volume's LPS geometry. lungmask reorients
  it to LPS itself (the orientation R231 was trained in), and returns the mask in the image's
  own voxel order, which is ``Volume.array`` transposed (SimpleITK arrays are ``[z, y, x]``).
  Its label values are R231's (README: "1 = Right lung, 2 = Left lung"), which the card maps.

SimpleITK and lungmask are imported in :meth:`Runner.load` only, so that listing models never
pays for them.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any

import numpy as np

import medhub


def volume_to_sitk(volume: medhub.Volume, sitk: Any) -> Any:
    """A SimpleITK image with the volume's voxels (``[z, y, x]`` array) and LPS geometry.

    SimpleITK's direction matrix has the unit direction of voxel axis ``j`` in column ``j``,
    exactly ``affine_lps[:3, :3]`` with the spacing divided out.
    """
    spacing = np.asarray(volume.spacing, dtype=float)
    if np.any(spacing <= 0):
        raise medhub.SeriesSkipped(f"lungmask needs a volume with a positive voxel size, got {tuple(spacing)}")
    image = sitk.GetImageFromArray(np.ascontiguousarray(np.transpose(volume.array, (2, 1, 0))))
    image.SetSpacing([float(s) for s in spacing])
    image.SetOrigin([float(v) for v in volume.affine_lps[:3, 3]])
    image.SetDirection([float(v) for v in (volume.affine_lps[:3, :3] / spacing[None, :]).ravel()])
    return image


class Runner(medhub.Runner):
    """Builds lungmask's ``LMInferer`` once in :meth:`load`; :meth:`predict` runs its ``apply`` per volume."""

    def load(self, context: medhub.RunnerContext) -> None:
        """Build lungmask's inferer for R231 (the card's verified weights file) on the device.

        ``params``: ``batch_size`` (slices per forward pass), ``volume_postprocessing`` (lungmask's
        connected-component clean-up).
        """
        self._sitk = medhub.require_module("SimpleITK", context.model_id, pip_name="SimpleITK")
        mask = medhub.require_module("lungmask.mask", context.model_id, pip_name="lungmask")
        (weights,) = context.weights.values()
        try:
            self._inferer = mask.LMInferer(
                modelname="R231",
                modelpath=os.fspath(weights),
                force_cpu=context.device == "cpu",
                batch_size=int(context.params["batch_size"]),
                volume_postprocessing=bool(context.params["volume_postprocessing"]),
                tqdm_disable=True,
            )
        except (RuntimeError, KeyError, IndexError, TypeError) as exc:  # not an R231-shaped state dict
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise medhub.MedhubError(f"model {context.model_id}: {weights} is not a lungmask R231 state dict ({first})"
                                     ) from None

    def predict(self, volume: medhub.Volume, params: Mapping[str, Any]) -> np.ndarray:
        """Label map in the volume's voxel order: R231's 1 = right lung, 2 = left lung."""
        mask_zyx = np.asarray(self._inferer.apply(volume_to_sitk(volume, self._sitk)))
        return np.ascontiguousarray(np.transpose(mask_zyx, (2, 1, 0))).astype(np.uint8)
