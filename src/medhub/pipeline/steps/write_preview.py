"""write_preview: ``<base>.preview.png``, slices through the structures with the segments overlaid.

See :mod:`medhub.writers.preview`; it runs for every source the workflow asks it for.
"""

from __future__ import annotations

from medhub.pipeline.steps.base import PATH, ModelOutput, Phase, Plan, SeriesWork, Step, StepName
from medhub.writers.preview import write_preview


class WritePreview(Step):
    name = StepName.WRITE_PREVIEW
    phase = Phase.OUTPUT
    parameters = {"path": PATH}
    description = "a PNG of axial, coronal and sagittal slices with the segments overlaid"

    def runs(self, plan: Plan) -> bool:
        return plan.requests(self.name) and ModelOutput.LABELS in plan.outputs

    def run(self, work: SeriesWork) -> None:
        card, entry = work.card, work.entry
        title = f"{card.id} {card.version} · {entry.description or entry.key}"
        final = work.output_path(self.name, ".preview.png")
        write_preview(final, work.require_volume(), work.labels(), work.segments(), title)
        work.record(final)
