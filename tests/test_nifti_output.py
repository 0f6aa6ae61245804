"""NIfTI output as researchers expect it (issue 13): checked against Debian's dcm2niix on real series.

``--nifti`` writes the label map, its label names (``<model>.labels.json``) and the image
(``<description>_<series number>.nii.gz``) in the voxel order dcm2niix gives the same series, so
arrays overlay a dcm2niix conversion one to one. Every comparison here runs the real dcm2niix on
the same files and compares shapes, affines and voxels: on real CT and MR series (classic and
enhanced multi-frame), and on the pixels of a real MR series given other geometries (sagittal,
coronal, axial with reversed cosines, oblique, slices stored in descending order; as a 3D, a 2D
and a 3D echo-planar acquisition), which is where dcm2niix's two rules (rows reversed; a 3D
acquisition turned by ``nii_setOrtho``) differ.
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
from pydicom.uid import generate_uid

from medhub.hub.catalog import get_model
from medhub.inputs.load import load_series
from medhub.inputs.scan import scan
from medhub.segdb import get_segment
from medhub.serve.viewer_data import RunFolders, viewer_files
from medhub.writers.nifti import LABEL_RULE, is_3d_acquisition, write_nifti

DCM2NIIX = shutil.which("dcm2niix")
pytestmark = pytest.mark.skipif(DCM2NIIX is None, reason="dcm2niix is not installed (Debian package dcm2niix; "
                                                          ".ci/run installs it)")

PHILIPS = "ct/philips_phantom_head_1mm"
GE_MR = "edge/dicom2nifti_tests/ge/anatomical/001"  # classic MR, 3D gradient echo, sagittal, 4 slices
REAL_SERIES = [  # the Philips head CT: a slab of it, through the pipeline, below
    "ct/totalsegmentator_example_ct_dicom",  # JPEG 2000, no UIDs
    GE_MR,
    "edge/dicom2nifti_tests/hyperfine/anatomical/001",  # enhanced multi-frame MR, 3D, axial
    "edge/dicom2nifti_tests/siemens_multiframe/anatomical/001",  # enhanced multi-frame MR, 3D
    "edge/dicom2nifti_tests/philips_enhanced/anatomical/001",  # enhanced multi-frame MR, 3D, sagittal
]


def dcm2niix(folder: Path, out: Path) -> nib.Nifti1Image:
    """dcm2niix with its defaults, except: no gzip, no JSON, and Philips display scaling (``-p n``).

    ``-p n`` gives the values RescaleSlope/Intercept give, which is what medhub reads; the default
    (Philips' private "precise" floats) scales differently but orders voxels the same.
    """
    out.mkdir(parents=True, exist_ok=True)
    done = subprocess.run([str(DCM2NIIX), "-z", "n", "-b", "n", "-p", "n", "-f", "reference", "-o", str(out),
                           str(folder)], capture_output=True, text=True, timeout=300, check=False)
    written = sorted(out.glob("*.nii"))
    assert done.returncode == 0 and len(written) == 1, done.stdout + done.stderr
    return nib.load(written[0])


def assert_same_grid(ours: nib.Nifti1Image, reference: nib.Nifti1Image) -> None:
    assert ours.shape == reference.shape, (ours.shape, reference.shape)
    # dcm2niix computes in float32: a few hundredths of a micrometre to a tenth of one over 250 mm.
    np.testing.assert_allclose(ours.affine, reference.affine, atol=2e-3)
    np.testing.assert_allclose(ours.header.get_sform(), ours.header.get_qform(), atol=2e-3)


def _written_like_the_pipeline(folder: Path, target: Path) -> nib.Nifti1Image:
    """The series loaded as medhub loads it and written as write_nifti writes a DICOM series' image."""
    (series,) = scan(folder).series
    volume = load_series(series)
    write_nifti(volume.array, volume.affine_lps, target, dcm2niix=True,
                acquisition_3d=is_3d_acquisition(series.first_header))
    return nib.load(target)


@pytest.mark.parametrize("relative", REAL_SERIES)
def test_real_series_overlay_dcm2niix_voxel_for_voxel(relative: str, tmp_path: Path) -> None:
    folder = shared_path(relative)
    ours = _written_like_the_pipeline(folder, tmp_path / "ours.nii")
    reference = dcm2niix(folder, tmp_path / "dcm2niix")
    assert_same_grid(ours, reference)
    np.testing.assert_allclose(np.asarray(ours.dataobj, dtype=np.float32), reference.get_fdata(dtype=np.float32),
                               rtol=1e-5, atol=1e-3)


# ----------------------------------------------------------------------------- other geometries

ROTATIONS_DEG = {  # about L-R, then A-P, then S-I (applied right to left)
    "oblique_mild": (12.0, -8.0, 20.0),
    "oblique_steep": (-47.0, 38.0, 115.0),   # dcm2niix's choice is not the orientation closest to RAS
    "oblique_steep_2": (55.0, 25.0, -160.0),
}
ORIENTATIONS = {  # row cosine, column cosine (LPS)
    "axial": ([1, 0, 0], [0, 1, 0]),
    "axial_reversed_cosines": ([-1, 0, 0], [0, -1, 0]),
    "sagittal": ([0, 1, 0], [0, 0, -1]),
    "sagittal_reversed": ([0, -1, 0], [0, 0, 1]),
    "coronal": ([1, 0, 0], [0, 0, -1]),
}


def _rotation(angles: tuple[float, float, float]) -> np.ndarray:
    matrix = np.eye(3)
    for axis, degrees in enumerate(angles):
        c, s = np.cos(np.radians(degrees)), np.sin(np.radians(degrees))
        i, j = [k for k in range(3) if k != axis]
        turn = np.eye(3)
        turn[i, i] = turn[j, j] = c
        turn[i, j], turn[j, i] = -s, s
        matrix = turn @ matrix
    return matrix


for _name, _angles in ROTATIONS_DEG.items():
    _matrix = _rotation(_angles)
    ORIENTATIONS[_name] = (_matrix[:, 0].tolist(), _matrix[:, 1].tolist())


def regeometried(target: Path, row: list[float], column: list[float], *, acquisition: str,
                 descending: bool = False, echo_planar: bool = False) -> Path:
    """The real GE MR slices given another geometry: orientation, anisotropic spacing, slice order.

    Pixels are the scanner's; only the geometry (and the acquisition type) changes, which is all
    that decides the voxel order. ``descending`` stores the slices with positions decreasing along
    the normal while instance numbers increase.
    """
    target.mkdir(parents=True)
    normal = np.cross(row, column)
    series_uid = generate_uid()
    files = sorted(shared_path(GE_MR).iterdir())
    for index, path in enumerate(files):
        dataset = pydicom.dcmread(path)
        place = len(files) - 1 - index if descending else index
        position = np.array([-96.5, -118.25, 31.0]) + place * 2.6 * normal
        dataset.ImageOrientationPatient = [f"{v:.8f}" for v in (*row, *column)]
        dataset.ImagePositionPatient = [f"{v:.4f}" for v in position]
        dataset.PixelSpacing = ["0.8", "1.15"]
        dataset.SliceThickness = "2.6"
        dataset.MRAcquisitionType = acquisition
        if echo_planar:
            dataset.ScanningSequence = ["GR", "EP"]
        if "SliceLocation" in dataset:
            del dataset.SliceLocation
        dataset.SeriesInstanceUID = series_uid
        dataset.SOPInstanceUID = dataset.file_meta.MediaStorageSOPInstanceUID = generate_uid()
        dataset.InstanceNumber = index + 1
        dataset.save_as(target / f"{index:03d}.dcm")
    return target


CASES = [(name, acquisition, False) for name in ORIENTATIONS for acquisition in ("3D", "2D")] + [
    ("sagittal", "3D", True),  # echo-planar: dcm2niix reverses the rows instead of turning it
    ("oblique_steep", "3D", True),
]


@pytest.mark.parametrize(("orientation", "acquisition", "echo_planar"), CASES)
@pytest.mark.parametrize("descending", [False, True], ids=["ascending", "descending"])
def test_other_geometries_overlay_dcm2niix(orientation: str, acquisition: str, echo_planar: bool, descending: bool,
                                           tmp_path: Path) -> None:
    row, column = ORIENTATIONS[orientation]
    folder = regeometried(tmp_path / "series", row, column, acquisition=acquisition, descending=descending,
                          echo_planar=echo_planar)
    ours = _written_like_the_pipeline(folder, tmp_path / "ours.nii")
    reference = dcm2niix(folder, tmp_path / "dcm2niix")
    assert_same_grid(ours, reference)
    assert np.array_equal(np.asarray(ours.dataobj), np.asarray(reference.dataobj))
    turned = acquisition == "3D" and not echo_planar
    if orientation == "oblique_steep" and turned:  # the case nibabel's closest canonical would get wrong
        assert nib.aff2axcodes(reference.affine) != ("R", "A", "S")


def test_3d_acquisition_as_dcm2niix_reads_it() -> None:
    header = pydicom.dcmread(next(shared_path(GE_MR).iterdir()), stop_before_pixels=True)
    assert header.MRAcquisitionType == "3D" and is_3d_acquisition(header)
    header.ScanningSequence = ["SE", "EP"]
    assert not is_3d_acquisition(header)
    del header.ScanningSequence
    header.EchoPlanarPulseSequence = "YES"
    assert not is_3d_acquisition(header)
    del header.EchoPlanarPulseSequence
    header.add_new((0x2005, 0x106F), "UN", b"2D")  # Philips' private acquisition type has the last word
    assert not is_3d_acquisition(header)
    ct = pydicom.dcmread(next(shared_path(PHILIPS).iterdir()), stop_before_pixels=True)
    assert not is_3d_acquisition(ct)


# ----------------------------------------------------------------------------- the run, end to end


def medhub(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "medhub", *args], capture_output=True, text=True, timeout=900,
                          check=False)


@pytest.fixture(scope="module")
def ct_slab(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """14 contiguous slices of the real Philips head CT (through the skull base), in a folder of their own."""
    files = sorted((p for p in shared_path(PHILIPS).iterdir() if p.is_file()),
                   key=lambda p: float(pydicom.dcmread(p, stop_before_pixels=True).ImagePositionPatient[2]))
    folder = tmp_path_factory.mktemp("ct_slab") / "dicom"
    folder.mkdir()
    for path in files[20:34]:
        shutil.copyfile(path, folder / path.name)
    return folder


@pytest.fixture(scope="module")
def ct_run(ct_slab: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict]:
    out = tmp_path_factory.mktemp("ct_run") / "out"
    done = medhub("run", "ct-body", "--input", str(ct_slab), "--output", str(out), "--nifti", "--rtstruct")
    assert done.returncode == 0, done.stdout + done.stderr
    report = json.loads((out / "medhub-report.json").read_text())
    (entry,) = [e for e in report["series"] if e["status"] == "succeeded"]
    return out, entry


def test_nifti_writes_label_map_labels_and_image_named_as_expected(ct_run) -> None:
    out, entry = ct_run
    folder = out / entry["series_instance_uid"]
    assert sorted(Path(o).name for o in entry["outputs"]) == sorted([
        "ct-body.seg.dcm", "ct-body.rtstruct.dcm", "ct-body.nii.gz", "ct-body.labels.json",
        "STD_BRAIN_1MM_iDose_202.nii.gz"])  # dcm2niix -f %d_%s: SeriesDescription "STD BRAIN 1MM, iDose", 202
    assert all((out / o).is_file() for o in entry["outputs"])
    assert not [p for p in folder.iterdir() if p.name.startswith(".")]  # no temporary file left
    assert nib.load(folder / "ct-body.nii.gz").get_data_dtype() == np.uint8
    assert nib.load(folder / "STD_BRAIN_1MM_iDose_202.nii.gz").get_data_dtype() == np.int16  # HU, whole numbers


def test_label_map_and_image_overlay_dcm2niix_one_to_one(ct_run, ct_slab: Path, tmp_path: Path) -> None:
    out, entry = ct_run
    folder = out / entry["series_instance_uid"]
    reference = dcm2niix(ct_slab, tmp_path / "dcm2niix")
    labels, image = nib.load(folder / "ct-body.nii.gz"), nib.load(folder / "STD_BRAIN_1MM_iDose_202.nii.gz")
    assert_same_grid(labels, reference)
    assert_same_grid(image, reference)
    hounsfield = reference.get_fdata(dtype=np.float32)
    assert np.array_equal(np.asarray(image.dataobj), hounsfield)
    label_array = np.asarray(labels.dataobj)
    bone = label_array == 4
    # ct-body's bone is above 250 HU: on dcm2niix's array, voxel for voxel (a flipped overlay would not be).
    assert bone.sum() > 1000 and hounsfield[bone].min() > 250
    assert (label_array[(hounsfield > 250) & (label_array > 0)] == 4).mean() > 0.99  # bright in the body: bone
    assert hounsfield[bone[:, ::-1, :]].min() <= 250  # the same check on rows left as DICOM stores them fails


def test_labels_sidecar_follows_the_one_rule(ct_run) -> None:
    out, entry = ct_run
    folder = out / entry["series_instance_uid"]
    sidecar = json.loads((folder / "ct-body.labels.json").read_text())
    assert sidecar["label_map"] == "ct-body.nii.gz" and sidecar["image"] == "STD_BRAIN_1MM_iDose_202.nii.gz"
    assert sidecar["voxel_order"] == "dcm2niix" and sidecar["rule"] == LABEL_RULE
    assert sidecar["series_instance_uid"] == entry["series_instance_uid"]
    card = get_model("ct-body").card
    labels = sidecar["labels"]
    assert set(labels) == {"0", *(str(v) for v in card.outputs.segments)}  # every value the model can write
    present = {int(v) for v in np.unique(np.asarray(nib.load(folder / "ct-body.nii.gz").dataobj)) if v}
    assert present == {1, 4}  # body and bone on a head: 2 and 3 (lungs) and 5 are declared, not present
    for value, seg_id in card.outputs.segments.items():
        spec, item = get_segment(seg_id), labels[str(value)]
        assert (item["id"], item["name"], item["colour"]) == (spec.id, spec.name, list(spec.color))
        assert item["type"]["value"] == spec.type.value and item["type"]["scheme"] == "SCT"
        assert item["present"] == (value in present)

    seg = pydicom.dcmread(folder / "ct-body.seg.dcm")
    segments = {str(s.TrackingID): s for s in seg.SegmentSequence}
    assert [s.SegmentNumber for s in seg.SegmentSequence] == [1, 2]  # 1..K without gaps over values 1 and 4
    for value in present:
        item = labels[str(value)]
        segment = segments[item["id"]]
        assert item["seg_segment_number"] == segment.SegmentNumber == sorted(present).index(value) + 1
        assert segment.SegmentLabel == item["name"]
        assert segment.SegmentedPropertyTypeCodeSequence[0].CodeValue == item["type"]["value"]
    assert all(labels[str(v)]["seg_segment_number"] is None for v in card.outputs.segments if v not in present)

    rtstruct = pydicom.dcmread(folder / "ct-body.rtstruct.dcm")
    rois = {int(r.ROINumber): r for r in rtstruct.StructureSetROISequence}
    colours = {int(r.ReferencedROINumber): [int(c) for c in r.ROIDisplayColor] for r in rtstruct.ROIContourSequence}
    for value in rois:  # ROI Number = label value
        assert labels[str(value)]["rtstruct_roi_number"] == value
        assert rois[value].ROIName == labels[str(value)]["name"] and colours[value] == labels[str(value)]["colour"]


def test_dicom_results_of_the_run_are_valid(ct_run, assert_valid_dicom) -> None:
    out, entry = ct_run
    for name in ("ct-body.seg.dcm", "ct-body.rtstruct.dcm"):
        assert_valid_dicom(out / entry["series_instance_uid"] / name)


def test_viewer_reads_the_label_map_not_the_image(ct_run, ct_slab: Path, tmp_path: Path) -> None:
    out, entry = ct_run
    files = viewer_files(RunFolders(input=ct_slab, output=out, cache=tmp_path / "cache"), entry["series_instance_uid"])
    voxels = {row["label"]: row["voxels"] for row in files.read_meta()["segments"]}
    labels = np.asarray(nib.load(out / entry["series_instance_uid"] / "ct-body.nii.gz").dataobj)
    assert voxels[4] > 1000  # the label map, on the input's grid: not the image (whose values are not labels)
    assert voxels == {value: int(np.count_nonzero(labels == value)) for value in voxels}


def test_image_that_would_replace_its_label_map_is_refused_before_any_work(ct_slab: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    done = medhub("run", "ct-body", "--input", str(ct_slab), "--output", str(out), "--nifti",
                  "--template", "{series_description}_{series_number}")
    assert done.returncode == 2, done.stdout + done.stderr
    assert "write_nifti: the image of series" in done.stderr and "write_nifti.image=false" in done.stderr
    assert not out.exists(), "a layout refused before any work leaves no output folder"


def test_roi_subset_labels_list_the_kept_segments_only(ct_slab: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    done = medhub("run", "ct-body", "--input", str(ct_slab), "--output", str(out), "--nifti", "--roi-subset", "BONE")
    assert done.returncode == 0, done.stdout + done.stderr
    (sidecar,) = out.rglob("ct-body.labels.json")
    labels = json.loads(sidecar.read_text())["labels"]
    assert set(labels) == {"0", "4"} and labels["4"]["id"] == "BONE" and labels["4"]["seg_segment_number"] == 1
    assert set(np.unique(np.asarray(nib.load(sidecar.with_name("ct-body.nii.gz")).dataobj)).tolist()) == {0, 4}
    assert sidecar.with_name("STD_BRAIN_1MM_iDose_202.nii.gz").is_file()


def test_a_failed_nifti_write_leaves_no_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """nibabel writes under a name ending in .nii.gz (it compresses by the name): that file goes too."""
    from medhub.pipeline.steps import write_nifti as step

    def half_written(array, affine, path, **order):
        Path(path).write_bytes(b"\x1f\x8b half a file")
        raise OSError("No space left on device")

    monkeypatch.setattr(step, "write_nifti", half_written)
    with pytest.raises(OSError, match="No space left"):
        step._write(np.zeros((2, 2, 2), np.uint8), np.eye(4), tmp_path / "ct-body.nii.gz", ".nii.gz")
    assert list(tmp_path.iterdir()) == []
