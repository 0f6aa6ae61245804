"""write_statistics: per-segment volumes and image statistics, ``<base>.statistics.json`` and ``.csv``.

See :mod:`medhub.writers.statistics`; it runs for every source the workflow asks it for.
"""

from __future__ import annotations

from medhub.pipeline.steps.base import ModelOutput, Phase, Plan, SeriesWork, Step, StepName
from medhub.writers.statistics import write_statistics


class WriteStatistics(Step):
    name = StepName.WRITE_STATISTICS
    phase = Phase.OUTPUT
    description = "volumes and intensity statistics of every segment (JSON and CSV)"

    def runs(self, plan: Plan) -> bool:
        return plan.requests(self.name) and ModelOutput.LABELS in plan.outputs

    def run(self, work: SeriesWork) -> None:
        card = work.card
        work.record(*write_statistics(work.base(), work.require_volume(), work.labels(), work.segments(),
                                      model=card.id, model_version=str(card.version), series_key=work.entry.key))
