"""Workflows: which steps run, with which parameters (MHub's general / execute / modules shape).

A model ships one YAML file per workflow. The user picks one with ``--workflow``, replaces it
with ``--config FILE`` and overrides single parameters with ``--set module.param=value``.

This module reads a workflow's shape and says what is wrong with one module's parameters
(``predict.*`` against the card's ``parameters:``, ``select.*`` against the selection rules,
any step's keys against what it declares). Which steps exist, and the one check of a whole
workflow before any work, belong to the pipeline's step registry:
:func:`medhub.pipeline.workflows.check_workflow`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, Field, ValidationError

from medhub.errors import MedhubError, did_you_mean
from medhub.hub.card import InputSpec, ModelCard, ParameterSpec
from medhub.inputs.select import SelectionRules


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
    """Parse one workflow YAML file (its shape only), with a one-line error naming the file."""
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

def listing(known: list[str], what: str) -> str:
    """``(steps: a, b)``, or ``(it has no steps)``."""
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
            problems.append(f"{step}.{key}: {owner} has no parameter '{key}'; {did_you_mean(str(key), known)}"
                            f"{listing(known, 'parameters')}")
        elif (allowed := spec.problem(value)) is not None:
            problems.append(f"{step}.{key}={_show_value(value)}: {key} of {owner} must be {allowed}")
    return problems


def selection_problems(params: dict[str, Any]) -> list[str]:
    """One line per ``select`` key that is no selection rule, or whose value the rule refuses."""
    problems = []
    known = sorted(SelectionRules.model_fields)
    for key, value in params.items():
        if key not in SelectionRules.model_fields:
            problems.append(f"select.{key}: no selection rule '{key}'; {did_you_mean(str(key), known)}"
                            f"{listing(known, 'rules')}")
            continue
        try:
            SelectionRules.model_validate({key: value})
        except ValidationError as exc:
            message = exc.errors()[0]["msg"].removeprefix("Value error, ").removeprefix("Input ")
            problems.append(f"select.{key}={_show_value(value)}: the rule {key} {message}")
        except MedhubError as exc:  # the query's own one-line reason
            problems.append(f"select.{key}={_show_value(value)}: {exc}")
    return problems


def predict_parameters(card: ModelCard, workflow: Workflow) -> dict[str, Any]:
    """The parameters ``predict`` receives: the card's declared defaults, then what the workflow sets."""
    return {**card.parameter_defaults(), **workflow.params("predict")}
