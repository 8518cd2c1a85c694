"""The floor plan (issue 17): enclave's packages stand in layers, and no import leads back up.

A module imports only from its own layer or lower ones, and the packages of one layer import
each other without a cycle. Every import counts: at the top of a module, inside a function, and
under `if TYPE_CHECKING:`. A package's *unit* is its first name below `enclave` (`bundle` for
enclave.bundle.verify); modules directly in enclave/ are units of their own, `__init__` is
enclave/__init__.py. LAYERS is the one statement of the order; README.md ("Where things live")
lists it too, and `test_the_readme_lists_the_same_layers` keeps the two the same.
"""

from __future__ import annotations

import ast
import re
from collections.abc import Iterator, Sequence
from pathlib import Path

import enclave

REPO = Path(__file__).resolve().parents[2]
PACKAGE = Path(enclave.__file__).resolve().parent

LAYERS: tuple[tuple[str, ...], ...] = (  # lowest first
    (
        "__init__",
        "errors",
        "fileio",
        "strictjson",
        "yamldoc",
        "progress",
        "resources",
        "extras",
        "canonical",
        "normalise",
        "lazy",
    ),
    ("trust",),
    ("bundle",),
    ("admission",),
    ("images",),
    ("guard",),
    ("identity",),
    ("runtime",),
    ("guardtools",),
    ("testbed",),
    ("provision",),
    ("evidence",),
    ("kit",),
    ("cli", "clihelp", "cliout", "demo"),
)
README_BEGIN, README_END = "<!-- layers: begin -->", "<!-- layers: end -->"

Import = tuple[Path, int, str, str]  # file, line, importing module, imported module


def modules(package_dir: Path) -> dict[str, Path]:
    """Dotted name -> file of every module of the package (subpackages with an __init__.py)."""
    found: dict[str, Path] = {}

    def walk(directory: Path, prefix: str) -> None:
        for path in sorted(directory.iterdir()):
            if path.is_dir() and (path / "__init__.py").is_file():
                walk(path, f"{prefix}.{path.name}")
            elif path.suffix == ".py":
                found[prefix if path.name == "__init__.py" else f"{prefix}.{path.stem}"] = path

    walk(package_dir, package_dir.name)
    return found


def imports(package_dir: Path) -> Iterator[Import]:
    """Every import of a module of the package by one of its modules, wherever it stands."""
    known = modules(package_dir)
    root = package_dir.name
    for name, path in known.items():
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        for node in ast.walk(ast.parse(path.read_bytes(), str(path))):
            targets: list[str] = []
            if isinstance(node, ast.Import):
                targets = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:  # relative: from the importing module's package, level - 1 up
                    parts = package.split(".")
                    base = ".".join(parts[: len(parts) - node.level + 1] + ([base] if base else []))
                targets = [f"{base}.{a.name}" if f"{base}.{a.name}" in known else base for a in node.names]
            for target in dict.fromkeys(targets):
                if target == root or target.startswith(root + "."):
                    yield path, node.lineno, name, target


def unit(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "__init__"


def violations(package_dir: Path, layers: Sequence[Sequence[str]]) -> list[str]:
    """One line per import against the layer order: upward, of or by a unit no layer names, or
    part of a cycle between the units of one layer. Each names file, line and both modules."""
    rank = {name: level for level, names in enumerate(layers) for name in names}
    found = list(imports(package_dir))
    edges = {(unit(a), unit(b)) for _, _, a, b in found if unit(a) != unit(b)}
    problems = []
    for path, line, importer, imported in found:
        src, dst = unit(importer), unit(imported)
        if src == dst:
            continue
        where = f"{path.relative_to(package_dir.parent)}:{line}: {importer} imports {imported}"
        if src not in rank or dst not in rank:
            missing = src if src not in rank else dst
            problems.append(f"{where}: {missing!r} is in no layer")
        elif rank[dst] > rank[src]:
            problems.append(f"{where}: {src} (layer {rank[src] + 1}) is below {dst} (layer {rank[dst] + 1})")
        elif rank[dst] == rank[src] and reaches(edges, dst, src):
            problems.append(f"{where}: a cycle between {src} and {dst} (layer {rank[src] + 1})")
    return problems


def reaches(edges: set[tuple[str, str]], start: str, goal: str) -> bool:
    seen, todo = {start}, [start]
    while todo:
        here = todo.pop()
        if here == goal:
            return True
        for a, b in edges:
            if a == here and b not in seen:
                seen.add(b)
                todo.append(b)
    return False


def cycles(package_dir: Path) -> list[list[str]]:
    """The units that import each other round a cycle, whatever their layers (sorted groups)."""
    edges = {(unit(a), unit(b)) for _, _, a, b in imports(package_dir) if unit(a) != unit(b)}
    units = sorted({u for edge in edges for u in edge})
    groups = {frozenset(v for v in units if reaches(edges, u, v) and reaches(edges, v, u)) for u in units}
    return sorted(sorted(g) for g in groups if len(g) > 1)


# -- the real package -----------------------------------------------------------------------------
def test_enclave_imports_only_down_the_layers() -> None:
    assert violations(PACKAGE, LAYERS) == []


def test_enclave_has_no_cycle_between_packages() -> None:
    assert cycles(PACKAGE) == []


def test_every_unit_of_enclave_is_in_exactly_one_layer() -> None:
    named = [name for names in LAYERS for name in names]
    assert len(named) == len(set(named))
    assert set(named) == {unit(name) for name in modules(PACKAGE)}


def test_the_readme_lists_the_same_layers() -> None:
    text = (REPO / "README.md").read_text("utf-8")
    section = text.split("## Where things live", 1)[1].split("\n## ", 1)[0]
    assert section.count(README_BEGIN) == 1 and section.count(README_END) == 1
    block = section.split(README_BEGIN, 1)[1].split(README_END, 1)[0]
    listed = []
    for line in filter(None, (line.strip() for line in block.splitlines())):
        match = re.fullmatch(r"(\d+)\. (.+)", line)
        assert match, f"README layer line {line!r} is not `N. `name` ...`"
        assert int(match[1]) == len(listed) + 1, line
        listed.append(set(re.findall(r"`([^`]+)`", match[2])))
    assert listed == [set(names) for names in LAYERS]


# -- the checker itself ---------------------------------------------------------------------------
SYNTHETIC = {
    "__init__.py": "",
    "floor.py": "import os\n",
    "low/__init__.py": "",
    "low/top.py": "from pkg.high.api import thing  # upward, at the top\nfrom pkg import floor\n",
    "low/inner.py": "def f():\n    import pkg.high.api  # upward, in a function\n    return pkg\n",
    "low/typed.py": (
        "from typing import TYPE_CHECKING\n\n"
        "if TYPE_CHECKING:\n    from pkg.high import api  # upward, typing only\n"
    ),
    "low/relative.py": "from ..high import api  # upward, relative\nfrom . import top\n",
    "left/__init__.py": "from pkg.right import b\n",  # left and right share a layer: a cycle
    "right/__init__.py": "def g():\n    from pkg.left import x\n",
    "right/b.py": "from pkg import low\n",
    "side/__init__.py": "from pkg import right\n",  # same layer as right, no cycle: allowed
    "high/__init__.py": "",
    "high/api.py": "from pkg.low import top  # downward\nimport pkg.low.inner\nimport pkg.floor\nthing = 1\n",
    "stray.py": "from pkg import floor\n",  # in no layer
}
SYNTHETIC_LAYERS = (("__init__", "floor"), ("low",), ("left", "right", "side"), ("high",))


def make_tree(root: Path) -> Path:
    package = root / "pkg"
    for name, text in SYNTHETIC.items():
        (package / name).parent.mkdir(parents=True, exist_ok=True)
        (package / name).write_text(text)
    return package


def test_the_checker_finds_every_kind_of_import_against_the_order(tmp_path: Path) -> None:
    found = violations(make_tree(tmp_path), SYNTHETIC_LAYERS)
    assert sorted(found) == sorted(
        [
            "pkg/left/__init__.py:1: pkg.left imports pkg.right.b: a cycle between left and right (layer 3)",
            "pkg/low/inner.py:2: pkg.low.inner imports pkg.high.api: low (layer 2) is below high (layer 4)",
            "pkg/low/relative.py:1: pkg.low.relative imports pkg.high.api: "
            "low (layer 2) is below high (layer 4)",
            "pkg/low/top.py:1: pkg.low.top imports pkg.high.api: low (layer 2) is below high (layer 4)",
            "pkg/low/typed.py:4: pkg.low.typed imports pkg.high.api: low (layer 2) is below high (layer 4)",
            "pkg/right/__init__.py:2: pkg.right imports pkg.left: a cycle between right and left (layer 3)",
            "pkg/stray.py:1: pkg.stray imports pkg.floor: 'stray' is in no layer",
        ]
    )
    assert not [line for line in found if line.startswith(("pkg/high/", "pkg/side/", "pkg/right/b.py"))]


def test_the_checker_sees_cycles_across_layers_too(tmp_path: Path) -> None:
    package = make_tree(tmp_path)
    assert cycles(package) == [["high", "low"], ["left", "right"]]
    (package / "low" / "top.py").write_text("")  # only the function and TYPE_CHECKING imports left
    assert cycles(package) == [["high", "low"], ["left", "right"]]
    for name in ("inner.py", "typed.py", "relative.py"):
        (package / "low" / name).write_text("")
    (package / "right" / "__init__.py").write_text("")
    assert cycles(package) == []
    assert violations(package, SYNTHETIC_LAYERS) == [
        "pkg/stray.py:1: pkg.stray imports pkg.floor: 'stray' is in no layer"
    ]
