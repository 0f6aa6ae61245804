"""``medhub idc search``: series of the NCI Imaging Data Commons, from its index, offline (:mod:`medhub.inputs.idc`).

Importing this module registers the ``idc`` sub-command group on :data:`medhub.cli.app.app`.
A series found here runs with ``medhub run MODEL --input idc://series/<SeriesInstanceUID>``.
"""

from __future__ import annotations

import json
from typing import Annotated

import typer

from medhub.cli.app import DebugOption, JsonOption, app, console, new_table, user_errors
from medhub.errors import MedhubError

idc_app = typer.Typer(
    help="NCI Imaging Data Commons: search its index offline; run on a series with --input idc://series/UID.",
    no_args_is_help=True,
)
app.add_typer(idc_app, name="idc")


@idc_app.command("search")
@user_errors
def search(
    collection: Annotated[str | None, typer.Option("--collection", help="IDC collection id, e.g. nlst.")] = None,
    modality: Annotated[str | None, typer.Option("--modality", help="CT, MR, PT, SEG, ...")] = None,
    body_part: Annotated[str | None, typer.Option("--body-part", help="BodyPartExamined, e.g. CHEST.")] = None,
    study: Annotated[str | None, typer.Option("--study", help="StudyInstanceUID.")] = None,
    series: Annotated[str | None, typer.Option("--series", help="SeriesInstanceUID.")] = None,
    patient: Annotated[str | None, typer.Option("--patient", help="PatientID.")] = None,
    limit: Annotated[int, typer.Option("--limit", min=1, help="At most this many series.")] = 20,
    json_output: JsonOption = False,
    debug: DebugOption = False,
) -> None:
    """List IDC series matching every filter: collection, patient, modality, body part, instances, size, licence."""
    from medhub.inputs.idc import IdcIndex

    index = IdcIndex()
    found = index.search(collection=collection, modality=modality, body_part=body_part, study=study,
                         series=series, patient=patient, limit=limit)
    if json_output:
        typer.echo(json.dumps({"idc_index_version": index.version, "series": [s.to_dict() for s in found]},
                              indent=2))
        return
    if not found:
        raise MedhubError(f"no series in IDC's index {index.version} matches these filters")
    table = new_table(f"IDC series ({len(found)}{'+' if len(found) == limit else ''}), index {index.version}")
    for column in ("series", "collection", "patient", "modality", "body part", "instances", "size", "licence"):
        table.add_column(column, no_wrap=column == "series")
    for item in found:
        table.add_row(item.series_instance_uid, item.collection_id, item.patient_id, item.modality,
                      item.body_part, str(item.instances), f"{item.size_mb:.1f} MB", item.licence)
    console.print(table)
    console.print("run a model on one: medhub run MODEL --input idc://series/SERIES_UID --output OUT",
                  markup=False, highlight=False)
