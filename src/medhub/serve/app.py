"""The ``medhub serve`` application: REST API, web pages, job store and workers in one FastAPI app.

:func:`create_app` wires the parts: the job store and worker pool (started and stopped with the
app's lifespan, so a restart recovers interrupted jobs), the API router, the web router and
static files when :mod:`medhub.serve.web` is installed, a token check for every ``/api`` path,
an upload-size guard that answers 413 before a large body is read, and exception handlers that
turn every error into ``{"detail": "one line"}``: bad input is a 4xx, never a 500.
"""

from __future__ import annotations

import contextlib
import hmac
import importlib
import importlib.util
import json
import logging
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

import medhub
from medhub.errors import MedhubError
from medhub.serve.api import router as api_router
from medhub.serve.heads_api import router as heads_router  # few-shot heads: train, list, predict
from medhub.serve.jobs import JobService
from medhub.serve.redact import install_redaction
from medhub.serve.settings import ServeSettings
from medhub.serve.store import JobStore
from medhub.serve.uploads import ApiError

log = logging.getLogger("medhub.serve")

MULTIPART_SLACK = 1024 * 1024  # form field names, boundaries and headers on top of the file bytes
STATIC_DIR = Path(__file__).resolve().parent / "static"


async def _send_json(send: Send, status: int, detail: str, headers: list[tuple[bytes, bytes]] | None = None) -> None:
    body = json.dumps({"detail": detail}).encode()
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
                            *(headers or [])]})
    await send({"type": "http.response.body", "body": body})


class TokenMiddleware:
    """Every ``/api`` request needs ``Authorization: Bearer <token>`` or ``?token=`` (EventSource and links)."""

    def __init__(self, app: ASGIApp, token: str | None) -> None:
        self.app, self.token = app, token

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if self.token is None or scope["type"] != "http" or not scope["path"].startswith("/api"):
            await self.app(scope, receive, send)
            return
        request = Request(scope)
        given = ""
        scheme, _, value = request.headers.get("authorization", "").partition(" ")
        if scheme.lower() == "bearer":
            given = value.strip()
        given = given or request.query_params.get("token", "")
        if not given:
            await _send_json(send, 401, "missing API token: send 'Authorization: Bearer <token>' (or ?token=)",
                             [(b"www-authenticate", b"Bearer")])
            return
        if not hmac.compare_digest(given.encode(), self.token.encode()):
            await _send_json(send, 401, "wrong API token", [(b"www-authenticate", b"Bearer")])
            return
        await self.app(scope, receive, send)


class _BodyTooLarge(StarletteHTTPException):
    pass


class UploadLimitMiddleware:
    """Refuse request bodies over the limit: at once from Content-Length, else while the body streams in."""

    def __init__(self, app: ASGIApp, max_bytes: int) -> None:
        self.app, self.max_bytes = app, max_bytes

    def _message(self) -> str:
        return f"upload too large: the limit is {self.max_bytes // (1024 * 1024)} MB (medhub serve --max-upload-mb)"

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        limit = self.max_bytes + MULTIPART_SLACK
        length = dict(scope["headers"]).get(b"content-length")
        if length is not None and length.isdigit() and int(length) > limit:
            await _send_json(send, 413, self._message(), [(b"connection", b"close")])
            return
        seen = 0
        started = False

        async def counting_receive() -> Message:
            nonlocal seen
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > limit:
                    raise _BodyTooLarge(413, self._message())
            return message

        async def tracking_send(message: Message) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
            await send(message)

        try:
            await self.app(scope, counting_receive, tracking_send)
        except _BodyTooLarge as exc:
            if started:
                raise
            await _send_json(send, 413, str(exc.detail), [(b"connection", b"close")])


def _one_line_validation(exc: RequestValidationError) -> str:
    errors = exc.errors()
    if not errors:
        return "invalid request"
    first = errors[0]
    where = ".".join(str(p) for p in first.get("loc", ()))
    more = f" (and {len(errors) - 1} more)" if len(errors) > 1 else ""
    return f"{where}: {first.get('msg', 'invalid')}{more}"


def install_error_handlers(app: FastAPI) -> None:
    """Every error as ``{"detail": "one line"}``: bad input a 4xx, a bug a 500 (also used by ``medhub view``)."""

    @app.exception_handler(ApiError)
    async def api_error(request: Request, exc: ApiError) -> JSONResponse:
        return JSONResponse({"detail": str(exc)}, status_code=exc.status_code)

    @app.exception_handler(MedhubError)
    async def medhub_error(request: Request, exc: MedhubError) -> JSONResponse:
        return JSONResponse({"detail": str(exc)}, status_code=422)

    @app.exception_handler(RequestValidationError)
    async def validation_error(request: Request, exc: RequestValidationError) -> JSONResponse:
        return JSONResponse({"detail": _one_line_validation(exc)}, status_code=422)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        detail = exc.detail if isinstance(exc.detail, str) else json.dumps(exc.detail)
        return JSONResponse({"detail": detail}, status_code=exc.status_code, headers=exc.headers)

    @app.exception_handler(Exception)
    async def internal_error(request: Request, exc: Exception) -> JSONResponse:
        log.exception("internal error on %s %s", request.method, request.url.path)
        message = f"internal error: {type(exc).__name__}: {exc}".splitlines()[0]
        return JSONResponse({"detail": message}, status_code=500)


def _web_router() -> Any | None:
    """The web pages' router (:mod:`medhub.serve.web`) when that module is present."""
    try:
        if importlib.util.find_spec("medhub.serve.web") is None:
            return None
    except (ImportError, ValueError):
        return None
    return importlib.import_module("medhub.serve.web").router


def _fastapi(**kwargs: Any) -> FastAPI:
    """FastAPI with the docs page's scripts served locally when fastapi-offline is installed.

    The stock /docs page loads Swagger UI from a CDN, which a hospital network often blocks.
    """
    try:
        from fastapi_offline import FastAPIOffline
    except ImportError:
        return FastAPI(**kwargs)
    return FastAPIOffline(**kwargs)


def _declare_bearer_auth(app: FastAPI) -> None:
    """Say in /openapi.json that /api needs a bearer token, so the docs page offers "Authorize"."""
    build = app.openapi

    def openapi() -> dict[str, Any]:
        schema = build()
        schema.setdefault("components", {}).setdefault("securitySchemes", {})["bearerToken"] = {
            "type": "http", "scheme": "bearer",
            "description": "the server's --token (needed unless the server runs without one on localhost)",
        }
        schema["security"] = [{"bearerToken": []}, {}]
        return schema

    app.openapi = openapi  # type: ignore[method-assign]


def create_app(settings: ServeSettings) -> FastAPI:
    """The whole service for one data folder; the store and workers live as long as the app runs."""
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    install_redaction(settings.token)  # the access log never shows ?token= (nor the token anywhere)
    store = JobStore(settings.database)
    service = JobService(settings, store)

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        install_redaction(settings.token)  # again here: uvicorn configures its loggers after create_app
        service.start()
        try:
            yield
        finally:
            service.stop()

    app = _fastapi(
        title="medhub",
        version=medhub.__version__,
        description="Run published medical imaging models on DICOM: REST API with persistent jobs. "
                    "Every /api call needs `Authorization: Bearer <token>` when the server has a token.",
        lifespan=lifespan,
    )
    _declare_bearer_auth(app)
    app.state.settings = settings
    app.state.store = store
    app.state.jobs = service
    install_error_handlers(app)
    app.include_router(api_router)
    app.include_router(heads_router)
    web = _web_router()
    if web is not None:
        app.include_router(web)
    if STATIC_DIR.is_dir():
        from fastapi.staticfiles import StaticFiles

        app.mount("/static", StaticFiles(directory=STATIC_DIR), name="static")
    app.add_middleware(UploadLimitMiddleware, max_bytes=settings.max_upload_bytes)
    app.add_middleware(TokenMiddleware, token=settings.token)  # outermost: a caller without the token sends nothing
    return app
