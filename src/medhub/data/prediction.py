"""What a model returns for one volume: a label map with segment IDs, values, or an embedding."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from medhub.data.embedding import EmbeddingResult


@dataclass
class Prediction:
    """A model's output for one volume.

    ``labels`` is an integer label map with exactly the shape of ``Volume.array`` (0 =
    background); ``segments`` maps each label value to a segment database ID.
    An embedding model (:mod:`medhub.hub.embeddings`) sets ``embedding`` (an
    :class:`~medhub.data.embedding.EmbeddingResult`) and leaves ``labels`` None: there is no label map to write.
    """

    labels: np.ndarray | None
    segments: dict[int, str]
    values: dict[str, Any] = field(default_factory=dict)  # scalar results (e.g. volumes in ml)
    embedding: EmbeddingResult | None = None  # for embedding models only
