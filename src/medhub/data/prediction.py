"""What a model returns for one volume: a label map with segment IDs, values, or an embedding.

A :class:`Prediction` checks itself when it is made (highdicom's habit): a label map that is not
3D, holds fractions, or uses a label value that ``segments`` does not name is refused with a
message that says which, instead of turning into a wrong SEG three steps later.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from medhub.data.embedding import EmbeddingResult
from medhub.errors import MedhubError

MAX_LABEL = 255  # a DICOM SEG segment number and a uint8 label map both stop here
_COUNT_BLOCK = 1 << 23  # voxels per bincount pass: bounds its int64 temporary to 64 MB


def label_counts(labels: np.ndarray) -> np.ndarray:
    """Voxels per label value 0..255 (length 256) of an integer label map, in bounded memory."""
    flat = labels.reshape(-1)
    counts = np.zeros(MAX_LABEL + 1, dtype=np.int64)
    for start in range(0, flat.size, _COUNT_BLOCK):
        counts += np.bincount(flat[start:start + _COUNT_BLOCK], minlength=MAX_LABEL + 1)
    return counts


@dataclass
class Prediction:
    """A model's output for one volume.

    ``labels`` is an integer label map with exactly the shape of ``Volume.array`` (0 =
    background), stored as uint8 (a boolean mask becomes label 1); ``segments`` maps each label
    value to a segment database ID. An embedding model (:mod:`medhub.hub.embeddings`) sets
    ``embedding`` (an :class:`~medhub.data.embedding.EmbeddingResult`) and leaves ``labels`` None:
    there is no label map to write. ``values`` are scalar results (volumes in ml, probabilities).
    """

    labels: np.ndarray | None = None
    segments: dict[int, str] = field(default_factory=dict)
    values: dict[str, Any] = field(default_factory=dict)
    embedding: EmbeddingResult | None = None
    _counts: np.ndarray | None = field(default=None, init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        self.segments = _checked_segments(self.segments)
        if not isinstance(self.values, dict) or not all(isinstance(key, str) for key in self.values):
            raise MedhubError("Prediction.values must map names (str) to values")
        if self.embedding is not None and not isinstance(self.embedding, EmbeddingResult):
            raise MedhubError(f"Prediction.embedding must be an EmbeddingResult, got {type(self.embedding).__name__}")
        if self.labels is None:
            if self.segments:
                raise MedhubError("Prediction.segments names label values, but there is no label map (labels=None)")
            return
        self.labels = _checked_labels(self.labels)
        self._counts = label_counts(self.labels)
        unnamed = [value for value in np.flatnonzero(self._counts[1:]) + 1 if int(value) not in self.segments]
        if unnamed:
            raise MedhubError(f"the label map holds label values {[int(v) for v in unnamed]} that segments does not "
                              f"name (segments: {self.segments})")

    @property
    def present(self) -> set[int]:
        """The label values that occur in ``labels`` (background 0 left out)."""
        if self._counts is None:
            return set()
        return {int(value) for value in np.flatnonzero(self._counts[1:]) + 1}

    def voxels(self, value: int) -> int:
        """How many voxels carry label ``value``."""
        return 0 if self._counts is None else int(self._counts[value])

    def restricted_to(self, keep: set[int]) -> Prediction:
        """The same prediction with only the label values in ``keep`` (the others become background).

        Why: ``--roi-subset`` writes only the named segments; every writer then follows this one
        label map and its ``segments``. ``values`` and ``embedding`` are carried over unchanged
        (the caller drops values that belong to removed segments).
        """
        if self.labels is None:
            return self
        lookup = np.zeros(MAX_LABEL + 1, dtype=np.uint8)
        for value in keep:
            lookup[value] = value
        return Prediction(labels=lookup[self.labels], segments={v: s for v, s in self.segments.items() if v in keep},
                          values=dict(self.values), embedding=self.embedding)


def _checked_segments(segments: Any) -> dict[int, str]:
    if not isinstance(segments, dict):
        raise MedhubError("Prediction.segments must be a dict {label value: segment ID}, "
                          f"got {type(segments).__name__}")
    checked: dict[int, str] = {}
    for value, segment_id in segments.items():
        if isinstance(value, bool) or not isinstance(value, int | np.integer) or not 1 <= int(value) <= MAX_LABEL:
            raise MedhubError(f"Prediction.segments: label value {value!r} must be an integer 1..{MAX_LABEL} "
                              "(0 is the background)")
        if not isinstance(segment_id, str) or not segment_id:
            raise MedhubError(f"Prediction.segments: label {value} needs a segment database ID, got {segment_id!r}")
        checked[int(value)] = segment_id
    return checked


def _checked_labels(labels: Any) -> np.ndarray:
    """The label map as uint8, or a precise refusal (not an array, not 3D, not integers, out of range)."""
    if not isinstance(labels, np.ndarray):
        raise MedhubError(f"Prediction.labels must be a numpy array, got {type(labels).__name__}")
    if labels.ndim != 3:
        raise MedhubError(f"Prediction.labels must be a 3D label map [x, y, z], got shape {labels.shape}")
    if labels.dtype == np.bool_:
        return labels.astype(np.uint8)
    if not np.issubdtype(labels.dtype, np.integer):
        raise MedhubError(f"Prediction.labels must hold integer label values, got dtype {labels.dtype} "
                          "(threshold probabilities into labels first)")
    if labels.dtype != np.uint8 and labels.size:
        low, high = int(labels.min()), int(labels.max())
        if low < 0 or high > MAX_LABEL:
            raise MedhubError(f"Prediction.labels: label values must lie in 0..{MAX_LABEL}, found {low}..{high}")
    return labels.astype(np.uint8, copy=False)
