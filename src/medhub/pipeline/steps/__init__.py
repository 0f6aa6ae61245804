"""The steps a workflow's ``execute`` can name, keyed by :class:`StepName`.

A workflow names its steps in order (``[select, load, predict, write_seg]``); each name maps to
one :class:`Step` here, which declares the parameters it takes and does its part of one
series. Adding an output step is one module in this package (a :class:`Step` subclass with
``name``, ``phase``, ``parameters``, ``runs`` and ``run``), its member in :class:`StepName`,
and one line in :data:`STEPS`.

``check_result`` runs after ``predict`` whether the workflow names it or not (every result is
checked against its card's plausible ranges). Some output steps also run when the workflow does
not name them, because the model's result needs them (``write_embedding`` for embedding models,
``write_values`` for value-only models, ``write_nifti`` for a NIfTI input or a DICOM series a SEG
cannot reference);
:func:`series_steps` gives the exact steps of one series, which is what ``--json-progress``
announces in ``series_start``.
"""

from __future__ import annotations

from collections.abc import Iterable

from medhub.errors import MedhubError
from medhub.pipeline.steps.base import ModelOutput, Phase, Plan, SeriesWork, SourceKind, Step, StepName, model_outputs
from medhub.pipeline.steps.check_result import CheckResult
from medhub.pipeline.steps.load import Load
from medhub.pipeline.steps.predict import Predict
from medhub.pipeline.steps.select import Select
from medhub.pipeline.steps.write_embedding import WriteEmbedding
from medhub.pipeline.steps.write_nifti import WriteNifti
from medhub.pipeline.steps.write_preview import WritePreview
from medhub.pipeline.steps.write_rtstruct import WriteRtstruct
from medhub.pipeline.steps.write_seg import WriteSeg
from medhub.pipeline.steps.write_seg_nrrd import WriteSegNrrd
from medhub.pipeline.steps.write_sr import WriteSr
from medhub.pipeline.steps.write_statistics import WriteStatistics
from medhub.pipeline.steps.write_values import WriteValues

STEPS: dict[StepName, Step] = {step.name: step for step in (
    Select(),
    Load(),
    Predict(),
    CheckResult(),
    WriteEmbedding(),
    WriteValues(),
    WriteSeg(),
    WriteRtstruct(),
    WriteNifti(),
    WriteSr(),
    WriteSegNrrd(),
    WriteStatistics(),
    WritePreview(),
)}
"""Every step, in the order implied output steps take among a series' outputs."""

_unregistered = set(StepName) - set(STEPS)
if _unregistered:  # a StepName without its step is a programming error, caught at import
    raise RuntimeError(f"steps named but not registered: {sorted(_unregistered)}")

__all__ = ["STEPS", "ModelOutput", "Phase", "Plan", "SeriesWork", "SourceKind", "Step", "StepName", "get_step",
           "model_outputs", "series_steps", "step_names"]


def step_names(names: Iterable[str]) -> list[StepName]:
    """Workflow step names as :class:`StepName`; unknown ones are a one-line MedhubError."""
    unknown = [name for name in names if name not in STEPS]
    if unknown:
        raise MedhubError(f"unknown step(s) {', '.join(unknown)}; known steps: {', '.join(STEPS)}")
    return [StepName(name) for name in names]


def get_step(name: str) -> Step:
    return STEPS[step_names([name])[0]]


def series_steps(requested: list[StepName], outputs: set[ModelOutput], source: SourceKind) -> list[StepName]:
    """The steps one series runs, in order (``select`` excluded: it runs once per input).

    The workflow's steps that apply to this source and model, in the workflow's order, with the
    output steps the result needs but the workflow does not name placed before its own outputs.
    """
    plan = Plan(requested=requested, outputs=outputs, source=source)
    named = [n for n in requested if STEPS[n].phase is not Phase.SELECT and STEPS[n].runs(plan)]
    implied = [n for n, step in STEPS.items()
               if n not in requested and step.phase in (Phase.CHECK, Phase.OUTPUT) and step.runs(plan)]
    first_later = next((i for i, n in enumerate(named) if STEPS[n].phase >= Phase.CHECK), len(named))
    later = sorted(implied + named[first_later:], key=lambda n: STEPS[n].phase is Phase.OUTPUT)  # stable: checks first
    return named[:first_later] + later
