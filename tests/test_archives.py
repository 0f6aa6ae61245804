"""Archives of DICOM (.zip, .tar, .tar.gz): one set of checks for ``medhub run --input`` and ``medhub serve`` uploads.

Real data: the 20-slice abdominal CT (no UIDs: NIfTI results) packed here with Python's zipfile and
tarfile as a user's tools pack it. Unsafe archives are made entry by entry (``..``, absolute paths,
links, devices); the same archive is refused by the command line and by the server's upload code.
"""

from __future__ import annotations

import io
import json
import os
import shutil
import subprocess
import sys
import tarfile
import zipfile
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from conftest import shared_path

from medhub.inputs.archives import ArchiveError, Budget, archive_kind, extract_archive, unpack
from medhub.serve.uploads import ApiError, Upload, save_uploads

NO_UID_CT = "ct/totalsegmentator_example_ct_dicom"


def medhub(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "medhub", *args], capture_output=True, text=True, timeout=600,
                          check=False, env={**os.environ, **(env or {})})


@pytest.fixture(scope="module")
def archives(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """The real CT as series.zip (in a folder, as `zip -r` of a folder makes it) and as series.tar.gz of `.`."""
    root = tmp_path_factory.mktemp("archives")
    source = shared_path(NO_UID_CT)
    with zipfile.ZipFile(root / "series.zip", "w", zipfile.ZIP_DEFLATED) as archive:
        archive.writestr(zipfile.ZipInfo("ct/"), "")
        for path in sorted(source.iterdir()):
            archive.write(path, f"ct/{path.name}")
    with tarfile.open(root / "series.tar.gz", "w:gz") as archive:
        archive.add(source, arcname=".")  # `tar czf series.tar.gz .`: a "./" entry, then ./FILE
    return {"zip": root / "series.zip", "tar.gz": root / "series.tar.gz"}


@pytest.fixture(scope="module")
def folder_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("folder-run") / "out"
    result = medhub("run", "ct-body", "--input", str(shared_path(NO_UID_CT)), "--output", str(out))
    assert result.returncode == 0, result.stderr
    return out


def _labels(out: Path) -> np.ndarray:
    report = json.loads((out / "medhub-report.json").read_text())
    (entry,) = [e for e in report["series"] if e["status"] == "succeeded"]
    (nifti,) = [o for o in entry["outputs"] if o.endswith(".nii.gz")]
    return np.asarray(nib.load(out / nifti).dataobj)


@pytest.mark.parametrize("kind", ["zip", "tar.gz"])
def test_run_on_an_archive_equals_the_run_on_its_folder(archives, folder_run, tmp_path: Path, kind: str) -> None:
    archive = archives[kind]
    before = archive.read_bytes()
    out, scratch = tmp_path / "out", tmp_path / "tmp"
    scratch.mkdir()
    result = medhub("run", "ct-body", "--input", str(archive), "--output", str(out), "--json-progress",
                    env={"TMPDIR": str(scratch)})
    assert result.returncode == 0, result.stderr
    events = [json.loads(line) for line in result.stdout.splitlines()]
    unpacked = next(e for e in events if e["event"] == "unpacked")
    assert unpacked["files"] == 20
    np.testing.assert_array_equal(_labels(out), _labels(folder_run))
    report = json.loads((out / "medhub-report.json").read_text())
    assert report["input"] == str(archive) and report["input_path"] == str(archive.resolve())
    assert report["input_provenance"] == [{"source": "archive", "archive": str(archive.resolve()), "files": 20}]
    assert archive.read_bytes() == before  # the user's archive is never touched
    assert list(scratch.iterdir()) == []  # the unpacked copy is removed after the run


def _zip(entries: list[tuple[str, bytes]], *, symlink: str | None = None) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        for name, data in entries:
            archive.writestr(name, data)
        if symlink is not None:
            info = zipfile.ZipInfo(symlink)
            info.external_attr = (0o120777 << 16)
            archive.writestr(info, "/etc/passwd")
    return buffer.getvalue()


def _tar(members: list[tarfile.TarInfo], data: bytes = b"DICM") -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as archive:
        for member in members:
            member.size = len(data) if member.isfile() else 0
            archive.addfile(member, io.BytesIO(data) if member.isfile() else None)
    return buffer.getvalue()


def _member(name: str, kind: bytes = tarfile.REGTYPE, link: str = "") -> tarfile.TarInfo:
    member = tarfile.TarInfo(name)
    member.type, member.linkname = kind, link
    return member


UNSAFE = [
    ("zip", _zip([("../escape.dcm", b"DICM")]), "path '../escape.dcm' leaves the upload folder"),
    ("zip", _zip([("/etc/cron.d/x", b"DICM")]), "absolute path '/etc/cron.d/x' refused"),
    ("zip", _zip([("ok.dcm", b"DICM")], symlink="link.dcm"), "entry 'link.dcm' is a symbolic link"),
    ("tar.gz", _tar([_member("a/../../escape.dcm")]), "path 'a/../../escape.dcm' leaves the upload folder"),
    ("tar.gz", _tar([_member("/tmp/x.dcm")]), "absolute path '/tmp/x.dcm' refused"),
    ("tar.gz", _tar([_member("ok.dcm"), _member("link.dcm", tarfile.SYMTYPE, "/etc/passwd")]),
     "entry 'link.dcm' is a link"),
    ("tar.gz", _tar([_member("ok.dcm"), _member("hard.dcm", tarfile.LNKTYPE, "ok.dcm")]), "entry 'hard.dcm' is a link"),
    ("tar.gz", _tar([_member("dev", tarfile.CHRTYPE)]), "entry 'dev' is a device or pipe"),
    ("tar.gz", _tar([_member("fifo", tarfile.FIFOTYPE)]), "entry 'fifo' is a device or pipe"),
]


@pytest.mark.parametrize(("kind", "data", "message"), UNSAFE,
                         ids=[f"{kind}: {message}" for kind, _, message in UNSAFE])  # gzip bytes carry a time
def test_unsafe_archives_are_refused_by_the_cli_and_the_server_alike(tmp_path: Path, kind: str, data: bytes,
                                                                     message: str) -> None:
    archive = tmp_path / f"bad.{kind}"
    archive.write_bytes(data)
    target = tmp_path / "unpacked"
    with pytest.raises(ArchiveError) as refused:
        unpack(archive, target)
    assert refused.value.kind == "unsafe" and message in str(refused.value)
    assert not any(p.is_file() for p in target.rglob("*"))  # checked before anything is extracted
    assert not (tmp_path / "escape.dcm").exists() and not (tmp_path.parent / "escape.dcm").exists()

    with pytest.raises(ApiError) as answered:  # the server's upload path: the same check, as HTTP 400
        save_uploads([Upload(archive.name, io.BytesIO(data))], tmp_path / "job" / "input", max_bytes=1 << 20,
                     unzip_limit=1 << 20)
    assert answered.value.status_code == 400 and message in str(answered.value)


def test_cli_refuses_an_unsafe_archive_with_one_line_before_any_work(tmp_path: Path) -> None:
    archive = tmp_path / "series.zip"
    archive.write_bytes(_zip([("ct/a.dcm", b"DICM"), ("../../escape.dcm", b"DICM")]))
    out = tmp_path / "out"
    result = medhub("run", "ct-body", "--input", str(archive), "--output", str(out))
    assert result.returncode == 2
    assert result.stderr.strip() == ("medhub: series.zip: entry: path '../../escape.dcm' leaves the upload folder "
                                     "('..') and is refused")
    assert not (tmp_path.parent / "escape.dcm").exists()
    assert not list(out.rglob("*.nii.gz")) and not list(out.rglob("*.dcm"))


def test_an_archive_larger_than_the_limit_is_refused_before_extracting(archives, tmp_path: Path) -> None:
    with pytest.raises(ArchiveError) as declared:
        unpack(archives["zip"], tmp_path / "a", limit=1_000_000)  # the CT is about 3 MB
    assert declared.value.kind == "too_large" and "expands to 3 MB, more than the limit of 1000000 bytes" in str(
        declared.value)
    budget = Budget(1_000_000, "the unzipped upload")
    with pytest.raises(ArchiveError, match="series.tar.gz: expands to 3 MB, more than the limit of 1000000 bytes"):
        extract_archive(archives["tar.gz"], tmp_path / "b", budget)
    assert not any(p.is_file() for p in tmp_path.rglob("*") if p.parent.name in ("a", "b"))
    with pytest.raises(ApiError) as answered:
        save_uploads([Upload("series.tar.gz", io.BytesIO(archives["tar.gz"].read_bytes()))], tmp_path / "job" / "input",
                     max_bytes=10 << 20, unzip_limit=1_000_000)
    assert answered.value.status_code == 413


def test_server_takes_a_tar_gz_upload_like_a_zip(archives, tmp_path: Path) -> None:
    for kind in ("zip", "tar.gz"):
        saved = save_uploads([Upload(f"series.{kind}", io.BytesIO(archives[kind].read_bytes()))],
                             tmp_path / kind / "input", max_bytes=10 << 20, unzip_limit=10 << 20)
        assert saved.kind == "dicom" and saved.files == 20
        names = sorted(p.name for p in saved.path.rglob("*") if p.is_file())
        assert names == sorted(p.name for p in shared_path(NO_UID_CT).iterdir())
        assert not (tmp_path / kind / ".upload").exists()
    assert archive_kind(archives["zip"]) == "zip" and archive_kind(archives["tar.gz"]) == "tar"
    assert archive_kind(next(shared_path(NO_UID_CT).iterdir())) is None  # a DICOM file is not an archive


def test_view_unpacks_the_archive_the_report_names(archives, tmp_path: Path) -> None:
    """`medhub view OUT` after a run on series.zip: the images come from the archive again, nothing is kept."""
    from fastapi.testclient import TestClient

    from medhub.cli.view import _unpacked
    from medhub.serve.view import create_view_app, find_input, read_report

    out = tmp_path / "out"
    assert medhub("run", "ct-body", "--input", str(archives["zip"]), "--output", str(out)).returncode == 0
    report = read_report(out)
    source = find_input(out, report)
    assert source == archives["zip"].resolve()
    cache = tmp_path / "cache"
    cache.mkdir()
    images = _unpacked(source, cache)
    assert images == cache / "input" and len(list(images.rglob("CT.*"))) == 20
    client = TestClient(create_view_app(out, images, cache))
    job_id = client.get("/", follow_redirects=False).headers["location"].rsplit("/", 1)[1]
    key = report["series"][0]["key"]
    meta = client.get(f"/api/jobs/{job_id}/viewer/{key}/meta")
    assert meta.status_code == 200 and meta.json()["shape"] == [512, 512, 20]
    shutil.rmtree(cache)


def test_a_folder_over_a_file_of_the_same_name_is_one_line(tmp_path: Path) -> None:
    archive = tmp_path / "clash.zip"
    archive.write_bytes(_zip([("a", b"DICM"), ("a/b", b"DICM")]))
    with pytest.raises(ArchiveError) as refused:
        unpack(archive, tmp_path / "unpacked")
    assert refused.value.kind == "unreadable" and "entry 'a/b' cannot be extracted" in str(refused.value)
