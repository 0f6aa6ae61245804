"""An embedding model's result for one series: the vector and what determines it.

A :class:`~medhub.data.prediction.Prediction` carries one of these instead of a label map when
the model is an embedding model (:mod:`medhub.hub.embeddings` computes and caches it;
:mod:`medhub.writers.embedding` writes it).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np


@dataclass
class EmbeddingResult:
    """One series' embedding and where it came from."""

    vector: np.ndarray  # float32, shape (dimension,)
    feature_map: np.ndarray | None  # e.g. (2048, 10, 7, 7) float32 when asked for, else None
    cached: bool  # True when read from the cache rather than computed
    key: str  # cache key (hex SHA-256)
    model: str
    version: str
    input_hash: str  # SHA-256 of the input voxels + affine alone
    preprocessing: dict[str, Any] = field(default_factory=dict)
    weights_sha256: str = ""
    seconds: float = 0.0  # time to compute (or to read from the cache)

    @property
    def dimension(self) -> int:
        return int(self.vector.shape[0])
