"""The segment database: real SNOMED CT codes, unique IDs, valid colours, clear errors."""

from __future__ import annotations

import re

import pytest
from pydicom.sr._concepts_dict import concepts
from pydicom.sr.codedict import codes

from medhub.errors import MedhubError
from medhub.segdb import Code, SegmentSpec, get_segment, load_segment_database
from medhub.segdb import database as segdb_database

# SNOMED CT code value -> every meaning pydicom's dictionary gives it (several keywords may
# share a value, e.g. 40146001 is both "Cerebral cortex" and "Cerebral Gray Matter").
SCT_MEANINGS: dict[str, set[str]] = {}
for _keyword, _entries in concepts["SCT"].items():
    for _value, (_meaning, _cids) in _entries.items():
        SCT_MEANINGS.setdefault(_value, set()).add(_meaning)

CATEGORIES = {(c.value, c.meaning) for c in (getattr(codes.cid7150, k) for k in codes.cid7150.dir())}
LATERALITY = {(c.value, c.meaning) for c in (getattr(codes.cid244, k) for k in codes.cid244.dir())}


@pytest.fixture(scope="module")
def database() -> dict[str, SegmentSpec]:
    return load_segment_database()


def test_required_segments_present(database):
    for seg_id in [
        "BRAIN", "BODY", "LUNG", "LEFT_LUNG", "RIGHT_LUNG", "BONE", "GRAY_MATTER", "WHITE_MATTER",
        "LEFT_THALAMUS", "RIGHT_THALAMUS", "LEFT_CAUDATE", "LEFT_PUTAMEN", "LEFT_PALLIDUM",
        "LEFT_HIPPOCAMPUS", "LEFT_AMYGDALA", "LEFT_ACCUMBENS", "LEFT_VENTRAL_DC", "LEFT_LATERAL_VENTRICLE",
        "LEFT_CEREBELLUM_CORTEX", "LEFT_CEREBELLUM_WHITE_MATTER", "BRAINSTEM", "THIRD_VENTRICLE",
        "FOURTH_VENTRICLE", "CEREBRAL_CORTEX", "CEREBRAL_WHITE_MATTER",
    ]:  # fmt: skip
        assert seg_id in database, seg_id


def test_every_code_is_real_snomed_ct_with_pydicoms_meaning(database):
    for spec in database.values():
        for role, code in (("category", spec.category), ("type", spec.type), ("modifier", spec.modifier)):
            if code is None:
                continue
            assert code.scheme == "SCT", f"{spec.id} {role}: scheme {code.scheme}"
            assert code.value in SCT_MEANINGS, f"{spec.id} {role}: {code.value} is not in pydicom's SCT dictionary"
            assert code.meaning in SCT_MEANINGS[code.value], (
                f"{spec.id} {role}: meaning {code.meaning!r} differs from pydicom's {SCT_MEANINGS[code.value]}"
            )


def test_categories_and_modifiers_come_from_their_context_groups(database):
    for spec in database.values():
        assert (spec.category.value, spec.category.meaning) in CATEGORIES, f"{spec.id}: category not in CID 7150"
        if spec.modifier is not None:
            assert (spec.modifier.value, spec.modifier.meaning) in LATERALITY, f"{spec.id}: modifier not in CID 244"


def test_ids_names_and_colours_are_valid(database):
    assert len(database) >= 60
    for seg_id, spec in database.items():
        assert spec.id == seg_id
        assert re.fullmatch(r"[A-Z][A-Z0-9]*(_[A-Z0-9]+)*", seg_id)
        assert 0 < len(spec.name) <= 64
        assert len(spec.color) == 3 and all(isinstance(c, int) and 0 <= c <= 255 for c in spec.color)
    names = [spec.name for spec in database.values()]
    assert len(names) == len(set(names)), "segment names must be unique so SEG labels are unambiguous"


def test_laterality_is_consistent_with_ids(database):
    left, right = codes.SCT.Left.value, codes.SCT.Right.value
    for seg_id, spec in database.items():
        if seg_id.startswith("LEFT_") or "_LEFT_" in seg_id:
            assert spec.modifier is not None and spec.modifier.value == left, seg_id
        elif seg_id.startswith("RIGHT_") or "_RIGHT_" in seg_id:
            assert spec.modifier is not None and spec.modifier.value == right, seg_id
        else:
            assert spec.modifier is None, seg_id


def test_known_entries_match_pydicom_codes():
    brain = get_segment("BRAIN")
    assert (brain.type.value, brain.type.meaning) == (codes.SCT.Brain.value, codes.SCT.Brain.meaning)
    left_lung = get_segment("LEFT_LUNG")
    assert left_lung.type == Code(codes.SCT.Lung.value, "SCT", codes.SCT.Lung.meaning)
    assert left_lung.modifier == Code(codes.SCT.Left.value, "SCT", "Left")
    assert get_segment("BONE").category == Code(codes.SCT.Tissue.value, "SCT", "Tissue")


def test_unknown_id_raises_one_line_error():
    with pytest.raises(MedhubError, match=r"^unknown segment ID 'NOPE' \(not in the segment database\)$"):
        get_segment("NOPE")


def test_database_is_cached_and_callers_cannot_corrupt_it():
    first = load_segment_database()
    first.pop("BRAIN")
    assert "BRAIN" in load_segment_database()
    assert segdb_database._load.cache_info().hits >= 1


@pytest.mark.parametrize(
    ("entry", "message"),
    [
        ({"id": "lower", "name": "x"}, "UPPER_SNAKE_CASE"),
        ({"id": "X", "name": "X", "category": {"value": "1", "scheme": "SCT"}}, "value, scheme and meaning"),
        (
            {
                "id": "X", "name": "X",
                "category": {"value": "91723000", "scheme": "SCT", "meaning": "Anatomical Structure"},
                "type": {"value": "12738006", "scheme": "SCT", "meaning": "Brain"},
                "color": [0, 0, 300],
            },
            "three integers",
        ),
        ({"id": "X", "name": "X", "colour": [1, 2, 3]}, "unknown keys"),
    ],
)  # fmt: skip
def test_bad_entries_are_rejected_with_file_and_id(entry, message):
    with pytest.raises(MedhubError, match=message) as info:
        segdb_database._spec(entry, "test.yaml")
    assert "test.yaml" in str(info.value)
