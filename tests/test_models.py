"""Model cards, the catalog, and the deepbet and ct-body runners on real data."""

from __future__ import annotations

import json
import re
import subprocess
import sys
import textwrap
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from conftest import make_sample_mirror, shared_path

from medhub.authoring.check import check_model
from medhub.data.volume import LPS_TO_RAS, Volume
from medhub.errors import MedhubError
from medhub.hub.card import load_card
from medhub.hub.catalog import get_model, list_models
from medhub.hub.runner import require_module
from medhub.hub.runtime import ModelRunner
from medhub.hub.workflow import load_workflow_file, selection_params
from medhub.inputs.load import load_series
from medhub.inputs.scan import scan
from medhub.models.ct_body.runner import Runner as CtBodyRunner
from medhub.segdb import get_segment

# TotalSegmentator v2 class ids (checked on example_seg.nii.gz: 10/11 lie on the patient's left).
TS_LEFT_LUNG = [10, 11]  # lung_upper_lobe_left, lung_lower_lobe_left
TS_RIGHT_LUNG = [12, 13, 14]  # lung_upper/middle/lower_lobe_right
TS_VERTEBRAE_RIBS_STERNUM = list(range(25, 51)) + list(range(92, 117))
CT_BODY_DEFAULTS = get_model("ct-body").card.parameter_defaults()  # what the hub hands ct-body's predict


def dice(a: np.ndarray, b: np.ndarray) -> float:
    return float(2 * np.logical_and(a, b).sum() / (a.sum() + b.sum()))


def canonical(array: np.ndarray, affine_ras: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Array and affine in the closest RAS orientation: compares masks whatever their voxel order."""
    image = nib.as_closest_canonical(nib.Nifti1Image(array, affine_ras))
    return np.asanyarray(image.dataobj), image.affine


# ---------------------------------------------------------------- cards and catalog


def test_catalog_lists_built_in_models_with_valid_cards_and_workflows():
    cards = {card.id: card for card in list_models()}
    assert {"deepbet", "ct-body"} <= set(cards)
    assert cards["ct-body"].training_type == "algorithmic"
    assert cards["deepbet"].inputs[0].modality == "MR"
    for model_id in ("deepbet", "ct-body"):
        entry = get_model(model_id)
        assert entry.path.name == model_id.replace("-", "_")
        assert "default" in entry.workflows
        for segment_id in entry.card.outputs.segments.values():
            assert get_segment(segment_id).id == segment_id  # every output is in the segment database
        for path in entry.workflows.values():
            workflow = load_workflow_file(path)
            assert workflow.execute[:3] == ["select", "load", "predict"]
            assert selection_params(entry.card, workflow)["input"] == entry.card.inputs[0].query  # from the card
    assert set(get_model("ct_body").workflows) == {"default", "rtstruct"}
    assert "write_rtstruct" in load_workflow_file(get_model("ct-body").workflow("rtstruct")).execute
    assert set(get_model("deepbet").workflows) == {"default", "nifti"}


def test_unknown_model_and_workflow_name_what_exists():
    with pytest.raises(MedhubError, match=r"unknown model 'x'; available: .*ct-body.*deepbet"):
        get_model("x")
    with pytest.raises(MedhubError, match="model deepbet has no workflow 'nope'; available: default, nifti"):
        get_model("deepbet").workflow("nope")


def test_listing_models_imports_neither_torch_nor_runners():
    code = textwrap.dedent(
        """
        import sys
        from medhub.hub.catalog import get_model, list_models
        list_models(); get_model("deepbet").card
        print(sorted(m for m in ("torch", "deepbet", "medhub.models.deepbet.runner") if m in sys.modules))
        """
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


def test_missing_optional_dependency_is_a_one_line_install_hint():
    with pytest.raises(MedhubError) as info:
        require_module("medhub_no_such_package", "deepbet", pip_name="deepbet", extra="deepbet")
    # the extra of medhub, as this medhub is installed: from an index, or an editable checkout (pip install -e)
    assert re.fullmatch(r"model deepbet needs the package 'deepbet' \(pip install ('medhub|-e '/\S+)\[deepbet\]'\)",
                        str(info.value)), str(info.value)


def test_bad_card_names_the_file_and_the_field(tmp_path):
    card = get_model("ct-body").path / "card.yaml"
    broken = tmp_path / "card.yaml"
    broken.write_text(card.read_text().replace("id: ct-body", "id: CT Body").replace("body_part:", "bodypart:"))
    with pytest.raises(MedhubError, match=r"card.yaml: invalid model card at '(id|bodypart|body_part)'.*and 2 more"):
        load_card(broken)
    meta = load_card(card).to_mhub_meta()
    assert meta["details"]["license"] == {"code": "Apache-2.0", "weights": "none (no weights)"}
    assert meta["summary"]["outputs"][0]["classes"][:2] == ["BODY", "LEFT_LUNG"]


# ---------------------------------------------------------------- deepbet


@pytest.mark.slow
def test_deepbet_on_dicom_matches_deepbet_on_the_nifti(tmp_path, assert_valid_dicom, monkeypatch):
    """``medhub check deepbet`` (the card's sample: the real T1 as a DICOM MR series, through the pipeline,
    against the card's reference values), and the same run's mask against deepbet on the NIfTI itself."""
    deepbet = pytest.importorskip("deepbet")
    monkeypatch.setenv("MEDHUB_WEIGHTS_MIRROR", str(make_sample_mirror(tmp_path / "mirror")))
    monkeypatch.setenv("MEDHUB_WEIGHTS_CACHE", str(tmp_path / "cache"))

    lines = [r.line() for r in check_model("deepbet", work_dir=tmp_path / "check")]

    assert not [line for line in lines if line.startswith(("FAIL", "WARN run"))], "\n".join(lines)
    assert any(line.startswith("OK   reference: BRAIN") for line in lines), "\n".join(lines)
    out = tmp_path / "check" / "output"
    [entry] = json.loads((out / "medhub-report.json").read_text())["series"]
    outputs = {Path(o).name: out / o for o in entry["outputs"]}
    assert_valid_dicom(outputs["deepbet.seg.dcm"])
    labels = nib.load(outputs["deepbet.nii.gz"])  # the label map (the image beside it has its series' name)
    path = shared_path("mr/brainchop_t1_crop.nii.gz")
    _, reference_mask, tiv_ml = deepbet.BrainExtraction(no_gpu=True).run(nib.load(path))
    ours, our_affine = canonical(np.asarray(labels.dataobj).astype(np.uint8), labels.affine)
    ref, ref_affine = canonical(np.asanyarray(reference_mask.dataobj).astype(np.uint8), nib.load(path).affine)
    assert np.allclose(our_affine, ref_affine, atol=1e-3)
    score = dice(ours > 0, ref > 0)
    print(f"deepbet DICOM vs NIfTI Dice = {score:.5f}, brain {entry['values']['brain_volume_ml']} ml")
    assert score >= 0.999
    assert entry["values"]["brain_volume_ml"] == pytest.approx(tiv_ml, rel=1e-3)
    assert 1000 < entry["values"]["brain_volume_ml"] < 2000


def test_deepbet_predict_before_load_is_an_error():
    runner = ModelRunner(get_model("deepbet"))
    volume = Volume(array=np.zeros((4, 4, 4), np.float32), affine_lps=np.eye(4))
    with pytest.raises(MedhubError, match="predict called before load"):
        runner.predict(volume, {})


# ---------------------------------------------------------------- ct-body


def _nifti_volume(relative: str) -> tuple[Volume, np.ndarray]:
    image = nib.load(shared_path(relative))
    return Volume(array=np.asanyarray(image.dataobj), affine_lps=LPS_TO_RAS @ image.affine, modality="CT"), image.affine


def test_ct_body_lungs_match_totalsegmentator():
    volume, affine_ras = _nifti_volume("ct/totalsegmentator_nifti/example_ct_sm.nii.gz")
    reference = np.asanyarray(nib.load(shared_path("ct/totalsegmentator_nifti/example_seg.nii.gz")).dataobj)
    assert reference.shape == volume.shape

    prediction = CtBodyRunner().predict(volume, CT_BODY_DEFAULTS)
    labels = prediction.labels

    assert prediction.segments == {1: "BODY", 2: "LEFT_LUNG", 3: "RIGHT_LUNG", 4: "BONE"}
    lungs = dice(np.isin(labels, [2, 3]), np.isin(reference, TS_LEFT_LUNG + TS_RIGHT_LUNG))
    left = dice(labels == 2, np.isin(reference, TS_LEFT_LUNG))
    right = dice(labels == 3, np.isin(reference, TS_RIGHT_LUNG))
    print(f"ct-body vs TotalSegmentator: lungs Dice {lungs:.3f} (left {left:.3f}, right {right:.3f})")
    assert lungs > 0.9 and left > 0.9 and right > 0.9  # measured 0.965 / 0.958 / 0.969
    # Bone: dense, and mostly where TotalSegmentator has vertebrae/ribs/sternum.
    bone = labels == 4
    assert np.median(volume.array[bone]) > 250
    assert np.isin(reference[bone], TS_VERTEBRAE_RIBS_STERNUM).mean() > 0.6
    # Body: encloses every labelled organ, and the gas in the stomach is not lung.
    assert (labels[reference > 0] > 0).mean() > 0.99
    stomach = reference == 6
    assert not np.isin(labels[stomach], [2, 3]).any()
    assert prediction.values["lung_volume_ml"] == pytest.approx(
        prediction.values["left_lung_volume_ml"] + prediction.values["right_lung_volume_ml"]
    )


def test_ct_body_on_the_real_dicom_series_finds_no_lungs_in_an_abdomen():
    series = scan(shared_path("ct/totalsegmentator_example_ct_dicom")).series
    assert len(series) == 1
    volume = load_series(series[0])
    reference_image = nib.load(shared_path("ct/totalsegmentator_nifti/example_seg_dicom.nii.gz"))

    prediction = CtBodyRunner().predict(volume, CT_BODY_DEFAULTS)

    assert set(prediction.segments.values()) == {"BODY", "BONE"}  # the reference has no lung either
    ours, our_affine = canonical(prediction.labels, volume.affine_ras)
    ref, ref_affine = canonical(np.asanyarray(reference_image.dataobj), reference_image.affine)
    assert np.allclose(our_affine, ref_affine, atol=1e-3)
    # Every structure TotalSegmentator found lies in the body, except the left arm (humerus, 69), which
    # lies apart from the trunk in this scan: the body is the largest connected component only.
    trunk = (ref > 0) & ~np.isin(ref, [69, 70])
    assert (ours[trunk] > 0).mean() > 0.999
    assert (ours[ref == 69] == 0).mean() > 0.9
    bone = ours == 4
    skeleton = np.isin(ref, TS_VERTEBRAE_RIBS_STERNUM + [70, 117])  # + right humerus, costal cartilage
    # TotalSegmentator leaves bone edges and unlisted bones unlabelled: judge precision where it labels.
    precision, recall = skeleton[bone & (ref > 0)].mean(), bone[skeleton].mean()
    print(f"ct-body bone vs TotalSegmentator skeleton: precision {precision:.3f}, recall {recall:.3f}")
    assert precision > 0.9  # measured 0.97; the rest is contrast in the aorta and portal vein
    assert recall > 0.3  # measured 0.41: > 250 HU keeps cortical bone, marrow (100-250 HU) is missed
    assert 2000 < prediction.values["body_volume_ml"] < 5000  # 20 slices x 2 mm of an adult abdomen


def _phantom(bridge: bool) -> Volume:
    """Air-filled 'lungs' (-850 HU) in a water body, with a spine; optionally joined by an air bridge."""
    hu = np.full((80, 60, 30), -1000, dtype=np.int16)
    x, y = np.mgrid[:80, :60]
    hu[((x - 40) / 35) ** 2 + ((y - 30) / 25) ** 2 < 1] = 20
    hu[20:36, 15:45, 5:25] = -850  # lower x → patient right in LPS
    hu[46:58, 15:45, 5:25] = -850
    hu[38:44, 40:48, 5:25] = 700  # spine
    if bridge:
        hu[36:46, 28:32, 12:16] = -850
    return Volume(array=hu, affine_lps=np.diag([2.0, 2.0, 3.0, 1.0]), modality="CT")


@pytest.mark.parametrize("bridge", [False, True])
def test_ct_body_splits_lungs_by_patient_laterality(bridge):
    volume = _phantom(bridge)
    labels = CtBodyRunner().predict(volume, CT_BODY_DEFAULTS).labels
    assert (labels[20:36, 15:45, 5:25] == 3).mean() > 0.95  # right lung (-x in LPS)
    assert (labels[46:58, 15:45, 5:25] == 2).mean() > 0.95  # left lung (+x in LPS)
    assert (labels[38:44, 40:48, 5:25] == 4).all()
    assert labels[0, 0, 0] == 0 and labels[40, 10, 15] == 1

    mirrored = Volume(array=volume.array[::-1].copy(), affine_lps=np.diag([-2.0, 2.0, 3.0, 1.0]))
    mirrored_labels = CtBodyRunner().predict(mirrored, CT_BODY_DEFAULTS).labels
    assert (mirrored_labels[::-1][46:58, 15:45, 5:25] == 2).mean() > 0.95  # same patient side, flipped storage


def test_ct_body_without_body_is_skipped():
    from medhub.errors import SeriesSkipped

    volume = Volume(array=np.full((10, 10, 5), -1000, np.int16), affine_lps=np.eye(4))
    with pytest.raises(SeriesSkipped, match="no body"):
        CtBodyRunner().predict(volume, CT_BODY_DEFAULTS)
