"""``medhub heads train | list | evaluate``: few-shot heads on encoder embeddings (:mod:`medhub.heads`).

Importing this module registers the ``heads`` sub-command group on :data:`medhub.cli.main.app`.
A trained head is then a catalog model: ``medhub run NAME --input DIR --output OUT``.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any

import typer

from medhub.cli.app import DebugOption, JsonOption, app, console, new_table, user_errors

heads_app = typer.Typer(
    help="Few-shot heads: train a small classifier on an encoder's embeddings from a labels.csv, list, evaluate.",
    no_args_is_help=True,
)
app.add_typer(heads_app, name="heads")

LabelsOption = Annotated[Path, typer.Option("--labels", help="CSV with a header 'series,label': series = "
                                                              "SeriesInstanceUID, folder or NIfTI file under --input.")]
InputOption = Annotated[Path, typer.Option("--input", "-i", help="Folder with the DICOM series / NIfTI files.")]


def _say(line: str) -> None:
    console.print(line, markup=False, highlight=False)


@heads_app.command("train")
@user_errors
def train(
    labels: LabelsOption,
    input: InputOption,
    name: Annotated[str, typer.Option("--name", help="Head name: lower-case words with dashes; `medhub run NAME`.")],
    encoder: Annotated[str, typer.Option("--encoder", help="Embedding model the head reads.")] = "ct-fm-astra",
    classifier: Annotated[str, typer.Option("--classifier", help="logreg (logistic regression) or linear "
                                                                 "(linear probe: no standardisation).")] = "logreg",
    folds: Annotated[int, typer.Option("--folds", help="Stratified cross-validation folds (>= 2).")] = 5,
    seed: Annotated[int, typer.Option("--seed", help="Seed of the fold split.")] = 0,
    force: Annotated[bool, typer.Option("--force", help="Replace an existing head of that name.")] = False,
    json_output: JsonOption = False,
    debug: DebugOption = False,
) -> None:
    """Embed every labelled series, cross-validate, fit the head on all cases and save it as a model."""
    from medhub.heads.metrics import format_metrics
    from medhub.heads.train import train_head

    head = train_head(labels, input, name, encoder=encoder, classifier=classifier, folds=folds, seed=seed,
                      force=force, echo=None if json_output else _say)
    if json_output:
        console.print_json(json.dumps({"head": head.name, "path": str(head.path), "metrics": head.metrics}))
        return
    _say(f"{folds}-fold cross-validation of {head.name} ({classifier} on {encoder}):")
    for line in format_metrics(head.metrics["cross_validation"]):
        _say("  " + line)
    _say(f"saved head {head.name} {head.card.version} to {head.path}")
    _say(f"run it: medhub run {head.name} --input DICOM_FOLDER --output OUT")


@heads_app.command("list")
@user_errors
def list_heads(json_output: JsonOption = False, debug: DebugOption = False) -> None:
    """List the trained heads (under $MEDHUB_HEADS or ~/.local/share/medhub/heads) with their CV metrics."""
    from medhub.heads.registry import head_summary, heads_root
    from medhub.heads.source import head_entries

    problems: list[str] = []
    rows = [head_summary(e) for e in head_entries(problems)]
    for problem in problems:
        typer.echo(f"medhub: warning: {problem}", err=True)
    if json_output:
        console.print_json(json.dumps(rows))
        return
    table = new_table(f"heads in {heads_root()} ({len(rows)})")
    for column in ("head", "version", "encoder", "classifier", "classes", "cases", "CV AUC", "CV bal. acc."):
        table.add_column(column)
    for row in rows:
        table.add_row(row["name"], str(row["version"]), str(row["encoder"]), str(row["classifier"]),
                      ", ".join(row["classes"]), str(row["cases"]), _num(row["cv_auc"]),
                      _num(row["cv_balanced_accuracy"]))
    console.print(table)


def _num(value: Any) -> str:
    return "n/a" if value is None else f"{value:.3f}"


@heads_app.command("evaluate")
@user_errors
def evaluate(
    name: Annotated[str, typer.Argument(help="Head name (see `medhub heads list`) or head folder.")],
    labels: LabelsOption,
    input: InputOption,
    output: Annotated[Path | None, typer.Option("--output", "-o", help="Also write the metrics as JSON here.")] = None,
    json_output: JsonOption = False,
    debug: DebugOption = False,
) -> None:
    """Metrics of a trained head on new labelled series: AUC, balanced accuracy, calibration, per case."""
    from medhub.heads.metrics import format_metrics
    from medhub.heads.train import evaluate_head

    metrics = evaluate_head(name, labels, input, echo=None if json_output else _say)
    if output is not None:
        from medhub.files import atomic_output

        with atomic_output(output) as temporary:  # an interrupted run leaves no half-written metrics file
            temporary.write_text(json.dumps(metrics, indent=2) + "\n")
    if json_output:
        console.print_json(json.dumps(metrics))
        return
    _say(f"{metrics['head']} {metrics['head_version']} on {labels}:")
    for line in format_metrics(metrics):
        _say("  " + line)
    for case in metrics["cases_detail"]:
        probs = ", ".join(f"{c} {p:.3f}" for c, p in case["probabilities"].items())
        mark = "ok" if case["predicted"] == case["label"] else "WRONG"
        _say(f"  {case['series']}: {case['label']} -> {case['predicted']} ({probs}) {mark}")
