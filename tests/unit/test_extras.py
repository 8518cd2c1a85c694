"""A command whose optional part is not installed says which extra to install: one line, exit 2,
never a traceback (enclave/extras.py, mapped in enclave/cliout.py). The table of modules agrees
with pyproject.toml's extras."""

from __future__ import annotations

import importlib.metadata
import re
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

from enclave import cli
from enclave.extras import EXTRA_OF_MODULE

REPO = Path(__file__).resolve().parents[2]
OPTIONAL = ("provision", "runtime", "images", "evidence")


def _canonical(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def _extras() -> dict[str, set[str]]:
    """Extra -> the canonical names of the distributions pyproject.toml lists in it."""
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    found = {}
    for extra, requirements in project["optional-dependencies"].items():
        found[extra] = {_canonical(re.split(r"[\s<>=!~;\[]", r, maxsplit=1)[0]) for r in requirements}
    return found


def test_the_table_agrees_with_pyproject() -> None:
    extras = _extras()
    assert extras["all"] == {"enclave"} and set(OPTIONAL) <= set(extras)
    provided = importlib.metadata.packages_distributions()
    covered: dict[str, set[str]] = {extra: set() for extra in OPTIONAL}
    for module, extra in EXTRA_OF_MODULE.items():
        distributions = {_canonical(d) for d in provided[module]}
        assert distributions & extras[extra], f"{module} is not provided by a distribution of {extra}"
        covered[extra] |= distributions
    for extra in OPTIONAL:  # every distribution of an extra has a module in the table
        assert extras[extra] <= covered[extra], (extra, extras[extra] - covered[extra])
    core = {_canonical(re.split(r"[\s<>=!~;\[]", r, maxsplit=1)[0]) for r in _core()}
    assert not core & set().union(*(extras[e] for e in OPTIONAL))  # nothing optional is also core


def _core() -> list[str]:
    requirements: list[str] = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["dependencies"]
    return requirements


@pytest.mark.parametrize(("module", "extra"), sorted(EXTRA_OF_MODULE.items()))
def test_each_missing_module_names_its_extra(
    module: str, extra: str, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    def handler(_args: object) -> tuple[str, object]:
        raise ModuleNotFoundError(f"No module named '{module}.sub'", name=f"{module}.sub")

    monkeypatch.setattr(cli, "cmd_store_ls", handler)
    assert cli.main(["store", "ls"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "Traceback" not in err
    assert f"needs enclave[{extra}] ({module} is not installed)" in err
    assert f"pip install 'enclave[{extra}]'" in err


def test_a_missing_module_of_no_extra_is_a_bug(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    def handler(_args: object) -> tuple[str, object]:
        raise ModuleNotFoundError("No module named 'nowhere'", name="nowhere")

    monkeypatch.setattr(cli, "cmd_store_ls", handler)
    assert cli.main(["store", "ls"]) == 1
    assert "internal error: ModuleNotFoundError" in capsys.readouterr().err


# Real commands, each in a fresh interpreter where one module cannot be imported (None in
# sys.modules is what Python's import system treats as "not installed").
SERVE = ["gateway", "serve", "--policy", "p", "--upstream", "u", "--audit-log", "l", "--audit-key", "k"]
REAL = [
    ("docker", ["images", "build"]),
    ("aiohttp", SERVE),
    ("prometheus_client", SERVE),
    ("numpy", ["guard", "eval", "--corpus", "c", "--policy", "p"]),
    ("ansible_runner", ["provision", "--inventory", "i", "--bundle", "b"]),
    ("paramiko", ["preflight", "--inventory", "i"]),
]


@pytest.mark.parametrize(("module", "argv"), REAL, ids=[m for m, _ in REAL])
def test_real_commands_without_their_extra(module: str, argv: list[str], tmp_path: Path) -> None:
    code = f"import sys; sys.modules[{module!r}] = None; import enclave.cli as c; sys.exit(c.main({argv!r}))"
    proc = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, cwd=tmp_path, timeout=120, check=False
    )
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr.count("\n") == 1 and "Traceback" not in proc.stderr
    assert f"enclave[{EXTRA_OF_MODULE[module]}] ({module} is not installed)" in proc.stderr
