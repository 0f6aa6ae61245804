"""Check a series' geometry from its headers, then load it into a :class:`~medhub.data.volume.Volume`.

``check_series`` is cheap (headers only) and says what the loader will correct or why the series
cannot be one correct 3D volume. ``load_series`` runs the same plan, decodes the pixels
(:mod:`medhub.inputs.pixels`), applies the modality rescale, masks pixel padding
(:mod:`medhub.inputs.padding`) and, where needed, resamples onto a regular orthogonal grid,
keeping the real source planes in :class:`~medhub.data.volume.SourceGrid` so results reference
them. It never silently stretches or guesses; each correction is a finding in the report:

* **Slices left out.** A slice whose RescaleSlope is zero, not a number or not finite, or whose
  RescaleIntercept is not finite, would corrupt the volume (one NaN spreads through a model): it
  is left out, naming the tag. So is a file whose pixels cannot be decoded. The gap rules decide.
* **Missing slices.** A gap of up to ``max_missing_slices`` consecutive slices (default 2, the
  workflow's ``select.max_missing_slices``) is interpolated like uneven spacing; a longer gap
  refuses the series with the reason (and why slices were left out, if they were).
* **Duplicates.** Copies of one image (byte copies, or the same SOP instance exported twice) are
  removed after their pixels are compared; different images with one SOPInstanceUID refuse the
  series, since a SEG would reference an ambiguous instance. Several images at one position are 4D.
* **Orientation.** ImageOrientationPatient must be two perpendicular unit vectors: float noise
  (1e-5) is accepted as is, an error up to 1e-3 (cosines written with too few digits) is normalised
  (the SEG then carries the normalised cosines), anything else refuses the series.
* **Memory.** The pixels a series declares must fit the memory budget before anything is decoded.
* Gantry tilt and uneven spacing are resampled; 4D, mixed geometry and non-images are refused.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from pydicom.datadict import keyword_for_tag
from pydicom.dataelem import DataElement
from pydicom.dataset import Dataset
from pydicom.tag import BaseTag
from pydicom.uid import UID

from medhub.data import geometry
from medhub.data.header_view import header_view
from medhub.data.series import Instance, Series
from medhub.data.volume import SourceGrid, SourcePlane, Volume
from medhub.errors import MedhubError, SeriesSkipped
from medhub.inputs.padding import Padding, background_value, padding_of
from medhub.inputs.pixels import (
    PixelReadError,
    first_line,
    format_bytes,
    memory_budget,
    native_dtype,
    read_native,
    read_stored_pixels,
)

SUPPORTED_PHOTOMETRIC = {"MONOCHROME1", "MONOCHROME2"}
ORIENTATION_TOLERANCE = 1e-3  # direction cosines that differ by less are the same orientation
ORTHONORMAL_NOISE = 1e-5  # cosines this close to orthonormal are used as they are (float noise)
ORTHONORMAL_TOLERANCE = 1e-3  # up to this they are normalised (too few digits); beyond, refused
DEFAULT_MAX_MISSING_SLICES = 2
# Header elements that differ between two exports of the very same image.
VOLATILE_TAGS = {"SOPInstanceUID", "InstanceNumber", "InstanceCreationDate", "InstanceCreationTime"}
_IOP_TAG = 0x00200037


@dataclass
class SeriesCheck:
    """What the loader will do with a series, known from headers alone.

    ``findings`` are corrections the loader makes (for the report); ``skip_reason`` is set
    when the series cannot be loaded as one 3D volume.
    """

    findings: list[str] = field(default_factory=list)
    skip_reason: str | None = None
    images: int = 0  # image planes in the series (frames of multi-frame files count)
    planes: int = 0  # planes the volume is built from, after removing duplicates and left-out slices

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
    problem: str = ""  # why this plane cannot be used (a rescale value), "" when it can


@dataclass
class _Plan:
    """The outcome of the header check, shared by ``check_series`` and ``load_series``."""

    check: SeriesCheck
    frames: list[_Frame] = field(default_factory=list)  # kept planes, sorted along the normal
    twins: list[tuple[_Frame, _Frame]] = field(default_factory=list)  # duplicates: pixels must match
    orientation: np.ndarray | None = None  # orthonormal (normalised when it needed to be)
    normalised: bool = False  # the headers' cosines were corrected: results carry the corrected ones
    pixel_spacing: tuple[float, float] = (1.0, 1.0)
    rows: int = 0
    columns: int = 0
    step: float = 0.0  # slice step (regular) or target step (resampled), mm
    resample: bool = False
    left_out: list[str] = field(default_factory=list)  # "IM0008.dcm: RescaleSlope is NaN"


class _Skip(Exception):
    """Internal: ends the header check with a skip reason."""


def check_series(series: Series, *, max_missing_slices: int = DEFAULT_MAX_MISSING_SLICES) -> SeriesCheck:
    """Headers-only geometry QA: the corrections ``load_series`` will make, or why it will skip."""
    return _plan(series, max_missing_slices, {}).check


def load_series(series: Series, *, max_missing_slices: int = DEFAULT_MAX_MISSING_SLICES) -> Volume:
    """Decode a series into a Volume in modality units, corrected onto a regular grid if needed.

    Raises :class:`SeriesSkipped` with a one-line reason for what :func:`check_series` rejects, and
    :class:`MedhubError` when files that cannot be decoded leave too little of the series.
    """
    undecodable: dict[Path, str] = {}
    pixels: dict[tuple[str, int | None], np.ndarray] = {}  # decoded once, kept when the plan changes
    while True:
        plan = _plan(series, max_missing_slices, undecodable)
        if plan.check.skip_reason is not None:
            if undecodable:  # broken files, not the series' geometry, ended it: a failure (exit code 1)
                raise MedhubError(plan.check.skip_reason)
            raise SeriesSkipped(plan.check.skip_reason)
        _check_memory(plan)
        # First pass: the planes go straight into one array that becomes the volume (see _stack).
        stack = _stack_buffer(plan) if not pixels else None
        failures = _decode(plan.frames + [twin for pair in plan.twins for twin in pair], plan.rows, plan.columns,
                           pixels, into=stack, slots=plan.frames)
        if not failures:
            return _assemble(series, plan, pixels, stack)
        undecodable.update(failures)  # leave them out; the gap rules decide on the rest


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


# ---------------------------------------------------------------- assembling the volume


def _assemble(series: Series, plan: _Plan, pixels: dict[tuple[str, int | None], np.ndarray],
              stack: np.ndarray | None = None) -> Volume:
    for first, second in plan.twins:
        if not np.array_equal(pixels[_key(first)], pixels[_key(second)]):
            same_uid = first.instance.sop_instance_uid and \
                first.instance.sop_instance_uid == second.instance.sop_instance_uid
            what = f"the same SOPInstanceUID {first.instance.sop_instance_uid}" if same_uid \
                else "otherwise identical headers"
            raise SeriesSkipped(
                f"different images at the same position ({first.instance.path.name}, "
                f"{second.instance.path.name}) with {what}: not one 3D volume"
            )
    planes = [pixels[_key(f)] for f in plan.frames]
    masks, padding_note = _padding_masks(planes, plan.frames)
    modality = series.modality or str(series.first_header.get("Modality", ""))
    orientation = plan.orientation
    assert orientation is not None
    positions = np.array([f.position for f in plan.frames])
    normal = geometry.slice_normal(orientation)
    findings = list(plan.check.findings)
    if plan.resample:
        grid = geometry.regular_grid(positions, orientation, plan.pixel_spacing, plan.rows, plan.columns, plan.step)
        scaled = [
            p.astype(np.float32) * np.float32(f.slope) + np.float32(f.intercept)
            for p, f in zip(planes, plan.frames, strict=True)
        ]
        fill = float(min(p.min() for p in scaled))
        if masks is not None:
            fill = _apply_background(scaled, masks, modality)
        array = geometry.resample_planes([p.T for p in scaled], positions @ normal, grid, fill)
        affine = grid.affine
    else:
        stacked = _stack(planes, plan.frames, reuse=stack)
        if masks is not None:
            stacked = _mask_stack(stacked, masks, modality)
        array = stacked.transpose(2, 1, 0)
        affine = geometry.affine_from_planes(orientation, plan.pixel_spacing, positions[0], normal * plan.step)
    if masks is not None:
        findings.append(padding_note.format(background=_background_text(modality, array)))
    source = SourceGrid(
        planes=[SourcePlane(dataset=_header_for_results(f.instance.header, plan), frame_number=f.frame,
                            position=_position(f)) for f in plan.frames],
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
        modality=modality,
        findings=findings,
        metadata={"series_key": series.key, "series_description": series.description},
    )


def _header_for_results(header: Dataset, plan: _Plan) -> Dataset:
    """The header results copy their geometry from: with the normalised cosines when they were corrected.

    A shallow copy (the scan's header, and the file, stay as they were); only single-frame sources
    are normalised (the plan refuses multi-frame ones that would need it).
    """
    if not plan.normalised:
        return header
    view = header_view(header)
    assert plan.orientation is not None
    view[_IOP_TAG] = DataElement(_IOP_TAG, "DS", [f"{v:.8f}".rstrip("0").rstrip(".") or "0" for v in plan.orientation])
    return view


def _padding_masks(planes: list[np.ndarray], frames: list[_Frame]) -> tuple[list[np.ndarray | None] | None, str]:
    """Per plane, where its stored values are padding (None when the series declares none)."""
    masks: list[np.ndarray | None] = []
    described: set[str] = set()
    count = 0
    for plane, frame in zip(planes, frames, strict=True):
        padding: Padding | None = padding_of(frame.instance.header)
        if padding is None:
            masks.append(None)
            continue
        mask = padding.mask(plane)
        if not mask.any():
            masks.append(None)
            continue
        masks.append(mask)
        count += int(mask.sum())
        described.add(padding.describe())
    if not count:
        return None, ""
    total = sum(p.size for p in planes)
    note = (f"pixel padding ({'; '.join(sorted(described))}): {count} voxels ({100 * count / total:.1f} %) "
            "set to {background} before the model saw them")
    return masks, note


def _apply_background(scaled: list[np.ndarray], masks: list[np.ndarray | None], modality: str) -> float:
    """Set padding in rescaled float planes to the background; return it (also the resampling fill)."""
    real = [p[~m] if m is not None else p.ravel() for p, m in zip(scaled, masks, strict=True)]
    real = [r for r in real if r.size]
    background = background_value(modality, min(float(r.min()) for r in real) if real else None)
    for plane, mask in zip(scaled, masks, strict=True):
        if mask is not None:
            plane[mask] = background
    return background


def _mask_stack(stacked: np.ndarray, masks: list[np.ndarray | None], modality: str) -> np.ndarray:
    """Set padding in a ``[z, row, col]`` stack to the background, widening the dtype if it must."""
    full = np.stack([m if m is not None else np.zeros(stacked.shape[1:], dtype=bool) for m in masks])
    real = stacked[~full]
    background = background_value(modality, float(real.min()) if real.size else None)
    if stacked.dtype.kind in "iu":
        info = np.iinfo(stacked.dtype)
        if not (info.min <= background <= info.max) or background != int(background):
            stacked = stacked.astype(np.float32 if background != int(background) else np.int32)
    stacked[full] = background
    return stacked


def _background_text(modality: str, array: np.ndarray) -> str:
    if modality.upper() == "CT":
        return "-1024 HU (air)"
    return "the image's lowest real value (its background)"


def _check_memory(plan: _Plan) -> None:
    """Refuse before decoding when the declared pixels cannot fit the memory budget."""
    images = len(plan.frames) + sum(len(pair) for pair in plan.twins)
    stored = 4  # bytes per stored value at most for the grey-scale images loaded here
    work = 8 if plan.resample else 4  # float32 planes and the resampled grid, or the stacked volume
    needed = images * plan.rows * plan.columns * (stored + work)
    budget = memory_budget()
    if needed > budget:
        raise SeriesSkipped(
            f"declared size {plan.columns}x{plan.rows} pixels x {images} images needs about {format_bytes(needed)} "
            f"of memory, more than the memory budget of {format_bytes(budget)} (MEDHUB_MEMORY_BUDGET): not loaded"
        )


# ---------------------------------------------------------------- header check


def _plan(series: Series, max_missing: int, undecodable: dict[Path, str]) -> _Plan:
    check = SeriesCheck()
    plan = _Plan(check=check)
    try:
        _check_into(series, plan, max_missing, undecodable)
    except _Skip as skip:
        check.skip_reason = str(skip)
    except Exception as error:  # noqa: BLE001
        # A header value of a shape no check above foresaw (pydicom parses elements when first read, and
        # raises OSError, ValueError, ... for corrupt ones): refuse with what it was, never crash the run.
        check.skip_reason = f"cannot interpret the image headers ({type(error).__name__}: {first_line(error)})"
    return plan


def _check_into(series: Series, plan: _Plan, max_missing: int, undecodable: dict[Path, str]) -> None:
    if not series.instances:
        raise _Skip("no instances")
    if series.shared_uids:
        uid, other = next(iter(series.shared_uids.items()))
        more = f" (and {len(series.shared_uids) - 1} more)" if len(series.shared_uids) > 1 else ""
        raise _Skip(f"SOPInstanceUID {uid}{more} is also used by an image of series {other}: a result could not "
                    "say which image it refers to")
    plan.check.findings.extend(series.findings)
    for instance in series.instances:
        _check_image_instance(instance)
    frames = [frame for instance in series.instances for frame in _frames_of(instance)]
    plan.check.images = len(frames)
    plan.rows, plan.columns = _size(series.instances)
    _check_consistency(frames)
    plan.orientation, plan.normalised = _orthonormal(frames, plan.check)
    pixel_spacing = frames[0].pixel_spacing
    assert pixel_spacing is not None  # _check_consistency skipped the series otherwise
    plan.pixel_spacing = pixel_spacing
    frames = _without_unusable(frames, undecodable, plan)
    if not frames:
        raise _Skip(f"no usable slice: {_summary(plan.left_out)}")
    frames = _resolve_reused_uids(frames, plan)
    if len(frames) == 1:
        raise _Skip("single slice" + (f" (after leaving out {_summary(plan.left_out)})" if plan.left_out else ""))
    normal = geometry.slice_normal(plan.orientation)
    order = geometry.sort_by_position(np.array([f.position for f in frames]), normal)
    groups = _group_positions([frames[i] for i in order])
    kept, twins = _resolve_duplicates(groups, plan.check)
    plan.frames, plan.twins = kept, plan.twins + twins
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
        plan.step = spacing.dominant
        _missing_slices(spacing, max_missing, len(kept), plan)
    tilted = geometry.is_tilted(positions, plan.orientation, plan.pixel_spacing)
    if tilted:
        angle = geometry.tilt_angle(positions, plan.orientation)
        plan.check.findings.append(f"gantry tilt {angle:.1f}°: resampled onto an orthogonal grid")
    plan.resample = tilted or not spacing.regular


def _missing_slices(spacing: geometry.SpacingAnalysis, max_missing: int, real: int, plan: _Plan) -> None:
    """Short gaps are interpolated (said so); a gap longer than ``max_missing`` slices refuses the series."""
    gaps = [(index, gap, max(1, round(gap / spacing.dominant) - 1)) for index, gap in spacing.missing]

    def where(index: int) -> str:
        return f"z={spacing.locations[index]:.1f}..{spacing.locations[index + 1]:.1f} mm"

    too_long = [g for g in gaps if g[2] > max_missing]
    if too_long:
        index, gap, count = max(too_long, key=lambda g: g[2])
        more = f" (and {len(gaps) - 1} more gaps)" if len(gaps) > 1 else ""
        left_out = f"; left out: {_summary(plan.left_out)}" if plan.left_out else ""
        raise _Skip(
            f"{_missing(count)} at {where(index)} along the slice normal (a gap of {gap:.2f} mm, "
            f"spacing {spacing.dominant:.2f} mm){more}: more than the {max_missing} allowed "
            f"(select.max_missing_slices){left_out}"
        )
    total = sum(g[2] for g in gaps)
    places = ", ".join(f"{count} at {where(index)}" for index, _, count in gaps)
    plan.check.findings.append(
        f"{_missing(total)} ({places}): interpolated onto a regular {spacing.dominant:.2f} mm grid; "
        f"results lie on the {real} real slices"
    )


def _missing(count: int) -> str:
    return "1 missing slice" if count == 1 else f"{count} missing slices"


def _summary(items: list[str], limit: int = 4) -> str:
    return "; ".join(items[:limit]) + (f"; and {len(items) - limit} more" if len(items) > limit else "")


def _without_unusable(frames: list[_Frame], undecodable: dict[Path, str], plan: _Plan) -> list[_Frame]:
    """Leave out planes with unusable rescale values or undecodable files; the gap rules then decide."""
    usable = []
    for frame in frames:
        reason = frame.problem or undecodable.get(frame.instance.path, "")
        if reason:
            where = frame.instance.path.name + (f" frame {frame.frame}" if frame.frame else "")
            text = reason if frame.instance.path.name in reason else f"{where}: {reason}"
            if text not in plan.left_out:
                plan.left_out.append(text)
        else:
            usable.append(frame)
    if plan.left_out:
        plan.check.findings.append(f"{len(plan.left_out)} left out: {_summary(plan.left_out)}")
    return usable


def _size(instances: list[Instance]) -> tuple[int, int]:
    sizes = {(int(i.header.Rows), int(i.header.Columns)) for i in instances}
    if len(sizes) > 1:
        listed = ", ".join(f"{r}x{c}" for r, c in sorted(sizes))
        raise _Skip(f"inconsistent rows/columns across instances ({listed})")
    rows, columns = sizes.pop()
    if rows < 1 or columns < 1:
        raise _Skip(f"no pixels: Rows {rows}, Columns {columns}")
    return rows, columns


def _check_image_instance(instance: Instance) -> None:
    header = instance.header
    name = instance.path.name
    if "Rows" not in header or "Columns" not in header:
        raise _Skip(f"no pixel data: {name} is not an image ({_sop_name(instance.sop_class_uid)})")
    photometric = str(header.get("PhotometricInterpretation", "MONOCHROME2")).strip()
    if photometric not in SUPPORTED_PHOTOMETRIC:
        raise _Skip(f"unsupported photometric interpretation {photometric} ({name})")
    if int(header.get("SamplesPerPixel", 1) or 1) != 1:
        raise _Skip(f"unsupported samples per pixel {header.SamplesPerPixel} ({name})")


def _check_consistency(frames: list[_Frame]) -> None:
    for frame in frames:
        if frame.position is None or frame.orientation is None:
            where = frame.instance.path.name + (f" frame {frame.frame}" if frame.frame else "")
            raise _Skip(f"no ImagePositionPatient/ImageOrientationPatient in {where}: not a cross-sectional image")
        if frame.pixel_spacing is None:
            raise _Skip(f"no PixelSpacing in {frame.instance.path.name}")
        if min(frame.pixel_spacing) <= 0:
            raise _Skip(f"PixelSpacing {list(frame.pixel_spacing)} in {frame.instance.path.name} is not positive")
    reference = np.asarray(frames[0].orientation)
    if any(np.abs(np.asarray(f.orientation) - reference).max() > ORIENTATION_TOLERANCE for f in frames):
        raise _Skip("inconsistent orientation across instances (localizer or several stacks in one series?)")
    spacings = np.array([f.pixel_spacing for f in frames], dtype=float)
    if np.abs(spacings - spacings[0]).max() > 1e-3 * spacings[0].max():
        raise _Skip(f"mixed pixel spacing {spacings.min():.3f}–{spacings.max():.3f} mm")


def _orthonormal(frames: list[_Frame], check: SeriesCheck) -> tuple[np.ndarray, bool]:
    """The series' orientation as two perpendicular unit vectors, and whether it had to be normalised."""
    orientation = np.asarray(frames[0].orientation, dtype=float)
    error = geometry.orthonormality_error(orientation)
    if error <= ORTHONORMAL_NOISE:
        return orientation, False
    values = "\\".join(f"{v:g}" for v in orientation)
    row, column = np.linalg.norm(orientation[:3]), np.linalg.norm(orientation[3:])
    measured = f"row length {row:.4g}, column length {column:.4g}, dot product {orientation[:3] @ orientation[3:]:.2g}"
    if error > ORTHONORMAL_TOLERANCE or row == 0 or column == 0:
        raise _Skip(f"ImageOrientationPatient {values} is not orthonormal ({measured}; tolerance "
                    f"{ORTHONORMAL_TOLERANCE:g}): the image geometry is undefined")
    if any(f.frame is not None for f in frames):
        raise _Skip(f"ImageOrientationPatient {values} of a multi-frame image is {error:.1e} off orthonormal "
                    f"({measured}); it cannot be corrected in its functional groups")
    normalised = geometry.orthonormalise(orientation)
    corrected = "\\".join(f"{v:.6g}" for v in normalised)
    check.findings.append(
        f"ImageOrientationPatient {values} is {error:.1e} off orthonormal ({measured}; cosines written with too "
        f"few digits?): normalised to {corrected}, which results carry"
    )
    return normalised, True


def _resolve_reused_uids(frames: list[_Frame], plan: _Plan) -> list[_Frame]:
    """One SOP instance in several files: copies are kept once (pixels compared at load); different
    images sharing a SOPInstanceUID refuse the series (a SEG cannot reference them unambiguously)."""
    by_uid: dict[tuple[str, int | None], list[_Frame]] = {}
    for frame in frames:
        if frame.instance.sop_instance_uid:
            by_uid.setdefault((frame.instance.sop_instance_uid, frame.frame), []).append(frame)
    copies = 0
    dropped: set[int] = set()
    for (uid, _), group in by_uid.items():
        if len(group) < 2:
            continue
        if len({_fingerprint(f.instance.header, keep_volatile=True) for f in group}) > 1:
            names = ", ".join(f.instance.path.name for f in group[:3])
            raise _Skip(f"SOPInstanceUID {uid} is used by {len(group)} different images ({names}): a result "
                        "could not say which one it refers to")
        for other in group[1:]:
            plan.twins.append((group[0], other))
            dropped.add(id(other))
            copies += 1
    if copies:
        plan.check.findings.append(f"{copies} duplicate positions removed (same SOP instance in several files)")
    return [f for f in frames if id(f) not in dropped]


def _position(frame: _Frame) -> np.ndarray:
    """A checked frame's position: ``_check_consistency`` skips a series with a frame without one."""
    assert frame.position is not None
    return frame.position


def _group_positions(frames: list[_Frame]) -> list[list[_Frame]]:
    """Runs of sorted frames at the same 3D position."""
    groups: list[list[_Frame]] = []
    for frame in frames:
        if groups and np.linalg.norm(_position(frame) - _position(groups[-1][0])) < geometry.SAME_POSITION_MM:
            groups[-1].append(frame)
        else:
            groups.append([frame])
    return groups


def _resolve_duplicates(
    groups: list[list[_Frame]], check: SeriesCheck
) -> tuple[list[_Frame], list[tuple[_Frame, _Frame]]]:
    """Keep one frame per position when the extra ones are copies; raise a 4D skip otherwise."""
    crowded = [g for g in groups if len(g) > 1]
    twins: list[tuple[_Frame, _Frame]] = []
    if crowded:
        if all(_same_headers(g) for g in crowded):
            twins = [(g[0], other) for g in crowded for other in g[1:]]
        else:
            images = sum(len(g) for g in groups)
            if len({len(g) for g in groups}) == 1:
                raise _Skip(f"4D: {images} images at {len(groups)} positions")
            raise _Skip(
                f"{len(crowded)} of {len(groups)} positions hold several different images "
                f"({images} images): not one 3D volume"
            )
    if twins:
        check.findings.append(f"{len(twins)} duplicate positions removed (identical headers)")
    return [g[0] for g in groups], twins


def _same_headers(group: list[_Frame]) -> bool:
    """True when frames at one position look like copies of one image (single-frame files only)."""
    if any(f.frame is not None for f in group):
        return False  # frames of an enhanced file at one position are echoes, phases, ...
    fingerprints = {_fingerprint(f.instance.header) for f in group}
    return len(fingerprints) == 1


def _fingerprint(header: Dataset, keep_volatile: bool = False) -> tuple[tuple[int, str], ...]:
    return tuple((int(tag), _value_text(header, tag)) for tag in sorted(header.keys())
                 if (keep_volatile or keyword_for_tag(tag) not in VOLATILE_TAGS) and tag.group != 0x0002)


def _value_text(header: Dataset, tag: BaseTag) -> str:
    """An element's value as text; its raw bytes when pydicom cannot convert it.

    In an Implicit VR file (what modalities send over DIMSE) pydicom takes a private element's
    VR from its private dictionary, which real headers contradict: Philips' (01F1,1026) holds DS
    text where the dictionary says FD, and converting it raises.
    """
    try:
        return str(header[tag].value)
    except Exception:
        return repr(header.get_item(tag).value)


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

    spacing = _vector(attribute("PixelMeasuresSequence", "PixelSpacing"), 2)
    slope, slope_problem = _rescale(attribute("PixelValueTransformationSequence", "RescaleSlope"), "RescaleSlope", 1.0)
    intercept, intercept_problem = _rescale(attribute("PixelValueTransformationSequence", "RescaleIntercept"),
                                            "RescaleIntercept", 0.0)
    return _Frame(
        instance=instance,
        frame=number,
        position=_vector(attribute("PlanePositionSequence", "ImagePositionPatient"), 3),
        orientation=_vector(attribute("PlaneOrientationSequence", "ImageOrientationPatient"), 6),
        pixel_spacing=(float(spacing[0]), float(spacing[1])) if spacing is not None else None,
        slope=slope,
        intercept=intercept,
        problem="; ".join(p for p in (slope_problem, intercept_problem) if p),
    )


def _rescale(value: Any, keyword: str, default: float) -> tuple[float, str]:
    """A rescale value and, when it is unusable (not a number, not finite, a zero slope), why."""
    if value is None or (isinstance(value, str | bytes) and not value.strip()):
        return default, ""
    if not isinstance(value, str | bytes | int | float) and hasattr(value, "__len__"):  # multi-valued: take none
        return default, f"{keyword} has {len(value)} values, not one"
    try:
        number = float(value.decode("ascii", "replace") if isinstance(value, bytes) else value)
    except (TypeError, ValueError, OverflowError):
        return default, f"{keyword} {str(value).strip()!r} is not a number"
    if not math.isfinite(number):
        return default, f"{keyword} is {str(value).strip()}, not a finite number"
    if keyword == "RescaleSlope" and number == 0:
        return default, "RescaleSlope is 0 (every pixel would be the intercept)"
    return number, ""


def _vector(value: Any, length: int) -> np.ndarray | None:
    if value is None:
        return None
    try:
        array = np.array([float(v) for v in value], dtype=float)
    except (TypeError, ValueError, OverflowError):
        return None
    return array if array.size == length and np.isfinite(array).all() else None


# ---------------------------------------------------------------- pixels


def _key(frame: _Frame) -> tuple[str, int | None]:
    return (str(frame.instance.path), frame.frame)


def _stack_buffer(plan: _Plan) -> np.ndarray | None:
    """An array for the plan's planes, in plane order, when every plane is a whole single-frame file
    that :func:`~medhub.inputs.pixels.read_native` reads, all with one dtype; else None."""
    dtypes = set()
    for frame in plan.frames:
        if frame.frame is not None:
            return None
        dtype = native_dtype(frame.instance.header, frame.instance.transfer_syntax_uid)
        if dtype is None:
            return None
        dtypes.add(dtype)
    if len(dtypes) != 1 or not plan.frames:
        return None
    return np.empty((len(plan.frames), plan.rows, plan.columns), dtype=dtypes.pop())


def _decode(frames: list[_Frame], rows: int, columns: int, pixels: dict[tuple[str, int | None], np.ndarray], *,
            into: np.ndarray | None = None, slots: list[_Frame] | None = None) -> dict[Path, str]:
    """Decode each needed file once into ``pixels`` (stored values per (path, frame)); return the
    files that could not be decoded, with the reason.

    ``into``: an array (see :func:`_stack_buffer`) whose plane ``i`` receives the pixels of
    ``slots[i]``; those files are read straight into it, so the series is in memory once.
    """
    slot = {_key(f): i for i, f in enumerate(slots or [])} if into is not None else {}
    by_path: dict[Path, dict[tuple[str, int | None], _Frame]] = {}
    for frame in frames:  # a kept plane may also be one of a pair of duplicates: once per key
        if _key(frame) not in pixels:
            by_path.setdefault(frame.instance.path, {}).setdefault(_key(frame), frame)
    failures: dict[Path, str] = {}
    for path, wanted_by_key in by_path.items():
        wanted = list(wanted_by_key.values())
        instance = wanted[0].instance
        target = slot.get(_key(wanted[0])) if len(wanted) == 1 else None
        # Read straight into the volume's array; a file laid out otherwise (e.g. an element after the
        # pixel data) is decoded the usual way below, and _stack copies it into its place.
        if (target is not None and into is not None
                and read_native(path, instance.header, instance.transfer_syntax_uid, out=into[target]) is not None):
            pixels[_key(wanted[0])] = into[target]
            continue
        try:
            data = read_stored_pixels(instance, rows, columns)
        except PixelReadError as error:
            failures[path] = str(error)
            continue
        for frame in wanted:
            index = (frame.frame or 1) - 1
            if index >= len(data):
                failures[path] = f"{path.name}: frame {frame.frame} is not in its pixel data ({len(data)} frames)"
                break
            pixels[_key(frame)] = data[index]
    return failures


def _stack(planes: list[np.ndarray], frames: list[_Frame], reuse: np.ndarray | None = None) -> np.ndarray:
    """Stack ``[row, col]`` planes into ``[z, row, col]`` in modality units, in the tightest exact dtype.

    Stored values stay as they are without rescale; integral slope/intercept give int16 (or
    int32 when the range needs it, as for CT in HU); anything else float32.

    ``reuse``: the array the planes were decoded into (``planes[k]`` is ``reuse[k]``). When the
    result has the same width (int16 from int16 or uint16 stored values), the rescale happens
    in place and ``reuse`` becomes the result: a 300-slice CT is then held once, not twice. The
    in-place integer arithmetic wraps around like the stored type; since the result is known to
    fit that width, the wrapped result is the exact one.
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
    if (reuse is not None and len(reuse) == len(planes) and dtype.kind in "iu" and reuse.dtype.kind in "iu"
            and reuse.dtype.itemsize == dtype.itemsize):  # fmt: skip
        out = reuse.view(dtype)
        for k, plane in enumerate(planes):
            if plane.__array_interface__["data"][0] != reuse[k].__array_interface__["data"][0]:
                reuse[k] = plane  # decoded elsewhere (a retry, a shared file): copied into its place
        for k, (slope, intercept) in enumerate(zip(slopes, intercepts, strict=True)):
            if slope != 1:
                np.multiply(out[k], _wrapped(slope, dtype), out=out[k])
            if intercept != 0:
                np.add(out[k], _wrapped(intercept, dtype), out=out[k])
        return out
    out = np.empty((len(planes), *planes[0].shape), dtype=dtype)
    work = np.float64 if dtype.kind == "f" else np.int64
    for k, (plane, slope, intercept) in enumerate(zip(planes, slopes, intercepts, strict=True)):
        if slope == 1 and intercept == 0:
            out[k] = plane
        else:
            out[k] = plane.astype(work) * work(slope) + work(intercept)
    return out


def _wrapped(value: float, dtype: np.dtype) -> np.generic:
    """An integral value as a scalar of ``dtype``, reduced modulo 2**bits (for wrap-around arithmetic)."""
    bits = dtype.itemsize * 8
    reduced = int(value) % (1 << bits)
    if dtype.kind == "i" and reduced >= 1 << (bits - 1):
        reduced -= 1 << bits
    return dtype.type(reduced)




def _sop_name(uid: str) -> str:
    return UID(uid).name if uid else "no SOP class"
