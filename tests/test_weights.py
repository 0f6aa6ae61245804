"""The weights manager against a real local HTTP server (Range, cut connections) and real weights."""

from __future__ import annotations

import hashlib
import os
import re
import subprocess
import sys
import threading
import time
import urllib.parse
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
from conftest import shared_path
from pydantic import ValidationError

from medhub.errors import MedhubError
from medhub.hub import weights
from medhub.hub.weights import WeightFile, ensure_weights, is_cached, weights_cache_dir

UNREACHABLE = "http://127.0.0.1:9/weights"  # the discard port: connection refused at once
MODEL = "toy-model"


def payload(size: int = 300_000, seed: int = 1) -> bytes:
    """Deterministic non-repeating bytes, so a wrongly spliced resume changes the hash."""
    out = bytearray()
    block = seed.to_bytes(4, "big")
    while len(out) < size:
        block = hashlib.sha256(block).digest()
        out += block
    return bytes(out[:size])


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


@dataclass
class ServerState:
    """What the test server serves and what it saw; tests change the knobs between calls."""

    files: dict[str, bytes] = field(default_factory=dict)
    requests: list[dict[str, str | None]] = field(default_factory=list)
    ignore_range: bool = False
    cut_after: int | None = None  # send only this many body bytes, then close the connection
    cuts_left: int = 0  # how many responses get cut
    delay: float = 0.0  # seconds between 16 KB blocks (to make a transfer last)
    base: str = ""


def make_handler(state: ServerState) -> type[BaseHTTPRequestHandler]:
    class RangeHandler(BaseHTTPRequestHandler):
        """Serves ``state.files``; honours ``Range: bytes=N-`` unless told to ignore it."""

        def log_message(self, *args: object) -> None:
            pass

        def do_GET(self) -> None:  # noqa: N802 (http.server's naming)
            state.requests.append({"path": self.path, "range": self.headers.get("Range")})
            body = state.files.get(urllib.parse.unquote(self.path))
            if body is None:
                self.send_response(404)
                self.send_header("Content-Length", "0")
                self.end_headers()
                return
            start = 0
            match = re.fullmatch(r"bytes=(\d+)-", self.headers.get("Range") or "")
            if match and not state.ignore_range:
                start = int(match.group(1))
                if start >= len(body):
                    self.send_response(416)
                    self.send_header("Content-Range", f"bytes */{len(body)}")
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return
                self.send_response(206)
                self.send_header("Content-Range", f"bytes {start}-{len(body) - 1}/{len(body)}")
            else:
                self.send_response(200)
            data = body[start:]
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            if state.cut_after is not None and state.cuts_left > 0:
                state.cuts_left -= 1
                data = data[: state.cut_after]  # HTTP/1.0: returning closes the connection early
            for offset in range(0, len(data), 16384):
                self.wfile.write(data[offset : offset + 16384])
                if state.delay:
                    time.sleep(state.delay)

    return RangeHandler


@pytest.fixture
def server():
    state = ServerState()
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), make_handler(state))
    httpd.daemon_threads = True
    thread = threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    state.base = f"http://127.0.0.1:{httpd.server_address[1]}"
    yield state
    httpd.shutdown()
    httpd.server_close()


@pytest.fixture
def cache(tmp_path, monkeypatch) -> Path:
    root = tmp_path / "cache"
    monkeypatch.setenv("MEDHUB_WEIGHTS_CACHE", str(root))
    monkeypatch.delenv("MEDHUB_WEIGHTS_MIRROR", raising=False)
    return root


def served(state: ServerState, name: str, data: bytes, *, sha256: str | None = None) -> WeightFile:
    state.files[f"/files/{name}"] = data
    return WeightFile(name=name, url=f"{state.base}/files/{name}", sha256=sha256 or sha(data), size=len(data))


def leftovers(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.rglob("*") if p.is_file()) if folder.exists() else []


# --------------------------------------------------------------------------- downloads


def test_fresh_download_is_verified_and_stored_under_model_and_name(server, cache):
    data = payload()
    file = served(server, "sub/model.bin", data)
    paths = ensure_weights(MODEL, [file])
    assert paths == {"sub/model.bin": cache / MODEL / "sub" / "model.bin"}
    assert paths["sub/model.bin"].read_bytes() == data
    assert leftovers(cache) == ["model.bin", "model.bin.sha256"]  # no .part, no .lock
    assert len(server.requests) == 1 and server.requests[0]["range"] is None
    assert is_cached(MODEL, file)


def test_cache_hit_makes_no_request_and_does_not_rehash(server, cache, monkeypatch):
    file = served(server, "model.bin", payload())
    ensure_weights(MODEL, [file])
    assert len(server.requests) == 1

    def no_hashing(path):
        raise AssertionError(f"re-hashed {path} although the sidecar matches")

    monkeypatch.setattr(weights, "sha256_file", no_hashing)
    assert ensure_weights(MODEL, [file])["model.bin"].read_bytes() == server.files["/files/model.bin"]
    assert len(server.requests) == 1


def test_tampered_cache_file_is_replaced(server, cache):
    data = payload()
    file = served(server, "model.bin", data)
    path = ensure_weights(MODEL, [file])["model.bin"]
    path.write_bytes(b"x" * len(data))  # same size, new mtime: the sidecar no longer vouches for it
    os.utime(path, ns=(1, 1))
    assert ensure_weights(MODEL, [file])["model.bin"].read_bytes() == data
    assert len(server.requests) == 2


def test_corrupted_file_on_server_gives_clear_error_and_leaves_nothing(server, cache):
    data = payload()
    expected = sha(b"the real weights")
    file = served(server, "model.bin", data, sha256=expected)
    with pytest.raises(MedhubError) as raised:
        ensure_weights(MODEL, [file])
    message = str(raised.value)
    assert "\n" not in message
    assert "model.bin" in message and expected in message and sha(data) in message
    assert leftovers(cache) == []


def test_interrupted_transfer_resumes_with_range_in_the_same_call(server, cache):
    data = payload()
    file = served(server, "model.bin", data)
    server.cut_after, server.cuts_left = 100_000, 1
    assert ensure_weights(MODEL, [file])["model.bin"].read_bytes() == data
    assert [r["range"] for r in server.requests] == [None, "bytes=100000-"]


def test_interrupted_run_keeps_part_and_next_run_resumes(server, cache, monkeypatch):
    data = payload()
    file = served(server, "model.bin", data)
    monkeypatch.setattr(weights, "MAX_ATTEMPTS", 1)
    server.cut_after, server.cuts_left = 120_000, 1
    with pytest.raises(MedhubError, match=r"interrupted after 120000 of 300000 bytes"):
        ensure_weights(MODEL, [file])
    part = cache / MODEL / "model.bin.part"
    assert part.stat().st_size == 120_000
    assert not (cache / MODEL / "model.bin").exists()

    assert ensure_weights(MODEL, [file])["model.bin"].read_bytes() == data
    assert server.requests[-1]["range"] == "bytes=120000-"
    assert not part.exists()


def test_server_ignoring_range_restarts_the_file(server, cache):
    data = payload()
    file = served(server, "model.bin", data)
    server.ignore_range = True
    (cache / MODEL).mkdir(parents=True)
    (cache / MODEL / "model.bin.part").write_bytes(data[:50_000])
    assert ensure_weights(MODEL, [file])["model.bin"].read_bytes() == data
    assert [r["range"] for r in server.requests] == ["bytes=50000-"]  # answered 200: whole file, not appended


def test_stale_part_from_another_version_is_refetched_in_full(server, cache):
    data = payload()
    file = served(server, "model.bin", data)
    (cache / MODEL).mkdir(parents=True)
    (cache / MODEL / "model.bin.part").write_bytes(payload(40_000, seed=7))  # not a prefix of this file
    assert ensure_weights(MODEL, [file])["model.bin"].read_bytes() == data
    assert [r["range"] for r in server.requests] == ["bytes=40000-", None]


def test_progress_callback_sees_every_byte(server, cache):
    data = payload()
    file = served(server, "model.bin", data)
    calls: list[tuple[str, int, int | None]] = []
    ensure_weights(MODEL, [file], progress=lambda name, done, total: calls.append((name, done, total)))
    assert calls and calls[-1] == ("model.bin", len(data), len(data))
    assert [done for _, done, _ in calls] == sorted(done for _, done, _ in calls)


def test_rich_progress_bar_runs(server, cache, capsys):
    file = served(server, "model.bin", payload())
    assert ensure_weights(MODEL, [file], progress=True)["model.bin"].exists()
    assert "model.bin" in capsys.readouterr().err


# --------------------------------------------------------------------------- mirror and local sources


@pytest.mark.parametrize("layout", ["{model}/{name}", "{name}", "{base}"])
def test_mirror_folder(tmp_path, cache, monkeypatch, layout):
    data = payload(5000)
    name = "net/weights.pth"
    rel = layout.format(model=MODEL, name=name, base="weights.pth")
    mirror = tmp_path / "mirror"
    (mirror / rel).parent.mkdir(parents=True)
    (mirror / rel).write_bytes(data)
    monkeypatch.setenv("MEDHUB_WEIGHTS_MIRROR", str(mirror))
    file = WeightFile(name=name, url=f"{UNREACHABLE}/weights.pth", sha256=sha(data))
    path = ensure_weights(MODEL, [file])[name]
    assert path == cache / MODEL / "net" / "weights.pth" and path.read_bytes() == data


def test_mirror_url(server, cache, monkeypatch):
    data = payload()
    server.files[f"/mirror/{MODEL}/model.bin"] = data
    monkeypatch.setenv("MEDHUB_WEIGHTS_MIRROR", f"{server.base}/mirror/")
    file = WeightFile(name="model.bin", url=f"{UNREACHABLE}/model.bin", sha256=sha(data))
    assert ensure_weights(MODEL, [file], offline=True)["model.bin"].read_bytes() == data
    assert [r["path"] for r in server.requests] == [f"/mirror/{MODEL}/model.bin"]


def test_corrupt_mirror_copy_falls_back_to_url(server, tmp_path, cache, monkeypatch):
    data = payload()
    file = served(server, "model.bin", data)
    mirror = tmp_path / "mirror"
    mirror.mkdir()
    (mirror / "model.bin").write_bytes(b"not the weights")
    monkeypatch.setenv("MEDHUB_WEIGHTS_MIRROR", str(mirror))
    assert ensure_weights(MODEL, [file])["model.bin"].read_bytes() == data
    assert len(server.requests) == 1


@pytest.mark.parametrize("as_uri", [True, False])
def test_local_source_url(tmp_path, cache, as_uri):
    data = payload(7000)
    source = tmp_path / "wheel" / "data" / "model.pt"
    source.parent.mkdir(parents=True)
    source.write_bytes(data)
    file = WeightFile(name="model.pt", url=source.as_uri() if as_uri else str(source), sha256=sha(data))
    assert ensure_weights(MODEL, [file], offline=True)["model.pt"].read_bytes() == data


# --------------------------------------------------------------------------- failures


def test_missing_everywhere_without_mirror(cache):
    file = WeightFile(name="model.bin", url=f"{UNREACHABLE}/model.bin", sha256="0" * 64)
    with pytest.raises(MedhubError) as raised:
        ensure_weights(MODEL, [file])
    message = str(raised.value)
    assert "\n" not in message
    assert message.startswith(f"weights for {MODEL}: model.bin not found: tried {UNREACHABLE}/model.bin (")
    assert "MEDHUB_WEIGHTS_MIRROR=unset" in message
    assert message.endswith(f"put it in {cache / MODEL / 'model.bin'}")
    assert leftovers(cache) == []


def test_missing_everywhere_with_mirrors(server, tmp_path, cache, monkeypatch):
    file = WeightFile(name="model.bin", url=f"{server.base}/files/model.bin", sha256="0" * 64)
    mirror = tmp_path / "mirror"
    monkeypatch.setenv("MEDHUB_WEIGHTS_MIRROR", str(mirror))
    with pytest.raises(MedhubError) as raised:
        ensure_weights(MODEL, [file])
    message = str(raised.value)
    assert f"tried {file.url} (HTTP 404 " in message
    assert f"MEDHUB_WEIGHTS_MIRROR={mirror} (no such file)" in message
    assert message.endswith(f"put it in {mirror / MODEL / 'model.bin'}")

    monkeypatch.setenv("MEDHUB_WEIGHTS_MIRROR", f"{server.base}/mirror")
    with pytest.raises(MedhubError, match=rf"MEDHUB_WEIGHTS_MIRROR={server.base}/mirror \(HTTP 404"):
        ensure_weights(MODEL, [file])


def test_offline_makes_no_request(server, cache):
    file = served(server, "model.bin", payload())
    with pytest.raises(MedhubError, match=r"model\.bin not found: tried .* \(offline\)"):
        ensure_weights(MODEL, [file], offline=True)
    assert server.requests == []


@pytest.mark.parametrize("name", ["../escape.bin", "/abs/model.bin", "a//b", "a\\b", ""])
def test_weight_file_name_cannot_escape_cache(name):
    with pytest.raises(ValidationError):
        WeightFile(name=name, url=UNREACHABLE, sha256="0" * 64)


def test_cache_dir_precedence(tmp_path, monkeypatch):
    monkeypatch.setenv("MEDHUB_WEIGHTS_CACHE", str(tmp_path / "explicit"))
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert weights_cache_dir() == tmp_path / "explicit"
    monkeypatch.delenv("MEDHUB_WEIGHTS_CACHE")
    assert weights_cache_dir() == tmp_path / "xdg" / "medhub" / "weights"
    monkeypatch.delenv("XDG_CACHE_HOME")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert weights_cache_dir() == tmp_path / "home" / ".cache" / "medhub" / "weights"


# --------------------------------------------------------------------------- concurrency


def test_two_processes_pulling_the_same_file(server, cache):
    data = payload(400_000)
    file = served(server, "model.bin", data)
    server.delay = 0.03  # about 0.75 s per transfer, so the two pulls overlap
    script = (
        "import sys; from medhub.hub.weights import WeightFile, ensure_weights; "
        "f = WeightFile.model_validate_json(sys.argv[1]); print(ensure_weights('toy-model', [f])['model.bin'])"
    )
    env = {**os.environ, "MEDHUB_WEIGHTS_CACHE": str(cache)}
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", script, file.model_dump_json()], env=env, stdout=subprocess.PIPE, text=True
        )
        for _ in range(2)
    ]
    outputs = [proc.communicate(timeout=60)[0].strip() for proc in procs]
    assert [proc.returncode for proc in procs] == [0, 0]
    assert outputs == [str(cache / MODEL / "model.bin")] * 2
    assert (cache / MODEL / "model.bin").read_bytes() == data
    assert len(server.requests) == 1  # the second process waited on the lock, then found the file
    assert leftovers(cache) == ["model.bin", "model.bin.sha256"]


# --------------------------------------------------------------------------- real weights


def real_files(folder: Path, prefix: str = "") -> list[WeightFile]:
    return [
        WeightFile(name=prefix + p.name, url=f"{UNREACHABLE}/{prefix}{p.name}", sha256=weights.sha256_file(p),
                   size=p.stat().st_size)
        for p in sorted(folder.iterdir())
        if p.is_file()
    ]


def test_real_brainchop_weights_from_mirror_folder(cache, monkeypatch):
    mirror = shared_path("weights/brainchop")
    monkeypatch.setenv("MEDHUB_WEIGHTS_MIRROR", str(mirror))
    # <mirror>/<model_id>/<name>: one model per folder
    files = real_files(mirror / "model5_gw_ae")
    assert {f.name for f in files} == {"colormap.json", "model.json", "model.pth"}
    paths = ensure_weights("model5_gw_ae", files, offline=True)
    for f in files:
        assert paths[f.name].read_bytes() == (mirror / "model5_gw_ae" / f.name).read_bytes()
    # <mirror>/<name> with a subfolder in the name: all brainchop models under one model id
    files = real_files(mirror / "model18cls", "model18cls/") + real_files(mirror / "mindgrab", "mindgrab/")
    paths = ensure_weights("brainchop", files)
    assert paths["mindgrab/model.pth"] == cache / "brainchop" / "mindgrab" / "model.pth"
    assert paths["mindgrab/model.pth"].stat().st_size == 595371
    assert all(is_cached("brainchop", f) for f in files)
