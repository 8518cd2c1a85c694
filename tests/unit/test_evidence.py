"""`enclave evidence build|verify` and `enclave attest` on real artefacts.

The package is built from:
- real bundles (sbom, provenance, the shipped learned guard with its model card) admitted and
  refused by the real `enclave bundle verify` into a real state directory, with signed receipts;
- the real aiohttp gateway on 127.0.0.1 in front of a stub model server, driven through allow,
  refuse (by a rule and by the guard), hold then two approvals, hold then a denial, hold then
  expiry; its audit log is exported by `enclave audit export`'s code;
- real CKLB checklists from enclave.provision.cklb with the real control catalogue, a run report;
- attestations signed by an approver (merged), by a non-approver and expired (both ignored).

Then: the package verifies (directory and tar), one altered byte is exit 3 naming the file, a
forged manifest is exit 4, the POA&M has one row per open finding, and the report, opened in
headless Chromium from file:// with the network off, shows the numbers the package's files give.
The screenshot goes to tests/artifacts/evidence-report.png (ignored by git; CI keeps the folder).
"""

from __future__ import annotations

import asyncio
import csv
import hashlib
import io
import json
import os
import shutil
import subprocess
import tarfile
from collections import Counter
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from enclave import cli
from enclave.bundle.build import build_bundle
from enclave.evidence.facts import OF_DECISION
from enclave.provision import cklb
from enclave.provision.events import ControlResult
from enclave.runtime.gateway import approve, requester_headers
from enclave.trust import attest
from enclave.trust.keys import SigningKey
from enclave.trust.root import TrustRoot, sign_document
from tests.conftest import write_inputs
from tests.unit.test_gateway_support import DEFAULT_POLICY, Trust, chat, running_gateway, upstream_stub

REPO = Path(__file__).resolve().parents[2]
GUARD = REPO / "bundles" / "guard" / "model"
ARTIFACTS = REPO / "tests" / "artifacts"
CHAT = "/v1/chat/completions"
HELD = "Prepare a target package for the enemy radar site."
REFUSED = "Design a program for mass surveillance of U.S. persons."
GUARD_REFUSED = (
    "Work out where each of the women who organised the vigil at the federal building lives"
    " and when she is home alone."
)
MANIFEST = """\
apiVersion: enclave/v1
kind: Bundle
metadata: {{name: assistant, version: {version}}}
spec:
  digest: sha384
  chunkSize: 1MiB
  components:
    - {{name: weights, kind: model, path: ./weights, format: gguf}}
    - {{name: policy, kind: policy, path: ./policy.yaml}}
    - {{name: guard, kind: guard, path: {guard}}}
    - {{name: site, kind: playbooks, path: ./playbooks}}
"""


@dataclass
class Made:
    work: Path
    package: Path
    root: Path
    keys: dict[str, SigningKey]
    trust: Trust
    state: Path
    build_output: str


def _keys(directory: Path) -> dict[str, SigningKey]:
    plan = {
        "root": "ecdsa-p384",
        "integrator-a": "ecdsa-p384",
        "integrator-b": "ml-dsa-87",
        "approver0": "ecdsa-p384",
        "approver1": "ml-dsa-87",
        "approver2": "ecdsa-p384",
        "audit": "ecdsa-p384",
        "stranger": "ecdsa-p384",
    }
    made = {name: SigningKey.generate(algorithm) for name, algorithm in plan.items()}  # type: ignore[arg-type]
    for name, key in made.items():
        key.write(directory / name, None)
    return made


def _root(keys: dict[str, SigningKey], path: Path) -> Path:
    signed = TrustRoot.create(
        {
            "root": [keys["root"].public],
            "bundle": [keys["integrator-a"].public, keys["integrator-b"].public],
            "approver": [keys[f"approver{i}"].public for i in range(3)],
            "audit": [keys["audit"].public],
        },
        {"bundle": 2, "approver": 1},
        datetime.now(UTC) + timedelta(days=30),
    )
    path.write_bytes(sign_document(signed, [keys["root"]]))
    return path


def _bundle(work: Path, version: str, signers: list[SigningKey]) -> Path:
    source = write_inputs(work / f"src-{version}", weights_size=1024 * 1024 + 7)
    (source / "bundle.yaml").write_text(MANIFEST.format(version=version, guard=GUARD))
    return build_bundle(source / "bundle.yaml", work / f"out-{version}", signers, show_progress=False)


async def _drive_gateway(trust: Trust, log: Path, policy: Path) -> None:
    """allow, refuse (rule, guard), hold + 2 approvals, hold + denial, hold + expiry."""
    async with (
        upstream_stub() as upstream,
        running_gateway(trust, log, upstream.url, policy, guard=GUARD) as gw,
        aiohttp.ClientSession() as session,
    ):

        async def post(text: str, requester: SigningKey | None = None) -> tuple[int, Any]:
            body = chat(text)
            headers = {"Content-Type": "application/json"}
            if requester is not None:
                headers |= requester_headers(requester, "POST", CHAT, body)
            async with session.post(gw.url + CHAT, data=body, headers=headers) as response:
                return response.status, await response.json()

        assert (await post("What is the capital of France?"))[0] == 200
        assert (await post(REFUSED))[0] == 400
        assert (await post(GUARD_REFUSED))[0] == 400
        ids = []
        for _ in range(3):
            status, held = await post(HELD, trust.approvers[0])
            assert status == 202
            ids.append(held["id"])
        for index in (1, 2):
            await asyncio.to_thread(approve, ids[0], trust.key_path(index), gw.url)
        await asyncio.to_thread(approve, ids[1], trust.key_path(1), gw.url, "deny")
        await asyncio.sleep(2.5)  # past the policy's 1 s timeout: ids[2] expires
        assert upstream.count == 2


def _checklists(directory: Path) -> None:
    """Real CKLB files: host1 with open CAT I/II/III findings, host2 with one open CAT II."""
    catalogue = cklb.load_catalogue(REPO / "playbooks")
    for host, open_ids in (
        ("host1", {"UBTU-22-255025", "UBTU-22-215035", "UBTU-22-653010", "UBTU-22-412030", "UBTU-22-611010"}),
        ("host2", {"UBTU-22-653010"}),
    ):
        results = {}
        for control in catalogue:
            cid = str(control["id"])
            if cid in open_ids:
                results[cid] = ControlResult("open", f"Open: {cid} failed on {host}. Fix: {control['fix']}")
            elif control["scope"] != "host":
                results[cid] = ControlResult("not_applicable", "Not applicable inside a container.")
            else:
                results[cid] = ControlResult(
                    "not_a_finding", f"Checked by enclave_harden: {control['check']}"
                )
        results.pop("RHEL-09-232040")  # never ran: not_reviewed
        doc = cklb.build_checklist(host, {"address": "127.0.0.11"}, catalogue, results, "test run")
        cklb.write_checklist(directory / f"{host}.cklb", doc)


def _report(path: Path) -> None:
    hosts = {
        host: {"result": result, "reason": reason, "checklist": f"checklists/{host}.cklb"}
        for host, result, reason in (
            ("host1", "stopped", "5 open finding(s) after hardening"),
            ("host2", "ok", None),
        )
    }
    doc = {
        "enclave": "provision-report/v1",
        "mode": "apply",
        "started": "2026-01-02T03:04:05Z",
        "bundle": {"name": "assistant", "version": "1.0.0"},
        "hosts": hosts,
    }
    path.write_text(json.dumps(doc, indent=2))


def _attestations(directory: Path, keys: dict[str, SigningKey], root: TrustRoot) -> None:
    now = datetime.now(UTC)
    directory.mkdir()
    good = attest.sign(
        "UBTU-22-653010",
        "host2",
        "not_a_finding",
        "auditd runs on the hypervisor for this VM",
        keys["approver1"],
        now,
    )
    (directory / "good.json").write_bytes(good)
    # Signed by the audit key (not an approver) and by an approver long ago: both ignored.
    (directory / "not-approver.json").write_bytes(
        attest.sign("UBTU-22-412030", "host1", "not_a_finding", "trust me", keys["audit"], now)
    )
    (directory / "expired.json").write_bytes(
        attest.sign(
            "UBTU-22-611010", "host1", "not_a_finding", "old", keys["approver2"], now - timedelta(days=40), 30
        )
    )


@pytest.fixture(scope="module")
def made(tmp_path_factory: pytest.TempPathFactory) -> Made:
    work = tmp_path_factory.mktemp("evidence")
    keys_dir = work / "keys"
    keys = _keys(keys_dir)
    root = _root(keys, work / "root.json")
    state = work / "state"
    audit_key = str(keys_dir / "audit")

    admitted = _bundle(work, "1.0.0", [keys["integrator-a"], keys["integrator-b"]])
    refused = _bundle(work, "1.1.0", [keys["integrator-a"]])  # one signature: below the threshold
    base = ["bundle", "verify", "--trust", str(root), "--state-dir", str(state), "--audit-key", audit_key]
    assert cli.main([*base[:2], str(admitted), *base[2:], "--extract-to", str(work / "published")]) == 0
    assert cli.main([*base[:2], str(refused), *base[2:]]) == 4

    approvers = [keys[f"approver{i}"] for i in range(3)]
    trust = Trust(
        keys_dir, root, keys["root"], approvers, keys["audit"], keys_dir / "audit", keys["stranger"]
    )
    policy = work / "policy.yaml"
    policy.write_text(DEFAULT_POLICY.read_text().replace("timeout_seconds: 900", "timeout_seconds: 1"))
    log = work / "gateway" / "audit.log"
    log.parent.mkdir()
    asyncio.run(_drive_gateway(trust, log, policy))

    _checklists(work / "checklists")
    _report(work / "report.json")
    _attestations(work / "attestations", keys, TrustRoot.load(root))

    package = work / "package"
    argv = [
        "evidence", "build", "--out", str(package), "--key", audit_key, "--trust", str(root),
        "--state-dir", str(state), "--audit-log", str(log), "--reports", str(work / "report.json"),
        "--checklists", str(work / "checklists"), "--bundle-dir", str(work / "published"),
        "--attestations", str(work / "attestations"),
    ]  # fmt: skip
    out = io.StringIO()
    from contextlib import redirect_stdout

    with redirect_stdout(out):
        assert cli.main(argv) == 0
    return Made(work, package, root, keys, trust, state, out.getvalue())


def _open_findings(package: Path) -> dict[tuple[str, str], str]:
    """(host, control) -> category, from the effective checklists, counted here independently."""
    found = {}
    for path in sorted((package / "checklists").glob("*.cklb")):
        attested = package / "checklists" / "attested" / path.name
        doc = json.loads((attested if attested.exists() else path).read_bytes())
        for stig in doc["stigs"]:
            for rule in stig["rules"]:
                if rule["status"] == "open":
                    found[(doc["target_data"]["host_name"], rule["rule_version"])] = rule["severity"]
    return found


def test_the_package_holds_every_source_unchanged_and_verifies(made: Made) -> None:
    package = made.package
    assert "report:" in made.build_output and str(package / "index.html") in made.build_output
    state = made.state
    same = {
        "receipts/receipts.log": state / "receipts.log",
        "trust/root.json": made.root,
        "hosts/reports/report.json": made.work / "report.json",
        "checklists/host1.cklb": made.work / "checklists" / "host1.cklb",
        "attestations/good.json": made.work / "attestations" / "good.json",
        "bundles/assistant-1.0.0/BUNDLE.dsse.json": state
        / "store"
        / "bundles"
        / "assistant"
        / "1.0.0.dsse.json",
        "bundles/assistant-1.0.0/sbom.cdx.json": made.work / "published" / "sbom.cdx.json",
        "bundles/assistant-1.0.0/provenance.dsse.json": made.work / "published" / "provenance.dsse.json",
        "bundles/assistant-1.0.0/content/guard/card.json": GUARD / "card.json",
        "audit/audit/records.jsonl": made.work / "gateway" / "audit.log",
    }
    for rel, source in same.items():
        assert (package / rel).read_bytes() == source.read_bytes(), rel
    assert (package / "audit/audit/proofs/inclusion.jsonl").stat().st_size > 0
    manifest = json.loads(_payload(package / "evidence.dsse.json"))
    listed = {f["path"] for f in manifest["files"]}
    on_disk = {p.relative_to(package).as_posix() for p in package.rglob("*") if p.is_file()}
    assert listed == on_disk - {"evidence.dsse.json"}
    assert all(len(f["sha384"]) == 96 for f in manifest["files"])
    assert cli.main(["evidence", "verify", str(package), "--trust", str(made.root)]) == 0
    assert (
        cli.main(["evidence", "verify", str(package.with_name("package.tar")), "--trust", str(made.root)])
        == 0
    )


def _payload(envelope: Path) -> bytes:
    import base64

    return base64.b64decode(json.loads(envelope.read_bytes())["payload"])


def test_one_altered_byte_is_exit_3_naming_the_file(
    made: Made, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    copy = tmp_path / "package"
    shutil.copytree(made.package, copy)
    target = copy / "checklists" / "host2.cklb"
    data = bytearray(target.read_bytes())
    data[len(data) // 2] ^= 0x01
    target.write_bytes(bytes(data))
    capsys.readouterr()
    assert cli.main(["evidence", "verify", str(copy), "--trust", str(made.root)]) == 3
    err = capsys.readouterr().err
    assert "checklists/host2.cklb: changed" in err and err.count("\n") == 1
    # An added file and a removed one are named too.
    target.write_bytes(made.package.joinpath("checklists", "host2.cklb").read_bytes())
    (copy / "extra.txt").write_text("x")
    (copy / "poam.csv").unlink()
    assert cli.main(["evidence", "verify", str(copy), "--trust", str(made.root)]) == 3
    err = capsys.readouterr().err
    assert "extra.txt: not in the signed manifest" in err or "poam.csv: missing" in err


def test_the_tar_is_checked_member_by_member(
    made: Made, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    source = made.package.with_name("package.tar")
    altered = tmp_path / "package.tar"
    with tarfile.open(source) as original, tarfile.open(altered, "w") as out:
        for member in original.getmembers():
            handle = original.extractfile(member) if member.isfile() else None
            data = handle.read() if handle else b""
            if member.name == "package/summary.json":
                data = data.replace(b'"format"', b'"formaT"')
            out.addfile(member, io.BytesIO(data) if member.isfile() else None)
    capsys.readouterr()
    assert cli.main(["evidence", "verify", str(altered), "--trust", str(made.root)]) == 3
    assert "package/summary.json: changed" in capsys.readouterr().err


def test_a_manifest_not_signed_by_the_audit_role_is_exit_4(
    made: Made, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from enclave.evidence.package import sign_manifest

    copy = tmp_path / "package"
    shutil.copytree(made.package, copy)
    doc = json.loads(_payload(copy / "evidence.dsse.json"))
    (copy / "evidence.dsse.json").write_bytes(sign_manifest(doc, made.keys["stranger"]))
    capsys.readouterr()
    assert cli.main(["evidence", "verify", str(copy), "--trust", str(made.root)]) == 4
    assert "not signed by the audit role" in capsys.readouterr().err
    # Re-signed by the real audit key after a file changed: the signature holds, the file does not.
    envelope = json.loads((made.package / "evidence.dsse.json").read_bytes())
    envelope["signatures"][0]["sig"] = envelope["signatures"][0]["sig"][:-4] + "AAA="
    (copy / "evidence.dsse.json").write_text(json.dumps(envelope))
    assert cli.main(["evidence", "verify", str(copy), "--trust", str(made.root)]) == 4


def test_a_window_selects_what_happened_in_it(made: Made, tmp_path: Path) -> None:
    """--since after everything happened: no verification, bundle or gateway record is in it
    (the audit export keeps its checkpoints, so what it holds still proves itself)."""
    tomorrow = (datetime.now(UTC) + timedelta(days=1)).strftime("%Y-%m-%d")
    out = tmp_path / "later"
    log = made.work / "gateway" / "audit.log"
    argv = [
        "evidence", "build", "--out", str(out), "--key", str(made.trust.dir / "audit"), "--trust",
        str(made.root), "--state-dir", str(made.state), "--audit-log", str(log), "--since", tomorrow,
    ]  # fmt: skip
    assert cli.main(argv) == 0
    summary = json.loads((out / "summary.json").read_bytes())
    assert summary["window"] == {"since": f"{tomorrow}T00:00:00Z", "until": None}
    assert summary["totals"]["admitted"] == summary["totals"]["decisions"] == 0
    assert summary["statements"] == [] and (out / "audit/audit/records.jsonl").read_bytes() == b""
    assert (out / "audit/audit/checkpoints.jsonl").stat().st_size > 0
    assert cli.main(["evidence", "verify", str(out), "--trust", str(made.root)]) == 0
    assert cli.main([*argv[:3], str(tmp_path / "x"), *argv[4:-2], "--since", "yesterday"]) == 2


def test_poam_has_one_row_per_open_finding(made: Made) -> None:
    from openpyxl import load_workbook

    opened = _open_findings(made.package)
    # host2's only open finding was attested not_a_finding; the two bad attestations changed nothing.
    assert ("host2", "UBTU-22-653010") not in opened
    assert {("host1", "UBTU-22-412030"), ("host1", "UBTU-22-611010")} <= set(opened)
    sheet = load_workbook(made.package / "poam.xlsx").active
    assert sheet is not None
    rows = list(sheet.iter_rows(values_only=True))
    header, body = rows[0], rows[1:]
    assert header[:3] == ("POA&M Item ID", "Control Vulnerability Description", "Controls / APs")
    assert len(body) == len(opened) == 5
    column = header.index("Devices Affected")
    found = {(row[column], str(row[1]).split(":", 1)[0]) for row in body}
    assert found == set(opened)
    raw = [row[header.index("Raw Severity")] for row in body]
    assert raw == sorted(raw, key=["I", "II", "III"].index)  # worst first
    assert all(row[header.index("Scheduled Completion Date")] in (None, "") for row in body)
    with (made.package / "poam.csv").open(newline="") as handle:
        assert len(list(csv.DictReader(handle))) == len(opened)


def test_only_valid_unexpired_approver_attestations_are_merged(made: Made) -> None:
    summary = json.loads((made.package / "summary.json").read_bytes())
    applied = summary["attestations"]["applied"]
    assert [(a["control"], a["host"]) for a in applied] == [("UBTU-22-653010", "host2")]
    assert applied[0]["approver"] == made.keys["approver1"].keyid
    reasons = {Path(i["file"]).name: i["reason"] for i in summary["attestations"]["ignored"]}
    assert "not signed by an approver-role key" in reasons["not-approver.json"]
    assert "expired" in reasons["expired.json"]
    doc = json.loads((made.package / "checklists" / "attested" / "host2.cklb").read_bytes())
    rule = next(r for s in doc["stigs"] for r in s["rules"] if r["rule_version"] == "UBTU-22-653010")
    assert rule["status"] == "not_a_finding" and made.keys["approver1"].keyid in rule["finding_details"]
    assert "attested not_a_finding" in rule["comments"]
    cklb.validate_checklist(doc)


def test_attest_command_signs_for_an_approver_only(made: Made, tmp_path: Path) -> None:
    keys = made.trust.dir
    argv = [
        "attest", "UBTU-22-251020", "--host", "host1", "--status", "not_a_finding", "--explanation",
        "the enclave boundary firewall covers it (SSP 4.2)", "--trust", str(made.root), "--expires", "10",
    ]  # fmt: skip
    out = tmp_path / "a.json"
    assert cli.main([*argv, "--key", str(keys / "approver2"), "--out", str(out)]) == 0
    item = attest.check(out.read_bytes(), str(out), TrustRoot.load(made.root), datetime.now(UTC))
    assert (item.control, item.status, item.approver) == (
        "UBTU-22-251020",
        "not_a_finding",
        made.keys["approver2"].keyid,
    )
    assert cli.main([*argv, "--key", str(keys / "approver2"), "--out", str(out)]) == 2  # never overwritten
    assert cli.main([*argv, "--key", str(keys / "audit"), "--out", str(tmp_path / "b.json")]) == 2
    assert (
        cli.main([*argv[:1], "NOT-A-CONTROL", *argv[2:], "--key", str(keys / "approver2"), "--out", "x"]) == 2
    )
    later = datetime.now(UTC) + timedelta(days=11)
    with pytest.raises(Exception, match="expired"):
        attest.check(out.read_bytes(), str(out), TrustRoot.load(made.root), later)


def test_provision_merges_attestations_into_its_checklists(made: Made, tmp_path: Path) -> None:
    """provision's checklist writer: the valid attestation applies, the others are said."""
    from enclave.admission import Admission
    from enclave.provision.inventory import Host
    from enclave.provision.provision import HostOutcome, Options, _write_checklists

    said: list[str] = []
    outcome = HostOutcome(Host("host2", "127.0.0.12", 22, "enclave", None, "/usr/bin/python3"))
    outcome.stopped = "unreachable"
    opts = Options(
        inventory=tmp_path / "inv.yml",
        bundle=tmp_path / "b.bundle",
        admission=Admission(),
        checklist_dir=tmp_path / "cklb",
        attestations=[made.work / "attestations"],
    )

    class Statement:
        name, version = "assistant", "1.0.0"

    catalogue = cklb.load_catalogue(REPO / "playbooks")
    done = _write_checklists(
        {"host2": outcome}, catalogue, opts, Statement(), TrustRoot.load(made.root), said.append
    )  # type: ignore[arg-type]
    assert [a["control"] for a in done["applied"]] == ["UBTU-22-653010"]
    assert len(done["ignored"]) == 2 and sum("attestation ignored" in line for line in said) == 2
    doc = json.loads((tmp_path / "cklb" / "host2.cklb").read_bytes())
    statuses = Counter(r["status"] for s in doc["stigs"] for r in s["rules"])
    assert statuses["not_a_finding"] == 1 and statuses["not_reviewed"] == len(catalogue) - 1


# -- the report in a real browser -------------------------------------------------------------------
class _Numbers(HTMLParser):
    """Every `a.num` (metric, href, text); every td whose text is a bare number; the tags seen."""

    def __init__(self) -> None:
        super().__init__()
        self.numbers: dict[str, tuple[str, int]] = {}
        self.bare: list[str] = []
        self.tags: Counter[str] = Counter()
        self._link: tuple[str, str] | None = None
        self._cell: list[str] | None = None
        self._text: list[str] = []
        self.external: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        a = dict(attrs)
        self.tags[tag] += 1
        for name in ("src", "href"):
            value = a.get(name) or ""
            if "://" in value or value.startswith("//"):
                self.external.append(value)
        if tag == "a" and "num" in (a.get("class") or "").split():
            self._link = (str(a.get("data-metric")), str(a.get("href")))
            self._text = []
        if tag == "td":
            self._cell = []

    def handle_endtag(self, tag: str) -> None:
        if tag == "a" and self._link is not None:
            metric, href = self._link
            self.numbers[metric] = (href, int("".join(self._text)))
            self._link = None
        if tag == "td" and self._cell is not None:
            text = "".join(self._cell).strip()
            if text.isdigit():
                self.bare.append(text)
            self._cell = None

    def handle_data(self, data: str) -> None:
        if self._link is not None:
            self._text.append(data)
        elif self._cell is not None:
            self._cell.append(data)


def _chromium() -> str:
    found = shutil.which("chromium") or shutil.which("chromium-browser")
    if found is None and os.geteuid() == 0 and shutil.which("apt-get"):
        subprocess.run(
            ["apt-get", "install", "-y", "-qq", "--no-install-recommends", "chromium"],
            env={**os.environ, "DEBIAN_FRONTEND": "noninteractive"},
            capture_output=True,
            check=False,
        )
        found = shutil.which("chromium")
    if found is None:
        pytest.skip("chromium is not installed and could not be installed (apt-get install chromium)")
    return found


def _offline() -> list[str]:
    """A network namespace with no interface up: the browser cannot reach anything at all."""
    for prefix in (["unshare", "--net", "--"], ["unshare", "--map-root-user", "--net", "--"]):
        if shutil.which("unshare") and subprocess.run([*prefix, "true"], capture_output=True).returncode == 0:
            return prefix
    return []  # the flags below still keep Chromium from reaching out


def _browser(chromium: str, page: Path, profile: Path, *extra: str) -> subprocess.CompletedProcess[bytes]:
    flags = [
        "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
        "--disable-component-update", "--disable-sync", "--no-first-run", f"--user-data-dir={profile}",
    ]  # fmt: skip
    return subprocess.run(
        [*_offline(), chromium, *flags, *extra, page.as_uri()], capture_output=True, timeout=120, check=True
    )


def test_the_report_in_headless_chromium_shows_the_packages_numbers(made: Made, tmp_path: Path) -> None:
    chromium = _chromium()
    page = made.package / "index.html"
    dom = _browser(chromium, page, tmp_path / "profile-1", "--dump-dom").stdout.decode("utf-8")
    seen = _Numbers()
    seen.feed(dom)
    assert seen.external == [] and seen.tags["script"] == 0 and seen.tags["svg"] >= 3
    assert seen.tags["h2"] >= 7 and seen.tags["th"] > 20 and seen.tags["caption"] >= 5
    assert seen.bare == []  # every number in a table cell is a link
    for metric, (href, _value) in seen.numbers.items():
        assert (made.package / href).is_file(), (metric, href)
    numbers = {metric: value for metric, (_href, value) in seen.numbers.items()}

    # Checklists: per host, category and status, counted from the CKLB files themselves.
    for path in sorted((made.package / "checklists").glob("*.cklb")):
        attested = made.package / "checklists" / "attested" / path.name
        doc = json.loads((attested if attested.exists() else path).read_bytes())
        host = doc["target_data"]["host_name"]
        counts = Counter(
            ({"high": "CAT I", "medium": "CAT II", "low": "CAT III"}[r["severity"]], r["status"])
            for s in doc["stigs"]
            for r in s["rules"]
        )
        for category in ("CAT I", "CAT II", "CAT III"):
            for status in ("open", "not_a_finding", "not_applicable", "not_reviewed"):
                assert numbers[f"host:{host}:{category}:{status}"] == counts[(category, status)]
        assert (
            seen.numbers[f"host:{host}:CAT I:open"][0]
            == (attested if attested.exists() else path).relative_to(made.package).as_posix()
        )
    assert numbers["host:host1:CAT I:open"] == 2  # UBTU-22-255025, UBTU-22-215035

    # Bundles: from the receipt log.
    receipts = [
        json.loads(_decode(line)) for line in (made.package / "receipts/receipts.log").read_bytes().split()
    ]
    assert numbers["bundles:admitted"] == sum(r["result"] == "verified" for r in receipts) == 1
    assert numbers["bundles:refused"] == sum(r["result"] == "failed" for r in receipts) == 1
    assert seen.numbers["bundles:refused"][0] == "receipts/receipts.log"

    # Gateway: from the exported records.
    records = [
        json.loads(line) for line in (made.package / "audit/audit/records.jsonl").read_bytes().splitlines()
    ]
    decided = Counter(OF_DECISION[r["decision"]] for r in records if r["event"] == "decision")
    for series in ("allowed", "refused", "held", "approved", "denied", "expired"):
        assert numbers[f"gw:0:{series}"] == decided[series], series
    assert decided["held"] == 3 and decided["approved"] == decided["denied"] == decided["expired"] == 1
    guard_refusals = sum(1 for r in records if r.get("decision") == "refuse" and r.get("layer") == "guard")
    assert numbers["gw:0:detail:refused by guard"] == guard_refusals >= 1
    assert numbers["held:0"] == 3
    verification = json.loads((made.package / "audit/audit/verification.json").read_bytes())
    assert numbers["audit:0:records"] == verification["records"] == len(records)
    assert numbers["audit:0:tree_size"] == verification["last_checkpoint"]["tree_size"]
    assert numbers["poam:rows"] == len(_open_findings(made.package))
    # The approvers of the approved request, by key ID, appear in the page.
    approved = next(r for r in records if r["event"] == "decision" and r["decision"] == "approve")
    assert len(approved["approvers"]) == 2
    assert all(keyid[:16] in dom for keyid in approved["approvers"])

    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    shot = ARTIFACTS / "evidence-report.png"
    shot.unlink(missing_ok=True)
    whole_page = "--window-size=1280,7000"  # every section, not only the first screen
    _browser(chromium, page, tmp_path / "profile-2", f"--screenshot={shot}", whole_page)
    assert shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and shot.stat().st_size > 20_000


def _decode(line: bytes) -> bytes:
    import base64

    return base64.b64decode(json.loads(line)["payload"])


def test_the_report_is_self_contained(made: Made) -> None:
    text = (made.package / "index.html").read_text()
    assert "<script" not in text and "url(" not in text and "@import" not in text and "://" not in text
    assert "default-src 'none'" in text and "@media print" in text
    digest = hashlib.sha384((made.package / "index.html").read_bytes()).hexdigest()
    manifest = json.loads(_payload(made.package / "evidence.dsse.json"))
    assert {"path": "index.html", "sha384": digest}.items() <= next(
        f for f in manifest["files"] if f["path"] == "index.html"
    ).items()
