"""Workflows: which steps run, with which parameters (MHub's general / execute / modules shape).

A model ships one YAML file per workflow. The user picks one with ``--workflow``, replaces it
with ``--config FILE`` and overrides single parameters with ``--set module.param=value``.

Whatever the source, a workflow is checked against the model's card before any work
(:func:`validate_workflow`, the one entry point the CLI, the server and ``medhub check`` call):
``predict.*`` against the card's ``parameters:``, ``select.*`` against the selection rules, and
the other steps' keys against :data:`STEP_PARAMETERS`. A typo or a value outside what a step
takes is one line naming the key and what is allowed, never a silently ignored setting.
"""

from __future__ import annotations

import difflib
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, Field, ValidationError

from medhub.errors import MedhubError
from medhub.hub.card import InputSpec, ModelCard, ParameterSpec
from medhub.inputs.select import SelectionRules

KNOWN_STEPS = ("select", "load", "predict", "write_seg", "write_rtstruct", "write_nifti", "write_sr",
               "write_statistics", "write_preview", "write_seg_nrrd")


class WorkflowGeneral(BaseModel):
    name: str = "default"
    description: str = ""


class Workflow(BaseModel):
    """A parsed workflow file."""

    general: WorkflowGeneral = Field(default_factory=WorkflowGeneral)
    execute: list[str]
    modules: dict[str, dict[str, Any]] = Field(default_factory=dict)

    def params(self, step: str) -> dict[str, Any]:
        """Parameters of one step (empty when the workflow sets none)."""
        return dict(self.modules.get(step) or {})

    def runs(self, step: str) -> bool:
        return step in self.execute


def load_workflow_file(path: Path) -> Workflow:
    """Parse and validate one workflow YAML file, with a one-line error naming the file."""
    try:
        data = yaml.safe_load(path.read_text())
    except FileNotFoundError:
        raise MedhubError(f"workflow file not found: {path}") from None
    except yaml.YAMLError as exc:
        raise MedhubError(f"{path}: not valid YAML ({str(exc).splitlines()[0]})") from None
    if not isinstance(data, dict):
        raise MedhubError(f"{path}: a workflow must be a mapping with 'execute' and 'modules'")
    try:
        workflow = Workflow.model_validate(data)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first["loc"])
        raise MedhubError(f"{path}: invalid workflow at '{where}': {first['msg']}") from None
    unknown = [s for s in workflow.execute if s not in KNOWN_STEPS]
    if unknown:
        raise MedhubError(f"{path}: unknown step(s) {', '.join(unknown)}; known steps: {', '.join(KNOWN_STEPS)}")
    return workflow


def apply_overrides(workflow: Workflow, assignments: list[str]) -> Workflow:
    """Apply ``module.param=value`` overrides; the value is parsed as YAML (numbers, booleans, lists)."""
    result = workflow.model_copy(deep=True)
    for assignment in assignments:
        key, sep, raw = assignment.partition("=")
        module, dot, param = key.partition(".")
        if not sep or not dot or not module or not param:
            raise MedhubError(f"--set {assignment!r}: expected module.param=value, e.g. predict.threshold=0.6")
        try:
            value = yaml.safe_load(raw) if raw else ""
        except yaml.YAMLError:
            value = raw
        result.modules.setdefault(module, {})[param] = value
    return result


def card_input(card: ModelCard, workflow: Workflow) -> InputSpec | None:
    """The card input a workflow selects: the one whose query its ``select.input`` names, else the first."""
    wanted = workflow.params("select").get("input")
    for spec in card.inputs:
        if spec.query == wanted:
            return spec
    return card.inputs[0] if card.inputs else None


def selection_params(card: ModelCard, workflow: Workflow) -> dict[str, Any]:
    """The selection rules of a run as data: the card's input rules, then what the workflow names.

    The card is the contract (``min_slices``, ``max_slices``, ``max_slice_thickness_mm``, the
    query); a workflow's ``select`` module overrides a rule only by naming it.
    """
    spec = card_input(card, workflow)
    defaults = spec.selection_rules() if spec is not None else {}
    return {**defaults, **workflow.params("select")}


def selection_rules(card: ModelCard, workflow: Workflow) -> SelectionRules:
    """:func:`selection_params` validated (an unknown rule or bad value is a one-line MedhubError)."""
    return SelectionRules.from_dict(selection_params(card, workflow))


# ----------------------------------------------------------------------------------- checking a workflow

STEP_PARAMETERS: dict[str, dict[str, ParameterSpec]] = {
    "load": {},
    "write_seg": {
        "labelmap": ParameterSpec(type="bool", default=False,
                                  description="one LABELMAP SEG (DICOM 2024) instead of one BINARY frame per segment"),
    },
    "write_rtstruct": {},
    "write_nifti": {
        "compress": ParameterSpec(type="bool", default=True, description="write .nii.gz (true) or .nii (false)"),
    },
    "write_sr": {},
}
"""The parameters of the steps other than ``select`` (checked against :class:`SelectionRules`) and
``predict`` (declared by each model's card). A step registered here is a step a workflow may configure."""


def _close(name: str, known: list[str]) -> str:
    match = difflib.get_close_matches(name, known, n=1, cutoff=0.6)
    return f"did you mean '{match[0]}'? " if match else ""


def _listed(known: list[str], what: str) -> str:
    return f"({what}: {', '.join(known)})" if known else f"(it has no {what})"


def _show_value(value: Any) -> str:
    return yaml.safe_dump(value, default_flow_style=True).strip().removesuffix("...").strip()


def parameter_problems(step: str, params: dict[str, Any], specs: dict[str, ParameterSpec], owner: str) -> list[str]:
    """One line per key of ``params`` that ``specs`` does not declare or whose value it does not allow."""
    problems = []
    known = sorted(specs)
    for key, value in params.items():
        spec = specs.get(str(key))
        if spec is None:
            problems.append(f"{step}.{key}: {owner} has no parameter '{key}'; {_close(str(key), known)}"
                            f"{_listed(known, 'parameters')}")
        elif (allowed := spec.problem(value)) is not None:
            problems.append(f"{step}.{key}={_show_value(value)}: {key} of {owner} must be {allowed}")
    return problems


def selection_problems(params: dict[str, Any]) -> list[str]:
    """One line per ``select`` key that is no selection rule, or whose value the rule refuses."""
    problems = []
    known = sorted(SelectionRules.model_fields)
    for key, value in params.items():
        if key not in SelectionRules.model_fields:
            problems.append(f"select.{key}: no selection rule '{key}'; {_close(str(key), known)}"
                            f"{_listed(known, 'rules')}")
            continue
        try:
            SelectionRules.model_validate({key: value})
        except ValidationError as exc:
            message = exc.errors()[0]["msg"].removeprefix("Value error, ").removeprefix("Input ")
            problems.append(f"select.{key}={_show_value(value)}: the rule {key} {message}")
        except MedhubError as exc:  # the query's own one-line reason
            problems.append(f"select.{key}={_show_value(value)}: {exc}")
    return problems


def workflow_problems(card: ModelCard, workflow: Workflow) -> list[str]:
    """Every key of the workflow's modules that the model or the step does not take, one line each."""
    problems = []
    steps = ["select", "predict", *STEP_PARAMETERS]
    for step, params in workflow.modules.items():
        params = dict(params or {})
        if step == "select":
            problems += selection_problems(params)
        elif step == "predict":
            problems += parameter_problems("predict", params, card.parameters, f"model {card.id}")
        elif step in STEP_PARAMETERS:
            problems += parameter_problems(step, params, STEP_PARAMETERS[step], f"step {step}")
        else:
            problems.append(f"{step}: not a step medhub runs; {_close(step, steps)}{_listed(steps, 'steps')}")
    return problems


def validate_workflow(card: ModelCard, workflow: Workflow) -> None:
    """Refuse, with one line naming the key and what is allowed, a workflow the model cannot run as given.

    Called before any work by ``medhub run``, the pipeline, the server (as a 422) and ``medhub check``.
    """
    problems = workflow_problems(card, workflow)
    if problems:
        more = f" (and {len(problems) - 1} more)" if len(problems) > 1 else ""
        raise MedhubError(problems[0] + more)


def predict_parameters(card: ModelCard, workflow: Workflow) -> dict[str, Any]:
    """The parameters ``predict`` receives: the card's declared defaults, then what the workflow sets."""
    return {**card.parameter_defaults(), **workflow.params("predict")}
