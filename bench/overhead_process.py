"""The processes bench/overhead.py measures on medhub's side: one run each, with per-step times.

    python -m overhead_process _medhub UNSORTED LABEL OUT TIMINGS [--slices N]
    python -m overhead_process _writer seg|rtstruct|highdicom CT_DIR LABEL OUT TIMINGS

A module of its own, run with ``-m`` (so its bytecode is cached) and importing nothing beyond the
standard library before the measured steps: the harness (argparse, statistics, subprocess, ...)
is not part of what a medhub run costs. medhub is imported in the "imports" step.
"""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path

# The 10 labels of make_data.py / make_meta.py, as segment IDs of medhub's segment database.
# make_meta.py names them by SNOMED CT code (10200004 Liver, 78961009 Spleen, ...).
LABEL_SEGMENT_IDS = {
    1: "LIVER",
    2: "SPLEEN",
    3: "KIDNEY",
    4: "PANCREAS",
    5: "STOMACH",
    6: "HEART",
    7: "LUNG",
    8: "AORTA",
    9: "GALLBLADDER",
    10: "ESOPHAGUS",
}




def read_label_nifti(path: Path):
    """The label map and its RAS affine, read in 8 MB chunks straight into the array.

    nibabel reads a ``.nii.gz`` through ``gzip``, whose ``readinto`` first decompresses the whole
    image into a temporary ``bytes`` object: twice the label map in memory (+75 MiB here) for a
    moment. In ``medhub run`` the label map is the model's output, already in memory; the
    benchmark's stand-in for it should not cost more than the array itself. nibabel still parses
    the header (shape, dtype, affine, data offset, scaling) and the data must be unscaled.
    """
    import gzip

    import nibabel as nib
    import numpy as np

    img = nib.load(path)
    header = img.header
    slope, intercept = header.get_slope_inter()
    if slope not in (None, 1) or intercept not in (None, 0):
        raise ValueError(f"{path}: scaled label data ({slope}, {intercept}) is not what the benchmark writes")
    data = np.empty(header.get_data_shape(), dtype=header.get_data_dtype(), order="F")
    view = memoryview(data.reshape(-1, order="A")).cast("B")
    with gzip.open(path, "rb") if str(path).endswith(".gz") else open(path, "rb") as stream:
        stream.seek(int(img.dataobj.offset))  # where nibabel reads it (vox_offset may say 0)
        for start in range(0, len(view), 8 << 20):
            chunk = view[start : start + (8 << 20)]
            if stream.readinto(chunk) != len(chunk):
                raise ValueError(f"{path}: the image data is shorter than its header says")
    return data.astype(data.dtype.newbyteorder("="), copy=False), img.affine


def _now() -> tuple[float, float, float]:
    """Wall clock, this process's CPU time, and its peak resident memory so far (MiB): a step's end."""
    import resource

    return time.perf_counter(), time.process_time(), resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def label_to_volume_grid(label_data, label_affine_ras, volume):
    """Return the label array re-indexed onto ``volume``'s [x, y, z] grid.

    The label NIfTI comes from SimpleITK with the CT's geometry, but its axis order and
    directions are whatever its writer chose; the volume's are medhub's loader's. Compare the
    two affines: the voxel-to-voxel map must be a signed permutation with the label covering
    exactly the volume's extent. Anything else (another grid, resampling needed) is an error,
    because a benchmark must not quietly resample.
    """
    import numpy as np

    from medhub.errors import MedhubError

    vox_to_vox = np.linalg.inv(volume.affine_ras) @ np.asarray(label_affine_ras, float)
    rot = vox_to_vox[:3, :3]
    perm = np.round(rot)
    if not np.allclose(rot, perm, atol=1e-3) or sorted(np.abs(perm).sum(axis=0)) != [1, 1, 1]:
        raise MedhubError(f"label map axes are not a permutation of the volume's: {rot.round(4).tolist()}")
    shift = vox_to_vox[:3, 3]
    if not np.allclose(shift, np.round(shift), atol=1e-2):
        raise MedhubError(f"label map is offset from the volume grid by a fraction of a voxel: {shift}")
    out = np.asarray(label_data)
    # label axis feeding each volume axis, and its sign
    src_axes = [int(np.argmax(np.abs(perm[j]))) for j in range(3)]
    out = np.transpose(out, src_axes)
    for j in range(3):
        if perm[j, src_axes[j]] < 0:
            out = np.flip(out, axis=j)
            expected = volume.shape[j] - 1
        else:
            expected = 0
        if round(shift[j]) != expected:
            raise MedhubError(f"label map does not start at the volume's edge along axis {j}: shift {shift[j]}")
    if out.shape != tuple(volume.shape[:3]):
        raise MedhubError(f"label map shape {out.shape} differs from the volume's {volume.shape[:3]}")
    # A view, not a copy: NIfTI data is Fortran-ordered [x, y, z], so the (z, y, x) transpose
    # labels_to_source makes of it is already C-contiguous; copying here would cost ~1 s.
    return out


def medhub_process(unsorted: Path, label_path: Path, out_path: Path, timings_path: Path | None,
                   slices: int) -> None:
    """scan -> select -> load -> labels to source planes -> write SEG, with per-step times."""
    t = {"start": _now()}
    import nibabel  # noqa: F401 - the label reader's, counted in the imports step as before

    from medhub.data.geometry import labels_to_source
    from medhub.errors import MedhubError
    from medhub.inputs.load import load_series
    from medhub.inputs.scan import scan
    from medhub.segdb import get_segment
    from medhub.writers.provenance import AlgorithmInfo
    from medhub.writers.seg import write_seg

    t["imports"] = _now()
    result = scan(unsorted)
    t["scan"] = _now()
    chosen = [s for s in result.series if s.number_of_images == slices]
    if len(chosen) != 1:
        found = [(s.description, s.number_of_images) for s in result.series]
        raise MedhubError(f"{unsorted}: expected one {slices}-image series, found {found}")
    series = chosen[0]
    t["select"] = _now()
    volume = load_series(series)
    t["load"] = _now()
    label_data, label_affine = read_label_nifti(label_path)
    t["read labels"] = _now()
    labels_xyz = label_to_volume_grid(label_data, label_affine, volume)
    planes = labels_to_source(volume, labels_xyz)
    t["labels to source"] = _now()
    segments = {value: get_segment(seg_id) for value, seg_id in LABEL_SEGMENT_IDS.items()}
    algorithm = AlgorithmInfo(name="overhead-bench", version="1.0")
    out_path.parent.mkdir(parents=True, exist_ok=True)
    write_seg(planes, volume.source, segments, algorithm, out_path)
    t["write"] = _now()

    steps, prev = {}, t["start"]
    for name in ("imports", "scan", "select", "load", "read labels", "labels to source", "write"):
        steps[name] = {"wall": t[name][0] - prev[0], "cpu": t[name][1] - prev[1], "peak_mib": t[name][2]}
        prev = t[name]
    print("medhub steps (wall s): " + ", ".join(f"{k} {v['wall']:.3f}" for k, v in steps.items()), flush=True)
    if timings_path:
        timings_path.write_text(json.dumps(steps))


def _source_grid_and_labels(ct_dir: Path, label_path: Path, t: dict):
    """Headers of a series folder and the label map on its planes, read as the peers' scripts read them.

    Headers with ``dcmread(stop_before_pixels=True)``, sorted along the slice normal; the label
    NIfTI with nibabel, each source plane mapped to its NIfTI slice through the affine (checked),
    as ``../shared/peer-bench/tools/seg_highdicom.py`` does: the SEG and RTSTRUCT cases then differ
    only in the writer.
    """
    import numpy as np
    import pydicom

    from medhub.data.volume import SourceGrid, SourcePlane

    headers = [pydicom.dcmread(p, stop_before_pixels=True) for p in sorted(ct_dir.iterdir())]
    orientation = np.array(headers[0].ImageOrientationPatient, dtype=float)
    normal = np.cross(orientation[:3], orientation[3:])
    positions = {id(h): np.array(h.ImagePositionPatient, dtype=float) for h in headers}
    headers.sort(key=lambda h: float(normal @ positions[id(h)]))
    first = headers[0]
    grid = SourceGrid([SourcePlane(h, None, positions[id(h)]) for h in headers], orientation,
                      tuple(float(v) for v in first.PixelSpacing), int(first.Rows), int(first.Columns))
    t["read headers"] = _now()
    label_data, label_affine = read_label_nifti(label_path)
    t["read labels"] = _now()
    lps_to_voxel = np.linalg.inv(np.diag([-1, -1, 1, 1]) @ label_affine)
    ks = []
    for plane in grid.planes:
        voxel = lps_to_voxel @ np.r_[plane.position, 1.0]
        assert np.allclose(voxel[:2], 0, atol=1e-2), voxel  # same in-plane origin, no flips
        ks.append(int(round(voxel[2])))
    if ks == list(range(ks[0], ks[0] + len(ks))):  # a view: NIfTI data is [x, y, z] Fortran-ordered
        planes = label_data[:, :, ks[0] : ks[0] + len(ks)].transpose(2, 1, 0)
    else:
        planes = np.ascontiguousarray(label_data[:, :, ks].transpose(2, 1, 0))
    t["labels to source"] = _now()
    return grid, planes


def _write_steps(t: dict, timings_path: Path | None, label: str) -> None:
    names = list(t)
    steps = {name: {"wall": t[name][0] - t[prev][0], "cpu": t[name][1] - t[prev][1], "peak_mib": t[name][2]}
             for prev, name in zip(names, names[1:], strict=False)}
    print(f"{label} steps (wall s): " + ", ".join(f"{k} {v['wall']:.3f}" for k, v in steps.items()), flush=True)
    if timings_path:
        timings_path.write_text(json.dumps(steps))


def writer_process(kind: str, ct_dir: Path, label_path: Path, out_path: Path, timings_path: Path | None) -> None:
    """One writer on the benchmark's label map: medhub SEG, medhub RTSTRUCT, or highdicom's Segmentation().

    The highdicom case builds the segment descriptions from medhub's segment database, as medhub's
    writer did before its direct BINARY encoder, and times ``Segmentation()`` and ``save_as``
    separately.
    """
    t = {"start": _now()}
    from medhub.segdb import get_segment

    if kind == "seg":
        from medhub.writers.provenance import AlgorithmInfo
        from medhub.writers.seg import write_seg
    elif kind == "rtstruct":
        from medhub.writers.rtstruct import write_rtstruct
    else:
        import highdicom as hd
        from pydicom.sr.codedict import codes
    t["imports"] = _now()
    grid, planes = _source_grid_and_labels(ct_dir, label_path, t)
    segments = {value: get_segment(seg_id) for value, seg_id in LABEL_SEGMENT_IDS.items()}
    out_path.parent.mkdir(parents=True, exist_ok=True)
    if kind == "seg":
        write_seg(planes, grid, segments, AlgorithmInfo(name="overhead-bench", version="1.0"), out_path)
        t["write"] = _now()
    elif kind == "rtstruct":
        write_rtstruct(planes, grid, segments, model_name="overhead-bench", model_version="1.0", path=out_path)
        t["write"] = _now()
    else:
        def coded(code):
            return hd.sr.CodedConcept(code.value, code.scheme, code.meaning)

        algorithm = hd.AlgorithmIdentificationSequence(name="overhead-bench", version="1.0",
                                                       family=codes.cid7162.ArtificialIntelligence)
        descriptions = [
            hd.seg.SegmentDescription(
                segment_number=value, segment_label=spec.name, segmented_property_category=coded(spec.category),
                segmented_property_type=coded(spec.type), algorithm_type="AUTOMATIC",
                algorithm_identification=algorithm, tracking_id=spec.id, tracking_uid=hd.UID(),
                display_color=hd.color.CIELabColor.from_rgb(*spec.color))
            for value, spec in segments.items()
        ]
        seg = hd.seg.Segmentation(
            source_images=[p.dataset for p in grid.planes], pixel_array=planes, segmentation_type="BINARY",
            segment_descriptions=descriptions, series_instance_uid=hd.UID(), series_number=901,
            sop_instance_uid=hd.UID(), instance_number=1, manufacturer="overhead-bench",
            manufacturer_model_name="highdicom", software_versions=hd.__version__, device_serial_number="1",
            content_label="SEGMENTATION", omit_empty_frames=True)
        t["Segmentation()"] = _now()
        seg.save_as(out_path)
        t["save_as"] = _now()
    _write_steps(t, timings_path, kind)


def _exit_fast() -> int:
    """End as `medhub` (cli.main) ends a finished command: exit handlers run, streams are flushed,
    but the interpreter does not spend ~0.6 s CPU freeing every object. (medhub.cli.main itself is
    not imported: typer and rich are not part of these processes.) Under --profile (cProfile) the
    normal exit is kept: cProfile writes its file then."""
    if sys.getprofile() is not None:
        return 0
    import atexit

    atexit._run_exitfuncs()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)


def main() -> int:
    if len(sys.argv) > 2 and sys.argv[1] == "_writer":
        kind, ct_dir, label, out, timings = sys.argv[2:7]
        writer_process(kind, Path(ct_dir), Path(label), Path(out), Path(timings))
        return _exit_fast()
    if len(sys.argv) > 4 and sys.argv[1] == "_medhub":
        args = sys.argv[2:]
        slices = 300
        if "--slices" in args:
            at = args.index("--slices")
            slices = int(args[at + 1])
            del args[at : at + 2]
        unsorted, label, out = (Path(a) for a in args[:3])
        timings = Path(args[3]) if len(args) > 3 else None
        medhub_process(unsorted, label, out, timings, slices)
        return _exit_fast()
    sys.exit(__doc__)


if __name__ == "__main__":
    sys.exit(main())
