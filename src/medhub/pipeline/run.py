"""The core path: scan → select → check/load → predict → write → organize, for one model.

Each step lives in its own module; this one only sequences them, keeps one loaded model per
process, and makes sure that one bad series never stops the others: every series ends in the
report with a status and, unless it succeeded, a reason.
"""

from __future__ import annotations

import hashlib
import time
import traceback
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import medhub
from medhub.data.series import Series
from medhub.errors import MedhubError, SeriesSkipped
from medhub.files import OutputFolder, check_output_location, new_run_token, writing_as
from medhub.hub.devices import check_device
from medhub.hub.envs import check_env_built
from medhub.hub.roi_subset import resolve_roi_subset
from medhub.hub.workflow import Workflow
from medhub.inputs.load import missing_uids
from medhub.inputs.nifti import is_nifti_name
from medhub.inputs.scan import scan
from medhub.pipeline.layout import DEFAULT_TEMPLATE, check_distinct
from medhub.pipeline.progress import ProgressSink, SilentProgress
from medhub.pipeline.report import Journal, RunReport, SeriesEntry, Status
from medhub.pipeline.steps import STEPS, SeriesWork, SourceKind, StepName, model_outputs, series_steps
from medhub.pipeline.steps.select import Select
from medhub.pipeline.steps.write_nifti import check_image_names, image_template
from medhub.pipeline.workflows import check_workflow


def is_nifti(path: Path) -> bool:
    return path.is_file() and is_nifti_name(path.name)


class SeriesExecutor(Protocol):
    """Where the series of a run are processed: in this process, or on a cluster (:mod:`medhub.pipeline.cluster`).

    The pipeline hands over the chosen series and records each entry as it comes back (in any
    order); the caller chooses the executor, so the pipeline itself never imports Dask.
    """

    def map(self, pipeline: Pipeline, series: list[Series]) -> Iterator[SeriesEntry]: ...


class InProcess:
    """One series after the other in this process: the default."""

    def map(self, pipeline: Pipeline, series: list[Series]) -> Iterator[SeriesEntry]:
        for item in series:
            yield pipeline.process_series(item)


@dataclass
class RunOptions:
    """Everything a run needs besides the model; the CLI and the service build one of these."""

    input_path: Path
    output_dir: Path
    workflow: Workflow
    device: str = "cpu"
    template: str = DEFAULT_TEMPLATE
    progress: ProgressSink = field(default_factory=SilentProgress)
    debug: bool = False
    resume: bool = False  # skip series the journal records as complete (same model, version, workflow)
    executor: SeriesExecutor = field(default_factory=InProcess)  # e.g. medhub.pipeline.cluster.DaskExecutor
    scan_workers: int | None = None  # processes reading headers (None: MEDHUB_SCAN_WORKERS, else in this process)
    input_label: str | None = None  # how the report names the input (a DICOMweb URL rather than its download folder)
    input_record: Path | None = None  # what the report records as read, when input_path is a scratch copy (an archive)
    input_provenance: list[dict[str, Any]] = field(default_factory=list)  # where the input came from (IDC series, ...)
    input_in_output: bool = False  # the input is medhub's own copy inside the output folder (--sample)
    output_folder: OutputFolder | None = None  # claimed by the caller (it wrote into it before the run: --sample)
    run_token: str | None = None  # the token of this run's temporary files (a Dask worker gets the client's)
    allow_implausible: bool = False  # a result outside its card's plausible ranges succeeds, with a warning
    roi_subset: tuple[str, ...] = ()  # --roi-subset: the segments to keep (names checked against the card in run())


class Pipeline:
    """Runs one model over one input (a DICOM tree or a NIfTI file) and writes the report."""

    def __init__(self, model: Any, options: RunOptions) -> None:
        self.model = model
        self.options = options
        self.workflow = options.workflow
        self.outputs = model_outputs(model.card)  # what the card says the runner returns: the writers follow it
        self._redo_notes: dict[str, str] = {}  # series key → why --resume did it again
        claimed = options.output_folder
        self.token = claimed.token if claimed is not None else options.run_token or new_run_token()
        self.report = RunReport(
            medhub_version=medhub.__version__,
            model=model.card.id,
            model_version=str(model.card.version),
            workflow=self.workflow.general.name,
            input=options.input_label or str(options.input_path),
            output=str(options.output_dir),
            input_path=_where(options.input_record or options.input_path, options.output_dir),
            device=options.device,
            input_provenance=list(options.input_provenance),
        )

    @property
    def steps(self) -> list[StepName]:
        """The workflow's steps, checked (also where a worker builds the pipeline and calls :meth:`process_series`)."""
        return check_workflow(self.workflow, self.model.card)

    # -- entry point ---------------------------------------------------------------------------
    def run(self) -> RunReport:
        """Run everything; raise MedhubError only when nothing at all can be done (exit code 2).

        Before anything is written: the device, the workflow, the input and where the output goes
        (never overlapping the input, also through links); the output folder is then claimed (made
        and locked). This run's token is recorded when the input is known to be safe to read and the
        layout to give each series its own files (after the scan and the selection), before the first
        temporary file; a run refused before that leaves no output folder it made.
        """
        self.options.device = self.report.device = check_device(self.options.device, self.model.card)  # before any work
        self.options.roi_subset = resolve_roi_subset(self.model.card, self.options.roi_subset)  # the card's IDs
        self.report.roi_subset = list(self.options.roi_subset)
        check_workflow(self.workflow, self.model.card)  # before any work: one line naming the key
        check_env_built(self.model.card)  # a model that runs in its own environment: built by `medhub pull`, never here
        source = self.options.input_path
        if not source.exists():
            raise MedhubError(f"input not found: {source}")
        check_output_location(source, self.options.output_dir, input_in_output=self.options.input_in_output)
        folder = self.options.output_folder or OutputFolder.claim(self.options.output_dir, self.token)
        try:
            with writing_as(self.token):
                if is_nifti(source):
                    self._start(folder)
                    self._run_nifti(source)
                else:
                    self._run_dicom(source, folder)
        finally:
            if folder.started:
                self.report.finished = time.time()
                with writing_as(self.token):
                    self.report.write(self.options.output_dir)
                self.options.progress.event("run_done", summary=self.report.summary())
            if self.options.output_folder is None:
                folder.release()
        return self.report

    def _start(self, folder: OutputFolder) -> None:
        """Record this run in the output folder (its token; a fresh journal unless resuming), clean up after others."""
        if not folder.started:
            folder.start(fresh=not self.options.resume)
        self.journal = Journal(self.options.output_dir, self.fingerprint())

    # -- DICOM ---------------------------------------------------------------------------------
    def _run_dicom(self, root: Path, folder: OutputFolder) -> None:
        progress = self.options.progress
        started = time.perf_counter()
        result = scan(root, progress=lambda n: progress.event("scan_file", files=n), workers=self.options.scan_workers,
                      avoid=None if self.options.input_in_output else self.options.output_dir)
        self.report.timings["scan"] = round(time.perf_counter() - started, 4)
        self.report.files_seen = result.files_seen
        self.report.non_dicom_files = result.non_dicom_files
        self.report.dicomdir_files = result.dicomdir_files
        self.report.unreadable = [{"path": str(u.path), "reason": u.reason} for u in result.unreadable]
        progress.event("scan_done", files=result.files_seen, series=len(result.series),
                       unreadable=len(result.unreadable))
        if not result.series:
            self._start(folder)  # the report says what was seen
            raise MedhubError(
                f"no DICOM series found in {root} ({result.files_seen} files, "
                f"{len(result.unreadable)} unreadable, {result.non_dicom_files} not DICOM)"
            )

        select_step = STEPS[StepName.SELECT]
        assert isinstance(select_step, Select)
        selection = select_step.choose(result.series, self.workflow, self.model.card)
        for series, reason in selection.rejected:
            self.report.series.append(self._entry(series, Status.REJECTED, reason))
        progress.event("selected", chosen=len(selection.chosen), rejected=len(selection.rejected))
        if not selection.chosen:
            self._start(folder)  # the report names every rejected series with its reason
            reasons = sorted({reason for _, reason in selection.rejected})
            raise MedhubError(
                f"no series in {root} matches model {self.model.card.id}: " + "; ".join(reasons[:3])
            )
        fields = {series.key: self._template_fields(series) for series in selection.chosen}
        check_distinct(self._templates(), fields)
        check_image_names(self.workflow, self.options.template, fields)
        self._start(folder)  # the layout is sound: only now is the output folder written to
        todo = self._resume(selection.chosen)
        for entry in self.options.executor.map(self, todo):
            self._finish(entry)
        if self.report.count(Status.SUCCEEDED) + self.report.count(Status.IMPLAUSIBLE) == 0:
            # every chosen series was skipped or failed, nothing was written: exit code 2
            chosen = [e for e in self.report.series if e.status in (Status.SKIPPED, Status.FAILED)]
            reasons = list(dict.fromkeys(e.reason for e in chosen))
            raise MedhubError(f"none of the {len(chosen)} chosen series succeeded: {'; '.join(reasons[:3])}"
                              if len(chosen) > 1 else f"the chosen series did not succeed: {reasons[0]}")

    def _templates(self) -> list[str]:
        """The run's template, every step's own ``path`` template and the NIfTI image's: each must give
        each series its own files."""
        paths = [str(self.workflow.params(name).get("path")) for name in self.steps
                 if self.workflow.params(name).get("path")]
        image = image_template(self.workflow, self.options.template)
        return [self.options.template, *paths, *([image] if image else [])]

    def fingerprint(self) -> str:
        """What makes two runs' outputs interchangeable: medhub, the model (version, weights), workflow, layout."""
        card = self.model.card
        weights = [f"{w.name}:{w.sha256 or w.bundled_in or ''}" for w in card.weights]
        parts = [medhub.__version__, card.id, str(card.version), *weights, self.workflow.model_dump_json(),
                 self.options.template]
        if self.options.roi_subset:  # other segments kept: other outputs
            parts.append("roi_subset=" + ",".join(self.options.roi_subset))
        return hashlib.sha256("\0".join(parts).encode()).hexdigest()[:16]

    def _resume(self, chosen: list[Series]) -> list[Series]:
        """With ``--resume``, take finished series from the journal and return the ones still to do.

        A finished series is taken only when it was made by the same medhub, model and workflow
        from the same instances (SOP Instance UIDs, file sizes and modification times): a slice
        added, removed or rewritten since means the series is done again, and the report says why.
        """
        if not self.options.resume:
            return list(chosen)
        done = self.journal.completed()
        fingerprint = self.fingerprint()
        todo = []
        for series in chosen:
            previous, made_with = done.get(series.key, (None, ""))
            if previous is None:
                todo.append(series)
                continue
            why = ""
            if made_with != fingerprint:
                why = "redone: the earlier result was made with another medhub or model version, another workflow " \
                      "or another --roi-subset"
            elif previous.input_signature != input_signature(series):
                why = f"redone: the input changed since the earlier result ({_change(previous, series)})"
            if why:
                self._redo_notes[series.key] = why
                todo.append(series)
                continue
            previous.notes.append("resumed: outputs from an earlier run with the same model, workflow and input")
            self.report.series.append(previous)
            self.options.progress.event("series_done", key=series.key, status=previous.status.value,
                                        reason="", resumed=True)
        return todo

    def _finish(self, entry: SeriesEntry) -> None:
        """Record a processed series: in the report, in the journal (for --resume), as a progress event."""
        if entry.key in self._redo_notes:
            entry.notes.insert(0, self._redo_notes[entry.key])
        self.report.series.append(entry)
        self.journal.append(entry)
        self.options.progress.event("series_done", key=entry.key, status=entry.status.value, reason=entry.reason)

    def process_series(self, series: Series) -> SeriesEntry:
        """Run the workflow's steps on one series; never raises: the entry says what happened.

        This is the unit of work that runs in-process or as one Dask task per series.
        """
        entry = self._entry(series, Status.FAILED, "")
        source = SourceKind.DICOM_WITHOUT_UIDS if missing_uids(series) else SourceKind.DICOM
        work = self._work(entry, self._template_fields(series), series=series)
        try:
            with writing_as(self.token):  # also in a Dask worker, which calls this without run()
                self._run_steps(work, series_steps(self.steps, self.outputs, source))
        finally:
            series.release_headers()  # a cohort's headers must not pile up in memory
        return entry

    # -- NIfTI ---------------------------------------------------------------------------------
    def _run_nifti(self, path: Path) -> None:
        name = path.name[: -len(".nii.gz")] if path.name.lower().endswith(".nii.gz") else path.stem
        entry = SeriesEntry(key=name, series_instance_uid="", study_instance_uid="", modality="",
                            description=str(path), images=0, status=Status.FAILED, input_files=1)
        self.report.series.append(entry)
        self.options.progress.event("selected", chosen=1, rejected=0)
        work = self._work(entry, self._fields(name, "", name, "", "", "", ""), nifti=path)
        self._run_steps(work, series_steps(self.steps, self.outputs, SourceKind.NIFTI))
        self.options.progress.event("series_done", key=name, status=entry.status.value, reason=entry.reason)
        if entry.status not in (Status.SUCCEEDED, Status.IMPLAUSIBLE):  # implausible: written, exit code 1
            reason = entry.reason if entry.reason.startswith(str(path)) else f"{path}: {entry.reason}"
            raise MedhubError(reason)

    # -- the steps of one series -----------------------------------------------------------------
    def _work(self, entry: SeriesEntry, fields: dict[str, object], *, series: Series | None = None,
              nifti: Path | None = None) -> SeriesWork:
        options = self.options
        return SeriesWork(model=self.model, workflow=self.workflow, output_dir=options.output_dir,
                          template=options.template, device=options.device, progress=options.progress,
                          entry=entry, fields=fields, series=series, nifti=nifti,
                          allow_implausible=options.allow_implausible, roi_subset=tuple(options.roi_subset))

    def _run_steps(self, work: SeriesWork, names: list[StepName]) -> None:
        """Run ``names`` in order on one series; the entry ends succeeded, skipped or failed with the reason."""
        entry = work.entry
        self.options.progress.event("series_start", key=entry.key, steps=[str(n) for n in names])
        try:
            for name in names:
                step = STEPS[name]
                if step.self_timed:
                    step.run(work)
                else:
                    with work.timed(name):
                        step.run(work)
            entry.status, entry.reason = (Status.IMPLAUSIBLE, work.implausible) if work.implausible else \
                (Status.SUCCEEDED, "")
        except SeriesSkipped as exc:
            entry.status, entry.reason = Status.SKIPPED, exc.reason
        except MedhubError as exc:
            entry.status, entry.reason = Status.FAILED, str(exc)
            details = str(getattr(exc, "details", "") or "")  # e.g. an isolated worker's traceback
            if self.options.debug and details:
                entry.notes.append(details)
        except Exception as exc:  # a bug or an unexpected input: record it, go on with the others
            entry.status = Status.FAILED
            entry.reason = f"{type(exc).__name__}: {exc}".splitlines()[0]
            if self.options.debug:
                entry.notes.append(traceback.format_exc())

    # -- report helpers ------------------------------------------------------------------------
    def _entry(self, series: Series, status: Status, reason: str) -> SeriesEntry:
        return SeriesEntry(
            key=series.key,
            series_instance_uid=series.series_instance_uid,
            study_instance_uid=series.study_instance_uid,
            modality=series.modality,
            description=series.description,
            images=series.number_of_images,
            status=status,
            reason=reason,
            input_files=len(series.instances),
            sop_instance_uids=[i.sop_instance_uid for i in series.instances],
            input_signature=input_signature(series),
        )

    def _template_fields(self, series: Series) -> dict[str, object]:
        header = series.first_header
        return self._fields(series.key, series.study_instance_uid or "nostudy", self.model.card.id,
                            header.get("PatientID", "") or "anonymous", series.modality,
                            header.get("SeriesNumber", "") or "", series.description)

    def _fields(self, series_uid: str, study_uid: str, model: str, patient_id: object, modality: str,
                series_number: object, description: str) -> dict[str, object]:
        return {
            "series_uid": series_uid, "study_uid": study_uid or "nostudy", "model": self.model.card.id,
            "patient_id": patient_id or "anonymous", "modality": modality or "unknown",
            "series_number": series_number or "0", "series_description": description or "none",
        }


def input_signature(series: Series) -> str:
    """The identity of a series' instances, cheap to check: SOP Instance UID, file size and modification time of each.

    The same in a Dask worker (which reads the same files through resolved paths) as in the client.
    A file that cannot be read now gives a value that matches nothing earlier.
    """
    items = []
    for instance in series.instances:
        try:
            info = instance.path.stat()
            items.append(f"{instance.sop_instance_uid}|{info.st_size}|{info.st_mtime_ns}")
        except OSError:
            items.append(f"{instance.sop_instance_uid}|missing|{instance.path}")
    return hashlib.sha256("\n".join(sorted(items)).encode()).hexdigest()[:16]


def _change(previous: SeriesEntry, series: Series) -> str:
    """How a series' instances differ from those an earlier result was made from, in words."""
    before, now = set(previous.sop_instance_uids), {i.sop_instance_uid for i in series.instances}
    added, removed = len(now - before), len(before - now)
    if added or removed:
        return f"{added} instance{'s' if added != 1 else ''} added, {removed} removed"
    return "the same SOP Instance UIDs, but a file was rewritten (another size or modification time)"


def _where(input_path: Path, output_dir: Path) -> str:
    """The input for the report: relative to the output folder when kept inside it (``--sample``), else absolute.

    ``medhub view OUT`` reads it to find the images the results were made from.
    """
    source, output = input_path.resolve(), output_dir.resolve()
    return source.relative_to(output).as_posix() if output in source.parents else str(source)


def run(model: Any, options: RunOptions) -> RunReport:
    """Run ``model`` (a catalog entry) with ``options``; see :class:`Pipeline`."""
    return Pipeline(model, options).run()

