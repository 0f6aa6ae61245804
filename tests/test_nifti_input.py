"""NIfTI input: declared sizes checked before allocating, and the suitability checks a NIfTI allows
(inputs/nifti_check.py), on the real CT and MR NIfTI files of ../shared/data."""

from __future__ import annotations

import gzip
import json
import shutil
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from conftest import shared_path
from hostile_corpus import nifti_header

from medhub.errors import MedhubError, SeriesSkipped
from medhub.inputs.nifti import load_nifti
from medhub.inputs.nifti_check import check_nifti
from medhub.inputs.query import DataTypeQuery

CT = "ct/totalsegmentator_nifti/example_ct_sm.nii.gz"
MR_ABDOMEN = "ct/totalsegmentator_nifti/example_mr_sm.nii.gz"
T1_BRAIN = "mr/brainchop_t1_crop.nii.gz"
NEEDS_CT, NEEDS_MR, ANY = (DataTypeQuery.parse(q) for q in ("dicom:mod=ct", "dicom:mod=mr", "dicom"))


def _check(relative: str, query: DataTypeQuery, tmp_path: Path | None = None, sidecar: dict | None = None):
    path = shared_path(relative)
    if sidecar is not None:
        assert tmp_path is not None
        path = tmp_path / Path(relative).name
        shutil.copyfile(shared_path(relative), path)
        (tmp_path / (path.name.removesuffix(".nii.gz") + ".json")).write_text(json.dumps(sidecar))
    return check_nifti(load_nifti(path), path, query, 5, "model-x")


def test_ct_in_hounsfield_units_is_recognised() -> None:
    result = _check(CT, NEEDS_CT)
    assert result.checked and result.note.startswith("CT in Hounsfield units by its intensities (")
    with pytest.raises(SeriesSkipped, match=r"its intensities are CT in Hounsfield units .*; model model-x needs MR"):
        _check(CT, NEEDS_MR)


def test_brain_t1_is_not_ct_in_hounsfield_units() -> None:
    with pytest.raises(SeriesSkipped, match=r"no value is below 0, so not CT in Hounsfield units"):
        _check(T1_BRAIN, NEEDS_CT)
    result = _check(T1_BRAIN, NEEDS_MR)  # not CT, but nothing says MR either
    assert not result.checked and result.note.startswith("unchecked input: nothing tells the modality")


def test_inconclusive_intensities_are_unchecked_not_refused() -> None:
    result = _check(MR_ABDOMEN, NEEDS_CT)  # an MR with negative values after resampling: not recognisable
    assert not result.checked and "needs CT: check the result" in result.note
    assert _check(MR_ABDOMEN, ANY).checked  # a model that takes any modality has nothing to check


def test_a_sidecar_decides(tmp_path: Path) -> None:
    for name in "abc":
        (tmp_path / name).mkdir()
    result = _check(MR_ABDOMEN, NEEDS_MR, tmp_path / "a", {"Modality": "MR"})
    assert result.checked and result.note.startswith("modality MR from its sidecar")
    with pytest.raises(SeriesSkipped, match="its sidecar example_ct_sm.json says Modality MR; model model-x needs CT"):
        _check(CT, NEEDS_CT, tmp_path / "b", {"Modality": "MR"})
    with pytest.raises(SeriesSkipped, match="says CT, but no value is below 0"):
        _check(T1_BRAIN, NEEDS_CT, tmp_path / "c", {"Modality": "CT"})


def test_flat_or_thin_images_are_refused(tmp_path: Path) -> None:
    flat = tmp_path / "flat.nii.gz"
    nib.save(nib.Nifti1Image(np.full((20, 20, 20), 7, dtype=np.int16), np.eye(4)), flat)
    with pytest.raises(SeriesSkipped, match="every voxel is 7: an empty image"):
        check_nifti(load_nifti(flat), flat, NEEDS_CT, 5, "m")
    thin = tmp_path / "thin.nii.gz"
    data = np.asarray(nib.load(shared_path(CT)).dataobj)[:, :, :2]
    nib.save(nib.Nifti1Image(data, np.eye(4)), thin)
    with pytest.raises(SeriesSkipped, match="too few slices: the shortest axis of 122x101x2 has 2"):
        check_nifti(load_nifti(thin), thin, NEEDS_CT, 5, "m")


def test_declared_sizes_are_checked_before_allocating(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    huge = tmp_path / "huge.nii.gz"
    with gzip.open(huge, "wb") as stream:
        stream.write(nifti_header((32767, 32767, 32767)) + b"\0" * 1024)
    with pytest.raises(MedhubError, match=r"declares 32767x32767x32767 voxels, 64.0 TiB in memory, more than the "
                                          r"memory budget"):
        load_nifti(huge)
    short = tmp_path / "short.nii"  # uncompressed: the voxels must be in the file
    short.write_bytes(nifti_header((64, 64, 64)) + b"\0" * 1000)
    with pytest.raises(MedhubError, match=r"declares 64x64x64 voxels \(512.0 KiB\), the file holds 1000 bytes"):
        load_nifti(short)
    monkeypatch.setenv("MEDHUB_MEMORY_BUDGET", "100K")
    with pytest.raises(MedhubError, match="more than the memory budget of 100.0 KiB"):
        load_nifti(shared_path(CT))  # 122x101x30 int16 = 722 KiB
    cut = tmp_path / "cut.nii.gz"
    cut.write_bytes(shared_path(CT).read_bytes()[:20000])
    monkeypatch.delenv("MEDHUB_MEMORY_BUDGET")
    with pytest.raises(MedhubError, match="the voxel data cannot be read"):
        load_nifti(cut)


def test_non_finite_voxels_are_refused(tmp_path: Path) -> None:
    data = np.asarray(nib.load(shared_path(CT)).dataobj).astype(np.float32)
    data[5, 5, 5] = np.nan
    data[6, 6, 6] = np.inf
    path = tmp_path / "nan.nii.gz"
    nib.save(nib.Nifti1Image(data, np.eye(4)), path)
    with pytest.raises(MedhubError, match="2 voxels are NaN or infinite"):
        load_nifti(path)
