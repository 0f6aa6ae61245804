"""Choose the series a model runs on, and say in one sentence why each other one is left out.

The built-in rules run before the model's own data-type query, in a fixed order, so every
rejected series gets exactly one reason, the most basic one:

1. objects that are not images (SEG, RTSTRUCT, RT plans and doses, SR documents,
   presentation states, registrations, ...), decided by SOP class;
2. secondary captures (SC SOP classes, or ImageType ``DERIVED\\SECONDARY``);
3. localizers (ImageType contains ``LOCALIZER``) and series with too few slices (``min_slices``);
4. the model's query (``input``), e.g. ``dicom:mod=ct`` gives "MR, model needs CT";
5. series with more slices than the model takes (``max_slices``);
6. slices thicker than the model takes (``max_slice_thickness_mm``), read from SliceThickness
   (top level, or the Pixel Measures of an enhanced multi-frame file). A series that does not
   state its thickness passes here and is checked after loading against the slice spacing
   (:func:`volume_rejection_reason`), so an unknown thickness is never a silent pass.

The rules are plain data. Their defaults come from the model card's input (the card is the
contract); a workflow's ``select`` module overrides one only by naming it. 4D series (several
images per position) are always refused, by the loader, which knows the geometry: no model
here takes a 4D volume, so there is no switch for it.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from medhub.data.series import Series
from medhub.data.volume import Volume
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
    max_slices: int | None = Field(None, ge=1, description="more images than this: rejected as too many")
    max_missing_slices: int = Field(2, ge=0, description="longest run of missing slices the loader interpolates; "
                                                         "a longer gap refuses the series")
    max_slice_thickness_mm: float | None = Field(None, gt=0, description="thicker slices than this: rejected")
    exclude_non_image: bool = True
    exclude_secondary_capture: bool = True
    exclude_localizer: bool = True

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
    if why := (query or rules.query).explain(series):
        return why
    if why := too_many_slices_reason(series.number_of_images, rules.max_slices):
        return why
    return thickness_reason(slice_thickness(series), rules.max_slice_thickness_mm, "SliceThickness")


def too_many_slices_reason(slices: int, max_slices: int | None) -> str | None:
    """More images than the model takes (its card's ``max_slices``)."""
    if max_slices is not None and slices > max_slices:
        return f"too many slices: {slices} (model takes at most {max_slices})"
    return None


def thickness_reason(thickness_mm: float | None, max_mm: float | None, source: str) -> str | None:
    """Slices thicker than the model takes; ``source`` names where the thickness was read."""
    if max_mm is None or thickness_mm is None or thickness_mm <= max_mm + 1e-6:
        return None
    return f"slices too thick: {thickness_mm:g} mm ({source}), model takes at most {max_mm:g} mm"


def slice_thickness(series: Series) -> float | None:
    """SliceThickness of the series' first image in mm (enhanced files: its Pixel Measures), None if absent."""
    if not series.instances:
        return None
    header = series.first_header
    candidates = [header.get("SliceThickness")]
    for group in ("SharedFunctionalGroupsSequence", "PerFrameFunctionalGroupsSequence"):
        items = header.get(group) or []
        measures = (items[0].get("PixelMeasuresSequence") or []) if items else []
        if measures:
            candidates.append(measures[0].get("SliceThickness"))
    for value in candidates:
        try:
            thickness = float(value)
        except (TypeError, ValueError):
            continue
        if thickness > 0:
            return thickness
    return None


def volume_rejection_reason(series: Series | None, volume: Volume, rules: SelectionRules) -> str | None:
    """The rules a loaded volume can answer that its headers could not: the thickness of a series
    that does not state SliceThickness is taken as its slice spacing (the loader's grid step)."""
    if rules.max_slice_thickness_mm is None:
        return None
    if series is not None and slice_thickness(series) is not None:
        return None  # decided at selection from the header
    spacing = float(volume.spacing[2])
    return thickness_reason(spacing, rules.max_slice_thickness_mm, "no SliceThickness; slice spacing")


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
