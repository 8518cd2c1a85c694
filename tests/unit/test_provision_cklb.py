"""CKLB checklists validate against DISA's STIG Viewer 3 schema (shipped in
enclave/provision/schema/), built from the real role catalogue."""

from __future__ import annotations

import json
from pathlib import Path

import jsonschema
import pytest

from enclave.errors import EnclaveError, UsageError
from enclave.provision import cklb
from enclave.provision.events import ControlResult

REPO = Path(__file__).resolve().parents[2]
SCHEMA = REPO / "enclave" / "provision" / "schema" / "cklb-1.0.schema.json"
PLAYBOOKS = REPO / "playbooks"


def validator() -> jsonschema.Draft201909Validator:
    schema = json.loads(SCHEMA.read_text())
    return jsonschema.Draft201909Validator(
        schema, format_checker=jsonschema.Draft201909Validator.FORMAT_CHECKER
    )


def test_catalogue_has_at_least_30_stig_controls() -> None:
    catalogue = cklb.load_catalogue(PLAYBOOKS)
    assert len(catalogue) >= 30
    assert {c["id"][:7] for c in catalogue} == {"UBTU-22", "RHEL-09"}
    for c in catalogue:
        assert (
            c["vuln"].startswith("V-")
            and c["rule"].startswith(c["vuln"].replace("V-", "SV-"))
            and c["rule"].endswith("_rule")
        )
        assert c["srg"].startswith("SRG-OS-") and all(x.startswith("CCI-") for x in c["cci"])


def test_checklist_validates_and_carries_every_status(tmp_path: Path) -> None:
    catalogue = cklb.load_catalogue(PLAYBOOKS)
    statuses = ["open", "not_a_finding", "not_applicable", "not_reviewed"]
    results = {c["id"]: ControlResult(statuses[i % 4], f"details {i}") for i, c in enumerate(catalogue)}
    doc = cklb.build_checklist(
        "host1", {"address": "127.0.0.11", "fqdn": "host1"}, catalogue, results, "test run"
    )
    validator().validate(doc)
    rules = [r for stig in doc["stigs"] for r in stig["rules"]]
    assert len(rules) == len(catalogue) == sum(s["size"] for s in doc["stigs"])
    assert {r["status"] for r in rules} == set(statuses)
    first = next(r for r in rules if r["rule_version"] == catalogue[0]["id"])
    assert first["group_id"] == catalogue[0]["vuln"] and first["status"] == "open"
    # Stable identities: the same host gets the same checklist and rule UUIDs on every run.
    again = cklb.build_checklist("host1", {"address": "127.0.0.11"}, catalogue, results, "again")
    assert (
        again["id"] == doc["id"]
        and again["stigs"][0]["rules"][0]["uuid"] == doc["stigs"][0]["rules"][0]["uuid"]
    )
    path = tmp_path / "out" / "host1.cklb"
    cklb.write_checklist(path, doc)
    assert json.loads(path.read_text()) == doc and not list(path.parent.glob(".*"))


def test_the_schema_check_is_real() -> None:
    catalogue = cklb.load_catalogue(PLAYBOOKS)
    doc = cklb.build_checklist("h", {}, catalogue, {}, "")
    validator().validate(doc)  # no results: every rule not_reviewed, still valid
    doc["stigs"][0]["rules"][0]["status"] = "passed"
    with pytest.raises(jsonschema.ValidationError, match="'passed' is not one of"):
        validator().validate(doc)
    doc = cklb.build_checklist("h", {}, catalogue, {}, "")
    doc["id"] = "not-a-uuid"
    with pytest.raises(jsonschema.ValidationError, match="is not a 'uuid'"):
        validator().validate(doc)


def test_a_checklist_failing_the_schema_is_never_written(tmp_path: Path) -> None:
    catalogue = cklb.load_catalogue(PLAYBOOKS)
    doc = cklb.build_checklist("h", {}, catalogue, {}, "")
    doc["stigs"][0]["rules"][0]["severity"] = "catastrophic"
    path = tmp_path / "h.cklb"
    with pytest.raises(EnclaveError, match=r"schema at stigs/0/rules/0/severity: 'catastrophic'") as info:
        cklb.write_checklist(path, doc)
    assert type(info.value).exit_code == 1  # enclave built it: a bug, not bad input
    assert list(tmp_path.iterdir()) == []


def test_a_broken_catalogue_is_refused(tmp_path: Path) -> None:
    path = tmp_path / cklb.CATALOGUE
    path.parent.mkdir(parents=True)
    path.write_text("enclave_harden_catalogue:\n  - {id: UBTU-22-255040, title: x}\n")
    with pytest.raises(UsageError, match=r"enclave_harden_catalogue\[0\]: needs exactly the fields"):
        cklb.load_catalogue(tmp_path)
    path.write_text("other: 1\n")
    with pytest.raises(UsageError, match="no enclave_harden_catalogue list"):
        cklb.load_catalogue(tmp_path)
