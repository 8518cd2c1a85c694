"""The main job, as a new user runs it: `enclave demo` end to end, then `--down`."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest

from enclave import demo

pytestmark = pytest.mark.integration


def test_demo_runs_the_lifecycle_and_cleans_up() -> None:
    result = subprocess.run(["enclave", "demo", "--json"], capture_output=True, text=True, timeout=900)
    assert result.returncode == 0, result.stderr
    doc = json.loads(result.stdout)
    outcomes = {step["step"]: step["result"] for step in doc["steps"]}
    refusal = next(r for r in outcomes.values() if "tampered copy refused" in r)
    assert "(exit 3)" in refusal and "content/weights/" in refusal and "digest mismatch" in refusal, refusal
    published = Path(doc["artefacts"]["published content"])
    gguf = published / "content" / "weights" / demo.GGUF
    assert gguf.stat().st_size == demo.model_weights().stat().st_size
    assert not (published.parent / "tampered").exists()
    down = subprocess.run(["enclave", "demo", "--down"], capture_output=True, text=True, timeout=120)
    assert down.returncode == 0 and not demo.WORK.exists()
