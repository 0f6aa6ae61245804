"""Uploaded input → a job's ``input/`` folder, refusing anything that could escape it or flood the disk.

An upload is one or more DICOM files, one or more ``.zip`` archives of DICOM, or exactly one
NIfTI file (``.nii`` / ``.nii.gz``). Every byte is counted against the upload limit while it is
copied (413), every zip entry is checked before anything is extracted (absolute paths, ``..``,
symlinks, encryption: 400) and the extracted total is capped (a zip bomb: 413). The caller
decides what the files mean (scan and select, :mod:`medhub.serve.jobs`).
"""

from __future__ import annotations

import re
import shutil
import stat
import zipfile
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import BinaryIO

from medhub.errors import MedhubError

CHUNK = 1024 * 1024
MAX_ZIP_ENTRIES = 200_000
NIFTI_SUFFIXES = (".nii", ".nii.gz")
_DRIVE = re.compile(r"^[A-Za-z]:")
_UNSAFE_CHARS = re.compile(r"[^A-Za-z0-9._ +-]+")


class ApiError(MedhubError):
    """A problem with a request, with the HTTP status the API answers (400, 404, 413, 422, 429)."""

    def __init__(self, status_code: int, message: str) -> None:
        super().__init__(message)
        self.status_code = status_code


@dataclass
class Upload:
    """One uploaded file as the web framework hands it over: the client's name and an open file."""

    filename: str
    file: BinaryIO


@dataclass
class SavedInput:
    """What landed in ``input/``: the path the pipeline reads (the folder, or the one NIfTI file)."""

    path: Path
    kind: str  # "dicom" or "nifti"
    files: int
    bytes_uploaded: int
    names: list[str]

    def summary(self) -> dict[str, object]:
        return {"kind": self.kind, "files": self.files, "bytes": self.bytes_uploaded, "uploads": self.names[:20]}


def is_nifti_name(name: str) -> bool:
    return name.lower().endswith(NIFTI_SUFFIXES)


def _is_zip(upload_name: str, head: bytes) -> bool:
    return upload_name.lower().endswith(".zip") or head.startswith(b"PK\x03\x04")


def safe_relative(name: str, what: str) -> PurePosixPath:
    """A client-given path made relative and checked: no absolute path, no drive, no ``..`` (400 otherwise)."""
    text = name.replace("\\", "/")
    if text.startswith("/") or _DRIVE.match(text):
        raise ApiError(400, f"{what}: absolute path {name!r} refused")
    parts = [p for p in text.split("/") if p not in ("", ".")]
    if any(p == ".." for p in parts):
        raise ApiError(400, f"{what}: path {name!r} leaves the upload folder ('..') and is refused")
    cleaned = [_UNSAFE_CHARS.sub("_", p).strip(" ") or "_" for p in parts]
    if not cleaned:
        raise ApiError(400, f"{what}: empty file name")
    return PurePosixPath(*cleaned)


def _unique(path: Path) -> Path:
    """``path`` or, if taken (two uploads with one name), ``name-2``, ``name-3``, ..."""
    if not path.exists():
        return path
    for n in range(2, 1_000_000):
        candidate = path.with_name(f"{path.name}-{n}")
        if not candidate.exists():
            return candidate
    raise ApiError(400, f"too many files named {path.name}")


class _Budget:
    """Counts bytes against a limit; exceeding it is a 413 whose message names the limit."""

    def __init__(self, limit: int, what: str) -> None:
        self.limit, self.used, self.what = limit, 0, what

    def take(self, size: int) -> None:
        self.used += size
        if self.used > self.limit:
            raise ApiError(413, f"{self.what} exceeds the limit of {_size(self.limit)}")


def _size(n: int) -> str:
    return f"{n / 1024 / 1024:.0f} MB" if n >= 1024 * 1024 else f"{n} bytes"


def _copy(source: BinaryIO, target: Path, budget: _Budget) -> None:
    with target.open("wb") as out:
        while chunk := source.read(CHUNK):
            budget.take(len(chunk))
            out.write(chunk)


def check_zip(archive: zipfile.ZipFile, name: str, unzip_limit: int) -> list[zipfile.ZipInfo]:
    """The file entries of a zip, after refusing unsafe or oversized ones (nothing is extracted yet)."""
    infos = archive.infolist()
    if len(infos) > MAX_ZIP_ENTRIES:
        raise ApiError(413, f"{name}: {len(infos)} entries; at most {MAX_ZIP_ENTRIES} are accepted")
    files = []
    declared = 0
    for info in infos:
        mode = info.external_attr >> 16
        if stat.S_ISLNK(mode):
            raise ApiError(400, f"{name}: entry {info.filename!r} is a symbolic link; links are refused")
        safe_relative(info.filename, f"{name}: entry")
        if info.flag_bits & 0x1:
            raise ApiError(400, f"{name}: entry {info.filename!r} is encrypted; upload an unencrypted zip")
        if info.is_dir() or info.filename.startswith("__MACOSX/"):
            continue
        declared += info.file_size
        files.append(info)
    if declared > unzip_limit:
        raise ApiError(413, f"{name}: expands to {_size(declared)}, more than the limit of {_size(unzip_limit)}")
    return files


def _extract(zip_path: Path, name: str, target: Path, unzip_limit: _Budget) -> int:
    try:
        archive = zipfile.ZipFile(zip_path)
    except (zipfile.BadZipFile, OSError) as exc:
        raise ApiError(422, f"{name}: not a readable zip file ({exc})") from None
    count = 0
    with archive:
        for info in check_zip(archive, name, unzip_limit.limit - unzip_limit.used):
            destination = target / safe_relative(info.filename, f"{name}: entry")
            destination.parent.mkdir(parents=True, exist_ok=True)
            destination = _unique(destination)
            try:
                with archive.open(info) as source:
                    _copy(source, destination, unzip_limit)  # counts real bytes: a lying header gains nothing
            except (zipfile.BadZipFile, zipfile.LargeZipFile, OSError, EOFError, NotImplementedError) as exc:
                raise ApiError(422, f"{name}: entry {info.filename!r} cannot be extracted ({exc})") from None
            count += 1
    return count


def save_uploads(uploads: Iterable[Upload], input_dir: Path, *, max_bytes: int, unzip_limit: int) -> SavedInput:
    """Copy the uploads into ``input_dir`` (zips extracted into a folder each) and say what they are.

    Raises :class:`ApiError`: 413 over a limit, 400 for unsafe names or zip entries, 422 when the
    upload is empty or mixes a NIfTI file with other files.
    """
    uploads = list(uploads)
    if not uploads:
        raise ApiError(422, "no files uploaded: send DICOM files, a zip of DICOM, or one NIfTI file in 'files'")
    input_dir.mkdir(parents=True, exist_ok=True)
    budget = _Budget(max_bytes, "the upload")
    unzipped = _Budget(unzip_limit, "the unzipped upload")
    names = [u.filename or f"upload-{i}" for i, u in enumerate(uploads, 1)]
    niftis = [n for n in names if is_nifti_name(n)]
    if niftis:
        if len(uploads) != 1:
            raise ApiError(422, f"a NIfTI upload must be the only file; got {len(uploads)} files "
                                f"including {niftis[0]}")
        name = safe_relative(names[0], "upload").name
        target = input_dir / name
        _copy(uploads[0].file, target, budget)
        return SavedInput(path=target, kind="nifti", files=1, bytes_uploaded=budget.used, names=names)

    files = 0
    staging = input_dir.parent / ".upload"
    staging.mkdir(parents=True, exist_ok=True)
    try:
        for index, (upload, name) in enumerate(zip(uploads, names, strict=True)):
            head = upload.file.read(4)
            upload.file.seek(0)
            if _is_zip(name, head):
                raw = staging / f"{index}.zip"
                _copy(upload.file, raw, budget)
                folder = _unique(input_dir / (safe_relative(name, "upload").name.removesuffix(".zip") or "zip"))
                files += _extract(raw, PurePosixPath(name.replace("\\", "/")).name, folder, unzipped)
                raw.unlink()
            else:
                destination = input_dir / safe_relative(name, "upload")
                destination.parent.mkdir(parents=True, exist_ok=True)
                _copy(upload.file, _unique(destination), budget)
                files += 1
    except OSError as exc:  # e.g. "a" uploaded as a file and "a/b" as a file inside it
        raise ApiError(400, f"the upload cannot be stored: {exc.strerror or exc}") from None
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return SavedInput(path=input_dir, kind="dicom", files=files, bytes_uploaded=budget.used, names=names)
