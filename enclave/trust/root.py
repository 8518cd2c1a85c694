"""The trust root: `root.json` in TUF root-metadata form (TUF spec 1.0.x, section 4.3).

Roles are enclave's own: `root`, `bundle`, `approver`, `audit`. python-tuf's `Root` class is
not used because it accepts only TUF's four top-level role names (it raises "Role names must
be the top-level metadata roles"); the document shape, canonical JSON and signature rules
are TUF's. enclave adds one role field, `x-enclave-hybrid`: the role's threshold must also
include at least one classical and one post-quantum signature.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

from enclave.canonical import canonical, format_time, parse_time
from enclave.errors import (
    MALFORMED_DOCUMENT,
    DocumentLimitError,
    EnclaveError,
    ExpiredRoot,
    ThresholdNotMet,
    TrustError,
    UsageError,
)
from enclave.fileio import read_regular
from enclave.strictjson import strict_json
from enclave.trust.keys import TUF_KEYTYPE, PublicKey, SigningKey

ROLES = ("root", "bundle", "approver", "audit")
SPEC_VERSION = "1.0.31"
SPEC_VERSION_SYNTAX = re.compile(r"1\.(0|[1-9][0-9]*)\.(0|[1-9][0-9]*)", re.ASCII)  # TUF 1.x, FORMAT.md 4
HYBRID_FIELD = "x-enclave-hybrid"
MAX_ROOT_BYTES = 1 << 20  # a root with dozens of ML-DSA keys is under 200 KB; cap before reading
SIGNED_FIELDS = {"_type", "spec_version", "version", "expires", "consistent_snapshot", "keys", "roles"}
_LOWER_HEX = re.compile(r"(?:[0-9a-f]{2})+", re.ASCII)


@dataclass(frozen=True)
class Role:
    name: str
    keyids: tuple[str, ...]
    threshold: int
    hybrid: bool


@dataclass(frozen=True)
class RoleCheck:
    """How a set of valid signatures measured against one role."""

    role: Role
    signers: tuple[PublicKey, ...]

    @property
    def classical(self) -> int:
        return sum(not k.post_quantum for k in self.signers)

    @property
    def post_quantum(self) -> int:
        return sum(k.post_quantum for k in self.signers)

    @property
    def met(self) -> bool:
        if len(self.signers) < self.role.threshold:
            return False
        return not self.role.hybrid or (self.classical >= 1 and self.post_quantum >= 1)

    def explain(self) -> str:
        text = f"{len(self.signers)} of threshold {self.role.threshold} valid {self.role.name} signatures"
        if self.role.hybrid:
            text += f" ({self.classical} classical, {self.post_quantum} post-quantum; hybrid needs 1 of each)"
        return text


@dataclass(frozen=True)
class TrustRoot:
    """A parsed root.json. `signed` is kept as read, so its digest and signatures stay exact."""

    signed: dict[str, Any]
    signatures: tuple[tuple[str, bytes], ...]
    keys: Mapping[str, PublicKey]
    roles: Mapping[str, Role]
    version: int
    expires: datetime
    source: str

    # -- construction -------------------------------------------------------------------------
    @classmethod
    def create(
        cls,
        role_keys: Mapping[str, Sequence[PublicKey]],
        thresholds: Mapping[str, int],
        expires: datetime,
        version: int = 1,
        hybrid_roles: Sequence[str] = ("bundle",),
    ) -> dict[str, Any]:
        """The `signed` part of a new root; sign it with `sign_document`."""
        keys: dict[str, Any] = {}
        roles: dict[str, Any] = {}
        for name in ROLES:
            members = list(role_keys.get(name, ()))
            for key in members:
                keytype, scheme = TUF_KEYTYPE[key.algorithm]
                keys[key.keyid] = {"keytype": keytype, "scheme": scheme, "keyval": {"public": key.pem}}
            keyids = sorted({k.keyid for k in members})
            threshold = thresholds.get(name, 1)
            if threshold < 1:
                raise UsageError(f"role {name}: threshold must be at least 1")
            if keyids and threshold > len(keyids):
                raise UsageError(f"role {name}: threshold {threshold} exceeds its {len(keyids)} keys")
            role: dict[str, Any] = {"keyids": keyids, "threshold": threshold}
            if name in hybrid_roles:
                kinds = {k.post_quantum for k in members}
                if keyids and kinds != {True, False}:
                    raise UsageError(
                        f"role {name} is hybrid: give it at least one ecdsa-p384 and one ml-dsa-87 key"
                    )
                role[HYBRID_FIELD] = True
            roles[name] = role
        if not roles["root"]["keyids"]:
            raise UsageError("the root role needs at least one key")
        return {
            "_type": "root",
            "spec_version": SPEC_VERSION,
            "version": version,
            "expires": format_time(expires),
            "consistent_snapshot": False,
            "keys": keys,
            "roles": roles,
        }

    # -- parsing ------------------------------------------------------------------------------
    @classmethod
    def load(cls, path: Path) -> TrustRoot:
        data = read_regular(path, "trust root", MAX_ROOT_BYTES)  # over the cap: refused by from_json
        return cls.from_json(data, str(path))

    @classmethod
    def from_json(cls, data: bytes, source: str, limit_error: type[EnclaveError] = TrustError) -> TrustRoot:
        """Parse strictly (strictjson.strict_json, FORMAT.md 4): TrustError. Over MAX_ROOT_BYTES or
        too deeply nested: `limit_error` (UnsafeArchiveError for a root carried in a bundle)."""
        try:
            doc = strict_json(data, MAX_ROOT_BYTES)
            return cls._parse(doc, source)
        except DocumentLimitError as exc:
            raise limit_error(f"{source}: trust root {exc}") from None
        except MALFORMED_DOCUMENT as exc:
            raise TrustError(f"{source}: invalid trust root: {exc}") from None

    @classmethod
    def _parse(cls, doc: Any, source: str) -> TrustRoot:
        signed = cls._parse_signed(doc)
        version = cls._parse_version(signed["version"])
        expires = parse_time(signed["expires"])
        keys = cls._parse_keys(signed["keys"])
        roles = cls._parse_roles(signed["roles"], keys)
        signatures = cls._parse_signatures(doc["signatures"])
        return cls(signed, signatures, keys, roles, version, expires, source)

    @staticmethod
    def _parse_signed(doc: Any) -> dict[str, Any]:
        """The signed part: exactly TUF's root fields, a 1.x spec_version, no consistent snapshot."""
        if not isinstance(doc, dict) or set(doc) != {"signed", "signatures"}:
            raise ValueError("expected exactly 'signed' and 'signatures'")
        signed = doc["signed"]
        if not isinstance(signed, dict) or signed.get("_type") != "root":
            raise ValueError("signed._type must be 'root'")
        if set(signed) != SIGNED_FIELDS:
            raise ValueError(f"signed must have exactly the fields {', '.join(sorted(SIGNED_FIELDS))}")
        spec = signed["spec_version"]
        if not isinstance(spec, str) or not SPEC_VERSION_SYNTAX.fullmatch(spec):
            raise ValueError(f"unsupported TUF spec_version {spec!r} (1.MINOR.PATCH)")
        if signed["consistent_snapshot"] is not False:
            raise ValueError("consistent_snapshot must be false (enclave has no snapshot role)")
        return signed

    @staticmethod
    def _parse_version(version: Any) -> int:
        """The root's version: a positive integer."""
        if not isinstance(version, int) or isinstance(version, bool) or version < 1:
            raise ValueError("version must be a positive integer")
        return version

    @staticmethod
    def _parse_keys(raw: Any) -> dict[str, PublicKey]:
        """The keys object: each key valid and listed under its own keyid."""
        return {keyid: TrustRoot._parse_key(keyid, entry) for keyid, entry in _object(raw, "keys").items()}

    @staticmethod
    def _parse_key(keyid: str, entry: Any) -> PublicKey:
        """One key: exact fields, an accepted public key whose keyid and keytype/scheme match it."""
        if set(_object(entry, f"key {keyid[:16]}")) != {"keytype", "scheme", "keyval"}:
            raise ValueError(f"key {keyid[:16]}: expected exactly keytype, scheme, keyval")
        if set(_object(entry["keyval"], f"key {keyid[:16]}.keyval")) != {"public"}:
            raise ValueError(f"key {keyid[:16]}: keyval must hold exactly 'public'")
        try:
            key = PublicKey.from_pem(entry["keyval"]["public"].encode("ascii"), f"key {keyid[:16]}")
        except UsageError as exc:  # a weak curve or unknown key type makes the root invalid (exit 4)
            raise ValueError(str(exc)) from None
        if key.keyid != keyid:
            raise ValueError(f"key {keyid[:16]}: keyid is not SHA-256 of the key's SPKI")
        if (entry["keytype"], entry["scheme"]) != TUF_KEYTYPE[key.algorithm]:
            raise ValueError(f"key {keyid[:16]}: keytype/scheme do not match the key")
        return key

    @staticmethod
    def _parse_roles(raw: Any, keys: Mapping[str, PublicKey]) -> dict[str, Role]:
        """The roles object: exactly enclave's roles, each valid against `keys`."""
        if set(_object(raw, "roles")) != set(ROLES):
            raise ValueError(f"roles must be exactly {', '.join(ROLES)}")
        return {name: TrustRoot._parse_role(name, entry, keys) for name, entry in raw.items()}

    @staticmethod
    def _parse_role(name: str, entry: Any, keys: Mapping[str, PublicKey]) -> Role:
        """One role: distinct known keyids, a threshold of at least 1, an optional hybrid flag."""
        fields = set(_object(entry, f"role {name}"))
        if not {"keyids", "threshold"} <= fields <= {"keyids", "threshold", HYBRID_FIELD}:
            raise ValueError(f"role {name}: expected keyids, threshold and optionally {HYBRID_FIELD}")
        keyids = entry["keyids"]
        if not isinstance(keyids, list) or not all(isinstance(k, str) for k in keyids):
            raise ValueError(f"role {name}: keyids must be a list of strings")
        threshold = entry["threshold"]
        if not isinstance(threshold, int) or isinstance(threshold, bool) or threshold < 1:
            raise ValueError(f"role {name}: threshold must be an integer of at least 1")
        if len(set(keyids)) != len(keyids):
            raise ValueError(f"role {name}: duplicate keyids")
        unknown = [k for k in keyids if k not in keys]
        if unknown:
            raise ValueError(f"role {name}: keyid {unknown[0][:16]} is not in keys")
        hybrid = entry.get(HYBRID_FIELD, False)
        if not isinstance(hybrid, bool):
            raise ValueError(f"role {name}: {HYBRID_FIELD} must be true or false")
        return Role(name, tuple(keyids), threshold, hybrid)

    @staticmethod
    def _parse_signatures(raw: Any) -> tuple[tuple[str, bytes], ...]:
        """The signatures: a list of exact {keyid, sig} entries, lowercase hex, one per key."""
        if not isinstance(raw, list):
            raise ValueError("signatures must be a list")
        signatures: list[tuple[str, bytes]] = []
        for entry in raw:
            if set(_object(entry, "a signature")) != {"keyid", "sig"}:
                raise ValueError("each signature needs exactly keyid and sig")
            keyid, sig = entry["keyid"], entry["sig"]
            if not isinstance(keyid, str) or not isinstance(sig, str) or not _LOWER_HEX.fullmatch(sig):
                raise ValueError("a signature's keyid must be a string and its sig lowercase hex")
            if any(k == keyid for k, _ in signatures):
                raise ValueError(f"key {keyid[:16]} signs more than once")
            signatures.append((keyid, bytes.fromhex(sig)))
        return tuple(signatures)

    # -- checks -------------------------------------------------------------------------------
    @property
    def digest(self) -> str:
        """SHA-256 of the canonical signed part: names exactly this root version."""
        return hashlib.sha256(canonical(self.signed)).hexdigest()

    def role_keys(self, role: str) -> dict[str, PublicKey]:
        return {k: self.keys[k] for k in self.roles[role].keyids}

    def check_role(self, role: str, signers: Sequence[PublicKey]) -> RoleCheck:
        allowed = set(self.roles[role].keyids)
        distinct = {k.keyid: k for k in signers if k.keyid in allowed}
        return RoleCheck(self.roles[role], tuple(distinct.values()))

    def self_signers(self, by: TrustRoot | None = None) -> RoleCheck:
        """Valid signatures on this root by `by`'s root role (default: its own)."""
        judge = by or self
        message = canonical(self.signed)
        keys = judge.role_keys("root")
        good = [keys[k] for k, sig in self.signatures if k in keys and keys[k].verify(sig, message)]
        return judge.check_role("root", good)

    def roles_of(self, keyid: str) -> list[str]:
        """The roles that list `keyid`, in ROLES order."""
        return [name for name in ROLES if keyid in self.roles[name].keyids]

    def check_signed(self) -> None:
        """Refuse a root its own root role has not signed to threshold (expiry aside: a trusted
        root may have expired and still be the anchor a rotation starts from, TUF 5.3.4)."""
        signers = self.self_signers()
        if not signers.met:
            raise ThresholdNotMet(
                f"{self.source}: trust root not signed by its root role: {signers.explain()}",
                role="root",
                threshold=signers.role.threshold,
                valid_keyids=tuple(k.keyid for k in signers.signers),
            )

    def check(self, now: datetime) -> None:
        """Refuse an expired root or one its own root role has not signed to threshold."""
        if now >= self.expires:
            expires = format_time(self.expires)
            raise ExpiredRoot(
                f"{self.source}: trust root version {self.version} expired at {expires}",
                version=self.version,
                expires=expires,
                at=format_time(now),
            )
        self.check_signed()

    def to_json(self) -> bytes:
        """The document as `sign_document` writes it; `signed` and the signatures unchanged."""
        existing = [{"keyid": keyid, "sig": sig.hex()} for keyid, sig in self.signatures]
        return sign_document(self.signed, [], existing)


def _object(value: Any, where: str) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise ValueError(f"{where} must be an object")
    return value


def sign_document(
    signed: Mapping[str, Any], keys: Sequence[SigningKey], existing: Sequence[Mapping[str, str]] = ()
) -> bytes:
    """Serialise a root with signatures by `keys` (each at most once) added to `existing`."""
    message = canonical(signed)
    signatures = [dict(s) for s in existing]
    seen = {s["keyid"] for s in signatures}
    for key in keys:
        if key.keyid in seen:
            raise UsageError(f"key {key.keyid[:16]} has already signed this root")
        seen.add(key.keyid)
        signatures.append({"keyid": key.keyid, "sig": key.sign(message).hex()})
    return (
        json.dumps({"signatures": signatures, "signed": signed}, indent=2, sort_keys=True) + "\n"
    ).encode()


def default_expiry(now: datetime, days: int) -> datetime:
    if days < 1:
        raise UsageError("a root must be valid for at least 1 day")
    return (now + timedelta(days=days)).replace(microsecond=0)
