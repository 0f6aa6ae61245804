"""Scale-out on Dask distributed: one task per series, the model loaded once per worker.

The client (``medhub run``) scans and selects; each task gets only the series' file paths and
the run's settings, re-reads those headers in the worker and runs
:meth:`medhub.pipeline.run.Pipeline.process_series` there. A worker keeps its loaded model in the
process-wide runner cache, so a worker that processes many series loads the model once.
Workers write the outputs themselves (the output folder must be shared storage on a cluster);
the client writes the journal and the report as results arrive.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from medhub.data.series import Series
from medhub.errors import MedhubError
from medhub.hub.catalog import get_model
from medhub.hub.workflow import Workflow
from medhub.inputs.scan import scan_files
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
        "key": series.key,
        "findings": list(series.findings),
        "shared_uids": dict(series.shared_uids),
        "paths": [str(Path(i.path).resolve()) for i in series.instances],
    }


def process_series_task(payload: dict[str, Any]) -> dict[str, Any]:
    """Run one series in a worker; returns the report entry as a dict. Never raises for bad input."""
    model = get_model(payload["model"])
    options = RunOptions(
        input_path=Path(payload["input"]), output_dir=Path(payload["output"]),
        workflow=Workflow.model_validate(payload["workflow"]), device=payload["device"],
        template=payload["template"], debug=payload["debug"], run_token=payload["run_token"],
    )
    pipeline = Pipeline(model, options)
    result = scan_files([Path(p) for p in payload["paths"]], key=payload["key"])
    series = next((s for s in result.series if s.key == payload["key"]), None)
    if series is not None:  # what only the whole scan knew: a split from another patient's images, shared UIDs
        series.findings = list(payload.get("findings", []))
        series.shared_uids = dict(payload.get("shared_uids", {}))
    if series is None:
        problems = "; ".join(u.reason for u in result.unreadable[:2]) or "they now group differently"
        return _failed(payload, f"the series' files changed since the scan: {problems}").to_dict()
    return pipeline.process_series(series).to_dict()


def _failed(payload: dict[str, Any], reason: str) -> SeriesEntry:
    return SeriesEntry(key=payload["key"], series_instance_uid="", study_instance_uid="", modality="",
                       description="", images=len(payload["paths"]), status=Status.FAILED, reason=reason,
                       input_files=len(payload["paths"]))


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
