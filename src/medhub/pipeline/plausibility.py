"""Is a result plausible? Every prediction against the ranges its card declares (``outputs.plausible``).

A model answers whatever it is given: a brain-extraction network on an abdominal CT returns a
3 litre "brain", a lung model on a scan read with its left and right swapped returns a right
lung on the left. Such results look as confident as correct ones. The card states what every
correct result looks like (:class:`medhub.hub.card.PlausibleRange`: a volume range, a share of
the scan, containment, laterality); :func:`check_result` measures the prediction against each
and returns one sentence per violation, in the words a person acts on
("brain 3188 ml, expected 800–2200 ml; is this a brain MR?"). Values that are not finite numbers
are always a violation.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from scipy import ndimage as ndi

from medhub.data.prediction import Prediction
from medhub.data.volume import Volume
from medhub.hub.card import PlausibleRange
from medhub.segdb import get_segment

_IN_PLANE = np.zeros((3, 3, 3), dtype=bool)
_IN_PLANE[:, :, 1] = ndi.generate_binary_structure(2, 1)  # 4-connectivity within one slice (axis 2)


@dataclass
class Plausibility:
    """What :func:`check_result` found: the checks made and one sentence per violation."""

    checks: int = 0
    violations: list[str] = field(default_factory=list)
    skipped: int = 0  # ranges naming segments the model was not asked for (--roi-subset)

    @property
    def reason(self) -> str:
        """The report's reason for an implausible result: ``implausible: ...; ...``."""
        return "implausible: " + "; ".join(self.violations)


def check_result(card: Any, volume: Volume | None, prediction: Prediction,
                 predicted: set[str] | None = None) -> Plausibility:
    """Measure ``prediction`` (on the grid of ``volume``) against the card's plausible ranges.

    ``predicted``: the segments the model was asked for, when it predicted only some
    (``--roi-subset`` handed to the runner): a range naming another segment cannot be judged and
    is left out (``skipped`` counts them). None: the model predicted all its segments.
    """
    found = Plausibility()
    for name, value in prediction.values.items():
        if isinstance(value, float) and not math.isfinite(value):
            found.violations.append(f"{name} is {value} (not a number)")
    found.checks += len(prediction.values)
    if prediction.embedding is not None:
        found.checks += 1
        vector = np.asarray(prediction.embedding.vector, dtype=float)
        if not np.isfinite(vector).all():
            found.violations.append(f"the embedding holds {int((~np.isfinite(vector)).sum())} values that are not "
                                    "finite numbers")
    rules: list[PlausibleRange] = list(card.outputs.plausible)
    if predicted is not None:
        judged = [rule for rule in rules if _judged(rule, card, predicted)]
        found.skipped, rules = len(rules) - len(judged), judged
    if not rules:
        return found
    measure = _Measure(volume, prediction)
    for rule in rules:
        found.checks += 1
        problem = _segment_problem(rule, measure) if rule.segment is not None else _value_problem(rule, prediction)
        if problem:
            found.violations.append(f"{problem}; {rule.hint}" if rule.hint else problem)
    return found


# ----------------------------------------------------------------------------------- the rules


def _judged(rule: PlausibleRange, card: Any, predicted: set[str]) -> bool:
    """Can ``rule`` be judged when the model predicted only ``predicted``? (A value: when its segment was.)"""
    if rule.value is not None:
        volume_of = {spec.name: spec.volume_of for spec in card.outputs.values}
        segment = volume_of.get(rule.value)
        return segment is None or segment in predicted
    return set(rule.segments_named()) <= predicted


def _value_problem(rule: PlausibleRange, prediction: Prediction) -> str | None:
    value = prediction.values.get(str(rule.value))
    if not isinstance(value, int | float) or isinstance(value, bool) or not math.isfinite(value):
        return None  # not reported (or already named as not finite)
    if _outside(float(value), rule.min, rule.max):
        return f"{rule.value} {_number(float(value))}, expected {_range(rule.min, rule.max, '')}"
    return None


def _segment_problem(rule: PlausibleRange, measure: _Measure) -> str | None:
    segments = rule.measured
    name = _name(segments[0]) + (f" (with {_names(rule.including)})" if rule.including else "")
    if measure.labels is None:
        return None  # no label map (a model without segments never names one: the card check refuses it)
    millilitres = sum(measure.millilitres(segment) for segment in segments)
    if _outside(millilitres, rule.min, rule.max):
        return f"{name} {_number(millilitres)} ml, expected {_range(rule.min, rule.max, ' ml')}"
    if rule.max_fraction_of_scan is not None and measure.scan_ml > 0:
        share = millilitres / measure.scan_ml
        if share > rule.max_fraction_of_scan:
            return f"{name} fills {share:.0%} of the scanned volume, expected at most {rule.max_fraction_of_scan:.0%}"
    if rule.max_extent_mm is not None and millilitres > 0:
        extent, axis = measure.extent_mm(segments)
        if extent > rule.max_extent_mm:
            return f"the {name} spans {extent:.0f} mm {axis}, expected at most {rule.max_extent_mm:.0f} mm"
    if rule.inside and millilitres > 0:
        outside = measure.share_outside(segments, rule.inside)
        if outside > rule.max_outside:
            around = _names(rule.inside)
            return f"{outside:.0%} of the {name} lies outside the {around}, expected at most {rule.max_outside:.0%}"
    if rule.right_of is not None:
        mine, theirs = measure.patient_x(segments), measure.patient_x([rule.right_of])
        if mine is not None and theirs is not None and mine > theirs:  # LPS: +x is the patient's left
            return f"the {name} lies on the patient's left of the {_name(rule.right_of)}, expected on the right " \
                   "(are left and right swapped in the image geometry?)"
    return None


class _Measure:
    """Volumes, containment and positions of segments in one label map, each computed once."""

    def __init__(self, volume: Volume | None, prediction: Prediction) -> None:
        self.prediction = prediction
        self.labels = prediction.labels
        self.values_of: dict[str, list[int]] = {}
        for value, segment in prediction.segments.items():
            self.values_of.setdefault(segment, []).append(int(value))
        self.affine = volume.affine_lps if volume is not None else np.eye(4)
        self.voxel_ml = abs(float(np.linalg.det(self.affine[:3, :3]))) / 1000.0
        self.scan_ml = float(self.labels.size) * self.voxel_ml if self.labels is not None else 0.0

    def mask(self, segments: list[str]) -> np.ndarray:
        assert self.labels is not None
        wanted = [v for s in segments for v in self.values_of.get(s, [])]
        return np.isin(self.labels, wanted) if wanted else np.zeros(self.labels.shape, dtype=bool)

    def millilitres(self, segment: str) -> float:
        assert self.labels is not None
        count = sum(self.prediction.voxels(v) for v in self.values_of.get(segment, []))  # counted by the Prediction
        return count * self.voxel_ml

    def share_outside(self, segments: list[str], around: list[str]) -> float:
        """The share of the segments' voxels outside ``around`` (its union, enclosed regions of each slice filled)."""
        inside = self.mask(around)
        if inside.ndim == 3:
            inside = _fill_in_plane(inside)
        mine = self.mask(segments)
        return float((mine & ~inside).sum()) / max(int(mine.sum()), 1)

    def extent_mm(self, segments: list[str]) -> tuple[float, str]:
        """The largest extent of the segments along a patient axis (voxel centres, plus one voxel), and that axis."""
        points = np.argwhere(self.mask(segments)).astype(float)
        points = np.c_[points, np.zeros((len(points), 4 - points.shape[1]))]
        points[:, 3] = 1.0
        lps = points @ self.affine.T
        spans = lps[:, :3].max(axis=0) - lps[:, :3].min(axis=0)
        spans += np.abs(self.affine[:3, :3]).max(axis=1)  # a voxel's own size along each axis
        axis = int(spans.argmax())
        return float(spans[axis]), ("from left to right", "from front to back", "from foot to head")[axis]

    def patient_x(self, segments: list[str]) -> float | None:
        """The LPS x (patient's left positive) of the segments' centre of mass, or None when absent."""
        mine = self.mask(segments)
        if not mine.any():
            return None
        centre = np.array(ndi.center_of_mass(mine), dtype=float)
        index = np.zeros(4)
        index[:len(centre)] = centre
        index[3] = 1.0
        return float((self.affine @ index)[0])


def _fill_in_plane(mask: np.ndarray) -> np.ndarray:
    """Fill every region of each slice (axis 2) that the mask encloses."""
    background, count = ndi.label(~mask, structure=_IN_PLANE)
    edge = np.concatenate([background[0].ravel(), background[-1].ravel(),
                           background[:, 0].ravel(), background[:, -1].ravel()])
    outside = np.zeros(count + 1, dtype=bool)
    outside[edge] = True
    outside[0] = True  # label 0: the mask itself
    return mask | ~outside[background]


# ----------------------------------------------------------------------------------- words


def _outside(number: float, low: float | None, high: float | None) -> bool:
    return (low is not None and number < low) or (high is not None and number > high)


def _range(low: float | None, high: float | None, unit: str) -> str:
    if low is not None and high is not None:
        return f"{_number(low)}–{_number(high)}{unit}"
    if low is not None:
        return f"at least {_number(low)}{unit}"
    return f"at most {_number(float(high or 0))}{unit}"


def _number(value: float) -> str:
    return f"{value:.0f}" if abs(value) >= 100 else f"{value:.3g}"


def _names(segments: list[str]) -> str:
    """``brain``; ``body and bone``; ``body, left lung and bone``."""
    names = [_name(s) for s in segments]
    return names[0] if len(names) == 1 else ", ".join(names[:-1]) + " and " + names[-1]


def _name(segment: str) -> str:
    """A segment as a person names it in a sentence: ``brain``, ``left lung``."""
    try:
        return get_segment(segment).name.lower()
    except Exception:  # noqa: BLE001 - an ID the database lacks still reads
        return segment.lower().replace("_", " ")
