"""What the browser tests share: Debian's Chromium driven by Playwright, and reading the viewer's pixels.

Never ``playwright install``: the tests launch ``/usr/bin/chromium`` and skip with the reason
where it or Playwright is absent. Pixels are read from real screenshots (what a user sees, after
CSS scaling and compositing), and probed where the anatomy must be.
"""

from __future__ import annotations

import io
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import pytest

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]
ARTIFACTS = Path(os.environ.get("MEDHUB_TEST_ARTIFACTS", Path(__file__).resolve().parent / "artifacts"))
PLANES = ("axial", "coronal", "sagittal")
VIEWPORT = {"width": 1400, "height": 1000}


def require_browser() -> None:
    if not CHROMIUM.exists():
        pytest.skip(f"{CHROMIUM} is absent (apt-get install chromium)")
    pytest.importorskip("playwright.sync_api", reason="Playwright for Python is absent (pip install playwright)")


@contextmanager
def chromium() -> Iterator[Any]:
    """One headless Chromium for a test module."""
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        instance = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        try:
            yield instance
        finally:
            instance.close()


def canvas_pixels(page: Any, plane: str) -> np.ndarray:
    """A screenshot of one view's canvas as an RGB array (CSS pixels, device scale 1).

    The orientation letters drawn over the canvas (yellow) are hidden for it: they are checked as text.
    """
    from PIL import Image

    png = page.locator(f"#{plane}-canvas").screenshot(style=".orient { visibility: hidden !important; }")
    return np.asarray(Image.open(io.BytesIO(png)).convert("RGB"))


def crosshair(pixels: np.ndarray) -> np.ndarray:
    """Pixels of the crosshair colour, rgb(0, 200, 255)."""
    r, g, b = (pixels[..., k].astype(int) for k in range(3))
    return (r < 60) & (g > 150) & (b > 200)


def coloured(pixels: np.ndarray, spread: int = 12) -> np.ndarray:
    """Overlay pixels: channels differing by more than ``spread`` (the image is grey), the crosshair left out."""
    return ((pixels.max(axis=-1).astype(int) - pixels.min(axis=-1).astype(int)) > spread) & ~crosshair(pixels)


def screen_of(page: Any, plane: str, voxel: tuple[int, int, int]) -> tuple[float, float]:
    """Where the centre of a viewer voxel [x, y, z] (LPS order) is drawn in a view's canvas, in CSS pixels."""
    x, y = page.evaluate("([p, v]) => window.medhubViewer.screenOf(p, v[0], v[1], v[2])", [plane, list(voxel)])
    return float(x), float(y)


def pixel_at(pixels: np.ndarray, point: tuple[float, float]) -> tuple[int, int]:
    """(row, column) of a canvas point in a screenshot array."""
    return int(point[1]), int(point[0])


def hover(page: Any, plane: str, point: tuple[float, float]) -> dict[str, str]:
    """Move the mouse over a canvas point; return the readout's data (value, voxel, patient position, segment)."""
    box = page.locator(f"#{plane}-canvas").bounding_box()
    page.mouse.move(box["x"] + point[0], box["y"] + point[1])
    return page.evaluate("() => Object.assign({text: document.getElementById('readout').textContent}, "
                         "document.getElementById('readout').dataset)")


def save_screenshot(page: Any, name: str) -> Path:
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    path = ARTIFACTS / name
    page.screenshot(path=str(path), full_page=True)
    print(f"screenshot: {path}")
    return path


def label_at(page: Any, voxel: tuple[int, int, int]) -> int:
    """The label the viewer holds at a voxel [x, y, z]."""
    return int(page.evaluate("([x, y, z]) => { const v = window.medhubViewer, [X, Y] = v.meta.shape;"
                             " return v.labels[x + X * y + X * Y * z]; }", list(voxel)))


def labelled_extent(page: Any) -> list[tuple[int, int]]:
    """Per axis (x, y, z), the first and last index holding a labelled voxel (computed in the page: no copy)."""
    return [tuple(pair) for pair in page.evaluate("""() => {
      const v = window.medhubViewer, [X, Y, Z] = v.meta.shape, L = v.labels;
      const lo = [X, Y, Z], hi = [-1, -1, -1];
      let i = 0;
      for (let z = 0; z < Z; z++) for (let y = 0; y < Y; y++) for (let x = 0; x < X; x++, i++) {
        if (!L[i]) continue;
        if (x < lo[0]) lo[0] = x; if (x > hi[0]) hi[0] = x;
        if (y < lo[1]) lo[1] = y; if (y > hi[1]) hi[1] = y;
        if (z < lo[2]) lo[2] = z; if (z > hi[2]) hi[2] = z;
      }
      return [0, 1, 2].map(a => [lo[a], hi[a]]);
    }""")]


def slice_centroid(page: Any, z: int, label: int) -> tuple[int, int, int] | None:
    """The voxel at the centroid of ``label`` in axial slice ``z`` (None when the slice does not hold it)."""
    found = page.evaluate("""([z, label]) => {
      const v = window.medhubViewer, [X, Y] = v.meta.shape, L = v.labels;
      let n = 0, sx = 0, sy = 0;
      for (let y = 0; y < Y; y++) for (let x = 0; x < X; x++) {
        if (L[x + X * y + X * Y * z] === label) { n++; sx += x; sy += y; }
      }
      return n ? [Math.round(sx / n), Math.round(sy / n)] : null;
    }""", [z, label])
    return None if found is None else (int(found[0]), int(found[1]), z)
