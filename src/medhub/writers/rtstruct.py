"""Label map → DICOM RT Structure Set, written with pydicom and valid for dciodvfy.

Why our own writer: rt-utils and platipy write RTSTRUCTs that fail validation by the
hundred thousand (ContourData values longer than the 16 characters DS allows, missing Type 1/2
attributes). This module fills every Type 1 and Type 2 attribute of the modules of the RT
Structure Set IOD (PS3.3 A.19): Patient, General Study, RT Series, General Equipment,
Frame of Reference, Structure Set, ROI Contour, RT ROI Observations and SOP Common.

Contours are traced on the real source planes (:class:`medhub.data.volume.SourceGrid`), one
CLOSED_PLANAR contour per outline; holes are extra contours read with the even-odd rule
(see :mod:`medhub.writers.contours`). ContourData is written with 0.01 mm precision, which
keeps every value within the 16 characters of DS.
"""

from __future__ import annotations

import datetime as _dt
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
from pydicom.charset import convert_encodings, default_encoding
from pydicom.dataelem import RawDataElement
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.sequence import Sequence
from pydicom.tag import Tag
from pydicom.uid import ExplicitVRLittleEndian, RTStructureSetStorage, generate_uid

import medhub
from medhub.data.volume import SourceGrid, SourcePlane
from medhub.errors import MedhubError
from medhub.writers.contours import DEFAULT_TOLERANCE, label_boxes, labelmap_to_polygons, pixels_to_patient
from medhub.writers.source_attributes import PATIENT_STUDY_TYPE2, output_character_set, source_view

if TYPE_CHECKING:  # only a type here; importing medhub.segdb loads the segment database
    from medhub.segdb import SegmentSpec

#: PS3.3 C.8.8.5.1: the Referenced SOP Class UID of an RT Referenced Study item is the
#: (retired) Detached Study Management SOP Class; every RTSTRUCT producer writes this value.
DETACHED_STUDY_MANAGEMENT_SOP_CLASS = "1.2.840.10008.3.1.2.3.1"

#: Segment categories (SNOMED CT) whose ROIs are organs for RT ROI Interpreted Type.
_ORGAN_CATEGORIES = {
    "91723000",  # Anatomical Structure
    "123037004",  # Body Structure ("Anatomical Structure" in DICOM SEG practice)
    "85756007",  # Tissue
    "280115004",  # Physical anatomical entity
}

_CONTOUR_DATA = Tag(0x3006, 0x0050)

# Useful Type 3 attributes copied from the source when present (the Type 2 ones: source_attributes).
_PATIENT_STUDY_OPTIONAL = (
    "IssuerOfPatientID",
    "PatientAge",
    "PatientIdentityRemoved",
    "DeidentificationMethod",
    "StudyDescription",
)


def write_rtstruct(
    labels: np.ndarray,
    source: SourceGrid,
    segments: dict[int, SegmentSpec],
    *,
    model_name: str,
    model_version: str,
    path: Path,
    series_number: int = 902,
    series_description: str | None = None,
    tolerance: float = DEFAULT_TOLERANCE,
) -> Path:
    """Write ``labels`` as an RT Structure Set referencing the source planes; return ``path``.

    ``labels`` has shape ``(n_planes, rows, columns)`` in the plane order of ``source``
    (``labels[k]`` lies on ``source.planes[k]``); 0 is background, every other value present
    must be a key of ``segments``. Each segment becomes one ROI (numbered by its label value),
    also when it is empty (then the ROI has no contours, which says "the model found none").
    ``tolerance`` is an optional Douglas-Peucker simplification in pixels; the default 0 keeps
    the exact pixel outline (collinear vertices are always dropped, see
    :mod:`medhub.writers.contours`). A boolean mask counts as label 1.
    Raises :class:`MedhubError` with a one-line reason for unusable input.
    """
    path = Path(path)
    if labels.dtype == bool:
        labels = labels.view(np.uint8)
    boxes = _check_inputs(labels, source, segments, path)
    reference = source.planes[0].dataset
    frame_of_reference = _frame_of_reference_uid(source, path)

    polygons = labelmap_to_polygons(labels, sorted(segments), tolerance=tolerance, boxes=boxes)
    plane_refs = [_plane_reference(plane) for plane in source.planes]

    ds = _header(reference, model_name, model_version, series_number, series_description)
    ds.FrameOfReferenceUID = frame_of_reference
    ds.PositionReferenceIndicator = reference.get("PositionReferenceIndicator", "") or ""
    ds.ReferencedFrameOfReferenceSequence = [_referenced_frame_of_reference(source, frame_of_reference)]

    roi_items, contour_items, observation_items = [], [], []
    for value in sorted(segments):
        spec = segments[value]
        roi_items.append(_structure_set_roi(value, spec, frame_of_reference, model_name, model_version))
        contour_items.append(_roi_contour(value, spec, polygons[value], source, plane_refs))
        observation_items.append(_observation(value, spec))
    ds.StructureSetROISequence = roi_items
    ds.ROIContourSequence = contour_items
    ds.RTROIObservationsSequence = observation_items

    path.parent.mkdir(parents=True, exist_ok=True)
    # Every element here is built with its VR (or copied with the VR it was read with): mark the
    # dataset as already in its output encoding, so that pydicom writes it as it is instead of
    # first walking every item to correct ambiguous VRs (~0.3 s for 800 contours, issue 14).
    charset = ds.get("SpecificCharacterSet")
    ds.set_original_encoding(False, True, convert_encodings(charset) if charset else default_encoding)
    ds.save_as(path, enforce_file_format=True)
    return path


# --------------------------------------------------------------------------- input checks


def _check_inputs(
    labels: np.ndarray, source: SourceGrid, segments: dict[int, SegmentSpec], path: Path
) -> dict[int, tuple[slice, ...]]:
    """Refuse input that would give a wrong or unreadable RTSTRUCT; return each label's bounding box."""
    where = f"RTSTRUCT {path.name}"
    if not source.referenceable:
        raise MedhubError(f"{where}: source series cannot be referenced ({source.unreferenceable_reason})")
    if not source.planes:
        raise MedhubError(f"{where}: source grid has no planes")
    expected = (len(source.planes), source.rows, source.columns)
    if labels.ndim != 3 or tuple(labels.shape) != expected:
        raise MedhubError(
            f"{where}: label map shape {tuple(labels.shape)} does not match the source planes "
            f"(planes, rows, columns) = {expected}"
        )
    if not np.issubdtype(labels.dtype, np.integer):
        raise MedhubError(f"{where}: label map must be integer, got {labels.dtype}")
    if not segments:
        raise MedhubError(f"{where}: no segments given")
    bad_keys = [k for k in segments if int(k) < 1]
    if bad_keys:
        raise MedhubError(f"{where}: segment label values must be >= 1, got {bad_keys}")
    try:
        boxes = label_boxes(labels)
    except ValueError as exc:
        raise MedhubError(f"{where}: {exc}") from None
    unknown = sorted(set(boxes) - {int(k) for k in segments})
    if unknown:
        raise MedhubError(f"{where}: label values {unknown} in the label map have no segment description")
    return boxes


def _frame_of_reference_uid(source: SourceGrid, path: Path) -> str:
    uids = {str(p.dataset.get("FrameOfReferenceUID", "") or "") for p in source.planes}
    if len(uids) != 1 or "" in uids:
        raise MedhubError(f"RTSTRUCT {path.name}: source planes need one FrameOfReferenceUID, found {sorted(uids)}")
    return uids.pop()


# --------------------------------------------------------------------------- header modules


def _sop_uids(dataset: Dataset) -> tuple[str, str]:
    """SOP Class and Instance UID of a source, falling back to the file meta (see series.Instance)."""
    meta = getattr(dataset, "file_meta", None) or Dataset()
    sop_class = str(dataset.get("SOPClassUID", "") or meta.get("MediaStorageSOPClassUID", "") or "")
    sop_instance = str(dataset.get("SOPInstanceUID", "") or meta.get("MediaStorageSOPInstanceUID", "") or "")
    if not sop_class or not sop_instance:
        raise MedhubError("RTSTRUCT: a source image has no SOP Class/Instance UID and cannot be referenced")
    return sop_class, sop_instance


def _header(
    reference: Dataset, model_name: str, model_version: str, series_number: int, series_description: str | None
) -> Dataset:
    """SOP Common, Patient, General Study, RT Series, General Equipment and Structure Set headers."""
    now = _dt.datetime.now()
    date, time = now.strftime("%Y%m%d"), now.strftime("%H%M%S")
    sop_instance_uid = generate_uid()

    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = RTStructureSetStorage
    meta.MediaStorageSOPInstanceUID = sop_instance_uid
    meta.TransferSyntaxUID = ExplicitVRLittleEndian

    ds = Dataset()
    ds.file_meta = meta
    reference = source_view(reference)  # absent Type 2 attributes empty, a defined character set
    charset = output_character_set(reference)
    if charset:
        ds.SpecificCharacterSet = charset
    # SOP Common
    ds.SOPClassUID = RTStructureSetStorage
    ds.SOPInstanceUID = sop_instance_uid
    ds.InstanceCreationDate = date
    ds.InstanceCreationTime = time
    # Patient + General Study (copied: the RTSTRUCT belongs to the source's study)
    study_uid = str(reference.get("StudyInstanceUID", "") or "")
    if not study_uid:
        raise MedhubError("RTSTRUCT: source has no StudyInstanceUID; the structure set cannot join its study")
    ds.StudyInstanceUID = study_uid
    for keyword in PATIENT_STUDY_TYPE2:
        setattr(ds, keyword, reference.get(keyword, "") or "")
    for keyword in _PATIENT_STUDY_OPTIONAL:
        value = reference.get(keyword)
        if value not in (None, ""):
            setattr(ds, keyword, value)
    # RT Series
    ds.Modality = "RTSTRUCT"
    ds.SeriesInstanceUID = generate_uid()
    ds.SeriesNumber = int(series_number)
    ds.SeriesDate = date
    ds.SeriesTime = time
    ds.SeriesDescription = _clip(series_description or f"{model_name} contours", 64)
    ds.OperatorsName = ""
    # General Equipment
    ds.Manufacturer = "medhub"
    ds.ManufacturerModelName = _clip(model_name, 64)
    ds.SoftwareVersions = [_clip(f"medhub {medhub.__version__}", 64), _clip(f"{model_name} {model_version}", 64)]
    # Structure Set
    ds.StructureSetLabel = _clip(model_name, 16) or "medhub"
    ds.StructureSetName = _clip(f"{model_name} {model_version}", 64)
    ds.StructureSetDate = date
    ds.StructureSetTime = time
    return ds


def _referenced_frame_of_reference(source: SourceGrid, frame_of_reference: str) -> Dataset:
    """Frame of reference → study → series → every source image (C.8.8.5), in plane order.

    A multi-frame instance is listed once; its frames are named (Referenced Frame Number)
    only when the grid uses some but not all of them, as the Image SOP Instance Reference
    Macro asks.
    """
    reference = source.planes[0].dataset
    frames_used: dict[str, list[int]] = {}
    instances: list[Dataset] = []
    for plane in source.planes:
        _, uid = _sop_uids(plane.dataset)
        if uid not in frames_used:
            frames_used[uid] = []
            instances.append(plane.dataset)
        if plane.frame_number is not None:
            frames_used[uid].append(int(plane.frame_number))

    by_series: dict[str, Sequence] = {}
    for dataset in instances:
        sop_class, uid = _sop_uids(dataset)
        item = Dataset()
        item.ReferencedSOPClassUID = sop_class
        item.ReferencedSOPInstanceUID = uid
        frames = sorted(set(frames_used[uid]))
        n_frames = int(dataset.get("NumberOfFrames", 1) or 1)
        if frames and frames != list(range(1, n_frames + 1)):
            item.ReferencedFrameNumber = frames if len(frames) > 1 else frames[0]
        series_uid = str(dataset.get("SeriesInstanceUID", "") or "")
        if not series_uid:
            raise MedhubError(f"RTSTRUCT: source image {uid} has no SeriesInstanceUID")
        by_series.setdefault(series_uid, Sequence()).append(item)

    series_items = []
    for series_uid, images in by_series.items():
        series = Dataset()
        series.SeriesInstanceUID = series_uid
        series.ContourImageSequence = images
        series_items.append(series)
    study = Dataset()
    study.ReferencedSOPClassUID = DETACHED_STUDY_MANAGEMENT_SOP_CLASS
    study.ReferencedSOPInstanceUID = str(reference.StudyInstanceUID)
    study.RTReferencedSeriesSequence = series_items
    item = Dataset()
    item.FrameOfReferenceUID = frame_of_reference
    item.RTReferencedStudySequence = [study]
    return item


# --------------------------------------------------------------------------- per-ROI items


def _structure_set_roi(
    value: int, spec: SegmentSpec, frame_of_reference: str, model_name: str, model_version: str
) -> Dataset:
    item = Dataset()
    item.ROINumber = int(value)
    item.ReferencedFrameOfReferenceUID = frame_of_reference
    item.ROIName = _clip(spec.name, 64)
    item.ROIGenerationAlgorithm = "AUTOMATIC"
    item.ROIGenerationDescription = _clip(f"{model_name} {model_version}", 64)
    return item


def _plane_reference(plane: SourcePlane) -> tuple[str, str, int | None]:
    sop_class, uid = _sop_uids(plane.dataset)
    return sop_class, uid, plane.frame_number


def _roi_contour(
    value: int,
    spec: SegmentSpec,
    polygons: list[tuple[int, np.ndarray]],
    source: SourceGrid,
    plane_refs: list[tuple[str, str, int | None]],
) -> Dataset:
    item = Dataset()
    item.ROIDisplayColor = [int(c) for c in spec.color]
    item.ReferencedROINumber = int(value)
    if polygons:
        contours = Sequence()
        for number, (plane_index, poly_rc) in enumerate(polygons, start=1):
            plane = source.planes[plane_index]
            points = pixels_to_patient(poly_rc, plane.position, source.orientation, source.pixel_spacing)
            contours.append(_contour(number, points, plane_refs[plane_index]))
        item.ContourSequence = contours
    return item


def _contour(number: int, points_lps: np.ndarray, plane_ref: tuple[str, str, int | None]) -> Dataset:
    """One CLOSED_PLANAR contour item (C.8.8.6) with its image reference."""
    sop_class, uid, frame = plane_ref
    image = Dataset()
    image.ReferencedSOPClassUID = sop_class
    image.ReferencedSOPInstanceUID = uid
    if frame is not None:
        image.ReferencedFrameNumber = int(frame)

    item = Dataset()
    item.ContourImageSequence = [image]
    item.ContourGeometricType = "CLOSED_PLANAR"
    item.NumberOfContourPoints = len(points_lps)
    item.ContourNumber = number
    encoded = format_ds_values(points_lps.ravel())
    # A raw element is written byte for byte: formatting ~10^6 coordinates ourselves is
    # about 20x faster than building one pydicom DSfloat per value. set_original_encoding
    # tells pydicom the item is already in the output encoding (its documented use).
    item[_CONTOUR_DATA] = RawDataElement(_CONTOUR_DATA, "DS", len(encoded), encoded, 0, False, True)
    item.set_original_encoding(False, True, default_encoding)
    return item


def format_ds_values(values: np.ndarray) -> bytes:
    """Encode numbers as a DS multi-value (``\\``-separated, even length), 0.01 mm precision.

    ``%.2f`` of any coordinate below 10^12 mm fits the 16 characters DS allows; trailing zeros
    are kept (still valid DS) because stripping them costs more than it saves.
    """
    vals = np.asarray(values, dtype=float)
    if vals.size and (not np.all(np.isfinite(vals)) or np.abs(vals).max() >= 1e12):
        raise MedhubError("RTSTRUCT: contour coordinate not finite or too large for DS")
    vals = np.round(vals, 2) + 0.0  # + 0.0 turns -0.0 into 0.0
    text = "\\".join(f"{v:.2f}" for v in vals.tolist())
    if len(text) % 2:
        text += " "
    return text.encode("ascii")


def _observation(value: int, spec: SegmentSpec) -> Dataset:
    """RT ROI Observations item: interpreted type and the segment's SNOMED CT code."""
    item = Dataset()
    item.ObservationNumber = int(value)
    item.ReferencedROINumber = int(value)
    item.RTROIInterpretedType = "ORGAN" if spec.category.value in _ORGAN_CATEGORIES else ""
    item.ROIInterpreter = ""
    code = Dataset()
    code.CodeValue = spec.type.value
    code.CodingSchemeDesignator = spec.type.scheme
    code.CodeMeaning = _clip(spec.type.meaning, 64)
    item.RTROIIdentificationCodeSequence = [code]
    return item


def _clip(text: str, limit: int) -> str:
    """Cut a string to a VR's maximum length (SH 16, LO 64) so the object stays valid."""
    return str(text)[:limit]
