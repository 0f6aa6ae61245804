"""The embedding model type: cache keys, the content cache, the files written, and the pipeline hook.

These tests use a small deterministic embedding model defined here (no network weights), so
that cache hits and misses can be counted exactly; the real encoder on real CT is tested in
test_ct_fm_astra.py.
"""

from __future__ import annotations

import json
import textwrap
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np
import pytest
from conftest import shared_path

from medhub.data.volume import LPS_TO_RAS, Volume
from medhub.errors import MedhubError
from medhub.hub.catalog import entry_from_folder
from medhub.hub.embeddings import (
    EmbeddingCache,
    EmbeddingModel,
    cache_key,
    embed_with,
    embeddings_cache_dir,
    input_hash,
)
from medhub.hub.workflow import load_workflow_file
from medhub.inputs.load import load_series
from medhub.inputs.nifti import load_nifti
from medhub.inputs.scan import scan
from medhub.inputs.synth import write_dicom_series
from medhub.pipeline.report import Status
from medhub.pipeline.run import RunOptions, run
from medhub.writers.embedding import write_embedding


class CountingEmbedder:
    """A deterministic embedding model that counts how often it really computes."""

    def __init__(self, version: str = "1") -> None:
        self.version = version
        self.calls = 0

    def identity(self) -> dict[str, str]:
        return {"model": "counting", "version": self.version, "weights_sha256": "0" * 64}

    def preprocessing(self, params: dict[str, Any]) -> dict[str, Any]:
        return {"scale": float(params.get("scale", 1.0))}

    def compute(self, volume: Volume, params: dict[str, Any], *, feature_map: bool
                ) -> tuple[np.ndarray, np.ndarray | None]:
        self.calls += 1
        data = volume.array.astype(np.float32) * float(params.get("scale", 1.0))
        vector = np.array([data.mean(), data.std(), data.max(), data.min()], dtype=np.float32)
        return vector, (data[:2, :2, :2].copy() if feature_map else None)


def _volume(seed: int = 0) -> Volume:
    rng = np.random.default_rng(seed)
    affine = np.diag([0.8, 0.8, 2.0, 1.0])
    affine[:3, 3] = [-100.0, -120.0, 30.0]
    return Volume(array=rng.integers(-1024, 1500, size=(24, 20, 12), dtype=np.int16), affine_lps=affine,
                  modality="CT")


def test_the_counting_model_is_an_embedding_model():
    assert isinstance(CountingEmbedder(), EmbeddingModel)
    assert not isinstance(object(), EmbeddingModel)


def test_second_embedding_of_the_same_volume_comes_from_the_cache(tmp_path):
    model, store, volume = CountingEmbedder(), EmbeddingCache(tmp_path), _volume()
    first = embed_with(model, volume, store=store)
    second = embed_with(model, volume, store=store)
    assert (first.cached, second.cached, model.calls) == (False, True, 1)
    assert np.array_equal(first.vector, second.vector) and second.vector.dtype == np.float32
    assert first.key == second.key and store.path(first.key).is_file()
    assert first.input_hash == input_hash(volume) and first.dimension == 4
    # an equal volume built anew (not the same object) hits the same entry
    assert embed_with(model, _volume(), store=store).cached


def test_key_changes_with_voxels_affine_version_and_preprocessing(tmp_path):
    volume = _volume()
    changed_voxel = _volume()
    changed_voxel.array[3, 4, 5] += 1
    mirrored = _volume()
    mirrored.affine_lps = mirrored.affine_lps @ np.diag([-1.0, 1.0, 1.0, 1.0])
    retyped = Volume(array=volume.array.astype(np.int32), affine_lps=volume.affine_lps)
    keys = {
        embed_with(CountingEmbedder(), volume, store=EmbeddingCache(tmp_path)).key,
        embed_with(CountingEmbedder(), changed_voxel, store=EmbeddingCache(tmp_path)).key,
        embed_with(CountingEmbedder(), mirrored, store=EmbeddingCache(tmp_path)).key,
        embed_with(CountingEmbedder(), retyped, store=EmbeddingCache(tmp_path)).key,
        embed_with(CountingEmbedder("2"), volume, store=EmbeddingCache(tmp_path)).key,
        embed_with(CountingEmbedder(), volume, {"scale": 2.0}, store=EmbeddingCache(tmp_path)).key,
    }
    assert len(keys) == 6
    # the memory layout is not content: a C-ordered and a Fortran-ordered copy share the key
    fortran = Volume(array=np.asfortranarray(volume.array), affine_lps=volume.affine_lps)
    assert volume.array.flags["C_CONTIGUOUS"] and fortran.array.flags["F_CONTIGUOUS"]
    assert input_hash(fortran) == input_hash(volume)
    identity = CountingEmbedder().identity()
    assert cache_key(identity, {"a": 1, "b": 2}, "x") == cache_key(identity, {"b": 2, "a": 1}, "x")


def test_cache_false_neither_reads_nor_writes(tmp_path):
    model, store, volume = CountingEmbedder(), EmbeddingCache(tmp_path), _volume()
    result = embed_with(model, volume, cache=False, store=store)
    assert not result.cached and not store.path(result.key).exists()
    embed_with(model, volume, store=store)  # fills the cache
    assert not embed_with(model, volume, cache=False, store=store).cached
    assert model.calls == 3


def test_feature_map_asked_after_a_vector_only_entry_is_computed_then_cached(tmp_path):
    model, store, volume = CountingEmbedder(), EmbeddingCache(tmp_path), _volume()
    assert embed_with(model, volume, store=store).feature_map is None
    with_map = embed_with(model, volume, store=store, feature_map=True)
    assert not with_map.cached and with_map.feature_map is not None and with_map.feature_map.shape == (2, 2, 2)
    again = embed_with(model, volume, store=store, feature_map=True)
    assert again.cached and np.array_equal(again.feature_map, with_map.feature_map)
    assert embed_with(model, volume, store=store).feature_map is None  # not asked for, not returned
    assert model.calls == 2


def test_corrupt_cache_entry_is_a_miss_and_is_replaced(tmp_path):
    model, store, volume = CountingEmbedder(), EmbeddingCache(tmp_path), _volume()
    key = embed_with(model, volume, store=store).key
    store.path(key).write_bytes(b"PK\x03\x04 truncated")
    result = embed_with(model, volume, store=store)
    assert not result.cached and model.calls == 2
    assert embed_with(model, volume, store=store).cached
    assert not list(tmp_path.rglob("*.partial"))


def test_non_finite_vector_is_refused(tmp_path):
    class Broken(CountingEmbedder):
        def compute(self, volume, params, *, feature_map):
            return np.array([np.nan, 1.0], np.float32), None

    with pytest.raises(MedhubError, match="not a finite 1D vector"):
        embed_with(Broken(), _volume(), store=EmbeddingCache(tmp_path))
    assert not list(tmp_path.rglob("*.npz"))


def test_cache_folder_follows_medhub_cache_then_xdg(monkeypatch, tmp_path):
    monkeypatch.setenv("MEDHUB_CACHE", str(tmp_path / "mc"))
    assert embeddings_cache_dir() == (tmp_path / "mc" / "embeddings").resolve()
    monkeypatch.delenv("MEDHUB_CACHE")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert embeddings_cache_dir() == (tmp_path / "xdg" / "medhub" / "embeddings").resolve()
    assert EmbeddingCache().root == embeddings_cache_dir()


def test_write_embedding_writes_npy_and_a_sidecar_that_describes_it(tmp_path):
    volume = _volume()
    result = embed_with(CountingEmbedder(), volume, store=EmbeddingCache(tmp_path / "c"), feature_map=True)
    paths = write_embedding(tmp_path / "out" / "S1" / "counting", result, volume)
    assert [p.name for p in paths] == ["counting.embedding.npy", "counting.feature_map.npy", "counting.embedding.json"]
    assert np.array_equal(np.load(paths[0]), result.vector)
    assert np.array_equal(np.load(paths[1]), result.feature_map)
    meta = json.loads(paths[2].read_text())
    assert meta["model"] == "counting" and meta["version"] == "1" and meta["dimension"] == 4
    assert meta["preprocessing"] == {"scale": 1.0} and meta["input_hash"] == input_hash(volume)
    assert meta["cache_key"] == result.key and meta["feature_map_shape"] == [2, 2, 2]
    assert meta["source"]["series_instance_uids"] == [] and meta["input_shape"] == [24, 20, 12]
    assert not list((tmp_path / "out").rglob("*.partial"))


# ---------------------------------------------------------------- the pipeline hook, through a model package

_CARD = """\
id: counting-embedder
name: counting-embedder
title: "Test embedding model"
description: "Mean, std, max and min of the voxels, as an embedding model (tests only)."
version: "1"
task: embedding
modality: [CT]
body_part: CHEST
inputs:
  - query: "dicom:mod=ct"
outputs:
  values:
    - name: embedding_dimension
      type: int
architecture: "statistics"
training_type: algorithmic
licence: {code: Apache-2.0, weights: none}
source: "tests/test_embeddings.py"
"""

_RUNNER = '''\
from medhub.hub.embeddings import embed_with
import medhub
import numpy as np


class Runner(medhub.Runner):
    def identity(self):
        return {"model": "counting-embedder", "version": "1", "weights_sha256": ""}

    def preprocessing(self, params):
        return {}

    def compute(self, volume, params, *, feature_map):
        data = volume.array.astype(np.float32)
        return np.array([data.mean(), data.std(), data.max(), data.min()], np.float32), None

    def predict(self, volume, params):
        result = embed_with(self, volume, params, cache=bool(params.get("cache", True)))
        return medhub.Prediction(values={"embedding_dimension": result.dimension}, embedding=result)
'''

_WORKFLOW = """\
general: {name: default}
execute: [select, load, predict]
modules:
  select: {input: "dicom:mod=ct"}
"""


@pytest.fixture
def embedding_entry(tmp_path, monkeypatch):
    package = tmp_path / "pkgs" / "counting_embedder_pkg"
    (package / "workflows").mkdir(parents=True)
    (package / "__init__.py").write_text("")
    (package / "card.yaml").write_text(_CARD)
    (package / "runner.py").write_text(textwrap.dedent(_RUNNER))
    (package / "workflows" / "default.yml").write_text(_WORKFLOW)
    monkeypatch.syspath_prepend(str(tmp_path / "pkgs"))
    monkeypatch.setenv("MEDHUB_CACHE", str(tmp_path / "cache"))
    return entry_from_folder(package, "counting_embedder_pkg")


def _run(entry, source: Path, out: Path):
    workflow = load_workflow_file(entry.workflows["default"])
    return run(entry, RunOptions(input_path=source, output_dir=out, workflow=workflow))


def test_pipeline_writes_embedding_files_for_a_real_ct_series_and_reuses_the_cache(embedding_entry, tmp_path):
    """Real CT DICOM (20 slices, no UIDs in the datasets) through the whole pipeline with an embedding model."""
    source = shared_path("ct/totalsegmentator_example_ct_dicom")
    report = _run(embedding_entry, source, tmp_path / "out1")
    (entry,) = report.series
    assert entry.status == Status.SUCCEEDED, entry.reason
    assert sorted(Path(o).name for o in entry.outputs) == ["counting-embedder.embedding.json",
                                                           "counting-embedder.embedding.npy"]
    assert entry.values == {"embedding_dimension": 4} and "write_embedding" in entry.timings
    written = sorted(p.name for p in (tmp_path / "out1").rglob("*") if p.is_file())
    assert not any(name.endswith((".dcm", ".nii", ".nii.gz")) for name in written)  # no label outputs
    volume = load_series(scan(source).series[0])
    vector = np.load(tmp_path / "out1" / entry.outputs[0])
    data = volume.array.astype(np.float32)
    assert np.array_equal(vector, np.array([data.mean(), data.std(), data.max(), data.min()], np.float32))
    meta = json.loads((tmp_path / "out1" / entry.outputs[1]).read_text())
    assert len(meta["source"]["sop_instance_uids"]) == 20 and meta["input_hash"] == input_hash(volume)
    assert meta["cached"] is False

    again = _run(embedding_entry, source, tmp_path / "out2").series[0]
    assert again.status == Status.SUCCEEDED
    assert any("read from the cache" in note for note in again.notes)
    assert json.loads((tmp_path / "out2" / again.outputs[1]).read_text())["cached"] is True


def test_pipeline_writes_embedding_files_for_nifti_input(embedding_entry, tmp_path):
    volume = _volume(3)
    path = tmp_path / "case.nii.gz"
    nib.save(nib.Nifti1Image(volume.array, LPS_TO_RAS @ volume.affine_lps), path)
    report = _run(embedding_entry, path, tmp_path / "out")
    (entry,) = report.series
    assert entry.status == Status.SUCCEEDED, entry.reason
    assert [Path(o).name for o in entry.outputs] == ["counting-embedder.embedding.npy",
                                                     "counting-embedder.embedding.json"]
    meta = json.loads((tmp_path / "out" / entry.outputs[1]).read_text())
    assert meta["source"]["path"] == str(path)
    assert meta["input_hash"] == input_hash(load_nifti(path))  # the affine as NIfTI stores it (float32)


def test_synthetic_series_embedding_matches_its_volume(embedding_entry, tmp_path):
    """A DICOM series written by medhub (with UIDs): the sidecar names its series and study."""
    volume = _volume(5)
    paths = write_dicom_series(volume.array, volume.affine_lps, tmp_path / "dicom", modality="CT")
    (entry,) = _run(embedding_entry, tmp_path / "dicom", tmp_path / "out").series
    assert entry.status == Status.SUCCEEDED, entry.reason
    meta = json.loads((tmp_path / "out" / entry.outputs[1]).read_text())
    import pydicom

    first = pydicom.dcmread(paths[0], stop_before_pixels=True)
    assert meta["source"]["series_instance_uids"] == [first.SeriesInstanceUID]
    assert meta["source"]["study_instance_uids"] == [first.StudyInstanceUID]
    assert len(meta["source"]["sop_instance_uids"]) == len(paths)
