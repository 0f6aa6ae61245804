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
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np

import medhub
from medhub.data.geometry import labels_to_source
from medhub.data.prediction import Prediction
from medhub.data.series import Series
from medhub.data.volume import Volume
from medhub.errors import MedhubError, SeriesSkipped
from medhub.files import atomic_output, check_output_location, remove_stale_partials
from medhub.hub.devices import check_device
from medhub.hub.runtime import RUNNERS
from medhub.hub.workflow import Workflow, predict_parameters, selection_params, validate_workflow
from medhub.inputs.load import load_series
from medhub.inputs.nifti import load_nifti
from medhub.inputs.scan import scan
from medhub.inputs.select import SelectionRules, select, volume_rejection_reason
from medhub.pipeline.layout import DEFAULT_TEMPLATE, render_template
from medhub.pipeline.progress import ProgressSink, SilentProgress
from medhub.pipeline.report import Journal, RunReport, SeriesEntry, Status
from medhub.segdb import get_segment
from medhub.writers.embedding import write_embedding
from medhub.writers.nifti import write_nifti
from medhub.writers.preview import write_preview
from medhub.writers.provenance import AlgorithmInfo
from medhub.writers.rtstruct import write_rtstruct
from medhub.writers.seg import write_seg
from medhub.writers.seg_nrrd import write_seg_nrrd
from medhub.writers.statistics import write_statistics
from medhub.writers.values import write_value_outputs

NIFTI_SUFFIXES = (".nii", ".nii.gz")


def is_nifti(path: Path) -> bool:
    return path.is_file() and path.name.lower().endswith(NIFTI_SUFFIXES)


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
    input_provenance: list[dict[str, Any]] = field(default_factory=list)  # where the input came from (IDC series, ...)


@dataclass
class _SeriesContext:
    entry: SeriesEntry
    fields: dict[str, object]


class Pipeline:
    """Runs one model over one input (a DICOM tree or a NIfTI file) and writes the report."""

    def __init__(self, model: Any, options: RunOptions) -> None:
        self.model = model
        self.options = options
        self.workflow = options.workflow
        self.report = RunReport(
            medhub_version=medhub.__version__,
            model=model.card.id,
            model_version=str(model.card.version),
            workflow=self.workflow.general.name,
            input=options.input_label or str(options.input_path),
            output=str(options.output_dir),
            input_path=_where(options.input_path, options.output_dir),
            device=options.device,
            input_provenance=list(options.input_provenance),
        )

    # -- entry point ---------------------------------------------------------------------------
    def run(self) -> RunReport:
        """Run everything; raise MedhubError only when nothing at all can be done (exit code 2)."""
        self.options.device = self.report.device = check_device(self.options.device, self.model.card)  # before any work
        validate_workflow(self.model.card, self.workflow)  # before any work: one line naming the key
        source = self.options.input_path
        if not source.exists():
            raise MedhubError(f"input not found: {source}")
        check_output_location(source, self.options.output_dir)
        self.options.output_dir.mkdir(parents=True, exist_ok=True)
        remove_stale_partials(self.options.output_dir)
        self.journal = Journal(self.options.output_dir, self.fingerprint())
        if not self.options.resume and self.journal.path.exists():
            self.journal.path.unlink()  # a fresh run starts a fresh journal
        try:
            if is_nifti(source):
                self._run_nifti(source)
            else:
                self._run_dicom(source)
        finally:
            self.report.finished = time.time()
            self.report.write(self.options.output_dir)
            self.options.progress.event("run_done", summary=self.report.summary())
        return self.report

    # -- DICOM ---------------------------------------------------------------------------------
    def _run_dicom(self, root: Path) -> None:
        progress = self.options.progress
        started = time.perf_counter()
        result = scan(root, progress=lambda n: progress.event("scan_file", files=n), workers=self.options.scan_workers)
        self.report.timings["scan"] = round(time.perf_counter() - started, 4)
        self.report.files_seen = result.files_seen
        self.report.non_dicom_files = result.non_dicom_files
        self.report.dicomdir_files = result.dicomdir_files
        self.report.unreadable = [{"path": str(u.path), "reason": u.reason} for u in result.unreadable]
        progress.event("scan_done", files=result.files_seen, series=len(result.series),
                       unreadable=len(result.unreadable))
        if not result.series:
            raise MedhubError(
                f"no DICOM series found in {root} ({result.files_seen} files, "
                f"{len(result.unreadable)} unreadable, {result.non_dicom_files} not DICOM)"
            )

        rules = SelectionRules.from_dict(self._selection_params())
        self.rules = rules
        selection = select(result.series, rules)
        for series, reason in selection.rejected:
            self.report.series.append(self._entry(series, Status.REJECTED, reason))
        progress.event("selected", chosen=len(selection.chosen), rejected=len(selection.rejected))
        if not selection.chosen:
            reasons = sorted({reason for _, reason in selection.rejected})
            raise MedhubError(
                f"no series in {root} matches model {self.model.card.id}: " + "; ".join(reasons[:3])
            )
        todo = self._resume(selection.chosen)
        for entry in self.options.executor.map(self, todo):
            self._finish(entry)
        if self.report.count(Status.SUCCEEDED) == 0 and self.report.count(Status.FAILED) == 0:
            skipped = [e.reason for e in self.report.series if e.status == Status.SKIPPED]
            raise MedhubError(f"no suitable series could be processed: {'; '.join(skipped[:3])}")

    def _selection_params(self) -> dict[str, Any]:
        return selection_params(self.model.card, self.workflow)

    def _rules(self) -> SelectionRules:
        """The run's selection rules (set by the DICOM path; rebuilt where a worker has no copy)."""
        rules = getattr(self, "rules", None)
        if rules is None:
            rules = self.rules = SelectionRules.from_dict(self._selection_params())
        return rules

    def fingerprint(self) -> str:
        """What makes two runs' outputs interchangeable: model, its version, the workflow and the layout."""
        card = self.model.card
        parts = [card.id, str(card.version), self.workflow.model_dump_json(), self.options.template]
        return hashlib.sha256("\0".join(parts).encode()).hexdigest()[:16]

    def _resume(self, chosen: list[Series]) -> list[Series]:
        """With ``--resume``, take finished series from the journal and return the ones still to do."""
        if not self.options.resume:
            return list(chosen)
        done = self.journal.completed()
        todo = []
        for series in chosen:
            previous = done.get(series.key)
            if previous is None:
                todo.append(series)
                continue
            previous.notes.append("resumed: outputs from an earlier run with the same model and workflow")
            self.report.series.append(previous)
            self.options.progress.event("series_done", key=series.key, status=previous.status.value,
                                        reason="", resumed=True)
        return todo

    def _finish(self, entry: SeriesEntry) -> None:
        """Record a processed series: in the report, in the journal (for --resume), as a progress event."""
        self.report.series.append(entry)
        self.journal.append(entry)
        self.options.progress.event("series_done", key=entry.key, status=entry.status.value, reason=entry.reason)

    def process_series(self, series: Series) -> SeriesEntry:
        """Load, predict and write one series; never raises: the entry says what happened.

        This is the unit of work that runs in-process or as one Dask task per series.
        """
        entry = self._entry(series, Status.FAILED, "")
        steps = [s for s in self.workflow.execute if s != "select"]
        self.options.progress.event("series_start", key=series.key, steps=steps)
        try:
            with self._step(entry, "load"):
                volume = load_series(series)
            entry.findings.extend(volume.findings)
            if why := volume_rejection_reason(series, volume, self._rules()):
                raise SeriesSkipped(why)
            prediction = self._predict(entry, volume)
            fields = self._template_fields(series)
            self._write_outputs(entry, volume, prediction, fields)
            entry.status = Status.SUCCEEDED
        except SeriesSkipped as exc:
            entry.status, entry.reason = Status.SKIPPED, exc.reason
        except MedhubError as exc:
            entry.status, entry.reason = Status.FAILED, str(exc)
            if self.options.debug and getattr(exc, "details", ""):
                entry.notes.append(exc.details)  # e.g. an isolated worker's traceback
        except Exception as exc:  # a bug or an unexpected input: record it, go on with the others
            entry.status = Status.FAILED
            entry.reason = f"{type(exc).__name__}: {exc}".splitlines()[0]
            if self.options.debug:
                entry.notes.append(traceback.format_exc())
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
        self.options.progress.event("series_start", key=name, steps=["load", "predict", "write_nifti"])
        try:
            with self._step(entry, "load"):
                volume = load_nifti(path)
            entry.images = int(volume.array.shape[2])
            prediction = self._predict(entry, volume)
            target = self.options.output_dir / render_template(
                self.options.template, self._fields(name, "", name, "", "", "", "")
            )
            if prediction.embedding is not None:  # embedding models
                self._write_embedding(entry, prediction, volume, target)
            if prediction.labels is not None:
                self._write_nifti(entry, prediction, volume, target)
                if self.workflow.runs("write_seg_nrrd"):
                    self._write_seg_nrrd(entry, prediction, volume, target)
                self._write_summaries(entry, prediction, volume, target)
            if prediction.labels is None and prediction.embedding is None:  # value-only models (few-shot heads)
                self._write_values(entry, prediction, volume, target)
            entry.status = Status.SUCCEEDED
        except MedhubError as exc:
            entry.status, entry.reason = Status.FAILED, str(exc)
        self.options.progress.event("series_done", key=name, status=entry.status.value, reason=entry.reason)
        if entry.status != Status.SUCCEEDED:
            raise MedhubError(f"{path}: {entry.reason}")

    # -- shared steps --------------------------------------------------------------------------
    def _predict(self, entry: SeriesEntry, volume: Volume) -> Prediction:
        params = predict_parameters(self.model.card, self.workflow)  # the card's defaults, then the workflow's
        with RUNNERS.lock(self.model.card.id, self.options.device):  # one series at a time on a runner
            with self._step(entry, "model_load"):
                runner = RUNNERS.get(self.model, self.options.device, params)
            with self._step(entry, "predict"):
                prediction = runner.predict(volume, params)
        if prediction.labels is not None and prediction.labels.shape != volume.array.shape:
            raise MedhubError(
                f"model {self.model.card.id} returned labels of shape {prediction.labels.shape} "
                f"for a volume of shape {volume.array.shape}"
            )
        entry.values.update(prediction.values)
        return prediction

    def _write_outputs(self, entry: SeriesEntry, volume: Volume, prediction: Prediction,
                       fields: dict[str, object]) -> None:
        base = self.options.output_dir / render_template(self.options.template, fields)
        if prediction.embedding is not None:  # embedding models: vector + sidecar, no SEG/RTSTRUCT without labels
            self._write_embedding(entry, prediction, volume, base)
            if prediction.labels is None:
                return
        if prediction.labels is None:  # value-only models (few-shot heads): JSON + CSV, DICOM SR with write_sr
            self._write_values(entry, prediction, volume, base)
            return
        if self.workflow.runs("write_seg_nrrd"):  # needs no UIDs: also for sources a SEG cannot reference
            self._write_seg_nrrd(entry, prediction, volume, base)
        source = volume.source
        wants_dicom = self.workflow.runs("write_seg") or self.workflow.runs("write_rtstruct")
        if wants_dicom and source is not None and not source.referenceable:
            entry.notes.append(source.unreferenceable_reason)
            self._write_nifti(entry, prediction, volume, base)
            self._write_summaries(entry, prediction, volume, base)
            return
        segments = {value: get_segment(seg_id) for value, seg_id in prediction.segments.items()}
        present = set(np.unique(prediction.labels).tolist()) - {0}
        missing = sorted(prediction.segments[v] for v in prediction.segments if v not in present)
        if missing:
            entry.notes.append(f"empty segments (no voxels): {', '.join(missing)}")
        if wants_dicom and source is not None:
            labels = labels_to_source(volume, prediction.labels)
            if self.workflow.runs("write_seg") and present:
                params = self.workflow.params("write_seg")
                final = base.with_name(base.name + ".seg.dcm")
                with self._step(entry, "write_seg"), atomic_output(final) as temporary:
                    write_seg(labels, source, segments,
                              AlgorithmInfo(name=self.model.card.id, version=str(self.model.card.version)),
                              temporary, labelmap=bool(params.get("labelmap", False)))
                entry.outputs.append(str(final.relative_to(self.options.output_dir)))
            if self.workflow.runs("write_rtstruct") and present:
                final = base.with_name(base.name + ".rtstruct.dcm")
                with self._step(entry, "write_rtstruct"), atomic_output(final) as temporary:
                    write_rtstruct(labels, source, segments, model_name=self.model.card.id,
                                   model_version=str(self.model.card.version), path=temporary)
                entry.outputs.append(str(final.relative_to(self.options.output_dir)))
            if not present:
                entry.notes.append("the model found none of its segments: no SEG/RTSTRUCT written")
        if self.workflow.runs("write_nifti") or source is None:
            self._write_nifti(entry, prediction, volume, base)
        self._write_summaries(entry, prediction, volume, base)

    def _write_summaries(self, entry: SeriesEntry, prediction: Prediction, volume: Volume, base: Path) -> None:
        """``<base>.statistics.json`` / ``.csv`` (``write_statistics``), ``<base>.preview.png`` (``write_preview``)."""
        segments = {value: get_segment(seg_id) for value, seg_id in prediction.segments.items()}
        card = self.model.card
        if self.workflow.runs("write_statistics"):
            with self._step(entry, "write_statistics"):
                written = write_statistics(base, volume, prediction.labels, segments, model=card.id,
                                           model_version=str(card.version), series_key=entry.key)
            entry.outputs.extend(str(path.relative_to(self.options.output_dir)) for path in written)
        if self.workflow.runs("write_preview"):
            final = base.with_name(base.name + ".preview.png")
            title = f"{card.id} {card.version} · {entry.description or entry.key}"
            with self._step(entry, "write_preview"):
                write_preview(final, volume, prediction.labels, segments, title)
            entry.outputs.append(str(final.relative_to(self.options.output_dir)))

    def _write_nifti(self, entry: SeriesEntry, prediction: Prediction, volume: Volume, base: Path) -> None:
        suffix = ".nii" if self.workflow.params("write_nifti").get("compress") is False else ".nii.gz"
        final = base.with_name(base.name + suffix)
        with self._step(entry, "write_nifti"), atomic_output(final) as temporary:
            write_nifti(prediction.labels, volume.affine_lps, temporary.with_name(temporary.name + suffix))
            temporary.with_name(temporary.name + suffix).replace(temporary)
        entry.outputs.append(str(final.relative_to(self.options.output_dir)))

    def _write_seg_nrrd(self, entry: SeriesEntry, prediction: Prediction, volume: Volume, base: Path) -> None:
        """``<base>.seg.nrrd``: 3D Slicer's segmentation file (:mod:`medhub.writers.seg_nrrd`)."""
        segments = {value: get_segment(seg_id) for value, seg_id in prediction.segments.items()}
        card = self.model.card
        fields = {"medhub_model": f"{card.id} {card.version}", "medhub_source": entry.series_instance_uid or entry.key}
        final = base.with_name(base.name + ".seg.nrrd")
        with self._step(entry, "write_seg_nrrd"), atomic_output(final) as temporary:
            written = write_seg_nrrd(prediction.labels, volume.affine_lps, segments, temporary, fields=fields)
        entry.outputs.append(str(final.relative_to(self.options.output_dir)))
        if not written:
            entry.notes.append("the model found none of its segments: the .seg.nrrd holds no segment")

    def _write_embedding(self, entry: SeriesEntry, prediction: Prediction, volume: Volume, base: Path) -> None:
        """``<base>.embedding.npy`` + ``<base>.embedding.json`` (see :mod:`medhub.hub.embeddings`)."""
        with self._step(entry, "write_embedding"):
            paths = write_embedding(base, prediction.embedding, volume)
        entry.outputs.extend(str(path.relative_to(self.options.output_dir)) for path in paths)
        if prediction.embedding.cached:
            entry.notes.append(f"embedding read from the cache (key {prediction.embedding.key[:16]})")

    def _write_values(self, entry: SeriesEntry, prediction: Prediction, volume: Volume, base: Path) -> None:
        """``<base>.values.json`` + ``.values.csv``, and ``<base>.sr.dcm`` if the workflow runs ``write_sr``.

        See :mod:`medhub.writers.values`; a source without UIDs or a NIfTI input gets a note instead of the SR.
        """
        with self._step(entry, "write_sr" if self.workflow.runs("write_sr") else "write_values"):
            written = write_value_outputs(base, volume, prediction.values, self.model.card, series_key=entry.key,
                                          write_sr=self.workflow.runs("write_sr"))
        entry.outputs.extend(str(path.relative_to(self.options.output_dir)) for path in written.paths)
        entry.notes.extend(written.notes)

    @contextmanager
    def _step(self, entry: SeriesEntry, step: str) -> Iterator[None]:
        self.options.progress.event("step", key=entry.key, step=step)
        started = time.perf_counter()
        try:
            yield
        finally:
            entry.timings[step] = round(entry.timings.get(step, 0.0) + time.perf_counter() - started, 4)
            self.options.progress.event("step_done", key=entry.key, step=step)

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


def _where(input_path: Path, output_dir: Path) -> str:
    """The input for the report: relative to the output folder when kept inside it (``--sample``), else absolute.

    ``medhub view OUT`` reads it to find the images the results were made from.
    """
    source, output = input_path.resolve(), output_dir.resolve()
    return source.relative_to(output).as_posix() if output in source.parents else str(source)


def run(model: Any, options: RunOptions) -> RunReport:
    """Run ``model`` (a catalog entry) with ``options``; see :class:`Pipeline`."""
    return Pipeline(model, options).run()

