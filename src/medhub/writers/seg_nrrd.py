"""Label map → ``.seg.nrrd``, 3D Slicer's own segmentation file, written with slicerio.

Slicer opens a ``.seg.nrrd`` as a segmentation node directly (drag and drop, or
``slicer.util.loadSegmentation``): one NRRD volume of label values plus per-segment header
fields (``SegmentN_Name``, ``_Color``, ``_LabelValue``, ``_Tags`` ...). Each segment carries its
DICOM terminology in Slicer's terminology-entry string form (PS3.16 CID 7150 category, CID 7151
type, and the laterality as type modifier, all SNOMED CT codes from the segment database), so
Slicer shows the same names, colours and codes as in the DICOM SEG.

Geometry: the voxels are the model's label map on the volume's grid (``Volume.array`` order
``[x, y, z]`` with ``Volume.affine_lps``); NRRD's ``space directions`` / ``space origin`` hold
that affine in LPS. For an ordinary series this is exactly the source's geometry; where the
loader resampled a tilted or unevenly spaced series onto a regular grid the file lies on that
grid, in the same patient space, so it overlays the source in Slicer all the same.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from medhub.errors import MedhubError
from medhub.segdb import Code, SegmentSpec

TERMINOLOGY_CONTEXT = "Segmentation category and type - DICOM master list"
"""The terminology context Slicer names for DICOM's segmentation codes (CID 7150 / 7151)."""
ANATOMIC_CONTEXT = "Anatomic codes - DICOM master list"


def _triplet(code: Code | None) -> list[str]:
    """Slicer's ``scheme^value^meaning`` as a list (empty fields when there is no code)."""
    return ["", "", ""] if code is None else [code.scheme, code.value, code.meaning]


def slicer_terminology(spec: SegmentSpec) -> dict[str, object]:
    """A segment's codes as slicerio's terminology dict (written as Slicer's ``TerminologyEntry`` tag)."""
    terminology: dict[str, object] = {
        "contextName": TERMINOLOGY_CONTEXT,
        "category": _triplet(spec.category),
        "type": _triplet(spec.type),
        "anatomicContextName": ANATOMIC_CONTEXT,
    }
    if spec.modifier is not None:
        terminology["typeModifier"] = _triplet(spec.modifier)
    return terminology


def _extent(mask: np.ndarray) -> list[int]:
    """``[i0, i1, j0, j1, k0, k1]``: the segment's bounding box in voxels, as Slicer's ``SegmentN_Extent``."""
    extent: list[int] = []
    for axis in range(3):
        other = tuple(a for a in range(3) if a != axis)
        hits = np.flatnonzero(mask.any(axis=other))
        extent += [int(hits[0]), int(hits[-1])]
    return extent


def write_seg_nrrd(labels_xyz: np.ndarray, affine_lps: np.ndarray, segments: dict[int, SegmentSpec], path: Path,
                   *, fields: dict[str, str] | None = None) -> list[int]:
    """Write the label map ``labels_xyz`` (``[x, y, z]``) with its LPS affine as a Slicer segmentation.

    ``segments`` maps label values to their segment descriptions; every label value with voxels
    becomes one segment (values without voxels are left out, as in the DICOM SEG). ``fields`` are
    extra ``key:=value`` header fields (provenance). Returns the label values written.
    """
    import slicerio

    labels = np.asarray(labels_xyz)
    if labels.ndim != 3:
        raise MedhubError(f"{Path(path).name}: expected a 3D label map, got shape {labels.shape}")
    affine = np.asarray(affine_lps, dtype=np.float64)
    if affine.shape != (4, 4) or not np.all(np.isfinite(affine)) or abs(np.linalg.det(affine[:3, :3])) < 1e-12:
        raise MedhubError(f"{Path(path).name}: the volume's affine is not a finite, invertible 4x4 matrix")
    if labels.size and (labels.min() < 0 or labels.max() > np.iinfo(np.uint16).max):
        raise MedhubError(f"{Path(path).name}: label values must lie in 0..65535")
    present = sorted(set(np.unique(labels).tolist()) - {0})
    unknown = [value for value in present if value not in segments]
    if unknown:
        raise MedhubError(f"{Path(path).name}: label values {unknown} have no segment description")
    voxels = labels.astype(np.uint8 if not present or present[-1] <= 255 else np.uint16, copy=False)
    described = []
    for value in present:
        spec = segments[value]
        described.append({
            "id": spec.id,
            "name": spec.name,
            "labelValue": int(value),
            "layer": 0,
            "color": [round(channel / 255.0, 6) for channel in spec.color],
            "terminology": slicer_terminology(spec),
            "extent": _extent(voxels == value),
        })
    segmentation = {
        "voxels": voxels,
        "ijkToLPS": affine,
        "encoding": "gzip",
        "containedRepresentationNames": ["Binary labelmap"],
        "masterRepresentation": "Binary labelmap",
        "referenceImageExtentOffset": [0, 0, 0],
        "segments": described,
        **(fields or {}),
    }
    slicerio.write_segmentation(str(path), segmentation, compression_level=1)
    return present
