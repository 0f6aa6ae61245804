"""Scale-out on Dask distributed: one task per series, the model loaded once per worker.

The client (``medhub run``) scans and selects; each task gets the run's settings and one compact
record per instance of its series (:func:`instance_record`: what the scan found, and the header the
client holds, encoded and compressed), rebuilds the series from them without reading or grouping
the files again, and runs :meth:`medhub.pipeline.run.Pipeline.process_series` there. A worker keeps
its loaded model in the process-wide runner cache, so a worker that processes many series loads the model once.
Workers write the outputs themselves (the output folder must be shared storage on a cluster);
the client writes the journal and the report as results arrive.
"""

from __future__ import annotations

import contextlib
import zlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from pydicom import dcmread, dcmwrite
from pydicom.filebase import DicomBytesIO

from medhub.data.series import Instance, Series
from medhub.errors import MedhubError
from medhub.hub.catalog import get_model
from medhub.hub.workflow import Workflow
from medhub.inputs.scan import make_series
from medhub.pipeline.report import SeriesEntry, Status
from medhub.pipeline.run import Pipeline, RunOptions


def task_payload(pipeline: Pipeline, series: Series) -> dict[str, Any]:
    """Everything a worker needs for one series, as plain data (cheap to send, no pixel data)."""
    options = pipeline.options
    return {
        "model": pipeline.model.card.id,
        "workflow": pipeline.workflow.model_dump(mode="json"),
        "input": str(options.input_path),
        "output": str(Path(options.output_dir).resolve()),
        "template": options.template,
        "device": options.device,
        "debug": options.debug,
        "run_token": pipeline.token,  # the worker's temporary files carry the token the client recorded
        "allow_implausible": options.allow_implausible,
        "roi_subset": list(options.roi_subset),  # the card's IDs, resolved by the client's run()
        "key": series.key,
        "findings": list(series.findings),
        "shared_uids": dict(series.shared_uids),
        "instances": [instance_record(i) for i in series.instances],
    }


def instance_record(instance: Instance) -> dict[str, Any]:
    """One instance as the scan found it, for a worker: its fields and, when the client still holds
    it, its header, written by pydicom and zlib-compressed (1-3 KB for a CT slice).

    A scan of more than a few thousand files releases the headers to bound the client's memory
    (:data:`medhub.inputs.scan.RELEASE_HEADERS_ABOVE`); then the record has no header and the
    worker reads that file's header when the loader first asks (``Instance.header``), as the client
    would have. A header pydicom cannot write back (a private element whose value does not fit
    its VR) is left to the worker the same way.
    """
    header = None
    if instance.header_loaded:
        buffer = DicomBytesIO()
        try:
            dcmwrite(buffer, instance.header, enforce_file_format=False)
        except Exception:  # noqa: BLE001 - any writing problem: the worker reads the file instead
            pass
        else:
            header = zlib.compress(buffer.getvalue(), 1)
    return {
        "path": str(Path(instance.path).resolve()), "header": header,
        "sop_instance_uid": instance.sop_instance_uid, "sop_class_uid": instance.sop_class_uid,
        "transfer_syntax_uid": instance.transfer_syntax_uid, "number_of_frames": instance.number_of_frames,
        "instance_number": instance.instance_number, "study_instance_uid": instance.study_instance_uid,
        "patient_id": instance.patient_id,
    }  # fmt: skip


def instance_from_record(record: dict[str, Any]) -> Instance:
    """The Instance a record describes; its header decoded from the record, or read from the file later."""
    header = None
    if record["header"] is not None:
        header = dcmread(DicomBytesIO(zlib.decompress(record["header"])), force=True)
    return Instance(
        path=Path(record["path"]), header=header, sop_instance_uid=record["sop_instance_uid"],
        sop_class_uid=record["sop_class_uid"], transfer_syntax_uid=record["transfer_syntax_uid"],
        number_of_frames=record["number_of_frames"], instance_number=record["instance_number"],
        study_instance_uid=record["study_instance_uid"], patient_id=record["patient_id"],
    )  # fmt: skip


def process_series_task(payload: dict[str, Any]) -> dict[str, Any]:
    """Run one series in a worker; returns the report entry as a dict. Never raises for bad input."""
    model = get_model(payload["model"])
    options = RunOptions(
        input_path=Path(payload["input"]), output_dir=Path(payload["output"]),
        workflow=Workflow.model_validate(payload["workflow"]), device=payload["device"],
        template=payload["template"], debug=payload["debug"], run_token=payload["run_token"],
        allow_implausible=payload["allow_implausible"], roi_subset=tuple(payload["roi_subset"]),
    )
    pipeline = Pipeline(model, options)
    try:
        instances = [instance_from_record(record) for record in payload["instances"]]
    except (OSError, ValueError, zlib.error) as exc:  # a record damaged on its way: this series fails alone
        return _failed(payload, f"the task's instance records cannot be read: {exc}").to_dict()
    series = make_series(payload["key"], instances)
    # what only the whole scan knew: a split from another patient's images, SOP Instance UIDs shared
    series.findings = list(payload.get("findings", []))
    series.shared_uids = dict(payload.get("shared_uids", {}))
    return pipeline.process_series(series).to_dict()


def _failed(payload: dict[str, Any], reason: str) -> SeriesEntry:
    return SeriesEntry(key=payload["key"], series_instance_uid="", study_instance_uid="", modality="",
                       description="", images=len(payload["instances"]), status=Status.FAILED,
                       reason=reason, input_files=len(payload["instances"]))


@contextlib.contextmanager
def dask_client(scheduler: str | None, workers: int | None) -> Iterator[Any]:
    """A client on an existing scheduler (``--scheduler``) or on a new LocalCluster (``--workers N``)."""
    try:
        from dask.distributed import Client, LocalCluster
    except ImportError:
        raise MedhubError("--scheduler/--workers need Dask: pip install 'medhub[dask]'") from None
    if scheduler:
        try:
            client = Client(scheduler, timeout="10s")
        except OSError as exc:
            raise MedhubError(f"cannot reach the Dask scheduler at {scheduler}: {exc}") from None
        with client:
            yield client
        return
    if workers is not None and workers < 1:
        raise MedhubError(f"--workers must be at least 1, not {workers}")
    # One thread per worker process: a loaded model is not shared between concurrent predictions.
    with LocalCluster(n_workers=workers, threads_per_worker=1, processes=True, dashboard_address=None) as cluster, \
            Client(cluster) as client:
        yield client


class DaskExecutor:
    """Runs each series as one Dask task, on an existing scheduler or on a LocalCluster of ``workers``.

    Handed to the pipeline as ``RunOptions.executor`` by whoever chooses scale-out (the CLI's
    ``--scheduler`` / ``--workers``); the pipeline records the entries as they come back.
    """

    def __init__(self, scheduler: str | None = None, workers: int | None = None) -> None:
        if workers is not None and workers < 1:
            raise MedhubError(f"--workers must be at least 1, not {workers}")
        self.scheduler, self.workers = scheduler, workers

    def map(self, pipeline: Pipeline, series: list[Series]) -> Iterator[SeriesEntry]:
        return run_on_dask(pipeline, series, scheduler=self.scheduler, workers=self.workers)


def run_on_dask(pipeline: Pipeline, series_list: list[Series], *, scheduler: str | None = None,
                workers: int | None = None) -> Iterator[SeriesEntry]:
    """Submit one task per series and yield report entries as they complete (in completion order)."""
    from dask.distributed import as_completed

    with dask_client(scheduler, workers) as client:
        payloads = {}
        futures = []
        for series in series_list:
            payload = task_payload(pipeline, series)
            future = client.submit(process_series_task, payload, pure=False, key=f"medhub-{series.key}-{id(series)}")
            payloads[future.key] = payload
            futures.append(future)
        for future in as_completed(futures):
            payload = payloads[future.key]
            try:
                yield SeriesEntry.from_dict(future.result())
            except Exception as exc:  # a worker died or the task could not run: this series fails alone
                yield _failed(payload, f"Dask task failed: {type(exc).__name__}: {exc}".splitlines()[0])
