"""The direct BINARY SEG encoder (medhub.writers.seg_binary) against highdicom, dciodvfy and the loader.

highdicom's ``Segmentation()`` is the reference: on real single-frame and enhanced multi-frame
sources both writers get the same label map, and their objects must say the same thing (every
attribute, and every frame's segment, source reference, position and pixels), apart from the
documented differences (UIDs, times, highdicom's own Contributing Equipment item and Dimension
Organization Type). Then every geometry the loader produces (tilted gantry resampled and brought
back, uneven spacing, enhanced multi-frame MR, odd frame sizes, empty segments) is written through
``write_seg`` from a real scan + load, validated with dciodvfy and read back with highdicom voxel for
voxel.
"""

from __future__ import annotations

import json
from pathlib import Path

import highdicom as hd
import numpy as np
import pydicom
import pytest
from conftest import shared_path
from pydicom.sr.codedict import codes
from pydicom.uid import generate_uid
from test_seg_writer import grid_from_files

from medhub.data.geometry import labels_to_source
from medhub.data.volume import SourceGrid, Volume
from medhub.errors import MedhubError
from medhub.inputs.load import load_series
from medhub.inputs.scan import scan
from medhub.inputs.synth import write_dicom_series
from medhub.segdb import get_segment, load_segment_database
from medhub.writers import write_seg
from medhub.writers.provenance import ARTIFICIAL_INTELLIGENCE, AlgorithmInfo, device_info
from medhub.writers.seg_binary import COPIED_FROM_SOURCE, cielab_from_rgb
from medhub.writers.source_attributes import DEFINED_CHARACTER_SETS

ALGORITHM = AlgorithmInfo(name="medhub test model", version="0.0.1", source="tests/test_seg_binary.py",
                          parameters={"threshold": "0.5", "fold": "all"})  # fmt: skip
D2N = "edge/dicom2nifti_tests"


# --------------------------------------------------------------------------------------- helpers
def load(folder: str, *, frame_of_reference: bool = False) -> Volume:
    """The image series of a real folder, scanned and loaded as ``medhub run`` does.

    ``frame_of_reference``: dicom2nifti's test files were stripped of their Frame of Reference
    UID, so no SEG can be made of them as they are (see test_stripped_frame_of_reference...); to
    test their geometry, the headers get one in memory (the files are not touched).
    """
    result = scan(shared_path(folder))
    images = [s for s in result.series if s.modality != "SEG"]
    assert len(images) == 1, [s.description for s in result.series]
    if frame_of_reference:
        uid = generate_uid()
        for instance in images[0].instances:
            assert "FrameOfReferenceUID" not in instance.header
            instance.header.FrameOfReferenceUID = uid
    return load_series(images[0])


def blobs(volume: Volume, values: list[int], seed: int = 0) -> np.ndarray:
    """Label map on the volume grid: an ellipsoid per value, at different places (overlaps: later wins)."""
    rng = np.random.default_rng(seed)
    shape = np.array(volume.shape[:3])
    axes = np.ogrid[: shape[0], : shape[1], : shape[2]]
    labels = np.zeros(volume.shape[:3], dtype=np.uint8)
    for value in values:
        centre = rng.uniform(0.25, 0.75, 3) * (shape - 1)
        radius = np.maximum(rng.uniform(0.12, 0.3) * shape, 1.0)
        inside = sum(((axis - c) / r) ** 2 for axis, c, r in zip(axes, centre, radius, strict=True)) <= 1
        labels[inside] = value
    return labels


def read_back(path: Path, grid: SourceGrid, segments: dict[int, str]) -> np.ndarray:
    """Decode with highdicom onto the source planes; map segments to label values by Tracking ID."""
    seg = hd.seg.segread(path)
    by_id = {segment_id: value for value, segment_id in segments.items()}
    lut = np.zeros(max(seg.segment_numbers) + 1, dtype=np.int64)
    for number in seg.segment_numbers:
        lut[number] = by_id[seg.get_segment_description(number).TrackingID]
    if grid.planes[0].frame_number is None:
        numbers = seg.get_pixels_by_source_instance([p.dataset.SOPInstanceUID for p in grid.planes],
                                                    combine_segments=True)  # fmt: skip
    else:
        numbers = seg.get_pixels_by_source_frame(
            grid.planes[0].dataset.SOPInstanceUID, [p.frame_number for p in grid.planes], combine_segments=True,
            assert_missing_frames_are_empty=True,  # frames without voxels are omitted from the SEG
        )
    return lut[numbers]


def write_and_check(planes: np.ndarray, grid: SourceGrid, segments: dict[int, str], path: Path,
                    assert_valid_dicom) -> pydicom.Dataset:  # fmt: skip
    write_seg(planes, grid, segments, ALGORITHM, path)
    assert_valid_dicom(path)
    expected = np.where(np.isin(planes, list(segments)), planes, 0)
    np.testing.assert_array_equal(read_back(path, grid, segments), expected)
    seg = pydicom.dcmread(path)
    for item in seg.PerFrameFunctionalGroupsSequence:  # each frame lies on the plane it references
        ref = item.DerivationImageSequence[0].SourceImageSequence[0]
        plane = next(p for p in grid.planes if p.dataset.SOPInstanceUID == ref.ReferencedSOPInstanceUID
                     and (p.frame_number or 1) == int(ref.get("ReferencedFrameNumber", 1)))  # fmt: skip
        np.testing.assert_allclose(np.array(item.PlanePositionSequence[0].ImagePositionPatient, float),
                                   plane.position, atol=1e-3)  # fmt: skip
    return seg


# ------------------------------------------------------------------- same content as highdicom
def highdicom_seg(planes: np.ndarray, grid: SourceGrid, segments: dict[int, str]) -> hd.seg.Segmentation:
    """highdicom's BINARY SEG of the same label map, the way medhub called it before the direct encoder."""
    values = sorted(int(v) for v in np.unique(planes) if v in segments)
    numbered = np.zeros(planes.shape, dtype=np.uint8)
    for number, value in enumerate(values, start=1):
        numbered[planes == value] = number
    descriptions = []
    for number, value in enumerate(values, start=1):
        spec = get_segment(segments[value])
        description = hd.seg.SegmentDescription(
            segment_number=number, segment_label=spec.name,
            segmented_property_category=hd.sr.CodedConcept(spec.category.value, spec.category.scheme,
                                                           spec.category.meaning),
            segmented_property_type=hd.sr.CodedConcept(spec.type.value, spec.type.scheme, spec.type.meaning),
            algorithm_type=hd.seg.SegmentAlgorithmTypeValues.AUTOMATIC,
            algorithm_identification=ALGORITHM.identification(), tracking_id=spec.id, tracking_uid=hd.UID(),
            display_color=hd.color.CIELabColor.from_rgb(*spec.color),
        )  # fmt: skip
        if spec.modifier is not None:
            modifier = hd.sr.CodedConcept(spec.modifier.value, spec.modifier.scheme, spec.modifier.meaning)
            description.SegmentedPropertyTypeCodeSequence[0].SegmentedPropertyTypeModifierCodeSequence = [modifier]
        descriptions.append(description)
    if grid.planes[0].frame_number is None:
        sources, positions = [p.dataset for p in grid.planes], None
    else:
        sources = [grid.planes[0].dataset]
        positions = [hd.PlanePositionSequence("PATIENT", [float(v) for v in p.position]) for p in grid.planes]
    charset = {} if sources[0].get("SpecificCharacterSet") else {"specific_character_set": None}  # '' = default
    return hd.seg.Segmentation(
        **charset, source_images=sources, pixel_array=numbered, plane_positions=positions, segmentation_type="BINARY",
        segment_descriptions=descriptions, series_instance_uid=hd.UID(), series_number=901,
        sop_instance_uid=hd.UID(), instance_number=1, omit_empty_frames=True,
        series_description=f"{ALGORITHM.name} segmentation", content_label="MEDHUB TEST MODE",
        content_description=f"{ALGORITHM.name} {ALGORITHM.version}", **device_info().as_highdicom_kwargs(),
    )  # fmt: skip


# Attributes that differ by design: new UIDs and times, highdicom's own library entry in
# Contributing Equipment, and Dimension Organization Type (Type 3, highdicom only).
_DIFFERENT_BY_DESIGN = {"SOPInstanceUID", "SeriesInstanceUID", "InstanceCreationDate", "InstanceCreationTime",
                        "ContentDate", "ContentTime", "DimensionOrganizationType"}  # fmt: skip
_UID_KEYWORDS = {"DimensionOrganizationUID", "TrackingUID"}


def _plain(value: object) -> object:
    """A comparable form of a DICOM value: numbers as floats, sequences recursively, UIDs blanked."""
    if isinstance(value, pydicom.Sequence | list) and value and isinstance(value[0], pydicom.Dataset):
        return [{e.keyword: ("<uid>" if e.keyword in _UID_KEYWORDS else _plain(e.value)) for e in item}
                for item in value]  # fmt: skip
    if isinstance(value, pydicom.multival.MultiValue | list | tuple):
        return [_plain(v) for v in value]
    if isinstance(value, pydicom.valuerep.DSfloat | pydicom.valuerep.IS | float | int):
        return round(float(value), 4)
    return str(value)


def frames_of(ds: pydicom.Dataset) -> dict[tuple[int, str, int], tuple[list[float], bytes]]:
    """(segment, referenced SOP instance, referenced frame) → (position, packed pixels of the frame)."""
    pixels = ds.pixel_array.reshape(int(ds.NumberOfFrames), ds.Rows, ds.Columns)
    shared = ds.SharedFunctionalGroupsSequence[0]
    out = {}
    for index, item in enumerate(ds.PerFrameFunctionalGroupsSequence):
        ident = item if "SegmentIdentificationSequence" in item else shared
        number = int(ident.SegmentIdentificationSequence[0].ReferencedSegmentNumber)
        position = [round(float(v), 4) for v in item.PlanePositionSequence[0].ImagePositionPatient]
        for ref in item.DerivationImageSequence[0].SourceImageSequence:
            key = (number, ref.ReferencedSOPInstanceUID, int(ref.get("ReferencedFrameNumber", 0)))
            out[key] = (position, np.packbits(pixels[index]).tobytes())
    return out


ORACLE_CASES = ["seg/highdicom_source_ct_pydicom_CT2", "seg/dcmqi_segmentations/ct-3slice",
                "seg/dcmqi_segmentations/23x38x3/image", "seg/dcmqi_segmentations/23x38x3/multiframe",
                "ct/philips_phantom_head_1mm", "enhanced/pydicom_data/eCT_Supplemental.dcm"]  # fmt: skip


@pytest.mark.parametrize("folder", ORACLE_CASES)
def test_same_content_as_highdicom(folder: str, tmp_path: Path, assert_valid_dicom) -> None:
    segments = {1: "LIVER", 2: "LEFT_KIDNEY", 4: "SPLEEN", 7: "BRAIN"}  # 7 has no voxel: no segment
    if folder.endswith("CT2"):  # two pairs of slices 200 mm apart: a SEG source, not a loadable volume
        grid = grid_from_files(sorted(shared_path(folder).iterdir()))
        planes = np.zeros((len(grid.planes), grid.rows, grid.columns), np.uint8)
        planes[0, 2:9, 3:12], planes[1, 4:8, 4:8], planes[3, 0, 0], planes[3, 5:, 5:] = 1, 2, 4, 1
    else:
        volume = load(folder)
        grid = volume.source
        planes = labels_to_source(volume, blobs(volume, [1, 2, 4]))
    assert grid is not None
    ours = write_and_check(planes, grid, segments, tmp_path / "ours.dcm", assert_valid_dicom)
    theirs = highdicom_seg(planes, grid, segments)

    mine = {e.keyword: e for e in ours if e.keyword not in _DIFFERENT_BY_DESIGN}
    reference = {e.keyword: e for e in theirs if e.keyword not in _DIFFERENT_BY_DESIGN}
    assert set(mine) - {"PerFrameFunctionalGroupsSequence"} == set(reference) - {"PerFrameFunctionalGroupsSequence"}
    for keyword in sorted(set(mine) - {"PerFrameFunctionalGroupsSequence", "PixelData", "ContributingEquipmentSequence",
                                       "SharedFunctionalGroupsSequence"}):  # fmt: skip
        assert _plain(mine[keyword].value) == _plain(reference[keyword].value), keyword
    # highdicom lists the scanner, then itself (medhub is this object's Manufacturer). medhub also
    # dates the scanner's contribution from Acquisition Date and Time, which highdicom takes only
    # from datetime values (pydicom reads them as text).
    scanner = pydicom.Dataset()
    scanner.update(ours.ContributingEquipmentSequence[0])
    source = grid.planes[0].dataset
    if "AcquisitionDateTime" not in source and source.get("AcquisitionDate") and source.get("AcquisitionTime"):
        assert scanner.ContributionDateTime == source.AcquisitionDate + source.AcquisitionTime
        del scanner.ContributionDateTime
    assert _plain([scanner]) == _plain(theirs.ContributingEquipmentSequence[:1])
    ours_shared, theirs_shared = ours.SharedFunctionalGroupsSequence[0], theirs.SharedFunctionalGroupsSequence[0]
    assert _plain([ours_shared]) == _plain([theirs_shared])
    assert ours.NumberOfFrames == theirs.NumberOfFrames
    assert frames_of(ours) == frames_of(theirs)


# ------------------------------------------------------------------- every geometry of the loader
def test_tilted_gantry_resampled_and_back(tmp_path: Path, assert_valid_dicom) -> None:
    """GE head CT with gantry tilt: the model sees a resampled grid, the SEG lies on the tilted planes."""
    volume = load(f"{D2N}/failing/gantrytilting/001", frame_of_reference=True)
    assert volume.source is not None and volume.source.resampled
    planes = labels_to_source(volume, blobs(volume, [1, 3], seed=1))
    assert set(np.unique(planes)) == {0, 1, 3}
    # LIVER (2) is described but has no voxel: an empty segment is left out, the others keep numbers 1..2
    seg = write_and_check(planes, volume.source, {1: "BRAIN", 2: "LIVER", 3: "BONE"}, tmp_path / "tilt.dcm",
                          assert_valid_dicom)  # fmt: skip
    assert [(s.SegmentNumber, s.TrackingID) for s in seg.SegmentSequence] == [(1, "BRAIN"), (2, "BONE")]
    measures = seg.SharedFunctionalGroupsSequence[0].PixelMeasuresSequence[0]
    # planes off the slice normal have no single spacing: none is claimed
    assert "SpacingBetweenSlices" not in measures
    # these files give no Slice Thickness (Type 2 in CT); the SEG's (Type 1C) is the planes' spacing
    positions = np.array([p.position for p in volume.source.planes])
    normal = np.cross(volume.source.orientation[:3], volume.source.orientation[3:])
    assert float(measures.SliceThickness) == pytest.approx(np.diff(np.sort(positions @ normal)).mean(), rel=1e-4)
    # the scanner export's Patient's Age "0Y" is not a valid AS: left out rather than copied
    assert volume.source.planes[0].dataset.PatientAge == "0Y" and "PatientAge" not in seg


def test_uneven_spacing_resampled_and_back(tmp_path: Path, assert_valid_dicom) -> None:
    """Slices at z = 0, 1, 2, 5.5, 9 mm: the model sees a regular 1 mm grid, the SEG the five real planes."""
    write_dicom_series(np.zeros((24, 16, 5), np.int16), np.diag([0.8, 0.8, 1.0, 1.0]), tmp_path / "src", modality="CT")
    for path, z in zip(sorted((tmp_path / "src").iterdir()), [0.0, 1.0, 2.0, 5.5, 9.0], strict=True):
        dataset = pydicom.dcmread(path)
        dataset.ImagePositionPatient = [0.0, 0.0, z]
        dataset.save_as(path)
    volume = load_series(scan(tmp_path / "src").series[0])
    assert volume.source is not None and volume.source.resampled and volume.shape[2] == 10
    planes = labels_to_source(volume, blobs(volume, [2, 6], seed=2))
    assert planes.shape == (5, 16, 24) and set(np.unique(planes)) == {0, 2, 6}
    seg = write_and_check(planes, volume.source, {2: "LIVER", 4: "STOMACH", 6: "SPLEEN"}, tmp_path / "uneven.dcm",
                          assert_valid_dicom)  # fmt: skip
    assert [s.TrackingID for s in seg.SegmentSequence] == ["LIVER", "SPLEEN"]  # STOMACH (4) is empty: left out
    assert "SpacingBetweenSlices" not in seg.SharedFunctionalGroupsSequence[0].PixelMeasuresSequence[0]


@pytest.mark.parametrize("folder", [f"{D2N}/philips_enhanced/anatomical/001",
                                    f"{D2N}/siemens_multiframe/anatomical/001"])  # fmt: skip
def test_enhanced_multiframe_sources(folder: str, tmp_path: Path, assert_valid_dicom) -> None:
    """Enhanced MR (per-frame geometry, Philips and Siemens): each frame references its source frame."""
    volume = load(folder, frame_of_reference=folder.startswith(D2N))
    grid = volume.source
    assert grid is not None and all(p.frame_number is not None for p in grid.planes)
    planes = labels_to_source(volume, blobs(volume, [1, 2], seed=3))
    # LIVER (4) is described but has no voxel: no segment, no frame
    seg = write_and_check(planes, grid, {1: "BRAIN", 2: "RIGHT_PUTAMEN", 4: "LIVER"}, tmp_path / "mf.dcm",
                          assert_valid_dicom)  # fmt: skip
    assert [s.TrackingID for s in seg.SegmentSequence] == ["BRAIN", "RIGHT_PUTAMEN"]
    referenced = {int(item.DerivationImageSequence[0].SourceImageSequence[0].ReferencedFrameNumber)
                  for item in seg.PerFrameFunctionalGroupsSequence}  # fmt: skip
    assert referenced <= {p.frame_number for p in grid.planes}
    assert [i.ReferencedSOPInstanceUID for i in seg.SourceImageSequence] == [grid.planes[0].dataset.SOPInstanceUID]


@pytest.mark.parametrize("shape", [(13, 9, 5), (7, 16, 3)], ids=["odd-frames", "rows-not-multiple-of-8"])
def test_frame_sizes_not_multiple_of_8_share_bytes(shape, tmp_path: Path, assert_valid_dicom) -> None:
    """1-bit frames of 13x9 pixels run on into the next frame's byte (PS3.5 8.1.1), as highdicom packs them."""
    columns, rows, slices = shape
    write_dicom_series(np.zeros(shape, np.int16), np.diag([0.7, 0.8, 2.0, 1.0]), tmp_path / "src", modality="CT")
    volume = load_series(scan(tmp_path / "src").series[0])
    labels = blobs(volume, [1, 2, 3], seed=4)
    planes = labels_to_source(volume, labels)
    assert planes.shape == (slices, rows, columns)
    ours = write_and_check(planes, volume.source, {1: "LIVER", 2: "SPLEEN", 3: "STOMACH"}, tmp_path / "s.dcm",
                           assert_valid_dicom)  # fmt: skip
    assert frames_of(ours) == frames_of(highdicom_seg(planes, volume.source, {1: "LIVER", 2: "SPLEEN", 3: "STOMACH"}))


def test_one_segment_is_identified_in_the_shared_groups(tmp_path: Path, assert_valid_dicom) -> None:
    volume = load("seg/dcmqi_segmentations/ct-3slice")
    planes = labels_to_source(volume, blobs(volume, [5], seed=5))
    seg = write_and_check(planes, volume.source, {5: "BRAIN"}, tmp_path / "one.dcm", assert_valid_dicom)
    assert seg.SharedFunctionalGroupsSequence[0].SegmentIdentificationSequence[0].ReferencedSegmentNumber == 1
    assert all("SegmentIdentificationSequence" not in item for item in seg.PerFrameFunctionalGroupsSequence)


def test_boolean_mask_and_int64_labels(tmp_path: Path, assert_valid_dicom) -> None:
    volume = load("seg/dcmqi_segmentations/ct-3slice")
    mask = labels_to_source(volume, blobs(volume, [1], seed=6)).astype(bool)
    write_and_check(mask, volume.source, {1: "BRAIN"}, tmp_path / "b.dcm", assert_valid_dicom)
    wide = labels_to_source(volume, blobs(volume, [3, 9], seed=7)).astype(np.int64) * 1000
    write_and_check(wide, volume.source, {3000: "LIVER", 9000: "SPLEEN"}, tmp_path / "w.dcm", assert_valid_dicom)


@pytest.mark.parametrize(("folder", "missing"), [("ct/totalsegmentator_example_ct_dicom", "StudyInstanceUID"),
                                               (f"{D2N}/failing/gantrytilting/001", "FrameOfReferenceUID")])
def test_source_without_uids_is_refused(folder: str, missing: str, tmp_path: Path) -> None:
    """Empty UIDs (TotalSegmentator's example CT) or no Frame of Reference (dicom2nifti's stripped
    files): no SEG can reference them; the reason is said and no file is left."""
    volume = load(folder)
    assert volume.source is not None and not volume.source.referenceable
    planes = labels_to_source(volume, blobs(volume, [1], seed=8))
    with pytest.raises(MedhubError, match=rf"^SEG s\.dcm for series .*cannot reference the source images: .*{missing}"):
        write_seg(planes, volume.source, {1: "LIVER"}, ALGORITHM, tmp_path / "s.dcm")
    assert not (tmp_path / "s.dcm").exists()


def test_source_without_frame_of_reference_is_refused(tmp_path: Path) -> None:
    volume = load("seg/dcmqi_segmentations/ct-3slice")
    for plane in volume.source.planes:
        del plane.dataset.FrameOfReferenceUID
    planes = labels_to_source(volume, blobs(volume, [1], seed=9))
    with pytest.raises(MedhubError, match="no Frame of Reference UID"):
        write_seg(planes, volume.source, {1: "LIVER"}, ALGORITHM, tmp_path / "s.dcm")
    assert not (tmp_path / "s.dcm").exists()


# ------------------------------------------------------------------- the tables the encoder carries
def test_copied_modules_are_the_standards_patient_and_study_modules() -> None:
    """The keyword lists equal highdicom's tables of PS3.3 for the Patient and Study entities."""
    from highdicom._standard_utils import get_iod_module_map, get_module_attribute_map, get_sop_class_iod_map

    iod = get_sop_class_iod_map()["1.2.840.10008.5.1.4.1.1.66.4"]
    modules = [m["key"] for m in get_iod_module_map()[iod] if m["ie"] in ("Patient", "Study")]
    table = get_module_attribute_map()
    expected = [item["keyword"] for module in modules for item in table[module] if not item["path"]]
    assert sorted(COPIED_FROM_SOURCE) == sorted(expected)


def test_character_set_terms_are_highdicoms() -> None:
    assert {v.value for v in hd.SpecificCharacterSetValues} == DEFINED_CHARACTER_SETS


def test_segment_colours_as_highdicom_converts_them() -> None:
    for spec in load_segment_database().values():
        theirs = hd.color.CIELabColor.from_rgb(*spec.color).value
        assert np.abs(np.array(cielab_from_rgb(spec.color)) - np.array(theirs)).max() <= 1, spec.id


def test_algorithm_identification_without_highdicom_equals_highdicoms() -> None:
    assert (ARTIFICIAL_INTELLIGENCE.value, ARTIFICIAL_INTELLIGENCE.scheme, ARTIFICIAL_INTELLIGENCE.meaning) == (
        codes.cid7162.ArtificialIntelligence.value, codes.cid7162.ArtificialIntelligence.scheme_designator,
        codes.cid7162.ArtificialIntelligence.meaning)  # fmt: skip
    ours, theirs = ALGORITHM.identification_item(), ALGORITHM.identification()[0]
    assert json.dumps(ours.to_json_dict(), sort_keys=True) == json.dumps(theirs.to_json_dict(), sort_keys=True)


def test_a_failure_while_writing_leaves_no_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The pixels are packed into the file as it is written: a failure half-way removes the file."""
    from medhub.writers import seg_binary

    volume = load("seg/dcmqi_segmentations/ct-3slice")
    planes = labels_to_source(volume, blobs(volume, [1, 2], seed=10))

    def broken_chunks(self, frames_per_chunk: int = 64):
        yield b"\0" * 64
        raise OSError("disk full")

    monkeypatch.setattr(seg_binary.PackedFrames, "chunks", broken_chunks)
    with pytest.raises(OSError, match="disk full"):
        write_seg(planes, volume.source, {1: "LIVER", 2: "SPLEEN"}, ALGORITHM, tmp_path / "s.dcm")
    assert not (tmp_path / "s.dcm").exists()


def test_a_labelmap_seg_failing_while_written_leaves_no_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """highdicom's LABELMAP path writes through the same temporary: a half-written file never stays."""
    volume = load("seg/dcmqi_segmentations/ct-3slice")
    planes = labels_to_source(volume, blobs(volume, [1, 2], seed=10))
    real_save = pydicom.Dataset.save_as

    def save_then_fail(self, filename, *args, **kwargs):
        real_save(self, filename, *args, **kwargs)
        raise OSError("disk full")

    monkeypatch.setattr(pydicom.Dataset, "save_as", save_then_fail)
    with pytest.raises(OSError, match="disk full"):
        write_seg(planes, volume.source, {1: "LIVER", 2: "SPLEEN"}, ALGORITHM, tmp_path / "s.dcm", labelmap=True)
    assert list(tmp_path.iterdir()) == []
