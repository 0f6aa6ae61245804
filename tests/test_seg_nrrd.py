"""``--seg-nrrd``: 3D Slicer's segmentation file, read back with slicerio (Slicer's own reader outside Slicer).

On real CT (a 20-slice block of the Philips head phantom): ct-body's label map written as
``.seg.nrrd`` next to NIfTI by the real command line, then read with
``slicerio.read_segmentation``: names, colours and terminology equal the segment database,
voxels equal the NIfTI label map voxel for voxel, and the geometry equals the CT's.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pydicom
import pytest
from conftest import shared_path

from medhub.data.volume import LPS_TO_RAS
from medhub.errors import MedhubError
from medhub.inputs.load import load_series
from medhub.inputs.scan import scan
from medhub.segdb import get_segment
from medhub.writers.nifti import dcm2niix_order
from medhub.writers.seg_nrrd import slicer_terminology, write_seg_nrrd

slicerio = pytest.importorskip("slicerio", reason="slicerio is not installed")

PHILIPS = "ct/philips_phantom_head_1mm"


@pytest.fixture(scope="module")
def ct_block(tmp_path_factory) -> Path:
    """20 contiguous real CT slices (copies: the input folder of a run)."""
    files = [p for p in shared_path(PHILIPS).iterdir() if p.is_file()]
    files.sort(key=lambda p: float(pydicom.dcmread(p, stop_before_pixels=True).ImagePositionPatient[2]))
    folder = tmp_path_factory.mktemp("ct")
    for path in files[60:80]:
        shutil.copyfile(path, folder / path.name)
    return folder


def expected_terminology(segment_id: str) -> dict[str, object]:
    spec = get_segment(segment_id)
    terminology = {"contextName": "Segmentation category and type - DICOM master list",
                   "category": [spec.category.scheme, spec.category.value, spec.category.meaning],
                   "type": [spec.type.scheme, spec.type.value, spec.type.meaning],
                   "anatomicContextName": "Anatomic codes - DICOM master list"}
    if spec.modifier is not None:
        terminology["typeModifier"] = [spec.modifier.scheme, spec.modifier.value, spec.modifier.meaning]
    return terminology


def test_run_with_seg_nrrd_round_trips_through_slicerio(ct_block, tmp_path):
    out = tmp_path / "out"
    proc = subprocess.run([sys.executable, "-m", "medhub", "run", "ct-body", "--input", str(ct_block), "--output",
                           str(out), "--seg-nrrd", "--nifti"], capture_output=True, text=True, timeout=600,
                          check=False)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    (nrrd_path,) = out.rglob("*.seg.nrrd")
    assert nrrd_path.name == "ct-body.seg.nrrd"
    (nifti_path,) = out.rglob("ct-body.nii.gz")  # the label map (--nifti writes the image beside it)
    report = json.loads((out / "medhub-report.json").read_text())
    assert str(nrrd_path.relative_to(out)) in report["series"][0]["outputs"]

    segmentation = slicerio.read_segmentation(str(nrrd_path))
    nifti = nib.load(nifti_path)
    # The NRRD keeps DICOM's voxel order (Slicer's), the NIfTI dcm2niix's: for this axial CT, rows reversed.
    labels = np.asarray(nifti.dataobj)[:, ::-1, :]
    assert segmentation["voxels"].shape == labels.shape
    assert np.array_equal(segmentation["voxels"], labels)
    # geometry: the NRRD's IJK→LPS is the NIfTI's (RAS) affine, rows reversed, and the CT's own
    in_nifti_order = dcm2niix_order(segmentation["voxels"], segmentation["ijkToLPS"], acquisition_3d=False)
    np.testing.assert_allclose(in_nifti_order[1], nifti.affine, atol=1e-4)
    (series,) = scan(ct_block).series
    volume = load_series(series)
    np.testing.assert_allclose(segmentation["ijkToLPS"], volume.affine_lps, atol=1e-4)

    present = sorted(set(np.unique(labels).tolist()) - {0})
    assert present, "ct-body found nothing in a head CT"
    ids = {1: "BODY", 2: "LEFT_LUNG", 3: "RIGHT_LUNG", 4: "BONE", 5: "LUNG"}
    assert [s["labelValue"] for s in segmentation["segments"]] == present
    for segment in segmentation["segments"]:
        spec = get_segment(ids[segment["labelValue"]])
        assert segment["name"] == spec.name and segment["id"] == spec.id
        np.testing.assert_allclose(segment["color"], [c / 255 for c in spec.color], atol=1e-5)
        assert segment["terminology"] == expected_terminology(spec.id)
        mask = labels == segment["labelValue"]
        assert np.array_equal(slicerio.extract_segments(segmentation, [(segment["name"], 1)])["voxels"] > 0, mask)


def test_writer_keeps_laterality_codes_and_refuses_undescribed_labels(tmp_path):
    labels = np.zeros((6, 5, 4), dtype=np.uint8)
    labels[1:3, 1:3, 1:3] = 2  # LEFT_LUNG
    labels[3:5, 1:4, 0:2] = 3  # RIGHT_LUNG
    labels[0, 0, 3] = 4  # BONE, one voxel
    affine = np.array([[0.7, 0, 0, -120.0], [0, 0.7, 0.1, -95.5], [0, 0, 2.5, 40.0], [0, 0, 0, 1]])
    segments = {value: get_segment(name) for value, name in ((1, "BODY"), (2, "LEFT_LUNG"), (3, "RIGHT_LUNG"),
                                                            (4, "BONE"))}
    path = tmp_path / "m.seg.nrrd"
    assert write_seg_nrrd(labels, affine, segments, path, fields={"medhub_model": "test 1"}) == [2, 3, 4]
    header = path.read_bytes().split(b"\n\n")[0].decode()
    assert "SCT^7771000^Left" in header and "SCT^24028007^Right" in header and "medhub_model:=test 1" in header
    read = slicerio.read_segmentation(str(path))
    assert [s["name"] for s in read["segments"]] == ["Left lung", "Right lung", "Bone"]  # BODY has no voxels
    assert read["segments"][0]["terminology"]["typeModifier"] == ["SCT", "7771000", "Left"]
    assert read["segments"][2]["extent"] == [0, 0, 0, 0, 3, 3]
    np.testing.assert_allclose(read["ijkToLPS"], affine)
    assert np.array_equal(read["voxels"], labels)
    assert slicer_terminology(get_segment("BODY"))["type"] == ["SCT", "38266002", "Entire body"]

    labels[0, 0, 0] = 9
    with pytest.raises(MedhubError, match=r"label values \[9\] have no segment description"):
        write_seg_nrrd(labels, affine, segments, tmp_path / "bad.seg.nrrd")
    with pytest.raises(MedhubError, match="affine"):
        write_seg_nrrd(labels * 0, np.zeros((4, 4)), segments, tmp_path / "bad.seg.nrrd")


def test_nifti_input_gets_a_seg_nrrd_on_the_nifti_geometry(tmp_path):
    """A NIfTI input (what the Slicer extension sends for a volume without DICOM) gets its .seg.nrrd too."""
    source = shared_path("ct/totalsegmentator_nifti/example_ct_sm.nii.gz")
    out = tmp_path / "out"
    proc = subprocess.run([sys.executable, "-m", "medhub", "run", "ct-body", "--input", str(source), "--output",
                           str(out), "--seg-nrrd"], capture_output=True, text=True, timeout=600, check=False)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    segmentation = slicerio.read_segmentation(str(out / "example_ct_sm" / "ct-body.seg.nrrd"))
    labels = nib.load(out / "example_ct_sm" / "ct-body.nii.gz")
    assert np.array_equal(segmentation["voxels"], np.asarray(labels.dataobj))
    np.testing.assert_allclose(LPS_TO_RAS @ segmentation["ijkToLPS"], nib.load(source).affine, atol=1e-4)
    names = [segment["name"] for segment in segmentation["segments"]]
    assert names == ["Body", "Left lung", "Right lung", "Bone"]
    assert segmentation["segments"][1]["terminology"]["typeModifier"] == ["SCT", "7771000", "Left"]
