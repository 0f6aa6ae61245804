"""``medhub doctor``: what the scan and the checks find in a folder, without running a model."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from pydicom.uid import UID

from medhub.errors import MedhubError
from medhub.inputs.load import check_series, missing_uids
from medhub.inputs.scan import scan
from medhub.inputs.select import non_image_reason


def diagnose(path: Path) -> dict[str, Any]:
    """Scan ``path`` and check every series (headers only); a JSON-ready summary."""
    if not path.exists():
        raise MedhubError(f"input not found: {path}")
    result = scan(path)
    series_items = []
    for series in result.series:
        reason = non_image_reason(series)
        findings: list[str] = []
        if reason is None:
            check = check_series(series)
            reason, findings = check.skip_reason, list(check.findings)
        series_items.append({
            "key": series.key,
            "series_instance_uid": series.series_instance_uid,
            "study_instance_uid": series.study_instance_uid,
            "modality": series.modality,
            "description": series.description,
            "images": series.number_of_images,
            "files": len(series.instances),
            "folder": _folder(path, series),
            "transfer_syntaxes": sorted({i.transfer_syntax_uid for i in series.instances}),
            "transfer_syntax_names": sorted({syntax_name(i.transfer_syntax_uid) for i in series.instances}),
            "skip_reason": reason,
            "findings": findings,
            "warnings": _warnings(series),
        })
    return {
        "root": str(path),
        "files_seen": result.files_seen,
        "non_dicom_files": result.non_dicom_files,
        "dicomdir_files": result.dicomdir_files,
        "unreadable": [{"path": str(u.path), "reason": u.reason} for u in result.unreadable],
        "series": series_items,
    }


def syntax_name(uid: str) -> str:
    """A transfer syntax as people know it ("JPEG 2000 Image Compression (Lossless Only)"), else its UID."""
    if not uid:
        return "not stated (no file meta)"
    name = UID(uid).name
    return name if name and name != uid else uid


def _folder(root: Path, series: Any) -> str:
    """Where the series' files are, relative to the scanned path ("." for the path itself)."""
    parents = {str(instance.path.parent) for instance in series.instances}
    common = Path(os.path.commonpath(sorted(parents))) if parents else root
    base = root if root.is_dir() else root.parent
    try:
        relative = common.resolve().relative_to(base.resolve())
    except ValueError:
        return str(common)
    return relative.as_posix() or "."


def _warnings(series: Any) -> list[str]:
    """What ``medhub run`` would find out only later: files without the UIDs a SEG or RTSTRUCT must reference."""
    missing = missing_uids(series)
    if not missing:
        return []
    return [f"its files carry no {'/'.join(missing)}: a DICOM SEG or RTSTRUCT cannot reference them; "
            "medhub run writes NIfTI for this series instead"]
