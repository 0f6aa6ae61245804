"""The 3D Slicer extension (slicer/MedhubRunner): its layout, and its logic against a real ``medhub serve``.

The module's logic (``MedhubRunnerLib``) imports nothing from Slicer, so it runs here exactly as
in Slicer's Python: one ``medhub serve`` subprocess per module (free port, API token, a
temporary data folder) takes a 20-slice block of the real Philips head CT, runs ct-body, and the
logic fetches the ``.seg.nrrd`` and the SEG; slicerio (Slicer's reader outside Slicer) reads the
segmentation back. The same logic drives a local ``medhub`` executable. The Slicer-only part
(widgets, the DICOM database, ``slicer.util.loadSegmentation``) cannot run without Slicer; its
layout is checked against what Slicer's build (``slicerMacroBuildScriptedModule``) needs.
"""

from __future__ import annotations

import ast
import os
import re
import socket
import struct
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import pydicom
import pytest
from conftest import shared_path

EXTENSION = Path(__file__).resolve().parents[1] / "slicer" / "MedhubRunner"
MODULE = EXTENSION / "MedhubRunner"
sys.path.insert(0, str(MODULE))
# the extension's logic, imported as Slicer's Python imports it (the module folder on the path)
from MedhubRunnerLib import LocalBackend, MedhubClientError, ServerBackend, backend_for, read_segments  # noqa: E402

slicerio = pytest.importorskip("slicerio", reason="slicerio is not installed")

TOKEN = "slicer-test-token"
PHILIPS = "ct/philips_phantom_head_1mm"
SERVE = "from medhub.cli.main import app; import medhub.cli.serve; app(prog_name='medhub')"


# -- the extension's layout -----------------------------------------------------------------------
def test_logic_imports_only_the_standard_library():
    for path in (MODULE / "MedhubRunnerLib").glob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            names = ([alias.name for alias in node.names] if isinstance(node, ast.Import)
                     else [node.module or ""] if isinstance(node, ast.ImportFrom) and not node.level else [])
            for name in names:
                top = name.split(".")[0]
                assert top in sys.stdlib_module_names or top == "__future__", f"{path.name} imports {name}"


def test_extension_is_laid_out_as_slicers_build_expects():
    top = (EXTENSION / "CMakeLists.txt").read_text()
    assert "project(MedhubRunner)" in top and "find_package(Slicer REQUIRED)" in top
    assert "add_subdirectory(MedhubRunner)" in top and "${Slicer_EXTENSION_CPACK}" in top
    module = (MODULE / "CMakeLists.txt").read_text()
    assert "slicerMacroBuildScriptedModule(" in module and "set(MODULE_NAME MedhubRunner)" in module
    listed = [line.strip().replace("${MODULE_NAME}", "MedhubRunner") for line in module.splitlines()
              if line.strip().startswith("${MODULE_NAME}") or line.strip().startswith("Resources/")]
    for entry in listed:
        assert (MODULE / entry).is_file(), f"CMakeLists.txt lists {entry}, which does not exist"
    shipped = {f"MedhubRunnerLib/{p.name}" for p in (MODULE / "MedhubRunnerLib").glob("*.py")}
    assert shipped <= set(listed), "every logic file must be installed with the module"
    scripted = ast.parse((MODULE / "MedhubRunner.py").read_text())
    classes = {node.name for node in scripted.body if isinstance(node, ast.ClassDef)}
    assert classes >= {"MedhubRunner", "MedhubRunnerWidget", "MedhubRunnerLogic", "MedhubRunnerTest"}
    icon = (MODULE / "Resources" / "Icons" / "MedhubRunner.png").read_bytes()
    assert icon[:8] == b"\x89PNG\r\n\x1a\n" and struct.unpack(">II", icon[16:24]) == (128, 128)


def test_backend_for_and_bad_locations():
    assert isinstance(backend_for("http://127.0.0.1:1/"), ServerBackend)
    assert isinstance(backend_for(sys.executable), LocalBackend)
    for location, message in (("", "give a medhub serve URL"), ("no-such-medhub-program", "executable not found"),
                              ("ftp://x", "executable not found")):
        with pytest.raises(MedhubClientError, match=message):
            backend_for(location)


# -- against a real medhub serve --------------------------------------------------------------------
def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@pytest.fixture(scope="module")
def server(tmp_path_factory) -> Iterator[str]:
    data = tmp_path_factory.mktemp("serve")
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    with open(data / "serve.log", "wb") as log:
        process = subprocess.Popen([sys.executable, "-c", SERVE, "serve", "--data-dir", str(data / "data"),
                                    "--port", str(port), "--token", TOKEN, "--workers", "1"],
                                   stdout=log, stderr=subprocess.STDOUT, env={**os.environ, "PYTHONUNBUFFERED": "1"})
        try:
            deadline = time.monotonic() + 90
            while True:
                assert process.poll() is None, (data / "serve.log").read_text()
                try:
                    if httpx.get(f"{url}/openapi.json", timeout=2).status_code == 200:
                        break
                except httpx.TransportError:
                    pass
                assert time.monotonic() < deadline, "medhub serve did not start"
                time.sleep(0.2)
            yield url
        finally:
            process.terminate()
            try:
                process.wait(30)
            except subprocess.TimeoutExpired:
                process.kill()


@pytest.fixture(scope="module")
def ct_files() -> list[Path]:
    files = [p for p in shared_path(PHILIPS).iterdir() if p.is_file()]
    files.sort(key=lambda p: float(pydicom.dcmread(p, stop_before_pixels=True).ImagePositionPatient[2]))
    return files[60:80]


def check_segmentation(path: Path, slices: int) -> list[str]:
    """Slicer's reader agrees with the logic's header reader; the voxels lie on the CT's grid."""
    segmentation = slicerio.read_segmentation(str(path))
    names = [segment["name"] for segment in read_segments(path)]
    assert names == [segment["name"] for segment in segmentation["segments"]] and "Body" in names
    assert segmentation["voxels"].shape == (512, 512, slices)
    values = {segment["label_value"] for segment in read_segments(path)}
    assert values == set(np.unique(segmentation["voxels"]).tolist()) - {0}
    body = read_segments(path)[names.index("Body")]
    assert body["terminology"].endswith("~SCT^38266002^Entire body~^^~Anatomic codes - DICOM master list~^^~^^")
    return names


def test_catalog_submit_poll_fetch_against_a_real_server(server, ct_files, tmp_path):
    backend = backend_for(server, token=TOKEN)
    models = {model.id: model for model in backend.models()}
    assert "ct-body" in models and models["ct-body"].label.startswith("ct-body (CT, CHEST): ")
    assert [m.id for m in backend.models(modality="MR")] and "ct-body" not in {m.id for m in backend.models("MR")}

    seen: list[tuple[str, float | None]] = []
    result = backend.run("ct-body", ct_files, tmp_path / "results", progress=lambda m, f: seen.append((m, f)))
    assert seen[0] == ("uploading", None) and seen[-1] == ("succeeded series 1/1", 1.0)
    fractions = [f for _, f in seen if f is not None]
    assert fractions == sorted(fractions)
    (nrrd,) = result.seg_nrrd
    (seg_path,) = result.seg
    assert nrrd.name == "ct-body.seg.nrrd" and nrrd.parent == seg_path.parent
    assert check_segmentation(nrrd, len(ct_files))
    seg = pydicom.dcmread(seg_path)
    source_series = pydicom.dcmread(ct_files[0], stop_before_pixels=True).SeriesInstanceUID
    assert seg.Modality == "SEG" and seg.ReferencedSeriesSequence[0].SeriesInstanceUID == source_series
    assert result.report["summary"]["succeeded"] == 1 and not result.notes
    assert not list(tmp_path.rglob("*.partial"))


def test_server_errors_are_one_line(server, ct_files, tmp_path):
    with pytest.raises(MedhubClientError, match=r"refused the API token \(HTTP 401\)"):
        ServerBackend(server, token="wrong").models()
    with pytest.raises(MedhubClientError, match=r"refused the API token \(HTTP 401\); it needs one"):
        ServerBackend(server).models()
    down = f"http://127.0.0.1:{free_port()}"
    with pytest.raises(MedhubClientError, match=f"cannot reach the medhub server at {re.escape(down)}"):
        ServerBackend(down).models()
    text = tmp_path / "notes.txt"
    text.write_text("not an image")
    with pytest.raises(MedhubClientError) as refused:
        ServerBackend(server, token=TOKEN).submit("ct-body", [text])
    message = str(refused.value)
    assert "answered HTTP 422 to POST /api/jobs: no DICOM series found in the upload" in message
    assert "\n" not in message
    with pytest.raises(MedhubClientError, match="HTTP 4.*no-such-model"):
        ServerBackend(server, token=TOKEN).submit("no-such-model", ct_files[:1])
    with pytest.raises(MedhubClientError, match="input file not found"):
        ServerBackend(server, token=TOKEN).submit("ct-body", [tmp_path / "missing.dcm"])


def test_local_medhub_executable(ct_files, tmp_path):
    backend = LocalBackend([sys.executable, "-m", "medhub"])
    assert "ct-body" in {model.id for model in backend.models()}
    seen: list[tuple[str, float | None]] = []
    result = backend.run("ct-body", ct_files, tmp_path / "out", progress=lambda m, f: seen.append((m, f)))
    (nrrd,) = result.seg_nrrd
    assert check_segmentation(nrrd, len(ct_files)) and len(result.seg) == 1
    assert seen[-1] == ("done", 1.0)
    with pytest.raises(MedhubClientError, match="no-such-model"):
        backend.run("no-such-model", ct_files, tmp_path / "bad")
