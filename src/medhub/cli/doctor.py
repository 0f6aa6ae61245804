"""``medhub doctor``: what the scan and the checks find in a folder, without running a model."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer

from medhub.cli.app import DebugOption, JsonOption, app, console, new_table, user_errors


@app.command()
@user_errors
def doctor(
    path: Annotated[Path, typer.Argument(help="A DICOM folder or file.")],
    json_output: JsonOption = False,
    debug: DebugOption = False,
) -> None:
    """List the series under PATH and what the checks find, without running a model."""
    from medhub.inputs.doctor import diagnose

    diagnosis = diagnose(path)
    if json_output:
        console.print_json(json.dumps(diagnosis, default=str))
        return
    from medhub.cli.run import short_uid

    wide = console.width >= 140
    table = new_table(f"{path}: {len(diagnosis['series'])} series")
    table.add_column("series", overflow="fold", max_width=None if wide else 24)
    table.add_column("folder", overflow="fold")
    table.add_column("images", justify="right")
    table.add_column("transfer syntax", overflow="fold")
    table.add_column("status / findings", overflow="fold")
    for item in diagnosis["series"]:
        name = item["description"] or item["modality"] or "series"
        if item["modality"] and item["modality"] not in name:
            name = f"{item['modality']} {name}"
        key = item["key"] if wide else short_uid(item["key"])
        findings = [item["skip_reason"]] if item["skip_reason"] else []
        findings += item["findings"] + ["warning: no UIDs to reference (below)"] * bool(item["warnings"])
        status = "\n".join(["skip" if item["skip_reason"] else "loadable", *findings])
        table.add_row(f"{name}\n{key}", item["folder"], str(item["images"]),
                      "\n".join(item["transfer_syntax_names"]), status)
    console.print(table)
    for item in diagnosis["series"]:
        for warning in item["warnings"]:
            typer.echo(f"medhub: warning: {item['folder']} ({item['description'] or item['key']}): {warning}",
                       err=True)
    for bad in diagnosis["unreadable"]:
        console.print(f"unreadable: {bad['path']}: {bad['reason']}", markup=False, highlight=False)
    console.print(f"{diagnosis['files_seen']} files, {diagnosis['non_dicom_files']} not DICOM, "
                  f"{diagnosis['dicomdir_files']} DICOMDIR ignored", markup=False, highlight=False)
