"""``medhub view OUT``: look at a finished run in the browser (registered on the main typer app).

Serves the result page of ``medhub serve`` for the output folder of a ``medhub run`` on this
machine only (127.0.0.1), prints its address and opens a browser when one is available. Heavy
imports (FastAPI, uvicorn) happen inside the command, like ``medhub serve``.
"""

from __future__ import annotations

import os
import shutil
import socket
import sys
import tempfile
import threading
import time
import webbrowser
from pathlib import Path
from typing import Annotated

import typer

from medhub.cli.app import DebugOption, app, user_errors
from medhub.errors import MedhubError


def browser_available() -> bool:
    """Whether opening a URL would reach a graphical browser (not a text browser in this terminal)."""
    if os.environ.get("BROWSER"):
        return True
    if sys.platform in ("darwin", "win32"):
        return True
    if not (os.environ.get("DISPLAY") or os.environ.get("WAYLAND_DISPLAY")):
        return False
    try:
        webbrowser.get()
    except webbrowser.Error:
        return False
    return True


@app.command()
@user_errors
def view(
    output: Annotated[Path, typer.Argument(help="The --output folder of a medhub run.")] = Path("medhub-out"),
    input: Annotated[Path | None, typer.Option(
        "--input", "-i", help="The images the run read, when they are no longer where the report says.")] = None,
    port: Annotated[int, typer.Option("--port", help="TCP port on 127.0.0.1 (0: any free port).")] = 0,
    no_browser: Annotated[bool, typer.Option("--no-browser", help="Only print the address.")] = False,
    debug: DebugOption = False,
) -> None:
    """Show a run's results in the browser: the images, the segmentation, volumes and downloads."""
    try:
        import uvicorn

        from medhub.serve.view import create_view_app, find_input, read_report
    except ImportError as exc:
        raise MedhubError(f"medhub view needs the serve extra: pip install 'medhub[serve]' ({exc})") from None
    report = read_report(output)
    source = find_input(output, report, input)
    listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        listener.bind(("127.0.0.1", port))
    except OSError as exc:
        raise MedhubError(f"cannot listen on 127.0.0.1:{port} ({exc.strerror}); choose another --port") from None
    url = f"http://127.0.0.1:{listener.getsockname()[1]}/"
    cache = Path(tempfile.mkdtemp(prefix="medhub-view-"))
    try:
        source = _unpacked(source, cache)  # a run on series.zip: its images, unpacked again (nothing kept)
        server = uvicorn.Server(uvicorn.Config(create_view_app(output, source, cache), log_level="debug" if debug
                                               else "warning", timeout_graceful_shutdown=5))
        typer.echo(f"medhub view: {url}  (results of {output}; Ctrl-C to stop)", err=False)
        if not no_browser:
            if browser_available():
                threading.Thread(target=_open_when_up, args=(server, url), daemon=True).start()
            else:
                typer.echo("no browser here: open the address in one (on a remote machine: "
                           f"ssh -L {listener.getsockname()[1]}:127.0.0.1:{listener.getsockname()[1]} HOST)", err=True)
        sys.stdout.flush()
        server.run(sockets=[listener])
    finally:
        listener.close()
        shutil.rmtree(cache, ignore_errors=True)


def _unpacked(source: Path, cache: Path) -> Path:
    """The images of an archive input, unpacked into the view's temporary folder; any other input as it is."""
    from medhub.inputs.archives import archive_kind, unpack
    from medhub.inputs.nifti import is_nifti_name

    if not source.is_file() or is_nifti_name(source.name) or archive_kind(source) is None:
        return source
    unpack(source, cache / "input")
    return cache / "input"


def _open_when_up(server: object, url: str) -> None:
    deadline = time.monotonic() + 30
    while not getattr(server, "started", False) and time.monotonic() < deadline:
        time.sleep(0.1)
    webbrowser.open(url)
