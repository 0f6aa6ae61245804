"""End to end in a real browser: ``medhub serve`` + headless Chromium (Debian's, driven by Playwright).

Opens the catalog, filters it, uploads the real CT series (20 files, as a folder, the way a user
picks one in the "try it" form), follows the job (the bar moves with the steps of the one
series), and checks the viewer as a radiologist would, on screenshots: the overlay where the
body is, orientation letters on every view, the Hounsfield value under the cursor equal to the
CT's own, a 20-slice stack drawn at its true aspect ratio but never as a thin strip, a toggled
segment vanishing, and no server folder on any page. Also: "try it" offers RTSTRUCT once, a
mistyped job address gives a page, a refused upload shows the server's reason, and a zip upload
links valid SEG and RTSTRUCT downloads. Screenshots go to tests/artifacts/ (or
$MEDHUB_TEST_ARTIFACTS). Skips with the reason where Chromium or Playwright is absent.
"""

from __future__ import annotations

import re
import socket
import subprocess
import sys
import time
import urllib.request
import zipfile
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from browser_tools import (
    PLANES,
    VIEWPORT,
    canvas_pixels,
    chromium,
    coloured,
    hover,
    label_at,
    labelled_extent,
    pixel_at,
    require_browser,
    save_screenshot,
    screen_of,
    slice_centroid,
)
from conftest import shared_path

CT_SERIES = "ct/totalsegmentator_example_ct_dicom"
PHANTOM = "ct/philips_phantom_head_1mm"
TOKEN = "browser-test-token"


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture(scope="module")
def data_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("serve-browser")


@pytest.fixture(scope="module")
def server(data_root: Path) -> Iterator[str]:
    """A real ``medhub serve`` (uvicorn) on a free port with a fresh data dir and an API token."""
    require_browser()
    pytest.importorskip("fastapi", reason="medhub serve needs fastapi (pip install 'medhub[serve]')")
    data = data_root
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
    with chromium() as instance:
        yield instance


# Records the try page's bar and status every 40 ms into sessionStorage, which outlives the page's
# navigation to the result page when the job has finished.
RECORD_PROGRESS = """() => {
  const bar = document.getElementById('job-progress'), status = document.getElementById('job-status');
  const seen = [];
  setInterval(() => {
    seen.push([bar.value, status.textContent]);
    sessionStorage.setItem('progress', JSON.stringify(seen));
  }, 40);
}"""


@pytest.mark.slow
def test_upload_follow_and_read_the_ct_like_a_radiologist(server: str, browser: object, data_root: Path) -> None:
    """The whole user path on the real 20-slice abdominal CT: catalog → try it → job → viewer."""
    from medhub.inputs.load import load_series
    from medhub.inputs.scan import scan

    series = shared_path(CT_SERIES)
    context = browser.new_context(viewport=VIEWPORT, accept_downloads=True)
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
    page.evaluate(RECORD_PROGRESS)
    page.click("#start")

    # The try page follows the job (SSE) and opens the result page when it has finished.
    page.wait_for_url(re.compile(r"/jobs/[0-9a-f]{32}$"), timeout=180_000)
    page.wait_for_function("document.body.dataset.viewer === 'ready' || document.body.dataset.viewer === 'error'",
                           timeout=120_000)
    assert page.locator("#job-state").inner_text() == "succeeded", page.locator("#job-summary").inner_text()
    assert page.evaluate("document.body.dataset.viewer") == "ready", page.locator("#job-error").inner_text()

    # The bar moved with the steps of the one series: a value strictly between 0 and 1 while it ran.
    recorded = page.evaluate("() => JSON.parse(sessionStorage.getItem('progress') || '[]')")
    running = [value for value, status in recorded if status.startswith("running")]
    assert any(0 < value < 1 for value in running), recorded[-20:]
    assert running == sorted(running)  # it never goes back

    meta = page.evaluate("() => window.medhubViewer.meta")
    X, Y, Z = meta["shape"]
    assert (X, Y, Z) == (512, 512, 20)
    save_screenshot(page, "serve-browser-viewer.png")

    # Orientation letters on every view.
    letters = {plane: [page.locator(f'.view[data-plane="{plane}"] .orient-{side}').inner_text()
                       for side in ("left", "right", "top", "bottom")] for plane in PLANES}
    assert letters == {"axial": ["R", "L", "A", "P"], "coronal": ["R", "L", "S", "I"],
                       "sagittal": ["A", "P", "S", "I"]}

    # The overlay is drawn where the body is (pixel probes on screenshots), over a visible image.
    body_label = next(s["label"] for s in meta["segments"] if s["id"] == "BODY")
    extent = labelled_extent(page)
    for axis, position in enumerate(meta["start"]):  # it opens in the middle of the segmented region
        assert extent[axis][0] <= position <= extent[axis][1]
        assert abs(position - (extent[axis][0] + extent[axis][1]) / 2) <= 0.1 * (extent[axis][1] - extent[axis][0]) + 1
    inside = slice_centroid(page, meta["start"][2], body_label)
    assert inside is not None and label_at(page, inside) == body_label
    pixels = {plane: canvas_pixels(page, plane) for plane in PLANES}
    for plane in PLANES:
        assert coloured(pixels[plane]).sum() > 500, plane
    row, column = pixel_at(pixels["axial"], screen_of(page, "axial", inside))
    assert coloured(pixels["axial"][row - 1:row + 2, column - 1:column + 2]).all()  # the body's centre is overlaid
    assert not coloured(pixels["axial"][2:10, 2:10]).any()  # the corner (air, outside the body) is not

    # A 20-slice stack (40 mm tall, 500 mm wide) keeps its aspect ratio but is never a thin strip.
    for plane in ("coronal", "sagittal"):
        tall = np.flatnonzero(pixels[plane].max(axis=(1, 2)) > 30)
        height = pixels[plane].shape[0]
        assert tall.size >= 0.38 * height, (plane, tall.size, height)
        a, b = screen_of(page, plane, (10, 10, 2)), screen_of(page, plane, (10, 10, 12))
        c = screen_of(page, plane, (20, 20, 2))
        along_z = abs(a[1] - b[1]) / (10 * meta["spacing"][2])
        across = abs(c[0] - a[0]) / (10 * meta["spacing"][0 if plane == "coronal" else 1])
        assert along_z == pytest.approx(across, rel=0.05)  # pixels per mm: equal both ways

    # The value under the cursor is the CT's own, in HU, at the right place in the patient.
    volume = load_series(scan(series).series[0])
    inverse = np.linalg.inv(volume.affine_lps)
    readout = hover(page, "axial", screen_of(page, "axial", inside))
    reported = (int(readout["x"]), int(readout["y"]), int(readout["z"]))
    # a CSS pixel is about two voxels of a 512-wide CT in a 330-pixel view: the mouse hits the voxel or its neighbour
    assert "HU" in readout["text"] and np.abs(np.subtract(reported, inside)).max() <= 1 and reported[2] == inside[2]
    world = np.array([float(v) for v in readout["world"].split(",")] + [1.0])
    source = tuple(int(round(v)) for v in (inverse @ world)[:3])
    assert float(readout["value"]) == pytest.approx(float(volume.array[source]), abs=0.5)
    assert readout["segment"] == ("Body" if label_at(page, reported) == body_label else "")
    left = hover(page, "axial", (0.2 * pixels["axial"].shape[1], 0.5 * pixels["axial"].shape[0]))
    right = hover(page, "axial", (0.8 * pixels["axial"].shape[1], 0.5 * pixels["axial"].shape[0]))
    assert " R " in f" {left['text']}" and " L " in f" {right['text']}"  # the patient's right is on the left

    # Legend, volumes table, downloads.
    legend = page.locator("#legend input[type=checkbox]")
    assert legend.count() == 5  # ct-body's five segments
    assert "Body" in page.locator("#legend").inner_text()
    body_ml = page.locator('#volumes tr[data-segment="BODY"] td.num').inner_text()
    assert float(body_ml.replace(",", "")) > 1000
    assert "Volume = the voxels labelled" in page.locator("#volume-note").inner_text()
    # ct-body's own body volume counts the lungs and bone inside the body: listed once, with that said
    assert "including the lungs and bone" in page.locator('#values tr[data-value="body_volume_ml"]').inner_text()
    nifti = page.locator("#downloads li.download-nifti a")
    assert nifti.count() == 1
    response = context.request.get(server + nifti.get_attribute("href"))
    assert response.status == 200 and response.body()[:2] == b"\x1f\x8b"  # a .nii.gz

    # Toggle every segment off: no overlay left (crosshair off too). Body back on: it returns.
    page.uncheck("#crosshair")
    for index in range(legend.count()):
        legend.nth(index).uncheck()
    assert all(not coloured(canvas_pixels(page, plane)).any() for plane in PLANES)
    page.check(f"#segment-{body_label}")
    assert coloured(canvas_pixels(page, "axial")).sum() > 500

    # A click in the enlarged coronal view moves the crosshair there, and that view stays put under the mouse.
    anchor = screen_of(page, "coronal", (100, inside[1], 5))
    box = page.locator("#coronal-canvas").bounding_box()
    page.mouse.click(box["x"] + 0.7 * box["width"], box["y"] + 0.5 * box["height"])
    assert screen_of(page, "coronal", (100, inside[1], 5)) == pytest.approx(anchor, abs=0.01)
    moved = page.evaluate("() => window.medhubViewer.pos")
    assert int(page.locator("#sagittal-no").inner_text().split("/")[0]) == moved["x"] + 1

    # Opacity 0 hides the overlay too; the wheel scrolls the axial view.
    page.locator("#opacity").fill("0")
    assert not coloured(canvas_pixels(page, "axial")).any()
    before = page.locator("#axial-no").inner_text()
    page.locator("#axial-canvas").hover()
    page.mouse.wheel(0, 120)
    page.wait_for_function(f"document.getElementById('axial-no').textContent !== {before!r}")

    # No folder of the server on the page, in the job's JSON or in the viewer's answers.
    assert str(data_root) not in page.content()
    job_id = page.url.rsplit("/", 1)[1]
    job = context.request.get(f"{server}/api/jobs/{job_id}", headers={"Authorization": f"Bearer {TOKEN}"}).text()
    assert str(data_root) not in job and "/jobs/" not in job
    assert errors == [], errors
    context.close()


@pytest.mark.slow
def test_try_offers_rtstruct_once_and_a_mistyped_job_address_is_a_page(server: str, browser: object) -> None:
    context = browser.new_context()
    page = context.new_page()
    page.goto(f"{server}/try?model=ct-body&token={TOKEN}")
    assert page.locator("#opt-rtstruct").is_visible() and page.locator("#opt-rtstruct-note").is_hidden()
    page.select_option("#workflow", "rtstruct")  # this workflow writes one: no second offer
    assert page.locator("#opt-rtstruct").is_hidden() and page.locator("#opt-rtstruct-note").is_visible()
    page.select_option("#model", "ct-fm-astra")  # an embedding: nothing to contour
    assert page.locator("#opt-rtstruct").is_hidden() and page.locator("#opt-labelmap").is_hidden()

    for wrong in ("0123", "f" * 32):
        response = page.goto(f"{server}/jobs/{wrong}")
        assert response.status == 404
        assert page.locator("h1").inner_text() == "Job not found"
        assert "detail" not in page.content() and "pattern" not in page.content()
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
    assert page.evaluate("() => window.medhubViewer.meta.shape")[:2] == [512, 512]
    context.close()
