"""A picture of one series' result (``--preview``): ``<model>.preview.png``.

Like TotalSegmentator's ``--preview`` (a quick look whether the segmentation worked), but as
slices a radiologist reads rather than a 3D rendering: three rows (axial, coronal, sagittal)
of :data:`COLUMNS` slices spread evenly through the segmented structures, the label map laid
over the image (filled at :data:`OPACITY` with an opaque outline), orientation letters on every
tile, and a legend with each segment's colour, name and volume.

Slices are shown as in the viewer (:mod:`medhub.serve`): the volume is reordered to the
patient's Left, Posterior, Superior axes, so the patient's right is on the left of an axial
and a coronal tile (radiological convention), anterior is up in an axial tile and on the left
of a sagittal one, superior is up in coronal and sagittal tiles. Tiles keep the true aspect
ratio of the voxels; a very flat view (a few thick slices) is enlarged to at least
:data:`MIN_SIDE` pixels and cropped around the structures rather than drawn as a thin strip.
Colours are the segment database's, made distinct where neighbours clash
(:mod:`medhub.segdb.colors`). CT is shown in a soft-tissue window (W 400 / L 40), other
images from their 0.5th to 99.5th percentile.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from medhub.data.geometry import to_lps
from medhub.data.volume import Volume
from medhub.errors import MedhubError
from medhub.files import atomic_output
from medhub.segdb import SegmentSpec
from medhub.segdb.colors import display_colors

COLUMNS = 5
TILE = 240  # each tile fits in TILE x TILE pixels
MIN_SIDE = 96  # a tile's short side is never drawn smaller than this
OPACITY = 0.45
HEADER = 30  # the title line
ROW = TILE + 24  # a row of tiles with their captions
LEGEND_LEFT = 8 + COLUMNS * (TILE + 8) + 12
CT_WINDOW = (-160.0, 240.0)
BACKGROUND = (0, 0, 0)
TEXT = (230, 230, 230)
MUTED = (150, 150, 150)
PLANES = ("axial", "coronal", "sagittal")
# Letters at the (left, right, top, bottom) edges of each plane's tiles.
LETTERS = {"axial": ("R", "L", "A", "P"), "coronal": ("R", "L", "S", "I"), "sagittal": ("A", "P", "S", "I")}


def plane_slice(array_lps: np.ndarray, plane: str, index: int) -> np.ndarray:
    """One slice of an LPS-ordered ``[x, y, z]`` array as displayed: ``[row, column]`` (see the module docstring)."""
    if plane == "axial":
        return array_lps[:, :, index].T
    if plane == "coronal":
        return array_lps[:, index, :].T[::-1]
    if plane == "sagittal":
        return array_lps[index, :, :].T[::-1]
    raise ValueError(f"unknown plane {plane!r}")


def plane_spacing(spacing: tuple[float, float, float], plane: str) -> tuple[float, float]:
    """(row, column) spacing in mm of a displayed slice of ``plane``."""
    sx, sy, sz = spacing
    return {"axial": (sy, sx), "coronal": (sz, sx), "sagittal": (sz, sy)}[plane]


def _axis(plane: str) -> int:
    return {"axial": 2, "coronal": 1, "sagittal": 0}[plane]


def slice_positions(labels_lps: np.ndarray, plane: str, count: int = COLUMNS) -> list[int]:
    """``count`` slice indices spread evenly through the labelled extent along the plane's axis."""
    axis = _axis(plane)
    others = tuple(a for a in range(3) if a != axis)
    occupied = np.flatnonzero(np.asarray(labels_lps).any(axis=others))
    if occupied.size == 0:
        size = labels_lps.shape[axis]
        low, high = 0, size - 1
    else:
        low, high = int(occupied[0]), int(occupied[-1])
    fractions = (np.arange(count) + 0.5) / count
    return sorted({int(round(low + f * (high - low))) for f in fractions})


def _window(volume: Volume, image_lps: np.ndarray) -> tuple[float, float]:
    if (volume.modality or "").upper() == "CT":
        return CT_WINDOW
    sample = image_lps[:: max(1, image_lps.shape[0] // 128), :: max(1, image_lps.shape[1] // 128), :]
    low, high = np.percentile(sample, [0.5, 99.5]) if sample.size else (0.0, 1.0)
    return float(low), float(high if high > low else low + 1.0)


def _tile(image: np.ndarray, labels: np.ndarray, spacing: tuple[float, float], window: tuple[float, float],
          lut: np.ndarray) -> Image.Image:
    """One slice with its overlay, scaled to true aspect inside TILE x TILE (short side >= MIN_SIDE)."""
    rows, cols = image.shape
    height_mm, width_mm = rows * spacing[0], cols * spacing[1]
    scale = min(TILE / width_mm, TILE / height_mm)
    scale = max(scale, MIN_SIDE / min(width_mm, height_mm))  # never a thin strip: enlarge, then crop
    size = (max(1, round(width_mm * scale)), max(1, round(height_mm * scale)))
    low, high = window
    grey = np.clip((image.astype(np.float32) - low) / (high - low) * 255.0, 0, 255).astype(np.uint8)
    picture = Image.fromarray(grey, mode="L").resize(size, Image.Resampling.BILINEAR).convert("RGB")
    label_tile = np.asarray(Image.fromarray(labels.astype(np.uint8), mode="L").resize(size, Image.Resampling.NEAREST))
    pixels = np.asarray(picture).astype(np.float32)
    inside = label_tile > 0
    colour = lut[label_tile].astype(np.float32)
    pixels[inside] = pixels[inside] * (1 - OPACITY) + colour[inside] * OPACITY
    edge = np.zeros_like(inside)
    edge[:-1, :] |= label_tile[:-1, :] != label_tile[1:, :]
    edge[1:, :] |= label_tile[1:, :] != label_tile[:-1, :]
    edge[:, :-1] |= label_tile[:, :-1] != label_tile[:, 1:]
    edge[:, 1:] |= label_tile[:, 1:] != label_tile[:, :-1]
    edge &= inside
    pixels[edge] = colour[edge]
    tile = Image.fromarray(np.rint(pixels).astype(np.uint8), mode="RGB")
    if size[0] > TILE or size[1] > TILE:  # enlarged past the box: crop around the structures
        tile = _crop_around(tile, label_tile, size)
    return tile


def _crop_around(tile: Image.Image, label_tile: np.ndarray, size: tuple[int, int]) -> Image.Image:
    ys, xs = np.nonzero(label_tile)
    cx, cy = (float(xs.mean()), float(ys.mean())) if xs.size else (size[0] / 2, size[1] / 2)
    width, height = min(TILE, size[0]), min(TILE, size[1])
    left = int(np.clip(round(cx - width / 2), 0, size[0] - width))
    top = int(np.clip(round(cy - height / 2), 0, size[1] - height))
    return tile.crop((left, top, left + width, top + height))


def _font(size: int) -> ImageFont.FreeTypeFont:
    """Pillow's bundled font at ``size``. Without FreeType Pillow gives a fixed bitmap font instead,
    which cannot anchor text (the orientation letters): say so rather than fail inside Pillow."""
    font = ImageFont.load_default(size=size)
    if not isinstance(font, ImageFont.FreeTypeFont):
        raise MedhubError("the preview needs Pillow with FreeType support (every Pillow wheel has it): "
                          "pip install --force-reinstall pillow")
    return font


def _letters(draw: ImageDraw.ImageDraw, box: tuple[int, int, int, int], plane: str, font: ImageFont.FreeTypeFont
             ) -> None:
    left, top, right, bottom = box
    west, east, north, south = LETTERS[plane]
    middle_x, middle_y = (left + right) // 2, (top + bottom) // 2
    draw.text((left + 3, middle_y), west, fill=TEXT, font=font, anchor="lm")
    draw.text((right - 3, middle_y), east, fill=TEXT, font=font, anchor="rm")
    draw.text((middle_x, top + 2), north, fill=TEXT, font=font, anchor="mt")
    draw.text((middle_x, bottom - 2), south, fill=TEXT, font=font, anchor="mb")


def tile_box(row: int, column: int) -> tuple[int, int]:
    """Top-left corner of the TILE x TILE box of a tile (rows: axial, coronal, sagittal); the tile is centred in it."""
    return 8 + column * (TILE + 8), HEADER + row * ROW + 18


def render_preview(volume: Volume, labels: np.ndarray, segments: Mapping[int, SegmentSpec], title: str
                   ) -> Image.Image:
    """The montage as an RGB image (see the module docstring)."""
    labels = np.asarray(labels)
    if labels.shape != volume.array.shape:
        raise MedhubError(f"preview: label map of shape {labels.shape} for an image of shape {volume.array.shape}")
    if labels.size and int(labels.max()) > 255:
        raise MedhubError("preview: label values above 255 cannot be shown")
    image_lps, affine = to_lps(np.asarray(volume.array), volume.affine_lps)
    labels_lps = np.ascontiguousarray(to_lps(labels.astype(np.uint8), volume.affine_lps)[0])  # fast counting
    sx, sy, sz = (float(s) for s in np.linalg.norm(affine[:3, :3], axis=0))
    spacing = (sx, sy, sz)
    counts = np.bincount(labels_lps.ravel(), minlength=256)
    colors = display_colors(labels_lps, {label: spec.color for label, spec in segments.items()})
    lut = np.zeros((256, 3), dtype=np.uint8)
    for label, color in colors.items():
        lut[label] = color
    window = _window(volume, image_lps)
    font, small = _font(14), _font(12)

    tiles: dict[str, list[tuple[int, Image.Image]]] = {}
    for plane in PLANES:
        tiles[plane] = [(index, _tile(plane_slice(image_lps, plane, index), plane_slice(labels_lps, plane, index),
                                      plane_spacing(spacing, plane), window, lut))
                        for index in slice_positions(labels_lps, plane)]

    voxel_ml = abs(float(np.linalg.det(affine[:3, :3]))) / 1000.0
    legend: list[tuple[tuple[int, int, int] | None, str]] = [
        (colors[label], f"{segments[label].name}  {counts[label] * voxel_ml:,.1f} ml")
        for label in sorted(segments) if counts[label]]
    if not legend:
        legend = [(None, "no segment found")]
    line = 20
    per_column = max(1, (3 * (TILE + 24) - 10) // line)
    legend_columns = -(-len(legend) // per_column)
    column_width = max(small.getlength(text) for _, text in legend) + 40
    legend_width = 20 + legend_columns * column_width

    header = HEADER
    width = int(LEGEND_LEFT + legend_width)
    height = header + 3 * ROW + 8
    canvas = Image.new("RGB", (width, height), BACKGROUND)
    draw = ImageDraw.Draw(canvas)
    draw.text((8, 8), title, fill=TEXT, font=font)
    for row, plane in enumerate(PLANES):
        top = tile_box(row, 0)[1] - 18
        slices = labels_lps.shape[_axis(plane)]
        for column, (index, tile) in enumerate(tiles[plane]):
            left, box_top = tile_box(row, column)
            draw.text((left, top + 2), f"{plane} {index + 1}/{slices}", fill=MUTED, font=small)
            x0 = left + (TILE - tile.width) // 2
            y0 = box_top + (TILE - tile.height) // 2
            canvas.paste(tile, (x0, y0))
            _letters(draw, (x0, y0, x0 + tile.width, y0 + tile.height), plane, small)
    for number, (swatch, text) in enumerate(legend):
        column, place = divmod(number, per_column)
        x = LEGEND_LEFT + column * column_width
        y = header + 4 + place * line
        if swatch is not None:
            draw.rectangle((x, y + 2, x + 14, y + 16), fill=swatch, outline=TEXT)
        draw.text((x + 22, y + 2), text, fill=TEXT, font=small)
    return canvas


def write_preview(path: Path, volume: Volume, labels: np.ndarray, segments: Mapping[int, SegmentSpec], title: str
                  ) -> Path:
    """Render the montage and write it as a PNG at ``path`` (atomically); return ``path``."""
    picture = render_preview(volume, labels, segments, title)
    with atomic_output(path) as temporary:
        picture.save(temporary, format="PNG", optimize=False)
    return path
