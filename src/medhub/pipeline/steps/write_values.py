"""write_values: a value-only prediction (a head's class probabilities) as ``<base>.values.json`` + ``.csv``.

It runs for every model whose card declares neither segments nor an embedding, named in
``execute`` or not (see :mod:`medhub.writers.values`).
"""

from __future__ import annotations

from medhub.pipeline.steps.base import ModelOutput, Phase, Plan, SeriesWork, Step, StepName
from medhub.writers.values import write_value_outputs


class WriteValues(Step):
    name = StepName.WRITE_VALUES
    phase = Phase.OUTPUT
    description = "the values as JSON and CSV (models without a label map)"

    def runs(self, plan: Plan) -> bool:
        return ModelOutput.VALUES in plan.outputs

    def run(self, work: SeriesWork) -> None:
        written = write_value_outputs(work.base(), work.require_volume(), work.require_prediction().values,
                                      work.card, series_key=work.entry.key)
        work.record(*written.paths)
        work.entry.notes.extend(written.notes)
