"""The in-memory image a model sees, and how its voxels map back to the source DICOM.

Conventions, stated once here and nowhere else:

* ``Volume.array`` is indexed ``[x, y, z]`` = ``[column, row, slice]`` (nibabel's order).
* ``Volume.affine_lps`` maps ``(x, y, z, 1)`` voxel indices to millimetres in the DICOM
  patient coordinate system (LPS). ``Volume.affine_ras`` is the same for NIfTI (RAS).
* Values are in modality units: CT in Hounsfield units after rescale slope/intercept.

When the source slices do not form a regular orthogonal grid (gantry tilt, uneven spacing),
the loader resamples onto one and keeps a :class:`SourceGrid` so the label map can be
brought back onto the real source planes: any SEG/RTSTRUCT references the real instances
with their real geometry.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
from pydicom.dataset import Dataset

LPS_TO_RAS = np.diag([-1.0, -1.0, 1.0, 1.0])


@dataclass
class SourcePlane:
    """One image plane of the source: a single-frame instance or one frame of a multi-frame one."""

    dataset: Dataset  # header (no pixels) of the instance this plane comes from
    frame_number: int | None  # 1-based frame in a multi-frame instance, None for single-frame
    position: np.ndarray  # ImagePositionPatient (3,), LPS mm, of the plane's first voxel


@dataclass
class SourceGrid:
    """The source planes in slice order (increasing ``z`` of the volume) and their geometry.

    ``orientation`` is ImageOrientationPatient (6,), ``pixel_spacing`` is (row spacing,
    column spacing) as in DICOM. ``resampled`` says whether ``Volume.array`` lies on a grid
    different from these planes (then labels must be resampled back with
    :func:`medhub.data.geometry.labels_to_source`).
    ``referenceable`` is False when the source lacks the UIDs a SEG must reference; the
    pipeline then writes NIfTI only and ``unreferenceable_reason`` says why.
    """

    planes: list[SourcePlane]
    orientation: np.ndarray
    pixel_spacing: tuple[float, float]
    rows: int
    columns: int
    resampled: bool = False
    referenceable: bool = True
    unreferenceable_reason: str = ""

    @property
    def datasets(self) -> list[Dataset]:
        """Unique source datasets, in plane order (what highdicom's ``source_images`` wants)."""
        seen: dict[int, Dataset] = {}
        for plane in self.planes:
            seen.setdefault(id(plane.dataset), plane.dataset)
        return list(seen.values())


@dataclass
class Volume:
    """Voxels + geometry + where they came from."""

    array: np.ndarray
    affine_lps: np.ndarray
    source: SourceGrid | None = None
    modality: str = ""
    findings: list[str] = field(default_factory=list)  # what the loader corrected, for the report
    metadata: dict[str, Any] = field(default_factory=dict)

    @property
    def affine_ras(self) -> np.ndarray:
        return LPS_TO_RAS @ self.affine_lps

    @property
    def spacing(self) -> tuple[float, float, float]:
        """Voxel size along x, y, z in mm."""
        x, y, z = (float(v) for v in np.linalg.norm(self.affine_lps[:3, :3], axis=0))
        return x, y, z

    @property
    def voxel_volume_ml(self) -> float:
        """The volume of one voxel in millilitres (1 ml = 1000 mm³), for volumes of segments."""
        return abs(float(np.linalg.det(self.affine_lps[:3, :3]))) / 1000.0

    @property
    def shape(self) -> tuple[int, ...]:
        return tuple(self.array.shape)
