"""Embedding models: one feature vector per series, a content-addressed cache, and the files written.

Why a model type of its own: a foundation encoder (``ct-fm-astra``) produces no label map but a
vector that other things consume: few-shot heads (``medhub heads``), similarity search,
cohort analysis. Computing it costs seconds per series, and training a head twice must not
compute it twice, so every vector is cached by what determines it:

    key = SHA-256( input voxels (dtype, shape, bytes) + affine + model id + model version
                   + weights SHA-256 + preprocessing parameters + this file's format version )

The cache lives in ``$MEDHUB_CACHE/embeddings`` (else ``$XDG_CACHE_HOME/medhub/embeddings``,
else ``~/.cache/medhub/embeddings``), one ``<key>.npz`` per embedding, written atomically. A
different volume, weights file or preprocessing gives a different key, so a stale entry is
never served; deleting the folder is always safe.

For other code (the heads engineer, the API), the one call to know is::

    from medhub.hub.embeddings import embed
    result = embed("ct-fm-astra", volume)          # -> EmbeddingResult
    result.vector        # float32 (2048,), result.cached says whether it came from the cache

A runner is an embedding model when it implements :class:`EmbeddingModel` (``identity``,
``preprocessing``, ``compute``) and returns ``Prediction(labels=None, embedding=result)`` from
``predict`` (build it with :func:`embed_with`); the pipeline then writes
``<base>.embedding.npy`` + ``<base>.embedding.json`` (:mod:`medhub.writers.embedding`) instead of a
SEG/RTSTRUCT.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import time
import zipfile
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import numpy as np

from medhub import config
from medhub.data.embedding import EmbeddingResult
from medhub.data.volume import Volume
from medhub.errors import MedhubError, SeriesSkipped
from medhub.files import atomic_output
from medhub.hub.catalog import get_model, list_models
from medhub.hub.runtime import loaded_runner
from medhub.hub.workflow import load_workflow_file

#: Bumped when the cache entry layout or the key's ingredients change: old entries are then ignored.
FORMAT_VERSION = 1
_HASH_BLOCK = 1 << 24


@runtime_checkable
class EmbeddingModel(Protocol):
    """What a runner implements to be an embedding model (besides ``load``/``predict``)."""

    def identity(self) -> dict[str, str]:
        """``{"model": id, "version": card version, "weights_sha256": ...}``: what makes its output what it is."""

    def preprocessing(self, params: dict[str, Any]) -> dict[str, Any]:
        """Every preprocessing parameter that changes the output (JSON-ready), for the key and the sidecar."""

    def compute(
        self, volume: Volume, params: dict[str, Any], *, feature_map: bool
    ) -> tuple[np.ndarray, np.ndarray | None]:
        """The vector (1D float32) and, when asked, the pooled feature map, for one volume."""


# --------------------------------------------------------------------------- keys


def embeddings_cache_dir() -> Path:
    """``$MEDHUB_CACHE/embeddings``, else ``$XDG_CACHE_HOME/medhub/embeddings``, else ``~/.cache/medhub/embeddings``."""
    return config.settings().embeddings_cache


def input_hash(volume: Volume) -> str:
    """SHA-256 of what the model sees of a volume: voxel dtype, shape and bytes, and the affine.

    The affine matters: the same voxels mirrored in space give a different RAS volume. The
    voxels are hashed in Fortran (x-fastest) order whatever their memory layout, so equal
    content gives an equal hash; medhub's DICOM and NIfTI loaders produce that layout already,
    so no copy is made (a C-order copy of a 512x512x140 CT costs 20 times the hash itself).
    """
    digest = hashlib.sha256()
    array = np.asfortranarray(volume.array)
    digest.update(f"{array.dtype.str}|{array.shape}|F|".encode())
    flat = array.reshape(-1, order="F").view(np.uint8)
    for start in range(0, flat.size, _HASH_BLOCK):
        digest.update(flat[start:start + _HASH_BLOCK].data)  # the block's memory, not a copy
    digest.update(np.ascontiguousarray(volume.affine_lps, dtype="<f8").tobytes())
    return digest.hexdigest()


def cache_key(identity: dict[str, str], preprocessing: dict[str, Any], content: str) -> str:
    """The cache key of one (model, preprocessing, input) triple."""
    recipe = {"format": FORMAT_VERSION, "identity": identity, "preprocessing": preprocessing, "input": content}
    return hashlib.sha256(json.dumps(recipe, sort_keys=True, separators=(",", ":")).encode()).hexdigest()


# --------------------------------------------------------------------------- the cache


class EmbeddingCache:
    """``<root>/<key[:2]>/<key>.npz`` holding ``vector`` (and ``feature_map`` when it was computed)."""

    def __init__(self, root: Path | None = None) -> None:
        self.root = root or embeddings_cache_dir()

    def path(self, key: str) -> Path:
        return self.root / key[:2] / f"{key}.npz"

    def get(self, key: str, *, feature_map: bool = False) -> tuple[np.ndarray, np.ndarray | None] | None:
        """The cached arrays, or None on a miss (also when a feature map is wanted but was not stored).

        An unreadable entry (truncated by a full disk, say) counts as a miss and is removed.
        """
        path = self.path(key)
        try:
            with np.load(path, allow_pickle=False) as data:
                vector = np.array(data["vector"])
                fmap = np.array(data["feature_map"]) if "feature_map" in data.files else None
        except FileNotFoundError:
            return None
        except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile):
            path.unlink(missing_ok=True)
            return None
        if feature_map and fmap is None:
            return None
        return vector, fmap

    def put(self, key: str, vector: np.ndarray, feature_map: np.ndarray | None) -> None:
        """Store atomically (temp file + rename); a read-only or full cache is not an error, just no cache."""
        with contextlib.suppress(OSError), atomic_output(self.path(key)) as temporary, open(temporary, "wb") as handle:
            if feature_map is None:
                np.savez(handle, vector=vector)
            else:
                np.savez(handle, vector=vector, feature_map=feature_map)


# --------------------------------------------------------------------------- computing


def embed_with(
    runner: EmbeddingModel,
    volume: Volume,
    params: dict[str, Any] | None = None,
    *,
    cache: bool = True,
    feature_map: bool = False,
    store: EmbeddingCache | None = None,
) -> EmbeddingResult:
    """Embed one volume with a loaded embedding runner, through the cache unless ``cache=False``.

    ``cache=False`` neither reads nor writes the cache (for determinism checks and benchmarks).
    """
    params = dict(params or {})
    identity = runner.identity()
    if volume.array.ndim != 3:
        raise SeriesSkipped(f"{identity.get('model')} needs a 3D volume, got an array of shape {volume.array.shape}")
    preprocessing = runner.preprocessing(params)
    content = input_hash(volume)
    key = cache_key(identity, preprocessing, content)
    store = store or EmbeddingCache()
    started = time.perf_counter()
    found = store.get(key, feature_map=feature_map) if cache else None
    if found is not None:
        vector, fmap = found
    else:
        vector, fmap = runner.compute(volume, params, feature_map=feature_map)
        vector = np.ascontiguousarray(vector, dtype=np.float32)
        if vector.ndim != 1 or not np.all(np.isfinite(vector)):
            raise MedhubError(f"model {identity.get('model')}: embedding is not a finite 1D vector "
                              f"(shape {vector.shape})")
        if fmap is not None:
            fmap = np.ascontiguousarray(fmap, dtype=np.float32)
        if cache:
            store.put(key, vector, fmap)
    return EmbeddingResult(
        vector=vector,
        feature_map=fmap if feature_map else None,
        cached=found is not None,
        key=key,
        model=identity.get("model", ""),
        version=identity.get("version", ""),
        input_hash=content,
        preprocessing=preprocessing,
        weights_sha256=identity.get("weights_sha256", ""),
        seconds=round(time.perf_counter() - started, 4),
    )


def embed(
    model_id: str,
    volume: Volume,
    *,
    cache: bool = True,
    feature_map: bool = False,
    device: str = "cpu",
    params: dict[str, Any] | None = None,
) -> EmbeddingResult:
    """Embed one volume with a catalog model (``"ct-fm-astra"``): the entry point for heads and services.

    The runner is loaded once per process and device (shared with ``medhub run`` in the same
    process); ``params`` override the model's default workflow ``predict`` parameters. Raises
    MedhubError when the model is not an embedding model or cannot be loaded.
    """
    entry = get_model(model_id)
    merged = entry.card.parameter_defaults()
    if "default" in entry.workflows:
        merged.update(load_workflow_file(entry.workflows["default"]).params("predict"))
    merged.update(params or {})
    runner = loaded_runner(entry, device, merged).runner
    if not isinstance(runner, EmbeddingModel):
        raise MedhubError(f"model {entry.id} is not an embedding model (its runner has no identity/preprocessing/"
                          f"compute); embedding models: {', '.join(embedding_models()) or 'none'}")
    return embed_with(runner, volume, merged, cache=cache, feature_map=feature_map)


def embedding_models() -> list[str]:
    """Ids of the catalog models whose card outputs an embedding (``outputs.values`` has ``embedding_dimension``)."""
    return [card.id for card in list_models() if any(v.name == "embedding_dimension" for v in card.outputs.values)]


