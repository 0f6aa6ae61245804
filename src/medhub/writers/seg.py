"""Label map on the source planes → DICOM Segmentation (PS3.3 A.51).

What this module decides, so callers do not have to:

* **Segment numbers.** Only label values that have voxels become segments; they are numbered
  1..K in ascending order of label value (BINARY requires 1..K without gaps, PS3.3
  C.8.20.2; LABELMAP uses the same numbers so both types of one result agree). Each
  segment's Tracking ID is its segment database ID (``LEFT_LUNG``), so readers can map
  segments back to label values without relying on numbering.
* **Empty result.** A label map without a single labelled voxel raises
  :class:`EmptySegmentationError` (a :class:`MedhubError`): a SEG must describe at least one
  segment, and a SEG whose only segment is empty tells a PACS user nothing but looks like a
  finding. The pipeline records "no segment found" for that series instead.
* **Undescribed labels.** A label value with voxels but no segment is a runner bug; it
  raises instead of silently dropping part of the model's output.
* **Frames.** Empty frames are omitted; every stored frame keeps its plane position and
  references its source image/frame, so geometry is preserved. For a multi-frame source each
  plane carries the Plane Position of its frame (``SourcePlane.frame_number``), so the grid may
  use a subset of frames in any order.
* **Encoding.** Explicit VR Little Endian. BINARY frames are bit-packed (1 bit per pixel, what
  dcmqi and every viewer read) and written by :mod:`medhub.writers.seg_binary` directly with
  pydicom and numpy (several times faster than highdicom's ``Segmentation()``, same content);
  LABELMAP frames are 8 bits (16 above 255 segments), written with highdicom.

The label array is ``(n_planes, rows, columns)`` in :class:`~medhub.data.volume.SourceGrid`
plane order, i.e. already on the real source planes (the pipeline resamples back first).
"""

from __future__ import annotations

import gc
import re
import warnings
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from pydicom.dataelem import DataElement, RawDataElement
from pydicom.dataset import Dataset
from pydicom.filebase import DicomBytesIO
from pydicom.filewriter import write_data_element
from pydicom.multival import MultiValue
from pydicom.uid import ExplicitVRLittleEndian

from medhub.data.header_view import header_view
from medhub.data.volume import SourceGrid
from medhub.errors import MedhubError
from medhub.files import atomic_output
from medhub.segdb import Code, SegmentSpec, get_segment
from medhub.writers.provenance import AlgorithmInfo, device_info
from medhub.writers.seg_binary import LabelPlanes, encode_binary_seg, label_planes, write_seg_file
from medhub.writers.source_attributes import output_character_set, source_view

if TYPE_CHECKING:  # highdicom costs ~0.3 s to import and is needed for LABELMAP only
    import highdicom as hd

_MAX_SEGMENTS = 65535


class EmptySegmentationError(MedhubError):
    """The label map has no labelled voxel, so there is nothing to write as a SEG."""


BODY_PART = re.compile(r"^[A-Z0-9_ ]{1,16}$")
"""A Body Part Examined value: a DICOM code string (CS) of at most 16 characters."""

def write_seg(
    labels: np.ndarray,
    source: SourceGrid,
    segments: Mapping[int, SegmentSpec | str],
    algorithm: AlgorithmInfo,
    path: Path,
    *,
    labelmap: bool = False,
    series_number: int = 901,
    series_description: str | None = None,
    body_part_examined: str | None = None,
) -> Path:
    """Write ``labels`` as a DICOM SEG at ``path`` and return ``path``.

    ``segments`` maps label values to segment specs (or segment database IDs).
    ``labelmap=True`` writes the LABELMAP SOP class (Label Map Segmentation Storage, one
    frame per plane with all segments) instead of BINARY (one bit-packed frame per plane and
    segment); LABELMAP is smaller for many segments but fewer viewers read it yet.
    ``body_part_examined`` (a defined term of PS3.16 Annex L, e.g. ``CHEST``) is written as the
    SEG's Body Part Examined (General Series module, Type 3), as MHub's DsegConverter does.
    """
    path = Path(path)
    if body_part_examined is not None and not BODY_PART.match(body_part_examined):
        raise MedhubError(f"Body Part Examined {body_part_examined!r}: 1 to 16 upper-case letters, digits, "
                          "spaces or underscores (a DICOM CS value such as CHEST)")
    where = _describe(source, path)
    _check_source(source, where)
    found = _check_labels(labels, source, where)
    label_values = found.values
    specs = {int(value): _resolve(spec, where) for value, spec in segments.items()}

    undescribed = sorted(set(label_values) - set(specs))
    if undescribed:
        raise MedhubError(f"{where}: label values {undescribed} have voxels but no segment description")
    if not label_values:
        raise EmptySegmentationError(f"{where}: the label map is empty (no voxel of any segment); no SEG written")
    if len(label_values) > _MAX_SEGMENTS:
        raise MedhubError(f"{where}: {len(label_values)} segments exceed the DICOM limit of {_MAX_SEGMENTS}")

    description = (series_description or f"{algorithm.name} segmentation")[:64]
    content_label = _content_label(algorithm.name)
    content_description = f"{algorithm.name} {algorithm.version}"[:64]
    if not labelmap:
        dataset, pixels = encode_binary_seg(
            labels, source, found, specs, algorithm, device_info(),
            series_number=series_number, series_description=description, content_label=content_label,
            content_description=content_description, where=where,
        )  # fmt: skip
        if body_part_examined:
            dataset.BodyPartExamined = body_part_examined
        with atomic_output(path) as temporary:  # a failure half-way (pixels are packed as written) leaves no file
            write_seg_file(dataset, pixels, temporary)
        return path
    with atomic_output(path) as temporary:
        _write_labelmap(labels, source, label_values, specs, algorithm, temporary, where,
                        series_number=series_number, description=description, content_label=content_label,
                        content_description=content_description, body_part_examined=body_part_examined)
    return path


def _write_labelmap(
    labels: np.ndarray,
    source: SourceGrid,
    label_values: list[int],
    specs: dict[int, SegmentSpec],
    algorithm: AlgorithmInfo,
    path: Path,
    where: str,
    *,
    series_number: int,
    description: str,
    content_label: str,
    content_description: str,
    body_part_examined: str | None = None,
) -> None:
    """LABELMAP SEG (Label Map Segmentation Storage, one 8/16-bit frame per plane) with highdicom."""
    import highdicom as hd

    source_images, plane_positions = _arrange_frames(source, where)
    # highdicom copies patient and study from the first source image: give it one whose absent
    # Type 2 attributes are present and empty and whose character set is a defined term.
    source_images[0] = source_view(source_images[0])
    numbered = _renumber(labels, label_values)
    descriptions = [
        _segment_description(number, specs[value], algorithm) for number, value in enumerate(label_values, start=1)
    ]
    kwargs: dict[str, Any] = {  # highdicom's keyword arguments, each of its own type
        **device_info().as_highdicom_kwargs(),
        "specific_character_set": output_character_set(source_images[0]),
        "content_label": content_label,
        "content_description": content_description,
        "series_description": description,
    }
    with _gc_paused(), warnings.catch_warnings():
        # Single-component patient names ("HEAD") are common in real exports; highdicom warns
        # on each, but the name is copied as is and is not ours to judge.
        warnings.filterwarnings("ignore", message=".*unlikely to represent the intended person name")
        try:
            seg = hd.seg.Segmentation(
                source_images=source_images,
                pixel_array=numbered,
                plane_positions=plane_positions,
                segmentation_type=hd.seg.SegmentationTypeValues.LABELMAP,
                segment_descriptions=descriptions,
                series_instance_uid=hd.UID(),
                series_number=series_number,
                sop_instance_uid=hd.UID(),
                instance_number=1,
                omit_empty_frames=True,
                **kwargs,
            )
        except (ValueError, TypeError, AttributeError) as error:
            # highdicom validates its inputs (same series, geometry, codes) and says what is wrong.
            raise MedhubError(f"{where}: cannot build the SEG: {error}") from error
        if body_part_examined:
            seg.BodyPartExamined = body_part_examined
        _pre_encode_sequences(seg)
        seg.save_as(path, enforce_file_format=True)


@contextmanager
def _gc_paused() -> Iterator[None]:
    """No cyclic garbage collection while highdicom builds and pydicom writes the SEG.

    Both allocate hundreds of thousands of container objects (the first SEG of a process also
    loads highdicom's 22 MB standard tables: millions of dicts and lists), and each full
    collection this triggers walks every object of the heap, tables included: 0.5-0.6 s CPU of
    the 1.7 s a 784-frame SEG took. Nothing in the build depends on cycles being collected; the
    collector is restored (if it was on) when the SEG is written or has failed, and collects
    whatever cycles were made in the meantime on its next run.
    """
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was_enabled:
            gc.enable()


def _describe(source: SourceGrid, path: Path) -> str:
    """'SEG out.dcm for series 1.2.3' — the prefix of every error message."""
    uid = source.planes[0].dataset.get("SeriesInstanceUID", "") if source.planes else ""
    return f"SEG {path.name} for series {uid or '(no Series Instance UID)'}"


def _check_source(source: SourceGrid, where: str) -> None:
    if not source.planes:
        raise MedhubError(f"{where}: the source grid has no planes")
    if not source.referenceable:
        reason = source.unreferenceable_reason or "the source lacks the UIDs a SEG must reference"
        raise MedhubError(f"{where}: cannot reference the source images: {reason}")


def _check_labels(labels: np.ndarray, source: SourceGrid, where: str) -> LabelPlanes:
    """Validate shape, dtype and range; return which label values lie on which planes."""
    expected = (len(source.planes), source.rows, source.columns)
    if labels.shape != expected:
        raise MedhubError(
            f"{where}: label map shape {labels.shape} does not match the source planes "
            f"(planes, rows, columns) = {expected}"
        )
    if labels.dtype == np.bool_:
        labels = labels.view(np.uint8)
    elif not np.issubdtype(labels.dtype, np.integer):
        raise MedhubError(f"{where}: label map must hold integers, got dtype {labels.dtype}")
    if labels.dtype.itemsize > 2 or np.issubdtype(labels.dtype, np.signedinteger):
        low, high = int(labels.min()), int(labels.max())
        if low < 0 or high > _MAX_SEGMENTS:
            raise MedhubError(f"{where}: label values must lie in 0..{_MAX_SEGMENTS}, found {low}..{high}")
    return label_planes(labels)


def _resolve(spec: SegmentSpec | str, where: str) -> SegmentSpec:
    if isinstance(spec, SegmentSpec):
        return spec
    if isinstance(spec, str):
        return get_segment(spec)
    raise MedhubError(f"{where}: a segment must be a SegmentSpec or a segment ID, got {spec!r}")


def _renumber(labels: np.ndarray, label_values: list[int]) -> np.ndarray:
    """Map label values to segment numbers 1..K (a no-op when they already are 1..K)."""
    dtype = np.uint8 if len(label_values) < 256 else np.uint16
    if label_values == list(range(1, len(label_values) + 1)):
        return labels.astype(dtype, copy=False)
    lut = np.zeros(int(max(label_values)) + 1, dtype=dtype)
    lut[label_values] = np.arange(1, len(label_values) + 1, dtype=dtype)
    # Label values without a segment have no voxels (checked before), so clipping is safe.
    return np.take(lut, labels, mode="clip")


def _arrange_frames(source: SourceGrid, where: str) -> tuple[list[Dataset], list[hd.PlanePositionSequence] | None]:
    """The source images for highdicom and, for a multi-frame source, each plane's position.

    Single-frame: one dataset per plane in plane order; highdicom pairs ``pixel_array[i]``
    with ``source_images[i]``. Multi-frame: highdicom would pair planes with *all* frames in
    frame order, which fails when the grid uses some frames (one stack of a Philips file
    holding magnitude and field map at the same 32 positions) and is wrong when frames are
    not in slice order. So each plane gets its frame's own Plane Position, and highdicom
    references the source frame(s) at that position.
    """
    import highdicom as hd

    frame_numbers = [plane.frame_number for plane in source.planes]
    datasets = source.datasets
    if all(number is None for number in frame_numbers):
        if len(datasets) != len(source.planes):
            raise MedhubError(f"{where}: a single-frame source image is used by more than one plane")
        return datasets, None
    numbers = [number for number in frame_numbers if number is not None]
    if len(numbers) != len(frame_numbers) or len(datasets) != 1:
        raise MedhubError(
            f"{where}: planes must come from one multi-frame image or from single-frame images only "
            f"(got {len(datasets)} images, {sum(n is None for n in frame_numbers)} planes without a frame)"
        )
    dataset = datasets[0]
    if "PerFrameFunctionalGroupsSequence" not in dataset:
        raise MedhubError(
            f"{where}: multi-frame source {dataset.get('SOPInstanceUID', '')} has no per-frame functional "
            "groups (plane positions); read its header without stop_before_pixels, which drops them"
        )
    n_frames = len(dataset.PerFrameFunctionalGroupsSequence)
    if not all(1 <= n <= n_frames for n in numbers) or len(set(numbers)) != len(numbers):
        raise MedhubError(f"{where}: plane frame numbers {frame_numbers} do not fit {n_frames} unique frames")
    shared = dataset.SharedFunctionalGroupsSequence[0] if "SharedFunctionalGroupsSequence" in dataset else Dataset()
    positions = []
    for number in numbers:
        item = dataset.PerFrameFunctionalGroupsSequence[number - 1]
        group = item if "PlanePositionSequence" in item else shared
        if "PlanePositionSequence" not in group:
            raise MedhubError(f"{where}: frame {number} of the multi-frame source has no Plane Position")
        position = [float(v) for v in group.PlanePositionSequence[0].ImagePositionPatient]
        positions.append(hd.PlanePositionSequence(coordinate_system="PATIENT", image_position=position))
    return [_with_shared_geometry(dataset, source, numbers, where)], positions


def _with_shared_geometry(dataset: Dataset, source: SourceGrid, frame_numbers: list[int], where: str) -> Dataset:
    """A view of a multi-frame header whose shared functional groups carry the grid's geometry.

    highdicom reads pixel spacing and orientation of a multi-frame source only from the
    Shared Functional Groups; real enhanced MR (Philips) puts them in every per-frame item
    instead. The SourceGrid already holds the one orientation and spacing of its planes, so
    they are added to a copy of the header; the file and the caller's dataset are unchanged,
    and the SEG still references the same instance and frames.
    """
    import highdicom as hd

    shared = dataset.SharedFunctionalGroupsSequence[0] if "SharedFunctionalGroupsSequence" in dataset else Dataset()
    if "PixelMeasuresSequence" in shared and "PlaneOrientationSequence" in shared:
        return dataset
    thickness = None
    for number in frame_numbers:
        item = dataset.PerFrameFunctionalGroupsSequence[number - 1]
        if "PixelMeasuresSequence" in item:
            thickness = item.PixelMeasuresSequence[0].get("SliceThickness")
            break
    if thickness is None and "PixelMeasuresSequence" in shared:
        thickness = shared.PixelMeasuresSequence[0].get("SliceThickness")
    if thickness is None:
        raise MedhubError(f"{where}: multi-frame source has no Slice Thickness in its functional groups")
    new_shared = Dataset()
    new_shared.update(shared)
    new_shared.PixelMeasuresSequence = hd.PixelMeasuresSequence(
        pixel_spacing=[float(v) for v in source.pixel_spacing], slice_thickness=float(thickness)
    )
    new_shared.PlaneOrientationSequence = hd.PlaneOrientationSequence(
        coordinate_system="PATIENT", image_orientation=[float(v) for v in source.orientation]
    )
    view = header_view(dataset)
    view[0x52009229] = DataElement(0x52009229, "SQ", [new_shared])  # a new element: the source keeps its own
    return view


def _coded(code: Code) -> hd.sr.CodedConcept:
    import highdicom as hd

    return hd.sr.CodedConcept(value=code.value, scheme_designator=code.scheme, meaning=code.meaning)


def _segment_description(number: int, spec: SegmentSpec, algorithm: AlgorithmInfo) -> hd.seg.SegmentDescription:
    import highdicom as hd

    description = hd.seg.SegmentDescription(
        segment_number=number,
        segment_label=spec.name,
        segmented_property_category=_coded(spec.category),
        segmented_property_type=_coded(spec.type),
        algorithm_type=hd.seg.SegmentAlgorithmTypeValues(algorithm.type),
        algorithm_identification=algorithm.identification(),
        tracking_id=spec.id,
        tracking_uid=hd.UID(),
        display_color=hd.color.CIELabColor.from_rgb(*spec.color),
    )
    if spec.modifier is not None:
        # Laterality goes into the Segmented Property Type Modifier Code Sequence (0062,0011)
        # inside the type item (PS3.3 C.8.20.2); highdicom has no argument for it.
        modifier = hd.sr.CodedConcept(spec.modifier.value, spec.modifier.scheme, spec.modifier.meaning)
        description.SegmentedPropertyTypeCodeSequence[0].SegmentedPropertyTypeModifierCodeSequence = [modifier]
    return description


def _content_label(name: str) -> str:
    """ContentLabel is a CS: upper case, digits, space and underscore, at most 16 characters."""
    label = re.sub(r"[^A-Z0-9_ ]", "_", name.upper()).strip()[:16]
    return label or "SEGMENTATION"


# ------------------------------------------------------------------------------ fast encoding
# A SEG of a CT holds thousands of sequence items that differ in a value or two (one
# Per-Frame Functional Groups item per frame, one reference per source image). pydicom's
# generic writer spends ~20 us per element on them (0.3 s of a 784-frame SEG); the encoding
# below gives the same bytes for a few us per element by encoding each distinct leaf element
# once -- with pydicom's own element writer -- and assembling items and sequences around them.

_ITEM = b"\xfe\xff\x00\xe0"  # (FFFE,E000) Item, little endian
_ITEM_DELIMITER = b"\xfe\xff\x0d\xe0\0\0\0\0"  # (FFFE,E00D), length 0
_SEQUENCE_DELIMITER = b"\xfe\xff\xdd\xe0\0\0\0\0"  # (FFFE,E0DD), length 0
_UNDEFINED = b"\xff\xff\xff\xff"
_SPECIFIC_CHARACTER_SET = 0x00080005


def _pre_encode_sequences(dataset: Dataset) -> None:
    """Replace the top-level sequences of ``dataset`` by their pre-encoded bytes (RawDataElement).

    pydicom writes a RawDataElement's value as it is (the mechanism rtstruct.py uses for
    ContourData), so the file is byte for byte what ``save_as`` would have written for the
    sequence, but built once per distinct value. Only for Explicit VR Little Endian, which is what
    highdicom writes here; a sequence holding an element the fast path does not handle (an
    ambiguous VR such as "US or SS") is left to pydicom's writer.
    """
    if dataset.file_meta.get("TransferSyntaxUID") != ExplicitVRLittleEndian:
        return
    encodings = dataset.get("SpecificCharacterSet", "iso8859")
    cache: dict[tuple, bytes] = {}
    for element in list(dataset.elements()):
        if element.VR != "SQ" or isinstance(element, RawDataElement) or not element.value:
            continue
        try:
            value = _encode_items(element.value, encodings, cache)
        except _NotEncodable:
            continue
        # Undefined length (kept from a file read with it): pydicom writes the delimiter itself.
        length = 0xFFFFFFFF if element.is_undefined_length else len(value)
        dataset[element.tag] = RawDataElement(element.tag, "SQ", length, value, 0, False, True)


class _NotEncodable(Exception):
    """An element the fast encoder leaves to pydicom's writer."""


def _encode_items(items: list[Dataset], encodings: str | list[str], cache: dict[tuple, bytes]) -> bytes:
    parts: list[bytes] = []
    for item in items:
        charset = item.get_item(_SPECIFIC_CHARACTER_SET)
        body = _encode_dataset(item, encodings if charset is None else item.SpecificCharacterSet, cache)
        if getattr(item, "is_undefined_length_sequence_item", False):  # as pydicom writes such an item
            parts += (_ITEM, _UNDEFINED, body, _ITEM_DELIMITER)
        else:
            parts += (_ITEM, len(body).to_bytes(4, "little"), body)
    return b"".join(parts)


def _encode_dataset(dataset: Dataset, encodings: str | list[str], cache: dict[tuple, bytes]) -> bytes:
    parts: list[bytes] = []
    for element in dataset.elements():
        tag = element.tag
        if tag.element == 0 and tag.group > 6:  # retired group lengths: pydicom does not write them
            continue
        vr = element.VR
        if vr == "SQ":
            if isinstance(element, RawDataElement):
                raise _NotEncodable(tag)
            body = _encode_items(element.value or [], encodings, cache)
            if element.is_undefined_length:
                parts += (_tag_bytes(tag), b"SQ\0\0", _UNDEFINED, body, _SEQUENCE_DELIMITER)
            else:
                parts += (_tag_bytes(tag), b"SQ\0\0", len(body).to_bytes(4, "little"), body)
            continue
        if isinstance(element, RawDataElement) or vr is None or len(vr) != 2:
            raise _NotEncodable(tag)
        value = element.value
        key: tuple[Any, ...] | None
        if isinstance(value, MultiValue | list | tuple):
            key = (tag, vr, str(encodings), tuple(type(v).__name__ + ":" + str(v) for v in value))
        elif isinstance(value, bytes | str | int | float) or value is None:
            key = (tag, vr, str(encodings), type(value).__name__ + ":" + str(value))
        else:  # PersonName and other value types: encode without caching
            key = None
        encoded = cache.get(key) if key is not None else None
        if encoded is None:
            encoded = _encode_element(element, encodings)
            if key is not None:
                cache[key] = encoded
        parts.append(encoded)
    return b"".join(parts)


def _tag_bytes(tag: int) -> bytes:
    return (tag >> 16).to_bytes(2, "little") + (tag & 0xFFFF).to_bytes(2, "little")


def _encode_element(element: DataElement, encodings: str | list[str]) -> bytes:
    buffer = DicomBytesIO()
    buffer.is_little_endian = True
    buffer.is_implicit_VR = False
    write_data_element(buffer, element, encodings)
    return buffer.getvalue()
