"""The one runner that serves every head: embed the volume with the head's encoder, apply the head.

The catalog gives each head a :class:`~medhub.heads.source.HeadEntry` that constructs this
runner with the head's folder. Where a runner is made without one (``medhub check``, an
isolated worker), ``load`` takes the head from the workflow's predict parameter ``head``
(a name under the heads root, or a folder).

``predict`` returns a :class:`~medhub.data.prediction.Prediction` without a label map
(``labels=None``): the result is values, written by the pipeline as JSON, CSV and, for DICOM
with UIDs, a DICOM SR (:mod:`medhub.writers.values`). ``values`` hold ``predicted_class``,
one ``probability_<class>`` per class (in the head's class order) and the ``encoder`` (id and version).
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from medhub.data.prediction import Prediction
from medhub.data.volume import Volume
from medhub.errors import MedhubError
from medhub.heads.model import load_head
from medhub.heads.registry import find_head
from medhub.hub.catalog import get_model
from medhub.hub.embeddings import embed
from medhub.hub.runner import Runner as BaseRunner
from medhub.hub.runner import RunnerContext


class Runner(BaseRunner):
    """Loads one head (and, through the embeddings module, its encoder) once; predicts per series."""

    def __init__(self, head_dir: Path | None = None) -> None:
        self.head_dir = None if head_dir is None else Path(head_dir)

    def load(self, context: RunnerContext) -> None:
        folder = self.head_dir
        if folder is None:
            given = context.params.get("head")
            if not given:
                raise MedhubError("the head runner needs the head: set predict.head=NAME (or use medhub run NAME)")
            folder = find_head(str(given))
        self.head = load_head(folder)
        _check_encoder_version(self.head)

    def predict(self, volume: Volume, params: Mapping[str, Any]) -> Prediction:
        result = embed(self.head.encoder, volume, cache=True, device=self.context.device)
        probabilities = self.head.predict_proba(result.vector)[0]
        classes = self.head.classes
        best = classes[int(probabilities.argmax())]
        values: dict[str, Any] = {"predicted_class": best}
        values.update({f"probability_{c}": round(float(p), 6) for c, p in zip(classes, probabilities, strict=True)})
        values["encoder"] = f"{self.head.encoder} {self.head.meta.get('encoder_version', '')}".strip()
        return Prediction(values=values)


def _check_encoder_version(head: Any) -> None:
    """A head is only valid on the encoder version it was trained on: refuse a different one."""
    trained = str(head.meta.get("encoder_version", ""))
    try:
        installed = str(get_model(head.encoder).card.version)
    except MedhubError:
        raise MedhubError(f"head {head.name} needs the encoder model '{head.encoder}', which is not installed"
                          ) from None
    if trained and installed != trained:
        raise MedhubError(f"head {head.name} was trained on {head.encoder} {trained}, but {installed} is installed; "
                          f"retrain it with medhub heads train --force")
