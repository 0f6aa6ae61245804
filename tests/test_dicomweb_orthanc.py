"""DICOMweb input and push against a real Orthanc (Debian's orthanc + orthanc-dicomweb).

One Orthanc per session (free loopback port, storage in a temporary folder, basic
authentication on) holds the real Philips head CT (140 slices) uploaded through Orthanc's own
REST API. The tests fetch it back through QIDO-RS + WADO-RS, push SEG / RTSTRUCT through
STOW-RS, and stop or kill the server at chosen moments to show that a dead server gives one
clear line and no partial push. Tests that stop the server restart it on the same port and
storage, which is also how they prove what was (not) stored.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import orthanc
import pydicom
import pytest
from conftest import shared_path
from pydicom.uid import generate_uid

from medhub.errors import MedhubError
from medhub.inputs.dicomweb import (
    TOKEN_ENV,
    USER_ENV,
    DicomwebTarget,
    fetch_input,
    is_dicomweb_url,
    parse_dicomweb_url,
    push_outputs,
)

PHILIPS = "ct/philips_phantom_head_1mm"
NO_UID_CT = "ct/totalsegmentator_example_ct_dicom"
SEG_STORAGE = "1.2.840.10008.5.1.4.1.1.66.4"


# -- URL parsing (no server) ------------------------------------------------------------------
def test_parse_plain_url_defaults_to_http_and_keeps_path_and_filters():
    target = parse_dicomweb_url("dicomweb://pacs.example.org:8042/dicom-web/?study=1.2.3&series=1.2.3.4", env={})
    assert target == DicomwebTarget(base_url="http://pacs.example.org:8042/dicom-web", study="1.2.3",
                                    series="1.2.3.4")
    assert target.session().auth is None and "Authorization" not in target.session().headers


def test_parse_dicomwebs_means_https_and_path_collapsed_by_pathlib_is_repaired():
    assert parse_dicomweb_url("dicomwebs://pacs/wado-rs", env={}).base_url == "https://pacs/wado-rs"
    # a CLI option typed as Path turns "dicomweb://h/p" into "dicomweb:/h/p"
    collapsed = Path("dicomweb://127.0.0.1:8042/dicom-web?study=1.2")
    assert is_dicomweb_url(collapsed) and not is_dicomweb_url(Path("/data/dicomweb"))
    assert parse_dicomweb_url(collapsed, env={}).base_url == "http://127.0.0.1:8042/dicom-web"


def test_parse_credentials_from_url_beat_environment_and_stay_secret():
    env = {TOKEN_ENV: "tok-123", USER_ENV: "envuser", "MEDHUB_DICOMWEB_PASSWORD": "envpass"}
    target = parse_dicomweb_url("dicomweb://alice:p%40ss%2Fword@pacs/dicom-web", env=env)
    assert (target.username, target.password, target.token) == ("alice", "p@ss/word", None)
    assert target.session().auth == ("alice", "p@ss/word")
    assert "p@ss" not in repr(target) and "p@ss" not in target.base_url
    with pytest.raises(MedhubError) as caught:
        parse_dicomweb_url("dicomweb://alice:p%40ss@pacs/dicom-web?study=abc", env={})
    assert "p%40ss" not in str(caught.value) and "p@ss" not in str(caught.value) and "***" in str(caught.value)


def test_parse_token_then_user_password_from_environment():
    token = parse_dicomweb_url("dicomweb://pacs/dw", env={TOKEN_ENV: "tok-123", USER_ENV: "u"})
    assert token.session().headers["Authorization"] == "Bearer tok-123" and token.username is None
    assert "tok-123" not in repr(token)
    basic = parse_dicomweb_url("dicomweb://pacs/dw", env={USER_ENV: "u", "MEDHUB_DICOMWEB_PASSWORD": "pw"})
    assert basic.session().auth == ("u", "pw")


@pytest.mark.parametrize(("url", "problem"), [
    ("ftp://pacs/dw", "scheme must be"),
    ("dicomweb:///dw?study=1.2", "no host"),
    ("dicomweb://pacs/dw?patient=1.2", "unknown parameter 'patient'"),
    ("dicomweb://pacs/dw?study=1.2.x", "is not a DICOM UID"),
    ("dicomweb://pacs/dw?study=1.2&study=1.3", "study given twice"),
    ("dicomweb://pacs:99999/dw", "bad DICOMweb URL"),
])
def test_parse_rejects_bad_urls_with_one_line(url, problem):
    with pytest.raises(MedhubError, match=problem) as caught:
        parse_dicomweb_url(url, env={})
    assert "\n" not in str(caught.value)


# -- a real Orthanc -----------------------------------------------------------------------------
@dataclass
class LoadedOrthanc:
    """The session's Orthanc and what the fixture uploaded into it."""

    server: orthanc.OrthancServer
    study: str
    series: str
    sop_uids: set[str]
    files: list[Path]

    def url(self, query: str = "", password: str = orthanc.PASSWORD) -> str:
        base = f"dicomweb://{orthanc.USER}:{password}@127.0.0.1:{self.server.port}/dicom-web"
        return f"{base}?{query}" if query else base


@pytest.fixture(scope="session")
def loaded(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LoadedOrthanc]:
    """Orthanc with the real Philips CT uploaded through POST /instances (140 files, about 1 s)."""
    reason = orthanc.missing_reason()
    if reason:
        pytest.skip(reason)
    files = sorted(p for p in shared_path(PHILIPS).iterdir() if p.is_file())
    server = orthanc.OrthancServer(tmp_path_factory.mktemp("orthanc")).start()
    try:
        for path in files:
            reply = server.upload(path)
            assert reply.status_code == 200, f"Orthanc refused {path.name}: {reply.text}"
        headers = [pydicom.dcmread(p, stop_before_pixels=True) for p in files]
        assert len({h.SeriesInstanceUID for h in headers}) == 1
        yield LoadedOrthanc(server, str(headers[0].StudyInstanceUID), str(headers[0].SeriesInstanceUID),
                            {str(h.SOPInstanceUID) for h in headers}, files)
    finally:
        server.stop()


@pytest.fixture
def running(loaded: LoadedOrthanc) -> Iterator[LoadedOrthanc]:
    """The session Orthanc, restarted (same port and storage) if a test stopped it."""
    if not loaded.server.running:
        loaded.server.start()
    yield loaded
    if not loaded.server.running:
        loaded.server.start()


def sop_uids_in(folder: Path) -> dict[str, Path]:
    return {str(pydicom.dcmread(p, stop_before_pixels=True).SOPInstanceUID): p for p in folder.rglob("*.dcm")}


def test_fetch_by_study_gives_the_same_instances_and_pixels(running, tmp_path):
    done: list[tuple[int, int]] = []
    dest = fetch_input(running.url(f"study={running.study}"), tmp_path / "in",
                       progress=lambda n, total: done.append((n, total)))
    assert dest == tmp_path / "in"
    fetched = sop_uids_in(dest)
    assert set(fetched) == running.sop_uids and len(fetched) == 140
    assert {p.parent.name for p in fetched.values()} == {running.series}
    assert done[-1] == (140, 140)
    assert not [p for p in dest.rglob("*") if p.name.startswith(".")], "temporary files left behind"
    originals = {str(pydicom.dcmread(p, stop_before_pixels=True).SOPInstanceUID): p for p in running.files}
    for uid in sorted(fetched)[::35]:  # pixel data and the header attributes the pipeline uses are unchanged
        ours, theirs = pydicom.dcmread(fetched[uid]), pydicom.dcmread(originals[uid])
        assert ours.PixelData == theirs.PixelData
        for keyword in ("ImagePositionPatient", "ImageOrientationPatient", "PixelSpacing", "RescaleSlope",
                        "RescaleIntercept", "StudyInstanceUID", "SeriesInstanceUID", "Modality"):
            assert ours.get(keyword) == theirs.get(keyword), keyword


def test_fetch_by_series_alone_and_with_study(running, tmp_path):
    for name, query in (("series", f"series={running.series}"),
                        ("both", f"study={running.study}&series={running.series}")):
        fetched = sop_uids_in(fetch_input(running.url(query), tmp_path / name))
        assert set(fetched) == running.sop_uids, name


def test_fetch_again_keeps_complete_series_and_refetches_incomplete_one(running, tmp_path):
    dest = fetch_input(running.url(f"study={running.study}"), tmp_path / "in")
    files = sorted(dest.rglob("*.dcm"))
    stamps = {p: p.stat().st_mtime_ns for p in files}
    fetch_input(running.url(f"study={running.study}"), dest)
    assert {p: p.stat().st_mtime_ns for p in sorted(dest.rglob("*.dcm"))} == stamps  # nothing rewritten
    files[3].unlink()
    (files[0].parent / ".leftover.dcm.123.partial").write_bytes(b"half a file")  # a killed earlier fetch
    fetch_input(running.url(f"study={running.study}"), dest)
    assert set(sop_uids_in(dest)) == running.sop_uids
    assert not list(dest.rglob("*.partial"))


def small_study(loaded: LoadedOrthanc, folder: Path, slices: int = 30, series: int = 1) -> str:
    """Upload ``slices`` contiguous real Philips slices as a new study of ``series`` series (new UIDs).

    Returns the Study Instance UID. For tests about transport and failures, not about the model:
    a part of the CT keeps their runtime small.
    """
    folder.mkdir(parents=True, exist_ok=True)
    study = generate_uid()
    by_number = sorted(loaded.files, key=lambda p: int(pydicom.dcmread(p, stop_before_pixels=True).InstanceNumber))
    middle = len(by_number) // 2 - slices // 2
    for number in range(series):
        series_uid = generate_uid()
        for path in by_number[middle:middle + slices]:  # contiguous slices through the middle of the head
            dataset = pydicom.dcmread(path)
            dataset.StudyInstanceUID, dataset.SeriesInstanceUID = study, series_uid
            dataset.SOPInstanceUID = generate_uid()
            dataset.file_meta.MediaStorageSOPInstanceUID = dataset.SOPInstanceUID
            target = folder / f"{number}_{path.name}"
            dataset.save_as(target, enforce_file_format=True)
            assert loaded.server.upload(target).status_code == 200
    return study


def test_fetch_by_study_gets_every_series_into_its_own_folder(running, tmp_path):
    study = small_study(running, tmp_path / "upload", slices=4, series=2)
    dest = fetch_input(running.url(f"study={study}"), tmp_path / "in")
    folders = sorted(p for p in dest.iterdir() if p.is_dir())
    assert len(folders) == 2 and [len(list(f.glob("*.dcm"))) for f in folders] == [4, 4]
    for folder in folders:
        assert {str(pydicom.dcmread(p, stop_before_pixels=True).SeriesInstanceUID) for p in folder.glob("*.dcm")} \
            == {folder.name}


def test_orthanc_killed_during_fetch_leaves_only_whole_files_and_a_clear_error(running, tmp_path):
    """Kill Orthanc after 10 of 140 instances: one line naming the server, no partial file; the next fetch completes."""
    dest = tmp_path / "in"

    def kill_after_ten(done: int, total: int) -> None:
        if done == 10:
            running.server.kill()

    with pytest.raises(MedhubError) as caught:
        fetch_input(running.url(f"series={running.series}"), dest, progress=kill_after_ten)
    message = str(caught.value)
    # Orthanc streams with "Connection: close": only the missing closing boundary shows the cut
    where = f"http://127.0.0.1:{running.server.port}/dicom-web"
    assert message.startswith(f"cannot reach DICOMweb server at {where}"), message
    assert "\n" not in message and orthanc.PASSWORD not in message
    assert not [p for p in dest.rglob("*") if p.name.startswith(".")], "partial file left behind"
    partial = sorted(dest.rglob("*.dcm"))
    assert 10 <= len(partial) < 140
    for path in partial:  # every file that is there is whole
        assert pydicom.dcmread(path).pixel_array.shape == (512, 512)
    running.server.start()
    assert set(sop_uids_in(fetch_input(running.url(f"series={running.series}"), dest))) == running.sop_uids


def test_fetch_errors_are_one_line_and_never_show_the_password(running, tmp_path):
    cases = {
        "authentication failed": running.url(f"study={running.study}", password="wrong-password"),
        "no series found for study=1.2.3.999": running.url("study=1.2.3.999"),
        "no series found for series=1.2.3.998": running.url("series=1.2.3.998"),
        "needs ?study=UID or ?series=UID": running.url(),
        f"cannot reach DICOMweb server at http://127.0.0.1:{orthanc.free_port()}/dicom-web: Connection refused":
            f"dicomweb://u:topsecret@127.0.0.1:{{port}}/dicom-web?study={running.study}",
    }
    for expected, url in cases.items():
        if "{port}" in url:
            url = url.format(port=expected.split("127.0.0.1:")[1].split("/")[0])
        with pytest.raises(MedhubError) as caught:
            fetch_input(url, tmp_path / "in")
        message = str(caught.value)
        assert expected in message and "\n" not in message
        assert "wrong-password" not in message and orthanc.PASSWORD not in message and "topsecret" not in message
    assert not list((tmp_path / "in").rglob("*.dcm"))


def test_missing_credentials_name_the_environment_variables(running, tmp_path, monkeypatch):
    for name in (TOKEN_ENV, USER_ENV, "MEDHUB_DICOMWEB_PASSWORD"):
        monkeypatch.delenv(name, raising=False)
    url = f"dicomweb://127.0.0.1:{running.server.port}/dicom-web?study={running.study}"
    with pytest.raises(MedhubError, match=r"authentication failed .*HTTP 401.*MEDHUB_DICOMWEB_TOKEN"):
        fetch_input(url, tmp_path)
    monkeypatch.setenv(USER_ENV, orthanc.USER)
    monkeypatch.setenv("MEDHUB_DICOMWEB_PASSWORD", orthanc.PASSWORD)
    assert set(sop_uids_in(fetch_input(url, tmp_path / "env"))) == running.sop_uids


def test_bearer_token_from_environment(tmp_path, monkeypatch):
    """A second Orthanc whose Lua filter admits only ``Authorization: Bearer <token>`` (5 real slices)."""
    reason = orthanc.missing_reason()
    if reason:
        pytest.skip(reason)
    token = "tok-" + generate_uid().split(".")[-1]
    lua = ("function IncomingHttpRequestFilter(method, uri, ip, username, httpHeaders)\n"
           f"  return httpHeaders['authorization'] == 'Bearer {token}'\nend\n")
    files = sorted(shared_path(PHILIPS).iterdir())[:5]
    with orthanc.OrthancServer(tmp_path / "orthanc", authentication=False, lua=lua,
                               headers={"Authorization": f"Bearer {token}"}) as server:
        for path in files:
            assert server.upload(path).status_code == 200
        study = str(pydicom.dcmread(files[0], stop_before_pixels=True).StudyInstanceUID)
        url = f"dicomweb://127.0.0.1:{server.port}/dicom-web?study={study}"
        monkeypatch.delenv(USER_ENV, raising=False)
        monkeypatch.setenv(TOKEN_ENV, token)
        assert len(sop_uids_in(fetch_input(url, tmp_path / "ok"))) == 5
        monkeypatch.setenv(TOKEN_ENV, "not-the-token")
        with pytest.raises(MedhubError, match=r"authentication failed .*HTTP 403.*bearer token") as caught:
            fetch_input(url, tmp_path / "refused")
        assert "not-the-token" not in str(caught.value) and token not in str(caught.value)


def test_ct_without_uids_orthanc_refuses_and_push_names_the_file(running, tmp_path):
    """The TotalSegmentator CT has empty Study/Series/SOP UIDs: Orthanc refuses it, push_outputs says why per file."""
    path = sorted(shared_path(NO_UID_CT).iterdir())[0]
    before = running.server.instance_count()
    reply = running.server.upload(path)
    assert reply.status_code == 400 and "missing StudyInstanceUID" in reply.json()["Details"]
    with pytest.raises(MedhubError) as caught:
        push_outputs([path], running.url())
    message = str(caught.value)
    assert message.startswith(f"cannot push {path}: empty StudyInstanceUID, SeriesInstanceUID, SOPInstanceUID")
    assert "nothing pushed" in message
    assert running.server.instance_count() == before


# -- push ---------------------------------------------------------------------------------------
@pytest.fixture(scope="session")
def ct_results(loaded: LoadedOrthanc, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """A SEG and an RTSTRUCT on the CT fetched from Orthanc, from our writers (about 4 s).

    The label map is a 100x100x10 box of BODY: these push tests are about transport and
    references, not accuracy (the CLI round trip below runs the real ct-body model).
    """
    from medhub.data.geometry import labels_to_source
    from medhub.inputs.load import load_series
    from medhub.inputs.scan import scan
    from medhub.segdb import get_segment
    from medhub.writers.provenance import AlgorithmInfo
    from medhub.writers.rtstruct import write_rtstruct
    from medhub.writers.seg import write_seg

    root = tmp_path_factory.mktemp("results")
    if not loaded.server.running:
        loaded.server.start()
    (series,) = scan(fetch_input(loaded.url(f"series={loaded.series}"), root / "in")).series
    volume = load_series(series)
    labels = np.zeros(volume.array.shape, dtype=np.uint8)
    labels[200:300, 200:300, 60:70] = 1
    on_source = labels_to_source(volume, labels)
    segments = {1: get_segment("BODY")}
    seg = write_seg(on_source, volume.source, segments, AlgorithmInfo(name="medhub-test", version="0"),
                    root / "box.seg.dcm")
    rtstruct = write_rtstruct(on_source, volume.source, segments, model_name="medhub-test", model_version="0",
                              path=root / "box.rtstruct.dcm")
    return seg, rtstruct


def fresh_copies(files: tuple[Path, ...], folder: Path) -> list[Path]:
    """Copies with new SOP Instance UIDs: objects the server has not seen, to tell what a push stored."""
    folder.mkdir(parents=True, exist_ok=True)
    copies = []
    for path in files:
        dataset = pydicom.dcmread(path)
        dataset.SOPInstanceUID = generate_uid()
        dataset.file_meta.MediaStorageSOPInstanceUID = dataset.SOPInstanceUID
        target = folder / path.name
        dataset.save_as(target, enforce_file_format=True)
        copies.append(target)
    return copies


def stored_sop_uids(loaded: LoadedOrthanc, modality: str, study: str | None = None) -> set[str]:
    """SOP Instance UIDs of one modality in the CT's study (or ``study``), asked through QIDO-RS."""
    client = parse_dicomweb_url(loaded.url()).client()
    study = study or loaded.study
    found = client.search_for_series(study_instance_uid=study, search_filters={"Modality": modality})
    uids: set[str] = set()
    for series in found:
        instances = client.search_for_instances(study_instance_uid=study,
                                                series_instance_uid=series["0020000E"]["Value"][0])
        uids |= {item["00080018"]["Value"][0] for item in instances}
    return uids


def download(loaded: LoadedOrthanc, sop_uid: str, path: Path, study: str | None = None) -> pydicom.Dataset:
    """WADO-RS one instance of the CT's study (or ``study``) into ``path`` (to validate what the server holds)."""
    client = parse_dicomweb_url(loaded.url()).client()
    study = study or loaded.study
    for series in client.search_for_series(study_instance_uid=study):
        series_uid = series["0020000E"]["Value"][0]
        uids = {i["00080018"]["Value"][0] for i in client.search_for_instances(
            study_instance_uid=study, series_instance_uid=series_uid)}
        if sop_uid in uids:
            dataset = client.retrieve_instance(study, series_uid, sop_uid,
                                               media_types=(("application/dicom", "*"),))
            dataset.save_as(path, enforce_file_format=True)
            return dataset
    raise AssertionError(f"{sop_uid} not on the server")


def test_push_stores_seg_and_rtstruct_that_reference_the_ct(running, ct_results, tmp_path, assert_valid_dicom):
    seg_path, rt_path = fresh_copies(ct_results, tmp_path / "push")
    pushed: list[str] = []
    stored = push_outputs([seg_path, rt_path], running.url(), progress=lambda p, uid: pushed.append(p.name))
    seg_uid, rt_uid = (str(pydicom.dcmread(p, stop_before_pixels=True).SOPInstanceUID) for p in (seg_path, rt_path))
    assert stored == [seg_uid, rt_uid] and pushed == [seg_path.name, rt_path.name]
    assert seg_uid in stored_sop_uids(running, "SEG")
    assert rt_uid in stored_sop_uids(running, "RTSTRUCT")
    seg = download(running, seg_uid, tmp_path / "stored.seg.dcm")
    assert seg.SOPClassUID == SEG_STORAGE and seg.StudyInstanceUID == running.study
    assert [r.SeriesInstanceUID for r in seg.ReferencedSeriesSequence] == [running.series]
    assert {i.ReferencedSOPInstanceUID for r in seg.ReferencedSeriesSequence
            for i in r.ReferencedInstanceSequence} <= running.sop_uids
    assert_valid_dicom(tmp_path / "stored.seg.dcm")


def test_push_to_the_study_url_and_to_a_stopped_server(running, ct_results, tmp_path):
    """With the server down nothing is stored and the message says so; a study= in the URL is honoured."""
    seg_path, rt_path = fresh_copies(ct_results, tmp_path / "push")
    before = running.server.instance_count()
    running.server.kill()
    with pytest.raises(MedhubError) as caught:
        push_outputs([seg_path, rt_path], running.url(f"study={running.study}"))
    message = str(caught.value)
    assert message.startswith(f"pushed 0 of 2: cannot reach DICOMweb server at http://127.0.0.1:{running.server.port}"
                              "/dicom-web: Connection refused")
    assert "Connection refused" in message and seg_path.name in message and rt_path.name in message
    assert orthanc.PASSWORD not in message and "\n" not in message
    running.server.start()
    assert running.server.instance_count() == before
    assert len(push_outputs([seg_path, rt_path], running.url(f"study={running.study}"))) == 2
    assert running.server.instance_count() == before + 2


def test_push_reports_exactly_what_was_stored_when_the_server_dies_midway(running, ct_results, tmp_path):
    seg_path, rt_path = fresh_copies(ct_results, tmp_path / "push")
    seg_uid, rt_uid = (str(pydicom.dcmread(p, stop_before_pixels=True).SOPInstanceUID) for p in (seg_path, rt_path))

    def die_after_first(path: Path, uid: str) -> None:
        running.server.kill()

    with pytest.raises(MedhubError) as caught:
        push_outputs([seg_path, rt_path], running.url(), progress=die_after_first)
    assert str(caught.value).startswith(
        f"pushed 1 of 2: stored {seg_path.name}; not stored {rt_path.name}: cannot reach DICOMweb server at "
        f"http://127.0.0.1:{running.server.port}/dicom-web")
    running.server.start()
    assert seg_uid in stored_sop_uids(running, "SEG")
    assert rt_uid not in stored_sop_uids(running, "RTSTRUCT")


def test_push_with_a_wrong_password_stores_nothing(running, ct_results, tmp_path):
    (seg_path,) = fresh_copies(ct_results[:1], tmp_path / "push")
    before = running.server.instance_count()
    with pytest.raises(MedhubError) as caught:
        push_outputs([seg_path], running.url(password="wrong-password"))
    message = str(caught.value)
    assert message.startswith("pushed 0 of 1: authentication failed at DICOMweb server")
    assert "wrong-password" not in message
    assert running.server.instance_count() == before


def test_push_to_another_study_is_refused_by_the_server_with_its_reason(running, ct_results, tmp_path):
    """study= in the push URL lets the server check the objects belong there; Orthanc answers 409."""
    (seg_path,) = fresh_copies(ct_results[:1], tmp_path / "push")
    before = running.server.instance_count()
    with pytest.raises(MedhubError) as caught:
        push_outputs([seg_path], running.url("study=1.2.3.4"))
    assert str(caught.value).startswith(f"pushed 0 of 1: stored nothing; not stored {seg_path.name}: DICOMweb server ")
    assert "HTTP 409" in str(caught.value) and "STOW failure reason 0x" in str(caught.value)
    assert running.server.instance_count() == before


def test_push_refuses_a_non_dicom_file_before_storing_anything(running, ct_results, tmp_path):
    (seg_path,) = fresh_copies(ct_results[:1], tmp_path / "push")
    junk = tmp_path / "notes.dcm"
    junk.write_text("not DICOM")
    before = running.server.instance_count()
    with pytest.raises(MedhubError, match=r"cannot push .*notes\.dcm: not a readable DICOM file .*nothing pushed"):
        push_outputs([seg_path, junk], running.url())
    assert running.server.instance_count() == before


# -- the whole round trip through the command line ------------------------------------------------
def medhub_env(loaded: LoadedOrthanc) -> dict[str, str]:
    """Credentials through the environment, as a service account would pass them (not on the command line)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("MEDHUB_DICOMWEB_")}
    env.update({USER_ENV: orthanc.USER, "MEDHUB_DICOMWEB_PASSWORD": orthanc.PASSWORD})
    return env


@pytest.mark.slow
def test_cli_round_trip_pulls_ct_and_pushes_seg(running, tmp_path, assert_valid_dicom):
    """medhub run ct-body --input dicomweb://...?study= --push dicomweb://...: the SEG lands in the CT's study.

    On 30 real slices (a new study): the transport is what is tested; the 140-slice run took 85 s of CI.
    """
    study = small_study(running, tmp_path / "small")
    series = str(pydicom.dcmread(next((tmp_path / "small").iterdir()), stop_before_pixels=True).SeriesInstanceUID)
    base = f"dicomweb://127.0.0.1:{running.server.port}/dicom-web"
    before = stored_sop_uids(running, "SEG", study)
    proc = subprocess.run([sys.executable, "-m", "medhub", "run", "ct-body", "--input", f"{base}?study={study}",
                           "--output", str(tmp_path / "out"), "--push", base],
                          capture_output=True, text=True, timeout=600, check=False, env=medhub_env(running))
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert orthanc.PASSWORD not in proc.stdout + proc.stderr
    (seg_path,) = (tmp_path / "out").rglob("*.seg.dcm")
    seg_uid = str(pydicom.dcmread(seg_path, stop_before_pixels=True).SOPInstanceUID)
    assert stored_sop_uids(running, "SEG", study) - before == {seg_uid}
    stored = download(running, seg_uid, tmp_path / "stored.seg.dcm", study)
    assert [r.SeriesInstanceUID for r in stored.ReferencedSeriesSequence] == [series]
    assert_valid_dicom(tmp_path / "stored.seg.dcm")


@pytest.mark.slow
def test_cli_orthanc_killed_after_fetch_gives_clear_error_and_no_push(running, tmp_path):
    """Orthanc killed once the input is fetched (scan done), before the push: one line, exit 1 or 2, nothing stored."""
    study = small_study(running, tmp_path / "small")
    base = f"dicomweb://127.0.0.1:{running.server.port}/dicom-web"
    before = running.server.instance_count()
    process = subprocess.Popen([sys.executable, "-m", "medhub", "run", "ct-body", "--json-progress",
                                "--input", f"{base}?study={study}", "--output", str(tmp_path / "out"),
                                "--push", base],
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=medhub_env(running))
    killed = False
    assert process.stdout is not None and process.stderr is not None
    for line in process.stdout:
        try:
            event = json.loads(line)
        except ValueError:
            continue
        if not killed and event.get("event") in ("scan_done", "selected", "series_start"):
            running.server.kill()
            killed = True
    stderr = process.stderr.read()
    code = process.wait(timeout=600)
    assert killed, f"no scan_done event seen; stderr: {stderr}"
    assert code in (1, 2), stderr
    assert list((tmp_path / "out").rglob("*.seg.dcm")), "the SEG must still be written locally"
    lines = [line for line in stderr.splitlines() if "cannot reach DICOMweb server" in line]
    assert lines and "pushed 0 of 1" in lines[0], stderr
    assert orthanc.PASSWORD not in stderr
    running.server.start()
    assert running.server.instance_count() == before
