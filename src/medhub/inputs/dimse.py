"""A DIMSE PACS at the edges of a run: find with C-FIND, retrieve with C-GET (or C-MOVE), push with C-STORE.

Most hospital archives speak DIMSE, the DICOM network protocol, rather than DICOMweb. A run on
``dimse://AET@HOST:PORT?study=UID[&series=UID]`` (or ``?patient=ID``) first copies the matching
series into a local folder, one DICOM file per instance written atomically, and the pipeline
then runs on that folder as on any other, exactly like :mod:`medhub.inputs.dicomweb`.

- **Find**: C-FIND in the Study Root model: the studies of a patient, the series of a study,
  then the instances of each series (SOP Instance UID and SOP Class UID): what the retrieval
  must deliver, and which storage SOP classes it must offer to receive.
- **Retrieve**: C-GET by default, which needs no connection back to us: medhub proposes the
  series' storage SOP classes, takes the SCP role for them (role selection), and receives the
  instances on the same association. C-MOVE (``move_to``) is the alternative for archives
  without C-GET: medhub listens on ``move_port`` as the destination AE the archive knows.
- **Push**: C-STORE of every SEG / RTSTRUCT / SR on one association, with the accounting of
  :mod:`medhub.inputs.push` (shared with DICOMweb).

medhub calls with the AE title from ``MEDHUB_AE_TITLE`` (default ``MEDHUB``); archives such as
Orthanc answer queries and retrievals only from AE titles they know. Talking DIMSE is
pynetdicom's job; this module adds the URL form, atomic files, completeness checks and errors a
person can act on.
"""

from __future__ import annotations

import contextlib
import os
import re
import socket
import threading
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, unquote, urlsplit

import pydicom
from pydicom.dataset import Dataset
from pydicom.uid import UID, ExplicitVRLittleEndian, ImplicitVRLittleEndian
from pynetdicom import AE, ALL_TRANSFER_SYNTAXES, AllStoragePresentationContexts, build_context, build_role, evt

# pynetdicom creates its SOP Class names at import (globals() in sop_class.py): its types cannot show them.
from pynetdicom.sop_class import (  # type: ignore[attr-defined]
    StudyRootQueryRetrieveInformationModelFind,
    StudyRootQueryRetrieveInformationModelGet,
    StudyRootQueryRetrieveInformationModelMove,
    Verification,
)

from medhub import config
from medhub.errors import MedhubError
from medhub.files import atomic_output, safe_component
from medhub.inputs.push import PushProgress, push_files

AE_TITLE_ENV = config.AE_TITLE  # named in messages
DEFAULT_AE_TITLE = "MEDHUB"
DEFAULT_PORT = 104
"""The port IANA registered for DICOM; most archives listen on it or on 11112."""

CONNECT_TIMEOUT = 10.0
"""Seconds to open the TCP connection: a closed or filtered port must fail quickly."""
RESPONSE_TIMEOUT = 120.0
"""Seconds to wait for one DIMSE message (a response, or the next instance of a retrieval)."""

FetchProgress = Callable[[int, int], None]
"""Called as ``progress(instances_written, instances_expected)`` while an input is fetched."""

_COMPRESSED_SYNTAXES = (
    "1.2.840.10008.1.2.1.99",  # Deflated Explicit VR Little Endian
    "1.2.840.10008.1.2.4.70", "1.2.840.10008.1.2.4.57",  # JPEG Lossless (SV1, and any predictor)
    "1.2.840.10008.1.2.4.80", "1.2.840.10008.1.2.4.81",  # JPEG-LS lossless, near-lossless
    "1.2.840.10008.1.2.4.90", "1.2.840.10008.1.2.4.91",  # JPEG 2000 lossless, lossy
    "1.2.840.10008.1.2.5",  # RLE Lossless
    "1.2.840.10008.1.2.4.50", "1.2.840.10008.1.2.4.51",  # JPEG Baseline, Extended (lossy as stored)
)
"""Compressed transfer syntaxes medhub reads (pydicom with pylibjpeg), offered when retrieving."""
_MAX_CLASSES = 10
"""SOP classes per C-GET association: 11 contexts each stays within the 128 an association may carry."""
_COMMON_IMAGE_CLASSES = (
    "1.2.840.10008.5.1.4.1.1.2", "1.2.840.10008.5.1.4.1.1.2.1",  # CT, Enhanced CT
    "1.2.840.10008.5.1.4.1.1.4", "1.2.840.10008.5.1.4.1.1.4.1",  # MR, Enhanced MR
    "1.2.840.10008.5.1.4.1.1.128", "1.2.840.10008.5.1.4.1.1.130",  # PET, Enhanced PET
    "1.2.840.10008.5.1.4.1.1.1", "1.2.840.10008.5.1.4.1.1.1.1",  # CR, Digital X-Ray
    "1.2.840.10008.5.1.4.1.1.7", "1.2.840.10008.5.1.4.1.1.66.4",  # Secondary Capture, Segmentation
)
"""Offered when an archive's C-FIND does not say the SOP classes of a series."""
STORAGE_SOP_CLASSES: list[UID] = [c.abstract_syntax for c in AllStoragePresentationContexts if c.abstract_syntax]
"""Every storage SOP class pynetdicom knows: what a receiver (C-MOVE destination, the listener) accepts."""
_UID = re.compile(r"^[0-9]+(\.[0-9]+)*$")
_SUCCESS, _PENDING = 0x0000, (0xFF00, 0xFF01)
_WARNINGS = (0x0001, 0xB000, 0xB006, 0xB007)
_STATUS_MEANING = {
    0xA700: "out of resources", 0xA701: "out of resources (cannot calculate the number of matches)",
    0xA702: "out of resources (cannot perform the sub-operations)", 0xA801: "move destination unknown",
    0xA900: "identifier does not match the SOP class", 0xC000: "unable to process",
    0xC001: "unable to process", 0xFE00: "cancelled", 0x0122: "SOP class not supported",
    0x0124: "not authorized", 0x0211: "unrecognised operation", 0xB000: "some sub-operations failed",
}


# -- the URL and the AE title -------------------------------------------------------------------
@dataclass(frozen=True)
class DimseTarget:
    """A parsed ``dimse://`` URL: which node to call, and what to fetch there."""

    called_aet: str
    host: str
    port: int
    study: str | None = None
    series: str | None = None
    patient: str | None = None

    @property
    def address(self) -> str:
        """``AET@HOST:PORT``, how messages name the node."""
        return f"{self.called_aet}@{self.host}:{self.port}"

    @property
    def filters(self) -> str:
        """``patient=ID, study=UID, series=UID`` as given, for messages."""
        parts = [f"{k}={v}" for k, v in (("patient", self.patient), ("study", self.study), ("series", self.series))
                 if v]
        return ", ".join(parts) or "no filter"


def is_dimse_url(value: object) -> bool:
    """True for ``dimse://...`` (also after ``Path()`` collapsed ``//`` to ``/``)."""
    return re.match(r"^dimse:/", str(value), flags=re.IGNORECASE) is not None


def check_ae_title(value: str, what: str) -> str:
    """``value`` if it is a valid AE title (1-16 characters, no backslash or control character), else one line."""
    title = value.strip()
    if not title or len(title) > 16 or "\\" in title or any(ord(c) < 32 or ord(c) > 126 for c in title):
        raise MedhubError(f"{what} {value!r} is not a DICOM AE title (1 to 16 printable ASCII characters, "
                          "no backslash)")
    return title


def calling_ae_title(env: Mapping[str, str] | None = None) -> str:
    """The AE title medhub calls with: ``MEDHUB_AE_TITLE``, default ``MEDHUB``."""
    return check_ae_title(config.settings(env).ae_title or DEFAULT_AE_TITLE, AE_TITLE_ENV)


def parse_dimse_url(url: str | os.PathLike[str]) -> DimseTarget:
    """Parse ``dimse://AET@HOST[:PORT][?study=UID][&series=UID][&patient=ID]``.

    ``AET`` is the called AE title of the archive (percent-encoded if it holds odd characters);
    ``PORT`` defaults to 104. ``study`` and ``series`` must be UIDs; ``patient`` is an exact
    Patient ID (wildcards are refused: a typo must not fetch a whole archive).
    """
    text = re.sub(r"^dimse:/(?!/)", "dimse://", str(url).strip(), flags=re.IGNORECASE)
    try:
        parts = urlsplit(text)
        port = parts.port
    except ValueError as exc:
        raise MedhubError(f"bad DIMSE URL {text}: {exc}") from None
    if parts.scheme.lower() != "dimse":
        raise MedhubError(f"bad DIMSE URL {text}: scheme must be dimse://")
    if not parts.username:
        raise MedhubError(f"bad DIMSE URL {text}: no AE title (expected dimse://AET@HOST:PORT)")
    if parts.password is not None:
        raise MedhubError(f"bad DIMSE URL {text.split('@')[-1]}: DIMSE has no passwords; write dimse://AET@HOST:PORT")
    if not parts.hostname:
        raise MedhubError(f"bad DIMSE URL {text}: no host (expected dimse://AET@HOST:PORT)")
    if parts.path not in ("", "/") or parts.fragment:
        raise MedhubError(f"bad DIMSE URL {text}: unexpected {parts.path or '#' + parts.fragment!r} "
                          "(expected dimse://AET@HOST:PORT?study=UID)")
    aet = check_ae_title(unquote(parts.username), f"bad DIMSE URL {text}: called AE title")
    filters: dict[str, str] = {}
    for key, value in parse_qsl(parts.query, keep_blank_values=True):
        name = key.lower()
        if name not in ("study", "series", "patient"):
            raise MedhubError(f"bad DIMSE URL {text}: unknown parameter {key!r} (use study=UID, series=UID "
                              "or patient=ID)")
        if name in filters:
            raise MedhubError(f"bad DIMSE URL {text}: {name} given twice")
        if name == "patient":
            if not value.strip() or len(value) > 64 or any(c in value for c in "*?\\"):
                raise MedhubError(f"bad DIMSE URL {text}: patient={value!r} must be one exact Patient ID "
                                  "(no wildcards, at most 64 characters)")
        elif not _UID.match(value) or len(value) > 64:
            raise MedhubError(f"bad DIMSE URL {text}: {name}={value!r} is not a DICOM UID (digits and dots)")
        filters[name] = value
    return DimseTarget(called_aet=aet, host=parts.hostname, port=DEFAULT_PORT if port is None else port,
                       study=filters.get("study"), series=filters.get("series"), patient=filters.get("patient"))


# -- associations -------------------------------------------------------------------------------
def _new_ae(ae_title: str | None = None) -> AE:
    ae = AE(ae_title=ae_title or calling_ae_title())
    ae.connection_timeout = CONNECT_TIMEOUT
    ae.acse_timeout = 30
    ae.dimse_timeout = RESPONSE_TIMEOUT
    ae.network_timeout = RESPONSE_TIMEOUT
    return ae


@contextlib.contextmanager
def _association(target: DimseTarget, ae: AE, doing: str, **kwargs: Any) -> Iterator[Any]:
    """An established association with ``target``, released at the end; one clear line when it cannot be made."""
    assoc = ae.associate(target.host, target.port, ae_title=target.called_aet, **kwargs)
    if not assoc.is_established:
        raise MedhubError(_association_failure(target, ae, assoc, doing))
    try:
        yield assoc
    finally:
        if assoc.is_established:
            assoc.release()


def _association_failure(target: DimseTarget, ae: AE, assoc: Any, doing: str) -> str:
    if assoc.is_rejected:
        acceptor = assoc.acceptor
        result = getattr(acceptor, "result_str", "") or ""
        reason = getattr(acceptor, "reason_str", "") or ""
        detail = f"{result} {reason}".strip() or "no reason given"
        return (f"DICOM node {target.address} rejected the association from AE {ae.ae_title} ({detail}) while "
                f"{doing}; check that the archive knows AE {ae.ae_title} (set {AE_TITLE_ENV} to change it)")
    unreachable = _unreachable(target)
    if unreachable:
        return f"cannot reach DICOM node {target.address}: {unreachable} (while {doing})"
    return (f"DICOM node {target.address} aborted the association from AE {ae.ae_title} while {doing} "
            f"(it may not accept the called AE title {target.called_aet} or the proposed services)")


def _unreachable(target: DimseTarget) -> str:
    """Why a TCP connection to the node fails ("Connection refused", "timed out", ...), or "" when it opens.

    pynetdicom reports a refused connection and an aborted association alike; one plain
    connection attempt after a failure tells them apart for the message.
    """
    try:
        with socket.create_connection((target.host, target.port), timeout=CONNECT_TIMEOUT):
            return ""
    except TimeoutError:
        return "timed out"
    except OSError as exc:
        return str(exc.strerror or exc)


def _refusal_hint(ae_title: str) -> str:
    return (f"an archive answers only AE titles it knows: declare AE {ae_title} there (Orthanc: DicomModalities) "
            f"or set {AE_TITLE_ENV}")


def _status_text(status: Dataset | None) -> str:
    if status is None or "Status" not in status:
        return "no status (the connection was lost)"
    code = int(status.Status)
    meaning = _STATUS_MEANING.get(code) or ("failure" if code >= 0xA000 else "")
    comment = str(status.get("ErrorComment", "") or "").strip()
    return f"status 0x{code:04X}" + (f" {meaning}" if meaning else "") + (f": {comment}" if comment else "")


def _lost(target: DimseTarget, assoc: Any) -> bool:
    return bool(assoc.is_aborted or not assoc.is_established)


# -- find ---------------------------------------------------------------------------------------
@dataclass
class SeriesPlan:
    """One series to retrieve: where it is, and every instance the archive listed for it."""

    study: str
    series: str
    instances: dict[str, str] = field(default_factory=dict)  # SOP Instance UID -> SOP Class UID


def _find(assoc: Any, target: DimseTarget, level: str, keys: dict[str, str], wanted: Sequence[str],
          doing: str) -> list[Dataset]:
    query = Dataset()
    query.QueryRetrieveLevel = level
    for keyword in wanted:
        setattr(query, keyword, "")
    for keyword, value in keys.items():
        setattr(query, keyword, value)
    found: list[Dataset] = []
    final: Dataset | None = None
    for status, identifier in assoc.send_c_find(query, StudyRootQueryRetrieveInformationModelFind):
        code = int(status.Status) if status is not None and "Status" in status else None
        if code in _PENDING and identifier is not None:
            found.append(identifier)
        else:
            final = status
    if final is None or "Status" not in final:
        ae_title = str(assoc.requestor.ae_title)
        raise MedhubError(f"DICOM node {target.address} closed the connection instead of answering C-FIND from "
                          f"AE {ae_title} while {doing}; {_refusal_hint(ae_title)}")
    if int(final.Status) != _SUCCESS:
        raise MedhubError(f"DICOM node {target.address} refused C-FIND while {doing} ({_status_text(final)}); "
                          f"{_refusal_hint(str(assoc.requestor.ae_title))}")
    return found


def find_series(target: DimseTarget, ae_title: str | None = None) -> list[SeriesPlan]:
    """Every series the target's filters match, with its instances, via C-FIND (Study Root)."""
    if not (target.study or target.series or target.patient):
        raise MedhubError(f"DIMSE input {target.address} needs ?study=UID, ?series=UID or ?patient=ID")
    ae = _new_ae(ae_title)
    ae.add_requested_context(StudyRootQueryRetrieveInformationModelFind)
    plans: list[SeriesPlan] = []
    with _association(target, ae, f"searching ({target.filters})") as assoc:
        studies = [target.study] if target.study else []
        if target.patient:
            keys = {"PatientID": target.patient, **({"StudyInstanceUID": target.study} if target.study else {})}
            found = _find(assoc, target, "STUDY", keys, ["StudyInstanceUID"], f"searching studies ({target.filters})")
            studies = sorted({str(s.StudyInstanceUID) for s in found if s.get("StudyInstanceUID")})
            if not studies:
                raise MedhubError(f"no study found for {target.filters} at DICOM node {target.address}")
        pairs: list[tuple[str, str]] = []
        if target.series:
            keys = {"SeriesInstanceUID": target.series}
            for study in studies or [""]:
                found = _find(assoc, target, "SERIES", {**keys, "StudyInstanceUID": study}, ["Modality"],
                              f"searching series ({target.filters})")
                pairs += [(str(s.StudyInstanceUID), str(s.SeriesInstanceUID)) for s in found
                          if str(s.get("SeriesInstanceUID", "")) == target.series]
        else:
            for study in studies:
                found = _find(assoc, target, "SERIES", {"StudyInstanceUID": study}, ["SeriesInstanceUID", "Modality"],
                              f"searching the series of study {study}")
                pairs += [(study, str(s.SeriesInstanceUID)) for s in found if s.get("SeriesInstanceUID")]
        for study, series in dict.fromkeys(pairs):
            found = _find(assoc, target, "IMAGE", {"StudyInstanceUID": study, "SeriesInstanceUID": series},
                          ["SOPInstanceUID", "SOPClassUID"], f"listing the instances of series {series}")
            instances = {str(i.SOPInstanceUID): str(i.get("SOPClassUID", "") or "") for i in found
                         if i.get("SOPInstanceUID")}
            plans.append(SeriesPlan(study, series, instances))
    if not plans:
        raise MedhubError(f"no series found for {target.filters} at DICOM node {target.address}")
    return plans


# -- retrieve -----------------------------------------------------------------------------------
class _Receiver:
    """The C-STORE handler of a retrieval: each instance of a planned series into its folder, atomically."""

    def __init__(self, dest_dir: Path, plans: Sequence[SeriesPlan], on_instance: Callable[[str], None]) -> None:
        self.folders = {plan.series: dest_dir / safe_component(plan.series) for plan in plans}
        self.series_of = {sop: plan.series for plan in plans for sop in plan.instances}
        self.on_instance = on_instance
        self.written: set[str] = set()
        self.refused: list[str] = []
        self._lock = threading.Lock()

    def handle(self, event: Any) -> int:
        uid = str(event.request.AffectedSOPInstanceUID)
        series = self.series_of.get(uid)
        if series is None:  # not listed by C-FIND (added since?): take it if it belongs to a planned series
            series = str(getattr(event.dataset, "SeriesInstanceUID", "") or "")
        folder = self.folders.get(series)
        if folder is None:
            with self._lock:
                self.refused.append(uid)
            return 0xA900  # not part of what was asked for
        try:
            with atomic_output(folder / f"{safe_component(uid)}.dcm") as temporary:
                temporary.write_bytes(event.encoded_dataset(include_meta=True))
        except OSError:
            return 0xA700  # out of resources: the disk is full or the folder unwritable
        with self._lock:
            self.written.add(uid)
        self.on_instance(uid)
        return _SUCCESS


def _storage_contexts(sop_classes: set[str]) -> tuple[list[Any], list[Any]]:
    """Presentation contexts and SCP roles for receiving the given storage SOP classes.

    Per SOP class one context offers the uncompressed transfer syntaxes and one context each
    compressed syntax pydicom decodes (with the pylibjpeg plugins), as DCMTK's getscu does: the
    sender then picks the context of the syntax an instance is stored in, and nothing is
    transcoded, least of all into a lossy syntax it happened to prefer.
    """
    classes = sorted(c for c in sop_classes if c) or list(_COMMON_IMAGE_CLASSES)
    contexts = []
    for uid in classes[:_MAX_CLASSES]:
        contexts.append(build_context(uid, [ExplicitVRLittleEndian, ImplicitVRLittleEndian]))
        contexts += [build_context(uid, syntax) for syntax in _COMPRESSED_SYNTAXES]
    roles = [build_role(uid, scp_role=True) for uid in classes[:_MAX_CLASSES]]
    return contexts, roles


def fetch_input(url: str | os.PathLike[str], dest_dir: Path, progress: FetchProgress | None = None,
                move_to: str | None = None, move_port: int | None = None, ae_title: str | None = None) -> Path:
    """Copy the series that ``url`` selects into ``dest_dir/<series uid>/<sop uid>.dcm``; return ``dest_dir``.

    C-FIND lists the series and their instances; C-GET retrieves each series on the same kind of
    association (no connection back), or C-MOVE to ``move_to`` with medhub receiving on
    ``move_port``. Files are written under a temporary name and renamed when complete, so
    ``dest_dir`` never holds a truncated file; a series whose files are all present already is
    not fetched again. Raises MedhubError (one line) when the node cannot be reached, refuses
    us, has no matching series, or delivers fewer instances than C-FIND listed.
    """
    target = parse_dimse_url(url)
    if move_to is not None:
        move_to = check_ae_title(move_to, "--move-to")
        if move_port is None:
            raise MedhubError("C-MOVE needs the port medhub receives on (--move-port), the one the archive "
                              f"has configured for AE {move_to}")
    plans = find_series(target, ae_title)
    total = sum(len(plan.instances) for plan in plans)
    done = 0
    dest_dir.mkdir(parents=True, exist_ok=True)
    todo: list[SeriesPlan] = []
    for plan in plans:
        folder = dest_dir / safe_component(plan.series)
        folder.mkdir(parents=True, exist_ok=True)
        for leftover in folder.glob(".*.partial"):  # from a fetch that was killed: never complete
            leftover.unlink(missing_ok=True)
        present = {p.stem for p in folder.glob("*.dcm")}
        if plan.instances and set(plan.instances) <= present:
            done += len(plan.instances)
        else:
            todo.append(plan)
    if progress:
        progress(done, total)
    lock = threading.Lock()

    def written_one(_uid: str) -> None:
        nonlocal done
        with lock:
            done += 1
            count = done
        if progress:
            progress(count, total)

    receiver = _Receiver(dest_dir, todo, written_one)
    for plan in todo:
        if move_to is None:
            _get_series(target, plan, receiver, ae_title)
        else:
            _move_series(target, plan, receiver, move_to, move_port or 0, ae_title)
        present = {p.stem for p in (dest_dir / safe_component(plan.series)).glob("*.dcm")}
        missing = sorted(set(plan.instances) - present)
        if missing:
            raise MedhubError(
                f"DICOM node {target.address} delivered {len(plan.instances) - len(missing)} of "
                f"{len(plan.instances)} instances of series {plan.series} (first missing: {missing[0]})")
    return dest_dir


def _get_series(target: DimseTarget, plan: SeriesPlan, receiver: _Receiver, ae_title: str | None) -> None:
    """C-GET one series, taking the SCP role for its storage SOP classes."""
    ae = _new_ae(ae_title)
    ae.add_requested_context(StudyRootQueryRetrieveInformationModelGet)
    contexts, roles = _storage_contexts(set(plan.instances.values()))
    if len(set(plan.instances.values())) > _MAX_CLASSES:
        raise MedhubError(f"series {plan.series} mixes {len(set(plan.instances.values()))} SOP classes; one C-GET "
                          f"association offers at most {_MAX_CLASSES} (use C-MOVE: --move-to)")
    for context in contexts:
        ae.add_requested_context(context.abstract_syntax, context.transfer_syntax)
    query = Dataset()
    query.QueryRetrieveLevel = "SERIES"
    query.StudyInstanceUID, query.SeriesInstanceUID = plan.study, plan.series
    doing = f"retrieving series {plan.series} with C-GET"
    with _association(target, ae, doing, ext_neg=roles, evt_handlers=[(evt.EVT_C_STORE, receiver.handle)]) as assoc:
        final = None
        for status, _identifier in assoc.send_c_get(query, StudyRootQueryRetrieveInformationModelGet):
            if status is None or "Status" not in status or int(status.Status) not in _PENDING:
                final = status
        _check_retrieve(target, assoc, final, plan, receiver, doing)


def _move_series(target: DimseTarget, plan: SeriesPlan, receiver: _Receiver, move_to: str, port: int,
                 ae_title: str | None) -> None:
    """C-MOVE one series to ``move_to``: medhub listens on ``port`` as that AE while the archive sends."""
    scp = _new_ae(move_to)
    for sop_class in STORAGE_SOP_CLASSES:
        scp.add_supported_context(sop_class, ALL_TRANSFER_SYNTAXES)
    try:
        server = scp.start_server(("", port), block=False, evt_handlers=[(evt.EVT_C_STORE, receiver.handle)])
    except OSError as exc:
        raise MedhubError(f"cannot receive C-MOVE on port {port}: {exc.strerror or exc}") from None
    assert server is not None  # block=False returns the running server (None is for block=True)
    try:
        ae = _new_ae(ae_title)
        ae.add_requested_context(StudyRootQueryRetrieveInformationModelMove)
        query = Dataset()
        query.QueryRetrieveLevel = "SERIES"
        query.StudyInstanceUID, query.SeriesInstanceUID = plan.study, plan.series
        doing = f"retrieving series {plan.series} with C-MOVE to {move_to}"
        with _association(target, ae, doing) as assoc:
            final = None
            for status, _identifier in assoc.send_c_move(query, move_to, StudyRootQueryRetrieveInformationModelMove):
                if status is None or "Status" not in status or int(status.Status) not in _PENDING:
                    final = status
            _check_retrieve(target, assoc, final, plan, receiver, doing)
    finally:
        server.shutdown()


def _check_retrieve(target: DimseTarget, assoc: Any, final: Dataset | None, plan: SeriesPlan,
                    receiver: _Receiver, doing: str) -> None:
    got = len(set(plan.instances) & receiver.written)
    if final is None or "Status" not in final:
        raise MedhubError(f"lost the connection to DICOM node {target.address} while {doing} "
                          f"({got} of {len(plan.instances)} whole instances written)")
    code = int(final.Status)
    if code != _SUCCESS and code not in _WARNINGS:
        hint = ""
        if code == 0xA801:
            hint = "; the archive must know the destination AE with this machine's address and --move-port"
        elif code >= 0xA000:
            hint = "; " + _refusal_hint(str(assoc.requestor.ae_title))
        raise MedhubError(f"DICOM node {target.address} refused {doing} ({_status_text(final)}){hint}")


# -- push ---------------------------------------------------------------------------------------
class DimsePush:
    """C-STORE as a :class:`~medhub.inputs.push.PushTarget`: one association for every object."""

    def __init__(self, target: DimseTarget, ae_title: str | None = None) -> None:
        self.target = target
        self.ae_title = ae_title
        self.assoc: Any = None

    def open(self, datasets: Sequence[pydicom.Dataset]) -> None:
        """Associate, proposing each object's SOP class in its own transfer syntax (and C-ECHO)."""
        ae = _new_ae(self.ae_title)
        ae.add_requested_context(Verification)
        pairs: dict[str, set[str]] = {}
        for dataset in datasets:
            meta = getattr(dataset, "file_meta", None)
            syntax = str(getattr(meta, "TransferSyntaxUID", "") or ExplicitVRLittleEndian)
            pairs.setdefault(str(dataset.SOPClassUID), set()).add(syntax)
        for sop_class, syntaxes in sorted(pairs.items()):
            uncompressed = syntaxes <= {ExplicitVRLittleEndian, ImplicitVRLittleEndian}
            offered = [ExplicitVRLittleEndian, ImplicitVRLittleEndian] if uncompressed else sorted(syntaxes)
            ae.add_requested_context(sop_class, [UID(s) for s in offered])
        assoc = ae.associate(self.target.host, self.target.port, ae_title=self.target.called_aet)
        if not assoc.is_established:
            raise MedhubError(_association_failure(self.target, ae, assoc, "connecting to store"))
        self.assoc = assoc
        refused = sorted({str(c.abstract_syntax) for c in assoc.rejected_contexts} & set(pairs))
        if refused:
            raise MedhubError(f"DICOM node {self.target.address} does not accept SOP class {refused[0]} "
                              f"({pydicom.uid.UID(refused[0]).name})")

    def store(self, path: Path, dataset: pydicom.Dataset) -> None:
        try:
            status = self.assoc.send_c_store(dataset)
        except Exception as exc:  # pynetdicom raises when no context fits or the association is gone
            if _lost(self.target, self.assoc):
                raise MedhubError(f"lost the connection to DICOM node {self.target.address} while storing "
                                  f"{path.name}") from None
            raise MedhubError(f"cannot store {path.name} at DICOM node {self.target.address}: "
                              f"{str(exc).splitlines()[0][:200]}") from None
        if status is None or "Status" not in status:
            raise MedhubError(f"lost the connection to DICOM node {self.target.address} while storing {path.name}")
        code = int(status.Status)
        if code != _SUCCESS and code not in _WARNINGS:
            raise MedhubError(f"DICOM node {self.target.address} refused {path.name} ({_status_text(status)})")

    def close(self) -> None:
        if self.assoc is not None and self.assoc.is_established:
            with contextlib.suppress(Exception):
                self.assoc.release()
        self.assoc = None


def push_outputs(files: Sequence[Path], url: str | os.PathLike[str], progress: PushProgress | None = None,
                 ae_title: str | None = None) -> list[str]:
    """C-STORE each DICOM file (SEG, RTSTRUCT, SR) to the node of ``url``; return the stored SOP Instance UIDs.

    The accounting (read everything first, prove the node answers, stop at the first failure and
    say what was and was not stored) is :func:`medhub.inputs.push.push_files`'s.
    """
    target = parse_dimse_url(url)
    if target.study or target.series or target.patient:
        raise MedhubError(f"--push dimse://{target.address} takes no ?study/series/patient: objects go to the "
                          "study they belong to")
    return push_files(files, DimsePush(target, ae_title), progress)


def echo(url: str | os.PathLike[str], ae_title: str | None = None) -> None:
    """C-ECHO the node of ``url``; raise MedhubError (one line) when it does not answer with success."""
    target = parse_dimse_url(url)
    ae = _new_ae(ae_title)
    ae.add_requested_context(Verification)
    with _association(target, ae, "sending C-ECHO") as assoc:
        status = assoc.send_c_echo()
        if status is None or int(status.get("Status", -1)) != _SUCCESS:
            raise MedhubError(f"DICOM node {target.address} answered C-ECHO with {_status_text(status)}")
