"""The house rules of docs/how-medhub-is-built.md that a reviewer would otherwise have to see.

* medhub's own modules are imported at the top of a module. An import of a medhub module inside a
  function hides an import circle or a reach into a layer above, which ``lint-imports`` then cannot
  see either (it reads function-level imports too, but a circle hidden this way still works at run
  time until the day the order of imports changes). ``cli/`` is exempt: a command imports its
  implementation when it runs, so that ``medhub --help`` answers at once. Every other exception is
  listed below with its reason, and an entry that is no longer needed fails too.
* ``lint-imports`` passes: the layers contract and the forbidden imports in pyproject.toml. The contract
  ignores the root package's own imports, which are for type checkers only (checked here too).
"""

from __future__ import annotations

import ast
import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = ROOT / "src" / "medhub"

#: (module path under src/medhub, imported medhub module) -> why it is imported inside a function.
ALLOWED_FUNCTION_IMPORTS = {
    ("hub/listing.py", "medhub.hub.catalog"):
        "speed: a fresh cached listing answers `medhub models` without importing the catalog (pydantic, PyYAML, "
        "pydicom); the catalog is imported only to rebuild a stale listing",
    ("models/brainchop_common.py", "medhub.models.nets.meshnet"):
        "the network imports torch (a heavy optional dependency): loaded when the model is loaded",
    ("models/ct_fm_astra/runner.py", "medhub.models.nets.i3resnet"):
        "the network imports torch (a heavy optional dependency): loaded when the model is loaded",
}


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _imported_modules(node: ast.Import | ast.ImportFrom, module: str, is_package: bool) -> list[str]:
    """The absolute module names one import statement names (relative ones resolved)."""
    if isinstance(node, ast.Import):
        return [alias.name for alias in node.names]
    if node.level == 0:
        return [node.module or ""]
    base = module.split(".") if is_package else module.split(".")[:-1]
    base = base[: len(base) - (node.level - 1)]
    return [".".join([*base, node.module] if node.module else base)]


def function_level_medhub_imports() -> dict[tuple[str, str], list[int]]:
    """``{(path under src/medhub, imported module): [line, ...]}`` outside cli/."""
    found: dict[tuple[str, str], list[int]] = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        relative = path.relative_to(PACKAGE).as_posix()
        if relative.startswith("cli/"):
            continue
        tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
        module = _module_name(path)
        seen: set[int] = set()
        for function in ast.walk(tree):
            if not isinstance(function, ast.FunctionDef | ast.AsyncFunctionDef):
                continue
            for node in ast.walk(function):
                if not isinstance(node, ast.Import | ast.ImportFrom) or id(node) in seen:
                    continue
                seen.add(id(node))
                for name in _imported_modules(node, module, path.name == "__init__.py"):
                    if name == "medhub" or name.startswith("medhub."):
                        found.setdefault((relative, name), []).append(node.lineno)
    return found


def test_the_scanner_sees_function_level_imports(tmp_path: Path) -> None:
    """The AST walk finds absolute, relative and nested imports (so the rule below cannot pass by blindness)."""
    source = (
        "import os\n"
        "def outer():\n"
        "    from medhub.data import volume\n"
        "    def inner():\n"
        "        from ..errors import MedhubError\n"
        "        import numpy\n"
    )
    tree = ast.parse(source)
    names = [
        name
        for node in ast.walk(tree)
        if isinstance(node, ast.ImportFrom)
        for name in _imported_modules(node, "medhub.inputs.example", is_package=False)
    ]
    assert names == ["medhub.data", "medhub.errors"]


def test_medhub_modules_are_imported_at_the_top() -> None:
    found = function_level_medhub_imports()
    unexplained = {key: lines for key, lines in found.items() if key not in ALLOWED_FUNCTION_IMPORTS}
    assert not unexplained, (
        "medhub modules imported inside functions (move the import to the top; if that makes a circle or "
        "reaches a layer above, fix the design; a real exception goes into ALLOWED_FUNCTION_IMPORTS with its "
        "reason): " + "; ".join(f"src/medhub/{path}:{lines} imports {name}" for (path, name), lines in
                                unexplained.items())
    )
    stale = sorted(set(ALLOWED_FUNCTION_IMPORTS) - set(found))
    assert not stale, f"ALLOWED_FUNCTION_IMPORTS entries no longer needed, remove them: {stale}"


def test_the_root_package_imports_medhub_modules_for_type_checkers_only() -> None:
    """pyproject's layers contract ignores ``medhub -> medhub.**``: that holds only while the root package's
    facade (``from medhub import Runner, ...``) imports its names lazily, never at import time."""
    tree = ast.parse((PACKAGE / "__init__.py").read_text(encoding="utf-8"))
    type_checking_only: set[int] = set()
    for node in tree.body:
        if isinstance(node, ast.If) and isinstance(node.test, ast.Name) and node.test.id == "TYPE_CHECKING":
            type_checking_only.update(id(n) for n in ast.walk(node))
    eager = [
        f"line {node.lineno}: {name}"
        for node in ast.walk(tree)
        if isinstance(node, ast.Import | ast.ImportFrom) and id(node) not in type_checking_only
        for name in _imported_modules(node, "medhub", is_package=True)
        if name.startswith("medhub.")
    ]
    assert not eager, f"src/medhub/__init__.py imports medhub modules at import time: {eager}"
    assert type_checking_only, "the facade's TYPE_CHECKING block is gone: update this test and pyproject's ignore"


def test_lint_imports_passes() -> None:
    """The layers contract and the forbidden imports of pyproject.toml ([tool.importlinter])."""
    command = shutil.which("lint-imports")
    if command is None:
        pytest.skip("lint-imports is not installed (pip install import-linter: it is in the test extra)")
    done = subprocess.run([command, "--no-cache"], cwd=ROOT, capture_output=True, text=True, timeout=600,
                          env={"PYTHONPATH": str(ROOT / "src"), "PATH": str(Path(command).parent)})
    assert done.returncode == 0, done.stdout + done.stderr
    assert "Contracts: " in done.stdout and " broken" in done.stdout and "0 broken" in done.stdout, done.stdout
