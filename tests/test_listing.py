"""The catalog's cached listing (medhub.hub.listing): the same answers as the catalog, renewed when
anything it was read from changes, and a cache hit that imports none of the heavy packages.

Each test points ``MEDHUB_CACHE`` and ``MEDHUB_HEADS`` at its own folders, so the user's cache and
heads are never touched.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from importlib.metadata import EntryPoint
from pathlib import Path

import pytest

from medhub.hub import catalog
from medhub.hub.catalog import build_listing, card_summary, list_entries
from medhub.hub.listing import Listing, cache_file, load_listing, save_listing

CT_BODY_CARD = Path(catalog.BUILTIN_ROOT) / "ct_body" / "card.yaml"


@pytest.fixture
def cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("MEDHUB_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("MEDHUB_HEADS", str(tmp_path / "heads"))
    return tmp_path


def _listing() -> Listing:
    """What ``medhub models`` / ``info`` use: the cached listing, else built and cached."""
    listing = load_listing()
    if listing is None:
        listing, paths = build_listing()
        assert paths is not None
        save_listing(listing, paths)
    return listing


def _medhub(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "medhub", *args], capture_output=True, text=True, check=False,
                          env={**os.environ, **env}, timeout=300)  # fmt: skip


def test_listing_says_what_the_catalog_says(cache: Path) -> None:
    listing = _listing()
    entries = list_entries()
    assert [e["id"] for e in listing.entries] == [e.id for e in entries]
    for listed, entry in zip(listing.entries, entries, strict=True):
        assert listed["summary"] == card_summary(entry.card)
        assert listed["card"] == entry.card.model_dump(mode="json")
        assert (listed["path"], listed["origin"], listed["workflows"]) == (str(entry.path), entry.origin,
                                                                           sorted(entry.workflows))  # fmt: skip
    assert load_listing() == listing  # read back from the file: nothing changed
    assert cache_file().is_file() and cache_file().parent == cache / "cache"


def test_a_cache_hit_answers_without_pydantic_yaml_or_pydicom(cache: Path) -> None:
    env = {"MEDHUB_CACHE": os.environ["MEDHUB_CACHE"], "MEDHUB_HEADS": os.environ["MEDHUB_HEADS"]}
    first = _medhub("models", "--json", env=env)
    assert first.returncode == 0, first.stderr
    probe = ("import sys; from typer.testing import CliRunner; from medhub.cli.main import app; "
             "r = [CliRunner().invoke(app, a) for a in (['models', '--json'], ['info', 'ct-body', '--json'])]; "
             "assert all(x.exit_code == 0 for x in r), [x.output for x in r]; "
             "print(json.dumps([sorted(m for m in ('pydantic', 'yaml', 'pydicom', 'numpy', 'highdicom', 'torch') "
             "if m in sys.modules), r[0].stdout, r[1].stdout]))")  # fmt: skip
    proc = subprocess.run([sys.executable, "-c", "import json; " + probe], capture_output=True, text=True,
                          check=False, env={**os.environ, **env}, timeout=300)  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    heavy, models, info = json.loads(proc.stdout.strip().splitlines()[-1])
    assert heavy == []
    assert json.loads(models) == json.loads(first.stdout)
    assert json.loads(info)["card"]["id"] == "ct-body" and json.loads(info)["segments"]


def _write_head(heads: Path, name: str, title: str) -> Path:
    """A folder under the heads root with a valid card (ct-body's, renamed): what the heads source lists."""
    folder = heads / name
    folder.mkdir(parents=True, exist_ok=True)
    text = CT_BODY_CARD.read_text().replace("id: ct-body", f"id: {name}").replace("name: ct-body", f"name: {name}")
    text = text.replace('title: "CT body, lungs and bone by thresholding (algorithmic reference)"', f'title: "{title}"')
    (folder / "card.yaml").write_text(text)
    return folder


def _later() -> None:
    """Let the clock move on so that a rewritten file gets another modification time on any file system."""
    time.sleep(0.02)


def test_a_head_added_changed_or_removed_renews_the_listing(cache: Path) -> None:
    assert "my-head" not in {e["id"] for e in _listing().entries}
    assert load_listing() is not None
    _later()
    folder = _write_head(cache / "heads", "my-head", "first title")  # the heads root did not exist before
    assert load_listing() is None
    assert _listing().find("my-head")["summary"]["title"] == "first title"
    _later()
    _write_head(cache / "heads", "my-head", "second title")
    assert load_listing() is None
    assert _listing().find("my_head")["summary"]["title"] == "second title"
    _later()
    (folder / "card.yaml").unlink()
    folder.rmdir()
    assert load_listing() is None
    assert "my-head" not in {e["id"] for e in _listing().entries}


def test_environment_interpreter_paths_and_installed_distributions_renew_it(cache: Path,
                                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    watched = cache / "watched.txt"
    watched.write_text("a")
    site = cache / "site-packages"
    site.mkdir()
    monkeypatch.syspath_prepend(str(site))
    listing = Listing(entries=[{"id": "x"}], problems=[])
    save_listing(listing, [watched])
    assert load_listing() == listing
    monkeypatch.setenv("MEDHUB_SOMETHING", "1")  # any MEDHUB_* / XDG_* variable may move what is read
    assert load_listing() is None
    monkeypatch.delenv("MEDHUB_SOMETHING")
    assert load_listing() == listing
    _later()
    (site / "newplugin-0.1.dist-info").mkdir()  # what pip install does to a sys.path directory
    assert load_listing() is None
    save_listing(listing, [watched])
    _later()
    watched.write_text("bb")
    assert load_listing() is None
    save_listing(listing, [watched])
    monkeypatch.setattr(sys, "executable", sys.executable + "-other")  # another interpreter: its own file
    assert load_listing() is None


def _opaque_source(problems: list[str]) -> list:
    """A model source that does not say which folders it reads."""
    return []


def test_a_source_that_does_not_say_what_it_reads_is_never_cached(cache: Path, monkeypatch: pytest.MonkeyPatch):
    real = catalog.entry_points

    def with_opaque_source(group: str):
        found = list(real(group=group))
        if group == catalog.SOURCE_ENTRY_POINT_GROUP:
            found.append(EntryPoint("opaque", f"{__name__}:_opaque_source", group))
        return found

    monkeypatch.setattr(catalog, "entry_points", with_opaque_source)
    listing, paths = build_listing()
    assert paths is None and "ct-body" in {e["id"] for e in listing.entries}


def test_environments_sharing_an_interpreter_keep_their_own_listing(cache: Path,
                                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    """Another PYTHONPATH (a second checkout) or the ``medhub`` script's folder on sys.path: another file,
    so two such environments do not take turns rebuilding one shared listing."""
    first = Listing(entries=[{"id": "first"}], problems=[])
    save_listing(first, [])
    first_file = cache_file()
    checkout = cache / "other-checkout" / "src"
    checkout.mkdir(parents=True)
    monkeypatch.syspath_prepend(str(checkout))
    assert cache_file() != first_file and load_listing() is None
    second = Listing(entries=[{"id": "second"}], problems=[])
    save_listing(second, [])
    assert load_listing() == second
    monkeypatch.setattr(sys, "path", [p for p in sys.path if p != str(checkout)])
    assert cache_file() == first_file and load_listing() == first  # not evicted by the other environment
