"""Cohort benchmark (issues 5 and 14): series per minute in-process vs a Dask LocalCluster, and scan
throughput over many small files against the pydicom header-read floor.

    python bench/cohort.py [--series 200] [--files 100000] [--real 20] [--real-rounds 1] [--work DIR]
                           [--skip-scan] [--skip-cohort] [--skip-real]

Three parts:

* a cohort of ``--series`` tiny synthetic CT series (10 slices of 64x64, a body-like ellipse with
  lungs and bone so ct-body has work to do), in-process vs LocalCluster(1) and (2);
* ``--real`` real-size series: the 140-slice Philips head CT of ``../shared/data`` copied N times,
  each copy with new Study, Series, Frame of Reference and SOP Instance UIDs, in-process vs
  LocalCluster(2) -- the scaling a cohort of real series gets on this machine (``--real-rounds``
  rounds, alternating which case goes first: one round of 20 series is ~4.5 CPU-minutes per case);
* ``--files`` tiny single-slice files for the scan.

Data are made on first use under --work (default /tmp/medhub-bench-cohort), outside the repository.
Every case runs as a whole process (``medhub run`` or a scan script), so start-up costs count as they
do for a user. Timings are medians; CPU is user + sys of the process and its children (Dask's
worker processes included), from ``wait4``; the 1-minute load average is printed beside each round.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

import numpy as np


def make_cohort(folder: Path, series: int) -> None:
    """``series`` small CT series with their own UIDs in one flat folder (skipped if already there)."""
    from medhub.inputs.synth import write_dicom_series

    marker = folder / f".complete-{series}"
    if marker.exists():
        return
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    x, y = np.mgrid[-32:32, -32:32]
    body = (x / 28.0) ** 2 + (y / 22.0) ** 2 < 1
    lungs = ((x - 11) / 7.0) ** 2 + (y / 11.0) ** 2 < 1
    lungs |= ((x + 11) / 7.0) ** 2 + (y / 11.0) ** 2 < 1
    bone = (x / 4.0) ** 2 + ((y + 16) / 4.0) ** 2 < 1
    plane = np.where(body, 40, -1000).astype(np.int16)
    plane[lungs] = -800
    plane[bone] = 700
    rng = np.random.default_rng(0)
    affine = np.diag([2.0, 2.0, 5.0, 1.0])
    for index in range(series):
        volume = np.repeat(plane[:, :, None], 10, axis=2) + rng.integers(-5, 5, (64, 64, 10)).astype(np.int16)
        target = folder / f"s{index:04d}"
        write_dicom_series(volume, affine, target, modality="CT", series_description=f"cohort {index}")
        for path in target.iterdir():
            path.rename(folder / f"{index:04d}_{path.name}")
        target.rmdir()
    marker.touch()


def make_small_files(folder: Path, count: int) -> None:
    """``count`` tiny single-slice CT files (8x8), 1,000 per series, written by copying one template."""
    import pydicom
    from pydicom.uid import generate_uid

    from medhub.inputs.synth import write_dicom_series

    marker = folder / f".complete-{count}"
    if marker.exists():
        return
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    template_dir = folder / "template"
    write_dicom_series(np.zeros((8, 8, 1), np.int16), np.eye(4), template_dir, modality="CT")
    template = pydicom.dcmread(next(template_dir.iterdir()))
    shutil.rmtree(template_dir)
    series_uid = generate_uid()
    for index in range(count):
        if index % 1000 == 0:
            series_uid = generate_uid()
            sub = folder / f"d{index // 1000:03d}"
            sub.mkdir()
        template.SeriesInstanceUID = series_uid
        template.SOPInstanceUID = template.file_meta.MediaStorageSOPInstanceUID = generate_uid()
        template.InstanceNumber = index % 1000 + 1
        template.ImagePositionPatient = [0.0, 0.0, float(index % 1000)]
        template.save_as(sub / f"{index:06d}.dcm")
    marker.touch()


def timed(command: list[str]) -> tuple[float, int]:
    """Wall seconds and the exit code of one whole process."""
    started = time.perf_counter()
    code = subprocess.run(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, check=False).returncode
    return time.perf_counter() - started, code


def measured(command: list[str]) -> tuple[float, float, int]:
    """Wall seconds, CPU seconds (user + sys of the process tree, from wait4) and the exit code."""
    started = time.perf_counter()
    proc = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    _, status, usage = os.wait4(proc.pid, 0)
    return time.perf_counter() - started, usage.ru_utime + usage.ru_stime, os.waitstatus_to_exitcode(status)


REAL_SOURCE = Path(__file__).resolve().parents[2] / "shared" / "data" / "ct" / "philips_phantom_head_1mm"


def make_real_cohort(folder: Path, copies: int, source: Path = REAL_SOURCE) -> int:
    """``copies`` copies of a real series in one flat folder, each with its own UIDs; returns the slices per copy.

    The pixel data and every other attribute are the source's; Study, Series, Frame of Reference and
    SOP Instance UIDs are new per copy (SOP Instance UIDs per file), so each copy is its own series.
    """
    import pydicom
    from pydicom.uid import generate_uid

    files = sorted(p for p in source.iterdir() if p.is_file())
    marker = folder / f".complete-{copies}x{len(files)}"
    if marker.exists():
        return len(files)
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    datasets = [pydicom.dcmread(p) for p in files]
    for index in range(copies):
        study, series, frame = generate_uid(), generate_uid(), generate_uid()
        for number, dataset in enumerate(datasets):
            dataset.StudyInstanceUID, dataset.SeriesInstanceUID, dataset.FrameOfReferenceUID = study, series, frame
            dataset.SOPInstanceUID = dataset.file_meta.MediaStorageSOPInstanceUID = generate_uid()
            dataset.save_as(folder / f"c{index:03d}_{number:04d}.dcm")
    marker.touch()
    return len(files)


def real_cohort(args) -> None:
    """Real-size series with ct-body: in-process vs LocalCluster(2), scaling and CPU."""
    if not REAL_SOURCE.is_dir():
        print(f"\nreal-size cohort skipped: {REAL_SOURCE} is absent")
        return
    folder = args.work / f"real{args.real}"
    started = time.perf_counter()
    slices = make_real_cohort(folder, args.real)
    print(f"\nreal-size cohort: {args.real} copies of the {slices}-slice Philips head CT "
          f"({args.real * slices} files; {time.perf_counter() - started:.1f} s to make)")
    base = [sys.executable, "-m", "medhub", "run", "ct-body", "--input", str(folder), "--json-progress"]
    cases = {"in-process": [], "LocalCluster 2 workers": ["--workers", "2"]}
    rows: dict[str, list[tuple[float, float]]] = {name: [] for name in cases}
    for round_number in range(args.real_rounds):
        for name, extra in (list(cases.items()) if round_number % 2 == 0 else list(cases.items())[::-1]):
            out = args.work / "out-real"
            shutil.rmtree(out, ignore_errors=True)
            load = os.getloadavg()[0]
            wall, cpu, code = measured([*base, "--output", str(out), *extra])
            report = json.loads((out / "medhub-report.json").read_text())
            ok = sum(1 for e in report["series"] if e["status"] == "succeeded")
            if ok != args.real or code != 0:
                raise SystemExit(f"{name}: {ok} of {args.real} series succeeded (exit {code})")
            rows[name].append((wall, cpu))
            print(f"  round {round_number + 1} {name}: {wall:.1f} s wall, {cpu:.1f} s CPU (load {load:.1f})",
                  flush=True)
    print(f"{'case':<26}{'median s':>10}{'CPU s':>8}{'series/min':>12}{'vs in-process':>15}")
    reference = statistics.median(w for w, _ in rows["in-process"])
    for name, values in rows.items():
        wall = statistics.median(w for w, _ in values)
        cpu = statistics.median(c for _, c in values)
        print(f"{name:<26}{wall:>10.1f}{cpu:>8.1f}{args.real / wall * 60:>12.1f}{reference / wall:>14.2f}x")
    two = statistics.median(w for w, _ in rows["LocalCluster 2 workers"])
    print(f"scaling in-process -> 2 workers: {reference / two:.2f}x (ideal 2.0x on 2 idle cores)")


SCAN_MEDHUB = """
import resource, sys, time
from pathlib import Path
from medhub.inputs.scan import scan
workers = int(sys.argv[2]) if len(sys.argv) > 2 else 1
t = time.perf_counter(); result = scan(Path(sys.argv[1]), workers=workers); t = time.perf_counter() - t
print(t, result.files_seen, len(result.series), resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)
"""
SCAN_FLOOR = """
import os, resource, sys, time
import pydicom
t = time.perf_counter(); n = 0
for folder, _, names in os.walk(sys.argv[1]):
    for name in names:
        if name.endswith('.dcm'):
            pydicom.dcmread(os.path.join(folder, name), stop_before_pixels=True); n += 1
t = time.perf_counter() - t
print(t, n, 0, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)
"""


def scan_case(code: str, folder: Path, *extra: str) -> tuple[float, int, int]:
    command = [sys.executable, "-c", code, str(folder), *extra]
    out = subprocess.run(command, capture_output=True, text=True, check=True).stdout
    seconds, files, _, rss_kb = out.split()
    return float(seconds), int(files), int(rss_kb)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--series", type=int, default=200)
    parser.add_argument("--files", type=int, default=100_000)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--work", type=Path, default=Path("/tmp/medhub-bench-cohort"))
    parser.add_argument("--skip-scan", action="store_true")
    parser.add_argument("--skip-cohort", action="store_true")
    parser.add_argument("--real", type=int, default=20, help="copies of the real 140-slice CT (0: skip)")
    parser.add_argument("--real-rounds", type=int, default=1, help="rounds of the real-size cohort")
    parser.add_argument("--skip-real", action="store_true")
    args = parser.parse_args()
    print(f"machine: {os.cpu_count()} cores, load average {os.getloadavg()[0]:.1f}")

    if args.real and not args.skip_real:
        real_cohort(args)

    if not args.skip_cohort:
        cohort = args.work / f"cohort{args.series}"
        started = time.perf_counter()
        make_cohort(cohort, args.series)
        print(f"cohort: {args.series} series x 10 slices 64x64 ({time.perf_counter() - started:.1f} s to make)")
        base = [sys.executable, "-m", "medhub", "run", "ct-body", "--input", str(cohort), "--json-progress"]
        cases = {
            "in-process": [],
            "LocalCluster 1 worker": ["--workers", "1"],
            "LocalCluster 2 workers": ["--workers", "2"],
        }
        results: dict[str, list[float]] = {name: [] for name in cases}
        for _ in range(args.rounds):
            for name, extra in cases.items():
                out = args.work / "out"
                shutil.rmtree(out, ignore_errors=True)
                seconds, code = timed([*base, "--output", str(out), *extra])
                report = json.loads((out / "medhub-report.json").read_text())
                ok = sum(1 for e in report["series"] if e["status"] == "succeeded")
                if ok != args.series or code != 0:
                    raise SystemExit(f"{name}: {ok} of {args.series} series succeeded (exit {code})")
                results[name].append(seconds)
        print(f"\n{'case':<26}{'median s':>10}{'series/min':>12}{'vs in-process':>15}")
        reference = statistics.median(results["in-process"])
        for name, values in results.items():
            median = statistics.median(values)
            print(f"{name:<26}{median:>10.1f}{args.series / median * 60:>12.0f}{reference / median:>14.2f}x")
        one = statistics.median(results["LocalCluster 1 worker"])
        two = statistics.median(results["LocalCluster 2 workers"])
        print(f"scaling 1 -> 2 workers: {one / two:.2f}x (ideal 2.0x on 2 cores)")

    if not args.skip_scan:
        small = args.work / f"small{args.files}"
        started = time.perf_counter()
        make_small_files(small, args.files)
        print(f"\nscan: {args.files} files of 8x8 ({time.perf_counter() - started:.1f} s to make)")
        rows = {"medhub scan": [], "medhub scan, 2 processes": [], "pydicom header-read floor": []}
        for _ in range(args.rounds):
            rows["medhub scan"].append(scan_case(SCAN_MEDHUB, small))
            rows["medhub scan, 2 processes"].append(scan_case(SCAN_MEDHUB, small, "2"))
            rows["pydicom header-read floor"].append(scan_case(SCAN_FLOOR, small))
        print(f"{'case':<28}{'median s':>10}{'files/s':>10}{'peak RSS MB':>13}")
        medians = {}
        for name, values in rows.items():
            seconds = statistics.median(v[0] for v in values)
            medians[name] = seconds
            rss = max(v[2] for v in values) / 1024
            print(f"{name:<28}{seconds:>10.1f}{values[0][1] / seconds:>10.0f}{rss:>13.0f}")
        floor = medians["pydicom header-read floor"]
        print(f"medhub scan / floor: {medians['medhub scan'] / floor:.2f}x; "
              f"with 2 processes: {medians['medhub scan, 2 processes'] / floor:.2f}x")
    print(f"\nbench process peak RSS: {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:.0f} MB")


if __name__ == "__main__":
    main()
