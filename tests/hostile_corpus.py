"""The hostile-input corpus: inputs that real PACS exports, anonymisers and file systems produce, and
what ``medhub run`` must do with each.

Every case is *generated* from the real scanner data in ``../shared/data`` (nothing of it is stored
in the repository): a builder copies real files into a folder and applies the one defect the case
is about. ``tests/test_hostile_corpus.py`` runs ``medhub run`` on each case in a subprocess and
checks, for every case, the promises the README makes:

* the exit code is the one written down here, stderr holds at most one line and never a traceback;
* the input tree (and anything a link in it points to) is byte-identical afterwards, mtimes included;
* no temporary file is left (not in the output, not in ``TMPDIR``);
* every DICOM object written passes ``dciodvfy`` with 0 errors;
* the report names every series that did not succeed and every unreadable file, each with a reason,

and then the case's own expectations (statuses, words the report must say, a content check).

Adding a case
-------------
1. Write a builder ``def _build_x(case: Path) -> Path``: make files under ``case`` from
   ``../shared/data`` (use :func:`ct_slices` / :func:`write` for a small real CT series) and return
   the path to pass as ``--input`` (usually ``case / "input"``). Anything the builder puts next to
   the input (a folder a symlink points to) is checked for changes too.
2. Append a :class:`Case` to :data:`CASES`: its name, the expected behaviour in one sentence, the
   builder, the model and extra arguments, the exit code, the series it expects (by
   SeriesDescription) with their status and the words their reason/findings/notes must contain, the
   unreadable files (by name) with a word of their reason, a word of the one stderr line, and
   optionally ``check(out, report)`` for what only this case can check (voxels, SEG contents).
3. Run ``python -m pytest tests/test_hostile_corpus.py -k <name>``. To look at the inputs:
   ``python tests/hostile_corpus.py /tmp/corpus`` writes every case (or ``... /tmp/corpus NAME``).

Keep cases small (the CT series here are 12 slices of 128x128 cut from a real head CT): the whole
corpus runs in CI.
"""

from __future__ import annotations

import functools
import gzip
import json
import os
import struct
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pydicom
from pydicom.dataelem import RawDataElement
from pydicom.dataset import Dataset
from pydicom.tag import Tag
from pydicom.uid import DeflatedExplicitVRLittleEndian, generate_uid

SHARED_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"
PHILIPS = SHARED_DATA / "ct" / "philips_phantom_head_1mm"
TOTALSEG_J2K = SHARED_DATA / "ct" / "totalsegmentator_example_ct_dicom"
NIFTI_CT = SHARED_DATA / "ct" / "totalsegmentator_nifti" / "example_ct_sm.nii.gz"
NIFTI_MR_ABDOMEN = SHARED_DATA / "ct" / "totalsegmentator_nifti" / "example_mr_sm.nii.gz"
NIFTI_T1_BRAIN = SHARED_DATA / "mr" / "brainchop_t1_crop.nii.gz"

CROP = 128  # in-plane size of the corpus CT series (a centred crop of the real 512x512 slices)
SLICES = 12  # slices per corpus CT series (ct-body takes 5 or more)
FIRST = 64  # first slice of the real 140 taken


# ------------------------------------------------------------------------------------- expectations


@dataclass(frozen=True)
class SeriesExpect:
    """A series of the report, found by its SeriesDescription (several entries may share one)."""

    description: str
    status: str  # succeeded, skipped, failed, rejected
    says: tuple[str, ...] = ()  # words its reason, findings and notes must contain (case-insensitive)
    count: int = 1  # how many report entries have this description


@dataclass(frozen=True)
class Case:
    name: str
    behaviour: str  # what medhub must do, in one sentence (the written-down expectation)
    build: Callable[[Path], Path]
    exit_code: int
    model: str = "ct-body"
    args: tuple[str, ...] = ()
    series: tuple[SeriesExpect, ...] = ()
    unreadable: dict[str, str] = field(default_factory=dict)  # file name → a word of its reason
    stderr: str = ""  # a word the one stderr line must contain ("" = stderr may be empty)
    check: Callable[[Path, dict[str, Any]], None] | None = None
    # The --output to pass, from the case folder (default: a fresh folder outside it). With exit code 2
    # nothing under the case folder may change, the output included; otherwise anything but the output.
    output: Callable[[Path], Path] | None = None


# ------------------------------------------------------------------------------------- real data


def uid(*parts: object) -> str:
    """A UID derived from the parts: the same case always gets the same UIDs."""
    return generate_uid(entropy_srcs=[str(p) for p in parts])


@functools.cache
def _philips_by_position() -> tuple[Path, ...]:
    files = [p for p in PHILIPS.iterdir() if p.is_file()]

    def height(path: Path) -> float:
        return float(pydicom.dcmread(path, stop_before_pixels=True).ImagePositionPatient[2])

    return tuple(sorted(files, key=height))


def ct_slices(label: str, count: int = SLICES, first: int = FIRST, crop: int = CROP) -> list[Dataset]:
    """``count`` consecutive real CT slices (Philips head phantom, 1 mm), cropped to ``crop``² around the centre.

    A new series ``label`` (its SeriesDescription): Series/SOP Instance UIDs derived from the label,
    ImagePositionPatient moved to the crop's first pixel, so the geometry stays exact.
    """
    out = []
    series_uid = uid(label, "series")
    for index, path in enumerate(_philips_by_position()[first:first + count]):
        ds = pydicom.dcmread(path)
        start = (ds.Rows - crop) // 2
        pixels = ds.pixel_array[start:start + crop, start:start + crop]
        ds.PixelData = np.ascontiguousarray(pixels).tobytes()
        ds.Rows = ds.Columns = crop
        position = [float(v) for v in ds.ImagePositionPatient]
        spacing = [float(v) for v in ds.PixelSpacing]
        ds.ImagePositionPatient = [position[0] + start * spacing[1], position[1] + start * spacing[0], position[2]]
        ds.SeriesInstanceUID = series_uid
        ds.SOPInstanceUID = uid(label, ds.SOPInstanceUID)
        ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
        ds.SeriesDescription = label
        ds.InstanceNumber = index + 1
        out.append(ds)
    return out


def write(datasets: list[Dataset], folder: Path, prefix: str = "IM") -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for index, ds in enumerate(datasets):
        path = folder / f"{prefix}{index:04d}.dcm"
        ds.save_as(path, enforce_file_format=True)
        paths.append(path)
    return paths


def _raw_ds(ds: Dataset, keyword: str, text: str) -> None:
    """Put a DS value as raw bytes (pydicom would refuse to encode 'NaN' itself)."""
    tag = Tag(keyword)
    value = text.encode("ascii")
    if len(value) % 2:
        value += b" "
    ds[tag] = RawDataElement(tag, "DS", len(value), value, 0, False, True)


def _input(case: Path) -> Path:
    folder = case / "input"
    folder.mkdir(parents=True, exist_ok=True)
    return folder


# ------------------------------------------------------------------------------------- builders


def _build_rescale_non_finite(case: Path) -> Path:
    datasets = ct_slices("rescale non-finite")
    _raw_ds(datasets[3], "RescaleIntercept", "inf")
    _raw_ds(datasets[8], "RescaleSlope", "NaN")
    write(datasets, _input(case))
    return case / "input"


def _build_rescale_zero_run(case: Path) -> Path:
    datasets = ct_slices("rescale zero")
    for index in (5, 6, 7):
        _raw_ds(datasets[index], "RescaleSlope", "0")
    write(datasets, _input(case))
    return case / "input"


def _build_two_patients(case: Path) -> Path:
    """A broken anonymiser gave two patients' scans (same protocol, same positions) one SeriesInstanceUID."""
    first = ct_slices("shared series uid", first=40)
    second = ct_slices("shared series uid", first=90)
    for label, datasets in (("A", first), ("B", second)):
        for ds in datasets:
            ds.PatientID = f"PATIENT-{label}"
            ds.PatientName = f"Patient^{label}"
            ds.StudyInstanceUID = uid("study", label)
            ds.SOPInstanceUID = uid("two patients", label, ds.SOPInstanceUID)
            ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
        # the same positions for both: as if one patient's scan, 4D or duplicated
        for ds, reference in zip(datasets, first, strict=True):
            ds.ImagePositionPatient = reference.ImagePositionPatient
    write(first, _input(case), "A")
    write(second, _input(case), "B")
    return case / "input"


def _check_two_patients(out: Path, report: dict[str, Any]) -> None:
    seen = {}
    for entry in report["series"]:
        seg = next(out / o for o in entry["outputs"] if o.endswith(".seg.dcm"))
        dataset = pydicom.dcmread(seg)
        referenced = {item.ReferencedSOPInstanceUID for series in dataset.ReferencedSeriesSequence
                      for item in series.ReferencedInstanceSequence}
        assert referenced == set(entry["sop_instance_uids"]), "a split SEG references only its own patient's images"
        seen[str(dataset.PatientID)] = dataset.StudyInstanceUID
    assert seen == {"PATIENT-A": uid("study", "A"), "PATIENT-B": uid("study", "B")}


def _build_same_sop_uid(case: Path) -> Path:
    datasets = ct_slices("reused SOP instance UID")
    datasets[9].SOPInstanceUID = datasets[2].SOPInstanceUID
    datasets[9].file_meta.MediaStorageSOPInstanceUID = datasets[2].SOPInstanceUID
    write(datasets, _input(case))
    return case / "input"


def _build_uid_in_two_series(case: Path) -> Path:
    """A bad merge of two exports: another series reuses one of this series' SOPInstanceUIDs."""
    first, second = ct_slices("first of two series"), ct_slices("second of two series", first=90)
    second[4].SOPInstanceUID = first[4].SOPInstanceUID
    second[4].file_meta.MediaStorageSOPInstanceUID = first[4].SOPInstanceUID
    write(first, _input(case) / "a")
    write(second, _input(case) / "b")
    return case / "input"


def _build_exact_copy(case: Path) -> Path:
    paths = write(ct_slices("exported twice"), _input(case))
    (case / "input" / "copy_of_IM0004.dcm").write_bytes(paths[4].read_bytes())
    return case / "input"


_PAD_STORED = 4095  # stored value +3071 HU after the intercept: bone to a thresholding model


def _ring(crop: int = CROP, radius: float = 50.0) -> np.ndarray:
    """True outside a centred circle: where a scanner writes padding (outside the reconstruction)."""
    yy, xx = np.mgrid[:crop, :crop]
    return np.hypot(yy - crop / 2, xx - crop / 2) > radius


def _padded(label: str, values: Callable[[np.ndarray], np.ndarray], **tags: object) -> list[Dataset]:
    datasets = ct_slices(label)
    ring = _ring()
    for ds in datasets:
        pixels = ds.pixel_array.copy()
        pixels[ring] = values(pixels[ring])
        ds.PixelData = pixels.tobytes()
        for keyword, value in tags.items():  # US or SS by PixelRepresentation (pydicom will not guess)
            ds.add_new(keyword, "SS" if ds.PixelRepresentation else "US", value)
    return datasets


def _build_padding_value(case: Path) -> Path:
    write(_padded("pixel padding value", lambda v: np.full_like(v, _PAD_STORED), PixelPaddingValue=_PAD_STORED),
          _input(case))
    return case / "input"


def _build_padding_range(case: Path) -> Path:
    rng = np.random.default_rng(7)
    write(_padded("pixel padding range", lambda v: rng.integers(4000, 4096, v.shape).astype(v.dtype),
                  PixelPaddingValue=4000, PixelPaddingRangeLimit=4095), _input(case))
    return case / "input"


def _check_padding_masked(out: Path, report: dict[str, Any]) -> None:
    import nibabel as nib

    (entry,) = report["series"]
    labels = np.asarray(nib.load(out / next(o for o in entry["outputs"] if o.endswith(".nii.gz"))).dataobj)
    labels = labels[:, ::-1, :]  # dcm2niix's voxel order (rows reversed for an axial CT) back to DICOM's
    ring = _ring().T  # array [x=column, y=row, z]
    assert not labels[ring].any(), "padding outside the reconstruction circle was segmented"
    assert labels[~ring].any(), "the phantom inside the circle must still be segmented"


def _build_orientation_not_orthonormal(case: Path) -> Path:
    datasets = ct_slices("column cosine 0.8 long")
    for ds in datasets:
        ds.ImageOrientationPatient = [1, 0, 0, 0, 0.8, 0]
    write(datasets, _input(case))
    return case / "input"


def _build_orientation_rounded(case: Path) -> Path:
    """Cosines written with too few digits: 3e-4 off orthonormal (dciodvfy rejects them as they are)."""
    datasets = ct_slices("rounded cosines")
    for ds in datasets:
        ds.ImageOrientationPatient = [1, 0, 0, 0.0003, 1, 0]
    write(datasets, _input(case))
    return case / "input"


def _check_orientation_normalised(out: Path, report: dict[str, Any]) -> None:
    (entry,) = report["series"]
    seg = pydicom.dcmread(out / next(o for o in entry["outputs"] if o.endswith(".seg.dcm")))
    orientation = np.array(seg.SharedFunctionalGroupsSequence[0].PlaneOrientationSequence[0].ImageOrientationPatient,
                           dtype=float)
    row, column = orientation[:3], orientation[3:]
    assert abs(np.linalg.norm(row) - 1) < 1e-6 and abs(np.linalg.norm(column) - 1) < 1e-6
    assert abs(row @ column) < 1e-6


def _build_type2_absent(case: Path) -> Path:
    datasets = ct_slices("no type 2 patient attributes")
    for ds in datasets:
        for keyword in ("PatientSex", "PatientBirthDate", "ReferringPhysicianName", "AccessionNumber", "StudyID"):
            if keyword in ds:
                delattr(ds, keyword)
    write(datasets, _input(case))
    return case / "input"


NON_ASCII_NAME = "Müller^Jörg"


def _build_charset_utf8(case: Path) -> Path:
    datasets = ct_slices("UTF-8 character set")
    for ds in datasets:
        ds.SpecificCharacterSet = "UTF-8"
        ds.PatientName = "x"
        ds["PatientName"].value = NON_ASCII_NAME.encode("utf-8")
    write(datasets, _input(case))
    return case / "input"


def _check_name_kept(out: Path, report: dict[str, Any]) -> None:
    for entry in report["series"]:
        for output in entry["outputs"]:
            if output.endswith(".dcm"):
                dataset = pydicom.dcmread(out / output)
                assert dataset.SpecificCharacterSet == "ISO_IR 192", output
                assert str(dataset.PatientName) == NON_ASCII_NAME, output


def _build_implicit_no_meta(case: Path) -> Path:
    folder = _input(case)
    for index, ds in enumerate(ct_slices("implicit VR without file meta")):
        del ds.file_meta
        pydicom.dcmwrite(folder / f"IM{index:04d}.dcm", ds, implicit_vr=True, little_endian=True,
                         enforce_file_format=False)
    return folder


def _build_deflated(case: Path) -> Path:
    folder = _input(case)
    for index, ds in enumerate(ct_slices("deflated explicit VR")):
        ds.file_meta.TransferSyntaxUID = DeflatedExplicitVRLittleEndian
        ds.save_as(folder / f"IM{index:04d}.dcm", enforce_file_format=True)
    return folder


def _build_symlinks(case: Path) -> Path:
    folder = _input(case)
    write(ct_slices("inside the tree"), folder / "series")
    write(ct_slices("behind a link", first=20), case / "elsewhere")
    os.symlink("..", folder / "series" / "up")  # a loop: the tree again
    os.symlink(folder / "series", folder / "series_again")  # a second way to the same folder (walked after it)
    os.symlink("self.dcm", folder / "self.dcm")  # a file link to itself (ELOOP)
    os.symlink("nowhere.dcm", folder / "broken.dcm")
    os.symlink(case / "elsewhere", folder / "linked")  # outside the input tree: followed, read only
    return folder


def _build_junk_files(case: Path) -> Path:
    folder = _input(case)
    write(ct_slices("good series next to junk"), folder / "series")
    (folder / "empty.dcm").write_bytes(b"")
    (folder / "random.dcm").write_bytes(np.random.default_rng(3).integers(0, 256, 4096, dtype=np.uint8).tobytes())
    real = _philips_by_position()[0].read_bytes()
    (folder / "cut_in_preamble.dcm").write_bytes(real[:100])
    (folder / "cut_in_header.dcm").write_bytes(real[:_element_boundary(real, 1100)])
    (folder / "random_no_suffix").write_bytes(np.random.default_rng(4).integers(0, 256, 512, dtype=np.uint8).tobytes())
    return folder


def _element_boundary(data: bytes, after: int) -> int:
    """The first byte offset >= ``after`` where an explicit VR little endian data element starts."""
    position = 132
    while position < len(data):
        group, element = struct.unpack("<HH", data[position:position + 4])
        vr = data[position + 4:position + 6]
        if vr in (b"OB", b"OW", b"OF", b"SQ", b"UT", b"UN", b"UC", b"UR", b"OD", b"OL", b"OV", b"SV", b"UV"):
            length = struct.unpack("<I", data[position + 8:position + 12])[0]
            head = 12
        else:
            length = struct.unpack("<H", data[position + 6:position + 8])[0]
            head = 8
        if position >= after:
            return position
        if length == 0xFFFFFFFF:
            raise ValueError("undefined length before the cut")
        position += head + length
    raise ValueError("no element boundary")


def _build_truncated_slice(case: Path) -> Path:
    paths = write(ct_slices("one truncated slice"), _input(case))
    data = paths[6].read_bytes()
    paths[6].write_bytes(data[: len(data) // 2])
    return case / "input"


def _build_undecodable_slice(case: Path) -> Path:
    """One slice whose JPEG 2000 codestream is garbage: well-formed file, the scan accepts it, decoding fails."""
    from pydicom.encaps import encapsulate
    from pydicom.uid import JPEG2000Lossless

    datasets = ct_slices("one undecodable slice")
    datasets[7].PixelData = encapsulate([b"\xff\x4f\xff\x51" + b"\x00" * 60])
    datasets[7]["PixelData"].VR = "OB"
    datasets[7].file_meta.TransferSyntaxUID = JPEG2000Lossless
    write(datasets, _input(case))
    return case / "input"


def _build_missing(indices: tuple[int, ...], label: str) -> Callable[[Path], Path]:
    def build(case: Path) -> Path:
        datasets = [ds for index, ds in enumerate(ct_slices(label)) if index not in indices]
        write(datasets, _input(case))
        return case / "input"
    return build


def _build_huge_native(case: Path) -> Path:
    datasets = ct_slices("one slice declares 65535x65535")
    datasets[5].Rows = datasets[5].Columns = 65535
    write(datasets, _input(case))
    return case / "input"


def _build_huge_jpeg2000(case: Path) -> Path:
    """The real JPEG 2000 CT (TotalSegmentator's example) with every header declaring 65535x65535."""
    folder = _input(case)
    for path in sorted(TOTALSEG_J2K.iterdir())[:8]:
        ds = pydicom.dcmread(path)
        ds.Rows = ds.Columns = 65535
        ds.save_as(folder / path.name)
    return folder


def nifti_header(shape: tuple[int, int, int]) -> bytes:
    """A NIfTI-1 header declaring ``shape`` of int16 (and the 4 extension bytes), to be followed by any data."""
    import nibabel as nib

    header = nib.Nifti1Header()
    header.set_data_shape(shape)
    header.set_data_dtype(np.int16)
    header.set_sform(np.eye(4), code=1)
    return header.binaryblock + b"\0\0\0\0"


def _build_nifti_huge(case: Path) -> Path:
    folder = _input(case)
    path = folder / "huge.nii.gz"
    with gzip.open(path, "wb") as stream:
        stream.write(nifti_header((32767, 32767, 32767)) + b"\0" * 4096)
    return path


def _copy_file(source: Path, name: str) -> Callable[[Path], Path]:
    def build(case: Path) -> Path:
        target = _input(case) / name
        target.write_bytes(source.read_bytes())
        return target
    return build


def _build_nifti_sidecar_mr(case: Path) -> Path:
    target = _copy_file(NIFTI_CT, "scan.nii.gz")(case)
    (case / "input" / "scan.json").write_text(json.dumps({"Modality": "MR"}))
    return target


# ------------------------------------------------------------------------------------- where the output goes

LOOKALIKES = {  # a user's files in an output folder whose names look like medhub's temporary files
    ".thesis.tex.partial": b"my thesis",
    "series/.IM0001.dcm.mh0123456789abcdef.1.1.partial": b"a well-formed name, but a token no run recorded",
}
STALE_TOKEN = "feedfacefeedface"  # the token of an earlier, killed run recorded in the output folder's journal


def _build_output_contains_input(case: Path) -> Path:
    """``--input tree/dicom --output tree``: the output folder holds the input (and the user's other files)."""
    write(ct_slices("input inside the output"), case / "tree" / "dicom")
    (case / "tree" / "dicom" / ".notes.partial").write_bytes(b"my notes")
    (case / "tree" / ".draft.tex.partial").write_bytes(b"my draft")
    return case / "tree" / "dicom"


def _build_output_inside_input_via_link(case: Path) -> Path:
    write(ct_slices("output through a link"), _input(case))
    os.symlink(case / "input", case / "link")  # --output link/out is input/out
    return case / "input"


def _build_input_links_to_output(case: Path) -> Path:
    write(ct_slices("a link to the output"), _input(case) / "series")
    (case / "out").mkdir()
    (case / "out" / "earlier.txt").write_bytes(b"an earlier result")
    os.symlink(case / "out", case / "input" / "results")  # the input reaches the output folder
    return case / "input"


def _build_output_is_a_file(case: Path) -> Path:
    write(ct_slices("output is a file"), _input(case))
    (case / "out.txt").write_bytes(b"not a folder")
    return case / "input"


def _build_lookalike_temporaries(case: Path) -> Path:
    """An output folder of a killed run (a recorded token, its leftover), plus the user's look-alike files."""
    write(ct_slices("look-alike temporaries"), _input(case))
    out = _lookalike_output(case)
    for name, content in LOOKALIKES.items():
        (out / name).parent.mkdir(parents=True, exist_ok=True)
        (out / name).write_bytes(content)
    (out / "medhub-journal.jsonl").write_text(json.dumps({"run": STALE_TOKEN, "fresh": True}) + "\n")
    (out / "series" / f".ct-body.seg.dcm.mh{STALE_TOKEN}.4242.1.partial").write_bytes(b"half a SEG")
    return case / "input"


def _lookalike_output(case: Path) -> Path:
    out = case.parent / "existing-output"
    out.mkdir(exist_ok=True)
    return out


def _check_lookalikes_kept(out: Path, report: dict[str, Any]) -> None:
    for name, content in LOOKALIKES.items():
        assert (out / name).read_bytes() == content, f"the user's {name} was changed or deleted"
    assert not list(out.rglob(f"*{STALE_TOKEN}*")), "the killed run's temporary file (recorded token) was not removed"


# ------------------------------------------------------------------------------------- exit codes


def _undecodable(datasets: list[Dataset], indices: tuple[int, ...]) -> list[Dataset]:
    """Garbage JPEG 2000 codestreams on ``indices``: well-formed files the scan accepts, whose decoding fails."""
    from pydicom.encaps import encapsulate
    from pydicom.uid import JPEG2000Lossless

    for index in indices:
        datasets[index].PixelData = encapsulate([b"\xff\x4f\xff\x51" + b"\x00" * 60])
        datasets[index]["PixelData"].VR = "OB"
        datasets[index].file_meta.TransferSyntaxUID = JPEG2000Lossless
    return datasets


def _build_one_skipped_one_succeeded(case: Path) -> Path:
    write(ct_slices("the good one", first=20), _input(case) / "good", "G")
    write([ds for i, ds in enumerate(ct_slices("three slices lost")) if i not in (4, 5, 6)], case / "input" / "gappy")
    return case / "input"


def _build_one_failed_one_succeeded(case: Path) -> Path:
    write(ct_slices("the good one", first=20), _input(case) / "good", "G")
    write(_undecodable(ct_slices("three slices undecodable"), (5, 6, 7)), case / "input" / "broken")
    return case / "input"


def _build_every_chosen_failed(case: Path) -> Path:
    write(_undecodable(ct_slices("three slices undecodable"), (5, 6, 7)), _input(case))
    return case / "input"


def _build_unsuitable_beside_good(case: Path) -> Path:
    write(ct_slices("the good one", first=20), _input(case) / "good", "G")
    mr = ct_slices("an MR series")
    for ds in mr:
        ds.Modality = "MR"
    write(mr, case / "input" / "mr")
    return case / "input"


# ------------------------------------------------------------------------------------- plausibility


def _build_ct_labelled_mr(case: Path) -> Path:
    """A real abdominal CT exported with Modality MR (a wrong tag): a brain model takes it."""
    folder = _input(case)
    for path in sorted(TOTALSEG_J2K.iterdir()):
        ds = pydicom.dcmread(path)
        ds.Modality = "MR"
        ds.save_as(folder / path.name)
    return folder


def _build_nifti_in_cm(case: Path) -> Path:
    """TotalSegmentator's example CT with its voxel sizes written in cm (each axis 10 times too long)."""
    import nibabel as nib

    image = nib.load(NIFTI_CT)
    affine = image.affine.copy()
    affine[:3, :3] *= 10
    scaled = nib.Nifti1Image(np.asarray(image.dataobj), affine, image.header)
    scaled.set_sform(affine, code=1)
    scaled.set_qform(affine, code=1)
    target = _input(case) / "ct_in_cm.nii.gz"
    nib.save(scaled, target)
    return target


def _check_result_written(out: Path, report: dict[str, Any]) -> None:
    (entry,) = report["series"]
    assert entry["outputs"] and all((out / output).is_file() for output in entry["outputs"]), \
        "an implausible result is written, to be looked at"


def _build_resume_slice_added(case: Path) -> Path:
    """A finished run on 11 slices; then the 12th arrives (a late transfer) and the user resumes."""
    import subprocess

    datasets = ct_slices("a slice arrived later")
    write(datasets[:11], _input(case))
    out = _resume_output(case)
    subprocess.run([sys.executable, "-m", "medhub", "run", "ct-body", "--input", str(case / "input"), "--output",
                    str(out)], check=True, capture_output=True, timeout=300)
    datasets[11].save_as(case / "input" / "IM0011.dcm", enforce_file_format=True)
    return case / "input"


def _resume_output(case: Path) -> Path:
    return case.parent / "resumed-output"


def _check_redone_on_all_slices(out: Path, report: dict[str, Any]) -> None:
    (entry,) = report["series"]
    assert len(entry["sop_instance_uids"]) == 12
    seg = pydicom.dcmread(out / next(o for o in entry["outputs"] if o.endswith(".seg.dcm")))
    referenced = {item.ReferencedSOPInstanceUID for series in seg.ReferencedSeriesSequence
                  for item in series.ReferencedInstanceSequence}
    assert referenced == set(entry["sop_instance_uids"]), "the SEG is made from all 12 slices"


# ------------------------------------------------------------------------------------- the corpus

CASES: list[Case] = [
    Case("rescale-non-finite",
         "a slice with RescaleSlope NaN and one with RescaleIntercept inf are left out, naming the tag; the two "
         "one-slice gaps are interpolated like uneven spacing and the SEG lies on the 10 real planes",
         _build_rescale_non_finite, 0,
         series=(SeriesExpect("rescale non-finite", "succeeded", ("RescaleSlope", "RescaleIntercept", "missing")),)),
    Case("rescale-zero-run",
         "RescaleSlope 0 on three consecutive slices: they are left out, the gap of 3 slices is longer than the "
         "2 allowed, so the series is refused naming RescaleSlope",
         _build_rescale_zero_run, 2, series=(SeriesExpect("rescale zero", "skipped", ("RescaleSlope", "3")),),
         stderr="RescaleSlope"),
    Case("two-patients-one-series-uid",
         "two patients (PatientID and StudyInstanceUID differ) under one SeriesInstanceUID are split into one "
         "series each, never merged; each SEG belongs to its own patient and the report says so",
         _build_two_patients, 0, series=(SeriesExpect("shared series uid", "succeeded", ("split",), count=2),),
         check=_check_two_patients),
    Case("same-sop-uid-different-images",
         "two different images carry one SOPInstanceUID: a SEG cannot reference them, the series is refused",
         _build_same_sop_uid, 2,
         series=(SeriesExpect("reused SOP instance UID", "skipped", ("SOPInstanceUID",)),), stderr="SOPInstanceUID"),
    Case("same-sop-uid-in-two-series",
         "an image of another series carries one of this series' SOPInstanceUIDs: both series are refused",
         _build_uid_in_two_series, 2,
         series=(SeriesExpect("first of two series", "skipped", ("SOPInstanceUID", "also used")),
                 SeriesExpect("second of two series", "skipped", ("SOPInstanceUID", "also used"))),
         stderr="SOPInstanceUID"),
    Case("exact-copy",
         "a byte-for-byte copy of one file under another name is one image: removed as a duplicate, said so",
         _build_exact_copy, 0, series=(SeriesExpect("exported twice", "succeeded", ("duplicate",)),)),
    Case("pixel-padding-value",
         "PixelPaddingValue (stored 4095, +3071 HU) outside the reconstruction circle is set to -1024 HU before "
         "the model sees it: nothing is segmented there, and the report says so",
         _build_padding_value, 0, args=("--nifti",),
         series=(SeriesExpect("pixel padding value", "succeeded", ("padding",)),), check=_check_padding_masked),
    Case("pixel-padding-range",
         "PixelPaddingValue 4000 with PixelPaddingRangeLimit 4095: every stored value in 4000..4095 is padding",
         _build_padding_range, 0, args=("--nifti",),
         series=(SeriesExpect("pixel padding range", "succeeded", ("padding",)),), check=_check_padding_masked),
    Case("orientation-not-orthonormal",
         "a column direction cosine of length 0.8 is refused with the reason (no SEG dciodvfy would reject)",
         _build_orientation_not_orthonormal, 2,
         series=(SeriesExpect("column cosine 0.8 long", "skipped", ("ImageOrientationPatient", "orthonormal")),),
         stderr="ImageOrientationPatient"),
    Case("orientation-rounded",
         "cosines 3e-4 off orthonormal (too few digits) are normalised, said so, and the SEG holds the "
         "normalised cosines (dciodvfy-clean)",
         _build_orientation_rounded, 0, series=(SeriesExpect("rounded cosines", "succeeded", ("normalised",)),),
         check=_check_orientation_normalised),
    Case("type2-patient-attributes-absent",
         "no PatientSex, PatientBirthDate, ReferringPhysicianName, AccessionNumber, StudyID: SEG and RTSTRUCT are "
         "written with them present and empty",
         _build_type2_absent, 0, args=("--rtstruct",),
         series=(SeriesExpect("no type 2 patient attributes", "succeeded"),)),
    Case("charset-utf8",
         "SpecificCharacterSet 'UTF-8' (not a defined term) with a non-ASCII name: read leniently, SEG and "
         "RTSTRUCT written as ISO_IR 192 with the name intact",
         _build_charset_utf8, 0, args=("--rtstruct",), series=(SeriesExpect("UTF-8 character set", "succeeded"),),
         check=_check_name_kept),
    Case("implicit-vr-without-file-meta",
         "files with no preamble and no file meta (implicit VR little endian) are found and loaded",
         _build_implicit_no_meta, 0, series=(SeriesExpect("implicit VR without file meta", "succeeded"),)),
    Case("deflated-explicit-vr",
         "Deflated Explicit VR Little Endian files are read and loaded (not called truncated)",
         _build_deflated, 0, series=(SeriesExpect("deflated explicit VR", "succeeded"),)),
    Case("symlinks",
         "a directory link loop, a second link to a walked folder, a file link to itself and a broken link are "
         "skipped and named; a link to a folder outside the tree is followed (read only) and left unchanged",
         _build_symlinks, 0,
         series=(SeriesExpect("inside the tree", "succeeded"), SeriesExpect("behind a link", "succeeded")),
         unreadable={"up": "loop", "series_again": "already", "self.dcm": "loop", "broken.dcm": "broken"}),
    Case("junk-dcm-files",
         "a zero-byte, a random-byte, and two cut *.dcm files are listed as unreadable with path and reason; "
         "the good series next to them runs; a random file without a DICOM suffix is counted as not DICOM",
         _build_junk_files, 0, series=(SeriesExpect("good series next to junk", "succeeded"),),
         unreadable={"empty.dcm": "empty", "random.dcm": "not DICOM", "cut_in_preamble.dcm": "cut",
                     "cut_in_header.dcm": "truncated"}),
    Case("one-truncated-slice",
         "one file of a 12-slice series cut in its pixel data: listed as unreadable, the one-slice gap is "
         "interpolated, the series runs on its 11 real planes",
         _build_truncated_slice, 0, series=(SeriesExpect("one truncated slice", "succeeded", ("missing",)),),
         unreadable={"IM0006.dcm": "truncated"}),
    Case("one-undecodable-slice",
         "one slice's JPEG 2000 codestream cannot be decoded: the slice is left out naming the file, the one-slice "
         "gap is interpolated",
         _build_undecodable_slice, 0,
         series=(SeriesExpect("one undecodable slice", "succeeded", ("IM0007.dcm", "cannot decode", "missing")),)),
    Case("two-missing-slices",
         "two consecutive slices missing (the default allows up to 2): interpolated, said in the report",
         _build_missing((5, 6), "two missing slices"), 0,
         series=(SeriesExpect("two missing slices", "succeeded", ("2 missing slices",)),)),
    Case("three-missing-slices",
         "three consecutive slices missing: more than the 2 allowed, the series is refused with the reason",
         _build_missing((4, 5, 6), "three missing slices"), 2,
         series=(SeriesExpect("three missing slices", "skipped", ("3 missing slices",)),), stderr="missing"),
    Case("three-missing-slices-allowed",
         "the same gap with --set select.max_missing_slices=3: interpolated, the limit is the user's to set",
         _build_missing((4, 5, 6), "three missing slices"), 0, args=("--set", "select.max_missing_slices=3"),
         series=(SeriesExpect("three missing slices", "succeeded", ("3 missing slices",)),)),
    Case("declared-65535-native",
         "one uncompressed slice declares 65535x65535: its pixel data does not fit the file, it is unreadable "
         "(checked before any allocation) and the gap is interpolated",
         _build_huge_native, 0, series=(SeriesExpect("one slice declares 65535x65535", "succeeded", ("missing",)),),
         unreadable={"IM0005.dcm": "pixel data"}),
    Case("declared-65535-jpeg2000",
         "JPEG 2000 files whose headers declare 65535x65535: refused before decoding against the memory budget",
         _build_huge_jpeg2000, 2, series=(SeriesExpect("", "skipped", ("65535x65535", "memory")),), stderr="memory"),
    Case("nifti-declares-32767-cubed",
         "a NIfTI header declaring 32767³ voxels is refused before allocating (no MemoryError)",
         _build_nifti_huge, 2, stderr="32767"),
    Case("nifti-ct-for-brain-mr-model",
         "deepbet (T1 brain MR) on an abdominal CT NIfTI: the intensities are CT in Hounsfield units, refused",
         _copy_file(NIFTI_CT, "abdomen_ct.nii.gz"), 2, model="deepbet", stderr="CT"),
    Case("nifti-mr-for-ct-model",
         "ct-body on a brain MR NIfTI: no value below 0, so not CT in Hounsfield units; refused",
         _copy_file(NIFTI_T1_BRAIN, "t1.nii.gz"), 2, stderr="Hounsfield"),
    Case("nifti-sidecar-says-mr",
         "a BIDS sidecar says the NIfTI is MR: a CT model refuses it",
         _build_nifti_sidecar_mr, 2, stderr="MR"),
    Case("nifti-unchecked",
         "an MR NIfTI with negative values and no sidecar given to a CT model: nothing tells its modality, it runs "
         "and is marked 'unchecked input' in the report; its result is implausible (a 'body' filling the whole "
         "scan: no air around it), so the series is implausible, said on stderr, exit 1",
         _copy_file(NIFTI_MR_ABDOMEN, "abdomen.nii.gz"), 1,
         series=(SeriesExpect("", "implausible", ("unchecked", "fills 100% of the scanned volume")),),
         stderr="implausible"),
]

CASES += [
    Case("output-contains-input",
         "--input tree/dicom --output tree: refused before any work (exit 2, one line); nothing under tree changes, "
         "not even the user's files named like medhub's temporaries",
         _build_output_contains_input, 2, stderr="inside the output folder", output=lambda case: case / "tree"),
    Case("output-inside-input-through-a-link",
         "--output link/out where link points to the input folder: refused (exit 2), nothing written",
         _build_output_inside_input_via_link, 2, stderr="inside the input folder",
         output=lambda case: case / "link" / "out"),
    Case("input-links-to-the-output",
         "a folder link inside the input tree points to the output folder: refused (exit 2) when the walk meets it, "
         "before anything is written",
         _build_input_links_to_output, 2, stderr="links to the output folder", output=lambda case: case / "out"),
    Case("output-is-an-existing-file",
         "--output names an existing file: exit 2 with one line, no traceback, before any work",
         _build_output_is_a_file, 2, stderr="existing file", output=lambda case: case / "out.txt"),
    Case("output-cannot-be-made",
         "--output under an existing file (out.txt/results): exit 2 with one line, before any work",
         _build_output_is_a_file, 2, stderr="cannot be made", output=lambda case: case / "out.txt" / "results"),
    Case("lookalike-temporaries-in-the-output",
         "an output folder holding the user's files named like medhub's temporaries and a killed run's leftover: "
         "only the leftover whose run token the folder's journal records is removed",
         _build_lookalike_temporaries, 0, series=(SeriesExpect("look-alike temporaries", "succeeded"),),
         output=_lookalike_output, check=_check_lookalikes_kept),
    Case("exit-1-one-skipped-one-succeeded",
         "a chosen series skipped (3 missing slices) beside one that succeeded: exit 1, one line saying how many "
         "did not succeed and the first reason; the good one is written",
         _build_one_skipped_one_succeeded, 1,
         series=(SeriesExpect("the good one", "succeeded"), SeriesExpect("three slices lost", "skipped", ("missing",))),
         stderr="1 of 2 chosen series did not succeed (1 skipped)"),
    Case("exit-1-one-failed-one-succeeded",
         "a chosen series failed (3 slices cannot be decoded) beside one that succeeded: exit 1, one line",
         _build_one_failed_one_succeeded, 1,
         series=(SeriesExpect("the good one", "succeeded"),
                 SeriesExpect("three slices undecodable", "failed", ("cannot decode",))),
         stderr="1 of 2 chosen series did not succeed (1 failed)"),
    Case("exit-2-every-chosen-series-failed",
         "the only chosen series failed: nothing could be done, exit 2, one line with its reason; the report says it",
         _build_every_chosen_failed, 2,
         series=(SeriesExpect("three slices undecodable", "failed", ("cannot decode",)),),
         stderr="the chosen series did not succeed"),
    Case("exit-0-an-unsuitable-series-beside-a-good-one",
         "an MR series beside a CT for ct-body is not chosen (rejected with its reason) and does not change the exit "
         "code: exit 0",
         _build_unsuitable_beside_good, 0,
         series=(SeriesExpect("the good one", "succeeded"), SeriesExpect("an MR series", "rejected", ("MR",)))),
    Case("implausible-brain-from-a-ct-labelled-mr",
         "deepbet on a real abdominal CT whose Modality says MR: the 'brain' it returns spans 372 mm, wider than any "
         "head; the series is implausible (reason in the report and on stderr, exit 1), its NIfTI is written to be "
         "looked at",
         _build_ct_labelled_mr, 1, model="deepbet",
         series=(SeriesExpect("", "implausible", ("brain spans", "at most 220 mm", "brain MR")),),
         stderr="implausible: the brain spans", check=_check_result_written),
    Case("implausible-lungs-from-voxel-sizes-in-cm",
         "a CT NIfTI whose voxel sizes are in cm: ct-body's lungs come out at 63 and 133 litres, above the 10 "
         "litres any lung holds; implausible, exit 1",
         _build_nifti_in_cm, 1,
         series=(SeriesExpect("", "implausible", ("expected at most 10000 ml", "voxel sizes right")),),
         stderr="implausible", check=_check_result_written),
    Case("implausible-accepted-with-allow-implausible",
         "the same CT with --allow-implausible: the series succeeds, the violation stays in the report as a warning "
         "and is printed on stderr, exit 0",
         _build_nifti_in_cm, 0, args=("--allow-implausible",),
         series=(SeriesExpect("", "succeeded", ("expected at most 10000 ml", "accepted: --allow-implausible")),),
         stderr="accepted: --allow-implausible", check=_check_result_written),
    Case("resume-after-a-slice-was-added",
         "--resume after a slice was added to a finished series: the journal's instance list no longer matches, "
         "so the series is done again on all 12 slices and the report says why",
         _build_resume_slice_added, 0, args=("--resume",),
         series=(SeriesExpect("a slice arrived later", "succeeded", ("redone", "input changed", "1 instance added")),),
         output=_resume_output, check=_check_redone_on_all_slices),
]

BY_NAME = {case.name: case for case in CASES}
assert len(BY_NAME) == len(CASES), "case names must be unique"


def build(case: Case, root: Path) -> Path:
    """Build ``case`` in a fresh folder ``root`` and return the path to pass as --input."""
    root.mkdir(parents=True, exist_ok=False)
    return case.build(root)


def main(argv: list[str]) -> int:
    """``python tests/hostile_corpus.py OUT [NAME...]``: write the cases' inputs for a look."""
    if not argv:
        print(__doc__.split("Adding a case")[0].strip())
        print("\nusage: python tests/hostile_corpus.py OUT [NAME ...]\n\ncases:")
        for case in CASES:
            print(f"  {case.name}: {case.behaviour}")
        return 2
    out = Path(argv[0])
    for case in [BY_NAME[name] for name in argv[1:]] or CASES:
        path = build(case, out / case.name)
        print(f"{case.name}: --input {path}  (expected exit {case.exit_code}: {case.behaviour})")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

