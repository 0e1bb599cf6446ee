"""The repository stands alone: no tracked file points at documents kept outside it.

The hardware facts ttc relies on live in docs/grayskull.md and the test vectors' description in
tests/data/bfp_tiles.README.md. A file that names the team's external notes instead is a broken
reference for anyone holding only this repository. Matching is case-sensitive: the project's own
docs/architecture.md and docs/grayskull.md are lower case and allowed.
"""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

# Assembled from pieces so that this file does not match its own patterns.
_MD = ".md"
FORBIDDEN = (
    "../" + "shared",
    "shared" + "/GRAYSKULL",
    "shared" + "/vectors",
    "GRAYSKULL" + _MD,
    "ARCHITECTURE" + _MD,
    "STYLE" + _MD,
)


def _tracked_files() -> list[Path]:
    try:
        out = subprocess.run(["git", "ls-files", "-z"], cwd=ROOT, capture_output=True, check=True).stdout
    except (OSError, subprocess.CalledProcessError):
        pytest.skip("not a git checkout: the tracked files are unknown")
    return [ROOT / name for name in out.decode("utf-8").split("\0") if name]


def _is_binary(data: bytes) -> bool:
    return b"\0" in data[:8192]


def test_no_file_points_outside_the_repository() -> None:
    hits: list[str] = []
    for path in _tracked_files():
        if not path.is_file():  # deleted in the work tree but still in the index
            continue
        data = path.read_bytes()
        if _is_binary(data):
            continue
        for number, line in enumerate(data.decode("utf-8", errors="replace").splitlines(), start=1):
            found = [pattern for pattern in FORBIDDEN if pattern in line]
            if found:
                hits.append(f"{path.relative_to(ROOT)}:{number}: {', '.join(found)}: {line.strip()}")
    assert not hits, "files point outside the repository (use docs/grayskull.md instead):\n" + "\n".join(hits)
