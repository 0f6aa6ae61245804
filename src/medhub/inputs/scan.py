"""Scan a folder tree: find the DICOM files, read their headers, group them into series.

Only headers are read (``stop_before_pixels``); pixels are read later by the loader, and only
for the series a model will run on. The scan never stops on a bad file: a file that is DICOM
but broken is recorded in :attr:`ScanResult.unreadable` with a one-line reason, everything
that is not DICOM is counted in :attr:`ScanResult.non_dicom_files`.

Deciding "is this DICOM" cheaply matters for folders full of NIfTI, JSON and screenshots:
a file is parsed only when it carries the ``DICM`` magic after the 128-byte preamble, or when
its first bytes already look like a DICOM data element of group 0002 or 0008 (files written
without preamble, such as pydicom's ``rtstruct.dcm``). Everything else is skipped unread.
"""

from __future__ import annotations

import hashlib
import io
import os
import struct
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np
import pydicom
from pydicom.dataset import Dataset
from pydicom.uid import (
    UID,
    ExplicitVRBigEndian,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
)

from medhub import config
from medhub.data.series import Instance, ScanResult, Series, UnreadableFile
from medhub.errors import MedhubError

MEDIA_STORAGE_DIRECTORY = "1.2.840.10008.1.3.10"

# SOP classes newer than pydicom 3.0's UID dictionary, so that ``sop_class_name`` is never empty
# for objects we meet in practice (PS3.6 Annex A).
_EXTRA_SOP_CLASS_KEYWORDS = {
    "1.2.840.10008.5.1.4.1.1.66.7": "LabelMapSegmentationStorage",
    "1.2.840.10008.5.1.4.1.1.66.8": "HeightMapSegmentationStorage",
}

# Pixel data elements: (7FE0,0010) Pixel Data, (7FE0,0008) Float, (7FE0,0009) Double Float.
_PIXEL_TAGS = {0x7FE00010, 0x7FE00008, 0x7FE00009}
# A file without preamble is parsed only when its first element is in one of these groups.
_FIRST_GROUPS = {0x0002, 0x0008}
# Explicit VRs whose length field is 4 bytes (after 2 reserved bytes), PS3.5 7.1.2.
_LONG_VRS = {b"OB", b"OD", b"OF", b"OL", b"OV", b"OW", b"SQ", b"SV", b"UC", b"UN", b"UR", b"UT", b"UV"}
_ENCAPSULATED_LENGTH = 0xFFFFFFFF
_SEQUENCE_DELIMITER = b"\xfe\xff\xdd\xe0\x00\x00\x00\x00"  # (FFFE,E0DD), length 0, little endian
_TAIL_SEARCH = 65536
# Messages pydicom gives when a header runs out of bytes.
_EOF_MESSAGES = ("No tag to read", "end of file", "unpack requires a buffer", "EOF")
# Orientation: the slice normal must lie within this cosine of an axis (about 32 degrees) to be
# called axial/coronal/sagittal; gantry-tilted head CT (typically up to 30 degrees) stays axial.
_ORIENTATION_MIN_COSINE = 0.85


def iter_files(root: Path) -> Iterator[Path]:
    """Yield every regular file under ``root`` (or ``root`` itself), sorted for determinism.

    Order is depth-first by name (files and folders interleaved, like a sorted ``find``).
    Symlinked directories are not followed (a loop would never end); symlinked files are.
    """
    root = Path(root)
    if root.is_file():
        yield root
        return
    if not root.is_dir():
        raise MedhubError(f"{root}: input path does not exist")
    stack = [iter(_sorted_entries(root))]
    while stack:
        entry = next(stack[-1], None)
        if entry is None:
            stack.pop()
        elif entry.is_dir(follow_symlinks=False):
            stack.append(iter(_sorted_entries(Path(entry.path))))
        elif entry.is_file():
            yield Path(entry.path)


def _sorted_entries(folder: Path) -> list[os.DirEntry[str]]:
    try:
        with os.scandir(folder) as it:
            return sorted(it, key=lambda e: e.name)
    except OSError as exc:
        raise MedhubError(f"{folder}: cannot list folder ({exc.strerror})") from exc


RELEASE_HEADERS_ABOVE = 2000
"""Files: above this many, only the first header of each series stays in memory (bounded memory)."""

_CHUNK = 256  # files per task in a parallel scan


def scan(root: Path, progress: Callable[[int], None] | None = None, *, workers: int | None = None,
         keep_headers: bool | None = None) -> ScanResult:
    """Read the headers of all DICOM files under ``root`` and group them into series.

    ``progress`` is called with the number of files handled so far (use :func:`iter_files`
    first if a total is needed for a progress bar). The walk is streamed: files are read as
    they are found. ``workers`` > 1 reads headers in that many processes (default: the
    ``MEDHUB_SCAN_WORKERS`` environment variable, else 1). ``keep_headers`` keeps every header in
    memory; by default they are kept up to :data:`RELEASE_HEADERS_ABOVE` files and released
    beyond (re-read on demand), so a tree of 10^5 files stays within a bounded footprint.
    """
    root = Path(root)
    result = ScanResult(root=root)
    groups: dict[str, list[Instance]] = {}
    workers = workers if workers is not None else config.settings().scan_workers
    if workers > 1:
        _scan_parallel(root, result, groups, workers, progress)
    else:
        releasing = keep_headers is False
        for path in iter_files(root):
            result.files_seen += 1
            key = _scan_file(path, result, groups)
            if not releasing and keep_headers is None and result.files_seen > RELEASE_HEADERS_ABOVE:
                releasing = True
                for members in groups.values():
                    for instance in members[1:]:
                        instance.release()
            if releasing and key is not None and len(groups[key]) > 1:
                groups[key][-1].release()
            if progress is not None:
                progress(result.files_seen)
    result.series = [make_series(key, instances) for key, instances in groups.items()]
    return result


def _scan_parallel(root: Path, result: ScanResult, groups: dict[str, list[Instance]], workers: int,
                   progress: Callable[[int], None] | None) -> None:
    """Read headers in worker processes; only light records come back (headers are re-read on demand)."""
    import multiprocessing
    import threading
    from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait

    # fork is cheapest, but not safe in a process that runs threads (the service): spawn there.
    method = "fork" if threading.active_count() == 1 else "spawn"
    pending: set[Future[_ChunkResult]] = set()

    def absorb(done: set[Future[_ChunkResult]]) -> None:
        for future in done:
            chunk = future.result()
            result.files_seen += chunk.files
            result.non_dicom_files += chunk.non_dicom
            result.dicomdir_files += chunk.dicomdir
            result.unreadable.extend(UnreadableFile(Path(path), reason) for path, reason in chunk.unreadable)
            for key, path, sop, sop_class, syntax, frames, number, study in chunk.instances:
                instance = Instance(Path(path), None, sop, sop_class, syntax, frames, number, study)
                groups.setdefault(key, []).append(instance)
            if progress is not None:
                progress(result.files_seen)

    with ProcessPoolExecutor(max_workers=workers, mp_context=multiprocessing.get_context(method)) as pool:
        batch: list[str] = []
        for path in iter_files(root):
            batch.append(str(path))
            if len(batch) == _CHUNK:
                pending.add(pool.submit(_scan_chunk, batch))
                batch = []
                if len(pending) >= 2 * workers:  # bounded: the walk waits for the readers
                    done, pending = wait(pending, return_when=FIRST_COMPLETED)
                    absorb(done)
        if batch:
            pending.add(pool.submit(_scan_chunk, batch))
        absorb(set(wait(pending).done))
    # Chunks finish in any order: restore the walk's order so results do not depend on timing.
    order = {key: min(str(i.path) for i in members) for key, members in groups.items()}
    for key in sorted(groups, key=order.__getitem__):
        groups[key] = groups.pop(key)


@dataclass
class _ChunkResult:
    files: int = 0
    non_dicom: int = 0
    dicomdir: int = 0
    unreadable: list[tuple[str, str]] = field(default_factory=list)
    instances: list[tuple[str, str, str, str, str, int, int | None, str]] = field(default_factory=list)


def _scan_chunk(paths: list[str]) -> _ChunkResult:
    """Worker side of a parallel scan: classify files, return light instance records."""
    partial = ScanResult(root=Path("."))
    groups: dict[str, list[Instance]] = {}
    for path in paths:
        _scan_file(Path(path), partial, groups)
    chunk = _ChunkResult(files=len(paths), non_dicom=partial.non_dicom_files, dicomdir=partial.dicomdir_files,
                         unreadable=[(str(u.path), u.reason) for u in partial.unreadable])
    for key, members in groups.items():
        for i in members:
            chunk.instances.append((key, str(i.path), i.sop_instance_uid, i.sop_class_uid, i.transfer_syntax_uid,
                                    i.number_of_frames, i.instance_number, i.study_instance_uid))
    return chunk


def scan_files(paths: list[Path]) -> ScanResult:
    """Read and group exactly these files (a series' instances, e.g. in a Dask worker).

    The grouping is the same as :func:`scan`, so the same files give the same series key.
    """
    result = ScanResult(root=Path(paths[0]).parent if paths else Path("."))
    groups: dict[str, list[Instance]] = {}
    for path in paths:
        result.files_seen += 1
        _scan_file(Path(path), result, groups)
    result.series = [make_series(key, instances) for key, instances in groups.items()]
    return result


# ---------------------------------------------------------------------------------------------
# One file


def _scan_file(path: Path, result: ScanResult, groups: dict[str, list[Instance]]) -> str | None:
    """Classify one file and, when it is a DICOM instance, add it to its series group (returns the key)."""
    if path.name.upper() == "DICOMDIR":
        result.dicomdir_files += 1
        return None
    try:
        with open(path, "rb") as fp:
            head = fp.read(132)
            has_preamble = len(head) == 132 and head[128:132] == b"DICM"
            if not has_preamble and not _looks_like_raw_dataset(head):
                result.non_dicom_files += 1
                return None
            fp.seek(0)
            size = os.fstat(fp.fileno()).st_size
            try:
                ds = pydicom.dcmread(fp, stop_before_pixels=True, force=True)
            except Exception as exc:  # pydicom raises many types on corrupt input
                result.unreadable.append(UnreadableFile(path, f"{path}: {_parse_failure(exc)}"))
                return None
            if not has_preamble and not _plausible_dataset(ds):
                result.non_dicom_files += 1
                return None
            if _media_sop_class(ds) == MEDIA_STORAGE_DIRECTORY:
                result.dicomdir_files += 1
                return None
            problem = _truncation(ds, fp, size)
    except OSError as exc:
        result.unreadable.append(UnreadableFile(path, f"{path}: cannot read file ({exc.strerror})"))
        return None
    if problem:
        result.unreadable.append(UnreadableFile(path, f"{path}: truncated file: {problem}"))
        return None
    instance = _make_instance(path, ds)
    key = _group_key(path, ds)
    groups.setdefault(key, []).append(instance)
    return key


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
    if "Rows" in ds and "Columns" in ds and "BitsAllocated" in ds:
        return "the header ends before the pixel data"
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
    total_bits = rows * cols * samples * _frames(ds) * bits
    return (total_bits + 7) // 8


def _raw_us(ds: Dataset, tag: int) -> int:
    """An unsigned short (US) element's value without pydicom's value conversion.

    Called for every file, so it reads the raw two bytes: converting elements is what costs
    time in a header scan, and the loader converts them later anyway.
    """
    if tag not in ds:
        return 0
    elem = ds.get_item(tag)
    value = elem.value
    if isinstance(value, bytes):
        if len(value) < 2:
            return 0
        return struct.unpack("<H" if elem.is_little_endian else ">H", value[:2])[0]
    try:
        return int(value)
    except (TypeError, ValueError):
        return 0


# ---------------------------------------------------------------------------------------------
# Instances and series


def _frames(ds: Dataset) -> int:
    try:
        return max(int(ds.get("NumberOfFrames", 1) or 1), 1)
    except (TypeError, ValueError):
        return 1


def _transfer_syntax(ds: Dataset) -> str:
    meta = getattr(ds, "file_meta", None)
    uid = str(meta.get("TransferSyntaxUID", "")) if meta is not None else ""
    if uid:
        return uid
    implicit, little = ds.original_encoding
    if implicit:
        return ImplicitVRLittleEndian
    return ExplicitVRLittleEndian if little is not False else ExplicitVRBigEndian


def _make_instance(path: Path, ds: Dataset) -> Instance:
    meta = getattr(ds, "file_meta", None)
    sop_instance = str(ds.get("SOPInstanceUID", "") or "")
    sop_class = str(ds.get("SOPClassUID", "") or "")
    if meta is not None:
        sop_instance = sop_instance or str(meta.get("MediaStorageSOPInstanceUID", "") or "")
        sop_class = sop_class or str(meta.get("MediaStorageSOPClassUID", "") or "")
    return Instance(
        path=path,
        header=ds,
        sop_instance_uid=sop_instance,
        sop_class_uid=sop_class,
        transfer_syntax_uid=_transfer_syntax(ds),
        number_of_frames=_frames(ds),
    )


def _text(ds: Dataset, keyword: str) -> str:
    value = ds.get(keyword, "")
    return "" if value is None else str(value).strip()


def _group_key(path: Path, ds: Dataset) -> str:
    """SeriesInstanceUID, or a stable key from folder + modality + geometry when it is missing."""
    uid = _text(ds, "SeriesInstanceUID")
    if uid:
        return uid
    iop = _orientation_vector(ds)
    parts = [
        str(path.parent.resolve()),
        _text(ds, "Modality"),
        _text(ds, "FrameOfReferenceUID"),
        ",".join(f"{v:.3f}" for v in iop) if iop is not None else "",
        _text(ds, "Rows"),
        _text(ds, "Columns"),
        _text(ds, "SeriesDescription"),
    ]
    digest = hashlib.sha1("\x1f".join(parts).encode("utf-8")).hexdigest()[:16]
    return f"nouid-{digest}"


def _orientation_vector(ds: Dataset) -> np.ndarray | None:
    """ImageOrientationPatient of a classic image, or of the first frame of an enhanced one."""
    iop = ds.get("ImageOrientationPatient")
    if iop is None:
        for seq_kw in ("SharedFunctionalGroupsSequence", "PerFrameFunctionalGroupsSequence"):
            groups = ds.get(seq_kw)
            if groups:
                plane = groups[0].get("PlaneOrientationSequence")
                if plane:
                    iop = plane[0].get("ImageOrientationPatient")
                    if iop is not None:
                        break
    if iop is None or len(iop) != 6:
        return None
    try:
        return np.asarray([float(v) for v in iop])
    except (TypeError, ValueError):
        return None


def orientation_name(iop: np.ndarray | None) -> str:
    """'axial', 'coronal', 'sagittal' or 'oblique' from ImageOrientationPatient ('' if unknown)."""
    if iop is None:
        return ""
    normal = np.cross(iop[:3], iop[3:])
    norm = float(np.linalg.norm(normal))
    if norm < 1e-6:
        return ""
    normal = np.abs(normal / norm)
    axis = int(np.argmax(normal))
    if normal[axis] < _ORIENTATION_MIN_COSINE:
        return "oblique"
    return ("sagittal", "coronal", "axial")[axis]


def sop_class_keyword(uid: str) -> str:
    """The PS3.6 keyword of a SOP class UID ('' when unknown)."""
    if not uid:
        return ""
    return UID(uid).keyword or _EXTRA_SOP_CLASS_KEYWORDS.get(uid, "")


def _instance_sort_key(instance: Instance) -> tuple[int, int, str]:
    if instance.instance_number is None:
        return (1, 0, str(instance.path))
    return (0, instance.instance_number, str(instance.path))


def make_series(key: str, instances: list[Instance]) -> Series:
    """A Series from grouped instances: sorted by InstanceNumber then path, metadata filled.

    Public so that later steps (and tests) can build a series from a subset of instances.
    """
    instances.sort(key=_instance_sort_key)
    first = instances[0].header
    uid = _text(first, "SeriesInstanceUID")
    studies = {i.study_instance_uid for i in instances}
    study = studies.pop() if len(studies) == 1 else ""
    series = Series(
        key=key,
        series_instance_uid=uid,
        study_instance_uid=study,
        modality=_text(first, "Modality").upper(),
        description=_text(first, "SeriesDescription"),
        instances=instances,
    )
    series.metadata = series_metadata(series)
    return series


def series_metadata(series: Series) -> dict[str, Any]:
    """The JSON-safe values data-type queries match against (lower-case keys).

    Any other DICOM keyword is looked up on ``series.first_header`` by the query itself.
    """
    first = series.first_header
    image_type = [str(v).strip().lower() for v in (first.get("ImageType") or [])]
    sop_class = series.instances[0].sop_class_uid
    return {
        "format": "dicom",
        "mod": series.modality.lower(),
        "type": "\\".join(image_type),
        "image_type": image_type,
        "desc": series.description,
        "slices": series.number_of_images,
        "instances": len(series.instances),
        "orientation": orientation_name(_orientation_vector(first)),
        "sop_class": sop_class,
        "sop_class_name": sop_class_keyword(sop_class),
        "bodypart": _text(first, "BodyPartExamined"),
        "manufacturer": _text(first, "Manufacturer"),
        "rows": _int_or_none(first.get("Rows")),
        "columns": _int_or_none(first.get("Columns")),
        "frames": series.instances[0].number_of_frames,
        "study_uid": series.study_instance_uid,
        "series_uid": series.series_instance_uid,
        "series_number": _int_or_none(first.get("SeriesNumber")),
        "has_uids": series.has_uids,
        "folder": str(series.instances[0].path.parent),
    }


def _int_or_none(value: Any) -> int | None:
    try:
        return int(value)
    except (TypeError, ValueError):
        return None
