"""The DICOM listener's spool: received instances on disk until their series has been processed.

A PACS that sent a study considers it delivered; if the listener dies before the model ran, the
study must still be there when it comes back. So every instance is written to the spool before
C-STORE answers success, and a series moves through the spool by renames only (atomic on one
file system):

    tmp/<random>.dcm                 being written (removed at start-up: never acknowledged)
    incoming/<series>/<sop>.dcm      acknowledged, its series still receiving
    work/<series>.<ns>/<sop>.dcm     claimed: the series was quiet long enough, the model runs on it
    failed/<series>.<ns>/            the run failed: kept for a person to look at (and to re-send)
    outbox/<id>.json                 results whose forwarding failed, retried until they are stored

At start-up ``work/`` batches (claimed before a crash) run at once, and ``incoming/`` series run
once they have been quiet for the timeout after the start (a sender interrupted by our downtime
may resume them), so nothing received is ever lost. One process owns a spool at a
time (an exclusive lock on ``.lock``).
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import shutil
import threading
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from medhub.errors import MedhubError
from medhub.files import atomic_output, safe_component


@dataclass
class OutboxEntry:
    """Results of one series still to be forwarded."""

    path: Path
    series: str
    files: list[str]
    attempts: int = 0
    next_try: float = 0.0


class Spool:
    """Received instances grouped by series, with the time each series last received one."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.tmp, self.incoming, self.work = root / "tmp", root / "incoming", root / "work"
        self.failed, self.outbox = root / "failed", root / "outbox"
        self._lock = threading.Lock()
        self._last_arrival: dict[str, float] = {}  # series folder name -> time.time() of its newest instance
        self._lock_file: Any = None

    # -- ownership ---------------------------------------------------------------------------
    def open(self) -> None:
        """Create the folders, take the spool's lock, and take stock of what a previous process left."""
        for folder in (self.tmp, self.incoming, self.work, self.failed, self.outbox):
            folder.mkdir(parents=True, exist_ok=True)
        handle = (self.root / ".lock").open("a+")
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            handle.close()
            raise MedhubError(f"spool {self.root} is in use by another medhub listen; give each listener its own "
                              "--spool (or --output)") from None
        self._lock_file = handle
        for leftover in self.tmp.iterdir():  # written, never acknowledged to the sender
            with contextlib.suppress(OSError):
                leftover.unlink()
        now = time.time()
        for series_dir in self.incoming.iterdir():
            if any(series_dir.glob("*.dcm")):
                self._last_arrival[series_dir.name] = now  # the sender may resume after our downtime: wait once more
            else:
                with contextlib.suppress(OSError):
                    series_dir.rmdir()

    def close(self) -> None:
        if self._lock_file is not None:
            self._lock_file.close()
            self._lock_file = None

    # -- receiving ---------------------------------------------------------------------------
    def receive(self, series_uid: str, sop_uid: str, data: bytes) -> None:
        """Store one instance (a whole DICOM file) on disk before it is acknowledged to the sender."""
        temporary = self.tmp / f"{uuid.uuid4().hex}.dcm"
        with temporary.open("wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())  # acknowledged means on disk: the sender may delete its copy
        name = safe_component(series_uid)
        with self._lock:
            folder = self.incoming / name
            folder.mkdir(exist_ok=True)
            os.replace(temporary, folder / f"{safe_component(sop_uid)}.dcm")
            self._last_arrival[name] = time.time()

    def quiet_series(self, timeout: float, now: float | None = None) -> list[str]:
        """Series that received nothing for ``timeout`` seconds, oldest first."""
        now = time.time() if now is None else now
        with self._lock:
            return sorted((s for s, t in self._last_arrival.items() if now - t >= timeout),
                          key=lambda s: self._last_arrival[s])

    def claim(self, series: str) -> Path | None:
        """Move a series from ``incoming/`` to ``work/`` (instances arriving later start a new batch)."""
        with self._lock:
            self._last_arrival.pop(series, None)
            source = self.incoming / series
            if not source.exists():
                return None
            batch = self.work / f"{series}.{time.time_ns()}"
            os.replace(source, batch)
            return batch

    def claimed(self) -> list[Path]:
        """Batches claimed by a process that did not finish them (processed first at start-up)."""
        return sorted((p for p in self.work.iterdir() if p.is_dir()), key=lambda p: p.name.rsplit(".", 1)[-1])

    def finish(self, batch: Path) -> None:
        """The batch's results are written: its instances are no longer needed."""
        shutil.rmtree(batch, ignore_errors=True)

    def fail(self, batch: Path) -> Path:
        """Keep a batch whose run failed under ``failed/``; return where it is."""
        target = self.failed / batch.name
        os.replace(batch, target)
        return target

    @staticmethod
    def series_of(batch: Path) -> str:
        return batch.name.rsplit(".", 1)[0]

    # -- forwarding retries ------------------------------------------------------------------
    def add_outbox(self, series: str, files: list[Path], next_try: float) -> OutboxEntry:
        entry = OutboxEntry(self.outbox / f"{series}.{time.time_ns()}.json", series, [str(f) for f in files],
                            attempts=1, next_try=next_try)
        self.save_outbox(entry)
        return entry

    def save_outbox(self, entry: OutboxEntry) -> None:
        with atomic_output(entry.path) as temporary:
            temporary.write_text(json.dumps({"series": entry.series, "files": entry.files,
                                             "attempts": entry.attempts, "next_try": entry.next_try}))

    def outbox_entries(self) -> list[OutboxEntry]:
        entries = []
        for path in sorted(self.outbox.glob("*.json")):
            try:
                data = json.loads(path.read_text())
                entries.append(OutboxEntry(path, str(data["series"]), [str(f) for f in data["files"]],
                                           int(data.get("attempts", 0)), float(data.get("next_try", 0.0))))
            except (OSError, ValueError, KeyError, TypeError):
                continue  # not ours or damaged: left alone
        return entries
