"""Property-based fuzzing of the scanner and the loader (hypothesis) on real files from ../shared/data.

Each example takes a real series, mutates one of its files -- a header element set to a hostile
value (empty, text, NaN, huge, negative, the wrong number of values, random bytes) or deleted, or
the file's bytes flipped, cut or padded -- and runs ``scan``, ``check_series`` and
``load_series`` on the folder. The property: every file is either part of a series or listed as
unreadable with a one-line reason naming it; every series either loads into a sane volume (3D,
finite values and affine, at least two source planes) or is refused with a one-line reason; no
other exception escapes, and nothing hangs (each example has a time limit).

How many examples: the ``medhub-ci`` profile (the default) runs a fixed, derandomised set of
``MEDHUB_FUZZ_EXAMPLES`` examples per seed series (default 12: seconds). For a deeper search, on
demand::

    MEDHUB_FUZZ_EXAMPLES=2000 HYPOTHESIS_PROFILE=medhub-deep python -m pytest tests/test_fuzz_inputs.py

``medhub-deep`` draws fresh random examples each run (and prints the seed of a failure, which
``--hypothesis-seed=N`` replays).
"""

from __future__ import annotations

import os
import shutil
import signal
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pydicom
import pytest
from conftest import SHARED_DATA
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pydicom.datadict import dictionary_VR
from pydicom.dataelem import RawDataElement
from pydicom.tag import Tag

from medhub.errors import MedhubError
from medhub.inputs.load import check_series, load_series
from medhub.inputs.scan import scan

EXAMPLES = int(os.environ.get("MEDHUB_FUZZ_EXAMPLES", "12"))
SECONDS_PER_EXAMPLE = 60
settings.register_profile("medhub-ci", max_examples=EXAMPLES, derandomize=True, deadline=None, database=None,
                          suppress_health_check=[HealthCheck.too_slow], print_blob=True)
settings.register_profile("medhub-deep", max_examples=EXAMPLES, deadline=None, database=None,
                          suppress_health_check=[HealthCheck.too_slow], print_blob=True)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "medhub-ci"))

SEEDS = {  # small real series in different encodings
    "ct-implicit-vr": "seg/dcmqi_segmentations/23x38x3/image",  # GE CT crops, implicit VR, 3 slices
    "mr-jpeg-ls": "edge/dicom2nifti_tests/generic/compressed_jpegls/001",  # 4 slices, JPEG-LS
    "mr-jpeg2000": "edge/dicom2nifti_tests/generic/compressed_j2k/001",  # 4 slices, JPEG 2000
    "mr-enhanced": "edge/dicom2nifti_tests/philips_enhanced/anatomical/001",  # one 8-frame enhanced MR
}

# The header elements the scanner and loader read, and a few they should not care about.
TAGS = [
    "Rows", "Columns", "BitsAllocated", "BitsStored", "HighBit", "PixelRepresentation", "SamplesPerPixel",
    "PhotometricInterpretation", "NumberOfFrames", "ImagePositionPatient", "ImageOrientationPatient",
    "PixelSpacing", "SliceThickness", "RescaleSlope", "RescaleIntercept", "PixelPaddingValue",
    "PixelPaddingRangeLimit", "SOPInstanceUID", "SOPClassUID", "SeriesInstanceUID", "StudyInstanceUID",
    "FrameOfReferenceUID", "PatientID", "Modality", "InstanceNumber", "SpecificCharacterSet", "ImageType",
    "SeriesDescription", "PerFrameFunctionalGroupsSequence", "SharedFunctionalGroupsSequence", "PixelData",
]
TEXT_VALUES = st.sampled_from([
    "", " ", "0", "-1", "1", "2", "65535", "4294967296", "-2000", "NaN", "nan", "inf", "-inf", "1e308", "1e-320",
    "abc", "1\\2", "1\\2\\3", "0\\0\\0\\0\\0\\0", "1\\0\\0\\0\\0.8\\0", "1\\0\\0\\1\\0\\0", "0.5\\0.5",
    "-0.5\\0", "UTF-8", "ISO_IR 192", "MONOCHROME1", "RGB", "PALETTE COLOR", "CT", "MR", "SEG",
    "1.2.840.10008.5.1.4.1.1.2", "1.2.3", "ORIGINAL\\PRIMARY\\LOCALIZER", "\x00\x00", "é",
]) | st.text(max_size=12)


@st.composite
def header_mutation(draw: st.DrawFn) -> tuple[str, str, object]:
    keyword = draw(st.sampled_from(TAGS))
    kind = draw(st.sampled_from(["delete", "text", "bytes"]))
    if kind == "delete":
        return keyword, kind, None
    if kind == "text":
        return keyword, kind, draw(TEXT_VALUES)
    return keyword, kind, draw(st.binary(max_size=16))


@st.composite
def byte_mutation(draw: st.DrawFn) -> tuple[str, int, bytes]:
    kind = draw(st.sampled_from(["flip", "cut", "insert"]))
    where = draw(st.integers(min_value=0, max_value=2**31))  # taken modulo the file size
    return kind, where, draw(st.binary(min_size=1, max_size=8))


def _apply_header(path: Path, mutation: tuple[str, str, object]) -> None:
    keyword, kind, value = mutation
    dataset = pydicom.dcmread(path, force=True)
    tag = Tag(keyword)
    if kind == "delete":
        if tag in dataset:
            del dataset[tag]
    else:
        raw = value.encode("utf-8", "replace") if isinstance(value, str) else bytes(value)  # type: ignore[arg-type]
        if len(raw) % 2:
            raw += b" " if isinstance(value, str) else b"\0"
        vr = dictionary_VR(tag)
        vr = {"US or SS": "US", "OB or OW": "OW", "US or OW": "US", "US or SS or OW": "US"}.get(vr, vr)
        if vr == "SQ":
            vr = "UN"  # random bytes where a sequence was: written as unknown
        dataset[tag] = RawDataElement(tag, vr, len(raw), raw, 0, dataset.is_implicit_VR, dataset.is_little_endian)
    try:
        dataset.save_as(path, enforce_file_format=False)
    except Exception:  # noqa: BLE001 - pydicom cannot write this mutation: fall back to the bytes themselves
        _apply_bytes(path, ("flip", hash(mutation) & 0x7FFFFFFF, b"\xff"))


def _apply_bytes(path: Path, mutation: tuple[str, int, bytes]) -> None:
    kind, where, data = mutation
    content = bytearray(path.read_bytes())
    header_end = min(len(content), 4096)  # the header region, where parsing happens
    position = where % max(header_end, 1)
    if kind == "flip":
        content[position:position + len(data)] = data
    elif kind == "cut":
        del content[position:]
    else:
        content[position:position] = data
    path.write_bytes(bytes(content))


@contextmanager
def _time_limit(seconds: int) -> Iterator[None]:
    def expire(signum: int, frame: object) -> None:
        raise TimeoutError(f"the scan or load took more than {seconds} s: a hang")

    previous = signal.signal(signal.SIGALRM, expire)
    signal.alarm(seconds)
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)


def _one_line(message: str) -> None:
    assert message.strip(), "an empty reason"
    assert "\n" not in message, f"a reason of several lines: {message!r}"
    assert "Traceback" not in message


def _check_folder(folder: Path, files: list[Path]) -> None:
    """The property: every file accounted for, every series loaded sanely or refused with one line."""
    with _time_limit(SECONDS_PER_EXAMPLE):
        result = scan(folder)
        listed = {u.path.name for u in result.unreadable}
        in_series = {i.path.name for s in result.series for i in s.instances}
        for item in result.unreadable:
            _one_line(item.reason)
            assert str(item.path) in item.reason
        vanished = {p.name for p in files} - listed - in_series
        assert not vanished or result.dicomdir_files, f"{sorted(vanished)}: neither in a series nor unreadable"
        for series in result.series:
            check = check_series(series)
            if check.skip_reason is not None:
                _one_line(check.skip_reason)
            try:
                volume = load_series(series)
            except MedhubError as error:  # SeriesSkipped included: a clean refusal
                _one_line(str(error))
                continue
            assert volume.array.ndim == 3 and min(volume.array.shape) >= 1
            assert np.isfinite(volume.affine_lps).all()
            assert abs(np.linalg.det(volume.affine_lps[:3, :3])) > 0
            if volume.array.dtype.kind == "f":
                assert np.isfinite(volume.array).all(), "non-finite voxels reached the volume"
            assert volume.source is not None and len(volume.source.planes) >= 2
            for finding in volume.findings:
                _one_line(finding)


def _seed(name: str, folder: Path) -> list[Path]:
    source = SHARED_DATA / SEEDS[name]
    if not source.exists():
        pytest.skip(f"real test data absent: {source}")
    folder.mkdir()
    files = []
    for path in sorted(p for p in source.iterdir() if p.is_file()):
        shutil.copyfile(path, folder / path.name)
        files.append(folder / path.name)
    return files


@pytest.fixture(autouse=True)
def _small_memory_budget(monkeypatch: pytest.MonkeyPatch) -> None:
    """Mutated headers may declare huge images: the budget refuses them long before this machine suffers."""
    monkeypatch.setenv("MEDHUB_MEMORY_BUDGET", "1G")


@pytest.mark.parametrize("seed", sorted(SEEDS))
@given(mutation=header_mutation(), target=st.integers(min_value=0, max_value=64))
def test_header_mutations_load_or_refuse_cleanly(seed: str, mutation: tuple[str, str, object], target: int) -> None:
    with tempfile.TemporaryDirectory(prefix="medhub-fuzz-") as scratch:
        files = _seed(seed, Path(scratch) / "series")
        _apply_header(files[target % len(files)], mutation)
        _check_folder(Path(scratch) / "series", files)


@pytest.mark.parametrize("seed", sorted(SEEDS))
@given(mutation=byte_mutation(), target=st.integers(min_value=0, max_value=64))
def test_byte_mutations_load_or_refuse_cleanly(seed: str, mutation: tuple[str, int, bytes], target: int) -> None:
    with tempfile.TemporaryDirectory(prefix="medhub-fuzz-") as scratch:
        files = _seed(seed, Path(scratch) / "series")
        _apply_bytes(files[target % len(files)], mutation)
        _check_folder(Path(scratch) / "series", files)
