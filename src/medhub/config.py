"""medhub's settings from the environment: every ``MEDHUB_*`` variable is read here, and only here.

:func:`settings` reads all of them in one pass and checks them (a bad value is a one-line
:class:`~medhub.errors.MedhubError` naming the variable), so every module that needs one asks
this module instead of ``os.environ``. It reads at call time, not at import: a server, a test
or a batch script that changes the environment is seen by the next call. :data:`VARIABLES`
is the list the README's table shows (``tests/test_config.py`` keeps the two in step).
To add a variable: a :class:`Variable` in :data:`VARIABLES`, a field of :class:`Settings`
read in :func:`settings`, and a row in the README.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path

from medhub.errors import MedhubError

WEIGHTS_CACHE = "MEDHUB_WEIGHTS_CACHE"
WEIGHTS_MIRROR = "MEDHUB_WEIGHTS_MIRROR"
CACHE = "MEDHUB_CACHE"
ENVS = "MEDHUB_ENVS"
ISOLATION = "MEDHUB_ISOLATION"
HEADS = "MEDHUB_HEADS"
SCAN_WORKERS = "MEDHUB_SCAN_WORKERS"
MEMORY_BUDGET = "MEDHUB_MEMORY_BUDGET"
DICOMWEB_TOKEN = "MEDHUB_DICOMWEB_TOKEN"
DICOMWEB_USER = "MEDHUB_DICOMWEB_USER"
DICOMWEB_PASSWORD = "MEDHUB_DICOMWEB_PASSWORD"
SERVE_DATA = "MEDHUB_SERVE_DATA"
SERVE_TOKEN = "MEDHUB_SERVE_TOKEN"
AE_TITLE = "MEDHUB_AE_TITLE"
IDC_CACHE = "MEDHUB_IDC_CACHE"
IDC_ENDPOINT = "MEDHUB_IDC_ENDPOINT"


@dataclass(frozen=True)
class Variable:
    name: str
    default: str
    meaning: str


VARIABLES: tuple[Variable, ...] = (
    Variable(WEIGHTS_CACHE, "`$XDG_CACHE_HOME/medhub/weights` or `~/.cache/medhub/weights`",
             "where downloaded model weights are kept (checked by SHA-256)"),
    Variable(WEIGHTS_MIRROR, "unset",
             "an offline mirror of weights: a folder or an http(s):// URL, searched before the upstream URL"),
    Variable(CACHE, "`$XDG_CACHE_HOME/medhub` or `~/.cache/medhub`",
             "the cache of embeddings (in its `embeddings/` folder) and of the catalog's listing"),
    Variable(ENVS, "`~/.cache/medhub/envs`", "where the own environments (venvs) of isolated models are built"),
    Variable(ISOLATION, "`auto`",
             "`auto`: run a model in its own venv when its requirements are not met here; `always`; `never`"),
    Variable(HEADS, "`$XDG_DATA_HOME/medhub/heads` or `~/.local/share/medhub/heads`",
             "where trained few-shot heads are stored (each one a model of the catalog)"),
    Variable(SCAN_WORKERS, "`1`", "processes reading DICOM headers during the scan (a cohort run sets up to 4)"),
    Variable(MEMORY_BUDGET, "half the machine's RAM", "the most memory one series' pixels may take (`8G`, `512M`, "
             "bytes); a series declaring more is refused before anything is decoded"),
    Variable(DICOMWEB_TOKEN, "unset", "bearer token for a dicomweb:// input or --push, when the URL has no user"),
    Variable(DICOMWEB_USER, "unset", "HTTP basic user for DICOMweb, when the URL has none and no token is set"),
    Variable(DICOMWEB_PASSWORD, "empty", f"the password of {DICOMWEB_USER}"),
    Variable(SERVE_DATA, "`$XDG_DATA_HOME/medhub/serve` or `~/.local/share/medhub/serve`",
             "`medhub serve`'s job store and job files (`--data-dir` overrides)"),
    Variable(SERVE_TOKEN, "unset", "`medhub serve`'s API token (`--token` overrides); needed to bind beyond loopback"),
    Variable(AE_TITLE, "`MEDHUB`", "the AE title medhub calls a DICOM archive with (dimse:// inputs and pushes, "
             "`medhub listen`)"),
    Variable(IDC_CACHE, "`~/.cache/medhub/idc`", "where series fetched from the Imaging Data Commons are kept"),
    Variable(IDC_ENDPOINT, "`https://s3.amazonaws.com`", "where IDC's buckets are downloaded from (a mirror)"),
)


class Isolation(StrEnum):
    AUTO = "auto"
    ALWAYS = "always"
    NEVER = "never"


@dataclass(frozen=True)
class Settings:
    """The environment's answer to every question medhub asks it."""

    weights_cache: Path
    weights_mirror: str | None
    cache: Path
    embeddings_cache: Path
    envs: Path
    isolation: Isolation
    heads: Path
    scan_workers: int
    memory_budget: int  # bytes
    dicomweb_token: str | None
    dicomweb_user: str | None
    dicomweb_password: str
    serve_data: Path
    serve_token: str | None
    ae_title: str | None  # checked as an AE title where it is used (medhub.inputs.dimse)
    idc_cache: Path
    idc_endpoint: str | None


def settings(env: Mapping[str, str] | None = None) -> Settings:
    """Read and check every ``MEDHUB_*`` variable of ``env`` (default: this process's environment)."""
    env = os.environ if env is None else env

    def text(name: str) -> str | None:
        value = env.get(name, "").strip()
        return value or None

    home = Path.home()
    cache_home = Path(text("XDG_CACHE_HOME") or home / ".cache").expanduser()
    data_home = Path(text("XDG_DATA_HOME") or home / ".local" / "share").expanduser()
    weights = text(WEIGHTS_CACHE)
    cache = text(CACHE)
    return Settings(
        weights_cache=(Path(weights).expanduser() if weights else cache_home / "medhub" / "weights").resolve(),
        weights_mirror=text(WEIGHTS_MIRROR),
        cache=(Path(cache).expanduser() if cache else cache_home / "medhub").resolve(),
        embeddings_cache=(Path(cache).expanduser() if cache else cache_home / "medhub").resolve() / "embeddings",
        envs=Path(text(ENVS) or home / ".cache" / "medhub" / "envs").expanduser(),
        isolation=_isolation(text(ISOLATION)),
        heads=Path(text(HEADS) or data_home / "medhub" / "heads").expanduser(),
        scan_workers=_positive_int(SCAN_WORKERS, text(SCAN_WORKERS) or "1"),
        memory_budget=_bytes(MEMORY_BUDGET, budget) if (budget := text(MEMORY_BUDGET)) else _half_the_ram(),
        dicomweb_token=text(DICOMWEB_TOKEN),
        dicomweb_user=text(DICOMWEB_USER),
        dicomweb_password=env.get(DICOMWEB_PASSWORD, ""),
        serve_data=Path(text(SERVE_DATA) or data_home / "medhub" / "serve").expanduser(),
        serve_token=text(SERVE_TOKEN),
        ae_title=text(AE_TITLE),
        idc_cache=Path(text(IDC_CACHE) or home / ".cache" / "medhub" / "idc").expanduser(),
        idc_endpoint=text(IDC_ENDPOINT),
    )


def _isolation(value: str | None) -> Isolation:
    mode = (value or "auto").lower()
    try:
        return Isolation(mode)
    except ValueError:
        raise MedhubError(f"{ISOLATION}={mode!r}: expected auto, always or never") from None


def _positive_int(name: str, value: str) -> int:
    try:
        number = int(value)
    except ValueError:
        number = 0
    if number < 1:
        raise MedhubError(f"{name}={value!r}: expected a whole number of at least 1")
    return number


_UNITS = {"": 1, "K": 2**10, "M": 2**20, "G": 2**30, "T": 2**40}


def _bytes(name: str, value: str) -> int:
    """``8G``, ``512M``, ``1.5GiB`` or a number of bytes."""
    match = re.fullmatch(r"(\d+(?:\.\d+)?)\s*([KMGT]?)(?:I?B)?", value.strip().upper())
    if not match or float(match.group(1)) <= 0:
        raise MedhubError(f"{name}={value!r}: expected a size such as 8G, 512M or a number of bytes")
    return int(float(match.group(1)) * _UNITS[match.group(2)])


def _half_the_ram() -> int:
    try:
        return os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE") // 2
    except (ValueError, OSError, AttributeError):
        return 8 * 2**30
