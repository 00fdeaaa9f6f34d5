"""results.json names the code that made it: versions and, from a git checkout, the commit."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

import pnnkit.provenance as prov

needs_git = pytest.mark.skipif(shutil.which("git") is None, reason="git is not installed")


def _git(repo: Path, *args: str) -> str:
    cmd = ["git", "-C", str(repo), "-c", "user.name=t", "-c", "user.email=t@example.org", "-c", "commit.gpgsign=false"]
    return subprocess.run([*cmd, *args], check=True, capture_output=True, text=True).stdout.strip()


@needs_git
def test_source_revision_is_the_commit_and_marks_modified_tracked_files(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setenv("GIT_CEILING_DIRECTORIES", str(tmp_path))
    repo = tmp_path / "repo"
    (repo / "pkg").mkdir(parents=True)
    _git(repo, "init", "-q")
    (repo / "pkg" / "a.py").write_text("x = 1\n")
    _git(repo, "add", ".")
    _git(repo, "commit", "-q", "-m", "one")
    head = _git(repo, "rev-parse", "HEAD")
    assert len(head) == 40
    assert prov.source_revision(repo / "pkg") == head
    (repo / "pkg" / "new.py").write_text("")  # untracked: not a change to the code that ran
    assert prov.source_revision(repo / "pkg") == head
    (repo / "pkg" / "a.py").write_text("x = 2\n")
    assert prov.source_revision(repo / "pkg") == head + "-dirty"
    _git(repo, "commit", "-q", "-am", "two")
    second = prov.source_revision(repo / "pkg")
    assert second == _git(repo, "rev-parse", "HEAD") and second != head


@needs_git
def test_source_revision_is_none_outside_a_work_tree_or_without_git(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setenv("GIT_CEILING_DIRECTORIES", str(tmp_path))
    plain = tmp_path / "plain"
    plain.mkdir()
    assert prov.source_revision(plain) is None
    repo = tmp_path / "empty"
    repo.mkdir()
    _git(repo, "init", "-q")  # a repository with no commit yet
    assert prov.source_revision(repo) is None
    (repo / "a.py").write_text("")
    _git(repo, "add", ".")
    _git(repo, "commit", "-q", "-m", "one")
    assert prov.source_revision(repo) is not None
    monkeypatch.setenv("PATH", str(tmp_path / "nowhere"))  # git cannot be found
    assert prov.source_revision(repo) is None


def test_versions_records_the_source_only_when_there_is_one(monkeypatch) -> None:
    monkeypatch.setattr(prov, "source_revision", lambda: None)
    v = prov.versions()
    assert set(v) == {"pnnkit", "torch", "python"} and v["pnnkit"] == prov.__version__
    monkeypatch.setattr(prov, "source_revision", lambda: "f" * 40 + "-dirty")
    assert prov.versions()["source"] == "f" * 40 + "-dirty"
