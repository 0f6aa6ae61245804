"""write_seg_nrrd: the label map as 3D Slicer's ``.seg.nrrd`` (see :mod:`medhub.writers.seg_nrrd`).

It needs no UIDs, so it runs for every source the workflow asks it for: DICOM with or without
UIDs, and NIfTI.
"""

from __future__ import annotations

from medhub.files import atomic_output
from medhub.pipeline.steps.base import PATH, ModelOutput, Phase, Plan, SeriesWork, Step, StepName
from medhub.writers.seg_nrrd import write_seg_nrrd


class WriteSegNrrd(Step):
    name = StepName.WRITE_SEG_NRRD
    phase = Phase.OUTPUT
    parameters = {"path": PATH}
    description = "the label map as 3D Slicer's .seg.nrrd"

    def runs(self, plan: Plan) -> bool:
        return plan.requests(self.name) and ModelOutput.LABELS in plan.outputs

    def run(self, work: SeriesWork) -> None:
        card, entry = work.card, work.entry
        fields = {"medhub_model": f"{card.id} {card.version}", "medhub_source": entry.series_instance_uid or entry.key}
        final = work.output_path(self.name, ".seg.nrrd")
        with atomic_output(final) as temporary:
            written = write_seg_nrrd(work.labels(), work.require_volume().affine_lps, work.segments(), temporary,
                                     fields=fields)
        work.record(final)
        if not written:
            entry.notes.append("the model found none of its segments: the .seg.nrrd holds no segment")
