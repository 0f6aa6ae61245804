"""The DICOM listener's end-to-end latency beside the same job done by hand (issue 12).

    python bench/listener.py [--rounds 3] [--series-timeout 2] [--work DIR]

One real Orthanc (tests/orthanc.py: its own ports and storage under --work) is the PACS, the
140-slice Philips head CT from ../shared/data the study (a fresh copy with new UIDs for every
case and round, so no result is mistaken for another), ct-body the model. Cases:

- **listen**: ``medhub listen --forward dimse://ORTHANC...`` runs for the whole benchmark (warm);
  the bench sends the CT to it with C-STORE, as a modality would. Latency = from the moment the
  last instance is acknowledged (received) to the moment Orthanc holds the SEG. It includes the
  quiet wait (``--series-timeout``), which is printed separately.
- **by hand**: the CT is in Orthanc; ``python -m pynetdicom getscu`` to a folder, ``medhub run
  ct-body`` on it, ``python -m pynetdicom storescu`` of the SEG: three processes, as a person
  would type them.
- **run --input dimse:// --push dimse://**: the same in one ``medhub run`` process.

Every case ends when Orthanc answers a query for the SEG (polled every 50 ms). Medians over
--rounds after one warm-up round; each round runs the cases in a rotated order. CPU seconds are
those of medhub's processes in the timed span (the listener's from /proc, the by-hand tools'
from rusage of the children): on a shared machine they compare more fairly than wall time.
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
import tempfile
import threading
import time
from pathlib import Path

import pydicom
from pydicom.uid import generate_uid
from pynetdicom import AE, StoragePresentationContexts

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))
import orthanc  # noqa: E402 - the test suite's Orthanc launcher, one place for its configuration

PHILIPS = ROOT.parent / "shared" / "data" / "ct" / "philips_phantom_head_1mm"
MEDHUB_AE, NODE_AE = "MEDHUB", "MEDHUB-NODE"


def fresh_copy(folder: Path) -> tuple[str, str, list[Path]]:
    """The Philips CT with new Study/Series/SOP UIDs in ``folder``: (study, series, files)."""
    folder.mkdir(parents=True)
    study, series = generate_uid(), generate_uid()
    files = []
    for path in sorted(PHILIPS.iterdir()):
        dataset = pydicom.dcmread(path)
        dataset.StudyInstanceUID, dataset.SeriesInstanceUID = study, series
        dataset.SOPInstanceUID = dataset.file_meta.MediaStorageSOPInstanceUID = generate_uid()
        dataset.save_as(folder / path.name, enforce_file_format=True)
        files.append(folder / path.name)
    return study, series, files


def wait_for_seg(server: orthanc.OrthancServer, study: str, timeout: float = 600) -> float:
    """Poll Orthanc until it holds a SEG series in ``study``; the time.perf_counter() it was seen."""
    deadline = time.monotonic() + timeout
    query = {"Level": "Series", "Query": {"StudyInstanceUID": study, "Modality": "SEG"}}
    while time.monotonic() < deadline:
        if server.rest("POST", "/tools/find", json=query).json():
            return time.perf_counter()
        time.sleep(0.05)
    raise SystemExit(f"no SEG in Orthanc for study {study} after {timeout} s:\n{server.log_tail()}")


def children_cpu() -> float:
    """CPU seconds (user + system) of every child process waited for so far."""
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def process_cpu(pid: int) -> float:
    """CPU seconds (user + system, its threads included) a running process has used so far."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def predict_seconds(report: Path) -> float:
    """The model's own time (the ``predict`` step) from a run's medhub-report.json."""
    return sum(entry["timings"].get("predict", 0.0) for entry in json.loads(report.read_text())["series"])


def run(command: list[str], env: dict[str, str]) -> float:
    started = time.perf_counter()
    proc = subprocess.run(command, capture_output=True, text=True, env=env, check=False)
    if proc.returncode != 0:
        raise SystemExit(f"{' '.join(command[:4])} ... failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}")
    return time.perf_counter() - started


class Listener:
    """``medhub listen`` in the background, its stderr collected."""

    def __init__(self, server: orthanc.OrthancServer, port: int, output: Path, timeout: float,
                 env: dict[str, str]) -> None:
        self.lines: list[str] = []
        self.process = subprocess.Popen(
            [sys.executable, "-m", "medhub", "listen", "--model", "ct-body", "--port", str(port), "--ae-title", NODE_AE,
             "--output", str(output), "--forward", server.dimse_url, "--series-timeout", str(timeout)],
            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, env=env)
        threading.Thread(target=self._read, daemon=True).start()
        deadline = time.monotonic() + 120
        while not any("listening as AE" in line for line in self.lines):
            if self.process.poll() is not None or time.monotonic() > deadline:
                raise SystemExit("medhub listen did not start:\n" + "\n".join(self.lines))
            time.sleep(0.1)
        self.port, self.output = port, output

    def _read(self) -> None:
        assert self.process.stderr is not None
        for line in self.process.stderr:
            self.lines.append(line.rstrip("\n"))

    def stop(self) -> None:
        self.process.terminate()
        self.process.wait(timeout=120)


def case_listen(server: orthanc.OrthancServer, listener: Listener, folder: Path) -> dict[str, float]:
    study, series, files = fresh_copy(folder)
    ae = AE(ae_title="MODALITY")
    ae.requested_contexts = StoragePresentationContexts
    assoc = ae.associate("127.0.0.1", listener.port, ae_title=NODE_AE)
    assert assoc.is_established
    for path in files:
        assert int(assoc.send_c_store(path).Status) == 0
    received = time.perf_counter()  # the last instance is acknowledged: it is on the listener's disk
    cpu = process_cpu(listener.process.pid)
    assoc.release()
    total = wait_for_seg(server, study) - received
    figures = {"total": total, "cpu": process_cpu(listener.process.pid) - cpu}
    return {**figures, "predict": predict_seconds(listener.output / series / "medhub-report.json")}


def case_by_hand(server: orthanc.OrthancServer, folder: Path, env: dict[str, str]) -> dict[str, float]:
    study, series, files = fresh_copy(folder / "upload")
    for path in files:
        server.upload(path)
    started, cpu = time.perf_counter(), children_cpu()
    get = run([sys.executable, "-m", "pynetdicom", "getscu", "127.0.0.1", str(server.dicom_port), "-S", "-aet",
               MEDHUB_AE, "-aec", server.dicom_aet, "-k", "QueryRetrieveLevel=SERIES", "-k",
               f"StudyInstanceUID={study}", "-k", f"SeriesInstanceUID={series}", "-od", str(folder / "in")], env)
    medhub = run([sys.executable, "-m", "medhub", "run", "ct-body", "--input", str(folder / "in"), "--output",
                  str(folder / "out")], env)
    (seg,) = (folder / "out").rglob("*.seg.dcm")
    store = run([sys.executable, "-m", "pynetdicom", "storescu", "127.0.0.1", str(server.dicom_port), str(seg),
                 "-aet", MEDHUB_AE, "-aec", server.dicom_aet], env)
    total = wait_for_seg(server, study) - started
    return {"total": total, "cpu": children_cpu() - cpu,
            "predict": predict_seconds(folder / "out" / "medhub-report.json"),
            "getscu": get, "medhub run": medhub, "storescu": store}


def case_one_command(server: orthanc.OrthancServer, folder: Path, env: dict[str, str]) -> dict[str, float]:
    study, _series, files = fresh_copy(folder / "upload")
    for path in files:
        server.upload(path)
    started, cpu = time.perf_counter(), children_cpu()
    run([sys.executable, "-m", "medhub", "run", "ct-body", "--input", f"{server.dimse_url}?study={study}",
         "--output", str(folder / "out"), "--push", server.dimse_url], env)
    total = wait_for_seg(server, study) - started
    return {"total": total, "cpu": children_cpu() - cpu,
            "predict": predict_seconds(folder / "out" / "medhub-report.json")}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--series-timeout", type=float, default=2.0)
    parser.add_argument("--work", type=Path, default=None)
    args = parser.parse_args()
    if not PHILIPS.exists():
        raise SystemExit(f"{PHILIPS} is absent (../shared/data)")
    reason = orthanc.missing_reason()
    if reason:
        raise SystemExit(reason)
    work = args.work or Path(tempfile.mkdtemp(prefix="medhub-bench-listener-"))
    work.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "MEDHUB_AE_TITLE": MEDHUB_AE}
    listener_port = orthanc.free_port()
    server = orthanc.OrthancServer(work / "orthanc", dicom=True,
                                   modalities={"medhub": orthanc.modality(MEDHUB_AE, listener_port)}).start()
    listener = Listener(server, listener_port, work / "listen-out", args.series_timeout, env)
    cases = {
        "listen": lambda folder: case_listen(server, listener, folder),
        "by hand: getscu, medhub run, storescu": lambda folder: case_by_hand(server, folder, env),
        "medhub run --input dimse:// --push dimse://": lambda folder: case_one_command(server, folder, env),
    }
    results: dict[str, list[dict[str, float]]] = {name: [] for name in cases}
    try:
        names = list(cases)
        for number in range(args.rounds + 1):  # round 0 warms the page cache and the listener's runner
            order = names[number % len(names):] + names[:number % len(names)]
            for name in order:
                folder = work / f"round{number}" / name.split(":")[0].replace(" ", "-")
                figures = cases[name](folder)
                figures["around"] = figures["total"] - figures["predict"]
                shutil.rmtree(folder, ignore_errors=True)
                if number:
                    results[name].append(figures)
                print(f"round {number} {name}: {figures['total']:.2f} s, CPU {figures['cpu']:.2f} s", file=sys.stderr,
                      flush=True)
    finally:
        listener.stop()
        server.kill()
    load = os.getloadavg()[0]
    print(f"\nct-body on the 140-slice Philips CT, Orthanc 1.10 on loopback; medians of {args.rounds} rounds; "
          f"--series-timeout {args.series_timeout:g} s; 1-min load {load:.1f} on {os.cpu_count()} cores\n")
    def median(rounds: list[dict[str, float]], key: str) -> float:
        return statistics.median(r[key] for r in rounds)

    base = {key: median(results["listen"], key) for key in ("total", "cpu", "around")}
    print("| case | wall s: CT in the PACS (or received) → SEG in the PACS | ratio | wall s around the model "
          "(without predict) | ratio | CPU s of medhub's processes | ratio | steps (median wall s) |")
    print("|---|---|---|---|---|---|---|---|")
    for name, rounds in results.items():
        figures = {key: median(rounds, key) for key in ("total", "cpu", "around")}
        steps = ", ".join(f"{k} {median(rounds, k):.2f}" for k in rounds[0] if k not in ("total", "cpu", "around"))
        if name == "listen":
            steps = f"quiet wait {args.series_timeout:g}, predict {median(rounds, 'predict'):.2f}"
        ratios = {key: figures[key] / base[key] for key in figures}
        print(f"| {name} | {figures['total']:.2f} | {ratios['total']:.2f}x | {figures['around']:.2f} | "
              f"{ratios['around']:.2f}x | {figures['cpu']:.2f} | {ratios['cpu']:.2f}x | {steps} |")


if __name__ == "__main__":
    main()
