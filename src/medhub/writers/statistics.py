"""Per-segment statistics of one series (``--statistics``): ``<model>.statistics.json`` and ``.csv``.

What TotalSegmentator's ``--statistics`` gives (``statistics.json``: per structure its
``volume`` in mm³ and mean ``intensity``), and more: per segment of the model its voxel
count, volume in ml (and in mm³ under TotalSegmentator's key ``volume``), and the mean
(also under ``intensity``), standard deviation (of the population, ddof=0), minimum,
maximum and the 5th, 25th, 50th, 75th and 95th percentiles of the image inside it.

The values are those of the image the model was given, on the series' own grid (the source
geometry, not a model's internal resampling): Hounsfield units for CT, the scanner's arbitrary
units for MR. Where medhub had to resample the series (gantry tilt, uneven spacing), that
regular grid is used and ``grid.resampled`` says so. Unlike TotalSegmentator, a segment that
touches the edge of the image is not zeroed: ``touches_border`` flags it (its volume may be
cut off). Segments of the model without a voxel are listed with volume 0 and no intensities.

The CSV has one row per segment (``segment_id, label, name, voxels, volume_ml, mean, ...``),
so the rows of many series concatenate.
"""

from __future__ import annotations

import csv
import io
import json
import math
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from medhub.data.volume import Volume
from medhub.errors import MedhubError
from medhub.files import atomic_output
from medhub.segdb import SegmentSpec

PERCENTILES = (5, 25, 50, 75, 95)
CSV_COLUMNS = ("series", "segment_id", "label", "name", "voxels", "volume_ml", "mean", "std", "min", "max",
               "p5", "p25", "median", "p75", "p95", "unit", "touches_border")


def image_unit(volume: Volume) -> str:
    """The unit of the image values: HU for CT, none for MR and anything without a calibrated scale."""
    return "HU" if (volume.modality or "").upper() == "CT" else ""


def segment_statistics(volume: Volume, labels: np.ndarray, segments: Mapping[int, SegmentSpec]
                       ) -> dict[str, dict[str, Any]]:
    """Segment ID → statistics (see the module docstring), in label order.

    Only labelled voxels are sorted, once, grouped by label, so a model with a hundred segments
    costs about as much as one with a single segment.
    """
    labels = np.asarray(labels)
    if labels.shape != volume.array.shape:
        raise MedhubError(f"statistics: label map of shape {labels.shape} for an image of shape {volume.array.shape}")
    voxel_mm3 = abs(float(np.linalg.det(volume.affine_lps[:3, :3])))
    inside = labels > 0
    label_values = labels[inside]
    order = np.argsort(label_values, kind="stable")
    label_values = label_values[order]
    image_values = np.asarray(volume.array)[inside][order].astype(np.float64)
    present, starts, counts = np.unique(label_values, return_index=True, return_counts=True)
    where = {int(value): (int(start), int(count)) for value, start, count in zip(present, starts, counts, strict=True)}
    border = _border_labels(labels)

    table: dict[str, dict[str, Any]] = {}
    for label in sorted(segments):
        spec = segments[label]
        start, count = where.get(label, (0, 0))
        row: dict[str, Any] = {"label": label, "name": spec.name, "voxels": count,
                               "volume_ml": round(count * voxel_mm3 / 1000.0, 4),
                               "volume": round(count * voxel_mm3, 2)}
        if count:
            values = image_values[start:start + count]
            mean = float(values.mean())
            quantiles = np.percentile(values, PERCENTILES)
            row.update({"intensity": _round(mean), "mean": _round(mean), "std": _round(float(values.std())),
                        "min": _round(float(values.min())), "max": _round(float(values.max()))})
            row.update({_percentile_key(p): _round(float(q)) for p, q in zip(PERCENTILES, quantiles, strict=True)})
        else:
            row.update(dict.fromkeys(("intensity", "mean", "std", "min", "max", *map(_percentile_key, PERCENTILES))))
        row["touches_border"] = label in border
        table[spec.id] = row
    return table


def write_statistics(base: Path, volume: Volume, labels: np.ndarray, segments: Mapping[int, SegmentSpec], *,
                     model: str, model_version: str, series_key: str) -> list[Path]:
    """Write ``<base>.statistics.json`` and ``<base>.statistics.csv``; return both paths."""
    table = segment_statistics(volume, labels, segments)
    unit = image_unit(volume)
    source = volume.source
    document = {
        "model": model,
        "model_version": model_version,
        "series": series_key,
        "modality": volume.modality or "",
        "unit": unit,
        "grid": {"shape": list(volume.array.shape), "spacing_mm": [round(s, 6) for s in volume.spacing],
                 "voxel_volume_mm3": round(abs(float(np.linalg.det(volume.affine_lps[:3, :3]))), 6),
                 "resampled": bool(source is not None and source.resampled)},
        "segments": table,
    }
    json_path, csv_path = (base.with_name(base.name + suffix) for suffix in (".statistics.json", ".statistics.csv"))
    with atomic_output(json_path) as temporary:
        temporary.write_text(json.dumps(document, indent=2, allow_nan=False) + "\n", encoding="utf-8")
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(CSV_COLUMNS)
    for segment_id, row in table.items():
        writer.writerow([series_key, segment_id, row["label"], row["name"], row["voxels"], row["volume_ml"],
                         *("" if row[key] is None else row[key] for key in CSV_COLUMNS[6:15]), unit,
                         str(row["touches_border"]).lower()])
    with atomic_output(csv_path) as temporary:
        temporary.write_text(buffer.getvalue(), encoding="utf-8")
    return [json_path, csv_path]


def _percentile_key(percentile: int) -> str:
    return "median" if percentile == 50 else f"p{percentile}"


def _round(value: float) -> float:
    """Four significant decimals are plenty for HU and MR units; JSON has no NaN."""
    if not math.isfinite(value):
        raise MedhubError("statistics: the image holds NaN or infinite values inside a segment")
    return round(value, 4)


def _border_labels(labels: np.ndarray) -> set[int]:
    """Labels with a voxel on any face of the volume."""
    faces = [labels[0], labels[-1], labels[:, 0], labels[:, -1], labels[:, :, 0], labels[:, :, -1]]
    found: set[int] = set()
    for face in faces:
        found.update(int(v) for v in np.unique(face))
    found.discard(0)
    return found
