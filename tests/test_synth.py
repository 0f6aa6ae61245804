"""synth.write_dicom_series and sample.write_sample: valid DICOM that reads back to the same volume."""

from __future__ import annotations

import hashlib

import numpy as np
import pydicom
import pytest

from medhub.errors import MedhubError
from medhub.inputs.load import load_series
from medhub.inputs.sample import keep_sample, write_sample
from medhub.inputs.scan import scan
from medhub.inputs.synth import write_dicom_series


def _oblique_affine() -> np.ndarray:
    """A rotated, anisotropic LPS affine: catches any swapped row/column or spacing order."""
    angle = np.deg2rad(20)
    rotation = np.array(
        [[np.cos(angle), -np.sin(angle), 0], [np.sin(angle), np.cos(angle), 0], [0, 0, 1]], dtype=float
    )
    affine = np.eye(4)
    affine[:3, :3] = rotation @ np.diag([0.7, 0.9, 2.5])
    affine[:3, 3] = [-40.0, 25.5, 100.0]
    return affine


def _stored_values(path) -> np.ndarray:
    ds = pydicom.dcmread(path)
    return ds.pixel_array * float(ds.get("RescaleSlope", 1)) + float(ds.get("RescaleIntercept", 0))


def test_float_mr_round_trip_is_valid_and_exact_to_the_rescale_step(tmp_path, assert_valid_dicom):
    rng = np.random.default_rng(0)
    array = (rng.random((24, 18, 6)) * 850.0 - 3.25).astype(np.float32)  # float T1-like values
    affine = _oblique_affine()

    paths = write_dicom_series(array, affine, tmp_path, modality="MR", series_description="float T1")

    assert len(paths) == 6
    for path in (paths[0], paths[3]):
        assert_valid_dicom(path)
    ds = pydicom.dcmread(paths[2])
    assert ds.SOPClassUID == pydicom.uid.MRImageStorage
    assert (ds.Rows, ds.Columns) == (18, 24)  # rows = y, columns = x
    assert [float(v) for v in ds.PixelSpacing] == pytest.approx([0.9, 0.7])
    assert float(ds.SliceThickness) == pytest.approx(2.5)
    assert [float(v) for v in ds.ImagePositionPatient] == pytest.approx((affine @ [0, 0, 2, 1])[:3], abs=1e-4)
    assert [float(v) for v in ds.ImageOrientationPatient[:3]] == pytest.approx(affine[:3, 0] / 0.7, abs=1e-6)
    slope = float(ds.RescaleSlope)
    assert slope < 0.02  # full int16 range used
    assert np.abs(_stored_values(paths[2]).T - array[:, :, 2]).max() <= slope / 2 + 1e-3


def test_integer_ct_is_stored_exactly_and_loads_back_in_world_space(tmp_path, assert_valid_dicom):
    rng = np.random.default_rng(1)
    array = rng.integers(-1024, 2000, size=(32, 20, 8)).astype(np.int16)
    affine = _oblique_affine()

    paths = write_dicom_series(array, affine, tmp_path / "ct", modality="CT", patient_id="P1")

    assert_valid_dicom(paths[-1])
    ds = pydicom.dcmread(paths[0])
    assert ds.SOPClassUID == pydicom.uid.CTImageStorage
    assert (ds.RescaleSlope, ds.RescaleIntercept, ds.RescaleType) == (1, 0, "HU")
    assert np.array_equal(_stored_values(paths[5]).T, array[:, :, 5])
    assert len({pydicom.dcmread(p).SeriesInstanceUID for p in paths}) == 1

    volume = load_series(scan(tmp_path / "ct").series[0])
    # The loader may order slices differently; compare voxel → world mappings, not indices.
    assert volume.shape == array.shape
    corner_ours = affine @ [0, 0, 0, 1]
    corners = [volume.affine_lps @ [0, 0, k, 1] for k in (0, array.shape[2] - 1)]
    assert any(np.allclose(c, corner_ours, atol=1e-3) for c in corners)
    flipped = not np.allclose(corners[0], corner_ours, atol=1e-3)
    expected = array[:, :, ::-1] if flipped else array
    assert np.array_equal(volume.array, expected)


@pytest.mark.parametrize(
    ("array", "kwargs", "message"),
    [
        (np.zeros((4, 4)), {}, "expected a 3D array"),
        (np.zeros((4, 4, 2)), {"modality": "US"}, "modality 'US' not supported"),
        (np.full((4, 4, 2), np.nan), {}, "NaN"),
    ],
)
def test_bad_input_is_a_one_line_error(tmp_path, array, kwargs, message):
    with pytest.raises(MedhubError, match=message):
        write_dicom_series(array, np.eye(4), tmp_path, **kwargs)


def test_deepbet_sample_is_the_mni152_template_as_valid_dicom(tmp_path, assert_valid_dicom):
    pytest.importorskip("nilearn")
    folder = write_sample(tmp_path, "deepbet")

    files = sorted(folder.glob("*.dcm"))
    assert len(files) == 189  # MNI152 1 mm: 197 x 233 x 189
    assert_valid_dicom(files[94])
    ds = pydicom.dcmread(files[94])
    assert (ds.Modality, ds.Rows, ds.Columns, ds.PatientID) == ("MR", 233, 197, "MNI152")
    assert "RescaleSlope" not in ds  # integers 0..1000, no MR rescale
    assert 0 < ds.pixel_array.max() <= 1000


def test_ct_body_has_no_sample(tmp_path):
    with pytest.raises(MedhubError, match="no sample data for ct-body"):
        write_sample(tmp_path, "ct-body")
    with pytest.raises(MedhubError, match="samples exist for: deepbet"):
        write_sample(tmp_path, "nope")


def test_kept_sample_is_the_same_bytes_on_every_run_and_never_replaces_foreign_files(tmp_path):
    """``--sample`` keeps its input in OUT/sample-input/ with content-derived UIDs: a second run finds the same."""
    pytest.importorskip("nilearn")
    out = tmp_path / "out"
    first = keep_sample(out, "deepbet")
    assert first == out / "sample-input" / "mni152_t1_1mm"
    digests = {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in first.iterdir()}
    stamps = {p.name: p.stat().st_mtime_ns for p in first.iterdir()}
    headers = [pydicom.dcmread(first / name, stop_before_pixels=True) for name in ("IM00001.dcm", "IM00002.dcm")]
    assert headers[0].SeriesInstanceUID == headers[1].SeriesInstanceUID
    assert headers[0].SOPInstanceUID != headers[1].SOPInstanceUID

    again = keep_sample(out, "deepbet")  # written again byte for byte the same, so left untouched
    assert again == first
    assert {p.name: p.stat().st_mtime_ns for p in again.iterdir()} == stamps
    assert not list(out.glob(".sample-input*"))  # no staging folder left

    (first / "IM00001.dcm").write_bytes(b"changed")  # ours, but changed: rewritten
    keep_sample(out, "deepbet")
    assert hashlib.sha256((first / "IM00001.dcm").read_bytes()).hexdigest() == digests["IM00001.dcm"]
    mine = out / "sample-input" / "notes.txt"  # not ours: refused, never deleted
    mine.write_text("my notes")
    with pytest.raises(MedhubError, match="holds files medhub did not write there"):
        keep_sample(out, "deepbet")
    assert mine.read_text() == "my notes"
