"""deepbet runner: brain mask of a T1-weighted MR volume, entirely in memory.

deepbet's ``BrainExtraction.run`` accepts a nibabel image, reorients it to the closest
canonical (RAS) orientation itself and returns the mask reoriented back to the image's own
voxel order, so the mask lines up with ``Volume.array`` voxel for voxel: no temporary files,
no resampling. torch and deepbet are imported in :meth:`Runner.load` only, so that listing
models never pays for them.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from medhub.data.prediction import Prediction
from medhub.data.volume import Volume
from medhub.errors import MedhubError, SeriesSkipped
from medhub.hub.catalog import require_module
from medhub.hub.runner import available_cpus, brain_mask_prediction

MODEL_ID = "deepbet"


class Runner:
    """Builds ``deepbet.BrainExtraction`` once in :meth:`load`; :meth:`predict` runs it per volume."""

    def __init__(self) -> None:
        self._bet: Any = None
        self._nib: Any = None

    def load(self, device: str, params: dict[str, Any]) -> None:
        """Load both TorchScript networks onto ``device`` (``cpu``, ``cuda`` or ``mps``).

        ``params["threads"]`` caps torch's CPU threads; by default torch uses the CPUs this
        process may run on (not the machine's total, which over-subscribes in containers).
        """
        torch = require_module("torch", MODEL_ID, extra="deepbet")
        deepbet = require_module("deepbet", MODEL_ID, extra="deepbet")
        self._nib = require_module("nibabel", MODEL_ID)
        threads = int(params.get("threads") or available_cpus())
        torch.set_num_threads(max(1, threads))
        if device not in ("cpu", "cuda", "mps"):
            raise MedhubError(f"model {MODEL_ID}: unknown device '{device}' (use cpu, cuda or mps)")
        self._bet = deepbet.BrainExtraction(no_gpu=device == "cpu")

    def predict(self, volume: Volume, params: dict[str, Any]) -> Prediction:
        """Brain mask (label 1 = BRAIN) in the volume's voxel order, plus its volume in ml.

        ``threshold`` (0..1, default 0.5) is the probability above which a voxel is brain;
        ``n_dilate`` adds (>0) or removes (<0) voxel layers after deepbet's post-processing.
        """
        if self._bet is None:
            raise MedhubError(f"model {MODEL_ID}: predict called before load")
        if volume.array.ndim != 3:
            raise SeriesSkipped(f"deepbet needs a 3D volume, got an array of shape {volume.array.shape}")
        threshold = float(params.get("threshold", 0.5))
        n_dilate = int(params.get("n_dilate", 0))
        if not 0.0 < threshold < 1.0:
            raise MedhubError(f"model {MODEL_ID}: threshold must lie between 0 and 1, got {threshold}")

        data = np.asarray(volume.array, dtype=np.float32)
        image = self._nib.Nifti1Image(data, volume.affine_ras)
        try:
            _, mask_image, _ = self._bet.run(image, threshold=threshold, n_dilate=n_dilate)
        except AssertionError as exc:  # deepbet asserts when its bounding-box network finds no head
            raise SeriesSkipped(f"deepbet found no brain in this series ({exc})") from None
        mask = np.asarray(mask_image.dataobj).astype(bool)
        return brain_mask_prediction(mask, volume, MODEL_ID)
