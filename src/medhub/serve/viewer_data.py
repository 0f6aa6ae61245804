"""What the result viewer in the browser draws: a job's input volume and its label map, as raw arrays.

The browser gets three things per series: ``meta`` (JSON: shape, spacing, window, segments with
names, colours and volumes), ``image.bin`` (int16, little-endian) and ``labels.bin`` (uint8), both
in the order ``x`` fastest, then ``y``, then ``z`` (the Fortran order of the ``[x, y, z]`` array).
Raw arrays, not PNG slices, so scrolling through slices and switching planes never waits for the
server; they are gzip-compressed on disk once and sent with ``Content-Encoding: gzip``.

Every volume is reoriented so that its axes point to the patient's Left, Posterior and Superior
(the closest such axes, for oblique grids): then an axial slice drawn with x to the right and y
downwards is the radiological view, whatever voxel order the input (DICOM or any NIfTI) had. The
labels are read from the series' ``<model>.nii.gz`` and reoriented the same way (their grid must
then match the input's exactly, or the overlay would lie, so a mismatch is an error), or, for a
CLI run that wrote only a DICOM SEG, from the SEG read back onto the input images
(:mod:`medhub.inputs.segread`). Segment colours are the display colours of
:mod:`medhub.segdb.colors`; ``start`` is where the viewer opens (the middle of the segmented region).

Large volumes are subsampled in-plane (at most 512 voxels across, and at most
``MAX_VOXELS`` in all) to keep transfers modest; segment volumes are computed before that, at
full resolution. The result is cached in the job folder (``viewer/<series>/``): it goes with the
job when the job is deleted, survives a server restart, and is rebuilt when the labels change.
``medhub view`` keeps its cache in a temporary folder (:class:`RunFolders`).
"""

from __future__ import annotations

import contextlib
import gzip
import json
import math
import re
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from medhub.data.geometry import from_lps, to_lps
from medhub.data.volume import LPS_TO_RAS, Volume
from medhub.errors import MedhubError
from medhub.files import atomic_output, safe_component
from medhub.hub.catalog import get_model
from medhub.inputs.load import load_series
from medhub.inputs.nifti import load_nifti, read_nifti_image
from medhub.inputs.scan import scan
from medhub.inputs.segread import read_seg_labels
from medhub.pipeline.report import REPORT_NAME
from medhub.segdb import get_segment
from medhub.segdb.colors import display_colors

MAX_IN_PLANE = 512
MAX_VOXELS = 48_000_000  # ~96 MB of int16 before compression
CACHE_VERSION = 2
NIFTI_SUFFIXES = (".nii.gz", ".nii")
SEG_SUFFIXES = (".seg.dcm",)
CT_PRESETS = {"soft tissue": (-160.0, 240.0), "lung": (-1350.0, 150.0), "bone": (-450.0, 1050.0),
              "brain": (0.0, 80.0)}
_NAME = re.compile(r"^[A-Za-z0-9_-][A-Za-z0-9._-]{0,199}$")

_LOCKS: dict[Path, threading.Lock] = {}
_LOCKS_GUARD = threading.Lock()


class ViewerNotFound(MedhubError):
    """The job, the series or its label map does not exist (HTTP 404, not a server fault)."""


@dataclass
class ViewerFiles:
    """The cached files of one series: ``meta.json``, ``image.bin.gz`` and ``labels.bin.gz``."""

    folder: Path

    @property
    def meta(self) -> Path:
        return self.folder / "meta.json"

    @property
    def image(self) -> Path:
        return self.folder / "image.bin.gz"

    @property
    def labels(self) -> Path:
        return self.folder / "labels.bin.gz"

    def read_meta(self) -> dict[str, Any]:
        return json.loads(self.meta.read_text(encoding="utf-8"))


def check_name(value: str, what: str) -> str:
    """A job id or series key as one safe path component; anything else cannot name a job's file."""
    if not _NAME.match(value) or value in (".", ".."):
        raise ViewerNotFound(f"no such {what}: {value!r}")
    return value


@dataclass
class RunFolders:
    """Where one run's files are: its input (a folder or a NIfTI file), its output folder, a cache folder.

    A job of ``medhub serve`` keeps them as ``<job>/input``, ``<job>/output`` and
    ``<job>/viewer``; ``medhub view OUT`` points at the folder the CLI wrote, the input named in
    its report, and a cache of its own (the output folder is never written to).
    """

    input: Path
    output: Path
    cache: Path

    @classmethod
    def of_job(cls, job_dir: Path) -> RunFolders:
        job_dir = Path(job_dir)
        return cls(input=job_dir / "input", output=job_dir / "output", cache=job_dir / "viewer")


def viewer_files(job_dir: Path | RunFolders, series: str, model: str | None = None) -> ViewerFiles:
    """Build (or reuse) the viewer arrays of one series of a finished run and return where they are.

    ``job_dir`` is a job folder of ``medhub serve`` (``input/``, ``output/``) or any
    :class:`RunFolders`; ``series`` is the series' key as a path component (its folder name in
    the default layout); ``model`` defaults to the report's. The labels come from the series'
    NIfTI label map, or else from its DICOM SEG read back onto the input images.
    Safe to call from several threads at once (the browser asks for meta and both arrays together).
    """
    check_name(series, "series")
    run = job_dir if isinstance(job_dir, RunFolders) else RunFolders.of_job(job_dir)
    if not run.output.is_dir():
        raise ViewerNotFound(f"no such job: {Path(job_dir).name if not isinstance(job_dir, RunFolders) else 'run'}")
    model = _model_name(run.output, model)
    labels_path = find_labels(run.output, series, model)
    files = ViewerFiles(run.cache / series)
    with _lock(files.folder):
        stamp = _stamp(labels_path)
        if _fresh(files, stamp):
            return files
        volume = find_input_volume(run.input, series, run.output)
        labels = read_labels(labels_path, volume, model)
        _build(files, volume, labels, stamp, model, series, kept=_roi_subset(run.output))
    return files


# ----------------------------------------------------------------------------------- finding the data


def _model_name(output: Path, model: str | None) -> str | None:
    if model:
        return model
    with contextlib.suppress(OSError, ValueError, AttributeError):
        return json.loads((output / REPORT_NAME).read_text(encoding="utf-8")).get("model")
    return None


def _roi_subset(output: Path) -> set[str] | None:
    """The segments a ``--roi-subset`` run kept (None: all the model's): the others are not in its results."""
    try:
        kept = json.loads((output / REPORT_NAME).read_text(encoding="utf-8")).get("roi_subset")
    except (OSError, ValueError, AttributeError):
        return None
    return {str(segment) for segment in kept} if isinstance(kept, list) and kept else None


def _report_entry(output: Path, series: str) -> dict[str, Any] | None:
    """The run report's entry of the series whose key (as a path component) is ``series``."""
    try:
        report = json.loads((output / REPORT_NAME).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    for entry in report.get("series", []) if isinstance(report, dict) else []:
        if isinstance(entry, dict) and series in (entry.get("key"), safe_component(entry.get("key", ""))):
            return entry
    return None


def find_labels(output: Path, series: str, model: str | None = None) -> Path:
    """The series' label map: ``<model>.nii.gz`` (or ``.nii``), else its ``<model>.seg.dcm``.

    Found through the report's outputs of the series (any output template), else in
    ``output/<series>/`` (the default layout); without a model, the only one there.
    """
    entry = _report_entry(output, series)
    if entry is not None:
        candidates = [output / item for item in entry.get("outputs") or [] if isinstance(item, str)]
    else:
        folder = output / series
        if not folder.is_dir():
            raise ViewerNotFound(f"no results for series {series!r}")
        candidates = sorted(p for p in folder.iterdir() if p.is_file() and not p.name.startswith("."))
    candidates = [p for p in candidates if p.is_file() and output.resolve() in p.resolve().parents]
    images = _nifti_images(candidates)  # --nifti writes the image too: never read it as labels
    for suffixes in (NIFTI_SUFFIXES, SEG_SUFFIXES):
        found = [p for p in candidates if p.name.endswith(suffixes) and p.resolve() not in images]
        if model:
            named = [p for p in found for suffix in suffixes if p.name == f"{safe_component(model)}{suffix}"]
            if named:
                return named[0]
        if len(found) == 1:
            return found[0]
        if len(found) > 1:
            raise MedhubError(f"series {series!r} has {len(found)} label maps; name the model")
    raise ViewerNotFound(f"series {series!r} has no label map (NIfTI or DICOM SEG) in the results")


def _nifti_images(candidates: list[Path]) -> set[Path]:
    """The NIfTI images (not label maps) that the ``<model>.labels.json`` among ``candidates`` name beside them."""
    images = set()
    for sidecar in (p for p in candidates if p.name.endswith(".labels.json")):
        with contextlib.suppress(OSError, ValueError, AttributeError, TypeError):
            image = json.loads(sidecar.read_text(encoding="utf-8")).get("image")
            if isinstance(image, str) and image:
                images.add((sidecar.parent / image).resolve())
    return images


def _nifti_key(path: Path) -> str:
    """The series key the pipeline gives a NIfTI input (its file name without the suffix)."""
    name = path.name
    return name[: -len(".nii.gz")] if name.lower().endswith(".nii.gz") else path.stem


def find_input_volume(input_path: Path, series: str, output: Path | None = None) -> Volume:
    """Load the input that produced ``series``: a NIfTI file, or the DICOM series with that key.

    ``input_path`` is a folder (a job's ``input/``, the folder a CLI run read) or one NIfTI file;
    ``output`` is the run's output folder (its report identifies series without UIDs).
    """
    input_path = Path(input_path)
    if not input_path.exists():
        raise ViewerNotFound("the input images of this run are gone")
    if input_path.is_file():
        niftis = [input_path] if input_path.name.lower().endswith(NIFTI_SUFFIXES) else []
    else:
        niftis = [p for p in sorted(input_path.rglob("*"))
                  if p.is_file() and p.name.lower().endswith(NIFTI_SUFFIXES)]
    for path in niftis:
        if series in (_nifti_key(path), safe_component(_nifti_key(path))):
            return load_nifti(path)
    if input_path.is_file():
        raise ViewerNotFound(f"series {series!r} is not in the run's input")
    found = scan(input_path).series
    # Keys of series without UIDs depend on the folder's absolute path (a moved data dir changes
    # them): then the report's list of SOP Instance UIDs of that series identifies it.
    wanted = _report_instances(output if output is not None else input_path.parent / "output", series)
    for candidate in found:
        if series in (candidate.key, safe_component(candidate.key)) or (
            wanted and {i.sop_instance_uid for i in candidate.instances} == wanted
        ):
            volume = load_series(candidate)
            volume.modality = volume.modality or candidate.modality
            return volume
    raise ViewerNotFound(f"series {series!r} is not in the run's input")


def _report_instances(output: Path, series: str) -> set[str]:
    """SOP Instance UIDs the run report lists for this series (empty when unknown)."""
    entry = _report_entry(output, series)
    return {str(uid) for uid in (entry or {}).get("sop_instance_uids") or [] if uid}


# ----------------------------------------------------------------------------------- arrays


def read_labels(path: Path, volume: Volume, model: str | None = None) -> np.ndarray:
    """The label map (NIfTI, or a DICOM SEG) as uint8 on the input volume's grid (``volume.array``'s voxel order)."""
    if path.name.endswith(SEG_SUFFIXES):
        label_of: dict[str, int] = {}
        if model:
            with contextlib.suppress(MedhubError):
                label_of = {seg_id: value for value, seg_id in get_model(model).card.outputs.segments.items()}
        return read_seg_labels(path, volume, label_of).labels
    image = read_nifti_image(path)
    try:
        labels = np.asarray(image.dataobj)
    except Exception as error:  # noqa: BLE001 - a cut gzip stream raises EOFError, zlib or OSError
        raise MedhubError(f"{path.name}: not a readable NIfTI label map ({error})") from error
    labels = labels.reshape(labels.shape[:3]) if labels.ndim > 3 and math.prod(labels.shape[3:]) == 1 else labels
    if labels.ndim != 3:
        raise MedhubError(f"{path.name}: label map of shape {labels.shape} is not 3D")
    if labels.size and (labels.min() < 0 or labels.max() > 255):
        raise MedhubError(f"{path.name}: label values must lie in 0..255 for the viewer")
    labels_lps, labels_affine = to_lps(labels, LPS_TO_RAS @ np.asarray(image.affine, dtype=float))
    image_lps, image_affine = to_lps(volume.array, volume.affine_lps)
    if labels_lps.shape != image_lps.shape or not np.allclose(labels_affine, image_affine, atol=1e-3, rtol=1e-4):
        raise MedhubError(
            f"{path.name}: the label map's grid {labels.shape} does not match the input volume's "
            f"{volume.array.shape}; the overlay would be misplaced"
        )
    # Back to the input's own voxel order: the caller reorients both together.
    return from_lps(labels_lps, volume.affine_lps).astype(np.uint8)


def _int16(array: np.ndarray) -> tuple[np.ndarray, float, float]:
    """The image as int16 plus (slope, intercept) so that ``original = stored * slope + intercept``."""
    finite = np.nan_to_num(array.astype(np.float32, copy=False)) if array.dtype.kind == "f" else array
    low, high = (float(finite.min()), float(finite.max())) if finite.size else (0.0, 0.0)
    integral = array.dtype.kind in "iub" or bool(np.all(np.mod(finite, 1) == 0))
    if integral and low >= -32768 and high <= 32767:
        return finite.astype(np.int16), 1.0, 0.0
    slope = (high - low) / 65000.0 or 1.0
    stored = np.round((finite - low) / slope - 32500.0)
    return np.clip(stored, -32768, 32767).astype(np.int16), slope, low + 32500.0 * slope


def _looks_like_ct(volume: Volume, minimum: float) -> bool:
    if volume.modality:
        return volume.modality.upper() == "CT"
    return minimum <= -900  # a NIfTI in Hounsfield units has air near -1000


def _windows(volume: Volume, stored: np.ndarray, slope: float, intercept: float) -> dict[str, list[float]]:
    """Display windows in stored units: CT presets where it is CT, always a percentile "auto"."""
    sample = stored[:: max(1, stored.shape[0] // 128), :: max(1, stored.shape[1] // 128), :]
    low, high = (np.percentile(sample, [0.5, 99.5]).tolist() if sample.size else [0.0, 1.0])
    presets = {"auto": [float(low), float(high if high > low else low + 1)]}
    minimum = float(stored.min()) * slope + intercept if stored.size else 0.0
    if _looks_like_ct(volume, minimum):
        for name, (lo, hi) in CT_PRESETS.items():
            presets[name] = [(lo - intercept) / slope, (hi - intercept) / slope]
    return presets


def subsample_factor(shape: tuple[int, ...]) -> int:
    """The in-plane stride that keeps a volume within ``MAX_IN_PLANE`` across and ``MAX_VOXELS`` in all."""
    factor = max(1, math.ceil(max(shape[0], shape[1]) / MAX_IN_PLANE))
    while math.ceil(shape[0] / factor) * math.ceil(shape[1] / factor) * shape[2] > MAX_VOXELS:
        factor += 1
    return factor


def segment_table(labels: np.ndarray, voxel_ml: float, model: str | None,
                  kept: set[str] | None = None) -> list[dict[str, Any]]:
    """One row per segment of the model (and per unexpected label found): name, colour, voxels, ml.

    ``kept``: the segments of a ``--roi-subset`` run; the model's others were not written, so get no row.
    """
    counts = np.zeros(256, dtype=np.int64)
    for z in range(labels.shape[2]):  # slice by slice: bincount widens to int64, a whole volume would be GBs
        counts += np.bincount(labels[:, :, z].ravel(), minlength=256)[:256]
    declared: dict[int, str] = {}
    if model:
        with contextlib.suppress(MedhubError):
            declared = dict(get_model(model).card.outputs.segments)
    if kept:
        declared = {value: segment for value, segment in declared.items() if segment in kept}
    rows = []
    for label in sorted(set(declared) | {int(v) for v in np.flatnonzero(counts[1:]) + 1}):
        segment_id, name, color = declared.get(label, f"LABEL_{label}"), f"label {label}", [128, 128, 128]
        with contextlib.suppress(MedhubError):
            spec = get_segment(segment_id)
            name, color = spec.name, list(spec.color)
        voxels = int(counts[label])
        rows.append({"label": label, "id": segment_id, "name": name, "color": color, "voxels": voxels,
                     "volume_ml": round(voxels * voxel_ml, 3)})
    return rows


def viewer_arrays(volume: Volume, labels: np.ndarray, model: str | None = None, kept: set[str] | None = None
                  ) -> tuple[dict[str, Any], np.ndarray, np.ndarray]:
    """(meta, image int16, labels uint8) in LPS axis order, subsampled; arrays are ``[x, y, z]``."""
    if labels.shape != volume.array.shape:
        raise MedhubError(f"labels of shape {labels.shape} for a volume of shape {volume.array.shape}")
    voxel_ml = abs(float(np.linalg.det(volume.affine_lps[:3, :3]))) / 1000.0
    segments = segment_table(labels, voxel_ml, model, kept)
    image, affine = to_lps(volume.array, volume.affine_lps)
    labels, _ = to_lps(labels, volume.affine_lps)
    source_shape = list(image.shape)
    factor = subsample_factor(image.shape)
    if factor > 1:
        image, labels = image[::factor, ::factor, :], labels[::factor, ::factor, :]
        affine = affine @ np.diag([factor, factor, 1, 1])
    stored, slope, intercept = _int16(image)
    windows = _windows(volume, stored, slope, intercept)
    labels = np.ascontiguousarray(labels, dtype=np.uint8)
    shown = display_colors(labels, {row["label"]: tuple(row["color"]) for row in segments})
    for row in segments:  # the database colour unless it clashes with a neighbour or the grey image
        row["database_color"], row["color"] = row["color"], list(shown[row["label"]])
    minimum = float(stored.min()) * slope + intercept if stored.size else 0.0
    meta = {
        "shape": list(stored.shape),
        "spacing": [round(float(s), 6) for s in np.linalg.norm(affine[:3, :3], axis=0)],
        "orientation": "LPS",
        "order": "x fastest, then y, then z (Fortran order of [x, y, z]); little-endian",
        "image_dtype": "int16",
        "labels_dtype": "uint8",
        "value_scale": [slope, intercept],
        "window": windows.get("soft tissue", windows["auto"]),
        "window_presets": windows,
        "subsample": factor,
        "source_shape": source_shape,
        "affine_lps": np.round(affine, 6).tolist(),
        "modality": volume.modality or "",
        "model": model,
        "unit": "HU" if _looks_like_ct(volume, minimum) else "",
        "start": start_position(labels),
        "segments": segments,
        "volumes_ml": {row["id"]: row["volume_ml"] for row in segments},
        "model_values": model_values(model),
    }
    return meta, stored, labels


def start_position(labels: np.ndarray) -> list[int]:
    """Where the viewer opens: the middle of the segmented region (the centre of its bounding box).

    Not the slice with the most labelled voxels, which for a brain mask is a slice near the
    skull base's widest part rather than the middle of the brain. Where the centre falls between
    structures (two lungs), each axis moves to the nearest slice that holds labels, so the
    first view never shows an empty overlay. The volume's centre when nothing is labelled.
    """
    position = []
    for axis in range(3):
        others = tuple(a for a in range(3) if a != axis)
        occupied = np.flatnonzero(labels.any(axis=others)) if labels.size else np.array([], dtype=int)
        if occupied.size == 0:
            position.append(labels.shape[axis] // 2)
            continue
        centre = (int(occupied[0]) + int(occupied[-1])) // 2
        position.append(int(occupied[np.argmin(np.abs(occupied - centre))]))
    return position


def model_values(model: str | None) -> list[dict[str, str]]:
    """The values the model's card declares (name, unit, description), so the page can say what each one is."""
    if not model:
        return []
    try:
        declared = get_model(model).card.outputs.values
    except MedhubError:
        return []
    return [{"name": value.name, "unit": value.unit or "", "description": value.description or ""}
            for value in declared]


# ----------------------------------------------------------------------------------- cache


def _lock(folder: Path) -> threading.Lock:
    with _LOCKS_GUARD:
        return _LOCKS.setdefault(folder.resolve(), threading.Lock())


def _stamp(labels_path: Path) -> dict[str, Any]:
    stat = labels_path.stat()
    return {"version": CACHE_VERSION, "labels": labels_path.name, "mtime_ns": stat.st_mtime_ns, "size": stat.st_size}


def _fresh(files: ViewerFiles, stamp: dict[str, Any]) -> bool:
    try:
        meta = files.read_meta()
    except (OSError, ValueError):
        return False
    return meta.get("_cache") == stamp and files.image.is_file() and files.labels.is_file()


def _write_atomic(path: Path, data: bytes) -> None:
    with atomic_output(path) as temporary:
        temporary.write_bytes(data)


def _build(files: ViewerFiles, volume: Volume, labels: np.ndarray, stamp: dict[str, Any],
           model: str | None, series: str, kept: set[str] | None = None) -> None:
    meta, image, labels_out = viewer_arrays(volume, labels, model, kept)
    meta["series"] = series
    meta["_cache"] = stamp
    files.folder.mkdir(parents=True, exist_ok=True)
    _write_atomic(files.image, gzip.compress(image.astype("<i2").tobytes(order="F"), compresslevel=1))
    _write_atomic(files.labels, gzip.compress(labels_out.tobytes(order="F"), compresslevel=1))
    _write_atomic(files.meta, json.dumps(meta).encode())  # last: its presence marks the cache complete
