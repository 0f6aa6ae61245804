"""TotalSegmentator runner: task "total" (117 classes) through TotalSegmentator's own python API.

Why this shape:

* TotalSegmentator downloads its nnU-Net weights itself (GitHub release zips, no checksum) into
  ``~/.totalsegmentator`` and reports usage statistics over the network. The runner resolves the
  zips through medhub's weights manager instead (cache, SHA-256, ``MEDHUB_WEIGHTS_MIRROR``; a
  missing file is a one-line error), unpacks each once into ``<cache>/totalsegmentator/nnunet``
  (the nnU-Net results layout TotalSegmentator expects: ``Dataset297_.../<trainer>__<plans>__
  3d_fullres/fold_0/checkpoint_final.pth``), and points ``TOTALSEG_WEIGHTS_PATH`` there, with a
  ``TOTALSEG_HOME_DIR`` whose config turns the statistics off. TotalSegmentator then finds its
  weights present and never downloads.
* ``predict`` hands the volume to ``totalsegmentator.python_api.totalsegmentator`` as an
  in-memory nibabel image (RAS affine). TotalSegmentator reorients, resamples, predicts and
  brings the label map back onto the input grid itself, so the result lines up with
  ``Volume.array`` voxel for voxel; label values are its class indices, mapped to segment IDs by
  the card (``outputs.segments``), which the tests check against the package's own class map.
* Fast mode (default) is Dataset297 (3 mm); ``fast: false`` runs Dataset291-295 (1.5 mm). The
  SHA-256 of Dataset292-295 is not known here, so they are not on the card: they are taken from
  the cache or the mirror folder, checked by size only, and the log says they are unverified.

TotalSegmentator's dependency chain pulls torch 2.14.1 (see the card), so this runner normally
runs in the model's own environment; it imports TotalSegmentator only in :meth:`Runner.load`.
"""

from __future__ import annotations

import contextlib
import io
import json
import logging
import os
import shutil
import zipfile
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any

import numpy as np

from medhub.data.prediction import Prediction
from medhub.data.volume import Volume
from medhub.errors import MedhubError, SeriesSkipped
from medhub.hub.card import ModelCard, load_card
from medhub.hub.catalog import require_module
from medhub.hub.weights import ENV_MIRROR, WeightFile, ensure_weights, mirror_setting, weights_cache_dir

MODEL_ID = "totalsegmentator"
CARD_PATH = Path(__file__).resolve().with_name("card.yaml")
FAST_DATASETS = (297,)
FULL_DATASETS = (291, 292, 293, 294, 295)
_RELEASE = "https://github.com/wasserth/TotalSegmentator/releases/download/v2.0.0-weights/"
_MARKER = ".medhub-unpacked"
log = logging.getLogger(__name__)


@dataclass(frozen=True)
class UnpinnedZip:
    """A release zip whose SHA-256 is not known here: found by name, checked by size only."""

    name: str
    size: int

    @property
    def url(self) -> str:
        return _RELEASE + self.name


#: The four 1.5 mm models of the full workflow without a known SHA-256 (sizes as recorded by other projects).
UNPINNED: dict[int, UnpinnedZip] = {
    292: UnpinnedZip("Dataset292_TotalSegmentator_part2_vertebrae_1532subj.zip", 234_050_721),
    293: UnpinnedZip("Dataset293_TotalSegmentator_part3_cardiac_1559subj.zip", 234_190_318),
    294: UnpinnedZip("Dataset294_TotalSegmentator_part4_muscles_1559subj.zip", 233_625_081),
    295: UnpinnedZip("Dataset295_TotalSegmentator_part5_ribs_1559subj.zip", 234_016_576),
}


def card() -> ModelCard:
    return load_card(CARD_PATH)


def weight_files() -> list[WeightFile]:
    """The card's (SHA-256 pinned) weights as the weights manager wants them."""
    return [spec.weight_file() for spec in card().weights]


def dataset_id(zip_name: str) -> int:
    """``Dataset297_TotalSegmentator_....zip`` → 297."""
    head = zip_name.split("_", 1)[0]
    if not head.startswith("Dataset") or not head[7:].isdigit():
        raise MedhubError(f"{CARD_PATH}: weights file {zip_name} is not named Dataset<id>_...zip")
    return int(head[7:])


def results_dir() -> Path:
    """Where the zips are unpacked: the nnU-Net results folder TotalSegmentator reads."""
    return weights_cache_dir() / MODEL_ID / "nnunet"


def _resolve_unpinned(item: UnpinnedZip) -> Path:
    """Cache, then mirror folder; checked by size. Missing: the same one-line message shape as the weights manager."""
    cached = weights_cache_dir() / MODEL_ID / item.name
    mirror = mirror_setting()
    candidates = [cached]
    if mirror and not mirror.lower().startswith(("http://", "https://")):
        folder = Path(mirror.removeprefix("file://")).expanduser()
        candidates += [folder / MODEL_ID / item.name, folder / item.name]
    for path in candidates:
        if path.is_file() and path.stat().st_size == item.size:
            if path != cached:
                cached.parent.mkdir(parents=True, exist_ok=True)
                shutil.copyfile(path, cached)
            log.warning("weights for %s: %s has no known SHA-256; checked by size only", MODEL_ID, item.name)
            return cached
    target = candidates[1] if len(candidates) > 1 else cached
    raise MedhubError(
        f"weights for {MODEL_ID}: {item.name} not found: its SHA-256 is not known to medhub, so it is not downloaded "
        f"automatically; {ENV_MIRROR}={mirror or 'unset'}; download {item.url} and put it in {target}"
    )


def _unpack(zip_path: Path, into: Path, stamp: str) -> None:
    """Extract a release zip once; a marker keyed by the zip's hash/size makes later calls free."""
    with zipfile.ZipFile(zip_path) as archive:
        tops = {PurePosixPath(n).parts[0] for n in archive.namelist() if not n.startswith("__MACOSX")}
        if len(tops) != 1:
            raise MedhubError(f"{zip_path}: expected one Dataset folder in the zip, found {sorted(tops)}")
        top = into / tops.pop()
        marker = top / _MARKER
        if marker.is_file() and marker.read_text(encoding="utf-8") == stamp:
            return
        for member in archive.namelist():
            parts = PurePosixPath(member).parts
            if PurePosixPath(member).is_absolute() or ".." in parts or "\\" in member:
                raise MedhubError(f"{zip_path}: unsafe path in the zip: {member}")
        if top.exists():
            shutil.rmtree(top)
        archive.extractall(into, members=[n for n in archive.namelist() if not n.startswith("__MACOSX")])
    marker.write_text(stamp, encoding="utf-8")


def _private_home(root: Path) -> Path:
    """A TOTALSEG_HOME_DIR whose config has statistics off, so TotalSegmentator makes no network calls."""
    home = root / "home"
    home.mkdir(parents=True, exist_ok=True)
    config = home / "config.json"
    settings = {"totalseg_id": "medhub", "send_usage_stats": False, "prediction_counter": 0,
                "statistics_disclaimer_shown": True}  # fmt: skip
    if not config.is_file() or json.loads(config.read_text(encoding="utf-8")).get("send_usage_stats") is not False:
        config.write_text(json.dumps(settings, indent=2), encoding="utf-8")
    return home


def prepare_weights(fast: bool) -> Path:
    """Resolve and unpack the zips of the chosen mode; return the nnU-Net results folder."""
    wanted = FAST_DATASETS if fast else FULL_DATASETS
    pinned = [f for f in weight_files() if dataset_id(f.name) in wanted]
    paths = ensure_weights(MODEL_ID, pinned)
    stamps = {dataset_id(f.name): f.sha256 for f in pinned}
    zips = {dataset_id(name): path for name, path in paths.items()}
    for ds in wanted:
        if ds in zips:
            continue
        if ds not in UNPINNED:
            raise MedhubError(f"{CARD_PATH}: no weights entry for TotalSegmentator Dataset{ds}")
        zips[ds] = _resolve_unpinned(UNPINNED[ds])
        stamps[ds] = f"size:{UNPINNED[ds].size}"
    root = results_dir()
    root.mkdir(parents=True, exist_ok=True)
    for ds in wanted:
        _unpack(zips[ds], root, stamps[ds])
    return root


class Runner:
    """Unpacks the weights and imports TotalSegmentator in :meth:`load`; :meth:`predict` calls its python API."""

    def __init__(self) -> None:
        self._api: Any = None
        self._nib: Any = None
        self._fast = True
        self._device = "cpu"
        self._class_map: dict[int, str] = {}
        self._segments: dict[int, str] = {}

    def load(self, device: str, params: dict[str, Any]) -> None:
        """``params``: ``fast`` (default true: the 3 mm model; false: the five 1.5 mm models)."""
        if device not in ("cpu", "cuda", "mps"):
            raise MedhubError(f"model {MODEL_ID}: unknown device '{device}' (use cpu, cuda or mps)")
        self._fast = bool(params.get("fast", True))
        self._device = {"cuda": "gpu"}.get(device, device)
        results = prepare_weights(self._fast)
        # Set before TotalSegmentator is imported: it (and nnU-Net) read these at call time and import time.
        os.environ["TOTALSEG_WEIGHTS_PATH"] = str(results)
        os.environ["TOTALSEG_HOME_DIR"] = str(_private_home(results.parent))
        self._nib = require_module("nibabel", MODEL_ID)
        self._api = require_module("totalsegmentator.python_api", MODEL_ID, pip_name="TotalSegmentator")
        binary = require_module("totalsegmentator.map_to_binary", MODEL_ID, pip_name="TotalSegmentator")
        self._class_map = dict(binary.class_map["total"])
        self._segments = dict(card().outputs.segments)
        unmapped = sorted(set(self._class_map) - set(self._segments))
        if unmapped:  # an installed TotalSegmentator with classes this card does not know
            names = ", ".join(self._class_map[v] for v in unmapped[:5])
            raise MedhubError(f"model {MODEL_ID}: the installed TotalSegmentator has classes the card lacks: {names}")

    def predict(self, volume: Volume, params: dict[str, Any]) -> Prediction:
        """Label map (TotalSegmentator's class indices) in the volume's voxel order; segments present only."""
        if self._api is None:
            raise MedhubError(f"model {MODEL_ID}: predict called before load")
        if volume.array.ndim != 3 or min(volume.array.shape) < 2:
            raise SeriesSkipped(f"TotalSegmentator needs a 3D volume, got an array of shape {volume.array.shape}")
        image = self._nib.Nifti1Image(np.asarray(volume.array, dtype=np.float32), volume.affine_ras)
        with contextlib.redirect_stdout(io.StringIO()):  # its progress prints would corrupt --json output
            result = self._api.totalsegmentator(
                image, None, task="total", fast=self._fast, ml=True, device=self._device,
                quiet=True, nr_thr_resamp=1, nr_thr_saving=1,
            )  # fmt: skip
        labels = np.asarray(result.dataobj).astype(np.uint8)
        if labels.shape != volume.array.shape:  # TotalSegmentator's contract; a shifted map is worse than none
            raise MedhubError(f"model {MODEL_ID}: label map shape {labels.shape} differs from volume {volume.shape}")
        present = np.flatnonzero(np.bincount(labels.ravel(), minlength=256))
        unknown = [int(v) for v in present if v != 0 and v not in self._segments]
        if unknown:
            raise MedhubError(f"model {MODEL_ID}: TotalSegmentator produced label values {unknown} the card lacks")
        return Prediction(labels=labels, segments={int(v): self._segments[int(v)] for v in present if v != 0})
