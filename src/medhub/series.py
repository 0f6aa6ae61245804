"""The scan's data model: DICOM instances (headers only) grouped into series.

A :class:`Series` is what selection, checking and loading work on. It never holds pixel
data: the loader reads pixels later, only for the series a model will run on.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pydicom.dataset import Dataset


@dataclass
class Instance:
    """One DICOM file, read with ``stop_before_pixels``.

    ``sop_instance_uid`` and ``sop_class_uid`` fall back to the file meta
    (MediaStorageSOPInstanceUID / MediaStorageSOPClassUID) when the dataset's own values are
    empty, as in real exports such as TotalSegmentator's example CT.
    """

    path: Path
    header: Dataset
    sop_instance_uid: str
    sop_class_uid: str
    transfer_syntax_uid: str
    number_of_frames: int = 1


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

    @property
    def has_uids(self) -> bool:
        """True when study, series and every SOP instance UID are present (a SEG can reference them)."""
        return bool(self.series_instance_uid and self.study_instance_uid) and all(
            i.sop_instance_uid for i in self.instances
        )

    @property
    def first_header(self) -> Dataset:
        return self.instances[0].header

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
