"""What a result inherits from its source image: Patient and General Study attributes, character set.

A SEG, RTSTRUCT or SR joins its source's patient and study, so it copies their attributes. Real
exports do not always carry them as the standard asks, and a writer must not fail (or write an
invalid object) because of it:

* **Type 2 attributes may be absent** (a real GE head CT has no PatientSex, a Siemens one no
  PatientBirthDate). PS3.5 7.4 lets a Type 2 attribute be present with no value, which is what
  we write (highdicom reads them as attributes and fails on an absent one).
* **Malformed values** of coded or dated Type 2 attributes (PatientSex "Male", a birth date
  "19xx") cannot be copied into a valid object; they are written empty, which the standard
  allows, rather than invented or corrected.
* **Specific Character Set** (0008,0005) must be a defined term (PS3.3 C.12.1.1.2). Exports
  that write a Python or IANA name ("UTF-8", "ISO-8859-1") are read leniently (pydicom decodes
  with the codec of that name) and the result is written as ISO_IR 192 (UTF-8, which holds every
  decoded name), with the inherited text values re-encoded.

:func:`source_view` gives a writer a shallow copy of the source header with these repairs; the
source dataset itself, and the file it came from, are never changed.
"""

from __future__ import annotations

import warnings

from pydicom.datadict import dictionary_VR
from pydicom.dataelem import DataElement
from pydicom.dataset import Dataset
from pydicom.multival import MultiValue
from pydicom.tag import Tag
from pydicom.valuerep import DA, TM

from medhub.data.header_view import header_view

#: Type 2 attributes of the Patient (C.7.1.1) and General Study (C.7.2.1) modules.
PATIENT_STUDY_TYPE2 = (
    "PatientName",
    "PatientID",
    "PatientBirthDate",
    "PatientSex",
    "StudyDate",
    "StudyTime",
    "ReferringPhysicianName",
    "StudyID",
    "AccessionNumber",
)
UTF8 = "ISO_IR 192"
#: The defined terms of Specific Character Set (PS3.3 C.12.1.1.2, Tables C.12-2 to C.12-5), written out
#: rather than taken from highdicom's enum so that writing a SEG does not import highdicom (~0.3 s);
#: tests/test_seg_binary.py checks that the two lists agree.
DEFINED_CHARACTER_SETS = frozenset({
    "ISO_IR 100", "ISO_IR 101", "ISO_IR 109", "ISO_IR 110", "ISO_IR 126", "ISO_IR 127", "ISO_IR 13", "ISO_IR 138",
    "ISO_IR 144", "ISO_IR 148", "ISO_IR 166", "ISO_IR 192", "ISO_IR 203", "GB18030", "GBK",
    "ISO 2022 IR 6", "ISO 2022 IR 100", "ISO 2022 IR 101", "ISO 2022 IR 109", "ISO 2022 IR 110", "ISO 2022 IR 126",
    "ISO 2022 IR 127", "ISO 2022 IR 13", "ISO 2022 IR 138", "ISO 2022 IR 144", "ISO 2022 IR 148", "ISO 2022 IR 159",
    "ISO 2022 IR 166", "ISO 2022 IR 203", "ISO 2022 IR 58", "ISO 2022 IR 87",
})  # fmt: skip
_TEXT_VRS = {"PN", "LO", "SH", "ST", "LT", "UT", "UC"}
_SEXES = {"M", "F", "O"}


def is_defined_character_set(value: object) -> bool:
    """True when Specific Character Set is absent, empty or made of DICOM defined terms only."""
    if value is None:
        return True
    values = [value] if isinstance(value, str) else list(value)  # type: ignore[call-overload]
    terms = [str(v).strip() for v in values]
    if not any(terms):
        return True
    # The first value may be empty (the default repertoire) when code extensions follow it.
    return all(t in DEFINED_CHARACTER_SETS or (i == 0 and t == "") for i, t in enumerate(terms))


def output_character_set(dataset: Dataset) -> str | list[str] | None:
    """The Specific Character Set a result of ``dataset`` is written with (None: the default repertoire)."""
    value = dataset.get("SpecificCharacterSet")
    if value is None:
        return None
    if not is_defined_character_set(value):
        return UTF8
    values = [value] if isinstance(value, str) else list(value)
    if not any(str(v).strip() for v in values):
        return None
    return value if isinstance(value, str) else [str(v) for v in values]


def source_view(dataset: Dataset) -> Dataset:
    """A shallow copy of a source header that a writer can copy patient and study attributes from.

    Absent or malformed Type 2 patient/study attributes are present and empty; a character set
    that is not a defined term becomes ISO_IR 192 with the text values decoded leniently first.
    Unchanged elements are shared with ``dataset`` (no pixel data is copied). Private elements
    not yet read are left out (:func:`medhub.data.header_view.header_view`): no writer copies them,
    and in an Implicit VR file (what most modalities send over DIMSE) pydicom guesses their VR from
    its private dictionary, which fails on real Philips headers ((01F1,1026) holds DS text where the
    dictionary says FD).
    """
    view = header_view(dataset)
    charset = dataset.get("SpecificCharacterSet")
    if not is_defined_character_set(charset):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # pydicom warns for every value of an unknown character set
            for tag in dataset.keys():  # noqa: SIM118 - iterating a Dataset would convert private elements too
                if tag.is_private:
                    continue  # writers copy no private element
                element = dataset[tag]  # converted with the source's (lenient) character set
                if element.VR in _TEXT_VRS and element.value is not None:
                    view[element.tag] = DataElement(element.tag, element.VR, _as_text(element.value))
        _put(view, "SpecificCharacterSet", UTF8)
    elif "SpecificCharacterSet" in view and output_character_set(dataset) is None:
        del view.SpecificCharacterSet  # '' means the default repertoire; highdicom refuses an empty value
    for keyword in PATIENT_STUDY_TYPE2:
        if keyword not in view or view[keyword].value is None:
            _put(view, keyword, "")
    _put(view, "PatientSex", _sex(view.PatientSex))
    for keyword, kind in (("PatientBirthDate", DA), ("StudyDate", DA), ("StudyTime", TM)):
        _put(view, keyword, _valid_or_empty(view[keyword].value, kind))
    return view


def _put(view: Dataset, keyword: str, value: object) -> None:
    """Set an element of the view as a new element: its elements are shared with the source, and
    assigning through the keyword would change the source's element in place."""
    tag = Tag(keyword)  # a keyword pydicom does not know raises here, not at write time
    view[tag] = DataElement(tag, dictionary_VR(tag), value)


def _as_text(value: object) -> object:
    """A text value as plain str (multi-values as lists of str), so it is re-encoded when written."""
    if isinstance(value, bytes):
        return value.decode("utf-8", "replace")
    if isinstance(value, MultiValue | list | tuple):
        return [str(v) for v in value]
    return str(value)  # str, PersonName


def _sex(value: object) -> str:
    text = str(value or "").strip().upper()
    return text if text in _SEXES else ""


def _valid_or_empty(value: object, kind: type) -> object:
    """A DA/TM value when it parses, else '' (an empty Type 2 value, never an invented one)."""
    if value in (None, ""):
        return ""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            parsed = kind(value)
    except (TypeError, ValueError):
        return ""
    return value if parsed is not None else ""
