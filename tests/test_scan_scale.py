"""Scanning at scale: parallel header reading and bounded memory give the same series as a plain scan."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
from conftest import shared_path

from medhub.data.geometry import labels_to_source
from medhub.inputs.load import load_series
from medhub.inputs.scan import scan
from medhub.segdb import get_segment
from medhub.writers.provenance import AlgorithmInfo
from medhub.writers.seg import write_seg


def _summary(result) -> tuple:
    return (
        result.files_seen, result.non_dicom_files, result.dicomdir_files,
        sorted((Path(u.path).name, u.reason) for u in result.unreadable),
        [(s.key, s.modality, s.description, [str(i.path) for i in s.instances], s.metadata) for s in result.series],
    )


def test_parallel_scan_equals_serial_scan_on_the_real_data(tmp_path: Path) -> None:
    root = shared_path("")
    serial = scan(root)
    parallel = scan(root, workers=2)
    assert len(serial.series) > 20
    assert _summary(parallel) == _summary(serial)
    assert all(not i.header_loaded for s in parallel.series for i in s.instances[1:])


def test_released_headers_are_reread_and_a_seg_is_still_valid(tmp_path: Path, assert_valid_dicom) -> None:
    folder = tmp_path / "ct"
    shutil.copytree(shared_path("ct/philips_phantom_head_1mm"), folder)
    (folder / "notes.txt").write_text("x")
    kept = scan(folder, keep_headers=True)
    released = scan(folder, keep_headers=False)
    assert _summary(kept) == _summary(released)
    series = released.series[0]
    assert series.instances[0].header_loaded and not any(i.header_loaded for i in series.instances[1:])

    volume = load_series(series)
    reference = load_series(kept.series[0])
    np.testing.assert_array_equal(volume.array, reference.array)
    labels = (volume.array > 300).astype(np.uint8)
    path = write_seg(labels_to_source(volume, labels), volume.source, {1: get_segment("BONE")},
                     AlgorithmInfo(name="threshold", version="1"), tmp_path / "bone.seg.dcm")
    assert_valid_dicom(path)
    series.release_headers()
    assert not any(i.header_loaded for i in series.instances[1:])
    assert series.instances[5].header.SOPInstanceUID == series.instances[5].sop_instance_uid
