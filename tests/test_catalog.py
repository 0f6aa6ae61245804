"""The catalog: built-in models, a model package pip-installed through the ``medhub.models`` entry point,
filters, ``medhub info`` and ``medhub pull``.

The plugin tests BUILD and pip-install real packages (made by ``medhub new``) into a venv created
with ``--system-site-packages`` (so the editable medhub is importable there), then drive the real
``medhub`` command in that venv as a subprocess.
"""

from __future__ import annotations

import functools
import hashlib
import http.server
import json
import os
import subprocess
import sys
import threading
from pathlib import Path

import pydicom
import pytest
from conftest import shared_path
from typer.testing import CliRunner

from medhub.authoring.new import create
from medhub.cli.main import app
from medhub.errors import MedhubError
from medhub.hub.catalog import (
    catalog_problems,
    entry_from_folder,
    find_models,
    get_model,
    list_models,
    pull_weights,
    weights_status,
)

PLUGIN = "hub-plugin-demo"
BROKEN = "hub-broken-demo"
WEIGHTS = b'{"threshold": 300}\n'


def cli(*args: str) -> tuple[int, str, str]:
    result = CliRunner().invoke(app, list(args))
    return result.exit_code, result.stdout, result.stderr


# ---------------------------------------------------------------- built-in models, filters, info


def test_built_in_models_load_without_problems():
    ids = {card.id for card in list_models()}
    assert {"ct-body", "deepbet"} <= ids
    assert catalog_problems() == []


def test_filters_by_modality_body_part_and_task():
    assert "ct-body" in {c.id for c in find_models(modality="ct")}
    assert "deepbet" not in {c.id for c in find_models(modality="CT")}
    brain = {c.id for c in find_models(body_part="brain")}  # people say BRAIN, cards say HEAD
    assert "deepbet" in brain and "ct-body" not in brain
    assert "ct-body" in {c.id for c in find_models(body_part="thorax", task="segmentation")}
    assert "deepbet" in {c.id for c in find_models(task="prediction")}  # an output kind (brain_volume_ml)
    assert find_models(task="classification", modality="CT") == [] or all(
        "classification" in {c.task, *c.outputs.kinds} for c in find_models(task="classification"))

    code, out, _ = cli("models", "--modality", "MR", "--body-part", "BRAIN", "--json")
    assert code == 0
    listed = {row["id"]: row for row in json.loads(out)}
    assert "deepbet" in listed and "ct-body" not in listed
    assert listed["deepbet"]["licence"] == {"code": "MIT", "weights": "MIT"}
    assert listed["deepbet"]["origin"] == "built-in"


def test_info_shows_segment_codes_citation_licences_weights_and_the_run_command():
    code, out, _ = cli("info", "deepbet")
    assert code == 0
    for expected in ("12738006", "Brain", "Fisch L", "licence: code MIT, weights MIT",
                     "medhub run deepbet --input DICOM_FOLDER --output OUT", "workflows: default, nifti"):
        assert expected in out
    code, out, _ = cli("info", "ct-body", "--json")
    data = json.loads(out)
    left = next(s for s in data["segments"] if s["id"] == "LEFT_LUNG")
    assert left["type"] == {"value": "39607008", "scheme": "SCT", "meaning": "Lung"}
    assert left["modifier"]["meaning"] == "Left"
    assert data["card"]["licence"]["code"] == "Apache-2.0"
    assert data["run"] == "medhub run ct-body --input DICOM_FOLDER --output OUT"
    code, _, err = cli("info", "no-such-model")
    assert code == 2 and err.startswith("medhub: unknown model 'no-such-model'; available:")
    code, _, err = cli("info", "ct-bdy")  # a typo names its fix
    assert code == 2 and err.startswith("medhub: unknown model 'ct-bdy'; did you mean 'ct-body'? available:")


def test_pull_verifies_bundled_weights_of_an_installed_package():
    pytest.importorskip("deepbet")
    entry = get_model("deepbet")
    assert {s.state for s in weights_status(entry)} == {"bundled"}
    paths = pull_weights(entry, progress=False)  # hashes the wheel's files against the card
    assert set(paths) == {"model.pt", "bbox_model.pt"} and all(p.is_file() for p in paths.values())
    code, out, _ = cli("pull", "deepbet", "--json")
    assert code == 0 and json.loads(out)["weights"]["model.pt"] == str(paths["model.pt"])


def test_pull_downloadable_weights_and_the_missing_file_error(tmp_path, monkeypatch):
    monkeypatch.setenv("MEDHUB_WEIGHTS_CACHE", str(tmp_path / "cache"))
    monkeypatch.delenv("MEDHUB_WEIGHTS_MIRROR", raising=False)
    project = create("pull-demo", tmp_path, write_reference=False)
    source = tmp_path / "threshold.json"
    source.write_bytes(WEIGHTS)
    _add_weights(project, f"file://{source}", WEIGHTS)
    entry = entry_from_folder(project / "src" / "pull_demo", "pull_demo")
    assert [s.state for s in weights_status(entry)] == ["missing"]
    paths = pull_weights(entry, progress=False)
    assert paths["threshold.json"].read_bytes() == WEIGHTS
    assert paths["threshold.json"].is_relative_to(tmp_path / "cache" / "pull-demo")
    assert [s.state for s in weights_status(entry)] == ["cached"]

    source.unlink()
    (tmp_path / "cache").rename(tmp_path / "old-cache")
    with pytest.raises(MedhubError) as info:
        pull_weights(entry, progress=False)
    message = str(info.value)
    assert "\n" not in message and "threshold.json not found" in message and "MEDHUB_WEIGHTS_MIRROR=unset" in message


def _add_weights(project: Path, url: str, content: bytes) -> None:
    card = next(project.glob("src/*/card.yaml"))
    digest = hashlib.sha256(content).hexdigest()
    text = card.read_text().replace(
        "weights: []", f"weights:\n  - name: threshold.json\n    url: \"{url}\"\n    sha256: {digest}\n"
                       f"    size: {len(content)}")
    card.write_text(text)


# ---------------------------------------------------------------- a pip-installed model package


@pytest.fixture(scope="module")
def weights_server(tmp_path_factory):
    """A local HTTP server for the plugin's weights (downloads must work against a real server)."""
    folder = tmp_path_factory.mktemp("served")
    (folder / "threshold.json").write_bytes(WEIGHTS)
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(folder))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


@pytest.fixture(scope="module")
def plugin_venv(tmp_path_factory, weights_server):
    """A venv with two model packages installed from source: a working one and one with a broken card."""
    root = tmp_path_factory.mktemp("plugins")
    good = create(PLUGIN, root, write_reference=False)
    _add_weights(good, f"{weights_server}/threshold.json", WEIGHTS)
    broken = create(BROKEN, root, write_reference=False)
    card = broken / "src" / "hub_broken_demo" / "card.yaml"
    card.write_text(card.read_text().replace("body_part: CHEST", "bodypart: CHEST"))
    wheels = root / "wheels"
    build = subprocess.run(  # build the wheels with this environment's setuptools (no network)
        [sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps", "--no-build-isolation", "--no-index",
         "--wheel-dir", str(wheels), str(good), str(broken)], capture_output=True, text=True, check=False)
    assert build.returncode == 0, build.stderr[-2000:]
    venv = root / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--system-site-packages", str(venv)], check=True)
    python = venv / "bin" / "python"
    install = subprocess.run([str(python), "-m", "pip", "install", "--quiet", "--no-deps", "--no-index",
                              *map(str, sorted(wheels.glob("*.whl")))], capture_output=True, text=True, check=False)
    assert install.returncode == 0, install.stderr[-2000:]
    return python


def venv_medhub(python: Path, *args: str, env: dict[str, str] | None = None, cwd: Path | None = None
                ) -> subprocess.CompletedProcess[str]:
    environment = {**os.environ, "COLUMNS": "200", **(env or {})}
    environment.pop("MEDHUB_WEIGHTS_MIRROR", None)
    return subprocess.run([str(python), "-m", "medhub", *args], capture_output=True, text=True, env=environment,
                          cwd=cwd, check=False, timeout=600)


def test_installed_package_appears_in_medhub_models_and_a_broken_one_is_one_warning(plugin_venv):
    proc = venv_medhub(plugin_venv, "models", "--json")
    assert proc.returncode == 0, proc.stderr
    listed = {row["id"]: row for row in json.loads(proc.stdout)}
    assert PLUGIN in listed and "ct-body" in listed and BROKEN not in listed
    assert listed[PLUGIN]["origin"] == f"medhub-{PLUGIN} 0.1.0"
    assert listed[PLUGIN]["modality"] == ["CT"] and listed[PLUGIN]["outputs"] == ["segmentation", "prediction"]
    warnings = [line for line in proc.stderr.splitlines() if line.startswith("medhub: warning:")]
    assert len(warnings) == 1
    assert f"entry point medhub.models:{BROKEN}" in warnings[0]
    assert "missing required field 'body_part': rename 'bodypart' to 'body_part'" in warnings[0]

    proc = venv_medhub(plugin_venv, "models", "--modality", "CT", "--task", "segmentation")
    assert PLUGIN in proc.stdout
    proc = venv_medhub(plugin_venv, "info", BROKEN)
    assert proc.returncode == 2 and "invalid model card at 'body_part'" in proc.stderr


def test_pull_downloads_the_plugin_weights_from_a_server(plugin_venv, tmp_path):
    env = {"MEDHUB_WEIGHTS_CACHE": str(tmp_path / "cache")}
    proc = venv_medhub(plugin_venv, "pull", PLUGIN, env=env)
    assert proc.returncode == 0, proc.stderr
    target = tmp_path / "cache" / PLUGIN / "threshold.json"
    assert target.read_bytes() == WEIGHTS
    assert f"{PLUGIN}: weights threshold.json: 19 bytes, SHA-256 verified ({target})" in proc.stdout
    proc = venv_medhub(plugin_venv, "info", PLUGIN, "--json", env=env)
    info = json.loads(proc.stdout)
    assert info["weights"] == [
        {"name": "threshold.json", "size": len(WEIGHTS), "state": "cached", "verified": True, "path": str(target),
         "source": info["card"]["weights"][0]["url"], "detail": "SHA-256 verified"}]
    assert info["ready"] is True and info["todo"] == []


@pytest.mark.slow
def test_run_the_installed_plugin_on_a_real_ct_series(plugin_venv, tmp_path, assert_valid_dicom):
    """The plugin runs through the whole pipeline on real scanner data (Philips head phantom, 140 slices)."""
    series = shared_path("ct/philips_phantom_head_1mm")
    out = tmp_path / "out"
    proc = venv_medhub(plugin_venv, "run", PLUGIN, "--input", str(series), "--output", str(out))
    assert proc.returncode == 0, proc.stdout + proc.stderr
    report = json.loads((out / "medhub-report.json").read_text())
    assert report["model"] == PLUGIN and report["summary"]["succeeded"] == 1
    entry = report["series"][0]
    assert entry["values"]["bone_volume_ml"] > 50  # a head phantom has a skull
    seg_path = out / entry["outputs"][0]
    assert seg_path.name.endswith(".seg.dcm")
    assert_valid_dicom(seg_path)
    seg = pydicom.dcmread(seg_path)
    assert seg.SegmentSequence[0].SegmentLabel == "Bone"
    assert seg.SegmentSequence[0].SegmentAlgorithmName == PLUGIN  # provenance: the plugin made it
