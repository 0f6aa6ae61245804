"""The README and docs name only files and sections that exist (issue 13: a note once pointed to a missing
``.ci/orthanc-notes.md``).

Checked: every relative Markdown link and its ``#anchor`` (GitHub's heading slugs), and every
path in backticks that starts in one of the repository's own folders (not in tests/data/README.md,
which cites the upstream repositories' paths) (``docs/``, ``tests/``,
``.ci/``, ``bench/``, ``slicer/``, ``src/medhub/`` or ``medhub/`` for the package). Paths with a
placeholder (``<series>``, ``{model}``, ``*``) and files a command writes are not repository files and
are left out by those rules.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DOCUMENTS = sorted([ROOT / "README.md", *(ROOT / "docs").glob("*.md"), *(ROOT / "bench").glob("*.md"),
                    *(ROOT / "tests" / "data").glob("*.md"), *(ROOT / "slicer").rglob("*.md")])
LINK = re.compile(r"\]\(([^)\s]*?)(?:#([^)\s]+))?\)")
TICKED = re.compile(r"`((?:\.ci|docs|tests|bench|slicer|src/medhub|medhub)/[^`\s]*)`")
PLACEHOLDER = re.compile(r"[<>{}*]|\.\.\.")


def heading_slugs(text: str) -> set[str]:
    """GitHub's anchors: headings lower-cased, punctuation dropped, spaces as dashes (outside code blocks)."""
    slugs, fenced = set(), False
    for line in text.splitlines():
        if line.startswith("```"):
            fenced = not fenced
        match = None if fenced else re.match(r"^#{1,6}\s+(.*?)\s*$", line)
        if match:
            slugs.add(re.sub(r"[^\w\- ]", "", match.group(1).lower()).replace(" ", "-"))
    return slugs


def test_the_documents_are_found() -> None:
    names = {path.relative_to(ROOT).as_posix() for path in DOCUMENTS}
    assert {"README.md", "docs/serve.md", "docs/model-card.md", "tests/data/README.md"} <= names


@pytest.mark.parametrize("document", DOCUMENTS, ids=lambda p: p.relative_to(ROOT).as_posix())
def test_links_and_anchors_resolve(document: Path) -> None:
    text = document.read_text(encoding="utf-8")
    broken = []
    for match in LINK.finditer(text):
        target, anchor = match.group(1), match.group(2)
        if target.startswith(("http://", "https://", "mailto:")):
            continue
        path = (document.parent / target) if target else document
        if not path.exists():
            broken.append(f"{match.group(0)}: no file {path.relative_to(ROOT) if ROOT in path.parents else path}")
        elif anchor and path.suffix == ".md" and anchor not in heading_slugs(path.read_text(encoding="utf-8")):
            broken.append(f"{match.group(0)}: no section #{anchor} in {path.name}")
    assert not broken, "\n".join(broken)


OWN_PATHS = [d for d in DOCUMENTS if d != ROOT / "tests" / "data" / "README.md"]  # that one cites upstream repos' paths


@pytest.mark.parametrize("document", OWN_PATHS, ids=lambda p: p.relative_to(ROOT).as_posix())
def test_repository_paths_in_backticks_exist(document: Path) -> None:
    missing = []
    for match in TICKED.finditer(document.read_text(encoding="utf-8")):
        named = match.group(1).rstrip(".,:;")
        if PLACEHOLDER.search(named):
            continue
        relative = "src/" + named if named.startswith("medhub/") else named
        if not (ROOT / relative).exists():
            missing.append(named)
    assert not missing, f"{document.relative_to(ROOT)} names files that do not exist: {missing}"
