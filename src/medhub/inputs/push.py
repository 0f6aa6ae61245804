"""Storing a run's results in a PACS: the accounting every protocol shares.

DICOMweb (STOW-RS) and DIMSE (C-STORE) differ in how one object travels, not in what a user
must be told: every file is read and checked before anything is sent, the server is proven to
answer before the first object, objects are stored one by one in order, and the first failure
stops the push with one line that says exactly what was and was not stored ("pushed 1 of 2:
stored a.seg.dcm; not stored b.rtstruct.dcm: cannot reach ..."). A protocol supplies a
:class:`PushTarget`; :func:`push_files` does the rest.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Protocol

import pydicom

from medhub.errors import MedhubError

PushProgress = Callable[[Path, str], None]
"""Called as ``progress(file, sop_instance_uid)`` after each file is stored."""

PUSHED_SUFFIXES = (".seg.dcm", ".rtstruct.dcm", ".sr.dcm")
"""The DICOM objects a run writes that belong in a PACS (SEG, RTSTRUCT, SR)."""


class PushTarget(Protocol):
    """One PACS to store objects in, over one protocol."""

    def open(self, datasets: Sequence[pydicom.Dataset]) -> None:
        """Connect and prove the server answers (and accepts us) before anything is stored."""

    def store(self, path: Path, dataset: pydicom.Dataset) -> None:
        """Store one object; raise MedhubError with the server's reason when it is not stored."""

    def close(self) -> None:
        """Release the connection (never raises)."""


def push_files(files: Sequence[Path], target: PushTarget, progress: PushProgress | None = None) -> list[str]:
    """Store each DICOM file through ``target``; return the stored SOP Instance UIDs, in order.

    As close to all-or-nothing as per-object storage allows: a file that cannot be read, or a
    server that does not answer, stops the push before anything is stored ("pushed 0 of n"); a
    failure midway names what was stored and what was not.
    """
    paths = [Path(f) for f in files]
    datasets = [read_for_push(path) for path in paths]
    if not datasets:
        return []
    try:
        target.open(datasets)
    except MedhubError as exc:
        target.close()
        names = ", ".join(p.name for p in paths)
        raise MedhubError(f"pushed 0 of {len(paths)}: {exc}; not stored: {names}") from None
    stored: list[str] = []
    try:
        for index, (path, dataset) in enumerate(zip(paths, datasets, strict=True)):
            try:
                target.store(path, dataset)
            except MedhubError as exc:
                raise MedhubError(partial_message(paths, index, str(exc))) from None
            stored.append(str(dataset.SOPInstanceUID))
            if progress:
                progress(path, stored[-1])
    finally:
        target.close()
    return stored


def read_for_push(path: Path) -> pydicom.Dataset:
    """Read one output before anything is stored; a bad file stops the push with nothing sent."""
    if not path.is_file():
        raise MedhubError(f"cannot push {path}: file not found (nothing pushed)")
    try:
        dataset = pydicom.dcmread(path)
    except Exception as exc:
        reason = (str(exc).splitlines() or [type(exc).__name__])[0][:200]
        raise MedhubError(f"cannot push {path}: not a readable DICOM file ({reason}) (nothing pushed)") from None
    missing = [k for k in ("StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID", "SOPClassUID")
               if not str(getattr(dataset, k, "") or "").strip()]
    if missing:
        raise MedhubError(f"cannot push {path}: empty {', '.join(missing)}; a PACS refuses an object "
                          "without these UIDs (nothing pushed)")
    return dataset


def partial_message(paths: Sequence[Path], failed_index: int, reason: str) -> str:
    """``pushed k of n: stored ...; not stored ...: reason`` for a push that stopped at ``failed_index``."""
    stored = ", ".join(p.name for p in paths[:failed_index]) or "nothing"
    not_stored = ", ".join(p.name for p in paths[failed_index:])
    return f"pushed {failed_index} of {len(paths)}: stored {stored}; not stored {not_stored}: {reason}"
