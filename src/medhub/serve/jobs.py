"""Jobs: submit (check the input before queueing), run on a pool of worker threads, cancel, report.

A job is one ``medhub run`` of one model over one upload, executed by :mod:`medhub.pipeline.run`
exactly as the CLI does, with a progress sink that writes progress into the store. Workers
are threads of the server process: the pipeline keeps each loaded model in a process-wide
cache, so a model loads once and serves every later job. Two jobs of the *same* model never
predict at the same time (one lock per model: runners are not required to be thread-safe);
jobs of different models, and the scan/load/write steps of all jobs, run in parallel.

Cancellation is cooperative: DELETE sets a flag that the progress sink checks at every
pipeline event (between steps), so a running job stops at its next step, and its files are
removed by the worker that ran it.
"""

from __future__ import annotations

import json
import logging
import shutil
import threading
import time
import traceback
import uuid
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from medhub.errors import MedhubError
from medhub.hub.catalog import ModelEntry, get_model
from medhub.hub.devices import check_card_device
from medhub.hub.envs import check_env_built
from medhub.hub.roi_subset import resolve_roi_subset
from medhub.hub.workflow import Workflow, selection_rules
from medhub.inputs.nifti import read_nifti_image
from medhub.inputs.scan import scan
from medhub.inputs.select import select
from medhub.pipeline.layout import result_kind
from medhub.pipeline.report import REPORT_NAME, Status
from medhub.pipeline.report import iso_time as iso
from medhub.pipeline.run import Pipeline, RunOptions
from medhub.pipeline.steps import StepName
from medhub.pipeline.workflows import resolve_workflow
from medhub.serve.settings import ServeSettings
from medhub.serve.store import INTERRUPTED, Job, JobStatus, JobStore, empty_progress
from medhub.serve.uploads import ApiError, SavedInput, Upload, save_uploads

log = logging.getLogger("medhub.serve")

STOPPED_NOTE = "the server stopped during this job; queued again"

class JobOptions(BaseModel):
    """The ``options`` form field of POST /api/jobs (a JSON object)."""

    model_config = ConfigDict(extra="forbid")

    rtstruct: bool = Field(default=False, description="also write an RTSTRUCT per series")
    labelmap: bool = Field(default=False, description="write a LABELMAP SEG instead of BINARY")
    seg_nrrd: bool = Field(default=False, description="also write <model>.seg.nrrd, 3D Slicer's segmentation file")
    set: list[str] = Field(default_factory=list, description="workflow overrides module.param=value")
    allow_implausible: bool = Field(
        default=False,
        description="accept results outside the plausible ranges of the model's card "
                    "(a warning in the report instead of a failed job)",
    )
    roi_subset: list[str] = Field(
        default_factory=list,
        description="keep only these segments of a multi-structure model (its segment IDs, as medhub run "
                    "--roi-subset); checked against the model's card",
    )


def parse_options(text: str | None) -> JobOptions:
    """Options from the form field; a one-line 422 naming the first problem."""
    if text is None or not text.strip():
        return JobOptions()
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ApiError(422, f"options: not valid JSON ({exc.msg} at character {exc.pos})") from None
    if not isinstance(data, dict):
        raise ApiError(422, 'options: must be a JSON object such as {"rtstruct": true}')
    try:
        return JobOptions.model_validate(data)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first["loc"]) or "options"
        raise ApiError(422, f"options.{where}: {first['msg']}") from None


def job_workflow(entry: ModelEntry, name: str, options: JobOptions) -> Workflow:
    """The model's workflow with the job's options applied, checked as ``medhub run`` checks it (else a 422).

    NIfTI labels are always written: the viewer reads them; the image as NIfTI only when the job asks
    (``"set": ["write_nifti.image=true"]``): the client has the images it uploaded.
    """
    switches = ((options.rtstruct, StepName.WRITE_RTSTRUCT), (True, StepName.WRITE_NIFTI),
                (options.seg_nrrd, StepName.WRITE_SEG_NRRD))
    try:
        return resolve_workflow(entry, name=name, overrides=["write_nifti.image=false", *options.set],
                                add_steps=[step for wanted, step in switches if wanted], labelmap=options.labelmap)
    except MedhubError as exc:
        raise ApiError(422, str(exc)) from None


def validate_input(entry: ModelEntry, workflow: Workflow, saved: SavedInput) -> dict[str, Any]:
    """Scan and select (DICOM) or read the header (NIfTI) before queueing; 422 with medhub's reason otherwise."""
    if saved.kind == "nifti":
        try:
            shape = tuple(int(n) for n in read_nifti_image(saved.path).shape)
        except MedhubError as exc:  # one line naming the file; the client sees only its name
            raise ApiError(422, str(exc).splitlines()[0].replace(str(saved.path), saved.path.name, 1)) from None
        core = shape
        while len(core) > 3 and core[-1] == 1:
            core = core[:-1]
        if len(core) != 3:
            raise ApiError(422, f"{saved.path.name}: {len(core)}D image of shape {shape}; a 3D volume is needed")
        return {"series_chosen": 1, "series_rejected": 0, "shape": list(core)}


    result = scan(saved.path)
    if not result.series:
        raise ApiError(422, f"no DICOM series found in the upload ({result.files_seen} files, "
                            f"{len(result.unreadable)} unreadable, {result.non_dicom_files} not DICOM)")
    try:
        selection = select(result.series, selection_rules(entry.card, workflow))
    except MedhubError as exc:
        raise ApiError(422, f"workflow: {exc}") from None
    if not selection.chosen:
        reasons = sorted({reason for _, reason in selection.rejected})
        raise ApiError(422, f"no series in the upload matches model {entry.id}: " + "; ".join(reasons[:3]))
    return {"series_chosen": len(selection.chosen), "series_rejected": len(selection.rejected)}


# ----------------------------------------------------------------------------------- results


def list_results(output_dir: Path) -> list[dict[str, Any]]:
    """The result files of a job (SEG, RTSTRUCT, NIfTI, report); temporary files and the journal are left out."""
    if not output_dir.is_dir():
        return []
    results = []
    for path in sorted(output_dir.rglob("*")):
        if not path.is_file() or path.is_symlink() or path.name.startswith("."):
            continue
        kind = result_kind(path.name)
        if kind is None:
            continue
        relative = path.relative_to(output_dir)
        results.append({"path": relative.as_posix(), "kind": kind, "size": path.stat().st_size,
                        "series": relative.parts[0] if len(relative.parts) > 1 else ""})
    return results


def redact(value: Any, prefixes: list[str]) -> Any:
    """``value`` (JSON-like) with every prefix removed from every string in it, longest first."""
    if isinstance(value, str):
        for prefix in sorted(prefixes, key=len, reverse=True):
            value = value.replace(prefix, "")
        return value
    if isinstance(value, list):
        return [redact(item, prefixes) for item in value]
    if isinstance(value, dict):
        return {key: redact(item, prefixes) for key, item in value.items()}
    return value


def read_report(output_dir: Path) -> dict[str, Any] | None:
    path = output_dir / REPORT_NAME
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


# ----------------------------------------------------------------------------------- running


class JobCancelled(Exception):  # noqa: N818 - a signal, not an error; deliberately not a MedhubError
    """Raised from the progress sink to unwind a running pipeline (DELETE, or the server stopping)."""


class StoreProgress:
    """A :class:`~medhub.pipeline.progress.ProgressSink` keeping the job's progress in the store; checks for cancel."""

    SCAN_WRITE_INTERVAL = 0.5

    def __init__(self, store: JobStore, job_id: str, cancelled: threading.Event, stopping: threading.Event) -> None:
        self.store, self.job_id = store, job_id
        self.cancelled, self.stopping = cancelled, stopping
        self.progress = empty_progress()
        self._last_write = 0.0
        self._planned: list[str] = []  # the running series' steps (series_start), so the bar moves within a series
        self._finished: set[str] = set()

    def event(self, kind: str, **data: Any) -> None:
        if self.cancelled.is_set() or self.stopping.is_set():
            raise JobCancelled(kind)
        p = self.progress
        if kind == "scan_file":
            p["step"] = "scan"
            if time.monotonic() - self._last_write < self.SCAN_WRITE_INTERVAL:
                return
        elif kind == "scan_done":
            p["step"] = "select"
        elif kind == "selected":
            p["series_total"] = int(data.get("chosen", 0))
        elif kind == "series_start":
            p["series"], p["step"] = str(data.get("key", "")), None
            self._planned, self._finished = [str(step) for step in data.get("steps") or []], set()
        elif kind == "step":
            p["step"] = str(data.get("step"))
        elif kind == "step_done":
            if str(data.get("step")) not in self._planned:
                return  # e.g. model_load: not one of the workflow's steps
            self._finished.add(str(data.get("step")))
        elif kind == "series_done":
            p["series_done"] += 1
            p["series"] = str(data.get("key", "")) or p["series"]
            self._planned, self._finished = [], set()
        elif kind == "run_done":
            p["step"] = None
        else:
            return
        p["steps_total"], p["steps_done"] = len(self._planned), len(self._finished)
        within = p["steps_done"] / p["steps_total"] if p["steps_total"] else 0.0
        total = p["series_total"]
        p["fraction"] = round(min(1.0, (p["series_done"] + within) / total), 4) if total else 0.0
        self._last_write = time.monotonic()
        self.store.set_progress(self.job_id, p)

    def close(self) -> None:
        pass


class JobService:
    """Submit, run, cancel and describe jobs; owns the worker threads."""

    def __init__(self, settings: ServeSettings, store: JobStore) -> None:
        self.settings, self.store = settings, store
        self._wake = threading.Event()
        self._stopping = threading.Event()
        self._cancel: dict[str, threading.Event] = {}
        self._cancel_guard = threading.Lock()
        self._threads: list[threading.Thread] = []

    # -- lifecycle ------------------------------------------------------------------------------
    def start(self) -> None:
        """Recover what a previous server left (interrupted jobs, half-deleted ones), then start the workers."""
        for job_id in self.store.deleted_ids():
            self._remove_files(job_id)
            self.store.purge(job_id)
        for job_id, action in self.store.recover(self.settings.max_attempts):
            log.warning("job %s was %s: %s", job_id, action, INTERRUPTED)
        self._stopping.clear()
        for n in range(self.settings.workers):
            thread = threading.Thread(target=self._loop, name=f"medhub-worker-{n + 1}", daemon=True)
            thread.start()
            self._threads.append(thread)

    def stop(self, timeout: float = 10.0) -> None:
        """Stop taking jobs; running ones unwind at their next step and go back to the queue (no attempt used)."""
        self._stopping.set()
        self._wake.set()
        deadline = time.monotonic() + timeout
        for thread in self._threads:
            thread.join(max(0.0, deadline - time.monotonic()))
        self._threads = [t for t in self._threads if t.is_alive()]
        with self._cancel_guard:
            still_running = list(self._cancel)
        for job_id in still_running:  # inside a model step that outlasts the timeout: the process ends anyway
            self.store.requeue(job_id, STOPPED_NOTE, refund_attempt=True)
        if still_running:
            log.warning("%d job(s) still inside a model step were queued again for the next start",
                        len(still_running))

    # -- submit ---------------------------------------------------------------------------------
    def submit(self, model: str, workflow: str, options_text: str | None, uploads: Iterable[Upload]) -> Job:
        """Check everything, store the upload, queue the job; raises :class:`ApiError` with the reason."""
        try:
            entry = get_model(model)
            check_card_device(self.settings.device, entry.card)
            check_env_built(entry.card)  # a job never builds a model's environment: `medhub pull` on the server does
        except MedhubError as exc:
            raise ApiError(422, str(exc)) from None
        options = parse_options(options_text)
        try:
            resolved = job_workflow(entry, workflow or "default", options)
            options.roi_subset = list(resolve_roi_subset(entry.card, options.roi_subset))  # the card's own IDs
        except ApiError:
            raise
        except MedhubError as exc:
            raise ApiError(422, str(exc)) from None
        self.check_room()
        job_id = uuid.uuid4().hex
        try:
            saved = save_uploads(uploads, self.settings.input_dir(job_id), max_bytes=self.settings.max_upload_bytes,
                                 unzip_limit=self.settings.unzip_limit)
            summary = {**saved.summary(), **validate_input(entry, resolved, saved)}
            job = Job(id=job_id, model=entry.id, workflow=workflow or "default",
                      options=options.model_dump(), workflow_json=resolved.model_dump_json(),
                      input_path=saved.path.relative_to(self.settings.job_dir(job_id)).as_posix(),
                      input_summary=summary)
            if not self.store.add_if_room(job, self.settings.max_queued):
                self.check_room()  # raises the 429
                raise ApiError(429, "too many jobs queued or running; try again later")
        except BaseException:
            self._remove_files(job_id)
            raise
        self._wake.set()
        return job

    def check_room(self) -> None:
        """429 when ``max_queued`` jobs are queued or running (checked again atomically when the job is stored)."""
        active = self.store.active_count()
        if active >= self.settings.max_queued:
            raise ApiError(429, f"{active} jobs are queued or running (limit {self.settings.max_queued}); "
                                "try again when one has finished")

    # -- delete ---------------------------------------------------------------------------------
    def delete(self, job_id: str) -> None:
        """Cancel a queued or running job and delete its files; 404 when there is no such job."""
        before = self.store.mark_deleted(job_id)
        if before is None:
            raise ApiError(404, f"no job {job_id}")
        if before == JobStatus.RUNNING:
            with self._cancel_guard:
                event = self._cancel.get(job_id)
            if event is not None:
                event.set()  # the worker removes the files when the pipeline has unwound
                return
        self._remove_files(job_id)
        self.store.purge(job_id)

    def _remove_files(self, job_id: str) -> None:
        shutil.rmtree(self.settings.job_dir(job_id), ignore_errors=True)

    # -- describe -------------------------------------------------------------------------------
    def get(self, job_id: str) -> Job:
        job = self.store.get(job_id)
        if job is None:
            raise ApiError(404, f"no job {job_id}")
        return job

    def to_json(self, job: Job, *, details: bool = True) -> dict[str, Any]:
        """The job as the API returns it (see docs/serve.md); ``details=False`` leaves the report out (listings)."""
        output = self.settings.output_dir(job.id)
        finished = job.status.finished
        return {
            "id": job.id,
            "model": job.model,
            "workflow": job.workflow,
            "status": job.status.value,
            "created": iso(job.created),
            "started": iso(job.started),
            "finished": iso(job.finished),
            "error": self.without_paths(job.error, job.id),
            "progress": job.progress,
            "options": job.options,
            "input": job.input_summary,
            "attempts": job.attempts,
            "notes": self.without_paths(job.notes, job.id),
            "report": self.without_paths(read_report(output), job.id) if details and finished else None,
            "results": list_results(output) if finished else [],
        }

    def without_paths(self, value: Any, job_id: str) -> Any:
        """``value`` with the server's folders taken out of every string: ``/srv/medhub/jobs/<id>/input/x.dcm``
        becomes ``input/x.dcm``. Clients (and the pages) see paths inside the job, never the server's layout."""
        prefixes = []
        for root in (self.settings.job_dir(job_id), self.settings.data_dir):
            for form in {str(root), str(Path(root).resolve())}:
                prefixes.append(form.rstrip("/") + "/")
                prefixes.append(form.rstrip("/"))
        return redact(value, prefixes)

    # -- workers --------------------------------------------------------------------------------
    def _loop(self) -> None:
        while not self._stopping.is_set():
            job = self.store.claim_next()
            if job is None:
                self._wake.wait(1.0)
                self._wake.clear()
                continue
            try:
                self._run(job)
            except Exception:  # noqa: BLE001 - a worker must survive anything one job does
                log.exception("job %s: unexpected error in the worker", job.id)
                self.store.finish(job.id, JobStatus.FAILED, "internal error in the job worker (see the server log)")

    def _run(self, job: Job) -> None:
        cancelled = threading.Event()
        with self._cancel_guard:
            self._cancel[job.id] = cancelled
        sink = StoreProgress(self.store, job.id, cancelled, self._stopping)
        try:
            status, error = self._execute(job, sink)
        except JobCancelled:
            if not cancelled.is_set():  # the server is stopping: the job waits for the next start
                self.store.requeue(job.id, STOPPED_NOTE, refund_attempt=True)
                return
            status, error = JobStatus.CANCELLED, "cancelled by a DELETE request"
        finally:
            with self._cancel_guard:
                self._cancel.pop(job.id, None)
        current = self.store.get(job.id, include_deleted=True)
        if current is None or current.deleted:
            self._remove_files(job.id)
            self.store.purge(job.id)
            return
        progress = sink.progress
        progress["step"] = None
        self.store.finish(job.id, status, error, progress)

    def _execute(self, job: Job, sink: StoreProgress) -> tuple[JobStatus, str | None]:
        try:
            entry = get_model(job.model)
            workflow = Workflow.model_validate_json(job.workflow_json)
            options = RunOptions(
                input_path=self.settings.job_dir(job.id) / job.input_path,
                output_dir=self.settings.output_dir(job.id),
                workflow=workflow,
                device=self.settings.device,
                progress=sink,
                resume=True,  # a re-run after a restart keeps the series an earlier attempt finished
                allow_implausible=bool((job.options or {}).get("allow_implausible", False)),
                roi_subset=tuple((job.options or {}).get("roi_subset") or ()),
            )
            report = Pipeline(entry, options).run()  # the runner cache makes jobs on one model take turns
        except MedhubError as exc:
            return JobStatus.FAILED, str(exc)
        except JobCancelled:
            raise
        except Exception as exc:  # noqa: BLE001 - a bug: keep the server up, say what happened
            log.error("job %s failed:\n%s", job.id, traceback.format_exc())
            return JobStatus.FAILED, f"internal error: {type(exc).__name__}: {exc}".splitlines()[0]
        summary = report.summary()
        if summary[Status.SUCCEEDED.value] == 0:
            reasons = [e.reason for e in report.series
                       if e.status in (Status.IMPLAUSIBLE, Status.FAILED, Status.SKIPPED) and e.reason]
            return JobStatus.FAILED, "no series succeeded: " + ("; ".join(reasons[:3]) or "see the report")
        return JobStatus.SUCCEEDED, None
