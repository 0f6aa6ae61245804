"""Data-type queries and series selection, on real scans and on small in-memory series."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pydicom
import pytest
from conftest import shared_path
from pydicom.dataset import Dataset
from pydicom.fileset import FileSet
from pydicom.uid import (
    CTImageStorage,
    GrayscaleSoftcopyPresentationStateStorage,
    SecondaryCaptureImageStorage,
    generate_uid,
)

from medhub.data.series import Instance, Series
from medhub.errors import MedhubError
from medhub.inputs.query import Condition, DataTypeQuery
from medhub.inputs.scan import make_series, scan
from medhub.inputs.select import Selection, SelectionRules, select

# ---------------------------------------------------------------------------------------------
# query parsing


def test_parse_format_filters_alternatives_and_operators():
    q = DataTypeQuery.parse("dicom|nifti:mod=ct|MR:slices>=10:bodypart!=head:SliceThickness<2.5")
    assert q.formats == ("dicom", "nifti")
    assert q.conditions == (
        Condition("mod", "=", ("ct", "MR")),
        Condition("slices", ">=", ("10",)),
        Condition("bodypart", "!=", ("head",)),
        Condition("slicethickness", "<", ("2.5",)),
    )
    assert str(q) == "dicom|nifti:mod=ct|MR:slices>=10:bodypart!=head:slicethickness<2.5"
    assert DataTypeQuery.parse(str(q)) == DataTypeQuery.parse(str(q))


def test_parse_defaults_and_aliases():
    assert DataTypeQuery.parse("mod=ct").formats == ("any",)  # format part may be omitted
    assert DataTypeQuery.parse("*:mod=ct").formats == ("any",)
    assert DataTypeQuery.parse("dicom").conditions == ()
    assert DataTypeQuery.parse("dicom:roi<>BRAIN").conditions == (Condition("roi", "!=", ("BRAIN",)),)
    assert DataTypeQuery.parse("dicom: mod = ct ").conditions == (Condition("mod", "=", ("ct",)),)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("", "empty query"),
        ("dicom:mod", "bad filter 'mod'"),
        ("dicom:=ct", "bad filter"),
        ("dicom:slices>=ten", "needs one number"),
        ("dicom:slices>=1|2", "needs one number"),
        ("di com:mod=ct", "bad format part"),
    ],
)
def test_parse_errors_name_the_bad_part(text, message):
    with pytest.raises(MedhubError, match=message):
        DataTypeQuery.parse(text)


# ---------------------------------------------------------------------------------------------
# query matching on metadata


META = {
    "format": "dicom",
    "mod": "mr",
    "type": "original\\primary\\m\\nd",
    "image_type": ["original", "primary", "m", "nd"],
    "desc": "T1 MPRAGE sag",
    "slices": 176,
    "orientation": "sagittal",
    "bodypart": "",
    "has_uids": True,
    "series_number": None,
}


@pytest.mark.parametrize(
    ("query", "expected"),
    [
        ("dicom:mod=mr", True),
        ("dicom:mod=MR", True),  # case-insensitive values
        ("dicom:MOD=mr", True),  # and keys
        ("dicom:mod=ct|mr", True),
        ("dicom:mod=ct", False),
        ("nifti:mod=mr", False),
        ("dicom|nifti:mod=mr", True),
        ("any:mod=mr", True),
        ("dicom:mod!=ct", True),
        ("dicom:mod!=ct|mr", False),
        ("dicom:image_type=m", True),  # list-valued: any element
        ("dicom:image_type=localizer", False),
        ("dicom:image_type!=localizer", True),
        ("dicom:type=original*", True),  # wildcard prefix
        ("dicom:type=original", False),  # the whole ImageType, not one element
        ("dicom:desc=*mprage*", True),
        ("dicom:desc=*flair*", False),
        ("dicom:slices>=10", True),
        ("dicom:slices>176", False),
        ("dicom:slices<=176", True),
        ("dicom:slices<100", False),
        ("dicom:slices=176.0", True),  # numeric equality
        ("dicom:has_uids=true", True),
        ("dicom:bodypart=head", False),
        ("dicom:bodypart!=head", True),
        ("dicom:bodypart=", True),  # empty value: absent or empty
        ("dicom:desc=", False),
        ("dicom:bodypart!=", False),
        ("dicom:series_number>=1", False),  # absent value never satisfies a comparison
        ("dicom:series_number!=3", True),  # ... and always satisfies !=
        ("dicom:roi=LIVER", False),  # unknown key, not a DICOM keyword either
    ],
)
def test_matching_on_metadata(query, expected):
    assert DataTypeQuery.parse(query).matches(META) is expected


@pytest.mark.parametrize(
    ("query", "reason"),
    [
        ("dicom:mod=ct", "MR, model needs CT"),
        ("dicom:mod=ct|pt", "MR, model needs CT or PT"),
        ("dicom:mod!=mr", "MR, model excludes MR"),
        ("nifti", "dicom data, model needs nifti"),
        ("dicom:slices>=200", "slices 176, model needs slices>=200"),
        ("dicom:orientation=axial", "orientation sagittal, model needs orientation axial"),
        ("dicom:bodypart=head", "no bodypart in the data, model needs bodypart=head"),
        ("dicom:roi=LIVER", "no roi in the data, model needs roi=LIVER"),
        ("dicom:mod=mr:slices>=10", None),
    ],
)
def test_explain_gives_the_first_unmet_part(query, reason):
    assert DataTypeQuery.parse(query).explain(META) == reason


def test_any_dicom_keyword_is_looked_up_on_the_first_header():
    (series,) = scan(shared_path("ct/philips_phantom_head_1mm")).series
    header = series.first_header
    assert "Manufacturer" in header and "SliceThickness" in header
    manufacturer = str(header.Manufacturer)
    thickness = float(header.SliceThickness)
    assert DataTypeQuery.parse(f"dicom:Manufacturer={manufacturer.upper()}").matches(series)
    assert DataTypeQuery.parse(f"dicom:slicethickness={thickness}").matches(series)
    assert DataTypeQuery.parse(f"dicom:SliceThickness>{thickness}").explain(series) == (
        f"slicethickness {header.SliceThickness}, model needs slicethickness>{thickness}"
    )
    assert DataTypeQuery.parse("dicom:imageorientationpatient=1").matches(series)  # multi-valued tag
    assert not DataTypeQuery.parse("dicom:ConvolutionKernel=nonexistent-kernel").matches(series)


# ---------------------------------------------------------------------------------------------
# selection rules


def test_rules_from_workflow_dict_and_errors():
    rules = SelectionRules.from_dict({"input": "dicom:mod=ct", "min_slices": 20, "max_slices": 300})
    assert (rules.input, rules.min_slices, rules.max_slices, rules.exclude_localizer) == (
        "dicom:mod=ct",
        20,
        300,
        True,
    )
    with pytest.raises(MedhubError, match="exclude_4d"):
        SelectionRules.from_dict({"exclude_4d": False})  # removed: the loader always refuses 4D series
    assert SelectionRules.from_dict(None) == SelectionRules()
    with pytest.raises(MedhubError, match="min_slice"):
        SelectionRules.from_dict({"min_slice": 3})  # typo: extra keys are refused
    with pytest.raises(MedhubError, match="bad filter"):
        SelectionRules.from_dict({"input": "dicom:mod"})
    with pytest.raises(MedhubError, match="min_slices"):
        SelectionRules.from_dict({"min_slices": -1})


def _flat_folder(tmp: Path) -> Path:
    """A PACS-export-like flat folder: several series, non-image objects, junk and a DICOMDIR."""
    flat = tmp / "flat"
    flat.mkdir()
    sources = {
        "ph": sorted(shared_path("ct/philips_phantom_head_1mm").iterdir()),  # CT, 140 slices
        "ts": sorted(shared_path("ct/totalsegmentator_example_ct_dicom").iterdir()),  # CT, no UIDs
        "gt": sorted(shared_path("edge/dicom2nifti_tests/failing/gantrytilting/001").iterdir()),  # 4 CT
        "seg": [shared_path("seg/highdicom/seg_image_ct_binary.dcm")],
        "rts": [shared_path("rtstruct/pydicom/rtstruct.dcm")],  # no preamble
        "sr": [shared_path("seg/highdicom/sr_document.dcm")],
        "sc": [shared_path("rtstruct/pydicom/MR_small.dcm")],  # DERIVED\SECONDARY
        "dx": [shared_path("seg/highdicom/dx_image.dcm")],  # one projection image
        "mr": [shared_path("enhanced/dcm_qa_enh/Philips/IM_0027_fMAP.dcm")],  # 64-frame enhanced MR
    }
    for prefix, files in sources.items():
        for n, src in enumerate(files):
            os.symlink(src, flat / f"{prefix}_{n:04d}")  # flat names, no suffix
    source = pydicom.dcmread(shared_path("seg/highdicom_source_ct_pydicom_CT2/17106"))
    source.remove_private_tags()  # the source's malformed private block would fail dciodvfy
    fileset = FileSet()
    fileset.add(source)
    fileset.write(tmp / "export")
    shutil.copy(tmp / "export" / "DICOMDIR", flat / "DICOMDIR")
    (flat / "README.txt").write_text("export from PACS\n")
    (flat / "series.json").write_text("{}")
    return flat


def test_flat_folder_selection_gives_one_reason_per_rejected_series(tmp_path, assert_valid_dicom):
    flat = _flat_folder(tmp_path)
    assert_valid_dicom(flat / "DICOMDIR")
    assert_valid_dicom(next((tmp_path / "export").glob("PT*/ST*/SE*/IM*")))
    result = scan(flat)
    assert result.dicomdir_files == 1 and result.non_dicom_files == 2 and not result.unreadable
    assert len(result.series) == 9
    selection = select(result.series, {"input": "dicom:mod=ct"})
    assert len(selection.chosen) + len(selection.rejected) == len(result.series)
    chosen = sorted((s.number_of_images, s.has_uids) for s in selection.chosen)
    assert chosen == [(20, False), (140, True)]
    reasons = {s.instances[0].path.name.split("_")[0]: why for s, why in selection.rejected}
    assert reasons == {
        "seg": "SEG object, not an image",
        "rts": "RTSTRUCT object, not an image",
        "sr": "SR document, not an image",
        "sc": "secondary capture (ImageType DERIVED\\SECONDARY)",
        "gt": "too few slices: 4 (model needs at least 10)",
        "dx": "localizer or single image: 1 slice (model needs at least 10)",
        "mr": "MR, model needs CT",
    }


def test_flat_folder_modalities_and_rule_overrides(tmp_path):
    result = scan(_flat_folder(tmp_path))
    assert sorted(s.modality for s in result.series) == sorted(
        ["CT", "CT", "CT", "SEG", "RTSTRUCT", "SR", "MR", "DX", "MR"]
    )
    # A 2D chest X-ray model takes single images; a workflow overrides the slice minimum.
    dx = select(result.series, {"input": "dicom:mod=dx", "min_slices": 1})
    assert [s.modality for s in dx.chosen] == ["DX"]
    assert dict((s.modality, why) for s, why in dx.rejected)["CT"] == "CT, model needs DX"
    # With the built-in exclusions switched off only the model's query decides.
    everything = select(
        result.series,
        {"input": "dicom", "exclude_non_image": False, "exclude_secondary_capture": False, "min_slices": 0},
    )
    assert len(everything.chosen) == len(result.series) and not everything.rejected


def test_real_non_image_objects_are_rejected_by_sop_class():
    selection = select(scan(shared_path("rtstruct/pydicom")).series, SelectionRules(input="dicom:mod=ct"))
    reasons = sorted(why for _, why in selection.rejected)
    assert reasons == [
        "RTDOSE object, not an image",
        "RTPLAN object, not an image",
        "RTSTRUCT object, not an image",
        "SEG object, not an image",
        "localizer or single image: 1 slice (model needs at least 10)",
        "secondary capture (ImageType DERIVED\\SECONDARY)",
    ]
    assert selection.chosen == []
    highdicom = select(scan(shared_path("seg/dcmqi_sr_example")).series, {"input": "dicom:mod=ct"})
    assert sorted(why for _, why in highdicom.rejected) == [
        "SEG object, not an image",
        "SR document, not an image",
        "real world value mapping, not an image",
    ]


def _series(sop_class: str, image_type: list[str], frames: int = 1, n: int = 1, modality: str = "CT") -> Series:
    """An in-memory series (headers only, nothing written to disk)."""
    series_uid = generate_uid()
    instances = []
    for k in range(n):
        ds = Dataset()
        ds.SOPClassUID = sop_class
        ds.SOPInstanceUID = generate_uid()
        ds.StudyInstanceUID = "1.2.3"
        ds.SeriesInstanceUID = series_uid
        ds.Modality = modality
        ds.ImageType = image_type
        ds.InstanceNumber = n - k
        ds.Rows = ds.Columns = 64
        ds.ImageOrientationPatient = [1, 0, 0, 0, 1, 0]
        instances.append(Instance(Path(f"/virtual/{k}"), ds, ds.SOPInstanceUID, sop_class, "", frames))
    return make_series(series_uid, instances)


def test_builtin_rules_on_synthetic_series_and_their_order():
    localizer = _series(CTImageStorage, ["ORIGINAL", "PRIMARY", "LOCALIZER"], n=3)
    assert [int(i.header.InstanceNumber) for i in localizer.instances] == [1, 2, 3]  # sorted
    pr = _series(GrayscaleSoftcopyPresentationStateStorage, [], modality="PR")
    sc = _series(SecondaryCaptureImageStorage, ["ORIGINAL", "PRIMARY"], n=20, modality="OT")
    # SC and LOCALIZER at once: secondary capture is reported, because it is checked first.
    sc_scout = _series(SecondaryCaptureImageStorage, ["DERIVED", "SECONDARY", "LOCALIZER"], n=20)
    volume = _series(CTImageStorage, ["ORIGINAL", "PRIMARY", "AXIAL"], n=12)
    enhanced = _series(CTImageStorage, ["ORIGINAL", "PRIMARY", "AXIAL"], frames=30)
    selection = select([localizer, pr, sc, sc_scout, volume, enhanced], {"input": "dicom:mod=ct"})
    assert isinstance(selection, Selection)
    assert selection.chosen == [volume, enhanced]  # a 30-frame file counts 30 slices
    assert [why for _, why in selection.rejected] == [
        "localizer (ImageType LOCALIZER)",
        "presentation state, not an image",
        "secondary capture (SecondaryCaptureImageStorage)",
        "secondary capture (SecondaryCaptureImageStorage)",
    ]
    assert selection.reason(pr) == "presentation state, not an image" and selection.reason(volume) is None
    strict = select([volume], {"input": "dicom:mod=ct", "min_slices": 13})
    assert strict.rejected == [(volume, "too few slices: 12 (model needs at least 13)")]
