"""Console-script entry point of ``medhub``: registers every command on the app and runs it."""

from __future__ import annotations

import atexit
import os
import sys
import threading

from medhub.cli import (  # noqa: F401 - each registers its commands on the app
    doctor,
    heads,
    hub,
    idc,
    listen,
    run,
    serve,
    view,
)
from medhub.cli.app import app


def main() -> None:
    """Console-script entry point: run the command, then leave without tearing down the heap.

    A finished command has nothing left to free that the operating system does not free anyway,
    yet the interpreter's own shutdown spends ~0.6 s CPU destroying module globals (pydicom's and
    highdicom's standard tables) -- a fifth of a whole no-model run (bench/README.md). So once the
    command is done, the shutdown steps that matter still run in the interpreter's order (wait for
    non-daemon threads, atexit handlers: weakref finalizers stopping isolated model workers and
    removing their work folders, logging), stdout/stderr are flushed, and the process ends with
    ``os._exit`` and the command's exit code. Uncaught exceptions (``--debug``) take the normal
    path, traceback and all.
    """
    try:
        app(prog_name="medhub")
    except SystemExit as done:
        code = done.code
    else:  # pragma: no cover - click's standalone mode always ends with SystemExit
        code = 0
    _exit_without_teardown(code)


def _exit_without_teardown(code: object) -> None:
    """End the process as ``sys.exit(code)`` would, minus freeing every object (see :func:`main`)."""
    if code is None:
        status = 0
    elif isinstance(code, int):
        status = code
    else:  # sys.exit("message"): the message goes to stderr, the status is 1
        print(code, file=sys.stderr)
        status = 1
    run_exit_handlers = getattr(atexit, "_run_exitfuncs", None)
    if run_exit_handlers is None:  # pragma: no cover - not CPython: take the ordinary exit
        sys.exit(status)
    main_thread = threading.main_thread()
    for thread in threading.enumerate():
        if thread is not main_thread and not thread.daemon:
            thread.join()
    run_exit_handlers()
    for stream in (sys.stdout, sys.stderr, sys.__stdout__, sys.__stderr__):
        try:
            if stream is not None:
                stream.flush()
        except (OSError, ValueError):  # closed or broken pipe: nothing more can be said there
            pass
    os._exit(status & 0xFF)  # as the C exit(): sys.exit(-1) ends with 255


if __name__ == "__main__":  # pragma: no cover
    main()
