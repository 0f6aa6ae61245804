"""Data-type queries in MHub's style: ``dicom:mod=ct:type=original``.

A query is a format part followed by ``:``-separated filters::

    dicom|nifti:mod=ct|mr:slices>=10:bodypart!=head:desc=*brain*

* **format**: ``dicom``, ``nifti``, ... ; ``a|b`` for alternatives; ``any`` or ``*`` (or an
  omitted format part, e.g. ``mod=ct``) matches every format.
* **filters** ``key<op>value`` with ``op`` one of ``=``, ``!=`` (``<>`` is accepted as an
  alias), ``>=``, ``<=``, ``>``, ``<``.
* **alternatives** are written with ``|``, as in MHub (``mod=ct|mr``); ``=`` matches when any
  alternative matches, ``!=`` when none does. A ``*`` inside a value is a wildcard.
* **case** never matters, neither in keys nor in values.
* **lists**: a value matches list-valued metadata (``image_type``, multi-valued DICOM tags)
  when it matches any element; ``type`` is the whole ImageType joined with ``\\``, so
  ``type=original*`` is a prefix match and ``image_type=localizer`` a membership test.
* **numbers**: ``>=``, ``<=``, ``>``, ``<`` compare numerically; ``=`` compares numerically
  when both sides are numbers (``slicethickness=1`` matches ``"1.0"``).
* **keys** are looked up in ``Series.metadata`` first (see :func:`medhub.inputs.scan.series_metadata`),
  then as a DICOM keyword on the series' first header (any tag: ``Manufacturer``,
  ``ConvolutionKernel``, ``slicethickness``, ...). A value that is absent (or empty) never
  satisfies ``=`` or a comparison, and always satisfies ``!=``; ``key=`` (empty value) asks
  for an absent or empty value.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from dataclasses import dataclass
from functools import cache
from typing import Any

from pydicom.datadict import keyword_dict
from pydicom.dataset import Dataset
from pydicom.multival import MultiValue
from pydicom.sequence import Sequence

from medhub.data.series import Series
from medhub.errors import MedhubError

OPERATORS = ("!=", "<>", ">=", "<=", "=", ">", "<")
_NUMERIC_OPS = {">=", "<=", ">", "<"}
_ANY_FORMAT = {"any", "*", ""}
_FILTER = re.compile(r"^\s*([A-Za-z_][A-Za-z0-9_]*)\s*(!=|<>|>=|<=|=|>|<)\s*(.*?)\s*$")
_FORMAT = re.compile(r"^[A-Za-z0-9_.*-]*$")


@dataclass(frozen=True)
class Condition:
    """One ``key<op>value`` filter; ``values`` holds the ``|`` alternatives."""

    key: str
    op: str
    values: tuple[str, ...]

    def __str__(self) -> str:
        return f"{self.key}{self.op}{'|'.join(self.values)}"


@dataclass(frozen=True)
class DataTypeQuery:
    """A parsed query; build it with :meth:`parse`, test series with :meth:`matches`."""

    formats: tuple[str, ...]
    conditions: tuple[Condition, ...] = ()
    text: str = ""

    @classmethod
    def parse(cls, text: str) -> DataTypeQuery:
        """Parse a query string; raise :class:`MedhubError` naming the bad part."""
        if not isinstance(text, str) or not text.strip():
            raise MedhubError(f"data-type query {text!r}: empty query")
        parts = text.strip().split(":")
        formats: tuple[str, ...] = ("any",)
        if not _FILTER.match(parts[0]):
            fmt = parts.pop(0).strip().lower()
            alternatives = tuple(f.strip() for f in fmt.split("|"))
            if not all(_FORMAT.match(f) for f in alternatives) or ("" in alternatives and len(alternatives) > 1):
                raise MedhubError(f"data-type query {text!r}: bad format part {fmt!r}")
            formats = tuple("any" if f in _ANY_FORMAT else f for f in alternatives)
        conditions = []
        for part in parts:
            m = _FILTER.match(part)
            if m is None:
                raise MedhubError(
                    f"data-type query {text!r}: bad filter {part!r} (expected key=value, key!=value, key>=number, ...)"
                )
            key, op, raw = m.group(1).lower(), m.group(2), m.group(3)
            if op == "<>":
                op = "!="
            values = tuple(v.strip() for v in raw.split("|"))
            if op in _NUMERIC_OPS and (len(values) != 1 or _number(values[0]) is None):
                raise MedhubError(f"data-type query {text!r}: {part!r} needs one number after {op}")
            conditions.append(Condition(key, op, values))
        return cls(formats=formats, conditions=tuple(conditions), text=text.strip())

    def __str__(self) -> str:
        return ":".join(["|".join(self.formats), *(str(c) for c in self.conditions)])

    def matches(self, series: Series | Mapping[str, Any]) -> bool:
        """True when the series (or a plain metadata mapping) satisfies every part."""
        return self.explain(series) is None

    def explain(self, series: Series | Mapping[str, Any]) -> str | None:
        """None when it matches, else a short reason naming the first unmet part.

        Example: ``"MR, model needs CT"`` for ``dicom:mod=ct`` on an MR series.
        """
        metadata, header = _sources(series)
        fmt = str(metadata.get("format", "dicom")).lower()
        if "any" not in self.formats and fmt not in self.formats:
            return f"{fmt} data, model needs {' or '.join(self.formats)}"
        for cond in self.conditions:
            actual = lookup(cond.key, metadata, header)
            if not _satisfies(cond, actual):
                return _reason(cond, actual)
        return None


def _sources(series: Series | Mapping[str, Any]) -> tuple[Mapping[str, Any], Dataset | None]:
    if isinstance(series, Series):
        header = series.first_header if series.instances else None
        return series.metadata, header
    return series, None


@cache
def _keywords_by_lower() -> dict[str, str]:
    return {k.lower(): k for k in keyword_dict}


def lookup(key: str, metadata: Mapping[str, Any], header: Dataset | None) -> Any:
    """The value for ``key``: metadata first, else the DICOM keyword on the header (None if absent)."""
    key = key.lower()
    if key in metadata:
        return metadata[key]
    keyword = _keywords_by_lower().get(key)
    if keyword is None or header is None or keyword not in header:
        return None
    return _plain(header[keyword].value)


def _plain(value: Any) -> Any:
    """A DICOM value as str / number / list of those (sequences cannot be matched: None)."""
    if isinstance(value, Sequence):
        return None
    if isinstance(value, MultiValue | list | tuple):
        return [_plain(v) for v in value]
    if isinstance(value, int | float) and not isinstance(value, bool):
        return value
    if isinstance(value, bytes):
        return None
    return None if value is None else str(value)


def _elements(actual: Any) -> list[Any]:
    """The candidate values a filter is tested against (a list matches if any element does).

    Empty strings count as absent (DICOM type 2 attributes are often present but empty).
    """
    values = actual if isinstance(actual, list | tuple) else [actual]
    return [a for a in values if a is not None and not (isinstance(a, str) and not a.strip())]


def _number(value: Any) -> float | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, int | float):
        return float(value)
    try:
        number = float(str(value).strip())
    except ValueError:
        return None
    return None if math.isnan(number) else number


def _text(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value).strip().lower()


def _equal(actual: Any, wanted: str) -> bool:
    wanted_l = wanted.lower()
    if "*" in wanted_l:
        pattern = ".*".join(re.escape(p) for p in wanted_l.split("*"))
        return re.fullmatch(pattern, _text(actual), flags=re.DOTALL) is not None
    a, w = _number(actual), _number(wanted)
    if a is not None and w is not None:
        return math.isclose(a, w, rel_tol=1e-9, abs_tol=1e-9)
    return _text(actual) == wanted_l


def _compare(actual: Any, op: str, wanted: float) -> bool:
    a = _number(actual)
    if a is None:
        return False
    return {">=": a >= wanted, "<=": a <= wanted, ">": a > wanted, "<": a < wanted}[op]


def _satisfies(cond: Condition, actual: Any) -> bool:
    elements = _elements(actual)
    if cond.op == "=":
        return any(_equal(a, v) for a in elements for v in cond.values) or (not elements and "" in cond.values)
    if cond.op == "!=":
        return not any(_equal(a, v) for a in elements for v in cond.values) and not (not elements and "" in cond.values)
    wanted = _number(cond.values[0])
    assert wanted is not None  # checked by parse
    return any(_compare(a, cond.op, wanted) for a in elements)


def _show(actual: Any) -> str:
    if isinstance(actual, list | tuple):
        return "\\".join(str(a) for a in actual)
    return _text(actual) if isinstance(actual, bool) else str(actual)


def _reason(cond: Condition, actual: Any) -> str:
    """A sentence a person understands, e.g. "MR, model needs CT" or "slices 4, model needs slices>=10"."""
    alternatives = " or ".join(cond.values)
    if cond.key == "mod" and cond.op in ("=", "!="):
        shown = _show(actual).upper() if _elements(actual) else "no modality"
        alternatives = " or ".join(v.upper() for v in cond.values)
        if cond.op == "=":
            return f"{shown}, model needs {alternatives}"
        return f"{shown}, model excludes {alternatives}"
    if not _elements(actual):
        return f"no {cond.key} in the data, model needs {cond}"
    if cond.op == "=":
        return f"{cond.key} {_show(actual)}, model needs {cond.key} {alternatives}"
    if cond.op == "!=":
        return f"{cond.key} {_show(actual)}, model excludes {cond.key} {alternatives}"
    return f"{cond.key} {_show(actual)}, model needs {cond}"
