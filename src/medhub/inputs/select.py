"""Choose the series a model runs on, and say in one sentence why each other one is left out.

The built-in rules run before the model's own data-type query, in a fixed order, so every
rejected series gets exactly one reason, the most basic one:

1. objects that are not images (SEG, RTSTRUCT, RT plans and doses, SR documents,
   presentation states, registrations, ...), decided by SOP class;
2. secondary captures (SC SOP classes, or ImageType ``DERIVED\\SECONDARY``);
3. localizers (ImageType contains ``LOCALIZER``) and series with too few slices;
4. the model's query (``input``), e.g. ``dicom:mod=ct`` gives "MR, model needs CT".

4D series (several images per position) are detected by the loader, which knows the geometry;
``exclude_4d`` is carried here only so that a workflow states all its input rules in one place.
The rules are plain data: a workflow YAML overrides any of them.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from medhub.data.series import Series
from medhub.errors import MedhubError
from medhub.inputs.query import DataTypeQuery
from medhub.inputs.scan import sop_class_keyword

# SOP class keyword fragments of objects that carry no image a model could take as input,
# with the reason shown to the user ("{modality}" is replaced by the series' modality).
_NON_IMAGE_FRAGMENTS: tuple[tuple[str, str], ...] = (
    ("SegmentationStorage", "SEG object, not an image"),
    ("RTStructureSetStorage", "RTSTRUCT object, not an image"),
    ("PresentationStateStorage", "presentation state, not an image"),
    ("SRStorage", "SR document, not an image"),
    ("KeyObjectSelectionDocumentStorage", "key object selection document, not an image"),
    ("RT", "{modality} object, not an image"),  # RT Plan, Dose, Treatment Record, Ion Plan, ...
    ("RealWorldValueMappingStorage", "real world value mapping, not an image"),
    ("RegistrationStorage", "registration object, not an image"),
    ("SpatialFiducialsStorage", "spatial fiducials, not an image"),
    ("AnnotationsStorage", "annotation object, not an image"),
    ("Encapsulated", "encapsulated document, not an image"),
    ("WaveformStorage", "waveform, not an image"),
    ("RawDataStorage", "raw data object, not an image"),
)


class SelectionRules(BaseModel):
    """Which series a model takes; build from a workflow's dict with :meth:`from_dict`."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    input: str = Field("dicom", description="data-type query the series must match, e.g. dicom:mod=ct")
    min_slices: int = Field(10, ge=0, description="fewer images than this: rejected as localizer / too few")
    exclude_non_image: bool = True
    exclude_secondary_capture: bool = True
    exclude_localizer: bool = True
    exclude_4d: bool = Field(True, description="passed to the loader, which detects 4D series")

    @field_validator("input")
    @classmethod
    def _valid_query(cls, value: str) -> str:
        DataTypeQuery.parse(value)  # raises MedhubError with the bad part named
        return value

    @property
    def query(self) -> DataTypeQuery:
        return DataTypeQuery.parse(self.input)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any] | None) -> SelectionRules:
        """Rules from workflow YAML data; a bad key or value raises a one-line MedhubError."""
        try:
            return cls.model_validate(dict(data or {}))
        except ValidationError as exc:
            first = exc.errors()[0]
            where = ".".join(str(p) for p in first["loc"]) or "selection rules"
            raise MedhubError(f"selection rules: {where}: {first['msg']}") from exc


@dataclass
class Selection:
    """The outcome: chosen series in scan order, and each rejected one with its reason."""

    chosen: list[Series] = field(default_factory=list)
    rejected: list[tuple[Series, str]] = field(default_factory=list)

    def reason(self, series: Series) -> str | None:
        """The rejection reason of a series (None when it was chosen or is unknown)."""
        for candidate, why in self.rejected:
            if candidate is series:
                return why
        return None


def select(series: list[Series], rules: SelectionRules | Mapping[str, Any] | None = None) -> Selection:
    """Split ``series`` into chosen and rejected (with exactly one reason each)."""
    if not isinstance(rules, SelectionRules):
        rules = SelectionRules.from_dict(rules)
    query = rules.query
    selection = Selection()
    for s in series:
        why = rejection_reason(s, rules, query)
        if why is None:
            selection.chosen.append(s)
        else:
            selection.rejected.append((s, why))
    return selection


def rejection_reason(series: Series, rules: SelectionRules, query: DataTypeQuery | None = None) -> str | None:
    """The first rule ``series`` fails, as a sentence, or None when the model can take it."""
    if rules.exclude_non_image and (why := non_image_reason(series)):
        return why
    if rules.exclude_secondary_capture and (why := secondary_capture_reason(series)):
        return why
    if rules.exclude_localizer and (why := localizer_reason(series, rules.min_slices)):
        return why
    return (query or rules.query).explain(series)


def non_image_reason(series: Series) -> str | None:
    """Why the series holds no image (SEG, RTSTRUCT, SR, ...), decided by SOP class."""
    uid = series.instances[0].sop_class_uid if series.instances else ""
    keyword = sop_class_keyword(uid)
    modality = series.modality or "DICOM"
    for fragment, reason in _NON_IMAGE_FRAGMENTS:
        if fragment == "RT":
            if keyword.startswith("RT") and keyword != "RTImageStorage":
                return reason.format(modality=modality)
        elif fragment in keyword:
            return reason.format(modality=modality)
    header = series.first_header if series.instances else None
    if header is not None and ("Rows" not in header or "Columns" not in header):
        name = keyword or uid or "unknown SOP class"
        return f"{modality} object ({name}) has no image pixel data"
    return None


def secondary_capture_reason(series: Series) -> str | None:
    """Screenshots and derived captures: SC SOP classes or ImageType DERIVED\\SECONDARY."""
    keyword = sop_class_keyword(series.instances[0].sop_class_uid) if series.instances else ""
    if "SecondaryCapture" in keyword:
        return f"secondary capture ({keyword})"
    image_type = [str(v).upper() for v in series.metadata.get("image_type", [])]
    if image_type[:2] == ["DERIVED", "SECONDARY"]:
        return "secondary capture (ImageType DERIVED\\SECONDARY)"
    return None


def localizer_reason(series: Series, min_slices: int) -> str | None:
    """Scouts and series too short for a 3D model."""
    image_type = [str(v).upper() for v in series.metadata.get("image_type", [])]
    if "LOCALIZER" in image_type:
        return "localizer (ImageType LOCALIZER)"
    slices = series.number_of_images
    if slices < min_slices:
        if slices == 1:
            return f"localizer or single image: 1 slice (model needs at least {min_slices})"
        return f"too few slices: {slices} (model needs at least {min_slices})"
    return None
