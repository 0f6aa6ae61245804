"""MHub's ``config.yml``, run unchanged: MHub's module names translated to medhub's steps.

An MHub model ships workflows whose ``execute`` names mhubio modules (github MHubAI/models,
``models/<model>/config/default.yml``; the modules are in github MHubAI/mhubio)::

    execute: [DicomImporter, NiftiConverter, TotalSegmentatorMLRunner, DsegConverter, DataOrganizer]
    modules:
      DicomImporter: {source_dir: input_data, import_dir: sorted_data, sort_data: true, meta: {mod: '%Modality'}}
      TotalSegmentatorMLRunner: {use_fast_mode: true}
      DsegConverter: {model_name: TotalSegmentator, body_part_examined: WHOLEBODY, source_segs: nifti:mod=seg}
      DataOrganizer: {targets: ['dicomseg:mod=seg-->[i:sid]/TotalSegmentator.seg.dcm']}

:func:`from_mhub` turns such a workflow into medhub's steps, for the model it is run with:

* ``DicomImporter`` → ``select``: medhub reads the headers and groups the series itself, one
  instance per series as MHub's default ``structure`` (``%SeriesInstanceUID/dicom/...``) does.
* ``NiftiConverter`` / ``MhaConverter`` → ``load``: medhub hands the model the volume in memory,
  so the intermediate file format and its ``engine`` do not matter.
* the model's runner module (its card's ``mhub.runner``, else ``<CamelCaseId>Runner``) →
  ``predict``; its parameters under the card's ``mhub.parameters`` names (else its own).
* ``DsegConverter`` → ``write_seg`` (``model_name`` becomes the Series Description as in MHub,
  ``body_part_examined`` the SEG's Body Part Examined); ``RTStructConverter`` → ``write_rtstruct``.
* ``DataOrganizer`` decides where the results go: each target ``TYPE-->PATH`` sets the ``path``
  of the step that writes TYPE (``dicomseg``, ``rtstruct``, ``nifti:mod=seg``), with MHub's
  placeholders ``[i:sid]`` (the series), ``[i:studyID]`` and ``[i:patientID]``.

Parameters that only describe MHub's container plumbing (``source_dir``, ``import_dir``,
``bundle_name``, ``converted_file_name``, ``engine``, ...) have nothing to do here and are
accepted. Everything else that medhub cannot do as MHub would (another module, a fixed
``meta`` value, an unknown parameter, a placeholder naming an MHub-internal file) is refused
with one line naming it: never a run that silently does something else.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any

from medhub.errors import MedhubError
from medhub.hub.workflow import Workflow, WorkflowGeneral
from medhub.inputs.query import DataTypeQuery
from medhub.pipeline.steps import STEPS, StepName

IMPORTER = "DicomImporter"
CONVERTERS = ("NiftiConverter", "MhaConverter")
ORGANIZER = "DataOrganizer"
OUTPUT_CONVERTERS = {"DsegConverter": StepName.WRITE_SEG, "RTStructConverter": StepName.WRITE_RTSTRUCT}
KNOWN_MODULES = (IMPORTER, *CONVERTERS, *OUTPUT_CONVERTERS, ORGANIZER)

_CAMEL = re.compile(r"^[A-Z][A-Za-z0-9]*$")


def is_mhub_config(workflow: Workflow) -> bool:
    """True when ``execute`` names MHub modules (CamelCase) rather than medhub steps."""
    return any(name not in STEPS and _CAMEL.match(name) for name in workflow.execute)


def runner_names(card: Any) -> list[str]:
    """The names an MHub config may give this model's runner module."""
    own = "".join(part.capitalize() for part in re.split(r"[-_]", card.id)) + "Runner"
    declared = list(card.mhub.runner) if card.mhub is not None else []
    return [*declared, own] if own not in declared else declared


def from_mhub(workflow: Workflow, card: Any, *, where: str, others: Callable[[str], str | None] = lambda _: None
              ) -> Workflow:
    """medhub's workflow for MHub's ``workflow`` run with the model of ``card``.

    ``where`` names the config in messages; ``others(module)`` names the model whose runner an
    unknown ``*Runner`` module is, for a helpful refusal.
    """
    mixed = [name for name in workflow.execute if name in STEPS]
    if mixed:
        raise MedhubError(f"{where}: execute mixes MHub modules with medhub steps ({', '.join(mixed)}); use one or "
                          "the other")
    runners = runner_names(card)
    unknown = [name for name in workflow.execute if name not in KNOWN_MODULES and name not in runners]
    if unknown:
        raise MedhubError(f"{where}: {_unknown(unknown, card, runners, others)}")
    modules = {name: dict(workflow.modules.get(name) or {}) for name in workflow.execute}
    if IMPORTER not in modules:
        raise MedhubError(f"{where}: execute has no {IMPORTER}; medhub reads DICOM as MHub's {IMPORTER} does")
    if not any(name in runners for name in modules):
        raise MedhubError(f"{where}: execute names no runner of model {card.id} ({' or '.join(runners)})")
    stray = sorted(set(workflow.modules) - set(workflow.execute))
    if stray:
        raise MedhubError(f"{where}: modules.{stray[0]} configures a module execute does not run")

    _check_importer(modules[IMPORTER], card, where)
    steps: dict[str, dict[str, Any]] = {StepName.SELECT.value: {}, StepName.LOAD.value: {}}
    predict: dict[str, Any] = {}
    outputs: list[StepName] = []
    for name, params in modules.items():
        if name in CONVERTERS:
            _check_converter(name, params, card, where)
        elif name in runners:
            predict.update(_runner_parameters(name, params, card, where))
        elif name in OUTPUT_CONVERTERS:
            step = OUTPUT_CONVERTERS[name]
            steps[step.value] = _output_parameters(name, params, card, where)
            outputs.append(step)
    steps[StepName.PREDICT.value] = predict
    if ORGANIZER in modules:
        for step, path in _organize(modules[ORGANIZER], outputs, card, where).items():
            if step not in outputs:
                outputs.append(step)
            steps.setdefault(step.value, {})["path"] = path
            if step is StepName.WRITE_NIFTI:  # MHub exports the segmentation only (nifti:mod=seg), not the image
                steps[step.value]["image"] = False
    execute = [StepName.SELECT.value, StepName.LOAD.value, StepName.PREDICT.value, *(s.value for s in outputs)]
    general = WorkflowGeneral(name=workflow.general.name if "name" in workflow.general.model_fields_set
                              else f"mhub {where.rsplit('/', 1)[-1]}",
                              description=workflow.general.description)
    return Workflow(general=general, execute=execute, modules={k: v for k, v in steps.items() if v})


def _unknown(unknown: list[str], card: Any, runners: list[str], others: Callable[[str], str | None]) -> str:
    for name in unknown:
        owner = others(name)
        if owner is not None and owner != card.id:
            return (f"{name} is the runner of model {owner}, not of {card.id} (whose runner is "
                    f"{' or '.join(runners)}); run: medhub run {owner} --config ...")
    return (f"MHub module(s) {', '.join(unknown)} have no medhub equivalent; medhub runs "
            f"{', '.join(KNOWN_MODULES)} and the runner of model {card.id} ({' or '.join(runners)})")


# -- module by module ----------------------------------------------------------------------------
_PLUMBING = {
    IMPORTER: {"source_dir", "import_dir", "sort_data", "merge"},
    "NiftiConverter": {"engine", "allow_multi_input", "bundle_name", "converted_file_name", "overwrite_existing_file"},
    "MhaConverter": {"engine", "allow_multi_input", "bundle_name", "converted_file_name", "overwrite_existing_file",
                     "targets"},
    "DsegConverter": {"bundle_name", "converted_file_name", "segment_id_meta_key", "source_segs"},
    "RTStructConverter": {"bundle_name", "converted_file_name", "segment_id_meta_key", "source_segs",
                          "approximate_contours"},
    ORGANIZER: {"target_dir", "require_data_confirmation"},
}
"""Parameters about MHub's files and folders inside its container: they change nothing medhub writes."""


def _refuse_unknown(name: str, params: dict[str, Any], handled: set[str], where: str) -> None:
    known = _PLUMBING.get(name, set()) | handled
    for key in params:
        if key not in known:
            raise MedhubError(f"{where}: {name}.{key}: not a parameter medhub can honour "
                              f"({name} takes {', '.join(sorted(known))})")


def _check_importer(params: dict[str, Any], card: Any, where: str) -> None:
    _refuse_unknown(IMPORTER, params, {"import_data", "structure", "meta"}, where)
    if params.get("import_data", True) is not True:
        raise MedhubError(f"{where}: {IMPORTER}.import_data=false only sorts the input; medhub has nothing to run")
    structure = str(params.get("structure", "%SeriesInstanceUID/dicom/%SOPInstanceUID.dcm"))
    if structure.split("/")[0] != "%SeriesInstanceUID":
        raise MedhubError(f"{where}: {IMPORTER}.structure={structure}: medhub runs a model on one series at a time "
                          "(%SeriesInstanceUID/...)")
    meta = params.get("meta", {"mod": "%Modality"})
    if not isinstance(meta, dict):
        raise MedhubError(f"{where}: {IMPORTER}.meta: expected a mapping such as {{mod: '%Modality'}}")
    for key, value in meta.items():
        if not str(value).startswith("%"):
            raise MedhubError(f"{where}: {IMPORTER}.meta.{key}={value}: a fixed value would label every series alike; "
                              f"medhub reads each series' own headers (use {key}: '%<DICOM keyword>')")


def _check_converter(name: str, params: dict[str, Any], card: Any, where: str) -> None:
    _refuse_unknown(name, params, {"in_datas"}, where)
    if "in_datas" in params:
        _check_takes_card_input(f"{name}.in_datas", str(params["in_datas"]), card, where)


def _check_takes_card_input(key: str, query: str, card: Any, where: str) -> None:
    """An MHub query naming the DICOM a module works on must take the series this model reads."""
    try:
        parsed = DataTypeQuery.parse(query)
    except MedhubError as exc:
        raise MedhubError(f"{where}: {key}: {exc}") from None
    others = [str(c) for c in parsed.conditions if c.key != "mod"]
    if others:
        raise MedhubError(f"{where}: {key}={query}: medhub selects series by the card's rules; "
                          f"{', '.join(others)} is not one of them")
    modalities = [m for m in card.modality] or ["OT"]
    for modality in modalities:
        why = parsed.explain({"format": "dicom", "mod": modality.lower()})
        if why is not None:
            raise MedhubError(f"{where}: {key}={query} does not take {modality}, which model {card.id} reads ({why})")


def _runner_parameters(name: str, params: dict[str, Any], card: Any, where: str) -> dict[str, Any]:
    renamed = dict(card.mhub.parameters) if card.mhub is not None else {}
    result = {}
    for key, value in params.items():
        target = renamed.get(key, key)
        if target not in card.parameters:
            takes = sorted(renamed) + sorted(set(card.parameters) - set(renamed.values()))
            raise MedhubError(f"{where}: {name}.{key}: model {card.id} has no such parameter "
                              f"({name} takes {', '.join(takes) or 'none'})")
        result[target] = value
    return result


def _output_parameters(name: str, params: dict[str, Any], card: Any, where: str) -> dict[str, Any]:
    handled = {"model_name", "target_dicom", "skip_empty_slices"}
    if name == "DsegConverter":
        handled |= {"body_part_examined", "json_config_path"}
    else:
        handled |= {"use_pin_hole"}
    _refuse_unknown(name, params, handled, where)
    if "target_dicom" in params:
        _check_takes_card_input(f"{name}.target_dicom", str(params["target_dicom"]), card, where)
    if params.get("skip_empty_slices", True) is not True:
        raise MedhubError(f"{where}: {name}.skip_empty_slices=false: medhub never writes frames without a segment")
    if params.get("json_config_path"):
        raise MedhubError(f"{where}: {name}.json_config_path: medhub describes segments from its segment "
                          "database (codes, names, colours), not from a dcmqi JSON file")
    if params.get("use_pin_hole"):
        raise MedhubError(f"{where}: {name}.use_pin_hole=true: medhub writes contours with holes as they are")
    result: dict[str, Any] = {}
    if "model_name" in params:
        result["series_description"] = str(params["model_name"])
    if "body_part_examined" in params:
        result["body_part_examined"] = str(params["body_part_examined"])
    return result


# -- DataOrganizer -----------------------------------------------------------------------------------
_TARGETS = {"dicomseg": StepName.WRITE_SEG, "rtstruct": StepName.WRITE_RTSTRUCT, "nifti": StepName.WRITE_NIFTI}
_PLACEHOLDERS = {"i:sid": "{series_uid}", "i:studyID": "{study_uid}", "i:patientID": "{patient_id}"}
_PLACEHOLDER = re.compile(r"\[((?:i:|d:)?[\w-]+)\]")


def _organize(params: dict[str, Any], converters: list[StepName], card: Any, where: str) -> dict[StepName, str]:
    """The ``path`` of each step a DataOrganizer target exports (``TYPE-->PATH``)."""
    _refuse_unknown(ORGANIZER, params, {"targets"}, where)
    targets = params.get("targets") or []
    if not isinstance(targets, list):
        raise MedhubError(f"{where}: {ORGANIZER}.targets: expected a list of 'TYPE-->PATH'")
    paths: dict[StepName, str] = {}
    for target in targets:
        source, arrow, path = str(target).partition("-->")
        if not arrow or not path.strip():
            raise MedhubError(f"{where}: {ORGANIZER} target {target!r}: expected 'TYPE-->PATH'")
        try:
            query = DataTypeQuery.parse(source)
        except MedhubError as exc:
            raise MedhubError(f"{where}: {ORGANIZER} target {target!r}: {exc}") from None
        kinds = [fmt for fmt in query.formats if fmt in _TARGETS]
        mods = {v.lower() for c in query.conditions if c.key == "mod" for v in c.values}
        if len(kinds) != len(query.formats) or len(kinds) != 1 or (mods and mods != {"seg"}):
            raise MedhubError(f"{where}: {ORGANIZER} target {source}: medhub writes dicomseg, rtstruct or "
                              "nifti:mod=seg for this model, not that")
        step = _TARGETS[kinds[0]]
        if step is not StepName.WRITE_NIFTI and step not in converters:
            maker = next(name for name, made in OUTPUT_CONVERTERS.items() if made is step)
            raise MedhubError(f"{where}: {ORGANIZER} exports {kinds[0]}, but execute has no {maker} to make it")
        if step in paths:
            raise MedhubError(f"{where}: {ORGANIZER} exports {kinds[0]} twice; medhub writes each result once")
        paths[step] = _template(path.strip(), where)
    return paths


def _template(path: str, where: str) -> str:
    """MHub's target path as a medhub path template (``[i:sid]`` → ``{series_uid}``)."""
    escaped = path.replace("{", "{{").replace("}", "}}")

    def replace(match: re.Match[str]) -> str:
        name = match.group(1)
        if name not in _PLACEHOLDERS:
            raise MedhubError(f"{where}: {ORGANIZER} path {path}: [{name}] names "
                              + ("a file inside MHub's container" if ":" not in name else "something medhub does not "
                                 "know") + f"; medhub fills {', '.join(f'[{p}]' for p in _PLACEHOLDERS)}")
        return _PLACEHOLDERS[name]

    return _PLACEHOLDER.sub(replace, escaped)
