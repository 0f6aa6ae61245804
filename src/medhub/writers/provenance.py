"""Who made a result: the algorithm (model) and the device (medhub) recorded in every output.

DICOM keeps two kinds of provenance apart: the *algorithm* that produced each segment
(Segmentation Algorithm Identification, PS3.3 C.8.20.2 / 10.16: name, version, family from
CID 7162) and the *equipment* that created the object (Enhanced General Equipment module:
Manufacturer, Manufacturer's Model Name, Software Versions, Device Serial Number). Writers of
SEG, RTSTRUCT and SR take both from here so every object tells the same story.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from pydicom.sr.coding import Code

import medhub

if TYPE_CHECKING:  # highdicom and pydicom's concept dictionary cost ~0.2 s to import: only when writing
    import highdicom as hd

ALGORITHM_TYPES = ("AUTOMATIC", "SEMIAUTOMATIC", "MANUAL")


def _default_family() -> Code:
    # CID 7162 "Surface Processing Algorithm Families": (123110, DCM, "Artificial Intelligence")
    from pydicom.sr.codedict import codes

    return codes.cid7162.ArtificialIntelligence


@dataclass(frozen=True)
class AlgorithmInfo:
    """The model that produced a result.

    ``name`` and ``version`` go to AlgorithmName / AlgorithmVersion (LO, at most 64
    characters); ``source`` (e.g. the model's repository or package) to AlgorithmSource;
    ``parameters`` (the workflow's predict parameters) to AlgorithmParameters.
    ``type`` is the Segment Algorithm Type: AUTOMATIC for a model run without user input.
    """

    name: str
    version: str
    family: Code = field(default_factory=_default_family)
    type: str = "AUTOMATIC"
    source: str | None = None
    parameters: dict[str, str] | None = None

    def __post_init__(self) -> None:
        if not self.name.strip() or len(self.name) > 64:
            raise ValueError(f"algorithm name must be 1..64 characters (LO): {self.name!r}")
        if not self.version.strip() or len(self.version) > 64:
            raise ValueError(f"algorithm version must be 1..64 characters (LO): {self.version!r}")
        if self.type not in ALGORITHM_TYPES:
            raise ValueError(f"algorithm type must be one of {ALGORITHM_TYPES}, got {self.type!r}")

    def identification(self) -> hd.AlgorithmIdentificationSequence:
        """The Algorithm Identification Sequence highdicom puts in each segment description."""
        import highdicom as hd

        parameters = {str(k): str(v) for k, v in (self.parameters or {}).items()} or None
        return hd.AlgorithmIdentificationSequence(
            name=self.name,
            family=self.family,
            version=self.version,
            source=self.source,
            parameters=parameters,
        )


@dataclass(frozen=True)
class DeviceInfo:
    """The equipment attributes of objects medhub creates (Enhanced General Equipment module).

    The serial number is a constant, not the host name: it is a Type 1 attribute, but the
    machine a job ran on is nobody's business in a shared PACS.
    """

    manufacturer: str
    manufacturer_model_name: str
    software_versions: str
    device_serial_number: str

    def as_highdicom_kwargs(self) -> dict[str, str]:
        """The keyword arguments highdicom's SOP class constructors take for these attributes."""
        return {
            "manufacturer": self.manufacturer,
            "manufacturer_model_name": self.manufacturer_model_name,
            "software_versions": self.software_versions,
            "device_serial_number": self.device_serial_number,
        }


def device_info() -> DeviceInfo:
    """medhub as the creating device, with the running medhub version."""
    return DeviceInfo(
        manufacturer="medhub",
        manufacturer_model_name="medhub",
        software_versions=medhub.__version__,
        device_serial_number="1",
    )
