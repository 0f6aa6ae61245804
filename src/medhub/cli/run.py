"""``medhub run``: a model over every suitable series of an input, into an output folder."""

from __future__ import annotations

import os
import shutil
import signal
import sys
import tempfile
from pathlib import Path
from typing import Annotated, Any

import typer
from typer.core import TyperCommand

from medhub.cli.app import EXIT_NOTHING_DONE, EXIT_SOME_FAILED, DebugOption, app, console, new_table, user_errors
from medhub.errors import MedhubError

ROI_SUBSET_FLAGS = ("--roi-subset", "--roi_subset")


def gather_roi_subset(args: list[str]) -> list[str]:
    """``--roi-subset LIVER SPLEEN -i ...`` → ``--roi-subset LIVER,SPLEEN -i ...``: names up to the next option.

    TotalSegmentator's ``--roi_subset liver spleen`` takes several names after one flag; click's
    options take one value each, so the names that follow the flag are joined before click parses.
    """
    gathered: list[str] = []
    index = 0
    while index < len(args):
        token = args[index]
        gathered.append(token)
        index += 1
        if token in ROI_SUBSET_FLAGS:
            names = []
            while index < len(args) and not args[index].startswith("-"):
                names.append(args[index])
                index += 1
            if names:
                gathered.append(",".join(names))
    return gathered


class _RunCommand(TyperCommand):
    """``medhub run``, whose ``--roi-subset`` takes several names as TotalSegmentator's does."""

    def parse_args(self, ctx: Any, args: list[str]) -> list[str]:
        return super().parse_args(ctx, gather_roi_subset(list(args)))


@app.command(cls=_RunCommand)
@user_errors
def run(
    model: Annotated[str, typer.Argument(help="Model name, e.g. deepbet or ct-body (see `medhub models`).")],
    input: Annotated[str | None, typer.Option(
        "--input", "-i", help="DICOM folder, a .zip/.tar/.tar.gz of DICOM, NIfTI, or a URL: "
        "dicomweb://HOST/PATH?study=UID, "
        "dimse://AET@HOST:PORT?study=UID, idc://series/UID."
    )] = None,
    output: Annotated[Path, typer.Option("--output", "-o", help="Output folder.")] = Path("medhub-out"),
    workflow: Annotated[str | None, typer.Option("--workflow", "-w", help="Workflow name of the model.")] = None,
    config: Annotated[Path | None, typer.Option("--config", help="A workflow YAML file to use instead.")] = None,
    set_: Annotated[list[str] | None, typer.Option("--set", help="Override module.param=value (repeatable).")] = None,
    rtstruct: Annotated[bool, typer.Option("--rtstruct", help="Also write an RTSTRUCT per series.")] = False,
    nifti: Annotated[bool, typer.Option("--nifti", help="Also write the label map as NIfTI.")] = False,
    seg_nrrd: Annotated[bool, typer.Option("--seg-nrrd", help="Also write <model>.seg.nrrd for 3D Slicer.")] = False,
    labelmap: Annotated[bool, typer.Option("--labelmap", help="Write a LABELMAP SEG instead of BINARY.")] = False,
    preview: Annotated[bool, typer.Option(
        "--preview", help="Also write <model>.preview.png per series: slices with the overlay and a legend.")] = False,
    statistics: Annotated[bool, typer.Option(
        "--statistics", help="Also write <model>.statistics.json/.csv per series: volume and image values per segment."
    )] = False,
    roi_subset: Annotated[list[str] | None, typer.Option(
        *ROI_SUBSET_FLAGS, metavar="NAME ...",
        help="Keep only these segments of a multi-structure model (its segment IDs, e.g. --roi-subset LIVER SPLEEN; "
             "`medhub info MODEL` lists them): in the SEG, RTSTRUCT, NIfTI and statistics. Models that can, "
             "predict only these.")] = None,
    template: Annotated[str | None, typer.Option("--template", help="Output path template.")] = None,
    sample: Annotated[bool, typer.Option("--sample", help="Run on sample data shipped with a dependency.")] = False,
    device: Annotated[str, typer.Option("--device", help="cpu, cuda or mps.")] = "cpu",
    json_progress: Annotated[bool, typer.Option("--json-progress", help="Stream one JSON event per line.")] = False,
    resume: Annotated[bool, typer.Option("--resume", help="Skip series already completed in OUT.")] = False,
    scheduler: Annotated[str | None, typer.Option("--scheduler", help="Dask scheduler address.")] = None,
    workers: Annotated[int | None, typer.Option("--workers", help="Start a local Dask cluster of N.")] = None,
    push: Annotated[str | None, typer.Option(
        "--push", help="Store SEG/RTSTRUCT/SR after the run: dicomweb://HOST/PATH (STOW-RS) or dimse://AET@HOST:PORT "
        "(C-STORE).")] = None,
    move_to: Annotated[str | None, typer.Option(
        "--move-to", help="Retrieve a dimse:// input with C-MOVE to this AE title (medhub's, as the archive knows "
        "it) instead of C-GET.")] = None,
    move_port: Annotated[int | None, typer.Option(
        "--move-port", help="Port medhub receives C-MOVE on (the one the archive has for --move-to).")] = None,
    pull: Annotated[bool, typer.Option(
        "--pull", help="First make the model ready (weights, its own environment) as `medhub pull` does.")] = False,
    allow_implausible: Annotated[bool, typer.Option(
        "--allow-implausible", help="Accept results outside the plausible ranges of the model's card (a warning "
        "instead of exit code 1).")] = False,
    debug: DebugOption = False,
) -> None:
    """Run MODEL on every suitable series under --input and write results to --output."""
    try:
        _run(model, input, output, workflow, config, set_ or [], rtstruct, nifti, seg_nrrd, labelmap, preview,
             statistics, template, sample, device, json_progress, resume, scheduler, workers, push, move_to,
             move_port, pull, allow_implausible, debug, roi_subset or [])
    except MedhubError as exc:
        if json_progress:  # a program following the run learns why it ends with exit code 2
            from medhub.pipeline.progress import JsonLinesProgress

            JsonLinesProgress().event("error", message=str(exc), exit_code=EXIT_NOTHING_DONE)
        raise


def _run(model: str, input: str | None, output: Path, workflow: str | None, config: Path | None, set_: list[str],
         rtstruct: bool, nifti: bool, seg_nrrd: bool, labelmap: bool, preview: bool, statistics: bool,
         template: str | None, sample: bool, device: str, json_progress: bool, resume: bool, scheduler: str | None,
         workers: int | None, push: str | None, move_to: str | None, move_port: int | None, pull: bool,
         allow_implausible: bool, debug: bool, roi_subset: list[str]) -> None:
    from medhub.hub.catalog import get_model
    from medhub.hub.devices import check_device
    from medhub.hub.roi_subset import resolve_roi_subset
    from medhub.pipeline.layout import DEFAULT_TEMPLATE, check_template
    from medhub.pipeline.progress import JsonLinesProgress, RichProgress
    from medhub.pipeline.run import RunOptions
    from medhub.pipeline.run import run as run_pipeline
    from medhub.pipeline.steps import StepName
    from medhub.pipeline.workflows import resolve_workflow

    # Every option is checked before any work (issue 13): a mistake costs one line and exit code 2.
    entry = get_model(model)
    device = check_device(device, entry.card)  # a device this model or machine cannot use
    kept = resolve_roi_subset(entry.card, roi_subset)  # names the card does not have, or a one-segment model
    switches = ((rtstruct, StepName.WRITE_RTSTRUCT), (nifti, StepName.WRITE_NIFTI),
                (statistics, StepName.WRITE_STATISTICS), (preview, StepName.WRITE_PREVIEW),
                (seg_nrrd, StepName.WRITE_SEG_NRRD))
    # a typo or a value the model does not take
    chosen = resolve_workflow(entry, name=workflow, config=config, overrides=set_,
                              add_steps=[step for flag, step in switches if flag], labelmap=labelmap)
    if sample and input is not None:
        raise MedhubError("give either --input or --sample, not both")
    if input is None and not sample:
        raise MedhubError("missing --input (a DICOM folder, a NIfTI file, a dicomweb://, dimse:// or idc:// URL), "
                          "or use --sample")
    if (move_to is not None or move_port is not None) and not str(input or "").lower().startswith("dimse:"):
        raise MedhubError("--move-to and --move-port apply to dimse:// inputs only")
    if push is not None:
        from medhub.inputs.remote import check_push_url

        check_push_url(push)  # a typo in the URL: before anything touches a disk or the network
    check_template(template or DEFAULT_TEMPLATE)
    _check_output(input, output)
    if push is not None:
        from medhub.inputs.remote import probe_push

        probe_push(push)  # reachable, and accepts our credentials / AE title
    _check_environment(entry, pull=pull, json_progress=json_progress)

    # SIGTERM (a batch system's kill) unwinds like Ctrl-C, so temporary files are removed on the way out.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(128 + signal.SIGTERM))
    progress = JsonLinesProgress() if json_progress else RichProgress()
    scratch: Path | None = None  # a DICOMweb download or links to IDC's cache, removed after the run
    provenance: list[dict[str, Any]] = []
    claimed = None
    try:
        if sample:  # kept in OUT/sample-input/, so the results' references resolve (medhub view OUT)
            from medhub.files import OutputFolder, writing_as
            from medhub.inputs.sample import keep_sample

            claimed = OutputFolder.claim(output)
            claimed.start(fresh=not resume)  # the sample's staging folder carries this run's token
            with writing_as(claimed.token):
                source = keep_sample(output, entry.card.id)
        else:
            source, scratch, provenance = _resolve_input(str(input), progress, move_to, move_port)
        archive = Path(str(input)) if provenance and provenance[0].get("source") == "archive" else None
        options = RunOptions(input_path=source, output_dir=output, workflow=chosen, device=device,
                             template=template or DEFAULT_TEMPLATE, progress=progress, debug=debug,
                             resume=resume, input_label=_input_label(input, sample, source, output),
                             input_record=archive,
                             input_provenance=provenance, input_in_output=sample, output_folder=claimed,
                             allow_implausible=allow_implausible, roi_subset=kept)
        if scheduler or workers:
            from medhub.pipeline.cluster import DaskExecutor

            options.executor = DaskExecutor(scheduler, workers)
            options.scan_workers = min(os.cpu_count() or 1, 4)  # a cohort run also reads headers in parallel
        report = run_pipeline(entry, options)
    finally:
        progress.close()
        if claimed is not None:
            claimed.release()
        if scratch is not None:
            shutil.rmtree(scratch, ignore_errors=True)
    if not json_progress:
        print_run_summary(report)
    for series in report.series:  # what must be seen even on success: one line each, on stderr
        if series.status.value != "succeeded":
            continue  # the run's last line names what did not succeed; its warnings are in the report
        for warning in series.warnings:
            typer.echo(f"medhub: {series.key}: {warning}", err=True)
    if push is not None:
        _push(report, output, push)
    _exit_if_not_all_succeeded(report, output)


def _exit_if_not_all_succeeded(report: Any, output: Path) -> None:
    """Exit code 1, with one line, when a chosen series was skipped, failed or is implausible beside a written one.

    (When nothing was written the pipeline has already ended the run with exit code 2.) An
    implausible result is written but not accepted: it also makes the run exit 1.
    """
    from medhub.pipeline.report import REPORT_NAME, Status

    missed = [e for e in report.series if e.status in (Status.IMPLAUSIBLE, Status.FAILED, Status.SKIPPED)]
    if not missed:
        return
    chosen = len(missed) + report.count(Status.SUCCEEDED)
    counts = ", ".join(f"{sum(1 for e in missed if e.status == status)} {status.value}"
                       for status in (Status.IMPLAUSIBLE, Status.FAILED, Status.SKIPPED)
                       if any(e.status == status for e in missed))
    missed.sort(key=lambda e: e.status != Status.IMPLAUSIBLE)  # the one a person must look at first
    accept = "--allow-implausible accepts it; " if missed[0].status == Status.IMPLAUSIBLE else ""
    typer.echo(f"medhub: {len(missed)} of {chosen} chosen series did not succeed ({counts}): {missed[0].reason} "
               f"({accept}every reason is in {output / REPORT_NAME})", err=True)
    raise typer.Exit(EXIT_SOME_FAILED)


def _check_output(input: str | None, output: Path) -> None:
    """Before any work: the output is a folder medhub can make, and it does not overlap a local input."""
    from medhub.files import check_output_location
    from medhub.inputs.idc import is_idc_url
    from medhub.inputs.remote import is_remote

    local = input is not None and not is_remote(input) and not is_idc_url(input)
    if local and not Path(str(input)).exists():
        raise MedhubError(f"input not found: {input}")
    check_output_location(Path(str(input)) if local else None, output)


def _check_environment(entry: Any, *, pull: bool, json_progress: bool) -> None:
    """A model that runs in its own environment needs it built: by ``--pull`` now, else refused with the way out."""
    from medhub.hub.envs import env_state, not_built_message

    if pull:
        from medhub.cli.prepare import prepare

        done = prepare(entry, show=not json_progress)
        if json_progress:
            from medhub.pipeline.progress import JsonLinesProgress

            JsonLinesProgress().event("pulled", model=entry.id, weights_bytes=done["weights_bytes"],
                                      environment=done["environment"],
                                      environment_bytes=done["environment_detail"]["bytes"])
        return
    state = env_state(entry.card)
    if state.problem:
        raise MedhubError(state.problem)
    if state.needed and not state.built:
        raise MedhubError(f"{not_built_message(state)}, or add --pull to build it now")


def _input_label(value: str | None, sample: bool, source: Path, output: Path) -> str:
    """What the report names as the input: the path, or the PACS URL without credentials."""
    from medhub.inputs.remote import label

    if sample or value is None:
        return f"sample data ({source.relative_to(output).as_posix()})"
    return label(value)


def _resolve_input(value: str, progress: Any, move_to: str | None = None,
                   move_port: int | None = None) -> tuple[Path, Path | None, list[dict[str, Any]]]:
    """The folder or file to run on, the scratch folder to remove afterwards (or None), and the input's provenance.

    A local folder or NIfTI file is used as is; an archive (``.zip``, ``.tar``, ``.tar.gz``) is unpacked
    into a scratch folder with the checks of ``medhub serve``'s uploads (:mod:`medhub.inputs.archives`);
    a dicomweb:// or dimse:// URL is fetched (QIDO-RS + WADO-RS, or
    C-FIND + C-GET / C-MOVE) into a scratch folder; an idc:// URL is resolved in IDC's index and
    fetched into the IDC cache, which the run reads in place and never removes.
    """
    from medhub.inputs.idc import is_idc_url
    from medhub.inputs.nifti import is_nifti_name
    from medhub.inputs.remote import fetch, is_remote

    def fetched(done: int, total: int) -> None:
        progress.event("fetch", done=done, total=total)

    if is_idc_url(value):
        from medhub.inputs import idc

        found = idc.fetch_input(value, progress=fetched)
        return found.path, found.scratch, found.provenance
    if is_remote(value):
        folder = Path(tempfile.mkdtemp(prefix="medhub-pacs-"))
        try:
            return fetch(value, folder, progress=fetched, move_to=move_to, move_port=move_port), folder, []
        except BaseException:
            shutil.rmtree(folder, ignore_errors=True)
            raise
    path = Path(value)
    if not path.exists():
        raise MedhubError(f"input not found: {value}")
    if path.is_file() and not is_nifti_name(path.name):
        from medhub.inputs.archives import archive_kind, unpack

        if archive_kind(path) is not None:  # series.zip, .tar, .tar.gz: unpacked with the server's checks
            folder = Path(tempfile.mkdtemp(prefix="medhub-archive-"))
            try:
                files = unpack(path, folder)
            except BaseException:
                shutil.rmtree(folder, ignore_errors=True)
                raise
            progress.event("unpacked", archive=str(path), files=files)
            return folder, folder, [{"source": "archive", "archive": str(path.resolve()), "files": files}]
    return path, None, []


def _push(report: Any, output: Path, url: str) -> None:
    """Store the DICOM results (STOW-RS or C-STORE); a failed push is exit code 1 (the results are written locally)."""
    from medhub.inputs.push import PUSHED_SUFFIXES
    from medhub.inputs.remote import label, push
    from medhub.pipeline.report import Status

    files = [output / o for e in report.series if e.status == Status.SUCCEEDED  # never an implausible result
             for o in e.outputs if o.endswith(PUSHED_SUFFIXES)]
    if not files:
        return
    try:
        stored = push(files, url)
    except MedhubError as exc:
        typer.echo(f"medhub: {exc}", err=True)
        raise typer.Exit(EXIT_SOME_FAILED) from None
    typer.echo(f"pushed {len(stored)} of {len(files)} to {label(url).split('?')[0]}", err=True)


def short_uid(uid: str, width: int = 22) -> str:
    """A UID as a person tells two apart: its start and its end (``1.3.12.2.1107…016573``)."""
    if len(uid) <= width:
        return uid
    return f"{uid[:width - 8]}…{uid[-7:]}"


def _written(entry: Any, wide: bool) -> str:
    """The files a series wrote, relative to OUT: each folder once, its files under it, one per line.

    On a narrow terminal the series' own UID in a folder name is shortened as in the series column
    (the report keeps every full path).
    """
    folders: dict[str, list[str]] = {}
    for output in entry.outputs:
        folder, _, name = output.rpartition("/")
        folders.setdefault(folder, []).append(name)
    lines = []
    for folder, names in folders.items():
        if not folder:
            lines.extend(names)
            continue
        if not wide and entry.key and len(entry.key) > 22:
            folder = folder.replace(entry.key, short_uid(entry.key))
        lines.append(f"{folder}/")
        lines.extend(f"  {name}" for name in names)
    return "\n".join(lines)


def print_run_summary(report: Any) -> None:
    """Every series in one table that fits 80 columns: what it is, what happened, what was written where.

    A series is named by its description and the start and end of its UID (series of one study
    share the start); the files are relative to the output folder.
    """
    wide = console.width >= 140
    table = new_table(f"medhub {report.model} {report.model_version} ({report.workflow}) → {report.output}")
    table.add_column("series", overflow="fold", max_width=None if wide else 26)
    table.add_column("images", justify="right")
    table.add_column("status")
    table.add_column("written (in the output folder) or why not", overflow="fold")
    for entry in report.series:
        name = entry.description or entry.modality or "series"
        series = f"{name}\n{entry.key if wide else short_uid(entry.key)}" if entry.key else name
        if entry.modality and entry.modality not in name:
            series = f"{entry.modality} {series}"
        detail = entry.reason or _written(entry, wide)
        if entry.findings and entry.status.value == "succeeded":  # what the loader corrected (missing slices, ...)
            detail += "\n[" + "; ".join(entry.findings) + "]"
        notes = [n for n in entry.notes if "\n" not in n]
        if notes:
            detail += "\n(" + "; ".join(notes) + ")"
        table.add_row(series, str(entry.images), entry.status.value, detail)
    console.print(table)
    for item in report.unreadable[:10]:  # each reason starts with the file's path
        console.print(f"unreadable: {item['reason']}", soft_wrap=True, highlight=False)
    if len(report.unreadable) > 10:
        console.print(f"... and {len(report.unreadable) - 10} more unreadable files (see the report)")
    summary = report.summary()
    console.print(
        f"{summary['succeeded']} succeeded, {summary['implausible']} implausible, {summary['failed']} failed, "
        f"{summary['skipped']} skipped, "
        f"{summary['rejected']} rejected; {len(report.unreadable)} unreadable files, "
        f"{report.non_dicom_files} non-DICOM files. Report: {Path(report.output) / 'medhub-report.json'}",
        markup=False, highlight=False,
    )
