"""Shared fixtures: where the real data lives, and the DICOM validator."""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from pathlib import Path

import pytest

DEFAULT_TEST_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"
SHARED_DATA = Path(os.environ.get("MEDHUB_TEST_DATA", "").strip() or DEFAULT_TEST_DATA).expanduser()
"""The real test data: ``$MEDHUB_TEST_DATA``, else ``../shared/data`` beside the repository (tests/data/README.md)."""
FETCH_HINT = "fetch it with: python tests/data/fetch_testdata.py (tests/data/README.md)"


def shared_path(relative: str) -> Path:
    """A path in the test data; skip the test with the reason when the data folder is absent.

    When the data folder exists but the path does not, the data is incomplete or the test is wrong: fail,
    naming the fetcher that completes it.
    """
    if not SHARED_DATA.exists():
        pytest.skip(f"real test data absent: {SHARED_DATA} (MEDHUB_TEST_DATA); {FETCH_HINT}")
    path = SHARED_DATA / relative
    if not path.exists():
        pytest.fail(f"{path} does not exist in the test data; {FETCH_HINT}")
    return path


def make_sample_mirror(folder: Path) -> Path:
    """A weights mirror (MEDHUB_WEIGHTS_MIRROR) holding the built-in cards' samples and brainchop's weights.

    The cards fetch their samples by URL + SHA-256 through the weights cache; here the files come
    from ../shared/data, linked under the names of their URLs, so the check runs offline.
    """
    folder.mkdir(parents=True, exist_ok=True)
    links = {
        "t1_crop.nii.gz": shared_path("mr/brainchop_t1_crop.nii.gz"),
        "example_ct_sm.nii.gz": shared_path("ct/totalsegmentator_nifti/example_ct_sm.nii.gz"),
    }
    links.update({weights.name: weights for weights in shared_path("weights/brainchop").iterdir()})
    for name, target in links.items():
        if not (folder / name).exists():
            (folder / name).symlink_to(target)
    return folder


@pytest.fixture
def shared_data() -> Path:
    if not SHARED_DATA.exists():
        pytest.skip(f"real test data absent: {SHARED_DATA} (MEDHUB_TEST_DATA); {FETCH_HINT}")
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


# --------------------------------------------------------------------------- brainchop's slow oracle runs

BACKGROUND_ORACLE_MARK = "brainchop_full_oracle"
SESSION_VARIABLE = "MEDHUB_TEST_SESSION_DIR"
T1_CROP = "mr/brainchop_t1_crop.nii.gz"


def pytest_configure(config: pytest.Config) -> None:
    """The controlling process makes a folder for the session; pytest-xdist workers inherit it."""
    if not hasattr(config, "workerinput") and SESSION_VARIABLE not in os.environ:
        os.environ[SESSION_VARIABLE] = tempfile.mkdtemp(prefix="medhub-test-session-")
        config.stash[_OWNS_SESSION] = True


_OWNS_SESSION = pytest.StashKey[bool]()


def session_dir() -> Path:
    return Path(os.environ[SESSION_VARIABLE])


@pytest.hookimpl(trylast=True)
def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Start brainchop's full runs for the selected comparisons now, and run those tests last.

    brainchop's own run of a large MeshNet takes many minutes on one core (tinygrad); started
    at collection in a background process, it runs while the rest of the suite does.
    Under pytest-xdist every worker collects: the first to take the session's lock starts the run.
    """
    waiting = [item for item in items if item.get_closest_marker(BACKGROUND_ORACLE_MARK)]
    if not waiting:
        return
    items[:] = [item for item in items if item not in waiting] + waiting
    from brainchop_oracle import MODEL_FOLDERS, BackgroundOracle, missing_tools, slow_oracle_skipped

    if not SHARED_DATA.exists() or missing_tools() is not None:
        return  # the tests skip with the reason (see the background_oracle fixture)
    models = sorted({item.callspec.params["model_id"] for item in waiting})  # the order the tests will ask
    models = [model for model in models if slow_oracle_skipped(model) is None]
    if models:
        BackgroundOracle.start_once(SHARED_DATA / T1_CROP,
                                    [SHARED_DATA / "weights" / "brainchop" / MODEL_FOLDERS[m] for m in models],
                                    session_dir())


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    if session.config.stash.get(_OWNS_SESSION, False):  # the controlling process, after every worker
        from brainchop_oracle import BackgroundOracle

        BackgroundOracle.stop(session_dir())
        shutil.rmtree(session_dir(), ignore_errors=True)


@pytest.fixture
def background_oracle(request: pytest.FixtureRequest):
    """A function ``(model_dir_name, timeout) -> (labels .npy, brainchop's time)`` waiting for the session's
    brainchop run, or a skip saying why brainchop cannot run here."""
    from brainchop_oracle import BackgroundOracle, missing_tools, slow_oracle_skipped

    image = shared_path(T1_CROP)
    reason = missing_tools() or slow_oracle_skipped(request.node.callspec.params["model_id"])
    if reason is not None:
        pytest.skip(reason)
    if not request.node.get_closest_marker(BACKGROUND_ORACLE_MARK):
        pytest.fail(f"no background oracle: mark the test with @pytest.mark.{BACKGROUND_ORACLE_MARK}")

    def result(model_dir_name: str, timeout: float) -> tuple[Path, str]:
        model_dir = SHARED_DATA / "weights" / "brainchop" / model_dir_name
        return BackgroundOracle.result(image, model_dir, session_dir(), timeout)

    return result
