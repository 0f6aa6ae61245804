"""DICOMweb at the edges of a run: pull the input through QIDO-RS + WADO-RS, push results through STOW-RS.

A run on ``dicomweb://HOST[:PORT]/PATH?study=UID[&series=UID]`` first copies the matching series
into a local folder (one DICOM file per instance, written atomically), and the pipeline then runs
on that folder exactly as on any other: scanning, selection and geometry checks stay in one place.
``push_outputs`` stores the SEG / RTSTRUCT objects a run wrote, one STOW-RS request per instance,
after checking that the server answers at all, so a server that is down gives one clear error and
nothing stored rather than a half-pushed result.

Talking HTTP is dicomweb-client's job (QIDO/WADO/STOW URLs, multipart encoding and decoding,
retries on 503/429); this module adds the URL form, authentication, atomic files, and errors a
person can act on. Secrets (passwords, tokens) never appear in messages: errors name the server
by its URL without credentials.

Authentication, most specific first:
1. ``user:password@host`` in the URL: HTTP basic;
2. ``MEDHUB_DICOMWEB_TOKEN``: ``Authorization: Bearer <token>``;
3. ``MEDHUB_DICOMWEB_USER`` + ``MEDHUB_DICOMWEB_PASSWORD``: HTTP basic.
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal
from urllib.parse import parse_qsl, quote, unquote, urlsplit

import pydicom
import requests

from medhub import config
from medhub.errors import MedhubError
from medhub.files import atomic_output, safe_component
from medhub.inputs.push import PushProgress, push_files

SCHEMES = {"dicomweb": "http", "dicomwebs": "https", "http": "http", "https": "https"}
"""URL schemes accepted, and the HTTP scheme each one means (``dicomwebs`` is DICOMweb over TLS)."""

TOKEN_ENV, USER_ENV, PASSWORD_ENV = config.DICOMWEB_TOKEN, config.DICOMWEB_USER, config.DICOMWEB_PASSWORD

TIMEOUT = (10.0, 300.0)
"""(connect, read) seconds: connecting must be quick; a large series may take long to stream."""

ANY_TRANSFER_SYNTAX = (("application/dicom", "*"),)
"""Retrieve instances as stored: no transcoding on the server, pydicom decodes what it needs."""

_UID = re.compile(r"^[0-9]+(\.[0-9]+)*$")
_ERRNO = re.compile(r"\[Errno -?\d+\] ([^'\")]+)")
_STUDY, _SERIES, _SOP = "0020000D", "0020000E", "00080018"
_FAILED_SOP, _FAILURE_REASON = "00081198", "00081197"

FetchProgress = Callable[[int, int], None]
"""Called as ``progress(instances_written, instances_expected)`` while an input is fetched."""



@dataclass(frozen=True)
class DicomwebTarget:
    """A parsed DICOMweb URL: where the service is, what to fetch, and how to authenticate."""

    base_url: str
    """``http(s)://host[:port]/path`` without credentials or query: the dicomweb-client URL."""
    study: str | None = None
    series: str | None = None
    username: str | None = None
    password: str | None = field(default=None, repr=False)
    token: str | None = field(default=None, repr=False)

    @property
    def auth_description(self) -> str:
        """How this target authenticates, naming no secret (for error messages)."""
        if self.username is not None:
            return f"HTTP basic authentication as user {self.username!r}"
        if self.token is not None:
            return f"a bearer token from {TOKEN_ENV}"
        return f"no credentials (set {TOKEN_ENV}, or {USER_ENV} and {PASSWORD_ENV})"

    @property
    def filters(self) -> str:
        """``study=UID, series=UID`` as given, for messages."""
        parts = [f"study={self.study}"] if self.study else []
        parts += [f"series={self.series}"] if self.series else []
        return ", ".join(parts) or "no filter"

    def session(self) -> requests.Session:
        """A requests session carrying the credentials (never the URL: it stays printable)."""
        session = requests.Session()
        if self.username is not None:
            session.auth = (self.username, self.password or "")
        elif self.token is not None:
            session.headers["Authorization"] = f"Bearer {self.token}"
        return session

    def client(self, callback: Callable[..., Any] | None = None) -> Any:
        """A dicomweb-client ``DICOMwebClient`` for this service (``callback``: a requests response hook)."""
        from dicomweb_client.api import DICOMwebClient

        client = DICOMwebClient(self.base_url, session=self.session(), timeout=TIMEOUT, callback=callback)
        client.set_http_retry_params(max_attempts=3, wait_exponential_multiplier=500)
        return client

    def redact(self, text: str) -> str:
        """``text`` with any secret of this target blanked out (defence in depth for messages)."""
        for secret in (self.password, self.token):
            if secret:
                text = text.replace(secret, "***").replace(quote(secret, safe=""), "***")
        return text


def is_dicomweb_url(value: object) -> bool:
    """True for ``dicomweb://...`` / ``dicomwebs://...`` (also after ``Path()`` collapsed ``//`` to ``/``)."""
    return re.match(r"^dicomwebs?:/", str(value), flags=re.IGNORECASE) is not None


def redact_url(url: str) -> str:
    """The URL with the password of ``user:password@`` replaced by ``***``."""
    return re.sub(r"(//[^/@:]*:)[^/@]*@", r"\1***@", url)


def parse_dicomweb_url(url: str | os.PathLike[str], env: Mapping[str, str] | None = None) -> DicomwebTarget:
    """Parse ``dicomweb[s]://[user:pass@]HOST[:PORT]/PATH[?study=UID][&series=UID]``.

    ``dicomweb`` means plain HTTP, ``dicomwebs`` HTTPS; ``http(s)://`` is accepted as is. A
    ``Path`` made from such a URL (``dicomweb:/host/...``, one slash) is repaired, because a CLI
    option typed as a path collapses the double slash. Credentials come from the URL or, failing
    that, from the environment ``env`` (default ``os.environ``); see the module docstring.
    """
    text = str(url).strip()
    text = re.sub(r"^(dicomwebs?|https?):/(?!/)", r"\1://", text, flags=re.IGNORECASE)
    shown = redact_url(text)
    try:
        parts = urlsplit(text)
        port = parts.port
    except ValueError as exc:
        raise MedhubError(f"bad DICOMweb URL {shown}: {exc}") from None
    scheme = SCHEMES.get(parts.scheme.lower())
    if scheme is None:
        raise MedhubError(f"bad DICOMweb URL {shown}: scheme must be dicomweb:// or dicomwebs:// (https)")
    if not parts.hostname:
        raise MedhubError(f"bad DICOMweb URL {shown}: no host (expected dicomweb://HOST[:PORT]/PATH)")
    if parts.fragment:
        raise MedhubError(f"bad DICOMweb URL {shown}: unexpected '#{parts.fragment}'")
    host = f"[{parts.hostname}]" if ":" in parts.hostname else parts.hostname
    netloc = host if port is None else f"{host}:{port}"
    base_url = f"{scheme}://{netloc}{parts.path.rstrip('/')}"

    filters: dict[str, str] = {}
    for key, value in parse_qsl(parts.query, keep_blank_values=True):
        name = key.lower()
        if name not in ("study", "series"):
            raise MedhubError(f"bad DICOMweb URL {shown}: unknown parameter {key!r} (use study=UID and series=UID)")
        if name in filters:
            raise MedhubError(f"bad DICOMweb URL {shown}: {name} given twice")
        if not _UID.match(value) or len(value) > 64:
            raise MedhubError(f"bad DICOMweb URL {shown}: {name}={value!r} is not a DICOM UID (digits and dots)")
        filters[name] = value

    username = unquote(parts.username) if parts.username else None
    password = unquote(parts.password) if parts.password is not None else None
    token = None
    if username is None:
        found = config.settings(env)
        token = found.dicomweb_token
        if token is None and found.dicomweb_user:
            username, password = found.dicomweb_user, found.dicomweb_password
    return DicomwebTarget(base_url=base_url, study=filters.get("study"), series=filters.get("series"),
                          username=username, password=password, token=token)


# -- errors ------------------------------------------------------------------------------------
def _reason(exc: BaseException) -> str:
    """The useful end of a requests exception: "Connection refused", "timed out", ... ."""
    text = str(exc)
    found = _ERRNO.search(text)
    if found:
        return found.group(1).strip()
    if isinstance(exc, requests.Timeout):
        return "timed out"
    if isinstance(exc, requests.exceptions.ChunkedEncodingError):
        return "connection lost during the transfer"
    return (text.splitlines() or [type(exc).__name__])[0][:200]


def _http_error(target: DicomwebTarget, exc: BaseException, doing: str) -> MedhubError:
    """Turn a requests exception during ``doing`` into one line naming the server, never a secret."""
    if isinstance(exc, requests.HTTPError) and exc.response is not None:
        status = exc.response.status_code
        if status in (401, 403):
            return MedhubError(target.redact(
                f"authentication failed at DICOMweb server {target.base_url} (HTTP {status} while {doing}); "
                f"sent {target.auth_description}"))
        detail = _server_detail(exc.response)
        return MedhubError(target.redact(
            f"DICOMweb server {target.base_url} answered HTTP {status} {exc.response.reason} while {doing}"
            + (f": {detail}" if detail else "")))
    if isinstance(exc, requests.RequestException):
        return MedhubError(target.redact(
            f"cannot reach DICOMweb server at {target.base_url}: {_reason(exc)} (while {doing})"))
    return MedhubError(target.redact(f"DICOMweb error at {target.base_url} while {doing}: {_reason(exc)}"))


def _server_detail(response: requests.Response) -> str:
    """A short reason from the server's error body (Orthanc sends JSON with "Details"/"Message")."""
    try:
        body = response.json()
    except ValueError:
        return response.text.strip().splitlines()[0][:200] if response.text.strip() else ""
    if isinstance(body, dict) and _FAILED_SOP in body:  # a STOW-RS answer: the DICOM failure reason code
        failed = body[_FAILED_SOP].get("Value") or [{}]
        codes = failed[0].get(_FAILURE_REASON, {}).get("Value") or []
        return f"STOW failure reason 0x{int(codes[0]):04X}" if codes else "STOW refused the instance"
    if isinstance(body, dict):
        return str(body.get("Details") or body.get("Message") or "")[:200]
    return ""


def _value(item: Mapping[str, Any], tag: str) -> str:
    """First value of a tag in a DICOM JSON object ("" when absent)."""
    values = item.get(tag, {}).get("Value") or [""]
    return str(values[0])


# -- fetch -------------------------------------------------------------------------------------
class StreamEnd:
    """Tells whether the last multipart response ended with its closing boundary (``--B--``).

    Orthanc, like many servers, streams WADO-RS with ``Connection: close`` and no length, so a
    server that dies mid-series just ends the stream; dicomweb-client then yields the cut last
    part as if it were whole, and pydicom reads a truncated pixel array without complaint. Only
    the closing boundary proves the end. ``hook`` is a requests response hook (dicomweb-client's
    ``callback``) that wraps ``iter_content`` of multipart responses to watch the last bytes.
    """

    def __init__(self) -> None:
        self.complete = True

    def hook(self, response: requests.Response, *args: Any, **kwargs: Any) -> requests.Response:
        content_type = response.headers.get("Content-Type", "")
        found = re.search(r'boundary="?([^";]+)"?', content_type)
        if not content_type.lower().startswith("multipart/") or found is None:
            return response
        closing = b"--" + found.group(1).encode() + b"--"
        original = response.iter_content
        self.complete = False

        def iter_content(chunk_size: int | None = 1, decode_unicode: Literal[False] = False) -> Iterator[bytes]:
            tail = b""  # a multipart body is bytes: dicomweb-client never asks for text
            for chunk in original(chunk_size=chunk_size):
                tail = (tail + chunk)[-(len(closing) + 16):]
                yield chunk
            self.complete = closing in tail

        # requests has no hook on the body stream: this response's own iter_content is wrapped.
        response.iter_content = iter_content  # type: ignore[method-assign,assignment]
        return response


def fetch_input(url: str | os.PathLike[str], dest_dir: Path, progress: FetchProgress | None = None) -> Path:
    """Copy the series that ``url`` selects into ``dest_dir/<series uid>/<sop uid>.dcm``; return ``dest_dir``.

    QIDO-RS finds the series (all series of ``study=``, or the one ``series=``) and the SOP
    Instance UIDs of each; WADO-RS streams the instances in their stored transfer syntax. Each
    file is written under a temporary name and renamed when complete, so ``dest_dir`` never
    holds a truncated file; a series whose files are all present already is not fetched again.
    Raises MedhubError when the server is unreachable, refuses the credentials, has no matching
    series, or delivers fewer instances than QIDO listed.
    """
    target = parse_dicomweb_url(url)
    if target.study is None and target.series is None:
        raise MedhubError(f"DICOMweb input {target.base_url} needs ?study=UID or ?series=UID (or both)")
    stream_end = StreamEnd()
    client = target.client(callback=stream_end.hook)
    series_list = _find_series(client, target)
    plan = [(study, series, _instance_uids(client, target, study, series)) for study, series in series_list]
    total = sum(len(uids) for _, _, uids in plan)
    done = 0
    dest_dir.mkdir(parents=True, exist_ok=True)
    for study, series, expected in plan:
        folder = dest_dir / safe_component(series)
        folder.mkdir(parents=True, exist_ok=True)
        for leftover in folder.glob(".*.partial"):  # from a fetch that was killed: never complete
            leftover.unlink(missing_ok=True)
        present = {p.stem for p in folder.glob("*.dcm")}
        if expected and set(expected) <= present:
            done += len(expected)
            if progress:
                progress(done, total)
            continue
        before = done

        def written_one(_uid: str) -> None:
            nonlocal done
            done += 1
            if progress:
                progress(done, total)

        written = _retrieve_series(client, target, study, series, folder, stream_end, on_instance=written_one)
        missing = sorted(set(expected) - written - present)
        if missing:
            raise MedhubError(
                f"DICOMweb server {target.base_url} delivered {len(expected) - len(missing)} of {len(expected)} "
                f"instances of series {series} (first missing: {missing[0]})")
        done = before + len(expected)
    return dest_dir


def _find_series(client: Any, target: DicomwebTarget) -> list[tuple[str, str]]:
    """(study uid, series uid) of every series the target's filters match, via QIDO-RS."""
    filters = {"SeriesInstanceUID": target.series} if target.series else None
    try:
        found = client.search_for_series(study_instance_uid=target.study, search_filters=filters,
                                         fields=["StudyInstanceUID", "SeriesInstanceUID"], get_remaining=True)
    except Exception as exc:  # requests and dicomweb-client errors alike: one line for the user
        raise _http_error(target, exc, f"searching series ({target.filters})") from None
    pairs: list[tuple[str, str]] = []
    for item in found:
        study = _value(item, _STUDY) or (target.study or "")
        series = _value(item, _SERIES)
        if target.study and study != target.study:
            continue  # a server that ignores the study in the path: keep only what was asked for
        if series and (target.series is None or series == target.series) and (study, series) not in pairs:
            pairs.append((study, series))
    if not pairs:
        raise MedhubError(f"no series found for {target.filters} at {target.base_url}")
    return pairs


def _instance_uids(client: Any, target: DicomwebTarget, study: str, series: str) -> list[str]:
    """SOP Instance UIDs of one series via QIDO-RS: what the retrieval must deliver."""
    try:
        found = client.search_for_instances(study_instance_uid=study, series_instance_uid=series,
                                            fields=["SOPInstanceUID"], get_remaining=True)
    except Exception as exc:
        raise _http_error(target, exc, f"listing the instances of series {series}") from None
    return [uid for uid in (_value(item, _SOP) for item in found) if uid]


def _retrieve_series(client: Any, target: DicomwebTarget, study: str, series: str, folder: Path,
                     stream_end: StreamEnd, on_instance: Callable[[str], None] | None) -> set[str]:
    """Stream one series through WADO-RS into ``folder``; return the SOP Instance UIDs written.

    Each instance is written only once it is proven whole: when the next part has begun (the
    boundary between them arrived), or, for the last one, when the stream closed properly.
    """
    written: set[str] = set()

    def write(dataset: pydicom.Dataset) -> None:
        uid = str(getattr(dataset, "SOPInstanceUID", "") or "")
        if not uid:
            raise MedhubError(f"DICOMweb server {target.base_url} sent an instance of series {series} "
                              "without a SOP Instance UID")
        with atomic_output(folder / f"{safe_component(uid)}.dcm") as temporary:
            dataset.save_as(temporary, enforce_file_format=True)
        written.add(uid)
        if on_instance:
            on_instance(uid)

    pending: pydicom.Dataset | None = None
    try:
        for dataset in client.iter_series(study, series, media_types=ANY_TRANSFER_SYNTAX):
            if pending is not None:
                write(pending)
            pending = dataset
    except MedhubError:
        raise
    except Exception as exc:
        raise _http_error(target, exc, f"retrieving series {series} ({len(written)} instances written)") from None
    if pending is not None and not stream_end.complete:
        raise MedhubError(f"cannot reach DICOMweb server at {target.base_url}: the connection closed in the "
                          f"middle of series {series} ({len(written)} whole instances written, the cut one dropped)")
    if pending is not None:
        write(pending)
    return written


# -- push --------------------------------------------------------------------------------------
class DicomwebPush:
    """STOW-RS as a :class:`~medhub.inputs.push.PushTarget`: one request per instance."""

    def __init__(self, target: DicomwebTarget) -> None:
        self.target = target
        self.client: Any = None

    def open(self, datasets: Sequence[pydicom.Dataset]) -> None:
        """Ask a cheap QIDO question: proves the server answers and accepts the credentials."""
        self.client = self.target.client()
        checking = "checking the server before storing"
        try:
            self.client.search_for_studies(limit=1, fields=["StudyInstanceUID"])
        except requests.HTTPError as exc:
            if exc.response is not None and exc.response.status_code in (401, 403):
                raise _http_error(self.target, exc, checking) from None
            # any other answer proves the server is up; a STOW-only service may not offer QIDO
        except Exception as exc:
            raise _http_error(self.target, exc, checking) from None

    def store(self, path: Path, dataset: pydicom.Dataset) -> None:
        """STOW-RS one instance and check the server's answer names it as stored."""
        target, uid = self.target, str(dataset.SOPInstanceUID)
        try:
            answer = self.client.store_instances([dataset], study_instance_uid=target.study)
        except Exception as exc:
            raise _http_error(target, exc, f"storing {path.name}") from None
        failed = [item for item in getattr(answer, "FailedSOPSequence", []) or []
                  if str(getattr(item, "ReferencedSOPInstanceUID", uid)) == uid]
        if failed:
            code = getattr(failed[0], "FailureReason", None)
            raise MedhubError(f"DICOMweb server {target.base_url} refused {path.name} (STOW failure reason "
                              f"{f'0x{int(code):04X}' if code is not None else 'not given'})")
        referenced = {str(getattr(item, "ReferencedSOPInstanceUID", "")) for item in
                      getattr(answer, "ReferencedSOPSequence", []) or []}
        if referenced and uid not in referenced:
            raise MedhubError(f"DICOMweb server {target.base_url} did not confirm storing {path.name} "
                              f"(SOP Instance UID {uid})")

    def close(self) -> None:
        self.client = None


def push_outputs(files: Sequence[Path], url: str | os.PathLike[str],
                 progress: PushProgress | None = None) -> list[str]:
    """Store each DICOM file (SEG, RTSTRUCT, SR) through STOW-RS; return the stored SOP Instance UIDs.

    The accounting (read everything first, prove the server answers, stop at the first failure
    and say what was and was not stored) is :func:`medhub.inputs.push.push_files`'s. A
    ``study=`` in the URL makes the server check that every object belongs to that study.
    """
    return push_files(files, DicomwebPush(parse_dicomweb_url(url)), progress)
