"""RTSTRUCT writer: dciodvfy-clean objects whose contours rasterise back to the label map.

Real sources: the Philips head-phantom CT (140 slices), rt-utils' two CT slices and an
enhanced (multi-frame) CT. Each test builds the SourceGrid from the headers itself (planes
sorted along the slice normal), writes a synthetic label map with a ring (hole), an island
inside that hole, a two-component label and an absent label, validates the file and reads
it back independently of the writer's plane bookkeeping.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pydicom
import pytest
from conftest import shared_path
from pydicom.sr.codedict import codes
from skimage.draw import ellipse

from medhub.data.volume import SourceGrid, SourcePlane
from medhub.errors import MedhubError
from medhub.segdb import Code, SegmentSpec
from medhub.writers.contours import (
    drop_collinear,
    labelmap_to_polygons,
    mask_to_polygons,
    patient_to_pixels,
    pixels_to_patient,
    polygons_to_mask,
)
from medhub.writers.rtstruct import format_ds_values, write_rtstruct

# ---------------------------------------------------------------------------- helpers


def _code(concept) -> Code:
    return Code(concept.value, concept.scheme_designator, concept.meaning)


ANATOMY = _code(codes.SCT.AnatomicalStructure)
SEGMENTS = {
    1: SegmentSpec("LIVER", "Liver", ANATOMY, _code(codes.SCT.Liver), color=(221, 130, 101)),
    2: SegmentSpec("KIDNEY", "Kidney", ANATOMY, _code(codes.SCT.Kidney), color=(185, 102, 83)),
    3: SegmentSpec("SPLEEN", "Spleen", ANATOMY, _code(codes.SCT.Spleen), color=(157, 108, 162)),
    4: SegmentSpec(
        "NEOPLASM",
        "Neoplasm",
        _code(codes.SCT.MorphologicallyAbnormalStructure),
        _code(codes.SCT.Neoplasm),
        color=(255, 0, 0),
    ),
}


def grid_from_files(files: list[Path]) -> SourceGrid:
    """Single-frame images → SourceGrid, planes sorted by position along the slice normal."""
    headers = [pydicom.dcmread(f, stop_before_pixels=True) for f in files]
    iop = np.array(headers[0].ImageOrientationPatient, dtype=float)
    normal = np.cross(iop[:3], iop[3:])
    headers.sort(key=lambda h: float(normal @ np.array(h.ImagePositionPatient, dtype=float)))
    planes = [SourcePlane(h, None, np.array(h.ImagePositionPatient, dtype=float)) for h in headers]
    first = headers[0]
    return SourceGrid(planes, iop, tuple(float(v) for v in first.PixelSpacing), int(first.Rows), int(first.Columns))


def grid_from_multiframe(path: Path) -> SourceGrid:
    """Enhanced multi-frame image → SourceGrid from its functional groups, frames sorted along the normal."""
    ds = pydicom.dcmread(path, stop_before_pixels=True)
    shared = ds.SharedFunctionalGroupsSequence[0]
    iop = np.array(shared.PlaneOrientationSequence[0].ImageOrientationPatient, dtype=float)
    spacing = tuple(float(v) for v in shared.PixelMeasuresSequence[0].PixelSpacing)
    normal = np.cross(iop[:3], iop[3:])
    planes = [
        SourcePlane(ds, number, np.array(frame.PlanePositionSequence[0].ImagePositionPatient, dtype=float))
        for number, frame in enumerate(ds.PerFrameFunctionalGroupsSequence, start=1)
    ]
    planes.sort(key=lambda p: float(normal @ p.position))
    return SourceGrid(planes, iop, spacing, int(ds.Rows), int(ds.Columns))


def synthetic_labels(n_planes: int, rows: int, columns: int) -> np.ndarray:
    """Label 1: ring with a hole and an island of itself inside the hole; label 2: two blobs;
    label 3: a rotated ellipse that changes size along z; label 4 (in SEGMENTS) absent."""
    labels = np.zeros((n_planes, rows, columns), dtype=np.uint8)
    cy, cx = rows // 2, columns // 2
    s = min(rows, columns) / 512  # scale to the image
    for k in range(n_planes):
        grow = 1.0 + 0.3 * np.sin(np.pi * (k + 0.5) / n_planes)
        rr, cc = ellipse(cy, cx, 110 * s * grow, 90 * s * grow, shape=(rows, columns))
        labels[k, rr, cc] = 1
        rr, cc = ellipse(cy, cx, 60 * s, 50 * s, shape=(rows, columns))
        labels[k, rr, cc] = 0  # the hole
        rr, cc = ellipse(cy, cx, 20 * s, 15 * s, shape=(rows, columns))
        labels[k, rr, cc] = 1  # island inside the hole
        for oy in (-1, 1):  # two separate components
            rr, cc = ellipse(cy + oy * 170 * s, cx + 170 * s, 30 * s, 22 * s, shape=(rows, columns))
            labels[k, rr, cc] = 2
        rr, cc = ellipse(cy - 160 * s, cx - 150 * s, 45 * s * grow, 25 * s, shape=(rows, columns), rotation=0.6)
        labels[k, rr, cc] = 3
    return labels


def read_back(path: Path, grid: SourceGrid) -> tuple[pydicom.Dataset, dict[int, np.ndarray], float]:
    """Rasterise every ROI's contours onto the planes they reference (even-odd rule).

    Planes are found from each contour's ContourImageSequence (SOP Instance UID + frame), the
    points mapped to pixels with that plane's geometry. Also returns the largest distance of
    any ContourData point from the plane it references.
    """
    ds = pydicom.dcmread(path)
    plane_index = {(str(p.dataset.SOPInstanceUID), p.frame_number): k for k, p in enumerate(grid.planes)}
    masks: dict[int, np.ndarray] = {}
    worst = 0.0
    for roi in ds.ROIContourSequence:
        per_plane: dict[int, list[np.ndarray]] = {}
        for contour in roi.get("ContourSequence", []):
            assert contour.ContourGeometricType == "CLOSED_PLANAR"
            image = contour.ContourImageSequence[0]
            frame = int(image.ReferencedFrameNumber) if "ReferencedFrameNumber" in image else None
            k = plane_index[(str(image.ReferencedSOPInstanceUID), frame)]
            points = contour_points(contour)
            assert len(points) == int(contour.NumberOfContourPoints) >= 3
            plane = grid.planes[k]
            rc, off_plane = lps_to_pixels(points, plane.position, grid.orientation, grid.pixel_spacing)
            worst = max(worst, float(np.abs(off_plane).max()))
            per_plane.setdefault(k, []).append(rc)
        mask = np.zeros((len(grid.planes), grid.rows, grid.columns), dtype=bool)
        for k, polygons in per_plane.items():
            mask[k] = polygons_to_mask(polygons, mask.shape[1:])  # even-odd over the plane's contours
        masks[int(roi.ReferencedROINumber)] = mask
    return ds, masks, worst


def lps_to_pixels(points, position, orientation, spacing) -> tuple[np.ndarray, np.ndarray]:
    """LPS mm → (row, column) and distance off the plane, by solving the plane's own equations
    (independent of the writer's geometry helpers, so a shared mistake cannot pass)."""
    iop = np.asarray(orientation, dtype=float)
    basis = np.column_stack([iop[3:] * spacing[0], iop[:3] * spacing[1], np.cross(iop[:3], iop[3:])])
    solved = np.linalg.solve(basis, (np.asarray(points) - np.asarray(position)).T).T
    return solved[:, :2], solved[:, 2]


def contour_points(contour: pydicom.Dataset) -> np.ndarray:
    """ContourData as (n, 3) floats, parsed straight from the file bytes (pydicom's DSfloat
    per value would make the read-back of 10^5 points take seconds), each value checked
    against the 16-character DS limit."""
    element = contour.get_item(0x30060050)
    text = element.value.decode("ascii") if element.is_raw else "\\".join(str(v) for v in element.value)
    tokens = text.strip().split("\\")
    assert max(len(t) for t in tokens) <= 16
    return np.array(tokens, dtype=float).reshape(-1, 3)


def dice(a: np.ndarray, b: np.ndarray) -> float:
    return 2.0 * np.logical_and(a, b).sum() / (a.sum() + b.sum())


def check_roundtrip(path: Path, grid: SourceGrid, labels: np.ndarray) -> pydicom.Dataset:
    ds, masks, worst = read_back(path, grid)
    assert worst < 0.01, f"a contour point lies {worst} mm off its plane"
    for value in (1, 2, 3):
        d = dice(masks[value], labels == value)
        assert d >= 0.95, f"ROI {value}: Dice {d:.4f}"
    assert not masks[4].any()
    return ds


# ---------------------------------------------------------------------------- real sources


def test_philips_ct_roundtrip_valid(tmp_path, assert_valid_dicom):
    folder = shared_path("ct/philips_phantom_head_1mm")
    grid = grid_from_files(sorted(folder.iterdir()))
    assert len(grid.planes) == 140
    labels = synthetic_labels(len(grid.planes), grid.rows, grid.columns)
    out = write_rtstruct(labels, grid, SEGMENTS, model_name="unit-test", model_version="0.1", path=tmp_path / "rt.dcm")
    assert_valid_dicom(out)
    ds = check_roundtrip(out, grid, labels)

    src = grid.planes[0].dataset
    assert ds.SOPClassUID == pydicom.uid.RTStructureSetStorage and ds.Modality == "RTSTRUCT"
    assert ds.StudyInstanceUID == src.StudyInstanceUID and ds.PatientID == src.PatientID
    assert ds.SeriesInstanceUID != src.SeriesInstanceUID and ds.SeriesNumber == 902
    assert ds.FrameOfReferenceUID == src.FrameOfReferenceUID
    # every source image listed once, under the right study and series
    ref_for = ds.ReferencedFrameOfReferenceSequence[0]
    study = ref_for.RTReferencedStudySequence[0]
    series = study.RTReferencedSeriesSequence[0]
    assert study.ReferencedSOPInstanceUID == src.StudyInstanceUID
    assert series.SeriesInstanceUID == src.SeriesInstanceUID
    listed = [item.ReferencedSOPInstanceUID for item in series.ContourImageSequence]
    assert listed == [p.dataset.SOPInstanceUID for p in grid.planes]
    # ROIs: names, algorithm, codes, colours; empty ROI kept without contours
    rois = {int(r.ROINumber): r for r in ds.StructureSetROISequence}
    assert {k: r.ROIName for k, r in rois.items()} == {k: s.name for k, s in SEGMENTS.items()}
    assert all(r.ROIGenerationAlgorithm == "AUTOMATIC" for r in rois.values())
    observations = {int(o.ReferencedROINumber): o for o in ds.RTROIObservationsSequence}
    assert observations[1].RTROIIdentificationCodeSequence[0].CodeValue == codes.SCT.Liver.value
    assert observations[1].RTROIInterpretedType == "ORGAN"
    assert observations[4].RTROIInterpretedType == ""
    contours = {int(c.ReferencedROINumber): c for c in ds.ROIContourSequence}
    assert list(contours[1].ROIDisplayColor) == [221, 130, 101]
    assert "ContourSequence" not in contours[4]
    # label 1 = outer + hole + island per plane; label 2 = two components per plane
    assert len(contours[1].ContourSequence) == 3 * len(grid.planes)
    assert len(contours[2].ContourSequence) == 2 * len(grid.planes)


def test_rt_utils_mock_ct_valid(tmp_path, assert_valid_dicom):
    folder = shared_path("rtstruct/rt_utils_mock")
    grid = grid_from_files([folder / "ct_1.dcm", folder / "ct_2.dcm"])
    labels = synthetic_labels(len(grid.planes), grid.rows, grid.columns)
    out = write_rtstruct(
        labels,
        grid,
        SEGMENTS,
        model_name="a-model-name-longer-than-sixteen-characters",
        model_version="2",
        path=tmp_path / "sub" / "rt.dcm",
        series_number=7,
        series_description="contours",
    )
    assert_valid_dicom(out)
    ds = check_roundtrip(out, grid, labels)
    assert ds.SeriesNumber == 7 and ds.SeriesDescription == "contours"
    assert len(ds.StructureSetLabel) <= 16  # SH

    # a boolean mask is one ROI, label 1; a mask touching the image border stays closed
    mask = labels == 1
    mask[:, :, :40] = True
    out = write_rtstruct(mask, grid, {1: SEGMENTS[1]}, model_name="m", model_version="1", path=tmp_path / "b.dcm")
    assert_valid_dicom(out)
    _, masks, _ = read_back(out, grid)
    np.testing.assert_array_equal(masks[1], mask)


def test_enhanced_multiframe_ct_valid(tmp_path, assert_valid_dicom):
    """Multi-frame source: each contour names its frame (ReferencedFrameNumber)."""
    grid = grid_from_multiframe(shared_path("enhanced/pydicom_data/eCT_Supplemental.dcm"))
    labels = synthetic_labels(len(grid.planes), grid.rows, grid.columns)
    out = write_rtstruct(labels, grid, SEGMENTS, model_name="mf", model_version="1", path=tmp_path / "rt.dcm")
    assert_valid_dicom(out)
    ds = check_roundtrip(out, grid, labels)
    frames = {
        int(c.ContourImageSequence[0].ReferencedFrameNumber)
        for roi in ds.ROIContourSequence
        for c in roi.get("ContourSequence", [])
    }
    assert frames == {1, 2}
    series = ds.ReferencedFrameOfReferenceSequence[0].RTReferencedStudySequence[0].RTReferencedSeriesSequence[0]
    assert len(series.ContourImageSequence) == 1  # one instance, all its frames used


def test_multiframe_subset_of_frames_listed(tmp_path, assert_valid_dicom):
    """When the grid uses only some frames of an instance, the instance reference names them."""
    grid = grid_from_multiframe(shared_path("enhanced/pydicom_data/eCT_Supplemental.dcm"))
    grid.planes = grid.planes[1:]
    labels = synthetic_labels(1, grid.rows, grid.columns)
    out = write_rtstruct(labels, grid, SEGMENTS, model_name="mf", model_version="1", path=tmp_path / "rt.dcm")
    assert_valid_dicom(out)
    ds = check_roundtrip(out, grid, labels)
    item = ds.ReferencedFrameOfReferenceSequence[0].RTReferencedStudySequence[0]
    image = item.RTReferencedSeriesSequence[0].ContourImageSequence[0]
    assert int(image.ReferencedFrameNumber) == grid.planes[0].frame_number


# ---------------------------------------------------------------------------- bad input


def test_bad_input_raises_one_line_errors(tmp_path):
    folder = shared_path("rtstruct/rt_utils_mock")
    grid = grid_from_files([folder / "ct_1.dcm", folder / "ct_2.dcm"])
    labels = synthetic_labels(2, grid.rows, grid.columns)
    kw = {"model_name": "m", "model_version": "1", "path": tmp_path / "rt.dcm"}
    with pytest.raises(MedhubError, match="does not match the source planes"):
        write_rtstruct(labels[:1], grid, SEGMENTS, **kw)
    with pytest.raises(MedhubError, match=r"label values \[3\]"):
        write_rtstruct(labels, grid, {k: SEGMENTS[k] for k in (1, 2)}, **kw)
    with pytest.raises(MedhubError, match="must be integer"):
        write_rtstruct(labels.astype(float), grid, SEGMENTS, **kw)
    grid.referenceable, grid.unreferenceable_reason = False, "no SOP Instance UIDs"
    with pytest.raises(MedhubError, match="no SOP Instance UIDs"):
        write_rtstruct(labels, grid, SEGMENTS, **kw)
    assert not (tmp_path / "rt.dcm").exists()


# ---------------------------------------------------------------------------- contours


def test_mask_polygons_roundtrip_exact_on_random_masks():
    rng = np.random.default_rng(3)
    for _ in range(20):
        mask = rng.random((40, 50)) < 0.35  # noise: single pixels, diagonal touches, holes
        polygons = mask_to_polygons(mask)
        assert all(len(p) >= 3 for p in polygons)
        np.testing.assert_array_equal(polygons_to_mask(polygons, mask.shape), mask)


def test_polygons_to_mask_agrees_with_skimage_draw():
    """Our scanline fill against scikit-image's point-in-polygon fill, on random convex polygons
    (where the even-odd and non-zero rules agree), including polygons leaving the image."""
    from scipy.spatial import ConvexHull
    from skimage.draw import polygon as draw_polygon

    rng = np.random.default_rng(7)
    for _ in range(300):
        points = rng.uniform(-8.0, 48.0, size=(int(rng.integers(3, 12)), 2))
        hull = points[ConvexHull(points).vertices]
        expected = np.zeros((40, 44), dtype=bool)
        rr, cc = draw_polygon(hull[:, 0], hull[:, 1], shape=expected.shape)
        expected[rr, cc] = True
        np.testing.assert_array_equal(polygons_to_mask([hull], expected.shape), expected)


def test_hole_is_a_second_contour_and_collinear_points_are_dropped():
    mask = np.zeros((20, 20), dtype=bool)
    mask[2:18, 2:18] = True
    mask[6:14, 6:14] = False
    polygons = mask_to_polygons(mask)
    assert len(polygons) == 2
    # squares: marching squares cuts each corner, so 8 vertices each, nothing on straight edges
    assert sorted(len(p) for p in polygons) == [8, 8]
    np.testing.assert_array_equal(polygons_to_mask(polygons, mask.shape), mask)
    single = np.zeros((5, 5), dtype=bool)
    single[2, 2] = True
    (diamond,) = mask_to_polygons(single)
    assert len(diamond) == 4
    line = np.array([[0, 0], [0, 1], [0, 2], [1, 2], [2, 2], [2, 0]], dtype=float)
    np.testing.assert_array_equal(drop_collinear(line), line[[0, 2, 4, 5]])


def test_labelmap_polygons_match_per_plane_tracing():
    labels = synthetic_labels(3, 128, 96)
    result = labelmap_to_polygons(labels, [1, 2, 3, 4])
    assert result[4] == []
    for value in (1, 2, 3):
        for k in range(3):
            got = [p for plane, p in result[value] if plane == k]
            expected = mask_to_polygons(labels[k] == value)
            assert len(got) == len(expected)
            np.testing.assert_array_equal(polygons_to_mask(got, labels.shape[1:]), labels[k] == value)


def test_pixel_patient_mapping_uses_iop_and_spacing():
    iop = np.array([0.0, 1.0, 0.0, 0.0, 0.0, -1.0])  # sagittal: rows run along -z, columns along +y
    position = np.array([10.0, -20.0, 30.0])
    spacing = (2.0, 0.5)  # row spacing, column spacing
    rc = np.array([[0.0, 0.0], [1.0, 0.0], [0.0, 1.0], [3.0, 4.0]])
    lps = pixels_to_patient(rc, position, iop, spacing)
    np.testing.assert_allclose(lps[1], [10.0, -20.0, 28.0])  # one row down = 2 mm along -z
    np.testing.assert_allclose(lps[2], [10.0, -19.5, 30.0])  # one column right = 0.5 mm along +y
    back, off = patient_to_pixels(lps + [1.5, 0, 0], position, iop, spacing)
    np.testing.assert_allclose(back, rc)
    np.testing.assert_allclose(np.abs(off), 1.5)


def test_ds_values_fit_sixteen_characters():
    values = np.array([-123456789.987654, 0.004, -0.004, 1e-9, 512.3456, -99999.995])
    encoded = format_ds_values(values).decode()
    assert len(encoded) % 2 == 0
    tokens = encoded.strip().split("\\")
    assert all(len(t) <= 16 for t in tokens)
    assert tokens[1] == "0.00" and tokens[2] == "0.00"  # no "-0.00"
    np.testing.assert_allclose([float(t) for t in tokens], values, atol=0.0051)
    with pytest.raises(MedhubError):
        format_ds_values(np.array([np.nan]))
