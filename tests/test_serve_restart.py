"""A restart loses no job: kill ``medhub serve`` (SIGKILL) mid-job, start it again on the same data folder.

The job that was running is queued again and completes on its second attempt (its notes say it
was interrupted); the job that was still queued runs too. The interrupted job is a 70-slice
crop of the real Philips head CT with ct-body, so its predict step lasts seconds: long enough
to be killed inside it. Failing a job after repeated interruptions is covered in test_serve_api.
"""

from __future__ import annotations

import io
import os
import signal
import socket
import subprocess
import sys
import time
import zipfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pydicom
import pytest
from conftest import shared_path

TOKEN = "restart-token"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
PHILIPS = "ct/philips_phantom_head_1mm"
NO_UID_CT = "ct/totalsegmentator_example_ct_dicom"
SERVE = "from medhub.cli.main import app; import medhub.cli.serve; app(prog_name='medhub')"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class ServerProcess:
    """``medhub serve`` as a separate process, as an operator runs it."""

    def __init__(self, data_dir: Path, log: Path) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log = log.open("ab")
        self.process = subprocess.Popen(
            [sys.executable, "-c", SERVE, "serve", "--data-dir", str(data_dir), "--port", str(self.port),
             "--token", TOKEN, "--workers", "1"],
            stdout=self.log, stderr=subprocess.STDOUT, env={**os.environ, "PYTHONUNBUFFERED": "1"})
        deadline = time.monotonic() + 60
        while True:
            assert self.process.poll() is None, f"server exited: see {log}"
            try:
                if httpx.get(f"{self.url}/openapi.json", timeout=2).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert time.monotonic() < deadline, f"server did not start: see {log}"
            time.sleep(0.2)

    def kill(self) -> None:
        self.process.send_signal(signal.SIGKILL)
        self.process.wait(30)
        self.log.close()

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(30)
            except subprocess.TimeoutExpired:
                self.process.kill()
        self.log.close()


def zip_bytes(files: list[Path]) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", compression=zipfile.ZIP_STORED) as archive:
        for path in files:
            archive.write(path, path.name)
    return buffer.getvalue()


def philips_crop(count: int) -> list[Path]:
    files = [p for p in shared_path(PHILIPS).iterdir() if p.is_file()]
    files.sort(key=lambda p: float(pydicom.dcmread(p, stop_before_pixels=True).ImagePositionPatient[2]))
    start = (len(files) - count) // 2
    return files[start:start + count]


@pytest.fixture
def servers(tmp_path: Path) -> Iterator[list[ServerProcess]]:
    started: list[ServerProcess] = []
    yield started
    for server in started:
        if server.process.poll() is None:
            server.stop()


def get_job(server: ServerProcess, job_id: str) -> dict[str, Any]:
    response = httpx.get(f"{server.url}/api/jobs/{job_id}", headers=AUTH, timeout=30)
    assert response.status_code == 200, response.text
    return response.json()


def test_killed_server_resumes_its_jobs_after_a_restart(tmp_path: Path, servers: list[ServerProcess]) -> None:
    data = tmp_path / "data"
    log = tmp_path / "serve.log"
    first = ServerProcess(data, log)
    servers.append(first)
    long_job = httpx.post(f"{first.url}/api/jobs", headers=AUTH, timeout=120, data={"model": "ct-body"},
                          files=[("files", ("philips.zip", zip_bytes(philips_crop(70)), "application/zip"))])
    assert long_job.status_code == 201, long_job.text
    queued_job = httpx.post(f"{first.url}/api/jobs", headers=AUTH, timeout=120, data={"model": "ct-body"},
                            files=[("files", ("ct.zip", zip_bytes(sorted(shared_path(NO_UID_CT).iterdir()))))])
    assert queued_job.status_code == 201, queued_job.text
    long_id, queued_id = long_job.json()["id"], queued_job.json()["id"]

    deadline = time.monotonic() + 300
    while True:  # kill inside the model step of the first job
        job = get_job(first, long_id)
        assert job["status"] in ("queued", "running"), f"finished before it could be killed: {job}"
        if job["status"] == "running" and job["progress"]["step"] == "predict":
            break
        assert time.monotonic() < deadline, f"job never reached predict: {job}"
        time.sleep(0.1)
    first.kill()
    assert get_job_offline_status(data, long_id) == "running"

    second = ServerProcess(data, log)
    servers.append(second)
    deadline = time.monotonic() + 600
    while True:
        jobs = {job_id: get_job(second, job_id) for job_id in (long_id, queued_id)}
        if all(job["status"] in ("succeeded", "failed", "cancelled") for job in jobs.values()):
            break
        assert time.monotonic() < deadline, f"jobs did not finish after the restart: {jobs}"
        time.sleep(0.3)
    second.stop()

    resumed, queued = jobs[long_id], jobs[queued_id]
    assert resumed["status"] == "succeeded", resumed
    assert resumed["attempts"] == 2
    assert any("interrupted by a server restart" in note for note in resumed["notes"]), resumed["notes"]
    assert sorted(item["kind"] for item in resumed["results"]) == ["labels", "nifti", "report", "seg"]
    assert resumed["report"]["series"][0]["status"] == "succeeded"
    assert queued["status"] == "succeeded" and queued["attempts"] == 1 and queued["notes"] == []
    assert not list(data.rglob("*.partial")), "a killed write left a partial file behind"


def get_job_offline_status(data: Path, job_id: str) -> str:
    """The status the dead server left in its SQLite file (read directly: nothing is serving)."""
    import sqlite3

    with sqlite3.connect(data / "jobs.sqlite3") as db:
        return str(db.execute("SELECT status FROM jobs WHERE id = ?", (job_id,)).fetchone()[0])
