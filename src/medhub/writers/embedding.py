"""Writing an embedding: ``<base>.embedding.npy`` (+ feature map) and a JSON sidecar, atomically.

The sidecar says what the vector is without medhub: model, version, weights, preprocessing,
the source images (UIDs or NIfTI path) and the cache key (:mod:`medhub.hub.embeddings`).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

import medhub
from medhub.data.embedding import EmbeddingResult
from medhub.data.volume import Volume
from medhub.files import atomic_output


def source_description(volume: Volume) -> dict[str, Any]:
    """Which images the vector came from: series/study UIDs, SOP instance UIDs, or the NIfTI path.

    Falls back to the file meta's MediaStorageSOPInstanceUID where a dataset's own UID is empty
    (seen in real exports), so the sidecar still names the source instances.
    """
    described: dict[str, Any] = {
        "series_instance_uids": [], "study_instance_uids": [], "sop_instance_uids": [],
        "series_key": volume.metadata.get("series_key", ""), "path": volume.metadata.get("path", ""),
    }
    if volume.source is None:
        return described
    buckets = (("SeriesInstanceUID", "series_instance_uids"), ("StudyInstanceUID", "study_instance_uids"))
    for dataset in volume.source.datasets:
        for attr, bucket in buckets:
            uid = str(dataset.get(attr, "") or "")
            if uid and uid not in described[bucket]:
                described[bucket].append(uid)
        sop = str(dataset.get("SOPInstanceUID", "") or "")
        if not sop and getattr(dataset, "file_meta", None) is not None:
            sop = str(dataset.file_meta.get("MediaStorageSOPInstanceUID", "") or "")
        if sop:
            described["sop_instance_uids"].append(sop)
    return described


def sidecar(result: EmbeddingResult, volume: Volume) -> dict[str, Any]:
    """The JSON written next to the vector: enough to know what it is without medhub."""
    data: dict[str, Any] = {
        "model": result.model,
        "version": result.version,
        "weights_sha256": result.weights_sha256,
        "dimension": result.dimension,
        "dtype": "float32",
        "preprocessing": result.preprocessing,
        "source": source_description(volume),
        "input_shape": list(volume.array.shape),
        "input_hash": result.input_hash,
        "cache_key": result.key,
        "cached": result.cached,
        "medhub_version": medhub.__version__,
    }
    if result.feature_map is not None:
        data["feature_map_shape"] = list(result.feature_map.shape)
    return data


def write_embedding(base: Path, result: EmbeddingResult, volume: Volume) -> list[Path]:
    """Write ``<base>.embedding.npy`` (+ ``<base>.feature_map.npy``) and ``<base>.embedding.json``, atomically.

    Returns the written paths, JSON last: a reader that finds the sidecar finds its arrays too.
    """

    written: list[Path] = []
    arrays = [(".embedding.npy", result.vector)]
    if result.feature_map is not None:
        arrays.append((".feature_map.npy", result.feature_map))
    for suffix, array in arrays:
        final = base.with_name(base.name + suffix)
        with atomic_output(final) as temporary, open(temporary, "wb") as handle:
            np.save(handle, array, allow_pickle=False)
        written.append(final)
    final = base.with_name(base.name + ".embedding.json")
    with atomic_output(final) as temporary:
        temporary.write_text(json.dumps(sidecar(result, volume), indent=2) + "\n", encoding="utf-8")
    written.append(final)
    return written
