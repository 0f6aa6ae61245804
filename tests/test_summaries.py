"""``--statistics`` and ``--preview``: per-segment figures and a picture of the result, on real images.

The statistics are checked against numpy on the real head CT and against ct-body's own figures;
the preview is checked by pixel probes where the anatomy must appear (a label drawn only in the
left, anterior, upper part of the real MNI152 brain must appear right of centre and above it in
an axial tile, as radiologists read it), and the colour rule by its definition on
TotalSegmentator's own reference segmentation.
"""

from __future__ import annotations

import csv
import json
import subprocess
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from conftest import shared_path
from PIL import Image

from medhub.data.volume import Volume
from medhub.hub.catalog import get_model
from medhub.inputs.load import load_series
from medhub.inputs.nifti import load_nifti
from medhub.inputs.scan import scan
from medhub.segdb import get_segment
from medhub.segdb.colors import MIN_DELTA_E, delta_e, display_colors, distinct_colors, neighbours
from medhub.writers import preview as preview_module
from medhub.writers.preview import render_preview, tile_box
from medhub.writers.statistics import segment_statistics

ABDOMEN_CT = "ct/totalsegmentator_example_ct_dicom"  # real, 20 slices, files without UIDs (NIfTI, no SEG)


def _grey(pixels: np.ndarray) -> np.ndarray:
    return (pixels.max(axis=-1).astype(int) - pixels.min(axis=-1).astype(int)) <= 12


@pytest.fixture(scope="module")
def ct_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, dict]:
    """ct-body with --statistics --preview on the real abdominal CT (its files carry no UIDs: NIfTI, no SEG)."""
    folder = tmp_path_factory.mktemp("summaries")
    source = shared_path(ABDOMEN_CT)
    out = folder / "out"
    result = subprocess.run([sys.executable, "-m", "medhub", "run", "ct-body", "--input", str(source), "--output",
                             str(out), "--statistics", "--preview", "--nifti"], capture_output=True, text=True,
                            timeout=600, check=False)
    assert result.returncode == 0, result.stderr
    report = json.loads((out / "medhub-report.json").read_text())
    return source, out, report


def test_statistics_match_numpy_on_the_source_grid_and_the_models_own_volumes(ct_run) -> None:
    source, out, report = ct_run
    entry = next(e for e in report["series"] if e["status"] == "succeeded")
    names = {Path(o).name for o in entry["outputs"]}
    assert {"ct-body.statistics.json", "ct-body.statistics.csv", "ct-body.preview.png"} <= names
    folder = out / Path(entry["outputs"][0]).parent
    stats = json.loads((folder / "ct-body.statistics.json").read_text())
    assert stats["unit"] == "HU" and stats["model"] == "ct-body" and stats["series"] == entry["key"]
    assert stats["grid"]["shape"] == [512, 512, 20] and not stats["grid"]["resampled"]  # the CT's own grid

    volume = load_series(scan(source).series[0])
    labels = np.asarray(nib.load(folder / "ct-body.nii.gz").dataobj)[:, ::-1, :]  # dcm2niix's order back to DICOM's
    voxel_ml = float(np.prod(volume.spacing)) / 1000
    for row in stats["segments"].values():
        inside = volume.array[labels == row["label"]].astype(np.float64)
        assert row["voxels"] == inside.size
        assert row["volume_ml"] == pytest.approx(inside.size * voxel_ml, abs=1e-3)
        assert row["volume"] == pytest.approx(inside.size * voxel_ml * 1000, abs=0.01)  # TotalSegmentator's mm3
        if inside.size:
            assert row["mean"] == row["intensity"] == pytest.approx(inside.mean(), abs=1e-3)
            assert row["std"] == pytest.approx(inside.std(), abs=1e-3)
            assert (row["min"], row["max"]) == (inside.min(), inside.max())
            assert row["median"] == pytest.approx(np.median(inside), abs=1e-3)
            assert row["p5"] <= row["p25"] <= row["median"] <= row["p75"] <= row["p95"]
    # ct-body's own definitions: bone is above 250 HU; its reported bone volume is the BONE segment's.
    assert stats["segments"]["BONE"]["min"] >= 250
    assert stats["segments"]["BONE"]["volume_ml"] == pytest.approx(entry["values"]["bone_volume_ml"], abs=1e-2)
    assert -100 < stats["segments"]["BODY"]["median"] < 100  # soft tissue, in HU
    assert stats["segments"]["BODY"]["touches_border"] is True  # 20 slices cut the trunk: flagged, not zeroed

    with (folder / "ct-body.statistics.csv").open() as stream:
        rows = list(csv.DictReader(stream))
    assert [r["segment_id"] for r in rows] == list(stats["segments"])
    assert float(rows[0]["volume_ml"]) == stats["segments"][rows[0]["segment_id"]]["volume_ml"]
    assert rows[0]["unit"] == "HU" and rows[0]["series"] == entry["key"]


def test_preview_of_the_ct_shows_the_overlay_in_every_plane(ct_run) -> None:
    _, out, report = ct_run
    entry = next(e for e in report["series"] if e["status"] == "succeeded")
    picture = np.asarray(Image.open(out / Path(entry["outputs"][0]).parent / "ct-body.preview.png").convert("RGB"))
    for row in range(3):
        left, top = tile_box(row, 2)
        tile = picture[top:top + preview_module.TILE, left:left + preview_module.TILE]
        assert (~_grey(tile)).sum() > 500, f"row {row}: no overlay"
        # A 20-slice stack is 40 mm tall: its coronal and sagittal tiles are enlarged, never a thin strip.
        lit_rows = np.flatnonzero(tile.max(axis=(1, 2)) > 40)
        assert lit_rows.size >= preview_module.MIN_SIDE - 2, f"row {row}: {lit_rows.size} rows drawn"


def test_preview_puts_the_patients_left_anterior_top_where_a_radiologist_expects_it() -> None:
    """A label only in the left, anterior, upper head of a real T1: right of and above centre in an axial tile."""
    volume = load_nifti(shared_path("mr/brainchop_t1_crop.nii.gz"))
    volume.modality = "MR"
    i, j, k = np.ogrid[tuple(slice(0, n) for n in volume.array.shape)]
    a = volume.affine_lps
    lps = [a[axis, 0] * i + a[axis, 1] * j + a[axis, 2] * k + a[axis, 3] for axis in range(3)]
    head = volume.array > np.percentile(volume.array[::4, ::4, ::4], 60)
    centre = np.array([np.broadcast_to(lps[axis], head.shape)[head].mean() for axis in range(3)])
    # LPS: +x is the patient's left, -y anterior, +z superior
    labels = (head & (lps[0] > centre[0] + 15) & (lps[1] < centre[1] - 15) & (lps[2] > centre[2] + 15)).astype(np.uint8)
    picture = np.asarray(render_preview(volume, labels, {1: get_segment("BRAIN")}, "T1"))
    half = preview_module.TILE / 2
    for row, (right_of_centre, above_centre) in enumerate(((True, True), (True, True), (False, True))):
        left, top = tile_box(row, 2)
        tile = picture[top:top + preview_module.TILE, left:left + preview_module.TILE]
        ys, xs = np.nonzero(~_grey(tile))
        assert xs.size > 100, f"row {row}: no overlay"
        assert (xs.mean() > half) == right_of_centre, (row, xs.mean())  # axial/coronal: patient left on the right
        assert (ys.mean() < half) == above_centre, (row, ys.mean())  # axial: anterior up; others: superior up
    shown = display_colors(labels, {1: get_segment("BRAIN").color})[1]
    swatch = picture[preview_module.HEADER + 12, preview_module.LEGEND_LEFT + 7]
    assert tuple(int(c) for c in swatch) == shown  # the legend's swatch is the segment's colour
    assert delta_e(shown, (128, 128, 128)) > 12  # and it stands out from a grey image (the database's is near-white)


def test_statistics_of_a_segment_without_voxels_are_empty_not_zero() -> None:
    volume = Volume(array=np.arange(64, dtype=np.float32).reshape(4, 4, 4), affine_lps=np.diag([2.0, 2.0, 2.0, 1]))
    labels = np.zeros((4, 4, 4), dtype=np.uint8)
    labels[1:3, 1:3, 1:3] = 1
    table = segment_statistics(volume, labels, {1: get_segment("BRAIN"), 2: get_segment("BODY")})
    assert table["BRAIN"]["voxels"] == 8 and table["BRAIN"]["volume_ml"] == 0.064
    assert table["BRAIN"]["touches_border"] is False
    assert table["BODY"]["voxels"] == 0 and table["BODY"]["mean"] is None and table["BODY"]["volume_ml"] == 0


# --------------------------------------------------------------------------- colours


def test_colours_change_only_where_neighbours_clash() -> None:
    red, almost_red, blue = (200, 40, 40), (205, 45, 42), (40, 40, 200)
    labels = np.zeros((12, 4, 4), dtype=np.uint8)
    labels[0:5] = 1  # the largest: keeps its colour
    labels[5:8] = 2  # touches 1, nearly the same colour: changed
    labels[11:] = 3  # same colour as 1 but three voxels away from everything: kept
    colors = display_colors(labels, {1: red, 2: almost_red, 3: red})
    assert colors[1] == red and colors[3] == red
    assert colors[2] != almost_red and delta_e(colors[2], red) >= MIN_DELTA_E
    assert neighbours(labels) == {(1, 2)}
    assert distinct_colors({1: red, 2: blue}) == {1: red, 2: blue}  # distinct already: untouched
    assert display_colors(labels, {1: red, 2: almost_red, 3: red}) == colors  # the same every time


def test_colours_on_totalsegmentators_reference_segmentation_keep_touching_structures_apart() -> None:
    labels = np.asarray(nib.load(shared_path("ct/totalsegmentator_nifti/example_seg.nii.gz")).dataobj).astype(np.uint8)
    segments = get_model("totalsegmentator").card.outputs.segments
    present = sorted(set(np.unique(labels).tolist()) - {0})
    database = {label: get_segment(segments[label]).color for label in present}
    colors = display_colors(labels, database)
    pairs = neighbours(labels)
    assert len(pairs) > 50  # a real abdomen: many structures touch
    assert min(delta_e(colors[a], colors[b]) for a, b in pairs) >= MIN_DELTA_E
    clashing = {a for a, b in pairs if delta_e(database[a], database[b]) < MIN_DELTA_E} | \
               {b for a, b in pairs if delta_e(database[a], database[b]) < MIN_DELTA_E}
    kept = [label for label in present if colors[label] == database[label]]
    assert len(kept) >= len(present) - len(clashing)  # only clashing structures may change
    assert colors[5] == database[5]  # the liver, the largest structure here, keeps its colour


@pytest.mark.parametrize("model_id", ["ct-body", "lungmask", "brainchop-gwm"])
def test_small_models_segments_are_all_distinct_without_a_label_map(model_id: str) -> None:
    segments = get_model(model_id).card.outputs.segments
    colors = distinct_colors({label: get_segment(seg).color for label, seg in segments.items()})
    labels = sorted(colors)
    assert min(delta_e(colors[a], colors[b]) for i, a in enumerate(labels) for b in labels[i + 1:]) >= MIN_DELTA_E
