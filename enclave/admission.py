"""Admission: the one way a bundle enters the high side (FORMAT.md, "Verification").

`Admission(state_dir, trust, at, audit_signer).verify(bundle_or_volume, extract_to, receipt)`
takes every decision in one order, with one reference time fixed when the object is made:

1. the root: stored in the state directory, then the given one, then the roots the bundle
   carries (trust.trusted.TrustedRoot), the result unexpired at that time;
2. the volumes, if the bundle was split: the index's signatures are judged by that root (so a
   bundle signed by keys only a carried root adds admits from its volumes too) and it must name
   the statement the first volume carries;
3. the envelope's signatures (the `bundle` role), the statement, the rollback record;
4. the archive and every chunk (bundle.verify.check_archive), then the rollback record and the
   content store are committed, then the tree is published by one rename;
5. a receipt, signed by the audit signer when one is given, for a failure too.

It never prints, prompts or exits: each finding goes to `on_check` as it is made, and failures
are raised as the typed errors of enclave.errors. The CLI (`bundle verify`, `images load`,
`provision`) and the demo are thin callers of it.
"""

from __future__ import annotations

import hashlib
import shutil
import tarfile
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from enclave.bundle.carried import roots_in_bundle
from enclave.bundle.source import ArchiveSource
from enclave.bundle.statement import BundleStatement
from enclave.bundle.store import ContentStore, StoreStaging
from enclave.bundle.tarformat import ENVELOPE_NAME
from enclave.bundle.verify import (
    DEFAULT_MAX_BYTES,
    EnvelopeMember,
    check_archive,
    content_store,
    open_archive,
    publish,
    read_envelope,
    staging_dir,
)
from enclave.bundle.volumes import VolumeIndex, bind, bind_name, locate
from enclave.canonical import format_time
from enclave.errors import UnsafeArchiveError, UsageError
from enclave.trust.keys import PublicKey, SigningKey
from enclave.trust.receipts import Evidence, ReceiptFile, ReceiptLog, record
from enclave.trust.root import TrustRoot
from enclave.trust.state import StateDir
from enclave.trust.trusted import TrustedRoot

OnCheck = Callable[[str], None]


@dataclass
class Admitted:
    """What an admission established. `checks` lists every check passed, in order."""

    bundle: str  # the bundle's name as its files spell it (volumes: NAME-VERSION.bundle)
    files: list[Path]
    statement: BundleStatement
    statement_digest: str  # sha256 of the signed statement: names exactly this bundle
    signers: tuple[PublicKey, ...]
    untrusted_keyids: tuple[str, ...]
    root: TrustRoot  # the root the signatures were judged by (after carried rotations)
    mode: str  # "admission", or "audit" for a re-check as of a past time
    checks: list[str] = field(default_factory=list)
    extracted_to: Path | None = None
    receipt: dict[str, Any] | None = None  # {"seq", "hash"} of its line in `receipt_log`
    receipt_log: Path | None = None
    receipt_file: Path | None = None
    receipt_signed: bool = False  # by the audit signer


class Admission:
    """Admit bundles against one state directory, as of one time.

    `state_dir`: the high side's state (stored root, rollback record, receipts, content store);
    None verifies against `trust` alone and keeps nothing (a library caller with its own state).
    `trust`: a root (or its file) to start from when none is stored, or a rotation of the stored
    one. `at`: the reference time (default: now, fixed here). `recheck`: an auditor's re-check as
    of `at`: the stored root still decides, the rollback record is neither consulted nor moved,
    nothing is extracted; a receipt is still written. `audit_signer`: signs the receipts; it
    must be a key of the audit role (else the refusal is recorded unsigned).
    """

    def __init__(
        self,
        state_dir: Path | StateDir | None = None,
        trust: TrustRoot | Path | None = None,
        at: datetime | None = None,
        audit_signer: SigningKey | None = None,
        *,
        recheck: bool = False,
        on_check: OnCheck | None = None,
        show_progress: bool = False,
        workers: int | None = None,
        max_bytes: int = DEFAULT_MAX_BYTES,
        keep: bool = True,
    ) -> None:
        if isinstance(state_dir, Path):
            state_dir = StateDir.open(state_dir)
        self.state = state_dir
        self.trust = TrustRoot.load(trust) if isinstance(trust, Path) else trust
        self.at = at or datetime.now(UTC)
        self.recheck = recheck
        self.audit_signer = audit_signer
        self.on_check = on_check
        self.show_progress = show_progress
        self.workers = workers
        self.max_bytes = max_bytes
        self.keep = keep
        self.receipts = ReceiptLog(state_dir) if state_dir is not None else None
        if self.receipts is not None:
            self.receipts.check()  # its end intact, room for one more receipt: before anything runs
        elif audit_signer is not None:
            raise UsageError("an audit signer signs receipts: it needs a state directory to keep them in")

    @property
    def mode(self) -> str:
        return "audit" if self.recheck else "admission"

    def verify(self, bundle: Path, extract_to: Path | None = None, receipt: Path | None = None) -> Admitted:
        """Admit the bundle named by `bundle` (its file, one of its volumes or its volume index);
        publish its content at `extract_to`; write a copy of the receipt to `receipt`."""
        if self.recheck and (extract_to is not None or receipt is not None):
            raise UsageError(
                "a re-check as of a past time only re-checks: it never extracts nor copies receipts"
            )
        if receipt is not None and self.receipts is None:
            raise UsageError(f"{receipt}: a receipt needs a state directory (its receipt log)")
        # Reserved first: a receipt copy that cannot be written fails here (2), before anything
        # changed, never after the rollback record moved.
        reserved = ReceiptFile(receipt) if receipt is not None else None
        run = _Run(self, Evidence([str(bundle)], self.at, self.mode), self.audit_signer)
        try:
            admitted = run.admit(bundle, extract_to)
        except BaseException as exc:  # an interrupt too: every run leaves a receipt
            if self.receipts is not None:
                record(self.receipts, run.evidence, exc, run.signer, reserved)
            raise
        if self.receipts is not None:
            admitted.receipt = record(self.receipts, run.evidence, None, run.signer, reserved)
            admitted.receipt_log = self.receipts.path
            admitted.receipt_file = receipt
            admitted.receipt_signed = run.signer is not None
        return admitted


class _Run:
    """One verification: the evidence it gathers for its receipt, step by step."""

    def __init__(self, admission: Admission, evidence: Evidence, signer: SigningKey | None) -> None:
        self.a = admission
        self.evidence = evidence
        self.signer = signer

    def note(self, check: str) -> None:
        self.evidence.checks.append(check)
        if self.a.on_check is not None:
            self.a.on_check(check)

    def admit(self, bundle: Path, extract_to: Path | None) -> Admitted:
        trusted = self.anchor()
        paths, index = locate(bundle)
        self.evidence.files = [str(p) for p in paths]
        with ArchiveSource(paths) as source:
            tar = open_archive(source)
            member = read_envelope(source, tar)
            digest = hashlib.sha256(member.envelope.payload).hexdigest()
            self.evidence.statement_digest = digest
            self.evidence.claimed_keyids = [s.keyid for s in member.envelope.signatures]
            trusted = self.apply_carried(trusted, source, member)
            if index is not None:
                self.check_index(trusted, index, digest)
            admitted = self.check_signatures(trusted, source, member, paths, digest)
            if index is not None:
                bind_name(index, admitted.statement)  # once the statement is parsed, never twice
            self.check_rollback(admitted)
            if admitted.statement.total_size > self.a.max_bytes:
                raise UnsafeArchiveError(
                    f"{ENVELOPE_NAME}: {admitted.statement.total_size} bytes of content exceed "
                    f"the {self.a.max_bytes} byte cap"
                )
            self.check_content(trusted, source, tar, member, index, admitted, extract_to)
        return admitted

    def anchor(self) -> TrustedRoot:
        """The stored root, then the given one; the audit signer checked against it."""
        state = self.a.state
        stored = state.read_root() if state is not None else None
        trusted = TrustedRoot.resolve(stored, self.a.trust, self.a.at)
        for note in trusted.notes:
            self.note(note)
        self.evidence.root = trusted.root
        if self.signer is not None:
            signer, self.signer = self.signer, None  # not in the role: this refusal's receipt is unsigned
            trusted.require_member("audit", signer.public, "audit signer")
            self.signer = signer
        return trusted

    def apply_carried(
        self, trusted: TrustedRoot, source: ArchiveSource, member: EnvelopeMember
    ) -> TrustedRoot:
        carried = roots_in_bundle(source, member.end, member.envelope.payload)
        rotated = trusted.with_carried(carried)
        for note in rotated.notes[len(trusted.notes) :]:
            self.note(note)
        self.evidence.root = rotated.root
        rotated.check_current()  # expiry of the root in use, at the one time fixed for this run
        return rotated

    def check_index(self, trusted: TrustedRoot, index: VolumeIndex, digest: str) -> None:
        check = trusted.require("bundle", index.envelope, index.path.name)
        bind(index, digest)
        self.note(f"volume index: {len(index.volumes)} volumes, {check.explain()}, names this statement")

    def check_signatures(
        self,
        trusted: TrustedRoot,
        source: ArchiveSource,
        member: EnvelopeMember,
        paths: list[Path],
        digest: str,
    ) -> Admitted:
        check = trusted.require("bundle", member.envelope, ENVELOPE_NAME)
        self.evidence.saw_signers(check.signers, trusted.root)
        statement = BundleStatement.from_payload(member.envelope.payload)
        self.evidence.name, self.evidence.version = statement.name, statement.version
        self.note(f"trust root v{trusted.version} valid until {trusted.root.signed['expires']}")
        self.note(f"signatures: {check.explain()}")
        valid = {k.keyid for k in check.signers}
        return Admitted(
            bundle=source.name,
            files=paths,
            statement=statement,
            statement_digest=digest,
            signers=check.signers,
            untrusted_keyids=tuple(s.keyid for s in member.envelope.signatures if s.keyid not in valid),
            root=trusted.root,
            mode=self.a.mode,
            checks=self.evidence.checks,
        )

    def check_rollback(self, admitted: Admitted) -> None:
        """Early, so a rollback is refused before hours of hashing."""
        state = self.a.state
        if self.a.recheck:
            self.note("rollback: not consulted (an audit re-check records and publishes nothing)")
        elif state is not None:
            statement = admitted.statement
            self.note(
                state.read_rollback().check(
                    statement.name, statement.version, admitted.statement_digest, admitted.root.version
                )
            )

    def check_content(
        self,
        trusted: TrustedRoot,
        source: ArchiveSource,
        tar: tarfile.TarFile,
        member: EnvelopeMember,
        index: VolumeIndex | None,
        admitted: Admitted,
        extract_to: Path | None,
    ) -> None:
        """Every byte; then, in this order, the rollback record, the store, the published tree."""
        state = self.a.state
        statement = admitted.statement
        recording = state is not None and not self.a.recheck
        store = content_store(state, statement, self.a.keep and extract_to is not None and recording)
        staging = staging_dir(extract_to, statement.total_size) if extract_to is not None else None
        kept: StoreStaging | None = None
        try:
            # The store keeps a published bundle: by hard links to the extracted files when it is
            # on their filesystem, else as chunks written as they verify; committed below.
            if store is not None and self.a.keep and staging is not None and recording:
                kept = store.staging(statement, staging)
            check_archive(
                source,
                tar,
                member,
                statement,
                staging,
                self.a.workers,
                self.a.show_progress,
                store,
                kept,
                index,
            )
            self.note(f"archive: {len(statement.members)} members, canonical headers, exact end")
            self.note(f"content: {statement.total_size} bytes, every {statement.digest} chunk digest matched")
            if recording:
                assert state is not None
                kept = self.commit(state, trusted, store, kept, member, admitted)
            if staging is not None and extract_to is not None:
                publish(staging, extract_to, member.raw)
                staging = None
                admitted.extracted_to = extract_to
                self.note(f"published {extract_to}")
        finally:
            if kept is not None:
                kept.discard()
            if staging is not None:
                shutil.rmtree(staging, ignore_errors=True)

    def commit(
        self,
        state: StateDir,
        trusted: TrustedRoot,
        store: ContentStore | None,
        kept: StoreStaging | None,
        member: EnvelopeMember,
        admitted: Admitted,
    ) -> StoreStaging | None:
        """Recorded before publishing: never content out with the state behind."""
        statement = admitted.statement
        state.accept(
            trusted.stored_digest,
            trusted.root,
            statement.name,
            statement.version,
            admitted.statement_digest,
            format_time(self.a.at),
        )
        self.note(f"recorded in {state.rollback_path}")
        if store is None or kept is None:
            return kept
        # Only now, after every check, and before the tree is renamed (the links are made from
        # the staging directory): a failed run leaves nothing in the store.
        how = "hard links to the published files" if kept.links else "chunk copies"
        kept.commit()
        store.record(member.raw)
        self.note(f"content kept in {store.path} ({how})")
        return None
