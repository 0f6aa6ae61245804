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
    table = new_table(f"{path}: {len(diagnosis['series'])} series")
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
