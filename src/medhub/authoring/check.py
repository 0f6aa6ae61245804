"""``medhub check PATH_OR_NAME``: everything a model author must get right, each failure on one line.

Why: a contributor should learn what is wrong from one command on their own machine, not
from a reviewer. The checks run in order and each yields :class:`CheckResult` lines:

``card``       the card validates (every pydantic error becomes one line with how to fix it)
``runner``     ``<package>.runner`` imports and defines a class ``Runner`` with load/predict
``workflows``  a ``default`` workflow exists, each parses, and selects one of the card's inputs
``segments``   every output segment ID is in medhub's segment database
``weights``    every weights file is cached, downloadable or bundled (else which are missing)
``sample``     the card names sample data, and it can be produced
``run``        the model runs on the sample through the real pipeline (select → load → predict)
``reference``  the outputs match the reference: Dice per segment and value tolerances (MHub's medcmp)

The exit code of the command is 0 when nothing failed, 1 otherwise (warnings do not fail).
"""

from __future__ import annotations

import contextlib
import difflib
import importlib
import json
import math
import shutil
import sys
import tempfile
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from importlib.metadata import PackageNotFoundError, entry_points, version
from pathlib import Path
from typing import Any

import numpy as np
from packaging.requirements import Requirement

from medhub.errors import MedhubError
from medhub.hub.card import ModelCard, SampleSpec, card_problems, read_card_data
from medhub.hub.catalog import (
    BUILTIN_ROOT,
    ENTRY_POINT_GROUP,
    ModelEntry,
    entry_from_folder,
    get_model,
    plugin_folder,
    pull_weights,
)
from medhub.hub.runner import Runner
from medhub.hub.runtime import RUNNERS
from medhub.hub.weights import WeightFile, ensure_weights
from medhub.hub.workflow import load_workflow_file
from medhub.inputs.nifti import read_nifti_image
from medhub.inputs.sample import nifti_as_dicom
from medhub.pipeline.report import Status
from medhub.pipeline.run import RunOptions, run
from medhub.pipeline.workflows import workflow_problems
from medhub.segdb import load_segment_database

_SKIP_DIRS = {".venv", "venv", ".git", "build", "dist", "node_modules", "site-packages", "__pycache__", ".tox"}
REFERENCE_LABELS = "labels.nii.gz"
REFERENCE_VALUES = "values.json"


@dataclass
class CheckResult:
    """One line of the check: ``status`` is ``ok``, ``warn`` or ``fail``; ``message`` says how to fix a failure."""

    check: str
    status: str
    message: str

    @property
    def failed(self) -> bool:
        return self.status == "fail"

    def line(self) -> str:
        return f"{self.status.upper():4} {self.check}: {' '.join(self.message.split())}"


@dataclass
class Target:
    """Where the model under check lives: its folder, import name and the folder to put on ``sys.path``."""

    folder: Path
    module: str
    import_root: Path | None  # None when the package is importable already (built-in or installed)


# ----------------------------------------------------------------------------------- locating


def locate(target: str) -> Target:
    """A path (model folder, or a project holding exactly one ``card.yaml``) or a catalog name."""
    path = Path(target)
    if path.exists():
        folder = path if path.is_dir() else path.parent
        if not (folder / "card.yaml").is_file():
            cards = [c for c in sorted(folder.rglob("card.yaml")) if not _SKIP_DIRS & set(c.parts)]
            if not cards:
                raise MedhubError(f"{path}: no card.yaml here or below (create a model with: medhub new NAME)")
            if len(cards) > 1:
                listed = ", ".join(map(str, cards[:3]))
                raise MedhubError(f"{path}: several card.yaml files ({listed}); give the folder of one")
            folder = cards[0].parent
        folder = folder.resolve()
        return Target(folder=folder, module=folder.name, import_root=folder.parent)
    return _locate_by_name(target)


def _locate_by_name(name: str) -> Target:
    """A model of the catalog, even one whose card is broken (so check can say what is wrong)."""

    key = name.strip().lower().replace("_", "-")
    package = key.replace("-", "_")
    if (BUILTIN_ROOT / package / "card.yaml").is_file():
        return Target(BUILTIN_ROOT / package, f"medhub.models.{package}", None)
    for ep in entry_points(group=ENTRY_POINT_GROUP):
        if ep.name.lower().replace("_", "-") == key:
            return Target(plugin_folder(ep.value), ep.value, None)
    entry = get_model(name)  # a plugin whose entry point name differs from its card id
    return Target(entry.path, entry.module, None)


@contextlib.contextmanager
def _importable(target: Target) -> Iterator[None]:
    """Put the target's parent folder first on ``sys.path`` and forget any other copy of the package."""
    if target.import_root is None:
        yield
        return
    root = str(target.import_root)

    def forget() -> None:
        for name in [m for m in sys.modules if m == target.module or m.startswith(target.module + ".")]:
            del sys.modules[name]

    forget()
    sys.path.insert(0, root)
    importlib.invalidate_caches()
    try:
        yield
    finally:
        with contextlib.suppress(ValueError):
            sys.path.remove(root)
        forget()  # the next check (or an installed copy) must not get this folder's modules


# ----------------------------------------------------------------------------------- the checks


def check_model(target: str | Path, *, device: str = "cpu", write_reference: bool = False,
                work_dir: Path | None = None) -> list[CheckResult]:
    """Run every check on a model folder or catalog name; see the module docstring for the order."""
    where = locate(str(target))
    results: list[CheckResult] = []
    card_path = where.folder / "card.yaml"
    problems = card_problems(read_card_data(card_path), str(card_path))
    if problems:
        results += [CheckResult("card", "fail", line) for line in problems]
        return results
    entry = entry_from_folder(where.folder, where.module, origin="checked")
    card = entry.card
    results.append(CheckResult("card", "ok", f"{card.id} {card.version}: {card.title}"))
    results += _check_id(entry, where)
    with _importable(where):
        runner_ok = _check_runner(entry, results)
        results += _check_workflows(entry)
        results += _check_segments(card)
        results += _check_requirements(card)
        weights = _check_weights(entry)
        results += weights
        if not runner_ok:
            results.append(CheckResult("run", "fail", "not run: fix the runner first"))
            return results
        if any(r.status == "warn" for r in weights):
            results.append(CheckResult("run", "warn", "the sample run was NOT done: the model's weights cannot be "
                                                      "fetched on this machine (see the weights line); put them in "
                                                      "MEDHUB_WEIGHTS_MIRROR or run medhub pull where there is "
                                                      f"network, then run medhub check {entry.id} again"))
            return results
        with _work_folder(work_dir) as work:
            sample = _materialize_sample(entry, work, results)
            if sample is not None:
                results += _run_and_compare(entry, sample, work, device=device, write_reference=write_reference)
    return results


def _check_id(entry: ModelEntry, where: Target) -> list[CheckResult]:
    builtin = BUILTIN_ROOT / entry.card.package_name
    if (builtin / "card.yaml").is_file() and builtin.resolve() != where.folder.resolve():
        return [CheckResult("card", "fail", f"id '{entry.id}' is already a built-in model of medhub; "
                                            f"choose another id in {where.folder / 'card.yaml'}")]
    return []


def _check_runner(entry: ModelEntry, results: list[CheckResult]) -> bool:
    runner_file = entry.path / "runner.py"
    if not (entry.path / "__init__.py").is_file():
        results.append(CheckResult("runner", "fail", f"{entry.path} is not a package: add an empty __init__.py"))
        return False
    if not runner_file.is_file():
        results.append(CheckResult("runner", "fail", f"no {runner_file}: add runner.py with a class "
                                                     "Runner(medhub.Runner) (predict(volume, params))"))
        return False
    try:
        runner_class = entry.runner_class()
    except MedhubError as exc:
        results.append(CheckResult("runner", "fail", f"{exc}: add 'class Runner(medhub.Runner)' to {runner_file}"))
        return False
    except Exception as exc:  # any import-time error of the author's code, reported on one line
        results.append(CheckResult("runner", "fail", f"importing {entry.module}.runner raised "
                                                     f"{_one_line(exc)}: fix {runner_file}{_lineno(exc, runner_file)}"))
        return False
    if runner_class.predict is Runner.predict:
        results.append(CheckResult("runner", "fail", f"{entry.module}.runner.Runner has no predict method: add "
                                                     "predict(self, volume, params) returning a label array"))
        return False
    try:
        runner_class()
    except Exception as exc:
        results.append(CheckResult("runner", "fail", f"Runner() raised {_one_line(exc)}: the constructor must take "
                                                     "no arguments; load weights in load()"))
        return False
    results.append(CheckResult("runner", "ok", f"{entry.module}.runner.Runner"))
    return True


def _check_workflows(entry: ModelEntry) -> list[CheckResult]:
    results = []
    if "default" not in entry.workflows:
        results.append(CheckResult("workflows", "fail", f"no {entry.path / 'workflows' / 'default.yml'}: add one "
                                                        "(execute: [select, load, predict, write_seg])"))
    queries = [spec.query for spec in entry.card.inputs]
    for name, path in sorted(entry.workflows.items()):
        try:
            workflow = load_workflow_file(path)
        except MedhubError as exc:
            results.append(CheckResult("workflows", "fail", str(exc)))
            continue
        selected = workflow.params("select").get("input")
        if selected is not None and selected not in queries:
            results.append(CheckResult("workflows", "fail", f"{path}: modules.select.input {selected!r} is none of "
                                                            f"the card's input queries; use one of {queries}"))
            continue
        problems = workflow_problems(entry.card, workflow)
        if problems:
            results += [CheckResult("workflows", "fail", f"{path}: {_where_in_file(problem)}") for problem in problems]
            continue
        results.append(CheckResult("workflows", "ok", f"{name}: {' → '.join(workflow.execute)}"))
    return results


def _where_in_file(problem: str) -> str:
    """A workflow problem as it reads in the file: ``execute: ...`` as is, a module's key under ``modules.``."""
    return problem if problem.startswith("execute:") else f"modules.{problem}"


def _check_segments(card: ModelCard) -> list[CheckResult]:
    database = load_segment_database()
    results = []
    for value, segment_id in sorted(card.outputs.segments.items()):
        if segment_id not in database:
            close = difflib.get_close_matches(segment_id, list(database), n=3)
            hint = f"did you mean {', '.join(close)}? " if close else ""
            results.append(CheckResult("segments", "fail", f"label {value}: {segment_id!r} is not in the segment "
                                                           f"database; {hint}see `medhub info` of a model for IDs, or "
                                                           "add an entry with real SNOMED CT codes to medhub/segdb"))
    if not results and card.outputs.segments:
        names = ", ".join(f"{v}={s}" for v, s in sorted(card.outputs.segments.items()))
        results.append(CheckResult("segments", "ok", names))
    return results


def _check_requirements(card: ModelCard) -> list[CheckResult]:
    results = []
    for text in card.requirements:
        requirement = Requirement(text)
        if requirement.marker is not None and not requirement.marker.evaluate():
            continue
        try:
            installed = version(requirement.name)
        except PackageNotFoundError:
            results.append(CheckResult("requirements", "warn", f"{text} is not installed here (pip install '{text}')"))
            continue
        if requirement.specifier and not requirement.specifier.contains(installed, prereleases=True):
            results.append(CheckResult("requirements", "warn", f"{text}: {installed} is installed here; the model "
                                                               "will need its own environment"))
        elif not requirement.specifier and not requirement.url:
            results.append(CheckResult("requirements", "warn", f"{text} has no version: pin the one you tested "
                                                               f"(e.g. {requirement.name}=={installed.split('+')[0]})"))
    if not results:
        results.append(CheckResult("requirements", "ok", ", ".join(card.requirements) or "none"))
    return results


def _check_weights(entry: ModelEntry) -> list[CheckResult]:
    """Every weights file verified; a remote file this machine cannot reach is a warning, not a pass.

    Why a warning: a card whose https:// weights cannot be fetched from an offline machine may
    still be right. The sample run is then not done, and the ``run`` line says so and why.
    A local file that is missing, a wrong SHA-256 or a missing package is a failure.
    """
    if not entry.card.weights:
        return [CheckResult("weights", "ok", "none declared")]
    try:
        paths = pull_weights(entry, progress=False)
    except MedhubError as exc:
        if _unreachable(exc, entry.card):
            return [CheckResult("weights", "warn", f"not verified: this machine cannot fetch them: {exc}")]
        return [CheckResult("weights", "fail", f"{exc} (or run: medhub pull {entry.id})")]
    return [CheckResult("weights", "ok", f"{len(paths)} file(s) verified")]


def _unreachable(exc: MedhubError, card: ModelCard) -> bool:
    """True when the weights failed only because their http(s) URLs (and the mirror) could not be reached."""
    text = str(exc)
    remote = [w for w in card.weights if w.url is not None and w.url.startswith(("http://", "https://"))]
    return " not found: tried http" in text and any(w.url is not None and w.url in text for w in remote)


# ----------------------------------------------------------------------------------- sample and reference


@contextlib.contextmanager
def _work_folder(work_dir: Path | None) -> Iterator[Path]:
    if work_dir is not None:
        work_dir.mkdir(parents=True, exist_ok=True)
        yield work_dir
        return
    with tempfile.TemporaryDirectory(prefix="medhub-check-") as tmp:
        yield Path(tmp)


def sample_input(entry: ModelEntry, spec: SampleSpec, out_dir: Path) -> Path:
    """Produce the card's sample input under ``out_dir`` (or find it in place) and return its path."""
    if spec.path is not None:
        path = Path(spec.path)
        path = path if path.is_absolute() else entry.path / path
        if not path.exists():
            raise MedhubError(f"sample path {path} does not exist")
        return path
    if spec.url is not None:
        fetched = _fetch_sample(entry, spec, out_dir)
        if spec.dicom and fetched.name.endswith((".nii", ".nii.gz")):
            modality = entry.card.inputs[0].modality or entry.card.modality[0]
            return nifti_as_dicom(fetched, out_dir, modality=modality.split("|")[0],
                                  body_part=entry.card.inputs[0].body_part or entry.card.body_part)
        return fetched
    assert spec.generator is not None
    module_name, _, function_name = spec.generator.partition(":")
    try:
        function = getattr(importlib.import_module(module_name), function_name)
    except (ImportError, AttributeError) as exc:
        raise MedhubError(f"sample generator {spec.generator}: {_one_line(exc)}") from None
    out_dir.mkdir(parents=True, exist_ok=True)
    result = function(out_dir, entry.id)
    if result is None or not Path(result).exists():
        raise MedhubError(f"sample generator {spec.generator} returned {result!r}, not the path of what it wrote")
    return Path(result)


def _fetch_sample(entry: ModelEntry, spec: SampleSpec, out_dir: Path) -> Path:
    """Fetch through the weights cache (mirror, SHA-256, resume), then unpack archives."""

    assert spec.url is not None and spec.sha256 is not None
    name = spec.url.rstrip("/").rsplit("/", 1)[-1].split("?")[0] or "sample"
    file = WeightFile(name=f"sample/{name}", url=spec.url, sha256=spec.sha256, size=spec.size)
    local = ensure_weights(entry.id, [file], progress=True)[file.name]
    if name.endswith((".zip", ".tar", ".tar.gz", ".tgz", ".tar.bz2", ".tar.xz")):
        target = out_dir / "sample"
        shutil.unpack_archive(local, target, filter="data")
        return target
    return local


def _run_and_compare(entry: ModelEntry, sample: Path, work: Path, *, device: str,
                     write_reference: bool) -> list[CheckResult]:
    card = entry.card
    assert card.sample is not None
    reference = card.sample.reference
    workflow_name = reference.workflow if reference is not None else "default"
    if workflow_name not in entry.workflows:
        return [CheckResult("run", "fail", f"sample.reference.workflow {workflow_name!r} is not a workflow of "
                                           f"{card.id} ({', '.join(sorted(entry.workflows)) or 'none'})")]
    workflow = load_workflow_file(entry.workflows[workflow_name])
    if "write_nifti" not in workflow.execute:
        workflow.execute.append("write_nifti")  # the label map to compare, whatever else the workflow writes
    output = work / "output"
    RUNNERS.forget(card.id, device)  # the author may have changed the runner since the last load
    try:
        report = run(entry, RunOptions(input_path=sample, output_dir=output, workflow=workflow,
                                                device=device))
    except MedhubError as exc:
        return [CheckResult("run", "fail", f"on the sample {sample}: {exc}")]
    except Exception as exc:
        return [CheckResult("run", "fail", f"on the sample {sample}: {_one_line(exc)}")]
    results = [CheckResult("run", "fail", f"series {e.key[-24:]} {e.status.value}: {e.reason}")
               for e in report.series if e.status in (Status.FAILED, Status.SKIPPED, Status.IMPLAUSIBLE)]
    done = [e for e in report.series if e.status == Status.SUCCEEDED]
    if results:
        return results
    if len(done) != 1:
        return [CheckResult("run", "fail", f"the sample gave {len(done)} results; it must hold exactly one "
                                           "series the model accepts")]
    series = done[0]
    timing = ", ".join(f"{k} {v:.2f} s" for k, v in series.timings.items() if k in ("model_load", "predict"))
    written = ", ".join(Path(o).name for o in series.outputs)
    results.append(CheckResult("run", "ok", f"{series.images} images → {written} ({timing})"))
    values = dict(series.values)
    vectors = [output / o for o in series.outputs if o.endswith(".embedding.npy")]
    if vectors:  # an embedding model: the vector is compared by its length and norm
        vector = np.load(vectors[0])
        values["embedding_dim"] = int(vector.size)
        values["embedding_l2_norm"] = round(float(np.linalg.norm(vector)), 6)
    nifti = next((output / o for o in series.outputs if o.endswith((".nii", ".nii.gz"))), None)
    if write_reference:
        return results + [_write_reference(entry, nifti, values)]
    if reference is None:
        return results + [CheckResult("reference", "fail", "the card has no sample.reference: add "
                                                           "'reference: {folder: reference}' under sample, then run "
                                                           "medhub check PATH --write-reference and review it")]
    if reference.inline:
        return results + compare_with_card(entry, nifti, values)
    if nifti is None:
        return results + [CheckResult("reference", "fail", "the run wrote no label map to compare with the "
                                                           "reference folder; give values in sample.reference")]
    return results + compare_with_reference(entry, nifti, values)


def _reference_folder(entry: ModelEntry) -> Path:
    card = entry.card
    assert card.sample is not None
    folder = card.sample.reference.folder if card.sample.reference is not None else "reference"
    return entry.path / folder


def _write_reference(entry: ModelEntry, nifti: Path | None, values: dict[str, Any]) -> CheckResult:
    folder = _reference_folder(entry)
    folder.mkdir(parents=True, exist_ok=True)
    if entry.card.outputs.segments and nifti is not None:
        shutil.copyfile(nifti, folder / REFERENCE_LABELS)
    (folder / REFERENCE_VALUES).write_text(json.dumps(values, indent=2, sort_keys=True, default=str) + "\n")
    return CheckResult("reference", "ok", f"wrote {folder} from this run: review it before you commit it")


def dice(a: np.ndarray, b: np.ndarray) -> float:
    """Dice coefficient of two boolean masks; two empty masks agree perfectly (1.0)."""
    total = int(a.sum()) + int(b.sum())
    return 1.0 if total == 0 else 2.0 * int(np.logical_and(a, b).sum()) / total


def compare_with_reference(entry: ModelEntry, nifti: Path, values: dict[str, Any]) -> list[CheckResult]:
    """Dice per segment and value tolerances against the card's reference folder (one line per finding)."""
    card = entry.card
    assert card.sample is not None and card.sample.reference is not None
    spec = card.sample.reference
    folder = _reference_folder(entry)
    fix = f"fix the model, or if the change is intended: medhub check {entry.path} --write-reference"
    results: list[CheckResult] = []
    if card.outputs.segments:
        ref_path = folder / REFERENCE_LABELS
        if not ref_path.is_file():
            return [CheckResult("reference", "fail", f"no {ref_path}: run medhub check {entry.path} --write-reference")]
        ours, theirs = read_nifti_image(nifti), read_nifti_image(ref_path)
        if ours.shape != theirs.shape or not np.allclose(ours.affine, theirs.affine, atol=1e-3):
            return [CheckResult("reference", "fail", f"{ref_path} is on another grid ({theirs.shape}) than the "
                                                     f"output ({ours.shape}); regenerate it from this sample")]
        a, b = np.asarray(ours.dataobj), np.asarray(theirs.dataobj)
        for value, segment_id in sorted(card.outputs.segments.items()):
            score = dice(a == value, b == value)
            needed = spec.segment_min_dice.get(segment_id, spec.min_dice)
            status = "ok" if score >= needed else "fail"
            message = f"{segment_id} Dice {score:.4f}" + (f" < {needed}: {fix}" if status == "fail" else "")
            results.append(CheckResult("reference", status, message))
    values_path = folder / REFERENCE_VALUES
    expected = json.loads(values_path.read_text()) if values_path.is_file() else {}
    for name, want in sorted(expected.items()):
        if name not in values:
            results.append(CheckResult("reference", "fail", f"value {name} is missing from the output; {fix}"))
            continue
        got = values[name]
        if _close(got, want, spec.value_rtol, spec.value_atol):
            results.append(CheckResult("reference", "ok", f"{name} = {got}"))
        else:
            results.append(CheckResult("reference", "fail", f"value {name} = {got}, reference {want} (rtol "
                                                            f"{spec.value_rtol}, atol {spec.value_atol}); {fix}"))
    return results


def compare_with_card(entry: ModelEntry, nifti: Path | None, values: dict[str, Any]) -> list[CheckResult]:
    """The run against the expected values and voxel counts written in the card (one line per finding)."""
    card = entry.card
    assert card.sample is not None and card.sample.reference is not None
    spec = card.sample.reference
    fix = "fix the model, or if the change is intended, update sample.reference in the card"
    results: list[CheckResult] = []
    if spec.segment_voxels:
        if nifti is None:
            return [CheckResult("reference", "fail", "the run wrote no label map; segment_voxels cannot be compared")]
        labels = np.asarray(read_nifti_image(nifti).dataobj)
        counts = dict(zip(*np.unique(labels, return_counts=True), strict=True))
        value_of = {segment: value for value, segment in card.outputs.segments.items()}
        for segment_id, voxels in sorted(spec.segment_voxels.items()):
            if segment_id not in value_of:
                results.append(CheckResult("reference", "fail", f"segment_voxels names {segment_id!r}, which is not "
                                                                "an output segment of the card"))
                continue
            got = int(counts.get(value_of[segment_id], 0))
            if math.isclose(got, voxels, rel_tol=spec.voxel_rtol, abs_tol=0):
                results.append(CheckResult("reference", "ok", f"{segment_id} {got} voxels"))
            else:
                results.append(CheckResult("reference", "fail", f"{segment_id} {got} voxels, reference {voxels} "
                                                                f"(rtol {spec.voxel_rtol}); {fix}"))
    for name, want in sorted(spec.values.items()):
        if name not in values:
            results.append(CheckResult("reference", "fail", f"value {name} is missing from the output; {fix}"))
        elif _close(values[name], want, spec.value_rtol, spec.value_atol):
            results.append(CheckResult("reference", "ok", f"{name} = {values[name]}"))
        else:
            results.append(CheckResult("reference", "fail", f"value {name} = {values[name]}, reference {want} (rtol "
                                                            f"{spec.value_rtol}, atol {spec.value_atol}); {fix}"))
    return results


def _close(got: Any, want: Any, rtol: float, atol: float) -> bool:
    numbers = (int, float)
    if isinstance(got, numbers) and isinstance(want, numbers) and not isinstance(got, bool):
        return math.isclose(float(got), float(want), rel_tol=rtol, abs_tol=atol)
    return got == want


# ----------------------------------------------------------------------------------- helpers


def _materialize_sample(entry: ModelEntry, work: Path, results: list[CheckResult]) -> Path | None:
    spec = entry.card.sample
    if spec is None:
        results.append(CheckResult("sample", "fail", "the card has no 'sample': add sample: {generator: "
                                                     "'pkg.sample:write_sample'} or {path: ...} so the model can be "
                                                     "run and compared"))
        return None
    try:
        path = sample_input(entry, spec, work / "sample")
    except MedhubError as exc:
        results.append(CheckResult("sample", "fail", str(exc)))
        return None
    except Exception as exc:
        results.append(CheckResult("sample", "fail", f"producing the sample raised {_one_line(exc)}"))
        return None
    results.append(CheckResult("sample", "ok", str(path)))
    return path


def _one_line(exc: BaseException) -> str:
    text = f"{type(exc).__name__}: {exc}"
    return " ".join(text.split())[:300]


def _lineno(exc: BaseException, file: Path) -> str:
    """``:LINE`` of the deepest frame in ``file`` (or of a SyntaxError in it), for the fix hint."""
    if isinstance(exc, SyntaxError) and exc.lineno:
        return f":{exc.lineno}"
    tb = exc.__traceback__
    line = ""
    while tb is not None:
        if Path(tb.tb_frame.f_code.co_filename).resolve() == file.resolve():
            line = f":{tb.tb_lineno}"
        tb = tb.tb_next
    return line


def results_json(results: list[CheckResult]) -> list[dict[str, str]]:
    return [asdict(r) for r in results]
