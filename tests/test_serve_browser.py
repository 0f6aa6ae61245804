"""End to end in a real browser: ``medhub serve`` + headless Chromium (Debian's, driven by Playwright).

Opens the catalog, filters it, uploads the real CT series (20 files, as a folder, the way a user
picks one in the "try it" form), waits for the job, and checks that the viewer draws the
segmentation over the image by reading the canvas pixels back; a toggled-off segment must vanish.
A screenshot of the result page is saved as a test artifact (tests/artifacts/, or
$MEDHUB_TEST_ARTIFACTS). Skips with the reason where Chromium or Playwright is absent.
"""

from __future__ import annotations

import os
import re
import socket
import subprocess
import sys
import time
import urllib.request
import zipfile
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import shared_path

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]
CT_SERIES = "ct/totalsegmentator_example_ct_dicom"
PHANTOM = "ct/philips_phantom_head_1mm"
TOKEN = "browser-test-token"
ARTIFACTS = Path(os.environ.get("MEDHUB_TEST_ARTIFACTS", Path(__file__).resolve().parent / "artifacts"))

# Counts the pixels of a canvas whose colour is not grey: the CT is drawn in grey (R = G = B), so
# every such pixel is overlay. Also counts the pixels that are not black (the image itself).
COUNT_PIXELS = """(id) => {
  const canvas = document.getElementById(id);
  const data = canvas.getContext('2d').getImageData(0, 0, canvas.width, canvas.height).data;
  let coloured = 0, lit = 0;
  for (let i = 0; i < data.length; i += 4) {
    const r = data[i], g = data[i + 1], b = data[i + 2];
    if (Math.max(r, g, b) - Math.min(r, g, b) > 12) coloured++;
    if (r + g + b > 30) lit++;
  }
  return {coloured, lit, width: canvas.width, height: canvas.height};
}"""
PLANES = ("axial", "coronal", "sagittal")


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A real ``medhub serve`` (uvicorn) on a free port with a fresh data dir and an API token."""
    if not CHROMIUM.exists():
        pytest.skip(f"{CHROMIUM} is absent (apt-get install chromium)")
    pytest.importorskip("playwright.sync_api", reason="Playwright for Python is absent (pip install playwright)")
    pytest.importorskip("fastapi", reason="medhub serve needs fastapi (pip install 'medhub[serve]')")
    data = tmp_path_factory.mktemp("serve-browser")
    port = _free_port()
    log = open(data / "server.log", "w")  # noqa: SIM115 - closed in the teardown below
    # `medhub serve` itself; cli_serve is imported explicitly in case medhub.cli.main does not import it yet.
    command = [sys.executable, "-c", "import medhub.cli.serve; from medhub.cli.main import main; main()",
               "serve", "--host", "127.0.0.1", "--port", str(port), "--data-dir", str(data / "data"),
               "--token", TOKEN]
    process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT)
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            if process.poll() is not None:
                pytest.fail(f"medhub serve exited with {process.returncode}:\n{(data / 'server.log').read_text()}")
            try:
                with urllib.request.urlopen(f"{base}/openapi.json", timeout=2) as response:
                    if response.status == 200:
                        break
            except OSError:
                pass
            if time.monotonic() > deadline:
                pytest.fail(f"medhub serve did not answer in 60 s:\n{(data / 'server.log').read_text()}")
            time.sleep(0.3)
        yield base
    finally:
        process.terminate()
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        log.close()
        print(f"server log: {data / 'server.log'}")


@pytest.fixture(scope="module")
def browser(server: str) -> Iterator[object]:
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        instance = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        try:
            yield instance
        finally:
            instance.close()


def _pixels(page: object) -> dict[str, dict[str, int]]:
    return {plane: page.evaluate(COUNT_PIXELS, f"{plane}-canvas") for plane in PLANES}


@pytest.mark.slow
def test_catalog_filter_upload_job_and_viewer_overlay(server: str, browser: object, tmp_path: Path) -> None:
    """The whole user path, in Chromium: catalog → filter → try it → upload a folder → job → viewer."""
    series = shared_path(CT_SERIES)
    context = browser.new_context(viewport={"width": 1400, "height": 1000}, accept_downloads=True)
    page = context.new_page()
    errors: list[str] = []
    page.on("pageerror", lambda error: errors.append(str(error)))
    page.set_default_timeout(30_000)

    # Catalog, then filter it by modality: CT models stay, MR models go.
    page.goto(f"{server}/?token={TOKEN}")  # the page keeps the token in localStorage for the API calls
    assert page.locator("#model-ct-body").is_visible() and page.locator("#model-deepbet").is_visible()
    page.select_option("#filter-modality", "CT")
    assert page.locator("#model-ct-body").is_visible()
    assert page.locator("#model-deepbet").is_hidden()
    assert "modality=CT" in page.url
    assert re.match(r"\d+ of \d+ models", page.locator("#model-count").inner_text())

    # Try it: from the card's link, upload the series as a folder, start.
    page.locator("#model-ct-body >> text=Try it").click()
    page.wait_for_url(re.compile(r"/try\?model=ct-body"))
    assert page.locator("#model").input_value() == "ct-body"
    page.set_input_files("#folder-input", series)
    assert "20 files" in page.locator("#chosen-files").inner_text()
    page.click("#start")

    # The try page follows the job (SSE) and opens the result page when it has finished.
    page.wait_for_url(re.compile(r"/jobs/[0-9a-f]{32}$"), timeout=180_000)
    page.wait_for_function("document.body.dataset.viewer === 'ready' || document.body.dataset.viewer === 'error'",
                           timeout=120_000)
    assert page.locator("#job-state").inner_text() == "succeeded", page.locator("#job-summary").inner_text()
    assert page.evaluate("document.body.dataset.viewer") == "ready", page.locator("#job-error").inner_text()

    # The overlay is drawn: coloured pixels on every plane, over a visible image.
    shown = _pixels(page)
    assert shown["axial"]["width"] == 512 and shown["axial"]["height"] == 512
    for plane, counts in shown.items():
        assert counts["lit"] > 0.1 * counts["width"] * counts["height"], (plane, counts)
        assert counts["coloured"] > 100, (plane, counts)
    assert shown["axial"]["coloured"] > 20_000  # the body fills a good part of an abdominal slice

    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    screenshot = ARTIFACTS / "serve-browser-viewer.png"
    page.screenshot(path=str(screenshot), full_page=True)
    print(f"screenshot: {screenshot}")

    # Legend, volumes table, downloads.
    legend = page.locator("#legend input[type=checkbox]")
    assert legend.count() == 5  # ct-body's five segments
    assert "Body" in page.locator("#legend").inner_text()
    body_ml = page.locator('#volumes tr[data-segment="BODY"] td.num').inner_text()
    assert float(body_ml.replace(",", "")) > 1000
    nifti = page.locator("#downloads li.download-nifti a")
    assert nifti.count() == 1
    response = context.request.get(server + nifti.get_attribute("href"))
    assert response.status == 200 and response.body()[:2] == b"\x1f\x8b"  # a .nii.gz

    # Toggle every segment off: no overlay left. Body back on: it returns.
    for index in range(legend.count()):
        legend.nth(index).uncheck()
    hidden = _pixels(page)
    assert all(counts["coloured"] == 0 for counts in hidden.values()), hidden
    assert hidden["axial"]["lit"] > 0.1 * 512 * 512  # the image itself is still there
    page.check("#segment-1")
    again = _pixels(page)
    assert 0 < again["axial"]["coloured"] <= shown["axial"]["coloured"]

    # Opacity 0 hides the overlay too; the wheel scrolls the axial view.
    page.locator("#opacity").fill("0")
    assert _pixels(page)["axial"]["coloured"] == 0
    before = page.locator("#axial-no").inner_text()
    page.locator("#axial-canvas").hover()
    page.mouse.wheel(0, 120)
    page.wait_for_function(f"document.getElementById('axial-no').textContent !== {before!r}")
    assert errors == [], errors
    context.close()


@pytest.mark.slow
def test_try_page_shows_the_servers_refusal(server: str, browser: object, tmp_path: Path) -> None:
    """An upload without DICOM is refused before queueing; the page shows the server's one-line reason."""
    junk = tmp_path / "notes.txt"
    junk.write_text("not a DICOM file\n")
    context = browser.new_context()
    page = context.new_page()
    page.goto(f"{server}/try?model=ct-body&token={TOKEN}")
    page.set_input_files("#files-input", str(junk))
    page.click("#start")
    error = page.locator("#try-error")
    error.wait_for(state="visible", timeout=30_000)
    assert "DICOM" in error.inner_text()
    context.close()



def _phantom_zip(target: Path, slices: int = 24) -> Path:
    """A zip of ``slices`` neighbouring slices of the Philips head phantom (it has UIDs: SEG can be written)."""
    import pydicom

    files = sorted(shared_path(PHANTOM).iterdir(),
                   key=lambda p: float(pydicom.dcmread(p, stop_before_pixels=True).ImagePositionPatient[2]))
    middle = len(files) // 2
    with zipfile.ZipFile(target, "w") as archive:
        for path in files[middle - slices // 2: middle + slices // 2]:
            archive.write(path, f"phantom/{path.name}")
    return target


@pytest.mark.slow
def test_zip_upload_with_rtstruct_offers_seg_and_rtstruct_downloads(
    server: str, browser: object, tmp_path: Path, assert_valid_dicom: object
) -> None:
    """A zip of a series with UIDs and the RTSTRUCT option: the result page links a valid SEG and RTSTRUCT.

    24 slices of the phantom, not all 140: this is about the upload path and the links, not accuracy.
    """
    archive = _phantom_zip(tmp_path / "phantom.zip")
    context = browser.new_context(accept_downloads=True)
    page = context.new_page()
    page.goto(f"{server}/try?model=ct-body&token={TOKEN}")
    page.set_input_files("#files-input", str(archive))
    page.check("#opt-rtstruct")
    page.click("#start")
    page.wait_for_url(re.compile(r"/jobs/[0-9a-f]{32}$"), timeout=180_000)
    page.wait_for_function("document.body.dataset.viewer === 'ready'", timeout=120_000)
    assert page.locator("#series-select").input_value().startswith("1.3.46.670589")
    for kind, name in (("seg", "ct-body.seg.dcm"), ("rtstruct", "ct-body.rtstruct.dcm")):
        link = page.locator(f"#downloads li.download-{kind} a")
        assert link.count() == 1, page.locator("#downloads").inner_text()
        with page.expect_download() as info:
            link.click()
        saved = tmp_path / name
        info.value.save_as(saved)
        assert saved.read_bytes()[128:132] == b"DICM"
        assert_valid_dicom(saved)
    assert page.locator("#axial-canvas").evaluate("c => c.width") == 512
    context.close()
