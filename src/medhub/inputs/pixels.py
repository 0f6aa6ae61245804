"""Stored pixel values of one DICOM file, with every size checked before anything is allocated.

A header may declare any size (Rows/Columns up to 65535, thousands of frames), and a compressed
codestream may declare another. Nothing is decoded before both are checked:

* the header's Rows x Columns x frames must fit the memory budget (:func:`memory_budget`), and
  for uncompressed data the file must hold that many bytes (the scan already refuses files whose
  pixel data does not fit them);
* a JPEG 2000 / JPEG / JPEG-LS codestream must declare the size the header declares (its SIZ or
  SOF marker is read from the first fragment), since the decoder allocates what the codestream says.

Failures raise :class:`PixelReadError` naming the file and the problem in one line; the loader
leaves that file out of its series (then the gap rules decide) or fails the series.
"""

from __future__ import annotations

import os
import struct
from pathlib import Path

import numpy as np
import pydicom
from pydicom.dataset import Dataset
from pydicom.encaps import generate_fragmented_frames
from pydicom.pixels import get_decoder
from pydicom.uid import UID, ExplicitVRLittleEndian, ImplicitVRLittleEndian

from medhub import config
from medhub.data.series import Instance
from medhub.errors import MedhubError

_PIXEL_DATA_TAG = b"\xe0\x7f\x10\x00"  # (7FE0,0010) little endian
_J2K_SYNTAXES = {"1.2.840.10008.1.2.4.90", "1.2.840.10008.1.2.4.91", "1.2.840.10008.1.2.4.201",
                 "1.2.840.10008.1.2.4.202", "1.2.840.10008.1.2.4.203"}
_JPEG_SYNTAXES = {"1.2.840.10008.1.2.4.50", "1.2.840.10008.1.2.4.51", "1.2.840.10008.1.2.4.57",
                  "1.2.840.10008.1.2.4.70", "1.2.840.10008.1.2.4.80", "1.2.840.10008.1.2.4.81"}
# JPEG start-of-frame markers (baseline, extended, progressive, lossless, JPEG-LS), ITU T.81 B.1.1.3
_SOF_MARKERS = {0xC0, 0xC1, 0xC2, 0xC3, 0xC5, 0xC6, 0xC7, 0xC9, 0xCA, 0xCB, 0xCD, 0xCE, 0xCF, 0xF7}


class PixelReadError(MedhubError):
    """One file's pixels cannot be read or decoded; the message names the file."""

    def __init__(self, path: Path, message: str) -> None:
        super().__init__(message)
        self.path = Path(path)


def memory_budget() -> int:
    """Bytes one series' pixels may take in memory (``MEDHUB_MEMORY_BUDGET``, default half the RAM)."""
    return config.settings().memory_budget


def format_bytes(count: float) -> str:
    for unit in ("bytes", "KiB", "MiB", "GiB", "TiB"):
        if count < 1024 or unit == "TiB":
            return f"{count:.0f} {unit}" if unit == "bytes" else f"{count:.1f} {unit}"
        count /= 1024
    return f"{count:.1f} TiB"


def read_stored_pixels(instance: Instance, rows: int, columns: int) -> np.ndarray:
    """The stored values of every frame of ``instance`` as ``(frames, rows, columns)``.

    Uncompressed little-endian files are read straight from the end of the file (no second
    header parse); anything else goes through pydicom's decoders after the size checks.
    """
    header = instance.header
    data = read_native(instance.path, header, instance.transfer_syntax_uid)
    if data is None:
        try:
            data = _read_with_pydicom(instance, rows, columns)
        except PixelReadError:
            raise
        except Exception as error:  # noqa: BLE001 - whatever breaks on one file's pixels leaves that file out
            raise PixelReadError(instance.path, f"cannot decode {instance.path}: {type(error).__name__}: "
                                                f"{first_line(error)}") from error
    if data.ndim == 2:
        data = data[None]
    if data.shape[1:] != (rows, columns):
        raise PixelReadError(instance.path, f"{instance.path.name}: decoded pixels {data.shape[1:]} differ from "
                                            f"Rows/Columns {(rows, columns)}")
    return data


def _read_with_pydicom(instance: Instance, rows: int, columns: int) -> np.ndarray:
    """The stored pixel values of any file pydicom can decode, with one-line errors."""
    path = instance.path
    try:
        dataset = pydicom.dcmread(path, force=True)
    except Exception as error:  # noqa: BLE001 - a broken file fails its series (exit code 1), not the run
        raise PixelReadError(path, f"cannot read {path}: {first_line(error)}") from error
    if "TransferSyntaxUID" not in dataset.file_meta:  # no file meta (implicit VR, no preamble): as the scan found it
        dataset.file_meta.TransferSyntaxUID = UID(instance.transfer_syntax_uid or ImplicitVRLittleEndian)
    if not any(k in dataset for k in ("PixelData", "FloatPixelData", "DoubleFloatPixelData")):
        raise PixelReadError(path, f"no pixel data in {path.name}")
    syntax = str(dataset.file_meta.TransferSyntaxUID)
    if "PixelData" in dataset and UID(syntax).is_compressed:
        _check_codestream(path, dataset, syntax, rows, columns)
    try:
        return dataset.pixel_array
    except Exception as error:  # noqa: BLE001 - decoder errors vary by plugin; the file is refused with the reason
        raise PixelReadError(path, decode_failure(path, dataset, error)) from error


def _check_codestream(path: Path, dataset: Dataset, syntax: str, rows: int, columns: int) -> None:
    """The first frame's codestream must declare the header's size: the decoder allocates what it says."""
    try:
        frames = int(dataset.get("NumberOfFrames") or 1)
        fragment = next(generate_fragmented_frames(dataset.PixelData, number_of_frames=frames), (b"",))[0]
    except Exception as error:  # noqa: BLE001 - malformed encapsulation
        raise PixelReadError(path, f"{path}: encapsulated pixel data is malformed ({first_line(error)})") from error
    size = codestream_size(fragment, syntax)
    if size is not None and size != (rows, columns):
        raise PixelReadError(path, f"cannot decode {path}: {UID(syntax).name} codestream declares {size[1]}x{size[0]} "
                                   f"pixels where the header says {columns}x{rows}: not decoded")


def codestream_size(fragment: bytes, syntax: str) -> tuple[int, int] | None:
    """(rows, columns) a JPEG 2000 or JPEG codestream declares in its first fragment (None: unknown)."""
    if syntax in _J2K_SYNTAXES:
        start = fragment.find(b"\xff\x4f\xff\x51")  # SOC then SIZ; a JP2 box header may come first
        if start < 0 or len(fragment) < start + 24:
            return None
        xsiz, ysiz, xosiz, yosiz = struct.unpack(">IIII", fragment[start + 8:start + 24])
        return (ysiz - yosiz, xsiz - xosiz)
    if syntax in _JPEG_SYNTAXES:
        position = 2 if fragment[:2] == b"\xff\xd8" else -1
        while 0 <= position < len(fragment) - 9:
            if fragment[position] != 0xFF:
                return None
            marker = fragment[position + 1]
            if marker in _SOF_MARKERS:
                height, width = struct.unpack(">HH", fragment[position + 5:position + 9])
                return (height, width)
            (length,) = struct.unpack(">H", fragment[position + 2:position + 4])
            position += 2 + length
    return None


def read_native(path: Path, header: Dataset, syntax: str | None = None, *,
                out: np.ndarray | None = None) -> np.ndarray | None:  # fmt: skip
    """Uncompressed little-endian grey-scale pixels read straight from the end of the file, or None.

    ``header`` is the scan's parse of the same file (up to the pixel data). Reading the pixels
    with ``dcmread`` would parse that header a second time: 0.25 of the 0.4 s CPU a 300-slice CT
    took. When the file ends with a Pixel Data element of exactly the size the header describes
    (the layout of nearly every uncompressed CT/MR/PET file), its value is those pixels, and
    the array is the one pydicom's ``pixel_array`` gives: same dtype, shape and values. This
    path is only taken where that holds trivially -- 8/16/32 bits allocated, one sample per
    pixel, little endian; unused high bits are corrected as pydicom does (shifted out and back,
    so signed values are sign-extended) -- and anything else (compressed or big-endian
    transfer syntax, bits to mask or sign-extend, colour, trailing elements after the pixel
    data, a file changed since the scan) returns None, for pydicom to read the whole file.
    ``syntax`` is the transfer syntax the scan found (the file meta's when None; a file without
    file meta has none there).

    ``out``: a C-contiguous array to read the pixels into (the loader's volume, so that a series
    is never held twice in memory); it must have the shape and dtype of the result, else None is
    returned. After None, ``out`` may hold part of the file: the caller fills it another way.
    """
    layout = _native_layout(header, syntax)
    if layout is None:
        return None
    dtype, shape, length, element = layout
    head = len(element[0])
    if out is not None and (out.shape != shape or out.dtype != dtype.newbyteorder("=")
                            or not out.flags.c_contiguous):  # fmt: skip
        return None
    try:
        with open(path, "rb") as fp:
            size = os.fstat(fp.fileno()).st_size
            padded = length + (length & 1)
            if size < padded + head:
                return None
            fp.seek(size - padded - head)
            if out is None:
                buffer = bytearray(padded + head)
                if fp.readinto(buffer) != len(buffer) or bytes(buffer[:head]) not in element:
                    return None
                data = np.frombuffer(buffer, dtype=dtype, count=length // dtype.itemsize, offset=head)
            else:
                if fp.read(head) not in element or fp.readinto(out.data.cast("B")) != length:
                    return None
                data = out.reshape(-1)
    except OSError:
        return None
    data = data.astype(dtype.newbyteorder("="), copy=False)
    bits, stored = dtype.itemsize * 8, int(header.BitsStored)
    if stored < bits:  # pydicom's correction of the unused high bits: sign-extend (signed) or clear them
        np.left_shift(data, bits - stored, out=data)
        np.right_shift(data, bits - stored, out=data)
    return out if out is not None else data.reshape(shape)


_Layout = tuple[np.dtype, tuple[int, ...], int, tuple[bytes, ...]]


def _native_layout(header: Dataset, syntax: str | None) -> _Layout | None:
    """dtype, array shape, value length and the possible Pixel Data element headers of a file
    :func:`read_native` can read; None for anything else."""
    if syntax is None:
        meta = getattr(header, "file_meta", None)
        syntax = str(meta.get("TransferSyntaxUID", "")) if meta is not None else ""
    if syntax not in (ExplicitVRLittleEndian, ImplicitVRLittleEndian):
        return None
    try:
        bits = int(header.BitsAllocated)
        signed = int(header.PixelRepresentation)
        rows, columns = int(header.Rows), int(header.Columns)
        frames = int(header.get("NumberOfFrames") or 1)
        stored = int(header.BitsStored)
        simple = (
            bits in (8, 16, 32) and 1 <= stored <= bits and signed in (0, 1)
            and int(header.get("SamplesPerPixel") or 1) == 1
            and str(header.get("PhotometricInterpretation", "")).strip() in ("MONOCHROME1", "MONOCHROME2")
        )
    except (AttributeError, TypeError, ValueError):
        return None
    if not simple or rows < 1 or columns < 1 or frames < 1:
        return None
    length = rows * columns * frames * (bits // 8)
    padded = length + (length & 1)
    if syntax == ExplicitVRLittleEndian:
        vrs = (b"OB" if bits == 8 else b"OW", b"OB", b"OW")
        element: tuple[bytes, ...] = tuple(_PIXEL_DATA_TAG + vr + b"\0\0" + padded.to_bytes(4, "little") for vr in vrs)
    else:
        element = (_PIXEL_DATA_TAG + padded.to_bytes(4, "little"),)
    dtype = np.dtype(f"{'i' if signed else 'u'}{bits // 8}").newbyteorder("<")
    return dtype, ((rows, columns) if frames == 1 else (frames, rows, columns)), length, element


def native_dtype(header: Dataset, syntax: str | None = None) -> np.dtype | None:
    """The dtype :func:`read_native` gives for a file, or None when it cannot read it."""
    layout = _native_layout(header, syntax)
    return None if layout is None else layout[0].newbyteorder("=")


def decode_failure(path: Path, dataset: Dataset, error: Exception) -> str:
    """Say whether a plugin is missing (and which) or the data itself is broken."""
    uid = UID(str(dataset.file_meta.get("TransferSyntaxUID", "")))
    name = uid.name if uid else "unknown transfer syntax"
    try:
        decoder = get_decoder(uid)
    except NotImplementedError:
        return f"cannot decode {path}: {name} has no pixel data decoder in pydicom ({first_line(error)})"
    if not decoder.is_available:
        needs = "; or ".join(decoder.missing_dependencies) or "a pixel data plugin"
        return f"cannot decode {path}: {name} needs {needs} ({first_line(error)})"
    return f"cannot decode {path}: {name} pixel data is corrupt or unsupported ({first_line(error)})"


def first_line(error: Exception) -> str:
    text = str(error).strip().splitlines()
    return text[0][:200] if text else type(error).__name__
