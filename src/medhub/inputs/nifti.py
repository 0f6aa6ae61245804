"""NIfTI as an input: a Volume without DICOM source planes (results can only be written as NIfTI).

A NIfTI header declares its size (up to 32767 per axis in NIfTI-1): the declared voxels are checked
against the file size (uncompressed files) and the memory budget before anything is allocated,
and non-finite voxels are refused. What the image *is* (its modality) is checked separately, with
the model's input rules, by :mod:`medhub.inputs.nifti_check`.
"""

from __future__ import annotations

import math
import os
from pathlib import Path

import nibabel as nib
import numpy as np

from medhub import config
from medhub.data.volume import LPS_TO_RAS, Volume
from medhub.errors import MedhubError
from medhub.inputs.pixels import format_bytes

NIFTI_SUFFIXES = (".nii", ".nii.gz")


def is_nifti_name(name: str) -> bool:
    """Whether a file name says NIfTI (``.nii``, ``.nii.gz``, any case): one rule for CLI, pipeline, server."""
    return name.lower().endswith(NIFTI_SUFFIXES)


def load_nifti(path: Path) -> Volume:
    """Read a 3D NIfTI (``.nii`` / ``.nii.gz``) into a Volume with its affine in LPS.

    Voxels keep their stored dtype unless the header's scl_slope/scl_inter scale them (then
    nibabel returns floats). Trailing singleton dimensions (``X, Y, Z, 1``) are dropped; real
    4D images are refused because every model here takes one 3D volume.
    """
    path = Path(path)
    image = read_nifti_image(path)
    shape = image.shape
    while len(shape) > 3 and shape[-1] == 1:
        shape = shape[:-1]
    if len(shape) != 3:
        raise MedhubError(f"{path}: {len(shape)}D image of shape {tuple(image.shape)}; a 3D volume is needed")
    _check_declared_size(path, image, shape)
    try:
        array = np.asarray(image.dataobj).reshape(shape)
    except Exception as error:  # noqa: BLE001 - a truncated gzip stream or file raises EOFError, zlib or OSError
        raise MedhubError(f"{path}: the voxel data cannot be read ({type(error).__name__}: "
                          f"{str(error).splitlines()[0] if str(error) else 'cut short?'})") from error
    if array.dtype.kind == "f" and not np.isfinite(array).all():
        bad = int(array.size - np.count_nonzero(np.isfinite(array)))
        raise MedhubError(f"{path}: {bad} voxels are NaN or infinite; a model cannot use such an image")
    affine_ras = image.affine
    if affine_ras is None or not np.all(np.isfinite(affine_ras)) or abs(np.linalg.det(affine_ras[:3, :3])) < 1e-12:
        raise MedhubError(f"{path}: the header has no usable voxel-to-world affine")
    return Volume(
        array=array,
        affine_lps=LPS_TO_RAS @ np.asarray(affine_ras, dtype=float),  # the flip is its own inverse
        source=None,
        metadata={"path": str(path)},
    )


def read_nifti_image(path: Path) -> nib.Nifti1Image | nib.Nifti2Image:
    """The NIfTI image at ``path`` (its header; the voxels are read on access), or a one-line error naming the file.

    ``nib.load`` opens any format nibabel knows and raises many exception types for a bad file;
    every NIfTI reader in medhub opens through here so that all say the same thing.
    """
    try:
        image = nib.load(path)
    except FileNotFoundError as error:
        raise MedhubError(f"{path}: no such file") from error
    except Exception as error:  # noqa: BLE001 - nibabel raises many types for bad files
        raise MedhubError(f"{path}: not a readable NIfTI file ({error})") from error
    if not isinstance(image, nib.Nifti1Image | nib.Nifti2Image):
        raise MedhubError(f"{path}: not a NIfTI image ({type(image).__name__})")
    return image


def _check_declared_size(path: Path, image: nib.Nifti1Image, shape: tuple[int, ...]) -> None:
    """Refuse a header whose voxels cannot be in the file or cannot fit the memory budget."""
    voxels = math.prod(int(n) for n in shape)
    stored = image.header.get_data_dtype().itemsize
    slope, _ = image.header.get_slope_inter()
    loaded = 8 if slope is not None and slope not in (0, 1) else stored  # nibabel scales to float64
    size = "x".join(str(int(n)) for n in shape)
    if voxels == 0:
        raise MedhubError(f"{path}: the header declares {size} voxels: an empty image")
    if not path.name.lower().endswith(".gz"):
        offset = int(image.header.get("vox_offset", 352) or 352)
        available = os.path.getsize(path) - offset
        if voxels * stored > available:
            raise MedhubError(f"{path}: the header declares {size} voxels ({format_bytes(voxels * stored)}), "
                              f"the file holds {format_bytes(max(available, 0))}: cut short or a broken header")
    budget = config.settings().memory_budget
    if voxels * loaded > budget:
        raise MedhubError(f"{path}: the header declares {size} voxels, {format_bytes(voxels * loaded)} in memory, "
                          f"more than the memory budget of {format_bytes(budget)} (MEDHUB_MEMORY_BUDGET): not loaded")
