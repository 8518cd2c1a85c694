"""CKLB (STIG Viewer 3 checklist, format 1.0) per host, from the hardening role's catalogue and
the control statuses of a run. Pure: builds dicts; `write_checklist` is the one writer.

The catalogue (playbooks/roles/enclave_harden/files/controls.yml) is read from the verified bundle's
copy of the playbooks, never from the working tree, so the checklist describes exactly the
controls that ran. Rules are grouped per source STIG (Ubuntu 22.04, RHEL 9).
"""

from __future__ import annotations

import functools
import json
import uuid
from collections.abc import Mapping, Sequence
from importlib import resources
from pathlib import Path
from typing import Any

import jsonschema
import yaml

from enclave.errors import EnclaveError, UsageError
from enclave.provision.events import ControlResult
from enclave.provision.report import write_json

CATALOGUE = Path("roles/enclave_harden/files/controls.yml")
# DISA's STIG Viewer 3 CKLB 1.0 JSON Schema (SV3_CKLB_1_0_JSON_SCHEMA.json, a US government
# publication), kept without its description strings; every key, type, enum, required list and
# additionalProperties is as published.
SCHEMA = "schema/cklb-1.0.schema.json"
FIELDS = ("id", "title", "severity", "vuln", "rule", "srg", "cci", "scope", "check", "fix")
SEVERITIES = ("low", "medium", "high")
SCOPES = ("host", "kernel", "audit", "boot", "mount", "firewall")
# uuid5 namespace for stable IDs: the same host and rule get the same UUIDs on every run.
NAMESPACE = uuid.UUID("6f1d3c57-5a7e-4bb5-9a53-0e2c1d6e4c11")

STIGS: Mapping[str, Mapping[str, str]] = {
    "UBTU-22": {
        "stig_name": "Canonical Ubuntu 22.04 LTS Security Technical Implementation Guide",
        "display_name": "Canonical Ubuntu 22.04 LTS",
        "stig_id": "CAN_Ubuntu_22-04_LTS_STIG",
    },
    "RHEL-09": {
        "stig_name": "Red Hat Enterprise Linux 9 Security Technical Implementation Guide",
        "display_name": "Red Hat Enterprise Linux 9",
        "stig_id": "RHEL_9_STIG",
    },
}


def load_catalogue(playbooks: Path) -> list[dict[str, Any]]:
    """The controls, checked for shape; UsageError names the file and entry at fault."""
    path = playbooks / CATALOGUE
    try:
        doc = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (OSError, yaml.YAMLError) as exc:
        raise UsageError(f"{path}: cannot read the control catalogue: {exc}") from None
    entries = doc.get("enclave_harden_catalogue") if isinstance(doc, dict) else None
    if not isinstance(entries, list) or not entries:
        raise UsageError(f"{path}: no enclave_harden_catalogue list")
    seen: set[str] = set()
    for index, entry in enumerate(entries):
        where = f"{path}: enclave_harden_catalogue[{index}]"
        if not isinstance(entry, dict) or set(entry) != set(FIELDS):
            raise UsageError(f"{where}: needs exactly the fields {', '.join(FIELDS)}")
        if entry["id"][:7] not in STIGS or entry["id"] in seen:
            raise UsageError(f"{where}: id {entry['id']!r} is unknown or repeated")
        if entry["severity"] not in SEVERITIES or entry["scope"] not in SCOPES:
            raise UsageError(f"{where}: bad severity or scope")
        seen.add(entry["id"])
    return entries


def build_checklist(
    host: str,
    target: Mapping[str, str],
    catalogue: Sequence[Mapping[str, Any]],
    results: Mapping[str, ControlResult],
    comment: str,
) -> dict[str, Any]:
    """One CKLB document for `host`. `target`: address, fqdn and a comment for target_data."""
    checklist_id = uuid.uuid5(NAMESPACE, f"checklist:{host}")
    stigs = []
    for prefix, meta in STIGS.items():
        controls = [c for c in catalogue if str(c["id"]).startswith(prefix)]
        if not controls:
            continue
        stig_uuid = str(uuid.uuid5(NAMESPACE, f"stig:{host}:{meta['stig_id']}"))
        rules = [_rule(host, stig_uuid, c, results.get(str(c["id"]))) for c in controls]
        stigs.append(
            {
                "stig_name": meta["stig_name"],
                "display_name": meta["display_name"],
                "stig_id": meta["stig_id"],
                "release_info": "enclave_harden subset; rule revisions as in each rule_id",
                "uuid": stig_uuid,
                "reference_identifier": None,
                "size": len(rules),
                "rules": rules,
            }
        )
    return {
        "title": f"enclave_harden: {host}",
        "cklb_version": "1.0",
        "id": str(checklist_id),
        "active": False,
        "mode": 1,
        "has_path": True,
        "target_data": {
            "target_type": "Computing",
            "host_name": host,
            "ip_address": target.get("address", ""),
            "mac_address": "",
            "fqdn": target.get("fqdn", ""),
            "comments": comment,
            "role": "Member Server",
            "is_web_database": False,
            "technology_area": "UNIX OS",
            "web_db_site": "",
            "web_db_instance": "",
        },
        "stigs": stigs,
    }


def _rule(
    host: str, stig_uuid: str, control: Mapping[str, Any], result: ControlResult | None
) -> dict[str, Any]:
    status = result.status if result else "not_reviewed"
    details = result.details if result else "Not evaluated."
    return {
        "uuid": str(uuid.uuid5(NAMESPACE, f"rule:{host}:{control['id']}")),
        "stig_uuid": stig_uuid,
        "group_id": control["vuln"],
        "group_id_src": control["vuln"],
        "rule_id": control["rule"],
        "rule_id_src": control["rule"],
        "rule_version": control["id"],
        "rule_title": control["title"],
        "group_title": control["srg"],
        "severity": control["severity"],
        "weight": "10.0",
        "classification": "Unclassified",
        "check_content": control["check"],
        "fix_text": control["fix"],
        "discussion": "",
        "ccis": list(control["cci"]),
        "legacy_ids": [],
        "status": status,
        "finding_details": details,
        "comments": f"enclave_harden scope: {control['scope']}",
        "target_key": None,
        "stig_ref": None,
        "reference_identifier": None,
    }


def validate_checklist(doc: Mapping[str, Any]) -> None:
    """Check `doc` against DISA's STIG Viewer 3 CKLB 1.0 schema (shipped in
    enclave/provision/schema/). Every checklist is built by this module, so one that fails the
    schema is a bug in enclave: EnclaveError, exit 1, and nothing is written."""
    errors = sorted(_validator().iter_errors(doc), key=lambda e: list(e.absolute_path))
    if errors:
        first = errors[0]
        where = "/".join(str(p) for p in first.absolute_path) or "document"
        raise EnclaveError(f"CKLB checklist fails the STIG Viewer 3 schema at {where}: {first.message}")


@functools.cache
def _validator() -> jsonschema.Draft201909Validator:
    schema = json.loads(resources.files("enclave.provision").joinpath(SCHEMA).read_text("utf-8"))
    return jsonschema.Draft201909Validator(
        schema, format_checker=jsonschema.Draft201909Validator.FORMAT_CHECKER
    )


def write_checklist(path: Path, doc: Mapping[str, Any]) -> None:
    """Validate, then write atomically, keeping the key order the checklist was built in."""
    validate_checklist(doc)
    write_json(path, doc, sort_keys=False)
