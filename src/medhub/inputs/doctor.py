"""``medhub doctor``: what the scan and the checks find in a folder, without running a model."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from medhub.errors import MedhubError
from medhub.inputs.load import check_series
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
            "transfer_syntaxes": sorted({i.transfer_syntax_uid for i in series.instances}),
            "skip_reason": reason,
            "findings": findings,
        })
    return {
        "root": str(path),
        "files_seen": result.files_seen,
        "non_dicom_files": result.non_dicom_files,
        "dicomdir_files": result.dicomdir_files,
        "unreadable": [{"path": str(u.path), "reason": u.reason} for u in result.unreadable],
        "series": series_items,
    }
