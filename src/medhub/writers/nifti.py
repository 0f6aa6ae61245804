"""Volume array + LPS affine → NIfTI-1 (``.nii`` or ``.nii.gz`` by the path's suffix).

NIfTI's world space is RAS, DICOM's is LPS; the flip happens here and nowhere else (with
``medhub.data.volume.LPS_TO_RAS``). Label maps are stored as the smallest unsigned integer type
that holds them (uint8 / uint16) so viewers treat them as labels and files stay small.
Uncompressed ``.nii`` is the fast choice for work files: gzip cost MHub 12 s of 13.

For a DICOM series, results are written in the voxel order dcm2niix (with its defaults) gives
the same series (:func:`dcm2niix_order`), so a medhub label map and a dcm2niix image overlay
array for array:

* a 3D acquisition (:func:`is_3d_acquisition`: MR Acquisition Type ``3D``, not echo-planar) is
  turned as dcm2niix's ``nii_setOrtho`` turns it: for the usual near-orthogonal volume the
  orientation closest to RAS; for a strongly oblique one dcm2niix's own choice, reproduced here
  (nibabel's ``as_closest_canonical`` differs from it there);
* anything else (CT, PET, 2D MR) keeps the DICOM columns as i and the slices as k in increasing
  position along the slice normal (row x column cosines), with the rows reversed: dcm2niix's
  default ``isFlipY``.

Before either, dcm2niix orders slices as :mod:`medhub.inputs.load` does (along the normal), so
only the two rules differ from ``Volume.array``. A series the loader resampled (gantry tilt,
uneven spacing: the report says so) lies on medhub's grid, which dcm2niix does not share.
Checked against Debian's dcm2niix v1.0.20220720 on real CT and MR series and on the same pixels
given sagittal, coronal, oblique and reversed geometries (tests/test_nifti_output.py).
"""

from __future__ import annotations

import itertools
from pathlib import Path
from typing import Any

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


def is_3d_acquisition(header: Any) -> bool:
    """dcm2niix's ``is3DAcq && !isEPI``: an MR volume acquired in 3D (MPRAGE, SPACE, TFE), not echo-planar.

    As dcm2niix reads it: MR Acquisition Type (0018,0023) starting with ``3D``, where Philips' private
    copy (2005,106F), when present, has the last word; echo-planar when Echo Planar Pulse Sequence
    (0018,9018) is ``YES`` or Scanning Sequence (0018,0020) contains ``EP``.
    """
    acquisition = _text(header.get("MRAcquisitionType"))
    philips = _text(header.get((0x2005, 0x106F)))
    if len(philips) > 1:
        acquisition = philips
    if not acquisition.upper().startswith("3D"):
        return False
    echo_planar = _text(header.get("EchoPlanarPulseSequence")).upper().startswith("Y")
    return not echo_planar and "EP" not in _text(header.get("ScanningSequence"))


def _text(element: Any) -> str:
    """A header value (an element, a plain value, a MultiValue, bytes) as DICOM text: ``SE\\EP``."""
    value = getattr(element, "value", element)
    if value is None:
        return ""
    if isinstance(value, bytes):
        return value.decode("ascii", "replace").strip(" \x00")
    if isinstance(value, str):
        return value.strip()
    try:
        return "\\".join(str(item).strip() for item in value)
    except TypeError:
        return str(value).strip()


def dcm2niix_order(array_xyz: np.ndarray, affine_lps: np.ndarray, *, acquisition_3d: bool
                   ) -> tuple[np.ndarray, np.ndarray]:
    """``array_xyz`` (``Volume.array`` order) and its RAS affine in the voxel order dcm2niix writes.

    See the module docstring for the two rules. Only axes are permuted and reversed: no voxel changes.
    """
    affine_ras = LPS_TO_RAS @ np.asarray(affine_lps, dtype=np.float64)
    spatial = array_xyz.shape[:3]
    if not (acquisition_3d and spatial[2] > 1):  # dcm2niix's default isFlipY: the rows reversed
        flip = np.eye(4)
        flip[1, 1], flip[1, 3] = -1.0, spatial[1] - 1
        return array_xyz[:, ::-1, ...], affine_ras @ flip
    sources, reversed_axes = _nearest_orthogonal(spatial, affine_ras)
    array = array_xyz[tuple(slice(None, None, -1) if r else slice(None) for r in reversed_axes)]
    array = np.transpose(array, (*sources, *range(3, array.ndim)))
    turned = np.eye(4)
    for out_axis, source in enumerate(sources):
        turned[:3, out_axis] = affine_ras[:3, source] * (-1.0 if reversed_axes[source] else 1.0)
    corner = np.array([spatial[a] - 1 if reversed_axes[a] else 0 for a in range(3)] + [1], dtype=np.float64)
    turned[:3, 3] = (affine_ras @ corner)[:3]
    return array, turned


def _nearest_orthogonal(shape: tuple[int, ...], affine_ras: np.ndarray) -> tuple[tuple[int, ...], list[bool]]:
    """dcm2niix's ``nii_setOrtho`` decision: for each output axis its source axis, and which source axes reverse.

    dcm2niix reverses the source axes that put voxel 0 at the corner of the volume nearest to its
    lowest point (the smallest RAS coordinates: left, posterior, inferior), and only then, with
    those reversals fixed, the permutation of axes whose signed direction vectors best follow
    R, A and S (the first highest score in its order of trying them). For the usual
    near-orthogonal volume that is the orientation closest to RAS; for a strongly oblique one the
    reversals chosen first can make it another, which this reproduces.
    """
    matrix = affine_ras[:3, :3]
    if np.all(np.diag(matrix) > 0) and np.count_nonzero(matrix - np.diag(np.diag(matrix))) == 0:
        return (0, 1, 2), [False, False, False]  # already RAS-aligned: dcm2niix leaves it
    combos = [[bool(combo >> axis & 1) for axis in range(3)] for combo in range(8)]
    corners = np.array([affine_ras @ np.array([shape[a] - 1 if flips[a] else 0 for a in range(3)] + [1.0])
                        for flips in combos])[:, :3]
    reversed_axes = combos[int(np.argmin(np.linalg.norm(corners - corners.min(axis=0), axis=1)))]
    signs = [-1.0 if r else 1.0 for r in reversed_axes]
    best, destinations = 0.0, tuple(range(3))
    for permutation in itertools.permutations(range(3)):  # dcm2niix's six rotations, in its order
        score = sum(matrix[permutation[axis], axis] * signs[axis] for axis in range(3))
        if score > best:
            best, destinations = score, permutation
    # Source axis ``a`` becomes output axis ``destinations[a]``: invert to the source of each output axis.
    sources = tuple(destinations.index(out_axis) for out_axis in range(3))
    return sources, reversed_axes


def write_nifti(array_xyz: np.ndarray, affine_lps: np.ndarray, path: Path, *,
                dcm2niix: bool = False, acquisition_3d: bool = False) -> Path:
    """Write ``array_xyz`` (indexed [x, y, z], as ``Volume.array``) with its LPS affine; return ``path``.

    ``dcm2niix=True`` stores it in the voxel order dcm2niix gives the DICOM series it came from
    (:func:`dcm2niix_order`; ``acquisition_3d`` from :func:`is_3d_acquisition` of its header).
    """
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
    if dcm2niix:
        data, affine_ras = dcm2niix_order(data, affine_lps, acquisition_3d=acquisition_3d)  # a view: nibabel
        # writes flipped and transposed views as they are, slab by slab, without a whole-volume copy
    else:
        affine_ras = LPS_TO_RAS @ affine_lps
    image = nib.Nifti1Image(data, affine_ras)
    image.header.set_data_dtype(data.dtype)
    # Scanner-anatomical space in both forms, so every reader (ITK prefers sform) agrees.
    image.header.set_qform(affine_ras, code=1)
    image.header.set_sform(affine_ras, code=1)
    image.header.set_xyzt_units(xyz="mm")
    nib.save(image, str(path))
    return path


LABEL_RULE = ("NIfTI voxel value = the label value of the model's card (0 = background) = the RTSTRUCT's ROI "
              "Number; DICOM SEG segment numbers run 1..K over the label values present in the series, in "
              "ascending order (the standard allows no gaps), each segment's Tracking ID being its segment id")
"""The one rule between label values and DICOM numbers (README "Label values and segment numbers")."""


def label_sidecar(segments: dict[int, Any], *, present: set[int], seg_numbers: dict[int, int] | None,
                  roi_numbers: set[int] | None, model: str, model_version: str, label_map: str,
                  image: str | None, voxel_order: str, series_uid: str = "") -> dict[str, Any]:
    """The JSON that goes beside a label map: value → name, SNOMED CT codes, colour, SEG and RTSTRUCT numbers.

    ``segments`` maps every label value the model can write to its :class:`~medhub.segdb.SegmentSpec`;
    ``seg_numbers`` the values in this series' SEG to their segment numbers, ``roi_numbers`` the
    values that are ROIs of its RTSTRUCT (None: that object was not written). The colour is the
    one the SEG and RTSTRUCT recommend (sRGB).
    """
    def code(value: Any) -> dict[str, str] | None:
        return None if value is None else {"value": value.value, "scheme": value.scheme, "meaning": value.meaning}

    labels: dict[str, Any] = {"0": {"id": "BACKGROUND", "name": "background"}}
    for value, spec in sorted(segments.items()):
        labels[str(value)] = {
            "id": spec.id, "name": spec.name, "category": code(spec.category), "type": code(spec.type),
            "modifier": code(spec.modifier), "colour": [int(c) for c in spec.color], "present": value in present,
            "seg_segment_number": (seg_numbers or {}).get(value),
            "rtstruct_roi_number": value if roi_numbers is not None and value in roi_numbers else None,
        }
    return {"format": "medhub-labels/1", "model": model, "model_version": model_version,
            "series_instance_uid": series_uid, "label_map": label_map, "image": image, "voxel_order": voxel_order,
            "rule": LABEL_RULE, "labels": labels}
