"""Every result against the plausible ranges of its card (pipeline/plausibility.py, outputs.plausible).

The rules are measured on label maps whose truth is known (a ball of a known volume, a lung put
outside the body, a geometry with left and right swapped), on TotalSegmentator's own reference
segmentations of its example CT (upstream data: the laterality the card states must hold there),
and on ct-body's real results. End-to-end runs (a mislabelled CT given to deepbet, voxel sizes
in cm, an MR read as Hounsfield units, --allow-implausible) are cases of the hostile-input corpus.
"""

from __future__ import annotations

import numpy as np
import pytest
from conftest import shared_path

from medhub.data.embedding import EmbeddingResult
from medhub.data.prediction import Prediction
from medhub.data.volume import Volume
from medhub.hub.card import card_problems
from medhub.hub.catalog import get_model
from medhub.inputs.nifti import load_nifti
from medhub.pipeline.plausibility import check_result


def _ball(shape: tuple[int, int, int], radius: float, centre: tuple[float, float, float] | None = None) -> np.ndarray:
    grid = np.indices(shape).astype(float)
    middle = centre or tuple((s - 1) / 2 for s in shape)
    return sum((g - c) ** 2 for g, c in zip(grid, middle, strict=True)) <= radius ** 2


def _volume(shape: tuple[int, int, int], spacing: float = 1.0) -> Volume:
    affine = np.diag([spacing, spacing, spacing, 1.0])
    return Volume(array=np.zeros(shape, dtype=np.int16), affine_lps=affine)


def test_a_brain_of_3188_ml_is_implausible_and_says_what_to_check() -> None:
    card = get_model("deepbet").card
    volume = _volume((120, 120, 120), spacing=1.6)  # a 192 mm field of view
    brain = _ball(volume.shape, 56.7)  # 763,000 voxels of 4.096 µl: 3125 ml
    found = check_result(card, volume, Prediction(labels=brain.astype(np.uint8), segments={1: "BRAIN"}))
    millilitres = brain.sum() * 1.6 ** 3 / 1000
    assert found.violations == [f"brain {millilitres:.0f} ml, expected 800–2200 ml; is this a T1-weighted brain MR "
                                "of an adult or an older child?"]
    assert found.reason.startswith("implausible: brain ")

    right_size = _ball(volume.shape, 40)  # 268,000 voxels: 1098 ml, 128 mm across
    assert check_result(card, volume, Prediction(labels=right_size.astype(np.uint8), segments={1: "BRAIN"})) \
        .violations == []
    nothing = np.zeros(volume.shape, dtype=np.uint8)  # an absent segment has 0 ml: below the minimum
    assert check_result(card, volume, Prediction(labels=nothing, segments={1: "BRAIN"})).violations[0] \
        .startswith("brain 0 ml, expected 800–2200 ml")


def test_a_brain_wider_than_any_head_is_implausible() -> None:
    card = get_model("hdbet").card
    volume = _volume((400, 100, 60))
    slab = np.zeros(volume.shape, dtype=np.uint8)
    slab[20:380, 10:90, 10:50] = 1  # 1152 ml, but 360 mm from left to right
    (problem,) = check_result(card, volume, Prediction(labels=slab, segments={1: "BRAIN"})).violations
    assert problem.startswith("the brain spans 360 mm from left to right, expected at most 220 mm")


def _chest(flip: bool = False) -> tuple[Volume, np.ndarray]:
    """A body (ellipse in every slice) with the right lung at the patient's right (low LPS x) and the left lung."""
    volume = _volume((200, 160, 20), spacing=2.0)
    yy, xx = np.mgrid[:200, :160]
    body = ((yy - 100) / 90) ** 2 + ((xx - 80) / 70) ** 2 <= 1
    labels = np.zeros(volume.shape, dtype=np.uint8)
    labels[body] = 1  # BODY
    right = ((yy - 65) / 25) ** 2 + ((xx - 80) / 30) ** 2 <= 1
    left = ((yy - 135) / 25) ** 2 + ((xx - 80) / 30) ** 2 <= 1
    labels[right] = 3  # RIGHT_LUNG
    labels[left] = 2  # LEFT_LUNG
    if flip:  # the same voxels with a geometry that says left is right
        volume.affine_lps = volume.affine_lps @ np.array([[-1, 0, 0, 199], [0, 1, 0, 0], [0, 0, 1, 0], [0, 0, 0, 1.0]])
    return volume, labels


CT_BODY_SEGMENTS = {1: "BODY", 2: "LEFT_LUNG", 3: "RIGHT_LUNG", 4: "BONE"}


def test_ct_body_rules_lungs_inside_the_body_and_on_their_sides() -> None:
    card = get_model("ct-body").card
    volume, labels = _chest()
    assert check_result(card, volume, Prediction(labels=labels, segments=CT_BODY_SEGMENTS)).violations == []

    outside = labels.copy()
    outside[:, :12, :][outside[:, :12, :] == 0] = 2  # a "left lung" strip in the air beside the body
    problems = check_result(card, volume, Prediction(labels=outside, segments=CT_BODY_SEGMENTS)).violations
    assert any("of the left lung lies outside the body and bone, expected at most 1%" in p for p in problems)

    flipped_volume, flipped = _chest(flip=True)
    problems = check_result(card, flipped_volume, Prediction(labels=flipped, segments=CT_BODY_SEGMENTS)).violations
    assert problems == ["the right lung lies on the patient's left of the left lung, expected on the right (are left "
                        "and right swapped in the image geometry?)"]

    everything = np.ones(volume.shape, dtype=np.uint8)  # an MR read as HU: nothing below -500, all "body"
    problems = check_result(card, volume, Prediction(labels=everything, segments=CT_BODY_SEGMENTS)).violations
    assert problems == ["body (with left lung, right lung, lung and bone) fills 100% of the scanned volume, expected "
                        "at most 95%; is this a CT in Hounsfield units, with air around the body?"]


def test_values_and_embeddings_must_be_finite_numbers() -> None:
    card = get_model("ct-fm-astra").card
    vector = np.ones(2048, dtype=np.float32)
    vector[7] = np.nan
    embedding = EmbeddingResult(vector=vector, feature_map=None, cached=False, key="0" * 64, model="ct-fm-astra",
                                version="1", input_hash="0" * 64)
    prediction = Prediction(labels=None, segments={}, values={"embedding_dimension": 2047, "x": float("inf")},
                            embedding=embedding)
    problems = check_result(card, None, prediction).violations
    assert problems == ["x is inf (not a number)", "the embedding holds 1 values that are not finite numbers",
                        "embedding_dimension 2047, expected 2048–2048"]


@pytest.mark.parametrize("reference", ["example_seg.nii.gz", "example_seg_dicom.nii.gz"])
def test_totalsegmentators_own_reference_is_plausible_and_its_mirror_is_not(reference: str) -> None:
    """Upstream data: TotalSegmentator's reference segmentations of its example CT (class index = the card's label)."""
    card = get_model("totalsegmentator").card
    volume = load_nifti(shared_path(f"ct/totalsegmentator_nifti/{reference}"))
    labels = np.asarray(volume.array).astype(np.uint8)
    prediction = Prediction(labels=labels, segments=dict(card.outputs.segments))
    assert check_result(card, volume, prediction).violations == []

    present = set(np.unique(labels).tolist())
    pairs = [(r.segment, r.right_of) for r in card.outputs.plausible if r.right_of]
    label_of = {name: value for value, name in card.outputs.segments.items()}
    both = [(right, left) for right, left in pairs if {label_of[right], label_of[left]} <= present]
    assert both, f"the reference holds none of the pairs {pairs}"
    mirror = np.diag([-1.0, 1, 1, 1])
    volume.affine_lps = mirror @ volume.affine_lps  # the same voxels in a geometry that swaps left and right
    problems = check_result(card, volume, prediction).violations
    assert len(problems) == len(both)
    assert all("lies on the patient's left of the" in p for p in problems)


def test_ct_body_results_on_real_ct_are_plausible() -> None:
    from medhub.hub.runtime import ModelRunner
    from medhub.inputs.load import load_series
    from medhub.inputs.scan import scan

    model = get_model("ct-body")
    card, runner = model.card, ModelRunner(model)
    runner.load("cpu", {})
    volumes = [load_nifti(shared_path("ct/totalsegmentator_nifti/example_ct_sm.nii.gz")),
               load_series(scan(shared_path("ct/totalsegmentator_example_ct_dicom")).series[0])]
    for volume in volumes:
        prediction = runner.predict(volume, {})
        found = check_result(card, volume, prediction)
        assert found.violations == [] and found.checks == len(card.outputs.plausible) + len(prediction.values)


@pytest.mark.parametrize(("rule", "problem"), [
    ({"segment": "BRAIN", "min": 2200, "max": 800, "source": "a source of ten"}, "min 2200 is above max 800"),
    ({"segment": "BRAIN", "value": "brain_volume_ml", "max": 1, "source": "a source of ten"}, "exactly one of"),
    ({"segment": "BRAIN", "source": "a source of ten"}, "give at least one rule"),
    ({"segment": "HEART", "max": 1, "source": "a source of ten"}, "names segment 'HEART'"),
    ({"value": "brain_volume_ml", "inside": ["BRAIN"], "source": "a source of ten"}, "a value takes min and max"),
    ({"segment": "BRAIN", "max": 1}, "plausible.0.source"),
])
def test_a_bad_plausible_range_is_a_one_line_card_problem(rule: dict[str, object], problem: str) -> None:
    data = get_model("deepbet").card.model_dump(mode="json", exclude_none=True)
    data["outputs"]["plausible"] = [rule]
    problems = card_problems(data, "card.yaml")
    assert problems and problem in problems[0], problems
