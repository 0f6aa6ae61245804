"""The catalog as plain data, kept on disk: what ``medhub models`` lists and ``medhub info`` shows.

Building the catalog means importing pydantic, PyYAML and pydicom, parsing every card and
loading the model sources: ~0.6 s CPU of a command a user expects to answer at once (issue 14).
Yet the listing is a pure function of files: the built-in model folders, the distributions
installed (their entry points), the folders the model sources read and the segment database. So
:func:`medhub.hub.catalog.build_listing` writes it as JSON with a record of what it was made
of, and the next command reads it back with the standard library only. The record holds:

* every file and folder the listing was read from (cards, workflow folders and files, the model
  folders and the folders holding them, the folders model sources declare, the segment
  database), each with its modification time and size;
* every directory on ``sys.path``: installing, upgrading or removing a distribution adds or
  removes a ``*.dist-info`` folder there, which changes the directory's modification time;
* medhub's version, the interpreter, and the environment variables that can move any of these
  (``MEDHUB_*``, ``XDG_*``, ``HOME``).

When anything differs the listing is built again (and rewritten), so a new card, a new plugin
or a trained head shows up on the next command. The file lives in ``$MEDHUB_CACHE``, else
``$XDG_CACHE_HOME/medhub``, else ``~/.cache/medhub``; it is written atomically, and a cache that
cannot be written (read-only home) only costs speed.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import sys
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from types import SimpleNamespace
from typing import Any

from medhub import __version__, config
from medhub.errors import MedhubError, did_you_mean
from medhub.files import atomic_output
from medhub.hub.envs import env_state
from medhub.hub.weight_store import WeightState, installed_file_verified, weight_state

FORMAT = 2  # 2: segment rows of medhub.segdb.describe_segment
_PACKAGE = Path(__file__).resolve().parents[1]
_ENVIRONMENT_PREFIXES = ("MEDHUB_", "XDG_")


@dataclass
class Listing:
    """Every model of the catalog as plain data, and the problems the catalog found.

    Each entry holds ``id``, ``origin``, ``path``, ``module``, ``workflows`` (names), ``summary``
    (the fields ``medhub models`` prints and filters on), ``card`` (the card as JSON), ``segments``
    (resolved against the segment database) and ``weights`` (what each file is and where it comes from).
    """

    entries: list[dict[str, Any]] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)

    def find(self, name: str) -> dict[str, Any]:
        """The entry of a model id (``ct-body``; ``ct_body`` too), or the catalog's one-line error."""
        key = model_key(name)
        for entry in self.entries:
            if entry["id"] == key:
                return entry
        raise model_not_found(name, [e["id"] for e in self.entries], self.problems)


def model_key(name: str) -> str:
    """A model id as typed (``CT_Body``) as the catalog keys it (``ct-body``)."""
    return name.strip().lower().replace("_", "-")


def model_not_found(name: str, known: Iterable[str], problems: Iterable[str]) -> MedhubError:
    """The one-line error for a model that is not in the catalog: its card is broken, or a name to correct."""
    key = model_key(name)
    broken = [p for p in problems if key.replace("-", "_") in p or key in p]
    if broken:
        return MedhubError(f"model '{name}' cannot be loaded: {broken[0]}")
    ids = sorted(known)
    return MedhubError(f"unknown model '{name}'; {did_you_mean(key, ids)}available: {', '.join(ids) or 'none'}")


def cache_file() -> Path:
    """One file per environment, so environments do not evict each other.

    An environment is the interpreter (a venv sees other distributions) and the folders on its
    ``sys.path``: the same interpreter with another ``PYTHONPATH`` (a second checkout of medhub, a
    plugin under development) or started as the ``medhub`` script instead of ``python -m medhub``
    (the script's folder is on the path) lists other models. Keyed by the interpreter alone, such
    commands took turns rebuilding the shared file (~0.7 s CPU each time instead of ~0.2).
    """
    key = json.dumps([sys.executable, _distribution_paths()])
    return config.settings().cache / f"catalog-{hashlib.sha256(key.encode()).hexdigest()[:16]}.json"


def _distribution_paths() -> list[str]:
    """The ``sys.path`` folders distributions and plugins are found in.

    ``sys.path[0]`` is the current folder under ``python -m medhub``: not where distributions live.
    """
    return [entry for entry in sys.path if entry not in ("", os.getcwd())]


def _signature(path: Path) -> list[int] | None:
    """Modification time and size of a file or folder; None when it does not exist."""
    try:
        stat = path.stat()
    except OSError:
        return None
    return [stat.st_mtime_ns, stat.st_size]


def _context() -> dict[str, Any]:
    """What the listing depends on besides its recorded paths (see the module docstring)."""
    return {
        "format": FORMAT,
        "medhub": __version__,
        "python": sys.executable,
        "environment": {k: v for k, v in sorted(os.environ.items()) if k.startswith(_ENVIRONMENT_PREFIXES)
                        or k == "HOME"},
        "sys_path": [[entry, _signature(Path(entry))] for entry in _distribution_paths()],
    }


def load_listing() -> Listing | None:
    """The cached listing when nothing it was made of has changed since; else None."""
    try:
        document = json.loads(cache_file().read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    if not isinstance(document, dict) or document.get("context") != _context():
        return None
    for path, signature in document.get("paths", []):
        if _signature(Path(path)) != signature:
            return None
    return Listing(entries=document["entries"], problems=document["problems"])


def _package_files() -> list[Path]:
    """medhub's own folders and source and data files: a changed card schema must not be read from an old listing."""
    found = []
    for folder, names, files in os.walk(_PACKAGE):
        names[:] = [n for n in names if not n.startswith((".", "__pycache__"))]
        found.append(Path(folder))
        found += [Path(folder) / f for f in files if f.endswith((".py", ".yaml", ".yml", ".json"))]
    return found


def save_listing(listing: Listing, paths: Iterable[Path]) -> None:
    """Store ``listing`` with the signatures of ``paths``, the files and folders it was read from.

    medhub's own source files are recorded too (an editable install changes under the listing).
    """
    record = {str(p): _signature(p) for p in [*paths, *_package_files()]}
    document = {"context": _context(), "paths": sorted(record.items()), "entries": listing.entries,
                "problems": listing.problems}
    with contextlib.suppress(OSError):  # a cache that cannot be written only costs speed
        target = cache_file()
        with atomic_output(target) as temporary:
            temporary.write_text(json.dumps(document), encoding="utf-8")


# Body parts people search by, and the DICOM Body Part Examined values cards use for them.
_BODY_PART_ALIASES = {
    "BRAIN": {"HEAD", "BRAIN", "SKULL"},
    "HEAD": {"HEAD", "BRAIN", "SKULL", "HEADNECK"},
    "CHEST": {"CHEST", "THORAX", "LUNG", "CHESTABDOMEN", "CHESTABDPELVIS"},
    "THORAX": {"CHEST", "THORAX", "LUNG"},
    "LUNG": {"CHEST", "THORAX", "LUNG"},
    "ABDOMEN": {"ABDOMEN", "ABDOMENPELVIS", "CHESTABDOMEN", "CHESTABDPELVIS"},
    "WHOLEBODY": {"WHOLEBODY", "CHESTABDPELVIS"},
}


def _norm(text: str) -> str:
    return "".join(ch for ch in text.upper() if ch.isalnum())


def matches_summary(summary: dict[str, Any], *, modality: str | None = None, body_part: str | None = None,
                    task: str | None = None) -> bool:  # fmt: skip
    """Whether a model fits the ``medhub models`` filters (case-insensitive; None = any).

    ``body_part`` accepts the words people search by (``BRAIN`` finds models whose card says
    ``HEAD``); ``task`` matches the card's task or one of its output kinds (``segmentation``,
    ``prediction``, ``classification``).
    """
    if modality and modality.upper() not in summary["modality"] + summary["input_modalities"]:
        return False
    if body_part:
        wanted = _BODY_PART_ALIASES.get(_norm(body_part), {_norm(body_part)})
        if not wanted & {_norm(p) for p in summary["body_parts"]}:
            return False
    return not task or task.lower() in {summary["task"], *summary["outputs"]}


def weight_states(entry: dict[str, Any]) -> list[dict[str, Any]]:
    """Where each weights file of a listed model is now (:class:`~medhub.hub.weight_store.WeightState`), and
    whether its SHA-256 was checked.

    ``verified``: a download is always checked before it enters the cache; a bundled file once
    ``medhub pull`` hashed it (remembered while the file is unchanged). ``detail`` says it in words,
    with the command that helps. Checked live (files come and go with ``medhub pull`` and ``pip
    install``) without hashing anything.
    """
    states = []
    for spec in entry["weights"]:
        state, path, source = weight_state(entry["id"], spec["name"], url=spec["url"], sha256=spec["sha256"],
                                           size=spec["size"], bundled_in=spec["bundled_in"])
        if state is WeightState.CACHED:
            verified, detail = True, "SHA-256 verified"
        elif state is WeightState.MISSING:
            verified, detail = False, "not here: medhub pull fetches it"
        elif state is WeightState.ABSENT:
            verified, detail = False, f"not installed: {source}"
        else:
            assert path is not None
            verified = bool(spec["sha256"]) and installed_file_verified(entry["id"], spec["name"], path,
                                                                        spec["sha256"])
            detail = ("SHA-256 verified" if verified else "present, not verified yet (medhub pull checks its SHA-256)"
                      if spec["sha256"] else "present, unverified (the card gives no SHA-256)")
        states.append({"name": spec["name"], "size": spec.get("size"), "state": state.value, "verified": verified,
                       "path": str(path) if path else None, "source": source, "detail": detail})
    return states


def readiness(entry: dict[str, Any]) -> dict[str, Any]:
    """The truth ``medhub info``, ``medhub models`` and the model page tell, and what ``medhub run`` will do.

    ``ready`` is True when ``medhub run`` can start the model as it is: its environment (if it needs
    its own) is built and no bundled weights file is missing. Missing downloadable weights do not
    stop a run (it fetches them when it loads the model), but ``todo`` says to pull them first.
    """
    card = entry["card"]
    weights = weight_states(entry)
    try:
        state = env_state(SimpleNamespace(id=entry["id"], requirements=card.get("requirements") or []))
        environment = {"needed": state.needed, "built": state.built, "path": str(state.path) if state.path else None,
                       "reason": state.reason, "problem": state.problem, "summary": state.summary()}
    except MedhubError as exc:  # a card requirement that is not a valid pip spec
        environment = {"needed": True, "built": False, "path": None, "reason": "", "problem": str(exc),
                       "summary": f"cannot be built: {exc}"}
    absent = [w for w in weights if w["state"] == WeightState.ABSENT.value]
    missing = [w for w in weights if w["state"] == WeightState.MISSING.value]
    todo = []
    if environment["problem"]:
        todo.append(environment["summary"])
    elif environment["needed"] and not environment["built"]:
        todo.append(f"medhub pull {entry['id']} (builds its environment)")
    if absent:
        todo.append(absent[0]["source"])
    if missing and not todo:
        size = sum(w.get("size") or 0 for w in missing)
        amount = f", {size / 1e6:.1f} MB" if size >= 1e5 else (f", {size / 1e3:.0f} KB" if size else "")
        todo.append(f"medhub pull {entry['id']} (fetches {len(missing)} weights file(s){amount}; a run would "
                    "fetch them too)")
    blocked = bool(environment["problem"]) or (environment["needed"] and not environment["built"])
    return {"ready": not blocked and not absent, "environment": environment, "weights": weights, "todo": todo}


def current_listing() -> Listing:
    """The catalog as plain data: the cached listing when nothing it was made of changed, else built and cached.

    A cache hit answers without importing pydantic, PyYAML or pydicom (the catalog is imported
    only to build the listing).
    """
    listing = load_listing()
    if listing is None:
        from medhub.hub.catalog import build_listing  # heavy: only when the cache is stale

        listing, paths = build_listing()
        if paths is not None:
            save_listing(listing, paths)
    return listing


def describe_model(entry: dict[str, Any]) -> dict[str, Any]:
    """One model as ``medhub info`` and the server's model page show it (the one describer of both).

    The card, where it comes from, its segments with names, colours and SNOMED CT codes, its
    workflows, where each weights file is now, its environment, whether it is ready to run (and what
    to do if not: :func:`readiness`), and the command that runs it.
    """
    state = readiness(entry)
    return {
        "card": entry["card"],
        "origin": entry["origin"],
        "path": entry["path"],
        "segments": entry["segments"],
        "workflows": entry["workflows"],
        "weights": state["weights"],
        "environment": state["environment"],
        "ready": state["ready"],
        "todo": state["todo"],
        "run": f"medhub run {entry['id']} --input DICOM_FOLDER --output OUT",
    }
