"""load: a DICOM series (checked: gaps, tilt, 4D, ...) or a NIfTI file into a Volume.

A DICOM series the loaded volume shows to break a selection rule its headers could not answer
(the slice thickness of a series without SliceThickness) is skipped with the reason. A NIfTI file
goes through the checks it can (modality from a sidecar or its intensities, dimensions); when
nothing tells its modality it runs marked "unchecked input" (a warning, shown on stderr).
"""

from __future__ import annotations

from medhub.errors import MedhubError, SeriesSkipped
from medhub.hub.workflow import selection_rules
from medhub.inputs.load import load_series
from medhub.inputs.nifti import load_nifti
from medhub.inputs.nifti_check import check_nifti
from medhub.inputs.select import volume_rejection_reason
from medhub.pipeline.steps.base import Phase, SeriesWork, Step, StepName


class Load(Step):
    name = StepName.LOAD
    phase = Phase.LOAD
    description = "read the series (or NIfTI file) into a volume, with its geometry checked"

    def run(self, work: SeriesWork) -> None:
        if work.series is not None:
            rules = selection_rules(work.card, work.workflow)
            work.volume = load_series(work.series, max_missing_slices=rules.max_missing_slices)
            work.entry.findings.extend(work.volume.findings)
            # the selection rules a volume answers that the headers could not (thickness from the spacing)
            if why := volume_rejection_reason(work.series, work.volume, rules):
                raise SeriesSkipped(why)
        elif work.nifti is not None:
            work.volume = load_nifti(work.nifti)
            work.entry.images = int(work.volume.array.shape[2])
            rules = selection_rules(work.card, work.workflow)
            check = check_nifti(work.volume, work.nifti, rules.query, rules.min_slices, work.card.id)
            work.entry.notes.append(check.note)
            if not check.checked:
                work.entry.warnings.append(check.note)
        else:
            raise MedhubError("load: no input series")
