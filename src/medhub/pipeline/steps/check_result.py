"""check_result: the prediction against the plausible ranges its card declares (:mod:`medhub.pipeline.plausibility`).

It runs after ``predict`` for every series, named in ``execute`` or not. A result outside a
range is *implausible*: its outputs are still written (to be looked at), but the series is
reported as ``implausible`` with the reason, on stderr too, is not pushed, and the run's exit
code is 1 — unless the run accepts implausible results (``--allow-implausible``), which turns
the violation into a warning.
"""

from __future__ import annotations

from medhub.pipeline.plausibility import check_result
from medhub.pipeline.steps.base import Phase, Plan, SeriesWork, Step, StepName


class CheckResult(Step):
    name = StepName.CHECK_RESULT
    phase = Phase.CHECK
    description = "the result against the plausible ranges of the model's card"

    def runs(self, plan: Plan) -> bool:
        return True

    def run(self, work: SeriesWork) -> None:
        # Under --roi-subset the whole result is judged where there is one; a runner that was handed the subset
        # may have predicted only those segments, so ranges naming others are left out.
        passed_on = bool(work.roi_subset) and bool(work.card.outputs.roi_subset)
        found = check_result(work.card, work.volume, work.unfiltered or work.require_prediction(),
                             predicted=set(work.roi_subset) if passed_on else None)
        work.unfiltered = None  # the writers follow the kept segments only
        if found.violations:
            if work.allow_implausible:
                work.entry.warnings.append(f"{found.reason} (accepted: --allow-implausible)")
            else:
                work.implausible = found.reason
        elif found.skipped and len(work.card.outputs.plausible) > found.skipped:
            checked = len(work.card.outputs.plausible) - found.skipped
            work.note_once(f"plausible: the result is within {_ranges(checked)} of its card that name the kept "
                           f"segments ({found.skipped} name others)")
        elif found.skipped:
            work.note_once(f"plausibility not checked: {_ranges(found.skipped)} of its card name segments outside "
                           "--roi-subset")
        elif work.card.outputs.plausible:
            work.note_once(f"plausible: the result is within {_ranges(len(work.card.outputs.plausible))} of its card")


def _ranges(count: int) -> str:
    """``the 1 range`` / ``the 7 ranges``: the report reads as a sentence."""
    return f"the {count} range" if count == 1 else f"the {count} ranges"
