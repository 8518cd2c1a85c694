"""The main job, as a new user runs it: `enclave demo` end to end (the gateways provisioned with
mutual TLS, called with the official openai client), then `--down`."""

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
    # Over mutual TLS with the official openai client, as an analyst with no approver key.
    assert "gateways: mutual TLS 1.3 on https://127.0.0.11:8080, https://127.0.0.12:8080" in outcomes
    assert "allowed  -> 200, the model says:" in outcomes
    assert "refused  -> 400, rule refuse.us-person-surveillance" in outcomes
    assert "denied by approver-3 -> denied" in outcomes
    assert "approved by approver-2 (ML-DSA) -> completed" in outcomes
    assert "the analyst's call returns 200, the model says:" in outcomes
    assert "no certificate -> 401 authentication_required" in outcomes
    assert "audit log verified:" in outcomes and "receipts verified:" in outcomes
    # The verified log names who asked and who approved.
    assert "  analyst (mtls): allow 1, approve 1, deny 1, hold 2, refuse 2" in outcomes
    assert "  approver-1 (mtls): approval 1" in outcomes and "  approver-2 (mtls): approval 1" in outcomes
    assert "  no identity: refuse 1" in outcomes
    report = json.loads(Path(doc["artefacts"]["provision report"]).read_text())
    assert report["gateway"]["tls"] == "mutual" and set(report["gateway"]["hosts"]) == {"host1", "host2"}
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
