"""What the three brainchop MeshNet models share: brainchop's pre- and post-processing, and the runner.

brainchop 0.2.5 (``brainchop.api.load`` / ``segment``) runs a T1 volume through:

1. ``niimath IN -conform``: intensities scaled to 0..255 by a robust range (0 .. the value
   below which 98 % of the non-zero voxels lie, from a 1000-bin histogram), then resliced
   with trilinear interpolation onto a 256^3 grid of 1 mm voxels in FreeSurfer's LIA
   orientation centred on the input's centre, and stored as uint8 (rounded);
2. quantile normalisation: ``(v - q02) / (q98 - q02 + 1e-3)`` clipped to 0..1;
3. MeshNet and argmax over classes;
4. ``niimath -bwlabel 26``: only the largest 26-connected component of the non-zero labels
   is kept (each other voxel becomes background).

This module reproduces steps 1, 2 and 4 in numpy/scipy, with niimath's float32 arithmetic
(``src/conform.c``: float matrices, the same operation order). niimath is built with
``-ffast-math``, so its last float bits can differ: on resampled test volumes 1 voxel in
10^6 lands on the other side of a rounding edge (off by one grey level); a volume already
on the conformed grid comes out bit-identical. Step 3 is :mod:`medhub.models.nets.meshnet`. The
label map then goes back onto the volume's own grid with nearest-neighbour interpolation,
as ``brainchop --inverse-conform`` does with ``niimath -reslice_nn``. Nothing is written
to disk and neither niimath nor tinygrad is needed.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path, PurePosixPath
from typing import Any

import numpy as np

import medhub

CONFORM_SIZE = 256
#: FreeSurfer's conformed orientation (LIA): voxel axes → RAS directions (niimath's ``Mdc``).
LIA_DIRECTIONS = np.array([[-1, 0, 0], [0, 0, 1], [0, -1, 0]], dtype=np.float32)
_F = np.float32


# --------------------------------------------------------------------------- 1. conform


def robust_scale(data: np.ndarray, f_high: float = 0.98) -> np.ndarray:
    """Intensities to 0..255 as niimath's ``getscale`` + ``scalecrop`` (float32 throughout).

    The upper limit is the lower edge of the histogram bin (1000 bins between min and max)
    where the cumulative count reaches ``voxels - (1 - f_high) * non-zero voxels``.
    """
    img = np.asarray(data, dtype=_F)
    flat = img.ravel()
    src_min, src_max = _F(flat.min()), _F(flat.max())
    nonzero = int(np.count_nonzero(np.abs(flat) >= 1e-15))
    bin_size = _F((src_max - src_min) / _F(1000))
    if bin_size > 0:
        bins = np.minimum(((flat - src_min) / bin_size).astype(np.int64), 999)
        cumulative = np.cumsum(np.bincount(bins, minlength=1000))
    else:
        cumulative = np.full(1000, flat.size)
    nth = flat.size - int((1.0 - float(_F(f_high))) * nonzero)
    above = np.nonzero(cumulative[1:] >= nth)[0]
    idx = int(above[0]) if above.size else 999
    upper = _F(_F(idx) * bin_size + src_min)
    scale = _F(255) / _F(upper - src_min) if upper != src_min else _F(1)
    return np.clip(_F(0) + scale * (img - src_min), _F(0), _F(255)).astype(_F)


def _mul44(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """4x4 product in float32 with nifti's summation order (k = 0..3)."""
    out = np.zeros((4, 4), dtype=_F)
    for i in range(4):
        for j in range(4):
            acc = _F(0)
            for k in range(4):
                acc = _F(acc + _F(a[i, k] * b[k, j]))
            out[i, j] = acc
    return out


def _inv44(m: np.ndarray) -> np.ndarray:
    """nifti's ``nifti_mat44_inverse``: computed in double, returned as float."""
    return np.linalg.inv(m.astype(np.float64)).astype(_F)


def _apply44(m: np.ndarray, v: np.ndarray) -> np.ndarray:
    """``nifti_vect44mat44_mul``: ``m @ (v, 1)`` in float32, left to right."""
    out = np.zeros(4, dtype=_F)
    vec = np.array([v[0], v[1], v[2], 1.0], dtype=_F)
    for i in range(4):
        acc = _F(0)
        for j in range(4):
            acc = _F(acc + _F(vec[j] * m[i, j]))
        out[i] = acc
    return out


def conformed_affine(shape: tuple[int, ...], affine_ras: np.ndarray) -> np.ndarray:
    """The RAS affine of the 256^3 1 mm LIA grid niimath centres on the input (float32)."""
    affine = np.asarray(affine_ras, dtype=_F)
    centre = _apply44(affine, np.array(shape[:3], dtype=_F) / _F(2))
    out = np.eye(4, dtype=_F)
    out[:3, :3] = LIA_DIRECTIONS
    vol_centre = _F(0.5) * _apply44(out, np.full(3, CONFORM_SIZE, dtype=_F))
    out[:3, 3] = (centre - vol_centre)[:3]
    return out


def _index_map(src_affine: np.ndarray, dst_affine: np.ndarray) -> np.ndarray:
    """``inv(inv(dst) @ src)``: destination voxel → source voxel, as niimath computes it (float32)."""
    vox2vox = _mul44(_inv44(dst_affine), src_affine)
    return _inv44(vox2vox)


def _source_coords(m: np.ndarray, shape: tuple[int, int, int], z: int) -> tuple[np.ndarray, ...]:
    """Source voxel coordinates of destination plane ``z`` (arrays ``[x, y]``), float32 like niimath."""
    nx, ny = shape[0], shape[1]
    x = np.arange(nx, dtype=_F)[:, None]
    y = np.arange(ny, dtype=_F)[None, :]
    zf = _F(z)
    coords = []
    for r in range(3):
        yz = (y * m[r, 1] + zf * m[r, 2]) + m[r, 3]  # niimath hoists y/z per row
        coords.append((x * m[r, 0] + yz).astype(_F))
    return tuple(coords)


def reslice_linear(img: np.ndarray, index_map: np.ndarray, out_shape: tuple[int, int, int], fill: float) -> np.ndarray:
    """Trilinear reslice of ``img[x, y, z]`` (niimath ``doReslice``, linear): outside → ``fill``."""
    img = np.asarray(img, dtype=_F)
    dims = img.shape
    out = np.full(out_shape, fill, dtype=_F)
    for z in range(out_shape[2]):
        ix, iy, iz = _source_coords(index_map, out_shape, z)
        fx, fy, fz = np.floor(ix).astype(np.int64), np.floor(iy).astype(np.int64), np.floor(iz).astype(np.int64)
        ok = (fx >= 0) & (fy >= 0) & (fz >= 0) & (fx + 1 < dims[0]) & (fy + 1 < dims[1]) & (fz + 1 < dims[2])
        if not ok.any():
            continue
        fx, fy, fz = fx[ok], fy[ok], fz[ok]
        dx, dy, dz = ix[ok] - fx.astype(_F), iy[ok] - fy.astype(_F), iz[ok] - fz.astype(_F)
        wx0, wy0, wz0 = _F(1) - dx, _F(1) - dy, _F(1) - dz
        v = np.zeros(fx.shape, dtype=_F)
        # niimath's exact summation order: (0,0,0) (0,0,1) (0,1,0) (0,1,1) (1,0,0) (1,0,1) (1,1,0) (1,1,1)
        for ox, oy, oz in ((0, 0, 0), (0, 0, 1), (0, 1, 0), (0, 1, 1), (1, 0, 0), (1, 0, 1), (1, 1, 0), (1, 1, 1)):
            wx = dx if ox else wx0
            wy = dy if oy else wy0
            wz = dz if oz else wz0
            v = v + ((img[fx + ox, fy + oy, fz + oz] * wx) * wy) * wz
        plane = out[:, :, z]
        plane[ok] = v
    return out


def reslice_nearest(labels: np.ndarray, index_map: np.ndarray, out_shape: tuple[int, int, int]) -> np.ndarray:
    """Nearest-neighbour reslice (niimath ``doReslice``, ``roundf``: halves away from zero); outside → 0."""
    dims = labels.shape
    out = np.zeros(out_shape, dtype=labels.dtype)
    for z in range(out_shape[2]):
        coords = _source_coords(index_map, out_shape, z)
        ix, iy, iz = (np.trunc(c + np.copysign(_F(0.5), c)).astype(np.int64) for c in coords)
        ok = (ix >= 0) & (iy >= 0) & (iz >= 0) & (ix < dims[0]) & (iy < dims[1]) & (iz < dims[2])
        plane = out[:, :, z]
        plane[ok] = labels[ix[ok], iy[ok], iz[ok]]
    return out


def conform(data: np.ndarray, affine_ras: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``niimath IN -conform -odt char``: the uint8 256^3 volume ``[x, y, z]`` and its RAS affine."""
    scaled = robust_scale(data)
    out_affine = conformed_affine(data.shape, affine_ras)
    index_map = _index_map(np.asarray(affine_ras, dtype=_F), out_affine)
    resliced = reslice_linear(scaled, index_map, (CONFORM_SIZE,) * 3, fill=float(scaled.min()))
    return np.clip(np.floor(resliced + _F(0.5)), 0, 255).astype(np.uint8), out_affine  # niimath rounds halves up


def labels_to_grid(
    labels: np.ndarray, labels_affine: np.ndarray, shape: tuple[int, int, int], affine_ras: np.ndarray
) -> np.ndarray:
    """The conformed label map on the volume's own grid (``niimath - -reslice_nn SOURCE``)."""
    index_map = _index_map(np.asarray(labels_affine, dtype=_F), np.asarray(affine_ras, dtype=_F))
    return reslice_nearest(labels, index_map, shape)


# --------------------------------------------------------------------------- 2. normalise, 4. post-process


def quantile_normalise(conformed: np.ndarray, qmin: float = 0.02, qmax: float = 0.98, eps: float = 1e-3) -> np.ndarray:
    """brainchop's ``qnormalize`` on the conformed volume (float32, numpy's linear quantiles)."""
    img = np.asarray(conformed, dtype=np.float32)
    low = np.quantile(img, qmin)
    high = np.quantile(img, qmax)
    return np.clip((img - low) / (high - low + eps), 0, 1).astype(np.float32)


def keep_largest_component(labels: np.ndarray) -> np.ndarray:
    """Zero every non-zero voxel outside the largest 26-connected component of all non-zero voxels."""
    from scipy import ndimage

    components, count = ndimage.label(labels > 0, structure=np.ones((3, 3, 3), dtype=bool))
    if count <= 1:
        return labels
    sizes = np.bincount(components.ravel())
    largest = int(np.argmax(sizes[1:])) + 1
    out = labels.copy()
    out[components != largest] = 0
    return out


# --------------------------------------------------------------------------- labels and names


def freesurfer_to_segment_id(name: str) -> str:
    """A FreeSurfer-style label name → its segment database ID (``Left-Thalamus`` → ``LEFT_THALAMUS``).

    brainchop's names follow FreeSurferColorLUT.txt; the few that do not spell the ID
    directly are mapped here (``3rd-Ventricle`` → ``THIRD_VENTRICLE``).
    """
    special = {
        "3rd-ventricle": "THIRD_VENTRICLE",
        "4th-ventricle": "FOURTH_VENTRICLE",
        "brain-stem": "BRAINSTEM",
        "accumbens-area": "ACCUMBENS",
        "ventraldc": "VENTRAL_DC",
        "inf-lat-vent": "INFERIOR_LATERAL_VENTRICLE",
    }
    key = name.strip().lower()
    for side in ("left-", "right-"):
        if key.startswith(side) and key[len(side):] in special:
            return side.upper().rstrip("-") + "_" + special[key[len(side):]]
    if key in special:
        return special[key]
    return key.replace("-", "_").replace(" ", "_").upper()


def colormap_segments(path: Path) -> dict[int, str]:
    """``colormap.json`` label names → ``{label value: segment ID}`` (index 0, the background, left out)."""
    try:
        names = json.loads(Path(path).read_text(encoding="utf-8"))["labels"]
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise medhub.MedhubError(f"{path}: not a brainchop colormap.json with a 'labels' list ({exc})") from None
    return {i: freesurfer_to_segment_id(str(name)) for i, name in enumerate(names) if i > 0}


# --------------------------------------------------------------------------- the runner


class BrainchopRunner(medhub.Runner):
    """Runner of one brainchop MeshNet model, configured entirely by its card.

    The card's weights are one folder of brainchop-models (``model5_gw_ae/model.json``,
    ``model5_gw_ae/model.pth`` and, when brainchop names the classes there, ``colormap.json``,
    whose names the card's segments must match); the hub fetches and verifies them.
    ``predict`` runs brainchop's pipeline on the volume and returns labels on the volume's grid.
    Workflow parameter: ``largest_component`` (brainchop's post-processing, default true).
    """

    def load(self, context: medhub.RunnerContext) -> None:
        """Build MeshNet from ``model.json`` and load ``model.pth`` onto the device."""
        medhub.require_module("safetensors", context.model_id)
        medhub.require_module("scipy", context.model_id)
        import torch

        from medhub.models.nets.meshnet import load_meshnet

        (folder,) = {PurePosixPath(name).parent for name in context.weights}
        net = load_meshnet(context.weights[f"{folder}/model.json"], context.weights[f"{folder}/model.pth"])
        declared = context.card.outputs.segments
        if net.spec.n_classes != len(declared) + 1:
            raise medhub.MedhubError(f"model {context.model_id}: the network has {net.spec.n_classes} classes, "
                                     f"the card declares {len(declared)} segments plus background")
        if f"{folder}/colormap.json" in context.weights:
            named = colormap_segments(context.weights[f"{folder}/colormap.json"])
            if named != declared:
                diff = sorted(set(named.items()) ^ set(declared.items()))[:3]
                raise medhub.MedhubError(f"model {context.model_id}: card segments differ from colormap.json: {diff}")
        self._net = net.to(context.device)
        self._torch = torch

    def predict(self, volume: medhub.Volume, params: Mapping[str, Any]) -> np.ndarray:
        """brainchop's segmentation of ``volume``, on the volume's grid (label values as the card's segments)."""
        labels_conformed, conformed_affine_ras = self.segment_conformed(volume, params)
        return labels_to_grid(labels_conformed, conformed_affine_ras, volume.array.shape, volume.affine_ras)

    def segment_conformed(self, volume: medhub.Volume, params: Mapping[str, Any]) -> tuple[np.ndarray, np.ndarray]:
        """Labels on brainchop's conformed 256^3 grid ``[x, y, z]`` (uint8) and that grid's RAS affine."""
        conformed, affine = conform(np.asarray(volume.array), volume.affine_ras)
        labels = self.run_network(quantile_normalise(conformed))
        if bool(params["largest_component"]):
            labels = keep_largest_component(labels)
        return labels, affine

    def run_network(self, image: np.ndarray) -> np.ndarray:
        """MeshNet + argmax on a normalised volume ``[x, y, z]`` (any size: the network is convolutional)."""
        torch = self._torch
        with torch.inference_mode():
            tensor = torch.from_numpy(np.ascontiguousarray(image, dtype=np.float32))[None, None].to(self.context.device)
            labels = self._net.segment(tensor)[0]
        return labels.to("cpu").numpy().astype(np.uint8)
