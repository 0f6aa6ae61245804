"""Sample input for trying a model without one's own data (``medhub sample MODEL OUT``).

Only data that ships inside an installed wheel is used: nothing is downloaded. deepbet gets
nilearn's bundled MNI152 T1 template (1 mm, with skull) written as a DICOM MR series. There is
no freely redistributable CT bundled in any dependency, so ct-body has no sample.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from medhub.data.volume import LPS_TO_RAS
from medhub.errors import MedhubError
from medhub.inputs.synth import write_dicom_series


def _mni152_t1(out_dir: Path) -> Path:
    try:
        from nilearn.datasets import load_mni152_template
    except ImportError:
        raise MedhubError("the deepbet sample needs the package 'nilearn' (pip install 'medhub[sample]')") from None
    image = load_mni152_template(resolution=1)
    data = np.asarray(image.get_fdata(dtype=np.float32))
    # nilearn scales the template to 0..1; MR intensities are arbitrary units, so store integers
    # 0..1000 (no Rescale Slope/Intercept, which the MR IOD does not define and viewers mishandle).
    scaled = np.rint(data / max(float(data.max()), 1e-6) * 1000.0).astype(np.int16)
    folder = out_dir / "mni152_t1_1mm"
    write_dicom_series(
        scaled,
        LPS_TO_RAS @ image.affine,  # NIfTI RAS → DICOM LPS
        folder,
        modality="MR",
        series_description="MNI152 T1 1mm template (nilearn)",
        study_description="medhub sample data",
        patient_id="MNI152",
        patient_name="MNI152^Template",
        body_part="HEAD",
    )
    return folder


_SAMPLES = {"deepbet": _mni152_t1}


def write_sample(out_dir: Path, model_id: str) -> Path:
    """Write sample DICOM for ``model_id`` under ``out_dir``; return the folder holding the series."""
    key = model_id.strip().lower().replace("_", "-")
    if key not in _SAMPLES:
        if key == "ct-body":
            raise MedhubError("no sample data for ct-body (no redistributable CT ships with medhub's dependencies)")
        raise MedhubError(f"no sample data for {model_id}; samples exist for: {', '.join(sorted(_SAMPLES))}")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    return _SAMPLES[key](out_dir)
