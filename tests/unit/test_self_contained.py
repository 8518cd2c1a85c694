"""The repository stands alone: no tracked file refers to files outside it, so a plain clone
builds, tests and documents itself."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
# A path that climbs out of the checkout, or the design contract that lives beside it.
OUTSIDE = re.compile(r"\.\./shared\b|\bshared/standards\b|\"shared\"\s*/\s*\"standards\"|\bDESIGN\.md\b")


def tracked_text_files() -> list[Path]:
    names = subprocess.run(["git", "ls-files", "-z"], cwd=REPO, check=True, capture_output=True).stdout.split(
        b"\0"
    )
    files = []
    for name in filter(None, names):
        path = REPO / name.decode()
        if path.is_file() and b"\0" not in path.read_bytes()[:8192]:
            files.append(path)
    return files


def test_no_tracked_file_refers_outside_the_repository() -> None:
    me = Path(__file__).resolve()
    offenders = [
        f"{path.relative_to(REPO)}:{number}: {line.strip()}"
        for path in tracked_text_files()
        if path != me
        for number, line in enumerate(path.read_text(errors="replace").splitlines(), 1)
        if OUTSIDE.search(line)
    ]
    assert offenders == []


def test_the_pattern_catches_what_it_is_for() -> None:
    assert OUTSIDE.search('SCHEMA = REPO.parent / "shared" / "standards" / "x.json"')
    # Built from pieces, so this file does not itself name what it forbids.
    assert OUTSIDE.search("see " + "../" + "shared/standards/x.json")
    assert OUTSIDE.search("exit codes from " + "DESIGN" + ".md")
    assert OUTSIDE.search("kept in shared/standards/")
