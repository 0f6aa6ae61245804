"""A classification result → DICOM Comprehensive SR holding a TID 1500 Measurement Report, via highdicom.

Why TID 1500 (Measurement Report) rather than free text: it is the template 3D Slicer, OHIF,
dcmqi and highdicom read back, and it carries exactly what a classifier produces:

* **one measurement group per class** (TID 1501 "Measurements and Qualitative Evaluations"):
  its Finding Type is the class, its one measurement is (122157, DCM, "Probability") with
  unit (1, UCUM, "no units") and the class probability as value;
* **a summary group** whose Finding Type is the classification itself and whose qualitative
  evaluation (278201002, SCT, "Classification") names the most probable class;
* the **algorithm** (name, version, parameters) in each group's Algorithm Identification
  (TID 4019) and the **device observer** (medhub running that algorithm) in the observation
  context (TID 1004);
* **references to the source**: every source instance in the Image Library (TID 1600) and in
  the Current Requested Procedure Evidence Sequence, so a PACS links the SR to its series.

Classes are user-defined words ("phantom", "patient"), for which no standard code exists; they
are coded in the private coding scheme ``99MEDHUB`` (PS3.16 reserves ``99`` prefixes for
local schemes) with the class name as Code Meaning, unless the caller gives real codes. Code
values are short (``CLS1``, ``CLS2``...) so they always fit the 16-character Code Value.

A source without Study/Series/SOP Instance UIDs cannot be referenced (the TotalSegmentator
example CT): :func:`write_classification_sr` refuses it with a one-line error and the
pipeline writes the JSON/CSV only, as it does for SEG.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Mapping
from pathlib import Path

import highdicom as hd
from pydicom.dataset import Dataset
from pydicom.sr.codedict import codes
from pydicom.sr.coding import Code

from medhub.data.volume import SourceGrid
from medhub.errors import MedhubError
from medhub.writers.provenance import AlgorithmInfo, device_info
from medhub.writers.source_attributes import output_character_set, source_view

PRIVATE_SCHEME = "99MEDHUB"
PROBABILITY = Code("122157", "DCM", "Probability")
NO_UNITS = Code("1", "UCUM", "no units")
CLASSIFICATION = Code("278201002", "SCT", "Classification")
_PROCEDURES = {
    "CT": codes.LN.CTUnspecifiedBodyRegion,
    "MR": codes.LN.MRIUnspecifiedBodyRegion,
    "PT": codes.LN.PETUnspecifiedBodyRegion,
    "NM": codes.LN.NMUnspecifiedBodyRegion,
}
_SUM_TOLERANCE = 1e-3


def class_codes(classes: list[str]) -> dict[str, Code]:
    """Private-scheme codes for user-defined class names: ``CLS1``... in the order given, meaning = name."""
    return {name: Code(f"CLS{i}", PRIVATE_SCHEME, name[:64]) for i, name in enumerate(classes, start=1)}


def classification_code(name: str) -> Code:
    """The private-scheme code of a classification (the question a head answers), meaning = its name."""
    return Code("CLASSIFICATION", PRIVATE_SCHEME, name[:64])


def write_classification_sr(
    source: SourceGrid,
    classification: str,
    probabilities: Mapping[str, float],
    algorithm: AlgorithmInfo,
    path: Path,
    *,
    codes_by_class: Mapping[str, Code] | None = None,
    series_number: int = 902,
    series_description: str | None = None,
) -> Path:
    """Write class ``probabilities`` (class name → probability, summing to 1) as a TID 1500 SR at ``path``.

    ``classification`` names what was classified (a head's name, e.g. "phantom-vs-patient").
    ``codes_by_class`` gives real codes for the classes; the default is :func:`class_codes`.
    Returns ``path``. Raises :class:`MedhubError` naming the file and problem for a source
    without UIDs, empty or invalid probabilities, or whatever highdicom refuses.
    """
    path = Path(path)
    where = f"SR {path.name}"
    evidence = _evidence(source, where)
    evidence[0] = source_view(evidence[0])  # highdicom copies patient and study from it (see source_attributes)
    probs = _check_probabilities(probabilities, where)
    class_list = list(probs)
    coded = dict(codes_by_class) if codes_by_class is not None else class_codes(class_list)
    missing = [c for c in class_list if c not in coded]
    if missing:
        raise MedhubError(f"{where}: no code for class(es) {', '.join(missing)}")
    predicted = max(class_list, key=lambda c: probs[c])
    algorithm_id = hd.sr.AlgorithmIdentification(
        name=algorithm.name,
        version=algorithm.version,
        parameters=[f"{k}={v}" for k, v in (algorithm.parameters or {}).items()] or None,
    )
    modality = str(evidence[0].get("Modality", "") or "").upper()
    groups = [
        hd.sr.MeasurementsAndQualitativeEvaluations(
            tracking_identifier=hd.sr.TrackingIdentifier(uid=hd.UID(), identifier=f"{classification} result"[:64]),
            finding_type=classification_code(classification),
            algorithm_id=algorithm_id,
            qualitative_evaluations=[hd.sr.QualitativeEvaluation(name=CLASSIFICATION, value=coded[predicted])],
        )
    ]
    for name in class_list:
        groups.append(
            hd.sr.MeasurementsAndQualitativeEvaluations(
                tracking_identifier=hd.sr.TrackingIdentifier(uid=hd.UID(), identifier=f"class {name}"[:64]),
                finding_type=coded[name],
                algorithm_id=algorithm_id,
                measurements=[
                    hd.sr.Measurement(name=PROBABILITY, value=probs[name], unit=NO_UNITS)
                ],
            )
        )
    device = device_info()
    observer = hd.sr.ObserverContext(
        observer_type=codes.DCM.Device,
        observer_identifying_attributes=hd.sr.DeviceObserverIdentifyingAttributes(
            uid=hd.UID(),
            name=algorithm.name,
            manufacturer_name=device.manufacturer,
            model_name=f"{algorithm.name} {algorithm.version}"[:64],
            serial_number=device.device_serial_number,
        ),
    )
    try:
        report = hd.sr.MeasurementReport(
            observation_context=hd.sr.ObservationContext(observer_device_context=observer),
            procedure_reported=_PROCEDURES.get(modality, codes.SCT.ImagingProcedure),
            imaging_measurements=groups,
            referenced_images=None,
        )
        with warnings.catch_warnings():
            # as for SEG: single-component patient names of real exports are copied as they are
            warnings.filterwarnings("ignore", message=".*unlikely to represent the intended person name")
            sr = hd.sr.ComprehensiveSR(
                evidence=evidence,
                content=report,
                series_instance_uid=hd.UID(),
                series_number=series_number,
                sop_instance_uid=hd.UID(),
                instance_number=1,
                manufacturer=device.manufacturer,
                is_complete=True,
                series_description=(series_description or f"{algorithm.name} classification")[:64],
                specific_character_set=output_character_set(evidence[0]),
            )
    except (ValueError, TypeError, AttributeError) as error:
        raise MedhubError(f"{where}: cannot build the SR: {str(error).splitlines()[0]}") from error
    sr.ManufacturerModelName = device.manufacturer_model_name
    sr.SoftwareVersions = device.software_versions
    sr.DeviceSerialNumber = device.device_serial_number
    path.parent.mkdir(parents=True, exist_ok=True)
    sr.save_as(path, enforce_file_format=True)
    return path


def _evidence(source: SourceGrid | None, where: str) -> list[Dataset]:
    """The source headers, refused when the SR could not reference them (no UIDs)."""
    if source is None:
        raise MedhubError(f"{where}: the input is not DICOM (NIfTI); an SR needs DICOM source instances")
    if not source.referenceable:
        raise MedhubError(f"{where}: {source.unreferenceable_reason or 'the source instances carry no UIDs'}")
    datasets = source.datasets
    if not datasets:
        raise MedhubError(f"{where}: the source has no instances to reference")
    return datasets


def _check_probabilities(probabilities: Mapping[str, float], where: str) -> dict[str, float]:
    if len(probabilities) < 2:
        raise MedhubError(f"{where}: a classification needs at least 2 class probabilities, got {len(probabilities)}")
    probs = {str(k): float(v) for k, v in probabilities.items()}
    bad = [k for k, v in probs.items() if not (math.isfinite(v) and 0.0 <= v <= 1.0)]
    if bad:
        raise MedhubError(f"{where}: probability of class(es) {', '.join(bad)} is not in [0, 1]")
    total = sum(probs.values())
    if abs(total - 1.0) > _SUM_TOLERANCE:
        raise MedhubError(f"{where}: class probabilities sum to {total:.4f}, not 1")
    return probs
