"""The TotalSegmentator adapter, run end to end through TotalSegmentator's real inference code.

What runs where, and why:

* TotalSegmentator's dependency chain (nnunetv2 → dynamic_network_architectures → timm →
  torchvision) wants torch 2.14.1 with CUDA (7 GB), so it is not installed in medhub's own
  environment. The session fixture makes a small venv that sees the main environment
  (``--system-site-packages``: torch 2.13, numpy, nibabel, SimpleITK, medhub itself) and adds
  TotalSegmentator, nnunetv2 and the few packages their inference path imports, with
  ``--no-deps`` so torch stays 2.13 (about 20 s from PyPI's cache). ``MEDHUB_TOTALSEG_PYTHON``
  names an existing interpreter to reuse instead.
* The real weights (GitHub release zips) cannot be downloaded here. The worker half of this file
  (run with that venv's python) writes tiny nnU-Net models in TotalSegmentator's real release
  format: a zip per dataset (Dataset297 for fast, Dataset291-295 for full) holding
  ``<trainer>__nnUNetPlans__3d_fullres/{plans.json, dataset.json, fold_0/checkpoint_final.pth}``
  with a 2-stage PlainConvUNet of random but fixed weights and the real class names of each
  model in dataset.json. They reach the runner through medhub's weights manager (mirror folder →
  cache → SHA-256), and TotalSegmentator's own code loads and runs them.
* The adapter's result on medhub's Volume is compared with TotalSegmentator reading the same
  DICOM folder itself (its own dicom2nifti conversion): identical label maps. The input is a
  192x192x16 crop of the real abdominal CT: the test is about equivalence, not accuracy.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import zipfile
from pathlib import Path

import numpy as np
import pytest

from medhub.errors import MedhubError
from medhub.hub.catalog import get_model
from medhub.segdb import get_segment

HERE = Path(__file__).resolve()
VENV_PACKAGES_NO_DEPS = [
    "TotalSegmentator==2.18.0",
    "nnunetv2==2.8.1",
    "dynamic_network_architectures==0.4.4",
    "acvl-utils==0.2.6",
    "batchgenerators==0.25.5",
    "batchgeneratorsv2==0.3.6",
    "dicom2nifti==2.6.2",
]
VENV_PACKAGES = ["blosc2", "matplotlib", "seaborn", "einops", "yacs"]  # imported on the inference path; no torch
TRAINERS = {297: "nnUNetTrainer_4000epochs_NoMirroring", **dict.fromkeys(range(291, 296), "nnUNetTrainerNoMirroring")}
SPACING = {297: 3.0, **dict.fromkeys(range(291, 296), 1.5)}


# ============================================================================ worker (runs in the venv)


def _plans(dataset_name: str, spacing: float) -> dict:
    """A minimal nnU-Net v2 plans.json: one 3d_fullres configuration with a 2-stage PlainConvUNet."""
    conv = {
        "data_identifier": "nnUNetPlans_3d_fullres",
        "preprocessor_name": "DefaultPreprocessor",
        "batch_size": 2,
        "patch_size": [32, 64, 64],
        "median_image_size_in_voxels": [100, 160, 160],
        "spacing": [spacing] * 3,
        "normalization_schemes": ["CTNormalization"],
        "use_mask_for_norm": [False],
        "resampling_fn_data": "resample_data_or_seg_to_shape",
        "resampling_fn_seg": "resample_data_or_seg_to_shape",
        "resampling_fn_data_kwargs": {"is_seg": False, "order": 3, "order_z": 0, "force_separate_z": None},
        "resampling_fn_seg_kwargs": {"is_seg": True, "order": 1, "order_z": 0, "force_separate_z": None},
        "resampling_fn_probabilities": "resample_data_or_seg_to_shape",
        "resampling_fn_probabilities_kwargs": {"is_seg": False, "order": 1, "order_z": 0, "force_separate_z": None},
        "architecture": {
            "network_class_name": "dynamic_network_architectures.architectures.unet.PlainConvUNet",
            "arch_kwargs": {
                "n_stages": 2,
                "features_per_stage": [8, 16],
                "conv_op": "torch.nn.modules.conv.Conv3d",
                "kernel_sizes": [[3, 3, 3], [3, 3, 3]],
                "strides": [[1, 1, 1], [2, 2, 2]],
                "n_conv_per_stage": [1, 1],
                "n_conv_per_stage_decoder": [1],
                "conv_bias": True,
                "norm_op": "torch.nn.modules.instancenorm.InstanceNorm3d",
                "norm_op_kwargs": {"eps": 1e-05, "affine": True},
                "dropout_op": None,
                "dropout_op_kwargs": None,
                "nonlin": "torch.nn.LeakyReLU",
                "nonlin_kwargs": {"inplace": True},
            },
            "_kw_requires_import": ["conv_op", "norm_op", "dropout_op", "nonlin"],
        },
        "batch_dice": False,
    }
    return {
        "dataset_name": dataset_name,
        "plans_name": "nnUNetPlans",
        "original_median_spacing_after_transp": [spacing] * 3,
        "original_median_shape_after_transp": [100, 160, 160],
        "image_reader_writer": "SimpleITKIO",
        "transpose_forward": [0, 1, 2],
        "transpose_backward": [0, 1, 2],
        "configurations": {"3d_fullres": conv},
        "experiment_planner_used": "ExperimentPlanner",
        "label_manager": "LabelManager",
        "foreground_intensity_properties_per_channel": {
            "0": {"max": 3000.0, "mean": 90.0, "median": 60.0, "min": -1000.0,
                  "percentile_00_5": -950.0, "percentile_99_5": 1400.0, "std": 320.0}
        },
    }  # fmt: skip


def make_release_zip(dataset: int, folder_name: str, classes: dict[int, str], out: Path, seed: int) -> Path:
    """One TotalSegmentator release zip in the real layout, with a tiny network and the real class names."""
    import torch
    from nnunetv2.utilities.get_network_from_plans import get_network_from_plans

    plans = _plans(folder_name, SPACING[dataset])
    arch = plans["configurations"]["3d_fullres"]["architecture"]
    torch.manual_seed(seed)
    net = get_network_from_plans(
        arch["network_class_name"], arch["arch_kwargs"], arch["_kw_requires_import"],
        1, len(classes) + 1, allow_init=True, deep_supervision=False,
    )  # fmt: skip
    with torch.no_grad():  # background wins where the features are weak, so several classes share the volume
        net.decoder.seg_layers[-1].bias[0] += 2.0
    trainer = TRAINERS[dataset]
    checkpoint = {
        "network_weights": net.state_dict(),
        "trainer_name": trainer,
        "init_args": {"plans": plans, "configuration": "3d_fullres", "fold": 0, "dataset_json": {}},
        "inference_allowed_mirroring_axes": None,
    }
    dataset_json = {
        "channel_names": {"0": "CT"},
        "labels": {"background": 0, **{name: value for value, name in sorted(classes.items())}},
        "numTraining": 0,
        "file_ending": ".nii.gz",
    }
    staging = out.parent / f"staging_{dataset}" / folder_name / f"{trainer}__nnUNetPlans__3d_fullres"
    (staging / "fold_0").mkdir(parents=True, exist_ok=True)
    (staging / "plans.json").write_text(json.dumps(plans), encoding="utf-8")
    (staging / "dataset.json").write_text(json.dumps(dataset_json), encoding="utf-8")
    torch.save(checkpoint, staging / "fold_0" / "checkpoint_final.pth")
    with zipfile.ZipFile(out, "w") as archive:
        for path in sorted(staging.parent.rglob("*")):
            archive.write(path, path.relative_to(staging.parent.parent).as_posix())
    return out


def _register_trainers_without_timm() -> None:
    """Hand TotalSegmentator the two trainer classes of the total task directly.

    nnU-Net finds a trainer by importing every module under nnunetv2.training until one defines
    it; on the way it imports the Primus trainers, which need timm → torchvision, absent from this
    light venv (PyPI's torchvision wheels do not load with the CPU torch). The classes themselves
    and the PlainConvUNet need neither. TotalSegmentator's own ``custom_trainers`` table, which
    its lookup consults first, is the hook; with a full install (timm present) this changes nothing.
    """
    from nnunetv2.training.nnUNetTrainer.variants.data_augmentation.nnUNetTrainerNoMirroring import (
        nnUNetTrainerNoMirroring,
    )
    from nnunetv2.training.nnUNetTrainer.variants.training_length.nnUNetTrainer_Xepochs_NoMirroring import (
        nnUNetTrainer_4000epochs_NoMirroring,
    )
    from totalsegmentator import nnunet as ts_nnunet

    ts_nnunet.custom_trainers.setdefault("nnUNetTrainerNoMirroring", nnUNetTrainerNoMirroring)
    ts_nnunet.custom_trainers.setdefault("nnUNetTrainer_4000epochs_NoMirroring", nnUNetTrainer_4000epochs_NoMirroring)


def worker(mode: str, dicom_dir: Path, out_dir: Path) -> None:
    """Inside the venv: make the weights, run the adapter and TotalSegmentator's own DICOM path, save both."""
    import csv
    import importlib.resources
    import inspect

    import nibabel as nib
    from totalsegmentator.map_tasks_config import TASK_ID_WEIGHTS_CONFIGS
    from totalsegmentator.map_to_binary import class_map, class_map_5_parts
    from totalsegmentator.nnunet import map_taskid_to_partname_ct

    from medhub.hub.runtime import ModelRunner
    from medhub.hub.weights import sha256_file
    from medhub.inputs.load import load_series
    from medhub.inputs.scan import scan
    from medhub.models.totalsegmentator import runner as ts_runner

    _register_trainers_without_timm()
    fast = mode == "fast"
    datasets = ts_runner.FAST_DATASETS if fast else ts_runner.FULL_DATASETS
    mirror = Path(os.environ["MEDHUB_WEIGHTS_MIRROR"]) / "totalsegmentator"
    mirror.mkdir(parents=True, exist_ok=True)
    entry = get_model("totalsegmentator")
    pinned = {ts_runner.dataset_id(spec.name): spec for spec in entry.card.weights}
    for seed, ds in enumerate(datasets):
        folder = TASK_ID_WEIGHTS_CONFIGS[ds]["foldername"]
        classes = class_map["total"] if ds == 297 else class_map_5_parts[map_taskid_to_partname_ct[ds]]
        zip_path = make_release_zip(ds, folder, dict(classes), mirror / f"{folder}.zip", seed)
        if ds in pinned:  # the card pins these: declare the tiny zip's own SHA-256 instead
            pinned[ds] = pinned[ds].model_copy(update={"name": zip_path.name, "size": None, "sha256": sha256_file(
                zip_path), "url": f"http://127.0.0.1:9/{zip_path.name}"})
        else:  # found by name and size, as the runner does for the real unpinned zips
            ts_runner.UNPINNED[ds] = ts_runner.UnpinnedZip(zip_path.name, zip_path.stat().st_size)
    entry.card = entry.card.model_copy(update={"weights": list(pinned.values())})

    volume = load_series(scan(dicom_dir).series[0])
    runner = ModelRunner(entry)
    started = time.perf_counter()
    runner.load("cpu", {"fast": fast})
    loaded = time.perf_counter()
    prediction = runner.predict(volume, {})
    predicted = time.perf_counter()

    from totalsegmentator.python_api import totalsegmentator

    reference = None
    if fast:  # the adapter's code path is the same in both modes: compare once, keep CI short
        reference = totalsegmentator(dicom_dir, out_dir / "reference.nii.gz", ml=True, fast=True, task="total",
                                     device="cpu", quiet=True, nr_thr_saving=1)  # fmt: skip
    reference_seconds = time.perf_counter() - predicted
    ours_c = nib.as_closest_canonical(nib.Nifti1Image(prediction.labels, volume.affine_ras))
    ref_c = ours_c if reference is None else nib.as_closest_canonical(reference)
    np.savez_compressed(
        out_dir / "result.npz",
        ours=np.asarray(ours_c.dataobj), ours_affine=ours_c.affine,
        reference=np.asarray(ref_c.dataobj).astype(np.uint8), reference_affine=ref_c.affine,
    )  # fmt: skip
    with (
        importlib.resources.files("totalsegmentator")
        .joinpath("resources/totalsegmentator_snomed_mapping.csv")
        .open(encoding="utf-8") as handle
    ):
        snomed = {row["Structure"]: row for row in csv.DictReader(handle)}
    info = {
        "segments": {str(k): v for k, v in prediction.segments.items()},
        "class_map": {str(k): v for k, v in class_map["total"].items()},
        "snomed": snomed,
        "seconds": {"load": loaded - started, "predict": predicted - loaded, "reference": reference_seconds},
        "part_of": {
            name: map_taskid_to_partname_ct[ds]
            for ds in ts_runner.FULL_DATASETS
            for name in class_map_5_parts[map_taskid_to_partname_ct[ds]].values()
        },  # fmt: skip
        "results_dir": str(ts_runner.results_dir()),
        "home": os.environ["TOTALSEG_HOME_DIR"],
        # --roi-subset's hand-over, as the loaded runner builds it with the installed package's class map
        # (not run: the test is about the arguments the real python API takes)
        "roi_subset_arguments": runner.runner.upstream_arguments({"roi_subset": ["RIGHT_KIDNEY", "LIVER"]}),
        "upstream_parameters": sorted(inspect.signature(totalsegmentator).parameters),
    }
    (out_dir / "info.json").write_text(json.dumps(info), encoding="utf-8")


# ============================================================================ tests (run in the main environment)


def _venv_python(root: Path) -> Path:
    started = time.perf_counter()
    subprocess.run([sys.executable, "-m", "venv", "--system-site-packages", str(root)], check=True)
    python = root / "bin" / "python"
    # The main environment's (current) pip installs into the venv: the venv's bundled pip is older
    # and trips over metadata of packages it sees through --system-site-packages.
    pip = [sys.executable, "-m", "pip", "--python", str(python), "install", "-q", "--disable-pip-version-check"]
    subprocess.run([*pip, "--no-deps", *VENV_PACKAGES_NO_DEPS], check=True)
    subprocess.run([*pip, *VENV_PACKAGES], check=True)
    version = subprocess.run([str(python), "-c", "import torch; print(torch.__version__)"],
                             check=True, capture_output=True, text=True).stdout.strip()  # fmt: skip
    assert version.startswith("2.13"), f"the venv must keep the main environment's torch, got {version}"
    print(f"TotalSegmentator venv ready in {time.perf_counter() - started:.1f} s (torch {version})")
    return python


@pytest.fixture(scope="session")
def ts_python(tmp_path_factory) -> Path:
    given = os.environ.get("MEDHUB_TOTALSEG_PYTHON", "").strip()
    if given:
        return Path(given)
    return _venv_python(tmp_path_factory.mktemp("totalseg-venv") / "venv")


@pytest.fixture(scope="session")
def ct_crop(tmp_path_factory) -> Path:
    """192x192x16 crop of the real abdominal CT as an uncompressed DICOM series (both readers read it)."""
    from conftest import shared_path

    from medhub.inputs.load import load_series
    from medhub.inputs.scan import scan
    from medhub.inputs.synth import write_dicom_series

    volume = load_series(scan(shared_path("ct/totalsegmentator_example_ct_dicom")).series[0])
    affine = volume.affine_lps.copy()
    affine[:3, 3] = (volume.affine_lps @ np.array([160.0, 192.0, 2.0, 1.0]))[:3]
    out = tmp_path_factory.mktemp("totalseg-ct")
    write_dicom_series(volume.array[160:352, 192:384, 2:18], affine, out, modality="CT", series_description="crop")
    return out


def _run_worker(python: Path, mode: str, dicom_dir: Path, out: Path) -> dict:
    out.mkdir(parents=True, exist_ok=True)
    env = dict(os.environ, MEDHUB_WEIGHTS_CACHE=str(out / "cache"), MEDHUB_WEIGHTS_MIRROR=str(out / "mirror"))
    started = time.perf_counter()
    proc = subprocess.run([str(python), str(HERE), "--worker", mode, str(dicom_dir), str(out)],
                          env=env, capture_output=True, text=True, cwd=HERE.parent)  # fmt: skip
    assert proc.returncode == 0, f"worker failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-6000:]}"
    info = json.loads((out / "info.json").read_text(encoding="utf-8"))
    info["wall"] = time.perf_counter() - started
    with np.load(out / "result.npz") as data:
        info.update({key: data[key] for key in data.files})
    return info


@pytest.fixture(scope="session")
def fast_run(ts_python, ct_crop, tmp_path_factory) -> dict:
    return _run_worker(ts_python, "fast", ct_crop, tmp_path_factory.mktemp("totalseg-fast"))


@pytest.fixture(scope="session")
def full_run(ts_python, ct_crop, tmp_path_factory) -> dict:
    return _run_worker(ts_python, "full", ct_crop, tmp_path_factory.mktemp("totalseg-full"))


def _check_run(run: dict, mode: str) -> None:
    """Fast: the adapter equals TotalSegmentator's own run; both: labels ↔ card segments, a varied map."""
    assert run["ours"].shape == run["reference"].shape
    assert np.allclose(run["ours_affine"], run["reference_affine"], atol=1e-3)
    assert np.array_equal(run["ours"], run["reference"])
    present = [int(v) for v in np.unique(run["ours"]) if v != 0]
    classes = {int(k): v for k, v in run["class_map"].items()}
    card_segments = get_model("totalsegmentator").card.outputs.segments
    assert {int(k): v for k, v in run["segments"].items()} == {v: card_segments[v] for v in present}
    print(
        f"TotalSegmentator {mode}: adapter{' == TotalSegmentator on the same DICOM' if mode == 'fast' else ''} "
        f"on {run['ours'].shape}, "
        f"{len(present)} classes present ({', '.join(classes[v] for v in present[:6])}...); "
        f"load {run['seconds']['load']:.1f} s, predict {run['seconds']['predict']:.1f} s, "
        f"TotalSegmentator itself {run['seconds']['reference']:.1f} s, worker {run['wall']:.1f} s"
    )
    assert len(present) >= 3  # a spatially varying map, so orientation mistakes cannot pass as equal


@pytest.mark.slow
def test_fast_adapter_equals_totalsegmentator_on_the_same_dicom(fast_run):
    _check_run(fast_run, "fast")
    home = Path(fast_run["home"])
    assert json.loads((home / "config.json").read_text())["send_usage_stats"] is False
    assert (
        Path(fast_run["results_dir"]) / "Dataset297_TotalSegmentator_total_3mm_1559subj" / ".medhub-unpacked"
    ).is_file()


@pytest.mark.slow
def test_full_adapter_runs_the_five_models_and_maps_their_parts(full_run):
    _check_run(full_run, "full")
    classes = {int(k): v for k, v in full_run["class_map"].items()}
    present = {classes[int(v)] for v in np.unique(full_run["ours"]) if v != 0}
    # Classes from several of the five models (organs, vertebrae, cardiac, muscles, ribs) prove that their
    # local labels were merged into the total task's numbering by TotalSegmentator's own map.
    parts = {full_run["part_of"][name] for name in present}
    assert len(parts) >= 2, present


def test_roi_subset_reaches_the_installed_totalsegmentator_by_its_class_names(fast_run, full_run):
    """The runner's arguments are parameters of the installed python API, the names its class map's.

    Full mode hands the subset over as roi_subset_robust (located with Dataset297); fast mode does
    not (the hub filters). The prediction with a subset is not run here (see test_roi_subset.py).
    """
    full, fast = full_run["roi_subset_arguments"], fast_run["roi_subset_arguments"]
    assert set(full) <= set(full_run["upstream_parameters"]) and set(fast) <= set(fast_run["upstream_parameters"])
    assert full["roi_subset_robust"] == ["kidney_right", "liver"] and full["fast"] is False
    assert "roi_subset_robust" not in fast and "roi_subset" not in fast and fast["fast"] is True


@pytest.mark.slow
def test_every_total_class_maps_to_a_segment_with_totalsegmentators_own_snomed_code(fast_run):
    """All 117 classes of class_map["total"]: card label → segment ID whose codes agree with the package's CSV."""
    classes = {int(k): v for k, v in fast_run["class_map"].items()}
    card_segments = get_model("totalsegmentator").card.outputs.segments
    assert len(classes) == 117 and set(card_segments) == set(classes)
    # Where pydicom lacks the package's code (or gives it another meaning), segdb has a parent concept.
    parent = {"vertebrae_S1", "atrial_appendage_left", "portal_vein_and_splenic_vein", "subclavian_artery_left",
              "subclavian_artery_right", "autochthon_left", "autochthon_right"}  # fmt: skip
    parent |= {n for n in classes.values() if n.startswith(("gluteus_", "iliopsoas_", "rib_"))}
    for value, name in classes.items():
        spec = get_segment(card_segments[value])
        row = fast_run["snomed"][name]
        expected_side = row["SegmentedPropertyTypeModifierCodeSequence.CodeMeaning"] or None
        side = name.rsplit("_", 1)[-1] if name.rsplit("_", 1)[-1] in ("left", "right") else None
        side = side or ("left" if name.startswith("rib_left") else "right" if name.startswith("rib_right") else None)
        if expected_side:
            assert spec.modifier is not None and spec.modifier.meaning == expected_side, name
        if side:
            assert spec.modifier is not None and spec.modifier.meaning.lower() == side, name
        if name in parent:
            continue
        assert spec.type.value == row["SegmentedPropertyTypeCodeSequence.CodeValue"], (name, spec.type)


def test_missing_weights_give_the_one_line_error(tmp_path, monkeypatch):
    """Runs in the main environment: the weights are resolved before TotalSegmentator is imported."""
    monkeypatch.setenv("MEDHUB_WEIGHTS_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("MEDHUB_WEIGHTS_MIRROR", str(tmp_path / "mirror"))
    from medhub.hub.runtime import ModelRunner

    entry = get_model("totalsegmentator")
    real = [f for f in entry.card.weights if f.name.startswith("Dataset297_")]
    assert real and real[0].url.startswith("https://github.com/wasserth/TotalSegmentator/releases/download/")
    offline = [f.model_copy(update={"url": "http://127.0.0.1:9/" + f.name}) for f in entry.card.weights]
    entry.card = entry.card.model_copy(update={"weights": offline})
    with pytest.raises(MedhubError) as info:
        ModelRunner(entry).load("cpu", {"fast": True})
    message = str(info.value)
    assert "\n" not in message
    assert "Dataset297_TotalSegmentator_total_3mm_1559subj.zip" in message and "http://127.0.0.1:9/" in message
    assert f"MEDHUB_WEIGHTS_MIRROR={tmp_path / 'mirror'}" in message
    assert (
        str(tmp_path / "mirror" / "totalsegmentator" / "Dataset297_TotalSegmentator_total_3mm_1559subj.zip") in message
    )


def test_unpinned_full_resolution_zips_are_found_by_size_or_named_in_one_line(tmp_path, monkeypatch):
    monkeypatch.setenv("MEDHUB_WEIGHTS_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("MEDHUB_WEIGHTS_MIRROR", str(tmp_path / "mirror"))
    from medhub.models.totalsegmentator import runner as ts_runner

    item = ts_runner.UnpinnedZip("Dataset292_TotalSegmentator_part2_vertebrae_1532subj.zip", 5)
    assert item.url == ts_runner._RELEASE + item.name and ts_runner.UNPINNED[292].name == item.name
    with pytest.raises(MedhubError) as info:
        ts_runner._resolve_unpinned(item)
    message = str(info.value)
    assert "\n" not in message and item.url in message and "SHA-256 is not known" in message
    assert str(tmp_path / "mirror" / "totalsegmentator" / item.name) in message
    wrong = tmp_path / "mirror" / "totalsegmentator" / item.name
    wrong.parent.mkdir(parents=True)
    wrong.write_bytes(b"123456")  # wrong size: not taken
    with pytest.raises(MedhubError, match="not found"):
        ts_runner._resolve_unpinned(item)
    wrong.write_bytes(b"12345")
    cached = ts_runner._resolve_unpinned(item)  # the right size: copied into the cache, content unchecked
    assert cached == tmp_path / "cache" / "totalsegmentator" / item.name and cached.read_bytes() == b"12345"


def test_card_pins_the_fast_and_first_full_models_with_their_recorded_hashes():
    card = get_model("totalsegmentator").card
    assert {w.name.split("_")[0] for w in card.weights} == {"Dataset297", "Dataset291"}
    # the hub fetches only the mode's zip: fast mode must not need the full model's 234 MB, nor the reverse
    assert [w.name.split("_")[0] for w in card.weights if w.needed({"fast": True})] == ["Dataset297"]
    assert [w.name.split("_")[0] for w in card.weights if w.needed({"fast": False})] == ["Dataset291"]
    assert set(get_model("totalsegmentator").workflows) == {"default", "full"}


if __name__ == "__main__" and len(sys.argv) == 5 and sys.argv[1] == "--worker":
    worker(sys.argv[2], Path(sys.argv[3]), Path(sys.argv[4]))
