"""PACS URLs: which protocol an ``--input``, ``--push`` or ``--forward`` URL speaks, and one call for each.

``dicomweb://`` / ``dicomwebs://`` go to :mod:`medhub.inputs.dicomweb` (QIDO-RS, WADO-RS, STOW-RS),
``dimse://`` to :mod:`medhub.inputs.dimse` (C-FIND, C-GET or C-MOVE, C-STORE). Callers (the CLI,
the DICOM listener) name a URL and never choose the module themselves.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

from medhub.errors import MedhubError
from medhub.inputs import dicomweb, dimse
from medhub.inputs.push import PushProgress

PUSH_FORMS = "dicomweb://HOST[:PORT]/PATH or dimse://AET@HOST:PORT"


def is_remote(value: object) -> bool:
    """True for a URL of a protocol medhub speaks (``dicomweb://``, ``dicomwebs://``, ``dimse://``)."""
    return dicomweb.is_dicomweb_url(value) or dimse.is_dimse_url(value)


def label(value: str) -> str:
    """How reports and messages name a URL: without credentials."""
    return dicomweb.redact_url(value) if dicomweb.is_dicomweb_url(value) else value


def check_push_url(url: str) -> None:
    """Parse a push / forward destination now, so a typo fails before any work (one line)."""
    if dicomweb.is_dicomweb_url(url):
        dicomweb.parse_dicomweb_url(url)
    elif dimse.is_dimse_url(url):
        target = dimse.parse_dimse_url(url)
        if target.study or target.series or target.patient:
            raise MedhubError(f"push destination dimse://{target.address} takes no ?study/series/patient: "
                              "objects go to the study they belong to")
        dimse.calling_ae_title()
    else:
        raise MedhubError(f"cannot push to {label(url)}: expected {PUSH_FORMS}")


def probe_push(url: str) -> None:
    """Prove before any work that a push destination answers and accepts medhub; one line naming it otherwise.

    DICOMweb: a cheap QIDO-RS question with the credentials the push will send (401/403: refused);
    DIMSE: an association and a C-ECHO with medhub's AE title (an unknown AE title is refused).
    """
    check_push_url(url)
    try:
        if dicomweb.is_dicomweb_url(url):
            target = dicomweb.DicomwebPush(dicomweb.parse_dicomweb_url(url))
            try:
                target.open([])
            finally:
                target.close()
        else:
            dimse.echo(url)
    except MedhubError as exc:
        raise MedhubError(f"--push {label(url).split('?')[0]}: {exc} (checked before the run; nothing was done)"
                          ) from None


def fetch(url: str, dest_dir: Path, progress: dicomweb.FetchProgress | None = None,
          move_to: str | None = None, move_port: int | None = None) -> Path:
    """Copy the series a PACS URL selects into ``dest_dir/<series uid>/`` (see each protocol's ``fetch_input``)."""
    if dimse.is_dimse_url(url):
        return dimse.fetch_input(url, dest_dir, progress, move_to=move_to, move_port=move_port)
    if move_to is not None or move_port is not None:
        raise MedhubError("--move-to and --move-port apply to dimse:// inputs only")
    return dicomweb.fetch_input(url, dest_dir, progress)


def push(files: Sequence[Path], url: str | os.PathLike[str], progress: PushProgress | None = None) -> list[str]:
    """Store DICOM files at a PACS URL; "pushed k of n" accounting and one-line errors for both protocols."""
    if dimse.is_dimse_url(url):
        return dimse.push_outputs(files, url, progress)
    if dicomweb.is_dicomweb_url(url):
        return dicomweb.push_outputs(files, url, progress)
    raise MedhubError(f"cannot push to {label(str(url))}: expected {PUSH_FORMS}")
