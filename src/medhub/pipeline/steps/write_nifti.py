"""write_nifti: the label map as NIfTI (RAS affine of the source volume).

Besides when the workflow names it, it runs for every NIfTI input, and for a DICOM series whose
files lack the UIDs a SEG or RTSTRUCT must reference (the entry then says why).
"""

from __future__ import annotations

from typing import Any

from medhub.files import atomic_output
from medhub.hub.card import ParameterSpec
from medhub.pipeline.steps.base import PATH, ModelOutput, Phase, Plan, SeriesWork, SourceKind, Step, StepName
from medhub.writers.nifti import write_nifti

SUFFIXES = (".nii.gz", ".nii")


class WriteNifti(Step):
    name = StepName.WRITE_NIFTI
    phase = Phase.OUTPUT
    parameters = {
        "compress": ParameterSpec(type="bool", default=True, description="write .nii.gz (true) or .nii (false)"),
        "path": PATH,
    }
    description = "the label map as NIfTI"

    def problems(self, params: dict[str, Any], card: Any) -> list[str]:
        problems = super().problems(params, card)
        path = params.get("path")
        if not problems and path and not str(path).lower().endswith(SUFFIXES):
            problems.append(f"write_nifti.path={path}: path of step write_nifti must end in .nii.gz or .nii")
        return problems

    def runs(self, plan: Plan) -> bool:
        if ModelOutput.LABELS not in plan.outputs:
            return False
        dicom_wanted = plan.requests(StepName.WRITE_SEG) or plan.requests(StepName.WRITE_RTSTRUCT)
        return (plan.requests(self.name) or plan.source is SourceKind.NIFTI
                or (plan.source is SourceKind.DICOM_WITHOUT_UIDS and dicom_wanted))

    def run(self, work: SeriesWork) -> None:
        source = work.require_volume().source
        dicom_wanted = work.workflow.runs(StepName.WRITE_SEG) or work.workflow.runs(StepName.WRITE_RTSTRUCT)
        if source is not None and not source.referenceable and dicom_wanted:
            work.note_once(source.unreferenceable_reason)
        params = work.params(self.name)
        suffix = ".nii" if params.get("compress") is False else ".nii.gz"
        final = work.output_path(self.name, suffix)
        if params.get("path"):
            suffix = next(s for s in SUFFIXES if final.name.lower().endswith(s))
        with atomic_output(final) as temporary:
            named = temporary.with_name(temporary.name + suffix)  # nibabel compresses by the file name
            write_nifti(work.labels(), work.require_volume().affine_lps, named)
            named.replace(temporary)
        work.record(final)
