"""Start a real Orthanc (Debian's ``orthanc`` + ``orthanc-dicomweb``) for the DICOMweb and DIMSE tests.

Each server gets its own free loopback HTTP port and its own storage and index folders in a
temporary directory, so tests never touch a system Orthanc or each other. The DICOM (DIMSE)
server is off unless ``dicom=True``: then it listens on its own free port with AE title
``dicom_aet``, and ``modalities`` declares the AE titles it answers C-FIND / C-GET / C-MOVE for
(Orthanc 1.10 refuses queries from unknown AEs). Remote access is off (loopback only) and HTTP
basic authentication is on with one registered user, so authentication is tested for real.

A server can be stopped and started again on the same port and storage: that is how the
tests show that nothing was stored while the server was down.
"""

from __future__ import annotations

import contextlib
import json
import shutil
import socket
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

import requests

ORTHANC_BINARY = "/usr/sbin/Orthanc"
DICOMWEB_PLUGIN_CANDIDATES = (
    "/usr/share/orthanc/plugins/libOrthancDicomWeb.so",  # Debian's orthanc-dicomweb (symlink)
    "/usr/lib/orthanc/libOrthancDicomWeb.so",
)
USER, PASSWORD = "medhub", "s3cret-orthanc-password"


def orthanc_binary() -> str | None:
    """The Orthanc executable, or None when the Debian package is not installed."""
    if Path(ORTHANC_BINARY).exists():
        return ORTHANC_BINARY
    return shutil.which("Orthanc")


def dicomweb_plugin() -> str | None:
    """The DICOMweb plugin library (``dpkg -L orthanc-dicomweb``), or None when absent."""
    for candidate in DICOMWEB_PLUGIN_CANDIDATES:
        if Path(candidate).exists():
            return candidate
    found = sorted(Path("/usr/lib/orthanc").glob("libOrthancDicomWeb.so*")) if Path("/usr/lib/orthanc").exists() else []
    return str(found[0]) if found else None


def missing_reason() -> str | None:
    """Why Orthanc cannot run here (for ``pytest.skip``), or None when it can."""
    if orthanc_binary() is None:
        return "Orthanc not installed (apt-get install orthanc orthanc-dicomweb; README.md, 'Orthanc on a workstation')"
    if dicomweb_plugin() is None:
        return "Orthanc DICOMweb plugin not installed (apt-get install orthanc-dicomweb)"
    return None


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def modality(aet: str, port: int, host: str = "127.0.0.1") -> dict[str, object]:
    """A ``DicomModalities`` entry that may echo, find, get, move and store (the port is where C-MOVE sends)."""
    return {"AET": aet, "Host": host, "Port": port, "Manufacturer": "Generic", "AllowEcho": True,
            "AllowFind": True, "AllowGet": True, "AllowMove": True, "AllowStore": True}


@dataclass
class OrthancServer:
    """One Orthanc process with its own port, storage and configuration under ``workdir``.

    ``lua`` is an optional Lua script (for example an ``IncomingHttpRequestFilter`` that demands
    a bearer token); ``authentication`` switches Orthanc's own basic authentication; ``headers``
    are sent with the helper's own requests (the bearer token such a filter wants).
    """

    workdir: Path
    authentication: bool = True
    lua: str | None = None
    headers: dict[str, str] = field(default_factory=dict)
    port: int = field(default_factory=free_port)
    process: subprocess.Popen[bytes] | None = None
    dicom: bool = False
    dicom_port: int = field(default_factory=free_port)
    dicom_aet: str = "ORTHANC"
    modalities: dict[str, dict[str, object]] = field(default_factory=dict)

    @property
    def dimse_url(self) -> str:
        """``dimse://AET@127.0.0.1:PORT``: Orthanc's DICOM server as medhub names it."""
        return f"dimse://{self.dicom_aet}@127.0.0.1:{self.dicom_port}"

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def dicomweb_root(self) -> str:
        """The DICOMweb root without credentials, e.g. ``http://127.0.0.1:PORT/dicom-web``."""
        return f"{self.url}/dicom-web"

    @property
    def auth(self) -> tuple[str, str] | None:
        return (USER, PASSWORD) if self.authentication else None

    @property
    def log_path(self) -> Path:
        return self.workdir / "orthanc.log"

    def write_config(self) -> Path:
        """The JSON configuration: loopback only, DIMSE only if asked, storage in ``workdir``."""
        storage = self.workdir / "storage"
        storage.mkdir(parents=True, exist_ok=True)
        config: dict[str, object] = {
            "Name": "medhub-test",
            "HttpPort": self.port,
            "HttpServerEnabled": True,
            "DicomServerEnabled": self.dicom,
            "DicomPort": self.dicom_port,
            "DicomAet": self.dicom_aet,
            "DicomModalities": self.modalities,
            "DicomAssociationCloseDelay": 0,
            "StorageDirectory": str(storage),
            "IndexDirectory": str(storage),
            "StorageCompression": False,
            "Plugins": [dicomweb_plugin()],
            "RemoteAccessAllowed": False,
            "AuthenticationEnabled": self.authentication,
            "RegisteredUsers": {USER: PASSWORD} if self.authentication else {},
            "DicomWeb": {"Enable": True, "Root": "/dicom-web/", "EnableWado": False, "Host": "127.0.0.1"},
            "ConcurrentJobs": 1,
            "HttpThreadsCount": 10,
            "SaveJobs": False,
            "StableAge": 1,
        }
        if self.lua is not None:
            script = self.workdir / "filter.lua"
            script.write_text(self.lua)
            config["LuaScripts"] = [str(script)]
        path = self.workdir / "orthanc.json"
        path.write_text(json.dumps(config, indent=2))
        return path

    def start(self, timeout: float = 30.0) -> OrthancServer:
        """Start Orthanc and wait until ``GET /system`` answers; raise with its log otherwise."""
        if self.running:
            return self  # never a second process on the same storage (the first would be orphaned)
        binary = orthanc_binary()
        if binary is None:
            raise RuntimeError(missing_reason())
        config = self.write_config()
        log = self.log_path.open("ab")
        self.process = subprocess.Popen([binary, str(config)], stdout=log, stderr=subprocess.STDOUT,
                                        stdin=subprocess.DEVNULL)
        log.close()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"Orthanc exited with {self.process.returncode}:\n{self.log_tail()}")
            with contextlib.suppress(requests.RequestException):
                reply = requests.get(f"{self.url}/system", auth=self.auth, headers=self.headers, timeout=2)
                if reply.status_code == 200:
                    return self
            time.sleep(0.1)
        self.stop()
        raise RuntimeError(f"Orthanc did not answer on {self.url} within {timeout} s:\n{self.log_tail()}")

    def stop(self) -> None:
        """Stop Orthanc (SIGTERM, then SIGKILL after 15 s) and wait until the port is closed."""
        if self.process is None:
            return
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=15)
        self.process = None

    def kill(self) -> None:
        """Kill Orthanc at once (SIGKILL): a server that dies, not one that shuts down politely."""
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait(timeout=15)
        self.process = None

    @property
    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def log_tail(self, lines: int = 30) -> str:
        if not self.log_path.exists():
            return "(no log)"
        return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])

    # -- Orthanc's own REST API (not DICOMweb): used by the tests to set up and inspect -------
    def rest(self, method: str, path: str, **kwargs: object) -> requests.Response:
        headers = {**self.headers, **kwargs.pop("headers", {})}  # type: ignore[dict-item]
        return requests.request(method, f"{self.url}{path}", auth=self.auth, headers=headers,  # type: ignore[arg-type]
                                timeout=60, **kwargs)

    def upload(self, path: Path) -> requests.Response:
        """``POST /instances`` with one DICOM file; the response says why Orthanc refuses it."""
        return self.rest("POST", "/instances", data=path.read_bytes(),
                         headers={"Content-Type": "application/dicom"})

    def instances(self, modality: str | None = None) -> list[dict[str, object]]:
        """Every instance Orthanc holds (its REST view: ``ID`` and ``MainDicomTags``), optionally of one modality."""
        found = []
        for series_id in self.rest("GET", "/series").json():
            series = self.rest("GET", f"/series/{series_id}").json()
            if modality is None or series["MainDicomTags"].get("Modality") == modality:
                found += self.rest("GET", f"/series/{series_id}/instances").json()
        return found

    def instance_count(self) -> int:
        reply = self.rest("GET", "/statistics")
        reply.raise_for_status()
        return int(reply.json()["CountInstances"])

    def __enter__(self) -> OrthancServer:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.kill()  # a throwaway server: its storage is discarded, a polite 2.5 s shutdown proves nothing
