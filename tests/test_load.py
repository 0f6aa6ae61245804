"""check_series / load_series on real scanner data and on small synthetic CT series."""

from __future__ import annotations

import copy
from pathlib import Path

import nibabel as nib
import numpy as np
import pydicom
import pydicom.data
import pytest
from conftest import shared_path
from pydicom.dataset import Dataset
from pydicom.encaps import encapsulate
from pydicom.uid import JPEG2000Lossless, generate_uid
from scipy import ndimage

from medhub.data import geometry
from medhub.data.series import Instance, Series
from medhub.data.volume import Volume
from medhub.errors import MedhubError, SeriesSkipped
from medhub.inputs.load import check_series, load_series
from medhub.inputs.nifti import load_nifti

D2N = "edge/dicom2nifti_tests"


# ---------------------------------------------------------------- helpers


def make_series(paths: list[Path] | Path) -> Series:
    """Series from files, read as the scanner does (headers only, UID fallback to the file meta)."""
    if isinstance(paths, Path):
        paths = sorted(p for p in paths.iterdir() if p.is_file())
    instances = []
    for path in paths:
        ds = pydicom.dcmread(path, stop_before_pixels=True)
        meta = ds.file_meta
        instances.append(
            Instance(
                path=path,
                header=ds,
                sop_instance_uid=str(ds.get("SOPInstanceUID", "")) or str(meta.get("MediaStorageSOPInstanceUID", "")),
                sop_class_uid=str(ds.get("SOPClassUID", "")) or str(meta.get("MediaStorageSOPClassUID", "")),
                transfer_syntax_uid=str(meta.TransferSyntaxUID),
                number_of_frames=int(ds.get("NumberOfFrames", 1) or 1),
            )
        )
    return series_of(instances)


def series_of(instances: list[Instance]) -> Series:
    first = instances[0].header
    return Series(
        key=str(first.get("SeriesInstanceUID", "")) or "no-uid",
        series_instance_uid=str(first.get("SeriesInstanceUID", "")),
        study_instance_uid=str(first.get("StudyInstanceUID", "")),
        modality=str(first.get("Modality", "")),
        description=str(first.get("SeriesDescription", "")),
        instances=instances,
    )


def ground_truth_on_grid(path: Path, volume: Volume) -> np.ndarray:
    """A NIfTI's voxels on ``volume``'s grid; asserts both grids coincide up to axis flips/permutations."""
    img = nib.load(path)
    data = np.asarray(img.dataobj)
    while data.ndim > 3 and data.shape[-1] == 1:
        data = data[..., 0]
    mapping = np.linalg.inv(img.affine) @ volume.affine_ras
    rotation = np.round(mapping[:3, :3])
    shift = np.round(mapping[:3, 3])
    np.testing.assert_allclose(mapping[:3, :3], rotation, atol=2e-3, err_msg="voxel axes differ from the ground truth")
    np.testing.assert_allclose(mapping[:3, 3], shift, atol=0.02, err_msg="voxel origin differs from the ground truth")
    index = np.indices(volume.shape).reshape(3, -1)
    target = (rotation @ index + shift[:, None]).astype(np.int64)
    return data[target[0], target[1], target[2]].reshape(volume.shape)


TEMPLATE = pydicom.data.get_testdata_file("CT_small.dcm")


def write_ct(
    folder: Path,
    z_positions: list[float],
    *,
    values: list[np.ndarray] | None = None,
    series_uid: str | None = None,
    size: int = 16,
    extra: dict[str, object] | None = None,
) -> list[Path]:
    """Valid CT Image Storage files (from pydicom's CT_small) at the given axial positions."""
    template = pydicom.dcmread(TEMPLATE)
    series_uid = series_uid or generate_uid()
    paths = []
    for k, z in enumerate(z_positions):
        ds = copy.deepcopy(template)
        ds.SeriesInstanceUID = series_uid
        ds.SOPInstanceUID = generate_uid()
        ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
        ds.InstanceNumber = k + 1
        ds.ImagePositionPatient = [-10.0, -20.0, float(z)]
        ds.ImageOrientationPatient = [1, 0, 0, 0, 1, 0]
        ds.PixelSpacing = [0.5, 0.5]
        ds.Rows = ds.Columns = size
        plane = values[k] if values is not None else np.full((size, size), 1000 + 10 * k, dtype=np.int16)
        ds.PixelData = plane.astype(np.int16).tobytes()
        for keyword, value in (extra or {}).items():
            setattr(ds, keyword, value)
        path = folder / f"ct{k:03d}.dcm"
        ds.save_as(path, enforce_file_format=True)
        paths.append(path)
    return paths


def header_only_series(headers: list[Dataset]) -> Series:
    """A Series of in-memory headers (nothing written) for header-only checks."""
    return series_of(
        [
            Instance(
                path=Path(f"/nonexistent/{i}.dcm"),
                header=h,
                sop_instance_uid=generate_uid(),
                sop_class_uid=pydicom.uid.CTImageStorage,
                transfer_syntax_uid=pydicom.uid.ExplicitVRLittleEndian,
            )
            for i, h in enumerate(headers)
        ]
    )


def axial_header(z: float, **changes: object) -> Dataset:
    ds = Dataset()
    ds.Modality = "CT"
    ds.SeriesInstanceUID = ds.StudyInstanceUID = "1.2.3"
    ds.Rows = ds.Columns = 8
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.SamplesPerPixel = 1
    ds.ImagePositionPatient = [0.0, 0.0, z]
    ds.ImageOrientationPatient = [1, 0, 0, 0, 1, 0]
    ds.PixelSpacing = [1.0, 1.0]
    for keyword, value in changes.items():
        setattr(ds, keyword, value)
    return ds


# ---------------------------------------------------------------- real data


def test_philips_head_ct_matches_simpleitk() -> None:
    """Same HU values and the same physical position of every voxel as ITK's series reader."""
    sitk = pytest.importorskip("SimpleITK")
    folder = shared_path("ct/philips_phantom_head_1mm")
    volume = load_series(make_series(folder))
    assert volume.shape == (512, 512, 140)
    assert volume.array.dtype == np.int16
    assert volume.findings == []
    assert volume.source is not None and not volume.source.resampled and volume.source.referenceable
    reader = sitk.ImageSeriesReader()
    reader.SetFileNames(reader.GetGDCMSeriesFileNames(str(folder)))
    image = reader.Execute()
    np.testing.assert_array_equal(volume.array.transpose(2, 1, 0), sitk.GetArrayFromImage(image))
    for index in [(0, 0, 0), (511, 0, 0), (0, 511, 139), (100, 200, 70)]:
        expected = image.TransformIndexToPhysicalPoint(index)
        np.testing.assert_allclose((volume.affine_lps @ [*index, 1])[:3], expected, atol=1e-3)
    # Source planes are in volume z order, each at its own ImagePositionPatient.
    z = [p.position[2] for p in volume.source.planes]
    assert z == sorted(z) and len(z) == 140
    assert volume.source.planes[0].dataset.ImagePositionPatient[2] == pytest.approx(z[0])


def test_totalsegmentator_jpeg2000_ct_without_uids() -> None:
    """JPEG2000 decodes to HU; the reference segmentation lies on the liver; no UIDs, no SEG."""
    volume = load_series(make_series(shared_path("ct/totalsegmentator_example_ct_dicom")))
    assert volume.shape == (512, 512, 20)
    assert volume.spacing == pytest.approx((0.9765625, 0.9765625, 2.0))
    assert volume.array.dtype == np.int16
    assert volume.array.min() == -1024 and 1000 < volume.array.max() < 3100
    assert volume.source is not None and not volume.source.referenceable
    assert volume.source.unreferenceable_reason.startswith("source files carry no StudyInstanceUID/SeriesInstanceUID;")
    seg = ground_truth_on_grid(shared_path("ct/totalsegmentator_nifti/example_seg_dicom.nii.gz"), volume)
    liver = volume.array[seg == 5]  # TotalSegmentator class 5 = liver
    assert liver.size > 300_000
    # Aligned: >99 % of liver voxels are soft tissue; a 1-slice z flip or a 10-voxel shift drops this below 97 %.
    assert ((liver > 0) & (liver < 200)).mean() > 0.99


@pytest.mark.parametrize(
    "case", ["compressed", "compressed_j2k", "compressed_jpeg", "compressed_jpegls", "compressed_rle"]
)
def test_compressed_transfer_syntaxes_equal_ground_truth(case: str) -> None:
    folder = shared_path(f"{D2N}/generic/{case}/001")
    series = make_series(folder)
    volume = load_series(series)
    expected = ground_truth_on_grid(shared_path(f"{D2N}/generic/{case}/001_ground_truth.nii.gz"), volume)
    assert volume.shape == (256, 256, 4)
    assert volume.array.max() > 0
    np.testing.assert_array_equal(volume.array, expected)


def test_two_slices_load_like_dicom2nifti() -> None:
    volume = load_series(make_series(shared_path(f"{D2N}/failing/slicecount/001")))
    expected = ground_truth_on_grid(shared_path(f"{D2N}/failing/slicecount/001_ground_truth.nii.gz"), volume)
    np.testing.assert_array_equal(volume.array, expected)


@pytest.mark.parametrize("case", ["001", "002"])
def test_missing_slice_is_refused_when_no_gap_is_allowed(case: str) -> None:
    series = make_series(shared_path(f"{D2N}/failing/sliceincrement/{case}"))
    check = check_series(series, max_missing_slices=0)
    assert check.skip_reason is not None and check.skip_reason.startswith("1 missing slice at z=")
    spacing = {"001": "spacing 5.00 mm", "002": "spacing 0.75 mm"}[case]
    assert spacing in check.skip_reason and "more than the 0 allowed (select.max_missing_slices)" in check.skip_reason
    assert check.findings == []  # 002 is also tilted, but nothing is resampled for a skipped series
    with pytest.raises(SeriesSkipped, match="missing slice"):
        load_series(series, max_missing_slices=0)


def test_missing_slice_in_real_ct_is_interpolated_and_results_stay_on_the_real_slices() -> None:
    """The real GE head CT with one slice missing (5 mm spacing, 10 mm gap): one interpolated plane, four real ones."""
    series = make_series(shared_path(f"{D2N}/failing/sliceincrement/001"))
    check = check_series(series)
    assert check.ok and check.findings == [
        "1 missing slice (1 at z=28.1..38.1 mm): interpolated onto a regular 5.00 mm grid; results lie on the 4 real "
        "slices"]
    volume = load_series(series)
    assert volume.shape == (512, 512, 5) and volume.spacing[2] == pytest.approx(5.0, abs=1e-4)
    assert volume.source is not None and volume.source.resampled and len(volume.source.planes) == 4
    z0, step = volume.affine_lps[2, 3], volume.affine_lps[2, 2]
    for instance in series.instances:  # the real slices are kept exactly, each in its own grid slice
        k = round((float(instance.header.ImagePositionPatient[2]) - z0) / step)
        expected = pydicom.dcmread(instance.path).pixel_array.astype(np.float32) - 1024
        np.testing.assert_allclose(volume.array[:, :, k].T, expected, atol=1e-3)
    # Grid slice 3 (33.1 mm) is the missing one: halfway between the real planes at 28.1 and 38.1 mm.
    assert z0 + 3 * step == pytest.approx(33.1075, abs=1e-3)
    np.testing.assert_allclose(volume.array[:, :, 3], (volume.array[:, :, 2] + volume.array[:, :, 4]) / 2, atol=1e-3)
    labels = np.zeros(volume.shape, dtype=np.uint8)
    labels[:, :, 3] = 1  # only the interpolated slice: nothing of it lies on a real plane
    assert not geometry.labels_to_source(volume, labels).any()
    labels[:, :, 4] = 1
    back = geometry.labels_to_source(volume, labels)
    assert back.shape == (4, 512, 512) and back[3].all() and not back[:3].any()


def test_gantry_tilt_resampled_at_the_right_physical_positions() -> None:
    series = make_series(shared_path(f"{D2N}/failing/gantrytilting/001"))
    check = check_series(series)
    assert check.skip_reason is None
    assert check.findings == ["gantry tilt 14.0°: resampled onto an orthogonal grid"]
    volume = load_series(series)
    grid = volume.source
    assert grid is not None and grid.resampled and len(grid.planes) == 4
    normal = geometry.slice_normal(grid.orientation)
    np.testing.assert_allclose(volume.affine_lps[:3, 2] / np.linalg.norm(volume.affine_lps[:3, 2]), normal, atol=1e-9)
    assert volume.spacing[2] == pytest.approx(5.0 * np.cos(np.radians(14.0)), abs=0.01)
    assert volume.shape[0] == 512 and volume.shape[1] > 512  # widened to keep every source pixel
    # Each resampled voxel equals the source plane interpolated at that voxel's physical position.
    rng = np.random.default_rng(1)
    dx, dy = grid.pixel_spacing[1], grid.pixel_spacing[0]
    checked = 0
    for k, plane in enumerate(grid.planes):
        source = pydicom.dcmread(series.instances[k].path).pixel_array.astype(np.float64) - 1024.0
        assert plane.dataset.InstanceNumber == k + 1
        for _ in range(200):
            i, j = rng.integers(0, volume.shape[0]), rng.integers(0, volume.shape[1])
            world = (volume.affine_lps @ [i, j, k, 1])[:3] - plane.position
            col, row = world @ grid.orientation[:3] / dx, world @ grid.orientation[3:] / dy
            if not (0 <= col <= grid.columns - 1 and 0 <= row <= grid.rows - 1):
                continue
            expected = ndimage.map_coordinates(source, [[row], [col]], order=1)[0]
            assert volume.array[i, j, k] == pytest.approx(expected, abs=1e-2)
            checked += 1
    assert checked > 600


def test_gantry_tilt_labels_return_to_source_planes() -> None:
    """A ball labelled on the resampled grid lies at the same LPS centre on the real tilted planes."""
    volume = load_series(make_series(shared_path(f"{D2N}/failing/gantrytilting/001")))
    grid = volume.source
    assert grid is not None
    centre_index = np.array([256, 256, 1.5])
    centre = (volume.affine_lps @ [*centre_index, 1])[:3]
    index = np.indices(volume.shape).reshape(3, -1)
    world = (volume.affine_lps @ np.vstack([index, np.ones(index.shape[1])]))[:3].T
    labels = (np.linalg.norm(world - centre, axis=1) <= 8.0).reshape(volume.shape).astype(np.uint8)
    back = geometry.labels_to_source(volume, labels)
    assert back.shape == (4, 512, 512)
    k, row, col = np.nonzero(back)
    positions = np.array([grid.planes[n].position for n in k])
    source_world = (positions + (col * grid.pixel_spacing[1])[:, None] * grid.orientation[:3]) + (
        row * grid.pixel_spacing[0]
    )[:, None] * grid.orientation[3:]
    np.testing.assert_allclose(source_world.mean(axis=0), centre, atol=0.3)
    # The tilt moves the ball's footprint by ~3 pixels per plane along the column direction.
    rows_per_plane = [row[k == n].mean() for n in np.unique(k)]
    assert abs(rows_per_plane[-1] - rows_per_plane[0]) > 4


@pytest.mark.parametrize(
    ("folder", "truth"),
    [
        ("philips_enhanced/anatomical/001", "philips_enhanced/anatomical/001_ground_truth.nii.gz"),
        ("philips_enhanced/anatomical/001_implicit", "philips_enhanced/anatomical/001_implicit_ground_truth.nii.gz"),
        ("siemens_multiframe/anatomical/001", "siemens_multiframe/anatomical/001_ground_truth.nii.gz"),
    ],
)
def test_enhanced_multiframe_mr_equals_ground_truth(folder: str, truth: str) -> None:
    series = make_series(shared_path(f"{D2N}/{folder}"))
    assert len(series.instances) == 1 and series.number_of_images == 8
    volume = load_series(series)
    assert volume.shape[2] == 8
    expected = ground_truth_on_grid(shared_path(f"{D2N}/{truth}"), volume)
    np.testing.assert_allclose(volume.array, expected, rtol=1e-5)
    assert volume.source is not None
    assert {p.frame_number for p in volume.source.planes} == set(range(1, 9))


def test_enhanced_ct_two_frames_in_hu() -> None:
    volume = load_series(make_series([shared_path("enhanced/pydicom_data/eCT_Supplemental.dcm")]))
    assert volume.shape == (512, 512, 2)
    assert volume.spacing == pytest.approx((0.388672, 0.388672, 10.0))
    assert volume.array.dtype == np.int16 and volume.array.min() < -900  # air in HU after intercept -1024
    # Rows run to patient right (IOP -1,0,0): the normal points to -z, so frame 2 (z=-149) comes first.
    assert [p.frame_number for p in volume.source.planes] == [2, 1]
    np.testing.assert_allclose(geometry.slice_normal(volume.source.orientation), [0, 0, -1])


@pytest.mark.parametrize(
    ("files", "reason"),
    [
        (["enhanced/dcm_qa_enh/Philips/IM_0027_fMAP.dcm"], "4D: 64 images at 32 positions"),
        ([f"enhanced/dcm_qa_enh/Siemens/XA10/6_{i}.dcm" for i in range(1, 5)], "4D: 24 images at 6 positions"),
    ],
)
def test_enhanced_4d_is_skipped(files: list[str], reason: str) -> None:
    series = make_series([shared_path(f) for f in files])
    assert check_series(series).skip_reason == reason
    with pytest.raises(SeriesSkipped, match=reason):
        load_series(series)


@pytest.mark.parametrize("name", ["emri_small.dcm", "emri_small_RLE.dcm", "emri_small_jpeg_2k_lossless.dcm"])
def test_multiframe_without_positions_is_skipped(name: str) -> None:
    check = check_series(make_series([shared_path(f"enhanced/pydicom_data/{name}")]))
    assert check.skip_reason == f"multi-frame image without per-frame positions (10 frames in {name})"


# ---------------------------------------------------------------- synthetic series


def test_synthetic_4d_series_is_skipped(tmp_path: Path, assert_valid_dicom) -> None:
    uid = generate_uid()
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    first = write_ct(tmp_path / "a", [0.0, 2.0, 4.0], series_uid=uid, extra={"AcquisitionNumber": 1})
    values = [np.full((16, 16), 50 * k, dtype=np.int16) for k in range(3)]
    second = write_ct(tmp_path / "b", [0.0, 2.0, 4.0], series_uid=uid, values=values, extra={"AcquisitionNumber": 2})
    for path in first + second:
        assert_valid_dicom(path)
    series = make_series(first + second)
    assert check_series(series).skip_reason == "4D: 6 images at 3 positions"
    with pytest.raises(SeriesSkipped, match="4D: 6 images at 3 positions"):
        load_series(series)


def test_identical_duplicates_are_removed(tmp_path: Path, assert_valid_dicom) -> None:
    paths = write_ct(tmp_path, [0.0, 2.0, 4.0])
    # The same image exported twice: new SOP Instance UID, everything else identical.
    copy_ds = pydicom.dcmread(paths[1])
    copy_ds.SOPInstanceUID = generate_uid()
    copy_ds.file_meta.MediaStorageSOPInstanceUID = copy_ds.SOPInstanceUID
    copy_path = tmp_path / "copy.dcm"
    copy_ds.save_as(copy_path, enforce_file_format=True)
    # And a byte-for-byte copy of another file (same SOP Instance UID).
    twin_path = tmp_path / "twin.dcm"
    twin_path.write_bytes(paths[2].read_bytes())
    for path in [*paths, copy_path, twin_path]:
        assert_valid_dicom(path)
    series = make_series([*paths, copy_path, twin_path])
    check = check_series(series)
    assert check.skip_reason is None
    assert check.images == 5 and check.planes == 3
    assert "1 duplicate positions removed (identical headers)" in check.findings
    assert "1 duplicate positions removed (same SOP instance in several files)" in check.findings
    volume = load_series(series)
    assert volume.shape == (16, 16, 3)
    np.testing.assert_array_equal(volume.array[0, 0, :], np.array([1000, 1010, 1020]) - 1024)
    assert volume.findings == check.findings


def test_same_headers_different_pixels_is_not_a_duplicate(tmp_path: Path, assert_valid_dicom) -> None:
    paths = write_ct(tmp_path, [0.0, 2.0])
    other = pydicom.dcmread(paths[1])
    other.SOPInstanceUID = generate_uid()
    other.file_meta.MediaStorageSOPInstanceUID = other.SOPInstanceUID
    other.PixelData = np.full((16, 16), 7, dtype=np.int16).tobytes()
    other_path = tmp_path / "other.dcm"
    other.save_as(other_path, enforce_file_format=True)
    assert_valid_dicom(other_path)
    with pytest.raises(SeriesSkipped, match="different images at the same position"):
        load_series(make_series([*paths, other_path]))


def test_uneven_spacing_is_resampled_and_reported(tmp_path: Path, assert_valid_dicom) -> None:
    z = [0.0, 1.0, 2.0, 5.5, 9.0]
    values = [np.full((16, 16), int(10 * loc), dtype=np.int16) for loc in z]  # value = 10 x location
    paths = write_ct(tmp_path, z, values=values)
    for path in paths:
        assert_valid_dicom(path)
    series = make_series(paths)
    assert check_series(series).findings == ["uneven slice spacing 1.00–3.50 mm: resampled to 1.00 mm"]
    volume = load_series(series)
    assert volume.source is not None and volume.source.resampled
    assert volume.shape == (16, 16, 10)
    assert volume.spacing[2] == pytest.approx(1.0)
    slice_z = volume.affine_lps[2, 3] + volume.affine_lps[2, 2] * np.arange(10)
    np.testing.assert_allclose(volume.array[8, 8, :], 10 * slice_z - 1024, atol=1e-3)  # linear between planes


def test_regular_synthetic_series_keeps_integers_and_order(tmp_path: Path, assert_valid_dicom) -> None:
    paths = write_ct(tmp_path, [4.0, 0.0, 2.0])  # files out of order on purpose
    for path in paths:
        assert_valid_dicom(path)
    volume = load_series(make_series(paths))
    assert volume.array.dtype == np.int16
    np.testing.assert_array_equal(volume.array[3, 5, :], np.array([1010, 1020, 1000]) - 1024)
    np.testing.assert_allclose(volume.affine_lps[:3, 3], [-10.0, -20.0, 0.0])
    np.testing.assert_allclose(np.diag(volume.affine_lps)[:3], [0.5, 0.5, 2.0])
    assert volume.source is not None and volume.source.referenceable
    back = geometry.labels_to_source(volume, (volume.array > -10).astype(np.uint8))
    assert back.shape == (3, 16, 16)
    np.testing.assert_array_equal(back[:, 0, 0], [0, 1, 0])  # plane order: z = 0, 2, 4


def test_corrupt_jpeg2000_names_the_file(tmp_path: Path, assert_valid_dicom) -> None:
    paths = write_ct(tmp_path, [0.0, 2.0])
    ds = pydicom.dcmread(paths[1])
    ds.PixelData = encapsulate([b"\xff\x4f\xff\x51" + b"\x00" * 60])
    ds["PixelData"].VR = "OB"
    ds.file_meta.TransferSyntaxUID = JPEG2000Lossless
    ds.save_as(paths[1], enforce_file_format=True)
    assert_valid_dicom(paths[1])
    with pytest.raises(MedhubError, match=r"cannot decode .*ct001\.dcm: JPEG 2000 Image Compression") as excinfo:
        load_series(make_series(paths))
    assert not isinstance(excinfo.value, SeriesSkipped), "a broken file fails its series; it is not a selection skip"


@pytest.mark.parametrize(
    ("headers", "reason"),
    [
        ([axial_header(0.0)], "single slice"),
        (
            [axial_header(0.0), axial_header(1.0, PhotometricInterpretation="RGB")],
            "unsupported photometric interpretation RGB",
        ),
        ([axial_header(0.0), axial_header(1.0, PixelSpacing=[0.7, 0.7])], "mixed pixel spacing 0.700–1.000 mm"),
        ([axial_header(0.0), axial_header(1.0, Rows=16)], "inconsistent rows/columns across instances (8x8, 16x8)"),
        (
            [axial_header(0.0), axial_header(1.0, ImageOrientationPatient=[0, 1, 0, 0, 0, -1])],
            "inconsistent orientation across instances",
        ),
        ([axial_header(0.0), axial_header(1.0)], None),
    ],
)
def test_header_checks(headers: list[Dataset], reason: str | None) -> None:
    check = check_series(header_only_series(headers))
    if reason is None:
        assert check.ok and check.findings == []
    else:
        assert check.skip_reason is not None and check.skip_reason.startswith(reason)


def test_non_image_and_missing_geometry() -> None:
    no_pixels = Dataset()
    no_pixels.Modality = "SR"
    assert check_series(header_only_series([no_pixels])).skip_reason.startswith("no pixel data: 0.dcm is not an image")
    flat = axial_header(0.0)
    del flat.ImagePositionPatient
    reason = check_series(header_only_series([axial_header(1.0), flat])).skip_reason
    assert reason == "no ImagePositionPatient/ImageOrientationPatient in 1.dcm: not a cross-sectional image"


# ---------------------------------------------------------------- NIfTI input


def test_load_nifti_keeps_values_and_converts_affine_to_lps() -> None:
    path = shared_path("ct/totalsegmentator_nifti/example_ct_sm.nii.gz")
    volume = load_nifti(path)
    image = nib.load(path)
    assert volume.shape == (122, 101, 30) and volume.array.dtype == np.int16
    np.testing.assert_array_equal(volume.array, np.asarray(image.dataobj))
    np.testing.assert_allclose(volume.affine_ras, image.affine)
    # RAS x = +3 mm per voxel means LPS x = -3 mm per voxel.
    np.testing.assert_allclose(np.diag(volume.affine_lps)[:3], [-3.0, -3.0, 3.0])
    assert volume.source is None and volume.spacing == pytest.approx((3.0, 3.0, 3.0))


def test_load_nifti_drops_trailing_singleton_and_refuses_4d(tmp_path: Path) -> None:
    volume = load_nifti(shared_path(f"{D2N}/philips_enhanced/anatomical/001_ground_truth.nii.gz"))
    assert volume.shape == (256, 256, 8)
    four_d = tmp_path / "four_d.nii"
    nib.save(nib.Nifti1Image(np.zeros((4, 4, 4, 3), dtype=np.float32), np.eye(4)), four_d)
    with pytest.raises(MedhubError, match=r"four_d\.nii: 4D image of shape \(4, 4, 4, 3\); a 3D volume is needed"):
        load_nifti(four_d)
    with pytest.raises(MedhubError, match="no such file"):
        load_nifti(tmp_path / "absent.nii.gz")
    not_nifti = tmp_path / "text.nii"
    not_nifti.write_text("hello")
    with pytest.raises(MedhubError, match="not a readable NIfTI"):
        load_nifti(not_nifti)


def test_source_without_frame_of_reference_is_not_referenceable() -> None:
    """A real GE head CT export without FrameOfReferenceUID (Type 1): no SEG/RTSTRUCT can place it, NIfTI is written."""
    files = sorted(shared_path(f"{D2N}/failing/sliceincrement/001").iterdir())[:2]
    volume = load_series(make_series(files))
    assert volume.source is not None and not volume.source.referenceable
    assert "FrameOfReferenceUID" in volume.source.unreferenceable_reason


def test_real_ge_ct_pixel_padding_is_set_to_air() -> None:
    """GE's CT writes -2000 outside the reconstruction circle (PixelPaddingValue -2000): -1024 HU after loading."""
    files = sorted(shared_path("seg/dcmqi_segmentations/ct-3slice").glob("0*.dcm"))
    assert len(files) == 3
    series = make_series(files)
    volume = load_series(series)
    stored = np.stack([pydicom.dcmread(p).pixel_array for p in files])
    padded = int((stored == -2000).sum())
    assert padded > 100_000  # the real corners outside the circle
    (note,) = [f for f in volume.findings if f.startswith("pixel padding")]
    assert note.startswith(f"pixel padding (PixelPaddingValue -2000): {padded} voxels") and "-1024 HU" in note
    assert volume.array.min() == -1024  # was -3024 HU (-2000 stored, intercept -1024)
    assert int((volume.array == -1024).sum()) >= padded


def test_implicit_vr_philips_duplicates_compared_without_converting_private_elements(tmp_path):
    """Real Philips slices in Implicit VR (as modalities send over DIMSE): (01F1,1026) holds DS text where pydicom's
    private dictionary says FD. Comparing the headers of two images at one position must not convert it: identical
    copies are removed, different images give the 4D reason, never a BytesLengthException."""
    from medhub.inputs.scan import scan

    for name, change in (("copies", 0), ("different", 7)):
        folder = tmp_path / name
        folder.mkdir()
        slices = sorted(shared_path("ct/philips_phantom_head_1mm").iterdir(),
                        key=lambda p: int(pydicom.dcmread(p, stop_before_pixels=True).InstanceNumber))
        for path in slices[60:66]:  # six contiguous slices
            dataset = pydicom.dcmread(path)
            dataset.file_meta.TransferSyntaxUID = pydicom.uid.ImplicitVRLittleEndian
            dataset.save_as(folder / path.name, enforce_file_format=True)
            dataset.SOPInstanceUID = dataset.file_meta.MediaStorageSOPInstanceUID = generate_uid()
            dataset.PixelData = (dataset.pixel_array + change).astype(dataset.pixel_array.dtype).tobytes()
            dataset.save_as(folder / f"{path.name}_again", enforce_file_format=True)
        (series,) = scan(folder).series
        if change:
            with pytest.raises(SeriesSkipped, match="different images at the same position .* not one 3D volume"):
                load_series(series)
        else:
            volume = load_series(series)
            assert volume.array.shape[2] == 6
            assert any("duplicate positions removed" in finding for finding in volume.findings)


def test_a_codestream_larger_than_its_header_is_not_decoded(tmp_path: Path) -> None:
    """The decoder allocates what the JPEG 2000 codestream declares: it must agree with Rows/Columns first."""
    from medhub.inputs.pixels import PixelReadError, codestream_size, read_stored_pixels

    source = sorted(shared_path("ct/totalsegmentator_example_ct_dicom").iterdir())[0]
    dataset = pydicom.dcmread(source)
    fragment = next(pydicom.encaps.generate_fragmented_frames(dataset.PixelData, number_of_frames=1))[0]
    assert codestream_size(fragment, str(dataset.file_meta.TransferSyntaxUID)) == (512, 512)
    dataset.Rows = dataset.Columns = 256  # the header now claims less than the codestream holds
    path = tmp_path / "small_header.dcm"
    dataset.save_as(path)
    (series,) = [make_series([path])]
    with pytest.raises(PixelReadError, match=r"codestream declares 512x512 pixels where the header says 256x256"):
        read_stored_pixels(series.instances[0], 256, 256)


@pytest.mark.parametrize("folder", [f"{D2N}/generic/{c}/001" for c in ("compressed_j2k", "compressed_jpeg",
                                                                          "compressed_jpegls")])
def test_codestream_sizes_are_read_from_real_files(folder: str) -> None:
    from medhub.inputs.pixels import codestream_size

    for path in sorted(shared_path(folder).iterdir())[:2]:
        dataset = pydicom.dcmread(path)
        fragment = next(pydicom.encaps.generate_fragmented_frames(dataset.PixelData, number_of_frames=1))[0]
        size = codestream_size(fragment, str(dataset.file_meta.TransferSyntaxUID))
        assert size == (dataset.Rows, dataset.Columns), path
