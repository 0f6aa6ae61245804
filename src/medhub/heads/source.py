"""The heads as a model source: the catalog lists every trained head next to the built-in models.

Registered in ``pyproject.toml`` under the entry point group ``medhub.model_sources``, like any
third-party source of models, so the catalog does not know heads by name. Each head folder
becomes a :class:`HeadEntry` whose runner is the generic :class:`~medhub.heads.runner.Runner`
bound to that folder; a broken folder becomes a one-line problem, as a broken card does.
"""

from __future__ import annotations

from pathlib import Path

from medhub.errors import MedhubError
from medhub.heads.model import head_parameters
from medhub.heads.registry import heads_root
from medhub.heads.runner import Runner
from medhub.hub.card import ParameterSpec
from medhub.hub.catalog import ModelEntry, entry_from_folder

RUNNER_MODULE = "medhub.heads"  # the package whose runner.py serves every head


class HeadEntry(ModelEntry):
    """A catalog entry whose runner is the generic head runner bound to this head's folder."""

    def new_runner(self) -> Runner:
        return Runner(head_dir=self.path)


def head_entry(folder: Path) -> HeadEntry:
    """The catalog entry of one head folder (reads YAML only; the head weights load in ``Runner.load``)."""
    base = entry_from_folder(folder, RUNNER_MODULE, origin=f"head ({folder})")
    if base.card.id != folder.name:
        raise MedhubError(f"{folder / 'card.yaml'}: head id '{base.card.id}' does not match its folder '{folder.name}'")
    card = base.card
    if "head" not in card.parameters:  # a head trained before cards declared their parameters
        card = card.model_copy(update={"parameters": {
            **card.parameters, **{k: ParameterSpec.model_validate(v) for k, v in head_parameters(card.id).items()}}})
    return HeadEntry(card=card, path=base.path, module=base.module, workflows=base.workflows,
                     origin=base.origin)


def watched_paths() -> list[Path]:
    """The folder heads are read from (a head added or removed changes it), for the catalog's cached listing."""
    return [heads_root()]


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


head_entries.watched_paths = watched_paths  # type: ignore[attr-defined]  # see medhub.hub.catalog._source_entries
