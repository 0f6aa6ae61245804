"""The lungmask adapter, run through lungmask's real code with a checkpoint made here.

The real R231 weights come from GitHub releases, which this machine cannot reach. So the test
builds lungmask's real network (``lungmask.resunet.UNet`` with the constructor arguments of
``lungmask.mask.get_model``) and saves its state dict exactly as lungmask loads it. Its weights
are fixed, not trained: every path is zero except the full-resolution skip connection, which
carries the normalised intensity to the last layer, so the "model" labels voxels below -500 HU
as 1 and above 300 HU as 2. That makes the output depend on where the lungs and bones are, so a
transposed or flipped mask cannot pass as identical, and lungmask's post-processing has real
connected components to work on. The file goes through medhub's weights manager (mirror → cache →
SHA-256) like the real one would.
"""

from __future__ import annotations

import importlib.metadata
import re
from pathlib import Path

import numpy as np
import pytest
from conftest import shared_path

from medhub.data.volume import Volume
from medhub.errors import MedhubError
from medhub.hub.catalog import ModelEntry, get_model
from medhub.hub.runtime import ModelRunner
from medhub.hub.weights import sha256_file
from medhub.inputs.load import load_series
from medhub.inputs.scan import scan
from medhub.inputs.synth import write_dicom_series
from medhub.segdb import get_segment

torch = pytest.importorskip("torch")
lungmask_mask = pytest.importorskip("lungmask.mask")
sitk = pytest.importorskip("SimpleITK")
from lungmask import utils as lungmask_utils  # noqa: E402
from lungmask.resunet import UNet  # noqa: E402

R231_FILE = "unet_r231-d5d2fc3d.pth"
LOW_HU, HIGH_HU = -500.0, 300.0


def _normalised(hu: float) -> float:
    """lungmask's input scaling (``_inference``): clip to 600 HU, then (HU + 1024) / 1624."""
    return (min(hu, 600.0) + 1024.0) / 1624.0


def make_r231_checkpoint(path: Path) -> Path:
    """A state dict of lungmask's real R231 network whose output is a fixed HU threshold.

    Only channel 0 of the first down block and of the last up block's convolutions is non-zero
    (centre tap 1), so the skip connection carries the input to ``last``; batch norms keep their
    identity statistics. ``last`` then scores class 1 for dark and class 2 for dense voxels.
    """
    net = UNet(n_classes=3, padding=True, depth=5, up_mode="upsample", batch_norm=True, residual=False)
    with torch.no_grad():
        for parameter in net.parameters():
            parameter.zero_()
        for module in net.modules():
            if isinstance(module, torch.nn.BatchNorm2d):
                module.weight.fill_(1.0)
        first, second = net.down_path[0].block[0], net.down_path[0].block[3]
        up_first, up_second = net.up_path[-1].conv_block.block[0], net.up_path[-1].conv_block.block[3]
        first.weight[0, 0, 1, 1] = 1.0
        second.weight[0, 0, 1, 1] = 1.0
        up_first.weight[0, up_first.in_channels // 2, 1, 1] = 1.0  # channel 0 of the skip ("bridge") half
        up_second.weight[0, 0, 1, 1] = 1.0
        gain = 200.0
        net.last.weight[1, 0] = -gain
        net.last.bias[1] = gain * _normalised(LOW_HU)
        net.last.weight[2, 0] = gain
        net.last.bias[2] = -gain * _normalised(HIGH_HU)
    torch.save(net.state_dict(), path)
    return path


@pytest.fixture(scope="session")
def checkpoint(tmp_path_factory) -> Path:
    mirror = tmp_path_factory.mktemp("lungmask-mirror")
    (mirror / "lungmask").mkdir()
    return make_r231_checkpoint(mirror / "lungmask" / R231_FILE)


@pytest.fixture(scope="session")
def ct_crop_dir(tmp_path_factory) -> Path:
    """Three slices of the real abdominal CT, written with the columns running right-to-left.

    Flipping x (and the data with it) keeps the anatomy where it is but makes the series non-LPS,
    so lungmask's own reorientation to LPS and back is exercised. Three slices: this test is about
    equivalence, not accuracy, and R231's network costs about 3 s per slice on CPU.
    """
    volume = load_series(scan(shared_path("ct/totalsegmentator_example_ct_dicom")).series[0])
    array = volume.array[::-1, :, 8:11]
    affine = volume.affine_lps.copy()
    affine[:3, 3] = (volume.affine_lps @ np.array([volume.shape[0] - 1.0, 0.0, 8.0, 1.0]))[:3]
    affine[:3, 0] = -volume.affine_lps[:3, 0]
    out = tmp_path_factory.mktemp("lungmask-ct")
    write_dicom_series(array, affine, out, modality="CT", series_description="lungmask test crop")
    return out


def lungmask_with(**changes: str) -> ModelEntry:
    """The lungmask model with its card's weights file changed (url or sha256), as a test declares it."""
    entry = get_model("lungmask")
    (real,) = entry.card.weights
    entry.card = entry.card.model_copy(update={"weights": [real.model_copy(update=changes)]})
    return entry


@pytest.fixture
def mirror_with_checkpoint(checkpoint, tmp_path, monkeypatch) -> ModelEntry:
    """The checkpoint served by a mirror folder, declared with its own SHA-256 in place of the real one."""
    monkeypatch.setenv("MEDHUB_WEIGHTS_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("MEDHUB_WEIGHTS_MIRROR", str(checkpoint.parent.parent))
    return lungmask_with(sha256=sha256_file(checkpoint))


@pytest.mark.slow
def test_adapter_matches_lungmask_on_its_own_dicom_reading(ct_crop_dir, checkpoint, mirror_with_checkpoint, tmp_path):
    runner = ModelRunner(mirror_with_checkpoint)
    runner.load("cpu", {"batch_size": 4})
    assert runner.context.weights[R231_FILE] == tmp_path / "cache" / "lungmask" / R231_FILE  # verified, in the cache
    volume = load_series(scan(ct_crop_dir).series[0])

    prediction = runner.predict(volume, {})

    # lungmask's own path: its DICOM reader (SimpleITK) and its inferer with the same weights file.
    image = lungmask_utils.load_input_image(str(ct_crop_dir), disable_tqdm=True)
    assert sitk.DICOMOrientImageFilter_GetOrientationFromDirectionCosines(image.GetDirection()) != "LPS"
    reference = lungmask_mask.LMInferer(modelpath=str(checkpoint), force_cpu=True, tqdm_disable=True).apply(image)
    ours = np.transpose(prediction.labels, (2, 1, 0))
    assert ours.shape == reference.shape
    assert np.array_equal(ours, reference)
    counts = np.bincount(ours.ravel(), minlength=3)
    print(f"lungmask adapter == lungmask API on {ours.shape}: label voxels {counts.tolist()}")
    assert counts[1] > 1000 and counts[2] > 100  # the comparison is not between two empty masks
    hu = np.transpose(volume.array, (2, 1, 0))
    assert np.median(hu[ours == 1]) < LOW_HU and np.median(hu[ours == 2]) > HIGH_HU
    assert prediction.segments == {1: "RIGHT_LUNG", 2: "LEFT_LUNG"}
    voxel_ml = abs(np.linalg.det(volume.affine_lps[:3, :3])) / 1000
    assert prediction.values["right_lung_volume_ml"] == pytest.approx(counts[1] * voxel_ml, abs=1e-3)


def test_label_mapping_matches_lungmasks_own_class_map():
    """R231 has 3 outputs (lungmask.mask.MODEL_URLS) and its README says 1 = right, 2 = left lung."""
    url, n_classes = lungmask_mask.MODEL_URLS["R231"]
    assert n_classes == 3
    card = get_model("lungmask").card
    assert [w.url for w in card.weights] == [url]
    assert card.weights[0].sha256.startswith(re.search(r"-([0-9a-f]{8})\.pth$", url).group(1))  # torch.hub's prefix
    # The raw METADATA text: its body is lungmask's README (get_payload() depends on email parsing state).
    readme = importlib.metadata.distribution("lungmask").read_text("METADATA") or ""
    documented = dict(re.findall(r"(\d) = (Right|Left) lung", readme.split("Two label models")[1][:200]))
    assert documented == {"1": "Right", "2": "Left"}
    assert card.outputs.segments == {1: "RIGHT_LUNG", 2: "LEFT_LUNG"}
    for value, side in documented.items():
        spec = get_segment(card.outputs.segments[int(value)])
        assert spec.type.meaning == "Lung" and spec.modifier is not None and spec.modifier.meaning == side


def test_missing_weights_give_the_one_line_error(tmp_path, monkeypatch):
    monkeypatch.setenv("MEDHUB_WEIGHTS_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("MEDHUB_WEIGHTS_MIRROR", str(tmp_path / "empty-mirror"))
    # The real URL would be tried (and is unreachable here); point it at a closed local port instead.
    with pytest.raises(MedhubError) as info:
        ModelRunner(lungmask_with(url="http://127.0.0.1:9/" + R231_FILE)).load("cpu", {})
    message = str(info.value)
    assert "\n" not in message
    assert R231_FILE in message and "http://127.0.0.1:9/" in message
    assert f"MEDHUB_WEIGHTS_MIRROR={tmp_path / 'empty-mirror'}" in message
    assert str(tmp_path / "empty-mirror" / "lungmask" / R231_FILE) in message


def test_a_file_that_is_not_an_r231_state_dict_is_refused(tmp_path, monkeypatch):
    wrong = tmp_path / "mirror" / "lungmask" / R231_FILE
    wrong.parent.mkdir(parents=True)
    torch.save({"conv.weight": torch.zeros(2, 1, 3, 3), "conv.bias": torch.zeros(2)}, wrong)
    monkeypatch.setenv("MEDHUB_WEIGHTS_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("MEDHUB_WEIGHTS_MIRROR", str(tmp_path / "mirror"))
    with pytest.raises(MedhubError, match=r"is not a lungmask R231 state dict"):
        ModelRunner(lungmask_with(sha256=sha256_file(wrong))).load("cpu", {})


def test_predict_before_load_is_an_error():
    volume = Volume(array=np.zeros((4, 4, 4), np.float32), affine_lps=np.eye(4))
    with pytest.raises(MedhubError, match="predict called before load"):
        ModelRunner(get_model("lungmask")).predict(volume, {})
