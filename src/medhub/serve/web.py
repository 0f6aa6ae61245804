"""The web pages of ``medhub serve`` and the data its result viewer reads.

Pages (no front-end build step: Jinja2 templates, one CSS file, vanilla JS in ``static/``):

* ``/``: the catalog, filterable by modality, body part and task (server-side with query
  parameters, so a filtered URL can be shared; instantly in the page with JS);
* ``/models/{name}``: a model's card, citation, licences, segments with colours and the CLI and
  curl commands that run it;
* ``/try``: upload a DICOM folder, a zip or a NIfTI file, start a job, watch its progress;
* ``/jobs/{id}``: progress, then the viewer (axial / coronal / sagittal with the overlay),
  segment volumes and downloads.

Pages themselves need no token: the catalog is public information, and the job page is a shell
that calls the API with the token the page finds in its ``token`` query parameter or in
localStorage. The viewer data endpoints live under ``/api`` and so are behind the app's token
middleware (:class:`medhub.serve.app.TokenMiddleware`) like every other API path.
"""

from __future__ import annotations

import gzip
import json
from pathlib import Path
from typing import Any

from fastapi import APIRouter, HTTPException, Request
from fastapi.responses import FileResponse, HTMLResponse, JSONResponse, Response
from fastapi.templating import Jinja2Templates

from medhub.errors import MedhubError
from medhub.hub.catalog import catalog_problems, get_model, list_entries, matches
from medhub.hub.workflow import load_workflow_file
from medhub.segdb import load_segment_database
from medhub.serve import viewer_data
from medhub.serve.api import model_detail

HERE = Path(__file__).resolve().parent
templates = Jinja2Templates(directory=str(HERE / "templates"))
router = APIRouter()

TASK_ORDER = ("segmentation", "classification", "prediction", "regression", "detection")


# ----------------------------------------------------------------------------------- helpers


def _settings(request: Request) -> Any:
    """The app's ServeSettings (``app.state.settings``, set by ``create_app``)."""
    settings = getattr(request.app.state, "settings", None)
    if settings is None:
        raise HTTPException(status_code=503, detail="the server has no settings (app.state.settings)")
    return settings


def _catalog() -> list[Any]:
    return list_entries()


def _options(cards: list[Any]) -> dict[str, list[str]]:
    """The values each filter offers: those that occur in the cards."""
    modalities = sorted({m for c in cards for m in c.modality})
    body_parts = sorted({p for c in cards for p in c.body_parts})
    tasks = {c.task for c in cards} | {k for c in cards for k in c.outputs.kinds}
    return {"modality": modalities, "body_part": body_parts,
            "task": [t for t in TASK_ORDER if t in tasks] + sorted(tasks - set(TASK_ORDER))}


def _card_facets(card: Any, options: dict[str, list[str]]) -> dict[str, str]:
    """For each filter, the offered values this card matches (the page filters on these, so the
    page and the server, which uses ``catalog.matches``, always agree)."""
    return {key: " ".join(v for v in values if matches(card, **{key: v})) for key, values in options.items()}


def _swatches(card: Any) -> list[dict[str, Any]]:
    """Segment names and colours for the catalog's swatches (the segment database is parsed once)."""
    database = load_segment_database()
    found = [database.get(segment_id) for _, segment_id in sorted(card.outputs.segments.items())]
    return [{"name": spec.name, "color": list(spec.color)} for spec in found if spec is not None]


def _workflows(entry: Any) -> list[dict[str, str]]:
    found = []
    for name, path in sorted(entry.workflows.items(), key=lambda item: (item[0] != "default", item[0])):
        try:
            workflow = load_workflow_file(path)
            found.append({"name": name, "description": workflow.general.description,
                          "steps": ", ".join(workflow.execute)})
        except MedhubError as error:
            found.append({"name": name, "description": f"(broken: {error})", "steps": ""})
    return found


def commands(detail: dict[str, Any], base_url: str) -> dict[str, str]:
    """The CLI command and curl call of ``GET /api/models/{name}``, plus how to follow the job."""
    base = base_url.rstrip("/")
    auth = 'curl -H "Authorization: Bearer $MEDHUB_TOKEN"'
    follow = (f"{auth} {base}/api/jobs/JOB_ID            # status, progress, report\n"
              f"{auth} -o results.zip {base}/api/jobs/JOB_ID/results")
    return {"cli": detail["cli"], "curl": detail["curl"], "follow": follow}


def _page(request: Request, name: str, status_code: int = 200, **context: Any) -> HTMLResponse:
    context.setdefault("local_view", getattr(request.app.state, "results", None) is not None)
    return templates.TemplateResponse(request, name, context, status_code=status_code)


def _known_job(request: Request, job_id: str) -> bool:
    """Whether a job of this id exists: in ``medhub view``'s output folder, or in the server's job store."""
    results = getattr(request.app.state, "results", None)
    if results is not None:
        return bool(results.has_job(job_id))
    store = getattr(request.app.state, "store", None)
    if store is not None and store.get(job_id) is not None:
        return True
    settings = getattr(request.app.state, "settings", None)  # files of a job (e.g. laid out by hand) without a record
    return settings is not None and (Path(settings.data_dir) / "jobs" / job_id / "output").is_dir()


# ----------------------------------------------------------------------------------- pages


@router.get("/", response_class=HTMLResponse, include_in_schema=False)
def catalog_page(request: Request, modality: str = "", body_part: str = "", task: str = "") -> HTMLResponse:
    """The model catalog; the query parameters pre-filter it (the page's JS refines it live)."""
    entries = _catalog()
    cards = [e.card for e in entries]
    options = _options(cards)
    chosen = {"modality": modality.strip(), "body_part": body_part.strip(), "task": task.strip()}
    for key, value in chosen.items():  # a value no card has (or an alias like BRAIN) still shows as chosen
        if value and value.upper() not in {v.upper() for v in options[key]}:
            options[key].append(value.lower() if key == "task" else value.upper())
    models = [
        {"card": e.card, "origin": e.origin, "facets": _card_facets(e.card, options),
         "segments": _swatches(e.card)[:12], "more_segments": max(0, len(e.card.outputs.segments) - 12),
         "visible": matches(e.card, modality=modality or None, body_part=body_part or None, task=task or None)}
        for e in entries
    ]
    return _page(request, "catalog.html", models=models, options=options, chosen=chosen,
                 problems=catalog_problems())


@router.get("/models/{name}", response_class=HTMLResponse, include_in_schema=False)
def model_page(request: Request, name: str) -> HTMLResponse:
    """One model: card, citation, licences, segments with colours, how to run it."""
    try:
        entry = get_model(name)
    except MedhubError as error:
        return _page(request, "error.html", status_code=404, title="Model not found", message=str(error))
    card = entry.card
    detail = model_detail(card.id, str(request.base_url))  # the same segments as GET /api/models/{name}
    return _page(request, "model.html", entry=entry, card=card, segments=detail["segments"],
                 workflows=_workflows(entry), commands=commands(detail, str(request.base_url)),
                 card_json=json.dumps(card.model_dump(mode="json"), indent=2))


@router.get("/try", response_class=HTMLResponse, include_in_schema=False)
def try_page(request: Request, model: str = "") -> HTMLResponse:
    """The upload form: pick a model and a workflow, give files, start, watch progress."""
    entries = _catalog()
    models = [{"id": e.card.id, "title": e.card.title, "modality": e.card.modality,
               "workflows": sorted(e.workflows, key=lambda name: (name != "default", name)),
               "segments": bool(e.card.outputs.segments),
               "writes_rtstruct": [w["name"] for w in _workflows(e) if "write_rtstruct" in w["steps"].split(", ")]}
              for e in entries]
    settings = getattr(request.app.state, "settings", None)
    limit_mb = int(getattr(settings, "max_upload_bytes", 0) / 1024 / 1024) if settings else 0
    return _page(request, "try.html", models=models, chosen=model, limit_mb=limit_mb,
                 models_json=json.dumps(models).replace("<", "\\u003c"))


@router.get("/jobs/{job_id}", response_class=HTMLResponse, include_in_schema=False)
def job_page(request: Request, job_id: str) -> HTMLResponse:
    """The result page shell; its JS reads the job, follows progress, then shows the viewer.

    A mistyped or deleted job id gets a page saying so (404), not the API's validation error.
    """
    try:
        viewer_data.check_name(job_id, "job")
        if not _known_job(request, job_id):
            raise viewer_data.ViewerNotFound(f"no such job: {job_id!r}")
    except MedhubError as error:
        return _page(request, "error.html", status_code=404, title="Job not found",
                     message=f"{error}. Check the address, or start a new job from \"Try a model\".")
    return _page(request, "job.html", job_id=job_id)


# ----------------------------------------------------------------------------------- viewer data


def _viewer(request: Request, job_id: str, series: str) -> viewer_data.ViewerFiles:
    results = getattr(request.app.state, "results", None)  # medhub view: one output folder
    try:
        viewer_data.check_name(job_id, "job")
        if results is not None:
            return viewer_data.viewer_files(results.folders(job_id), series)
        return viewer_data.viewer_files(Path(_settings(request).data_dir) / "jobs" / job_id, series)
    except viewer_data.ViewerNotFound as error:
        raise HTTPException(status_code=404, detail=_without_paths(request, job_id, str(error))) from None
    except MedhubError as error:
        raise HTTPException(status_code=422, detail=_without_paths(request, job_id, str(error))) from None


def _without_paths(request: Request, job_id: str, message: str) -> str:
    """The message without the server's folders (see :meth:`medhub.serve.jobs.JobService.without_paths`)."""
    service = getattr(request.app.state, "jobs", None)
    return service.without_paths(message, job_id) if service is not None else message


_ERRORS: dict[int | str, dict[str, Any]] = {
    401: {"description": "missing or wrong API token"},
    404: {"description": "no such job, series or label map"},
    422: {"description": "the job's files cannot be shown (e.g. labels on another grid)"},
}


@router.get("/api/jobs/{job_id}/viewer/{series}/meta", tags=["viewer"], responses=_ERRORS)
def viewer_meta(request: Request, job_id: str, series: str) -> JSONResponse:
    """Shape ``[x, y, z]`` (axes to patient Left, Posterior, Superior), spacing in mm, display
    windows (in stored int16 units; ``value_scale`` = [slope, intercept] gives the original
    values), segments with label, name, colour and volume in ml (computed from the labels at
    full resolution), and ``subsample`` (in-plane stride applied to large images)."""
    meta = _viewer(request, job_id, series).read_meta()
    meta.pop("_cache", None)
    return JSONResponse(meta, headers={"Cache-Control": "no-cache"})


def _binary(request: Request, path: Path) -> Response:
    """A cached ``.bin.gz`` as-is with ``Content-Encoding: gzip``, or inflated for clients without gzip."""
    if "gzip" in request.headers.get("accept-encoding", "").lower():
        return FileResponse(path, media_type="application/octet-stream",
                            headers={"Content-Encoding": "gzip", "Cache-Control": "no-cache"})
    return Response(gzip.decompress(path.read_bytes()), media_type="application/octet-stream",
                    headers={"Cache-Control": "no-cache"})


_BINARY = {200: {"content": {"application/octet-stream": {}}, "description": "raw little-endian array"}, **_ERRORS}


@router.get("/api/jobs/{job_id}/viewer/{series}/image.bin", tags=["viewer"], responses=_BINARY,
            response_class=Response)
def viewer_image(request: Request, job_id: str, series: str) -> Response:
    """The input volume as int16 little-endian, x fastest, then y, then z (see ``meta``)."""
    return _binary(request, _viewer(request, job_id, series).image)


@router.get("/api/jobs/{job_id}/viewer/{series}/labels.bin", tags=["viewer"], responses=_BINARY,
            response_class=Response)
def viewer_labels(request: Request, job_id: str, series: str) -> Response:
    """The label map as uint8 on the same grid and in the same order as ``image.bin``."""
    return _binary(request, _viewer(request, job_id, series).labels)

