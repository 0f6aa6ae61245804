"""Volume array + LPS affine → NIfTI-1 (``.nii`` or ``.nii.gz`` by the path's suffix).

NIfTI's world space is RAS, DICOM's is LPS; the flip happens here and nowhere else (with
``medhub.data.volume.LPS_TO_RAS``). Label maps are stored as the smallest unsigned integer type
that holds them (uint8 / uint16) so viewers treat them as labels and files stay small.
Uncompressed ``.nii`` is the fast choice for work files: gzip cost MHub 12 s of 13.
"""

from __future__ import annotations

from pathlib import Path

import nibabel as nib
import numpy as np

from medhub.data.volume import LPS_TO_RAS
from medhub.errors import MedhubError


def _storage_array(array: np.ndarray, path: Path) -> np.ndarray:
    """Booleans and small non-negative integers become uint8/uint16; other data is kept as is."""
    if array.dtype == np.bool_:
        return array.astype(np.uint8)
    if np.issubdtype(array.dtype, np.integer) and array.size:
        low, high = int(array.min()), int(array.max())
        if low >= 0 and high <= np.iinfo(np.uint16).max:
            return array.astype(np.uint8 if high <= np.iinfo(np.uint8).max else np.uint16, copy=False)
        return array
    if np.issubdtype(array.dtype, np.floating) or np.issubdtype(array.dtype, np.integer):
        return array
    raise MedhubError(f"NIfTI {path.name}: cannot store arrays of dtype {array.dtype}")


def write_nifti(array_xyz: np.ndarray, affine_lps: np.ndarray, path: Path) -> Path:
    """Write ``array_xyz`` (indexed [x, y, z], as ``Volume.array``) with its LPS affine; return ``path``."""
    path = Path(path)
    if not (path.name.endswith(".nii") or path.name.endswith(".nii.gz")):
        raise MedhubError(f"NIfTI {path}: file name must end in .nii or .nii.gz")
    if array_xyz.ndim not in (3, 4):
        raise MedhubError(f"NIfTI {path.name}: expected a 3D (or 4D) array, got shape {array_xyz.shape}")
    affine_lps = np.asarray(affine_lps, dtype=np.float64)
    if affine_lps.shape != (4, 4) or not np.all(np.isfinite(affine_lps)):
        raise MedhubError(f"NIfTI {path.name}: affine must be a finite 4x4 matrix")
    if abs(np.linalg.det(affine_lps[:3, :3])) < 1e-12:
        raise MedhubError(f"NIfTI {path.name}: affine is singular (zero voxel size or collinear axes)")

    data = _storage_array(np.asarray(array_xyz), path)
    affine_ras = LPS_TO_RAS @ affine_lps
    image = nib.Nifti1Image(data, affine_ras)
    image.header.set_data_dtype(data.dtype)
    # Scanner-anatomical space in both forms, so every reader (ITK prefers sform) agrees.
    image.header.set_qform(affine_ras, code=1)
    image.header.set_sform(affine_ras, code=1)
    image.header.set_xyzt_units(xyz="mm")
    nib.save(image, str(path))
    return path
