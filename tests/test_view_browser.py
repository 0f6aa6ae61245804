"""The README's first command, then ``medhub view``, in a real browser: the brain mask on the MNI template.

``medhub run deepbet --sample --output medhub-out --preview --statistics`` (the real deepbet model
on nilearn's MNI152 T1 written as DICOM), then ``medhub view medhub-out --no-browser`` as a user
runs them, then Debian's Chromium on the printed address. The viewer is checked on screenshots by
pixel probes at known anatomy (MNI coordinates: the brain around the anterior commissure is
overlaid, the space beside the head is not), and as a radiologist uses it: it opens in the middle
of the brain, a click moves the crosshair and the other views, the value under the cursor is the
image's own at that place in the patient, Ctrl+wheel zooms about the cursor, Shift+drag pans,
a double click fits again, and the outline mode draws only the mask's edge.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pydicom
import pytest
from browser_tools import (
    PLANES,
    VIEWPORT,
    canvas_pixels,
    chromium,
    coloured,
    crosshair,
    hover,
    label_at,
    labelled_extent,
    pixel_at,
    require_browser,
    save_screenshot,
    screen_of,
)


@pytest.fixture(scope="module")
def sample_out(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The README's first command (with --preview --statistics), run in a fresh folder, once for this file.

    The tests of the command's own results need no browser; the viewer's tests (``view_url``) do.
    """
    for module in ("deepbet", "nilearn", "fastapi"):
        pytest.importorskip(module, reason=f"the README's first command needs {module} (pip install -e '.[deepbet,"
                                           "sample,serve]')")
    folder = tmp_path_factory.mktemp("readme")
    result = subprocess.run([sys.executable, "-m", "medhub", "run", "deepbet", "--sample", "--output", "medhub-out",
                             "--preview", "--statistics"], cwd=folder, capture_output=True, text=True, timeout=900,
                            check=False)
    assert result.returncode == 0, result.stderr
    return folder / "medhub-out"


@pytest.fixture(scope="module")
def view_url(sample_out: Path) -> Iterator[str]:
    """``medhub view medhub-out --no-browser``, run from the same folder; its printed address."""
    require_browser()
    process = subprocess.Popen([sys.executable, "-m", "medhub", "view", "medhub-out", "--no-browser"],
                               cwd=sample_out.parent, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        line = process.stdout.readline()
        found = re.search(r"http://127\.0\.0\.1:\d+/", line)
        assert found, line + (process.stderr.read() if process.poll() is not None else "")
        deadline = time.monotonic() + 60
        while True:
            try:
                urllib.request.urlopen(found.group(0), timeout=5).close()
                break
            except OSError:
                if time.monotonic() > deadline or process.poll() is not None:
                    raise
                time.sleep(0.3)
        yield found.group(0)
    finally:
        process.terminate()
        process.wait(timeout=20)


@pytest.fixture(scope="module")
def page(view_url: str) -> Iterator[Any]:
    with chromium() as browser:
        context = browser.new_context(viewport=VIEWPORT)
        page = context.new_page()
        errors: list[str] = []
        page.on("pageerror", lambda error: errors.append(str(error)))
        page.set_default_timeout(60_000)
        page.goto(view_url)
        page.wait_for_function("document.body.dataset.viewer === 'ready' || document.body.dataset.viewer === 'error'",
                               timeout=180_000)
        assert page.evaluate("document.body.dataset.viewer") == "ready", page.locator("#job-error").inner_text()
        yield page
        assert errors == [], errors
        context.close()


def _voxel_of(meta: dict, lps_mm: tuple[float, float, float]) -> tuple[int, int, int]:
    """The viewer voxel at a patient position (LPS mm), through the viewer's own affine."""
    inverse = np.linalg.inv(np.asarray(meta["affine_lps"]))
    return tuple(int(round(v)) for v in (inverse @ np.array([*lps_mm, 1.0]))[:3])


def _extent(mask: np.ndarray) -> tuple[int, int]:
    columns = np.flatnonzero(mask.any(axis=0))
    return int(columns[0]), int(columns[-1])


def test_the_readme_first_command_writes_a_valid_seg_referencing_the_kept_sample(sample_out: Path,
                                                                                 assert_valid_dicom) -> None:
    """deepbet on nilearn's MNI152 template written as DICOM, no other data: a valid SEG whose every
    referenced image is in OUT/sample-input, and a plausible brain."""
    report = json.loads((sample_out / "medhub-report.json").read_text())
    entry = next(e for e in report["series"] if e["status"] == "succeeded")
    seg_path = sample_out / next(o for o in entry["outputs"] if o.endswith(".seg.dcm"))
    assert_valid_dicom(seg_path)
    assert 1200 < entry["values"]["brain_volume_ml"] < 2200
    assert "plausible: the result is within the 1 range of its card" in entry["notes"]  # deepbet's brain volume
    assert report["input_path"] == "sample-input/mni152_t1_1mm"
    kept = {pydicom.dcmread(p, stop_before_pixels=True).SOPInstanceUID
            for p in (sample_out / report["input_path"]).iterdir()}
    seg = pydicom.dcmread(seg_path, stop_before_pixels=True)
    referenced = {item.ReferencedSOPInstanceUID for series in seg.ReferencedSeriesSequence
                  for item in series.ReferencedInstanceSequence}
    assert referenced and referenced <= kept


def test_the_readme_run_gives_the_files_and_view_shows_the_brain_mask_on_the_template(sample_out: Path,
                                                                                   page: Any) -> None:
    report = json.loads((sample_out / "medhub-report.json").read_text())
    entry = next(e for e in report["series"] if e["status"] == "succeeded")
    names = {Path(o).name for o in entry["outputs"]}
    assert {"deepbet.seg.dcm", "deepbet.preview.png", "deepbet.statistics.json", "deepbet.statistics.csv"} <= names
    stats = json.loads((sample_out / next(o for o in entry["outputs"] if o.endswith(".statistics.json"))).read_text())
    assert stats["segments"]["BRAIN"]["volume_ml"] == pytest.approx(entry["values"]["brain_volume_ml"], abs=0.01)

    meta = page.evaluate("() => window.medhubViewer.meta")
    assert meta["modality"] == "MR" and meta["unit"] == "" and meta["shape"] == [197, 233, 189]
    assert page.locator("h1").inner_text().startswith("Result")
    save_screenshot(page, "view-mni-brain.png")
    # It opens in the middle of the brain: on each axis the centre of the mask's extent.
    extent = labelled_extent(page)
    for axis, plane in ((2, "axial"), (1, "coronal"), (0, "sagittal")):
        middle = (extent[axis][0] + extent[axis][1]) // 2
        shown = int(page.locator(f"#{plane}-no").inner_text().split("/")[0])
        assert abs(shown - 1 - middle) <= 1, (plane, shown, middle)

    # Known anatomy, MNI coordinates (LPS = -x, -y, z of MNI's RAS): the brain around the anterior
    # commissure is overlaid in every view; 85 mm to the patient's right of it there is no head.
    commissure = _voxel_of(meta, (0.0, -2.0, -4.0))
    beside = _voxel_of(meta, (-85.0, -2.0, -4.0))
    assert label_at(page, commissure) == 1 and label_at(page, beside) == 0
    page.evaluate("([x, y, z]) => { const v = window.medhubViewer; v.pos = {x, y, z}; v.drawAll(); }",
                  list(commissure))
    colour = np.array(meta["segments"][0]["color"], dtype=float)
    for plane in PLANES:
        pixels = canvas_pixels(page, plane)
        row, column = pixel_at(pixels, screen_of(page, plane, commissure))
        probe = pixels[row + 4, column + 4].astype(float)  # beside the crosshair lines
        assert coloured(pixels[row + 3:row + 6, column + 3:column + 6]).all(), (plane, probe)
        # the blend leans towards the mask's colour: its dominant channels dominate the pixel
        assert np.argmin(probe) == np.argmin(colour), (plane, probe, colour)
    pixels = canvas_pixels(page, "axial")
    row, column = pixel_at(pixels, screen_of(page, "axial", beside))
    patch = pixels[row + 3:row + 8, column - 2:column + 3]  # below the crosshair's horizontal line
    assert not coloured(patch).any() and patch.max() < 40  # air beside the head: black, no overlay

    # One volume figure for the brain; deepbet's own value is the same, and the page says so.
    row_text = page.locator('#volumes tr[data-segment="BRAIN"]').inner_text()
    assert "the model reports the same: brain_volume_ml" in row_text
    assert page.locator("#values-section").is_hidden()
    assert "Volume = the voxels labelled" in page.locator("#volume-note").inner_text()
    assert str(sample_out.resolve()) not in page.content()


def test_crosshair_value_zoom_pan_and_outline(sample_out: Path, page: Any) -> None:
    from medhub.inputs.load import load_series
    from medhub.inputs.scan import scan

    meta = page.evaluate("() => window.medhubViewer.meta")
    page.evaluate("() => { const v = window.medhubViewer; for (const p of v.planes) v.resetView(p); }")

    # A click in the axial view moves the crosshair: the coronal and sagittal views go to that point.
    target = _voxel_of(meta, (-30.0, 20.0, -4.0))  # MNI (30, -20, -4): the patient's right hemisphere
    page.evaluate("z => window.medhubViewer.setSlice('axial', z)", target[2])
    box = page.locator("#axial-canvas").bounding_box()
    x, y = screen_of(page, "axial", target)
    page.mouse.click(box["x"] + x, box["y"] + y)
    position = page.evaluate("() => window.medhubViewer.pos")
    assert abs(position["x"] - target[0]) <= 1 and abs(position["y"] - target[1]) <= 1
    assert int(page.locator("#sagittal-no").inner_text().split("/")[0]) == position["x"] + 1
    assert int(page.locator("#coronal-no").inner_text().split("/")[0]) == position["y"] + 1
    coronal = canvas_pixels(page, "coronal")
    line_x = screen_of(page, "coronal", (position["x"], position["y"], position["z"]))[0]
    columns = np.flatnonzero(crosshair(coronal).sum(axis=0) > 0.3 * coronal.shape[0] * 0.4)
    assert columns.size and np.abs(columns - line_x).min() <= 1.5  # the vertical line at the clicked x

    # The value under the cursor is the image's own at that place in the patient (no unit for MR).
    volume = load_series(scan(sample_out / "sample-input").series[0])
    inverse = np.linalg.inv(volume.affine_lps)
    for point in ((0.3, 0.45), (0.5, 0.5), (0.62, 0.3)):
        readout = hover(page, "axial", (point[0] * box["width"], point[1] * box["height"]))
        world = np.array([float(v) for v in readout["world"].split(",")] + [1.0])
        source = tuple(int(round(v)) for v in (inverse @ world)[:3])
        assert float(readout["value"]) == pytest.approx(float(volume.array[source]), abs=1e-3), readout
        assert "HU" not in readout["text"]
        voxel = (int(readout["x"]), int(readout["y"]), int(readout["z"]))
        assert readout["segment"] == ("Brain" if label_at(page, voxel) else "")
    assert " R " in " " + hover(page, "axial", (0.25 * box["width"], 0.5 * box["height"]))["text"]
    assert " L " in " " + hover(page, "axial", (0.75 * box["width"], 0.5 * box["height"]))["text"]

    # Ctrl + wheel zooms about the cursor: the brain grows, the voxel under the cursor stays there.
    page.uncheck("#crosshair")
    left, right = _extent(coloured(canvas_pixels(page, "axial")))
    centre = ((left + right) / 2, box["height"] / 2)
    under = hover(page, "axial", centre)
    page.keyboard.down("Control")
    page.mouse.wheel(0, -100)
    page.keyboard.up("Control")
    page.wait_for_function("() => window.medhubViewer.view.axial.zoom > 1")
    zoomed_left, zoomed_right = _extent(coloured(canvas_pixels(page, "axial")))
    assert (zoomed_right - zoomed_left) / (right - left) == pytest.approx(1.25, abs=0.05)
    still = hover(page, "axial", centre)
    assert abs(int(still["x"]) - int(under["x"])) <= 1 and abs(int(still["y"]) - int(under["y"])) <= 1

    # Shift + drag pans; a double click fits the view again.
    page.keyboard.down("Shift")
    page.mouse.move(box["x"] + centre[0], box["y"] + centre[1])
    page.mouse.down()
    page.mouse.move(box["x"] + centre[0] + 30, box["y"] + centre[1], steps=3)
    page.mouse.up()
    page.keyboard.up("Shift")
    panned_left, _ = _extent(coloured(canvas_pixels(page, "axial")))
    assert panned_left - zoomed_left == pytest.approx(30, abs=2)
    page.mouse.dblclick(box["x"] + 5, box["y"] + 5)
    assert _extent(coloured(canvas_pixels(page, "axial"))) == (left, right)

    # Outline only: the mask's edge, not its inside.
    filled = coloured(canvas_pixels(page, "axial"))
    page.check("#outline")
    outlined = coloured(canvas_pixels(page, "axial"))
    assert 0 < outlined.sum() < 0.25 * filled.sum()
    assert _extent(outlined) == pytest.approx(_extent(filled), abs=2)  # the same boundary
    page.uncheck("#outline")
    page.check("#crosshair")
