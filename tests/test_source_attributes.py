"""SEG, RTSTRUCT and SR of real CT whose patient/study attributes are absent, malformed or in a
character set that is not a DICOM defined term: every writer writes a valid object (dciodvfy).

The sources are copies of three real Philips head CT slices with one header change each (the
defects real exports have: a GE head CT without PatientSex, a Siemens one without PatientBirthDate,
an exporter writing 'UTF-8'); the copies are made in tmp_path, ../shared/data is only read.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import pydicom
import pytest
from conftest import dciodvfy_errors, shared_path

from medhub.data.geometry import labels_to_source
from medhub.data.volume import SourceGrid
from medhub.inputs.load import load_series
from medhub.inputs.scan import scan
from medhub.segdb import get_segment
from medhub.writers.provenance import AlgorithmInfo
from medhub.writers.rtstruct import write_rtstruct
from medhub.writers.seg import write_seg
from medhub.writers.source_attributes import is_defined_character_set, output_character_set, source_view
from medhub.writers.sr import write_classification_sr

PHILIPS = "ct/philips_phantom_head_1mm"
ALGORITHM = AlgorithmInfo(name="source-attributes-test", version="1")
NAME = "Müller^Jörg"


def _without(*keywords: str) -> Callable[[pydicom.Dataset], None]:
    def change(ds: pydicom.Dataset) -> None:
        for keyword in keywords:
            delattr(ds, keyword)
    return change


def _utf8_name(charset: str) -> Callable[[pydicom.Dataset], None]:
    def change(ds: pydicom.Dataset) -> None:
        ds.SpecificCharacterSet = charset
        ds.PatientName = "x"
        ds["PatientName"].value = NAME.encode("utf-8")  # the bytes such an exporter writes
    return change


def _set(**values: object) -> Callable[[pydicom.Dataset], None]:
    def change(ds: pydicom.Dataset) -> None:
        for keyword, value in values.items():
            setattr(ds, keyword, value)
    return change


CASES = {
    "no PatientSex / PatientBirthDate (Type 2 absent)": (_without("PatientSex", "PatientBirthDate"), "HEAD"),
    "no patient and study Type 2 attributes at all": (
        _without("PatientSex", "PatientBirthDate", "PatientName", "StudyID", "AccessionNumber",
                 "ReferringPhysicianName", "StudyTime", "StudyDate"), ""),
    "SpecificCharacterSet 'UTF-8' with a non-ASCII name": (_utf8_name("UTF-8"), NAME),
    "SpecificCharacterSet 'utf8'": (_utf8_name("utf8"), NAME),
    "malformed PatientSex and birth date": (_set(PatientSex="Male", PatientBirthDate="19xx"), "HEAD"),
}


def _source(tmp_path: Path, change: Callable[[pydicom.Dataset], None]) -> tuple[SourceGrid, np.ndarray]:
    for path in sorted(shared_path(PHILIPS).iterdir())[:3]:
        dataset = pydicom.dcmread(path)
        change(dataset)
        dataset.save_as(tmp_path / path.name)
    (series,) = scan(tmp_path).series
    volume = load_series(series)
    assert volume.source is not None and volume.source.referenceable
    return volume.source, labels_to_source(volume, (volume.array > 0).astype(np.uint8))


@pytest.mark.parametrize("case", list(CASES))
def test_every_writer_writes_a_valid_object(case: str, tmp_path: Path) -> None:
    change, expected_name = CASES[case]
    source_dir = tmp_path / "source"
    source_dir.mkdir()
    source, labels = _source(source_dir, change)
    body = {1: get_segment("BODY")}
    written = {
        "seg": write_seg(labels, source, body, ALGORITHM, tmp_path / "r.seg.dcm"),
        "rtstruct": write_rtstruct(labels, source, body, model_name="t", model_version="1",
                                   path=tmp_path / "r.rtstruct.dcm"),
        "sr": write_classification_sr(source, "c", {"a": 0.25, "b": 0.75}, ALGORITHM, tmp_path / "r.sr.dcm"),
    }
    for kind, path in written.items():
        errors = dciodvfy_errors(path)
        assert not errors, f"{case}: {kind}: " + "\n".join(errors[:10])
        result = pydicom.dcmread(path)
        assert str(result.PatientName) == expected_name, kind
        assert is_defined_character_set(result.get("SpecificCharacterSet")), kind
        for keyword in ("PatientSex", "PatientBirthDate", "PatientID", "StudyID", "AccessionNumber"):
            assert keyword in result, f"{kind}: Type 2 {keyword} must be present (empty if unknown)"
        assert result.PatientSex in ("", "M", "F", "O")
        assert result.StudyInstanceUID == source.datasets[0].StudyInstanceUID


def test_source_view_leaves_the_source_unchanged(tmp_path: Path) -> None:
    source, _ = _source(tmp_path, _utf8_name("UTF-8"))
    original = source.datasets[0]
    view = source_view(original)
    assert view.SpecificCharacterSet == "ISO_IR 192" and str(view.PatientName) == NAME
    assert original.SpecificCharacterSet == "UTF-8"  # the in-memory header is not rewritten
    assert output_character_set(original) == "ISO_IR 192"


@pytest.mark.parametrize(
    ("value", "defined"),
    [(None, True), ("", True), ("ISO_IR 100", True), (["", "ISO 2022 IR 87"], True), ("ISO_IR 192", True),
     ("UTF-8", False), ("latin1", False), (["ISO_IR 100", "UTF-8"], False)],
)
def test_defined_character_set_terms(value: object, defined: bool) -> None:
    assert is_defined_character_set(value) is defined
