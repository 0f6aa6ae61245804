"""Display colours a reader can tell apart: the segment database's, changed only where two clash.

The segment database gives every structure one recommended colour (the SEG's Recommended
Display CIELab Value), chosen structure by structure. Two structures that touch can then be
drawn in nearly the same colour (ct-body's body and right lung differ by ΔE00 7.5,
TotalSegmentator's femurs and sternum share one), and a radiologist cannot tell where one ends.
The rule, applied the same way by the viewer and the preview:

* colours are compared by their CIEDE2000 colour difference (ΔE00, CIE 142-2001), which
  follows perceived difference far better than distances in RGB;
* two segments must differ by at least :data:`MIN_DELTA_E` when they are neighbours: they touch
  or lie at most :data:`NEIGHBOUR_GAP` voxels apart in the label map (:func:`neighbours`); with
  no label map at hand, every pair of the model's segments counts as neighbours. The grey image
  under the overlay is every segment's neighbour too: a colour must differ by at least
  :data:`MIN_GREY_DELTA_E` from the grey of its own lightness (the database's near-white BRAIN,
  made for 3D surfaces, all but vanishes over a grey MR);
* segments are taken largest first (in label order without a label map), so the big, familiar
  structures keep their colours; a segment keeps its database colour unless it is closer
  than that to grey or to a neighbour already coloured; then it gets the candidate colour (a
  fixed, evenly spread set of hues at a few lightness and chroma levels) closest to its database
  colour among those far enough from grey and its neighbours (or, when none is, the one farthest
  from them).

So a structure keeps its database colour wherever that is distinct, and any change is the same
for the same label map (the viewer and the preview of one series agree).
"""

from __future__ import annotations

from collections.abc import Mapping
from functools import lru_cache

import numpy as np
from skimage.color import deltaE_ciede2000, lab2rgb, rgb2lab

MIN_DELTA_E = 20.0
"""Smallest CIEDE2000 difference between two neighbouring segments (about ten just-noticeable steps)."""

MIN_GREY_DELTA_E = 12.0
"""Smallest CIEDE2000 difference between a segment's colour and the grey of its lightness (the image under it)."""

NEIGHBOUR_GAP = 2
"""Segments whose voxels come this close along an axis (1 = touching) are neighbours."""

RGB = tuple[int, int, int]


def to_lab(colors: np.ndarray) -> np.ndarray:
    """sRGB colours (n, 3) in 0..255 → CIELab (n, 3)."""
    return rgb2lab(np.asarray(colors, dtype=float).reshape(1, -1, 3) / 255.0)[0]


def delta_e(first: RGB, second: RGB) -> float:
    """The CIEDE2000 difference between two sRGB colours."""
    lab = to_lab(np.array([first, second]))
    return float(deltaE_ciede2000(lab[0], lab[1]))


@lru_cache(maxsize=1)
def _candidates() -> tuple[np.ndarray, np.ndarray]:
    """Candidate replacement colours, (rgb, lab): 24 hues x 3 lightness x 2 chroma levels inside sRGB."""
    hues = np.deg2rad(np.arange(0, 360, 15))
    lch = np.array([(lightness, chroma, hue) for lightness in (55.0, 70.0, 85.0) for chroma in (45.0, 70.0)
                    for hue in hues])
    lab = np.stack([lch[:, 0], lch[:, 1] * np.cos(lch[:, 2]), lch[:, 1] * np.sin(lch[:, 2])], axis=1)
    rgb = lab2rgb(lab.reshape(1, -1, 3))[0]
    inside = np.all((rgb >= 0.0) & (rgb <= 1.0), axis=1)
    rgb8 = np.rint(rgb[inside] * 255).astype(int)
    return rgb8, to_lab(rgb8)


def display_colors(labels: np.ndarray, colors: Mapping[int, RGB]) -> dict[int, RGB]:
    """The display colours for this label map: :func:`distinct_colors` with its neighbours and sizes."""
    counts = np.bincount(np.asarray(labels).ravel(order="K"), minlength=256)
    sizes = {label: int(counts[label]) if label < counts.size else 0 for label in colors}
    pairs = neighbours(labels) if np.count_nonzero(counts[1:]) > 1 else set()
    return distinct_colors(colors, pairs, sizes)


def neighbours(labels: np.ndarray, gap: int = NEIGHBOUR_GAP) -> set[tuple[int, int]]:
    """Pairs ``(a, b)``, ``a < b``, of labels whose voxels lie within ``gap`` voxels along some axis."""
    labels = np.asarray(labels)
    codes: set[int] = set()
    for axis in range(labels.ndim):
        for step in range(1, gap + 1):
            if labels.shape[axis] <= step:
                continue
            before = [slice(None)] * labels.ndim
            after = [slice(None)] * labels.ndim
            before[axis], after[axis] = slice(0, -step), slice(step, None)
            first, second = labels[tuple(before)], labels[tuple(after)]
            differ = (first != second) & (first > 0) & (second > 0)
            if differ.any():
                low = np.minimum(first[differ], second[differ]).astype(np.int64)
                high = np.maximum(first[differ], second[differ]).astype(np.int64)
                codes.update(np.unique(low * 65536 + high).tolist())
    return {(code // 65536, code % 65536) for code in codes}


def distinct_colors(colors: Mapping[int, RGB], pairs: set[tuple[int, int]] | None = None,
                    sizes: Mapping[int, int] | None = None, min_delta_e: float = MIN_DELTA_E,
                    min_grey_delta_e: float = MIN_GREY_DELTA_E) -> dict[int, RGB]:
    """Label → display colour by the rule above.

    ``pairs`` are the neighbours (None: every pair counts); ``sizes`` (label → voxels) sets the
    order, largest first (None: label order).
    """
    chosen: dict[int, RGB] = {}
    chosen_lab: dict[int, np.ndarray] = {}
    candidates_rgb, candidates_lab = _candidates()
    candidates_grey = _from_grey(candidates_lab)
    order = sorted(colors, key=lambda label: (-(sizes or {}).get(label, 0), label))
    for label in order:
        color = _rgb(colors[label])
        lab = to_lab(np.array([color]))[0]
        near = [chosen_lab[other] for other in chosen_lab
                if pairs is None or (min(label, other), max(label, other)) in pairs]
        clash = _from_grey(lab[None])[0] < min_grey_delta_e or (
            bool(near) and _differences(lab[None], np.array(near)).min() < min_delta_e)
        if clash:
            apart = np.full(len(candidates_lab), np.inf) if not near else \
                _differences(candidates_lab, np.array(near)).min(axis=1)
            like = _differences(candidates_lab, lab[None])[:, 0]  # how close each candidate is to the database colour
            far_enough = (apart >= min_delta_e) & (candidates_grey >= min_grey_delta_e)
            best = int(np.argmin(np.where(far_enough, like, np.inf))) if far_enough.any() else int(np.argmax(apart))
            color, lab = _rgb(candidates_rgb[best]), candidates_lab[best]
        chosen[label] = color
        chosen_lab[label] = lab
    return {label: chosen[label] for label in sorted(chosen)}


def _rgb(values: RGB | np.ndarray) -> RGB:
    """Three plain ints (numpy integers are not JSON- or DICOM-ready)."""
    red, green, blue = (int(c) for c in values)
    return red, green, blue


def _from_grey(lab: np.ndarray) -> np.ndarray:
    """CIEDE2000 difference of each Lab colour (n, 3) to the grey of its lightness: how it stands out on an image."""
    grey = np.column_stack([lab[:, 0], np.zeros(len(lab)), np.zeros(len(lab))])
    return deltaE_ciede2000(lab, grey)


def _differences(first: np.ndarray, second: np.ndarray) -> np.ndarray:
    """CIEDE2000 difference of every Lab colour in ``first`` (n, 3) to every one in ``second`` (m, 3): (n, m)."""
    a = np.broadcast_to(first[:, None, :], (len(first), len(second), 3))
    b = np.broadcast_to(second[None, :, :], (len(first), len(second), 3))
    return deltaE_ciede2000(a, b)
