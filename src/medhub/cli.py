"""The ``medhub`` command line: run and doctor here; models, info, pull, new, check in :mod:`medhub.cli_hub`.

Bad input ends with one line on stderr and exit code 2, never a traceback (``--debug`` shows
it). Exit codes of ``run``: 0 every chosen series succeeded, 1 some failed (the others are
written), 2 nothing could be done.
"""

from __future__ import annotations

import functools
import json
import shutil
import signal
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any, TypeVar

import typer
from rich.console import Console
from rich.table import Table

from medhub.errors import MedhubError

app = typer.Typer(
    help="Run published medical imaging models on raw DICOM; write valid DICOM SEG / RTSTRUCT.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)
console = Console()
if not console.is_terminal:  # a log file or pipe: do not wrap tables at 80 columns
    console = Console(width=200)
F = TypeVar("F", bound=Callable[..., Any])

EXIT_OK, EXIT_SOME_FAILED, EXIT_NOTHING_DONE = 0, 1, 2


def user_errors(function: F) -> F:
    """Turn MedhubError into one line + exit 2, and unexpected errors into one line + exit 1."""

    @functools.wraps(function)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        debug = bool(kwargs.get("debug"))
        try:
            return function(*args, **kwargs)
        except MedhubError as exc:
            if debug:
                raise
            typer.echo(f"medhub: {exc}", err=True)
            raise typer.Exit(EXIT_NOTHING_DONE) from None
        except (typer.Exit, typer.Abort, KeyboardInterrupt):
            raise
        except Exception as exc:
            if debug:
                raise
            message = f"{type(exc).__name__}: {exc}".splitlines()[0]
            typer.echo(f"medhub: internal error: {message} (run with --debug for the traceback)", err=True)
            raise typer.Exit(EXIT_SOME_FAILED) from None

    return wrapper  # type: ignore[return-value]


DebugOption = Annotated[bool, typer.Option("--debug", help="Show tracebacks instead of one-line errors.")]
JsonOption = Annotated[bool, typer.Option("--json", help="Print JSON instead of a table.")]


@app.command()
@user_errors
def run(
    model: Annotated[str, typer.Argument(help="Model name, e.g. deepbet or ct-body (see `medhub models`).")],
    input: Annotated[str | None, typer.Option("--input", "-i", help="DICOM folder, NIfTI or dicomweb:// URL.")] = None,
    output: Annotated[Path, typer.Option("--output", "-o", help="Output folder.")] = Path("medhub-out"),
    workflow: Annotated[str | None, typer.Option("--workflow", "-w", help="Workflow name of the model.")] = None,
    config: Annotated[Path | None, typer.Option("--config", help="A workflow YAML file to use instead.")] = None,
    set_: Annotated[list[str] | None, typer.Option("--set", help="Override module.param=value (repeatable).")] = None,
    rtstruct: Annotated[bool, typer.Option("--rtstruct", help="Also write an RTSTRUCT per series.")] = False,
    nifti: Annotated[bool, typer.Option("--nifti", help="Also write the label map as NIfTI.")] = False,
    labelmap: Annotated[bool, typer.Option("--labelmap", help="Write a LABELMAP SEG instead of BINARY.")] = False,
    template: Annotated[str | None, typer.Option("--template", help="Output path template.")] = None,
    sample: Annotated[bool, typer.Option("--sample", help="Run on sample data shipped with a dependency.")] = False,
    device: Annotated[str, typer.Option("--device", help="cpu, cuda or mps.")] = "cpu",
    json_progress: Annotated[bool, typer.Option("--json-progress", help="Stream one JSON event per line.")] = False,
    resume: Annotated[bool, typer.Option("--resume", help="Skip series already completed in OUT.")] = False,
    scheduler: Annotated[str | None, typer.Option("--scheduler", help="Dask scheduler address.")] = None,
    workers: Annotated[int | None, typer.Option("--workers", help="Start a local Dask cluster of N.")] = None,
    push: Annotated[str | None, typer.Option("--push", help="dicomweb://HOST/PATH for STOW-RS.")] = None,
    debug: DebugOption = False,
) -> None:
    """Run MODEL on every suitable series under --input and write results to --output."""
    from medhub.models.catalog import get_model
    from medhub.output import DEFAULT_TEMPLATE
    from medhub.pipeline import RunOptions
    from medhub.pipeline import run as run_pipeline
    from medhub.progress import JsonLinesProgress, RichProgress
    from medhub.report import Status
    from medhub.workflow import apply_overrides, load_workflow_file

    entry = get_model(model)
    if config is not None:
        chosen = load_workflow_file(config)
    else:
        name = workflow or "default"
        if name not in entry.workflows:
            available = ", ".join(sorted(entry.workflows))
            raise MedhubError(f"model {model} has no workflow {name!r}; available: {available}")
        chosen = load_workflow_file(entry.workflows[name])
    extra = list(set_ or [])
    chosen = apply_overrides(chosen, extra)
    for flag, step in ((rtstruct, "write_rtstruct"), (nifti, "write_nifti")):
        if flag and step not in chosen.execute:
            chosen.execute.append(step)
    if labelmap:
        chosen.modules.setdefault("write_seg", {})["labelmap"] = True

    if sample and input is not None:
        raise MedhubError("give either --input or --sample, not both")
    if input is None and not sample:
        raise MedhubError("missing --input (a DICOM folder, a NIfTI file or a dicomweb:// URL), or use --sample")
    if push is not None:
        from medhub.dicomweb import parse_dicomweb_url

        parse_dicomweb_url(push)  # a bad push URL fails before any work
    # SIGTERM (a batch system's kill) unwinds like Ctrl-C, so temporary files are removed on the way out.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(128 + signal.SIGTERM))
    progress = JsonLinesProgress() if json_progress else RichProgress()
    scratch: Path | None = None  # sample data or a DICOMweb download, removed after the run
    try:
        if sample:
            from medhub.sample import write_sample

            scratch = Path(tempfile.mkdtemp(prefix="medhub-sample-"))
            source = write_sample(scratch, entry.card.id)
        else:
            source = _resolve_input(str(input), progress)
            scratch = source if source != Path(str(input)) else None
        options = RunOptions(input_path=source, output_dir=output, workflow=chosen, device=device,
                             template=template or DEFAULT_TEMPLATE, progress=progress, debug=debug,
                             resume=resume, scheduler=scheduler, workers=workers,
                             input_label=_input_label(input, sample))
        report = run_pipeline(entry, options)
    finally:
        progress.close()
        if scratch is not None:
            shutil.rmtree(scratch, ignore_errors=True)
    summary = report.summary()
    if not json_progress:
        print_run_summary(report)
    if push is not None:
        _push(report, output, push)
    if summary[Status.FAILED.value]:
        raise typer.Exit(EXIT_SOME_FAILED)


def _input_label(value: str | None, sample: bool) -> str:
    """What the report names as the input: the path, or the DICOMweb URL without credentials."""
    from medhub.dicomweb import is_dicomweb_url, redact_url

    if sample or value is None:
        return "sample data"
    return redact_url(value) if is_dicomweb_url(value) else value


def _resolve_input(value: str, progress: Any) -> Path:
    """A local path as is; a dicomweb:// URL is fetched (QIDO-RS + WADO-RS) into a scratch folder first."""
    from medhub.dicomweb import fetch_input, is_dicomweb_url

    if is_dicomweb_url(value):
        folder = Path(tempfile.mkdtemp(prefix="medhub-dicomweb-"))
        try:
            return fetch_input(value, folder, progress=lambda done, total: progress.event("fetch", done=done,
                                                                                            total=total))
        except BaseException:
            shutil.rmtree(folder, ignore_errors=True)
            raise
    path = Path(value)
    if not path.exists():
        raise MedhubError(f"input not found: {value}")
    return path


def _push(report: Any, output: Path, url: str) -> None:
    """Store the DICOM results through STOW-RS; a failed push is exit code 1 (the results are written locally)."""
    from medhub.dicomweb import push_outputs

    files = [output / o for e in report.series for o in e.outputs if o.endswith((".seg.dcm", ".rtstruct.dcm"))]
    if not files:
        return
    try:
        stored = push_outputs(files, url)
    except MedhubError as exc:
        typer.echo(f"medhub: {exc}", err=True)
        raise typer.Exit(EXIT_SOME_FAILED) from None
    typer.echo(f"pushed {len(stored)} object(s) to {url.split('?')[0].split('@')[-1]}", err=True)


def print_run_summary(report: Any) -> None:
    """A table of every series: status, reason, outputs."""
    table = Table(title=f"medhub {report.model} {report.model_version} ({report.workflow})")
    for column in ("series", "modality", "images", "status", "reason / outputs"):
        table.add_column(column)
    for entry in report.series:
        detail = entry.reason or ", ".join(entry.outputs)
        if entry.notes:
            detail += " (" + "; ".join(n for n in entry.notes if "\n" not in n) + ")"
        table.add_row(entry.key[-40:], entry.modality, str(entry.images), entry.status.value, detail)
    console.print(table)
    summary = report.summary()
    console.print(
        f"{summary['succeeded']} succeeded, {summary['failed']} failed, {summary['skipped']} skipped, "
        f"{summary['rejected']} not suitable; {len(report.unreadable)} unreadable files, "
        f"{report.non_dicom_files} non-DICOM files. Report: {Path(report.output) / 'medhub-report.json'}"
    )


@app.command()
@user_errors
def doctor(
    path: Annotated[Path, typer.Argument(help="A DICOM folder or file.")],
    json_output: JsonOption = False,
    debug: DebugOption = False,
) -> None:
    """List the series under PATH and what the checks find, without running a model."""
    from medhub.doctor import diagnose

    diagnosis = diagnose(path)
    if json_output:
        console.print_json(json.dumps(diagnosis, default=str))
        return
    table = Table(title=f"{path}: {len(diagnosis['series'])} series")
    for column in ("series", "modality", "description", "images", "status", "findings"):
        table.add_column(column)
    for item in diagnosis["series"]:
        findings = item["skip_reason"] or ""
        if item["findings"]:
            findings = "; ".join(filter(None, [findings, *item["findings"]]))
        table.add_row(item["key"][-40:], item["modality"], item["description"], str(item["images"]),
                      "loadable" if not item["skip_reason"] else "skip", findings)
    console.print(table)
    for bad in diagnosis["unreadable"]:
        console.print(f"unreadable: {bad['path']}: {bad['reason']}", markup=False, highlight=False)
    console.print(f"{diagnosis['files_seen']} files, {diagnosis['non_dicom_files']} not DICOM, "
                  f"{diagnosis['dicomdir_files']} DICOMDIR ignored")


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
    import atexit
    import os
    import threading

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


# The hub's commands (models, info, pull, new, check, schema) and `serve` register themselves on ``app``.
from medhub import cli_heads, cli_hub, cli_serve  # noqa: E402, F401

if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
