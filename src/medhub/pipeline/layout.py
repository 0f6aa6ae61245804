"""Organize: where each result of a run goes inside the output folder, from a path template."""

from __future__ import annotations

from pathlib import Path

from medhub.errors import MedhubError
from medhub.files import safe_component

DEFAULT_TEMPLATE = "{series_uid}/{model}"
"""Output path template without extension; ``.seg.dcm`` / ``.rtstruct.dcm`` / ``.nii.gz`` are appended."""

TEMPLATE_FIELDS = ("series_uid", "study_uid", "model", "patient_id", "modality", "series_number", "series_description")

def render_template(template: str, fields: dict[str, object]) -> Path:
    """Fill the output template; every field value is sanitized, so it cannot escape ``OUT``."""
    try:
        rendered = template.format(**{k: safe_component(v) for k, v in fields.items()})
    except KeyError as exc:
        raise MedhubError(
            f"output template {template!r} uses unknown field {exc.args[0]!r}; "
            f"known fields: {', '.join(TEMPLATE_FIELDS)}"
        ) from None
    path = Path(rendered)
    if path.is_absolute() or ".." in path.parts:
        raise MedhubError(f"output template {template!r} must give a relative path inside the output folder")
    return path
