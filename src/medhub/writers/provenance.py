"""Who made a result: the algorithm (model) and the device (medhub) recorded in every output.

DICOM keeps two kinds of provenance apart: the *algorithm* that produced each segment
(Segmentation Algorithm Identification, PS3.3 C.8.20.2 / 10.16: name, version, family from
CID 7162) and the *equipment* that created the object (Enhanced General Equipment module:
Manufacturer, Manufacturer's Model Name, Software Versions, Device Serial Number). Writers of
SEG, RTSTRUCT and SR take both from here so every object tells the same story.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from pydicom.dataset import Dataset

import medhub
from medhub.segdb import Code

if TYPE_CHECKING:  # highdicom and pydicom's concept dictionary cost ~0.2 s to import: only when writing
    import highdicom as hd

ALGORITHM_TYPES = ("AUTOMATIC", "SEMIAUTOMATIC", "MANUAL")

#: CID 7162 "Surface Processing Algorithm Families": (123110, DCM, "Artificial Intelligence"),
#: written out so that writers need not import pydicom's concept dictionary (``pydicom.sr``, ~0.2 s).
ARTIFICIAL_INTELLIGENCE = Code("123110", "DCM", "Artificial Intelligence")


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
    family: Code = ARTIFICIAL_INTELLIGENCE
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
        from pydicom.sr.coding import Code as PydicomCode

        parameters = {str(k): str(v) for k, v in (self.parameters or {}).items()} or None
        return hd.AlgorithmIdentificationSequence(
            name=self.name,
            family=PydicomCode(self.family.value, self.family.scheme, self.family.meaning),
            version=self.version,
            source=self.source,
            parameters=parameters,
        )

    def identification_item(self) -> Dataset:
        """The one item of the Algorithm Identification Sequence (PS3.3 C.8.20.2, Table 10-19), with pydicom.

        The same attributes as :meth:`identification`, for writers that do not use highdicom.
        """
        item = Dataset()
        family = Dataset()
        family.CodeValue, family.CodingSchemeDesignator, family.CodeMeaning = (
            self.family.value, self.family.scheme, self.family.meaning,
        )  # fmt: skip
        if self.source is not None:
            item.AlgorithmSource = self.source
        item.AlgorithmFamilyCodeSequence = [family]
        item.AlgorithmVersion = self.version
        if self.parameters:
            item.AlgorithmParameters = ",".join(f"{k}={v}" for k, v in self.parameters.items())
        item.AlgorithmName = self.name
        return item


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
