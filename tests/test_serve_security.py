"""A real ``medhub serve`` (a subprocess, as a lab runs it) against a zip bomb and a token in the query string.

* 1 GiB of zeros in a 1 MB zip is refused with 413 before a byte is extracted (the server's
  default limits: the unzip limit alone would let it through), and nothing stays on disk;
* the API token, sent as ``?token=`` (documented for server-sent events), never appears in the
  server's log: the access log shows ``token=[redacted]``.
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

import httpx
import pytest

pytest.importorskip("fastapi")
pytest.importorskip("uvicorn")

TOKEN = "s3cret-Token-4711"


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


class RealServer:
    """``python -m medhub serve`` with a token, its stderr (the log) in a file."""

    def __init__(self, folder: Path) -> None:
        self.data = folder / "data"
        self.log = folder / "serve.log"
        self.url = f"http://127.0.0.1:{_free_port()}"
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        port = self.url.rsplit(":", 1)[1]
        with open(self.log, "wb") as log:
            self.process = subprocess.Popen([sys.executable, "-m", "medhub", "serve", "--port", port, "--token", TOKEN,
                                             "--data-dir", str(self.data)], stdout=log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            assert self.process.poll() is None, self.log.read_text()
            try:
                httpx.get(f"{self.url}/openapi.json", timeout=2)
                return
            except httpx.TransportError:
                time.sleep(0.3)
        raise AssertionError(f"medhub serve did not answer in 120 s:\n{self.log.read_text()}")

    def stop(self) -> str:
        """Stop the server as Ctrl-C does and return its whole log."""
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGINT)
            try:
                self.process.wait(30)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(10)
        return self.log.read_text()


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RealServer]:
    running = RealServer(tmp_path_factory.mktemp("serve"))
    running.start()
    try:
        yield running
    finally:
        running.stop()


def _gib_of_zeros_zipped() -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as archive, \
            archive.open("series/IM0001.dcm", "w", force_zip64=True) as member:
        chunk = bytes(16 * 1024 * 1024)
        for _ in range(64):
            member.write(chunk)
    return buffer.getvalue()


def _bytes_under(folder: Path) -> int:
    return sum(path.stat().st_size for path in folder.rglob("*") if path.is_file()) if folder.exists() else 0


def test_a_zip_bomb_is_refused_before_anything_is_extracted(server: RealServer) -> None:
    bomb = _gib_of_zeros_zipped()
    assert len(bomb) < 1_100_000  # 1 GiB of zeros in about 1 MB
    before = _bytes_under(server.data / "jobs")
    response = httpx.post(f"{server.url}/api/jobs", headers={"Authorization": f"Bearer {TOKEN}"},
                          data={"model": "ct-body"}, files=[("files", ("bomb.zip", bomb))], timeout=120)
    assert response.status_code == 413, response.text
    detail = response.json()["detail"]
    assert "zip bomb, nothing extracted" in detail and "1024 MB" in detail and "IM0001.dcm" in detail
    assert _bytes_under(server.data / "jobs") == before  # nothing extracted, nothing kept
    many = io.BytesIO()  # a bomb spread over 2000 entries too small to judge alone: the archive's ratio refuses it
    with zipfile.ZipFile(many, "w", zipfile.ZIP_DEFLATED) as archive:
        for index in range(2000):
            archive.writestr(f"s/IM{index:04d}.dcm", bytes(64 * 1024))
    response = httpx.post(f"{server.url}/api/jobs", headers={"Authorization": f"Bearer {TOKEN}"},
                          data={"model": "ct-body"}, files=[("files", ("many.zip", many.getvalue()))], timeout=120)
    assert response.status_code == 413 and "zip bomb" in response.json()["detail"], response.text
    assert _bytes_under(server.data / "jobs") == before


def test_the_token_in_the_query_string_never_reaches_the_log(server: RealServer) -> None:
    answered = httpx.get(f"{server.url}/api/models", params={"token": TOKEN}, timeout=30)
    assert answered.status_code == 200
    httpx.get(f"{server.url}/api/jobs/nope/events", params={"token": TOKEN, "x": "1"}, timeout=30)
    httpx.get(f"{server.url}/api/jobs", params={"TOKEN": TOKEN}, timeout=30)
    log = server.stop()  # the whole log, flushed
    assert TOKEN not in log, log
    assert '"GET /api/models?token=[redacted] HTTP/1.1" 200' in log, log
    assert "GET /api/jobs/nope/events?token=[redacted]&x=1 HTTP/1.1" in log, log


def test_redaction_covers_other_credential_names() -> None:
    from medhub.serve.redact import redact

    assert redact("/x?access_token=abc&b=2&password=p%20w#f") == "/x?access_token=[redacted]&b=2&password=[redacted]#f"
    assert redact("a secret value inside", ("secret",)) == "a [redacted] value inside"
    assert os.environ.get("MEDHUB_SERVE_TOKEN") != TOKEN  # the test's token is its own
