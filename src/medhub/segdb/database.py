"""Load the segment database from the YAML data files shipped in this package.

Each ``*.yaml`` file in ``medhub/segdb/`` holds one concern (``brain.yaml``, ``body.yaml``,
``thorax_abdomen.yaml``) as ``segments: [...]`` entries with ``id``, ``name``, ``category``,
``type``, optional ``modifier`` (laterality) and ``color``. An optional ``anchors`` list holds
YAML anchors for codes reused by many entries; the loader ignores it. Adding a structure is
a data change, not a code change; ``tests/test_segdb.py`` checks every code against
pydicom's SNOMED CT dictionary so invented codes cannot slip in.
"""

from __future__ import annotations

import re
from functools import lru_cache
from importlib import resources
from typing import Any

import yaml

from medhub.errors import MedhubError
from medhub.segdb import Code, SegmentSpec

# libyaml's safe loader parses the database ~8x faster than the pure-Python one (it is read on every run).
_SAFE_LOADER = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
_ID_PATTERN = re.compile(r"^[A-Z][A-Z0-9]*(_[A-Z0-9]+)*$")
_ALLOWED_KEYS = {"id", "name", "category", "type", "modifier", "color"}


def _code(raw: Any, where: str) -> Code:
    """Build a :class:`Code` from ``{value, scheme, meaning}``; all three are required."""
    if not isinstance(raw, dict) or set(raw) != {"value", "scheme", "meaning"}:
        raise MedhubError(f"{where}: a code needs exactly value, scheme and meaning, got {raw!r}")
    value, scheme, meaning = (str(raw[k]).strip() for k in ("value", "scheme", "meaning"))
    if not (value and scheme and meaning):
        raise MedhubError(f"{where}: empty value, scheme or meaning in {raw!r}")
    return Code(value=value, scheme=scheme, meaning=meaning)


def _color(raw: Any, where: str) -> tuple[int, int, int]:
    if (
        not isinstance(raw, list | tuple)
        or len(raw) != 3
        or not all(isinstance(c, int) and not isinstance(c, bool) and 0 <= c <= 255 for c in raw)
    ):
        raise MedhubError(f"{where}: color must be three integers 0..255, got {raw!r}")
    return (raw[0], raw[1], raw[2])


def _spec(raw: Any, source: str) -> SegmentSpec:
    """Validate one YAML entry; messages name the file and the entry so a typo is found fast."""
    if not isinstance(raw, dict):
        raise MedhubError(f"segment database {source}: entry is not a mapping: {raw!r}")
    seg_id = raw.get("id")
    where = f"segment database {source}, entry {seg_id!r}"
    if not isinstance(seg_id, str) or not _ID_PATTERN.match(seg_id):
        raise MedhubError(f"{where}: id must be UPPER_SNAKE_CASE")
    unknown = set(raw) - _ALLOWED_KEYS
    if unknown:
        raise MedhubError(f"{where}: unknown keys {sorted(unknown)}")
    name = raw.get("name")
    if not isinstance(name, str) or not name.strip() or len(name) > 64:
        raise MedhubError(f"{where}: name must be a non-empty string of at most 64 characters (LO)")
    modifier = raw.get("modifier")
    return SegmentSpec(
        id=seg_id,
        name=name.strip(),
        category=_code(raw.get("category"), f"{where}, category"),
        type=_code(raw.get("type"), f"{where}, type"),
        modifier=None if modifier is None else _code(modifier, f"{where}, modifier"),
        color=_color(raw.get("color"), where),
    )


@lru_cache(maxsize=1)
def _load() -> dict[str, SegmentSpec]:
    database: dict[str, SegmentSpec] = {}
    origin: dict[str, str] = {}
    files = sorted(
        (f for f in resources.files("medhub.segdb").iterdir() if f.name.endswith(".yaml")),
        key=lambda f: f.name,
    )
    if not files:
        raise MedhubError("segment database is empty: no *.yaml files in the medhub.segdb package")
    for file in files:
        try:
            document = yaml.load(file.read_text(encoding="utf-8"), Loader=_SAFE_LOADER) or {}
        except yaml.YAMLError as error:
            raise MedhubError(f"segment database {file.name}: invalid YAML ({error})") from error
        entries = document.get("segments") if isinstance(document, dict) else None
        if not isinstance(entries, list):
            raise MedhubError(f"segment database {file.name}: needs a top-level 'segments' list")
        for raw in entries:
            spec = _spec(raw, file.name)
            if spec.id in database:
                raise MedhubError(f"segment database: ID {spec.id!r} defined twice ({origin[spec.id]} and {file.name})")
            database[spec.id] = spec
            origin[spec.id] = file.name
    return database


def load_segment_database() -> dict[str, SegmentSpec]:
    """All segments by ID. Parsed once per process; each call returns a fresh dict (specs are frozen)."""
    return dict(_load())


def get_segment(segment_id: str) -> SegmentSpec:
    """The segment with this ID, or a one-line error naming the unknown ID."""
    try:
        return _load()[segment_id]
    except KeyError:
        raise MedhubError(f"unknown segment ID {segment_id!r} (not in the segment database)") from None


UNKNOWN_COLOR = (128, 128, 128)


def describe_segment(label: int, segment_id: str) -> dict[str, Any]:
    """A model's segment as ``medhub info`` and the server show it: label, ID, name, colour, SNOMED CT codes.

    An ID missing from the database keeps its row (named by its ID, grey, no codes) with an ``error``.
    """
    spec = _load().get(segment_id)
    if spec is None:
        return {"label": label, "id": segment_id, "name": segment_id, "color": list(UNKNOWN_COLOR),
                "category": None, "type": None, "modifier": None, "error": "not in the segment database"}

    def code(found: Any) -> dict[str, str] | None:
        return None if found is None else {"value": found.value, "scheme": found.scheme, "meaning": found.meaning}

    return {"label": label, "id": segment_id, "name": spec.name, "color": list(spec.color),
            "category": code(spec.category), "type": code(spec.type), "modifier": code(spec.modifier)}
