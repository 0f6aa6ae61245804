"""medhub: run published medical imaging models on raw DICOM, write valid DICOM results."""

__version__ = "0.1.0"
