"""predict: the model's runner (loaded once per process and device) on the volume."""

from __future__ import annotations

from typing import Any

from medhub.data.prediction import Prediction
from medhub.errors import MedhubError
from medhub.hub.roi_subset import kept_values
from medhub.hub.runtime import RUNNERS
from medhub.hub.workflow import parameter_problems, predict_parameters
from medhub.pipeline.steps.base import ModelOutput, Phase, SeriesWork, Step, StepName, model_outputs


class Predict(Step):
    name = StepName.PREDICT
    phase = Phase.PREDICT
    description = "run the model on the volume"
    self_timed = True  # model_load and predict are timed apart

    def problems(self, params: dict[str, Any], card: Any) -> list[str]:
        """The model's own parameters, as its card declares them."""
        return parameter_problems(self.name, params, card.parameters, f"model {card.id}")

    def run(self, work: SeriesWork) -> None:
        volume = work.require_volume()
        params = predict_parameters(work.card, work.workflow)  # the card's defaults, then the workflow's
        card = work.card
        if work.roi_subset and card.outputs.roi_subset:  # the runner may predict only these (saves time)
            params = {**params, "roi_subset": list(work.roi_subset)}
        # One "step" event for the step the series_start event listed; its two parts are timed apart.
        work.progress.event("step", key=work.entry.key, step=self.name)
        try:
            with RUNNERS.lock(card.id, work.device):  # one series at a time on a runner
                with work.timed("model_load", announce=False):
                    runner = RUNNERS.get(work.model, work.device, params)
                with work.timed("predict", announce=False):
                    prediction = runner.predict(volume, params)  # the hub checked its shape and segments
        finally:
            work.progress.event("step_done", key=work.entry.key, step=self.name)
        _check_against_card(prediction, card)
        if work.roi_subset and prediction.labels is not None:
            work.unfiltered, prediction = prediction, keep_subset(prediction, card, work.roi_subset)
            work.note_once(f"roi subset: kept {', '.join(work.roi_subset)} ({len(work.roi_subset)} of "
                           f"{len(card.outputs.segments)} segments)")
        work.entry.values.update(prediction.values)
        work.prediction = prediction
        if prediction.labels is not None:
            present = work.present_labels()
            missing = sorted(seg_id for value, seg_id in prediction.segments.items() if value not in present)
            if missing:
                work.entry.notes.append(f"empty segments (no voxels): {', '.join(missing)}")


def keep_subset(prediction: Prediction, card: Any, subset: tuple[str, ...]) -> Prediction:
    """Only the segments of ``subset``: their labels, and the values measured on them (``volume_of``)."""
    kept = prediction.restricted_to(kept_values(card, subset))
    dropped = {spec.name for spec in card.outputs.values if spec.volume_of is not None and spec.volume_of not in subset}
    kept.values = {name: value for name, value in kept.values.items() if name not in dropped}
    return kept


def _check_against_card(prediction: Prediction, card: Any) -> None:
    """The card says what the runner returns (the writers follow it): a runner that disagrees is refused."""
    promised = model_outputs(card)
    if prediction.embedding is not None and ModelOutput.EMBEDDING not in promised:
        raise MedhubError(f"model {card.id} returned an embedding, but its card's task is {card.task!r} "
                          "(the card of an embedding model says task: embedding)")
    if prediction.labels is not None and ModelOutput.LABELS not in promised:
        raise MedhubError(f"model {card.id} returned a label map, but its card declares no segments")
