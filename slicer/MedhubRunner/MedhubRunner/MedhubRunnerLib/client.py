"""The MedhubRunner module's logic: talk to medhub, with nothing from Slicer (no slicer, qt, vtk, ctk).

Two ways to reach medhub, one interface:

* :class:`ServerBackend`: a ``medhub serve`` URL (REST): ``GET /api/models`` for the catalog,
  ``POST /api/jobs`` with the series zipped (or one NIfTI file), ``GET /api/jobs/{id}`` to poll,
  ``GET /api/jobs/{id}/results/{path}`` to fetch the SEG and the ``.seg.nrrd``.
* :class:`LocalBackend`: a ``medhub`` executable on this computer: ``medhub models --json`` and
  ``medhub run MODEL --input DIR --output OUT --seg-nrrd --json-progress``.

Both end in a :class:`RunResult` whose ``seg_nrrd`` files Slicer loads as segmentation nodes
(names, colours and DICOM terminology are in the file's header, see :func:`read_segments`).
Only the standard library is used, so the module runs in Slicer's own Python without pip. Every
failure is a :class:`MedhubClientError` with one line a person can act on.
"""

from __future__ import annotations

import gzip
import json
import os
import shutil
import subprocess
import tempfile
import time
import urllib.error
import urllib.parse
import urllib.request
import uuid
import zipfile
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Optional

ProgressCallback = Callable[[str, Optional[float]], None]
"""Called as ``progress(message, fraction)``; ``fraction`` runs from 0 to 1, or is None when unknown."""
CancelCheck = Callable[[], bool]
"""Returns True when the user asked to stop."""

FINISHED = ("succeeded", "failed", "cancelled")
NIFTI_SUFFIXES = (".nii", ".nii.gz")


class MedhubClientError(Exception):
    """A problem the user can act on (server down, wrong token, unusable input, failed job): one line."""


@dataclass
class ModelInfo:
    """One model of the catalog, as the module's model list shows it."""

    id: str
    title: str = ""
    version: str = ""
    modality: list[str] = field(default_factory=list)
    body_part: str = ""
    task: str = ""

    @classmethod
    def from_card(cls, card: dict[str, Any]) -> ModelInfo:
        modality = card.get("modality") or []
        return cls(id=str(card.get("id", "")), title=str(card.get("title") or ""),
                   version=str(card.get("version") or ""),
                   modality=[str(m) for m in (modality if isinstance(modality, list) else [modality])],
                   body_part=str(card.get("body_part") or ""), task=str(card.get("task") or ""))

    @property
    def label(self) -> str:
        """``ct-body (CT, CHEST): CT body, lungs and bone ...`` for a combo box."""
        where = ", ".join([*self.modality, self.body_part] if self.body_part else self.modality)
        return f"{self.id} ({where}): {self.title}" if where else f"{self.id}: {self.title}"


@dataclass
class JobState:
    """A server job as ``GET /api/jobs/{id}`` describes it."""

    id: str
    status: str
    progress: dict[str, Any] = field(default_factory=dict)
    error: str | None = None
    results: list[dict[str, Any]] = field(default_factory=list)
    report: dict[str, Any] | None = None

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> JobState:
        return cls(id=str(data["id"]), status=str(data["status"]), progress=dict(data.get("progress") or {}),
                   error=data.get("error"), results=list(data.get("results") or []), report=data.get("report"))

    @property
    def finished(self) -> bool:
        return self.status in FINISHED

    @property
    def fraction(self) -> float | None:
        done, total = self.progress.get("series_done") or 0, self.progress.get("series_total") or 0
        if self.status == "succeeded":
            return 1.0
        return min(done / total, 1.0) if total else None

    @property
    def message(self) -> str:
        step = self.progress.get("step")
        total = self.progress.get("series_total") or 0
        counted = f" series {self.progress.get('series_done') or 0}/{total}" if total else ""
        return f"{self.status}{counted}" + (f": {step}" if step and not self.finished else "")


@dataclass
class RunResult:
    """What a run left on this computer: the ``.seg.nrrd`` files to load, the DICOM SEGs, the report."""

    output_dir: Path
    seg_nrrd: list[Path] = field(default_factory=list)
    seg: list[Path] = field(default_factory=list)
    report: dict[str, Any] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)  # reasons for series without a result


# ---------------------------------------------------------------------------------------- server
class ServerBackend:
    """A ``medhub serve`` instance, by its base URL (``http://host:8000``) and optional API token."""

    def __init__(self, url: str, token: str | None = None, timeout: float = 60.0) -> None:
        parts = urllib.parse.urlsplit(url.strip())
        if parts.scheme not in ("http", "https") or not parts.netloc:
            raise MedhubClientError(f"not a medhub server URL: {url!r} (expected http://HOST:PORT)")
        self.url = f"{parts.scheme}://{parts.netloc}{parts.path.rstrip('/')}"
        self.token = token or None
        self.timeout = timeout

    def __repr__(self) -> str:
        return f"ServerBackend({self.url!r})"

    # -- HTTP ------------------------------------------------------------------------------------
    def _request(self, method: str, path: str, body: Any = None, headers: dict[str, str] | None = None,
                 timeout: float | None = None) -> Any:
        request = urllib.request.Request(self.url + path, data=body, method=method, headers=dict(headers or {}))
        if self.token:
            request.add_header("Authorization", f"Bearer {self.token}")
        try:
            return urllib.request.urlopen(request, timeout=timeout or self.timeout)  # noqa: S310 - http(s) only
        except urllib.error.HTTPError as exc:
            detail = _detail(exc)
            if exc.code == 401:
                raise MedhubClientError(f"medhub server {self.url} refused the API token (HTTP 401)"
                                        + ("" if self.token else "; it needs one")) from None
            raise MedhubClientError(f"medhub server {self.url} answered HTTP {exc.code} to {method} {path}"
                                    + (f": {detail}" if detail else "")) from None
        except (urllib.error.URLError, OSError) as exc:
            reason = getattr(exc, "reason", exc)
            raise MedhubClientError(f"cannot reach the medhub server at {self.url}: {reason}") from None

    def _json(self, method: str, path: str, **kwargs: Any) -> Any:
        with self._request(method, path, **kwargs) as response:
            return json.loads(response.read().decode("utf-8"))

    # -- the catalog, jobs, results -----------------------------------------------------------------
    def models(self, modality: str | None = None) -> list[ModelInfo]:
        query = "?" + urllib.parse.urlencode({"modality": modality}) if modality else ""
        return [ModelInfo.from_card(card) for card in self._json("GET", "/api/models" + query)]

    def submit(self, model: str, files: Sequence[Path], workflow: str = "default", rtstruct: bool = False) -> str:
        """Upload ``files`` (DICOM files, zipped here, or one NIfTI file) as a job; return the job id."""
        paths = [Path(p) for p in files]
        if not paths:
            raise MedhubClientError("nothing to send: the selected input has no files")
        missing = [p for p in paths if not p.is_file()]
        if missing:
            raise MedhubClientError(f"input file not found: {missing[0]}")
        options = json.dumps({"seg_nrrd": True, "rtstruct": bool(rtstruct)})
        with tempfile.TemporaryDirectory(prefix="medhub-slicer-") as scratch:
            if len(paths) == 1 and paths[0].name.lower().endswith(NIFTI_SUFFIXES):
                upload = paths[0]
            else:
                upload = Path(scratch) / "series.zip"
                with zipfile.ZipFile(upload, "w", compression=zipfile.ZIP_STORED) as archive:
                    for index, path in enumerate(paths):
                        archive.write(path, f"{index:06d}_{path.name}")
            body, content_type = _multipart({"model": model, "workflow": workflow, "options": options},
                                            upload, Path(scratch) / "body")
            with open(body, "rb") as stream:
                job = self._json("POST", "/api/jobs", body=stream,
                                 headers={"Content-Type": content_type,
                                          "Content-Length": str(body.stat().st_size)},
                                 timeout=max(self.timeout, 600))
        return str(job["id"])

    def job(self, job_id: str) -> JobState:
        return JobState.from_json(self._json("GET", f"/api/jobs/{urllib.parse.quote(job_id)}"))

    def cancel(self, job_id: str) -> None:
        self._request("DELETE", f"/api/jobs/{urllib.parse.quote(job_id)}").close()

    def wait(self, job_id: str, progress: ProgressCallback | None = None, poll_seconds: float = 0.5,
             timeout: float = 6 * 3600, should_cancel: CancelCheck | None = None) -> JobState:
        """Poll until the job has finished; report progress on the way; cancel it if asked to."""
        deadline = time.monotonic() + timeout
        while True:
            state = self.job(job_id)
            if progress:
                progress(state.message, state.fraction)
            if state.finished:
                return state
            if should_cancel and should_cancel():
                self.cancel(job_id)
                raise MedhubClientError(f"job {job_id} cancelled")
            if time.monotonic() > deadline:
                raise MedhubClientError(f"job {job_id} did not finish within {timeout:.0f} s (still {state.status})")
            time.sleep(poll_seconds)

    def download(self, state: JobState, dest_dir: Path, kinds: Sequence[str] = ("seg_nrrd", "seg")) -> RunResult:
        """Fetch the job's result files of ``kinds`` into ``dest_dir`` (same relative paths as on the server)."""
        dest_dir = Path(dest_dir)
        result = RunResult(output_dir=dest_dir, report=state.report or {})
        for item in state.results:
            kind, relative = item.get("kind"), str(item.get("path", ""))
            if kind not in kinds:
                continue
            target = _inside(dest_dir, relative)
            target.parent.mkdir(parents=True, exist_ok=True)
            partial = target.with_name(target.name + ".partial")
            address = f"/api/jobs/{urllib.parse.quote(state.id)}/results/{urllib.parse.quote(relative)}"
            with self._request("GET", address, timeout=max(self.timeout, 600)) as response, \
                    open(partial, "wb") as stream:
                shutil.copyfileobj(response, stream)
            os.replace(partial, target)
            (result.seg_nrrd if kind == "seg_nrrd" else result.seg).append(target)
        result.notes = _notes(result.report)
        return result

    def run(self, model: str, files: Sequence[Path], dest_dir: Path, progress: ProgressCallback | None = None,
            should_cancel: CancelCheck | None = None, workflow: str = "default") -> RunResult:
        """Submit, wait, download: the whole round trip of the module's Run button."""
        if progress:
            progress("uploading", None)
        job_id = self.submit(model, files, workflow=workflow)
        state = self.wait(job_id, progress=progress, should_cancel=should_cancel)
        if state.status != "succeeded":
            raise MedhubClientError(f"medhub job {job_id} {state.status}: {state.error or 'see its report'}")
        return self.download(state, dest_dir)


# ----------------------------------------------------------------------------------------- local
class LocalBackend:
    """A ``medhub`` program on this computer: a name on PATH, a path, or a command list."""

    def __init__(self, command: str | Sequence[str] = "medhub") -> None:
        self.command = [command] if isinstance(command, str) else list(command)
        if not self.command:
            raise MedhubClientError("no medhub command given")
        found = shutil.which(self.command[0])
        if found is None:
            raise MedhubClientError(f"medhub executable not found: {self.command[0]} "
                                    "(install medhub, or give a medhub serve URL)")
        self.command[0] = found

    def __repr__(self) -> str:
        return f"LocalBackend({self.command!r})"

    def _call(self, *args: str, timeout: float = 300) -> str:
        process = subprocess.run([*self.command, *args], capture_output=True, text=True, timeout=timeout,
                                 check=False)
        if process.returncode != 0:
            raise MedhubClientError(_last_line(process.stderr) or f"medhub {args[0]} failed ({process.returncode})")
        return process.stdout

    def models(self, modality: str | None = None) -> list[ModelInfo]:
        args = ["models", "--json"] + (["--modality", modality] if modality else [])
        return [ModelInfo.from_card(card) for card in json.loads(self._call(*args))]

    def run(self, model: str, files: Sequence[Path], dest_dir: Path, progress: ProgressCallback | None = None,
            should_cancel: CancelCheck | None = None, workflow: str = "default") -> RunResult:
        """``medhub run`` on ``files`` (linked into a scratch folder: medhub never writes next to its input)."""
        paths = [Path(p) for p in files]
        if not paths:
            raise MedhubClientError("nothing to run on: the selected input has no files")
        dest_dir = Path(dest_dir)
        with tempfile.TemporaryDirectory(prefix="medhub-slicer-") as scratch:
            if len(paths) == 1 and paths[0].name.lower().endswith(NIFTI_SUFFIXES):
                source = paths[0]
            else:
                source = Path(scratch) / "input"
                source.mkdir()
                for index, path in enumerate(paths):
                    _link_or_copy(path, source / f"{index:06d}_{path.name}")
            command = [*self.command, "run", model, "--input", str(source), "--output", str(dest_dir),
                       "--workflow", workflow, "--seg-nrrd", "--json-progress"]
            process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
            chosen, done = 0, 0
            try:
                assert process.stdout is not None
                for line in process.stdout:
                    try:
                        event = json.loads(line)
                    except json.JSONDecodeError:
                        continue
                    kind = event.get("event")
                    if kind == "selected":
                        chosen = int(event.get("chosen") or 0)
                    elif kind == "series_done":
                        done += 1
                    if progress and kind in ("scan_done", "selected", "step", "series_done", "run_done"):
                        step = event.get("step") or kind.replace("_", " ")
                        progress(f"running series {done}/{chosen}: {step}" if chosen else step,
                                 min(done / chosen, 1.0) if chosen else None)
                    if should_cancel and should_cancel():
                        process.terminate()
                        process.wait(60)
                        raise MedhubClientError("run cancelled")
                errors = process.stderr.read() if process.stderr else ""
                code = process.wait()
            finally:
                if process.poll() is None:
                    process.kill()
                    process.wait()
        if code not in (0, 1):
            raise MedhubClientError(_last_line(errors) or f"medhub run failed ({code})")
        report_path = dest_dir / "medhub-report.json"
        report = json.loads(report_path.read_text(encoding="utf-8")) if report_path.is_file() else {}
        result = RunResult(output_dir=dest_dir, report=report, notes=_notes(report))
        for entry in report.get("series", []):
            for output in entry.get("outputs", []):
                if output.endswith(".seg.nrrd"):
                    result.seg_nrrd.append(dest_dir / output)
                elif output.endswith(".seg.dcm"):
                    result.seg.append(dest_dir / output)
        if code == 1 and not result.seg_nrrd:
            raise MedhubClientError("medhub run failed: " + ("; ".join(result.notes) or _last_line(errors)))
        if progress:
            progress("done", 1.0)
        return result


def backend_for(location: str, token: str | None = None) -> ServerBackend | LocalBackend:
    """A server for ``http(s)://...``, else a local executable (a name on PATH or a path)."""
    text = location.strip()
    if not text:
        raise MedhubClientError("give a medhub serve URL (http://HOST:PORT) or a medhub executable")
    if text.lower().startswith(("http://", "https://")):
        return ServerBackend(text, token=token)
    return LocalBackend(text)


# ------------------------------------------------------------------------------ the .seg.nrrd file
def read_segments(path: Path) -> list[dict[str, Any]]:
    """Name, label value, colour (0..1) and terminology string of each segment in a ``.seg.nrrd`` header.

    Reads the text header only (up to the blank line before the voxels): enough to tell the user
    what was loaded, and to check a download before handing it to Slicer.
    """
    header = bytearray()
    with open(path, "rb") as stream:
        magic = stream.readline()
        if not magic.startswith(b"NRRD"):
            raise MedhubClientError(f"{Path(path).name} is not an NRRD file")
        for line in stream:
            if line in (b"\n", b"\r\n"):
                break
            header += line
    fields: dict[str, str] = {}
    for line in header.decode("utf-8", "replace").splitlines():
        if ":=" in line:
            key, value = line.split(":=", 1)
            fields[key] = value
    segments = []
    index = 0
    while f"Segment{index}_ID" in fields:
        tags = dict(item.split(":", 1) for item in fields.get(f"Segment{index}_Tags", "").split("|") if ":" in item)
        segments.append({
            "id": fields[f"Segment{index}_ID"],
            "name": fields.get(f"Segment{index}_Name", ""),
            "label_value": int(fields.get(f"Segment{index}_LabelValue", "0") or 0),
            "color": [float(v) for v in fields.get(f"Segment{index}_Color", "").split()],
            "terminology": tags.get("TerminologyEntry", ""),
        })
        index += 1
    return segments


# ----------------------------------------------------------------------------------------- helpers
def _multipart(fields: dict[str, str], upload: Path, body: Path) -> tuple[Path, str]:
    """A multipart/form-data body in a file (the series may be large), and its Content-Type."""
    boundary = f"medhub-{uuid.uuid4().hex}"
    with open(body, "wb") as out:
        for name, value in fields.items():
            out.write(f'--{boundary}\r\nContent-Disposition: form-data; name="{name}"\r\n\r\n'.encode())
            out.write(value.encode("utf-8") + b"\r\n")
        kind = "application/zip" if upload.suffix == ".zip" else "application/octet-stream"
        out.write(f'--{boundary}\r\nContent-Disposition: form-data; name="files"; filename="{upload.name}"\r\n'
                  f"Content-Type: {kind}\r\n\r\n".encode())
        with open(upload, "rb") as source:
            shutil.copyfileobj(source, out)
        out.write(f"\r\n--{boundary}--\r\n".encode())
    return body, f"multipart/form-data; boundary={boundary}"


def _detail(error: urllib.error.HTTPError) -> str:
    """The server's one-line ``detail`` of an error answer, if it sent one."""
    try:
        raw = error.read()
        if error.headers.get("Content-Encoding") == "gzip":
            raw = gzip.decompress(raw)
        detail = json.loads(raw.decode("utf-8")).get("detail", "")
    except (ValueError, OSError, AttributeError):
        return ""
    if isinstance(detail, list):  # a framework validation error: the first message
        detail = detail[0].get("msg", "") if detail and isinstance(detail[0], dict) else ""
    return str(detail).splitlines()[0] if detail else ""


def _inside(root: Path, relative: str) -> Path:
    """``root/relative``, refusing a path from the server that would leave ``root``."""
    target = (root / relative).resolve()
    if root.resolve() not in target.parents:
        raise MedhubClientError(f"the server named a result outside the download folder: {relative!r}")
    return target


def _link_or_copy(source: Path, target: Path) -> None:
    try:
        target.symlink_to(source.resolve())
    except OSError:  # Windows without the symlink privilege
        shutil.copyfile(source, target)


def _last_line(text: str) -> str:
    lines = [line.strip() for line in (text or "").splitlines() if line.strip()]
    return lines[-1].removeprefix("medhub: ") if lines else ""


def _notes(report: dict[str, Any]) -> list[str]:
    """Why series produced no result (rejected, skipped, failed), from a medhub report."""
    notes = []
    for entry in report.get("series", []) or []:
        if entry.get("status") != "succeeded" and entry.get("reason"):
            notes.append(f"{entry.get('key', '')[-12:]}: {entry['status']}: {entry['reason']}")
    return notes
