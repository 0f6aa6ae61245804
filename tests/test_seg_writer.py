"""DICOM SEG and NIfTI writers on real sources: valid objects that read back voxel for voxel.

SourceGrids are built here from the headers (sorted by position along the slice normal), not
with medhub.inputs.load, so these tests check the writers alone.

LABELMAP: the dciodvfy installed here (dicom3tools 2022) predates the Label Map Segmentation
IOD (PS3.3 A.51.1, 2024). It says "Information Object Not found" and checks no module. So a
LABELMAP file is validated twice: as written (only that message and the segment-number-0 rule
of the old IOD may appear) and as a copy relabelled Segmentation Storage, where only the
documented LABELMAP differences (SegmentationType LABELMAP, background segment 0, no
per-frame Segment Identification) may appear. Every other module is fully checked.
"""

from __future__ import annotations

import re
from pathlib import Path

import highdicom as hd
import nibabel as nib
import numpy as np
import pydicom
import pytest
import SimpleITK as sitk
from conftest import dciodvfy_errors, shared_path
from pydicom.dataset import Dataset
from pydicom.sr.codedict import codes
from pydicom.uid import SegmentationStorage

from medhub.data.volume import SourceGrid, SourcePlane
from medhub.errors import MedhubError
from medhub.segdb import SegmentSpec, get_segment
from medhub.writers import EmptySegmentationError, write_nifti, write_seg
from medhub.writers.provenance import AlgorithmInfo, device_info

ALGORITHM = AlgorithmInfo(name="medhub test model", version="0.0.1", source="tests/test_seg_writer.py")

# What the 2022 dciodvfy reports for a correct LABELMAP SEG (see module docstring).
_LABELMAP_AS_WRITTEN = [
    r"^Error - Information Object Not found$",
    r"SegmentNumber not monotonically increasing from one by one .* SegmentNumber of 0$",
]
_LABELMAP_AS_BINARY_IOD = [
    *_LABELMAP_AS_WRITTEN,
    r"/SegmentationType\(0062,0001\)\[1\]> - Unrecognized enumerated value = <LABELMAP>$",
    r"^Error - </SegmentSequence\(0062,0002\)\[1\]/SegmentNumber\(0062,0004\)\[1\]> - Value is zero$",
    r"/SegmentIdentificationSequence\(0062,000a\)> - Missing attribute for Type 1 Required - "
    r"Module=<SegmentationMacro>$",
]


# --------------------------------------------------------------------------------------- helpers
def grid_from_files(paths: list[Path]) -> SourceGrid:
    """Single-frame instances sorted along the slice normal, as the loader will do."""
    headers = [pydicom.dcmread(p, stop_before_pixels=True) for p in paths]
    orientation = np.array(headers[0].ImageOrientationPatient, dtype=float)
    normal = np.cross(orientation[:3], orientation[3:])
    headers.sort(key=lambda h: float(normal @ np.array(h.ImagePositionPatient, dtype=float)))
    planes = [SourcePlane(h, None, np.array(h.ImagePositionPatient, dtype=float)) for h in headers]
    first = headers[0]
    return SourceGrid(planes, orientation, tuple(float(v) for v in first.PixelSpacing), first.Rows, first.Columns)


def grid_from_multiframe(dataset: Dataset, frames: list[int]) -> SourceGrid:
    """Some frames (1-based) of an enhanced image, sorted along the slice normal."""
    shared = dataset.SharedFunctionalGroupsSequence[0]

    def attribute(frame: int, sequence: str, keyword: str):
        item = dataset.PerFrameFunctionalGroupsSequence[frame - 1]
        for group in (item, shared):
            if sequence in group:
                return getattr(group[sequence].value[0], keyword)
        raise AssertionError(f"{keyword} missing")

    orientation = np.array(attribute(frames[0], "PlaneOrientationSequence", "ImageOrientationPatient"), dtype=float)
    normal = np.cross(orientation[:3], orientation[3:])
    position = {f: np.array(attribute(f, "PlanePositionSequence", "ImagePositionPatient"), dtype=float) for f in frames}
    ordered = sorted(frames, key=lambda f: float(normal @ position[f]))
    spacing = attribute(frames[0], "PixelMeasuresSequence", "PixelSpacing")
    planes = [SourcePlane(dataset, f, position[f]) for f in ordered]
    return SourceGrid(planes, orientation, (float(spacing[0]), float(spacing[1])), dataset.Rows, dataset.Columns)


def empty_labels(grid: SourceGrid, dtype=np.uint8) -> np.ndarray:
    return np.zeros((len(grid.planes), grid.rows, grid.columns), dtype=dtype)


def read_back(path: Path, grid: SourceGrid, segments: dict[int, SegmentSpec]) -> np.ndarray:
    """Decode the SEG with highdicom onto the source planes and map segments back to label values.

    Segments are matched by Tracking ID (the segment database ID), not by number, so this
    also checks that every written segment says which database entry it is.
    """
    seg = hd.seg.segread(path)
    by_id = {spec.id: value for value, spec in segments.items()}
    lut = np.zeros(max(seg.segment_numbers) + 1, dtype=np.int64)
    for number in seg.segment_numbers:
        lut[number] = by_id[seg.get_segment_description(number).TrackingID]
    if grid.planes[0].frame_number is None:
        uids = [p.dataset.SOPInstanceUID for p in grid.planes]
        numbers = seg.get_pixels_by_source_instance(uids, combine_segments=True)
    else:
        # A SEG references only the source frames it has voxels on; highdicom cannot tell a frame
        # number above the highest referenced one from a frame that does not exist, unless told
        # that frames without a SEG frame are empty (which is what an omitted frame means).
        numbers = seg.get_pixels_by_source_frame(
            grid.planes[0].dataset.SOPInstanceUID, [p.frame_number for p in grid.planes], combine_segments=True,
            assert_missing_frames_are_empty=True,
        )
    return lut[numbers]


def assert_frames_lie_on_their_source_planes(path: Path, grid: SourceGrid) -> None:
    """Each stored frame's position equals that of the source image/frame it references."""
    seg = pydicom.dcmread(path)
    position = {(p.dataset.SOPInstanceUID, p.frame_number or 1): p.position for p in grid.planes}
    for item in seg.PerFrameFunctionalGroupsSequence:
        ref = item.DerivationImageSequence[0].SourceImageSequence[0]
        key = (ref.ReferencedSOPInstanceUID, int(ref.get("ReferencedFrameNumber", 1)))
        np.testing.assert_allclose(
            np.array(item.PlanePositionSequence[0].ImagePositionPatient, dtype=float), position[key], atol=1e-3
        )


def _unexpected(errors: list[str], allowed: list[str]) -> list[str]:
    return [e for e in errors if not any(re.search(p, e) for p in allowed)]


def assert_valid_seg(path: Path, labelmap: bool, assert_valid_dicom, tmp_path: Path) -> None:
    if not labelmap:
        assert_valid_dicom(path)
        return
    unexpected = _unexpected(dciodvfy_errors(path), _LABELMAP_AS_WRITTEN)
    assert not unexpected, "dciodvfy on LABELMAP SEG:\n" + "\n".join(unexpected[:20])
    relabelled = pydicom.dcmread(path)
    relabelled.SOPClassUID = relabelled.file_meta.MediaStorageSOPClassUID = SegmentationStorage
    copy = tmp_path / f"{path.stem}_as_binary_iod.dcm"
    relabelled.save_as(copy)
    unexpected = _unexpected(dciodvfy_errors(copy), _LABELMAP_AS_BINARY_IOD)
    assert not unexpected, "dciodvfy on LABELMAP SEG checked as Segmentation IOD:\n" + "\n".join(unexpected[:20])


# ------------------------------------------------------------------------------ real CT, 140 slices
@pytest.fixture(scope="module")
def phantom_grid() -> SourceGrid:
    folder = shared_path("ct/philips_phantom_head_1mm")
    return grid_from_files(sorted(folder.iterdir()))


@pytest.mark.parametrize("labelmap", [False, True], ids=["binary", "labelmap"])
def test_phantom_head_three_segments_one_empty(phantom_grid, labelmap, tmp_path, assert_valid_dicom):
    grid = phantom_grid
    labels = empty_labels(grid)
    labels[30:110, 120:400, 100:420] = 1  # a block of "brain" over 80 slices
    labels[60:70, 200:260, 300:360] = 3  # a small "left hippocampus" inside it, 10 slices
    segments = {1: get_segment("BRAIN"), 2: get_segment("BONE"), 3: get_segment("LEFT_HIPPOCAMPUS")}

    path = write_seg(labels, grid, segments, ALGORITHM, tmp_path / "seg.dcm", labelmap=labelmap)

    assert_valid_seg(path, labelmap, assert_valid_dicom, tmp_path)
    np.testing.assert_array_equal(read_back(path, grid, segments), labels)
    assert_frames_lie_on_their_source_planes(path, grid)

    seg = hd.seg.segread(path)
    # BONE has no voxel: omitted; the others are numbered 1..2 in label order.
    assert seg.segment_numbers == [1, 2]
    assert [seg.get_segment_description(n).TrackingID for n in (1, 2)] == ["BRAIN", "LEFT_HIPPOCAMPUS"]
    # Empty frames omitted: BINARY stores one frame per (plane, segment) with voxels.
    assert seg.NumberOfFrames == (80 + 10 if not labelmap else 80)
    assert seg.SegmentationType == ("LABELMAP" if labelmap else "BINARY")
    assert seg.BitsAllocated == (8 if labelmap else 1)  # BINARY frames are bit-packed
    assert seg.SOPClassUID == ("1.2.840.10008.5.1.4.1.1.66.7" if labelmap else "1.2.840.10008.5.1.4.1.1.66.4")
    source = grid.planes[0].dataset
    assert seg.StudyInstanceUID == source.StudyInstanceUID
    assert seg.FrameOfReferenceUID == source.FrameOfReferenceUID
    assert seg.SeriesInstanceUID != source.SeriesInstanceUID
    assert (seg.SeriesNumber, seg.SeriesDescription) == (901, "medhub test model segmentation")
    device = device_info()
    assert (seg.Manufacturer, seg.ManufacturerModelName, seg.SoftwareVersions) == (
        device.manufacturer, device.manufacturer_model_name, device.software_versions,
    )  # fmt: skip

    hippocampus = seg.get_segment_description(2)
    assert hippocampus.SegmentLabel == "Left hippocampus"
    assert hippocampus.SegmentAlgorithmType == "AUTOMATIC"
    prop_type = hippocampus.SegmentedPropertyTypeCodeSequence[0]
    assert prop_type.CodeValue == codes.SCT.Hippocampus.value
    modifier = prop_type.SegmentedPropertyTypeModifierCodeSequence[0]
    assert (modifier.CodeValue, modifier.CodeMeaning) == (codes.SCT.Left.value, "Left")
    assert hippocampus.SegmentedPropertyCategoryCodeSequence[0].CodeMeaning == "Anatomical Structure"
    algorithm = hippocampus.SegmentationAlgorithmIdentificationSequence[0]
    assert (algorithm.AlgorithmName, algorithm.AlgorithmVersion) == ("medhub test model", "0.0.1")
    assert algorithm.AlgorithmFamilyCodeSequence[0].CodeValue == codes.cid7162.ArtificialIntelligence.value
    rgb = hd.color.CIELabColor.from_dicom_value(hippocampus.RecommendedDisplayCIELabValue).to_rgb()
    assert np.allclose(rgb, get_segment("LEFT_HIPPOCAMPUS").color, atol=2)


# ------------------------------------------------------------- small real CT series (highdicom, dcmqi)
@pytest.mark.parametrize("folder", ["seg/highdicom_source_ct_pydicom_CT2", "seg/dcmqi_segmentations/ct-3slice"])
@pytest.mark.parametrize("labelmap", [False, True], ids=["binary", "labelmap"])
def test_small_ct_series_with_sparse_label_values(folder, labelmap, tmp_path, assert_valid_dicom):
    """int64 labels with values 5 and 9 (as a model might return) are renumbered 1, 2."""
    grid = grid_from_files(sorted(p for p in shared_path(folder).iterdir() if p.is_file()))
    labels = empty_labels(grid, dtype=np.int64)
    rows, cols = grid.rows, grid.columns
    labels[0, rows // 4 : rows // 2, cols // 4 : cols // 2] = 5
    labels[-1, rows // 2 :, cols // 2 :] = 9
    labels[-1, 0, 0] = 5  # one voxel: the smallest possible segment survives
    segments = {5: get_segment("LIVER"), 9: get_segment("RIGHT_KIDNEY")}

    path = write_seg(labels, grid, segments, ALGORITHM, tmp_path / "seg.dcm", labelmap=labelmap)

    assert_valid_seg(path, labelmap, assert_valid_dicom, tmp_path)
    np.testing.assert_array_equal(read_back(path, grid, segments), labels)
    assert_frames_lie_on_their_source_planes(path, grid)
    assert hd.seg.segread(path).segment_numbers == [1, 2]


def test_implicit_vr_philips_ct_with_private_tags(tmp_path, assert_valid_dicom):
    """Real Philips slices in Implicit VR (as modalities send over DIMSE): private (01F1,1026) holds DS text
    where pydicom's private dictionary says FD; the SEG leaves private elements out instead of failing."""
    from pydicom.uid import ImplicitVRLittleEndian

    files = []
    for path in sorted(shared_path("ct/philips_phantom_head_1mm").iterdir())[:3]:
        dataset = pydicom.dcmread(path)
        dataset.file_meta.TransferSyntaxUID = ImplicitVRLittleEndian
        dataset.save_as(tmp_path / path.name, enforce_file_format=True)
        files.append(tmp_path / path.name)
    grid = grid_from_files(files)
    labels = empty_labels(grid)
    labels[:, 200:300, 200:300] = 1
    path = write_seg(labels, grid, {1: get_segment("BODY")}, ALGORITHM, tmp_path / "seg.dcm")
    assert_valid_dicom(path)
    assert not [element for element in pydicom.dcmread(path) if element.tag.is_private]


# ------------------------------------------------------------------------- enhanced (multi-frame)
@pytest.mark.parametrize("labelmap", [False, True], ids=["binary", "labelmap"])
def test_enhanced_ct_frames_in_reverse_slice_order(labelmap, tmp_path, assert_valid_dicom):
    """eCT_Supplemental stores frame 1 above frame 2: plane order differs from frame order."""
    dataset = pydicom.dcmread(shared_path("enhanced/pydicom_data/eCT_Supplemental.dcm"))
    grid = grid_from_multiframe(dataset, [1, 2])
    assert [p.frame_number for p in grid.planes] == [2, 1]
    labels = empty_labels(grid)
    labels[0, 100:200, 150:300] = 1  # on frame 2 only
    labels[1, 300:350, 300:400] = 2  # on frame 1 only
    segments = {1: get_segment("BODY"), 2: get_segment("LUNG")}

    path = write_seg(labels, grid, segments, ALGORITHM, tmp_path / "seg.dcm", labelmap=labelmap)

    assert_valid_seg(path, labelmap, assert_valid_dicom, tmp_path)
    np.testing.assert_array_equal(read_back(path, grid, segments), labels)
    assert_frames_lie_on_their_source_planes(path, grid)


@pytest.mark.parametrize("labelmap", [False, True], ids=["binary", "labelmap"])
def test_enhanced_mr_using_one_of_two_stacks(labelmap, tmp_path, assert_valid_dicom):
    """Philips field map: 64 frames = 32 positions x (magnitude, field map); the grid uses magnitude."""
    dataset = pydicom.dcmread(shared_path("enhanced/dcm_qa_enh/Philips/IM_0027_fMAP.dcm"))
    magnitude = [
        i + 1
        for i, item in enumerate(dataset.PerFrameFunctionalGroupsSequence)
        if item.MRImageFrameTypeSequence[0].FrameType[3] == "M"
    ]
    assert len(magnitude) == 32
    grid = grid_from_multiframe(dataset, magnitude)
    labels = empty_labels(grid)
    labels[5:25, 16:48, 10:50] = 1
    labels[12:14, 20:30, 20:30] = 2
    segments = {1: get_segment("BRAIN"), 2: get_segment("RIGHT_PUTAMEN")}

    path = write_seg(labels, grid, segments, ALGORITHM, tmp_path / "seg.dcm", labelmap=labelmap)

    assert_valid_seg(path, labelmap, assert_valid_dicom, tmp_path)
    np.testing.assert_array_equal(read_back(path, grid, segments), labels)
    assert_frames_lie_on_their_source_planes(path, grid)
    referenced = {
        int(item.DerivationImageSequence[0].SourceImageSequence[0].ReferencedFrameNumber)
        for item in pydicom.dcmread(path).PerFrameFunctionalGroupsSequence
    }
    assert referenced <= set(magnitude)


def test_enhanced_mr_without_functional_groups_is_refused(tmp_path):
    """emri_small.dcm has no per-frame plane positions: no geometry to write a SEG on."""
    dataset = pydicom.dcmread(shared_path("enhanced/pydicom_data/emri_small.dcm"))
    planes = [SourcePlane(dataset, f, np.array([0.0, 0.0, float(f)])) for f in range(1, 11)]
    grid = SourceGrid(planes, np.array([1.0, 0, 0, 0, 1, 0]), (1.0, 1.0), dataset.Rows, dataset.Columns)
    labels = empty_labels(grid)
    labels[:, 10:20, 10:20] = 1
    with pytest.raises(MedhubError, match=r"^SEG seg\.dcm for series .*no per-frame functional groups"):
        write_seg(labels, grid, {1: get_segment("BRAIN")}, ALGORITHM, tmp_path / "seg.dcm")
    assert not (tmp_path / "seg.dcm").exists()


# ------------------------------------------------------------------------------- bad input
@pytest.fixture(scope="module")
def ct2_grid() -> SourceGrid:
    return grid_from_files(sorted(shared_path("seg/highdicom_source_ct_pydicom_CT2").iterdir()))


def test_empty_label_map_raises_and_writes_nothing(ct2_grid, tmp_path):
    with pytest.raises(EmptySegmentationError, match="label map is empty"):
        write_seg(empty_labels(ct2_grid), ct2_grid, {1: get_segment("BRAIN")}, ALGORITHM, tmp_path / "s.dcm")
    assert not (tmp_path / "s.dcm").exists()


def test_undescribed_label_value_raises(ct2_grid, tmp_path):
    labels = empty_labels(ct2_grid)
    labels[0, :5, :5] = 1
    labels[1, :5, :5] = 7
    with pytest.raises(MedhubError, match=r"label values \[7\] have voxels but no segment description"):
        write_seg(labels, ct2_grid, {1: "BRAIN"}, ALGORITHM, tmp_path / "s.dcm")


def test_segment_ids_are_resolved_from_the_database(ct2_grid, tmp_path):
    labels = empty_labels(ct2_grid)
    labels[2, 3:9, 3:9] = 1
    path = write_seg(labels, ct2_grid, {1: "LEFT_LUNG"}, ALGORITHM, tmp_path / "s.dcm")
    assert hd.seg.segread(path).get_segment_description(1).SegmentLabel == "Left lung"
    with pytest.raises(MedhubError, match="unknown segment ID 'NOT_A_SEGMENT'"):
        write_seg(labels, ct2_grid, {1: "NOT_A_SEGMENT"}, ALGORITHM, tmp_path / "t.dcm")


@pytest.mark.parametrize(
    ("mutate", "message"),
    [
        (lambda labels: labels[:, :-1], r"label map shape .* does not match the source planes"),
        (lambda labels: labels.astype(np.float32), "must hold integers"),
        (lambda labels: labels.astype(np.int32) - 1, r"label values must lie in 0\.\.65535"),
    ],
)
def test_bad_label_maps_raise(ct2_grid, tmp_path, mutate, message):
    labels = empty_labels(ct2_grid)
    labels[0, :5, :5] = 1
    with pytest.raises(MedhubError, match=message):
        write_seg(mutate(labels), ct2_grid, {1: "BRAIN"}, ALGORITHM, tmp_path / "s.dcm")


def test_unreferenceable_source_raises_with_its_reason(ct2_grid, tmp_path):
    grid = SourceGrid(
        ct2_grid.planes, ct2_grid.orientation, ct2_grid.pixel_spacing, ct2_grid.rows, ct2_grid.columns,
        referenceable=False, unreferenceable_reason="SOP Instance UIDs are empty",
    )  # fmt: skip
    labels = empty_labels(grid)
    labels[0, :5, :5] = 1
    with pytest.raises(MedhubError, match="cannot reference the source images: SOP Instance UIDs are empty"):
        write_seg(labels, grid, {1: "BRAIN"}, ALGORITHM, tmp_path / "s.dcm")


def test_boolean_mask_and_algorithm_parameters(ct2_grid, tmp_path, assert_valid_dicom):
    mask = np.zeros((len(ct2_grid.planes), ct2_grid.rows, ct2_grid.columns), dtype=bool)
    mask[1:3, 4:10, 6:12] = True  # CT2 images are 16 x 16
    algorithm = AlgorithmInfo(name="deepbet", version="1.0.2", parameters={"threshold": "0.5"})
    path = write_seg(mask, ct2_grid, {1: "BRAIN"}, algorithm, tmp_path / "s.dcm", series_number=42,
                     series_description="Brain mask")  # fmt: skip
    assert_valid_dicom(path)
    np.testing.assert_array_equal(read_back(path, ct2_grid, {1: get_segment("BRAIN")}), mask)
    seg = pydicom.dcmread(path)
    assert (seg.SeriesNumber, seg.SeriesDescription, seg.ContentLabel) == (42, "Brain mask", "DEEPBET")
    item = seg.SegmentSequence[0].SegmentationAlgorithmIdentificationSequence[0]
    assert item.AlgorithmParameters == "threshold=0.5"


# -------------------------------------------------------------------------------------- NIfTI
def _lps_affine() -> np.ndarray:
    """An oblique LPS affine with unequal spacing, so any axis or sign mix-up shows."""
    angle = np.deg2rad(20)
    rotation = np.array([[np.cos(angle), -np.sin(angle), 0], [np.sin(angle), np.cos(angle), 0], [0, 0, 1]])
    affine = np.eye(4)
    affine[:3, :3] = rotation @ np.diag([0.8, 0.9, 2.5])
    affine[:3, 3] = [-120.0, -95.5, 33.0]
    return affine


@pytest.mark.parametrize("suffix", [".nii", ".nii.gz"])
def test_nifti_label_map_geometry_and_dtype(tmp_path, suffix):
    labels = np.zeros((7, 6, 5), dtype=np.int64)
    labels[1:3, 2:5, 0:4] = 3
    labels[6, 5, 4] = 200
    affine = _lps_affine()

    path = write_nifti(labels, affine, tmp_path / f"labels{suffix}")

    image = nib.load(path)
    assert image.get_data_dtype() == np.uint8
    np.testing.assert_array_equal(np.asarray(image.dataobj), labels)
    np.testing.assert_allclose(image.affine, np.diag([-1, -1, 1, 1]) @ affine, atol=1e-5)
    assert image.header["sform_code"] == 1 and image.header["qform_code"] == 1
    assert (path.read_bytes()[:2] == b"\x1f\x8b") == (suffix == ".nii.gz")
    # Independent check with ITK, which reports geometry in LPS like DICOM does.
    itk = sitk.ReadImage(str(path))
    np.testing.assert_allclose(itk.GetOrigin(), affine[:3, 3], atol=1e-4)
    np.testing.assert_allclose(itk.GetSpacing(), [0.8, 0.9, 2.5], atol=1e-5)
    direction = np.array(itk.GetDirection()).reshape(3, 3)
    np.testing.assert_allclose(direction, affine[:3, :3] / [0.8, 0.9, 2.5], atol=1e-5)
    # voxel (x=6, y=5, z=4) holds 200 in ITK's (x, y, z) indexing too
    assert itk.GetPixel(6, 5, 4) == 200


def test_nifti_keeps_intensities_and_widens_large_labels(tmp_path):
    ct = np.arange(24, dtype=np.int16).reshape(2, 3, 4) - 1000
    path = write_nifti(ct, np.diag([0.5, 0.5, 1.0, 1.0]), tmp_path / "ct.nii")
    assert nib.load(path).get_data_dtype() == np.int16
    np.testing.assert_array_equal(np.asarray(nib.load(path).dataobj), ct)
    big = np.array([[[0, 300]]], dtype=np.int32)
    assert nib.load(write_nifti(big, np.eye(4), tmp_path / "big.nii")).get_data_dtype() == np.uint16


@pytest.mark.parametrize(
    ("name", "affine", "message"),
    [
        ("x.nrrd", np.eye(4), r"must end in \.nii or \.nii\.gz"),
        ("x.nii", np.zeros((4, 4)), "singular"),
        ("x.nii", np.eye(3), "finite 4x4"),
    ],
)
def test_nifti_bad_input(tmp_path, name, affine, message):
    with pytest.raises(MedhubError, match=message):
        write_nifti(np.zeros((2, 2, 2), dtype=np.uint8), affine, tmp_path / name)
