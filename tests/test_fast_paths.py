"""The two shortcuts that keep medhub's overhead low give exactly what pydicom gives.

* ``pixels.read_native``: uncompressed pixels read from the end of the file instead of a
  second full ``dcmread``. Must equal ``Dataset.pixel_array`` (dtype, shape, values, unused
  high bits corrected), and must decline (None) whatever it does not handle, so pydicom reads it.
* ``writers.seg._pre_encode_sequences``: sequences encoded once per distinct element. The file
  must be byte for byte what pydicom's writer produces.
"""

from __future__ import annotations

import copy
from pathlib import Path

import numpy as np
import pydicom
import pytest
from conftest import shared_path
from pydicom.filebase import DicomBytesIO

from medhub.inputs.pixels import read_native as _read_native
from medhub.writers.seg import _pre_encode_sequences


def _files(relative: str) -> list[Path]:
    return sorted(p for p in shared_path(relative).iterdir() if p.is_file())


def _header(path: Path) -> pydicom.Dataset:
    return pydicom.dcmread(path, stop_before_pixels=True)


@pytest.mark.parametrize(
    ("folder", "count"),
    [
        ("ct/philips_phantom_head_1mm", 12),  # explicit VR, 12 of 16 bits stored
        ("seg/dcmqi_segmentations/ct-3slice", 3),  # implicit VR, 16 bits
        ("edge/dicom2nifti_tests/ge/anatomical/001", 4),
    ],
)
def test_native_read_equals_pydicom(folder: str, count: int) -> None:
    for path in _files(folder)[:count]:
        got = _read_native(path, _header(path))
        assert got is not None, f"{path} should take the fast path"
        expected = pydicom.dcmread(path).pixel_array
        assert got.dtype == expected.dtype and got.shape == expected.shape
        np.testing.assert_array_equal(got, expected)
        assert got.flags.writeable


@pytest.mark.parametrize("folder", ["ct/philips_phantom_head_1mm", "seg/dcmqi_segmentations/ct-3slice"])
def test_native_read_into_the_callers_array_equals_pydicom(folder: str) -> None:
    """The loader reads each slice straight into its volume: the same values, or None when the array does not fit."""
    for path in _files(folder)[:3]:
        expected = pydicom.dcmread(path).pixel_array
        out = np.full(expected.shape, 7, dtype=expected.dtype)
        assert _read_native(path, _header(path), out=out) is out
        np.testing.assert_array_equal(out, expected)
        assert _read_native(path, _header(path), out=np.empty((1, *expected.shape), expected.dtype)) is None
        assert _read_native(path, _header(path), out=np.empty(expected.shape, np.float32)) is None


def test_in_place_rescale_wraps_to_the_exact_values(tmp_path: Path) -> None:
    """uint16 stored values above 32767 with an intercept that brings them into int16: the loader rescales
    in the array it read into (int16 wrap-around) and must give exactly stored + intercept."""
    from medhub.inputs.load import load_series
    from medhub.inputs.scan import scan

    expected = []
    files = sorted(_files("ct/philips_phantom_head_1mm"), key=lambda p: float(_header(p).ImagePositionPatient[2]))
    for index, source in enumerate(files[:5]):  # five adjacent slices: a regular stack, no resampling
        dataset = pydicom.dcmread(source)
        stored = dataset.pixel_array.astype(np.int64)
        stored = (stored - stored.min()) + 32000 + index  # 32000 .. above 32767
        dataset.PixelRepresentation, dataset.BitsStored, dataset.HighBit = 0, 16, 15
        dataset.RescaleSlope, dataset.RescaleIntercept = 1, -20000
        dataset.PixelData = stored.astype("<u2").tobytes()
        dataset.save_as(tmp_path / f"{index}.dcm", enforce_file_format=True)
        expected.append(stored - 20000)
    assert max(int(e.max()) for e in expected) + 20000 > 32767, "the test must exercise the wrap-around"
    volume = load_series(scan(tmp_path).series[0])
    assert volume.array.dtype == np.int16
    planes = volume.array.transpose(2, 1, 0)  # [z, row, col]
    order = np.argsort([float(p.position @ np.cross(volume.source.orientation[:3], volume.source.orientation[3:]))
                        for p in volume.source.planes])  # fmt: skip
    by_position = {tuple(np.round(pydicom.dcmread(tmp_path / f"{i}.dcm").ImagePositionPatient, 3)): e
                   for i, e in enumerate(expected)}  # fmt: skip
    for k, plane in enumerate(volume.source.planes):
        np.testing.assert_array_equal(planes[k], by_position[tuple(np.round(plane.position, 3))])
    assert list(order) == list(range(len(order)))


def test_unused_high_bits_are_corrected_like_pydicom(tmp_path: Path) -> None:
    """Garbage above Bits Stored: pydicom sign-extends (signed) or clears it; so must the fast path."""
    source = _files("ct/philips_phantom_head_1mm")[0]
    for representation in (0, 1):
        dataset = pydicom.dcmread(source)
        dataset.PixelRepresentation = representation
        dataset.BitsStored = 12
        dataset.HighBit = 11
        raw = np.frombuffer(dataset.PixelData, dtype="<u2").copy()
        raw[::7] |= 0xB000  # bits 12..15 set on some pixels
        raw[1::7] = 0x0800  # -2048 as a 12-bit signed value
        dataset.PixelData = raw.tobytes()
        path = tmp_path / f"ct_{representation}.dcm"
        dataset.save_as(path, enforce_file_format=True)
        got = _read_native(path, _header(path))
        expected = pydicom.dcmread(path).pixel_array
        assert got is not None and got.dtype == expected.dtype
        np.testing.assert_array_equal(got, expected)
        assert (got != raw.view(got.dtype).reshape(got.shape)).any(), "the test must exercise the correction"


def test_native_read_declines_what_it_does_not_handle(tmp_path: Path) -> None:
    compressed = _files("ct/totalsegmentator_example_ct_dicom")[0]  # JPEG 2000
    assert _read_native(compressed, _header(compressed)) is None
    source = _files("ct/philips_phantom_head_1mm")[0]
    dataset = pydicom.dcmread(source)
    dataset.DataSetTrailingPadding = b"\0" * 8  # an element after the pixel data
    padded = tmp_path / "padded.dcm"
    dataset.save_as(padded, enforce_file_format=True)
    assert _read_native(padded, _header(padded)) is None
    header = _header(source)
    header.Rows = header.Rows + 1  # the file no longer matches its scanned header
    assert _read_native(source, header) is None


@pytest.mark.parametrize(
    "relative",
    ["seg/dcmqi_segmentations/liver.dcm", "seg/highdicom/seg_image_ct_binary_overlap.dcm",
     "rtstruct/dicompyler_core_example/rtss.dcm"],
)
def test_pre_encoded_sequences_are_byte_identical(relative: str) -> None:
    dataset = pydicom.dcmread(shared_path(relative))
    dataset.file_meta.TransferSyntaxUID = pydicom.uid.ExplicitVRLittleEndian
    for _ in dataset.iterall():  # parse every element, as for a dataset built in memory
        pass
    expected, fast = DicomBytesIO(), DicomBytesIO()
    copy.deepcopy(dataset).save_as(expected, enforce_file_format=True)
    pre_encoded = copy.deepcopy(dataset)
    _pre_encode_sequences(pre_encoded)
    assert any(element.is_raw for element in pre_encoded.elements()), "no sequence was pre-encoded"
    pre_encoded.save_as(fast, enforce_file_format=True)
    assert fast.getvalue() == expected.getvalue()


def test_a_slice_the_fast_path_declines_is_copied_into_its_place(tmp_path: Path) -> None:
    """One file of a series ends with an element after its pixel data: pydicom decodes it, the loader
    puts it into the volume's array with the others, and every slice equals pydicom's, rescaled."""
    from medhub.inputs.load import load_series
    from medhub.inputs.scan import scan

    files = sorted(_files("ct/philips_phantom_head_1mm"), key=lambda p: float(_header(p).ImagePositionPatient[2]))
    expected = {}
    for index, source in enumerate(files[:4]):
        dataset = pydicom.dcmread(source)
        if index == 2:
            dataset.DataSetTrailingPadding = b"\0" * 8
        dataset.save_as(tmp_path / f"{index}.dcm", enforce_file_format=True)
        rescaled = dataset.pixel_array.astype(np.int64) * int(dataset.RescaleSlope) + int(dataset.RescaleIntercept)
        expected[round(float(dataset.ImagePositionPatient[2]), 3)] = rescaled
    assert _read_native(tmp_path / "2.dcm", _header(tmp_path / "2.dcm")) is None
    volume = load_series(scan(tmp_path).series[0])
    planes = volume.array.transpose(2, 1, 0)
    for k, plane in enumerate(volume.source.planes):
        np.testing.assert_array_equal(planes[k], expected[round(float(plane.position[2]), 3)])
