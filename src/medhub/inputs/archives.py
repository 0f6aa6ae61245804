"""Archives of DICOM (``.zip``, ``.tar``, ``.tar.gz`` / ``.tgz``) unpacked into a folder, refusing what could harm.

One implementation for every door an archive comes through: ``medhub run --input series.zip``
and an upload to ``medhub serve`` (:mod:`medhub.serve.uploads`). Before anything is extracted,
every entry is checked: no absolute path or drive, no ``..``, no symbolic or hard link, no device
or pipe, no encrypted zip entry, no more than :data:`MAX_ENTRIES` entries, the sizes the
archive declares must fit the limit, and neither a zip entry nor the archive as a whole may
declare to expand by more than :data:`MAX_RATIO` to 1: a zip bomb (1 GiB of zeros deflates to
about 1 MB, 1000 to 1; real DICOM deflates 2 to 10 to 1, a sparse SEG up to about 100) is refused
whatever the limit, so it never fills a disk whose free space is the limit. While extracting,
the real bytes written are counted again against the same limit (a lying header gains nothing),
files are written one by one inside the target folder only, and two entries with one name never overwrite each other.

Errors are :class:`ArchiveError` with a ``kind`` (``unsafe``, ``too_large``, ``unreadable``), which
the server turns into HTTP 400 / 413 / 422 and the command line into one line and exit code 2.
"""

from __future__ import annotations

import re
import shutil
import stat
import tarfile
import zipfile
from pathlib import Path, PurePosixPath
from typing import IO

from medhub.errors import MedhubError

CHUNK = 1024 * 1024
MAX_ENTRIES = 200_000
MAX_RATIO = 200
"""The largest expansion a zip entry, or an archive, may declare: above it, a zip bomb."""
RATIO_FLOOR = 1024 * 1024
"""What expands to less than this is not judged by its ratio (small files compress well)."""
ARCHIVE_SUFFIXES = (".zip", ".tar", ".tar.gz", ".tgz")
_DRIVE = re.compile(r"^[A-Za-z]:")
_UNSAFE_CHARS = re.compile(r"[^A-Za-z0-9._ +-]+")
_SKIPPED_FOLDERS = ("__MACOSX/",)


class ArchiveError(MedhubError):
    """An archive (or a name in it) that is refused; ``kind``: ``unsafe``, ``too_large`` or ``unreadable``."""

    def __init__(self, kind: str, message: str) -> None:
        super().__init__(message)
        self.kind = kind


def size_text(n: int) -> str:
    return f"{n / 1024 / 1024:.0f} MB" if n >= 1024 * 1024 else f"{n} bytes"


class Budget:
    """Counts bytes against a limit; going over it is an ``ArchiveError('too_large')`` naming the limit."""

    def __init__(self, limit: int, what: str) -> None:
        self.limit, self.used, self.what = limit, 0, what

    @property
    def left(self) -> int:
        return self.limit - self.used

    def take(self, size: int) -> None:
        self.used += size
        if self.used > self.limit:
            raise ArchiveError("too_large", f"{self.what} exceeds the limit of {size_text(self.limit)}")


def is_archive_name(name: str) -> bool:
    return name.lower().endswith(ARCHIVE_SUFFIXES)


def archive_kind(path: Path) -> str | None:
    """``zip`` or ``tar`` by the file's content (a renamed archive is still one), else None."""
    try:
        with open(path, "rb") as handle:
            head = handle.read(4)
    except OSError:
        return None
    if head.startswith(b"PK\x03\x04") or head.startswith(b"PK\x05\x06"):
        return "zip"
    if path.is_file() and (is_archive_name(path.name) or head[:2] == b"\x1f\x8b") and tarfile.is_tarfile(path):
        return "tar"
    return None


def safe_relative(name: str, what: str) -> PurePosixPath:
    """A path from an archive or a client made relative and checked: no absolute path, no drive, no ``..``."""
    text = name.replace("\\", "/")
    if text.startswith("/") or _DRIVE.match(text):
        raise ArchiveError("unsafe", f"{what}: absolute path {name!r} refused")
    parts = [p for p in text.split("/") if p not in ("", ".")]
    if any(p == ".." for p in parts):
        raise ArchiveError("unsafe", f"{what}: path {name!r} leaves the upload folder ('..') and is refused")
    cleaned = [_UNSAFE_CHARS.sub("_", p).strip(" ") or "_" for p in parts]
    if not cleaned:
        raise ArchiveError("unsafe", f"{what}: empty file name")
    return PurePosixPath(*cleaned)


def unique(path: Path) -> Path:
    """``path`` or, if taken (two entries with one name), ``name-2``, ``name-3``, ..."""
    if not path.exists():
        return path
    for n in range(2, 1_000_000):
        candidate = path.with_name(f"{path.name}-{n}")
        if not candidate.exists():
            return candidate
    raise ArchiveError("unsafe", f"too many files named {path.name}")


def copy_counted(source: IO[bytes], target: Path, budget: Budget) -> None:
    """Copy a stream into a new file, counting every byte against ``budget``."""
    with target.open("xb") as out:
        while chunk := source.read(CHUNK):
            budget.take(len(chunk))
            out.write(chunk)


# ------------------------------------------------------------------------------------------- zip


def refuse_bomb(name: str, what: str, packed: int, declared: int) -> None:
    """Refuse a zip bomb: ``declared`` bytes (over :data:`RATIO_FLOOR`) from ``packed``, above ``MAX_RATIO`` to 1."""
    if declared > RATIO_FLOOR and declared > MAX_RATIO * max(packed, 1):
        ratio = declared // max(packed, 1)
        raise ArchiveError("too_large", f"{name}: {what} declares to expand {size_text(packed)} to "
                                        f"{size_text(declared)} ({ratio} to 1; at most {MAX_RATIO} to 1 is accepted): "
                                        "refused as a zip bomb, nothing extracted")


def check_zip(archive: zipfile.ZipFile, name: str, unzip_limit: int, archive_bytes: int | None = None
              ) -> list[zipfile.ZipInfo]:
    """The file entries of a zip, after refusing unsafe or oversized ones (nothing is extracted yet).

    ``archive_bytes``: the zip's size (for the ratio of the whole; default: its entries' packed sizes).
    """
    infos = archive.infolist()
    if len(infos) > MAX_ENTRIES:
        raise ArchiveError("too_large", f"{name}: {len(infos)} entries; at most {MAX_ENTRIES} are accepted")
    files = []
    declared = packed = 0
    for info in infos:
        mode = info.external_attr >> 16
        if stat.S_ISLNK(mode):
            raise ArchiveError("unsafe", f"{name}: entry {info.filename!r} is a symbolic link; links are refused")
        safe_relative(info.filename, f"{name}: entry")
        if info.flag_bits & 0x1:
            raise ArchiveError("unsafe", f"{name}: entry {info.filename!r} is encrypted; use an unencrypted zip")
        if info.is_dir() or info.filename.startswith(_SKIPPED_FOLDERS):
            continue
        refuse_bomb(name, f"entry {info.filename!r}", info.compress_size, info.file_size)
        declared += info.file_size
        packed += info.compress_size
        files.append(info)
    refuse_bomb(name, "the archive", archive_bytes if archive_bytes is not None else packed, declared)
    _refuse_over_limit(name, declared, unzip_limit)
    return files


def extract_zip(zip_path: Path, name: str, target: Path, budget: Budget) -> int:
    """Check, then extract a zip's files into ``target``; returns how many files were written."""
    try:
        archive = zipfile.ZipFile(zip_path)
    except (zipfile.BadZipFile, OSError) as exc:
        raise ArchiveError("unreadable", f"{name}: not a readable zip file ({exc})") from None
    count = 0
    with archive:
        for info in check_zip(archive, name, budget.left, zip_path.stat().st_size):
            try:  # a folder over a file of the same name ("a", then "a/b") is an OSError here, too
                destination = _destination(target, info.filename, name)
                with archive.open(info) as source:
                    copy_counted(source, destination, budget)  # counts real bytes: a lying header gains nothing
            except (zipfile.BadZipFile, zipfile.LargeZipFile, OSError, EOFError, NotImplementedError) as exc:
                raise ArchiveError("unreadable", f"{name}: entry {info.filename!r} cannot be extracted ({exc})"
                                   ) from None
            count += 1
    return count


# ------------------------------------------------------------------------------------------- tar


def check_tar(members: list[tarfile.TarInfo], name: str, limit: int, archive_bytes: int | None = None
              ) -> list[tarfile.TarInfo]:
    """The regular files of a tar, after refusing links, devices, unsafe names and oversized totals.

    ``archive_bytes``: the (compressed) archive's size, for the ratio of a ``.tar.gz`` bomb.
    """
    if len(members) > MAX_ENTRIES:
        raise ArchiveError("too_large", f"{name}: {len(members)} entries; at most {MAX_ENTRIES} are accepted")
    files = []
    declared = 0
    for member in members:
        if member.isdir() and member.name.replace("\\", "/").strip("/.") == "":
            continue  # the archive's own top folder ("./" of `tar czf x.tar.gz .`)
        safe_relative(member.name, f"{name}: entry")
        if member.issym() or member.islnk():
            raise ArchiveError("unsafe", f"{name}: entry {member.name!r} is a link; links are refused")
        if member.isdir() or member.name.startswith(_SKIPPED_FOLDERS):
            continue
        if not member.isfile():
            raise ArchiveError("unsafe", f"{name}: entry {member.name!r} is a device or pipe; only files are accepted")
        declared += member.size
        files.append(member)
    if archive_bytes is not None:
        refuse_bomb(name, "the archive", archive_bytes, declared)
    _refuse_over_limit(name, declared, limit)
    return files


def _refuse_over_limit(name: str, declared: int, limit: int) -> None:
    """An archive whose entries declare more bytes than may be written: refused before extracting (HTTP 413)."""
    if declared > limit:
        raise ArchiveError("too_large", f"{name}: expands to {size_text(declared)}, more than the limit of "
                                        f"{size_text(limit)}")


def extract_tar(tar_path: Path, name: str, target: Path, budget: Budget) -> int:
    """Check, then extract a tar's (or .tar.gz's) regular files into ``target``; returns how many were written."""
    try:
        with tarfile.open(tar_path) as archive:
            members = archive.getmembers()  # reads the whole index (a .tar.gz is decompressed once to list it)
    except (tarfile.TarError, OSError, EOFError) as exc:
        raise ArchiveError("unreadable", f"{name}: not a readable tar archive ({exc})") from None
    count = 0
    try:
        with tarfile.open(tar_path) as archive:
            for member in check_tar(members, name, budget.left, tar_path.stat().st_size):
                destination = _destination(target, member.name, name)
                source = archive.extractfile(member)
                if source is None:  # pragma: no cover - check_tar passes regular files only
                    continue
                with source:
                    copy_counted(source, destination, budget)
                count += 1
    except (tarfile.TarError, OSError, EOFError) as exc:
        raise ArchiveError("unreadable", f"{name}: cannot be extracted ({exc})") from None
    return count


# ------------------------------------------------------------------------------------------- either


def _destination(target: Path, entry: str, name: str) -> Path:
    destination = target / safe_relative(entry, f"{name}: entry")
    destination.parent.mkdir(parents=True, exist_ok=True)
    return unique(destination)


def extract_archive(path: Path, target: Path, budget: Budget, name: str | None = None) -> int:
    """Extract a zip or tar archive (found by its content) into ``target``; returns the files written."""
    label = name or path.name
    kind = archive_kind(path)
    if kind == "zip":
        return extract_zip(path, label, target, budget)
    if kind == "tar":
        return extract_tar(path, label, target, budget)
    raise ArchiveError("unreadable", f"{label}: not a zip or tar archive")


def unpack(path: Path, target: Path, *, limit: int | None = None, reserve: int = 1 << 30) -> int:
    """Unpack a local archive (``medhub run --input series.zip``, ``medhub view``) into ``target``.

    The same checks as an upload to ``medhub serve``; the extracted bytes may use the free space
    of ``target``'s disk less ``reserve`` (or ``limit`` when given), so an archive that expands
    beyond the disk (a zip bomb) is refused before it fills it.
    """
    if limit is None:
        target.mkdir(parents=True, exist_ok=True)
        limit = max(0, shutil.disk_usage(target).free - reserve)
    budget = Budget(limit, f"{path.name} unpacked into {target}")
    try:
        return extract_archive(path, target, budget)
    except ArchiveError as exc:
        if exc.kind == "too_large":
            raise ArchiveError(exc.kind, f"{exc} (the free space of that disk; set TMPDIR to a larger one)") from None
        raise
