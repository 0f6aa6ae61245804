"""The run report (``OUT/medhub-report.json``): what happened to every series, and why.

Every series the scan found appears exactly once, with a status and, unless it succeeded, a
reason a person understands. The run section records provenance (medhub, model, workflow)
and every file that could not be read.
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from enum import StrEnum
from pathlib import Path
from typing import Any

from medhub.files import JOURNAL_NAME, append_journal, atomic_output, read_journal

REPORT_NAME = "medhub-report.json"


def iso_time(timestamp: float | None) -> str | None:
    """A time as ISO 8601 in UTC with milliseconds (``2026-11-01T10:15:02.123Z``): the report's and the server's."""
    if not timestamp:
        return None
    return datetime.fromtimestamp(timestamp, UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


class Status(StrEnum):
    SUCCEEDED = "succeeded"  # outputs written
    FAILED = "failed"  # chosen, but an error stopped it
    IMPLAUSIBLE = "implausible"  # outputs written, but a result lies outside the ranges its card declares plausible
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
    warnings: list[str] = field(default_factory=list)  # what a person must see even on success (also on stderr)
    input_files: int = 0
    sop_instance_uids: list[str] = field(default_factory=list)
    input_signature: str = ""  # the instances' SOP UIDs, sizes and mtimes, hashed: --resume redoes a changed input
    outputs: list[str] = field(default_factory=list)
    timings: dict[str, float] = field(default_factory=dict)
    values: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> SeriesEntry:
        known = {name: data[name] for name in cls.__dataclass_fields__ if name in data}
        known["status"] = Status(known["status"])
        return cls(**known)


class Journal:
    """The series finished in an output folder (``OUT/medhub-journal.jsonl``), one JSON line each.

    It is what makes ``--resume`` possible after a kill at any moment: a line is written (and
    flushed to disk) only after the series' outputs have been renamed into place, so a series in
    the journal is complete; a half-written last line from a kill is ignored when read back.
    ``fingerprint`` ties each line to the model, version and workflow that produced it. The same
    file records the token of every run (:class:`medhub.files.OutputFolder`); a run started
    without ``--resume`` ends what earlier runs finished (their lines no longer count).
    """

    def __init__(self, output_dir: Path, fingerprint: str) -> None:
        self.path = output_dir / JOURNAL_NAME
        self.fingerprint = fingerprint

    def append(self, entry: SeriesEntry) -> None:
        append_journal(self.path, {"fingerprint": self.fingerprint, **entry.to_dict()})

    def completed(self) -> dict[str, tuple[SeriesEntry, str]]:
        """Series key → (the last entry recorded for it, the fingerprint it was made with).

        Only what ran since the last run without ``--resume`` counts; an entry whose outputs are
        no longer all there is left out (the series is done again).
        """
        done: dict[str, tuple[SeriesEntry, str]] = {}
        for data in read_journal(self.path):
            if "run" in data:
                if data.get("fresh"):
                    done.clear()  # a run without --resume: what ran before it does not count
                continue
            entry = SeriesEntry.from_dict(data)
            if entry.status != Status.SUCCEEDED or not entry.outputs or \
                    not all((self.path.parent / output).is_file() for output in entry.outputs):
                done.pop(entry.key, None)
                continue
            done[entry.key] = (entry, str(data.get("fingerprint", "")))
        return done


@dataclass
class RunReport:
    medhub_version: str
    model: str
    model_version: str
    workflow: str
    input: str
    output: str
    input_path: str = ""  # the local input as read: relative to the output folder when inside it, else absolute
    device: str = ""  # the device the model ran on, after the check against the card and the machine
    input_provenance: list[dict[str, Any]] = field(default_factory=list)  # e.g. IDC series, collection, licence
    roi_subset: list[str] = field(default_factory=list)  # --roi-subset: the only segments written (empty: all)
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
        data["started"], data["finished"] = iso_time(self.started), iso_time(self.finished)
        return data

    def write(self, output_dir: Path) -> Path:
        """Write the report atomically (a reader never sees a half-written JSON)."""
        final = output_dir / REPORT_NAME
        with atomic_output(final) as temporary:
            temporary.write_text(json.dumps(self.to_dict(), indent=2, default=str) + "\n")
        return final
