"""Sample input for trying a model without one's own data (``medhub run MODEL --sample``).

Only data that ships inside an installed wheel is used: nothing is downloaded. deepbet gets
nilearn's bundled MNI152 T1 template (1 mm) written as a DICOM MR series. There is
no freely redistributable CT bundled in any dependency, so ct-body has no sample.

The sample is written byte for byte the same on every run: its UIDs derive from the template's
voxels and geometry, its dates are fixed. ``medhub run --sample`` keeps it in the output folder
(``OUT/sample-input/``, :func:`keep_sample`), so the SEG's references to its source images
resolve (``medhub view OUT`` shows the mask over it) and a second run is comparable to the first.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import os
import re
import shutil
from pathlib import Path

import numpy as np

from medhub.data.volume import LPS_TO_RAS
from medhub.errors import MedhubError
from medhub.files import temporary_path
from medhub.inputs.nifti import read_nifti_image
from medhub.inputs.nifti_check import nifti_path_stem
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
    affine_lps = LPS_TO_RAS @ image.affine  # NIfTI RAS → DICOM LPS
    folder = out_dir / "mni152_t1_1mm"
    write_dicom_series(
        scaled,
        affine_lps,
        folder,
        modality="MR",
        series_description="MNI152 T1 1mm template (nilearn)",
        study_description="medhub sample data",
        patient_id="MNI152",
        patient_name="MNI152^Template",
        body_part="HEAD",
        uid_seed=content_seed(scaled, affine_lps),
        acquired=dt.datetime(2009, 1, 1),  # the template's year (ICBM 2009), fixed so every run writes the same bytes
    )
    return folder


def content_seed(array: np.ndarray, affine: np.ndarray) -> str:
    """A digest of the voxels and the geometry: the sample's UIDs are derived from it."""
    digest = hashlib.sha256(np.ascontiguousarray(array).tobytes())
    digest.update(str(array.shape).encode() + np.asarray(affine, dtype=np.float64).round(6).tobytes())
    return digest.hexdigest()


_SAMPLES = {"deepbet": _mni152_t1}


def nifti_as_dicom(path: Path, out_dir: Path, *, modality: str, body_part: str = "") -> Path:
    """A NIfTI sample written as one DICOM series, byte for byte the same on every run.

    Why: a model card's sample may be a real NIfTI fetched by URL (``sample: {url, sha256,
    dicom: true}``); written as DICOM it takes the path real data takes (scan, select, load,
    SEG). The voxels are stored as they are (no resampling); the UIDs derive from the voxels and
    the geometry, the dates are fixed, so a SEG made from one copy references the other.
    """
    image = read_nifti_image(path)
    array = np.asanyarray(image.dataobj)
    affine_lps = LPS_TO_RAS @ image.affine
    folder = out_dir / (nifti_path_stem(path) + "_dicom")
    write_dicom_series(array, affine_lps, folder, modality=modality, series_description=f"{path.name} (sample)",
                       study_description="medhub sample data", patient_id="SAMPLE", patient_name="Sample^Data",
                       body_part=body_part, uid_seed=content_seed(array, affine_lps), acquired=dt.datetime(2000, 1, 1))
    return folder


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


def ct_phantom() -> tuple[np.ndarray, np.ndarray]:
    """(HU array [x, y, z], LPS affine): air, a water-like body ellipse with noise, and a bone cylinder."""
    shape = (64, 48, 12)
    x, y, _ = np.meshgrid(*(np.arange(n, dtype=float) for n in shape), indexing="ij")
    body = ((x - 32) / 28) ** 2 + ((y - 24) / 20) ** 2 <= 1
    bone = (x - 40) ** 2 + (y - 28) ** 2 <= 36
    noise = np.random.default_rng(0).normal(0.0, 20.0, shape)
    hu = np.where(body, 40.0 + noise, -1000.0)
    hu[bone] = 700.0 + noise[bone]
    affine = np.diag([0.8, 0.8, 2.5, 1.0])
    affine[:3, 3] = (-25.6, -19.2, -15.0)
    return np.rint(hu).astype(np.int16), affine


def write_ct_phantom(out_dir: Path, model_id: str) -> Path:
    """A small synthetic CT (12 slices of 64x48) as a DICOM series in ``out_dir/phantom``: a card's sample generator.

    ``medhub new`` points its template card here (``generator: medhub.inputs.sample:write_ct_phantom``)
    so a new model passes ``medhub check`` before its author has data; the same bytes on every run.
    """
    array, affine = ct_phantom()
    folder = Path(out_dir) / "phantom"
    write_dicom_series(array, affine, folder, modality="CT", body_part="CHEST",
                       series_description=f"{model_id} sample phantom", uid_seed=content_seed(array, affine),
                       acquired=dt.datetime(2000, 1, 1))
    return folder


SAMPLE_FOLDER = "sample-input"
_SAMPLE_FILE = re.compile(r"^[a-z0-9_]+/IM\d{5}\.dcm$")


def keep_sample(output_dir: Path, model_id: str) -> Path:
    """Write the model's sample into ``OUTPUT/sample-input/`` and return the folder of its series.

    The sample is written in a staging folder and swapped in only when complete; a folder
    holding the same bytes is left as it is. A ``sample-input`` folder holding anything medhub
    does not write there is refused, never deleted.
    """
    output_dir = Path(output_dir)
    target = output_dir / SAMPLE_FOLDER
    output_dir.mkdir(parents=True, exist_ok=True)
    # Named with the run's token (medhub.files.writing_as): a killed run's staging folder is removed by the next
    # run into this folder (medhub.files.OutputFolder), and nothing else named like it ever is.
    staging = temporary_path(target)
    try:
        series = write_sample(staging, model_id)
        relative = series.relative_to(staging)
        if target.exists():
            if _tree_bytes(target) == _tree_bytes(staging):
                return target / relative
            foreign = [name for name in _tree_bytes(target, read=False) if not _SAMPLE_FILE.match(name)]
            if foreign:
                raise MedhubError(f"{target} holds files medhub did not write there ({foreign[0]}, ...); "
                                  "move them or choose another --output")
            shutil.rmtree(target)  # an earlier sample (another nilearn version): replaced by this one
        os.replace(staging, target)
        return target / relative
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def _tree_bytes(root: Path, read: bool = True) -> dict[str, bytes]:
    """Relative POSIX path → content (or b"" with ``read=False``) of every file under ``root``."""
    return {path.relative_to(root).as_posix(): path.read_bytes() if read else b""
            for path in sorted(root.rglob("*")) if path.is_file() or path.is_symlink()}
