"""What every step is: a name, the parameters it takes, and what it does to one series.

A workflow's ``execute`` names steps; :mod:`medhub.pipeline.steps` maps each name to one
:class:`Step`. The pipeline checks a workflow against these declarations before any work
(:func:`medhub.pipeline.workflows.check_workflow`), then runs the steps of each series in the
order the workflow names them, handing each the :class:`SeriesWork` of that series.
"""

from __future__ import annotations

import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from enum import IntEnum, StrEnum
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from medhub.data.geometry import labels_to_source
from medhub.data.prediction import Prediction
from medhub.data.series import Series
from medhub.data.volume import Volume
from medhub.errors import MedhubError
from medhub.hub.card import ParameterSpec
from medhub.hub.workflow import Workflow, parameter_problems
from medhub.pipeline.layout import render_template
from medhub.pipeline.progress import ProgressSink
from medhub.pipeline.report import SeriesEntry
from medhub.segdb import SegmentSpec, get_segment


class StepName(StrEnum):
    """Every step a workflow's ``execute`` may name (register the step in :mod:`medhub.pipeline.steps`)."""

    SELECT = "select"
    LOAD = "load"
    PREDICT = "predict"
    CHECK_RESULT = "check_result"
    WRITE_EMBEDDING = "write_embedding"
    WRITE_VALUES = "write_values"
    WRITE_SEG = "write_seg"
    WRITE_RTSTRUCT = "write_rtstruct"
    WRITE_NIFTI = "write_nifti"
    WRITE_SR = "write_sr"
    WRITE_SEG_NRRD = "write_seg_nrrd"
    WRITE_STATISTICS = "write_statistics"
    WRITE_PREVIEW = "write_preview"


class Phase(IntEnum):
    """Steps run in phase order: choose the series, read it, run the model, check the result, write it."""

    SELECT = 0
    LOAD = 1
    PREDICT = 2
    CHECK = 3
    OUTPUT = 4


class SourceKind(StrEnum):
    """What a series' results can reference, which decides the output steps that can run."""

    DICOM = "dicom"  # a DICOM series with its UIDs: SEG, RTSTRUCT and SR can reference it
    DICOM_WITHOUT_UIDS = "dicom-without-uids"  # a DICOM series a SEG cannot reference: NIfTI instead
    NIFTI = "nifti"  # a NIfTI file: no DICOM objects at all


class ModelOutput(StrEnum):
    """What a model's prediction carries, read from its card (the writers follow it)."""

    LABELS = "labels"  # a label map (the card declares segments)
    EMBEDDING = "embedding"  # a feature vector (task: embedding)
    VALUES = "values"  # values only (classification, regression: few-shot heads)


def model_outputs(card: Any) -> set[ModelOutput]:
    """What the card says its runner returns."""
    outputs = set()
    if card.outputs.segments:
        outputs.add(ModelOutput.LABELS)
    if card.task == "embedding":
        outputs.add(ModelOutput.EMBEDDING)
    if not outputs:
        outputs.add(ModelOutput.VALUES)
    return outputs


PATH = ParameterSpec(type="string",
                     description="where the file goes inside the output folder: a template with the fields of "
                                 "--template and the file name (default: the run's template and the step's suffix)")


@dataclass
class Plan:
    """What decides the steps of one series: the steps the workflow names, the model, the source."""

    requested: list[StepName]
    outputs: set[ModelOutput]
    source: SourceKind

    def requests(self, name: StepName) -> bool:
        return name in self.requested


class Step:
    """One step. Subclasses set ``name``, ``phase`` and ``parameters`` and implement :meth:`run`."""

    name: ClassVar[StepName]
    phase: ClassVar[Phase]
    parameters: ClassVar[Mapping[str, ParameterSpec]] = {}
    description: ClassVar[str] = ""
    self_timed: ClassVar[bool] = False  # True: run() times its own parts (predict: model_load, predict)

    def problems(self, params: dict[str, Any], card: Any) -> list[str]:
        """One line per key of this step's module (``params``) the step does not take or whose value it refuses."""
        return parameter_problems(self.name, params, dict(self.parameters), f"step {self.name}")

    def runs(self, plan: Plan) -> bool:
        """Does this step run for a series with this plan? By default: when the workflow names it."""
        return plan.requests(self.name)

    def run(self, work: SeriesWork) -> None:
        raise NotImplementedError


@dataclass
class SeriesWork:
    """One series on its way through the steps: its input, what earlier steps made, where results go."""

    model: Any  # the catalog entry (card, runner)
    workflow: Workflow
    output_dir: Path
    template: str
    device: str
    progress: ProgressSink
    entry: SeriesEntry
    fields: dict[str, object]
    series: Series | None = None  # a DICOM input
    nifti: Path | None = None  # a NIfTI input
    volume: Volume | None = None  # set by load
    prediction: Prediction | None = None  # set by predict
    allow_implausible: bool = False  # a result outside its card's plausible ranges is a warning, not implausible
    roi_subset: tuple[str, ...] = ()  # --roi-subset: the segment IDs kept (empty: all); checked against the card
    unfiltered: Prediction | None = None  # set by predict under --roi-subset: the whole result, for check_result
    implausible: str = ""  # set by check_result: why the result is implausible (the series' reason)
    _source_labels: np.ndarray | None = field(default=None, repr=False)
    _present: set[int] | None = field(default=None, repr=False)

    # -- what steps share -----------------------------------------------------------------------
    @property
    def card(self) -> Any:
        return self.model.card

    def params(self, step: StepName) -> dict[str, Any]:
        return self.workflow.params(step)

    def require_volume(self) -> Volume:
        if self.volume is None:
            raise MedhubError("no volume: the workflow must run load before this step")
        return self.volume

    def require_prediction(self) -> Prediction:
        if self.prediction is None:
            raise MedhubError("no prediction: the workflow must run predict before this step")
        return self.prediction

    def labels(self) -> np.ndarray:
        """The predicted label map; a model whose card declares segments must return one."""
        labels = self.require_prediction().labels
        if labels is None:
            raise MedhubError(f"model {self.card.id} returned no label map, although its card declares segments")
        return labels

    def source_labels(self) -> np.ndarray:
        """The label map in the source's plane order (what SEG and RTSTRUCT frames follow), computed once."""
        if self._source_labels is None:
            self._source_labels = labels_to_source(self.require_volume(), self.labels())
        return self._source_labels

    def segments(self) -> dict[int, SegmentSpec]:
        return {value: get_segment(seg_id) for value, seg_id in self.require_prediction().segments.items()}

    def present_labels(self) -> set[int]:
        """The label values with at least one voxel, computed once."""
        if self._present is None:
            self.labels()  # a model whose card declares segments must have returned a label map
            self._present = self.require_prediction().present  # counted once, when the Prediction was made
        return self._present

    def note_once(self, note: str) -> None:
        if note not in self.entry.notes:
            self.entry.notes.append(note)

    # -- where results go -----------------------------------------------------------------------
    def output_path(self, step: StepName, suffix: str) -> Path:
        """The step's ``path`` template if the workflow sets one, else the run's template + ``suffix``."""
        explicit = self.params(step).get("path")
        if explicit:
            return self.output_dir / render_template(str(explicit), self.fields)
        base = self.output_dir / render_template(self.template, self.fields)
        return base.with_name(base.name + suffix)

    def base(self) -> Path:
        """The run's template rendered for this series: outputs of several files add their suffixes to it."""
        return self.output_dir / render_template(self.template, self.fields)

    def record(self, *paths: Path) -> None:
        self.entry.outputs.extend(str(path.relative_to(self.output_dir)) for path in paths)

    @contextmanager
    def timed(self, step: str, *, announce: bool = True) -> Iterator[None]:
        """Time a step into the report and tell the progress sink when it starts and ends.

        ``announce=False`` times a part of a step (predict's ``model_load``) without a progress event:
        the events name exactly the steps the ``series_start`` event listed.
        """
        if announce:
            self.progress.event("step", key=self.entry.key, step=step)
        started = time.perf_counter()
        try:
            yield
        finally:
            self.entry.timings[step] = round(self.entry.timings.get(step, 0.0) + time.perf_counter() - started, 4)
            if announce:
                self.progress.event("step_done", key=self.entry.key, step=step)
