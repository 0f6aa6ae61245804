"""ct-body: body, left/right lung and bone of a CT from Hounsfield-unit thresholds.

Not a trained network: a deterministic reference model that needs no weights, so the whole
hub (select, load, predict, SEG/RTSTRUCT) can be exercised on any CT. Every size threshold is
in millilitres and converted with the voxel size, so the result does not depend on the
resolution. In-plane operations work slice by slice along ``z`` (the acquisition's slice
axis), where a truncated scan still encloses the lungs.

Labels: 1 BODY, 2 LEFT_LUNG, 3 RIGHT_LUNG, 4 BONE, and 5 LUNG when the two lungs form one
component that cannot be split. The map is exclusive: lungs and bone override body.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np
from scipy import ndimage as ndi

import medhub

BODY, LEFT_LUNG, RIGHT_LUNG, BONE, LUNG = 1, 2, 3, 4, 5
SEGMENTS = {BODY: "BODY", LEFT_LUNG: "LEFT_LUNG", RIGHT_LUNG: "RIGHT_LUNG", BONE: "BONE", LUNG: "LUNG"}

_IN_PLANE = np.zeros((3, 3, 3), dtype=bool)
_IN_PLANE[:, :, 1] = ndi.generate_binary_structure(2, 1)  # 4-connectivity within one z slice


def _sizes(labels: np.ndarray, count: int) -> np.ndarray:
    """Voxel count of each label 0..count (ndimage's histogram: ~20x faster than bincount on int32)."""
    return ndi.histogram(labels, 0, count, count + 1).astype(np.int64)


def _largest_component(mask: np.ndarray) -> np.ndarray:
    labels, count = ndi.label(mask)
    if count == 0:
        return mask
    sizes = _sizes(labels, count)
    sizes[0] = 0
    return labels == int(sizes.argmax())


def fill_holes_in_plane(mask: np.ndarray) -> np.ndarray:
    """Fill every region of each z slice that the mask encloses (one labelling pass, no iteration).

    Slice-wise filling also closes lungs that a truncated scan leaves open at its first or
    last slice, which a 3D fill would not.
    """
    background, count = ndi.label(~mask, structure=_IN_PLANE)
    edge = np.concatenate(
        [background[0].ravel(), background[-1].ravel(), background[:, 0].ravel(), background[:, -1].ravel()]
    )
    outside = np.zeros(count + 1, dtype=bool)
    outside[edge] = True
    outside[0] = True  # label 0 = the mask itself
    return mask | ~outside[background]


def body_mask(hu: np.ndarray, spacing: tuple[float, float, float], body_hu: float, detach_mm: float) -> np.ndarray:
    """Largest connected region above ``body_hu``, detached from the table, holes filled."""
    raw = hu > body_hu
    steps = max(0, int(round(detach_mm / max(min(spacing[0], spacing[1]), 1e-3))))
    if steps:
        core = _largest_component(ndi.binary_erosion(raw, _IN_PLANE, iterations=steps))
        body = ndi.binary_dilation(core, _IN_PLANE, iterations=steps) & raw
    else:
        body = _largest_component(raw)
    return fill_holes_in_plane(body)


def _split_joined(component: np.ndarray, min_voxels: int, max_steps: int = 8) -> list[np.ndarray] | None:
    """Erode a component until it falls into two large parts; give every voxel to the nearer part."""
    box = ndi.find_objects(component.astype(np.uint8))[0]
    sub = component[box]
    eroded = sub
    for _ in range(max_steps):
        eroded = ndi.binary_erosion(eroded)
        labels, count = ndi.label(eroded)
        if count < 2:
            if count == 0:
                return None
            continue
        sizes = _sizes(labels, count)
        sizes[0] = 0
        first, second = np.argsort(sizes)[::-1][:2]
        if sizes[second] < min_voxels // 8:
            continue
        seeds = np.where(labels == first, 1, np.where(labels == second, 2, 0))
        _, nearest = ndi.distance_transform_edt(seeds == 0, return_indices=True)
        owner = seeds[tuple(nearest)]
        parts = []
        for value in (1, 2):
            part = np.zeros_like(component)
            part[box] = sub & (owner == value)
            parts.append(part)
        return parts
    return None


def lung_masks(
    hu: np.ndarray, body: np.ndarray, affine_lps: np.ndarray, p: dict[str, float]
) -> tuple[np.ndarray | None, np.ndarray | None, np.ndarray | None]:
    """(left, right, undivided) lung masks; each is None when absent."""
    voxel_ml = abs(float(np.linalg.det(affine_lps[:3, :3]))) / 1000.0
    min_voxels = max(1, int(p["min_lung_ml"] / voxel_ml))
    air = (hu < p["air_hu"]) & body
    labels, count = ndi.label(air)
    if count == 0:
        return None, None, None
    sizes = _sizes(labels, count)
    big = [i for i in np.flatnonzero(sizes >= min_voxels) if i != 0]
    medians = ndi.median(hu, labels, big) if big else []
    lungs = [i for i, med in zip(big, np.atleast_1d(medians), strict=True) if med > p["gas_median_hu"]]
    if not lungs:
        return None, None, None

    # Patient left is +x in LPS; the body's centre of mass gives the midline.
    x_axis_lps = affine_lps[0, :3]

    def lps_x(index_centroid: np.ndarray) -> float:
        return float(x_axis_lps @ index_centroid + affine_lps[0, 3])

    midline = lps_x(np.array(ndi.center_of_mass(body)))
    left = np.zeros(hu.shape, dtype=bool)
    right = np.zeros(hu.shape, dtype=bool)
    joined = np.zeros(hu.shape, dtype=bool)
    for label in lungs:
        component = labels == label
        coords = np.argwhere(component)
        x_mm = coords @ x_axis_lps + affine_lps[0, 3]
        left_share = float(np.mean(x_mm > midline))
        if 0.2 < left_share < 0.8:  # both lungs in one component (joined at the airways or mediastinum)
            parts = _split_joined(component, min_voxels)
            if parts is None:
                joined |= component
                continue
            for part in parts:
                side = left if lps_x(np.array(ndi.center_of_mass(part))) > midline else right
                side |= part
        elif left_share >= 0.8:
            left |= component
        else:
            right |= component

    def finish(mask: np.ndarray) -> np.ndarray | None:
        return fill_holes_in_plane(mask) & body if mask.any() else None  # vessels inside the lung are lung

    return finish(left), finish(right), finish(joined)


def bone_mask(hu: np.ndarray, body: np.ndarray, voxel_ml: float, bone_hu: float, min_bone_ml: float) -> np.ndarray:
    """Voxels above ``bone_hu`` inside the body, without components smaller than ``min_bone_ml``."""
    bone = (hu > bone_hu) & body
    labels, count = ndi.label(bone, structure=ndi.generate_binary_structure(3, 3))
    if count == 0:
        return bone
    sizes = _sizes(labels, count)
    keep = sizes * voxel_ml >= min_bone_ml
    keep[0] = False
    return keep[labels]


class Runner(medhub.Runner):
    """No weights, nothing to load: all the work is in ``predict``."""

    def predict(self, volume: medhub.Volume, params: Mapping[str, Any]) -> medhub.Prediction:
        """Exclusive label map (body, lungs, bone) and their volumes in ml (the body's includes lungs and bone)."""
        p = {name: float(value) for name, value in params.items()}  # every threshold, as the card declares it
        hu = np.asarray(volume.array)
        voxel_ml = volume.voxel_volume_ml

        body = body_mask(hu, volume.spacing, p["body_hu"], p["detach_mm"])
        if not body.any():
            raise medhub.SeriesSkipped(f"ct-body found no body: no voxel above {p['body_hu']:g} HU "
                                       "(is this a CT in HU?)")
        left, right, joined = lung_masks(hu, body, volume.affine_lps, p)
        bone = bone_mask(hu, body, voxel_ml, p["bone_hu"], p["min_bone_ml"])

        labels = body.astype(np.uint8)  # BODY == 1
        for value, mask in ((LUNG, joined), (LEFT_LUNG, left), (RIGHT_LUNG, right), (BONE, bone)):
            if mask is not None:
                labels[mask] = value

        def ml(mask: np.ndarray | None) -> float:
            return round(float(mask.sum()) * voxel_ml, 3) if mask is not None else 0.0

        present = set(np.unique(labels).tolist()) - {0}
        values = {
            "body_volume_ml": ml(body),
            "left_lung_volume_ml": ml(left),
            "right_lung_volume_ml": ml(right),
            "lung_volume_ml": ml(left) + ml(right) + ml(joined),
            "bone_volume_ml": ml(bone),
        }
        return medhub.Prediction(labels=labels, segments={v: name for v, name in SEGMENTS.items() if v in present},
                                 values=values)
