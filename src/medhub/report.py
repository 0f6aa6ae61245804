"""The run report (``OUT/medhub-report.json``): what happened to every series, and why.

Every series the scan found appears exactly once, with a status and, unless it succeeded, a
reason a person understands. The run section records provenance (medhub, model, workflow)
and every file that could not be read.
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass, field
from enum import StrEnum
from pathlib import Path
from typing import Any

from medhub.output import atomic_output

REPORT_NAME = "medhub-report.json"


class Status(StrEnum):
    SUCCEEDED = "succeeded"  # outputs written
    FAILED = "failed"  # chosen, but an error stopped it (exit code 1)
    SKIPPED = "skipped"  # chosen by the rules, but the check step refused it with a reason
    REJECTED = "rejected"  # not suitable for this model (selection reason)


@dataclass
class SeriesEntry:
    key: str
    series_instance_uid: str
    study_instance_uid: str
    modality: str
    description: str
    images: int
    status: Status
    reason: str = ""
    findings: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    input_files: int = 0
    sop_instance_uids: list[str] = field(default_factory=list)
    outputs: list[str] = field(default_factory=list)
    timings: dict[str, float] = field(default_factory=dict)
    values: dict[str, Any] = field(default_factory=dict)


@dataclass
class RunReport:
    medhub_version: str
    model: str
    model_version: str
    workflow: str
    input: str
    output: str
    started: float = field(default_factory=time.time)
    finished: float = 0.0
    files_seen: int = 0
    non_dicom_files: int = 0
    dicomdir_files: int = 0
    unreadable: list[dict[str, str]] = field(default_factory=list)
    series: list[SeriesEntry] = field(default_factory=list)
    timings: dict[str, float] = field(default_factory=dict)

    def count(self, status: Status) -> int:
        return sum(1 for entry in self.series if entry.status == status)

    def summary(self) -> dict[str, int]:
        return {status.value: self.count(status) for status in Status}

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["summary"] = self.summary()
        data["duration_s"] = round(self.finished - self.started, 3) if self.finished else None
        return data

    def write(self, output_dir: Path) -> Path:
        """Write the report atomically (a reader never sees a half-written JSON)."""
        final = output_dir / REPORT_NAME
        with atomic_output(final) as temporary:
            temporary.write_text(json.dumps(self.to_dict(), indent=2, default=str) + "\n")
        return final
