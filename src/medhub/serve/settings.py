"""Settings of ``medhub serve``: where jobs live, who may call the API, how much work it accepts.

One frozen object built by the CLI (or a test) and handed to :func:`medhub.serve.app.create_app`;
everything that decides safety (token, upload size, queue length) is checked here once, so the
app never starts in an unsafe configuration (a public bind address without a token).
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass
from pathlib import Path

from medhub.errors import MedhubError

LOOPBACK_NAMES = {"localhost", "ip6-localhost", "ip6-loopback"}


def is_loopback(host: str) -> bool:
    """Whether ``host`` is reachable only from this machine (127.0.0.0/8, ::1, localhost)."""
    name = host.strip().strip("[]").lower()
    if name in LOOPBACK_NAMES:
        return True
    try:
        return ipaddress.ip_address(name).is_loopback
    except ValueError:
        return False


@dataclass(frozen=True)
class ServeSettings:
    """Configuration of one server; see ``medhub serve --help`` for the meaning of each field."""

    data_dir: Path
    host: str = "127.0.0.1"
    port: int = 8000
    token: str | None = None
    workers: int = 1
    max_upload_bytes: int = 2048 * 1024 * 1024
    max_queued: int = 16  # queued + running jobs; more are refused with 429
    max_unzipped_bytes: int | None = None  # total size a zip may expand to; default 4x max_upload_bytes
    max_attempts: int = 2  # a job interrupted by a restart runs again until it has been started this often
    device: str = "cpu"

    def __post_init__(self) -> None:
        object.__setattr__(self, "data_dir", Path(self.data_dir).expanduser().resolve())
        if self.token is not None and not self.token.strip():
            object.__setattr__(self, "token", None)
        if self.token is None and not is_loopback(self.host):
            raise MedhubError(
                f"--host {self.host} is reachable from other machines: give an API token with --token "
                "(or MEDHUB_SERVE_TOKEN), or bind to 127.0.0.1"
            )
        if self.workers < 1:
            raise MedhubError(f"--workers must be at least 1, got {self.workers}")
        if self.max_upload_bytes < 1:
            raise MedhubError(f"--max-upload-mb must be positive, got {self.max_upload_bytes} bytes")
        if self.max_queued < 1:
            raise MedhubError(f"--max-queued must be at least 1, got {self.max_queued}")
        if self.max_attempts < 1:
            raise MedhubError(f"max_attempts must be at least 1, got {self.max_attempts}")

    @property
    def unzip_limit(self) -> int:
        """How many bytes the files of one upload may take once unzipped (a zip-bomb guard)."""
        return self.max_unzipped_bytes if self.max_unzipped_bytes is not None else 4 * self.max_upload_bytes

    @property
    def database(self) -> Path:
        return self.data_dir / "jobs.sqlite3"

    @property
    def jobs_dir(self) -> Path:
        return self.data_dir / "jobs"

    def job_dir(self, job_id: str) -> Path:
        """``DATA/jobs/<id>``: ``input/`` (uploaded files) and ``output/`` (the medhub OUT tree)."""
        return self.jobs_dir / job_id

    def input_dir(self, job_id: str) -> Path:
        return self.job_dir(job_id) / "input"

    def output_dir(self, job_id: str) -> Path:
        return self.job_dir(job_id) / "output"
