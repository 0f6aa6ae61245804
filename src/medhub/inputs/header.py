"""One file: is it DICOM, and can its header be read completely? (headers only, never pixels)

:func:`read_header` classifies a file as a DICOM instance (with its header, read with
``stop_before_pixels``), a DICOMDIR, not DICOM, or unreadable with a one-line reason. Deciding
"is this DICOM" cheaply matters for folders full of NIfTI, JSON and screenshots: a file is parsed
only when it carries the ``DICM`` magic after the 128-byte preamble, or when its first bytes
already look like a DICOM data element of group 0002 or 0008 (files written without preamble and
file meta, such as pydicom's ``rtstruct.dcm``). Everything else is skipped unread -- unless its
name says DICOM (``*.dcm``, ``*.dicom``, ``*.dic``, ``*.ima``): a file that claims to be DICOM but
is empty, random bytes or cut inside its preamble is *unreadable*, named with its reason, never
silently counted as "not DICOM".

pydicom returns a partial dataset for a file cut short without complaint, so the header is
checked for truncation here (:func:`_truncation`): the pixel data must fit the file, a file read to
its end must not end inside an element, and an image storage object must have pixel data at all
(a cut at an element boundary leaves a header that parses, without Rows or pixels). Deflated
files (Deflated Explicit VR Little Endian) are inflated by pydicom, so their byte positions say
nothing about the file; they are checked by reading them whole.
"""

from __future__ import annotations

import io
import os
import struct
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path
from typing import BinaryIO

import pydicom
from pydicom.dataelem import DataElement, RawDataElement
from pydicom.dataset import Dataset
from pydicom.uid import UID, DeflatedExplicitVRLittleEndian

MEDIA_STORAGE_DIRECTORY = "1.2.840.10008.1.3.10"
#: File names that say "this is DICOM": such a file is never silently counted as "not DICOM".
DICOM_SUFFIXES = (".dcm", ".dicom", ".dic", ".ima")

# Pixel data elements: (7FE0,0010) Pixel Data, (7FE0,0008) Float, (7FE0,0009) Double Float.
_PIXEL_TAGS = {0x7FE00010, 0x7FE00008, 0x7FE00009}
_PIXEL_KEYWORDS = ("PixelData", "FloatPixelData", "DoubleFloatPixelData")
# A file without preamble is parsed only when its first element is in one of these groups.
_FIRST_GROUPS = {0x0002, 0x0008}
# Explicit VRs whose length field is 4 bytes (after 2 reserved bytes), PS3.5 7.1.2.
_LONG_VRS = {b"OB", b"OD", b"OF", b"OL", b"OV", b"OW", b"SQ", b"SV", b"UC", b"UN", b"UR", b"UT", b"UV"}
_ENCAPSULATED_LENGTH = 0xFFFFFFFF
_SEQUENCE_DELIMITER = b"\xfe\xff\xdd\xe0\x00\x00\x00\x00"  # (FFFE,E0DD), length 0, little endian
_TAIL_SEARCH = 65536
# Messages pydicom gives when a header runs out of bytes.
_EOF_MESSAGES = ("No tag to read", "end of file", "unpack requires a buffer", "EOF")
# SOP classes whose objects always carry pixel data besides the "...ImageStorage" ones (PS3.6 keywords).
_PIXEL_SOP_FRAGMENTS = ("ImageStorage", "SegmentationStorage", "RTDoseStorage", "ParametricMapStorage")


class FileKind(StrEnum):
    INSTANCE = "instance"  # a DICOM object; ``dataset`` holds its header
    DICOMDIR = "dicomdir"
    NOT_DICOM = "not DICOM"
    UNREADABLE = "unreadable"  # looks like DICOM, cannot be read; ``reason`` says why


@dataclass
class FileRead:
    kind: FileKind
    dataset: Dataset | None = None
    reason: str = ""  # for UNREADABLE: one line starting with the path


def read_header(path: Path) -> FileRead:
    """Classify one file and read its header (no pixels); never raises for bad content."""
    path = Path(path)
    if path.name.upper() == "DICOMDIR":
        return FileRead(FileKind.DICOMDIR)
    claims_dicom = path.name.lower().endswith(DICOM_SUFFIXES)
    try:
        with open(path, "rb") as fp:
            head = fp.read(132)
            has_preamble = len(head) == 132 and head[128:132] == b"DICM"
            if not has_preamble and not _looks_like_raw_dataset(head):
                if claims_dicom:
                    return _unreadable(path, _not_dicom(head))
                return FileRead(FileKind.NOT_DICOM)
            fp.seek(0)
            size = os.fstat(fp.fileno()).st_size
            try:
                ds = pydicom.dcmread(fp, stop_before_pixels=True, force=True)
            except Exception as exc:  # noqa: BLE001 - pydicom raises many types on corrupt input
                return _unreadable(path, _parse_failure(exc))
            if not has_preamble and not _plausible_dataset(ds):
                if claims_dicom:
                    return _unreadable(path, "not DICOM: its first bytes parse as data elements, but without "
                                             "any SOP Class, Modality or Study/Series UID")
                return FileRead(FileKind.NOT_DICOM)
            if _media_sop_class(ds) == MEDIA_STORAGE_DIRECTORY:
                return FileRead(FileKind.DICOMDIR)
            problem = _deflated_truncation(path, ds) if _is_deflated(ds) else _truncation(ds, fp, size)
            if not problem:
                problem = _unparsable_element(ds)
    except OSError as exc:
        return _unreadable(path, f"cannot read file ({exc.strerror})")
    if problem:
        return _unreadable(path, f"truncated file: {problem}")
    return FileRead(FileKind.INSTANCE, ds)


# The elements the scan reads from every header (grouping, sorting, query metadata). pydicom parses an
# element, sequences included, only when it is first read: reading them here turns a corrupt one into
# an unreadable file with its reason, instead of an error wherever it is read later.
_SCANNED = ("SOPClassUID", "SOPInstanceUID", "SeriesInstanceUID", "StudyInstanceUID", "PatientID", "Modality",
            "SeriesDescription", "SeriesNumber", "InstanceNumber", "ImageType", "Rows", "Columns", "NumberOfFrames",
            "ImageOrientationPatient", "FrameOfReferenceUID", "BodyPartExamined", "Manufacturer",
            "SharedFunctionalGroupsSequence", "PerFrameFunctionalGroupsSequence", "SpecificCharacterSet")


def _unparsable_element(ds: Dataset) -> str:
    """A reason when one of the elements the scan reads cannot be parsed, else ""."""
    for keyword in _SCANNED:
        try:
            element = ds.get(keyword)
            if element is not None and keyword.endswith("Sequence") and len(element):
                element[0].get("PlaneOrientationSequence")
        except Exception as exc:  # noqa: BLE001 - pydicom raises OSError, ValueError, ... on corrupt elements
            return f"{keyword} cannot be parsed: {_one_line(exc)}"
    return ""


def _unreadable(path: Path, reason: str) -> FileRead:
    return FileRead(FileKind.UNREADABLE, reason=f"{path}: {reason}")


def _not_dicom(head: bytes) -> str:
    """Why a file named like DICOM is not: empty, cut inside the preamble, or other content."""
    if not head:
        return "empty file (0 bytes)"
    if len(head) < 132:
        return (f"file cut short: it ends after {len(head)} bytes, before the 'DICM' prefix at byte 128 "
                "(or it is not DICOM)")
    return "not DICOM: no 'DICM' prefix at byte 128 and no DICOM data element at the start"


def _is_deflated(ds: Dataset) -> bool:
    meta = getattr(ds, "file_meta", None)
    return meta is not None and meta.get("TransferSyntaxUID") == DeflatedExplicitVRLittleEndian


def _deflated_truncation(path: Path, ds: Dataset) -> str:
    """A deflated file is inflated as a whole: read it whole and check the pixel data it holds."""
    try:
        full = pydicom.dcmread(path, force=True)
    except Exception as exc:  # noqa: BLE001 - a corrupt deflate stream raises zlib or pydicom errors
        return f"the deflated data set cannot be inflated ({_one_line(exc)})"
    if any(k in full for k in _PIXEL_KEYWORDS):
        data = full.get("PixelData")
        expected = _native_pixel_bytes(ds)
        if data is not None and expected and len(data) < expected:
            return f"pixel data has {len(data)} bytes, image needs {expected}"
        return ""
    return _missing_pixels(ds)


def _missing_pixels(ds: Dataset) -> str:
    """A reason when the header says image but the file has no pixel data (cut after its header)."""
    if "Rows" in ds and "Columns" in ds and "BitsAllocated" in ds:
        return "the header ends before the pixel data"
    keyword = UID(_sop_class(ds)).keyword if _sop_class(ds) else ""
    if any(fragment in keyword for fragment in _PIXEL_SOP_FRAGMENTS):
        return f"the file ends inside its header ({keyword} without Rows, Columns or pixel data)"
    return ""


def _sop_class(ds: Dataset) -> str:
    value = str(ds.get("SOPClassUID", "") or "").strip()
    return value or _media_sop_class(ds)


def _one_line(exc: Exception) -> str:
    return " ".join(str(exc).split())[:200] or type(exc).__name__


def _parse_failure(exc: Exception) -> str:
    """One line for a header pydicom could not parse; running out of bytes means truncation."""
    message = " ".join(str(exc).split()) or type(exc).__name__
    if isinstance(exc, EOFError | struct.error) or any(s in message for s in _EOF_MESSAGES):
        return f"truncated file: header cut short ({message})"
    return f"cannot parse DICOM header: {message}"


def _looks_like_raw_dataset(head: bytes) -> bool:
    """True when the first bytes are a plausible data element of group 0002 or 0008.

    Covers DICOM written without preamble and file meta (implicit or explicit VR, little or
    big endian); anything else (NIfTI, JSON, images, text) is not parsed at all.
    """
    if len(head) < 8:
        return False
    for endian in "<>":
        group, element = struct.unpack(endian + "HH", head[:4])
        if group not in _FIRST_GROUPS or element > 0x0FFF:
            continue
        vr = head[4:6]
        if vr.isalpha() and vr.isupper():
            return True  # explicit VR
        (length,) = struct.unpack(endian + "I", head[4:8])
        if endian == "<" and length < 0x10000:
            return True  # implicit VR little endian (only little endian exists for implicit)
    return False


def _plausible_dataset(ds: Dataset) -> bool:
    """True when a dataset parsed without preamble carries the tags any real object has."""
    return any(k in ds for k in ("SOPClassUID", "Modality", "StudyInstanceUID", "SeriesInstanceUID"))


def _media_sop_class(ds: Dataset) -> str:
    meta = getattr(ds, "file_meta", None)
    return str(meta.get("MediaStorageSOPClassUID", "")) if meta is not None else ""


def _truncation(ds: Dataset, fp: BinaryIO, size: int) -> str:
    """A reason when the file ends early, else "".

    pydicom silently returns a partial dataset for a truncated file, so we check ourselves.
    Images (the common case) stop in front of their pixel data: that element must fit in the
    file. Files read to the end (RTSTRUCT, SR, ...) are re-read once while watching for short
    reads, which is the only trace truncation leaves there.
    """
    if len(ds) == 0:
        return "no data elements after the file meta"
    pos = fp.tell()
    if pos < size:  # stopped in front of a pixel data element
        return _pixel_truncation(ds, fp, pos, size)
    if missing := _missing_pixels(ds):
        return missing
    fp.seek(0)
    reader = _ShortReadDetector(fp.read())
    try:
        pydicom.dcmread(reader, force=True)
    except Exception as exc:  # the first read succeeded, so this is the truncation showing
        return f"data ends inside an element ({exc})"
    return reader.problem


class _ShortReadDetector(io.BytesIO):
    """A byte stream that notes reads cut short by the end of the data.

    pydicom stops quietly when a read returns fewer bytes than asked. One empty read is the
    normal end of a dataset; a partial read, or a second empty read, means the file was cut.
    """

    def __init__(self, data: bytes) -> None:
        super().__init__(data)
        self.problem = ""
        self._empty_reads = 0

    def read(self, size: int | None = -1, /) -> bytes:
        data = super().read(size)
        if size is not None and size > 0 and len(data) < size and not self.problem:
            if data:
                self.problem = f"file ends {len(data)} bytes into a {size}-byte read"
            else:
                self._empty_reads += 1
                if self._empty_reads > 1:
                    self.problem = "file ends inside a data element"
        return data


def _pixel_truncation(ds: Dataset, fp: BinaryIO, pos: int, size: int) -> str:
    """Check that the pixel data element at ``pos`` fits in the file."""
    little = ds.original_encoding[1] is not False
    implicit = bool(ds.original_encoding[0])
    endian = "<" if little else ">"
    fp.seek(pos)
    head = fp.read(12)
    if len(head) < 8:
        return f"pixel data element header cut at byte {pos}"
    group, element = struct.unpack(endian + "HH", head[:4])
    if (group << 16 | element) not in _PIXEL_TAGS:
        return ""
    if implicit:
        (length,) = struct.unpack(endian + "I", head[4:8])
        start = pos + 8
    elif head[4:6] in _LONG_VRS:
        if len(head) < 12:
            return f"pixel data element header cut at byte {pos}"
        (length,) = struct.unpack(endian + "I", head[8:12])
        start = pos + 12
    else:
        (length,) = struct.unpack(endian + "H", head[6:8])
        start = pos + 8
    available = size - start
    if length == _ENCAPSULATED_LENGTH:
        return _encapsulated_truncation(fp, start, size)
    if length > available:
        return f"pixel data needs {length} bytes, file has {available}"
    expected = _native_pixel_bytes(ds)
    if expected and length < expected:
        return f"pixel data has {length} bytes, image needs {expected}"
    return ""


def _encapsulated_truncation(fp: BinaryIO, start: int, size: int) -> str:
    """Encapsulated pixel data must end with its Sequence Delimitation Item (PS3.5 A.4).

    Usually those are the file's last 8 bytes; trailing padding may follow, so a short tail
    is searched before calling the file truncated.
    """
    if size - start < 8:
        return "encapsulated pixel data has no fragments"
    fp.seek(size - 8)
    if fp.read(8) == _SEQUENCE_DELIMITER:
        return ""
    tail_start = max(start, size - _TAIL_SEARCH)
    fp.seek(tail_start)
    if _SEQUENCE_DELIMITER in fp.read(size - tail_start):
        return ""
    return "encapsulated pixel data does not end with a sequence delimiter (file cut short)"


def _native_pixel_bytes(ds: Dataset) -> int:
    """Bytes of uncompressed pixel data the header describes (0 when it cannot tell)."""
    rows, cols, bits = _raw_us(ds, 0x00280010), _raw_us(ds, 0x00280011), _raw_us(ds, 0x00280100)
    if not (rows and cols and bits):
        return 0
    samples = _raw_us(ds, 0x00280002) or 1
    total_bits = rows * cols * samples * frame_count(ds) * bits
    return (total_bits + 7) // 8


def _raw_us(ds: Dataset, tag: int) -> int:
    """An unsigned short (US) element's value without pydicom's value conversion.

    Called for every file, so it reads the raw two bytes: converting elements is what costs
    time in a header scan, and the loader converts them later anyway.
    """
    if tag not in ds:
        return 0
    elem = ds.get_item(tag)
    value = elem.value if isinstance(elem, DataElement | RawDataElement) else None
    if isinstance(value, bytes):
        if len(value) < 2:
            return 0
        # A raw element knows its byte order; a converted one with bytes (OB/UN) has the file's.
        little = elem.is_little_endian if isinstance(elem, RawDataElement) else ds.original_encoding[1] is not False
        return int(struct.unpack("<H" if little else ">H", value[:2])[0])
    try:
        return int(value)
    except (TypeError, ValueError):
        return 0


def frame_count(ds: Dataset) -> int:
    """NumberOfFrames (1 when absent or unreadable)."""
    try:
        return max(int(ds.get("NumberOfFrames", 1) or 1), 1)
    except (TypeError, ValueError):
        return 1
