"""medhub deletes only what it can prove it created, and one run at a time writes into an output folder.

The corpus (tests/hostile_corpus.py) runs the user-facing cases (an output that holds the input,
look-alike temporary files); these tests pin the parts underneath: run tokens in temporary names,
the journal as the record of tokens, the lock, and a journal that is not medhub's.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from medhub.errors import MedhubError
from medhub.files import (
    JOURNAL_NAME,
    OutputFolder,
    atomic_output,
    check_output_location,
    read_journal,
    temporary_path,
    temporary_token,
    writing_as,
)


def test_a_temporary_name_carries_the_run_token(tmp_path: Path) -> None:
    token = "0123456789abcdef"
    with writing_as(token):
        name = temporary_path(tmp_path / "ct-body.seg.dcm").name
        with atomic_output(tmp_path / "a.json") as temporary:
            assert temporary_token(temporary.name) == token
            temporary.write_text("{}")
    assert temporary_token(name) == token
    assert (tmp_path / "a.json").read_text() == "{}"
    outside = temporary_path(tmp_path / "x")  # outside a run: a process token no journal records
    assert temporary_token(outside.name) not in (None, token)
    for user_name in (".notes.partial", ".a.dcm.12.34.partial", ".a.dcm.mhXYZ.1.1.partial"):
        assert temporary_token(user_name) is None


def test_start_records_the_token_and_removes_only_recorded_leftovers(tmp_path: Path) -> None:
    out = tmp_path / "out"
    first = OutputFolder.claim(out)
    first.start(fresh=True)
    with writing_as(first.token):  # a run killed while writing: its temporary file and folder stay behind
        left_file = temporary_path(out / "s" / "ct-body.seg.dcm")
        left_folder = temporary_path(out / "sample-input")
    first.release()
    left_file.parent.mkdir()
    left_file.write_bytes(b"half")
    (left_folder / "x").mkdir(parents=True)
    foreign = out / "s" / f".ct-body.seg.dcm.mh{'ab' * 8}.1.1.partial"  # well-formed, but no run recorded it
    foreign.write_bytes(b"user")
    (out / ".notes.partial").write_bytes(b"user")

    second = OutputFolder.claim(out)
    second.start(fresh=True)
    second.release()
    assert not left_file.exists() and not left_folder.exists()
    assert foreign.read_bytes() == b"user" and (out / ".notes.partial").read_bytes() == b"user"
    assert second.stale_removed == 2
    runs = [line["run"] for line in read_journal(out / JOURNAL_NAME)]
    assert runs == [first.token, second.token]


def test_a_fresh_run_keeps_only_run_lines(tmp_path: Path) -> None:
    out = tmp_path / "out"
    out.mkdir()
    journal = out / JOURNAL_NAME
    journal.write_text(json.dumps({"run": "1" * 16, "fresh": True}) + "\n"
                       + json.dumps({"fingerprint": "f", "key": "s", "status": "succeeded"}) + "\n"
                       + '{"fingerprint": "f", "ke')  # the torn last line of a kill
    folder = OutputFolder.claim(out)
    folder.start(fresh=True)
    folder.release()
    assert [sorted(line) for line in read_journal(journal)] == [["fresh", "run"], ["fresh", "pid", "run", "started"]]


def test_a_file_that_is_not_medhubs_journal_is_never_changed(tmp_path: Path) -> None:
    out = tmp_path / "out"
    out.mkdir()
    (out / JOURNAL_NAME).write_text("my own notes\nmore notes\n")
    folder = OutputFolder.claim(out)
    with pytest.raises(MedhubError, match="is not medhub's journal"):
        folder.start(fresh=True)
    folder.release()
    assert (out / JOURNAL_NAME).read_text() == "my own notes\nmore notes\n"


def test_a_journal_that_is_a_link_is_never_followed(tmp_path: Path) -> None:
    """Even a dangling link: appending through it would create a file outside the output folder."""
    out = tmp_path / "out"
    out.mkdir()
    (out / JOURNAL_NAME).symlink_to(tmp_path / "elsewhere.txt")
    folder = OutputFolder.claim(out)
    with pytest.raises(MedhubError, match="is a link"):
        folder.start(fresh=True)
    folder.release()
    assert not (tmp_path / "elsewhere.txt").exists() and (out / JOURNAL_NAME).is_symlink()


def test_a_folder_made_for_a_run_that_never_started_is_removed(tmp_path: Path) -> None:
    folder = OutputFolder.claim(tmp_path / "a" / "b")
    folder.release()
    assert not (tmp_path / "a").exists()


def test_overlap_is_refused_also_through_links(tmp_path: Path) -> None:
    tree = tmp_path / "tree"
    (tree / "dicom").mkdir(parents=True)
    os.symlink(tree, tmp_path / "link")
    with pytest.raises(MedhubError, match="inside the output folder"):
        check_output_location(tree / "dicom", tmp_path / "link")
    with pytest.raises(MedhubError, match="is the input folder"):
        check_output_location(tree, tmp_path / "link")
    with pytest.raises(MedhubError, match="inside the input folder"):
        check_output_location(tmp_path / "link", tree / "dicom" / "out")
    check_output_location(tree / "dicom", tree / "dicom-out")  # a sibling whose name starts the same is fine
    check_output_location(tree / "dicom" / "x.nii.gz", tree / "results")  # a file input beside the output


def test_a_second_run_into_a_folder_being_written_is_refused(tmp_path: Path) -> None:
    """One run holds the lock (here: this test); ``medhub run`` into the same folder is exit 2, one line."""
    out = tmp_path / "out"
    (tmp_path / "in").mkdir()
    (tmp_path / "in" / "scan.nii.gz").write_bytes(b"")
    holder = OutputFolder.claim(out)
    try:
        result = subprocess.run([sys.executable, "-m", "medhub", "run", "ct-body", "--input",
                                 str(tmp_path / "in" / "scan.nii.gz"), "--output", str(out)],
                                capture_output=True, text=True, timeout=120, check=False)
        assert list(out.iterdir()) == []  # nothing written by the refused run
    finally:
        holder.release()
    assert result.returncode == 2, result.stderr
    assert result.stderr.strip() == f"medhub: another medhub run is writing into {out}; wait for it to finish or " \
                                    "choose another --output"
