"""MHub's config.yml runs unchanged: ``medhub run MODEL --config config.yml``.

The configs below follow the shape of MHub's published default configs (github MHubAI/models at
ff15765: ``models/lungmask/config/default.yml`` and ``models/totalsegmentator/config/default.yml``:
DicomImporter, NiftiConverter, the model's runner, DsegConverter, DataOrganizer with
``[i:sid]`` targets), written here for the models medhub has. ct-body really runs on real CT
slices, its SEG and RTSTRUCT checked by dciodvfy; the TotalSegmentator and lungmask configs are
translated and checked (their models need their own environments and weights).
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pydicom
import pytest
import yaml
from conftest import shared_path

from medhub.errors import MedhubError
from medhub.hub.catalog import get_model
from medhub.hub.workflow import Workflow
from medhub.pipeline.mhub import from_mhub, is_mhub_config
from medhub.pipeline.workflows import check_workflow, runner_owner

THREE_SLICE_CT = "seg/dcmqi_segmentations/ct-3slice"  # 3 real GE CT slices with their UIDs

IMPORTER = {"source_dir": "input_data", "import_dir": "sorted_data", "sort_data": True, "meta": {"mod": "%Modality"}}


def mhub_config(runner: str, runner_params: dict, *, model_name: str, body_part: str, targets: list[str],
                rtstruct: bool = False) -> dict:
    """A config in the shape of MHub's models/<model>/config/default.yml."""
    execute = ["DicomImporter", "NiftiConverter", runner, "DsegConverter"]
    modules = {
        "DicomImporter": IMPORTER,
        runner: runner_params,
        "DsegConverter": {"model_name": model_name, "body_part_examined": body_part,
                          "source_segs": "nifti:mod=seg:roi=*", "skip_empty_slices": True},
        "DataOrganizer": {"targets": targets},
    }
    if rtstruct:
        execute.append("RTStructConverter")
        modules["RTStructConverter"] = {"model_name": model_name, "skip_empty_slices": True}
    return {"general": {"data_base_dir": "/app/data", "version": 1.0,
                        "description": f"{model_name} (dicom to dicom)"},
            "execute": [*execute, "DataOrganizer"], "modules": modules}


def translate(config: dict, model: str) -> Workflow:
    workflow = Workflow.model_validate(config)
    assert is_mhub_config(workflow)
    translated = from_mhub(workflow, get_model(model).card, where="config.yml", others=runner_owner)
    check_workflow(translated, get_model(model).card)
    return translated


def test_totalsegmentators_mhub_config_becomes_its_medhub_steps() -> None:
    config = mhub_config("TotalSegmentatorMLRunner", {"use_fast_mode": True}, model_name="TotalSegmentator",
                         body_part="WHOLEBODY", targets=["dicomseg:mod=seg-->[i:sid]/TotalSegmentator.seg.dcm"])
    workflow = translate(config, "totalsegmentator")
    assert workflow.execute == ["select", "load", "predict", "write_seg"]
    assert workflow.modules == {
        "predict": {"fast": True},
        "write_seg": {"series_description": "TotalSegmentator", "body_part_examined": "WHOLEBODY",
                      "path": "{series_uid}/TotalSegmentator.seg.dcm"},
    }
    assert workflow.general.name == "mhub config.yml"


def test_lungmasks_mhub_config_renames_its_runner_parameters() -> None:
    config = mhub_config("LungMaskRunner", {"batchsize": 64}, model_name="LungMask", body_part="CHEST",
                         targets=["dicomseg:mod=seg-->[i:sid]/lungmask.seg.dcm"])
    workflow = translate(config, "lungmask")
    assert workflow.modules["predict"] == {"batch_size": 64}
    assert workflow.modules["write_seg"]["path"] == "{series_uid}/lungmask.seg.dcm"


CT_BODY = mhub_config("CtBodyRunner", {"min_lung_ml": 20}, model_name="CtBody", body_part="HEAD", rtstruct=True,
                      targets=["dicomseg:mod=seg-->[i:sid]/ct_body.seg.dcm",
                               "rtstruct:mod=seg-->[i:sid]/ct_body.rtstruct.dcm",
                               "nifti:mod=seg-->[i:studyID]/[i:sid].nii.gz"])


def _with(config: dict, **changes) -> dict:
    """A deep copy of ``config`` with ``changes`` applied: ``execute`` replaced, ``Module={...}`` merged."""
    result = json.loads(json.dumps(config))
    for key, value in changes.items():
        if key == "execute":
            result["execute"] = value
        else:
            result["modules"].setdefault(key, {}).update(value)
    return result


def _without(config: dict, *modules: str) -> dict:
    return {**config, "modules": {k: v for k, v in config["modules"].items() if k not in modules}}


@pytest.mark.parametrize(
    ("config", "message"),
    [
        (_with(CT_BODY, execute=["NrrdImporter", "NiftiConverter", "CtBodyRunner", "JsonSegExporter"]),
         "MHub module(s) NrrdImporter, JsonSegExporter have no medhub equivalent; medhub runs DicomImporter"),
        (_with(CT_BODY, execute=["DicomImporter", "NiftiConverter", "TotalSegmentatorMLRunner", "DsegConverter"]),
         "TotalSegmentatorMLRunner is the runner of model totalsegmentator, not of ct-body (whose runner is "
         "CtBodyRunner); run: medhub run totalsegmentator --config ..."),
        (_with(CT_BODY, execute=["DicomImporter", "load", "CtBodyRunner"]),
         "execute mixes MHub modules with medhub steps (load)"),
        (_with(CT_BODY, execute=["NiftiConverter", "CtBodyRunner", "DsegConverter", "DataOrganizer"]),
         "execute has no DicomImporter"),
        (_with(CT_BODY, CtBodyRunner={"min_lung": 20}),
         "CtBodyRunner.min_lung: model ct-body has no such parameter (CtBodyRunner takes air_hu, body_hu"),
        (_with(CT_BODY, DicomImporter={"meta": {"mod": "ct"}}),
         "DicomImporter.meta.mod=ct: a fixed value would label every series alike"),
        (_with(CT_BODY, DicomImporter={"structure": "%StudyInstanceUID/dicom/%SOPInstanceUID.dcm"}),
         "medhub runs a model on one series at a time"),
        (_with(CT_BODY, NiftiConverter={"in_datas": "dicom:mod=mr"}),
         "NiftiConverter.in_datas=dicom:mod=mr does not take CT, which model ct-body reads"),
        (_with(CT_BODY, DsegConverter={"json_config_path": "/app/config/dseg.json"}),
         "DsegConverter.json_config_path: medhub describes segments from its segment database"),
        (_with(CT_BODY, DsegConverter={"skip_empty_slices": False}),
         "DsegConverter.skip_empty_slices=false: medhub never writes frames without a segment"),
        (_with(CT_BODY, DsegConverter={"target": "x"}), "DsegConverter.target: not a parameter medhub can honour"),
        (_with(CT_BODY, DataOrganizer={"targets": ["json:mod=report-->[i:sid]/report.json"]}),
         "DataOrganizer target json:mod=report: medhub writes dicomseg, rtstruct or nifti:mod=seg"),
        (_with(CT_BODY, DataOrganizer={"targets": ["nifti:mod=ct-->[i:sid]/image.nii.gz"]}),
         "DataOrganizer target nifti:mod=ct: medhub writes dicomseg"),
        (_with(CT_BODY, DataOrganizer={"targets": ["nifti:mod=seg-->[basename]"]}),
         "[basename] names a file inside MHub's container; medhub fills [i:sid], [i:studyID], [i:patientID]"),
        (_with(CT_BODY, DataOrganizer={"targets": ["dicomseg-->[i:sid]/a.seg.dcm", "dicomseg-->[i:sid]/b.seg.dcm"]}),
         "DataOrganizer exports dicomseg twice"),
        (_without(_with(CT_BODY, execute=["DicomImporter", "NiftiConverter", "CtBodyRunner", "DataOrganizer"]),
                  "DsegConverter", "RTStructConverter"),
         "DataOrganizer exports dicomseg, but execute has no DsegConverter to make it"),
        (_with(CT_BODY, execute=["DicomImporter", "NiftiConverter", "CtBodyRunner", "DataOrganizer"]),
         "modules.DsegConverter configures a module execute does not run"),
    ],
)
def test_what_medhub_cannot_do_as_mhub_would_is_refused_in_one_line(config: dict, message: str) -> None:
    with pytest.raises(MedhubError) as caught:
        from_mhub(Workflow.model_validate(config), get_model("ct-body").card, where="config.yml",
                  others=runner_owner)
    assert message in str(caught.value)
    assert str(caught.value).startswith("config.yml: ") and "\n" not in str(caught.value)


def _medhub(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "medhub", *args], capture_output=True, text=True, timeout=600,
                          check=False)


def test_an_mhub_config_runs_unchanged_on_real_ct(tmp_path: Path, assert_valid_dicom) -> None:
    """ct-body with an MHub-shaped config: SEG, RTSTRUCT and NIfTI where DataOrganizer puts them."""
    config = tmp_path / "config.yml"
    config.write_text(yaml.safe_dump(CT_BODY, sort_keys=False))
    out = tmp_path / "out"
    source = shared_path(THREE_SLICE_CT)
    result = _medhub("run", "ct-body", "--input", str(source), "--output", str(out), "--config", str(config),
                     "--set", "select.min_slices=1", "--set", "CtBodyRunner.min_bone_ml=0.1", "--json-progress")
    assert result.returncode == 0, result.stderr
    events = [json.loads(line) for line in result.stdout.splitlines()]
    start = next(e for e in events if e["event"] == "series_start")
    assert start["steps"] == ["load", "predict", "check_result", "write_seg", "write_rtstruct", "write_nifti"]
    report = json.loads((out / "medhub-report.json").read_text())
    assert report["workflow"] == "mhub config.yml"
    entry = report["series"][0]
    header = pydicom.dcmread(sorted(source.iterdir())[0], stop_before_pixels=True)
    sid, study = header.SeriesInstanceUID, header.StudyInstanceUID
    assert entry["status"] == "succeeded"
    assert entry["outputs"] == [f"{sid}/ct_body.seg.dcm", f"{sid}/ct_body.rtstruct.dcm", f"{study}/{sid}.nii.gz",
                                f"{study}/{sid}.labels.json"]  # the label names beside it; no image (MHub exports none)
    seg = pydicom.dcmread(out / entry["outputs"][0])
    assert seg.SeriesDescription == "CtBody" and seg.BodyPartExamined == "HEAD"
    assert pydicom.dcmread(out / entry["outputs"][1]).SeriesDescription == "CtBody"
    for written in entry["outputs"][:2]:
        assert_valid_dicom(out / written)
    assert np.asarray(__import__("nibabel").load(out / entry["outputs"][2]).dataobj).any()


def test_a_refused_mhub_config_costs_nothing(tmp_path: Path) -> None:
    config = tmp_path / "config.yml"
    config.write_text(yaml.safe_dump(_with(CT_BODY, execute=["DicomImporter", "NrrdImporter", "CtBodyRunner"]),
                                     sort_keys=False))
    out = tmp_path / "out"
    result = _medhub("run", "ct-body", "--input", str(shared_path(THREE_SLICE_CT)), "--output", str(out),
                     "--config", str(config))
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "MHub module(s) NrrdImporter have no medhub equivalent" in lines[0], result.stderr
    assert not out.exists()


@pytest.mark.parametrize("labelmap", [False, True])
def test_seg_carries_the_body_part_examined_mhub_asks_for(tmp_path: Path, labelmap: bool) -> None:
    """DsegConverter.body_part_examined reaches the SEG in both encodings; a value that is no CS is refused."""
    from medhub.data.geometry import labels_to_source
    from medhub.inputs.load import load_series
    from medhub.inputs.scan import scan
    from medhub.writers.provenance import AlgorithmInfo
    from medhub.writers.seg import write_seg

    volume = load_series(scan(shared_path(THREE_SLICE_CT)).series[0])
    volume_labels = np.zeros(volume.array.shape, np.uint8)
    volume_labels[200:260, 200:260, :] = 1
    labels = labels_to_source(volume, volume_labels)  # the writers take the source's plane order
    path = write_seg(labels, volume.source, {1: "LIVER"}, AlgorithmInfo(name="t", version="1"),
                     tmp_path / "x.seg.dcm", labelmap=labelmap, body_part_examined="ABDOMEN")
    assert pydicom.dcmread(path, stop_before_pixels=True).BodyPartExamined == "ABDOMEN"
    with pytest.raises(MedhubError, match="Body Part Examined 'whole body!'"):
        write_seg(labels, volume.source, {1: "LIVER"}, AlgorithmInfo(name="t", version="1"), tmp_path / "y.seg.dcm",
                  labelmap=labelmap, body_part_examined="whole body!")
