"""Astra's "chest" preprocessing of a CT volume for the I3ResNet-152 encoder, in numpy + torch.

The encoder was trained on volumes prepared by MONAI transforms (Astra_CTRG's
``infer_one_ct.py``): ``Orientation(RAS)`` → ``CropForeground(HU > -1000)`` →
``Resize(224, 224, 160, mode="area")`` → ``ScaleIntensityRange(-1000..200 → 0..1, clip)``.
medhub does the same without MONAI (which would pull in a second torch stack):

* **RAS**: the closest canonical orientation of the voxel grid (axes permuted and flipped, no
  resampling), found from the affine with nibabel's ``io_orientation``;
* **crop**: the bounding box of all voxels strictly above the threshold (the whole volume when
  none is);
* **resize**: torch's ``interpolate(mode="area")``, i.e. adaptive average pooling (MONAI's
  "area" mode is this same call);
* **window**: ``(hu - low) / (high - low)`` clipped to 0..1, in float32.

Every number that changes the output is in :class:`Preprocessing`, so the embedding cache key
and the JSON sidecar record exactly what was done.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import nibabel.orientations as nio
import numpy as np
import torch
import torch.nn.functional as F


@dataclass(frozen=True)
class Preprocessing:
    """The parameters of the chest preprocessing (defaults: Astra's)."""

    orientation: str = "RAS"
    crop_above_hu: float = -1000.0
    size: tuple[int, int, int] = (224, 224, 160)
    resize_mode: str = "area"
    window_hu: tuple[float, float] = (-1000.0, 200.0)

    def as_dict(self) -> dict[str, object]:
        """JSON-ready (tuples become lists), for the cache key and the sidecar."""
        data = asdict(self)
        return {k: list(v) if isinstance(v, tuple) else v for k, v in data.items()}


def to_ras(array: np.ndarray, affine_ras: np.ndarray) -> np.ndarray:
    """The voxels reordered so that axes 0, 1, 2 run towards Right, Anterior, Superior."""
    ornt = nio.io_orientation(affine_ras)
    return np.ascontiguousarray(nio.apply_orientation(array, ornt))


def crop_foreground(volume: torch.Tensor, threshold: float) -> torch.Tensor:
    """The smallest box holding every voxel above ``threshold`` (the volume itself if there is none)."""
    inside = volume > threshold
    if not bool(inside.any()):
        return volume
    box = []
    for axis in range(3):
        others = tuple(a for a in range(3) if a != axis)
        hits = torch.nonzero(inside.any(dim=others)).flatten()
        box.append(slice(int(hits[0]), int(hits[-1]) + 1))
    return volume[box[0], box[1], box[2]]


def preprocess(array: np.ndarray, affine_ras: np.ndarray, spec: Preprocessing | None = None) -> torch.Tensor:
    """A CT volume in HU (any voxel order, with its RAS affine) → the encoder's input ``[1, 1, X, Y, Z]``."""
    spec = spec or Preprocessing()
    if array.ndim != 3:
        raise ValueError(f"a 3D volume is needed, got shape {array.shape}")
    ras = to_ras(np.asarray(array, dtype=np.float32), affine_ras)
    volume = crop_foreground(torch.from_numpy(ras), spec.crop_above_hu)
    volume = F.interpolate(volume[None, None], size=spec.size, mode=spec.resize_mode)[0, 0]
    low, high = spec.window_hu
    volume = ((volume - low) / (high - low)).clamp(0.0, 1.0)
    return volume[None, None].contiguous()
