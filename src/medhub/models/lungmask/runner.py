"""lungmask runner: right and left lung of a CT through lungmask's own ``LMInferer``, in memory.

Why this shape:

* lungmask downloads R231 with ``torch.hub`` from GitHub at run time, which fails offline and
  bypasses any checksum. The runner resolves the file through medhub's weights manager instead
  (cache, SHA-256, ``MEDHUB_WEIGHTS_MIRROR``; a missing file is a one-line error) and hands
  the local path to ``LMInferer(modelpath=...)``, so lungmask builds its own network with its
  own ``get_model`` and runs its own ``apply``: the result is lungmask's, not a re-implementation.
* The volume goes in as a SimpleITK image carrying the volume's LPS geometry. lungmask reorients
  it to LPS itself (the orientation R231 was trained in), and returns the mask in the image's
  own voxel order, which is ``Volume.array`` transposed (SimpleITK arrays are ``[z, y, x]``).

torch, SimpleITK and lungmask are imported in :meth:`Runner.load` only, so that listing models
never pays for them.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np

from medhub.data.prediction import Prediction
from medhub.data.volume import Volume
from medhub.errors import MedhubError, SeriesSkipped
from medhub.hub.card import ModelCard, load_card
from medhub.hub.catalog import require_module
from medhub.hub.weights import WeightFile, ensure_weights

MODEL_ID = "lungmask"
CARD_PATH = Path(__file__).resolve().with_name("card.yaml")
#: R231's output classes as lungmask documents them (README: "1 = Right lung, 2 = Left lung").
R231_SEGMENTS: dict[int, str] = {1: "RIGHT_LUNG", 2: "LEFT_LUNG"}
_VALUE_NAMES = {1: "right_lung_volume_ml", 2: "left_lung_volume_ml"}


def card() -> ModelCard:
    return load_card(CARD_PATH)


def weight_files() -> list[WeightFile]:
    """The card's weights as the weights manager wants them (one file: the R231 state dict)."""
    return [spec.weight_file() for spec in card().weights]


def volume_to_sitk(volume: Volume, sitk: Any) -> Any:
    """A SimpleITK image with the volume's voxels (``[z, y, x]`` array) and LPS geometry.

    SimpleITK's direction matrix has the unit direction of voxel axis ``j`` in column ``j``,
    exactly ``affine_lps[:3, :3]`` with the spacing divided out.
    """
    spacing = np.asarray(volume.spacing, dtype=float)
    if np.any(spacing <= 0):
        raise SeriesSkipped(f"lungmask needs a volume with a positive voxel size, got {tuple(spacing)}")
    image = sitk.GetImageFromArray(np.ascontiguousarray(np.transpose(volume.array, (2, 1, 0))))
    image.SetSpacing([float(s) for s in spacing])
    image.SetOrigin([float(v) for v in volume.affine_lps[:3, 3]])
    image.SetDirection([float(v) for v in (volume.affine_lps[:3, :3] / spacing[None, :]).ravel()])
    return image


class Runner:
    """Builds lungmask's ``LMInferer`` once in :meth:`load`; :meth:`predict` runs its ``apply`` per volume."""

    def __init__(self) -> None:
        self._inferer: Any = None
        self._sitk: Any = None
        self.weights_path: Path | None = None

    def load(self, device: str, params: dict[str, Any]) -> None:
        """Resolve R231 through the weights manager and build lungmask's inferer on ``device``.

        ``params``: ``batch_size`` (slices per forward pass, default 20), ``volume_postprocessing``
        (lungmask's connected-component clean-up, default true), ``threads`` (torch CPU threads).
        """
        if device not in ("cpu", "cuda", "mps"):
            raise MedhubError(f"model {MODEL_ID}: unknown device '{device}' (use cpu, cuda or mps)")
        torch = require_module("torch", MODEL_ID)
        self._sitk = require_module("SimpleITK", MODEL_ID, pip_name="SimpleITK")
        mask = require_module("lungmask.mask", MODEL_ID, pip_name="lungmask")
        threads = params.get("threads")
        if threads:
            torch.set_num_threads(max(1, int(threads)))
        (self.weights_path,) = ensure_weights(MODEL_ID, weight_files()).values()
        try:
            self._inferer = mask.LMInferer(
                modelname="R231",
                modelpath=os.fspath(self.weights_path),
                force_cpu=device == "cpu",
                batch_size=int(params.get("batch_size", 20)),
                volume_postprocessing=bool(params.get("volume_postprocessing", True)),
                tqdm_disable=True,
            )
        except (RuntimeError, KeyError, IndexError, TypeError) as exc:  # not an R231-shaped state dict
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise MedhubError(
                f"model {MODEL_ID}: {self.weights_path} is not a lungmask R231 state dict ({first})"
            ) from None

    def predict(self, volume: Volume, params: dict[str, Any]) -> Prediction:
        """Label map in the volume's voxel order: 1 = right lung, 2 = left lung; volumes in ml."""
        if self._inferer is None:
            raise MedhubError(f"model {MODEL_ID}: predict called before load")
        if volume.array.ndim != 3:
            raise SeriesSkipped(f"lungmask needs a 3D volume, got an array of shape {volume.array.shape}")
        image = volume_to_sitk(volume, self._sitk)
        mask_zyx = np.asarray(self._inferer.apply(image))
        labels = np.ascontiguousarray(np.transpose(mask_zyx, (2, 1, 0))).astype(np.uint8)
        if labels.shape != volume.array.shape:  # lungmask's contract; a shifted mask is worse than none
            raise MedhubError(f"model {MODEL_ID}: mask shape {labels.shape} differs from volume {volume.array.shape}")
        unknown = sorted(set(np.unique(labels).tolist()) - {0, *R231_SEGMENTS})
        if unknown:
            raise MedhubError(f"model {MODEL_ID}: the network produced labels {unknown}; R231 has only 1 and 2")

        voxel_ml = abs(float(np.linalg.det(volume.affine_lps[:3, :3]))) / 1000.0
        counts = np.bincount(labels.ravel(), minlength=3)
        return Prediction(
            labels=labels,
            segments=dict(R231_SEGMENTS),
            values={_VALUE_NAMES[v]: round(float(counts[v]) * voxel_ml, 3) for v in R231_SEGMENTS},
        )
