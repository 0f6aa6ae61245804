"""Pixel padding (PS3.3 C.7.5.1.1.2): pixels that are not part of the image, masked before a model sees them.

Scanners fill the area outside the reconstruction circle (or outside a cropped field of view)
with a padding value -- often -2000, -1024 or a high value such as 4095 -- and say so with
Pixel Padding Value (0028,0120), alone (one value) or with Pixel Padding Range Limit (0028,0121)
(every stored value between the two, inclusive). Both are in stored pixel units, before the
rescale. A model that sees padding as tissue segments it (a high padding value is "bone" to a
threshold), so the loader sets padding to the modality's background: -1024 HU (air) for CT, and
otherwise the smallest value of the image's real pixels; the report says how many voxels.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

import numpy as np
from pydicom.dataset import Dataset

CT_BACKGROUND_HU = -1024.0


@dataclass(frozen=True)
class Padding:
    """Stored values ``low..high`` (inclusive) are padding."""

    low: int
    high: int

    def mask(self, stored: np.ndarray) -> np.ndarray:
        if self.low == self.high:
            return stored == self.low
        return (stored >= self.low) & (stored <= self.high)

    def describe(self) -> str:
        if self.low == self.high:
            return f"PixelPaddingValue {self.low}"
        return f"PixelPaddingValue/PixelPaddingRangeLimit {self.low}..{self.high}"


def padding_of(header: Dataset) -> Padding | None:
    """The padding a header declares, or None (absent or unreadable values declare nothing)."""
    value = _stored_value(header, 0x00280120)
    if value is None:
        return None
    limit = _stored_value(header, 0x00280121)
    if limit is None:
        return Padding(value, value)
    return Padding(min(value, limit), max(value, limit))


def background_value(modality: str, real_minimum: float | None) -> float:
    """What padding becomes: air in HU for CT, else the image's own minimum (0 when it has none)."""
    if modality.upper() == "CT":
        return CT_BACKGROUND_HU
    return float(real_minimum) if real_minimum is not None else 0.0


def _stored_value(header: Dataset, tag: int) -> int | None:
    """A US/SS value (its VR depends on PixelRepresentation; undecided it may still be raw bytes)."""
    if tag not in header:
        return None
    try:
        value = header[tag].value
    except Exception:  # noqa: BLE001 - an unreadable value declares no padding
        return None
    if isinstance(value, bytes):  # an OB/UN element, or US/SS left undecided: the file's byte order
        if len(value) < 2:
            return None
        signed = str(header.get("PixelRepresentation", 0)) == "1"
        little = header.original_encoding[1] is not False
        return int(struct.unpack(("<" if little else ">") + ("h" if signed else "H"), value[:2])[0])
    if not isinstance(value, str | int) and hasattr(value, "__len__"):  # multi-valued: the standard allows one
        value = value[0] if len(value) else None
    try:
        return int(value)
    except (TypeError, ValueError, OverflowError):
        return None
