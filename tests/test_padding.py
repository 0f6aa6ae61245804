"""Pixel Padding Value written with an OB/UN VR (a raw value, no US/SS) on real GE CT slices.

Before, reading such a value asked a converted pydicom DataElement for its byte order, which only raw
elements have: the loader stopped with an AttributeError instead of masking the padding (found by mypy).
"""

from __future__ import annotations

import io
import struct
from pathlib import Path

import numpy as np
import pydicom
from conftest import shared_path
from pydicom.dataelem import DataElement
from pydicom.uid import ExplicitVRBigEndian, ExplicitVRLittleEndian

from medhub.data.series import Series
from medhub.inputs.header import _native_pixel_bytes  # the size the truncation check expects
from medhub.inputs.load import load_series
from medhub.inputs.padding import Padding, padding_of
from medhub.inputs.scan import scan_files

GE_CT = "seg/dcmqi_segmentations/ct-3slice"
PADDING = 0x00280120


def _real_slices() -> list[Path]:
    files = sorted(shared_path(GE_CT).glob("0*.dcm"))
    assert len(files) == 3
    return files


def _with_ob_padding(source: Path, target: Path) -> None:
    """The real slice as Explicit VR Little Endian, its PixelPaddingValue (-2000, SS) as two OB bytes."""
    ds = pydicom.dcmread(source)
    raw = struct.pack("<h", int(ds.PixelPaddingValue))
    del ds[PADDING]
    ds.add(DataElement(PADDING, "OB", raw))
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.save_as(target, implicit_vr=False, little_endian=True)


def _series(paths: list[Path]) -> Series:
    """The files as the scanner groups them: one series."""
    (series,) = scan_files(paths).series
    return series


def test_ob_padding_value_is_masked_like_the_ss_one(tmp_path: Path) -> None:
    files = _real_slices()
    rewritten = []
    for source in files:
        target = tmp_path / source.name
        _with_ob_padding(source, target)
        rewritten.append(target)
    assert pydicom.dcmread(rewritten[0])[PADDING].VR == "OB"
    assert padding_of(pydicom.dcmread(rewritten[0], stop_before_pixels=True)) == Padding(-2000, -2000)

    original, as_ob = load_series(_series(files)), load_series(_series(rewritten))
    stored = np.stack([pydicom.dcmread(p).pixel_array for p in files])
    padded = int((stored == -2000).sum())
    assert padded > 100_000
    (note,) = [f for f in as_ob.findings if f.startswith("pixel padding")]
    assert note.startswith(f"pixel padding (PixelPaddingValue -2000): {padded} voxels")
    np.testing.assert_array_equal(as_ob.array, original.array)


def test_ob_values_are_read_in_the_files_byte_order() -> None:
    """A big-endian file's OB padding and OB Rows are big-endian bytes; the header scan reads them so."""
    header = pydicom.dcmread(_real_slices()[0], stop_before_pixels=True)
    rows = int(header.Rows)
    del header[PADDING]
    header.add(DataElement(PADDING, "OB", struct.pack(">h", -2000)))
    del header[0x00280010]
    header.add(DataElement(0x00280010, "OB", struct.pack(">H", rows)))
    header.file_meta.TransferSyntaxUID = ExplicitVRBigEndian
    buffer = io.BytesIO()
    pydicom.dcmwrite(buffer, header, implicit_vr=False, little_endian=False, force_encoding=True)

    for convert_first in (False, True):  # a raw element, and one pydicom has already converted (value still bytes)
        reread = pydicom.dcmread(io.BytesIO(buffer.getvalue()))
        if convert_first:
            assert isinstance(reread[0x00280010].value, bytes)
        assert padding_of(reread) == Padding(-2000, -2000)
        assert _native_pixel_bytes(reread) == rows * int(header.Columns) * 2
