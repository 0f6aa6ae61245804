"""brainchop 0.2.5's own pipeline (tinygrad + niimath) as the oracle for the brainchop models.

``brainchop.utils`` fetches a model listing from GitHub when it is imported unless
``~/.cache/brainchop/models.json`` exists, so every run gets a HOME holding an empty listing
and hands brainchop the mirror's model folders by path (``segment(volume, "/path/to/mindgrab")``).
tinygrad needs ``clang`` on the CPU; niimath comes as a pip package.

tinygrad runs its CPU kernels on one core: brainchop's full 256^3 run takes about half a
minute for the small grey/white-matter model but many minutes for subcortical and mindgrab.
:class:`BackgroundOracle` therefore starts those runs when the test session starts, at low
priority in a process of their own, while the rest of the suite runs; the tests that compare
with them are moved to the end of the session (see ``conftest.py``) and wait for the results.
Finished runs are kept in a cache keyed by everything they depend on, so a second session on
the same machine does not pay for them again; a fresh machine (CI) always runs brainchop.
"""

from __future__ import annotations

import hashlib
import importlib.util
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

MODEL_FOLDERS = {"brainchop-gwm": "model5_gw_ae", "brainchop-subcortical": "model18cls",
                 "brainchop-mindgrab": "mindgrab"}

# brainchop's own full run of mindgrab (26 layers with GroupNorm and GELU) takes about an hour of
# one CPU core in tinygrad here: too long for a CI run of 30 minutes, so it runs only when asked for.
SLOW_ORACLE_VARIABLE = "MEDHUB_SLOW_ORACLES"
SLOW_ORACLES = {"brainchop-mindgrab": "about an hour (63 CPU-minutes here, 3.7 GB) on one CPU core"}


def slow_oracle_skipped(model_id: str) -> str | None:
    """Why the full comparison of ``model_id`` does not run now, or None when it does."""
    if model_id in SLOW_ORACLES and os.environ.get(SLOW_ORACLE_VARIABLE) != "1":
        return (f"brainchop's own full {model_id} run takes {SLOW_ORACLES[model_id]} (tinygrad); "
                f"set {SLOW_ORACLE_VARIABLE}=1 to compare with it")
    return None


ORACLE_PIPELINE = """
    import sys, time, numpy as np
    from brainchop.api import load, segment
    image, out_dir, *model_dirs = sys.argv[1:]
    for model_dir in model_dirs:
        name = model_dir.rstrip("/").rsplit("/", 1)[-1]
        started = time.perf_counter()
        result = segment(load(image), model_dir)
        # brainchop keeps [z, y, x]; medhub uses [x, y, z]. Written under a temporary name, then renamed:
        # a reader never sees half a file.
        np.save(f"{out_dir}/{name}.partial.npy", result.data.numpy().transpose(2, 1, 0))
        open(f"{out_dir}/{name}.seconds", "w").write(f"{time.perf_counter() - started:.1f}")
        import os; os.replace(f"{out_dir}/{name}.partial.npy", f"{out_dir}/{name}.npy")
        print(f"{name}: {time.perf_counter() - started:.1f} s", flush=True)
"""


def missing_tools() -> str | None:
    """Why brainchop cannot run here, or None when it can."""
    for module, hint in (("brainchop", "pip install brainchop==0.2.5"), ("tinygrad", "pip install tinygrad")):
        if importlib.util.find_spec(module) is None:
            return f"the oracle needs {module} ({hint})"
    if shutil.which("clang") is None:
        return "tinygrad needs clang to run on the CPU (apt-get install clang)"
    if shutil.which("niimath") is None:
        return "brainchop needs the niimath binary (pip install niimath)"
    return None


def make_home(folder: Path) -> Path:
    """A HOME in which importing brainchop stays offline (an empty model listing)."""
    (folder / ".cache" / "brainchop").mkdir(parents=True, exist_ok=True)
    (folder / ".cache" / "brainchop" / "models.json").write_text("{}")
    return folder


def oracle_command(image: Path, out_dir: Path, model_dirs: list[Path]) -> list[str]:
    return [sys.executable, "-c", textwrap.dedent(ORACLE_PIPELINE), str(image), str(out_dir),
            *(str(m) for m in model_dirs)]


CACHE_VARIABLE = "MEDHUB_TEST_ORACLE_CACHE"


def cache_root() -> Path:
    """Where finished oracle runs are kept between sessions: ``$MEDHUB_TEST_ORACLE_CACHE`` or ~/.cache/medhub."""
    configured = os.environ.get(CACHE_VARIABLE)
    return Path(configured) if configured else Path.home() / ".cache" / "medhub" / "test-oracles"


def oracle_key(image: Path, model_dir: Path) -> str:
    """A digest of everything brainchop's output depends on: its version, tinygrad's and niimath's (the
    pip package), the oracle script, the input image and the model's files. A cached result is reused
    only under the same digest."""
    from importlib.metadata import PackageNotFoundError, version

    digest = hashlib.sha256()
    for package in ("brainchop", "tinygrad", "niimath"):
        try:
            digest.update(f"{package}=={version(package)}\0".encode())
        except PackageNotFoundError:
            digest.update(f"{package} from {shutil.which(package)}\0".encode())
    digest.update(textwrap.dedent(ORACLE_PIPELINE).encode())
    for path in [image, *sorted(model_dir.iterdir())]:
        if path.is_file():
            digest.update(path.name.encode() + b"\0" + hashlib.sha256(path.read_bytes()).digest())
    return digest.hexdigest()[:32]


class BackgroundOracle:
    """brainchop's full pipeline for several models, run once in a niced subprocess and cached.

    A model whose result is in the cache under the same :func:`oracle_key` is not run again
    (brainchop is deterministic on the CPU: the same inputs give the same labels); the others
    run one after the other in a single background process.
    """

    def __init__(self, image: Path, model_dirs: list[Path], work: Path) -> None:
        self.out_dir = work / "outputs"
        self.out_dir.mkdir(parents=True, exist_ok=True)
        self.log = work / "oracle.log"
        self.cache = {m.name: cache_root() / oracle_key(image, m) for m in model_dirs}
        missing = [m for m in model_dirs if not (self.cache[m.name] / f"{m.name}.npy").exists()]
        self.process: subprocess.Popen[bytes] | None = None
        if missing:
            home = make_home(work / "home")
            with open(self.log, "w") as log:
                self.process = subprocess.Popen(
                    oracle_command(image, self.out_dir, missing), stdout=log, stderr=subprocess.STDOUT,
                    env={**os.environ, "HOME": str(home)}, preexec_fn=lambda: os.nice(10),
                )

    def result(self, model_dir_name: str, timeout: float) -> tuple[Path, str]:
        """The oracle's label map for one model (``.npy``, medhub's [x, y, z]) and how long brainchop took."""
        cached = self.cache[model_dir_name]
        if (cached / f"{model_dir_name}.npy").exists():
            seconds = (cached / f"{model_dir_name}.seconds").read_text()
            return cached / f"{model_dir_name}.npy", f"{seconds} s (cached run, {cached})"
        target = self.out_dir / f"{model_dir_name}.npy"
        if not target.exists():
            self._wait_for(target, timeout)
        seconds = (self.out_dir / f"{model_dir_name}.seconds").read_text()
        self._keep(model_dir_name, cached)
        return target, f"{seconds} s"

    def _keep(self, name: str, folder: Path) -> None:
        """Copy a finished run into the cache; the .npy appears last and whole (rename), so it marks completion."""
        from medhub.files import atomic_output

        for suffix in (".seconds", ".npy"):
            with atomic_output(folder / f"{name}{suffix}") as temporary:
                shutil.copyfile(self.out_dir / f"{name}{suffix}", temporary)

    def _wait_for(self, target: Path, timeout: float) -> None:
        import time

        deadline = time.monotonic() + timeout
        assert self.process is not None
        while not target.exists():
            code = self.process.poll()
            if code is not None and not target.exists():
                tail = self.log.read_text(errors="replace")[-3000:]
                raise RuntimeError(f"brainchop's oracle run ended (exit code {code}) without {target.name}:\n{tail}")
            if time.monotonic() > deadline:
                raise TimeoutError(f"brainchop's oracle run gave no {target.name} within {timeout:.0f} s")
            time.sleep(2)

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait()
