"""``medhub serve``: start the REST API and web pages (registered on the main typer app).

Imported at the bottom of :mod:`medhub.cli.main`, like :mod:`medhub.cli.hub`. Heavy imports
(FastAPI, uvicorn) happen inside the command, so other commands stay fast.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from medhub import config
from medhub.cli.app import DebugOption, app, user_errors
from medhub.errors import MedhubError


def default_data_dir() -> Path:
    """``$MEDHUB_SERVE_DATA`` or ``~/.local/share/medhub/serve``: jobs persist across restarts there."""
    return config.settings().serve_data


@app.command()
@user_errors
def serve(
    host: Annotated[str, typer.Option("--host", help="Address to bind; anything but loopback needs --token.")
                    ] = "127.0.0.1",
    port: Annotated[int, typer.Option("--port", help="TCP port.")] = 8000,
    data_dir: Annotated[Path | None, typer.Option(
        "--data-dir", help="Job store and job files (default $MEDHUB_SERVE_DATA or ~/.local/share/medhub/serve).")
    ] = None,
    token: Annotated[str | None, typer.Option(
        "--token", help="API token clients send as 'Authorization: Bearer <token>' (default $MEDHUB_SERVE_TOKEN).")
    ] = None,
    workers: Annotated[int, typer.Option("--workers", help="Jobs run at the same time (threads).")] = 1,
    max_upload_mb: Annotated[int, typer.Option("--max-upload-mb", help="Largest accepted upload.")] = 2048,
    max_queued: Annotated[int, typer.Option("--max-queued", help="Queued + running jobs before 429.")] = 16,
    device: Annotated[str, typer.Option("--device", help="cpu, cuda or mps.")] = "cpu",
    debug: DebugOption = False,
) -> None:
    """Serve the REST API (/api, OpenAPI at /openapi.json, docs at /docs) and the web pages."""
    try:
        import uvicorn

        from medhub.serve.app import create_app
        from medhub.serve.settings import ServeSettings
    except ImportError as exc:
        raise MedhubError(f"medhub serve needs the serve extra: pip install 'medhub[serve]' ({exc})") from None
    from medhub.hub.devices import check_machine_device

    device = check_machine_device(device)  # a server whose every job would fail on its device does not start
    settings = ServeSettings(data_dir=data_dir or default_data_dir(), host=host, port=port,
                             token=token or config.settings().serve_token,
                             workers=workers, max_upload_bytes=max_upload_mb * 1024 * 1024, max_queued=max_queued,
                             device=device)
    application = create_app(settings)
    where = f"http://{'[' + host + ']' if ':' in host else host}:{port}"
    typer.echo(f"medhub serve: {where} (API docs {where}/docs); jobs in {settings.data_dir}"
               + ("; API token required" if settings.token else ""), err=True)
    uvicorn.run(application, host=host, port=port, log_level="debug" if debug else "info",
                timeout_graceful_shutdown=15)
