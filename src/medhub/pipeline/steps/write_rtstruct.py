"""write_rtstruct: the label map as RTSTRUCT contours on the source series (for planning systems)."""

from __future__ import annotations

from medhub.files import atomic_output
from medhub.pipeline.steps.base import PATH, ModelOutput, Phase, Plan, SeriesWork, SourceKind, Step, StepName
from medhub.pipeline.steps.write_seg import NOTHING_FOUND, SERIES_DESCRIPTION
from medhub.writers.rtstruct import write_rtstruct


class WriteRtstruct(Step):
    name = StepName.WRITE_RTSTRUCT
    phase = Phase.OUTPUT
    parameters = {"series_description": SERIES_DESCRIPTION, "path": PATH}
    description = "the label map as RTSTRUCT contours"

    def runs(self, plan: Plan) -> bool:
        return plan.requests(self.name) and ModelOutput.LABELS in plan.outputs and plan.source is SourceKind.DICOM

    def run(self, work: SeriesWork) -> None:
        if not work.present_labels():
            work.note_once(NOTHING_FOUND)
            return
        source = work.require_volume().source
        assert source is not None  # runs() admits DICOM sources only
        final = work.output_path(self.name, ".rtstruct.dcm")
        with atomic_output(final) as temporary:
            write_rtstruct(work.source_labels(), source, work.segments(), model_name=work.card.id,
                           model_version=str(work.card.version), path=temporary,
                           series_description=work.params(self.name).get("series_description"))
        work.record(final)
