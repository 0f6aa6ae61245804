"""Organize: where each result of a run goes inside the output folder, from a path template."""

from __future__ import annotations

from enum import StrEnum
from pathlib import Path

from medhub.errors import MedhubError
from medhub.files import safe_component
from medhub.pipeline.report import REPORT_NAME

DEFAULT_TEMPLATE = "{series_uid}/{model}"
"""Output path template without extension; ``.seg.dcm`` / ``.rtstruct.dcm`` / ``.nii.gz`` are appended."""

TEMPLATE_FIELDS = ("series_uid", "study_uid", "model", "patient_id", "modality", "series_number", "series_description")


class ResultKind(StrEnum):
    """The kinds of file a run writes into its output folder (what the server lists and serves)."""

    SEG = "seg"
    RTSTRUCT = "rtstruct"
    SR = "sr"
    SEG_NRRD = "seg_nrrd"
    NIFTI = "nifti"
    LABELS = "labels"  # the label map's sidecar: value → name, SNOMED CT codes, colour, SEG segment number
    VALUES = "values"
    EMBEDDING = "embedding"
    STATISTICS = "statistics"
    PREVIEW = "preview"
    REPORT = "report"


RESULT_SUFFIXES: tuple[tuple[str, ResultKind], ...] = (
    (".seg.dcm", ResultKind.SEG), (".rtstruct.dcm", ResultKind.RTSTRUCT), (".sr.dcm", ResultKind.SR),
    (".seg.nrrd", ResultKind.SEG_NRRD), (".nii.gz", ResultKind.NIFTI), (".nii", ResultKind.NIFTI),
    (".labels.json", ResultKind.LABELS),
    (".values.json", ResultKind.VALUES), (".values.csv", ResultKind.VALUES),
    (".embedding.npy", ResultKind.EMBEDDING), (".embedding.json", ResultKind.EMBEDDING),
    (".feature_map.npy", ResultKind.EMBEDDING),
    (".statistics.json", ResultKind.STATISTICS), (".statistics.csv", ResultKind.STATISTICS),
    (".preview.png", ResultKind.PREVIEW),
)
"""The file-name ending of each kind of result (the default layout appends them to the template)."""


def result_kind(name: str) -> ResultKind | None:
    """The kind of a file of an output folder by its name; None for anything else (journal, temporary files)."""
    if name == REPORT_NAME:
        return ResultKind.REPORT
    for suffix, kind in RESULT_SUFFIXES:
        if name.endswith(suffix):
            return kind
    return None

def render_template(template: str, fields: dict[str, object]) -> Path:
    """Fill the output template; every field value is sanitized, so it cannot escape ``OUT``."""
    try:
        rendered = template.format(**{k: safe_component(v) for k, v in fields.items()})
    except KeyError as exc:
        raise MedhubError(
            f"output template {template!r} uses unknown field {exc.args[0]!r}; "
            f"known fields: {', '.join(TEMPLATE_FIELDS)}"
        ) from None
    except (ValueError, IndexError, AttributeError) as exc:  # "{series_uid", "{0}", "{model.x}"
        raise MedhubError(f"output template {template!r} is not a valid template ({exc}); "
                          f"write fields as {{series_uid}}, known fields: {', '.join(TEMPLATE_FIELDS)}") from None
    path = Path(rendered)
    if path.is_absolute() or ".." in path.parts:
        raise MedhubError(f"output template {template!r} must give a relative path inside the output folder")
    return path


def check_template(template: str) -> None:
    """Refuse a template before any work: unknown fields, bad syntax, or a path leaving the output folder."""
    render_template(template, dict.fromkeys(TEMPLATE_FIELDS, "x"))


def check_distinct(templates: list[str], series_fields: dict[str, dict[str, object]]) -> None:
    """Refuse a layout that would give two series of one run the same file (the second would replace the first).

    ``series_fields`` maps each chosen series' key to its template fields.
    """
    for template in templates:
        seen: dict[Path, str] = {}
        for key, fields in series_fields.items():
            path = render_template(template, fields)
            if path in seen:
                raise MedhubError(
                    f"output template {template!r} gives the same path {path.as_posix()} to series {seen[path]} "
                    f"and {key}: one would replace the other; add {{series_uid}} to it")
            seen[path] = key
