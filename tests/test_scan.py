"""scan: find DICOM files, read headers, group into series (real data from ../shared/data)."""

from __future__ import annotations

import json
import os
import shutil

import numpy as np
import pydicom
import pytest
from conftest import shared_path
from pydicom.fileset import FileSet

from medhub.errors import MedhubError
from medhub.inputs.scan import iter_files, orientation_name, scan, scan_files, sop_class_keyword

PHILIPS = "ct/philips_phantom_head_1mm"
TOTALSEG = "ct/totalsegmentator_example_ct_dicom"


def test_philips_head_ct_is_one_series_sorted_by_instance_number():
    result = scan(shared_path(PHILIPS))
    assert result.files_seen == 140
    assert (result.non_dicom_files, result.dicomdir_files, result.unreadable) == (0, 0, [])
    assert len(result.series) == 1
    series = result.series[0]
    assert series.key == series.series_instance_uid != ""
    assert series.modality == "CT" and series.has_uids
    numbers = [int(i.header.InstanceNumber) for i in series.instances]
    assert numbers == sorted(numbers) and len(set(numbers)) == 140
    assert all(i.header.get("PixelData") is None for i in series.instances)  # headers only
    md = series.metadata
    assert md["mod"] == "ct" and md["slices"] == 140 and md["instances"] == 140
    assert md["orientation"] == "axial"
    assert md["sop_class_name"] == "CTImageStorage" and md["sop_class"] == pydicom.uid.CTImageStorage
    assert md["image_type"][:2] == ["original", "primary"] and md["type"].startswith("original\\primary")
    assert md["manufacturer"].lower().startswith("philips")
    assert (md["rows"], md["columns"], md["frames"]) == (512, 512, 1)
    json.dumps(md)  # reports and the REST API serialise it


def test_totalsegmentator_ct_without_uids_groups_into_one_series_with_file_meta_fallback():
    folder = shared_path(TOTALSEG)
    result = scan(folder)
    assert len(result.series) == 1 and not result.unreadable
    series = result.series[0]
    assert series.key.startswith("nouid-") and series.series_instance_uid == ""
    assert len(series.instances) == 20 and series.modality == "CT"
    for inst in series.instances:
        assert inst.header.SOPInstanceUID == ""  # the quirk: the dataset's own UID is empty
        assert inst.sop_instance_uid == inst.header.file_meta.MediaStorageSOPInstanceUID != ""
        assert inst.sop_class_uid == pydicom.uid.CTImageStorage
        assert inst.transfer_syntax_uid == pydicom.uid.JPEG2000Lossless
    assert not series.has_uids  # study/series UIDs are still missing: no SEG can reference it
    assert series.metadata["sop_class_name"] == "CTImageStorage"
    assert scan(folder).series[0].key == series.key  # stable across scans


def test_rtstruct_without_preamble_is_recognised(tmp_path):
    src = shared_path("rtstruct/pydicom/rtstruct.dcm")
    assert src.read_bytes()[128:132] != b"DICM"
    dst = tmp_path / "no_preamble_rtstruct"  # no .dcm suffix: recognition is by content
    shutil.copy(src, dst)
    result = scan(dst)  # a single file as root
    assert result.files_seen == 1 and result.non_dicom_files == 0 and not result.unreadable
    (series,) = result.series
    assert series.modality == "RTSTRUCT"
    assert series.metadata["sop_class_name"] == "RTStructureSetStorage"
    assert series.instances[0].transfer_syntax_uid == pydicom.uid.ImplicitVRLittleEndian


@pytest.mark.parametrize(
    ("source", "cut", "expected"),
    [
        (f"{PHILIPS}/I10", 0.5, "pixel data needs"),  # native pixel data cut
        (f"{PHILIPS}/I10", 4000, "truncated file"),  # cut inside the header
        (f"{TOTALSEG}/CT.1.3.12.2.1107.5.1.4.60064.30000022120808113428000016573", 0.6, "sequence delimiter"),
        ("rtstruct/dicompyler_core_example/rtss.dcm", 0.5, "truncated file"),  # no pixel data at all
        ("rtstruct/pydicom/rtstruct.dcm", 0.7, "truncated file"),  # no preamble, implicit VR
    ],
)
def test_truncated_copy_goes_to_unreadable_and_scan_continues(tmp_path, source, cut, expected):
    data = shared_path(source).read_bytes()
    size = int(len(data) * cut) if isinstance(cut, float) else cut
    (tmp_path / "broken.dcm").write_bytes(data[:size])  # deliberately invalid input, not an output
    shutil.copy(shared_path(f"{PHILIPS}/I100"), tmp_path / "good.dcm")
    result = scan(tmp_path)
    assert len(result.unreadable) == 1
    bad = result.unreadable[0]
    assert bad.path.name == "broken.dcm"
    assert "broken.dcm" in bad.reason and "truncated file" in bad.reason and expected in bad.reason
    assert "\n" not in bad.reason
    assert [i.path.name for s in result.series for i in s.instances] == ["good.dcm"]


def test_no_real_file_is_reported_unreadable(shared_data):
    """Guards the truncation checks against false alarms on every real file we have."""
    result = scan(shared_data)
    assert result.unreadable == []
    assert result.files_seen == result.non_dicom_files + sum(len(s.instances) for s in result.series)
    assert all(s.instances for s in result.series)
    json.dumps([s.metadata for s in result.series])


def test_non_dicom_and_dicomdir_files_are_counted_not_errors(tmp_path, assert_valid_dicom):
    ct = shared_path("seg/highdicom_source_ct_pydicom_CT2/17106")
    source = pydicom.dcmread(ct)
    source.remove_private_tags()  # the source's malformed private block would fail dciodvfy
    fileset = FileSet()
    fileset.add(source)
    fileset.write(tmp_path / "export")
    dicomdir = tmp_path / "export" / "DICOMDIR"
    assert_valid_dicom(dicomdir)
    assert_valid_dicom(next((tmp_path / "export").glob("PT*/ST*/SE*/IM*")))
    shutil.copy(dicomdir, tmp_path / "export" / "index.bin")  # a DICOMDIR under another name
    (tmp_path / "notes.txt").write_text("scanned at the PACS\n")
    (tmp_path / "meta.json").write_text('{"a": 1}')
    (tmp_path / "empty").write_bytes(b"")
    (tmp_path / "fake_group8").write_bytes(b"\x08\x00\x05\x00CS\x0a\x00hello")  # DICOM-like start, no tags
    shutil.copy(shared_path("ct/totalsegmentator_nifti/example_ct_sm.nii.gz"), tmp_path / "ct.nii.gz")
    seen = []
    result = scan(tmp_path, progress=seen.append)
    assert result.dicomdir_files == 2
    assert result.non_dicom_files == 5
    assert not result.unreadable
    assert len(result.series) == 1 and result.series[0].instances[0].path.name == "IM000000"
    assert seen == list(range(1, result.files_seen + 1)) and result.files_seen == 8


def test_enhanced_multiframe_mr_counts_frames():
    result = scan(shared_path("enhanced/dcm_qa_enh/Siemens/XA10"))
    (series,) = result.series
    assert len(series.instances) == 4 and series.number_of_images == 24
    assert series.metadata["slices"] == 24 and series.metadata["frames"] == 6
    assert series.metadata["sop_class_name"] == "EnhancedMRImageStorage"
    assert series.metadata["orientation"] == "axial"  # from the functional groups
    philips = scan(shared_path("enhanced/dcm_qa_enh/Philips")).series[0]
    assert philips.number_of_images == 64 and philips.instances[0].number_of_frames == 64


def test_dicom2nifti_edge_cases_group_per_series():
    result = scan(shared_path("edge/dicom2nifti_tests/failing"))
    by_folder = {s.instances[0].path.parent.parent.name: s for s in result.series}
    assert len(result.series) == 4
    assert sorted(len(s.instances) for s in result.series) == [2, 4, 4, 4]
    assert {s.modality for s in result.series} == {"CT", "MR"}
    assert by_folder["slicecount"].metadata["orientation"] == "sagittal"
    assert result.non_dicom_files == 4  # the ground-truth NIfTI files


def test_files_without_series_uid_split_by_folder_and_geometry(tmp_path):
    src = sorted(shared_path(TOTALSEG).iterdir())
    for sub, files in (("a", src[:10]), ("b", src[10:])):
        (tmp_path / sub).mkdir()
        for f in files:
            shutil.copy(f, tmp_path / sub / f.name)
    result = scan(tmp_path)
    assert len(result.series) == 2 and sorted(len(s.instances) for s in result.series) == [10, 10]
    assert len({s.key for s in result.series}) == 2


def test_iter_files_is_sorted_and_missing_root_is_a_clear_error(tmp_path):
    for name in ("b/2", "b/1", "a/z", "c"):
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text("x")
    assert [p.relative_to(tmp_path).as_posix() for p in iter_files(tmp_path)] == ["a/z", "b/1", "b/2", "c"]
    with pytest.raises(MedhubError, match="does not exist"):
        scan(tmp_path / "missing")


def test_orientation_names_and_sop_class_keywords():
    assert orientation_name(np.array([1, 0, 0, 0, 1, 0.0])) == "axial"
    assert orientation_name(np.array([1, 0, 0, 0, 0, -1.0])) == "coronal"
    assert orientation_name(np.array([0, 1, 0, 0, 0, -1.0])) == "sagittal"
    tilt = np.deg2rad(20)  # gantry-tilted axial CT stays axial
    assert orientation_name(np.array([1, 0, 0, 0, np.cos(tilt), -np.sin(tilt)])) == "axial"
    oblique = np.deg2rad(45)
    assert orientation_name(np.array([1, 0, 0, 0, np.cos(oblique), np.sin(oblique)])) == "oblique"
    assert orientation_name(None) == ""
    assert sop_class_keyword("1.2.840.10008.5.1.4.1.1.66.7") == "LabelMapSegmentationStorage"
    assert sop_class_keyword(pydicom.uid.CTImageStorage) == "CTImageStorage"
    assert sop_class_keyword("") == ""


def test_links_are_followed_once_and_loops_broken_links_and_fifos_are_named(tmp_path):
    """The walk's link policy (inputs/walk.py) on a tree of real files."""
    root, outside = tmp_path / "in", tmp_path / "outside"
    (root / "a").mkdir(parents=True)
    outside.mkdir()
    philips = sorted(shared_path(PHILIPS).iterdir())
    shutil.copy(philips[0], root / "a" / "one.dcm")
    shutil.copy(philips[1], outside / "two.dcm")
    os.symlink("..", root / "a" / "up")  # loop
    os.symlink(outside, root / "z_outside")  # outside the tree: followed
    os.symlink(root / "a", root / "b_again")  # a second way to a/, which the walk met first
    os.symlink("self.dcm", root / "self.dcm")
    os.symlink("nowhere.dcm", root / "broken.dcm")
    os.mkfifo(root / "pipe.dcm")  # reading it would block forever
    skipped: list[tuple[str, str]] = []
    files = [p.relative_to(root).as_posix() for p in iter_files(root, on_skip=lambda p, r: skipped.append((p.name, r)))]
    assert files == ["a/one.dcm", "z_outside/two.dcm"]
    reasons = dict(skipped)
    assert set(reasons) == {"up", "b_again", "self.dcm", "broken.dcm", "pipe.dcm"}
    assert "already walked" in reasons["up"] and "already walked" in reasons["b_again"]
    assert "loop" in reasons["self.dcm"] and "broken symlink" in reasons["broken.dcm"]
    assert "not a regular file" in reasons["pipe.dcm"]
    result = scan(root)
    assert sorted(u.path.name for u in result.unreadable) == sorted(reasons)
    assert all(str(u.path) in u.reason for u in result.unreadable)
    assert sum(len(s.instances) for s in result.series) == 2


def test_files_named_dicom_that_are_not_are_unreadable_with_the_reason(tmp_path):
    real = sorted(shared_path(PHILIPS).iterdir())[0].read_bytes()
    (tmp_path / "empty.dcm").write_bytes(b"")
    (tmp_path / "noise.DCM").write_bytes(bytes(range(256)) * 8)
    (tmp_path / "short.dcm").write_bytes(real[:60])
    (tmp_path / "noise.bin").write_bytes(bytes(range(256)) * 8)  # no DICOM name: just not DICOM
    result = scan(tmp_path)
    reasons = {u.path.name: u.reason for u in result.unreadable}
    assert set(reasons) == {"empty.dcm", "noise.DCM", "short.dcm"} and result.non_dicom_files == 1
    assert "empty file" in reasons["empty.dcm"] and "not DICOM" in reasons["noise.DCM"]
    assert "cut short" in reasons["short.dcm"]


def test_a_file_cut_anywhere_in_its_header_is_unreadable_never_a_series(tmp_path):
    """Cuts at element boundaries leave a header pydicom parses without complaint (it used to become a
    1-image series); a real CT header cut at every element start and between two must be named unreadable."""
    from hostile_corpus import _element_boundary

    data = sorted(shared_path(PHILIPS).iterdir())[0].read_bytes()
    starts = [132]
    while True:  # every element start of the (explicit VR) header, up to the pixel data
        try:
            starts.append(_element_boundary(data, starts[-1] + 1))
        except ValueError:
            break
        if data[starts[-1]:starts[-1] + 4] == b"\xe0\x7f\x10\x00":
            break
    assert len(starts) > 100
    target = tmp_path / "cut.dcm"
    for cut in sorted({*starts, *(a + (b - a) // 2 for a, b in zip(starts, starts[1:], strict=False))}):
        target.write_bytes(data[:cut])
        result = scan(target)
        assert not result.series and len(result.unreadable) == 1, f"cut at byte {cut}"


def test_one_series_uid_holding_two_patients_is_split_never_merged(tmp_path):
    philips = sorted(shared_path(PHILIPS).iterdir())[:6]
    for index, path in enumerate(philips):
        dataset = pydicom.dcmread(path)
        dataset.PatientID = "A" if index < 3 else "B"
        dataset.save_as(tmp_path / f"{index}.dcm")
    result = scan(tmp_path)
    uid = pydicom.dcmread(philips[0], stop_before_pixels=True).SeriesInstanceUID
    assert sorted(s.key for s in result.series) == [f"{uid}-part1", f"{uid}-part2"]
    assert sorted(len(s.instances) for s in result.series) == [3, 3]
    for series in result.series:
        assert {i.patient_id for i in series.instances} in ({"A"}, {"B"})
        assert series.findings and series.findings[0].startswith("split: SeriesInstanceUID")
    part = next(s for s in result.series if s.key.endswith("part2"))
    alone = scan_files([i.path for i in part.instances], key=part.key)  # a Dask worker rescans one part
    assert [s.key for s in alone.series] == [part.key]
