"""Writing files so that no half-written file is ever seen, and never touching the user's own.

Every output is written under a hidden temporary name in its final folder and renamed into
place only when complete (``os.replace`` is atomic on one filesystem), so a crash or kill
leaves either the old file, the new file, or nothing, never a truncated DICOM.

medhub deletes only what it can prove it created. A temporary name carries a **run token**
(``.NAME.mh<16 hex>.PID.THREAD.partial``): a random value issued for one run and recorded in the
output folder's journal (``medhub-journal.jsonl``) before the run writes its first temporary
file. The next run into that folder removes a leftover temporary only when its token is one the
journal records; a user's file that merely looks like a temporary (``.notes.partial``) is never
touched. :class:`OutputFolder` also keeps a second run out of a folder that one run is writing
(an exclusive lock on the folder), so no run removes another's files while it works.

The output folder and the input never overlap (:func:`check_output_location`): the input tree
is never written to, and a run never reads what it writes.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import secrets
import shutil
import threading
import time
from collections.abc import Iterator
from contextvars import ContextVar
from pathlib import Path
from typing import Any

from medhub.errors import MedhubError

try:
    import fcntl
except ImportError:  # pragma: no cover - not POSIX: runs are not locked (medhub is built and tested on Linux)
    fcntl = None  # type: ignore[assignment]

_UNSAFE = re.compile(r"[^A-Za-z0-9._-]+")

JOURNAL_NAME = "medhub-journal.jsonl"
"""The output folder's journal: one line per run started (its token) and per finished series."""

_TEMPORARY = re.compile(r"^\.(?P<name>.+)\.mh(?P<token>[0-9a-f]{16})\.\d+\.\d+\.partial$")
_RUN_TOKEN: ContextVar[str | None] = ContextVar("medhub_run_token", default=None)
_PROCESS_TOKEN = secrets.token_hex(8)  # writes outside a run (caches): never recorded, so never removed by a run


def safe_component(value: object) -> str:
    """A value made safe as one path component (no separators, no leading dots)."""
    text = _UNSAFE.sub("_", str(value)).strip("._") or "unknown"
    return text[:120]


# ----------------------------------------------------------------------------------- run tokens


def new_run_token() -> str:
    """A fresh run token: 16 hex digits, random (never derived from anything a user controls)."""
    return secrets.token_hex(8)


@contextlib.contextmanager
def writing_as(token: str) -> Iterator[None]:
    """Temporary files made in this block (this thread or task) carry ``token``."""
    if not re.fullmatch(r"[0-9a-f]{16}", token):
        raise ValueError(f"not a run token: {token!r}")
    reset = _RUN_TOKEN.set(token)
    try:
        yield
    finally:
        _RUN_TOKEN.reset(reset)


def temporary_path(final: Path) -> Path:
    """The hidden temporary name of ``final``: the run token, the process and the thread.

    The process and thread keep two writers of one file apart (threads of ``medhub serve``,
    Dask workers of one run).
    """
    token = _RUN_TOKEN.get() or _PROCESS_TOKEN
    return final.with_name(f".{final.name}.mh{token}.{os.getpid()}.{threading.get_ident()}.partial")


def temporary_token(name: str) -> str | None:
    """The run token in a temporary file's name, or None when the name is not one medhub makes."""
    match = _TEMPORARY.match(name)
    return match.group("token") if match else None


@contextlib.contextmanager
def atomic_output(final: Path) -> Iterator[Path]:
    """Yield a temporary path next to ``final``; rename it onto ``final`` only if the block succeeds."""
    final.parent.mkdir(parents=True, exist_ok=True)
    temporary = temporary_path(final)
    try:
        yield temporary
        os.replace(temporary, final)
    finally:
        with contextlib.suppress(FileNotFoundError):
            if temporary.is_dir() and not temporary.is_symlink():
                shutil.rmtree(temporary)
            else:
                temporary.unlink()


def remove_stale_partials(output_dir: Path, tokens: set[str]) -> int:
    """Delete temporary files (or folders) a killed run left behind: only those whose token is in ``tokens``.

    ``tokens`` are the run tokens the folder's journal records; a name without a recorded token
    is left alone, whatever it looks like.
    """
    removed = 0
    if not tokens:
        return removed
    for stale in list(output_dir.rglob(".*.partial")):
        if temporary_token(stale.name) not in tokens:
            continue
        with contextlib.suppress(OSError):
            if stale.is_dir() and not stale.is_symlink():
                shutil.rmtree(stale)
            else:
                stale.unlink()
            removed += 1
    return removed


# ----------------------------------------------------------------------------------- where outputs go


def _nearest_existing(path: Path) -> Path:
    existing = path
    while not os.path.lexists(existing) and existing.parent != existing:
        existing = existing.parent
    return existing


def check_output_folder(output_dir: Path) -> None:
    """Refuse, before any work, an output that is an existing file or a folder this user cannot make.

    Whether the folder can be made is tried for real (the folders made for the try are removed
    again, and only those: they are empty and this call made them), so a read-only file system,
    a missing permission or a path through a file is one line here, not an error after the work.
    """
    output_dir = Path(output_dir)
    if output_dir.exists() and not output_dir.is_dir():
        raise MedhubError(f"--output {output_dir} is an existing file, not a folder; choose a folder")
    if output_dir.is_dir():
        if not os.access(output_dir, os.W_OK | os.X_OK):
            raise MedhubError(f"--output {output_dir} is not writable by this user; choose another folder")
        return
    existing = _nearest_existing(output_dir)
    if os.path.lexists(existing) and not existing.is_dir():
        raise MedhubError(f"--output {output_dir} cannot be made: {existing} is a file, not a folder")
    made = _make_folders(output_dir, what="--output")
    for folder in reversed(made):
        with contextlib.suppress(OSError):
            folder.rmdir()


def _make_folders(folder: Path, *, what: str) -> list[Path]:
    """``mkdir -p folder``; returns the folders this call made (outermost first). One line on failure."""
    missing = []
    current = folder
    while not os.path.lexists(current) and current.parent != current:
        missing.append(current)
        current = current.parent
    made: list[Path] = []
    for path in reversed(missing):
        try:
            path.mkdir()
        except FileExistsError:
            continue  # made by someone else meanwhile
        except OSError as exc:
            for done in reversed(made):
                with contextlib.suppress(OSError):
                    done.rmdir()
            raise MedhubError(f"{what} {folder} cannot be made: {path}: {exc.strerror or exc}") from None
        made.append(path)
    if not folder.is_dir():
        raise MedhubError(f"{what} {folder} is not a folder")
    return made


def _inside(path: Path, folder: Path) -> bool:
    return path == folder or folder in path.parents


def check_output_location(input_path: Path | None, output_dir: Path, *, input_in_output: bool = False) -> None:
    """Refuse an output that overlaps the input (also through symbolic links), an existing file, a folder not made.

    The input tree is never modified, so the output folder must not be the input folder or lie
    inside it; and a run never reads what it writes, so the input must not lie inside the output
    folder either (a run into ``tree`` from ``tree/dicom`` would write, and clean up, among the
    user's files). ``input_in_output`` allows the one exception, an input medhub itself keeps in
    the output folder (``--sample``).
    """
    if input_path is not None:
        source, target = Path(input_path).resolve(), Path(output_dir).resolve()
        if _inside(target, source) and source.is_dir():
            where = "is" if target == source else "is inside"
            raise MedhubError(f"--output {output_dir} {where} the input folder {input_path}: medhub never writes into "
                              "its input; choose an output folder outside it")
        if _inside(source, target) and not input_in_output:
            raise MedhubError(f"the input {input_path} is inside the output folder {output_dir}: medhub writes and "
                              "cleans up there; choose an output folder that does not contain the input")
    check_output_folder(output_dir)  # after the overlap: trying to make the folder must not touch the input


# ----------------------------------------------------------------------------------- the output folder of a run


class OutputFolder:
    """The output folder of one run: made, locked against a second run, and its run token recorded.

    :meth:`claim` makes the folder and takes an exclusive lock on it (nothing is written yet);
    :meth:`start` checks that an existing journal is medhub's, records this run's token in it,
    and removes the temporary files of earlier runs (only those whose tokens it records);
    :meth:`release` lets go, and removes the folders :meth:`claim` made if the run never started.
    """

    def __init__(self, path: Path, token: str, made: list[Path], handle: int | None) -> None:
        self.path = path
        self.token = token
        self.journal = path / JOURNAL_NAME
        self.started = False
        self.stale_removed = 0
        self._made = made
        self._handle = handle

    @classmethod
    def claim(cls, output_dir: Path, token: str | None = None) -> OutputFolder:
        output_dir = Path(output_dir)
        check_output_folder(output_dir)
        made = _make_folders(output_dir, what="--output")
        handle = None
        if fcntl is not None:
            handle = os.open(output_dir, os.O_RDONLY)
            try:
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                os.close(handle)
                raise MedhubError(f"another medhub run is writing into {output_dir}; wait for it to finish or "
                                  "choose another --output") from None
            except OSError:  # a file system without locks: go on unlocked
                pass
        return cls(output_dir, token or new_run_token(), made, handle)

    def start(self, *, fresh: bool) -> None:
        """Record this run's token (before any temporary file) and remove earlier runs' leftovers.

        ``fresh``: earlier runs' finished series no longer count for ``--resume`` (the journal keeps
        only their run tokens).
        """
        lines = read_journal(self.journal)
        tokens = {str(line["run"]) for line in lines if "run" in line}
        if fresh and len(lines) != len(tokens):
            kept = "".join(json.dumps(line) + "\n" for line in lines if "run" in line)
            # a kill leaves the old journal or the new one, never half of each (the lock is the folder's)
            with atomic_output(self.journal) as temporary, open(temporary, "w", encoding="utf-8") as stream:
                stream.write(kept)
                stream.flush()
                os.fsync(stream.fileno())
        append_journal(self.journal, {"run": self.token, "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
                                      "pid": os.getpid(), "fresh": fresh})
        self.started = True
        self.stale_removed = remove_stale_partials(self.path, tokens - {self.token})

    def release(self) -> None:
        if self._handle is not None:
            os.close(self._handle)
            self._handle = None
        if not self.started:
            for folder in reversed(self._made):
                with contextlib.suppress(OSError):
                    folder.rmdir()  # only if still empty: made by this run, which wrote nothing


def read_journal(path: Path) -> list[dict[str, Any]]:
    """The lines of a journal; a file that is not medhub's journal is refused, never changed.

    A torn last line (a kill while it was written) is dropped.
    """
    if path.is_symlink():  # even a dangling one: writing through it would create a file elsewhere
        raise MedhubError(f"{path} is a link, not a file medhub wrote; medhub will not follow it: choose another "
                          "--output")
    if not path.exists():
        return []
    if not path.is_file():
        raise MedhubError(f"{path} is not a file medhub wrote; medhub will not change it: choose another --output")
    lines: list[dict[str, Any]] = []
    text = path.read_text(encoding="utf-8", errors="replace").splitlines()
    for number, line in enumerate(text, 1):
        try:
            data = json.loads(line)
        except json.JSONDecodeError:
            data = None
        if not isinstance(data, dict) or not ({"run", "fingerprint"} & set(data)):
            if number == len(text) and line.startswith("{"):
                continue  # the torn last line of a killed run
            raise MedhubError(f"{path} is not medhub's journal (line {number}); medhub will not change it: "
                              "choose another --output")
        lines.append(data)
    return lines


def append_journal(path: Path, data: dict[str, Any]) -> None:
    """Append one line and flush it to disk (a line in the journal is a promise)."""
    descriptor = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | getattr(os, "O_NOFOLLOW", 0), 0o644)
    with open(descriptor, "a", encoding="utf-8") as stream:  # never through a link (read_journal refuses one)
        stream.write(json.dumps(data, default=str) + "\n")
        stream.flush()
        os.fsync(stream.fileno())
