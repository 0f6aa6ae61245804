"""Shared fixtures: where the real data lives, and the DICOM validator."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

SHARED_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"


def shared_path(relative: str) -> Path:
    """A path in ../shared/data; skip the test with the reason when ../shared/data is absent.

    When the data folder exists but the path does not, that is a mistake in the test, not missing data: fail.
    """
    if not SHARED_DATA.exists():
        pytest.skip(f"real test data absent: {SHARED_DATA} (see ../shared/data/MANIFEST.md)")
    path = SHARED_DATA / relative
    if not path.exists():
        pytest.fail(f"{path} does not exist in the shared data (see ../shared/data/MANIFEST.md)")
    return path


@pytest.fixture
def shared_data() -> Path:
    if not SHARED_DATA.exists():
        pytest.skip(f"real test data absent: {SHARED_DATA}")
    return SHARED_DATA


def dciodvfy_errors(path: Path) -> list[str]:
    """Run Debian's dicom3tools validator on one file; return its error lines (empty = valid)."""
    exe = shutil.which("dciodvfy")
    if exe is None:
        pytest.fail("dciodvfy not installed (apt-get install dicom3tools); every DICOM we write must be validated")
    proc = subprocess.run([exe, "-new", str(path)], capture_output=True, text=True, check=False)
    lines = (proc.stdout + proc.stderr).splitlines()
    return [line for line in lines if line.startswith("Error")]


@pytest.fixture
def assert_valid_dicom():
    """Assert that dciodvfy reports 0 errors for a file, showing the first errors otherwise."""

    def check(path: Path) -> None:
        errors = dciodvfy_errors(Path(path))
        assert not errors, f"dciodvfy: {len(errors)} errors in {path}:\n" + "\n".join(errors[:20])

    return check
