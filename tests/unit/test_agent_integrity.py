"""The agent's integrity check on a real published bundle tree: every kind of change is named."""

from __future__ import annotations

import base64
import json
import os
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from enclave.bundle.digest import FileDigest
from enclave.bundle.statement import Member
from enclave.errors import IntegrityError, TrustError
from enclave.runtime.agent.integrity import (
    check_integrity,
    compare_digest,
    compare_tree,
    load_statement,
    mode_acceptable,
    scan_tree,
)
from enclave.runtime.agent.results import CheckResult, Finding
from enclave.trust.root import TrustRoot
from tests.conftest import BuildFn, Keys
from tests.unit.test_agent_support import WEIGHTS, Site, deploy, flip_byte

MIB = 1 << 20


@pytest.fixture
def site(keys: Keys, build: BuildFn, tmp_path: Path) -> Site:
    return deploy(keys, build, tmp_path)


def check(site: Site, now: datetime | None = None) -> CheckResult:
    counted: list[int] = []
    result, _ = check_integrity(
        site.tree, TrustRoot.load(site.root), now or datetime.now(UTC), on_bytes=counted.append
    )
    if result.result == "pass":
        assert sum(counted) == result.data["bytes_hashed"]
    return result


def found(result: CheckResult) -> set[tuple[str, str]]:
    return {(f.kind, f.name) for f in result.findings}


def test_untouched_tree_passes_and_every_byte_is_hashed(site: Site) -> None:
    result = check(site)
    assert result.result == "pass", result.lines()
    files = [p for p in site.tree.rglob("*") if p.is_file() and p.name != "BUNDLE.dsse.json"]
    assert result.data["bytes_hashed"] == sum(p.stat().st_size for p in files)
    assert result.data["bundle"] == "demo" and result.data["files"] == len(files) >= 6
    assert len(result.data["signers"]) == 2
    assert not result.failed and result.error is None


def test_one_flipped_weights_byte_is_named_with_its_chunk(site: Site) -> None:
    flip_byte(site.weights, 2 * MIB + 4242)
    result = check(site)
    assert result.result == "fail" and result.error is IntegrityError
    assert found(result) == {("changed", WEIGHTS)}
    assert "chunk 2 of 4 (bytes 2097152-3145727)" in result.findings[0].detail


def test_missing_extra_and_resized_files(site: Site) -> None:
    (site.tree / "content/weights/config.json").unlink()
    (site.tree / "content/weights/extra.bin").write_bytes(b"not signed")
    (site.tree / "content/site/empty-dir").mkdir()
    (site.tree / "sitecustomize.py").write_text("import os\n")
    with (site.tree / "content/site/site.yml").open("ab") as handle:
        handle.write(b"- hosts: evil\n")
    result = check(site)
    assert found(result) == {
        ("missing", "content/weights/config.json"),
        ("extra", "content/weights/extra.bin"),
        ("extra", "content/site/empty-dir"),
        ("extra", "sitecustomize.py"),
        ("changed", "content/site/site.yml"),
    }
    resized = next(f for f in result.findings if f.kind == "changed")
    assert "bytes on disk" in resized.detail and "signed" in resized.detail


def test_an_extra_directory_with_files_names_the_files(site: Site) -> None:
    (site.tree / "content/plugins").mkdir()
    (site.tree / "content/plugins/a.so").write_bytes(b"\x7fELF")
    assert found(check(site)) == {("extra", "content/plugins/a.so")}


def test_mode_and_type_changes(site: Site) -> None:
    os.chmod(site.tree / "content/policy/policy.yaml", 0o755)
    target = site.tree / "content/weights/config.json"
    target.unlink()
    target.symlink_to("/etc/passwd")  # a symlink is never followed, even to a readable file
    result = check(site)
    assert found(result) == {("mode", "content/policy/policy.yaml"), ("type", "content/weights/config.json")}
    assert "mode 0755, signed 0644" in result.findings[0].detail + result.findings[1].detail


def test_a_read_only_copy_of_the_tree_passes(site: Site) -> None:
    """What `enclave provision` leaves on a host: every file without its write bits."""
    for path in site.tree.rglob("*"):
        if path.is_file():
            path.chmod(path.stat().st_mode & 0o555)
    result = check(site)
    assert result.result == "pass", result.lines()


def test_an_exec_bit_on_a_read_only_copy_is_still_a_finding(site: Site) -> None:
    policy = site.tree / "content/policy/policy.yaml"
    policy.chmod(0o555)  # write bits gone (allowed), exec bits added (not)
    result = check(site)
    assert found(result) == {("mode", "content/policy/policy.yaml")}
    assert result.error is IntegrityError and "mode 0555, signed 0644" in result.findings[0].detail


def test_a_writable_copy_of_a_read_only_signed_file_is_a_finding(site: Site) -> None:
    """Bundles sign 0644/0755 (FORMAT.md), so a 0444-signed member is built here: the rule is
    that dropping write bits is the one allowed difference, never adding them."""
    verified = load_statement(site.tree, TrustRoot.load(site.root), datetime.now(UTC))
    name = "content/weights/config.json"
    members = tuple(replace(m, mode=0o444) if m.name == name else m for m in verified.statement.members)
    statement = replace(verified.statement, members=members)
    (site.tree / name).chmod(0o444)
    findings, _ = compare_tree(statement, scan_tree(site.tree, 1000)[0])
    assert findings == []
    (site.tree / name).chmod(0o644)  # looser than signed: someone made it writable
    findings, _ = compare_tree(statement, scan_tree(site.tree, 1000)[0])
    assert [(f.kind, f.name, f.detail) for f in findings] == [("mode", name, "mode 0644, signed 0444")]


@pytest.mark.parametrize(
    ("found_mode", "signed", "ok"),
    [
        (0o644, 0o644, True),
        (0o444, 0o644, True),  # the host's read-only copy
        (0o555, 0o755, True),
        (0o400, 0o600, True),
        (0o644, 0o444, False),  # write bit added
        (0o200, 0o000, False),
        (0o755, 0o644, False),  # exec bits added
        (0o555, 0o644, False),
        (0o544, 0o644, False),  # the owner's exec bit alone
        (0o440, 0o644, False),  # narrower than read-only-signed is still not the signed mode
        (0o4444, 0o644, False),  # setuid
    ],
)
def test_mode_acceptable_allows_only_dropping_write_bits(found_mode: int, signed: int, ok: bool) -> None:
    assert mode_acceptable(found_mode, signed) is ok


def test_a_directory_of_the_bundle_replaced_by_a_symlink(site: Site) -> None:
    (site.tree / "content/site").rename(site.tree.parent / "moved-site")
    (site.tree / "content/site").symlink_to(site.tree.parent / "moved-site")
    result = check(site)
    kinds = {f.kind for f in result.findings}
    assert ("type", "content/site") in found(result) and kinds <= {"type", "missing"}


def test_a_tampered_payload_fails_the_signatures_before_any_file_is_read(site: Site) -> None:
    path = site.tree / "BUNDLE.dsse.json"
    doc = json.loads(path.read_bytes())
    statement = json.loads(base64.b64decode(doc["payload"]))
    statement["predicate"]["members"][0]["mode"] = "0755"
    doc["payload"] = base64.b64encode(json.dumps(statement).encode()).decode()
    path.write_text(json.dumps(doc))
    flip_byte(site.weights, 10)  # not reported: nothing is trusted after a signature failure
    result = check(site)
    assert result.result == "fail" and result.error is TrustError
    assert found(result) == {("signature", "BUNDLE.dsse.json")}
    assert "bundle signatures not accepted" in result.summary


def test_a_dropped_signature_breaks_the_threshold(site: Site) -> None:
    path = site.tree / "BUNDLE.dsse.json"
    doc = json.loads(path.read_bytes())
    doc["signatures"] = doc["signatures"][:1]
    path.write_text(json.dumps(doc))
    result = check(site)
    assert result.error is TrustError and "threshold" in result.summary


def test_a_missing_or_garbled_envelope_is_a_trust_failure(site: Site) -> None:
    path = site.tree / "BUNDLE.dsse.json"
    raw = path.read_bytes()
    path.write_bytes(raw[:-10])
    assert check(site).error is TrustError
    path.unlink()
    result = check(site)
    assert result.error is TrustError and "missing" in result.summary


def test_an_expired_root_fails_closed(site: Site) -> None:
    result = check(site, datetime.now(UTC) + timedelta(days=400))
    assert result.error is TrustError and "expired" in result.summary


def test_a_missing_tree_could_not_be_checked(site: Site) -> None:
    site.tree.rename(site.tree.with_name("gone"))
    result = check(site)
    assert result.result == "error" and result.failed and result.error is IntegrityError


def test_compare_digest_names_the_first_bad_chunk_and_counts_the_rest() -> None:
    signed = Member("m", 3 * MIB, 0o644, "ff" * 48, ("aa" * 48, "bb" * 48, "cc" * 48))
    same = FileDigest(
        3 * MIB, bytes.fromhex("ff" * 48), tuple(bytes.fromhex(c * 48) for c in ("aa", "bb", "cc"))
    )
    assert compare_digest(signed, same, MIB, "sha384") is None
    bad = FileDigest(3 * MIB, b"\x00" * 48, tuple(bytes.fromhex(c * 48) for c in ("aa", "00", "00")))
    finding = compare_digest(signed, bad, MIB, "sha384")
    assert finding == Finding(
        "changed",
        "m",
        "content differs from the signed sha384 digest in chunk 1 of 3 (bytes 1048576-2097151)"
        " and 1 more chunks",
    )
