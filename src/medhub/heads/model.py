"""A head on disk: card + scikit-learn pipeline (skops) + what it was trained on + its metrics.

A head folder is a catalog model folder (``card.yaml``, ``workflows/default.yml``) plus:

``head.skops``
    the fitted scikit-learn pipeline (StandardScaler + classifier), in skops' format rather
    than pickle/joblib: loading it cannot run code, so a head shared between people is data,
    not a program. Only types skops trusts by default (scikit-learn, numpy) are accepted.
``head.json``
    the encoder (id and version) the features come from, the classes in column order, the
    feature dimension, the classifier kind, library versions and the SHA-256 of ``head.skops``
    (checked on load, like any weights file).
``metrics.json``
    the cross-validated metrics of training (:mod:`medhub.heads.metrics`).
``training.csv``
    the labelled cases the head was trained on (as written in labels.csv, the resolved
    series and the embedding cache key), so a result can be traced to its training data.

A head is written into a temporary sibling folder and renamed into place, so a crash never
leaves a half-written head that the catalog would list.
"""

from __future__ import annotations

import csv
import hashlib
import json
import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from medhub.errors import MedhubError
from medhub.hub.card import ModelCard, load_card

CARD_FILE = "card.yaml"
HEAD_FILE = "head.skops"
META_FILE = "head.json"
METRICS_FILE = "metrics.json"
CASES_FILE = "training.csv"
WORKFLOW_FILE = "workflows/default.yml"
FORMAT_VERSION = 1

DEFAULT_WORKFLOW: dict[str, Any] = {
    "general": {"name": "default", "description": "embed the series, apply the head, write JSON/CSV and a DICOM SR"},
    "execute": ["select", "load", "predict", "write_sr"],
    "modules": {},
}


def head_parameters(name: str) -> dict[str, Any]:
    """The one predict parameter of a head's card: which head a runner made without its folder loads."""
    return {"head": {"type": "string", "default": name, "choices": [name],
                     "description": "the head this card describes (its workflow sets it for a runner made "
                                    "without the head folder)"}}


@dataclass
class Head:
    """A loaded head: ``predict_proba`` maps embeddings (n x dim) to probabilities (n x classes)."""

    path: Path
    card: ModelCard
    pipeline: Any  # sklearn.pipeline.Pipeline
    meta: dict[str, Any]
    metrics: dict[str, Any]

    @property
    def name(self) -> str:
        return self.card.id

    @property
    def classes(self) -> list[str]:
        return list(self.meta["classes"])

    @property
    def encoder(self) -> str:
        return str(self.meta["encoder"])

    def predict_proba(self, features: np.ndarray) -> np.ndarray:
        """Class probabilities, columns in :attr:`classes` order, each row summing to 1."""
        x = np.asarray(features, dtype=np.float64)
        if x.ndim == 1:
            x = x[None, :]
        if x.shape[1] != int(self.meta["dimension"]):
            raise MedhubError(f"head {self.name}: features of dimension {x.shape[1]}, "
                              f"the head was trained on {self.meta['dimension']} ({self.encoder})")
        probs = np.asarray(self.pipeline.predict_proba(x), dtype=np.float64)
        order = [list(map(str, self.pipeline.classes_)).index(c) for c in self.classes]
        return probs[:, order]


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def save_head(folder: Path, card: ModelCard, pipeline: Any, meta: dict[str, Any], metrics: dict[str, Any],
              cases: list[dict[str, str]], *, replace: bool = False) -> Path:
    """Write a head folder atomically and return it; refuses to overwrite unless ``replace``."""
    import skops.io as sio

    folder = Path(folder)
    if folder.exists() and not replace:
        raise MedhubError(f"a head named '{card.id}' already exists at {folder} (use --force to replace it)")
    folder.parent.mkdir(parents=True, exist_ok=True)
    staging = folder.with_name(f".{folder.name}.{os.getpid()}.partial")
    shutil.rmtree(staging, ignore_errors=True)
    (staging / "workflows").mkdir(parents=True)
    try:
        blob = sio.dumps(pipeline)
        (staging / HEAD_FILE).write_bytes(blob)
        full_meta = {**meta, "format": FORMAT_VERSION, "head_file": HEAD_FILE, "sha256": sha256_bytes(blob)}
        (staging / META_FILE).write_text(json.dumps(full_meta, indent=2) + "\n")
        (staging / METRICS_FILE).write_text(json.dumps(metrics, indent=2) + "\n")
        card_data = card.model_dump(mode="json", exclude_none=True, exclude_defaults=True)
        (staging / CARD_FILE).write_text(yaml.safe_dump(card_data, sort_keys=False, allow_unicode=True))
        workflow = {**DEFAULT_WORKFLOW, "modules": {"predict": {"head": card.id}}}  # for runners made without a folder
        (staging / WORKFLOW_FILE).write_text(yaml.safe_dump(workflow, sort_keys=False))
        with (staging / CASES_FILE).open("w", newline="") as handle:
            fields = ["series", "label", "resolved", "embedding_key"]
            writer = csv.DictWriter(handle, fieldnames=fields, extrasaction="ignore")
            writer.writeheader()
            writer.writerows(cases)
        load_head(staging)  # what cannot be read back must not be installed
        if folder.exists():
            old = folder.with_name(f".{folder.name}.{os.getpid()}.old")
            shutil.rmtree(old, ignore_errors=True)
            folder.rename(old)
            staging.rename(folder)
            shutil.rmtree(old, ignore_errors=True)
        else:
            staging.rename(folder)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return folder


def load_head(folder: Path) -> Head:
    """Read a head folder, verifying the SHA-256 of its weights; one-line errors naming the file."""
    import skops.io as sio

    folder = Path(folder)
    meta_path = folder / META_FILE
    try:
        meta = json.loads(meta_path.read_text())
    except FileNotFoundError:
        raise MedhubError(f"{meta_path}: missing; {folder} is not a head folder (made by medhub heads train)"
                          ) from None
    except json.JSONDecodeError as exc:
        raise MedhubError(f"{meta_path}: not valid JSON ({exc})") from None
    missing = [k for k in ("encoder", "classes", "dimension", "sha256") if k not in meta]
    if missing:
        raise MedhubError(f"{meta_path}: missing field(s) {', '.join(missing)}")
    head_path = folder / str(meta.get("head_file", HEAD_FILE))
    try:
        blob = head_path.read_bytes()
    except FileNotFoundError:
        raise MedhubError(f"{head_path}: head weights missing (retrain with medhub heads train)") from None
    if sha256_bytes(blob) != meta["sha256"]:
        raise MedhubError(f"{head_path}: SHA-256 does not match {meta_path} (file changed or corrupted; retrain)")
    try:
        pipeline = sio.loads(blob)  # default trust: scikit-learn and numpy types only, no code
    except Exception as exc:  # noqa: BLE001 - skops raises many types for bad or untrusted files
        raise MedhubError(f"{head_path}: cannot load the head ({type(exc).__name__}: {exc})".splitlines()[0]) from None
    metrics_path = folder / METRICS_FILE
    metrics = json.loads(metrics_path.read_text()) if metrics_path.is_file() else {}
    card = load_card(folder / CARD_FILE)
    stored = sorted(map(str, getattr(pipeline, "classes_", [])))
    if stored != sorted(meta["classes"]):
        raise MedhubError(f"{head_path}: classes {stored} differ from {meta_path} ({meta['classes']})")
    return Head(path=folder, card=card, pipeline=pipeline, meta=meta, metrics=metrics)
