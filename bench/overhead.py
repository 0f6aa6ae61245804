#!/usr/bin/env python
"""medhub's overhead without the model, beside MHub's chain and peer tools, as ratios.

usage: python bench/overhead.py [--rounds N] [--work DIR] [--profile]

Data and peers come from ``bench/setup_peers.sh`` (which runs ``shared/peer-bench/make_data.py``):
``DIR/data/unsorted300`` (a 300-slice CT mixed with a 120-slice series, 420 files in one flat
folder) and ``DIR/data/labels/label300.nii.gz`` (10 labels on the CT grid, written by SimpleITK).

Cases, each one whole process (interpreter start and imports included, as a user pays them):

* medhub: scan the folder -> select the 300-slice series -> load it -> put the label map on
  the source planes -> write a BINARY DICOM SEG. This is ``run`` without the model.
* MHub's chain: thedicomsort sort -> plastimatch convert to .nii.gz -> dcmqi
  itkimage2segimage, run in sequence in one shell, each reading the previous step's output,
  as MHub's default workflow does.
* dcm2niix -z n / -z y on the same unsorted folder, restricted to the 300-slice series.
* floors: pydicom read + decode + stack of the 300 slices (peer-bench tools/floor_decode.py),
  and a pydicom header scan of the 420 files.

Method (as shared/peer-bench/bench.py): one untimed warm-up round, then N rounds; in every
round each case runs once, round-robin with the start rotated per round, so machine noise hits
all cases alike. Output removed and ``sync`` before each run, ``sync`` after it (untimed).
Reported: median wall time, CPU (user+sys of the process tree) and peak RSS, and the ratio to
medhub. The medhub SEG of the last round is validated with dciodvfy and compared voxel for
voxel with the label map.

The same file, called with the hidden sub-command ``_medhub``, is the medhub process itself.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import time
import zlib
from dataclasses import dataclass, field
from pathlib import Path

HERE = Path(__file__).resolve().parent
DEFAULT_WORK = Path(os.environ.get("MEDHUB_BENCH_WORK", "/work/peer-bench-work"))
DEFAULT_PEER_BENCH = HERE.parent.parent / "shared" / "peer-bench"

# The 10 labels of make_data.py / make_meta.py, as segment IDs of medhub's segment database.
# make_meta.py names them by SNOMED CT code (10200004 Liver, 78961009 Spleen, ...).
LABEL_SEGMENT_IDS = {
    1: "LIVER",
    2: "SPLEEN",
    3: "KIDNEY",
    4: "PANCREAS",
    5: "STOMACH",
    6: "HEART",
    7: "LUNG",
    8: "AORTA",
    9: "GALLBLADDER",
    10: "ESOPHAGUS",
}


# ----------------------------------------------------------------------------------------------
# The medhub process (sub-command ``_medhub``): imports of medhub happen here only.
# ----------------------------------------------------------------------------------------------


def label_to_volume_grid(label_data, label_affine_ras, volume):
    """Return the label array re-indexed onto ``volume``'s [x, y, z] grid.

    The label NIfTI comes from SimpleITK with the CT's geometry, but its axis order and
    directions are whatever its writer chose; the volume's are medhub's loader's. Compare the
    two affines: the voxel-to-voxel map must be a signed permutation with the label covering
    exactly the volume's extent. Anything else (another grid, resampling needed) is an error,
    because a benchmark must not quietly resample.
    """
    import numpy as np

    from medhub.errors import MedhubError

    vox_to_vox = np.linalg.inv(volume.affine_ras) @ np.asarray(label_affine_ras, float)
    rot = vox_to_vox[:3, :3]
    perm = np.round(rot)
    if not np.allclose(rot, perm, atol=1e-3) or sorted(np.abs(perm).sum(axis=0)) != [1, 1, 1]:
        raise MedhubError(f"label map axes are not a permutation of the volume's: {rot.round(4).tolist()}")
    shift = vox_to_vox[:3, 3]
    if not np.allclose(shift, np.round(shift), atol=1e-2):
        raise MedhubError(f"label map is offset from the volume grid by a fraction of a voxel: {shift}")
    out = np.asarray(label_data)
    # label axis feeding each volume axis, and its sign
    src_axes = [int(np.argmax(np.abs(perm[j]))) for j in range(3)]
    out = np.transpose(out, src_axes)
    for j in range(3):
        if perm[j, src_axes[j]] < 0:
            out = np.flip(out, axis=j)
            expected = volume.shape[j] - 1
        else:
            expected = 0
        if round(shift[j]) != expected:
            raise MedhubError(f"label map does not start at the volume's edge along axis {j}: shift {shift[j]}")
    if out.shape != tuple(volume.shape[:3]):
        raise MedhubError(f"label map shape {out.shape} differs from the volume's {volume.shape[:3]}")
    # A view, not a copy: NIfTI data is Fortran-ordered [x, y, z], so the (z, y, x) transpose
    # labels_to_source makes of it is already C-contiguous; copying here would cost ~1 s.
    return out


def medhub_process(unsorted: Path, label_path: Path, out_path: Path, timings_path: Path | None,
                   slices: int) -> None:
    """scan -> select -> load -> labels to source planes -> write SEG, with per-step times."""
    t = {"start": (time.perf_counter(), time.process_time())}
    import nibabel as nib
    import numpy as np

    from medhub.data.geometry import labels_to_source
    from medhub.errors import MedhubError
    from medhub.inputs.load import load_series
    from medhub.inputs.scan import scan
    from medhub.segdb import get_segment
    from medhub.writers.provenance import AlgorithmInfo
    from medhub.writers.seg import write_seg

    t["imports"] = (time.perf_counter(), time.process_time())
    result = scan(unsorted)
    t["scan"] = (time.perf_counter(), time.process_time())
    chosen = [s for s in result.series if s.number_of_images == slices]
    if len(chosen) != 1:
        found = [(s.description, s.number_of_images) for s in result.series]
        raise MedhubError(f"{unsorted}: expected one {slices}-image series, found {found}")
    series = chosen[0]
    t["select"] = (time.perf_counter(), time.process_time())
    volume = load_series(series)
    t["load"] = (time.perf_counter(), time.process_time())
    img = nib.load(label_path)
    label_data = np.asanyarray(img.dataobj)
    t["read labels"] = (time.perf_counter(), time.process_time())
    labels_xyz = label_to_volume_grid(label_data, img.affine, volume)
    planes = labels_to_source(volume, labels_xyz)
    t["labels to source"] = (time.perf_counter(), time.process_time())
    segments = {value: get_segment(seg_id) for value, seg_id in LABEL_SEGMENT_IDS.items()}
    algorithm = AlgorithmInfo(name="overhead-bench", version="1.0")
    out_path.parent.mkdir(parents=True, exist_ok=True)
    write_seg(planes, volume.source, segments, algorithm, out_path)
    t["write"] = (time.perf_counter(), time.process_time())

    steps, prev = {}, t["start"]
    for name in ("imports", "scan", "select", "load", "read labels", "labels to source", "write"):
        steps[name] = {"wall": t[name][0] - prev[0], "cpu": t[name][1] - prev[1]}
        prev = t[name]
    print("medhub steps (wall s): " + ", ".join(f"{k} {v['wall']:.3f}" for k, v in steps.items()), flush=True)
    if timings_path:
        timings_path.write_text(json.dumps(steps))


# ----------------------------------------------------------------------------------------------
# The harness.
# ----------------------------------------------------------------------------------------------


@dataclass
class Case:
    name: str
    argv: list[str]
    out: Path | None = None  # removed before every run
    mk: bool = False  # create ``out`` before the run (tools that want an existing folder)
    steps_file: Path | None = None  # per-step times the process writes, collected per run
    rows: list[dict] = field(default_factory=list)


def run_measured(argv: list[str], log) -> dict:
    """Run one process; wall time from perf_counter, CPU and peak RSS from wait4 (whole tree)."""
    load = os.getloadavg()[0]
    t0 = time.perf_counter()
    proc = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT)
    _, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - t0
    proc.returncode = os.waitstatus_to_exitcode(status)
    return {"wall_s": wall, "cpu_s": usage.ru_utime + usage.ru_stime,
            "maxrss_mib": usage.ru_maxrss / 1024, "exit": proc.returncode, "load1": load}


def chain_script(work: Path, out: Path, series_uid: str, plastimatch: str) -> str:
    """MHub's default chain as one shell: sort, convert the chosen series, write the SEG.

    Each step's end time goes to ``out/steps.txt`` so the table can show where MHub spends.
    """
    data, modern, legacy = work / "data", work / "venv-modern" / "bin", work / "venv-legacy" / "bin"
    sorted_dir = out / "sorted"
    series_dir = sorted_dir / series_uid / "dicom"
    return f"""set -e
t0=$EPOCHREALTIME
{legacy}/dicomsort -k -u {data}/unsorted300 '{sorted_dir}/%SeriesInstanceUID/dicom/%SOPInstanceUID.dcm'
t1=$EPOCHREALTIME
mkdir -p {out}/nifti {out}/seg
{plastimatch} convert --input {series_dir} --output-img {out}/nifti/image.nii.gz
t2=$EPOCHREALTIME
{modern}/itkimage2segimage --segmentationType binary --inputImageList {data}/labels/label300.nii.gz \
  --inputDICOMDirectory {series_dir} --outputDICOM {out}/seg/seg.dcm --inputMetadata {data}/meta.json
t3=$EPOCHREALTIME
echo "$t0 $t1 $t2 $t3" > {out}/steps.txt
"""


def build_cases(work: Path, peer_bench: Path, plastimatch: str) -> dict[str, Case]:
    data, out = work / "data", work / "out" / "overhead"
    uids = (data / "uids.txt").read_text().split("\n")
    ct300_uid = next(line.split("\t")[1] for line in uids if line.startswith("300\t"))
    py = sys.executable  # medhub's interpreter; the floors run in it too (same pydicom, numpy)
    cases = [
        Case("medhub scan+select+load+SEG", [py, str(Path(__file__).resolve()), "_medhub",
             str(data / "unsorted300"), str(data / "labels" / "label300.nii.gz"),
             str(out / "medhub" / "seg.dcm"), str(out / "medhub_steps.json")],
             out=out / "medhub", steps_file=out / "medhub_steps.json"),
        Case("MHub chain (dicomsort+plastimatch+dcmqi)",
             ["bash", "-c", chain_script(work, out / "mhub", ct300_uid, plastimatch)],
             out=out / "mhub", steps_file=out / "mhub" / "steps.txt"),
    ]
    for z in ("n", "y"):
        o = out / f"dcm2niix_z{z}"
        # -n CRC32(SeriesInstanceUID): only the 300-slice series, so dcm2niix, like medhub,
        # scans all 420 files but converts one series.
        cases.append(Case(f"dcm2niix -z {z} (unsorted, 300-slice series)",
                          ["/usr/bin/dcm2niix", "-o", str(o), "-f", "image", "-v", "0", "-z", z,
                           "-b", "n", "-n", str(zlib.crc32(ct300_uid.encode())), str(data / "unsorted300")],
                          out=o, mk=True))
    cases.append(Case("pydicom read+decode+stack floor (ct300)",
                      [py, str(peer_bench / "tools" / "floor_decode.py"), str(data / "series" / "ct300")]))
    cases.append(Case("pydicom header scan (unsorted300)",
                      [py, str(peer_bench / "tools" / "sort_pydicom.py"), str(data / "unsorted300"), "-",
                       "scan"]))
    return {c.name: c for c in cases}


CHAIN_STEPS = ("dicomsort", "plastimatch .nii.gz", "dcmqi itkimage2segimage")


def read_steps(path: Path) -> dict[str, dict[str, float | None]]:
    """Per-step {"wall", "cpu"} seconds: medhub writes JSON, the chain's shell its step end times.

    The chain's steps have wall time only (their CPU is in the whole-process figure).
    """
    if path.suffix == ".json":
        return json.loads(path.read_text())
    stamps = [float(x) for x in path.read_text().split()]
    return {name: {"wall": b - a, "cpu": None}
            for name, a, b in zip(CHAIN_STEPS, stamps, stamps[1:], strict=False)}


def check_ready(work: Path, plastimatch: str) -> None:
    need = [work / "data" / "unsorted300", work / "data" / "labels" / "label300.nii.gz",
            work / "data" / "meta.json", work / "data" / "uids.txt",
            work / "venv-legacy" / "bin" / "dicomsort", work / "venv-modern" / "bin" / "itkimage2segimage",
            Path(plastimatch), Path("/usr/bin/dcm2niix")]
    missing = [str(p) for p in need if not p.exists()]
    if missing:
        sys.exit(f"overhead: missing {', '.join(missing)}; run bench/setup_peers.sh {work} first")


def warm(work: Path) -> None:
    """Read the inputs once so every case starts on a warm page cache."""
    for folder in ("unsorted300", "series/ct300", "labels"):
        for f in (work / "data" / folder).iterdir():
            f.read_bytes()


def validate_seg(seg_path: Path, work: Path) -> list[str]:
    """dciodvfy error count, and a voxel-for-voxel comparison of the SEG with the label map."""
    import highdicom as hd
    import nibabel as nib
    import numpy as np
    import pydicom

    lines = []
    p = subprocess.run(["dciodvfy", "-new", str(seg_path)], capture_output=True, text=True)
    report = (p.stdout + p.stderr).splitlines()
    errors = [x for x in report if x.startswith("Error")]
    warnings = [x for x in report if x.startswith("Warning")]
    lines.append(f"dciodvfy on medhub SEG: {len(errors)} errors, {len(warnings)} warnings")
    lines += [f"  {e}" for e in errors[:5]]

    seg = hd.seg.segread(seg_path)
    ct_dir = work / "data" / "series" / "ct300"
    sources = [pydicom.dcmread(f, stop_before_pixels=True) for f in ct_dir.iterdir()]
    sources.sort(key=lambda d: float(d.ImagePositionPatient[2]))  # axial, identity orientation
    img = nib.load(work / "data" / "labels" / "label300.nii.gz")
    lab = np.asanyarray(img.dataobj)  # (i, j, k) = RAS-flipped LPS axes of SimpleITK's output
    lps = np.diag([-1, -1, 1, 1]) @ img.affine
    inv = np.linalg.inv(lps)
    ks = [round((inv @ np.r_[np.asarray(d.ImagePositionPatient, float), 1.0])[2]) for d in sources]
    expected = lab[:, :, ks].transpose(2, 1, 0)  # (frames, rows, cols)
    got = seg.get_pixels_by_source_instance(
        source_sop_instance_uids=[d.SOPInstanceUID for d in sources],
        combine_segments=True, relabel=False, skip_overlap_checks=True)
    segment_labels = {d.SegmentNumber: d.SegmentLabel for d in seg.SegmentSequence}
    mismatched = int(np.count_nonzero(got != expected))
    lines.append(f"SEG vs label map: {seg.NumberOfFrames} frames, {len(segment_labels)} segments, "
                 f"{mismatched} of {expected.size} voxels differ")
    return lines


def profile_medhub(case: Case, res: Path) -> list[str]:
    """Run the medhub process once more under cProfile; return the top functions by own time."""
    import pstats

    prof = res / "medhub.prof"
    argv = [case.argv[0], "-m", "cProfile", "-o", str(prof), *case.argv[1:]]
    subprocess.run(argv, check=True, stdout=subprocess.DEVNULL)
    report = res / "medhub_profile.txt"
    with open(report, "w") as fh:
        stats = pstats.Stats(str(prof), stream=fh)
        stats.sort_stats("cumulative").print_stats(60)
        stats.sort_stats("tottime").print_stats(30)
    return [f"cProfile of one medhub run: {prof} (top functions in {report})"]


def summarize(cases: dict[str, Case], medhub_name: str) -> list[str]:
    base_rows = cases[medhub_name].rows if medhub_name in cases else []
    base = statistics.median(r["wall_s"] for r in base_rows) if base_rows else float("nan")
    base_cpu = statistics.median(r["cpu_s"] for r in base_rows) if base_rows else float("nan")
    lines = ["| case | n | median wall s | min-max s | median CPU s | peak RSS MiB | wall / medhub | "
             "CPU / medhub | exit |",
             "|---|---|---|---|---|---|---|---|---|"]
    for c in cases.values():
        if not c.rows:
            continue
        w = [r["wall_s"] for r in c.rows]
        med = statistics.median(w)
        cpu = statistics.median(r["cpu_s"] for r in c.rows)
        lines.append(f"| {c.name} | {len(w)} | {med:.2f} | {min(w):.2f}-{max(w):.2f} | {cpu:.2f} | "
                     f"{statistics.median(r['maxrss_mib'] for r in c.rows):.0f} | {med / base:.2f}x | "
                     f"{cpu / base_cpu:.2f}x | {sorted({r['exit'] for r in c.rows})} |")
        steps = [r["steps"] for r in c.rows if r.get("steps")]
        for key in (steps[0] if steps else {}):
            cpus = [s[key]["cpu"] for s in steps if s[key]["cpu"] is not None]
            step_cpu = f"{statistics.median(cpus):.3f}" if cpus else ""
            lines.append(f"|   step: {key} | {len(steps)} | "
                         f"{statistics.median(s[key]['wall'] for s in steps):.3f} | | {step_cpu} | | | | |")
    return lines


def main_bench(args) -> int:
    work: Path = args.work
    plastimatch = args.plastimatch or str(work / "venv-modern" / "bin" / "plastimatch")
    check_ready(work, plastimatch)
    cases = build_cases(work, args.peer_bench, plastimatch)
    if args.only:
        cases = {k: v for k, v in cases.items() if any(s in k for s in args.only)}
    medhub_name = next((k for k in cases if k.startswith("medhub")), "")
    res = work / "results"
    res.mkdir(parents=True, exist_ok=True)
    (work / "out" / "overhead").mkdir(parents=True, exist_ok=True)
    warm(work)
    order = list(cases.values())
    with open(res / "overhead.log", "a") as log, open(res / "overhead.jsonl", "a") as jl:
        for rnd in range(args.rounds + 1):
            k = rnd % len(order)
            for c in order[k:] + order[:k]:
                if c.out:
                    shutil.rmtree(c.out, ignore_errors=True)
                    if c.mk:
                        c.out.mkdir(parents=True)
                if c.steps_file and c.steps_file.exists():
                    c.steps_file.unlink()
                os.sync()
                log.write(f"### {c.name} round {rnd}\n")
                log.flush()
                r = run_measured(c.argv, log)
                os.sync()
                if c.steps_file and c.steps_file.exists():
                    r["steps"] = read_steps(c.steps_file)
                    if c.name.startswith("medhub"):
                        # interpreter start, bench-script import and interpreter exit (freeing
                        # every object, highdicom's 22 MB standard tables among them)
                        r["steps"]["python start + exit"] = {
                            "wall": r["wall_s"] - sum(v["wall"] for v in r["steps"].values()),
                            "cpu": r["cpu_s"] - sum(v["cpu"] for v in r["steps"].values()),
                        }
                row = {"name": c.name, "round": rnd, "warmup": rnd == 0, "ts": time.time(), **r}
                jl.write(json.dumps(row) + "\n")
                if rnd > 0:
                    c.rows.append(r)
                print(f"[r{rnd}{' warm-up' if rnd == 0 else ''}] {c.name}: {r['wall_s']:.2f} s "
                      f"cpu {r['cpu_s']:.2f} rss {r['maxrss_mib']:.0f} MiB exit {r['exit']}", flush=True)
                if r["exit"] != 0:
                    print(f"  FAILED, see {res / 'overhead.log'}", flush=True)

    lines = [f"# overhead benchmark, {time.strftime('%Y-%m-%d %H:%M')}, {platform.node()}, "
             f"{os.cpu_count()} cores, Python {platform.python_version()}, {args.rounds} rounds + 1 warm-up", ""]
    lines += summarize(cases, medhub_name)
    loads = [r["load1"] for c in cases.values() for r in c.rows]
    if loads and statistics.median(loads) > (os.cpu_count() or 1) * 0.75:
        lines += ["", f"WARNING: median 1-min load average during the runs was {statistics.median(loads):.1f} on "
                  f"{os.cpu_count()} cores: other processes competed, wall times are inflated; the CPU-time "
                  "ratios are the steadier figure."]
    med = {k: statistics.median(r["wall_s"] for r in c.rows) for k, c in cases.items() if c.rows}
    cpu = {k: statistics.median(r["cpu_s"] for r in c.rows) for k, c in cases.items() if c.rows}
    lines.append("")
    chain = next((k for k in med if k.startswith("MHub chain")), None)
    floor = next((k for k in med if k.startswith("pydicom read+decode")), None)
    if chain and medhub_name in med:
        ratio = med[chain] / med[medhub_name]
        lines.append(f"MHub chain / medhub = {ratio:.1f}x (target ≥10x){'' if ratio >= 10 else '  MISSED'}"
                     f"   [by CPU time: {cpu[chain] / cpu[medhub_name]:.1f}x]")
    if floor and medhub_name in med:
        ratio = med[medhub_name] / med[floor]
        lines.append(f"medhub / pydicom floor = {ratio:.1f}x (target ≤3x){'' if ratio <= 3 else '  MISSED'}"
                     f"   [by CPU time: {cpu[medhub_name] / cpu[floor]:.1f}x]")
    seg_path = work / "out" / "overhead" / "medhub" / "seg.dcm"
    lines.append("")
    if seg_path.exists():
        lines += validate_seg(seg_path, work)
    else:
        lines.append(f"no medhub SEG at {seg_path}: medhub process failed, see {res / 'overhead.log'}")
    if args.profile and medhub_name:
        lines += ["", *profile_medhub(cases[medhub_name], res)]
    text = "\n".join(lines)
    print("\n" + text)
    (res / "overhead.md").write_text(text + "\n")
    ok = all(r["exit"] == 0 for c in cases.values() for r in c.rows)
    return 0 if ok else 1


def main() -> int:
    if len(sys.argv) > 1 and sys.argv[1] == "_medhub":
        p = argparse.ArgumentParser(prog="overhead.py _medhub")
        p.add_argument("cmd")
        p.add_argument("unsorted", type=Path)
        p.add_argument("label", type=Path)
        p.add_argument("out", type=Path)
        p.add_argument("timings", type=Path, nargs="?")
        p.add_argument("--slices", type=int, default=300)
        a = p.parse_args()
        medhub_process(a.unsorted, a.label, a.out, a.timings, a.slices)
        # End as `medhub` (cli.main) ends a finished command: exit handlers run, streams are
        # flushed, but the interpreter does not spend ~0.6 s CPU freeing every object.
        # (medhub.cli.main itself is not imported: typer and rich are not part of this process.)
        # Under --profile (cProfile) the normal exit is kept: cProfile writes its file then.
        if sys.getprofile() is not None:
            return 0
        import atexit

        atexit._run_exitfuncs()
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(0)
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--rounds", type=int, default=5, help="timed rounds (one untimed warm-up runs first)")
    p.add_argument("--work", type=Path, default=DEFAULT_WORK, help="setup_peers.sh's work dir")
    p.add_argument("--peer-bench", type=Path, default=DEFAULT_PEER_BENCH, help="shared/peer-bench folder")
    p.add_argument("--plastimatch", help="plastimatch executable for MHub's chain (default: the PyPI "
                   "build in venv-modern, 1.10.0; /usr/bin/plastimatch is Debian's 1.9.4, about 2x slower)")
    p.add_argument("--profile", action="store_true", help="also run medhub once under cProfile")
    p.add_argument("--only", nargs="*", help="run only the cases whose name contains one of these words")
    return main_bench(p.parse_args())


if __name__ == "__main__":
    sys.exit(main())
