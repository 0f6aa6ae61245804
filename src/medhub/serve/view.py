"""``medhub view OUT``: the result page of ``medhub serve``, on the output folder of a CLI run.

The same page, viewer and downloads as a finished job of the service, served on this machine
from the files where they are: nothing is uploaded or copied. The output folder is presented
as one finished job (its id derived from the folder's path), so ``static/job.js`` and
``static/viewer.js`` work unchanged; the API routes it calls are the few below, answered from
the folder's ``medhub-report.json`` and files. The images come from the input the report
names (``input_path``; ``OUT/sample-input/`` for ``--sample``) or the one given with
``--input``. The viewer's arrays are cached in a folder of the caller's choosing (the command
uses a temporary one), never in the output folder.
"""

from __future__ import annotations

import hashlib
import json
import tempfile
import zipfile
from pathlib import Path
from typing import Any

from fastapi import APIRouter, FastAPI
from fastapi.responses import FileResponse, RedirectResponse
from fastapi.staticfiles import StaticFiles
from starlette.background import BackgroundTask

import medhub
from medhub.errors import MedhubError
from medhub.pipeline.report import REPORT_NAME, iso_time
from medhub.serve.app import STATIC_DIR, install_error_handlers
from medhub.serve.jobs import list_results
from medhub.serve.uploads import ApiError
from medhub.serve.viewer_data import RunFolders, ViewerNotFound
from medhub.serve.web import router as web_router

MEDIA = {".dcm": "application/dicom", ".json": "application/json", ".csv": "text/csv", ".png": "image/png",
         ".gz": "application/gzip"}


def _iso_or_none(value: Any) -> str | None:
    """The report's time as the job JSON gives it (ISO 8601); a report of an older medhub had seconds."""
    if isinstance(value, str):
        return value
    return iso_time(value) if isinstance(value, int | float) else None


def read_report(output: Path) -> dict[str, Any]:
    """The run report of ``output``, or a one-line error saying the folder is not a medhub output."""
    path = Path(output) / REPORT_NAME
    if not Path(output).is_dir():
        raise MedhubError(f"{output}: no such folder (give the --output folder of a medhub run)")
    try:
        report = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise MedhubError(f"{output} holds no {REPORT_NAME}: not the output folder of a medhub run") from None
    except (OSError, ValueError) as error:
        raise MedhubError(f"{path}: not a readable run report ({error})") from None
    if not isinstance(report, dict) or not isinstance(report.get("series"), list):
        raise MedhubError(f"{path}: not a medhub run report")
    return report


def find_input(output: Path, report: dict[str, Any], given: Path | None = None) -> Path:
    """The images the run read: ``given``, else the report's ``input_path`` (relative to ``output`` when inside it)."""
    if given is not None:
        if not Path(given).exists():
            raise MedhubError(f"--input {given}: no such file or folder")
        return Path(given)
    recorded = str(report.get("input_path") or "")
    if not recorded:  # a report of an older medhub: its input label is the path the user gave, when local
        recorded = str(report.get("input") or "")
    path = Path(recorded)
    if recorded and not path.is_absolute():
        path = Path(output) / recorded if (Path(output) / recorded).exists() else path
    if not recorded or not path.exists():
        shown = recorded or "not recorded"
        raise MedhubError(f"the images this run read ({shown}) are not there any more; "
                          "give them with --input DICOM_FOLDER_OR_NIFTI")
    return path


class OutputFolder:
    """One output folder presented as one finished job (see the module docstring)."""

    def __init__(self, output: Path, input_path: Path, cache: Path) -> None:
        self.output, self.input_path, self.cache = Path(output), Path(input_path), Path(cache)
        self.job_id = hashlib.sha256(str(self.output.resolve()).encode()).hexdigest()[:32]

    def has_job(self, job_id: str) -> bool:
        return job_id == self.job_id

    def folders(self, job_id: str) -> RunFolders:
        if not self.has_job(job_id):
            raise ViewerNotFound(f"no such job: {job_id!r}")
        return RunFolders(input=self.input_path, output=self.output, cache=self.cache)

    def job(self) -> dict[str, Any]:
        """The folder as ``GET /api/jobs/{id}`` describes a finished job (docs/serve.md)."""
        report = read_report(self.output)
        summary = report.get("summary") or {}
        succeeded = int(summary.get("succeeded", 0) or 0)
        return {
            "id": self.job_id, "model": report.get("model", ""), "workflow": report.get("workflow", ""),
            "status": "succeeded" if succeeded else "failed",
            "error": None if succeeded else "no series succeeded in this run",
            "created": _iso_or_none(report.get("started")), "started": _iso_or_none(report.get("started")),
            "finished": _iso_or_none(report.get("finished")),
            "progress": {"series_done": len(report["series"]), "series_total": len(report["series"]),
                         "step": None, "series": None},
            "options": {}, "input": {}, "attempts": 1, "notes": [],
            "report": report, "results": list_results(self.output),
        }

    def result(self, path: str) -> Path:
        for item in list_results(self.output):
            if item["path"] == path:
                return self.output / item["path"]
        raise ApiError(404, f"this run has no result file {path!r}")


def _router(folder: OutputFolder) -> APIRouter:
    router = APIRouter()

    def check(job_id: str) -> None:
        if not folder.has_job(job_id):
            raise ApiError(404, f"no job {job_id}")

    @router.get("/", include_in_schema=False)
    def home() -> RedirectResponse:
        return RedirectResponse(f"/jobs/{folder.job_id}", status_code=307)

    @router.get("/api/jobs/{job_id}")
    def job(job_id: str) -> dict[str, Any]:
        check(job_id)
        return folder.job()

    @router.get("/api/jobs/{job_id}/results")
    def results_zip(job_id: str) -> FileResponse:
        check(job_id)
        handle = tempfile.NamedTemporaryFile(dir=folder.cache, suffix=".zip", delete=False)  # noqa: SIM115
        handle.close()
        archive_path = Path(handle.name)
        with zipfile.ZipFile(archive_path, "w", compression=zipfile.ZIP_DEFLATED, compresslevel=1) as archive:
            for item in list_results(folder.output):
                archive.write(folder.output / item["path"], item["path"])
        return FileResponse(archive_path, media_type="application/zip", filename=f"{folder.output.name}.zip",
                            background=BackgroundTask(archive_path.unlink, missing_ok=True))

    @router.get("/api/jobs/{job_id}/results/{path:path}")
    def result_file(job_id: str, path: str) -> FileResponse:
        check(job_id)
        found = folder.result(path)
        return FileResponse(found, media_type=MEDIA.get(found.suffix, "application/octet-stream"),
                            filename=found.name)

    return router


def create_view_app(output: Path, input_path: Path, cache: Path) -> FastAPI:
    """The viewer app for one output folder; ``cache`` receives the viewer's arrays."""
    cache.mkdir(parents=True, exist_ok=True)
    folder = OutputFolder(output, input_path, cache)
    app = FastAPI(title="medhub view", version=medhub.__version__, docs_url=None, redoc_url=None,
                  openapi_url=None)
    app.state.results = folder
    install_error_handlers(app)
    app.include_router(_router(folder))
    app.include_router(web_router)
    app.mount("/static", StaticFiles(directory=STATIC_DIR), name="static")
    return app
