"""write_embedding: an embedding model's vector as ``<base>.embedding.npy`` + ``.embedding.json``.

It runs for every model whose card's task is ``embedding``, named in ``execute`` or not
(see :mod:`medhub.writers.embedding` for the files).
"""

from __future__ import annotations

from medhub.errors import MedhubError
from medhub.pipeline.steps.base import ModelOutput, Phase, Plan, SeriesWork, Step, StepName
from medhub.writers.embedding import write_embedding


class WriteEmbedding(Step):
    name = StepName.WRITE_EMBEDDING
    phase = Phase.OUTPUT
    description = "the feature vector and its JSON sidecar (embedding models)"

    def runs(self, plan: Plan) -> bool:
        return ModelOutput.EMBEDDING in plan.outputs

    def run(self, work: SeriesWork) -> None:
        embedding = work.require_prediction().embedding
        if embedding is None:
            raise MedhubError(f"model {work.card.id} returned no embedding, although its card's task is embedding")
        work.record(*write_embedding(work.base(), embedding, work.require_volume()))
        if embedding.cached:
            work.entry.notes.append(f"embedding read from the cache (key {embedding.key[:16]})")
