"""write_nifti: the label map as NIfTI, its label names in a JSON sidecar, and the image itself.

For a DICOM series both NIfTI files are in the voxel order dcm2niix gives that series
(:func:`medhub.writers.nifti.dcm2niix_order`), so they overlay a dcm2niix conversion array for
array. Beside the label map ``<model>.nii.gz`` go ``<model>.labels.json`` (label value → name, SNOMED CT
codes, colour, SEG segment number: :func:`medhub.writers.nifti.label_sidecar`) and, when the
workflow names the step, the image as dcm2niix ``-f %d_%s`` names it (``<description>_<series
number>.nii.gz``), as the model saw it (rescaled, padding replaced). Besides when the workflow
names it, the step runs for every NIfTI input (labels and sidecar in the input's own voxel order),
and for a DICOM series whose files lack the UIDs a SEG or RTSTRUCT must reference (the entry then
says why).
"""

from __future__ import annotations

import json
from pathlib import Path, PurePosixPath
from typing import Any

import numpy as np

from medhub.errors import MedhubError
from medhub.files import atomic_output
from medhub.hub.card import ParameterSpec
from medhub.hub.roi_subset import kept_values
from medhub.pipeline.layout import render_template
from medhub.pipeline.steps.base import PATH, ModelOutput, Phase, Plan, SeriesWork, SourceKind, Step, StepName
from medhub.segdb import SegmentSpec, get_segment
from medhub.writers.nifti import is_3d_acquisition, label_sidecar, write_nifti

SUFFIXES = (".nii.gz", ".nii")
IMAGE_NAME = "{series_description}_{series_number}"
"""The image's name beside the label map: what ``dcm2niix -f %d_%s`` calls the same series."""


class WriteNifti(Step):
    name = StepName.WRITE_NIFTI
    phase = Phase.OUTPUT
    parameters = {
        "compress": ParameterSpec(type="bool", default=True, description="write .nii.gz (true) or .nii (false)"),
        "image": ParameterSpec(type="bool", default=True,
                               description="also write the image (a DICOM series) as dcm2niix -f %d_%s names it"),
        "path": PATH,
    }
    description = "the label map as NIfTI with a JSON of its labels, and the image"

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
        volume = work.require_volume()
        source = volume.source
        dicom_wanted = work.workflow.runs(StepName.WRITE_SEG) or work.workflow.runs(StepName.WRITE_RTSTRUCT)
        if source is not None and not source.referenceable and dicom_wanted:
            work.note_once(source.unreferenceable_reason)
        params = work.params(self.name)
        suffix = ".nii" if params.get("compress") is False else ".nii.gz"
        final = work.output_path(self.name, suffix)
        if params.get("path"):
            suffix = next(s for s in SUFFIXES if final.name.lower().endswith(s))
        from_dicom = work.series is not None
        acquisition_3d = from_dicom and is_3d_acquisition(work.series.first_header)  # type: ignore[union-attr]
        _write(work.labels(), volume.affine_lps, final, suffix, dcm2niix=from_dicom, acquisition_3d=acquisition_3d)
        written = [final]
        image = None
        names = image_template(work.workflow, work.template) if from_dicom else None
        if names is not None:
            image = work.output_dir / render_template(names, work.fields)
            image = image.with_name(image.name + suffix)
            if image == final:  # refused before any work by check_image_names; never overwrite the labels
                raise MedhubError(f"write_nifti: the image would replace the label map {final.name}")
            _write(_compact(volume.array), volume.affine_lps, image, suffix, dcm2niix=True,
                   acquisition_3d=acquisition_3d)
        sidecar = final.with_name(final.name[: -len(suffix)] + ".labels.json")
        payload = label_sidecar(
            _all_segments(work), present=work.present_labels(), seg_numbers=_seg_numbers(work),
            roi_numbers=set(work.segments()) if _dicom_written(work, StepName.WRITE_RTSTRUCT) else None,
            model=work.card.id, model_version=str(work.card.version), label_map=final.name,
            image=image.name if image else None,
            voxel_order="dcm2niix" if from_dicom else "the input NIfTI's", series_uid=work.entry.series_instance_uid)
        with atomic_output(sidecar) as temporary:
            temporary.write_text(json.dumps(payload, indent=1) + "\n", encoding="utf-8")
        written.append(sidecar)
        if image is not None:
            written.append(image)
        work.record(*written)  # the label map first: what readers of the report take as "the NIfTI"


def label_template(workflow: Any, run_template: str) -> str:
    """The label map's path template without its suffix: ``write_nifti.path`` or the run's template."""
    path = str(workflow.params(StepName.WRITE_NIFTI).get("path") or "")
    suffix = next((s for s in SUFFIXES if path.lower().endswith(s)), "")
    return path[: len(path) - len(suffix)] if path else run_template


def image_template(workflow: Any, run_template: str) -> str | None:
    """The image's path template (without suffix), beside the label map; None when no image is written.

    The image is written when the workflow names the step (``--nifti``) and ``write_nifti.image``
    is not false; the pipeline checks before any work that it gives each series its own file.
    """
    if not workflow.runs(StepName.WRITE_NIFTI) or workflow.params(StepName.WRITE_NIFTI).get("image") is False:
        return None
    folder = PurePosixPath(label_template(workflow, run_template)).parent
    return IMAGE_NAME if folder == PurePosixPath(".") else f"{folder.as_posix()}/{IMAGE_NAME}"


def check_image_names(workflow: Any, run_template: str, series_fields: dict[str, dict[str, object]]) -> None:
    """Refuse, before any work, a layout where a series' image would take its own label map's name."""
    names = image_template(workflow, run_template)
    if names is None:
        return
    labels = label_template(workflow, run_template)
    for key, fields in series_fields.items():
        if render_template(names, fields) == render_template(labels, fields):
            raise MedhubError(
                f"write_nifti: the image of series {key} would have its label map's name "
                f"{render_template(labels, fields).as_posix()}; add {{model}} to the template or set "
                "write_nifti.image=false")


def _compact(array: np.ndarray) -> np.ndarray:
    """Whole numbers in int16 range (CT in HU, most MR) as int16: half the file, the same values."""
    if array.dtype.kind != "f" or not array.size:
        return array
    low, high = float(np.nanmin(array)), float(np.nanmax(array))
    if low < -32768 or high > 32767 or not np.all(np.mod(array, 1) == 0):
        return array
    return array.astype(np.int16)


def _write(array: np.ndarray, affine_lps: np.ndarray, final: Path, suffix: str, **order: bool) -> None:
    with atomic_output(final) as temporary:
        named = temporary.with_name(temporary.name + suffix)  # nibabel compresses by the file name
        try:
            write_nifti(array, affine_lps, named, **order)
            named.replace(temporary)
        finally:  # a failed write leaves no hidden half-file (atomic_output removes only its own temporary)
            named.unlink(missing_ok=True)


def _all_segments(work: SeriesWork) -> dict[int, SegmentSpec]:
    """Every label value this run can write: the card's (those of ``--roi-subset`` only), and the prediction's."""
    declared = work.card.outputs.segments or {}
    wanted = kept_values(work.card, work.roi_subset) if work.roi_subset else {int(v) for v in declared}
    segments = {int(value): get_segment(seg_id) for value, seg_id in declared.items() if int(value) in wanted}
    segments.update(work.segments())
    return segments


def _dicom_written(work: SeriesWork, step: StepName) -> bool:
    """Whether this series gets ``step``'s DICOM object: the workflow runs it and the source can be referenced."""
    source = work.require_volume().source
    return work.workflow.runs(step) and source is not None and source.referenceable


def _seg_numbers(work: SeriesWork) -> dict[int, int] | None:
    """Label value → segment number in this series' SEG (None when no SEG is written for it)."""
    if not _dicom_written(work, StepName.WRITE_SEG):
        return None
    present = sorted(int(v) for v in np.unique(work.source_labels()) if v != 0)  # as writers.seg numbers them
    return {value: number for number, value in enumerate(present, start=1)}
