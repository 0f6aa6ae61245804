"""The scan's data model: DICOM instances (headers only) grouped into series.

A :class:`Series` is what selection, checking and loading work on. It never holds pixel
data: the loader reads pixels later, only for the series a model will run on.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pydicom
from pydicom.dataset import Dataset


class Instance:
    """One DICOM file, read with ``stop_before_pixels``.

    ``sop_instance_uid`` and ``sop_class_uid`` fall back to the file meta
    (MediaStorageSOPInstanceUID / MediaStorageSOPClassUID) when the dataset's own values are
    empty, as in real exports such as TotalSegmentator's example CT.

    The header may be *released* to keep a scan of 10^5 files in bounded memory: the fields
    grouping and sorting need are kept, and ``header`` re-reads the file when asked again.
    """

    __slots__ = ("path", "_header", "sop_instance_uid", "sop_class_uid", "transfer_syntax_uid",
                 "number_of_frames", "instance_number", "study_instance_uid", "patient_id")

    def __init__(self, path: Path, header: Dataset | None, sop_instance_uid: str, sop_class_uid: str,
                 transfer_syntax_uid: str, number_of_frames: int = 1, instance_number: int | None = None,
                 study_instance_uid: str | None = None, patient_id: str | None = None) -> None:
        self.path = Path(path)
        self._header = header
        self.sop_instance_uid = sop_instance_uid
        self.sop_class_uid = sop_class_uid
        self.transfer_syntax_uid = transfer_syntax_uid
        self.number_of_frames = number_of_frames
        if header is not None:
            if instance_number is None:
                instance_number = _int_or_none(header.get("InstanceNumber"))
            if study_instance_uid is None:
                study_instance_uid = str(header.get("StudyInstanceUID", "") or "").strip()
            if patient_id is None:
                patient_id = str(header.get("PatientID", "") or "").strip()
        self.instance_number = instance_number
        self.study_instance_uid = study_instance_uid or ""
        self.patient_id = patient_id or ""  # with the study, what keeps two patients' images apart

    @property
    def header(self) -> Dataset:
        """The header (no pixels); re-read from the file if it was released."""
        if self._header is None:
            self._header = pydicom.dcmread(self.path, stop_before_pixels=True, force=True)
        return self._header

    @header.setter
    def header(self, value: Dataset) -> None:
        self._header = value

    @property
    def header_loaded(self) -> bool:
        return self._header is not None

    def release(self) -> None:
        """Drop the header from memory; the next access to ``header`` re-reads it."""
        self._header = None

    def __repr__(self) -> str:
        return f"Instance({str(self.path)!r}, sop_instance_uid={self.sop_instance_uid!r})"


def _int_or_none(value: Any) -> int | None:
    """A header value as int, None when it is none (any type: int() decides)."""
    try:
        return int(value)
    except (TypeError, ValueError):
        return None


@dataclass
class Series:
    """Instances that belong together: one acquisition, one model input.

    ``key`` identifies the series in the report and the output tree. It is the
    SeriesInstanceUID when the files carry one; otherwise a stable key derived from the folder,
    modality and geometry (see ``scan``), because grouping cannot rely on the UID alone.
    ``metadata`` holds the values that data-type queries match against (lower-case keys:
    ``mod``, ``type``, ``desc``, ``slices``, ``orientation``, ... plus any tag keyword).
    """

    key: str
    series_instance_uid: str
    study_instance_uid: str
    modality: str
    description: str
    instances: list[Instance] = field(default_factory=list)
    metadata: dict[str, Any] = field(default_factory=dict)
    findings: list[str] = field(default_factory=list)  # what the scan did to it (a split), for the report
    shared_uids: dict[str, str] = field(default_factory=dict)  # SOP Instance UID → key of another series using it

    @property
    def has_uids(self) -> bool:
        """True when study, series and every SOP instance UID are present (a SEG can reference them)."""
        return bool(self.series_instance_uid and self.study_instance_uid) and all(
            i.sop_instance_uid for i in self.instances
        )

    @property
    def first_header(self) -> Dataset:
        return self.instances[0].header

    def release_headers(self, keep_first: bool = True) -> None:
        """Drop instance headers from memory (they are re-read on demand); see :class:`Instance`."""
        for instance in self.instances[1 if keep_first else 0:]:
            instance.release()

    @property
    def number_of_images(self) -> int:
        """Frames across all instances (an enhanced multi-frame file counts its frames)."""
        return sum(i.number_of_frames for i in self.instances)


@dataclass
class UnreadableFile:
    """A file that looked like DICOM (or could not be ruled out) but could not be read."""

    path: Path
    reason: str


@dataclass
class ScanResult:
    """Everything the scan found under an input path."""

    root: Path
    series: list[Series] = field(default_factory=list)
    unreadable: list[UnreadableFile] = field(default_factory=list)
    non_dicom_files: int = 0
    dicomdir_files: int = 0
    files_seen: int = 0
