"""Which workflow a run uses, and whether it makes sense, decided once for the CLI and the server.

:func:`resolve_workflow` turns what a user asked for (a workflow of the model or a file, ``--set``
overrides, the output switches such as ``--rtstruct``) into the workflow a run uses.
:func:`check_workflow` is the one check of a workflow, called before any work by ``medhub run``,
the server (as a 422), the pipeline itself and ``medhub check``: ``execute`` against the step
registry (known steps, in phase order, each once), every module's keys against what its step
declares (``predict.*`` against the card's ``parameters:``, ``select.*`` against the selection
rules). A problem is one line naming the key and what is allowed.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

from medhub.errors import MedhubError, did_you_mean
from medhub.hub.catalog import list_models
from medhub.hub.workflow import Workflow, apply_overrides, listing, load_workflow_file
from medhub.pipeline.mhub import from_mhub, is_mhub_config, runner_names
from medhub.pipeline.steps import STEPS, Phase, StepName

REQUIRED = (StepName.SELECT, StepName.LOAD, StepName.PREDICT)


def execute_problems(execute: list[str]) -> list[str]:
    """What is wrong with a workflow's ``execute``: unknown, repeated, missing or misplaced steps."""
    known = [str(name) for name in STEPS]
    unknown = [name for name in execute if name not in STEPS]
    if unknown:
        return [f"execute: {name}: not a step medhub runs; {did_you_mean(name, known)}{listing(known, 'steps')}"
                for name in unknown]
    problems = []
    repeated = sorted({name for name in execute if execute.count(name) > 1})
    if repeated:
        problems.append(f"execute: {', '.join(repeated)} named more than once")
    missing = [name for name in REQUIRED if name not in execute]
    if missing:
        problems.append(f"execute: must name {', '.join(REQUIRED)}; it lacks {', '.join(missing)}")
    phases = [STEPS[StepName(name)].phase for name in execute]
    if not missing and phases != sorted(phases):
        outputs = [name for name in execute if STEPS[StepName(name)].phase is Phase.OUTPUT]
        problems.append(f"execute: steps out of order ({', '.join(execute)}); "
                        f"expected {', '.join([*REQUIRED, *outputs])}")
    return problems


def workflow_problems(card: Any, workflow: Workflow) -> list[str]:
    """Every problem of ``workflow`` for the model of ``card``, one line each (empty: it can run)."""
    problems = execute_problems(workflow.execute)
    known = [str(name) for name in STEPS]
    for module, params in workflow.modules.items():
        if module not in STEPS:
            problems.append(f"{module}: not a step medhub runs; {did_you_mean(module, known)}{listing(known, 'steps')}")
            continue
        problems += STEPS[StepName(module)].problems(dict(params or {}), card)
    return problems


def check_workflow(workflow: Workflow, card: Any) -> list[StepName]:
    """Refuse a workflow the model cannot run as given (one line, the first problem); return its steps."""
    problems = workflow_problems(card, workflow)
    if problems:
        more = f" (and {len(problems) - 1} more)" if len(problems) > 1 else ""
        raise MedhubError(problems[0] + more)
    return [StepName(name) for name in workflow.execute]


def runner_owner(module: str) -> str | None:
    """The model of the catalog whose runner MHub calls ``module``, if any."""
    for card in list_models():
        if module in runner_names(card):
            return str(card.id)
    return None


def resolve_workflow(
    model: Any,
    *,
    name: str | None = None,
    config: Path | None = None,
    overrides: Sequence[str] = (),
    add_steps: Iterable[StepName] = (),
    labelmap: bool = False,
) -> Workflow:
    """The checked workflow of one run of ``model`` (a catalog entry).

    ``config`` (a workflow file, in medhub's shape or MHub's: :mod:`medhub.pipeline.mhub`) replaces
    the model's workflow ``name`` (default ``default``);
    ``overrides`` are ``module.param=value`` assignments; ``add_steps`` are output steps appended
    when the workflow does not name them; ``labelmap`` sets ``write_seg.labelmap``.
    """
    if config is not None:
        workflow = load_workflow_file(config)
        if is_mhub_config(workflow):  # MHub's own config.yml: its --set keys name MHub modules, then medhub steps
            before = [a for a in overrides if a.partition(".")[0] not in STEPS]
            overrides = [a for a in overrides if a not in before]
            workflow = from_mhub(apply_overrides(workflow, before), model.card, where=str(config), others=runner_owner)
    else:
        chosen = name or "default"
        if chosen not in model.workflows:
            available = ", ".join(sorted(model.workflows)) or "none"
            raise MedhubError(f"model {model.card.id} has no workflow {chosen!r}; available: {available}")
        workflow = load_workflow_file(model.workflows[chosen])
    workflow = apply_overrides(workflow, list(overrides))
    for step in add_steps:
        if step not in workflow.execute:
            workflow.execute.append(step.value)
    if labelmap:
        workflow.modules.setdefault(StepName.WRITE_SEG.value, {})["labelmap"] = True
    check_workflow(workflow, model.card)
    return workflow
