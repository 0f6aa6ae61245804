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

import contextlib
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

# brainchop's own full runs of mindgrab (26 layers with GroupNorm and GELU, about an hour of one
# CPU core in tinygrad here) and subcortical (about ten CPU-minutes: a quarter of the whole suite's CPU
# time on a fresh CI machine, whose oracle cache is always empty) do not fit a CI run of 30 minutes
# on 2 cores, so they run only when asked for. In every run: their networks against brainchop's on a
# crop (test_meshnet_equals_brainchops_tinygrad_meshnet_on_a_crop), and the whole DICOM chain, which
# is the same for the three models, against brainchop's full run of brainchop-gwm.
SLOW_ORACLE_VARIABLE = "MEDHUB_SLOW_ORACLES"
SLOW_ORACLES = {"brainchop-mindgrab": "about an hour (63 CPU-minutes here, 3.7 GB) on one CPU core",
                "brainchop-subcortical": "about ten CPU-minutes on one CPU core"}


def slow_oracle_skipped(model_id: str) -> str | None:
    """Why the full comparison of ``model_id`` does not run now, or None when it does."""
    if model_id in SLOW_ORACLES and os.environ.get(SLOW_ORACLE_VARIABLE) != "1":
        return (f"brainchop's own full {model_id} run takes {SLOW_ORACLES[model_id]} (tinygrad); "
                f"set {SLOW_ORACLE_VARIABLE}=1 to compare with it")
    return None


ORACLE_PIPELINE = """
    import os, sys, time, numpy as np
    from brainchop.api import load, segment
    image, *jobs = sys.argv[1:]
    for job in jobs:
        model_dir, out_dir = job.split("=", 1)
        name = model_dir.rstrip("/").rsplit("/", 1)[-1]
        started = time.perf_counter()
        result = segment(load(image), model_dir)
        # brainchop keeps [z, y, x]; medhub uses [x, y, z]. Written under a temporary name, then renamed:
        # a reader never sees half a file, and the .npy appearing marks the run complete.
        os.makedirs(out_dir, exist_ok=True)
        open(f"{out_dir}/{name}.seconds", "w").write(f"{time.perf_counter() - started:.1f}")
        np.save(f"{out_dir}/.{name}.{os.getpid()}.partial.npy", result.data.numpy().transpose(2, 1, 0))
        os.replace(f"{out_dir}/.{name}.{os.getpid()}.partial.npy", f"{out_dir}/{name}.npy")
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


def oracle_command(image: Path, jobs: dict[Path, Path]) -> list[str]:
    """brainchop's pipeline on ``image`` for each model folder, writing into its output folder."""
    return [sys.executable, "-c", textwrap.dedent(ORACLE_PIPELINE), str(image),
            *(f"{model_dir}={out_dir}" for model_dir, out_dir in jobs.items())]


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
    """brainchop's full pipeline for several models, run once per test session in a subprocess.

    The subprocess writes each model's result straight into the cache (:func:`oracle_key`), so a
    model cached from an earlier session is not run again (brainchop is deterministic on the CPU),
    and every test process of the session (pytest-xdist workers included) finds the result in
    the same place. Exactly one process of a session starts the run: whoever first takes the
    session's lock (:func:`start_once`); the controlling process stops it at the session's end.
    """

    def __init__(self, image: Path, model_dirs: list[Path], session_dir: Path) -> None:
        self.session_dir = session_dir
        self.cache = {m.name: cache_root() / oracle_key(image, m) for m in model_dirs}
        missing = {m: self.cache[m.name] for m in model_dirs if not (self.cache[m.name] / f"{m.name}.npy").exists()}
        if missing:
            home = make_home(session_dir / "home")
            with open(session_dir / "oracle.log", "w") as log:
                process = subprocess.Popen(
                    oracle_command(image, missing), stdout=log, stderr=subprocess.STDOUT,
                    env={**os.environ, "HOME": str(home)},
                )  # not niced: it is the longest single job of the suite, so it must share the cores fairly
            (session_dir / "oracle.pid").write_text(str(process.pid))

    @staticmethod
    def start_once(image: Path, model_dirs: list[Path], session_dir: Path) -> None:
        """Start the run unless another process of this session already has (a lock file decides)."""
        import fcntl

        session_dir.mkdir(parents=True, exist_ok=True)
        lock = open(session_dir / "oracle.lock", "w")  # noqa: SIM115 - held for the life of this process
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            lock.close()
            return
        if not (session_dir / "oracle.started").exists():
            (session_dir / "oracle.started").write_text("")
            BackgroundOracle(image, model_dirs, session_dir)
        _LOCKS.append(lock)

    @staticmethod
    def result(image: Path, model_dir: Path, session_dir: Path, timeout: float) -> tuple[Path, str]:
        """The oracle's label map for one model (``.npy``, medhub's [x, y, z]) and how long brainchop took."""
        import time

        folder = cache_root() / oracle_key(image, model_dir)
        target = folder / f"{model_dir.name}.npy"
        cached = target.exists()
        deadline = time.monotonic() + timeout
        while not target.exists():
            pid_file = session_dir / "oracle.pid"
            if pid_file.exists() and not _alive(int(pid_file.read_text())) and not target.exists():
                tail = (session_dir / "oracle.log").read_text(errors="replace")[-3000:]
                raise RuntimeError(f"brainchop's oracle run ended without {target.name}:\n{tail}")
            if time.monotonic() > deadline:
                raise TimeoutError(f"brainchop's oracle run gave no {target.name} within {timeout:.0f} s")
            time.sleep(2)
        seconds = (folder / f"{model_dir.name}.seconds").read_text()
        return target, f"{seconds} s" + (f" (cached run, {folder})" if cached else "")

    @staticmethod
    def stop(session_dir: Path) -> None:
        """Kill the session's run if it is still going (the controlling process calls this at the end)."""
        import signal

        pid_file = session_dir / "oracle.pid"
        if pid_file.exists() and _alive(pid := int(pid_file.read_text())):
            os.kill(pid, signal.SIGKILL)
            with contextlib.suppress(ChildProcessError):
                os.waitpid(pid, 0)


_LOCKS: list[object] = []


def _alive(pid: int) -> bool:
    """Whether the process runs (a finished child not yet reaped counts as ended)."""
    try:
        finished, _ = os.waitpid(pid, os.WNOHANG)
    except ChildProcessError:  # not our child: ask the kernel
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return False
        return Path(f"/proc/{pid}").exists() and "zombie" not in Path(f"/proc/{pid}/status").read_text().lower()
    return finished == 0
