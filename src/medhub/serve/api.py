"""The REST API under ``/api``: models, jobs, results, progress events.

Handlers stay thin: :class:`medhub.serve.jobs.JobService` does the work and raises
:class:`~medhub.serve.uploads.ApiError` with the status and a one-line reason, which the app's
exception handler turns into ``{"detail": "..."}``. Authentication is not done here but by the
app's middleware for every ``/api`` path (so routers added by others are covered too).
"""

from __future__ import annotations

import asyncio
import json
import tempfile
import zipfile
from pathlib import Path
from typing import Annotated, Any

from fastapi import APIRouter, Query, Request
from fastapi import Path as PathParam
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import FileResponse, Response, StreamingResponse
from pydantic import BaseModel, Field
from starlette.background import BackgroundTask
from starlette.datastructures import UploadFile

from medhub.errors import MedhubError
from medhub.hub.catalog import find_models
from medhub.hub.listing import current_listing, describe_model
from medhub.serve.jobs import JobService, list_results
from medhub.serve.uploads import ApiError, Upload

router = APIRouter(prefix="/api")

MAX_FILES_PER_UPLOAD = 100_000
JOB_ID = Annotated[str, PathParam(description="job id", pattern=r"^[0-9a-f]{32}$")]
SSE_POLL_SECONDS = 0.4
SSE_KEEPALIVE_SECONDS = 15.0


class ErrorBody(BaseModel):
    detail: str = Field(description="one-line message saying what is wrong")


class Progress(BaseModel):
    series_done: int
    series_total: int
    step: str | None
    series: str | None
    steps_done: int = Field(0, description="finished workflow steps of the running series")
    steps_total: int = Field(0, description="workflow steps of the running series")
    fraction: float = Field(0.0, description="0..1: finished series plus the finished steps of the running one")


class ResultFile(BaseModel):
    path: str = Field(description="relative to the job's output folder, e.g. '<series>/<model>.seg.dcm'")
    kind: str = Field(description="seg, rtstruct, seg_nrrd, nifti or report")
    size: int
    series: str = Field(description="series folder the file belongs to ('' for the report)")


class JobOut(BaseModel):
    id: str
    model: str
    workflow: str
    status: str = Field(description="queued, running, succeeded, failed or cancelled")
    created: str | None
    started: str | None
    finished: str | None
    error: str | None
    progress: Progress
    options: dict[str, Any]
    input: dict[str, Any]
    attempts: int
    notes: list[str]
    report: dict[str, Any] | None = Field(description="medhub-report.json once the job has finished")
    results: list[ResultFile]


class SegmentOut(BaseModel):
    label: int
    id: str
    name: str
    color: list[int]
    category: dict[str, str] | None
    type: dict[str, str] | None
    modifier: dict[str, str] | None


class ModelDetail(BaseModel):
    card: dict[str, Any]
    segments: list[SegmentOut]
    workflows: list[str]
    cli: str
    curl: str


ERRORS: dict[int | str, dict[str, Any]] = {
    code: {"model": ErrorBody, "description": text}
    for code, text in ((400, "bad request"), (401, "missing or wrong API token"), (404, "not found"),
                       (413, "upload too large"), (422, "input not usable"), (429, "too many jobs"))
}


def jobs(request: Request) -> JobService:
    return request.app.state.jobs


# ----------------------------------------------------------------------------------- models


@router.get("/models", response_model=list[dict[str, Any]], responses=ERRORS, tags=["models"])
def list_models(
    modality: Annotated[str | None, Query(max_length=64, description="e.g. CT or MR")] = None,
    body_part: Annotated[str | None, Query(max_length=64, description="e.g. BRAIN, CHEST")] = None,
    task: Annotated[str | None, Query(max_length=64, description="segmentation, prediction, classification")] = None,
) -> list[dict[str, Any]]:
    """Cards of the models that fit every filter given (the same filters as ``medhub models``)."""
    return [card.model_dump(mode="json") for card in find_models(modality=modality or None,
                                                                  body_part=body_part or None, task=task or None)]


def model_detail(name: str, base_url: str) -> dict[str, Any]:
    """A model's card, its segments with names, codes and colours, workflows, and how to run it.

    The description is :func:`medhub.hub.listing.describe_model`'s, the one ``medhub info`` shows.
    """
    try:
        described = describe_model(current_listing().find(name))
    except MedhubError as exc:
        raise ApiError(404, str(exc)) from None
    card_id = described["card"]["id"]
    base = base_url.rstrip("/")
    curl = (f'curl -H "Authorization: Bearer $MEDHUB_TOKEN" -F model={card_id} -F workflow=default '
            f"-F files=@series.zip {base}/api/jobs")
    return {
        "card": described["card"],
        "segments": described["segments"],
        "workflows": described["workflows"],
        "cli": described["run"],
        "curl": curl,
    }


@router.get("/models/{name}", response_model=ModelDetail, responses=ERRORS, tags=["models"])
def get_model_detail(name: Annotated[str, PathParam(max_length=100)], request: Request) -> dict[str, Any]:
    """One model: card, segments (label, ID, name, colour, SNOMED codes), workflows, CLI and curl commands."""
    return model_detail(name, str(request.base_url))


# ----------------------------------------------------------------------------------- jobs

_UPLOAD_SCHEMA = {
    "requestBody": {
        "required": True,
        "content": {
            "multipart/form-data": {
                "schema": {
                    "type": "object",
                    "required": ["model", "files"],
                    "properties": {
                        "model": {"type": "string", "description": "model id, e.g. ct-body"},
                        "workflow": {"type": "string", "default": "default"},
                        "options": {"type": "string",
                                    "description": 'JSON: {"rtstruct": bool, "labelmap": bool, '
                                                   '"set": ["module.param=value"]}'},
                        "files": {"type": "array", "items": {"type": "string", "format": "binary"},
                                  "description": "DICOM files, zip(s) of DICOM, or one .nii/.nii.gz"},
                    },
                }
            }
        },
    }
}


@router.post("/jobs", status_code=201, response_model=JobOut, responses=ERRORS, tags=["jobs"],
             openapi_extra=_UPLOAD_SCHEMA)
async def submit_job(request: Request) -> dict[str, Any]:
    """Upload input and queue a job; the input is scanned and matched to the model first (422 if unusable)."""
    content_type = request.headers.get("content-type", "")
    if not content_type.startswith("multipart/form-data"):
        raise ApiError(422, "send the job as multipart/form-data with fields model, workflow, options and files")
    jobs(request).check_room()  # before reading a large body that would be refused anyway
    form = await request.form(max_files=MAX_FILES_PER_UPLOAD, max_fields=100)
    try:
        fields: dict[str, str] = {}
        uploads: list[Upload] = []
        for key, value in form.multi_items():
            if isinstance(value, UploadFile):
                if key != "files":
                    raise ApiError(422, f"unexpected file field '{key}'; upload files as 'files'")
                uploads.append(Upload(filename=value.filename or "", file=value.file))
            elif key == "files":
                raise ApiError(422, "'files' must be file uploads, not text")
            elif key in fields:
                raise ApiError(422, f"form field '{key}' given twice")
            elif key not in ("model", "workflow", "options"):
                raise ApiError(422, f"unknown form field '{key}'; fields: model, workflow, options, files")
            else:
                fields[key] = value
        if not fields.get("model"):
            raise ApiError(422, "form field 'model' is required (see GET /api/models)")
        service = jobs(request)
        job = await run_in_threadpool(service.submit, fields["model"], fields.get("workflow") or "default",
                                      fields.get("options"), uploads)
        return service.to_json(job)
    finally:
        await form.close()


@router.get("/jobs", response_model=list[JobOut], responses=ERRORS, tags=["jobs"])
def list_jobs(request: Request) -> list[dict[str, Any]]:
    """Every job, newest first (each one's report is left out here: see GET /api/jobs/{id})."""
    service = jobs(request)
    return [service.to_json(job, details=False) for job in service.store.list_jobs()]


@router.get("/jobs/{job_id}", response_model=JobOut, responses=ERRORS, tags=["jobs"])
def get_job(job_id: JOB_ID, request: Request) -> dict[str, Any]:
    """Status, progress, and once finished the per-series report and the result files."""
    service = jobs(request)
    return service.to_json(service.get(job_id))


@router.delete("/jobs/{job_id}", status_code=204, response_class=Response, responses=ERRORS, tags=["jobs"])
def delete_job(job_id: JOB_ID, request: Request) -> Response:
    """Cancel the job if it is queued or running, and delete its files."""
    jobs(request).delete(job_id)
    return Response(status_code=204)


def _sse(event: str, data: Any) -> str:
    return f"event: {event}\ndata: {json.dumps(data)}\n\n"


@router.get("/jobs/{job_id}/events", responses={**ERRORS, 200: {"content": {"text/event-stream": {}},
                                                                  "description": "progress events, then done"}},
            response_class=StreamingResponse, tags=["jobs"])
async def job_events(job_id: JOB_ID, request: Request) -> StreamingResponse:
    """Server-sent events: ``progress`` (the job's progress object) on every change, then ``done`` (the job)."""
    service = jobs(request)
    service.get(job_id)  # 404 before the stream starts

    async def stream() -> Any:
        last: Any = None
        quiet = 0.0
        while True:
            job = service.store.get(job_id)
            if job is None:  # deleted meanwhile
                yield _sse("done", {"id": job_id, "status": "cancelled", "error": "the job was deleted"})
                return
            if job.progress != last:
                last = job.progress
                quiet = 0.0
                yield _sse("progress", job.progress)
            if job.status.finished:
                yield _sse("done", service.to_json(job))
                return
            if quiet >= SSE_KEEPALIVE_SECONDS:
                quiet = 0.0
                yield ": keep-alive\n\n"
            if await request.is_disconnected():
                return
            await asyncio.sleep(SSE_POLL_SECONDS)
            quiet += SSE_POLL_SECONDS

    return StreamingResponse(stream(), media_type="text/event-stream",
                             headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})


def _finished_output(service: JobService, job_id: str) -> Path:
    job = service.get(job_id)
    if not job.status.finished:
        raise ApiError(409, f"job {job_id} is {job.status.value}; results are there when it has finished")
    return service.settings.output_dir(job_id)


@router.get("/jobs/{job_id}/results", responses={**ERRORS, 409: {"model": ErrorBody, "description": "not finished"},
                                                 200: {"content": {"application/zip": {}}}},
            response_class=FileResponse, tags=["results"])
def job_results_zip(job_id: JOB_ID, request: Request) -> FileResponse:
    """All results of a finished job as one zip (SEG, RTSTRUCT, NIfTI, report)."""
    service = jobs(request)
    output = _finished_output(service, job_id)
    scratch = service.settings.data_dir / "tmp"
    scratch.mkdir(parents=True, exist_ok=True)
    handle = tempfile.NamedTemporaryFile(dir=scratch, suffix=".zip", delete=False)  # noqa: SIM115
    handle.close()
    path = Path(handle.name)
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_DEFLATED, compresslevel=1) as archive:
        for item in list_results(output):
            archive.write(output / item["path"], item["path"])
    return FileResponse(path, media_type="application/zip", filename=f"medhub-{job_id}.zip",
                        background=BackgroundTask(path.unlink, missing_ok=True))


_MEDIA = {"seg": "application/dicom", "rtstruct": "application/dicom", "nifti": "application/gzip",
          "sr": "application/dicom", "seg_nrrd": "application/octet-stream", "report": "application/json",
          "preview": "image/png", "labels": "application/json"}
_OCTETS = "application/octet-stream"  # SR, values, embeddings: downloaded as files


@router.get("/jobs/{job_id}/results/{path:path}",
            responses={**ERRORS, 409: {"model": ErrorBody, "description": "not finished"},
                       200: {"content": {"application/octet-stream": {}}}},
            response_class=FileResponse, tags=["results"])
def job_result_file(job_id: JOB_ID, path: str, request: Request) -> FileResponse:
    """One result file, by the ``path`` given in the job's ``results``."""
    service = jobs(request)
    output = _finished_output(service, job_id)
    for item in list_results(output):
        if item["path"] == path:
            media = "application/octet-stream" if path.endswith(".nii") else _MEDIA.get(item["kind"], _OCTETS)
            return FileResponse(output / item["path"], media_type=media, filename=Path(path).name)
    raise ApiError(404, f"job {job_id} has no result file {path!r}")
