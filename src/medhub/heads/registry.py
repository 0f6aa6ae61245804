"""Where heads live, and how the model catalog finds them.

Heads are user data, not package data: each is a folder ``<root>/<name>/`` (see
:mod:`medhub.heads.model`) under ``$MEDHUB_HEADS`` or, by default,
``~/.local/share/medhub/heads`` (XDG's data home when ``$XDG_DATA_HOME`` is set). A head
folder is laid out like a built-in model folder (``card.yaml``, ``workflows/``), and its
runner is the one generic :class:`medhub.heads.runner.Runner`, told which head to load by
:class:`HeadEntry`. :func:`head_entries` is what the catalog calls to list them next to the
built-in and plugin models; a broken head folder becomes a one-line problem, as a broken card does.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any

from medhub.errors import MedhubError
from medhub.models.catalog import ModelEntry, entry_from_folder

HEADS_VARIABLE = "MEDHUB_HEADS"
RUNNER_MODULE = "medhub.heads"  # the package whose runner.py serves every head
_NAME = re.compile(r"^[a-z0-9]+(-[a-z0-9]+)*$")


def heads_root() -> Path:
    """``$MEDHUB_HEADS``, else ``$XDG_DATA_HOME/medhub/heads``, else ``~/.local/share/medhub/heads``."""
    configured = os.environ.get(HEADS_VARIABLE)
    if configured:
        return Path(configured).expanduser()
    data_home = os.environ.get("XDG_DATA_HOME")
    base = Path(data_home).expanduser() if data_home else Path.home() / ".local" / "share"
    return base / "medhub" / "heads"


def check_name(name: str) -> str:
    """A head name is a model id: lower-case words joined by dashes (it becomes ``medhub run NAME``)."""
    if not _NAME.match(name):
        raise MedhubError(f"head name must be lower-case words joined by dashes, e.g. 'lung-nodule-head': {name!r}")
    return name


def head_path(name: str, root: Path | None = None) -> Path:
    """The folder of head ``name`` (which need not exist yet)."""
    return (root or heads_root()) / check_name(name)


class HeadEntry(ModelEntry):
    """A catalog entry whose runner is the generic head runner bound to this head's folder."""

    def new_runner(self) -> Any:
        from medhub.heads.runner import Runner

        return Runner(head_dir=self.path)


def head_entry(folder: Path) -> HeadEntry:
    """The catalog entry of one head folder (reads YAML only; the head weights load in ``Runner.load``)."""
    base = entry_from_folder(folder, RUNNER_MODULE, origin=f"head ({folder})")
    if base.card.id != folder.name:
        raise MedhubError(f"{folder / 'card.yaml'}: head id '{base.card.id}' does not match its folder '{folder.name}'")
    return HeadEntry(card=base.card, path=base.path, module=base.module, workflows=base.workflows,
                     origin=base.origin)


def head_entries(problems: list[str] | None = None, root: Path | None = None) -> list[ModelEntry]:
    """Catalog entries of every head under the heads root; broken folders go to ``problems``."""
    folder_root = root or heads_root()
    if not folder_root.is_dir():
        return []
    entries: list[ModelEntry] = []
    for folder in sorted(folder_root.iterdir()):
        if folder.name.startswith(".") or not folder.is_dir():
            continue  # a head being written (".name.partial") or stray files
        if not (folder / "card.yaml").is_file():
            if problems is not None:
                problems.append(f"head folder {folder} has no card.yaml (not a head; remove it)")
            continue
        try:
            entries.append(head_entry(folder))
        except MedhubError as exc:
            if problems is not None:
                problems.append(str(exc))
    return entries


def find_head(name_or_path: str | Path, root: Path | None = None) -> Path:
    """The folder of a head given by name (under the root) or by path; one-line error if absent."""
    candidate = Path(name_or_path)
    if candidate.is_dir() and (candidate / "card.yaml").is_file():
        return candidate
    folder = head_path(str(name_or_path), root)
    if not (folder / "card.yaml").is_file():
        have = ", ".join(e.id for e in head_entries(root=root)) or "none"
        raise MedhubError(f"no head named '{name_or_path}' in {folder.parent} (${HEADS_VARIABLE}); heads: {have}")
    return folder
