"""`enclave demo` is a list of small steps over one shared context, and a library caller: it
never imports the CLI (issue 17). The whole run is tests/integration/test_demo.py."""

from __future__ import annotations

import ast
import inspect
from pathlib import Path

import pytest

from enclave import demo
from enclave.trust.keys import PASSPHRASE_ENV


def test_the_demo_never_imports_the_cli() -> None:
    tree = ast.parse(Path(demo.__file__).read_text())
    imported = {
        alias.name if isinstance(node, ast.Import) else f"{node.module}"
        for node in ast.walk(tree)
        if isinstance(node, ast.Import | ast.ImportFrom)
        for alias in node.names
    }
    assert not {name for name in imported if name.startswith(("enclave.cli", "enclave.clihelp"))}


def test_steps_are_small_functions_of_the_shared_context() -> None:
    titles = [title for title, _ in demo.STEPS]
    assert len(set(titles)) == len(titles)
    for title, step in demo.STEPS:
        assert title.split(". ", 1)[0].isdigit(), title
        (parameter,) = inspect.signature(step).parameters.values()
        assert parameter.annotation in ("Demo", demo.Demo), step
        assert len(inspect.getsourcelines(step)[0]) <= 60, f"{step.__name__} is not a small step"


def test_run_walks_the_steps_in_order_and_sums_them_up(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(PASSPHRASE_ENV, "test passphrase")  # run() sets a default otherwise
    seen: list[str] = []

    def first(d: demo.Demo) -> str:
        seen.append("first")
        return "one\ntwo"

    def second(d: demo.Demo) -> str:
        seen.append(f"second {d.work.name}")
        d.report.artefacts["thing"] = "here"
        return "three"

    said: list[str] = []
    report = demo.run(said.append, tmp_path / "work", [("1. first", first), ("2. second", second)])
    assert seen == ["first", "second work"]
    assert [(t, r) for t, r, _s in report.steps] == [("1. first", "one\ntwo"), ("2. second", "three")]
    assert said[:3] == ["==> 1. first", "    one", "    two"]
    assert "summary" in said and "  thing                here" in said
    # A second run starts afresh in its own (marked) work directory; a foreign one is left alone.
    demo.run(said.append, tmp_path / "work", [])
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    with pytest.raises(Exception, match="was not made by enclave demo"):
        demo.run(said.append, foreign, [])
