"""Who is asking, and may they: identities from TLS client certificates or API keys, the CRL and
users file reloaded when they change, roles, and per-user token buckets (docs/GATEWAY.md 12).

Single-threaded: call from the event loop only. Certificates are parsed once per distinct
certificate (a keep-alive connection presents the same one on every request); time, CRL and
role checks run on every request, so a revocation cuts off connections already open.
"""

from __future__ import annotations

import os
import ssl
import time
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal

from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from enclave.canonical import format_time
from enclave.errors import EnclaveError, UsageError
from enclave.identity.ca import CertIdentity, RevocationList, certificate_identity, load_certificate, load_crl
from enclave.identity.users import Users, load_users
from enclave.trust.keys import PublicKey

Method = Literal["mtls", "api-key", "requester-token"]
BEARER = "bearer "
MAX_CACHED = 10_000


@dataclass(frozen=True)
class Identity:
    name: str
    method: Method
    roles: frozenset[str]
    keyid: str | None = None  # an approver's signing key
    subject: str | None = None  # certificate subject (RFC 4514)
    fingerprint: str | None = None  # sha256: of the certificate

    def has(self, *roles: str) -> bool:
        return not self.roles.isdisjoint(roles)

    def record(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "method": self.method,
            "roles": sorted(self.roles),
            "subject": self.subject,
            "fingerprint": self.fingerprint,
            "keyid": self.keyid,
        }


def token_identity(keyid: str) -> Identity:
    """A requester known only by a signed X-Enclave-Requester token (no TLS identity configured)."""
    return Identity(keyid, "requester-token", frozenset({"approver"}), keyid)


class AuthFailure(Exception):
    """401: no identity, or one the gateway does not accept. `user` is what could be read of it."""

    def __init__(self, code: str, message: str, user: dict[str, Any] | None = None) -> None:
        super().__init__(message)
        self.code = code
        self.user = user


@dataclass
class _Watched:
    """A file reloaded when its size, inode or modification time changes."""

    path: Path
    stamp: tuple[int, int, int] | None = None

    def changed(self) -> bool:
        try:
            st = os.stat(self.path)
            stamp = (st.st_ino, st.st_size, st.st_mtime_ns)
        except OSError:
            stamp = (0, 0, 0)
        if stamp == self.stamp:
            return False
        self.stamp = stamp
        return True


class Authenticator:
    """Checks the client certificate (mutual TLS) or the API key of every request."""

    def __init__(
        self, client_ca: Path, crl: Path | None = None, users: Path | None = None, check_seconds: float = 1.0
    ) -> None:
        self.ca_path = client_ca
        self.ca = load_certificate(client_ca, "client CA certificate")
        self.ca_public = PublicKey.from_pem(
            self.ca.public_key().public_bytes(Encoding.PEM, PublicFormat.SubjectPublicKeyInfo), str(client_ca)
        )
        self._check_seconds = check_seconds
        self._next_check = 0.0
        self._cache: dict[bytes, CertIdentity | str] = {}
        self._crl_file = _Watched(crl) if crl else None
        self._users_file = _Watched(users) if users else None
        self.crl: RevocationList | None = None
        self.crl_error: str | None = None
        self.users: Users | None = None
        self.users_error: str | None = None
        self._users_floor = 0  # the highest users-file version seen: never go back below it
        self._crl_floor = 0  # the same for CRL numbers
        self.events: list[dict[str, Any]] = []  # reloads, for the audit log
        now = datetime.now(UTC)
        if not self.ca.not_valid_before_utc <= now < self.ca.not_valid_after_utc:
            raise UsageError(f"{client_ca}: the client CA certificate is not valid now")
        # At start a CRL or users file that does not load stops the gateway (fail closed).
        if self._crl_file is not None:
            self._crl_file.changed()
            self.crl = load_crl(self._crl_file.path, self.ca, now)
            self._crl_floor = self.crl.number
        if self._users_file is not None:
            self._users_file.changed()
            self.users = load_users(self._users_file.path, self.ca_public)
            self._users_floor = self.users.version
        self._next_check = time.monotonic() + check_seconds

    @property
    def api_keys(self) -> bool:
        return self._users_file is not None

    def describe(self) -> dict[str, Any]:
        """For the gateway-start record."""
        return {
            "client_ca": str(self.ca_path),
            "client_ca_subject": self.ca.subject.rfc4514_string(),
            "client_ca_keyid": self.ca_public.keyid,
            "crl": str(self._crl_file.path) if self._crl_file else None,
            "crl_number": self.crl.number if self.crl else None,
            "users": str(self._users_file.path) if self._users_file else None,
            "users_version": self.users.version if self.users else None,
        }

    # -- reloading --------------------------------------------------------------------------------
    def refresh(self, now: float | None = None) -> None:
        """Reload the CRL and users file when they changed (checked at most once a second)."""
        moment = time.monotonic() if now is None else now
        if moment < self._next_check:
            return
        self._next_check = moment + self._check_seconds
        if self._crl_file is not None and self._crl_file.changed():
            self._reload_crl(self._crl_file.path)
        if self._users_file is not None and self._users_file.changed():
            self._reload_users(self._users_file.path)

    def _reload_crl(self, path: Path) -> None:
        try:
            crl = load_crl(path, self.ca, datetime.now(UTC))
        except EnclaveError as exc:
            # Fail closed: without a CRL that verifies, no certificate is accepted.
            self.crl, self.crl_error = None, str(exc)
            self.events.append({"event": "identity-reload", "file": "crl", "ok": False, "detail": str(exc)})
            return
        if crl.number < self._crl_floor:  # an old list put back would un-revoke certificates
            self.crl, self.crl_error = (
                None,
                f"{path}: CRL number {crl.number} is older than {self._crl_floor}",
            )
        else:
            self.crl, self.crl_error, self._crl_floor = crl, None, crl.number
        self.events.append(
            {
                "event": "identity-reload",
                "file": "crl",
                "ok": self.crl is not None,
                "crl_number": crl.number,
                "revoked": len(crl.revoked),
                "detail": self.crl_error,
            }
        )

    def _reload_users(self, path: Path) -> None:
        try:
            users = load_users(path, self.ca_public)
        except EnclaveError as exc:
            self.users, self.users_error = None, str(exc)
            self.events.append({"event": "identity-reload", "file": "users", "ok": False, "detail": str(exc)})
            return
        known = self._users_floor
        if users.version < known:
            self.users, self.users_error = None, f"{path}: version {users.version} is older than {known}"
        else:
            self.users, self.users_error = users, None
            self._users_floor = users.version
        self.events.append(
            {
                "event": "identity-reload",
                "file": "users",
                "ok": self.users is not None,
                "users_version": users.version,
                "users": len(users.users),
                "detail": self.users_error,
            }
        )

    # -- authentication ---------------------------------------------------------------------------
    def authenticate(self, ssl_object: ssl.SSLObject | None, authorization: str | None) -> Identity:
        """The identity of one request: the certificate when one was presented, else the API key."""
        self.refresh()
        der = ssl_object.getpeercert(binary_form=True) if ssl_object is not None else None
        if der:
            return self._certificate(der)
        if authorization is not None and authorization[: len(BEARER)].lower() == BEARER and self.api_keys:
            return self._api_key(authorization[len(BEARER) :].strip())
        methods = "a client certificate" + (" or an API key" if self.api_keys else "")
        raise AuthFailure("authentication_required", f"authentication required: present {methods}")

    def _certificate(self, der: bytes) -> Identity:
        parsed = self._cache.get(der)
        if parsed is None:
            try:
                parsed = certificate_identity(x509.load_der_x509_certificate(der))
            except ValueError as exc:
                parsed = str(exc)
            if len(self._cache) >= MAX_CACHED:
                self._cache.clear()
            self._cache[der] = parsed
        if isinstance(parsed, str):
            raise AuthFailure("bad_certificate", f"client certificate names no enclave user: {parsed}")
        user = {
            "name": parsed.name,
            "method": "mtls",
            "subject": parsed.subject,
            "fingerprint": parsed.fingerprint,
        }
        now = datetime.now(UTC)
        if now >= parsed.not_after:
            raise AuthFailure(
                "certificate_expired",
                f"client certificate expired at {format_time(parsed.not_after)}",
                user,
            )
        if now < parsed.not_before:
            raise AuthFailure("certificate_not_yet_valid", "client certificate is not valid yet", user)
        if now >= self.ca.not_valid_after_utc:
            raise AuthFailure("ca_expired", "the client CA certificate has expired", user)
        if self._crl_file is not None:
            if self.crl is None or self.crl.stale(now):
                reason = self.crl_error or "the CRL is past its next update; re-sign it (enclave ca revoke)"
                raise AuthFailure("crl_unavailable", f"no valid CRL: {reason}", user)
            if parsed.serial in self.crl.revoked:
                raise AuthFailure(
                    "certificate_revoked", f"client certificate {parsed.serial_hex} is revoked", user
                )
        if parsed.role == "approver" and parsed.keyid is None:
            raise AuthFailure(
                "bad_certificate", "an approver certificate must name the approver's signing key", user
            )
        return Identity(
            parsed.name, "mtls", frozenset({parsed.role}), parsed.keyid, parsed.subject, parsed.fingerprint
        )

    def _api_key(self, key: str) -> Identity:
        if self.users is None:
            raise AuthFailure("users_unavailable", f"API keys cannot be checked: {self.users_error}")
        user = self.users.find(key)
        if user is None:
            raise AuthFailure("unknown_api_key", "unknown API key")
        return Identity(user.name, "api-key", frozenset(user.roles), user.keyid)


class RateLimiter:
    """A token bucket per user: `rate` requests a second on average, bursts of `burst`."""

    def __init__(self, rate: float, burst: int) -> None:
        if rate <= 0 or burst < 1:
            raise UsageError("--rate-limit must be positive and --rate-burst at least 1")
        self.rate = rate
        self.burst = burst
        self._buckets: dict[str, tuple[float, float]] = {}

    def take(self, name: str, now: float) -> float:
        """0 when the request may go (one token taken), else the seconds until a token is due."""
        tokens, last = self._buckets.get(name, (float(self.burst), now))
        tokens = min(float(self.burst), tokens + (now - last) * self.rate)
        if tokens >= 1.0:
            self._buckets[name] = (tokens - 1.0, now)
            return 0.0
        self._buckets[name] = (tokens, now)
        return (1.0 - tokens) / self.rate

    def describe(self) -> dict[str, Any]:
        return {"rate_per_second": self.rate, "burst": self.burst}


def roles_text(roles: Iterable[str]) -> str:
    return " or ".join(sorted(roles))
