"""DIMSE input (C-FIND + C-GET / C-MOVE) and push (C-STORE) against a real Orthanc's DICOM port.

One Orthanc per module (free HTTP and DICOM ports, storage in a temporary folder) with medhub's AE
title declared in ``DicomModalities`` (Orthanc 1.10 refuses queries from unknown AEs). It holds
20 contiguous real slices of the Philips head CT under new UIDs (uploaded through Orthanc's REST
API): small enough to keep the module fast, enough for ct-body. Tests that stop or kill the
server restart it on the same ports and storage, which is also how they prove what was stored.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import orthanc
import pydicom
import pytest
from conftest import shared_path
from pydicom.uid import generate_uid

from medhub.errors import MedhubError
from medhub.inputs.dimse import (
    AE_TITLE_ENV,
    DimseTarget,
    calling_ae_title,
    echo,
    fetch_input,
    is_dimse_url,
    parse_dimse_url,
    push_outputs,
)

PHILIPS = "ct/philips_phantom_head_1mm"
SEG_STORAGE = "1.2.840.10008.5.1.4.1.1.66.4"
AE = "MEDHUB-TEST"


# -- URL parsing (no server) ------------------------------------------------------------------
def test_parse_url_with_filters_and_default_port():
    assert parse_dimse_url("dimse://PACS@pacs.example.org:11112?study=1.2.3&series=1.2.3.4") == DimseTarget(
        called_aet="PACS", host="pacs.example.org", port=11112, study="1.2.3", series="1.2.3.4")
    assert parse_dimse_url("dimse://PACS@pacs?patient=P%2001").port == 104
    assert parse_dimse_url("dimse://PACS@pacs?patient=P%2001").patient == "P 01"
    collapsed = Path("dimse://PACS@127.0.0.1:4242?study=1.2")  # a Path collapses "//"
    assert is_dimse_url(collapsed) and not is_dimse_url(Path("/data/dimse"))
    assert parse_dimse_url(collapsed).address == "PACS@127.0.0.1:4242"


@pytest.mark.parametrize(("url", "problem"), [
    ("dimse://pacs:104?study=1.2", "no AE title"),
    ("dimse://PACS@:104?study=1.2", "no host"),
    ("dimse://PACS:secret@pacs:104", "DIMSE has no passwords"),
    ("dimse://A_TITLE_LONGER_THAN_16@pacs:104", "is not a DICOM AE title"),
    ("dimse://PACS@pacs:104?accession=1", "unknown parameter 'accession'"),
    ("dimse://PACS@pacs:104?study=1.2.x", "is not a DICOM UID"),
    ("dimse://PACS@pacs:104?patient=DOE*", "one exact Patient ID"),
    ("dimse://PACS@pacs:104?study=1.2&study=1.3", "study given twice"),
    ("dimse://PACS@pacs:99999", "bad DIMSE URL"),
    ("dimse://PACS@pacs:104/path", "unexpected"),
])
def test_parse_rejects_bad_urls_with_one_line(url, problem):
    with pytest.raises(MedhubError, match=problem) as caught:
        parse_dimse_url(url)
    assert "\n" not in str(caught.value) and "secret" not in str(caught.value)


def test_calling_ae_title_from_the_environment():
    assert calling_ae_title({}) == "MEDHUB"
    assert calling_ae_title({AE_TITLE_ENV: "RESEARCH1"}) == "RESEARCH1"
    with pytest.raises(MedhubError, match=f"{AE_TITLE_ENV} 'WAY_TOO_LONG_AE_TITLE' is not a DICOM AE title"):
        calling_ae_title({AE_TITLE_ENV: "WAY_TOO_LONG_AE_TITLE"})


# -- a real Orthanc -----------------------------------------------------------------------------
@dataclass
class Pacs:
    """The module's Orthanc and the small study the fixture uploaded into it."""

    server: orthanc.OrthancServer
    study: str
    series: str
    patient: str
    sop_uids: set[str]
    files: list[Path]
    move_port: int

    def url(self, query: str = "") -> str:
        return f"{self.server.dimse_url}?{query}" if query else self.server.dimse_url


def upload_study(server: orthanc.OrthancServer, folder: Path, slices: int = 20) -> tuple[str, str, str, list[Path]]:
    """``slices`` contiguous real Philips slices as a new patient, study and series; returns their UIDs and files."""
    folder.mkdir(parents=True, exist_ok=True)
    study, series, patient = generate_uid(), generate_uid(), "MEDHUB-" + generate_uid()[-12:]
    originals = sorted(shared_path(PHILIPS).iterdir(),
                       key=lambda p: int(pydicom.dcmread(p, stop_before_pixels=True).InstanceNumber))
    middle = len(originals) // 2 - slices // 2
    files = []
    for path in originals[middle:middle + slices]:
        dataset = pydicom.dcmread(path)
        dataset.StudyInstanceUID, dataset.SeriesInstanceUID, dataset.PatientID = study, series, patient
        dataset.SOPInstanceUID = generate_uid()
        dataset.file_meta.MediaStorageSOPInstanceUID = dataset.SOPInstanceUID
        target = folder / path.name
        dataset.save_as(target, enforce_file_format=True)
        reply = server.upload(target)
        assert reply.status_code == 200, reply.text
        files.append(target)
    return study, series, patient, files


@pytest.fixture(scope="module")
def pacs(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Pacs]:
    reason = orthanc.missing_reason()
    if reason:
        pytest.skip(reason)
    shared_path(PHILIPS)
    work = tmp_path_factory.mktemp("dimse")
    move_port = orthanc.free_port()
    server = orthanc.OrthancServer(work / "orthanc", dicom=True,
                                   modalities={"medhub": orthanc.modality(AE, move_port)}).start()
    try:
        study, series, patient, files = upload_study(server, work / "upload")
        uids = {str(pydicom.dcmread(p, stop_before_pixels=True).SOPInstanceUID) for p in files}
        yield Pacs(server, study, series, patient, uids, files, move_port)
    finally:
        server.kill()


@pytest.fixture
def running(pacs: Pacs, monkeypatch: pytest.MonkeyPatch) -> Iterator[Pacs]:
    """The module's Orthanc, restarted (same ports and storage) if a test stopped it; medhub calls as AE."""
    monkeypatch.setenv(AE_TITLE_ENV, AE)
    if not pacs.server.running:
        pacs.server.start()
    yield pacs
    if not pacs.server.running:
        pacs.server.start()


def sop_uids_in(folder: Path) -> dict[str, Path]:
    return {str(pydicom.dcmread(p, stop_before_pixels=True).SOPInstanceUID): p for p in folder.rglob("*.dcm")}


def test_c_get_by_study_gives_the_same_instances_and_pixels(running, tmp_path):
    seen: list[tuple[int, int]] = []
    dest = fetch_input(running.url(f"study={running.study}"), tmp_path / "in",
                       progress=lambda n, t: seen.append((n, t)))
    fetched = sop_uids_in(dest)
    assert set(fetched) == running.sop_uids
    assert {p.parent.name for p in fetched.values()} == {running.series}
    assert seen[-1] == (20, 20)
    assert not [p for p in dest.rglob("*") if p.name.startswith(".")], "temporary files left behind"
    originals = {str(pydicom.dcmread(p, stop_before_pixels=True).SOPInstanceUID): p for p in running.files}
    for uid in sorted(fetched)[::5]:
        ours, theirs = pydicom.dcmread(fetched[uid]), pydicom.dcmread(originals[uid])
        assert ours.PixelData == theirs.PixelData
        for keyword in ("ImagePositionPatient", "ImageOrientationPatient", "PixelSpacing", "RescaleSlope",
                        "RescaleIntercept", "StudyInstanceUID", "SeriesInstanceUID", "Modality", "SOPClassUID"):
            assert ours.get(keyword) == theirs.get(keyword), keyword


def test_c_get_by_series_alone_and_by_patient(running, tmp_path):
    for name, query in (("series", f"series={running.series}"), ("patient", f"patient={running.patient}"),
                        ("both", f"patient={running.patient}&study={running.study}&series={running.series}")):
        assert set(sop_uids_in(fetch_input(running.url(query), tmp_path / name))) == running.sop_uids, name


def test_c_move_to_medhub_listening_on_the_move_port(running, tmp_path):
    dest = fetch_input(running.url(f"series={running.series}"), tmp_path / "in", move_to=AE,
                       move_port=running.move_port)
    assert set(sop_uids_in(dest)) == running.sop_uids


def test_c_move_to_an_ae_the_archive_does_not_know_is_refused_with_the_reason(running, tmp_path):
    with pytest.raises(MedhubError) as caught:
        fetch_input(running.url(f"series={running.series}"), tmp_path / "in", move_to="NOBODY",
                    move_port=orthanc.free_port())
    message = str(caught.value)
    assert message.startswith(f"DICOM node {running.server.dicom_aet}@127.0.0.1:{running.server.dicom_port} refused "
                              f"retrieving series {running.series} with C-MOVE to NOBODY (status 0x"), message
    assert "\n" not in message
    assert not list((tmp_path / "in").rglob("*.dcm"))


def test_fetch_again_keeps_complete_series_and_refetches_an_incomplete_one(running, tmp_path):
    dest = fetch_input(running.url(f"study={running.study}"), tmp_path / "in")
    files = sorted(dest.rglob("*.dcm"))
    stamps = {p: p.stat().st_mtime_ns for p in files}
    fetch_input(running.url(f"study={running.study}"), dest)
    assert {p: p.stat().st_mtime_ns for p in sorted(dest.rglob("*.dcm"))} == stamps  # nothing fetched again
    files[3].unlink()
    (files[0].parent / ".leftover.dcm.1.2.partial").write_bytes(b"half a file")  # a killed earlier fetch
    fetch_input(running.url(f"study={running.study}"), dest)
    assert set(sop_uids_in(dest)) == running.sop_uids and not list(dest.rglob("*.partial"))


def test_errors_are_one_line_naming_the_node(running, tmp_path, monkeypatch):
    node = f"{running.server.dicom_aet}@127.0.0.1:{running.server.dicom_port}"
    closed = orthanc.free_port()
    cases = [
        (running.url("study=1.2.3.999"), {}, f"no series found for study=1.2.3.999 at DICOM node {node}"),
        (running.url("patient=NOBODY-HERE"), {}, f"no study found for patient=NOBODY-HERE at DICOM node {node}"),
        (running.url(), {}, f"DIMSE input {node} needs ?study=UID, ?series=UID or ?patient=ID"),
        (f"dimse://ORTHANC@127.0.0.1:{closed}?study={running.study}", {},
         f"cannot reach DICOM node ORTHANC@127.0.0.1:{closed}: Connection refused"),
        # Orthanc 1.10 answers C-FIND only for AE titles in DicomModalities
        (running.url(f"study={running.study}"), {AE_TITLE_ENV: "STRANGER"},
         f"DICOM node {node} closed the connection instead of answering C-FIND from AE STRANGER"),
    ]
    for url, env, expected in cases:
        for key, value in env.items():
            monkeypatch.setenv(key, value)
        with pytest.raises(MedhubError) as caught:
            fetch_input(url, tmp_path / "in")
        monkeypatch.setenv(AE_TITLE_ENV, AE)
        assert expected in str(caught.value) and "\n" not in str(caught.value)
    assert "declare AE STRANGER there" in str(caught.value)
    assert not list((tmp_path / "in").rglob("*.dcm"))


def test_orthanc_killed_during_c_get_leaves_only_whole_files_then_the_rerun_completes(running, tmp_path):
    dest = tmp_path / "in"

    def kill_after_five(done: int, total: int) -> None:
        if done == 5:
            running.server.kill()

    with pytest.raises(MedhubError) as caught:
        fetch_input(running.url(f"series={running.series}"), dest, progress=kill_after_five)
    message = str(caught.value)
    node = f"{running.server.dicom_aet}@127.0.0.1:{running.server.dicom_port}"
    assert message.startswith(f"lost the connection to DICOM node {node} while retrieving series "), message
    assert "whole instances written" in message and "\n" not in message
    assert not [p for p in dest.rglob("*") if p.name.startswith(".")], "partial file left behind"
    partial = sorted(dest.rglob("*.dcm"))
    assert 5 <= len(partial) < 20
    for path in partial:
        assert pydicom.dcmread(path).pixel_array.shape == (512, 512)
    running.server.start()
    assert set(sop_uids_in(fetch_input(running.url(f"series={running.series}"), dest))) == running.sop_uids


def test_echo(running):
    echo(running.url())
    with pytest.raises(MedhubError, match="cannot reach DICOM node"):
        echo(f"dimse://ORTHANC@127.0.0.1:{orthanc.free_port()}")


# -- push ---------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def box_seg(pacs: Pacs, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A SEG of a box on the module's CT (our writer): the push tests are about transport, not accuracy."""
    import numpy as np

    from medhub.data.geometry import labels_to_source
    from medhub.inputs.load import load_series
    from medhub.inputs.scan import scan
    from medhub.segdb import get_segment
    from medhub.writers.provenance import AlgorithmInfo
    from medhub.writers.seg import write_seg

    root = tmp_path_factory.mktemp("seg")
    (series,) = scan(pacs.files[0].parent).series
    volume = load_series(series)
    labels = np.zeros(volume.array.shape, dtype=np.uint8)
    labels[200:300, 200:300, 5:10] = 1
    return write_seg(labels_to_source(volume, labels), volume.source, {1: get_segment("BODY")},
                     AlgorithmInfo(name="medhub-test", version="0"), root / "box.seg.dcm")


def fresh_copies(path: Path, folder: Path, count: int) -> list[Path]:
    """Copies with new SOP Instance UIDs: objects the server has not seen, to tell what a push stored."""
    folder.mkdir(parents=True, exist_ok=True)
    copies = []
    for number in range(count):
        dataset = pydicom.dcmread(path)
        dataset.SOPInstanceUID = generate_uid()
        dataset.file_meta.MediaStorageSOPInstanceUID = dataset.SOPInstanceUID
        target = folder / f"{number}.{path.name}"
        dataset.save_as(target, enforce_file_format=True)
        copies.append(target)
    return copies


def stored_uids(pacs: Pacs, modality: str) -> set[str]:
    return {str(i["MainDicomTags"]["SOPInstanceUID"]) for i in pacs.server.instances(modality)}


def test_push_stores_every_object_and_reports_progress(running, box_seg, tmp_path):
    copies = fresh_copies(box_seg, tmp_path, 2)
    pushed: list[str] = []
    stored = push_outputs(copies, running.url(), progress=lambda p, uid: pushed.append(p.name))
    uids = [str(pydicom.dcmread(p, stop_before_pixels=True).SOPInstanceUID) for p in copies]
    assert stored == uids and pushed == [p.name for p in copies]
    assert set(uids) <= stored_uids(running, "SEG")


def test_push_to_a_stopped_server_stores_nothing_and_says_so(running, box_seg, tmp_path):
    copies = fresh_copies(box_seg, tmp_path, 2)
    before = running.server.instance_count()
    running.server.kill()
    with pytest.raises(MedhubError) as caught:
        push_outputs(copies, running.url())
    node = f"{running.server.dicom_aet}@127.0.0.1:{running.server.dicom_port}"
    assert str(caught.value) == (f"pushed 0 of 2: cannot reach DICOM node {node}: Connection refused (while "
                                 f"connecting to store); not stored: {copies[0].name}, {copies[1].name}")
    running.server.start()
    assert running.server.instance_count() == before


def test_push_says_exactly_what_was_stored_when_the_server_dies_midway(running, box_seg, tmp_path):
    copies = fresh_copies(box_seg, tmp_path, 2)
    with pytest.raises(MedhubError) as caught:
        push_outputs(copies, running.url(), progress=lambda path, uid: running.server.kill())
    node = f"{running.server.dicom_aet}@127.0.0.1:{running.server.dicom_port}"
    assert str(caught.value).startswith(
        f"pushed 1 of 2: stored {copies[0].name}; not stored {copies[1].name}: lost the connection to DICOM node "
        f"{node} while storing {copies[1].name}"), str(caught.value)
    running.server.start()
    first, second = (str(pydicom.dcmread(p, stop_before_pixels=True).SOPInstanceUID) for p in copies)
    assert first in stored_uids(running, "SEG") and second not in stored_uids(running, "SEG")


def test_push_refuses_a_url_with_filters_and_a_file_without_uids(running, box_seg, tmp_path):
    with pytest.raises(MedhubError, match="takes no"):
        push_outputs([box_seg], running.url(f"study={running.study}"))
    empty = pydicom.dcmread(box_seg)
    empty.StudyInstanceUID = ""
    empty.save_as(tmp_path / "no-uid.seg.dcm")
    with pytest.raises(MedhubError, match=r"cannot push .*no-uid\.seg\.dcm: empty StudyInstanceUID.*nothing pushed"):
        push_outputs([box_seg, tmp_path / "no-uid.seg.dcm"], running.url())


# -- the whole round trip through the command line ------------------------------------------------
def medhub(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "medhub", *args], capture_output=True, text=True, timeout=600,
                          check=False, env={**os.environ, AE_TITLE_ENV: AE, **(env or {})})


def test_cli_pulls_the_ct_with_c_get_and_stores_a_valid_seg_that_references_it(running, tmp_path, assert_valid_dicom):
    """medhub run ct-body --input dimse://...?study= --push dimse://...: Orthanc then holds the CT and its SEG."""
    before = stored_uids(running, "SEG")
    proc = medhub("run", "ct-body", "--input", running.url(f"study={running.study}"), "--output", str(tmp_path / "out"),
                  "--push", running.url())
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert f"pushed 1 of 1 to {running.url()}" in proc.stderr
    (seg_path,) = (tmp_path / "out").rglob("*.seg.dcm")
    seg_uid = str(pydicom.dcmread(seg_path, stop_before_pixels=True).SOPInstanceUID)
    assert stored_uids(running, "SEG") - before == {seg_uid}
    (stored,) = [i for i in running.server.instances("SEG") if i["MainDicomTags"]["SOPInstanceUID"] == seg_uid]
    (tmp_path / "stored.seg.dcm").write_bytes(running.server.rest("GET", f"/instances/{stored['ID']}/file").content)
    seg = pydicom.dcmread(tmp_path / "stored.seg.dcm")
    assert seg.SOPClassUID == SEG_STORAGE and seg.StudyInstanceUID == running.study
    assert [r.SeriesInstanceUID for r in seg.ReferencedSeriesSequence] == [running.series]
    assert {i.ReferencedSOPInstanceUID for r in seg.ReferencedSeriesSequence
            for i in r.ReferencedInstanceSequence} == running.sop_uids
    assert_valid_dicom(tmp_path / "stored.seg.dcm")
    report = (tmp_path / "out" / "medhub-report.json").read_text()
    assert running.url(f"study={running.study}") in report  # the report names the PACS, not a scratch folder


def test_cli_c_move_and_a_push_to_a_dead_node(running, tmp_path):
    """--move-to retrieves with C-MOVE; a push to a closed port is found out before any work (issue 13): one line,
    exit 2, nothing fetched or written."""
    closed = f"dimse://NOBODY@127.0.0.1:{orthanc.free_port()}"
    refused = medhub("run", "ct-body", "--input", running.url(f"series={running.series}"),
                     "--output", str(tmp_path / "refused"), "--move-to", AE, "--move-port", str(running.move_port),
                     "--push", closed)
    assert refused.returncode == 2, refused.stdout + refused.stderr
    assert refused.stderr.strip().splitlines() == [
        f"medhub: --push {closed}: cannot reach DICOM node NOBODY@127.0.0.1:{closed.rsplit(':', 1)[1]}: "
        "Connection refused (while sending C-ECHO) (checked before the run; nothing was done)"]
    assert not (tmp_path / "refused").exists()

    proc = medhub("run", "ct-body", "--input", running.url(f"series={running.series}"),
                  "--output", str(tmp_path / "out"), "--move-to", AE, "--move-port", str(running.move_port))
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert len(list((tmp_path / "out").rglob("*.seg.dcm"))) == 1


def test_cli_refuses_bad_pacs_options_before_any_work(running, tmp_path, monkeypatch):
    """In-process through typer's runner (four refusals; a subprocess each would cost seconds of imports)."""
    from typer.testing import CliRunner

    from medhub.cli.main import app

    for args, env, expected in (
        (["--push", "dimse://pacs:104"], AE, "no AE title"),
        (["--push", "ftp://pacs/x"], AE, "cannot push to ftp://pacs/x"),
        (["--move-to", AE], AE, "--move-to and --move-port apply to dimse:// inputs only"),
        (["--push", running.url()], "BAD\\TITLE", "is not a DICOM AE title"),
    ):
        monkeypatch.setenv(AE_TITLE_ENV, env)
        result = CliRunner().invoke(app, ["run", "ct-body", "--input", str(tmp_path), "--output",
                                          str(tmp_path / "out"), *args])
        assert result.exit_code == 2 and expected in result.stderr, result.output
        assert "Traceback" not in result.output
    assert not (tmp_path / "out").exists()
