"""The main job, as a new user runs it: `enclave demo` end to end (the gateways provisioned with
mutual TLS, called with the official openai client), its evidence package checked from its own
files, verified and then tampered with, then `--down`."""

from __future__ import annotations

import base64
import json
import shutil
import subprocess
from collections import defaultdict
from pathlib import Path
from typing import Any

import pytest

from enclave import demo

pytestmark = pytest.mark.integration


def _artefacts(said: list[str]) -> dict[str, str]:
    """The summary's artefacts, as printed: `  NAME (padded to 20) PATH`, up to the `open` line."""
    start = said.index("artefacts") + 1
    end = next(i for i, line in enumerate(said) if line.startswith("open "))
    return {line[2:22].rstrip(): line[23:] for line in said[start:end]}


def _receipts(log: Path) -> list[dict[str, Any]]:
    """Each line of a receipt log: a DSSE envelope over the receipt's JSON."""
    lines = log.read_bytes().splitlines()
    return [json.loads(base64.b64decode(json.loads(line)["payload"])) for line in lines]


def _held_outcomes(records: Path) -> dict[str, set[str]]:
    """Per request id, the decisions the gateway recorded for it."""
    decisions: dict[str, set[str]] = defaultdict(set)
    for line in records.read_text().splitlines():
        record = json.loads(line)
        if record.get("event") == "decision":
            decisions[record["id"]].add(record["decision"])
    return decisions


def _check_package(package: Path, root: str, scratch: Path) -> None:
    """Issue 19: from the package's own files, the refused and admitted bundles and the gateway
    driven through allow, refuse, hold-approve and hold-expire; it verifies; one byte changed in
    one file fails with exit 3 naming that file."""
    receipts = _receipts(package / "receipts" / "receipts.log")
    refused = [r for r in receipts if r["result"] == "failed"]
    assert [(r["bundle"]["name"], r["exitCode"]) for r in refused] == [("assistant", 3)]
    assert "digest mismatch" in refused[0]["error"]["message"]
    assert any(r["result"] == "verified" and r["mode"] == "admission" for r in receipts)
    (records,) = package.glob("audit/*/records.jsonl")
    decisions = _held_outcomes(records)
    seen = set().union(*decisions.values())
    assert {"allow", "refuse", "hold", "approve", "deny", "expire"} <= seen
    held = [d for d in decisions.values() if "hold" in d]
    assert {"hold", "approve"} in held and {"hold", "expire"} in held and {"hold", "deny"} in held
    totals = json.loads((package / "summary.json").read_text())["totals"]
    assert totals["refused"] == 1 and totals["admitted"] >= 1, totals

    verify = ["enclave", "evidence", "verify"]
    ok = subprocess.run([*verify, str(package), "--trust", root], capture_output=True, text=True, timeout=300)
    assert ok.returncode == 0, ok.stderr
    copy = scratch / package.name
    shutil.copytree(package, copy)
    changed = copy / "receipts" / "receipts.log"
    data = bytearray(changed.read_bytes())
    data[len(data) // 2] ^= 1
    changed.write_bytes(bytes(data))
    bad = subprocess.run([*verify, str(copy), "--trust", root], capture_output=True, text=True, timeout=300)
    assert bad.returncode == 3, bad.stderr
    (line,) = bad.stderr.strip().splitlines()
    assert "receipts/receipts.log: changed" in line, line


def test_demo_runs_the_whole_lifecycle_and_cleans_up(docker_engine: None, tmp_path: Path) -> None:
    result = subprocess.run(["enclave", "demo"], capture_output=True, text=True, timeout=1500)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    said = result.stdout.splitlines()
    outcomes = result.stdout
    assert "tampered copy refused (exit 3)" in outcomes and "digest mismatch" in outcomes
    assert "failed (exit 3), signed by the audit key; the stored root and rollback" in outcomes
    # Over mutual TLS with the official openai client, as an analyst with no approver key.
    assert "gateways: mutual TLS 1.3 on https://127.0.0.11:8080, https://127.0.0.12:8080" in outcomes
    assert "allowed  -> 200, the model says:" in outcomes
    assert "refused  -> 400, rule refuse.us-person-surveillance" in outcomes
    # Paraphrases no rule matches: decided by the learned guard, which the output names.
    assert "refused  -> 400, rule guard.refuse-surveillance, layer guard" in outcomes
    assert "held     -> 202, rule guard.hold-targeting, layer guard" in outcomes
    assert "left for nobody to approve" in outcomes
    assert "denied by approver-3 -> denied" in outcomes
    assert "approved by approver-2 (ML-DSA) -> completed" in outcomes
    assert "the analyst's call returns 200, the model says:" in outcomes
    assert f"nobody approved it in {demo.HOLD_SECONDS} s (timeout means deny)" in outcomes
    assert "no certificate -> 401 authentication_required" in outcomes
    assert "audit log verified:" in outcomes and "receipts verified:" in outcomes
    # The verified log names who asked and who approved.
    assert "  analyst (mtls): allow 1, approve 1, deny 1, expire 1, hold 3, refuse 2" in outcomes
    assert "  approver-1 (mtls): approval 1" in outcomes and "  approver-2 (mtls): approval 1" in outcomes
    assert "  no identity: refuse 1" in outcomes
    artefacts = _artefacts(said)
    report = json.loads(Path(artefacts["provision report"]).read_text())
    assert report["gateway"]["tls"] == "mutual" and set(report["gateway"]["hosts"]) == {"host1", "host2"}
    published = Path(artefacts["published bundle"])
    weights = published / "content" / "weights" / demo.GGUF
    assert weights.stat().st_size == demo.model_weights().stat().st_size
    assert list(Path(artefacts["CKLB checklists"]).glob("*.cklb"))
    # It ends with the evidence package and the path of its report.
    index = Path(artefacts["evidence report"])
    assert said[-1] == f"open {index}" and index.name == "index.html" and index.is_file()
    _check_package(index.parent, artefacts["trust root"], tmp_path)
    down = subprocess.run(["enclave", "demo", "--down"], capture_output=True, text=True, timeout=300)
    assert down.returncode == 0, down.stderr
    assert not demo.WORK.exists()
