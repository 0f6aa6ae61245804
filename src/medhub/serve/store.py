"""The job store: one SQLite file (WAL) that holds every job's state, inputs, progress and outcome.

SQLite because a lab's service needs no database server, survives restarts, and a single
file is easy to back up. Every method is one short transaction under one lock (requests and
worker threads share the connection); :meth:`JobStore.claim_next` takes the oldest queued job
atomically, so two workers never run the same job. A job's files live next to the database
(``DATA/jobs/<id>/``), the store only records where.

Restart: :meth:`JobStore.recover` runs once at startup. A job still marked ``running`` was
interrupted (a crash, SIGKILL, power loss): it is queued again while it has been started fewer
than ``max_attempts`` times, else it fails with the reason "interrupted by a server restart".
"""

from __future__ import annotations

import json
import sqlite3
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path
from typing import Any


class JobStatus(StrEnum):
    QUEUED = "queued"
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELLED = "cancelled"

    @property
    def finished(self) -> bool:
        return self in (JobStatus.SUCCEEDED, JobStatus.FAILED, JobStatus.CANCELLED)


INTERRUPTED = "interrupted by a server restart"


def empty_progress() -> dict[str, Any]:
    """``fraction`` (0..1) counts finished series plus the finished steps of the running one."""
    return {"series_done": 0, "series_total": 0, "step": None, "series": None, "steps_done": 0, "steps_total": 0,
            "fraction": 0.0}


@dataclass
class Job:
    """One row of the store; ``workflow_json`` is the resolved workflow the job runs, fixed at submit time."""

    id: str
    model: str
    workflow: str
    options: dict[str, Any]
    workflow_json: str
    input_path: str  # relative to the job folder: "input" (a DICOM tree) or "input/<name>.nii.gz"
    input_summary: dict[str, Any]
    status: JobStatus = JobStatus.QUEUED
    created: float = field(default_factory=time.time)
    started: float | None = None
    finished: float | None = None
    error: str | None = None
    progress: dict[str, Any] = field(default_factory=empty_progress)
    attempts: int = 0
    notes: list[str] = field(default_factory=list)
    deleted: bool = False


_COLUMNS = ("id", "model", "workflow", "options", "workflow_json", "input_path", "input_summary", "status",
            "created", "started", "finished", "error", "progress", "attempts", "notes", "deleted")
_JSON_COLUMNS = {"options", "input_summary", "progress", "notes"}

_SCHEMA = """
CREATE TABLE IF NOT EXISTS jobs (
    id TEXT PRIMARY KEY,
    model TEXT NOT NULL,
    workflow TEXT NOT NULL,
    options TEXT NOT NULL,
    workflow_json TEXT NOT NULL,
    input_path TEXT NOT NULL,
    input_summary TEXT NOT NULL,
    status TEXT NOT NULL,
    created REAL NOT NULL,
    started REAL,
    finished REAL,
    error TEXT,
    progress TEXT NOT NULL,
    attempts INTEGER NOT NULL DEFAULT 0,
    notes TEXT NOT NULL DEFAULT '[]',
    deleted INTEGER NOT NULL DEFAULT 0
);
CREATE INDEX IF NOT EXISTS jobs_status ON jobs (status, created);
"""


def _row_to_job(row: sqlite3.Row) -> Job:
    data = {key: row[key] for key in _COLUMNS}
    for key in _JSON_COLUMNS:
        data[key] = json.loads(data[key])
    data["status"] = JobStatus(data["status"])
    data["deleted"] = bool(data["deleted"])
    return Job(**data)


def _insert(db: sqlite3.Connection, job: Job) -> None:
    values: list[Any] = []
    for key in _COLUMNS:
        value = getattr(job, key)
        if key in _JSON_COLUMNS:
            value = json.dumps(value)
        elif key == "status":
            value = JobStatus(value).value
        elif key == "deleted":
            value = int(value)
        values.append(value)
    db.execute(f"INSERT INTO jobs ({', '.join(_COLUMNS)}) VALUES ({', '.join('?' * len(_COLUMNS))})", values)


class JobStore:
    """Thread-safe access to ``jobs.sqlite3``."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._lock = threading.RLock()
        self._db = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None, timeout=30)
        self._db.row_factory = sqlite3.Row
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=NORMAL")  # WAL + NORMAL: a committed job survives a process kill
        self._db.executescript(_SCHEMA)

    def close(self) -> None:
        with self._lock:
            self._db.close()

    @contextmanager
    def _transaction(self) -> Iterator[sqlite3.Connection]:
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                yield self._db
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
            self._db.execute("COMMIT")

    # -- reading --------------------------------------------------------------------------------
    def get(self, job_id: str, *, include_deleted: bool = False) -> Job | None:
        with self._lock:
            row = self._db.execute("SELECT * FROM jobs WHERE id = ?", (job_id,)).fetchone()
        if row is None:
            return None
        job = _row_to_job(row)
        return None if job.deleted and not include_deleted else job

    def list_jobs(self, limit: int = 1000) -> list[Job]:
        """Jobs newest first (deleted ones left out)."""
        with self._lock:
            rows = self._db.execute(
                "SELECT * FROM jobs WHERE deleted = 0 ORDER BY created DESC, rowid DESC LIMIT ?", (limit,)
            ).fetchall()
        return [_row_to_job(row) for row in rows]

    def active_count(self) -> int:
        """Queued plus running jobs: what the concurrency limit counts."""
        with self._lock:
            row = self._db.execute(
                "SELECT COUNT(*) FROM jobs WHERE deleted = 0 AND status IN (?, ?)",
                (JobStatus.QUEUED.value, JobStatus.RUNNING.value),
            ).fetchone()
        return int(row[0])

    def deleted_ids(self) -> list[str]:
        with self._lock:
            return [row[0] for row in self._db.execute("SELECT id FROM jobs WHERE deleted = 1").fetchall()]

    # -- writing --------------------------------------------------------------------------------
    def add(self, job: Job) -> None:
        with self._transaction() as db:
            _insert(db, job)

    def add_if_room(self, job: Job, max_active: int) -> bool:
        """Insert ``job`` only while fewer than ``max_active`` jobs are queued or running (checked atomically)."""
        with self._transaction() as db:
            row = db.execute(
                "SELECT COUNT(*) FROM jobs WHERE deleted = 0 AND status IN (?, ?)",
                (JobStatus.QUEUED.value, JobStatus.RUNNING.value),
            ).fetchone()
            if int(row[0]) >= max_active:
                return False
            _insert(db, job)
        return True

    def claim_next(self) -> Job | None:
        """Mark the oldest queued job running (one more attempt) and return it; None when none waits."""
        with self._transaction() as db:
            row = db.execute(
                "SELECT id FROM jobs WHERE status = ? AND deleted = 0 ORDER BY created, rowid LIMIT 1",
                (JobStatus.QUEUED.value,),
            ).fetchone()
            if row is None:
                return None
            db.execute(
                "UPDATE jobs SET status = ?, started = ?, attempts = attempts + 1 WHERE id = ?",
                (JobStatus.RUNNING.value, time.time(), row[0]),
            )
        return self.get(row[0])

    def set_progress(self, job_id: str, progress: dict[str, Any]) -> None:
        with self._transaction() as db:
            db.execute("UPDATE jobs SET progress = ? WHERE id = ?", (json.dumps(progress), job_id))

    def finish(self, job_id: str, status: JobStatus, error: str | None = None,
               progress: dict[str, Any] | None = None) -> None:
        with self._transaction() as db:
            if progress is None:
                db.execute("UPDATE jobs SET status = ?, finished = ?, error = ? WHERE id = ?",
                           (status.value, time.time(), error, job_id))
            else:
                db.execute("UPDATE jobs SET status = ?, finished = ?, error = ?, progress = ? WHERE id = ?",
                           (status.value, time.time(), error, json.dumps(progress), job_id))

    def requeue(self, job_id: str, note: str, *, refund_attempt: bool = False) -> None:
        """Put a running job back in the queue (a shutdown interrupted it), with a note why."""
        with self._transaction() as db:
            row = db.execute("SELECT notes FROM jobs WHERE id = ? AND status = ?",
                             (job_id, JobStatus.RUNNING.value)).fetchone()
            if row is None:  # gone, finished meanwhile, or already queued again
                return
            notes = json.loads(row[0]) + [note]
            db.execute(
                "UPDATE jobs SET status = ?, started = NULL, progress = ?, notes = ?, "
                "attempts = MAX(0, attempts - ?) WHERE id = ?",
                (JobStatus.QUEUED.value, json.dumps(empty_progress()), json.dumps(notes), int(refund_attempt),
                 job_id),
            )

    def mark_deleted(self, job_id: str) -> JobStatus | None:
        """Hide a job from the API (its files go later); a queued or running one becomes cancelled.

        Returns the status it had, or None when there is no such job.
        """
        with self._transaction() as db:
            row = db.execute("SELECT status FROM jobs WHERE id = ? AND deleted = 0", (job_id,)).fetchone()
            if row is None:
                return None
            before = JobStatus(row[0])
            if not before.finished:
                db.execute("UPDATE jobs SET status = ?, finished = ?, error = ? WHERE id = ?",
                           (JobStatus.CANCELLED.value, time.time(), "cancelled by a DELETE request", job_id))
            db.execute("UPDATE jobs SET deleted = 1 WHERE id = ?", (job_id,))
        return before

    def purge(self, job_id: str) -> None:
        with self._transaction() as db:
            db.execute("DELETE FROM jobs WHERE id = ?", (job_id,))

    def recover(self, max_attempts: int) -> list[tuple[str, str]]:
        """Startup: re-queue or fail the jobs a previous server left ``running``; returns (id, what was done)."""
        actions = []
        with self._transaction() as db:
            rows = db.execute("SELECT id, attempts, notes FROM jobs WHERE status = ? AND deleted = 0",
                              (JobStatus.RUNNING.value,)).fetchall()
            for job_id, attempts, notes_json in rows:
                notes = json.loads(notes_json)
                if attempts < max_attempts:
                    notes.append(f"{INTERRUPTED} during attempt {attempts}; queued again")
                    db.execute("UPDATE jobs SET status = ?, started = NULL, progress = ?, notes = ? WHERE id = ?",
                               (JobStatus.QUEUED.value, json.dumps(empty_progress()), json.dumps(notes), job_id))
                    actions.append((job_id, "requeued"))
                else:
                    error = f"{INTERRUPTED} (started {attempts} times; not retried again)"
                    db.execute("UPDATE jobs SET status = ?, finished = ?, error = ?, notes = ? WHERE id = ?",
                               (JobStatus.FAILED.value, time.time(), error, json.dumps(notes), job_id))
                    actions.append((job_id, "failed"))
        return actions
