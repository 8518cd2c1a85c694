"""The repository stands alone: no tracked file refers to files outside it, so a plain clone
builds, tests and documents itself.

Five checks on what `git ls-files` lists, each with a self-test on a made-up tree so that none
passes because it looks at nothing:

- named things that live beside the checkout (the design contract, shared standards);
- symlinks: each resolves, relatively, to a tracked file or directory of the repository;
- Markdown links (`[text](path)`, `![alt](path)`, `[label]: path`) that are not URLs or
  anchors: each names a tracked file or directory (code blocks and code spans are not links);
- `../` paths in the files whose relative paths are read as paths (YAML, TOML, Jinja, shell,
  Dockerfiles, HTML...), judged from the file's own directory: none climbs above the root.
  Python and Markdown prose are left out of this one: their `../` strings are paths relative
  to a working directory or a bundle (the path-traversal attacks the tests make, for one);
- Python paths anchored on `__file__` (`Path(__file__).parents[3]`, `ROOT.parent`,
  `HERE / ".."`, `os.path.dirname(...)`): none climbs above the root.
"""

from __future__ import annotations

import ast
import os
import re
import subprocess
from collections.abc import Iterable, Iterator
from pathlib import Path, PurePosixPath
from urllib.parse import unquote

import pytest

REPO = Path(__file__).resolve().parents[2]
# A path that climbs out of the checkout, or the design contract that lives beside it.
OUTSIDE = re.compile(r"\.\./shared\b|\bshared/standards\b|\"shared\"\s*/\s*\"standards\"|\bDESIGN\.md\b")


def tracked_names(root: Path = REPO) -> list[str]:
    """Every path git tracks, relative, with "/" (symlinks included, as links)."""
    out = subprocess.run(["git", "ls-files", "-z"], cwd=root, check=True, capture_output=True).stdout
    return [name.decode() for name in out.split(b"\0") if name]


def is_text(path: Path) -> bool:
    return path.is_file() and not path.is_symlink() and b"\0" not in path.read_bytes()[:8192]


def tracked_text_files() -> list[Path]:
    return [REPO / name for name in tracked_names() if is_text(REPO / name)]


def inside(name: str) -> str | None:
    """`name` (relative to the root, maybe with ..) normalised, or None if it leaves the root."""
    if name.startswith("/"):
        return None
    normal = os.path.normpath(name)
    return None if normal == ".." or normal.startswith("../") else ("" if normal == "." else normal)


def tracked_target(name: str, names: set[str], dirs: set[str]) -> bool:
    """Whether `name` (normalised, inside) is a tracked file or a directory holding one."""
    return name == "" or name in names or name in dirs


def directories(names: Iterable[str]) -> set[str]:
    return {str(parent) for n in names for parent in PurePosixPath(n).parents if str(parent) != "."}


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


# -- symlinks ---------------------------------------------------------------------------------------
def bad_symlinks(root: Path, names: list[str]) -> list[str]:
    """Tracked symlinks whose target is absolute, outside the root, or not tracked."""
    known, dirs = set(names), directories(names)
    found = []
    for name in names:
        if not (root / name).is_symlink():
            continue
        target = os.readlink(root / name)
        resolved = None if os.path.isabs(target) else inside(f"{PurePosixPath(name).parent}/{target}")
        if resolved is None or not tracked_target(resolved, known, dirs):
            found.append(f"{name} -> {target}")
    return found


# -- Markdown links ---------------------------------------------------------------------------------
_FENCE = re.compile(r"^ {0,3}(`{3,}|~{3,})")
_CODE_SPAN = re.compile(r"(`+)(?:(?!\1).)+?\1", re.DOTALL)
_INLINE_LINK = re.compile(
    r"!?\[(?:[^\[\]]|\[[^\]]*\])*\]\(\s*(<[^>]*>|[^)\s]*)(?:\s+(?:\"[^\"]*\"|'[^']*'))?\s*\)"
)
_REFERENCE = re.compile(r"^ {0,3}\[[^\]]+\]:\s*(<[^>]*>|\S+)", re.MULTILINE)
_SCHEME = re.compile(r"[A-Za-z][A-Za-z0-9+.-]*:")


def markdown_prose(text: str) -> str:
    """`text` with fenced and indented code blocks and code spans blanked (lines kept)."""
    lines, fence, previous_blank = [], "", True
    for line in text.split("\n"):
        opened = _FENCE.match(line)
        if fence:
            lines.append("")
            if opened and opened[1][0] == fence[0] and len(opened[1]) >= len(fence):
                fence = ""
        elif opened:
            fence = opened[1]
            lines.append("")
        elif line.startswith(("    ", "\t")) and (previous_blank or (lines and lines[-1] == "")):
            lines.append("")  # an indented code block (or its continuation)
        else:
            lines.append(line)
        previous_blank = not line.strip()
    prose = "\n".join(lines)
    return _CODE_SPAN.sub(lambda m: re.sub(r"[^\n]", " ", m[0]), prose)


def markdown_targets(text: str) -> Iterator[tuple[int, str]]:
    """(line, target) of each link of `text` that names a path: not a URL, not an #anchor."""
    prose = markdown_prose(text)
    for pattern in (_INLINE_LINK, _REFERENCE):
        for match in pattern.finditer(prose):
            target = match[1].strip("<>")
            if target and not target.startswith("#") and not _SCHEME.match(target):
                yield prose.count("\n", 0, match.start()) + 1, target


def broken_markdown_links(root: Path, names: list[str]) -> list[str]:
    known, dirs = set(names), directories(names)
    found = []
    for name in names:
        if not name.endswith(".md") or not is_text(root / name):
            continue
        for line, target in markdown_targets((root / name).read_text(encoding="utf-8")):
            path = unquote(re.split(r"[#?]", target, maxsplit=1)[0])
            base = "" if path.startswith("/") else f"{PurePosixPath(name).parent}/"
            resolved = inside(base + path.lstrip("/"))
            if resolved is None or not tracked_target(resolved, known, dirs):
                found.append(f"{name}:{line}: ({target})")
    return found


# -- ../ in files whose paths are paths -------------------------------------------------------------
PATH_SUFFIXES = frozenset(
    {".yaml", ".yml", ".toml", ".cfg", ".ini", ".conf", ".j2", ".sh", ".html", ".service", ".in"}
)
_CLIMB = re.compile(r"(?<![\w.~/$-])((?:\.\./)+[^\s'\"`()\[\]{}<>,;|]*)")


def reads_paths(root: Path, name: str) -> bool:
    """Files in which a relative path is a path to read: config, templates, scripts, builds."""
    path = PurePosixPath(name)
    if path.suffix in PATH_SUFFIXES or path.name.startswith(("Dockerfile", "Containerfile", "Makefile")):
        return True
    if path.suffix:
        return False
    head = (root / name).read_bytes()[:128]
    return head.startswith(b"#!") and re.search(rb"\b(ba|da|z|k)?sh\b", head.split(b"\n")[0]) is not None


def climbing_paths(root: Path, names: list[str]) -> list[str]:
    found = []
    for name in names:
        if not is_text(root / name) or not reads_paths(root, name):
            continue
        base = PurePosixPath(name).parent
        for number, line in enumerate((root / name).read_text(errors="replace").splitlines(), 1):
            for match in _CLIMB.finditer(line):
                if inside(f"{base}/{match[1]}") is None:
                    found.append(f"{name}:{number}: {match[1]}")
    return found


# -- Python paths anchored on __file__ ----------------------------------------------------------------
def _depth_after(depth: int, parts: str) -> tuple[int, int]:
    """(depth after walking `parts`, the lowest depth on the way)."""
    lowest = depth
    for part in parts.split("/"):
        depth += -1 if part == ".." else 0 if part in ("", ".") else 1
        lowest = min(lowest, depth)
    return depth, lowest


class _Anchored:
    """Depth below the root (0: the root) of path expressions built from `__file__`."""

    def __init__(self, depth_of_file: int) -> None:
        self.file = depth_of_file
        self.names: dict[str, int] = {}
        self.climbs: set[int] = set()

    def depth(self, node: ast.expr) -> int | None:
        found = self._depth(node)
        if found is not None and found < 0:
            self.climbs.add(node.lineno)
        return found

    def _depth(self, node: ast.expr) -> int | None:
        if isinstance(node, ast.Name):
            return self.file if node.id == "__file__" else self.names.get(node.id)
        if isinstance(node, ast.Attribute) and node.attr == "parent":
            inner = self.depth(node.value)
            return None if inner is None else inner - 1
        if isinstance(node, ast.Subscript) and isinstance(node.value, ast.Attribute):
            if node.value.attr == "parents" and isinstance(node.slice, ast.Constant):
                inner = self.depth(node.value.value)
                if inner is None or not isinstance(node.slice.value, int):
                    return None
                return inner - 1 - node.slice.value
            return None
        if isinstance(node, ast.BinOp) and isinstance(node.op, ast.Div):
            return self._joined(node.left, [node.right])
        if isinstance(node, ast.Call):
            return self._call(node)
        return None

    def _joined(self, base: ast.expr, parts: list[ast.expr]) -> int | None:
        depth = self.depth(base)
        if depth is None:
            return None
        for part in parts:
            if not (isinstance(part, ast.Constant) and isinstance(part.value, str)):
                return None
            depth, lowest = _depth_after(depth, part.value)
            if lowest < 0:
                self.climbs.add(part.lineno)
        return depth

    def _call(self, node: ast.Call) -> int | None:
        func = node.func
        name = func.attr if isinstance(func, ast.Attribute) else func.id if isinstance(func, ast.Name) else ""
        if name in ("Path", "PurePath", "PosixPath", "abspath", "realpath", "normpath") and node.args:
            return self.depth(node.args[0])
        if name == "dirname" and node.args:
            inner = self.depth(node.args[0])
            return None if inner is None else inner - 1
        if name == "join" and node.args:
            return self._joined(node.args[0], node.args[1:])
        if isinstance(func, ast.Attribute) and name in ("resolve", "absolute", "expanduser"):
            return self.depth(func.value)
        if isinstance(func, ast.Attribute) and name == "joinpath":
            return self._joined(func.value, node.args)
        return None


def anchored_paths(root: Path, name: str) -> _Anchored:
    """The `__file__`-anchored paths of the Python file `name`, walked in source order."""
    tree = ast.parse((root / name).read_bytes(), name)
    anchored = _Anchored(len(PurePosixPath(name).parts))
    nodes = sorted(
        (n for n in ast.walk(tree) if isinstance(n, ast.expr | ast.Assign)),
        key=lambda n: (n.lineno, n.col_offset),
    )
    for node in nodes:  # a name is known before it is used
        if isinstance(node, ast.Assign):
            depth = anchored.depth(node.value)
            for target in node.targets:
                if isinstance(target, ast.Name) and depth is not None:
                    anchored.names[target.id] = depth
        else:
            anchored.depth(node)
    return anchored


def climbing_python(root: Path, names: list[str]) -> list[str]:
    found = []
    for name in names:
        if name.endswith(".py") and is_text(root / name):
            found += [f"{name}:{line}" for line in sorted(anchored_paths(root, name).climbs)]
    return found


CHECKS = {
    "symlinks": bad_symlinks,
    "markdown links": broken_markdown_links,
    "../ paths": climbing_paths,
    "python paths": climbing_python,
}


@pytest.mark.parametrize("check", sorted(CHECKS))
def test_the_repository_holds_everything_it_names(check: str) -> None:
    names = tracked_names()
    assert CHECKS[check](REPO, names) == []


def test_the_checks_see_the_repository() -> None:
    """Each check has something of this repository to look at (not one passes on nothing)."""
    names = tracked_names()
    assert [n for n in names if (REPO / n).is_symlink()]
    md = [t for n in names if n.endswith(".md") for t in markdown_targets((REPO / n).read_text())]
    assert md
    assert [n for n in names if is_text(REPO / n) and reads_paths(REPO, n)]
    assert anchored_paths(REPO, "tests/unit/test_self_contained.py").names["REPO"] == 0


# -- the checks on a made-up tree: each kind is caught --------------------------------------------
def _tree(root: Path, files: dict[str, str], links: dict[str, str]) -> list[str]:
    for name, text in files.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_text(text)
    for name, target in links.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).symlink_to(target)
    return sorted([*files, *links])


def test_each_check_catches_its_kind(tmp_path: Path) -> None:
    root = tmp_path / "repo"
    (tmp_path / "beside").mkdir()
    (tmp_path / "beside" / "x.md").write_text("outside\n")
    files = {
        "data/real.yaml": "a: 1\n",
        "docs/GUIDE.md": (
            "[ok](../data/real.yaml) [dir](../data) [self](#top) [web](https://example.org/x)\n"
            "[anchor](GUIDE.md#part) ![img](../data/real.yaml)\n"
            "[gone](missing.md) and [up](../../beside/x.md)\n"
            "[ref]: ../nowhere.txt\n"
            "`[not](a-link)` and\n\n```\n[code](fenced.md)\n```\n\n    [indented](code.md)\n"
        ),
        "manifests/m.yaml": "path: ../data/real.yaml\nother: ../../beside/x.md\n",
        "bin/run.sh": "#!/bin/sh\n. ../lib.sh\ncd ../../../elsewhere\n",
        "tools/go": "#!/usr/bin/env bash\nsource ../../beside/env\n",
        "pkg/mod.py": (
            "from pathlib import Path\nimport os\n"
            "ROOT = Path(__file__).resolve().parents[1]\n"
            "OK = ROOT / 'data' / 'real.yaml'\n"
            "UP = Path(__file__).resolve().parents[2]\n"
            "SIBLING = ROOT.parent / 'beside'\n"
            "DOTS = ROOT / '..' / 'repo'\n"
            "OLD = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), '..')\n"
            "ATTACK = '../../../etc/passwd'\n"
        ),
    }
    links = {"good": "data/real.yaml", "gooddir": "data", "out": "../beside/x.md", "abs": "/etc/hostname",
             "dangling": "data/none.yaml"}  # fmt: skip
    names = _tree(root, files, links)
    assert bad_symlinks(root, names) == [
        "abs -> /etc/hostname", "dangling -> data/none.yaml", "out -> ../beside/x.md"
    ]  # fmt: skip
    assert broken_markdown_links(root, names) == [
        "docs/GUIDE.md:3: (missing.md)",
        "docs/GUIDE.md:3: (../../beside/x.md)",
        "docs/GUIDE.md:4: (../nowhere.txt)",
    ]
    assert climbing_paths(root, names) == [
        "bin/run.sh:3: ../../../elsewhere",
        "manifests/m.yaml:2: ../../beside/x.md",
        "tools/go:2: ../../beside/env",
    ]
    assert climbing_python(root, names) == ["pkg/mod.py:5", "pkg/mod.py:6", "pkg/mod.py:7", "pkg/mod.py:8"]
