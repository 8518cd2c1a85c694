"""Root rotation and revocation (TUF specification 1.0.x, section 5.3.4), done by hand.

python-tuf's Metadata API cannot hold enclave's role names (enclave/trust/root.py explains),
so its updater cannot run these rules for us; they are short enough to state exactly:

- root N+1 is accepted only when its version is exactly N+1, and it is signed by a threshold
  of root N's `root` keys **and** by a threshold of its own `root` keys (so neither the old
  key holders alone nor the new ones alone can rotate);
- rotations chain: N -> N+1 -> N+2 ..., each step checked against the one before;
- expiry is checked once, on the final root, at the verification's fixed time (an expired
  intermediate root does not matter; an expired final root refuses everything: freeze);
- revocation is a rotation that drops a key: what only that key signed stops verifying.

A bundle may carry roots in a component of kind `trust` (enclave.bundle.carried reads them);
trust.trusted applies them before the bundle's own signatures are checked, so a bundle can be
signed by keys that only the new root trusts. They are self-authenticating (signed by the old
root's keys), so reading them before the envelope's signatures are checked trusts nothing.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

from enclave.errors import RotationRefused, TrustError, UsageError
from enclave.trust.keys import PublicKey
from enclave.trust.root import ROLES, RoleCheck, TrustRoot

MAX_ROTATIONS = 256  # python-tuf's default bound on root rotations in one update


# -- the rules ----------------------------------------------------------------------------------------
def check_successor(trusted: TrustRoot, new: TrustRoot) -> None:
    """Refuse `new` unless it is a valid rotation of `trusted` (TUF 5.3.4, steps 3-5)."""

    def refuse(reason: str) -> RotationRefused:
        return RotationRefused(
            f"{new.source}: {reason}", trusted_version=trusted.version, offered_version=new.version
        )

    if new.version != trusted.version + 1:
        raise refuse(
            f"trust root version {new.version} does not follow version {trusted.version} "
            f"(only version {trusted.version + 1} can be applied next)"
        )
    by_old = new.self_signers(by=trusted)
    if not by_old.met:
        raise refuse(
            f"trust root v{new.version} is not signed by a threshold of the root keys "
            f"of v{trusted.version}: {by_old.explain()}"
        )
    by_new = new.self_signers()
    if not by_new.met:
        raise refuse(
            f"trust root v{new.version} is not signed by a threshold of its own root keys: {by_new.explain()}"
        )


def apply_chain(trusted: TrustRoot, candidates: Sequence[TrustRoot]) -> TrustRoot:
    """Apply every rotation in `candidates` (any order) to `trusted`; returns the newest root.

    Roots older than `trusted` are skipped (a bundle may carry a chain the verifier has
    partly applied already); one of the same version must be `trusted` itself (else: two
    roots of one version, a fork); the rest must run N+1, N+2, ... without a gap.
    """
    if len(candidates) > MAX_ROTATIONS:
        raise TrustError(f"{len(candidates)} trust roots offered: more than {MAX_ROTATIONS} rotations")
    by_version: dict[int, TrustRoot] = {}
    for root in candidates:
        other = by_version.get(root.version)
        if other is not None and other.digest != root.digest:
            raise RotationRefused(
                f"{root.source} and {other.source}: two different trust roots of version {root.version}",
                trusted_version=trusted.version,
                offered_version=root.version,
            )
        by_version[root.version] = root
    same = by_version.get(trusted.version)
    if same is not None and same.digest != trusted.digest:
        raise RotationRefused(
            f"{same.source}: trust root version {same.version} differs from the trusted root of that "
            "version (a fork: two roots claim one version)",
            trusted_version=trusted.version,
            offered_version=same.version,
        )
    current = trusted
    for version in sorted(v for v in by_version if v > trusted.version):
        check_successor(current, by_version[version])
        current = by_version[version]
    return current


def skipped_roots(trusted: TrustRoot, candidates: Sequence[TrustRoot]) -> list[str]:
    """Why each of `candidates` that `apply_chain` passes over is passed over: the trusted root
    itself, or an older version (of this root's history or of another's: an older root cannot
    be checked against the trusted one, so it is never applied)."""
    notes = []
    for root in candidates:
        if root.digest == trusted.digest:
            notes.append(f"{root.source}: v{root.version} is the trusted root already")
        elif root.version < trusted.version:
            notes.append(
                f"{root.source}: skipped: v{root.version} is older than the trusted v{trusted.version} "
                "(an old root of this chain, or another chain's root: never applied)"
            )
    return notes


# -- authoring (the low side) -------------------------------------------------------------------------
def next_root(
    old: TrustRoot,
    expires: datetime,
    add: Mapping[str, Sequence[PublicKey]] | None = None,
    revoke: Sequence[str] = (),
    thresholds: Mapping[str, int] | None = None,
) -> dict[str, Any]:
    """The `signed` part of version N+1: `old`'s keys and thresholds, minus `revoke`d keyids
    (from every role), plus `add`ed keys. Validated as `trust init` validates a new root."""
    unknown = [k for k in revoke if k not in old.keys]
    if unknown:
        raise UsageError(f"revoke: key {unknown[0][:16]} is not in trust root v{old.version}")
    role_keys: dict[str, list[PublicKey]] = {}
    for name in ROLES:
        kept = [old.keys[k] for k in old.roles[name].keyids if k not in revoke]
        extra = [k for k in (add or {}).get(name, ()) if k.keyid not in revoke]
        role_keys[name] = kept + [k for k in extra if k.keyid not in {x.keyid for x in kept}]
    merged = {name: old.roles[name].threshold for name in ROLES} | dict(thresholds or {})
    return TrustRoot.create(
        role_keys,
        merged,
        expires,
        version=old.version + 1,
        hybrid_roles=[name for name in ROLES if old.roles[name].hybrid],
    )


def keyid_named(value: str, root: TrustRoot) -> str:
    """A key named by its .pub file, or by a unique prefix (8+ hex digits) of its keyid in `root`."""
    if Path(value).is_file():
        return PublicKey.load(Path(value)).keyid
    found = [k for k in root.keys if len(value) >= 8 and k.startswith(value.lower())]
    if len(found) != 1:
        raise UsageError(
            f"{value!r}: not a .pub file, nor the keyid of exactly one key of trust root v{root.version}"
        )
    return found[0]


@dataclass(frozen=True)
class RotationStatus:
    by_old: RoleCheck
    by_new: RoleCheck

    @property
    def complete(self) -> bool:
        return self.by_old.met and self.by_new.met

    def explain(self) -> str:
        return f"old root keys: {self.by_old.explain()}; new root keys: {self.by_new.explain()}" + (
            "" if self.complete else "; more signatures needed"
        )


def rotation_status(old: TrustRoot, new: TrustRoot) -> RotationStatus:
    """How far a (possibly partly signed) rotation is from being accepted."""
    if new.version != old.version + 1:
        raise UsageError(f"{new.source}: version {new.version} does not follow {old.source} v{old.version}")
    return RotationStatus(new.self_signers(by=old), new.self_signers())
