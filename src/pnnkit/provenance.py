"""Which code made a result: package versions and, when pnnkit runs from a git checkout, the commit.

``versions()`` goes into every ``results.json`` (and ``pnnkit train``'s ``result.json``) as ``"versions"``. A run
made from an installed wheel records pnnkit's version number only; a run from a git checkout (``pip install -e``,
as ``scripts/setup.sh`` does) also records ``"source"``: the checkout's commit, with ``-dirty`` appended when tracked
files differ from it, so a number in a note can be traced to the code that made it.
"""

from __future__ import annotations

import platform
import subprocess
from pathlib import Path

import torch

from . import __version__

_PACKAGE_DIR = Path(__file__).resolve().parent


def source_revision(path: str | Path = _PACKAGE_DIR) -> str | None:
    """The commit (40 hex digits) of the git work tree holding ``path``, with ``-dirty`` appended when tracked files
    differ from it; None when ``path`` is not in a git work tree or git cannot be run (not installed, a timeout,
    a repository git refuses to read)."""
    def git(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(["git", "-C", str(path), *args], capture_output=True, text=True, timeout=20)

    try:
        head = git("rev-parse", "--verify", "HEAD")
        if head.returncode != 0:
            return None
        status = git("status", "--porcelain", "--untracked-files=no")
    except (OSError, subprocess.SubprocessError):
        return None
    if status.returncode != 0:
        return None
    return head.stdout.strip() + ("-dirty" if status.stdout.strip() else "")


def versions() -> dict[str, str]:
    """``pnnkit``, ``torch`` and ``python`` versions, and ``source`` (:func:`source_revision`) when there is one."""
    out = {"pnnkit": __version__, "torch": torch.__version__, "python": platform.python_version()}
    rev = source_revision()
    if rev is not None:
        out["source"] = rev
    return out
