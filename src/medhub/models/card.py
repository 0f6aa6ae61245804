"""Model cards: what a model is, what it needs and what it produces, read from ``card.yaml``.

The card is the contract between a model author and the hub: selection reads ``inputs``,
writers read ``outputs.segments`` (label value → segment database ID), ``medhub models`` and
``medhub info`` print the rest. It is a superset of the parts of MHub's ``meta.json`` that
matter here (id, name, title, description, inputs, outputs, architecture, training, citation,
licences, version), so :meth:`ModelCard.to_mhub_meta` can export one.

Unknown keys are refused (``extra="forbid"``): a typo in a card is an error the author sees
at ``medhub check``, not a field silently ignored.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import AliasChoices, BaseModel, ConfigDict, Field, ValidationError, field_validator

from medhub.errors import MedhubError

_ID_PATTERN = re.compile(r"^[a-z0-9]+(-[a-z0-9]+)*$")
_QUERY_PATTERN = re.compile(r"^[a-z]+(:[A-Za-z0-9_]+=[^:]+)*$")

TrainingType = Literal["supervised", "self-supervised", "semi-supervised", "unsupervised", "algorithmic"]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", populate_by_name=True)


class InputSpec(_Strict):
    """One model input: a data-type query plus the selection rules a series must meet.

    ``query`` uses MHub's syntax (``dicom:mod=mr``, ``dicom:mod=ct:type=axial``). The rules are
    defaults; a workflow's ``select`` module can override them.
    """

    query: str
    description: str = ""
    min_slices: int | None = Field(default=None, ge=1)
    max_slices: int | None = Field(default=None, ge=1)
    max_slice_thickness_mm: float | None = Field(default=None, gt=0)
    body_part: str | None = None

    @field_validator("query")
    @classmethod
    def _check_query(cls, value: str) -> str:
        if not _QUERY_PATTERN.match(value):
            raise ValueError(f"not a data-type query like 'dicom:mod=mr': {value!r}")
        return value

    @property
    def modality(self) -> str | None:
        """The ``mod=`` value of the query, upper-case as DICOM writes it (``MR``), if any."""
        for part in self.query.split(":")[1:]:
            key, _, value = part.partition("=")
            if key == "mod":
                return value.upper()
        return None


class ValueSpec(_Strict):
    """A scalar the model reports per series (e.g. ``brain_volume_ml``)."""

    name: str
    unit: str = ""
    description: str = ""


class OutputSpec(_Strict):
    """What ``predict`` returns: label values → segment IDs, and named scalar values."""

    segments: dict[int, str] = Field(default_factory=dict)
    values: list[ValueSpec] = Field(default_factory=list)

    @field_validator("segments")
    @classmethod
    def _check_segments(cls, value: dict[int, str]) -> dict[int, str]:
        if any(label <= 0 or label > 255 for label in value):
            raise ValueError("label values must be 1..255 (0 is background)")
        if len(set(value.values())) != len(value):
            raise ValueError("a segment ID appears under two label values")
        return value


class Licence(_Strict):
    """Licences of the code and of the weights, as SPDX identifiers where one exists."""

    code: str
    weights: str


class WeightsSpec(_Strict):
    """One weights file: where it comes from and how to check it.

    ``bundled_in`` names a pip package that ships the file (no download at run time);
    otherwise ``url`` and ``sha256`` are required so the cache can verify the download.
    """

    name: str
    url: str | None = None
    sha256: str | None = Field(default=None, pattern=r"^[0-9a-f]{64}$")
    bundled_in: str | None = None


class ModelCard(_Strict):
    """The parsed ``card.yaml`` of one model."""

    id: str
    name: str
    title: str
    description: str
    version: str
    task: Literal["segmentation", "classification", "regression", "detection"] = "segmentation"
    modality: list[str]
    body_part: str
    inputs: list[InputSpec] = Field(min_length=1)
    outputs: OutputSpec
    architecture: str
    training_type: TrainingType
    citation: str = ""
    publications: list[str] = Field(default_factory=list)
    licence: Licence = Field(validation_alias=AliasChoices("licence", "license"))
    source: str = Field(description="where the code lives: upstream repository URL, or the package if built in")
    requirements: list[str] = Field(default_factory=list)
    weights: list[WeightsSpec] = Field(default_factory=list)
    devices: list[Literal["cpu", "cuda", "mps"]] = Field(default_factory=lambda: ["cpu"])

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

    @property
    def package_name(self) -> str:
        """The folder / Python package name of a built-in model (``ct-body`` → ``ct_body``)."""
        return self.id.replace("-", "_")

    def to_mhub_meta(self) -> dict[str, Any]:
        """The card in MHub's ``meta.json`` shape, for exchange with the MHub catalogue."""
        return {
            "id": self.id,
            "name": self.name,
            "title": self.title,
            "summary": {
                "description": self.description,
                "inputs": [
                    {
                        "label": f"input {i + 1}",
                        "description": spec.description,
                        "format": spec.query.split(":")[0].upper(),
                        "modality": spec.modality or ",".join(self.modality),
                        "bodypartexamined": spec.body_part or self.body_part,
                    }
                    for i, spec in enumerate(self.inputs)
                ],
                "outputs": [
                    {
                        "label": "Segmentation",
                        "type": "Segmentation",
                        "description": ", ".join(self.outputs.segments.values()),
                        "classes": list(self.outputs.segments.values()),
                    }
                ]
                if self.outputs.segments
                else [],
                "model": {"architecture": self.architecture, "training": self.training_type},
            },
            "details": {
                "name": self.title,
                "version": self.version,
                "type": self.architecture,
                "cite": self.citation,
                "license": {"code": self.licence.code, "weights": self.licence.weights},
                "publications": [{"uri": uri} for uri in self.publications],
                "github": self.source,
            },
        }


def load_card(path: Path) -> ModelCard:
    """Read and validate a ``card.yaml``; any problem becomes a one-line :class:`MedhubError`."""
    path = Path(path)
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise MedhubError(f"model card not found: {path}") from None
    except yaml.YAMLError as exc:
        raise MedhubError(f"{path}: not valid YAML ({str(exc).splitlines()[0]})") from None
    if not isinstance(data, dict):
        raise MedhubError(f"{path}: a model card must be a mapping of fields (id, name, title, ...)")
    try:
        return ModelCard.model_validate(data)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first["loc"]) or "card"
        more = f" (and {exc.error_count() - 1} more)" if exc.error_count() > 1 else ""
        raise MedhubError(f"{path}: invalid model card at '{where}': {first['msg']}{more}") from None
