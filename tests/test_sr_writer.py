"""DICOM SR (TID 1500) of a classification, written for real CT: dciodvfy-clean, read back exactly."""

from __future__ import annotations

import highdicom as hd
import numpy as np
import pydicom
import pytest
from conftest import shared_path
from pydicom.sr.codedict import codes

from medhub.data.volume import SourceGrid
from medhub.errors import MedhubError
from medhub.inputs.load import load_series
from medhub.inputs.scan import scan
from medhub.writers.provenance import AlgorithmInfo
from medhub.writers.sr import PRIVATE_SCHEME, class_codes, write_classification_sr

ALGORITHM = AlgorithmInfo(name="phantom-head", version="3", parameters={"encoder": "ct-fm-astra 0.1.1"})


@pytest.fixture(scope="module")
def philips_source() -> SourceGrid:
    """The real Philips head CT (140 slices with UIDs), loaded once for the module."""
    series = scan(shared_path("ct/philips_phantom_head_1mm")).series
    assert len(series) == 1
    source = load_series(series[0]).source
    assert source is not None and source.referenceable
    return source


def _probabilities(sr: pydicom.Dataset) -> dict[str, float]:
    """Class meaning → probability, read from the SR's measurement groups the way a viewer would."""
    report = hd.sr.ComprehensiveSR.from_dataset(sr)
    found = {}
    for group in report.content.get_image_measurement_groups():
        finding = group.finding_type
        for measurement in group.get_measurements(name=codes.DCM.Probability):
            found[finding.meaning] = float(measurement.value)
    return found


def test_sr_on_real_ct_is_valid_and_reads_back(philips_source, tmp_path, assert_valid_dicom):
    path = write_classification_sr(philips_source, "phantom-head", {"patient": 0.125, "phantom": 0.875}, ALGORITHM,
                                   tmp_path / "result.sr.dcm")
    assert_valid_dicom(path)
    sr = pydicom.dcmread(path)
    assert sr.SOPClassUID == pydicom.uid.ComprehensiveSRStorage
    assert sr.ContentTemplateSequence[0].TemplateIdentifier == "1500"
    assert sr.Modality == "SR" and sr.CompletionFlag == "COMPLETE"
    first = philips_source.datasets[0]
    assert sr.StudyInstanceUID == first.StudyInstanceUID and sr.PatientID == first.PatientID
    assert sr.SeriesInstanceUID != first.SeriesInstanceUID
    # every source instance is referenced as evidence, in the source's study and series
    evidence = sr.CurrentRequestedProcedureEvidenceSequence
    assert [item.StudyInstanceUID for item in evidence] == [first.StudyInstanceUID]
    series = evidence[0].ReferencedSeriesSequence
    assert [s.SeriesInstanceUID for s in series] == [first.SeriesInstanceUID]
    referenced = {ref.ReferencedSOPInstanceUID for ref in series[0].ReferencedSOPSequence}
    assert referenced == {ds.SOPInstanceUID for ds in philips_source.datasets}
    assert len(referenced) == 140
    # the numbers and the coded classification come back exactly
    assert _probabilities(sr) == {"patient": 0.125, "phantom": 0.875}
    report = hd.sr.ComprehensiveSR.from_dataset(sr)
    summary = report.content.get_image_measurement_groups()[0]
    assert summary.finding_type.meaning == "phantom-head"
    evaluations = summary.get_qualitative_evaluations(name=codes.SCT.Classification)
    assert [e.value.meaning for e in evaluations] == ["phantom"]
    assert evaluations[0].value.scheme_designator == PRIVATE_SCHEME
    texts = {item.ConceptNameCodeSequence[0].CodeMeaning: item.TextValue
             for item in summary[0].ContentSequence if item.ValueType == "TEXT"}
    assert texts["Algorithm Name"] == "phantom-head" and texts["Algorithm Version"] == "3"
    assert texts["Algorithm Parameters"] == "encoder=ct-fm-astra 0.1.1"
    assert sr.Manufacturer == "medhub"


def test_sr_with_three_classes_and_real_codes(philips_source, tmp_path, assert_valid_dicom):
    """Callers may code the classes with real SNOMED CT concepts instead of the private scheme."""
    coded = {"liver": codes.SCT.Liver, "spleen": codes.SCT.Spleen, "kidney": codes.SCT.Kidney}
    probabilities = {"liver": 0.5, "spleen": 0.3, "kidney": 0.2}
    path = write_classification_sr(philips_source, "organ", probabilities, ALGORITHM, tmp_path / "organ.sr.dcm",
                                   codes_by_class=coded)
    assert_valid_dicom(path)
    sr = pydicom.dcmread(path)
    values = _probabilities(sr)
    assert values == {codes.SCT.Liver.meaning: 0.5, codes.SCT.Spleen.meaning: 0.3, codes.SCT.Kidney.meaning: 0.2}
    report = hd.sr.ComprehensiveSR.from_dataset(sr)
    groups = report.content.get_image_measurement_groups()
    assert groups[1].finding_type.value == codes.SCT.Liver.value and groups[1].finding_type.scheme_designator == "SCT"
    predicted = groups[0].get_qualitative_evaluations(name=codes.SCT.Classification)[0].value
    assert predicted.value == codes.SCT.Liver.value


def test_private_class_codes_fit_code_value():
    coded = class_codes(["a" * 100, "b"])
    assert [c.value for c in coded.values()] == ["CLS1", "CLS2"]
    assert len(coded["a" * 100].meaning) == 64


def test_source_without_uids_is_refused_with_the_reason(tmp_path):
    """The TotalSegmentator CT has empty UIDs: an SR could not reference it (the pipeline writes JSON/CSV)."""
    series = scan(shared_path("ct/totalsegmentator_example_ct_dicom")).series
    source = load_series(series[0]).source
    assert source is not None and not source.referenceable
    with pytest.raises(MedhubError, match=r"^SR x\.sr\.dcm: source files carry no .*UID"):
        write_classification_sr(source, "c", {"a": 0.5, "b": 0.5}, ALGORITHM, tmp_path / "x.sr.dcm")
    assert not (tmp_path / "x.sr.dcm").exists()


@pytest.mark.parametrize(
    ("probabilities", "message"),
    [
        ({"a": 0.7, "b": 0.7}, "sum to 1.4000, not 1"),
        ({"a": 1.0}, "at least 2 class probabilities"),
        ({"a": float("nan"), "b": 0.5}, "class\\(es\\) a is not in \\[0, 1\\]"),
        ({"a": -0.5, "b": 1.5}, "a, b is not in"),
    ],
)
def test_bad_probabilities_give_one_line_errors(philips_source, tmp_path, probabilities, message):
    with pytest.raises(MedhubError, match=message) as caught:
        write_classification_sr(philips_source, "c", probabilities, ALGORITHM, tmp_path / "bad.sr.dcm")
    assert "\n" not in str(caught.value) and "bad.sr.dcm" in str(caught.value)


def test_nifti_input_has_no_source(tmp_path):
    with pytest.raises(MedhubError, match="not DICOM"):
        write_classification_sr(None, "c", {"a": 0.5, "b": 0.5}, ALGORITHM, tmp_path / "n.sr.dcm")  # type: ignore[arg-type]


def test_probabilities_survive_float_formatting(philips_source, tmp_path):
    """Probabilities with many digits are stored as DS (16 characters) without breaking the sum."""
    p = float(np.float32(1 / 3))
    path = write_classification_sr(philips_source, "c", {"a": p, "b": 1 - p}, ALGORITHM, tmp_path / "d.sr.dcm")
    values = _probabilities(pydicom.dcmread(path))
    assert values["a"] == pytest.approx(p, abs=1e-9) and sum(values.values()) == pytest.approx(1.0, abs=1e-9)
