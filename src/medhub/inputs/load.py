"""Check a series' geometry from its headers, then load it into a :class:`~medhub.data.volume.Volume`.

``check_series`` is cheap (headers only) and says what the loader will correct (duplicates,
gantry tilt, uneven spacing) or why the series cannot be one 3D volume (4D, missing slices,
mixed geometry, ...). ``load_series`` runs the same plan, decodes the pixels, applies the
modality rescale and, where needed, resamples onto a regular orthogonal grid, keeping the real
source planes in :class:`~medhub.data.volume.SourceGrid` so results can reference them. It never
silently stretches: a stack is either regular within a twentieth of a voxel, corrected and
reported, or skipped with a reason.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pydicom
from pydicom.dataset import Dataset
from pydicom.pixels import get_decoder
from pydicom.uid import UID, ExplicitVRLittleEndian, ImplicitVRLittleEndian

from medhub.data import geometry
from medhub.data.series import Instance, Series
from medhub.data.volume import SourceGrid, SourcePlane, Volume
from medhub.errors import MedhubError, SeriesSkipped

SUPPORTED_PHOTOMETRIC = {"MONOCHROME1", "MONOCHROME2"}
ORIENTATION_TOLERANCE = 1e-3  # direction cosines that differ by less are the same orientation
# Header elements that differ between two exports of the very same image.
VOLATILE_TAGS = {"SOPInstanceUID", "InstanceNumber", "InstanceCreationDate", "InstanceCreationTime"}


@dataclass
class SeriesCheck:
    """What the loader will do with a series, known from headers alone.

    ``findings`` are corrections the loader makes (for the report); ``skip_reason`` is set
    when the series cannot be loaded as one 3D volume.
    """

    findings: list[str] = field(default_factory=list)
    skip_reason: str | None = None
    images: int = 0  # image planes in the series (frames of multi-frame files count)
    planes: int = 0  # planes the volume is built from, after removing duplicates

    @property
    def ok(self) -> bool:
        return self.skip_reason is None


@dataclass
class _Frame:
    """One image plane as the headers describe it."""

    instance: Instance
    frame: int | None  # 1-based for enhanced multi-frame files, None for single-frame
    position: np.ndarray | None
    orientation: np.ndarray | None
    pixel_spacing: tuple[float, float] | None
    slope: float
    intercept: float


@dataclass
class _Plan:
    """The outcome of the header check, shared by ``check_series`` and ``load_series``."""

    check: SeriesCheck
    frames: list[_Frame] = field(default_factory=list)  # kept planes, sorted along the normal
    twins: list[tuple[_Frame, _Frame]] = field(default_factory=list)  # duplicates: pixels must match
    orientation: np.ndarray | None = None
    pixel_spacing: tuple[float, float] = (1.0, 1.0)
    rows: int = 0
    columns: int = 0
    step: float = 0.0  # slice step (regular) or target step (resampled), mm
    resample: bool = False


class _Skip(Exception):
    """Internal: ends the header check with a skip reason."""


def check_series(series: Series) -> SeriesCheck:
    """Headers-only geometry QA: the corrections ``load_series`` will make, or why it will skip."""
    return _plan(series).check


def load_series(series: Series) -> Volume:
    """Decode a series into a Volume in modality units, corrected onto a regular grid if needed.

    Raises :class:`SeriesSkipped` with a one-line reason for what :func:`check_series` rejects
    and for files whose pixels cannot be read or decoded.
    """
    plan = _plan(series)
    if plan.check.skip_reason is not None:
        raise SeriesSkipped(plan.check.skip_reason)
    pixels = _decode(plan.frames + [twin for pair in plan.twins for twin in pair], plan.rows, plan.columns)
    for first, second in plan.twins:
        if not np.array_equal(pixels[_key(first)], pixels[_key(second)]):
            raise SeriesSkipped(
                f"different images at the same position ({first.instance.path.name}, "
                f"{second.instance.path.name}) with otherwise identical headers: not one 3D volume"
            )
    planes = [pixels[_key(f)] for f in plan.frames]
    orientation = plan.orientation
    assert orientation is not None
    positions = np.array([f.position for f in plan.frames])
    normal = geometry.slice_normal(orientation)
    if plan.resample:
        grid = geometry.regular_grid(positions, orientation, plan.pixel_spacing, plan.rows, plan.columns, plan.step)
        scaled = [
            p.astype(np.float32) * np.float32(f.slope) + np.float32(f.intercept)
            for p, f in zip(planes, plan.frames, strict=True)
        ]
        fill = float(min(p.min() for p in scaled))
        array = geometry.resample_planes([p.T for p in scaled], positions @ normal, grid, fill)
        affine = grid.affine
    else:
        array = _stack(planes, plan.frames)
        affine = geometry.affine_from_planes(orientation, plan.pixel_spacing, positions[0], normal * plan.step)
    source = SourceGrid(
        planes=[SourcePlane(dataset=f.instance.header, frame_number=f.frame, position=f.position) for f in plan.frames],
        orientation=orientation,
        pixel_spacing=plan.pixel_spacing,
        rows=plan.rows,
        columns=plan.columns,
        resampled=plan.resample,
    )
    absent = missing_uids(series)
    if absent:
        source.referenceable = False
        source.unreferenceable_reason = (
            f"source files carry no {'/'.join(absent)}; a DICOM SEG cannot reference them (NIfTI written instead)"
        )
    return Volume(
        array=array,
        affine_lps=affine,
        source=source,
        modality=series.modality or str(series.first_header.get("Modality", "")),
        findings=list(plan.check.findings),
        metadata={"series_key": series.key, "series_description": series.description},
    )


# ---------------------------------------------------------------- header check


def _plan(series: Series) -> _Plan:
    check = SeriesCheck()
    plan = _Plan(check=check)
    try:
        _check_into(series, plan)
    except _Skip as skip:
        check.skip_reason = str(skip)
    return plan


def _check_into(series: Series, plan: _Plan) -> None:
    if not series.instances:
        raise _Skip("no instances")
    for instance in series.instances:
        _check_image_instance(instance)
    frames = [frame for instance in series.instances for frame in _frames_of(instance)]
    plan.check.images = len(frames)
    _check_consistency(series.instances, frames)
    plan.orientation = np.asarray(frames[0].orientation, dtype=float)
    plan.pixel_spacing = frames[0].pixel_spacing  # type: ignore[assignment]
    plan.rows, plan.columns = int(series.instances[0].header.Rows), int(series.instances[0].header.Columns)
    if len(frames) == 1:
        raise _Skip("single slice")
    normal = geometry.slice_normal(plan.orientation)
    order = geometry.sort_by_position(np.array([f.position for f in frames]), normal)
    groups = _group_positions([frames[i] for i in order])
    kept, twins = _resolve_duplicates(groups, plan.check)
    plan.frames, plan.twins = kept, twins
    plan.check.planes = len(kept)
    if len(kept) == 1:
        raise _Skip("single slice (after removing duplicates)")
    positions = np.array([f.position for f in kept])
    spacing = geometry.analyse_spacing(positions @ normal)
    if spacing.regular:
        plan.step = spacing.step
    elif spacing.uneven:
        plan.step = spacing.min_gap
        plan.check.findings.append(
            f"uneven slice spacing {spacing.min_gap:.2f}–{spacing.max_gap:.2f} mm: resampled to {plan.step:.2f} mm"
        )
    else:
        index, gap = spacing.missing[0]
        where = f"z={spacing.locations[index]:.1f}..{spacing.locations[index + 1]:.1f} mm along the slice normal"
        count = "" if len(spacing.missing) == 1 else f" (and {len(spacing.missing) - 1} more gaps)"
        raise _Skip(f"missing slice: gap of {gap:.2f} mm at {where}{count}, spacing {spacing.dominant:.2f} mm")
    tilted = geometry.is_tilted(positions, plan.orientation, plan.pixel_spacing)
    if tilted:
        angle = geometry.tilt_angle(positions, plan.orientation)
        plan.check.findings.append(f"gantry tilt {angle:.1f}°: resampled onto an orthogonal grid")
    plan.resample = tilted or not spacing.regular


def _check_image_instance(instance: Instance) -> None:
    header = instance.header
    name = instance.path.name
    if "Rows" not in header or "Columns" not in header:
        raise _Skip(f"no pixel data: {name} is not an image ({_sop_name(instance.sop_class_uid)})")
    photometric = str(header.get("PhotometricInterpretation", "MONOCHROME2"))
    if photometric not in SUPPORTED_PHOTOMETRIC:
        raise _Skip(f"unsupported photometric interpretation {photometric} ({name})")
    if int(header.get("SamplesPerPixel", 1)) != 1:
        raise _Skip(f"unsupported samples per pixel {header.SamplesPerPixel} ({name})")


def _check_consistency(instances: list[Instance], frames: list[_Frame]) -> None:
    sizes = {(int(i.header.Rows), int(i.header.Columns)) for i in instances}
    if len(sizes) > 1:
        listed = ", ".join(f"{r}x{c}" for r, c in sorted(sizes))
        raise _Skip(f"inconsistent rows/columns across instances ({listed})")
    for frame in frames:
        if frame.position is None or frame.orientation is None:
            where = frame.instance.path.name + (f" frame {frame.frame}" if frame.frame else "")
            raise _Skip(f"no ImagePositionPatient/ImageOrientationPatient in {where}: not a cross-sectional image")
        if frame.pixel_spacing is None:
            raise _Skip(f"no PixelSpacing in {frame.instance.path.name}")
    reference = np.asarray(frames[0].orientation)
    if any(np.abs(np.asarray(f.orientation) - reference).max() > ORIENTATION_TOLERANCE for f in frames):
        raise _Skip("inconsistent orientation across instances (localizer or several stacks in one series?)")
    spacings = np.array([f.pixel_spacing for f in frames], dtype=float)
    if np.abs(spacings - spacings[0]).max() > 1e-3 * spacings[0].max():
        raise _Skip(f"mixed pixel spacing {spacings.min():.3f}–{spacings.max():.3f} mm")


def _group_positions(frames: list[_Frame]) -> list[list[_Frame]]:
    """Runs of sorted frames at the same 3D position."""
    groups: list[list[_Frame]] = []
    for frame in frames:
        if groups and np.linalg.norm(frame.position - groups[-1][0].position) < geometry.SAME_POSITION_MM:
            groups[-1].append(frame)
        else:
            groups.append([frame])
    return groups


def _resolve_duplicates(
    groups: list[list[_Frame]], check: SeriesCheck
) -> tuple[list[_Frame], list[tuple[_Frame, _Frame]]]:
    """Keep one frame per position when the extra ones are copies; raise a 4D skip otherwise."""
    same_instance = 0
    unique_groups: list[list[_Frame]] = []
    for group in groups:
        seen: dict[tuple[str, int | None], _Frame] = {}
        for frame in group:
            key = (frame.instance.sop_instance_uid, frame.frame)
            if key[0] and key in seen:
                same_instance += 1
            else:
                seen[key] = frame
        unique_groups.append(list(seen.values()))
    crowded = [g for g in unique_groups if len(g) > 1]
    twins: list[tuple[_Frame, _Frame]] = []
    if crowded:
        if all(_same_headers(g) for g in crowded):
            twins = [(g[0], other) for g in crowded for other in g[1:]]
        else:
            images = sum(len(g) for g in unique_groups)
            if len({len(g) for g in unique_groups}) == 1:
                raise _Skip(f"4D: {images} images at {len(unique_groups)} positions")
            raise _Skip(
                f"{len(crowded)} of {len(unique_groups)} positions hold several different images "
                f"({images} images): not one 3D volume"
            )
    if same_instance:
        check.findings.append(f"{same_instance} duplicate positions removed (same SOP instance in several files)")
    if twins:
        check.findings.append(f"{len(twins)} duplicate positions removed (identical headers)")
    return [g[0] for g in unique_groups], twins


def _same_headers(group: list[_Frame]) -> bool:
    """True when frames at one position look like copies of one image (single-frame files only)."""
    if any(f.frame is not None for f in group):
        return False  # frames of an enhanced file at one position are echoes, phases, ...
    fingerprints = {_fingerprint(f.instance.header) for f in group}
    return len(fingerprints) == 1


def _fingerprint(header: Dataset) -> tuple[tuple[int, str], ...]:
    return tuple((int(e.tag), str(e.value)) for e in header if e.keyword not in VOLATILE_TAGS and e.tag.group != 0x0002)


# ---------------------------------------------------------------- frames from headers


def _frames_of(instance: Instance) -> list[_Frame]:
    header = instance.header
    count = max(int(instance.number_of_frames or 1), int(header.get("NumberOfFrames", 1) or 1))
    per_frame = header.get("PerFrameFunctionalGroupsSequence")
    shared_seq = header.get("SharedFunctionalGroupsSequence")
    if per_frame is None and shared_seq is None:
        if count > 1:
            raise _Skip(f"multi-frame image without per-frame positions ({count} frames in {instance.path.name})")
        return [_frame_from(instance, None, header, None, None)]
    shared = shared_seq[0] if shared_seq else None
    items = list(per_frame) if per_frame else []
    if len(items) != count:
        raise _Skip(f"{instance.path.name}: {count} frames but {len(items)} per-frame functional groups")
    return [_frame_from(instance, i + 1, header, item, shared) for i, item in enumerate(items)]


def _frame_from(
    instance: Instance, number: int | None, header: Dataset, item: Dataset | None, shared: Dataset | None
) -> _Frame:
    def attribute(sequence: str, keyword: str) -> Any:
        for source in (item, shared):
            if source is not None and sequence in source and len(source[sequence].value) > 0:
                value = source[sequence].value[0].get(keyword)
                if value is not None:
                    return value
        return header.get(keyword)

    position = attribute("PlanePositionSequence", "ImagePositionPatient")
    orientation = attribute("PlaneOrientationSequence", "ImageOrientationPatient")
    spacing = attribute("PixelMeasuresSequence", "PixelSpacing")
    slope = attribute("PixelValueTransformationSequence", "RescaleSlope")
    intercept = attribute("PixelValueTransformationSequence", "RescaleIntercept")
    return _Frame(
        instance=instance,
        frame=number,
        position=_vector(position, 3),
        orientation=_vector(orientation, 6),
        pixel_spacing=tuple(_vector(spacing, 2)) if _vector(spacing, 2) is not None else None,  # type: ignore[arg-type]
        slope=float(slope) if slope not in (None, "") else 1.0,
        intercept=float(intercept) if intercept not in (None, "") else 0.0,
    )


def _vector(value: Any, length: int) -> np.ndarray | None:
    if value is None:
        return None
    try:
        array = np.array([float(v) for v in value], dtype=float)
    except (TypeError, ValueError):
        return None
    return array if array.size == length and np.isfinite(array).all() else None


# ---------------------------------------------------------------- pixels


def _key(frame: _Frame) -> tuple[str, int | None]:
    return (str(frame.instance.path), frame.frame)


def _decode(frames: Iterable[_Frame], rows: int, columns: int) -> dict[tuple[str, int | None], np.ndarray]:
    """Decode each needed file once; return stored pixel values per (path, frame)."""
    by_path: dict[Path, list[_Frame]] = {}
    for frame in frames:
        by_path.setdefault(frame.instance.path, []).append(frame)
    pixels: dict[tuple[str, int | None], np.ndarray] = {}
    for path, wanted in by_path.items():
        data = _read_native(path, wanted[0].instance.header)
        if data is None:
            data = _read_with_pydicom(path)
        if data.ndim == 2:
            data = data[None]
        if data.shape[1:] != (rows, columns):
            raise SeriesSkipped(
                f"{path.name}: decoded pixels {data.shape[1:]} differ from Rows/Columns {(rows, columns)}"
            )
        for frame in wanted:
            pixels[_key(frame)] = data[(frame.frame or 1) - 1]
    return pixels


def _read_with_pydicom(path: Path) -> np.ndarray:
    """The stored pixel values of any file pydicom can decode, with one-line errors."""
    try:
        dataset = pydicom.dcmread(path)
    except Exception as error:  # noqa: BLE001 - a broken file fails its series (exit code 1), not the run
        raise MedhubError(f"cannot read {path}: {_first_line(error)}") from error
    if "PixelData" not in dataset and "FloatPixelData" not in dataset and "DoubleFloatPixelData" not in dataset:
        raise SeriesSkipped(f"no pixel data in {path.name}")
    try:
        return dataset.pixel_array
    except Exception as error:  # noqa: BLE001 - decoder errors vary by plugin; the series fails with the reason
        raise MedhubError(_decode_failure(path, dataset, error)) from error


_PIXEL_DATA_TAG = b"\xe0\x7f\x10\x00"  # (7FE0,0010) little endian


def _read_native(path: Path, header: Dataset) -> np.ndarray | None:
    """Uncompressed little-endian grey-scale pixels read straight from the end of the file, or None.

    ``header`` is the scan's parse of the same file (up to the pixel data). Reading the pixels
    with ``dcmread`` would parse that header a second time: 0.25 of the 0.4 s CPU a 300-slice CT
    took. When the file ends with a Pixel Data element of exactly the size the header describes
    (the layout of nearly every uncompressed CT/MR/PET file), its value is those pixels, and
    the array is the one pydicom's ``pixel_array`` gives: same dtype, shape and values. This
    path is only taken where that holds trivially -- 8/16/32 bits allocated, one sample per
    pixel, little endian; unused high bits are corrected as pydicom does (shifted out and back,
    so signed values are sign-extended) -- and anything else (compressed or big-endian
    transfer syntax, bits to mask or sign-extend, colour, trailing elements after the pixel
    data, a file changed since the scan) returns None, for pydicom to read the whole file.
    """
    meta = getattr(header, "file_meta", None)
    syntax = meta.get("TransferSyntaxUID") if meta is not None else None
    if syntax not in (ExplicitVRLittleEndian, ImplicitVRLittleEndian):
        return None
    try:
        bits = int(header.BitsAllocated)
        signed = int(header.PixelRepresentation)
        rows, columns = int(header.Rows), int(header.Columns)
        frames = int(header.get("NumberOfFrames") or 1)
        stored = int(header.BitsStored)
        simple = (
            bits in (8, 16, 32) and 1 <= stored <= bits and signed in (0, 1)
            and int(header.get("SamplesPerPixel") or 1) == 1
            and str(header.get("PhotometricInterpretation", "")).strip() in ("MONOCHROME1", "MONOCHROME2")
        )
    except (AttributeError, TypeError, ValueError):
        return None
    if not simple or rows < 1 or columns < 1 or frames < 1:
        return None
    length = rows * columns * frames * (bits // 8)
    padded = length + (length & 1)
    if syntax == ExplicitVRLittleEndian:
        element = (_PIXEL_DATA_TAG + (b"OB" if bits == 8 else b"OW"), _PIXEL_DATA_TAG + b"OB", _PIXEL_DATA_TAG + b"OW")
        element = tuple(e + b"\0\0" + padded.to_bytes(4, "little") for e in element)
    else:
        element = (_PIXEL_DATA_TAG + padded.to_bytes(4, "little"),)
    head = len(element[0])
    try:
        with open(path, "rb") as fp:
            size = os.fstat(fp.fileno()).st_size
            if size < padded + head:
                return None
            fp.seek(size - padded - head)
            buffer = bytearray(padded + head)
            if fp.readinto(buffer) != len(buffer):
                return None
    except OSError:
        return None
    if bytes(buffer[:head]) not in element:
        return None
    dtype = np.dtype(f"{'i' if signed else 'u'}{bits // 8}").newbyteorder("<")
    data = np.frombuffer(buffer, dtype=dtype, count=rows * columns * frames, offset=head)
    data = data.astype(dtype.newbyteorder("="), copy=False)
    if stored < bits:  # pydicom's correction of the unused high bits: sign-extend (signed) or clear them
        np.left_shift(data, bits - stored, out=data)
        np.right_shift(data, bits - stored, out=data)
    return data.reshape(rows, columns) if frames == 1 else data.reshape(frames, rows, columns)


def _decode_failure(path: Path, dataset: Dataset, error: Exception) -> str:
    """Say whether a plugin is missing (and which) or the data itself is broken."""
    uid = UID(str(dataset.file_meta.get("TransferSyntaxUID", "")))
    name = uid.name if uid else "unknown transfer syntax"
    try:
        decoder = get_decoder(uid)
    except NotImplementedError:
        return f"cannot decode {path}: {name} has no pixel data decoder in pydicom ({_first_line(error)})"
    if not decoder.is_available:
        needs = "; or ".join(decoder.missing_dependencies) or "a pixel data plugin"
        return f"cannot decode {path}: {name} needs {needs} ({_first_line(error)})"
    return f"cannot decode {path}: {name} pixel data is corrupt or unsupported ({_first_line(error)})"


def _first_line(error: Exception) -> str:
    text = str(error).strip().splitlines()
    return text[0][:200] if text else type(error).__name__


def _stack(planes: list[np.ndarray], frames: list[_Frame]) -> np.ndarray:
    """Stack ``[row, col]`` planes into ``[x, y, z]`` in modality units, in the tightest exact dtype.

    Stored values stay as they are without rescale; integral slope/intercept give int16 (or
    int32 when the range needs it, as for CT in HU); anything else float32.
    """
    slopes = np.array([f.slope for f in frames])
    intercepts = np.array([f.intercept for f in frames])
    raw_dtype = np.result_type(*[p.dtype for p in planes])
    if np.all(slopes == 1) and np.all(intercepts == 0):
        dtype = raw_dtype
    elif np.all(slopes == np.round(slopes)) and np.all(intercepts == np.round(intercepts)):
        low = min(float(p.min()) * s + i for p, s, i in zip(planes, slopes, intercepts, strict=True))
        high = max(float(p.max()) * s + i for p, s, i in zip(planes, slopes, intercepts, strict=True))
        low, high = min(low, high), max(low, high)
        if low >= -(2**15) and high < 2**15:
            dtype = np.dtype(np.int16)
        elif low >= -(2**31) and high < 2**31:
            dtype = np.dtype(np.int32)
        else:
            dtype = np.dtype(np.float32)
    else:
        dtype = np.dtype(np.float32)
    out = np.empty((len(planes), *planes[0].shape), dtype=dtype)  # [z, row, col], viewed as [x, y, z]
    work = np.float64 if dtype.kind == "f" else np.int64
    for k, (plane, slope, intercept) in enumerate(zip(planes, slopes, intercepts, strict=True)):
        if slope == 1 and intercept == 0:
            out[k] = plane
        else:
            out[k] = plane.astype(work) * work(slope) + work(intercept)
    return out.transpose(2, 1, 0)


def missing_uids(series: Series) -> list[str]:
    """The UIDs a SEG must reference that this series' files lack (empty when it can be referenced)."""
    missing = []
    if not series.study_instance_uid:
        missing.append("StudyInstanceUID")
    if not series.series_instance_uid:
        missing.append("SeriesInstanceUID")
    if not all(i.sop_instance_uid for i in series.instances):
        missing.append("SOPInstanceUID")
    if not all(str(i.header.get("FrameOfReferenceUID", "") or "").strip() for i in series.instances):
        missing.append("FrameOfReferenceUID")  # Type 1: a SEG's planes and an RTSTRUCT's contours live in it
    return missing


def _sop_name(uid: str) -> str:
    return UID(uid).name if uid else "no SOP class"
