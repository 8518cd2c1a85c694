"""The main job, as a new user runs it: `enclave demo` end to end, then `--down`."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest

from enclave import demo

pytestmark = pytest.mark.integration


def test_demo_runs_the_whole_lifecycle_and_cleans_up(docker_engine: None) -> None:
    result = subprocess.run(["enclave", "demo", "--json"], capture_output=True, text=True, timeout=1500)
    assert result.returncode == 0, result.stderr[-3000:]
    doc = json.loads(result.stdout)
    outcomes = "\n".join(step["result"] for step in doc["steps"])
    assert "tampered copy refused (exit 3)" in outcomes and "digest mismatch" in outcomes
    assert "allowed  -> 200, the model says:" in outcomes
    assert "refused  -> 400, rule refuse.us-person-surveillance" in outcomes
    assert "approved by approver-2 (ML-DSA) -> completed" in outcomes
    assert "audit log verified:" in outcomes and "receipts verified:" in outcomes
    published = Path(doc["artefacts"]["published bundle"])
    weights = published / "content" / "weights" / demo.GGUF
    assert weights.stat().st_size == demo.model_weights().stat().st_size
    assert list(Path(doc["artefacts"]["CKLB checklists"]).glob("*.cklb"))
    index = Path(doc["artefacts"]["evidence report"])
    check = ["enclave", "evidence", "verify", str(index.parent), "--trust", doc["artefacts"]["trust root"]]
    assert index.is_file() and subprocess.run(check, capture_output=True, timeout=300).returncode == 0
    down = subprocess.run(["enclave", "demo", "--down"], capture_output=True, text=True, timeout=300)
    assert down.returncode == 0, down.stderr
    assert not demo.WORK.exists()
