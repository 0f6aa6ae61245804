"""``medhub new NAME``: a model package that installs, registers itself and passes ``medhub check``.

Why a working model and not empty stubs: an author learns the contract fastest by changing
something that runs. The scaffold's runner is a trivial threshold model (bone = voxels above
300 HU on CT) and its card's sample is medhub's synthetic CT phantom
(:func:`medhub.inputs.sample.write_ct_phantom`), so ``medhub check`` passes before the first
edit, and each edit can be checked again. The runner holds only what is the model's own: the hub
checks the device, fetches weights, checks the label map and computes volumes in ml from the card.

Layout (``NAME`` = ``my-model`` gives package ``my_model``)::

    my-model/
      pyproject.toml            entry point  [project.entry-points."medhub.models"] my-model = "my_model"
      src/my_model/__init__.py
      src/my_model/card.yaml    the model card (docs/model-card.md)
      src/my_model/runner.py    class Runner(medhub.Runner): predict(volume, params) -> label map
      src/my_model/workflows/default.yml
      src/my_model/reference/   labels.nii.gz + values.json, written by the first check
      tests/test_model.py       medhub check as a test
"""

from __future__ import annotations

import keyword
import re
import sys
from pathlib import Path

from medhub.authoring.check import check_model
from medhub.errors import MedhubError

_ID = re.compile(r"^[a-z][a-z0-9]*(-[a-z0-9]+)*$")


def model_names(name: str) -> tuple[str, str]:
    """``(model id, python package)`` for NAME: ``My_Model`` → ``('my-model', 'my_model')``."""
    model_id = name.strip().lower().replace("_", "-")
    if not _ID.match(model_id):
        raise MedhubError(f"model name {name!r}: use letters, digits and dashes, starting with a letter "
                          "(e.g. 'liver-seg')")
    package = model_id.replace("-", "_")
    if keyword.iskeyword(package):
        raise MedhubError(f"model name {name!r} is a Python keyword; choose another")
    return model_id, package


def create(name: str, parent: Path, *, write_reference: bool = True) -> Path:
    """Write the package for ``name`` into ``parent/<id>`` and return that folder.

    With ``write_reference`` the first ``medhub check`` run writes ``reference/`` so the new
    package passes its own check at once (the reference is then the model's own output).
    """
    model_id, package = model_names(name)
    root = Path(parent) / model_id
    if _shadows_installed(package):
        raise MedhubError(f"a Python module named '{package}' is already installed; choose another name")
    if root.exists() and any(root.iterdir()):
        raise MedhubError(f"{root} exists and is not empty; choose another name or --dir")
    files = {
        "pyproject.toml": PYPROJECT,
        f"src/{package}/__init__.py": INIT,
        f"src/{package}/card.yaml": CARD,
        f"src/{package}/runner.py": RUNNER,
        f"src/{package}/workflows/default.yml": WORKFLOW,
        "tests/test_model.py": TEST,
    }
    for relative, template in files.items():
        path = root / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(template.replace("{{ID}}", model_id).replace("{{PKG}}", package), encoding="utf-8")
    if write_reference:
        failed = [r.line() for r in check_model(str(root), write_reference=True) if r.failed]
        if failed:  # a bug of medhub, not of the author: say so plainly
            raise MedhubError(f"scaffold written to {root}, but its first check failed: {failed[0]}")
    return root


def _shadows_installed(package: str) -> bool:
    """True when ``package`` names the standard library or an installed module (a namespace folder does not count)."""
    import importlib.util

    if package in sys.stdlib_module_names:
        return True
    if package in sys.modules:  # e.g. a package checked earlier in this process from another folder
        return False
    try:
        spec = importlib.util.find_spec(package)
    except (ImportError, ValueError):
        return False
    return spec is not None and spec.origin is not None and spec.has_location


PYPROJECT = '''\
[build-system]
requires = ["setuptools>=69"]
build-backend = "setuptools.build_meta"

[project]
name = "medhub-{{ID}}"
version = "0.1.0"
description = "{{ID}}: a model for medhub"
requires-python = ">=3.11"
dependencies = ["medhub"]  # add the model's own requirements here AND in card.yaml (pinned)

# `pip install -e .` adds the model to `medhub models`; then `medhub check {{ID}}`, `pytest tests`,
# `medhub run {{ID}} --input DICOM_FOLDER --output OUT` (medhub's docs/adding-a-model.md).

# This line is what makes `pip install` add the model to `medhub models`:
# the value names the package whose folder holds card.yaml, runner.py and workflows/.
[project.entry-points."medhub.models"]
{{ID}} = "{{PKG}}"

[tool.setuptools.packages.find]
where = ["src"]

[tool.setuptools.package-data]
{{PKG}} = ["card.yaml", "workflows/*.yml", "reference/*"]
'''

INIT = '''\
"""{{ID}}: a medhub model (card.yaml, runner.py, workflows/). Keep this file light: the catalog finds it."""
'''

CARD = '''\
# The model card: medhub's docs/model-card.md explains every field; `medhub check .` validates it.
id: {{ID}}
name: {{ID}}
title: "{{ID}}: bone on CT by a Hounsfield threshold (template)"
description: >-
  Template model written by `medhub new`: every voxel above a Hounsfield-unit threshold (300 HU by
  default) is labelled bone. Replace the runner with your model and this text with what it does,
  on which data, and its limits.
version: "0.1.0"
task: segmentation
modality: [CT]
body_part: CHEST
inputs:
  - query: "dicom:mod=ct"           # which series the model accepts (MHub's data-type query)
    label: CT
    description: "CT in Hounsfield units, axial slices"
    contrast: any
    slice_thickness: "any"
    min_slices: 5
outputs:
  segments:
    1: BONE                         # label value -> segment database ID (see `medhub info ct-body`)
  values:
    - name: bone_volume_ml
      volume_of: BONE               # the hub computes the segment's volume in ml
      description: "volume of the bone label"
architecture: "Hounsfield-unit threshold (no learned parameters)"
training_type: algorithmic
training_data: []
evaluation_data: []
citation: "none (template model)"
publications: []
licence:
  code: Apache-2.0
  weights: "none (no weights)"
source: "https://example.org/your/repository"
requirements:                       # pin (==) what your results depend on
  - "numpy>=1.26"
weights: []                         # files with url + sha256 (+ size); `medhub pull {{ID}}` fetches them
devices: [cpu]
memory:
  ram_gb: 0.5
  note: "a 512x512x300 CT"
parameters:                         # every key of the workflow's predict module: `--set predict.X=V` is checked here
  threshold:
    type: float                     # float | int | bool | string | list[int] | list[float] | list[string]
    default: 300
    minimum: -1024
    maximum: 3071
    unit: HU
    description: "voxels above this are bone"
sample:                             # replace with real data that may be shared: path, or url + sha256
  description: "medhub's synthetic CT phantom (a water body with a bone cylinder)"
  generator: "medhub.inputs.sample:write_ct_phantom"
  reference:
    workflow: default
    folder: reference               # labels.nii.gz + values.json from `medhub check . --write-reference`
    min_dice: 0.99
    value_rtol: 0.001
'''

RUNNER = '''\
"""{{ID}}: every voxel above a Hounsfield-unit threshold is bone. A template: put your model here.

medhub hands ``predict`` a 3D volume (``volume.array`` indexed [x, y, z], ``volume.affine_lps`` in
mm) and the card's parameters; it returns a label map of the volume's shape whose values the
card's segments name (the hub adds their volumes in ml). A model with weights loads them once in
``load(self, context)`` from ``context.weights["model.pt"]`` onto ``context.device``, and imports
torch there too, so that `medhub models` stays fast.
"""

from collections.abc import Mapping
from typing import Any

import numpy as np

import medhub


class Runner(medhub.Runner):
    def predict(self, volume: medhub.Volume, params: Mapping[str, Any]) -> np.ndarray:
        return np.asarray(volume.array) > params["threshold"]
'''

WORKFLOW = '''\
general:
  name: default
  description: "Bone above a Hounsfield threshold, written as DICOM SEG."
execute: [select, load, predict, write_seg]   # the predict parameters are the card's (--set predict.threshold=400)
'''

TEST = '''\
"""`medhub check`: the card, the runner and the workflow, then the model on its sample against reference/."""

from pathlib import Path

import medhub


def test_medhub_check_passes():
    failed = [result.line() for result in medhub.check_model(Path(__file__).parents[1]) if result.failed]
    assert not failed, "\\n".join(failed)
'''
