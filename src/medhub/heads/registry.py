"""Where heads live, and how the model catalog finds them.

Heads are user data, not package data: each is a folder ``<root>/<name>/`` (see
:mod:`medhub.heads.model`) under ``$MEDHUB_HEADS`` or, by default,
``~/.local/share/medhub/heads`` (XDG's data home when ``$XDG_DATA_HOME`` is set). A head
folder is laid out like a built-in model folder (``card.yaml``, ``workflows/``), and its
runner is the one generic :class:`medhub.heads.runner.Runner`; :mod:`medhub.heads.source` turns
the folders into catalog entries.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

from medhub import config
from medhub.errors import MedhubError

_NAME = re.compile(r"^[a-z0-9]+(-[a-z0-9]+)*$")


def heads_root() -> Path:
    """``$MEDHUB_HEADS``, else ``$XDG_DATA_HOME/medhub/heads``, else ``~/.local/share/medhub/heads``."""
    return config.settings().heads


def check_name(name: str) -> str:
    """A head name is a model id: lower-case words joined by dashes (it becomes ``medhub run NAME``)."""
    if not _NAME.match(name):
        raise MedhubError(f"head name must be lower-case words joined by dashes, e.g. 'lung-nodule-head': {name!r}")
    return name


def head_path(name: str, root: Path | None = None) -> Path:
    """The folder of head ``name`` (which need not exist yet)."""
    return (root or heads_root()) / check_name(name)


def find_head(name_or_path: str | Path, root: Path | None = None) -> Path:
    """The folder of a head given by name (under the root) or by path; one-line error if absent."""
    candidate = Path(name_or_path)
    if candidate.is_dir() and (candidate / "card.yaml").is_file():
        return candidate
    folder = head_path(str(name_or_path), root)
    if not (folder / "card.yaml").is_file():
        have = ", ".join(head_names(root)) or "none"
        raise MedhubError(f"no head named '{name_or_path}' in {folder.parent} (${config.HEADS}); heads: {have}")
    return folder


def head_names(root: Path | None = None) -> list[str]:
    """Names of the head folders under the root (folders with a card; nothing is parsed)."""
    folder_root = root or heads_root()
    if not folder_root.is_dir():
        return []
    return sorted(f.name for f in folder_root.iterdir()
                  if not f.name.startswith(".") and (f / "card.yaml").is_file())


def head_summary(entry: Any) -> dict[str, Any]:
    """One head as ``medhub heads list`` and ``GET /api/heads`` show it: classes, encoder, CV metrics."""
    metrics_path = Path(entry.path) / "metrics.json"
    meta_path = Path(entry.path) / "head.json"
    metrics = json.loads(metrics_path.read_text()) if metrics_path.is_file() else {}
    meta = json.loads(meta_path.read_text()) if meta_path.is_file() else {}
    cv = metrics.get("cross_validation", {})
    return {
        "name": entry.id, "version": entry.card.version, "encoder": meta.get("encoder"),
        "classifier": meta.get("classifier"), "classes": meta.get("classes", []), "cases": cv.get("cases"),
        "cv_auc": cv.get("auc"), "cv_balanced_accuracy": cv.get("balanced_accuracy"), "cv_brier": cv.get("brier"),
        "path": str(entry.path),
    }
