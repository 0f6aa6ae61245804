"""A DICOM SEG read back onto the volume it segments: for looking at a result (``medhub view``).

A SEG stores its frames on the real source planes and says which source image (and frame)
each one derives from. :func:`read_seg_labels` asks highdicom for the segment numbers per
source plane of the loaded :class:`~medhub.data.volume.Volume`, in plane order, and maps them
onto the volume's grid (:func:`medhub.data.geometry.labels_from_source`). A SEG that
references none of the volume's images is refused: the overlay would belong to another
series.

Segment numbers become label values through the segments' Tracking IDs: medhub writes each
segment's segment-database ID there (``writers/seg.py``), and ``label_of`` (the model card's
``ID → label``) gives the value the model used, so the viewer shows the same label values as
the NIfTI output. Segments without a known ID keep their segment number.
"""

from __future__ import annotations

import warnings
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from medhub.data.geometry import labels_from_source
from medhub.data.volume import Volume
from medhub.errors import MedhubError


@dataclass
class SegLabels:
    """The label map on the volume's grid, and per label value its Tracking ID (or '') and segment label."""

    labels: np.ndarray
    segments: dict[int, tuple[str, str]]


def read_seg_labels(path: Path, volume: Volume, label_of: Mapping[str, int] | None = None) -> SegLabels:
    """Read the SEG at ``path`` onto ``volume``'s grid; see the module docstring."""
    import highdicom as hd

    path = Path(path)
    source = volume.source
    if source is None or not source.planes:
        raise MedhubError(f"{path.name}: the image was not loaded from DICOM, so a SEG cannot be placed on it")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            seg = hd.seg.segread(path)
    except Exception as error:  # noqa: BLE001 - pydicom and highdicom raise many types for bad files
        raise MedhubError(f"{path.name}: not a readable DICOM SEG ({str(error).splitlines()[0]})") from None
    numbers = list(seg.get_segment_numbers())
    if not numbers:
        raise MedhubError(f"{path.name}: the SEG describes no segment")
    referenced = {uid for _, _, uid in seg.get_source_image_uids()}
    uids = [str(plane.dataset.SOPInstanceUID) for plane in source.planes]
    if not referenced & set(uids):
        raise MedhubError(f"{path.name}: the SEG references none of this series' images")

    values, described = _label_values(seg, numbers, label_of or {})
    if max(values.values()) > 255:
        raise MedhubError(f"{path.name}: label values above 255 cannot be shown")
    lut = np.zeros(max(numbers) + 1, dtype=np.uint8)
    for number, value in values.items():
        lut[number] = value
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            try:
                planes = _planes(seg, source, uids)
            except (ValueError, RuntimeError) as error:  # highdicom raises RuntimeError for this one
                if "spatial locations" not in str(error) or not _frames_lie_on_their_sources(seg, source, uids):
                    raise
                # Writers such as dcmqi omit "spatial locations preserved"; the frames were checked above.
                planes = _planes(seg, source, uids, ignore_spatial_locations=True)
    except (ValueError, KeyError, RuntimeError) as error:
        raise MedhubError(f"{path.name}: cannot place the SEG's frames on the series ({error})") from None
    return SegLabels(labels=labels_from_source(volume, lut[planes]), segments=described)


def _label_values(seg: object, numbers: list[int], label_of: Mapping[str, int]
                  ) -> tuple[dict[int, int], dict[int, tuple[str, str]]]:
    """Segment number → label value, and label value → (tracking ID, segment label)."""
    values: dict[int, int] = {}
    described: dict[int, tuple[str, str]] = {}
    for number in numbers:
        description = seg.get_segment_description(number)  # type: ignore[attr-defined]
        tracking = str(description.tracking_id or "")
        value = label_of.get(tracking, number)
        if value in described:  # two segments claim one value: keep them apart by number
            value = number
        values[number] = value
        described[value] = (tracking, str(description.segment_label or ""))
    return values, described


def _frames_lie_on_their_sources(seg: object, source: object, uids: list[str]) -> bool:
    """True when every frame has the source's size and lies where the single source image it derives from lies."""
    if (int(seg.Rows), int(seg.Columns)) != (source.rows, source.columns):  # type: ignore[attr-defined]
        return False
    where = {uid: np.asarray(plane.position, dtype=float)
             for uid, plane in zip(uids, source.planes, strict=True)}  # type: ignore[attr-defined]
    for item in seg.PerFrameFunctionalGroupsSequence:  # type: ignore[attr-defined]
        try:
            reference = item.DerivationImageSequence[0].SourceImageSequence[0]
            position = np.asarray(item.PlanePositionSequence[0].ImagePositionPatient, dtype=float)
        except (AttributeError, IndexError):
            return False
        expected = where.get(str(reference.ReferencedSOPInstanceUID))
        if "ReferencedFrameNumber" in reference or (expected is not None and
                                                     not np.allclose(position, expected, atol=0.05)):
            return False
    return True


def _planes(seg: object, source: object, uids: list[str], ignore_spatial_locations: bool = False) -> np.ndarray:
    """Segment numbers per source plane, ``(n_planes, rows, columns)``, combined into one label array."""
    common = {"combine_segments": True, "relabel": False, "assert_missing_frames_are_empty": True,
              "dtype": np.uint16, "ignore_spatial_locations": ignore_spatial_locations}
    frames = [plane.frame_number for plane in source.planes]  # type: ignore[attr-defined]
    if all(frame is None for frame in frames):
        return np.asarray(seg.get_pixels_by_source_instance(source_sop_instance_uids=uids, **common))  # type: ignore[attr-defined]
    out = np.zeros((len(uids), source.rows, source.columns), dtype=np.uint16)  # type: ignore[attr-defined]
    for uid in dict.fromkeys(uids):
        chosen = [k for k, (u, f) in enumerate(zip(uids, frames, strict=True)) if u == uid and f is not None]
        pixels = seg.get_pixels_by_source_frame(  # type: ignore[attr-defined]
            source_sop_instance_uid=uid, source_frame_numbers=[frames[k] for k in chosen], **common)
        out[chosen] = pixels
    return out
