"""labels.csv → labelled cases: which series each row names, and how to load it.

The file is CSV with a header row and (at least) two columns:

``series``
    what to classify, in one of three spellings, tried in this order:

    1. a **SeriesInstanceUID** of a DICOM series found under ``--input``;
    2. a **path** (absolute, or relative to ``--input``) to a folder holding exactly one
       DICOM series (needed for DICOM without UIDs, such as the TotalSegmentator example CT),
       or to a NIfTI file (``.nii`` / ``.nii.gz``);
    3. a **NIfTI file name** found anywhere under ``--input``, with or without its extension.
``label``
    the class, any non-empty text (``phantom``, ``nodule``, ``0`` / ``1``).

``series_uid`` / ``path`` / ``file`` are accepted for ``series`` and ``class`` for
``label``; other columns are ignored. Blank lines and lines starting with ``#`` are skipped.
Every problem is a one-line error naming the file and line.
"""

from __future__ import annotations

import csv
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from medhub.data.series import Series
from medhub.data.volume import Volume
from medhub.errors import MedhubError, SeriesSkipped
from medhub.inputs.load import load_series
from medhub.inputs.nifti import load_nifti
from medhub.inputs.scan import scan

_SERIES_COLUMNS = ("series", "series_uid", "seriesinstanceuid", "path", "file")
_LABEL_COLUMNS = ("label", "class")
NIFTI_SUFFIXES = (".nii.gz", ".nii")


@dataclass
class LabelRow:
    line: int
    series: str
    label: str


@dataclass
class LabelledCase:
    """One row of labels.csv, resolved: ``resolved`` says what was found, ``load`` reads its voxels."""

    row: LabelRow
    resolved: str  # "dicom:<SeriesInstanceUID or folder key>" or "nifti:<path>"
    load: Callable[[], Volume]

    @property
    def label(self) -> str:
        return self.row.label


def read_labels(path: Path) -> list[LabelRow]:
    """Parse labels.csv; one-line errors for a missing file/column, empty cells and repeated series."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8-sig")
    except FileNotFoundError:
        raise MedhubError(f"{path}: labels file not found") from None
    except UnicodeDecodeError:
        raise MedhubError(f"{path}: not a UTF-8 text (CSV) file") from None
    lines = [(n, line) for n, line in enumerate(text.splitlines(), start=1)
             if line.strip() and not line.lstrip().startswith("#")]
    if not lines:
        raise MedhubError(f"{path}: empty; expected a header 'series,label' and one row per labelled series")
    reader = csv.reader([line for _, line in lines])
    header = [h.strip().lower() for h in next(reader)]
    series_col = next((header.index(c) for c in _SERIES_COLUMNS if c in header), None)
    label_col = next((header.index(c) for c in _LABEL_COLUMNS if c in header), None)
    if series_col is None or label_col is None:
        raise MedhubError(f"{path}: header must name the columns 'series' and 'label' (got {','.join(header)})")
    rows: list[LabelRow] = []
    seen: dict[str, int] = {}
    for (number, _), cells in zip(lines[1:], reader, strict=True):
        if len(cells) <= max(series_col, label_col):
            raise MedhubError(f"{path} line {number}: expected {len(header)} columns, got {len(cells)}")
        series, label = cells[series_col].strip(), cells[label_col].strip()
        if not series or not label:
            raise MedhubError(f"{path} line {number}: empty {'series' if not series else 'label'}")
        if series in seen:
            raise MedhubError(f"{path} line {number}: series '{series}' already labelled on line {seen[series]}")
        seen[series] = number
        rows.append(LabelRow(number, series, label))
    if not rows:
        raise MedhubError(f"{path}: no labelled series (only a header)")
    return rows


def _nifti_files(root: Path) -> list[Path]:
    if root.is_file():
        return [root] if root.name.lower().endswith(NIFTI_SUFFIXES) else []
    return sorted(p for p in root.rglob("*") if p.is_file() and p.name.lower().endswith(NIFTI_SUFFIXES))


def _stem(path: Path) -> str:
    name = path.name
    for suffix in NIFTI_SUFFIXES:
        if name.lower().endswith(suffix):
            return name[: -len(suffix)]
    return name


def _absolute(path: Path) -> Path:
    return Path(os.path.abspath(path))


def _series_loader(series: Series, where: str) -> Callable[[], Volume]:
    def load() -> Volume:
        try:
            return load_series(series)
        except SeriesSkipped as exc:
            raise MedhubError(f"{where}: series cannot be loaded: {exc.reason}") from None

    return load


def _nifti_loader(path: Path) -> Callable[[], Volume]:
    def load() -> Volume:
        return load_nifti(path)

    return load


def resolve_cases(labels_csv: Path, input_dir: Path) -> list[LabelledCase]:
    """Match every row of ``labels_csv`` to a DICOM series or NIfTI file under ``input_dir``."""
    labels_csv, input_dir = Path(labels_csv), Path(input_dir)
    rows = read_labels(labels_csv)
    if not input_dir.exists():
        raise MedhubError(f"input not found: {input_dir}")
    dicom = scan(input_dir).series if input_dir.is_dir() else []
    by_uid = {s.series_instance_uid: s for s in dicom if s.series_instance_uid}
    niftis = _nifti_files(input_dir)
    cases: list[LabelledCase] = []
    claimed: dict[str, int] = {}
    for row in rows:
        where = f"{labels_csv} line {row.line}"
        case = _resolve(row, where, input_dir, dicom, by_uid, niftis)
        if case.resolved in claimed:
            raise MedhubError(f"{where}: '{row.series}' is the same series as line {claimed[case.resolved]}")
        claimed[case.resolved] = row.line
        cases.append(case)
    return cases


def _resolve(row: LabelRow, where: str, root: Path, dicom: list[Series], by_uid: dict[str, Series],
             niftis: list[Path]) -> LabelledCase:
    if row.series in by_uid:
        series = by_uid[row.series]
        return LabelledCase(row, f"dicom:{series.series_instance_uid}", _series_loader(series, where))
    candidate = Path(row.series).expanduser()
    candidate = candidate if candidate.is_absolute() else root / candidate
    if candidate.is_file() and candidate.name.lower().endswith(NIFTI_SUFFIXES):
        return LabelledCase(row, f"nifti:{_absolute(candidate)}", _nifti_loader(candidate))
    if candidate.is_dir():
        inside = _absolute(candidate)  # not resolve(): a folder of symlinks to files elsewhere is still that folder
        found = [s for s in dicom if s.instances and all(inside in _absolute(i.path).parents for i in s.instances)]
        if not found:
            raise MedhubError(f"{where}: folder {candidate} holds no DICOM series found under {root}")
        if len(found) > 1:
            raise MedhubError(f"{where}: folder {candidate} holds {len(found)} series; name one by SeriesInstanceUID")
        series = found[0]
        return LabelledCase(row, f"dicom:{series.series_instance_uid or series.key}", _series_loader(series, where))
    matches = [p for p in niftis if row.series in (p.name, _stem(p))]
    if len(matches) == 1:
        return LabelledCase(row, f"nifti:{_absolute(matches[0])}", _nifti_loader(matches[0]))
    if len(matches) > 1:
        raise MedhubError(f"{where}: '{row.series}' matches {len(matches)} NIfTI files under {root}; give its path")
    raise MedhubError(f"{where}: series '{row.series}' not found under {root} "
                      f"(not a SeriesInstanceUID, folder or NIfTI file there)")
