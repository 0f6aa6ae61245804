"""Model weights: a verified local cache, an offline mirror, and resumable downloads.

Why this exists: runners must never download ad hoc. Every weights file is declared on the
model card with its URL and SHA-256; this module puts a verified copy at
``<cache>/<model_id>/<name>`` and returns its path, or fails with ONE line that tells the
user which file is missing, where it was looked for, and where to put it by hand (hospital
machines are often offline).

Where a file comes from, in order:

1. the cache, if its SHA-256 matches (the verification is remembered in a ``.sha256``
   sidecar keyed by size and mtime, so a 300 MB file is hashed once, not on every run);
2. the mirror ``MEDHUB_WEIGHTS_MIRROR``: a folder or an http(s):// URL, searched at
   ``<mirror>/<model_id>/<name>``, then ``<mirror>/<name>``, then ``<mirror>/<basename>``;
3. the file's own ``url``: http(s)://, ``file://`` or an absolute local path (a "local
   source", e.g. a file inside an installed wheel).

``offline=True`` skips step 3 for remote URLs only: the mirror is explicit configuration
(often an intranet server) and local sources need no network, so both are still used.

Downloads go to ``<dest>.part`` and resume with an HTTP Range request (a server that ignores
Range and answers 200 restarts the file), are verified, then renamed atomically. A per-file
``fcntl.flock`` lock makes concurrent pulls of the same file (two processes, or a cluster
sharing the cache) safe: the second waits, then finds the verified file.
"""

from __future__ import annotations

import contextlib
import os
import re
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterator
from http.client import HTTPException
from pathlib import Path, PurePosixPath
from typing import Any
from urllib.error import HTTPError, URLError

from pydantic import BaseModel, ConfigDict, Field, field_validator

from medhub import __version__, config
from medhub.errors import MedhubError
from medhub.hub.weight_store import CHUNK as _CHUNK
from medhub.hub.weight_store import sha256_file as sha256_file
from medhub.hub.weight_store import sidecar as _sidecar
from medhub.hub.weight_store import verified_in_cache
from medhub.hub.weight_store import weights_cache_dir as weights_cache_dir
from medhub.hub.weight_store import write_sidecar as _write_sidecar

try:  # POSIX only; elsewhere concurrent pulls are simply not guarded
    import fcntl
except ImportError:  # pragma: no cover - not reached on Linux/macOS
    fcntl = None  # type: ignore[assignment]

ENV_MIRROR = config.WEIGHTS_MIRROR  # named in messages

#: Seconds to wait for a connection or for the next block of data before giving up.
TIMEOUT = 30.0
#: How many times one call resumes an interrupted transfer before reporting failure.
MAX_ATTEMPTS = 3

#: ``progress(name, bytes_done, bytes_total_or_None)``, called as bytes arrive.
ProgressCallback = Callable[[str, int, "int | None"], None]


class WeightFile(BaseModel):
    """One weights file as a model card declares it (embeddable in the card's schema)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str = Field(description="file name relative to the model's cache folder; may contain a subfolder")
    url: str = Field(description="http(s)://, file:// or an absolute local path")
    sha256: str = Field(pattern=r"^[0-9a-fA-F]{64}$")
    size: int | None = Field(default=None, ge=0, description="bytes; checked before hashing when given")

    @field_validator("name")
    @classmethod
    def _relative_name(cls, value: str) -> str:
        return relative_weight_name(value)

    @field_validator("sha256")
    @classmethod
    def _lower(cls, value: str) -> str:
        return value.lower()


def relative_weight_name(value: str) -> str:
    """A weights file's name becomes a path under the cache: refuse anything that could escape it."""
    parts = value.split("/")
    if "\\" in value or PurePosixPath(value).is_absolute() or any(part in ("", ".", "..") for part in parts):
        raise ValueError(f"weights file name must be a relative path without '..': {value!r}")
    return value


def mirror_setting() -> str | None:
    """The raw ``MEDHUB_WEIGHTS_MIRROR`` value, or None when unset or blank."""
    return config.settings().weights_mirror


def cached_path(model_id: str, file: WeightFile) -> Path:
    """Where ``file`` of ``model_id`` lives in the cache (whether or not it is there yet)."""
    return weights_cache_dir() / model_id / file.name


def is_cached(model_id: str, file: WeightFile) -> bool:
    """True when a verified copy is in the cache (cheap thanks to the sidecar; for ``doctor``/``info``)."""
    return _verified_in_cache(cached_path(model_id, file), file)


def _verified_in_cache(dest: Path, file: WeightFile) -> bool:
    """True when ``dest`` holds ``file``: trust a matching sidecar, else hash once and record it."""
    return verified_in_cache(dest, file.sha256, file.size)


def ensure_weights(
    model_id: str,
    files: list[WeightFile],
    *,
    progress: bool | ProgressCallback | None = None,
    offline: bool = False,
) -> dict[str, Path]:
    """Return ``{name: verified local path}`` for every file, fetching what is missing.

    ``progress``: True shows a rich progress bar on stderr; a callable receives
    ``(name, bytes_done, bytes_total_or_None)``; None/False is silent. Raises MedhubError
    (one line) when a file cannot be obtained or its SHA-256 does not match.
    """
    if not files:
        return {}
    with _progress_reporter(progress) as report:
        return {file.name: _ensure_one(model_id, file, report=report, offline=offline) for file in files}


# --------------------------------------------------------------------------- the procedure


class _Unavailable(Exception):
    """A source could not deliver the file; ``str()`` is a short reason for the error line."""


class _Interrupted(_Unavailable):
    """The transfer stopped early; the ``.part`` file is kept so the next attempt resumes."""


def _ensure_one(model_id: str, file: WeightFile, *, report: ProgressCallback, offline: bool) -> Path:
    dest = cached_path(model_id, file)
    if _verified_in_cache(dest, file):
        return dest
    dest.parent.mkdir(parents=True, exist_ok=True)
    with _file_lock(dest):
        if _verified_in_cache(dest, file):  # another process fetched it while we waited
            return dest
        _discard(dest)  # present but wrong (card updated, or tampered with): never serve it
        part = dest.with_name(dest.name + ".part")
        mirror = mirror_setting()
        mirror_reason: str | None = None
        for source in _mirror_sources(model_id, file, mirror):
            try:
                actual = _fetch_checked(source, part, file=file, report=report)
            except _Unavailable as error:
                mirror_reason = str(error)
                continue
            if actual is None:
                return _install(part, dest, file.sha256)
            mirror_reason = f"{source} has SHA-256 {actual}, expected {file.sha256}"

        if offline and not _is_local(file.url):
            url_reason = "offline"
        else:
            try:
                actual = _fetch_checked(file.url, part, file=file, report=report)
            except _Unavailable as error:
                url_reason = str(error)
            else:
                if actual is None:
                    return _install(part, dest, file.sha256)
                raise MedhubError(
                    f"weights for {model_id}: {file.name} from {file.url} is corrupt: SHA-256 {actual}, "
                    f"expected {file.sha256}; the download was deleted"
                )
        raise MedhubError(_not_found(model_id, file, dest, mirror, url_reason, mirror_reason))


def _fetch_checked(url: str, part: Path, *, file: WeightFile, report: ProgressCallback) -> str | None:
    """Fetch and verify; a resumed file that fails is fetched once more from scratch.

    Why: the kept ``.part`` may hold the prefix of another version (or of a bad mirror copy);
    only a fresh full transfer proves the source itself is corrupt. A bad file is deleted.
    """
    resumed = part.exists() and part.stat().st_size > 0
    _fetch(url, part, file=file, report=report)
    actual = _check(part, file)
    if actual is not None and resumed and _is_http(url):
        part.unlink(missing_ok=True)
        _fetch(url, part, file=file, report=report)
        actual = _check(part, file)
    if actual is not None:
        part.unlink(missing_ok=True)
    return actual


def _not_found(
    model_id: str, file: WeightFile, dest: Path, mirror: str | None, url_reason: str, mirror_reason: str | None
) -> str:
    """The one-line error: the file, its URL and why, the mirror setting, where to put the file."""
    mirror_part = f"{ENV_MIRROR}=" + (mirror if mirror else "unset")
    if mirror and mirror_reason:
        mirror_part += f" ({mirror_reason})"
    folder = _mirror_folder(mirror)
    target = folder / model_id / file.name if folder is not None else dest
    text = f"weights for {model_id}: {file.name} not found: tried {file.url} ({url_reason}) and {mirror_part}; "
    text += f"download it and put it in {target}"
    return " ".join(text.split())


def _mirror_folder(mirror: str | None) -> Path | None:
    if mirror is None or _is_http(mirror):
        return None
    return _local_path(mirror)


def _mirror_sources(model_id: str, file: WeightFile, mirror: str | None) -> Iterator[str]:
    """Candidate locations in the mirror, most specific first, without duplicates."""
    if mirror is None:
        return
    relative = [f"{model_id}/{file.name}", file.name, PurePosixPath(file.name).name]
    seen: set[str] = set()
    for rel in relative:
        if rel in seen:
            continue
        seen.add(rel)
        if _is_http(mirror):
            yield mirror.rstrip("/") + "/" + urllib.parse.quote(rel)
        else:
            yield str(_local_path(mirror) / rel)


def _install(part: Path, dest: Path, sha256: str) -> Path:
    """Atomic rename into place, then remember the verification for the next run."""
    os.replace(part, dest)
    _write_sidecar(dest, sha256)
    return dest


def _check(path: Path, file: WeightFile) -> str | None:
    """None when the file is right, else its actual SHA-256 for the message."""
    actual = sha256_file(path)
    return None if actual == file.sha256 else actual


# --------------------------------------------------------------------------- cache and sidecar


def _discard(dest: Path) -> None:
    dest.unlink(missing_ok=True)
    _sidecar(dest).unlink(missing_ok=True)


@contextlib.contextmanager
def _file_lock(dest: Path) -> Iterator[None]:
    """Exclusive lock on ``<dest>.lock``, removed on release.

    Removing a lock file is racy unless the holder checks, after locking, that the path still
    names the file it locked; otherwise it retries on the new file.
    """
    if fcntl is None:  # pragma: no cover
        yield
        return
    lock_path = dest.with_name(dest.name + ".lock")
    while True:
        fd = os.open(lock_path, os.O_RDWR | os.O_CREAT, 0o644)
        fcntl.flock(fd, fcntl.LOCK_EX)
        try:
            if os.fstat(fd).st_ino == os.stat(lock_path).st_ino:
                break
        except FileNotFoundError:
            pass
        os.close(fd)
    try:
        yield
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(lock_path)
        os.close(fd)


# --------------------------------------------------------------------------- transports


def _is_http(location: str) -> bool:
    return location.lower().startswith(("http://", "https://"))


def _is_local(location: str) -> bool:
    return not _is_http(location)


def _local_path(location: str) -> Path:
    """A folder/file given as a plain path or a file:// URL."""
    if location.lower().startswith("file://"):
        parsed = urllib.parse.urlparse(location)
        return Path(urllib.request.url2pathname(parsed.path))
    return Path(location).expanduser().resolve()


def _fetch(source: str, part: Path, *, file: WeightFile, report: ProgressCallback) -> None:
    """Put the bytes of ``source`` into ``part`` (not yet verified); raise _Unavailable with a reason."""
    if _is_http(source):
        _download(source, part, file=file, report=report)
        return
    if not source.lower().startswith("file://") and not Path(source).is_absolute():
        raise _Unavailable("not an http(s)://, file:// URL or absolute path")
    path = _local_path(source)
    if not path.is_file():
        raise _Unavailable("no such file")
    _copy(path, part, name=file.name, report=report)


def _copy(path: Path, part: Path, *, name: str, report: ProgressCallback) -> None:
    total = path.stat().st_size
    done = 0
    try:
        with open(path, "rb") as src, open(part, "wb") as out:
            while block := src.read(_CHUNK):
                out.write(block)
                done += len(block)
                report(name, done, total)
    except OSError as error:
        part.unlink(missing_ok=True)
        raise _Unavailable(f"cannot read: {error.strerror or error}") from error


def _download(url: str, part: Path, *, file: WeightFile, report: ProgressCallback) -> None:
    """Download with resume: retry an interrupted transfer up to MAX_ATTEMPTS times from where it stopped."""
    last: _Interrupted | None = None
    for _ in range(MAX_ATTEMPTS):
        try:
            _download_once(url, part, file=file, report=report)
            return
        except _Interrupted as error:
            last = error
    assert last is not None
    raise last


def _download_once(url: str, part: Path, *, file: WeightFile, report: ProgressCallback) -> None:
    offset = part.stat().st_size if part.exists() else 0
    headers = {"User-Agent": f"medhub/{__version__}", "Accept-Encoding": "identity"}
    if offset:
        headers["Range"] = f"bytes={offset}-"
    try:
        response = urllib.request.urlopen(urllib.request.Request(url, headers=headers), timeout=TIMEOUT)
    except HTTPError as error:
        if error.code == 416 and offset:  # our .part is not a prefix of this file: start over
            part.unlink(missing_ok=True)
            raise _Interrupted("HTTP 416 on resume") from error
        raise _Unavailable(f"HTTP {error.code} {error.reason}") from error
    except URLError as error:
        raise _Unavailable(_short(error.reason)) from error
    except (OSError, HTTPException) as error:
        raise _Unavailable(_short(error)) from error

    with response:
        if offset and not (response.status == 206 and _range_start(response.headers.get("Content-Range")) == offset):
            offset = 0  # the server ignored Range (200) or answered another range: restart the file
        length = response.headers.get("Content-Length")
        total = offset + int(length) if length and length.isdigit() else file.size
        done = offset
        try:
            with open(part, "ab" if offset else "wb") as out:
                while block := response.read(_CHUNK):
                    out.write(block)
                    done += len(block)
                    report(file.name, done, total)
        except (OSError, HTTPException) as error:
            raise _Interrupted(f"interrupted after {done} of {total or '?'} bytes: {_short(error)}") from error
    if total is not None and done < total:
        raise _Interrupted(f"interrupted after {done} of {total} bytes")


_RANGE = re.compile(r"^\s*bytes\s+(\d+)-\d+/(\d+|\*)\s*$")


def _range_start(content_range: str | None) -> int | None:
    match = _RANGE.match(content_range or "")
    return int(match.group(1)) if match else None


def _short(error: Any) -> str:
    """A short, single-line reason ("Connection refused", "timed out")."""
    if isinstance(error, OSError) and error.strerror:
        return error.strerror
    text = " ".join(str(error).split())
    return text or type(error).__name__


# --------------------------------------------------------------------------- progress


@contextlib.contextmanager
def _progress_reporter(progress: bool | ProgressCallback | None) -> Iterator[ProgressCallback]:
    """Adapt the ``progress`` argument to one callback; True opens a rich bar for the whole call."""
    if callable(progress):
        yield progress
        return
    if not progress:
        yield lambda name, done, total: None
        return
    from rich.console import Console
    from rich.progress import (
        BarColumn,
        DownloadColumn,
        Progress,
        TextColumn,
        TimeRemainingColumn,
        TransferSpeedColumn,
    )

    bar = Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        DownloadColumn(),
        TransferSpeedColumn(),
        TimeRemainingColumn(),
        console=Console(stderr=True),
    )
    tasks: dict[str, Any] = {}

    def report(name: str, done: int, total: int | None) -> None:
        if name not in tasks:
            tasks[name] = bar.add_task(name, total=total)
        bar.update(tasks[name], completed=done, total=total)

    with bar:
        yield report
