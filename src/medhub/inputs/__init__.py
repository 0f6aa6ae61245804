"""Where images come from and how they become volumes: scan, select, load, NIfTI, DICOMweb."""
