"""Workflows: which steps run, with which parameters (MHub's general / execute / modules shape).

A model ships one YAML file per workflow. The user picks one with ``--workflow``, replaces it
with ``--config FILE`` and overrides single parameters with ``--set module.param=value``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, Field, ValidationError

from medhub.errors import MedhubError
from medhub.hub.card import InputSpec, ModelCard
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
