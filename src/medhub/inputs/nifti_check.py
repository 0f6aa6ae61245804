"""Is a NIfTI file what the model needs? The checks DICOM gets from its headers, made where a NIfTI can tell.

A NIfTI has no Modality tag. What can tell it, in this order:

1. **a JSON sidecar** next to it (BIDS, as dcm2niix writes it: ``scan.nii.gz`` + ``scan.json``)
   whose ``Modality`` is ``CT``, ``MR``, ``PT``, ...;
2. **the intensities**: CT in Hounsfield units has air at about -1000 HU (outside the body, in the
   lungs and bowel), so at least 0.5 % of voxels between -1100 and -900 HU say "CT"; no value below
   0 says "not CT in Hounsfield units" (a CT in HU always has air and fat below 0; an MR or a CT
   stored without its rescale has none). Anything else tells nothing.

With the model's input rule (its card's ``mod=``): a modality the model does not take is refused
with the evidence, a matching one is noted as checked, and when nothing tells, the input runs but is
marked **unchecked input** (in the report's notes and warnings, and on stderr), so a brain model on
an abdominal CT, or a CT model on an MR, never ends in a silent success. The dimensions are checked
against ``min_slices`` (the shortest axis) and a constant image is refused.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from medhub.data.volume import Volume
from medhub.errors import SeriesSkipped
from medhub.inputs.query import DataTypeQuery

AIR_HU = (-1100.0, -900.0)
AIR_FRACTION = 0.005  # of voxels in AIR_HU: CT in Hounsfield units
_SAMPLE = 2_000_000  # voxels looked at (an evenly strided subsample of larger volumes)


@dataclass(frozen=True)
class NiftiCheck:
    checked: bool  # False: nothing told the modality; the input runs marked "unchecked input"
    note: str  # what was checked and how, or why it could not be (for the report)


def nifti_path_stem(path: Path) -> str:
    name = path.name
    for suffix in (".nii.gz", ".nii"):
        if name.lower().endswith(suffix):
            return name[: -len(suffix)]
    return path.stem


def check_nifti(volume: Volume, path: Path, query: DataTypeQuery, min_slices: int, model: str) -> NiftiCheck:
    """Check a loaded NIfTI against the model's input rule; raise :class:`SeriesSkipped` to refuse it."""
    shape = tuple(int(n) for n in volume.array.shape)
    if min(shape) < max(min_slices, 2):
        raise SeriesSkipped(f"too few slices: the shortest axis of {'x'.join(map(str, shape))} has {min(shape)} "
                            f"(model needs at least {max(min_slices, 2)})")
    sample = _sample(volume.array)
    low, high = float(sample.min()), float(sample.max())
    if low == high:
        raise SeriesSkipped(f"every voxel is {low:g}: an empty image")
    needs = _required_modalities(query)
    sidecar, sidecar_name = _sidecar_modality(path)
    looks, evidence = _intensity_evidence(sample, low)
    wanted = " or ".join(sorted(needs)) if needs else ""
    if not needs:
        return NiftiCheck(True, "the model takes any modality")
    if sidecar:
        if sidecar not in needs:
            raise SeriesSkipped(f"its sidecar {sidecar_name} says Modality {sidecar}; model {model} needs {wanted}")
        if sidecar == "CT" and looks == "not HU":
            raise SeriesSkipped(f"its sidecar {sidecar_name} says CT, but {evidence}: model {model} needs CT in "
                                "Hounsfield units")
        return NiftiCheck(True, f"modality {sidecar} from its sidecar {sidecar_name}")
    if looks == "CT":
        if "CT" in needs:
            return NiftiCheck(True, f"CT in Hounsfield units by its intensities ({evidence})")
        raise SeriesSkipped(f"its intensities are CT in Hounsfield units ({evidence}); model {model} needs {wanted}")
    if looks == "not HU" and needs == {"CT"}:
        raise SeriesSkipped(f"{evidence}, so not CT in Hounsfield units (air is -1000 HU); model {model} needs CT")
    return NiftiCheck(False, f"unchecked input: nothing tells the modality of {path.name} (no JSON sidecar with "
                             f"Modality; {evidence}); model {model} needs {wanted}: check the result")


def _required_modalities(query: DataTypeQuery) -> set[str]:
    for condition in query.conditions:
        if condition.key.lower() in ("mod", "modality") and condition.op == "=":
            return {value.upper() for value in condition.values}
    return set()


def _sidecar_modality(path: Path) -> tuple[str, str]:
    """(Modality, file name) from a BIDS sidecar next to the file; ('', '') when there is none or it says none."""
    sidecar = path.with_name(nifti_path_stem(path) + ".json")
    try:
        data = json.loads(sidecar.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return "", ""
    value = data.get("Modality") if isinstance(data, dict) else None
    return (str(value).strip().upper(), sidecar.name) if isinstance(value, str) and value.strip() else ("", "")


def _intensity_evidence(sample: np.ndarray, low: float) -> tuple[str, str]:
    """('CT', why), ('not HU', why) or ('', what the intensities show)."""
    air = float(((sample >= AIR_HU[0]) & (sample <= AIR_HU[1])).mean())
    if air >= AIR_FRACTION:
        return "CT", f"{100 * air:.1f} % of voxels at air, -1100..-900 HU"
    if low >= 0:
        return "not HU", "no value is below 0"
    return "", f"its intensities ({low:g} to {float(sample.max()):g}, {100 * air:.2f} % at -1100..-900) are not " \
               "conclusive"


def _sample(array: np.ndarray) -> np.ndarray:
    step = max(1, int(round((array.size / _SAMPLE) ** (1 / 3))))
    return np.asarray(array[::step, ::step, ::step], dtype=np.float64)
