"""MedhubRunner's logic, importable without Slicer (tested in medhub's CI against a real ``medhub serve``)."""

from .client import (
    JobState,
    LocalBackend,
    MedhubClientError,
    ModelInfo,
    RunResult,
    ServerBackend,
    backend_for,
    read_segments,
)

__all__ = ["JobState", "LocalBackend", "MedhubClientError", "ModelInfo", "RunResult", "ServerBackend",
           "backend_for", "read_segments"]
