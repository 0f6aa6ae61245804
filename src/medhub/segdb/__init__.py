"""The segment database: segment IDs (``BRAIN``, ``LEFT_LUNG``) → names, SNOMED CT codes, colours.

Models name their outputs by these IDs; writers turn them into DICOM segment descriptions.
Entries live in YAML data files in this folder, one per concern (see ``load_segment_database``).
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Code:
    """A coded concept: (value, scheme designator, meaning), e.g. ("12738006", "SCT", "Brain")."""

    value: str
    scheme: str
    meaning: str


@dataclass(frozen=True)
class SegmentSpec:
    """One segment as DICOM SEG describes it (PS3.3 C.8.20.4 Segment Description)."""

    id: str
    name: str
    category: Code
    type: Code
    modifier: Code | None = None
    color: tuple[int, int, int] = (128, 128, 128)


from medhub.segdb.database import describe_segment, get_segment, load_segment_database  # noqa: E402

__all__ = ["Code", "SegmentSpec", "describe_segment", "get_segment", "load_segment_database"]
