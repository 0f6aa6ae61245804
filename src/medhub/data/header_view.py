"""A shallow, separately editable copy of a DICOM header, for writers that need a corrected view.

Writers sometimes have to hand a library a source header with an attribute corrected (an empty
Type 2 attribute, normalised direction cosines, shared functional groups) without changing the
scan's header or the file. ``Dataset.update`` would convert every element on the way, and a
private element whose stored value does not match its dictionary VR (real Philips exports write
text into an FD element) then raises. :func:`header_view` shares the elements without converting
them; raw private elements, which no writer copies, are left out.
"""

from __future__ import annotations

from pydicom.dataelem import RawDataElement
from pydicom.dataset import Dataset


def header_view(dataset: Dataset) -> Dataset:
    """A new Dataset sharing ``dataset``'s elements (and file meta); setting an element on it
    (as a new element: see ``pydicom.Dataset.__setitem__``) leaves ``dataset`` unchanged."""
    view = Dataset()
    for tag in dataset.keys():  # noqa: SIM118 - iterating a Dataset converts its elements
        element = dataset.get_item(tag)  # as stored: no value conversion
        if tag.is_private and isinstance(element, RawDataElement):
            continue
        view[tag] = element
    if hasattr(dataset, "file_meta"):
        view.file_meta = dataset.file_meta
    return view
