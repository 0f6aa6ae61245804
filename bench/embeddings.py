#!/usr/bin/env python
"""Embedding throughput on CPU, peak memory and the cache's speed-up, for an embedding model (ct-fm-astra).

usage: python bench/embeddings.py [--model ct-fm-astra] [--rounds 2] [--threads N] [--json FILE]
                                  [--input PATH ...]

One process, warm model (loaded once, as ``medhub run`` over many series and ``medhub heads``
use it). For each input (default: the real CTs of ../shared/data: the 20-slice abdominal
DICOM series, its NIfTI sibling example_ct_sm.nii.gz and the 140-slice Philips head phantom):

* load: scan + decode the DICOM series (or read the NIfTI) into a Volume, once;
* compute: ``embed_with(..., cache=False)``, preprocessing + forward pass, ``--rounds`` times;
* miss: ``embed_with`` into an empty cache (compute + hash + write the entry);
* hit: the same call again (hash the voxels, read the entry).

Reported: seconds per embedding (median of the compute rounds), embeddings per minute
(60 / that median, and over all inputs), peak RSS of the process (``resource.getrusage``
ru_maxrss, so it includes the model and the largest volume), the cache-hit time and the
speed-up compute / hit, plus the load average, because on a shared machine the forward pass
time scales with how busy the cores are.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import statistics
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
SHARED = HERE.parent.parent / "shared" / "data"
DEFAULT_INPUTS = [
    SHARED / "ct" / "totalsegmentator_example_ct_dicom",
    SHARED / "ct" / "totalsegmentator_nifti" / "example_ct_sm.nii.gz",
    SHARED / "ct" / "philips_phantom_head_1mm",
]


def _peak_rss_mb() -> float:
    """Peak resident memory of this process so far (ru_maxrss is in KiB on Linux, bytes on macOS)."""
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / (1024 * 1024) if sys.platform == "darwin" else peak / 1024


def _load(path: Path):
    """The input as a Volume: the largest series of a DICOM folder, or a NIfTI file."""
    from medhub.inputs.load import load_series
    from medhub.inputs.nifti import load_nifti
    from medhub.inputs.scan import scan
    from medhub.pipeline.run import is_nifti

    if is_nifti(path):
        return load_nifti(path)
    series = max(scan(path).series, key=lambda s: s.number_of_images)
    return load_series(series)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="ct-fm-astra")
    parser.add_argument("--rounds", type=int, default=2, help="uncached forward passes per input (default 2)")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: the CPUs available)")
    parser.add_argument("--input", type=Path, action="append", help="DICOM folder or NIfTI file (repeatable)")
    parser.add_argument("--json", type=Path, help="also write the results as JSON to this file")
    args = parser.parse_args(argv)

    from medhub.hub.catalog import get_model
    from medhub.hub.embeddings import EmbeddingCache, embed_with
    from medhub.hub.runtime import ModelRunner

    inputs = args.input or [p for p in DEFAULT_INPUTS if p.exists()]
    if not inputs:
        print(f"no inputs: {SHARED} is absent; pass --input PATH", file=sys.stderr)
        return 2
    params = {"threads": args.threads} if args.threads else {}
    started = time.perf_counter()
    loaded = ModelRunner(get_model(args.model))
    loaded.load("cpu", params)
    runner = loaded.runner
    load_weights = time.perf_counter() - started

    rows = []
    first_call: float | None = None
    with tempfile.TemporaryDirectory(prefix="medhub-bench-emb-") as tmp:
        store = EmbeddingCache(Path(tmp))
        for path in inputs:
            t0 = time.perf_counter()
            volume = _load(path)
            load_s = time.perf_counter() - t0
            if first_call is None:  # the first call also builds the network (the runner loads it lazily)
                t0 = time.perf_counter()
                embed_with(runner, volume, {}, cache=False, store=store)
                first_call = time.perf_counter() - t0
            computes, vectors = [], []
            for _ in range(max(1, args.rounds)):
                t0 = time.perf_counter()
                result = embed_with(runner, volume, {}, cache=False, store=store)
                computes.append(time.perf_counter() - t0)
                vectors.append(result.vector)
            t0 = time.perf_counter()
            miss = embed_with(runner, volume, {}, store=store)
            miss_s = time.perf_counter() - t0
            t0 = time.perf_counter()
            hit = embed_with(runner, volume, {}, store=store)
            hit_s = time.perf_counter() - t0
            assert hit.cached and not miss.cached and (hit.vector == result.vector).all()
            median = statistics.median(computes)
            rows.append({
                "input": str(path), "shape": list(volume.array.shape), "load_s": round(load_s, 3),
                "compute_s": [round(c, 3) for c in computes], "compute_median_s": round(median, 3),
                "per_minute": round(60.0 / median, 2), "miss_s": round(miss_s, 3), "hit_s": round(hit_s, 4),
                "speedup": round(median / hit_s, 1),
                "identical_across_rounds": all((v == vectors[0]).all() for v in vectors),
            })

    import torch

    total = sum(len(r["compute_s"]) for r in rows)
    seconds = sum(sum(r["compute_s"]) for r in rows)
    summary = {
        "model": args.model, "torch": torch.__version__, "threads": torch.get_num_threads(),
        "cpus": os.cpu_count(), "load_average": [round(x, 2) for x in os.getloadavg()],
        "python": platform.python_version(), "weights_verify_s": round(load_weights, 3),
        "first_call_s": round(first_call or 0.0, 3), "embeddings_per_minute": round(60.0 * total / seconds, 2),
        "peak_rss_mb": round(_peak_rss_mb(), 1), "inputs": rows,
    }
    print(f"{args.model} on CPU: torch {summary['torch']}, {summary['threads']} threads, "
          f"load average {summary['load_average']}")
    print(f"weights verified in {summary['weights_verify_s']} s; first embedding (builds the network) "
          f"{summary['first_call_s']} s")
    print(f"{'input':58} {'shape':>15} {'load s':>7} {'embed s':>8} {'/min':>6} {'hit s':>7} {'speed-up':>9}")
    for r in rows:
        shape = "x".join(str(n) for n in r["shape"])
        print(f"{Path(r['input']).name[:58]:58} {shape:>15} {r['load_s']:7.2f} {r['compute_median_s']:8.2f} "
              f"{r['per_minute']:6.2f} {r['hit_s']:7.3f} {r['speedup']:8.0f}x"
              + ("" if r["identical_across_rounds"] else "  NOT identical across rounds"))
    print(f"overall: {summary['embeddings_per_minute']} embeddings per minute (preprocessing + forward, warm model); "
          f"peak RSS {summary['peak_rss_mb']} MB")
    if args.json:
        args.json.write_text(json.dumps(summary, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
