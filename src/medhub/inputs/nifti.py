"""NIfTI as an input: a Volume without DICOM source planes (results can only be written as NIfTI)."""

from __future__ import annotations

from pathlib import Path

import nibabel as nib
import numpy as np

from medhub.data.volume import LPS_TO_RAS, Volume
from medhub.errors import MedhubError


def load_nifti(path: Path) -> Volume:
    """Read a 3D NIfTI (``.nii`` / ``.nii.gz``) into a Volume with its affine in LPS.

    Voxels keep their stored dtype unless the header's scl_slope/scl_inter scale them (then
    nibabel returns floats). Trailing singleton dimensions (``X, Y, Z, 1``) are dropped; real
    4D images are refused because every model here takes one 3D volume.
    """
    path = Path(path)
    try:
        image = nib.load(path)
    except FileNotFoundError as error:
        raise MedhubError(f"{path}: no such file") from error
    except Exception as error:  # noqa: BLE001 - nibabel raises many types for bad files
        raise MedhubError(f"{path}: not a readable NIfTI file ({error})") from error
    if not isinstance(image, nib.Nifti1Image | nib.Nifti2Image):
        raise MedhubError(f"{path}: not a NIfTI image ({type(image).__name__})")
    shape = image.shape
    while len(shape) > 3 and shape[-1] == 1:
        shape = shape[:-1]
    if len(shape) != 3:
        raise MedhubError(f"{path}: {len(shape)}D image of shape {tuple(image.shape)}; a 3D volume is needed")
    array = np.asarray(image.dataobj).reshape(shape)
    affine_ras = image.affine
    if affine_ras is None or not np.all(np.isfinite(affine_ras)) or abs(np.linalg.det(affine_ras[:3, :3])) < 1e-12:
        raise MedhubError(f"{path}: the header has no usable voxel-to-world affine")
    return Volume(
        array=array,
        affine_lps=LPS_TO_RAS @ np.asarray(affine_ras, dtype=float),  # the flip is its own inverse
        source=None,
        metadata={"path": str(path)},
    )
