"""Writing a value-only result (a head's class probabilities) for one series: JSON, CSV, DICOM SR.

The pipeline's ``write_values`` step calls :func:`write_value_outputs` for a prediction
without a label map, and its ``write_sr`` step :func:`write_value_sr`. Per series, next to
where a SEG would go (``OUT/<series>/<model>``):

``<model>.values.json``
    the model, its version, the series (key, UIDs, description) and the values;
``<model>.values.csv``
    the same as one header row and one data row (``series_key, series_instance_uid, ...,
    predicted_class, probability_<class>...``), so results of many series concatenate;
``<model>.sr.dcm``
    when the workflow runs ``write_sr`` and the card declares a classification: a TID 1500
    Comprehensive SR (:mod:`medhub.writers.sr`) referencing the source instances. Not for a
    NIfTI input, nor for DICOM whose files carry no UIDs (the SR could not reference them):
    the entry then gets a note saying why, as for SEG.

All files are written atomically (:func:`medhub.files.atomic_output`). Returns the notes
and written paths so the caller records them in the report entry.
"""

from __future__ import annotations

import csv
import io
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from medhub.data.volume import Volume
from medhub.files import atomic_output
from medhub.writers.provenance import AlgorithmInfo
from medhub.writers.sr import write_classification_sr


@dataclass
class WrittenOutputs:
    paths: list[Path] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)


def _series_fields(volume: Volume, series_key: str) -> dict[str, str]:
    source = volume.source
    header = source.datasets[0] if source is not None and source.planes else None
    return {
        "series_key": series_key,
        "series_instance_uid": str(getattr(header, "SeriesInstanceUID", "") or "") if header is not None else "",
        "study_instance_uid": str(getattr(header, "StudyInstanceUID", "") or "") if header is not None else "",
        "source": str(volume.metadata.get("path") or volume.metadata.get("series_description") or ""),
    }


def write_value_outputs(
    base: Path,
    volume: Volume,
    values: dict[str, Any],
    card: Any,
    *,
    series_key: str,
) -> WrittenOutputs:
    """Write ``<base>.values.json`` and ``<base>.values.csv`` for one series."""
    done = WrittenOutputs()
    fields = _series_fields(volume, series_key)
    document = {"model": card.id, "model_version": str(card.version), "series": fields, "values": values}
    json_path = base.with_name(base.name + ".values.json")
    with atomic_output(json_path) as temporary:
        temporary.write_text(json.dumps(document, indent=2, default=str) + "\n")
    done.paths.append(json_path)

    csv_path = base.with_name(base.name + ".values.csv")
    row = {"model": card.id, "model_version": str(card.version), **fields, **values}
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=list(row))
    writer.writeheader()
    writer.writerow({k: _cell(v) for k, v in row.items()})
    with atomic_output(csv_path) as temporary:
        temporary.write_text(buffer.getvalue())
    done.paths.append(csv_path)
    return done


def _cell(value: Any) -> Any:
    return json.dumps(value) if isinstance(value, dict | list) else value


def write_value_sr(final: Path, volume: Volume, values: dict[str, Any], card: Any,
                   params: dict[str, Any] | None = None) -> WrittenOutputs:
    """Write the classification as a DICOM SR at ``final``, or say in ``notes`` why it cannot be written."""
    done = WrittenOutputs()
    path = _write_sr(final, volume, values, card, params or {}, done)
    if path is not None:
        done.paths.append(path)
    return done


def _write_sr(final: Path, volume: Volume, values: dict[str, Any], card: Any, params: dict[str, Any],
              done: WrittenOutputs) -> Path | None:
    source = volume.source
    if source is None:
        done.notes.append("NIfTI input: no DICOM source to reference, so no SR (values in JSON/CSV)")
        return None
    if not source.referenceable:
        done.notes.append(f"{source.unreferenceable_reason}; no SR written (values in JSON/CSV)")
        return None
    classifications = card.outputs.classifications
    if not classifications:
        done.notes.append(f"model {card.id} declares no classification in its card: no SR written")
        return None
    classification = classifications[0]
    probabilities = {c: float(values[f"probability_{c}"]) for c in classification.classes
                     if f"probability_{c}" in values}
    if len(probabilities) != len(classification.classes):
        done.notes.append(f"values lack probability_<class> for some of {classification.classes}: no SR written")
        return None
    total = sum(probabilities.values())
    probabilities = {c: p / total for c, p in probabilities.items()} if total > 0 else probabilities  # undo rounding
    parameters = {k: str(v) for k, v in params.items()}
    if values.get("encoder"):
        parameters.setdefault("encoder", str(values["encoder"]))
    with atomic_output(final) as temporary:
        write_classification_sr(
            source, classification.name, probabilities,
            AlgorithmInfo(name=card.id[:64], version=str(card.version)[:64], source=card.source,
                          parameters=parameters or None),
            temporary,
        )
    return final
