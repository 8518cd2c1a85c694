"""Per-user API keys, for clients that cannot present a certificate (docs/GATEWAY.md 12.3).

The users file is a DSSE envelope signed by the enclave CA's key, over
`{"format": "enclave-users/v1", "version": N, "users": [{"name", "roles", "key_sha256",
"keyid", "created"}]}`. It holds no key, only each key's SHA-256: a key is 256 random bits,
so a fast hash is as safe as a slow one and costs the gateway one hash per request. `version`
grows with every change; the gateway refuses to go back to a lower one (a replayed old file
would bring back a removed key).
"""

from __future__ import annotations

import hashlib
import json
import secrets
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from functools import cached_property
from pathlib import Path
from typing import Any, cast

from enclave.canonical import format_time
from enclave.errors import DocumentLimitError, TrustError, UsageError
from enclave.fileio import read_regular
from enclave.identity.ca import ROLES, Role, check_name, check_role
from enclave.strictjson import strict_json
from enclave.trust.dsse import Envelope, verify_signatures
from enclave.trust.keys import PublicKey, SigningKey
from enclave.trust.state import atomic_write

USERS_PAYLOAD_TYPE = "application/vnd.enclave.users+json"
USERS_FORMAT = "enclave-users/v1"
KEY_PREFIX = "enk_"
MAX_USERS_FILE = 16 << 20
_USER_FIELDS = frozenset({"name", "roles", "key_sha256", "keyid", "created"})


@dataclass(frozen=True)
class ApiUser:
    name: str
    roles: tuple[Role, ...]
    key_sha256: str
    keyid: str | None  # an approver's signing key
    created: str

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "roles": list(self.roles),
            "key_sha256": self.key_sha256,
            "keyid": self.keyid,
            "created": self.created,
        }


@dataclass(frozen=True)
class Users:
    version: int
    users: tuple[ApiUser, ...]

    @cached_property
    def _by_hash(self) -> dict[str, ApiUser]:
        return {u.key_sha256: u for u in self.users}

    def find(self, key: str) -> ApiUser | None:
        # A lookup by the hash of what was sent: timing tells nothing about the stored keys.
        return self._by_hash.get(key_hash(key))

    def payload(self) -> bytes:
        doc = {"format": USERS_FORMAT, "version": self.version, "users": [u.to_dict() for u in self.users]}
        return json.dumps(doc, sort_keys=True, separators=(",", ":")).encode("ascii")


def key_hash(key: str) -> str:
    return hashlib.sha256(key.encode("utf-8")).hexdigest()


def parse_users(data: bytes, ca_public: PublicKey, source: str) -> Users:
    """A users file signed by the CA key; TrustError when the signature fails, UsageError when
    the document is malformed."""
    envelope = Envelope.from_json(data, source, MAX_USERS_FILE, UsageError)
    if envelope.payload_type != USERS_PAYLOAD_TYPE:
        raise UsageError(f"{source}: payload type must be {USERS_PAYLOAD_TYPE}")
    if not verify_signatures(envelope, {ca_public.keyid: ca_public}).keys:
        raise TrustError(f"{source}: not signed by the client CA's key")
    try:
        doc = strict_json(envelope.payload, MAX_USERS_FILE)
    except DocumentLimitError as exc:
        raise UsageError(f"{source}: {exc}") from None
    except ValueError as exc:
        raise UsageError(f"{source}: payload is not JSON: {exc}") from None
    if not isinstance(doc, dict) or set(doc) != {"format", "version", "users"}:
        raise UsageError(f"{source}: payload needs exactly format, version, users")
    version = doc["version"]
    if doc["format"] != USERS_FORMAT or not isinstance(version, int) or isinstance(version, bool):
        raise UsageError(f"{source}: format must be {USERS_FORMAT} with an integer version")
    if not isinstance(doc["users"], list):
        raise UsageError(f"{source}: users must be a list")
    users: list[ApiUser] = []
    for index, entry in enumerate(doc["users"]):
        where = f"{source}: users[{index}]"
        if not isinstance(entry, dict) or set(entry) != _USER_FIELDS:
            raise UsageError(f"{where}: needs exactly {', '.join(sorted(_USER_FIELDS))}")
        roles, digest, keyid = entry["roles"], entry["key_sha256"], entry["keyid"]
        if not isinstance(roles, list) or not roles or any(r not in ROLES for r in roles):
            raise UsageError(f"{where}: roles must be a non-empty list of {', '.join(ROLES)}")
        if not isinstance(digest, str) or len(digest) != 64 or not set(digest) <= set("0123456789abcdef"):
            raise UsageError(f"{where}: key_sha256 must be 64 lowercase hex digits")
        if keyid is not None and not isinstance(keyid, str):
            raise UsageError(f"{where}: keyid must be a string or null")
        if not isinstance(entry["name"], str) or not isinstance(entry["created"], str):
            raise UsageError(f"{where}: name and created must be strings")
        users.append(ApiUser(entry["name"], tuple(cast(list[Role], roles)), digest, keyid, entry["created"]))
    names = [u.name for u in users]
    if len(set(names)) != len(names):
        raise UsageError(f"{source}: a name appears twice")
    return Users(version, tuple(users))


def load_users(path: Path, ca_public: PublicKey) -> Users:
    return parse_users(read_regular(path, "users file", MAX_USERS_FILE), ca_public, str(path))


def write_users(path: Path, users: Users, ca_key: SigningKey) -> None:
    envelope = Envelope(USERS_PAYLOAD_TYPE, users.payload())
    envelope.sign(ca_key)
    atomic_write(path, envelope.to_json() + b"\n", 0o644)


def add_api_key(
    path: Path,
    ca_key: SigningKey,
    name: str,
    roles: Sequence[str],
    approver_key: PublicKey | None = None,
    now: datetime | None = None,
) -> str:
    """Add a user with a new API key (returned once, never stored) and re-sign the file."""
    check_name(name)
    checked = tuple(dict.fromkeys(check_role(r) for r in roles))
    if not checked:
        raise UsageError("an API key needs at least one --role")
    if ("approver" in checked) != (approver_key is not None):
        raise UsageError("--approver-key is required for, and only for, the approver role")
    current = load_users(path, ca_key.public) if path.exists() else Users(0, ())
    if any(u.name == name for u in current.users):
        raise UsageError(f"{path}: user {name!r} already has a key; revoke it first")
    key = KEY_PREFIX + secrets.token_urlsafe(32)
    created = format_time(now or datetime.now(UTC))
    user = ApiUser(name, checked, key_hash(key), approver_key.keyid if approver_key else None, created)
    write_users(path, Users(current.version + 1, (*current.users, user)), ca_key)
    return key


def remove_api_key(path: Path, ca_key: SigningKey, name: str) -> Users:
    current = load_users(path, ca_key.public)
    kept = tuple(u for u in current.users if u.name != name)
    if len(kept) == len(current.users):
        raise UsageError(f"{path}: no API key for {name!r}")
    updated = Users(current.version + 1, kept)
    write_users(path, updated, ca_key)
    return updated
