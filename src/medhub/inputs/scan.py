"""Scan a folder tree: find the DICOM files, read their headers, group them into series.

Only headers are read (``stop_before_pixels``); pixels are read later by the loader, and only
for the series a model will run on. The scan never stops on a bad file: a file that is DICOM
(or says so by its name) but broken is recorded in :attr:`ScanResult.unreadable` with a one-line
reason, as is every link the walk skips (:mod:`medhub.inputs.walk`); everything else that is not
DICOM is counted in :attr:`ScanResult.non_dicom_files`. One file is classified and read by
:mod:`medhub.inputs.header`.

Grouping is by SeriesInstanceUID (or, without one, by folder and geometry). Files of one
SeriesInstanceUID that belong to different patients or studies (a broken anonymiser gives two
patients' series one UID) are never merged: the group is split into one series per PatientID and
StudyInstanceUID, and each part says so in :attr:`Series.findings`.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from pydicom.dataset import Dataset
from pydicom.uid import (
    UID,
    ExplicitVRBigEndian,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
)

from medhub import config
from medhub.data.series import Instance, ScanResult, Series, UnreadableFile
from medhub.inputs.header import MEDIA_STORAGE_DIRECTORY, FileKind, frame_count, read_header
from medhub.inputs.walk import iter_files

__all__ = ["MEDIA_STORAGE_DIRECTORY", "iter_files", "make_series", "orientation_name", "scan", "scan_files",
           "series_metadata", "sop_class_keyword"]

# SOP classes newer than pydicom 3.0's UID dictionary, so that ``sop_class_name`` is never empty
# for objects we meet in practice (PS3.6 Annex A).
_EXTRA_SOP_CLASS_KEYWORDS = {
    "1.2.840.10008.5.1.4.1.1.66.7": "LabelMapSegmentationStorage",
    "1.2.840.10008.5.1.4.1.1.66.8": "HeightMapSegmentationStorage",
}

# Orientation: the slice normal must lie within this cosine of an axis (about 32 degrees) to be
# called axial/coronal/sagittal; gantry-tilted head CT (typically up to 30 degrees) stays axial.
_ORIENTATION_MIN_COSINE = 0.85


RELEASE_HEADERS_ABOVE = 2000
"""Files: above this many, only the first header of each series stays in memory (bounded memory)."""

_CHUNK = 256  # files per task in a parallel scan


def scan(root: Path, progress: Callable[[int], None] | None = None, *, workers: int | None = None,
         keep_headers: bool | None = None, avoid: Path | None = None) -> ScanResult:
    """Read the headers of all DICOM files under ``root`` and group them into series.

    ``progress`` is called with the number of files handled so far (use :func:`iter_files`
    first if a total is needed for a progress bar). The walk is streamed: files are read as
    they are found. ``workers`` > 1 reads headers in that many processes (default: the
    ``MEDHUB_SCAN_WORKERS`` environment variable, else 1). ``keep_headers`` keeps every header in
    memory; by default they are kept up to :data:`RELEASE_HEADERS_ABOVE` files and released
    beyond (re-read on demand), so a tree of 10^5 files stays within a bounded footprint.
    ``avoid`` is the run's output folder: a link into it is refused (:func:`iter_files`).
    """
    root = Path(root)
    result = ScanResult(root=root)
    groups: dict[str, list[Instance]] = {}
    workers = workers if workers is not None else config.settings().scan_workers
    if workers > 1:
        _scan_parallel(root, result, groups, workers, progress, avoid)
    else:
        releasing = keep_headers is False
        for path in iter_files(root, on_skip=_skipped(result), avoid=avoid):
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
    result.series = group_series(groups)
    return result


def _scan_parallel(root: Path, result: ScanResult, groups: dict[str, list[Instance]], workers: int,
                   progress: Callable[[int], None] | None, avoid: Path | None = None) -> None:
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
            for key, path, sop, sop_class, syntax, frames, number, study, patient in chunk.instances:
                instance = Instance(Path(path), None, sop, sop_class, syntax, frames, number, study, patient)
                groups.setdefault(key, []).append(instance)
            if progress is not None:
                progress(result.files_seen)

    with ProcessPoolExecutor(max_workers=workers, mp_context=multiprocessing.get_context(method)) as pool:
        batch: list[str] = []
        for path in iter_files(root, on_skip=_skipped(result), avoid=avoid):
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
    instances: list[tuple[str, str, str, str, str, int, int | None, str, str]] = field(default_factory=list)


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
                                    i.number_of_frames, i.instance_number, i.study_instance_uid, i.patient_id))
    return chunk


def scan_files(paths: list[Path], key: str | None = None) -> ScanResult:
    """Read and group exactly these files (a series' instances, e.g. in a Dask worker).

    The grouping is the same as :func:`scan`, so the same files give the same series key. ``key``
    is the key an earlier scan gave these files: when they form one series it keeps that key (a
    part of a split series, scanned alone, has nothing left to split from).
    """
    result = ScanResult(root=Path(paths[0]).parent if paths else Path("."))
    groups: dict[str, list[Instance]] = {}
    for path in paths:
        result.files_seen += 1
        _scan_file(Path(path), result, groups)
    result.series = group_series(groups)
    if key is not None and len(result.series) == 1:
        result.series[0].key = key
    return result


def group_series(groups: dict[str, list[Instance]]) -> list[Series]:
    """Series from grouped instances, in group order; a group mixing patients or studies is split."""
    out = []
    for key, instances in groups.items():
        parts = _split_by_patient(instances)
        if len(parts) == 1:
            out.append(make_series(key, instances))
            continue
        uid = _text(instances[0].header, "SeriesInstanceUID") or "(no SeriesInstanceUID)"
        for number, members in enumerate(parts, start=1):
            series = make_series(f"{key}-part{number}", members)
            series.findings.append(
                f"split: SeriesInstanceUID {uid} holds the images of {len(parts)} different patients or studies "
                f"(PatientID / StudyInstanceUID differ; a broken anonymiser?); never merged: this is part {number} "
                f"of {len(parts)}, {len(members)} of {len(instances)} files"
            )
            out.append(series)
    _mark_shared_uids(out)
    return out


def _mark_shared_uids(series_list: list[Series]) -> None:
    """Note SOP Instance UIDs that images of two series share (a broken anonymiser or a bad merge of
    exports): a result referencing one of them would be ambiguous, so the loader refuses such series."""
    owner: dict[str, Series] = {}
    for series in series_list:
        for instance in series.instances:
            uid = instance.sop_instance_uid
            if not uid:
                continue
            first = owner.setdefault(uid, series)
            if first is not series:
                series.shared_uids.setdefault(uid, first.key)
                first.shared_uids.setdefault(uid, series.key)


def _split_by_patient(instances: list[Instance]) -> list[list[Instance]]:
    """The instances per (PatientID, StudyInstanceUID), in order of first appearance."""
    parts: dict[tuple[str, str], list[Instance]] = {}
    for instance in instances:
        parts.setdefault((instance.patient_id, instance.study_instance_uid), []).append(instance)
    return list(parts.values())


# ---------------------------------------------------------------------------------------------
# One file


def _scan_file(path: Path, result: ScanResult, groups: dict[str, list[Instance]]) -> str | None:
    """Classify one file and, when it is a DICOM instance, add it to its series group (returns the key)."""
    read = read_header(path)
    if read.kind == FileKind.DICOMDIR:
        result.dicomdir_files += 1
    elif read.kind == FileKind.NOT_DICOM:
        result.non_dicom_files += 1
    elif read.kind == FileKind.UNREADABLE:
        result.unreadable.append(UnreadableFile(path, read.reason))
    else:
        assert read.dataset is not None
        key = _group_key(path, read.dataset)
        groups.setdefault(key, []).append(_make_instance(path, read.dataset))
        return key
    return None


def _skipped(result: ScanResult) -> Callable[[Path, str], None]:
    """Where the walk names the links and special files it does not read."""
    return lambda path, reason: result.unreadable.append(UnreadableFile(path, f"{path}: {reason}"))


# ---------------------------------------------------------------------------------------------
# Instances and series


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
        number_of_frames=frame_count(ds),
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
