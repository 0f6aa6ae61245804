"""select: which series of the input the model takes (the card's input and rules, then the workflow's).

It runs once per input, before the series steps; every series it does not choose gets a reason
in the report (:func:`medhub.inputs.select.select`).
"""

from __future__ import annotations

from typing import Any

from medhub.data.series import Series
from medhub.hub.workflow import Workflow, selection_problems, selection_rules
from medhub.inputs.select import Selection, select
from medhub.pipeline.steps.base import Phase, Step, StepName


class Select(Step):
    name = StepName.SELECT
    phase = Phase.SELECT
    description = "choose the series the model takes; give every other one a reason"

    def problems(self, params: dict[str, Any], card: Any) -> list[str]:
        return selection_problems(params)

    def choose(self, series: list[Series], workflow: Workflow, card: Any) -> Selection:
        return select(series, selection_rules(card, workflow))
