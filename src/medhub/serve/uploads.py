"""Uploaded input → a job's ``input/`` folder, refusing anything that could escape it or flood the disk.

An upload is one or more DICOM files, one or more archives of DICOM (``.zip``, ``.tar``,
``.tar.gz``), or exactly one NIfTI file (``.nii`` / ``.nii.gz``). Every byte is counted against
the upload limit while it is copied (413); archives are checked and unpacked by
:mod:`medhub.inputs.archives`, the code ``medhub run --input series.zip`` uses too (absolute
paths, ``..``, links, encryption: 400; the extracted total is capped, a zip bomb: 413). The
caller decides what the files mean (scan and select, :mod:`medhub.serve.jobs`).
"""

from __future__ import annotations

import shutil
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import BinaryIO

from medhub.errors import MedhubError
from medhub.inputs.archives import (
    ArchiveError,
    Budget,
    archive_kind,
    copy_counted,
    extract_archive,
    is_archive_name,
    safe_relative,
    unique,
)
from medhub.inputs.nifti import is_nifti_name

STATUS = {"unsafe": 400, "too_large": 413, "unreadable": 422}  # ArchiveError.kind -> HTTP status


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


def _archive_folder_name(name: str) -> str:
    base = safe_relative(name, "upload").name
    for suffix in (".tar.gz", ".tgz", ".tar", ".zip"):
        if base.lower().endswith(suffix):
            return base[: -len(suffix)] or "archive"
    return base


def save_uploads(uploads: Iterable[Upload], input_dir: Path, *, max_bytes: int, unzip_limit: int) -> SavedInput:
    """Copy the uploads into ``input_dir`` (archives extracted into a folder each) and say what they are.

    Raises :class:`ApiError`: 413 over a limit, 400 for unsafe names or archive entries, 422 when
    the upload is empty, mixes a NIfTI file with other files, or holds an archive that cannot be read.
    """
    try:
        return _save(list(uploads), input_dir, max_bytes=max_bytes, unzip_limit=unzip_limit)
    except ArchiveError as exc:
        raise ApiError(STATUS[exc.kind], str(exc)) from None


def _save(uploads: list[Upload], input_dir: Path, *, max_bytes: int, unzip_limit: int) -> SavedInput:
    if not uploads:
        raise ApiError(422, "no files uploaded: send DICOM files, a zip of DICOM, or one NIfTI file in 'files'")
    input_dir.mkdir(parents=True, exist_ok=True)
    budget = Budget(max_bytes, "the upload")
    unzipped = Budget(unzip_limit, "the unzipped upload")
    names = [u.filename or f"upload-{i}" for i, u in enumerate(uploads, 1)]
    niftis = [n for n in names if is_nifti_name(n)]
    if niftis:
        if len(uploads) != 1:
            raise ApiError(422, f"a NIfTI upload must be the only file; got {len(uploads)} files "
                                f"including {niftis[0]}")
        target = input_dir / safe_relative(names[0], "upload").name
        copy_counted(uploads[0].file, target, budget)
        return SavedInput(path=target, kind="nifti", files=1, bytes_uploaded=budget.used, names=names)

    files = 0
    staging = input_dir.parent / ".upload"
    staging.mkdir(parents=True, exist_ok=True)
    try:
        for index, (upload, name) in enumerate(zip(uploads, names, strict=True)):
            raw = staging / f"{index}.upload"
            copy_counted(upload.file, raw, budget)
            if is_archive_name(name) or archive_kind(raw) is not None:
                folder = unique(input_dir / _archive_folder_name(name))
                files += extract_archive(raw, folder, unzipped, name=PurePosixPath(name.replace("\\", "/")).name)
            else:
                destination = input_dir / safe_relative(name, "upload")
                destination.parent.mkdir(parents=True, exist_ok=True)
                shutil.move(raw, unique(destination))
                files += 1
            raw.unlink(missing_ok=True)
    except OSError as exc:  # e.g. "a" uploaded as a file and "a/b" as a file inside it
        raise ApiError(400, f"the upload cannot be stored: {exc.strerror or exc}") from None
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return SavedInput(path=input_dir, kind="dicom", files=files, bytes_uploaded=budget.used, names=names)
