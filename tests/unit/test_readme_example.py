"""The README's Python example runs as printed: real keys, a real root, a real bundle, admitted."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

from enclave.trust.root import TrustRoot
from tests.conftest import MANIFEST, Keys, make_root, write_inputs

REPO = Path(__file__).resolve().parents[2]


def example() -> str:
    text = (REPO / "README.md").read_text()
    section = text[text.index("## As a library") :]
    match = re.search(r"```python\n(.*?)```", section, re.S)
    assert match is not None, "the README's library section has no Python example"
    return match.group(1)


def test_the_readme_example_is_short() -> None:
    assert len(example().strip().splitlines()) <= 10


def test_the_readme_example_builds_and_admits_a_bundle(keys: Keys, tmp_path: Path) -> None:
    (tmp_path / "keys").mkdir()
    keys.ecdsa.write(tmp_path / "keys" / "integrator-a", None)
    keys.mldsa.write(tmp_path / "keys" / "integrator-b", None)
    make_root(keys, tmp_path / "root.json")
    write_inputs(tmp_path)
    (tmp_path / "bundle.yaml").write_text(MANIFEST.format(name="example", version="1.0.0", digest="sha384"))
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    done = subprocess.run(
        [sys.executable, "-c", example()], cwd=tmp_path, capture_output=True, text=True, timeout=300, env=env
    )
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert lines[-1].startswith("example 1.0.0 receipt {'seq': 0")
    assert any(line.startswith("signatures: 2 of threshold 2") for line in lines)
    assert (tmp_path / "published" / "content" / "weights" / "model.gguf").is_file()
    assert TrustRoot.load(tmp_path / "state" / "root.json").version == 1
