"""Few-shot heads over REST (``/api/heads``): train from uploaded labelled series, list, inspect, predict, delete.

The same operations as ``medhub heads`` (:mod:`medhub.heads`), as MedicalMultitaskModeling's
service offered them. A trained head is a catalog model, so it also runs as an ordinary job
(``POST /api/jobs`` with ``model=<head>``: JSON, CSV and SR per series, asynchronous). The
``predict`` endpoint here is the synchronous short cut for one upload: it answers with the
class probabilities of every suitable series.

Training and prediction run in the thread pool, one at a time per process (the encoder is
shared and a head folder must not be written twice at once). Uploads go through
:func:`medhub.serve.uploads.save_uploads` (size limits, zip checks); for training, send the
labelled series as DICOM files or zips (NIfTI files inside a zip) plus ``labels`` (labels.csv
naming each series by SeriesInstanceUID, folder or NIfTI file name inside the upload; a zip
``data.zip`` is extracted into the folder ``data/``). Include it in the app with
``app.include_router(medhub.serve.heads_api.router)``; the app's middleware guards ``/api``.
"""

from __future__ import annotations

import contextlib
import shutil
import tempfile
import threading
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Annotated, Any

from fastapi import APIRouter, Request
from fastapi import Path as PathParam
from fastapi.concurrency import run_in_threadpool
from starlette.datastructures import UploadFile

from medhub.errors import MedhubError
from medhub.heads.model import load_head
from medhub.heads.registry import find_head, head_summary
from medhub.heads.source import head_entries, head_entry
from medhub.heads.train import train_head
from medhub.hub.catalog import get_model
from medhub.hub.workflow import load_workflow_file
from medhub.pipeline.run import RunOptions, run
from medhub.serve.uploads import ApiError, Upload, save_uploads

router = APIRouter(prefix="/api/heads", tags=["heads"])
HEAD_NAME = Annotated[str, PathParam(description="head name", pattern=r"^[a-z0-9]+(-[a-z0-9]+)*$")]
_WORK = threading.Lock()
_TRAIN_FIELDS = ("name", "encoder", "classifier", "folds", "seed", "force")
MAX_FILES = 100_000

_UPLOAD_HELP: dict[int | str, dict[str, Any]] = {
    "400": {"description": "unsafe upload"}, "404": {"description": "no such head"},
    "413": {"description": "upload too large"}, "422": {"description": "unusable input or labels"}}


def _settings(request: Request) -> Any:
    return request.app.state.settings


def _scratch(request: Request) -> Path:
    root = Path(_settings(request).data_dir) / "heads-work"
    root.mkdir(parents=True, exist_ok=True)
    return Path(tempfile.mkdtemp(prefix="heads-", dir=root))


@contextlib.asynccontextmanager
async def _answering(request: Request, form: Any) -> AsyncIterator[Path]:
    """A scratch folder for one upload request, removed with the form afterwards; a MedhubError from the
    work (bad labels, no usable series) becomes a 422 carrying its one line."""
    work = _scratch(request)
    try:
        yield work
    except ApiError:
        raise
    except MedhubError as exc:
        raise ApiError(422, str(exc)) from None
    finally:
        await form.close()
        shutil.rmtree(work, ignore_errors=True)


def _save(request: Request, uploads: list[Upload], target: Path) -> Path:
    settings = _settings(request)
    saved = save_uploads(uploads, target, max_bytes=settings.max_upload_bytes, unzip_limit=settings.unzip_limit)
    return saved.path


def _head_summary(folder: Path) -> dict[str, Any]:
    return head_summary(head_entry(folder))


@router.get("", responses=_UPLOAD_HELP)
def list_heads() -> list[dict[str, Any]]:
    """Every trained head with its encoder, classes and cross-validated metrics (as `medhub heads list --json`)."""
    return [head_summary(entry) for entry in head_entries()]


@router.get("/{name}", responses=_UPLOAD_HELP)
def get_head(name: HEAD_NAME) -> dict[str, Any]:
    """One head: summary, card, and the full metrics.json (cross-validation, calibration bins)."""
    folder = _find(name)
    head = load_head(folder)
    return {**_head_summary(folder), "card": head.card.model_dump(mode="json"), "metrics": head.metrics}


@router.delete("/{name}", status_code=204, responses=_UPLOAD_HELP)
def delete_head(name: HEAD_NAME) -> None:
    """Remove a head (its folder under the heads root)."""
    folder = _find(name)
    with _WORK:
        shutil.rmtree(folder)


def _find(name: str) -> Path:
    try:
        return find_head(name)
    except MedhubError as exc:
        raise ApiError(404, str(exc)) from None


async def _form(request: Request, allowed: tuple[str, ...], file_fields: tuple[str, ...]
                ) -> tuple[dict[str, str], dict[str, list[Upload]], Any]:
    content_type = request.headers.get("content-type", "")
    if not content_type.startswith("multipart/form-data"):
        raise ApiError(422, f"send multipart/form-data with fields {', '.join(allowed + file_fields)}")
    form = await request.form(max_files=MAX_FILES, max_fields=50)
    fields: dict[str, str] = {}
    files: dict[str, list[Upload]] = {key: [] for key in file_fields}
    for key, value in form.multi_items():
        if isinstance(value, UploadFile):
            if key not in file_fields:
                await form.close()
                raise ApiError(422, f"unexpected file field '{key}'; file fields: {', '.join(file_fields)}")
            files[key].append(Upload(filename=value.filename or "", file=value.file))
        elif key not in allowed:
            await form.close()
            raise ApiError(422, f"unknown form field '{key}'; fields: {', '.join(allowed + file_fields)}")
        else:
            fields[key] = value
    return fields, files, form


def _int(fields: dict[str, str], key: str, default: int) -> int:
    try:
        return int(fields.get(key) or default)
    except ValueError:
        raise ApiError(422, f"form field '{key}' must be an integer, got {fields[key]!r}") from None


@router.post("", status_code=201, responses=_UPLOAD_HELP)
async def train(request: Request) -> dict[str, Any]:
    """Train a head: form fields name, encoder (ct-fm-astra), classifier (logreg|linear), folds (5), seed, force;
    files: ``labels`` (labels.csv) and ``files`` (the labelled series: DICOM files or zips)."""
    fields, files, form = await _form(request, _TRAIN_FIELDS, ("labels", "files"))
    async with _answering(request, form) as work:
        if not fields.get("name"):
            raise ApiError(422, "form field 'name' is required (the head's name, e.g. 'nodule-head')")
        if len(files["labels"]) != 1:
            raise ApiError(422, "upload exactly one labels.csv in the file field 'labels'")
        labels = work / "labels.csv"
        labels.write_bytes(files["labels"][0].file.read())
        input_dir = work / "input"
        _save(request, files["files"], input_dir)
        options = {
            "encoder": fields.get("encoder") or "ct-fm-astra",
            "classifier": fields.get("classifier") or "logreg",
            "folds": _int(fields, "folds", 5),
            "seed": _int(fields, "seed", 0),
            "force": (fields.get("force") or "").lower() in ("1", "true", "yes"),
        }
        head = await run_in_threadpool(_train_locked, labels, input_dir, fields["name"], options)
        return {**_head_summary(head.path), "metrics": head.metrics}


def _train_locked(labels: Path, input_dir: Path, name: str, options: dict[str, Any]) -> Any:
    with _WORK:
        return train_head(labels, input_dir, name, **options)


@router.post("/{name}/predict", responses=_UPLOAD_HELP)
async def predict(name: HEAD_NAME, request: Request) -> dict[str, Any]:
    """Apply a head to uploaded series (DICOM files, zips, or one NIfTI): class probabilities per series."""
    folder = _find(name)
    _, files, form = await _form(request, (), ("files",))
    async with _answering(request, form) as work:
        source = _save(request, files["files"], work / "input")
        return await run_in_threadpool(_predict_locked, folder.name, source, work / "output",
                                       _settings(request).device)


def _predict_locked(name: str, source: Path, output: Path, device: str) -> dict[str, Any]:
    entry = get_model(name)
    workflow = load_workflow_file(entry.workflow("default"))
    workflow.execute = [step for step in workflow.execute if step != "write_sr"]  # answer with values only
    with _WORK:
        report = run(entry, RunOptions(input_path=source, output_dir=output, workflow=workflow, device=device))
    series = [{"series": e.key, "series_instance_uid": e.series_instance_uid, "status": str(e.status),
               "reason": e.reason, "values": e.values} for e in report.series]
    return {"head": name, "series": series}
