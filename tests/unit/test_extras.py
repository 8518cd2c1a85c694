"""A command whose optional part is not installed says which extra to install: one line, exit 2,
never a traceback (enclave/extras.py, mapped in enclave/cliout.py). The table of modules agrees
with pyproject.toml's extras."""

from __future__ import annotations

import importlib.metadata
import re
import subprocess
import sys
import tomllib
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from enclave import cli
from enclave.extras import EXTRA_OF_MODULE
from enclave.provision import cklb
from enclave.trust.keys import SigningKey
from enclave.trust.root import TrustRoot, sign_document

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


# The modules of every other extra: `evidence build` runs with none of them (docs/OPERATIONS.md 15).
OTHER_EXTRAS = sorted(m for m, extra in EXTRA_OF_MODULE.items() if extra != "evidence")


def _evidence_inputs(work: Path) -> list[str]:
    """An audit key, a trust root with an audit role and one real CKLB checklist (read with
    enclave.provision.cklb, the module that once pulled paramiko in): `evidence build` argv."""
    keys = {name: SigningKey.generate("ecdsa-p384") for name in ("root", "bundle", "audit")}
    keys["audit"].write(work / "audit", None)
    signed = TrustRoot.create(
        {name: [key.public] for name, key in keys.items()},
        {},
        datetime.now(UTC) + timedelta(days=30),
        hybrid_roles=(),
    )
    (work / "root.json").write_bytes(sign_document(signed, [keys["root"]]))
    catalogue = cklb.load_catalogue(REPO / "playbooks")
    (work / "checklists").mkdir()
    doc = cklb.build_checklist("host1", {"address": "127.0.0.11"}, catalogue, {}, "extras test")
    cklb.write_checklist(work / "checklists" / "host1.cklb", doc)
    return ["evidence", "build", "--out", str(work / "package"), "--key", str(work / "audit"),
            "--trust", str(work / "root.json"), "--checklists", str(work / "checklists")]  # fmt: skip


def _without(modules: list[str], argv: list[str], cwd: Path) -> subprocess.CompletedProcess[str]:
    code = (
        f"import sys\nfor m in {modules!r}: sys.modules[m] = None\n"
        f"import enclave.cli as c; sys.exit(c.main({argv!r}))"
    )
    return subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, cwd=cwd, timeout=120, check=False
    )


def test_evidence_build_needs_only_the_evidence_extra(tmp_path: Path) -> None:
    argv = _evidence_inputs(tmp_path)
    without_others = _without(OTHER_EXTRAS, argv, tmp_path)
    assert without_others.returncode == 0, without_others.stderr
    assert (tmp_path / "package" / "poam.xlsx").is_file()
    assert (tmp_path / "package" / "checklists" / "host1.cklb").is_file()
    argv[argv.index("--out") + 1] = str(tmp_path / "again")
    without_openpyxl = _without(["openpyxl"], argv, tmp_path)
    assert without_openpyxl.returncode == 2, without_openpyxl.stderr
    assert "enclave[evidence] (openpyxl is not installed)" in without_openpyxl.stderr.splitlines()[-1]
    assert not (tmp_path / "again").exists()


def test_provision_imports_without_its_extra_and_names_it_on_use() -> None:
    code = (
        "import sys\nsys.modules['paramiko'] = None\nimport enclave.provision as p\n"
        "import enclave.provision.cklb, enclave.provision.report\n"
        "try:\n    p.provision\nexcept ModuleNotFoundError as e:\n    print(e.name)\n"
        "from enclave.provision import Options"
    )
    proc = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=False
    )
    last = proc.stderr.splitlines()[-1]  # `from enclave.provision import Options`: the same error
    assert proc.stdout == "paramiko\n" and last.startswith("ModuleNotFoundError") and "paramiko" in last
    from enclave.provision import Options, provision  # installed: the function, not the submodule

    assert (
        callable(provision)
        and not isinstance(provision, type(sys))
        and Options.__module__.endswith(".provision")
    )


def test_the_install_table_lists_every_extra_and_what_it_brings() -> None:
    """docs/OPERATIONS.md 15, "What to install": one row per extra but dev, naming its
    distributions as pyproject.toml does; the core row names the core's."""
    text = (REPO / "docs" / "OPERATIONS.md").read_text(encoding="utf-8")
    rows = dict(re.findall(r"^\| `enclave(\[\w+\])?` \|[^|]*\|\s*([^|]*?)\s*\|$", text, re.MULTILINE))
    extras = _extras()
    assert set(rows) == {"", *(f"[{e}]" for e in extras if e != "dev")}
    named = {
        key: {_canonical(n) for n in re.split(r",\s*", value.strip()) if n} for key, value in rows.items()
    }
    for extra in OPTIONAL:
        assert named[f"[{extra}]"] == extras[extra], extra
    assert named["[all]"] == set()  # "everything"
    assert named[""] == {_canonical(re.split(r"[\s<>=!~;\[]", r, maxsplit=1)[0]) for r in _core()}
