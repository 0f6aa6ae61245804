"""The model catalog: which models exist, and how to get a model's card, runner and workflows.

Built-in models are the subfolders of ``medhub/models`` that hold a ``card.yaml`` (the folder
is the model id with dashes turned into underscores: ``ct_body`` ↔ ``ct-body``). Third-party
packages add models through the entry point group ``medhub.models``, whose value names a
package laid out the same way (``card.yaml``, ``runner.py``, ``workflows/``).

Listing reads only YAML: runner modules are imported when a runner is asked for, and runners
import heavy packages (torch, ...) only inside ``load``, so ``medhub models`` stays fast.
"""

from __future__ import annotations

import importlib
import importlib.util
from dataclasses import dataclass, field
from importlib.metadata import entry_points
from pathlib import Path
from types import ModuleType

from medhub.errors import MedhubError
from medhub.models.base import ModelRunner
from medhub.models.card import ModelCard, load_card

BUILTIN_ROOT = Path(__file__).resolve().parent
ENTRY_POINT_GROUP = "medhub.models"


@dataclass
class ModelEntry:
    """A model found by the catalog: its card, folder, workflows and (lazily) its runner class."""

    card: ModelCard
    path: Path
    module: str  # importable package holding runner.py, e.g. "medhub.models.deepbet"
    workflows: dict[str, Path] = field(default_factory=dict)

    @property
    def id(self) -> str:
        return self.card.id

    def runner_class(self) -> type[ModelRunner]:
        """Import ``<module>.runner`` and return its ``Runner`` class (imports happen only here)."""
        name = f"{self.module}.runner"
        try:
            runner_module = importlib.import_module(name)
        except ModuleNotFoundError as exc:
            if exc.name == name:
                expected = self.path / "runner.py"
                raise MedhubError(f"model {self.id}: no runner module {name} (expected {expected})") from None
            raise
        runner = getattr(runner_module, "Runner", None)
        if not isinstance(runner, type):
            raise MedhubError(f"model {self.id}: {name} defines no class named 'Runner'")
        return runner

    def new_runner(self) -> ModelRunner:
        """A fresh, not yet loaded runner instance."""
        return self.runner_class()()

    def workflow(self, name: str = "default") -> Path:
        """Path of a named workflow, or a one-line error listing the ones this model has."""
        try:
            return self.workflows[name]
        except KeyError:
            have = ", ".join(sorted(self.workflows)) or "none"
            raise MedhubError(f"model {self.id} has no workflow '{name}'; available: {have}") from None


def _workflows(folder: Path) -> dict[str, Path]:
    wf_dir = folder / "workflows"
    if not wf_dir.is_dir():
        return {}
    return {p.stem: p for p in sorted(wf_dir.glob("*.yml")) + sorted(wf_dir.glob("*.yaml"))}


def _entry(folder: Path, module: str) -> ModelEntry:
    card = load_card(folder / "card.yaml")
    return ModelEntry(card=card, path=folder, module=module, workflows=_workflows(folder))


def _builtin_entries() -> list[ModelEntry]:
    entries = []
    for folder in sorted(BUILTIN_ROOT.iterdir()):
        if folder.is_dir() and (folder / "card.yaml").is_file():
            entry = _entry(folder, f"medhub.models.{folder.name}")
            if entry.card.package_name != folder.name:
                raise MedhubError(
                    f"{folder / 'card.yaml'}: model id '{entry.card.id}' does not match its folder '{folder.name}' "
                    f"(expected folder '{entry.card.package_name}')"
                )
            entries.append(entry)
    return entries


def _plugin_entries() -> list[ModelEntry]:
    entries = []
    for ep in entry_points(group=ENTRY_POINT_GROUP):
        spec = importlib.util.find_spec(ep.value)
        if spec is None or not spec.submodule_search_locations:
            raise MedhubError(f"entry point {ENTRY_POINT_GROUP}:{ep.name} names '{ep.value}', which is not a package")
        folder = Path(next(iter(spec.submodule_search_locations)))
        entries.append(_entry(folder, ep.value))
    return entries


def _all_entries() -> dict[str, ModelEntry]:
    found: dict[str, ModelEntry] = {}
    for entry in _builtin_entries() + _plugin_entries():
        if entry.id in found:
            raise MedhubError(f"two models have the id '{entry.id}': {found[entry.id].path} and {entry.path}")
        found[entry.id] = entry
    return found


def list_models() -> list[ModelCard]:
    """Cards of every available model (built-in and installed plugins), sorted by id."""
    return [entry.card for _, entry in sorted(_all_entries().items())]


def get_model(name: str) -> ModelEntry:
    """The model with this id (``ct-body``; the package spelling ``ct_body`` is accepted too)."""
    entries = _all_entries()
    key = name.strip().lower().replace("_", "-")
    if key not in entries:
        raise MedhubError(f"unknown model '{name}'; available: {', '.join(sorted(entries)) or 'none'}")
    return entries[key]


def require_module(module: str, model_id: str, *, pip_name: str | None = None, extra: str | None = None) -> ModuleType:
    """Import an optional dependency of a model, or raise a one-line error saying what to install.

    Runners call this inside ``load`` so that the catalog never imports heavy packages.
    """
    try:
        return importlib.import_module(module)
    except ImportError as exc:
        package = pip_name or module
        if exc.name is not None and exc.name.split(".")[0] != module.split(".")[0]:
            # the package is there but one of *its* own imports fails: say which one
            raise MedhubError(
                f"model {model_id}: the package '{package}' is installed but cannot be imported ({exc})"
            ) from None
        hint = f"pip install 'medhub[{extra}]'" if extra else f"pip install '{package}'"
        raise MedhubError(f"model {model_id} needs the package '{package}' ({hint})") from None
