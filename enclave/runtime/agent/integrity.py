"""Re-check a published bundle tree against its signed statement.

The tree is what `enclave bundle verify --extract-to DIR` published: `DIR/BUNDLE.dsse.json`
and every member of the statement at its path (`DIR/sbom.cdx.json`, `DIR/content/...`).
Each round starts from the envelope on disk, never from memory: its signatures are checked
against the trust root first (an envelope edited in place fails here), then every file's
type, size, mode and chunked digest (on all cores), and the tree is walked for files that
the statement does not list. A file's mode may be the signed one or the signed one without
write bits (the copy `enclave provision` pushes to a host is made read-only).
"""

from __future__ import annotations

import hashlib
import os
import stat
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

from enclave.bundle.digest import FileDigest, digest_files
from enclave.bundle.statement import BundleStatement, Member
from enclave.bundle.tarformat import ENVELOPE_NAME
from enclave.errors import EnclaveError, IntegrityError, TrustError
from enclave.runtime.agent.results import CheckResult, Finding, could_not_run, failed, passed
from enclave.trust.dsse import IN_TOTO_PAYLOAD_TYPE, MAX_ENVELOPE, Envelope
from enclave.trust.root import TrustRoot
from enclave.trust.trusted import TrustedRoot

MAX_EXTRA_ENTRIES = 10_000  # a tree stuffed with junk is reported, not walked forever


@dataclass(frozen=True)
class VerifiedStatement:
    """A statement whose envelope met the bundle role this round."""

    statement: BundleStatement
    sha256: str  # of the signed payload
    signers: tuple[str, ...]  # keyids


@dataclass(frozen=True)
class Entry:
    """One path in the tree, from lstat (links are never followed)."""

    kind: str  # file | dir | symlink | other
    size: int
    mode: int  # permission bits


def load_statement(bundle_dir: Path, root: TrustRoot, now: datetime) -> VerifiedStatement:
    """Read DIR/BUNDLE.dsse.json and check it like `bundle verify` does: root valid, bundle
    role met (threshold and hybrid rule), statement well-formed. Raises the typed errors."""
    path = bundle_dir / ENVELOPE_NAME
    try:
        info = path.lstat()
    except FileNotFoundError:
        raise TrustError(f"{path}: missing: no signed statement to check the tree against") from None
    except OSError as exc:
        raise TrustError(f"{path}: cannot read: {exc.strerror}") from None
    if not stat.S_ISREG(info.st_mode):
        raise TrustError(f"{path}: not a regular file")
    if info.st_size > MAX_ENVELOPE:
        raise TrustError(f"{path}: {info.st_size} bytes exceeds the {MAX_ENVELOPE} byte cap")
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise TrustError(f"{path}: cannot read: {exc.strerror}") from None
    envelope = Envelope.from_json(raw, str(path))
    if envelope.payload_type != IN_TOTO_PAYLOAD_TYPE:
        raise TrustError(f"{path}: payloadType {envelope.payload_type!r} is not {IN_TOTO_PAYLOAD_TYPE}")
    trusted = TrustedRoot(root, now)
    trusted.check_current()
    check = trusted.require("bundle", envelope, ENVELOPE_NAME)
    statement = BundleStatement.from_payload(envelope.payload)
    return VerifiedStatement(
        statement,
        hashlib.sha256(envelope.payload).hexdigest(),
        tuple(k.keyid for k in check.signers),
    )


def scan_tree(bundle_dir: Path, limit: int) -> tuple[dict[str, Entry], list[Finding]]:
    """Every path under `bundle_dir` (relative, '/'-separated), at most `limit` of them."""
    entries: dict[str, Entry] = {}
    problems: list[Finding] = []
    stack: list[tuple[Path, str]] = [(bundle_dir, "")]
    while stack:
        directory, prefix = stack.pop()
        try:
            children = sorted(os.scandir(directory), key=lambda e: e.name)
        except OSError as exc:
            problems.append(Finding("unreadable", prefix or ".", f"cannot list directory: {exc.strerror}"))
            continue
        for child in children:
            name = prefix + child.name
            if len(entries) >= limit:
                problems.append(Finding("extra", name, f"more than {limit} paths in the tree; stopped here"))
                return entries, problems
            try:
                info = child.stat(follow_symlinks=False)
            except OSError as exc:
                problems.append(Finding("unreadable", name, f"cannot stat: {exc.strerror}"))
                continue
            entries[name] = Entry(_kind(info.st_mode), info.st_size, stat.S_IMODE(info.st_mode))
            if stat.S_ISDIR(info.st_mode):
                stack.append((Path(child.path), name + "/"))
    return entries, problems


def _kind(mode: int) -> str:
    if stat.S_ISREG(mode):
        return "file"
    if stat.S_ISDIR(mode):
        return "dir"
    if stat.S_ISLNK(mode):
        return "symlink"
    return "other"


def _parents(name: str) -> Iterator[str]:
    parts = name.split("/")
    for index in range(1, len(parts)):
        yield "/".join(parts[:index])


WRITE_BITS = 0o222


def mode_acceptable(found: int, signed: int) -> bool:
    """The signed mode, or the signed mode without its write bits: provisioning makes the
    host's copy read-only on purpose (stricter than signed). Anything else, an added bit or a
    write bit on a file signed without one, is looser and a finding."""
    return found in (signed, signed & ~WRITE_BITS)


def compare_tree(statement: BundleStatement, entries: dict[str, Entry]) -> tuple[list[Finding], list[Member]]:
    """Findings from types, sizes and modes alone, and the members whose bytes need hashing."""
    findings: list[Finding] = []
    to_hash: list[Member] = []
    expected = {m.name for m in statement.members} | {ENVELOPE_NAME}
    directories = {parent for name in expected for parent in _parents(name)}
    not_empty = {parent for name in entries for parent in _parents(name)}
    for member in statement.members:
        entry = entries.get(member.name)
        if entry is None:
            findings.append(Finding("missing", member.name, "signed but missing from the deployed tree"))
            continue
        if entry.kind != "file":
            findings.append(Finding("type", member.name, f"a {entry.kind} where a regular file was signed"))
            continue
        if not mode_acceptable(entry.mode, member.mode):
            findings.append(Finding("mode", member.name, f"mode {entry.mode:04o}, signed {member.mode:04o}"))
        if entry.size != member.size:
            findings.append(
                Finding("changed", member.name, f"size {entry.size} bytes on disk, {member.size} signed")
            )
            continue
        to_hash.append(member)
    for name, entry in sorted(entries.items()):
        if name in expected:
            continue
        if name in directories:
            if entry.kind != "dir":
                findings.append(
                    Finding("type", name, f"a {entry.kind} where a directory of the bundle belongs")
                )
            continue
        # An extra directory is named only when empty; otherwise the files in it are.
        if entry.kind == "dir" and name in not_empty:
            continue
        what = "file" if entry.kind == "file" else entry.kind
        findings.append(Finding("extra", name, f"{what} not in the signed statement"))
    return findings, to_hash


def compare_digest(member: Member, found: FileDigest, chunk_size: int, algorithm: str) -> Finding | None:
    """None when the file is the signed one; else which chunks differ."""
    if found.digest.hex() == member.digest:
        return None
    signed = member.chunk_digests()
    bad = [i for i, (a, b) in enumerate(zip(found.chunks, signed, strict=False)) if a.hex() != b]
    if len(signed) == 1 or not bad:
        return Finding("changed", member.name, f"content differs from the signed {algorithm} digest")
    first = bad[0]
    start, end = first * chunk_size, min((first + 1) * chunk_size, member.size) - 1
    where = f"chunk {first} of {len(signed)} (bytes {start}-{end})"
    more = f" and {len(bad) - 1} more chunks" if len(bad) > 1 else ""
    return Finding(
        "changed", member.name, f"content differs from the signed {algorithm} digest in {where}{more}"
    )


def hash_members(
    bundle_dir: Path,
    statement: BundleStatement,
    members: Sequence[Member],
    workers: int | None,
    on_bytes: Callable[[int], None] | None,
) -> tuple[list[Finding], int]:
    """Hash members on all cores; returns findings and bytes hashed."""
    paths = [bundle_dir / m.name for m in members]
    findings: list[Finding] = []
    try:
        digests = digest_files(paths, statement.digest, statement.chunk_size, workers, on_bytes)
    except OSError:
        # Something changed under us (removed, truncated, unreadable): attribute it file by file.
        digests_or_none: list[FileDigest | None] = []
        for member, path in zip(members, paths, strict=True):
            try:
                digests_or_none.append(
                    digest_files([path], statement.digest, statement.chunk_size, workers)[0]
                )
            except OSError as exc:
                findings.append(Finding("unreadable", member.name, f"cannot hash: {exc.strerror or exc}"))
                digests_or_none.append(None)
        pairs = [(m, d) for m, d in zip(members, digests_or_none, strict=True) if d is not None]
    else:
        pairs = list(zip(members, digests, strict=True))
    for member, digest in pairs:
        finding = compare_digest(member, digest, statement.chunk_size, statement.digest)
        if finding is not None:
            findings.append(finding)
    return findings, sum(m.size for m, _ in pairs)


def _detail(error: EnclaveError, bundle_dir: Path) -> str:
    """The error's message without the envelope's name in front (the finding names it)."""
    text = str(error)
    for prefix in (f"{bundle_dir / ENVELOPE_NAME}: ", f"{ENVELOPE_NAME}: "):
        if text.startswith(prefix):
            return text[len(prefix) :]
    return text


def check_integrity(
    bundle_dir: Path,
    root: TrustRoot,
    now: datetime,
    *,
    workers: int | None = None,
    on_bytes: Callable[[int], None] | None = None,
) -> tuple[CheckResult, VerifiedStatement | None]:
    """The integrity check; returns its result and, when the signatures held, the statement."""
    if not bundle_dir.is_dir():
        return could_not_run(
            "integrity", Finding("missing", str(bundle_dir), "bundle directory missing")
        ), None
    try:
        verified = load_statement(bundle_dir, root, now)
    except TrustError as exc:
        finding = Finding("signature", ENVELOPE_NAME, _detail(exc, bundle_dir))
        return failed("integrity", finding.line(), [finding], TrustError), None
    except EnclaveError as exc:
        finding = Finding("statement", ENVELOPE_NAME, _detail(exc, bundle_dir))
        return failed("integrity", finding.line(), [finding]), None
    statement = verified.statement
    entries, findings = scan_tree(bundle_dir, len(statement.members) + 1 + MAX_EXTRA_ENTRIES)
    tree_findings, to_hash = compare_tree(statement, entries)
    findings += tree_findings
    digest_findings, hashed = hash_members(bundle_dir, statement, to_hash, workers, on_bytes)
    findings += digest_findings
    data: dict[str, Any] = {
        "bundle": statement.name,
        "version": statement.version,
        "statement_sha256": verified.sha256,
        "signers": list(verified.signers),
        "files": len(statement.members),
        "bytes_hashed": hashed,
    }
    label = f"{statement.name} {statement.version}"
    if findings:
        names = ", ".join(sorted({f.name for f in findings})[:5])
        return failed(
            "integrity",
            f"{label}: {len(findings)} findings in {bundle_dir} ({names})",
            findings,
            IntegrityError,
            **data,
        ), verified
    summary = (
        f"{label}: signatures meet the bundle role; {len(statement.members)} files, "
        f"{hashed} bytes re-hashed ({statement.digest}), no missing or extra files"
    )
    return passed("integrity", summary, **data), verified
