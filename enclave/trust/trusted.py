"""The one place trust decisions are taken (on the model of python-tuf's TrustedMetadataSet).

A `TrustedRoot` is built once per run from the roots it may start from, in a fixed order:

1. the root stored in the state directory (it wins: a key once rotated away never comes back
   by passing an old root.json),
2. a root given by the caller, applied only when it is the stored one or a valid rotation of it
   (or when nothing is stored yet: the first root, trust on first use by the operator),
3. the roots a bundle carries (`with_carried`), applied as rotations of the result,

with one reference time fixed for the whole run (`at`): the root in use must not have expired
then, and nothing later re-reads the clock. Every "is this signed by role R" and "is this key
in role R" question goes through `require` and `require_member`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from pathlib import Path

from enclave.errors import KeyNotInRole, NoTrustRoot, ThresholdNotMet, TrustError
from enclave.trust.dsse import Envelope, verify_signatures
from enclave.trust.keys import PublicKey
from enclave.trust.root import RoleCheck, TrustRoot
from enclave.trust.rotation import apply_chain


@dataclass(frozen=True)
class TrustedRoot:
    """The root a run trusts, the time it is judged at, and how it was arrived at (`notes`)."""

    root: TrustRoot
    at: datetime
    notes: tuple[str, ...] = ()
    stored_digest: str | None = None  # the state directory's root this run started from
    carried: int = 0  # roots the bundle carried (applied or, when older, skipped)

    # -- building -------------------------------------------------------------------------------
    @classmethod
    def resolve(
        cls, stored: TrustRoot | None, given: TrustRoot | None, at: datetime | None = None
    ) -> TrustedRoot:
        """Stored, then given, as the module docstring says. Expiry is not checked here: an
        expired root can still be the anchor a rotation starts from (TUF 5.3.4); `check_current`
        decides once the carried roots are applied."""
        when = at or datetime.now(UTC)
        if stored is None and given is None:
            raise NoTrustRoot("no trust root: none is stored in the state directory and none was given")
        if stored is None:
            assert given is not None
            given.check_signed()
            return cls(given, when, (f"trust root v{given.version} from {given.source} (none stored yet)",))
        digest = stored.digest
        if given is None or given.digest == digest:
            return cls(stored, when, (f"trust root v{stored.version} stored in {stored.source}",), digest)
        if given.version < stored.version:
            note = (
                f"trust root v{stored.version} stored in {stored.source} "
                f"({given.source} is v{given.version}, rotated away since)"
            )
            return cls(stored, when, (note,), digest)
        if given.version == stored.version:
            raise TrustError(
                f"{given.source}: trust root v{given.version} differs from the v{stored.version} stored in "
                f"{stored.source} (a new root must be a rotation of the stored one; or remove the stored "
                "root deliberately)"
            )
        rotated = apply_chain(stored, [given])
        note = f"trust root v{stored.version} stored, rotated to v{rotated.version} by {given.source}"
        return cls(rotated, when, (note,), digest)

    @classmethod
    def load(cls, path: Path, at: datetime | None = None) -> TrustedRoot:
        """A root file trusted as given (no state directory), checked current at `at`."""
        trusted = cls.resolve(None, TrustRoot.load(path), at)
        trusted.check_current()
        return trusted

    def with_carried(self, carried: Sequence[TrustRoot]) -> TrustedRoot:
        """The roots a bundle carries, applied as rotations (any order; older ones skipped)."""
        if not carried:
            return self
        rotated = apply_chain(self.root, carried)
        found = f"trust component: {len(carried)} root(s)"
        note = (
            f"{found}; root v{self.root.version} rotated to v{rotated.version}"
            if rotated is not self.root
            else f"{found}, none newer than v{self.root.version}"
        )
        return replace(self, root=rotated, notes=(*self.notes, note), carried=len(carried))

    # -- deciding -------------------------------------------------------------------------------
    @property
    def version(self) -> int:
        return self.root.version

    @property
    def digest(self) -> str:
        return self.root.digest

    def check_current(self) -> None:
        """The root in use is signed by its own root role and unexpired at the run's time
        (ExpiredRoot: a freeze is refused, never waited out)."""
        self.root.check(self.at)

    def require(self, role: str, envelope: Envelope, what: str) -> RoleCheck:
        """`role`'s rule over `envelope` (threshold of distinct valid keys, hybrid rule), or
        ThresholdNotMet naming `what`, the untrusted keys and the invalid signatures."""
        keys = self.root.role_keys(role)
        verified = verify_signatures(envelope, keys)
        check = self.root.check_role(role, verified.keys)
        if check.met:
            return check
        untrusted = tuple(s.keyid for s in envelope.signatures if s.keyid not in keys)
        invalid = len(envelope.signatures) - len(verified.keys) - len(untrusted)
        detail = f"; untrusted keys: {', '.join(k[:16] for k in untrusted)}" if untrusted else ""
        detail += f"; {invalid} invalid signature(s) by trusted keys" if invalid else ""
        raise ThresholdNotMet(
            f"{what}: {role} signatures not accepted: {check.explain()}{detail}",
            role=role,
            threshold=check.role.threshold,
            valid_keyids=tuple(k.keyid for k in check.signers),
            untrusted_keyids=untrusted,
            invalid=invalid,
        )

    def accepts(self, role: str, signers: Sequence[PublicKey]) -> str | None:
        """None when `signers` (already verified) meet `role`'s rule, else why not: for readers
        that report findings instead of raising (the audit log verifier)."""
        check = self.root.check_role(role, signers)
        return None if check.met else check.explain()

    def require_member(self, role: str, key: PublicKey, what: str) -> None:
        """A key the caller is about to sign with as `role` (KeyNotInRole otherwise): checked
        before anything is signed, so nothing is written that would not verify."""
        if key.keyid not in self.root.roles[role].keyids:
            raise KeyNotInRole(
                f"{what}: key {key.keyid[:16]} is not a key of the {role} role "
                f"of trust root v{self.root.version}",
                keyid=key.keyid,
                role=role,
                root_version=self.root.version,
            )

    def role_keys(self, role: str) -> dict[str, PublicKey]:
        return self.root.role_keys(role)
