"""``--roi-subset``: the segments of a multi-structure model a run keeps, checked against the card before any work.

TotalSegmentator users name the structures they want (``--roi_subset liver spleen``); medhub
takes the same habit for every model whose card declares several segments. The names are the
card's segment IDs (``LIVER``, ``RIGHT_KIDNEY``), matched without regard to case, with ``-`` or a
space standing for ``_``; a name the card does not have is refused with one line that names it,
suggests the closest segment and says what is allowed. The CLI, the server (a 422) and the
pipeline itself call :func:`resolve_roi_subset`, so the three refuse the same names the same way.
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable
from typing import Any

from medhub.errors import MedhubError

LISTED = 20  # a longer list of allowed names points to `medhub info MODEL` instead of filling the line


def split_names(values: Iterable[str]) -> list[str]:
    """``["LIVER,SPLEEN", "AORTA"]`` → ``["LIVER", "SPLEEN", "AORTA"]``: repeated options and comma lists alike."""
    return [name.strip() for value in values for name in str(value).split(",") if name.strip()]


def _key(name: str) -> str:
    return name.strip().upper().replace("-", "_").replace(" ", "_")


def _suggestion(name: str, known: list[str]) -> str | None:
    """The segment a mistyped name most likely means: the same words in another order (TotalSegmentator's
    ``kidney_right`` for ``RIGHT_KIDNEY``), else the closest spelling."""
    words = sorted(_key(name).split("_"))
    same_words = [segment for segment in known if sorted(segment.split("_")) == words]
    if same_words:
        return same_words[0]
    close = difflib.get_close_matches(_key(name), known, n=1, cutoff=0.6)
    if close:
        return close[0]
    containing = [segment for segment in known if _key(name) in segment]
    return containing[0] if len(containing) == 1 else None


def _allowed(card: Any, known: list[str]) -> str:
    if len(known) <= LISTED:
        return f"model {card.id} has the segments {', '.join(known)}"
    return f"model {card.id} has {len(known)} segments ({', '.join(known[:5])}, ...: `medhub info {card.id}` " \
           "lists them all)"


def resolve_roi_subset(card: Any, names: Iterable[str]) -> tuple[str, ...]:
    """The card's segment IDs for ``names`` (in the card's order, each once); empty when no names are given.

    Refused with one line (a :class:`MedhubError`, exit code 2 / HTTP 422): a model without
    several segments, and any name that is not one of the card's segments.
    """
    wanted = split_names(names)
    if not wanted:
        return ()
    segments = dict(card.outputs.segments)
    known = list(segments.values())
    if len(known) < 2:
        what = f"one segment ({known[0]})" if known else "no segments"
        raise MedhubError(f"--roi-subset: model {card.id} has {what}; the option chooses among the segments of a "
                          "model that has several")
    by_key = {_key(segment): segment for segment in known}
    chosen: set[str] = set()
    for name in wanted:
        segment = by_key.get(_key(name))
        if segment is None:
            hint = _suggestion(name, known)
            guess = f"did you mean {hint}? " if hint else ""
            raise MedhubError(f"--roi-subset: {name!r} is not a segment of model {card.id}; {guess}"
                              f"{_allowed(card, known)}")
        chosen.add(segment)
    return tuple(segment for segment in known if segment in chosen)


def kept_values(card: Any, subset: Iterable[str]) -> set[int]:
    """The card's label values of the segments in ``subset``."""
    keep = set(subset)
    return {int(value) for value, segment in card.outputs.segments.items() if segment in keep}
