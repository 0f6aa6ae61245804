"""Writers: a label map (plus its source geometry) → files others open (DICOM SEG, NIfTI)."""

from medhub.writers.nifti import write_nifti
from medhub.writers.seg import EmptySegmentationError, write_seg

__all__ = ["EmptySegmentationError", "write_nifti", "write_seg"]
