"""``medhub listen``: a DICOM node (C-STORE SCP, C-ECHO) that runs a model on every series it receives.

The node's logic is :mod:`medhub.serve.listener`; this command parses options, prints one log
line per event on stderr, and turns SIGTERM / Ctrl-C into a clean shutdown (the series being
processed finishes; a second signal stops at once, and that series runs again at the next start).
"""

from __future__ import annotations

import signal
import sys
import time
from pathlib import Path
from typing import Annotated, Any

import typer

from medhub.cli.app import DebugOption, app, user_errors


def _log(message: str) -> None:
    sys.stderr.write(f"{time.strftime('%Y-%m-%d %H:%M:%S')} medhub listen: {message}\n")
    sys.stderr.flush()


@app.command()
@user_errors
def listen(
    model: Annotated[str, typer.Option("--model", "-m", help="Model to run on every received series.")],
    port: Annotated[int, typer.Option("--port", "-p", help="DICOM port to listen on (104 needs root; 11112 is usual).")
                    ],
    ae_title: Annotated[str | None, typer.Option(
        "--ae-title", help="This node's AE title (default $MEDHUB_AE_TITLE, else MEDHUB).")] = None,
    output: Annotated[Path, typer.Option("--output", "-o", help="Results: OUTPUT/<SeriesInstanceUID>/.")
                      ] = Path("medhub-listen"),
    forward: Annotated[str | None, typer.Option(
        "--forward", help="Send every SEG/RTSTRUCT/SR to dimse://AET@HOST:PORT (C-STORE) or dicomweb://HOST/PATH.")
    ] = None,
    series_timeout: Annotated[float, typer.Option(
        "--series-timeout", help="Seconds a series must be quiet before it runs.")] = 10.0,
    allow_ae: Annotated[list[str] | None, typer.Option(
        "--allow-ae", help="Accept associations only from this calling AE title (repeatable).")] = None,
    host: Annotated[str, typer.Option("--host", help="Address to bind (0.0.0.0: other machines may send).")
                    ] = "127.0.0.1",
    workflow: Annotated[str | None, typer.Option("--workflow", "-w", help="Workflow name of the model.")] = None,
    config: Annotated[Path | None, typer.Option("--config", help="A workflow YAML file to use instead.")] = None,
    set_: Annotated[list[str] | None, typer.Option("--set", help="Override module.param=value (repeatable).")] = None,
    spool: Annotated[Path | None, typer.Option(
        "--spool", help="Where received instances wait (default OUTPUT/.medhub-spool); survives restarts.")] = None,
    forward_retry: Annotated[float, typer.Option(
        "--forward-retry", help="Seconds before a failed forward is tried again (doubling, at most 10 min).")] = 30.0,
    device: Annotated[str, typer.Option("--device", help="cpu, cuda or mps.")] = "cpu",
    debug: DebugOption = False,
) -> None:
    """Receive DICOM (C-STORE, C-ECHO); run MODEL on each series once it is quiet; write and forward the results."""
    from medhub.hub.catalog import get_model
    from medhub.hub.devices import check_machine_device
    from medhub.inputs.dimse import calling_ae_title
    from medhub.pipeline.workflows import resolve_workflow
    from medhub.serve.listener import DicomListener, ListenerOptions

    entry = get_model(model)
    chosen = resolve_workflow(entry, name=workflow, config=config, overrides=list(set_ or []))
    options = ListenerOptions(model=entry, workflow=chosen, port=port,
                              output=output, ae_title=ae_title or calling_ae_title(), host=host, forward=forward,
                              series_timeout=series_timeout, allow_ae=list(allow_ae or []),
                              device=check_machine_device(device), spool=spool, retry_interval=forward_retry)
    listener = DicomListener(options, _log)
    signals = {"count": 0}

    def on_signal(number: int, _frame: Any) -> None:
        signals["count"] += 1
        if signals["count"] > 1:
            _log("stopping at once; the series in progress runs again at the next start")
            raise SystemExit(128 + number)
        _log(f"{signal.Signals(number).name}: stopping (the series in progress finishes; signal again to stop "
             "at once)")
        listener.request_stop()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    listener.start()
    try:
        listener.wait()
    finally:
        listener.stop()
    _log("stopped")
