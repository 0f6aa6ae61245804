"""Pure geometry: normals, spacing analysis, tilt, affines, resampling and labels back to source planes."""

from __future__ import annotations

import numpy as np
import pydicom
import pytest

from medhub.data import geometry
from medhub.data.volume import SourceGrid, SourcePlane, Volume
from medhub.errors import MedhubError

AXIAL = np.array([1.0, 0, 0, 0, 1, 0])
SAGITTAL = np.array([0.0, 1, 0, 0, 0, -1])
TILT_DEG = 14.0
# Rows tilted about x, as in the real GE/Philips head CT: column vector leaves the axial plane.
TILTED = np.array([1.0, 0, 0, 0, np.cos(np.radians(TILT_DEG)), -np.sin(np.radians(TILT_DEG))])


def test_slice_normal_axial_and_sagittal() -> None:
    np.testing.assert_allclose(geometry.slice_normal(AXIAL), [0, 0, 1])
    np.testing.assert_allclose(geometry.slice_normal(SAGITTAL), [-1, 0, 0])
    with pytest.raises(MedhubError, match="parallel"):
        geometry.slice_normal(np.array([1.0, 0, 0, 1, 0, 0]))


def test_sort_by_position_along_normal() -> None:
    positions = np.array([[0, 0, 5.0], [0, 0, -5.0], [0, 0, 0.0]])
    assert geometry.sort_by_position(positions, geometry.slice_normal(AXIAL)).tolist() == [1, 2, 0]
    # Sagittal normal is -x: larger x comes first.
    positions = np.array([[3.0, 0, 0], [1.0, 0, 0], [2.0, 0, 0]])
    assert geometry.sort_by_position(positions, geometry.slice_normal(SAGITTAL)).tolist() == [0, 2, 1]


def test_spacing_regular_with_header_float_noise() -> None:
    locations = np.arange(10) * 1.25 + np.array([0, 1e-3, -1e-3, 0, 2e-3, 0, 0, -1e-3, 0, 0])
    analysis = geometry.analyse_spacing(locations)
    assert analysis.regular
    assert analysis.step == pytest.approx(1.25, abs=1e-3)


def test_spacing_missing_slice_is_whole_multiple() -> None:
    analysis = geometry.analyse_spacing(np.array([0.0, 2, 4, 8, 10]))
    assert not analysis.regular and not analysis.uneven
    assert analysis.missing == [(2, 4.0)]
    assert analysis.dominant == 2.0


def test_spacing_uneven_is_not_whole_multiple() -> None:
    analysis = geometry.analyse_spacing(np.array([0.0, 1, 2, 3, 6.5, 13.5]))
    assert not analysis.regular and analysis.uneven and not analysis.missing
    assert (analysis.min_gap, analysis.max_gap) == (1.0, 7.0)


def test_spacing_change_in_runs_is_uneven_not_missing() -> None:
    """Head CT protocols: 2.5 mm through the skull base, then 5 mm; no slice is missing."""
    analysis = geometry.analyse_spacing(np.array([0.0, 2.5, 5, 7.5, 10, 15, 20, 25]))
    assert analysis.uneven and not analysis.missing


def test_tilt_angle_and_detection() -> None:
    normal = geometry.slice_normal(TILTED)
    # Slice origins advance along patient z (table feed), not along the tilted normal.
    positions = np.array([[0, 0, 5.0 * k] for k in range(4)])
    assert geometry.tilt_angle(positions, TILTED) == pytest.approx(TILT_DEG, abs=1e-6)
    assert geometry.is_tilted(positions, TILTED, (0.5, 0.5))
    straight = np.array([normal * 5.0 * k for k in range(4)])
    assert geometry.tilt_angle(straight, TILTED) == pytest.approx(0.0, abs=1e-6)
    assert not geometry.is_tilted(straight, TILTED, (0.5, 0.5))


def test_affine_maps_voxels_like_dicom() -> None:
    """Voxel (x=col i, y=row j) lies at IPP + i*colspacing*r + j*rowspacing*c (PS 3.3 C.7.6.2.1.1)."""
    origin = np.array([-100.0, -50.0, 20.0])
    pixel_spacing = (0.8, 0.6)  # (row spacing, column spacing)
    affine = geometry.affine_from_planes(SAGITTAL, pixel_spacing, origin, np.array([-2.0, 0, 0]))
    i, j, k = 3, 7, 2
    expected = origin + i * 0.6 * SAGITTAL[:3] + j * 0.8 * SAGITTAL[3:] + k * np.array([-2.0, 0, 0])
    np.testing.assert_allclose((affine @ [i, j, k, 1])[:3], expected)


def _linear_field(points: np.ndarray) -> np.ndarray:
    """A smooth function of LPS position: linear interpolation reproduces it exactly."""
    return 3.0 * points[..., 0] - 2.0 * points[..., 1] + 5.0 * points[..., 2] + 7.0


def _plane_points(origin: np.ndarray, orientation: np.ndarray, pixel_spacing, rows: int, columns: int) -> np.ndarray:
    cols, rws = np.meshgrid(np.arange(columns), np.arange(rows), indexing="ij")  # [x, y]
    return (
        origin
        + cols[..., None] * pixel_spacing[1] * orientation[:3]
        + rws[..., None] * pixel_spacing[0] * orientation[3:]
    )


@pytest.mark.parametrize(
    "steps",
    [
        [5.0, 5.0, 5.0, 5.0],  # regular but tilted
        [1.0, 1.0, 3.5, 7.0],  # tilted and uneven
    ],
)
def test_resample_planes_is_exact_for_linear_fields(steps: list[float]) -> None:
    """Resampled voxels hold the field's value at their own physical position."""
    rows, columns, pixel_spacing = 20, 24, (0.5, 0.5)
    positions = np.array([[0, 0, z] for z in np.concatenate([[0.0], np.cumsum(steps)])])
    planes = [_linear_field(_plane_points(p, TILTED, pixel_spacing, rows, columns)) for p in positions]
    normal = geometry.slice_normal(TILTED)
    locations = positions @ normal
    step = min(np.diff(locations))
    grid = geometry.regular_grid(positions, TILTED, pixel_spacing, rows, columns, step)
    out = geometry.resample_planes(planes, locations, grid, fill=-1000.0)
    assert out.shape == grid.shape
    assert grid.shape[1] > rows  # the tilt widens the grid so nothing is cut off
    # Orthogonal grid: columns of the affine are perpendicular.
    a = grid.affine[:3, :3]
    np.testing.assert_allclose(a.T @ a, np.diag(np.diag(a.T @ a)), atol=1e-9)
    idx = np.indices(out.shape).reshape(3, -1)
    world = (grid.affine @ np.vstack([idx, np.ones(idx.shape[1])]))[:3].T
    # Voxels whose interpolation touched no fill value: resample ones onto the same grid.
    coverage = geometry.resample_planes([np.ones_like(p) for p in planes], locations, grid, fill=0.0)
    inside = np.abs(coverage.reshape(-1) - 1.0) < 1e-6
    assert inside.mean() > 0.5
    np.testing.assert_allclose(out.reshape(-1)[inside], _linear_field(world)[inside], rtol=1e-5, atol=1e-2)


def _source_grid(positions: np.ndarray, orientation: np.ndarray, pixel_spacing, rows: int, columns: int, resampled):
    planes = [SourcePlane(dataset=pydicom.Dataset(), frame_number=None, position=p) for p in positions]
    return SourceGrid(
        planes=planes,
        orientation=orientation,
        pixel_spacing=pixel_spacing,
        rows=rows,
        columns=columns,
        resampled=resampled,
    )


def test_labels_to_source_identity_when_not_resampled() -> None:
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 4, size=(6, 5, 3)).astype(np.uint8)  # [x=6 columns, y=5 rows, z=3]
    positions = np.array([[0, 0, 2.0 * k] for k in range(3)])
    affine = geometry.affine_from_planes(AXIAL, (1.0, 1.0), positions[0], np.array([0, 0, 2.0]))
    volume = Volume(
        array=np.zeros(labels.shape), affine_lps=affine, source=_source_grid(positions, AXIAL, (1, 1), 5, 6, False)
    )
    out = geometry.labels_to_source(volume, labels)
    assert out.shape == (3, 5, 6)
    assert out.dtype == np.uint8
    assert out[2, 4, 1] == labels[1, 4, 2]
    np.testing.assert_array_equal(out, labels.transpose(2, 1, 0))
    with pytest.raises(MedhubError, match="shape"):
        geometry.labels_to_source(volume, labels[:, :, :2])


def test_labels_to_source_after_tilt_resampling_keeps_physical_position() -> None:
    """A ball drawn on the resampled grid lands at the same LPS centre on the tilted source planes."""
    rows, columns, pixel_spacing = 40, 40, (1.0, 1.0)
    positions = np.array([[0, 0, 2.0 * k] for k in range(12)])
    normal = geometry.slice_normal(TILTED)
    grid = geometry.regular_grid(positions, TILTED, pixel_spacing, rows, columns, 2.0 * normal[2])
    volume = Volume(
        array=np.zeros(grid.shape, dtype=np.float32),
        affine_lps=grid.affine,
        source=_source_grid(positions, TILTED, pixel_spacing, rows, columns, True),
    )
    centre = np.array([20.0, 15.0, 8.0])  # LPS mm, inside the stack
    idx = np.indices(grid.shape).reshape(3, -1)
    world = (grid.affine @ np.vstack([idx, np.ones(idx.shape[1])]))[:3].T
    labels = (np.linalg.norm(world - centre, axis=1) <= 6.0).reshape(grid.shape).astype(np.uint8)
    out = geometry.labels_to_source(volume, labels)
    assert out.shape == (12, rows, columns)
    k, j, i = np.nonzero(out)
    source_world = positions[k] + i[:, None] * TILTED[:3] + j[:, None] * TILTED[3:]
    np.testing.assert_allclose(source_world.mean(axis=0), centre, atol=0.6)
    assert np.linalg.norm(source_world - centre, axis=1).max() <= 6.0 + 1.5  # nearest neighbour: within a voxel


def test_labels_to_source_requires_dicom_source() -> None:
    volume = Volume(array=np.zeros((2, 2, 2)), affine_lps=np.eye(4))
    with pytest.raises(MedhubError, match="no DICOM source"):
        geometry.labels_to_source(volume, np.zeros((2, 2, 2), dtype=np.uint8))


def test_labels_to_source_general_path_agrees_with_fast_path() -> None:
    """A label map on a grid with swapped x/y axes (not one of ours) maps back to the same planes."""
    rows, columns, pixel_spacing = 30, 36, (1.0, 1.0)
    positions = np.array([[0, 0, 2.0 * k] for k in range(6)])
    normal = geometry.slice_normal(TILTED)
    grid = geometry.regular_grid(positions, TILTED, pixel_spacing, rows, columns, 2.0 * normal[2])
    source = _source_grid(positions, TILTED, pixel_spacing, rows, columns, True)
    rng = np.random.default_rng(3)
    labels = ndimage_blobs(rng, grid.shape)
    fast = geometry.labels_to_source(Volume(np.zeros(grid.shape), grid.affine, source), labels)
    swapped_affine = grid.affine[:, [1, 0, 2, 3]]
    swapped = labels.transpose(1, 0, 2)
    general = geometry.labels_to_source(Volume(np.zeros(swapped.shape), swapped_affine, source), swapped)
    assert fast.any()
    np.testing.assert_array_equal(general, fast)


def ndimage_blobs(rng: np.random.Generator, shape: tuple[int, int, int]) -> np.ndarray:
    """Random blocky labels (runs of equal values), so nearest-neighbour ties do not matter."""
    coarse = rng.integers(0, 3, size=tuple(max(1, s // 4) for s in shape)).astype(np.uint8)
    full = coarse.repeat(4, axis=0).repeat(4, axis=1).repeat(4, axis=2)
    out = np.zeros(shape, dtype=np.uint8)
    out[: full.shape[0], : full.shape[1], : full.shape[2]] = full[: shape[0], : shape[1], : shape[2]]
    return out


def test_labels_from_source_inverts_labels_to_source() -> None:
    """Source-plane labels (a SEG) onto the resampled grid and back give the same labels."""
    rows, columns, pixel_spacing = 30, 36, (1.0, 1.0)
    positions = np.array([[0, 0, 2.0 * k] for k in range(8)])
    normal = geometry.slice_normal(TILTED)
    grid = geometry.regular_grid(positions, TILTED, pixel_spacing, rows, columns, 2.0 * normal[2])
    volume = Volume(np.zeros(grid.shape), grid.affine, _source_grid(positions, TILTED, pixel_spacing, rows, columns,
                                                                    True))
    rng = np.random.default_rng(5)
    planes = ndimage_blobs(rng, (8, rows, columns))
    on_grid = geometry.labels_from_source(volume, planes)
    assert on_grid.shape == grid.shape and on_grid.any()
    np.testing.assert_array_equal(geometry.labels_to_source(volume, on_grid), planes)
    flat = Volume(np.zeros((columns, rows, 8)), geometry.affine_from_planes(AXIAL, pixel_spacing, positions[0],
                                                                             np.array([0, 0, 2.0])),
                  _source_grid(positions, AXIAL, pixel_spacing, rows, columns, False))
    np.testing.assert_array_equal(geometry.labels_from_source(flat, planes), planes.transpose(2, 1, 0))
    with pytest.raises(MedhubError, match="source planes have shape"):
        geometry.labels_from_source(flat, planes[:3])
