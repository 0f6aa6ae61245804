"""Isolated model environments: a uv venv per model, the runner in a worker subprocess over files.

The test model (tests/isolated_model) requires ``numpy<2`` while medhub's environment has
numpy 2, and its runner refuses to run on numpy 2: a result from it proves the isolated path
ran. Its results, and ct-body's forced through the same path, must be identical to the
in-process run. The venvs are built once per session (uv from PyPI, cached by uv).
"""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
import time
from importlib import metadata
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from conftest import shared_path

import medhub
from medhub import config
from medhub.data.volume import Volume
from medhub.errors import MedhubError, SeriesSkipped
from medhub.hub import envs
from medhub.hub.card import load_card
from medhub.hub.catalog import ModelEntry, get_model
from medhub.hub.isolated import IsolatedModelError, IsolatedRunner
from medhub.hub.runner import RunnerContext
from medhub.hub.runtime import ModelRunner, loaded_runner
from medhub.inputs.load import load_series
from medhub.inputs.scan import scan

TEST_MODEL = Path(__file__).resolve().parent / "isolated_model"
PHILIPS = "ct/philips_phantom_head_1mm"
PARAMS = {"threshold_hu": 300, "min_ml": 0.05}


def model_entry(folder: Path = TEST_MODEL, module: str = "isolated_model") -> ModelEntry:
    workflows = {p.stem: p for p in sorted((folder / "workflows").glob("*.yml"))}
    return ModelEntry(card=load_card(folder / "card.yaml"), path=folder, module=module, workflows=workflows)


def context(entry: ModelEntry | None = None, **changes: object) -> RunnerContext:
    """The context the hub would hand the test model (no weights, cpu)."""
    entry = entry or model_entry()
    return RunnerContext(**{"card": entry.card, "folder": entry.path, "device": "cpu", "threads": 1, **changes})


def card_with(requirements: list[str], model_id: str = "probe") -> ModelEntry:
    """The test model's entry with other requirements (for the decision and build tests)."""
    entry = model_entry()
    entry.card = entry.card.model_copy(update={"id": model_id, "requirements": requirements})
    return entry


def in_process_runner_class() -> type:
    """The test model's runner, imported in medhub's own environment, minus its numpy check."""
    spec = importlib.util.spec_from_file_location("isolated_model_in_process", TEST_MODEL / "runner.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.Runner


@pytest.fixture(scope="session")
def envs_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("medhub-envs")


@pytest.fixture(scope="session")
def test_env(envs_root: Path) -> Path:
    """The test model's venv (numpy<2 + scipy), built once per session; prints the build time."""
    started = time.perf_counter()
    env = envs.ensure_env(model_entry(), root=envs_root)
    print(f"\nisolated-threshold environment built in {time.perf_counter() - started:.1f} s")
    return env


@pytest.fixture(scope="session")
def phantom() -> Volume:
    series = scan(shared_path(PHILIPS)).series
    assert len(series) == 1
    return load_series(series[0])


@pytest.fixture(scope="session")
def expected(phantom: Volume):
    """The test model's algorithm run in process (medhub's numpy 2), without its numpy check."""

    class InProcess(in_process_runner_class()):
        required_numpy_major = None

    return InProcess().predict(phantom, PARAMS)


@pytest.fixture(scope="session")
def isolated(test_env: Path):
    """One worker for the whole session: the model loads once."""
    runner = ModelRunner(model_entry(), IsolatedRunner(model_entry(), test_env))
    runner.load("cpu", {})
    yield runner
    runner.close()


# -- deciding --------------------------------------------------------------------------------
def test_installed_versions_are_importlib_metadatas() -> None:
    """The header-block reader of installed_version says what metadata.version says, for every installed
    distribution (torch's and others' METADATA carry long descriptions after the headers)."""
    names = sorted({d.metadata["Name"] for d in metadata.distributions() if d.metadata["Name"]})
    assert len(names) > 20 and "numpy" in names
    assert {n: envs.installed_version(n) for n in names} == {n: metadata.version(n) for n in names}
    assert envs.installed_version("surely-not-installed-pkg") is None


def test_needs_isolation_follows_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(config.ISOLATION, raising=False)
    assert np.__version__.startswith("2."), "the conflict this file tests needs numpy 2 in medhub's environment"
    assert envs.needs_isolation(model_entry().card)
    assert envs.unsatisfied(model_entry().card) == [f"numpy<2 (installed: {np.__version__})"]
    assert not envs.needs_isolation(get_model("ct-body").card)
    assert not envs.needs_isolation(card_with(["numpy>=1.20", "scipy", "medhub>=99"]).card)  # medhub: always this one
    missing = card_with(["surely-not-installed-pkg"]).card
    assert envs.unsatisfied(missing) == ["surely-not-installed-pkg (not installed)"]
    assert not envs.needs_isolation(card_with(['numpy<2; python_version < "3.0"']).card)  # marker does not apply

    monkeypatch.setenv(config.ISOLATION, "always")
    assert envs.needs_isolation(get_model("ct-body").card)
    monkeypatch.setenv(config.ISOLATION, "never")
    assert not envs.needs_isolation(model_entry().card)
    monkeypatch.setenv(config.ISOLATION, "sometimes")
    with pytest.raises(MedhubError, match="MEDHUB_ISOLATION='sometimes': expected auto, always or never"):
        envs.needs_isolation(model_entry().card)


def test_bad_requirement_and_torch_mismatch_are_one_line_errors() -> None:
    with pytest.raises(MedhubError, match=r"model probe: requirement 'numpy>>2' is not a valid pip spec"):
        envs.needs_isolation(card_with(["numpy>>2"]).card)
    with pytest.raises(MedhubError) as error:
        envs.env_spec(card_with(["torch<2"]).card)
    message = str(error.value)
    assert "\n" not in message and "requires torch<2" in message and "reuse torch" in message


def test_env_folder_name_follows_the_spec(tmp_path: Path) -> None:
    a = envs.env_path(card_with(["numpy<2"]).card, root=tmp_path)
    assert a == envs.env_path(card_with(["numpy<2"]).card, root=tmp_path)
    assert a != envs.env_path(card_with(["numpy<1.26"]).card, root=tmp_path)
    assert a.parent == tmp_path and a.name.startswith("probe-")


# -- building --------------------------------------------------------------------------------
def test_env_has_the_conflicting_numpy_and_this_medhub_and_nothing_else(test_env: Path, envs_root: Path) -> None:
    marker = json.loads((test_env / envs.MARKER).read_text())
    assert marker["requirements"] == ["numpy<2", "scipy"] and marker["reused"] == {}
    assert envs.ensure_env(model_entry(), root=envs_root) == test_env  # cached: no rebuild
    assert [p.name for p in envs_root.iterdir() if p.name.startswith(".")] == []  # no half-built folder left
    code = ("import importlib.util, json, numpy, medhub; print(json.dumps([numpy.__version__, medhub.__file__, "
            "[m for m in ('torch', 'highdicom', 'pydantic') if importlib.util.find_spec(m)]]))")
    out = subprocess.run([str(envs.env_python(test_env)), "-c", code], capture_output=True, text=True, check=True,
                         env={k: v for k, v in os.environ.items() if k != "PYTHONPATH"})
    numpy_version, medhub_file, visible = json.loads(out.stdout)
    assert numpy_version.startswith("1.")
    assert Path(medhub_file).resolve() == Path(medhub.__file__).resolve()  # this checkout, not a copy
    assert visible == []  # medhub's environment does not leak into a venv without torch


def test_torch_is_reused_from_the_main_env_and_the_conflicting_numpy_shadows(envs_root: Path) -> None:
    """A card needing torch: uv must not install torch; the venv's numpy 1.x must win over numpy 2."""
    torch = pytest.importorskip("torch")
    env = envs.ensure_env(card_with(["torch", "numpy<2"], model_id="torch-probe"), root=envs_root)
    code = "import json, numpy, torch; print(json.dumps([numpy.__version__, numpy.__file__, torch.__file__]))"
    out = subprocess.run([str(envs.env_python(env)), "-c", code], capture_output=True, text=True, check=True)
    numpy_version, numpy_file, torch_file = json.loads(out.stdout)
    assert numpy_version.startswith("1.") and Path(numpy_file).is_relative_to(env)
    assert Path(torch_file).resolve() == Path(torch.__file__).resolve()
    assert not list(env.glob("lib/python*/site-packages/torch"))


def test_uv_failure_is_one_line_and_leaves_nothing(tmp_path: Path) -> None:
    with pytest.raises(MedhubError) as error:
        envs.ensure_env(card_with(["numpy<1.20", "numpy>1.25"], model_id="unsolvable"), root=tmp_path)
    message = str(error.value)
    assert "\n" not in message
    assert message.startswith("model unsolvable: creating its environment failed: error: No solution found")
    assert list(tmp_path.iterdir()) == []


# -- running ---------------------------------------------------------------------------------
@pytest.mark.slow
def test_isolated_result_is_identical_to_in_process(isolated: IsolatedRunner, phantom: Volume, expected) -> None:
    """Real head CT phantom (512x512x140), whole volume, through the venv (numpy 1.x) and in process."""
    assert isinstance(isolated.runner, IsolatedRunner) and isolated.runner.worker_info["numpy"].startswith("1.")
    result = isolated.predict(phantom, PARAMS)

    with pytest.raises(MedhubError, match="needs numpy 1.x, runs with numpy 2"):  # the real conflict
        in_process_runner_class()().load(context())
    assert result.labels.dtype == expected.labels.dtype and result.labels.shape == phantom.array.shape
    assert np.array_equal(result.labels, expected.labels)
    assert result.segments == expected.segments == {1: "SKULL", 2: "BONE"}
    assert result.values == expected.values and result.values["largest_ml"] > 100


def crop(volume: Volume, z0: int = 20, slices: int = 16) -> Volume:
    """16 whole slices of a real CT: equivalence does not need the whole volume (ct-body takes ~30 s on it)."""
    affine = volume.affine_lps.copy()
    affine[:3, 3] = (volume.affine_lps @ np.array([0.0, 0.0, z0, 1.0]))[:3]
    return Volume(array=np.ascontiguousarray(volume.array[:, :, z0:z0 + slices]), affine_lps=affine,
                  modality=volume.modality)


@pytest.mark.slow
def test_ct_body_forced_into_isolation_matches_in_process(
    monkeypatch: pytest.MonkeyPatch, envs_root: Path, phantom: Volume
) -> None:
    """MEDHUB_ISOLATION=always sends a built-in model through its own venv; same labels and values.

    Runs on a crop of the real CT (equivalence, not accuracy)."""
    monkeypatch.setenv(config.ENVS, str(envs_root))
    monkeypatch.setenv(config.ISOLATION, "always")
    model = get_model("ct-body")
    params = {"body_hu": -500, "bone_hu": 250}
    volume = crop(phantom)
    if not envs.env_state(model.card).built:  # loading never builds an environment: medhub pull does
        with pytest.raises(MedhubError, match=r"model ct-body runs in its own environment \(MEDHUB_ISOLATION=always"
                                              r"\), which is not built yet: run `medhub pull ct-body` first"):
            loaded_runner(model, "cpu", params)
    envs.ensure_env(model)
    runner = loaded_runner(model, "cpu", params)
    worker = runner.runner
    assert isinstance(worker, IsolatedRunner) and runner.isolated
    assert loaded_runner(model, "cpu", params) is runner  # one worker for every series of the run
    result = runner.predict(volume, params)
    with pytest.raises(SeriesSkipped, match="ct-body found no body"):  # a skip inside the worker stays a skip
        runner.predict(Volume(np.full((8, 8, 8), -1000, np.int16), np.eye(4), modality="CT"), params)

    monkeypatch.setenv(config.ISOLATION, "auto")
    local = loaded_runner(model, "cpu", params)  # the cache swaps to the in-process runner and stops the worker
    assert not local.isolated and worker._process is None
    expected = local.predict(volume, params)
    assert {1, 4} <= set(expected.segments)  # the crop holds body and bone: not a comparison of empty maps
    assert np.array_equal(result.labels, expected.labels)
    assert result.segments == expected.segments and result.values == expected.values


def test_the_worker_gets_the_hubs_context_with_the_card_read_like_the_parsed_card(isolated: ModelRunner) -> None:
    """The context crosses to the venv (no pydantic there): card fields by attribute, segments keyed by int."""
    volume = Volume(np.zeros((4, 4, 4), np.int16), np.eye(4), modality="CT")
    values = isolated.predict(volume, {"describe_context": True}).values
    assert values == {"card": ["isolated-threshold", True], "folder": str(TEST_MODEL), "device": "cpu",
                      "params": {"threshold_hu": 300, "min_ml": 0.05}, "threads": isolated.context.threads,
                      "weights": {}}  # the card's parameter defaults reach the worker


def test_worker_errors_are_one_line_with_details(test_env: Path) -> None:
    runner = IsolatedRunner(model_entry(), test_env)
    runner.load(context())
    workdir = runner._workdir
    assert workdir is not None and workdir.is_dir()
    volume = Volume(np.zeros((4, 4, 4), np.int16), np.eye(4), modality="CT")
    with pytest.raises(IsolatedModelError) as error:
        runner.predict(volume, {"threshold_hu": "high"})
    assert str(error.value) == ("model isolated-threshold failed in its environment: "
                                "ValueError: could not convert string to float: 'high'")
    assert "Traceback" in error.value.details and "runner.py" in error.value.details
    assert runner.predict(volume, PARAMS).segments == {}  # the worker survives a failed series
    assert sorted(p.name for p in workdir.iterdir()) == ["worker.log"]  # no volume or label files left

    assert runner._process is not None
    runner._process.kill()
    with pytest.raises(IsolatedModelError, match=r"model isolated-threshold: its worker process ended \(exit code"):
        runner.predict(volume, PARAMS)
    runner.close()
    assert not workdir.exists()


def test_a_runner_that_cannot_load_ends_its_worker(test_env: Path, tmp_path: Path) -> None:
    folder = tmp_path / "broken_model"
    folder.mkdir()
    (folder / "runner.py").write_text("import numpy\nraise RuntimeError('weights missing: put model.pt in /x')\n")
    entry = model_entry()
    entry.path, entry.module = folder, "broken_model"
    runner = IsolatedRunner(entry, test_env)
    with pytest.raises(IsolatedModelError) as error:
        runner.load(context(entry))
    assert str(error.value) == ("model isolated-threshold failed in its environment: "
                                "RuntimeError: weights missing: put model.pt in /x")
    assert runner._process is None and runner._workdir is None  # worker stopped, work folder removed


def test_missing_env_says_how_to_create_it(tmp_path: Path) -> None:
    with pytest.raises(MedhubError, match="model isolated-threshold: no environment at .* medhub pull isolated-thr"):
        IsolatedRunner(model_entry(), tmp_path / "nothing").load(context())


@pytest.mark.slow
def test_medhub_pull_then_run_end_to_end(tmp_path: Path, expected, assert_valid_dicom) -> None:
    """The user's flow in subprocesses on the real series: `medhub pull` creates the venv, `medhub run`
    uses it. The model is found as an installed plugin (a dist-info with a ``medhub.models`` entry
    point); the run writes a valid SEG and a NIfTI identical to the in-process labels."""
    plugins = tmp_path / "plugins"
    plugins.mkdir()
    (plugins / "isolated_model").symlink_to(TEST_MODEL, target_is_directory=True)
    info = plugins / "medhub_isolated_test_model-0.1.0.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: medhub-isolated-test-model\nVersion: 0.1.0\n")
    (info / "entry_points.txt").write_text("[medhub.models]\nisolated-threshold = isolated_model\n")
    envs_dir = tmp_path / "envs"
    source = Path(medhub.__file__).resolve().parents[1]  # the medhub under test, also from a checkout on PYTHONPATH
    environment = {**os.environ, "PYTHONPATH": os.pathsep.join([str(plugins), str(source)]), config.ENVS: str(envs_dir),
                   config.ISOLATION: "auto"}

    def cli(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "medhub", *args], capture_output=True, text=True,
                              env=environment, timeout=600, check=False)

    # before any pull: info tells the truth, and run refuses before any work instead of building
    info = json.loads(cli("info", "isolated-threshold", "--json").stdout)
    assert info["ready"] is False and info["environment"]["needed"] and not info["environment"]["built"]
    assert info["environment"]["reason"] == f"numpy<2 (installed: {np.__version__})"
    assert info["todo"] == ["medhub pull isolated-threshold (builds its environment)"]
    out = tmp_path / "out"
    refused = cli("run", "isolated-threshold", "--input", str(shared_path(PHILIPS)), "--output", str(out),
                  "--json-progress")
    assert refused.returncode == 2
    last = json.loads(refused.stdout.splitlines()[-1])
    assert last["event"] == "error" and last["exit_code"] == 2
    assert "which is not built yet: run `medhub pull isolated-threshold` first, or add --pull" in last["message"]
    assert not out.exists() and not envs_dir.exists()  # nothing built, nothing written

    # run --pull builds it (as medhub pull does), then runs
    proc = cli("run", "isolated-threshold", "--input", str(shared_path(PHILIPS)), "--output", str(out),
               "--json-progress", "--pull")
    assert proc.returncode == 0, proc.stderr[-2000:]
    events = [json.loads(line) for line in proc.stdout.splitlines()]
    pulled_event = next(e for e in events if e["event"] == "pulled")
    env = Path(pulled_event["environment"])
    assert env.parent == envs_dir and envs.env_ready(env) and pulled_event["environment_bytes"] > 1_000_000

    pulled = cli("pull", "isolated-threshold", "--json")  # already built: medhub pull says so, builds nothing
    assert pulled.returncode == 0, pulled.stderr[-2000:]
    answer = json.loads(pulled.stdout)
    assert Path(answer["environment"]) == env and answer["environment_detail"]["built_now"] is False
    assert answer["environment_detail"]["bytes"] == pulled_event["environment_bytes"]
    assert [p for p in envs_dir.iterdir()] == [env]  # the run used the pulled venv, built nothing new
    info = json.loads(cli("info", "isolated-threshold", "--json").stdout)
    assert info["ready"] is True and info["environment"]["built"] and info["environment"]["path"] == str(env)
    report = json.loads((out / "medhub-report.json").read_text())
    (entry,) = report["series"]
    assert entry["status"] == "succeeded", entry
    seg = [out / p for p in entry["outputs"] if p.endswith(".seg.dcm")]
    nifti = [out / p for p in entry["outputs"] if p.endswith(".nii")]
    assert len(seg) == 1 and len(nifti) == 1
    assert_valid_dicom(seg[0])
    # the NIfTI is in dcm2niix's voxel order (tests/test_nifti_output.py): for this axial CT, rows reversed
    assert np.array_equal(np.asarray(nib.load(nifti[0]).dataobj), expected.labels[:, ::-1, :])
    assert entry["values"] == expected.values
