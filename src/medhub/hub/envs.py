"""Model environments: a venv per model, made with uv from the card's requirements.

A model whose requirements are not satisfied by medhub's own environment (a package missing,
or installed in a version the card excludes, e.g. ``numpy<2`` next to medhub's numpy 2) runs
in its own venv; :mod:`medhub.hub.isolated` then talks to its runner through a worker process.
This module decides *whether* a model needs that (:func:`needs_isolation`) and builds the
venv once (:func:`ensure_env`).

What goes into a model's venv, and why:

* **The card's requirements**, resolved by ``uv pip install`` together with the two packages
  the worker itself imports (numpy, pydicom, with medhub's own version bounds), so a card's
  ``numpy<2`` is resolved against them instead of clashing at run time.
* **medhub itself, as it is installed here**: a symlink ``site-packages/medhub`` to the
  running package's folder. This works for an editable checkout and a wheel install alike,
  needs no build step, and guarantees the worker speaks the same protocol as the proxy. A
  card requirement on ``medhub`` is therefore ignored.
* **torch is never installed by uv** (a PyPI torch is a multi-GB CUDA build; the main
  environment has the CPU build). The torch family is always passed to uv's ``--excludes``,
  so nothing pulls it in transitively. When a card requires a torch-family package, the main
  environment's copy is reused: a ``.pth`` file appends the main environment's site-packages
  to the venv's ``sys.path``, *after* the venv's own site-packages, so everything uv
  installed in the venv (a conflicting numpy, say) still shadows the main environment's
  version. The main torch must satisfy the card's spec, or the build stops with a one-line
  error. (A ``.pth`` rather than ``--system-site-packages``: the latter would expose the base
  interpreter's packages, not medhub's environment when that is itself a venv.) Without a
  torch requirement the venv sees nothing of the main environment except medhub.
  A model whose dependencies pull torch in must therefore list torch in its card.

Location: ``$MEDHUB_ENVS`` or ``~/.cache/medhub/envs``, one folder
``<model-id>-<spec hash>``; the hash covers the requirements, the Python version, the
worker's own dependencies and the torch reuse, so changing any of them makes a new venv.
A venv is built in a temporary folder beside it and renamed into place only when complete,
with a marker file ``medhub-env.json``: an interrupted build never leaves a half-made venv
that a later run would use.
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib.util
import json
import os
import shutil
import subprocess
import sys
import sysconfig
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import Any

from packaging.requirements import InvalidRequirement, Requirement
from packaging.utils import canonicalize_name

import medhub
from medhub import config
from medhub.config import Isolation
from medhub.errors import MedhubError

MARKER = "medhub-env.json"
FORMAT_VERSION = 1
TORCH_FAMILY = frozenset({"torch", "torchvision", "torchaudio"})
WORKER_PACKAGES = ("numpy", "pydicom")  # what medhub.hub.isolated_worker and medhub.data import
_SELF = "medhub"


def parse_requirements(card: Any) -> list[Requirement]:
    """The card's requirements that apply to this platform, parsed; a bad spec is a one-line error."""
    parsed = []
    for spec in card.requirements:
        try:
            requirement = Requirement(spec)
        except InvalidRequirement as exc:
            raise MedhubError(f"model {card.id}: requirement {spec!r} is not a valid pip spec ({exc})") from None
        if requirement.marker is not None and not requirement.marker.evaluate():
            continue
        if canonicalize_name(requirement.name) == _SELF:
            continue  # the venv always gets the running medhub (see the module docstring)
        parsed.append(requirement)
    return parsed


def installed_version(name: str) -> str | None:
    """Version of a distribution in the running environment, or None when it is not installed.

    The distribution importlib.metadata finds first, as ``metadata.version`` does; but its
    ``Version`` header is read from the metadata's header block instead of parsing the whole file
    with the ``email`` package (torch's and TotalSegmentator's METADATA carry their READMEs): the
    18 requirements of the built-in cards took 0.06 s of the 0.25 s a ``medhub models`` takes.
    """
    try:
        distribution = metadata.distribution(name)
    except metadata.PackageNotFoundError:
        return None
    text = distribution.read_text("METADATA") or distribution.read_text("PKG-INFO") or ""
    headers = text.replace("\r\n", "\n").partition("\n\n")[0]  # the body (long description) follows a blank line
    for line in headers.split("\n"):
        if line.startswith("Version:"):
            return line[len("Version:"):].strip()
    return distribution.version  # unusual metadata: the standard parser decides


def unsatisfied(card: Any) -> list[str]:
    """Requirements of ``card`` the running environment does not satisfy, each with the reason."""
    problems = []
    for requirement in parse_requirements(card):
        version = installed_version(requirement.name)
        if version is None:
            problems.append(f"{requirement} (not installed)")
        elif requirement.specifier and not requirement.specifier.contains(version, prereleases=True):
            problems.append(f"{requirement} (installed: {version})")
    return problems


def needs_isolation(card: Any) -> bool:
    """True when the model must run in its own venv: any requirement unmet here, or forced by
    ``MEDHUB_ISOLATION=always`` (``never`` turns isolation off, e.g. to debug a runner)."""
    mode = config.settings().isolation
    if mode is not Isolation.AUTO:
        return mode is Isolation.ALWAYS
    return bool(unsatisfied(card))


def envs_root() -> Path:
    """Where model venvs live: ``$MEDHUB_ENVS`` or ``~/.cache/medhub/envs``."""
    return config.settings().envs


def medhub_requirement(name: str) -> str:
    """medhub's own requirement line for ``name`` (e.g. ``numpy>=1.26``), or the bare name."""
    try:
        lines = metadata.requires(_SELF) or []
    except metadata.PackageNotFoundError:  # running from a source tree that is not installed
        return name
    for line in lines:
        requirement = Requirement(line)
        if canonicalize_name(requirement.name) == name and requirement.marker is None:
            return str(requirement)
    return name


def reused_from_main(card: Any) -> dict[str, str]:
    """Torch-family packages the card requires, taken from the main environment: {name: version}.

    The main environment's version must satisfy the card: medhub does not install torch into
    a model venv, so a mismatch cannot be fixed there.
    """
    reused: dict[str, str] = {}
    for requirement in parse_requirements(card):
        name = canonicalize_name(requirement.name)
        if name not in TORCH_FAMILY:
            continue
        version = installed_version(name)
        if version is None or (requirement.specifier and not requirement.specifier.contains(version, True)):
            have = f"it has {version}" if version else "it is not installed"
            raise MedhubError(
                f"model {card.id} requires {requirement}; model environments reuse {name} from medhub's "
                f"environment ({have}): install a matching {name} there (pip install '{requirement}')"
            )
        reused[name] = version
    return reused


def env_spec(card: Any) -> dict[str, Any]:
    """Everything that determines a model venv's contents; its hash names the folder."""
    requirements = [str(r) for r in parse_requirements(card)
                    if canonicalize_name(r.name) not in TORCH_FAMILY]
    reused = reused_from_main(card)
    return {
        "format": FORMAT_VERSION,
        "model": card.id,
        "requirements": sorted(requirements),
        "worker": sorted(medhub_requirement(name) for name in WORKER_PACKAGES),
        "python": f"{sys.implementation.name}-{'.'.join(map(str, sys.version_info[:3]))}",
        "reused": reused,
        "main_site": main_site_packages(list(reused)) if reused else [],
    }


def spec_hash(spec: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(spec, sort_keys=True).encode()).hexdigest()[:16]


def env_path(card: Any, root: Path | None = None) -> Path:
    """The folder of this model's venv (whether or not it exists yet)."""
    return (root or envs_root()) / f"{card.id}-{spec_hash(env_spec(card))}"


def env_python(env: Path) -> Path:
    """The venv's interpreter."""
    return env / ("Scripts/python.exe" if os.name == "nt" else "bin/python")


def env_ready(env: Path) -> bool:
    """True when ``env`` is a complete venv built by :func:`ensure_env` (its marker is there)."""
    return (env / MARKER).is_file() and env_python(env).exists()


@dataclass
class EnvState:
    """Whether a model runs in its own environment, and whether that environment is built (``medhub info``)."""

    model_id: str
    needed: bool  # the model runs in its own venv (its requirements are not met here, or MEDHUB_ISOLATION=always)
    reason: str = ""  # why: the unmet requirements, or the setting
    path: Path | None = None  # where its venv is (or would be)
    built: bool = False
    problem: str = ""  # why it cannot be built as things stand (e.g. torch here does not satisfy the card)

    def summary(self) -> str:
        """One phrase: what ``medhub info`` and ``medhub models`` say about the environment."""
        if not self.needed:
            return "medhub's own"
        if self.problem:
            return f"cannot be built: {self.problem}"
        return "built" if self.built else f"not built (medhub pull {self.model_id})"


def env_state(card: Any, root: Path | None = None) -> EnvState:
    """The truth about a model's environment, without building anything (cheap: no uv, no hashing)."""
    mode = config.settings().isolation
    if mode is Isolation.NEVER:
        return EnvState(card.id, needed=False)
    missing = unsatisfied(card)
    if mode is Isolation.AUTO and not missing:
        return EnvState(card.id, needed=False)
    reason = "; ".join(missing) if mode is Isolation.AUTO else f"{config.ISOLATION}=always"
    try:
        path = env_path(card, root)
    except MedhubError as exc:
        return EnvState(card.id, needed=True, reason=reason, problem=str(exc))
    return EnvState(card.id, needed=True, reason=reason, path=path, built=env_ready(path))


def not_built_message(state: EnvState) -> str:
    return (f"model {state.model_id} runs in its own environment ({state.reason}), which is not built yet: "
            f"run `medhub pull {state.model_id}` first")


def require_env(entry: Any, root: Path | None = None) -> Path:
    """The model's built venv; a one-line error saying how to build it when it is not built.

    Loading a model never builds an environment (minutes and hundreds of MB, issue 13): only
    ``medhub pull`` and ``medhub run --pull`` do, through :func:`ensure_env`.
    """
    state = check_env_built(entry.card, root)
    if not state.needed or state.path is None:
        raise MedhubError(f"model {entry.card.id} runs in medhub's own environment; it has none of its own")
    return state.path


def check_env_built(card: Any, root: Path | None = None) -> EnvState:
    """The environment's state; a one-line error when the model needs its own and it is not built (or cannot be)."""
    state = env_state(card, root)
    if state.problem:
        raise MedhubError(state.problem)
    if state.needed and not state.built:
        raise MedhubError(not_built_message(state))
    return state


def folder_size(path: Path) -> int:
    """Bytes of the files under ``path`` (links not followed: the shared torch and medhub are not counted)."""
    total = 0
    for folder, _, files in os.walk(path):
        for name in files:
            with contextlib.suppress(OSError):
                total += os.lstat(os.path.join(folder, name)).st_size
    return total


def main_site_packages(packages: list[str] | None = None) -> list[str]:
    """The running environment's site-packages folders (purelib and platlib, deduplicated).

    Plus the folders the given packages are actually imported from: in a venv made with
    ``--system-site-packages`` torch lives in the base interpreter's site-packages, not the venv's.
    """
    paths = [sysconfig.get_paths()["purelib"], sysconfig.get_paths()["platlib"]]
    for name in packages or []:
        spec = importlib.util.find_spec(name.replace("-", "_"))
        if spec is not None and spec.origin:
            paths.append(str(Path(spec.origin).resolve().parent.parent))
    return list(dict.fromkeys(str(Path(p).resolve()) for p in paths))


def uv_binary() -> str:
    """The uv executable of the ``uv`` Python package (``pip install uv``)."""
    try:
        import uv
    except ImportError:
        raise MedhubError("isolated model environments need uv: pip install uv") from None
    return uv.find_uv_bin()


def ensure_env(entry: Any, *, root: Path | None = None, log: Callable[[str], None] | None = None) -> Path:
    """The model's venv, built with uv when it does not exist yet; returns its folder.

    ``entry`` is a catalog entry (only ``entry.card`` is used). Raises :class:`MedhubError`
    with uv's first error line when the build fails.
    """
    card = entry.card
    spec = env_spec(card)
    root = root or envs_root()
    target = root / f"{card.id}-{spec_hash(spec)}"
    if env_ready(target):
        return target
    root.mkdir(parents=True, exist_ok=True)
    if log:
        log(f"creating the environment of model {card.id} in {target}")
    started = time.perf_counter()
    building = Path(tempfile.mkdtemp(prefix=f".{target.name}-", dir=root))
    try:
        _build(building, card, spec, log)
        marker = {**spec, "seconds": round(time.perf_counter() - started, 2), "created": time.time(),
                  "medhub": medhub.__version__, "bytes": folder_size(building)}
        (building / MARKER).write_text(json.dumps(marker, indent=2) + "\n")
        try:
            building.rename(target)
        except OSError:
            if not env_ready(target):  # not another process finishing the same venv first
                raise MedhubError(f"cannot move the new environment of model {card.id} to {target}") from None
    finally:
        if building.exists():
            shutil.rmtree(building, ignore_errors=True)
    return target


def _build(env: Path, card: Any, spec: dict[str, Any], log: Callable[[str], None] | None = None) -> None:
    """Create the venv in ``env`` and fill it (see the module docstring for what goes in)."""
    uv = uv_binary()
    _uv(card, [uv, "venv", "--quiet", "--relocatable", "--python", _base_python(), str(env)])
    python = env_python(env)
    site = Path(_run_python(card, python, "import sysconfig; print(sysconfig.get_paths()['purelib'])"))
    (site / _SELF).symlink_to(Path(medhub.__file__).resolve().parent, target_is_directory=True)
    if spec["main_site"]:
        (site / "_medhub_main_env.pth").write_text("".join(f"{p}\n" for p in spec["main_site"]))
    excludes = env / "medhub-excludes.txt"
    excludes.write_text("".join(f"{name}\n" for name in sorted(TORCH_FAMILY)))
    _uv(card, [uv, "pip", "install", "--python", str(python), "--excludes", str(excludes),
               *spec["worker"], *spec["requirements"]], log=log)


def _base_python() -> str:
    """The interpreter uv should base the venv on: this one (uv finds its base installation)."""
    return sys.executable


def _uv(card: Any, command: list[str], log: Callable[[str], None] | None = None) -> None:
    """Run uv; each line it prints goes to ``log`` as it comes (what it resolves, downloads, installs)."""
    environment = {**os.environ, "UV_PYTHON_DOWNLOADS": "never", "NO_COLOR": "1"}
    environment.pop("VIRTUAL_ENV", None)
    proc = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=environment)
    lines = []
    assert proc.stdout is not None
    for line in proc.stdout:
        lines.append(line)
        if log is not None and line.strip():
            log(line.rstrip())
    if proc.wait() != 0:
        raise MedhubError(f"model {card.id}: creating its environment failed: {first_error(''.join(lines))}")


def _run_python(card: Any, python: Path, code: str) -> str:
    proc = subprocess.run([str(python), "-c", code], capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        raise MedhubError(f"model {card.id}: the new environment's python fails: {first_error(proc.stderr)}")
    return proc.stdout.strip()


def first_error(output: str) -> str:
    """uv's error as one line: its ``error:`` line, plus the first ``cause:`` line when there is one."""
    lines = [line.strip().lstrip("×").strip() for line in output.splitlines() if line.strip()]
    errors = [line for line in lines if line.lower().startswith("error") or line.startswith("No solution")]
    causes = [line for line in lines if line.lower().startswith(("cause:", "caused by:", "╰─▶"))]
    if not errors:
        return lines[-1] if lines else "no output"
    return errors[0] + (f" ({causes[0]})" if causes else "")


def installed_envs(root: Path | None = None) -> list[dict[str, Any]]:
    """The complete venvs under the envs folder, with their markers (for ``medhub doctor``)."""
    root = root or envs_root()
    found = []
    for folder in sorted(root.glob("*")) if root.is_dir() else []:
        if not folder.name.startswith(".") and env_ready(folder):
            found.append({"path": str(folder), **json.loads((folder / MARKER).read_text())})
    return found
