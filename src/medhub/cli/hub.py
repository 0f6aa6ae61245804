"""The hub's commands: ``models``, ``info``, ``pull``, ``new``, ``check``, ``schema``.

They live here to keep :mod:`medhub.cli.main` (run, doctor) small; importing this module registers
them on the same typer app. Every command that prints a table also has ``--json``.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any

import typer

from medhub.cli.app import EXIT_SOME_FAILED, DebugOption, JsonOption, app, console, new_table, user_errors
from medhub.errors import MedhubError


def _listing() -> Any:
    """The catalog as plain data (:func:`medhub.hub.listing.current_listing`: a cache hit imports no pydantic)."""
    from medhub.hub.listing import current_listing

    return current_listing()


def _warn_catalog_problems(problems: list[str]) -> None:
    """A broken third-party card must not hide silently, nor break the listing of the others."""
    for problem in problems:
        typer.echo(f"medhub: warning: {problem}", err=True)


_SUMMARY_KEYS = ("id", "version", "title", "task", "outputs", "modality", "body_part", "training_type", "licence",
                 "devices")  # fmt: skip


@app.command()
@user_errors
def models(
    modality: Annotated[str | None, typer.Option("--modality", help="Only models for this modality (CT, MR).")] = None,
    body_part: Annotated[str | None, typer.Option("--body-part", help="Only models for this body part "
                                                                       "(HEAD, BRAIN, CHEST, ...).")] = None,
    task: Annotated[str | None, typer.Option("--task", help="segmentation, classification, prediction, ...")] = None,
    json_output: JsonOption = False,
    debug: DebugOption = False,
) -> None:
    """List the models in the catalog (built-in and installed packages), optionally filtered."""
    from medhub.hub.listing import matches_summary

    listing = _listing()
    entries = [e for e in listing.entries
               if matches_summary(e["summary"], modality=modality, body_part=body_part, task=task)]  # fmt: skip
    _warn_catalog_problems(listing.problems)
    from medhub.hub.listing import readiness

    states = {e["id"]: readiness(e) for e in entries}
    if json_output:
        rows = [{**{k: e["summary"][k] for k in _SUMMARY_KEYS}, "origin": e["origin"],
                 "ready": states[e["id"]]["ready"], "todo": states[e["id"]]["todo"],
                 "environment": states[e["id"]]["environment"]["summary"]} for e in entries]
        console.print_json(json.dumps(rows))
        return
    table = new_table(f"medhub models ({len(entries)})")
    table.add_column("model", no_wrap=True)
    table.add_column("ready")
    for column in ("version", "modality", "body part", "outputs", "licence (code / weights)", "title"):
        table.add_column(column)
    for entry in entries:
        card = entry["summary"]
        table.add_row(card["id"], _ready_word(states[entry["id"]]), card["version"], ", ".join(card["modality"]),
                      card["body_part"], ", ".join(card["outputs"]) or card["task"],
                      f"{card['licence']['code']} / {card['licence']['weights']}", card["title"])
    console.print(table)
    for model_id, state in states.items():
        if state["todo"]:
            _plain(f"{model_id}: {'; '.join(state['todo'])}")


def _environment_line(environment: dict[str, Any], model_id: str) -> str:
    """Where the model runs, and whether that environment is built (what ``medhub run`` will find)."""
    if environment["problem"]:
        return f"its own, which cannot be built: {environment['problem']}"
    if not environment["needed"]:
        return "medhub's own (the card's requirements are met here)"
    if environment["built"]:
        return f"its own ({environment['reason']}), built at {environment['path']}"
    return (f"its own ({environment['reason']}), not built yet: medhub pull {model_id} builds it at "
            f"{environment['path']}")


def _ready_word(state: dict[str, Any]) -> str:
    """yes: runs as it is; pull: needs `medhub pull` (environment, or weights a run would fetch); install: pip."""
    if state["ready"]:
        return "yes" if not state["todo"] else "yes (pull)"
    if state["environment"]["needed"] and not state["environment"]["built"]:
        return "no (pull)"
    return "no (install)"


def model_info(entry: dict[str, Any]) -> dict[str, Any]:
    """Everything ``medhub info`` shows: :func:`medhub.hub.listing.describe_model`, as the server's model page."""
    from medhub.hub.listing import describe_model

    return describe_model(entry)


@app.command()
@user_errors
def info(
    model: Annotated[str, typer.Argument(help="Model name (see `medhub models`).")],
    json_output: JsonOption = False,
    debug: DebugOption = False,
) -> None:
    """Show a model's card: inputs, outputs with segment codes, citation, licences, weights, run command."""
    entry = _listing().find(model)
    data = model_info(entry)
    if json_output:
        console.print_json(json.dumps(data))
        return
    card = data["card"]
    from medhub.cli.prepare import human_size

    say = _plain
    console.print(f"[bold]{card['id']}[/bold] {card['version']}: {card['title']}", highlight=False)
    say(card["description"])
    say(f"task: {card['task']}; modality: {', '.join(card['modality'])}; body part: {card['body_part']}; "
        f"from: {data['origin']} ({data['path']})")
    for spec in card["inputs"]:
        rules = [f"{k}={spec[k]}" for k in ("min_slices", "max_slices", "max_slice_thickness_mm")
                 if spec.get(k) is not None]  # fmt: skip
        extras = [x for x in (spec.get("contrast") and f"contrast: {spec['contrast']}",
                              spec.get("slice_thickness") and f"slice thickness: {spec['slice_thickness']}") if x]
        label = f"input {spec['label']}" if spec.get("label") else "input"
        say(f"{label}: {spec['query']} {' '.join(rules)} {'; '.join(extras)} {spec.get('description', '')}")
    if data["segments"]:
        table = new_table("segments")
        for column in ("label", "id", "name", "category (SCT)", "type (SCT)", "modifier"):
            table.add_column(column)
        for item in data["segments"]:
            if "error" in item:
                table.add_row(str(item["label"]), item["id"], item["error"], "", "", "")
                continue
            code = "{value} {meaning}".format
            table.add_row(str(item["label"]), item["id"], item["name"], code(**item["category"]),
                          code(**item["type"]), code(**item["modifier"]) if item["modifier"] else "")
        console.print(table)
    outputs = card["outputs"]
    for value in outputs.get("values", []):
        unit = ", " + value["unit"] if value.get("unit") else ""
        say(f"value: {value['name']} ({value['type']}{unit}) {value.get('description', '')}")
    for classification in outputs.get("classifications", []):
        say(f"classification: {classification['name']}: {', '.join(classification['classes'])}")
    say(f"architecture: {card['architecture']}; training: {card['training_type']}")
    for label, sets in (("training data", card.get("training_data")), ("evaluation data", card.get("evaluation_data"))):
        if sets:
            say(f"{label}: " + "; ".join(d["name"] + (f" ({d['cases']} cases)" if d.get("cases") else "")
                                         for d in sets))
    say(f"citation: {card['citation']}")
    for publication in card.get("publications", []):
        say(f"publication: {publication['title'] + ' ' if publication.get('title') else ''}{publication['uri']}")
    say(f"licence: code {card['licence']['code']}, weights {card['licence']['weights']}; source: {card['source']}")
    if card.get("requirements"):
        say(f"requirements: {', '.join(card['requirements'])}")
    memory = f"; memory: {card['memory']['ram_gb']:g} GB RAM" if card.get("memory") else ""
    say(f"devices: {', '.join(card['devices'])}{memory}")
    for weight in data["weights"]:
        size = f", {human_size(weight['size'])}" if weight.get("size") else ""
        say(f"weights: {weight['name']}{size}: {weight['detail']} ({weight['path'] or weight['source']})")
    say(f"environment: {_environment_line(data['environment'], card['id'])}")
    say("ready: yes" + (f"; {'; '.join(data['todo'])}" if data["todo"] else "") if data["ready"]
        else f"ready: no; {'; '.join(data['todo'])}")
    say(f"workflows: {', '.join(data['workflows'])}")
    say(f"run: {data['run']}")


def _plain(text: str) -> None:
    console.print(" ".join(text.split()), markup=False, highlight=False, soft_wrap=True)


@app.command()
@user_errors
def pull(
    model: Annotated[str, typer.Argument(help="Model name.")],
    offline: Annotated[bool, typer.Option("--offline", help="Use only the cache and MEDHUB_WEIGHTS_MIRROR.")] = False,
    json_output: JsonOption = False,
    debug: DebugOption = False,
) -> None:
    """Make a model ready: fetch and verify its weights and, if it runs in its own environment, build it."""
    from medhub.cli.prepare import prepare
    from medhub.hub.catalog import get_model

    result = prepare(get_model(model), offline=offline, show=not json_output)
    if json_output:
        console.print_json(json.dumps(result))


@app.command()
@user_errors
def new(
    name: Annotated[str, typer.Argument(help="Model name: letters, digits and dashes (e.g. liver-seg).")],
    dir: Annotated[Path, typer.Option("--dir", help="Folder to create the package in.")] = Path("."),
    debug: DebugOption = False,
) -> None:
    """Scaffold a model package (card, runner, workflow, test) that passes `medhub check`."""
    import os

    from medhub.authoring.new import create

    root = create(name, dir)
    where = root if root.is_absolute() and not root.is_relative_to(Path.cwd()) else Path(os.path.relpath(root))
    shown = where.as_posix() if where.is_absolute() else f"./{where.as_posix()}"
    _plain(f"created {shown}: a threshold model that passes medhub check; edit its card.yaml and runner.py")
    _plain(f"next: pip install -e {shown}   (then: medhub models; medhub check {where.name}; pytest {shown})")


@app.command()
@user_errors
def check(
    target: Annotated[str, typer.Argument(help="A model folder / package project, or a model name.")],
    write_reference: Annotated[bool, typer.Option("--write-reference",
                                                  help="Write the reference outputs from this run.")] = False,
    device: Annotated[str, typer.Option("--device", help="cpu, cuda or mps.")] = "cpu",
    json_output: JsonOption = False,
    debug: DebugOption = False,
) -> None:
    """Validate a model: card, runner, workflows, segments, weights; run it on its sample; compare."""
    from medhub.authoring.check import check_model, results_json

    results = check_model(target, device=device, write_reference=write_reference)
    failed = [r for r in results if r.failed]
    if json_output:
        console.print_json(json.dumps({"passed": not failed, "results": results_json(results)}))
    else:
        colours = {"ok": "green", "warn": "yellow", "fail": "red"}
        for result in results:  # typer.echo: one line per result whatever the terminal width
            typer.echo(typer.style(result.line(), fg=colours[result.status]) if result.failed else result.line())
        typer.echo(f"{len(failed)} check(s) failed" if failed else "all checks passed")
    if failed:
        raise typer.Exit(EXIT_SOME_FAILED)


@app.command()
@user_errors
def schema(
    output: Annotated[Path | None, typer.Option("--output", "-o", help="Write to this file instead of stdout.")] = None,
    debug: DebugOption = False,
) -> None:
    """Print (or write) the JSON Schema of card.yaml; docs/model-card.schema.json is this output."""
    from medhub.hub.card import card_json_schema_text

    text = card_json_schema_text()
    if output is None:
        typer.echo(text, nl=False)
        return
    try:
        output.write_text(text, encoding="utf-8")
    except OSError as exc:
        raise MedhubError(f"cannot write {output}: {exc.strerror or exc}") from None
    _plain(f"wrote {output}")
