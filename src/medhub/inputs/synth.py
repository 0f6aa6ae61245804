"""Turn a volume (array + affine) into a valid single-frame DICOM series.

Tests need DICOM made from real volumes (NIfTI test data, the MNI template for ``medhub
sample``); this writes one MR Image Storage or CT Image Storage file per ``z`` slice, with
the geometry taken from the affine and every Type 1 / Type 2 attribute of those IODs
present, so that dciodvfy reports no errors and the scan/load steps see a normal series.

Array order and affine follow :mod:`medhub.data.volume`: ``array[x, y, z]`` (column, row, slice)
and ``affine_lps`` maps voxel indices to LPS millimetres.
"""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import numpy as np
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import (
    PYDICOM_IMPLEMENTATION_UID,
    UID,
    CTImageStorage,
    ExplicitVRLittleEndian,
    MRImageStorage,
    generate_uid,
)

from medhub import __version__
from medhub.errors import MedhubError

_SOP_CLASSES = {"MR": MRImageStorage, "CT": CTImageStorage}
_INT16 = np.iinfo(np.int16)


def _ds(value: float) -> str:
    """The most precise DS string of at most 16 characters (PS3.5 6.2); rounding noise becomes 0.

    pydicom's ``format_number_as_ds`` can return 17 characters (e.g. for 100.00000000000001).
    """
    value = float(value)
    if abs(value) < 1e-12:
        return "0"
    for digits in range(16, 0, -1):
        text = f"{value:.{digits}g}"
        if len(text) <= 16:
            return text
    raise MedhubError(f"cannot write DICOM: {value} does not fit a decimal string")


def _encode(array: np.ndarray) -> tuple[np.ndarray, str, str]:
    """Stored int16 values plus (RescaleSlope, RescaleIntercept) as DS strings.

    Integer data that fit int16 are stored as they are (slope 1, intercept 0). Anything else
    (float T1, probabilities) is scaled to the full int16 range with a slope and intercept
    chosen so that ``stored * slope + intercept`` reproduces the data to 1/65534 of its range;
    the stored values are computed from the *written* DS strings so readers decode exactly that.
    """
    if not np.all(np.isfinite(array)):
        raise MedhubError("cannot write DICOM: the volume contains NaN or infinite values")
    lo, hi = float(array.min()), float(array.max())
    is_integer = np.issubdtype(array.dtype, np.integer) or bool(np.all(np.equal(np.mod(array, 1), 0)))
    if is_integer and lo >= _INT16.min and hi <= _INT16.max:
        return array.astype(np.int16), "1", "0"
    slope_text = _ds((hi - lo) / (_INT16.max - _INT16.min - 1) if hi > lo else 1.0)
    intercept_text = _ds((hi + lo) / 2.0)
    slope, intercept = float(slope_text), float(intercept_text)
    stored = np.rint((array.astype(np.float64) - intercept) / slope)
    return np.clip(stored, _INT16.min, _INT16.max).astype(np.int16), slope_text, intercept_text


def _unit(vector: np.ndarray, what: str) -> np.ndarray:
    norm = float(np.linalg.norm(vector))
    if norm == 0:
        raise MedhubError(f"cannot write DICOM: the affine's {what} axis has zero length")
    return vector / norm


def write_dicom_series(
    array_xyz: np.ndarray,
    affine_lps: np.ndarray,
    out_dir: Path,
    *,
    modality: str = "MR",
    series_description: str = "medhub synthetic series",
    patient_id: str = "MEDHUB-SYNTH",
    patient_name: str = "Synthetic^Volume",
    study_uid: str | None = None,
    series_uid: str | None = None,
    frame_of_reference_uid: str | None = None,
    series_number: int = 1,
    study_description: str = "medhub synthetic study",
    body_part: str = "",
    laterality: str | None = None,
    image_type: tuple[str, ...] | None = None,
    filename_prefix: str = "IM",
    uid_seed: str | None = None,
    acquired: dt.datetime | None = None,
) -> list[Path]:
    """Write ``array_xyz`` as one DICOM file per ``z`` slice into ``out_dir``; return the paths.

    Images are marked DERIVED\\PRIMARY (made from another volume, not by a scanner), with
    AXIAL / OTHER as value 3 from the slice normal unless ``image_type`` is given. UIDs not
    given are generated; pass ``study_uid`` to put several series in one study. Laterality is
written empty when no ``body_part`` is given, and omitted for a (presumed unpaired) body part
unless ``laterality`` is given. MR files carry
    Rescale Slope/Intercept only for non-integer data (dciodvfy then warns, as for many
    Philips scanners; the values are needed to keep e.g. a float T1 exact).

    ``uid_seed`` makes every UID not given (study, series, frame of reference, each instance) a
    function of the seed, and ``acquired`` fixes the dates and times (default: now): with both,
    the same volume gives byte-identical files on every run, so results that reference them
    (a SEG) stay valid across runs and two runs can be compared file by file.
    """
    modality = modality.upper()
    if modality not in _SOP_CLASSES:
        raise MedhubError(f"cannot write DICOM: modality {modality!r} not supported (use one of MR, CT)")
    array = np.asarray(array_xyz)
    if array.ndim != 3 or min(array.shape) < 1:
        raise MedhubError(f"cannot write DICOM: expected a 3D array [x, y, z], got shape {array.shape}")
    affine = np.asarray(affine_lps, dtype=np.float64)
    if affine.shape != (4, 4):
        raise MedhubError(f"cannot write DICOM: expected a 4x4 affine, got shape {affine.shape}")

    stored, slope, intercept = _encode(array)
    row_dir = _unit(affine[:3, 0], "x")  # direction of increasing column index
    col_dir = _unit(affine[:3, 1], "y")  # direction of increasing row index
    spacing = np.linalg.norm(affine[:3, :3], axis=0)
    normal = np.cross(row_dir, col_dir)
    if image_type is None:
        image_type = ("DERIVED", "PRIMARY", "AXIAL" if abs(normal[2]) > 0.5 else "OTHER")
    slice_step = abs(float(np.dot(affine[:3, 2], normal)))  # distance between planes along the normal

    lo, hi = np.percentile(array, [1, 99]) if array.size > 1 else (array.min(), array.max())
    center, width = (float(hi) + float(lo)) / 2, max(float(hi) - float(lo), 1.0)

    now = acquired or dt.datetime.now()
    date, time = now.strftime("%Y%m%d"), now.strftime("%H%M%S")

    def new_uid(*parts: object) -> UID:
        if uid_seed is None:
            return generate_uid()
        return generate_uid(entropy_srcs=[uid_seed, *(str(part) for part in parts)])

    study_uid = study_uid or new_uid("study")
    series_uid = series_uid or new_uid("series", series_number)
    frame_of_reference_uid = frame_of_reference_uid or new_uid("frame-of-reference")
    sop_class = _SOP_CLASSES[modality]

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = []
    for k in range(array.shape[2]):
        position = affine @ np.array([0.0, 0.0, float(k), 1.0])
        sop_uid = new_uid("instance", series_uid, k)

        meta = FileMetaDataset()
        meta.MediaStorageSOPClassUID = sop_class
        meta.MediaStorageSOPInstanceUID = sop_uid
        meta.TransferSyntaxUID = ExplicitVRLittleEndian
        meta.ImplementationClassUID = PYDICOM_IMPLEMENTATION_UID

        ds = Dataset()
        ds.file_meta = meta
        ds.SpecificCharacterSet = "ISO_IR 100"
        ds.SOPClassUID = sop_class
        ds.SOPInstanceUID = sop_uid
        ds.InstanceCreationDate, ds.InstanceCreationTime = date, time
        # Patient
        ds.PatientName = patient_name
        ds.PatientID = patient_id
        ds.PatientBirthDate = ""
        ds.PatientSex = ""
        # General Study
        ds.StudyInstanceUID = study_uid
        ds.StudyDate, ds.StudyTime = date, time
        ds.ReferringPhysicianName = ""
        ds.StudyID = "1"
        ds.AccessionNumber = ""
        ds.StudyDescription = study_description
        # General Series
        ds.Modality = modality
        ds.SeriesInstanceUID = series_uid
        ds.SeriesNumber = series_number
        ds.SeriesDate, ds.SeriesTime = date, time
        ds.SeriesDescription = series_description
        ds.PatientPosition = "HFS"
        if laterality is not None:
            ds.Laterality = laterality
        elif not body_part:
            ds.Laterality = ""  # Type 2C: unknown body part, so laterality is unknown (empty)
        if body_part:
            ds.BodyPartExamined = body_part
        # Frame of Reference, General Equipment
        ds.FrameOfReferenceUID = frame_of_reference_uid
        ds.PositionReferenceIndicator = ""
        ds.Manufacturer = "medhub"
        ds.SoftwareVersions = f"medhub {__version__}"
        # General Image / Acquisition
        ds.InstanceNumber = k + 1
        ds.AcquisitionNumber = 1
        ds.ContentDate, ds.ContentTime = date, time
        ds.ImageType = list(image_type)
        ds.DerivationDescription = "synthesised by medhub.inputs.synth from a volume (not acquired by a scanner)"
        ds.BurnedInAnnotation = "NO"
        # Image Plane
        ds.ImagePositionPatient = [_ds(v) for v in position[:3]]
        ds.ImageOrientationPatient = [_ds(v) for v in (*row_dir, *col_dir)]
        ds.PixelSpacing = [_ds(spacing[1]), _ds(spacing[0])]  # (between rows, between columns)
        ds.SliceThickness = _ds(slice_step)
        ds.SliceLocation = _ds(float(np.dot(position[:3], normal)))
        # Image Pixel
        ds.SamplesPerPixel = 1
        ds.PhotometricInterpretation = "MONOCHROME2"
        ds.Rows, ds.Columns = int(array.shape[1]), int(array.shape[0])
        ds.BitsAllocated, ds.BitsStored, ds.HighBit = 16, 16, 15
        ds.PixelRepresentation = 1
        # Modality LUT + VOI LUT (real values = stored * slope + intercept)
        if modality == "CT" or (slope, intercept) != ("1", "0"):
            ds.RescaleIntercept, ds.RescaleSlope = intercept, slope
        if modality == "CT":
            ds.RescaleType = "HU"
        ds.WindowCenter, ds.WindowWidth = _ds(center), _ds(width)
        if modality == "MR":
            ds.ScanningSequence = "RM"  # research mode: no real sequence produced these values
            ds.SequenceVariant = "NONE"
            ds.ScanOptions = ""
            ds.MRAcquisitionType = "3D"
            ds.RepetitionTime = ""
            ds.EchoTime = ""
            ds.EchoTrainLength = ""
            ds.MagneticFieldStrength = ""
            ds.ImagedNucleus = "1H"
        else:
            ds.KVP = ""
        ds.PixelData = np.ascontiguousarray(stored[:, :, k].T).astype("<i2").tobytes()

        path = out_dir / f"{filename_prefix}{k + 1:05d}.dcm"
        ds.save_as(path, enforce_file_format=True)
        paths.append(path)
    return paths
