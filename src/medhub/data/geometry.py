"""Pure geometry of DICOM image planes: sorting, spacing analysis, tilt, affines, resampling.

Everything here works on plain numpy arrays (positions, orientations, pixel planes) so it can
be tested without DICOM files. Conventions are those of :mod:`medhub.data.volume`: arrays are
``[x=column, y=row, z=slice]`` and affines map voxel indices to LPS millimetres.

A plane is described by its ImagePositionPatient ``p`` (first voxel, LPS mm), the row and
column direction cosines ``r`` and ``c`` (ImageOrientationPatient), and the slice normal
``n = r x c``. The "frame" of a series is the orthonormal basis ``(r, c, n)``: slices along
``n``, in-plane offsets along ``r`` and ``c``. Gantry tilt shows up as in-plane offsets between
planes; uneven spacing as irregular steps along ``n``.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
from nibabel.orientations import apply_orientation, inv_ornt_aff, io_orientation, ornt_transform

from medhub.data.volume import Volume
from medhub.errors import MedhubError

# A whole series may be off a regular grid by at most this fraction of a voxel before we resample.
REGULARITY_TOLERANCE = 0.05
# Positions closer than this (mm) are "the same position" (duplicates or 4D).
SAME_POSITION_MM = 0.01
LPS_AXES = np.array([[0, 1], [1, 1], [2, 1]])  # array axis i → world axis i, positive direction


def slice_normal(orientation: np.ndarray) -> np.ndarray:
    """Unit normal ``r x c`` of ImageOrientationPatient (6,): the direction slices stack along."""
    orientation = np.asarray(orientation, dtype=float)
    normal = np.cross(orientation[:3], orientation[3:6])
    norm = np.linalg.norm(normal)
    if norm < 1e-6:
        raise MedhubError(f"ImageOrientationPatient {orientation.tolist()} has parallel row and column vectors")
    return normal / norm


def orthonormality_error(orientation: np.ndarray) -> float:
    """How far ImageOrientationPatient (6,) is from two perpendicular unit vectors.

    The largest of |len(r) - 1|, |len(c) - 1| and |r . c|: 0 for exact cosines, ~1e-6 for the
    float noise of real headers; dciodvfy refuses objects whose error exceeds about 1e-4.
    """
    orientation = np.asarray(orientation, dtype=float)
    row, column = orientation[:3], orientation[3:6]
    return float(max(abs(np.linalg.norm(row) - 1), abs(np.linalg.norm(column) - 1), abs(row @ column)))


def orthonormalise(orientation: np.ndarray) -> np.ndarray:
    """The nearest pair of perpendicular unit vectors (6,): the row is kept in direction, the column
    loses its component along the row (Gram-Schmidt). Only meant for cosines already close."""
    orientation = np.asarray(orientation, dtype=float)
    row = orientation[:3] / np.linalg.norm(orientation[:3])
    column = orientation[3:6] - (orientation[3:6] @ row) * row
    return np.concatenate([row, column / np.linalg.norm(column)])


def positions_along(positions: np.ndarray, direction: np.ndarray) -> np.ndarray:
    """Projection of each position (n, 3) on a direction (3,): the slice location along the normal."""
    return np.asarray(positions, dtype=float).reshape(-1, 3) @ np.asarray(direction, dtype=float)


def sort_by_position(positions: np.ndarray, normal: np.ndarray) -> np.ndarray:
    """Indices that order planes by increasing position along the normal (stable for equal ones)."""
    return np.argsort(positions_along(positions, normal), kind="stable")


def in_plane_offsets(positions: np.ndarray, orientation: np.ndarray) -> np.ndarray:
    """Offsets (n, 2) in mm of each plane origin along ``r`` and ``c`` relative to the first plane.

    Zero for a regular orthogonal stack; growing linearly with a gantry tilt.
    """
    positions = np.asarray(positions, dtype=float).reshape(-1, 3)
    orientation = np.asarray(orientation, dtype=float)
    delta = positions - positions[0]
    return np.stack([delta @ orientation[:3], delta @ orientation[3:6]], axis=1)


def tilt_angle(positions: np.ndarray, orientation: np.ndarray) -> float:
    """Angle in degrees between the line through the first and last plane origins and the normal.

    This is the gantry tilt as seen in the geometry (GantryDetectorTilt is often absent or 0).
    """
    positions = np.asarray(positions, dtype=float).reshape(-1, 3)
    step = positions[-1] - positions[0]
    length = float(np.linalg.norm(step))
    if length == 0:
        return 0.0
    cosine = abs(float(step @ slice_normal(orientation))) / length
    return float(np.degrees(np.arccos(min(1.0, cosine))))


def is_tilted(positions: np.ndarray, orientation: np.ndarray, pixel_spacing: tuple[float, float]) -> bool:
    """True when some plane origin lies off the normal through the first by more than a fraction of a pixel."""
    offsets = np.abs(in_plane_offsets(positions, orientation))
    limit = REGULARITY_TOLERANCE * np.array([pixel_spacing[1], pixel_spacing[0]])
    return bool((offsets > limit).any())


@dataclass
class SpacingAnalysis:
    """How slice locations along the normal are spaced.

    ``step`` is the regular step when ``regular``; ``dominant`` the median gap; ``missing``
    lists ``(index, gap)`` for gaps that are a whole multiple (k >= 2) of the dominant gap;
    ``uneven`` says that some gap is not a whole multiple of it.
    """

    locations: np.ndarray
    gaps: np.ndarray
    dominant: float
    regular: bool
    step: float
    missing: list[tuple[int, float]] = field(default_factory=list)
    uneven: bool = False

    @property
    def min_gap(self) -> float:
        return float(self.gaps.min())

    @property
    def max_gap(self) -> float:
        return float(self.gaps.max())


def analyse_spacing(locations: np.ndarray) -> SpacingAnalysis:
    """Classify sorted, distinct slice locations as regular, missing slices, or uneven.

    A gap of k >= 2 times the dominant gap is a missing slice when it stands alone; a run of
    such gaps is a protocol's spacing change (head CT: 2.5 mm then 5 mm) and counts as uneven.

    Regular means every location lies within ``REGULARITY_TOLERANCE`` of a step from a straight
    line through the first and last location, so a single affine describes the stack exactly
    enough (float noise in real headers is ~0.001 mm).
    """
    locations = np.asarray(locations, dtype=float)
    if locations.size < 2:
        raise ValueError("spacing needs at least two slice locations")
    gaps = np.diff(locations)
    dominant = float(np.median(gaps))
    step = float((locations[-1] - locations[0]) / (locations.size - 1))
    ideal = locations[0] + step * np.arange(locations.size)
    tolerance = REGULARITY_TOLERANCE * step + 1e-4
    regular = bool(np.abs(locations - ideal).max() <= tolerance) and bool(
        np.abs(gaps - dominant).max() <= REGULARITY_TOLERANCE * dominant + 1e-4
    )
    analysis = SpacingAnalysis(locations=locations, gaps=gaps, dominant=dominant, regular=regular, step=step)
    if regular:
        return analysis
    tolerance = REGULARITY_TOLERANCE * dominant + 1e-4
    for index, gap in enumerate(gaps):
        multiple = round(gap / dominant)
        whole = abs(gap - multiple * dominant) <= tolerance
        neighbours = gaps[max(0, index - 1) : index + 2]
        in_run = int((np.abs(neighbours - gap) <= tolerance).sum()) > 1
        if whole and multiple >= 2 and not in_run:
            analysis.missing.append((index, float(gap)))
        elif not whole or multiple >= 2:
            analysis.uneven = True  # a spacing change (runs of 2.5 then 5 mm in head CT), not a lost slice
    if analysis.uneven:
        analysis.missing = []  # resampling an uneven stack interpolates across every gap anyway
    return analysis


def affine_from_planes(
    orientation: np.ndarray, pixel_spacing: tuple[float, float], origin: np.ndarray, slice_step: np.ndarray
) -> np.ndarray:
    """The 4x4 voxel -> LPS affine for array order ``[column, row, slice]``.

    ``pixel_spacing`` is DICOM's (row spacing, column spacing): x (columns) advance along ``r``
    by the column spacing, y (rows) along ``c`` by the row spacing; ``slice_step`` is the vector
    from one slice origin to the next.
    """
    orientation = np.asarray(orientation, dtype=float)
    affine = np.eye(4)
    affine[:3, 0] = orientation[:3] * float(pixel_spacing[1])
    affine[:3, 1] = orientation[3:6] * float(pixel_spacing[0])
    affine[:3, 2] = np.asarray(slice_step, dtype=float)
    affine[:3, 3] = np.asarray(origin, dtype=float)
    return affine


@dataclass
class RegularGrid:
    """An orthogonal grid aligned with the source orientation that covers every source plane."""

    affine: np.ndarray
    shape: tuple[int, int, int]
    plane_shift: np.ndarray  # (n_planes, 2): where target (0, 0) falls in each source plane, in pixels
    locations: np.ndarray  # (n_target,): target slice locations along the normal


def regular_grid(
    positions: np.ndarray,
    orientation: np.ndarray,
    pixel_spacing: tuple[float, float],
    rows: int,
    columns: int,
    step: float,
) -> RegularGrid:
    """The grid to resample sorted, tilted and/or unevenly spaced planes onto.

    In-plane it spans the union of all plane footprints (nothing cut off by a tilt); along the
    normal it runs from the first to the last location with about ``step`` mm (adjusted so the
    end points are kept exactly).
    """
    positions = np.asarray(positions, dtype=float).reshape(-1, 3)
    orientation = np.asarray(orientation, dtype=float)
    r, c, n = orientation[:3], orientation[3:6], slice_normal(orientation)
    dx, dy = float(pixel_spacing[1]), float(pixel_spacing[0])
    u, v, s = positions @ r, positions @ c, positions @ n
    u0, v0 = u.min(), v.min()
    nx = int(round((u.max() - u0) / dx)) + columns
    ny = int(round((v.max() - v0) / dy)) + rows
    count = max(2, int(round((s[-1] - s[0]) / step)) + 1)
    locations = np.linspace(s[0], s[-1], count)
    z_step = (s[-1] - s[0]) / (count - 1)
    origin = u0 * r + v0 * c + s[0] * n
    affine = affine_from_planes(orientation, pixel_spacing, origin, n * z_step)
    shift = np.stack([(u0 - u) / dx, (v0 - v) / dy], axis=1)
    return RegularGrid(affine=affine, shape=(nx, ny, count), plane_shift=shift, locations=locations)


def window(plane: np.ndarray, offset: tuple[int, int], shape: tuple[int, int], fill: float) -> np.ndarray:
    """``plane[ox : ox + shape[0], oy : oy + shape[1]]``, with ``fill`` wherever that leaves the plane."""
    out = np.full(shape, fill, dtype=plane.dtype)
    ox, oy = offset
    x0, y0 = max(0, ox), max(0, oy)
    x1, y1 = min(plane.shape[0], ox + shape[0]), min(plane.shape[1], oy + shape[1])
    if x1 > x0 and y1 > y0:
        out[x0 - ox : x1 - ox, y0 - oy : y1 - oy] = plane[x0:x1, y0:y1]
    return out


def shift_plane(plane: np.ndarray, shift: np.ndarray, shape: tuple[int, int], fill: float) -> np.ndarray:
    """Bilinear ``out[i, j] = plane[i + shift[0], j + shift[1]]`` (float32), ``fill`` outside.

    A gantry tilt only translates each plane within its own orientation, so four shifted
    windows do what a general interpolator would, several times faster.
    """
    base = np.floor(shift).astype(int)
    fx, fy = (float(f) for f in shift - base)
    fx, fy = (0.0 if f < 1e-6 else f for f in (fx, fy))
    big = window(plane.astype(np.float32, copy=False), (base[0], base[1]), (shape[0] + 1, shape[1] + 1), fill)
    out = big[:-1, :-1] * np.float32((1 - fx) * (1 - fy))
    if fx:
        out += big[1:, :-1] * np.float32(fx * (1 - fy))
    if fy:
        out += big[:-1, 1:] * np.float32((1 - fx) * fy)
    if fx and fy:
        out += big[1:, 1:] * np.float32(fx * fy)
    return out


def resample_planes(planes_xy: list[np.ndarray], locations: np.ndarray, grid: RegularGrid, fill: float) -> np.ndarray:
    """Linear resampling of sorted source planes (each ``[x, y]``) onto ``grid``; float32 ``[x, y, z]``.

    Each target slice lies between two source planes (parallel to it); each of the two is
    sampled where the normal through the target voxel crosses it, then blended by distance.
    That is exact trilinear interpolation along the normal, whatever the tilt.
    """
    nx, ny, nz = grid.shape
    out = np.empty((nz, nx, ny), dtype=np.float32)  # slice-major while filling, returned as [x, y, z]
    locations = np.asarray(locations, dtype=float)
    cache: dict[int, np.ndarray] = {}

    def shifted(k: int) -> np.ndarray:
        if k not in cache:
            if len(cache) > 2:  # targets advance monotonically: older planes are not needed again
                cache.clear()
            cache[k] = shift_plane(planes_xy[k], grid.plane_shift[k], (nx, ny), fill)
        return cache[k]

    for t, location in enumerate(grid.locations):
        k = int(np.clip(np.searchsorted(locations, location, side="right") - 1, 0, len(locations) - 2))
        span = locations[k + 1] - locations[k]
        w = float(np.clip((location - locations[k]) / span, 0.0, 1.0))
        if w < 1e-6:
            out[t] = shifted(k)
        elif w > 1 - 1e-6:
            out[t] = shifted(k + 1)
        else:
            out[t] = (1 - w) * shifted(k) + w * shifted(k + 1)
    return out.transpose(1, 2, 0)


def labels_to_source(volume: Volume, labels: np.ndarray) -> np.ndarray:
    """The label map on the real source planes: shape ``(n_planes, rows, columns)`` in plane order.

    SEG and RTSTRUCT must describe the instances the user has, not our resampled grid. Without
    resampling this is a transpose; otherwise each source voxel centre takes the label of the
    nearest voxel of ``volume``'s grid (0 outside it).
    """
    grid = volume.source
    if grid is None:
        raise MedhubError("volume has no DICOM source planes (loaded from NIfTI?); cannot map labels back")
    labels = np.asarray(labels)
    if labels.shape != volume.array.shape:
        raise MedhubError(f"label map shape {labels.shape} differs from the volume's {volume.array.shape}")
    if not grid.resampled:
        expected = (grid.columns, grid.rows, len(grid.planes))
        if labels.shape != expected:
            raise MedhubError(f"label map shape {labels.shape} does not match the source planes {expected}")
        return np.ascontiguousarray(labels.transpose(2, 1, 0))
    inverse = np.linalg.inv(volume.affine_lps)
    plane_affine = affine_from_planes(grid.orientation, grid.pixel_spacing, np.zeros(3), np.zeros(3))
    in_plane = inverse[:3, :3] @ plane_affine[:3, :2]  # target index change per source column / row
    out = np.zeros((len(grid.planes), grid.rows, grid.columns), dtype=labels.dtype)
    if np.allclose(in_plane, [[1, 0], [0, 1], [0, 0]], atol=1e-6):
        # Our own grids: source planes lie in target slices, shifted by a translation only.
        for k, plane in enumerate(grid.planes):
            start = inverse[:3, :3] @ np.asarray(plane.position, dtype=float) + inverse[:3, 3]
            x, y, z = (int(np.floor(v + 0.5)) for v in start)
            if 0 <= z < labels.shape[2]:
                out[k] = window(labels[:, :, z], (x, y), (grid.columns, grid.rows), 0).T
        return out
    cols, rows = np.meshgrid(np.arange(grid.columns), np.arange(grid.rows), indexing="xy")
    base = in_plane @ np.stack([cols.ravel(), rows.ravel()])  # (3, rows*cols)
    bounds = np.array(labels.shape)[:, None]
    for k, plane in enumerate(grid.planes):
        start = inverse[:3, :3] @ np.asarray(plane.position, dtype=float) + inverse[:3, 3]
        index = np.floor(base + start[:, None] + 0.5).astype(np.int64)
        inside = np.all((index >= 0) & (index < bounds), axis=0)
        values = np.zeros(index.shape[1], dtype=labels.dtype)
        values[inside] = labels[index[0, inside], index[1, inside], index[2, inside]]
        out[k] = values.reshape(grid.rows, grid.columns)
    return out


def labels_from_source(volume: Volume, planes: np.ndarray) -> np.ndarray:
    """The inverse of :func:`labels_to_source`: labels on the source planes ``(n_planes, rows, columns)``
    onto ``volume``'s grid ``[x, y, z]``, each voxel taking the label of the nearest source voxel.

    Used to show a SEG (which lies on the source planes) over the loaded volume. Without
    resampling this is a transpose; after resampling each target voxel takes the plane nearest
    along the slice normal and, on it, the nearest pixel (0 outside every plane).
    """
    grid = volume.source
    if grid is None:
        raise MedhubError("volume has no DICOM source planes (loaded from NIfTI?); cannot map labels onto it")
    planes = np.asarray(planes)
    expected = (len(grid.planes), grid.rows, grid.columns)
    if planes.shape != expected:
        raise MedhubError(f"labels on the source planes have shape {planes.shape}, the source has {expected}")
    if not grid.resampled:
        return np.ascontiguousarray(planes.transpose(2, 1, 0))
    normal = slice_normal(grid.orientation)
    row_dir, col_dir = grid.orientation[:3], grid.orientation[3:6]
    dx, dy = float(grid.pixel_spacing[1]), float(grid.pixel_spacing[0])
    origins = np.array([np.asarray(plane.position, dtype=float) for plane in grid.planes])
    locations = origins @ normal
    order = np.argsort(locations)
    nx, ny, nz = volume.array.shape
    out = np.zeros((nx, ny, nz), dtype=planes.dtype)
    affine = volume.affine_lps
    xs, ys = np.meshgrid(np.arange(nx), np.arange(ny), indexing="ij")
    for z in range(nz):
        world = (affine[:3, 0, None, None] * xs + affine[:3, 1, None, None] * ys
                 + (affine[:3, 2] * z + affine[:3, 3])[:, None, None])  # (3, nx, ny)
        along = np.tensordot(normal, world, axes=1)
        nearest = np.clip(np.searchsorted(locations[order], along), 1, len(order) - 1)
        below, above = order[nearest - 1], order[nearest]
        plane = np.where(np.abs(along - locations[below]) <= np.abs(along - locations[above]), below, above)
        offset = world - origins[plane].transpose(2, 0, 1)
        column = np.floor(np.tensordot(row_dir, offset, axes=1) / dx + 0.5).astype(np.int64)
        row = np.floor(np.tensordot(col_dir, offset, axes=1) / dy + 0.5).astype(np.int64)
        inside = (column >= 0) & (column < grid.columns) & (row >= 0) & (row < grid.rows)
        out[:, :, z][inside] = planes[plane[inside], row[inside], column[inside]]
    return out

def to_lps(array: np.ndarray, affine_lps: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Reorder voxels so the axes point to patient Left, Posterior, Superior; return (array, affine).

    The closest such axes for an oblique grid; no interpolation. Then an axial slice drawn with
    x to the right and y downwards is the radiological view, whatever the voxel order was.
    """
    transform = ornt_transform(io_orientation(affine_lps), LPS_AXES)
    return apply_orientation(array, transform), affine_lps @ inv_ornt_aff(transform, array.shape)


def from_lps(array_lps: np.ndarray, affine_lps: np.ndarray) -> np.ndarray:
    """The inverse of :func:`to_lps`: an LPS-ordered array back to the voxel order of ``affine_lps``'s grid."""
    return apply_orientation(array_lps, ornt_transform(LPS_AXES, io_orientation(affine_lps)))
