"""write_seg: the label map as a DICOM SEG on the source series' geometry (BINARY or LABELMAP)."""

from __future__ import annotations

from typing import Any

from medhub.files import atomic_output
from medhub.hub.card import ParameterSpec
from medhub.pipeline.steps.base import PATH, ModelOutput, Phase, Plan, SeriesWork, SourceKind, Step, StepName
from medhub.writers.provenance import AlgorithmInfo
from medhub.writers.seg import BODY_PART, write_seg

NOTHING_FOUND = "the model found none of its segments: no SEG/RTSTRUCT written"

SERIES_DESCRIPTION = ParameterSpec(type="string",
                                   description="Series Description of the written object (default: the model's id "
                                               "and the kind of object)")


class WriteSeg(Step):
    name = StepName.WRITE_SEG
    phase = Phase.OUTPUT
    parameters = {
        "labelmap": ParameterSpec(type="bool", default=False,
                                  description="one LABELMAP SEG (DICOM 2024) instead of one BINARY frame per segment"),
        "series_description": SERIES_DESCRIPTION,
        "body_part_examined": ParameterSpec(type="string", description="Body Part Examined of the SEG, a DICOM "
                                                                        "defined term such as CHEST (default: none)"),
        "path": PATH,
    }
    description = "the label map as a DICOM SEG"

    def problems(self, params: dict[str, Any], card: Any) -> list[str]:
        problems = super().problems(params, card)
        part = params.get("body_part_examined")
        if not problems and part is not None and not BODY_PART.match(str(part)):
            problems.append(f"write_seg.body_part_examined={part}: body_part_examined of step write_seg must be "
                            "1 to 16 upper-case letters, digits, spaces or underscores (e.g. CHEST)")
        return problems

    def runs(self, plan: Plan) -> bool:
        return plan.requests(self.name) and ModelOutput.LABELS in plan.outputs and plan.source is SourceKind.DICOM

    def run(self, work: SeriesWork) -> None:
        if not work.present_labels():
            work.note_once(NOTHING_FOUND)
            return
        params = work.params(self.name)
        source = work.require_volume().source
        assert source is not None  # runs() admits DICOM sources only
        final = work.output_path(self.name, ".seg.dcm")
        with atomic_output(final) as temporary:
            write_seg(work.source_labels(), source, work.segments(),
                      AlgorithmInfo(name=work.card.id, version=str(work.card.version)), temporary,
                      labelmap=bool(params.get("labelmap", False)),
                      series_description=params.get("series_description"),
                      body_part_examined=params.get("body_part_examined"))
        work.record(final)
