"""Walk an input tree: every regular file once, in a stable order, whatever links the tree holds.

The link policy (README, "What is refused and why"):

* **Symbolic links are followed, read only,** to files and to folders, also when they point outside
  the input tree (a cohort folder of links into an archive is common). medhub never writes through
  them: results go only to ``--output``.
* **Each folder is walked once.** A link to a folder already walked (a loop such as ``up -> ..``,
  or a second link to the same folder) is not entered again; it is named with the reason.
* **Broken links, links to themselves** (the system says "too many levels of symbolic links")
  **and anything that is not a regular file or folder** (a FIFO would block a reader forever, a
  device is not an export) are skipped and named.

Skipped paths are handed to ``on_skip(path, reason)``; the scan lists them with the unreadable files.

A link that leads into the run's output folder (``avoid``) is refused outright (a
:class:`~medhub.errors.MedhubError`): the input would then contain what the run writes.
"""

from __future__ import annotations

import errno
import os
import stat
from collections.abc import Callable, Iterator
from pathlib import Path

from medhub.errors import MedhubError

SkipHandler = Callable[[Path, str], None]


def iter_files(root: Path, on_skip: SkipHandler | None = None, avoid: Path | None = None) -> Iterator[Path]:
    """Yield every regular file under ``root`` (or ``root`` itself), sorted for determinism.

    Order is depth-first by name (files and folders interleaved, like a sorted ``find``); a file
    reached through a link is yielded under the link's path. See the module docstring for links.
    ``avoid`` is the output folder: a link into it ends the walk with a one-line error.
    """
    root = Path(root)
    output = Path(avoid).resolve() if avoid is not None else None
    output_identity = _identity(output) if output is not None else None
    skip: SkipHandler = on_skip or (lambda path, reason: None)
    try:
        info = root.stat()
    except FileNotFoundError:
        raise MedhubError(f"{root}: input path does not exist") from None
    except OSError as exc:
        raise MedhubError(f"{root}: cannot read the input path ({exc.strerror})") from None
    if stat.S_ISREG(info.st_mode):
        yield root
        return
    if not stat.S_ISDIR(info.st_mode):
        raise MedhubError(f"{root}: input path is neither a file nor a folder")
    walked: dict[tuple[int, int], Path] = {(info.st_dev, info.st_ino): root}
    stack = [iter(_sorted_entries(root))]
    while stack:
        entry = next(stack[-1], None)
        if entry is None:
            stack.pop()
            continue
        path = Path(entry.path)
        try:
            info = os.stat(entry.path)  # follows links
        except OSError as exc:
            skip(path, _link_problem(path, exc))
            continue
        if output is not None and entry.is_symlink():
            _refuse_link_into(path, output)
        if stat.S_ISDIR(info.st_mode):
            identity = (info.st_dev, info.st_ino)
            if identity == output_identity:  # reached through a link to a folder above it
                raise MedhubError(f"the input reaches the output folder ({path}): medhub never writes into its "
                                  "input; choose an output folder the input does not reach")
            if identity in walked:
                skip(path, f"link to a folder already walked ({walked[identity]}): not walked again "
                           "(a symlink loop or a second link to it)")
                continue
            walked[identity] = path
            try:
                stack.append(iter(_sorted_entries(path)))
            except MedhubError as exc:
                skip(path, str(exc).removeprefix(f"{path}: "))
        elif stat.S_ISREG(info.st_mode):
            yield path
        else:
            skip(path, "not a regular file (a FIFO, socket or device): not read")


def _identity(path: Path) -> tuple[int, int] | None:
    try:
        info = path.stat()
    except OSError:
        return None
    return info.st_dev, info.st_ino


def _refuse_link_into(link: Path, output: Path) -> None:
    """A link whose target is the output folder or lies inside it: the input would hold the run's own results."""
    target = link.resolve()
    if target == output or output in target.parents:
        raise MedhubError(f"the input links to the output folder ({link} -> {target}): medhub never writes into its "
                          "input; choose an output folder the input does not reach")


def _link_problem(path: Path, exc: OSError) -> str:
    if exc.errno == errno.ELOOP:
        return "symlink loop (the link leads back to itself): not followed"
    if exc.errno == errno.ENOENT and path.is_symlink():
        try:
            target = os.readlink(path)
        except OSError:
            target = "?"
        return f"broken symlink (points to {target}, which does not exist)"
    return f"cannot read ({exc.strerror})"


def _sorted_entries(folder: Path) -> list[os.DirEntry[str]]:
    try:
        with os.scandir(folder) as it:
            return sorted(it, key=lambda e: e.name)
    except OSError as exc:
        raise MedhubError(f"{folder}: cannot list folder ({exc.strerror})") from exc
