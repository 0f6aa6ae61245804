"""``medhub listen`` against a real Orthanc: a DICOM node that receives a CT, runs ct-body and forwards the SEG.

One Orthanc per module (DICOM port on, the listener declared in ``DicomModalities`` so that
Orthanc's ``/modalities/{id}/store`` can send to it). Real CT: 20 contiguous slices of the
Philips head CT under new UIDs per test (ct-body needs no weights and runs in seconds). Most
tests run the node in this process (:class:`medhub.serve.listener.DicomListener`, log lines
collected); the kill-and-restart and SIGTERM tests run the real ``medhub listen`` command.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import orthanc
import pydicom
import pytest
from conftest import shared_path
from pydicom.uid import generate_uid
from pynetdicom import AE, StoragePresentationContexts
from pynetdicom.sop_class import Verification

from medhub.errors import MedhubError
from medhub.hub.catalog import get_model
from medhub.hub.workflow import load_workflow_file
from medhub.serve.listener import DicomListener, ListenerOptions

PHILIPS = "ct/philips_phantom_head_1mm"
LISTENER_AE = "MEDHUB-NODE"
SEG_STORAGE = "1.2.840.10008.5.1.4.1.1.66.4"


@dataclass
class Setup:
    server: orthanc.OrthancServer
    listener_port: int
    work: Path


@pytest.fixture(scope="module")
def setup(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Setup]:
    reason = orthanc.missing_reason()
    if reason:
        pytest.skip(reason)
    shared_path(PHILIPS)
    work = tmp_path_factory.mktemp("listen")
    listener_port = orthanc.free_port()
    server = orthanc.OrthancServer(work / "orthanc", dicom=True,
                                   modalities={"listener": orthanc.modality(LISTENER_AE, listener_port)}).start()
    try:
        yield Setup(server, listener_port, work)
    finally:
        server.kill()


@pytest.fixture
def pacs(setup: Setup) -> Iterator[Setup]:
    """The module's Orthanc, restarted (same ports and storage) if a test stopped it."""
    if not setup.server.running:
        setup.server.start()
    yield setup
    if not setup.server.running:
        setup.server.start()


def make_series(folder: Path, slices: int = 20) -> tuple[str, str, list[Path]]:
    """``slices`` contiguous real Philips slices as a new study and series; (study, series, files)."""
    folder.mkdir(parents=True, exist_ok=True)
    study, series = generate_uid(), generate_uid()
    originals = sorted(shared_path(PHILIPS).iterdir(),
                       key=lambda p: int(pydicom.dcmread(p, stop_before_pixels=True).InstanceNumber))
    middle = len(originals) // 2 - slices // 2
    files = []
    for path in originals[middle:middle + slices]:
        dataset = pydicom.dcmread(path)
        dataset.StudyInstanceUID, dataset.SeriesInstanceUID = study, series
        dataset.SOPInstanceUID = generate_uid()
        dataset.file_meta.MediaStorageSOPInstanceUID = dataset.SOPInstanceUID
        dataset.save_as(folder / path.name, enforce_file_format=True)
        files.append(folder / path.name)
    return study, series, files


def send(files: list[Path], port: int, calling_ae: str = "MODALITY") -> list[int]:
    """C-STORE the files to the listener on one association, as a modality would; the statuses."""
    ae = AE(ae_title=calling_ae)
    ae.requested_contexts = StoragePresentationContexts
    assoc = ae.associate("127.0.0.1", port, ae_title=LISTENER_AE)
    assert assoc.is_established, f"association to the listener on {port} failed"
    statuses = [int(assoc.send_c_store(path).Status) for path in files]
    assoc.release()
    return statuses


def wait_for(condition: Callable[[], object], timeout: float, what: str, log: list[str] | None = None) -> object:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        result = condition()
        if result:
            return result
        time.sleep(0.2)
    shown = "; log:\n" + "\n".join(log) if log is not None else ""
    raise AssertionError(f"timed out after {timeout} s waiting for {what}{shown}")


def segs_of(server: orthanc.OrthancServer, series: str) -> list[dict[str, object]]:
    """The SEG instances Orthanc holds whose ReferencedSeriesSequence names ``series`` (read from the files)."""
    found = []
    for instance in server.instances("SEG"):
        data = server.rest("GET", f"/instances/{instance['ID']}/tags?simplify").json()
        refs = data.get("ReferencedSeriesSequence") or []
        if any(r.get("SeriesInstanceUID") == series for r in refs):
            found.append(instance)
    return found


def check_stored_seg(server: orthanc.OrthancServer, instance: dict[str, object], series: str, files: list[Path],
                     path: Path, assert_valid_dicom: Callable[[Path], None]) -> None:
    """The SEG Orthanc holds is valid (dciodvfy) and references every received instance of the CT."""
    path.write_bytes(server.rest("GET", f"/instances/{instance['ID']}/file").content)
    seg = pydicom.dcmread(path)
    assert seg.SOPClassUID == SEG_STORAGE
    assert [r.SeriesInstanceUID for r in seg.ReferencedSeriesSequence] == [series]
    assert {i.ReferencedSOPInstanceUID for r in seg.ReferencedSeriesSequence for i in r.ReferencedInstanceSequence} \
        == {str(pydicom.dcmread(p, stop_before_pixels=True).SOPInstanceUID) for p in files}
    assert_valid_dicom(path)


class Node:
    """A listener running in this process, its log lines collected."""

    def __init__(self, setup: Setup, output: Path, **overrides: object) -> None:
        entry = get_model("ct-body")
        options = dict(model=entry, workflow=load_workflow_file(entry.workflows["default"]), port=setup.listener_port,
                       output=output, ae_title=LISTENER_AE, series_timeout=1.0, retry_interval=1.0,
                       forward=setup.server.dimse_url)
        options.update(overrides)
        self.lines: list[str] = []
        self.listener = DicomListener(ListenerOptions(**options), self.lines.append)  # type: ignore[arg-type]

    def __enter__(self) -> Node:
        self.listener.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.listener.stop()

    def logged(self, text: str) -> list[str]:
        return [line for line in self.lines if text in line]


def test_orthanc_sends_a_ct_and_gets_a_valid_seg_back(pacs, tmp_path, assert_valid_dicom):
    """Orthanc's /modalities/listener/store sends the CT; the SEG the listener forwards lands beside it."""
    study, series, files = make_series(tmp_path / "ct")
    for path in files:
        assert pacs.server.upload(path).status_code == 200
    orthanc_series = pacs.server.rest("POST", "/tools/lookup", data=series).json()[0]["ID"]
    with Node(pacs, tmp_path / "out") as node:
        reply = pacs.server.rest("POST", "/modalities/listener/store",
                                 json={"Resources": [orthanc_series], "Synchronous": True})
        assert reply.status_code == 200, reply.text
        (seg,) = wait_for(lambda: segs_of(pacs.server, series), 120, "the SEG in Orthanc")  # type: ignore[misc]
        wait_for(lambda: node.logged(f"series {series}: forwarded 1 of 1"), 30, "the forward log line")
    check_stored_seg(pacs.server, seg, series, files, tmp_path / "stored.seg.dcm", assert_valid_dicom)
    assert (tmp_path / "out" / series / "ct-body.seg.dcm").is_file()
    assert (tmp_path / "out" / series / "medhub-report.json").is_file()
    assert node.logged(f"received 20 instances of 1 series from AE {pacs.server.dicom_aet}")
    assert not list((tmp_path / "out" / ".medhub-spool").rglob("*.dcm")), "the spool keeps nothing once forwarded"
    assert all("\n" not in line for line in node.lines)


def test_echo_and_allow_ae_refuses_unknown_calling_aes(pacs, tmp_path):
    _, _, files = make_series(tmp_path / "ct", slices=2)
    with Node(pacs, tmp_path / "out", allow_ae=["GOODPACS"], forward=None) as node:
        good, bad = AE(ae_title="GOODPACS"), AE(ae_title="STRANGER")
        for ae in (good, bad):
            ae.add_requested_context(Verification)
            ae.requested_contexts = [*ae.requested_contexts, *StoragePresentationContexts[:10]]
        assoc = good.associate("127.0.0.1", pacs.listener_port, ae_title=LISTENER_AE)
        assert assoc.is_established and int(assoc.send_c_echo().Status) == 0
        assoc.release()
        refused = bad.associate("127.0.0.1", pacs.listener_port, ae_title=LISTENER_AE)
        assert refused.is_rejected and not refused.is_established
        wait_for(lambda: node.logged("refused an association from AE STRANGER"), 10, "the refusal log line")
        assert node.logged("C-ECHO from AE GOODPACS")
    assert not (tmp_path / "out" / ".medhub-spool" / "incoming").exists() or \
        not list((tmp_path / "out" / ".medhub-spool" / "incoming").rglob("*.dcm"))


def test_a_series_that_cannot_run_does_not_stop_the_node(pacs, tmp_path):
    """A 2-slice CT (ct-body needs 5) is dropped as not suitable; a CT with two different images at each position
    (not one 3D volume) is skipped by the checks and kept under the spool's failed/; the next series runs."""
    _, short_series, short = make_series(tmp_path / "short", slices=2)
    _, broken_series, broken = make_series(tmp_path / "broken", slices=5)
    for path in list(broken):  # a second image at every position: a 4D series, which ct-body cannot take
        dataset = pydicom.dcmread(path)
        dataset.SOPInstanceUID = dataset.file_meta.MediaStorageSOPInstanceUID = generate_uid()
        dataset.PixelData = (dataset.pixel_array + 7).astype(dataset.pixel_array.dtype).tobytes()
        dataset.InstanceNumber = int(dataset.InstanceNumber) + 1000
        dataset.save_as(path.with_name(path.name + "_t2"))
        broken.append(path.with_name(path.name + "_t2"))
    _, series, files = make_series(tmp_path / "ct", slices=10)
    with Node(pacs, tmp_path / "out", forward=None) as node:
        assert send(short, pacs.listener_port) == [0, 0]
        wait_for(lambda: node.logged(f"series {short_series}: not processed"), 60, "the short series' log line")
        assert send(broken, pacs.listener_port) == [0] * 10
        wait_for(lambda: node.logged(f"series {broken_series}: skipped"), 60, "the broken series", node.lines)
        assert send(files, pacs.listener_port) == [0] * 10
        wait_for(lambda: node.logged(f"series {series}: done"), 60, "the good series")
    assert "too few slices: 2" in node.logged(f"series {short_series}: not processed")[0]
    (skipped,) = node.logged(f"series {broken_series}: skipped")
    assert "not one 3D volume" in skipped and "instances kept in" in skipped
    kept = list((tmp_path / "out" / ".medhub-spool" / "failed").iterdir())
    assert [p.name.rsplit(".", 1)[0] for p in kept] == [broken_series] and len(list(kept[0].glob("*.dcm"))) == 10
    assert not (tmp_path / "out" / ".medhub-spool" / "work").exists() or \
        not list((tmp_path / "out" / ".medhub-spool" / "work").iterdir())
    assert (tmp_path / "out" / series / "ct-body.seg.dcm").is_file()
    assert not (tmp_path / "out" / short_series / "ct-body.seg.dcm").exists()


def test_forward_to_a_stopped_orthanc_is_retried_until_stored(pacs, tmp_path):
    _, series, files = make_series(tmp_path / "ct", slices=10)
    pacs.server.kill()
    with Node(pacs, tmp_path / "out") as node:
        assert send(files, pacs.listener_port) == [0] * 10
        (line,) = wait_for(lambda: node.logged(f"series {series}: forward failed"), 60, "the failed forward")
        assert "pushed 0 of 1: cannot reach DICOM node" in line and "Connection refused" in line
        assert list((tmp_path / "out" / ".medhub-spool" / "outbox").glob("*.json"))
        pacs.server.start()
        wait_for(lambda: node.logged(f"series {series}: forwarded 1 of 1"), 60, "the retried forward")
    assert len(segs_of(pacs.server, series)) == 1
    assert not list((tmp_path / "out" / ".medhub-spool" / "outbox").glob("*.json"))


def test_forward_over_dicomweb_with_credentials_that_are_never_logged(pacs, tmp_path):
    _, series, files = make_series(tmp_path / "ct", slices=10)
    url = f"dicomweb://{orthanc.USER}:{orthanc.PASSWORD}@127.0.0.1:{pacs.server.port}/dicom-web"
    with Node(pacs, tmp_path / "out", forward=url) as node:
        assert send(files, pacs.listener_port) == [0] * 10
        wait_for(lambda: node.logged(f"series {series}: forwarded 1 of 1"), 60, "the forward", node.lines)
    assert len(segs_of(pacs.server, series)) == 1
    assert not [line for line in node.lines if orthanc.PASSWORD in line]


def test_a_series_claimed_before_a_crash_runs_at_start_up(pacs, tmp_path):
    """A work/ batch (claimed, then the process died mid-run) is processed first when the node starts."""
    _, series, files = make_series(tmp_path / "ct", slices=10)
    batch = tmp_path / "out" / ".medhub-spool" / "work" / f"{series}.{time.time_ns()}"
    batch.mkdir(parents=True)
    for path in files:
        shutil.copy(path, batch / path.name)
    with Node(pacs, tmp_path / "out", forward=None) as node:
        wait_for(lambda: node.logged(f"series {series}: done"), 60, "the leftover series")
        assert node.logged("1 series received before the restart")
    assert (tmp_path / "out" / series / "ct-body.seg.dcm").is_file() and not batch.exists()


def test_bad_options_are_one_line(pacs, tmp_path):
    entry = get_model("ct-body")
    workflow = load_workflow_file(entry.workflows["default"])
    for overrides, expected in (({"ae_title": "A\\B"}, "--ae-title"), ({"allow_ae": [""]}, "--allow-ae"),
                                ({"forward": "dimse://nohost"}, "no AE title"), ({"port": 0}, "--port"),
                                ({"series_timeout": -1}, "--series-timeout")):
        options = {"model": entry, "workflow": workflow, "port": pacs.listener_port, "output": tmp_path, **overrides}
        with pytest.raises(MedhubError, match=expected):
            ListenerOptions(**options)  # type: ignore[arg-type]
    with Node(pacs, tmp_path / "one", forward=None), pytest.raises(MedhubError, match="cannot listen on"):
        Node(pacs, tmp_path / "two", forward=None).listener.start()  # the port is taken
    with Node(pacs, tmp_path / "one", forward=None):
        second = Node(pacs, tmp_path / "one", forward=None, port=orthanc.free_port())
        with pytest.raises(MedhubError, match="is in use by another medhub listen"):
            second.listener.start()


# -- the real command: killed mid-series, restarted, stopped with SIGTERM ---------------------------
def start_cli(pacs: Setup, output: Path, timeout: float) -> tuple[subprocess.Popen[str], list[str]]:
    process = subprocess.Popen(
        [sys.executable, "-m", "medhub", "listen", "--model", "ct-body", "--port", str(pacs.listener_port),
         "--ae-title", LISTENER_AE, "--output", str(output), "--forward", pacs.server.dimse_url,
         "--series-timeout", str(timeout)],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env={**os.environ})
    lines: list[str] = []

    def read() -> None:
        assert process.stderr is not None
        for line in process.stderr:
            lines.append(line.rstrip("\n"))

    threading.Thread(target=read, daemon=True).start()
    wait_for(lambda: any("listening as AE" in line for line in lines) or process.poll() is not None, 120,
             "the listener to start")
    assert process.poll() is None, "\n".join(lines)
    return process, lines


def test_cli_killed_mid_series_then_restarted_loses_nothing(pacs, tmp_path, assert_valid_dicom):
    """12 of 20 slices arrive, the node is killed (SIGKILL), restarts, the last 8 arrive: one SEG of all 20."""
    _, series, files = make_series(tmp_path / "ct")
    process, lines = start_cli(pacs, tmp_path / "out", timeout=60)
    try:
        assert send(files[:12], pacs.listener_port) == [0] * 12
        wait_for(lambda: any("received 12 instances" in line for line in lines), 30, "the first 12 instances")
    finally:
        process.kill()
        process.wait(timeout=30)
    spooled = list((tmp_path / "out" / ".medhub-spool" / "incoming").rglob("*.dcm"))
    assert len(spooled) == 12, "every acknowledged instance is on disk"
    process, lines = start_cli(pacs, tmp_path / "out", timeout=5)
    try:
        assert any("1 series received before the restart" in line for line in lines), lines
        assert send(files[12:], pacs.listener_port) == [0] * 8
        (seg,) = wait_for(lambda: segs_of(pacs.server, series), 120, "the SEG in Orthanc")  # type: ignore[misc]
        check_stored_seg(pacs.server, seg, series, files, tmp_path / "stored.seg.dcm", assert_valid_dicom)
        wait_for(lambda: any("forwarded 1 of 1" in line for line in lines), 30, "the forward log line")
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=60) == 0, "\n".join(lines)
    finally:
        if process.poll() is None:
            process.kill()
    wait_for(lambda: lines and lines[-1].endswith("medhub listen: stopped"), 10, "the last log line")
    assert any("SIGTERM: stopping" in line for line in lines)
    assert not any("Traceback" in line for line in lines), "\n".join(lines)
    assert not list((tmp_path / "out" / ".medhub-spool").rglob("*.dcm"))
