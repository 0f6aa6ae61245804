"""``medhub run`` on every case of the hostile-input corpus (tests/hostile_corpus.py), as a user runs it.

Each case is built from ../shared/data in tmp_path, run in a subprocess with its own TMPDIR, and
checked for the promises every run keeps (exit code, one line on stderr and no traceback, the input
tree byte-identical with its mtimes, no temporary file left, dciodvfy-clean DICOM, a reason for every
series that did not succeed and every unreadable file) and for the case's own expectations.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from conftest import dciodvfy_errors
from hostile_corpus import CASES, SHARED_DATA, Case, build


def tree_state(root: Path) -> dict[str, tuple[object, ...]]:
    """Every entry under ``root`` (links not followed): content hash and mtime, or the link target."""
    import hashlib

    state: dict[str, tuple[object, ...]] = {}
    for folder, dirs, files in os.walk(root):
        for name in sorted(dirs + files):
            path = Path(folder) / name
            info = path.lstat()
            if path.is_symlink():
                state[str(path.relative_to(root))] = ("link", os.readlink(path), info.st_mtime_ns)
            elif path.is_file():
                state[str(path.relative_to(root))] = ("file", hashlib.sha256(path.read_bytes()).hexdigest(),
                                                      info.st_mtime_ns, info.st_mode)
            else:
                state[str(path.relative_to(root))] = ("dir", info.st_mtime_ns, info.st_mode)
    return state


def run_medhub(case: Case, input_path: Path, out: Path, tmpdir: Path) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "TMPDIR": str(tmpdir), "COLUMNS": "200"}
    return subprocess.run(
        [sys.executable, "-m", "medhub", "run", case.model, "--input", str(input_path), "--output", str(out),
         *case.args],
        capture_output=True, text=True, env=env, timeout=600, check=False,
    )


def _outside(state: dict[str, tuple[object, ...]], root: Path, out: Path, case: Case) -> dict[str, tuple[object, ...]]:
    """The state of the case folder the run must leave as it was: all of it for exit code 2, else all but --output."""
    if case.exit_code == 2 or root not in out.parents:
        return state
    skip = out.relative_to(root).as_posix()
    return {path: value for path, value in state.items() if path != skip and not path.startswith(skip + "/")}


def _words(entry: dict[str, Any]) -> str:
    return " | ".join([entry["reason"], *entry["findings"], *entry["notes"], *entry.get("warnings", [])])


@pytest.mark.parametrize("case", CASES, ids=[case.name for case in CASES])
def test_hostile_case(case: Case, tmp_path: Path) -> None:
    if not SHARED_DATA.exists():
        pytest.skip(f"real test data absent: {SHARED_DATA}")
    root = tmp_path / "case"
    input_path = build(case, root)
    out, tmpdir = case.output(root) if case.output else tmp_path / "out", tmp_path / "tmp"
    before = tree_state(root)
    dot_files_before = {p for p in out.rglob(".*")} if out.is_dir() else set()
    tmpdir.mkdir()
    result = run_medhub(case, input_path, out, tmpdir)
    context = (f"{case.name}: {case.behaviour}\nexit {result.returncode}\n"
               f"stderr:\n{result.stderr}\nstdout:\n{result.stdout}")

    # The promises of every run.
    assert result.returncode == case.exit_code, context
    assert "Traceback" not in result.stderr + result.stdout, context
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) <= 1, f"stderr must be one line at most\n{context}"
    if case.stderr:
        assert lines and case.stderr.lower() in lines[0].lower(), context
    assert _outside(tree_state(root), root, out, case) == _outside(before, root, out, case), \
        f"the input tree changed\n{context}"
    assert list(tmpdir.iterdir()) == [], f"temporary files left in TMPDIR\n{context}"
    leftovers = [p for p in out.rglob("*") if (p.name.endswith(".partial") or p.name.startswith("."))
                 and p not in dot_files_before] if out.is_dir() else []
    assert leftovers == [], context
    written = sorted(out.rglob("*.dcm")) if out.exists() else []
    for path in written:
        errors = dciodvfy_errors(path)
        assert not errors, f"{case.name}: dciodvfy: {path.name}\n" + "\n".join(errors[:10])

    report_path = out / "medhub-report.json"
    if not report_path.exists():
        assert case.exit_code == 2 and not case.series and not case.unreadable, f"no report\n{context}"
        return
    report = json.loads(report_path.read_text())
    for entry in report["series"]:
        if entry["status"] != "succeeded":
            assert entry["reason"].strip(), f"series {entry['key']} ({entry['status']}) has no reason\n{context}"
    for item in report["unreadable"]:
        assert item["path"] and item["reason"].strip(), item
    unreadable = {Path(item["path"]).name: item["reason"] for item in report["unreadable"]}
    for name, word in case.unreadable.items():
        assert name in unreadable, f"{name} not in the unreadable list {sorted(unreadable)}\n{context}"
        assert word.lower() in unreadable[name].lower(), f"{name}: {unreadable[name]!r} does not say {word!r}"
        assert name in unreadable[name], f"the reason must name the file: {unreadable[name]!r}"
    for expected in case.series:
        entries = [e for e in report["series"] if e["description"] == expected.description] if expected.description \
            else report["series"]
        assert len(entries) == expected.count, f"{expected.description!r}: {len(entries)} entries\n{context}"
        for entry in entries:
            assert entry["status"] == expected.status, f"{expected.description!r}: {entry}\n{context}"
            for word in expected.says:
                assert word.lower() in _words(entry).lower(), f"{word!r} not said for {expected.description!r}: " \
                                                               f"{_words(entry)}"
    if case.check is not None:
        case.check(out, report)
