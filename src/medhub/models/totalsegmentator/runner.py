"""TotalSegmentator runner: task "total" (117 classes) through TotalSegmentator's own python API.

Why this shape:

* TotalSegmentator downloads its nnU-Net weights itself (GitHub release zips, no checksum) into
  ``~/.totalsegmentator`` and reports usage statistics over the network. The card declares the
  zips instead (each with ``when: {fast: ...}``), so the hub resolves those of the chosen mode
  through medhub's weights manager (cache, SHA-256, ``MEDHUB_WEIGHTS_MIRROR``; a missing file is
  a one-line error); the runner unpacks each once into ``<cache>/totalsegmentator/nnunet``
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
* ``--roi-subset`` (``params["roi_subset"]``, the card declares ``outputs.roi_subset``) is handed
  to TotalSegmentator where it saves time: in full mode, as ``roi_subset_robust``, TotalSegmentator
  locates the structures with the 3 mm model (Dataset297, fetched through the weights manager)
  and runs only the 1.5 mm models that hold them, on a crop around them. Its plain ``roi_subset``
  would locate them with Dataset298 (6 mm), which the card does not declare and TotalSegmentator
  would download unverified. In fast mode the one 3 mm pass already predicts every class, and a
  locating pass would cost more than it saves: the hub filters the result instead.

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
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any

import numpy as np

import medhub
from medhub.hub.weights import ENV_MIRROR, WeightFile, ensure_weights, mirror_setting, weights_cache_dir

FAST_DATASETS = (297,)
LOCATOR_DATASET = 297  # the 3 mm model TotalSegmentator's roi_subset_robust locates the structures with
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


def dataset_id(zip_name: str) -> int:
    """``Dataset297_TotalSegmentator_....zip`` → 297."""
    head = zip_name.split("_", 1)[0]
    if not head.startswith("Dataset") or not head[7:].isdigit():
        raise medhub.MedhubError(f"totalsegmentator: weights file {zip_name} is not named Dataset<id>_...zip")
    return int(head[7:])


def results_dir(model_id: str = "totalsegmentator") -> Path:
    """Where the zips are unpacked: the nnU-Net results folder TotalSegmentator reads."""
    return weights_cache_dir() / model_id / "nnunet"


def _resolve_unpinned(item: UnpinnedZip, model_id: str = "totalsegmentator") -> Path:
    """Cache, then mirror folder; checked by size. Missing: the same one-line message shape as the weights manager."""
    cached = weights_cache_dir() / model_id / item.name
    mirror = mirror_setting()
    candidates = [cached]
    if mirror and not mirror.lower().startswith(("http://", "https://")):
        folder = Path(mirror.removeprefix("file://")).expanduser()
        candidates += [folder / model_id / item.name, folder / item.name]
    for path in candidates:
        if path.is_file() and path.stat().st_size == item.size:
            if path != cached:
                cached.parent.mkdir(parents=True, exist_ok=True)
                shutil.copyfile(path, cached)
            log.warning("weights for %s: %s has no known SHA-256; checked by size only", model_id, item.name)
            return cached
    target = candidates[1] if len(candidates) > 1 else cached
    raise medhub.MedhubError(
        f"weights for {model_id}: {item.name} not found: its SHA-256 is not known to medhub, so it is not downloaded "
        f"automatically; {ENV_MIRROR}={mirror or 'unset'}; download {item.url} and put it in {target}"
    )


def _unpack(zip_path: Path, into: Path, stamp: str) -> None:
    """Extract a release zip once; a marker keyed by the zip's hash/size makes later calls free."""
    with zipfile.ZipFile(zip_path) as archive:
        tops = {PurePosixPath(n).parts[0] for n in archive.namelist() if not n.startswith("__MACOSX")}
        if len(tops) != 1:
            raise medhub.MedhubError(f"{zip_path}: expected one Dataset folder in the zip, found {sorted(tops)}")
        top = into / tops.pop()
        marker = top / _MARKER
        if marker.is_file() and marker.read_text(encoding="utf-8") == stamp:
            return
        for member in archive.namelist():
            parts = PurePosixPath(member).parts
            if PurePosixPath(member).is_absolute() or ".." in parts or "\\" in member:
                raise medhub.MedhubError(f"{zip_path}: unsafe path in the zip: {member}")
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


def prepare_weights(context: medhub.RunnerContext, fast: bool) -> Path:
    """Unpack the zips of the chosen mode (the card's verified ones, then the unpinned); return the results folder."""
    wanted = FAST_DATASETS if fast else FULL_DATASETS
    zips = {dataset_id(name): path for name, path in context.weights.items()}
    stamps = {dataset_id(spec.name): str(spec.sha256) for spec in context.card.weights}
    for ds in wanted:
        if ds not in zips:
            if ds not in UNPINNED:
                raise medhub.MedhubError(f"model {context.model_id}: no weights entry for TotalSegmentator Dataset{ds}")
            zips[ds] = _resolve_unpinned(UNPINNED[ds], context.model_id)
            stamps[ds] = f"size:{UNPINNED[ds].size}"
    root = results_dir(context.model_id)
    root.mkdir(parents=True, exist_ok=True)
    for ds in wanted:
        _unpack(zips[ds], root, stamps[ds])
    return root


def prepare_locator(context: medhub.RunnerContext) -> None:
    """Unpack the 3 mm model (Dataset297) beside the 1.5 mm ones: ``roi_subset_robust`` locates the structures with it.

    Fetched and verified by medhub's weights manager (cache, mirror, SHA-256), never by TotalSegmentator.
    """
    spec = next((w for w in context.card.weights if dataset_id(str(w.name)) == LOCATOR_DATASET), None)
    if spec is None or spec.url is None or spec.sha256 is None:
        raise medhub.MedhubError(f"model {context.model_id}: no verified weights entry for TotalSegmentator "
                                 f"Dataset{LOCATOR_DATASET}, which --roi-subset needs in the full workflow")
    file = WeightFile(name=str(spec.name), url=str(spec.url), sha256=str(spec.sha256), size=spec.size)
    path = ensure_weights(context.model_id, [file])[file.name]
    root = results_dir(context.model_id)
    root.mkdir(parents=True, exist_ok=True)
    _unpack(path, root, str(spec.sha256))


class Runner(medhub.Runner):
    """Unpacks the weights and imports TotalSegmentator in :meth:`load`; :meth:`predict` calls its python API."""

    def load(self, context: medhub.RunnerContext) -> None:
        """``params``: ``fast`` (default true: the 3 mm model; false: the five 1.5 mm models)."""
        self._fast = bool(context.params["fast"])
        self._device = {"cuda": "gpu"}.get(context.device, context.device)  # TotalSegmentator's name for CUDA
        results = prepare_weights(context, self._fast)
        # Set before TotalSegmentator is imported: it (and nnU-Net) read these at call time and import time.
        os.environ["TOTALSEG_WEIGHTS_PATH"] = str(results)
        os.environ["TOTALSEG_HOME_DIR"] = str(_private_home(results.parent))
        self._nib = medhub.require_module("nibabel", context.model_id)
        self._api = medhub.require_module("totalsegmentator.python_api", context.model_id, pip_name="TotalSegmentator")
        binary = medhub.require_module("totalsegmentator.map_to_binary", context.model_id, pip_name="TotalSegmentator")
        self._class_names: dict[int, str] = dict(binary.class_map["total"])  # label value → TotalSegmentator's name
        self._locator_ready = False
        unmapped = sorted(set(binary.class_map["total"]) - set(context.card.outputs.segments))
        if unmapped:  # an installed TotalSegmentator with classes this card does not know
            names = ", ".join(binary.class_map["total"][v] for v in unmapped[:5])
            raise medhub.MedhubError(f"model {context.model_id}: the installed TotalSegmentator has classes the card "
                                     f"lacks: {names}")

    def predict(self, volume: medhub.Volume, params: Mapping[str, Any]) -> medhub.Prediction:
        """Label map (TotalSegmentator's class indices) in the volume's voxel order; segments present only."""
        if min(volume.array.shape) < 2:
            raise medhub.SeriesSkipped(f"TotalSegmentator needs a 3D volume, got a single plane {volume.array.shape}")
        image = self._nib.Nifti1Image(np.asarray(volume.array, dtype=np.float32), volume.affine_ras)
        arguments = self.upstream_arguments(params)
        if "roi_subset_robust" in arguments and not self._locator_ready:
            prepare_locator(self.context)
            self._locator_ready = True
        with contextlib.redirect_stdout(io.StringIO()):  # its progress prints would corrupt --json output
            result = self._api.totalsegmentator(image, None, **arguments)
        labels = np.asarray(result.dataobj).astype(np.uint8)
        prediction = medhub.Prediction(labels=labels, segments=dict(self.context.card.outputs.segments))
        present = prediction.present  # counted once, by the Prediction (no 8-byte-per-voxel bincount copy)
        prediction.segments = {value: name for value, name in prediction.segments.items() if value in present}
        return prediction

    def upstream_arguments(self, params: Mapping[str, Any]) -> dict[str, Any]:
        """The keyword arguments of ``totalsegmentator.python_api.totalsegmentator`` for one prediction.

        A ``roi_subset`` (the card's segment IDs) becomes TotalSegmentator's class names as
        ``roi_subset_robust`` in full mode only (see the module's docstring for why not in fast mode).
        """
        arguments: dict[str, Any] = {"task": "total", "fast": self._fast, "ml": True, "device": self._device,
                                     "quiet": True, "nr_thr_resamp": 1, "nr_thr_saving": 1}
        subset = set(params.get("roi_subset") or ())
        if subset and not self._fast:
            segments = self.context.card.outputs.segments
            arguments["roi_subset_robust"] = [self._class_names[int(value)] for value in sorted(segments)
                                              if segments[value] in subset]
        return arguments
