"""Writing files so that no half-written file is ever seen, and never touching the user's own.

Every output is written under a hidden temporary name in its final folder and renamed into
place only when complete (``os.replace`` is atomic on one filesystem), so a crash or kill
leaves either the old file, the new file, or nothing, never a truncated DICOM.
"""

from __future__ import annotations

import contextlib
import os
import re
import threading
from collections.abc import Iterator
from pathlib import Path

from medhub.errors import MedhubError

_UNSAFE = re.compile(r"[^A-Za-z0-9._-]+")


def safe_component(value: object) -> str:
    """A value made safe as one path component (no separators, no leading dots)."""
    text = _UNSAFE.sub("_", str(value)).strip("._") or "unknown"
    return text[:120]


@contextlib.contextmanager
def atomic_output(final: Path) -> Iterator[Path]:
    """Yield a temporary path next to ``final``; rename it onto ``final`` only if the block succeeds.

    The temporary name holds the process and thread, so threads of ``medhub serve`` writing the
    same file never share one.
    """
    final.parent.mkdir(parents=True, exist_ok=True)
    temporary = final.with_name(f".{final.name}.{os.getpid()}.{threading.get_ident()}.partial")
    try:
        yield temporary
        os.replace(temporary, final)
    finally:
        with contextlib.suppress(FileNotFoundError):
            temporary.unlink()


def remove_stale_partials(output_dir: Path) -> int:
    """Delete temporary files a killed run left behind (only medhub's own ``.NAME.PID.THREAD.partial``)."""
    removed = 0
    for stale in output_dir.rglob(".*.partial"):
        with contextlib.suppress(OSError):
            stale.unlink()
            removed += 1
    return removed


def check_output_location(input_path: Path, output_dir: Path) -> None:
    """Refuse an output folder inside the input tree: the input tree is never modified."""
    source = input_path.resolve()
    target = output_dir.resolve()
    if source.is_dir() and (target == source or source in target.parents):
        raise MedhubError(f"output folder {output_dir} is inside the input folder {input_path}; choose another")
