"""write_sr: a classification as a DICOM Comprehensive SR (TID 1500) referencing the source series.

Only for value-only models whose card declares a classification; a NIfTI input or a DICOM
series without UIDs gets a note instead (see :func:`medhub.writers.values.write_value_sr`).
"""

from __future__ import annotations

from medhub.pipeline.steps.base import PATH, ModelOutput, Phase, Plan, SeriesWork, Step, StepName
from medhub.writers.values import write_value_sr


class WriteSr(Step):
    name = StepName.WRITE_SR
    phase = Phase.OUTPUT
    parameters = {"path": PATH}
    description = "the classification as a DICOM SR"

    def runs(self, plan: Plan) -> bool:
        return plan.requests(self.name) and ModelOutput.VALUES in plan.outputs

    def run(self, work: SeriesWork) -> None:
        written = write_value_sr(work.output_path(self.name, ".sr.dcm"), work.require_volume(),
                                 work.require_prediction().values, work.card)
        work.record(*written.paths)
        work.entry.notes.extend(written.notes)
