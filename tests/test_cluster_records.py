"""What a Dask task carries (medhub.pipeline.cluster): one compact record per instance, from which the
worker rebuilds the series without reading or grouping the files again, and gets the same result as
the in-process run. The end-to-end LocalCluster run is in tests/test_batch.py.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pydicom
import pytest
from conftest import shared_path

from medhub.hub.catalog import get_model
from medhub.hub.workflow import load_workflow_file
from medhub.inputs.scan import scan
from medhub.inputs.synth import write_dicom_series
from medhub.pipeline.cluster import instance_from_record, instance_record, process_series_task, task_payload
from medhub.pipeline.run import Pipeline, RunOptions


@pytest.mark.parametrize("folder", ["ct/philips_phantom_head_1mm", "seg/dcmqi_segmentations/ct-3slice",
                                    "enhanced/dcm_qa_enh/Philips"])  # fmt: skip
def test_records_rebuild_every_header_and_field(folder: str) -> None:
    """Explicit and implicit VR, private elements, an enhanced MR with 64 per-frame items."""
    for series in scan(shared_path(folder)).series:
        for instance in series.instances[:20]:
            record = json.loads(json.dumps({k: v for k, v in instance_record(instance).items() if k != "header"}))
            record["header"] = instance_record(instance)["header"]
            assert record["header"] is not None and len(record["header"]) < 64_000
            rebuilt = instance_from_record(record)
            assert rebuilt.header_loaded  # nothing left for the worker to read from the file
            for field in ("sop_instance_uid", "sop_class_uid", "transfer_syntax_uid", "number_of_frames",
                          "instance_number", "study_instance_uid", "patient_id"):  # fmt: skip
                assert getattr(rebuilt, field) == getattr(instance, field), field
            assert rebuilt.path == Path(instance.path).resolve()
            # every element, except the retired group lengths pydicom does not write (GE's (7FE0,0000))
            assert _without_group_lengths(rebuilt.header) == _without_group_lengths(instance.header)
            assert rebuilt.header.file_meta.TransferSyntaxUID == instance.header.file_meta.TransferSyntaxUID


def _without_group_lengths(dataset: pydicom.Dataset) -> pydicom.Dataset:
    kept = pydicom.Dataset()
    for element in dataset:
        if element.tag.element != 0 or element.tag.group <= 6:
            kept.add(element)
    return kept


def test_a_released_header_is_read_from_the_file_by_the_worker() -> None:
    series = scan(shared_path("seg/dcmqi_segmentations/ct-3slice")).series[0]
    instance = series.instances[1]
    instance.release()
    record = instance_record(instance)
    assert record["header"] is None
    rebuilt = instance_from_record(record)
    assert not rebuilt.header_loaded
    assert rebuilt.header.SOPInstanceUID == pydicom.dcmread(instance.path, stop_before_pixels=True).SOPInstanceUID


def _small_ct(folder: Path) -> None:
    """A body with lungs and bone, 10 slices of 64 x 64: the cohort benchmark's series."""
    x, y = np.mgrid[-32:32, -32:32]
    plane = np.where((x / 28.0) ** 2 + (y / 22.0) ** 2 < 1, 40, -1000).astype(np.int16)
    plane[((x - 11) / 7.0) ** 2 + (y / 11.0) ** 2 < 1] = -800
    plane[((x + 11) / 7.0) ** 2 + (y / 11.0) ** 2 < 1] = -800
    plane[(x / 4.0) ** 2 + ((y + 16) / 4.0) ** 2 < 1] = 700
    write_dicom_series(np.repeat(plane[:, :, None], 10, axis=2), np.diag([2.0, 2.0, 5.0, 1.0]), folder,
                       modality="CT")  # fmt: skip


def test_the_task_gives_what_the_in_process_run_gives(tmp_path: Path) -> None:
    """ct-body on a small CT: the task (run here, without Dask) and the pipeline agree on the report
    entry and write byte-identical label maps."""
    _small_ct(tmp_path / "ct")
    model = get_model("ct-body")
    workflow = load_workflow_file(model.workflow("default"))
    series = scan(tmp_path / "ct").series[0]

    def pipeline(out: Path) -> Pipeline:
        return Pipeline(model, RunOptions(input_path=tmp_path / "ct", output_dir=out, workflow=workflow))

    payload = task_payload(pipeline(tmp_path / "b"), series)  # before the run, which releases the headers
    assert all(record["header"] is not None for record in payload["instances"])
    in_process = pipeline(tmp_path / "a").process_series(series).to_dict()
    in_task = process_series_task(payload)
    assert in_task["status"] == in_process["status"] == "succeeded", (in_task["reason"], in_process["reason"])
    for key in ("key", "series_instance_uid", "images", "findings", "reason"):
        assert in_task[key] == in_process[key], key
    written_a = sorted(p.relative_to(tmp_path / "a") for p in (tmp_path / "a").rglob("*") if p.is_file())
    written_b = sorted(p.relative_to(tmp_path / "b") for p in (tmp_path / "b").rglob("*") if p.is_file())
    assert written_a == written_b and written_a
    for relative in written_a:
        if relative.name.endswith((".nii", ".nii.gz")):
            assert (tmp_path / "a" / relative).read_bytes() == (tmp_path / "b" / relative).read_bytes(), relative
        if relative.name.endswith(".seg.dcm"):  # new UIDs and times each run: compare the frames
            first, second = pydicom.dcmread(tmp_path / "a" / relative), pydicom.dcmread(tmp_path / "b" / relative)
            assert first.NumberOfFrames == second.NumberOfFrames and first.PixelData == second.PixelData


def test_the_task_keeps_the_runs_roi_subset(tmp_path: Path) -> None:
    """--roi-subset with --workers: the worker writes only the kept segments, as the client's run would."""
    _small_ct(tmp_path / "ct")
    model = get_model("ct-body")
    options = RunOptions(input_path=tmp_path / "ct", output_dir=tmp_path / "out", roi_subset=("BONE",),
                         workflow=load_workflow_file(model.workflow("default")))
    entry = process_series_task(task_payload(Pipeline(model, options), scan(tmp_path / "ct").series[0]))
    assert entry["status"] == "succeeded", entry["reason"]
    assert any(note.startswith("roi subset: kept BONE") for note in entry["notes"]), entry["notes"]
    seg = pydicom.dcmread(next((tmp_path / "out").rglob("*.seg.dcm")), stop_before_pixels=True)
    assert [item.SegmentLabel for item in seg.SegmentSequence] == ["Bone"]
