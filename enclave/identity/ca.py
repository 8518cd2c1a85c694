"""The enclave CA: an offline ECDSA P-384 certificate authority for the gateway's users and hosts.

A CA directory holds `ca.key` (PKCS#8, encrypted like the signing keys: ENCLAVE_KEY_PASSPHRASE
or a prompt), `ca.key.pub`, `ca.pem` (the self-signed CA certificate: the gateway's
`--client-ca`), `crl.pem` (the signed certificate revocation list) and `index.json` (what was
issued and revoked). A certificate names its holder in the subject: CN = the user's name,
OU = the role (`user`, `approver`, `auditor`, `service`), O = `enclave`. An approver's
certificate also carries the keyid of the approver's signing key (a SubjectAltName URI
`urn:enclave:keyid:HEX`), so the gateway can tell that the person who asked is the person
who signs, and self-approval stays impossible. Server certificates carry their host names
and addresses. Everything is SHA-384 signed, keys on P-384 (CNSA 1.0).
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import ipaddress
import json
import os
import re
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, Literal, cast, get_args

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from enclave.canonical import format_time, parse_time
from enclave.errors import MALFORMED_DOCUMENT, IntegrityError, TrustError, UsageError
from enclave.fileio import os_error, read_regular
from enclave.trust.keys import PublicKey, SigningKey
from enclave.trust.state import atomic_write

Role = Literal["user", "approver", "auditor", "service"]
ROLES: tuple[Role, ...] = get_args(Role)
KEYID_URI = "urn:enclave:keyid:"
ORGANISATION = "enclave"
NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._@-]{0,63}$")
CA_KEY, CA_CERT, CRL_FILE, INDEX = "ca.key", "ca.pem", "crl.pem", "index.json"
INDEX_FORMAT = "enclave-ca-index/v1"
DEFAULT_CA_DAYS = 3650
DEFAULT_DAYS = 365
DEFAULT_CRL_DAYS = 30
MAX_PEM = 1 << 20
REASONS = {
    "unspecified": x509.ReasonFlags.unspecified,
    "key-compromise": x509.ReasonFlags.key_compromise,
    "superseded": x509.ReasonFlags.superseded,
    "cessation-of-operation": x509.ReasonFlags.cessation_of_operation,
    "affiliation-changed": x509.ReasonFlags.affiliation_changed,
}


@dataclass(frozen=True)
class CertIdentity:
    """What a certificate says about its holder."""

    name: str
    role: Role
    subject: str  # RFC 4514
    fingerprint: str  # sha256:HEX of the DER certificate
    serial: int
    not_before: datetime
    not_after: datetime
    keyid: str | None  # an approver's signing key
    hosts: tuple[str, ...] = ()

    @property
    def serial_hex(self) -> str:
        return format(self.serial, "x")

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "role": self.role,
            "subject": self.subject,
            "fingerprint": self.fingerprint,
            "serial": self.serial_hex,
            "not_before": format_time(self.not_before),
            "not_after": format_time(self.not_after),
            "keyid": self.keyid,
            "hosts": list(self.hosts),
        }


def check_name(name: str) -> str:
    if not NAME.match(name):
        raise UsageError(f"name {name!r}: 1-64 letters, digits, '.', '_', '@' or '-', starting alphanumeric")
    return name


def check_role(role: str) -> Role:
    if role not in ROLES:
        raise UsageError(f"role {role!r}: choose one of {', '.join(ROLES)}")
    return role


def certificate_identity(cert: x509.Certificate) -> CertIdentity:
    """The holder named by an enclave certificate; ValueError when it names none."""
    subject = cert.subject
    names = subject.get_attributes_for_oid(NameOID.COMMON_NAME)
    units = subject.get_attributes_for_oid(NameOID.ORGANIZATIONAL_UNIT_NAME)
    if len(names) != 1 or len(units) != 1:
        raise ValueError("the subject needs exactly one CN (the name) and one OU (the role)")
    name, role = str(names[0].value), str(units[0].value)
    if not NAME.match(name):
        raise ValueError(f"subject CN {name!r} is not a valid name")
    if role not in ROLES:
        raise ValueError(f"subject OU {role!r} is not a role ({', '.join(ROLES)})")
    keyid: str | None = None
    hosts: list[str] = []
    with contextlib.suppress(x509.ExtensionNotFound):
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        uris = [u for u in san.get_values_for_type(x509.UniformResourceIdentifier) if u.startswith(KEYID_URI)]
        if len(uris) > 1:
            raise ValueError("more than one signing keyid")
        if uris:
            keyid = uris[0][len(KEYID_URI) :]
            if not re.fullmatch(r"[0-9a-f]{64}", keyid):
                raise ValueError("malformed signing keyid")
        hosts = [*san.get_values_for_type(x509.DNSName), *map(str, san.get_values_for_type(x509.IPAddress))]
    der = cert.public_bytes(serialization.Encoding.DER)
    return CertIdentity(
        name=name,
        role=role,
        subject=subject.rfc4514_string(),
        fingerprint="sha256:" + hashlib.sha256(der).hexdigest(),
        serial=cert.serial_number,
        not_before=cert.not_valid_before_utc,
        not_after=cert.not_valid_after_utc,
        keyid=keyid,
        hosts=tuple(hosts),
    )


def load_certificate(path: Path, what: str = "certificate") -> x509.Certificate:
    data = read_regular(path, what, MAX_PEM)
    try:
        return x509.load_pem_x509_certificate(data)
    except ValueError as exc:
        raise UsageError(f"{path}: not a PEM certificate ({exc})") from None


def issued_by(cert: x509.Certificate, ca_cert: x509.Certificate) -> bool:
    """True when `ca_cert` signed `cert` (issuer name and signature)."""
    if cert.issuer != ca_cert.subject:
        return False
    try:
        cert.verify_directly_issued_by(ca_cert)
    except (ValueError, TypeError, InvalidSignature):
        return False
    return True


@dataclass
class CA:
    dir: Path
    cert: x509.Certificate
    key: SigningKey | None  # None when loaded for checking only

    @classmethod
    def load(cls, directory: Path, passphrase: bytes | None = None, with_key: bool = True) -> CA:
        if not (directory / CA_CERT).is_file():
            raise UsageError(
                f"{directory}: not a CA directory (no {CA_CERT}); create one with `enclave ca init`"
            )
        cert = load_certificate(directory / CA_CERT, "CA certificate")
        key = SigningKey.load(directory / CA_KEY, passphrase) if with_key else None
        if key is not None and key.public.spki_der != PublicKey.from_pem(_public_pem(cert)).spki_der:
            raise TrustError(f"{directory / CA_KEY}: does not belong to {directory / CA_CERT}")
        return cls(directory, cert, key)

    @property
    def public(self) -> PublicKey:
        return PublicKey.from_pem(_public_pem(self.cert), str(self.dir / CA_CERT))

    def _private(self) -> ec.EllipticCurvePrivateKey:
        assert self.key is not None and isinstance(self.key.key, ec.EllipticCurvePrivateKey)
        return self.key.key


def _public_pem(cert: x509.Certificate) -> bytes:
    return cert.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )


def init_ca(
    out: Path,
    name: str = "enclave CA",
    days: int = DEFAULT_CA_DAYS,
    passphrase: bytes | None = None,
    now: datetime | None = None,
    crl_days: int = DEFAULT_CRL_DAYS,
) -> CA:
    """Create a CA directory (new or empty): key, self-signed certificate, an empty signed CRL."""
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise UsageError(f"{out}: exists and is not an empty directory; refusing to overwrite a CA")
    if days < 1:
        raise UsageError("--days must be at least 1")
    now = now or datetime.now(UTC)
    try:
        out.mkdir(mode=0o700, parents=True, exist_ok=True)
    except OSError as exc:
        raise os_error(exc, out, "cannot create the CA directory") from None
    key = SigningKey.generate("ecdsa-p384")
    subject = x509.Name(
        [
            x509.NameAttribute(NameOID.COMMON_NAME, name),
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, ORGANISATION),
        ]
    )
    assert isinstance(key.key, ec.EllipticCurvePrivateKey)
    public = key.key.public_key()
    cert = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(public)
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - timedelta(minutes=5))
        .not_valid_after(now + timedelta(days=days))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(False, False, False, False, False, True, True, False, False), critical=True
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(public), critical=False)
        .sign(key.key, hashes.SHA384())
    )
    key.write(out / CA_KEY, passphrase)
    (out / CA_CERT).write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    ca = CA(out, cert, key)
    _write_index(out, {"format": INDEX_FORMAT, "crl_number": 0, "issued": [], "revoked": []})
    _sign_crl(ca, _read_index(out), now, crl_days)
    return ca


def issue(
    ca_dir: Path,
    name: str,
    role: str,
    out_prefix: Path,
    *,
    days: int = DEFAULT_DAYS,
    approver_key: PublicKey | None = None,
    hosts: Sequence[str] = (),
    key_passphrase: bytes | None = None,
    ca_passphrase: bytes | None = None,
    now: datetime | None = None,
) -> CertIdentity:
    """Issue a certificate and its new P-384 key: PREFIX.pem, PREFIX.key (0600), PREFIX.key.pub.

    `hosts` (DNS names or IP addresses) make it a server certificate too (the gateway's).
    An approver certificate needs `approver_key`, the approver's signing key (public part)."""
    check_name(name)
    checked = check_role(role)
    if days < 1:
        raise UsageError("--days must be at least 1")
    if checked == "approver" and approver_key is None:
        raise UsageError("an approver certificate needs --approver-key (the approver's signing key)")
    if checked != "approver" and approver_key is not None:
        raise UsageError("--approver-key only goes into approver certificates")
    certificate, key_path = Path(f"{out_prefix}.pem"), Path(f"{out_prefix}.key")
    for target in (certificate, key_path):
        if target.exists():
            raise UsageError(f"{target}: already exists; refusing to overwrite")
    now = now or datetime.now(UTC)
    with _locked(ca_dir):
        ca = CA.load(ca_dir, ca_passphrase)
        not_after = min(now + timedelta(days=days), ca.cert.not_valid_after_utc)
        key = SigningKey.generate("ecdsa-p384")
        assert isinstance(key.key, ec.EllipticCurvePrivateKey)
        public = key.key.public_key()
        subject = x509.Name(
            [
                x509.NameAttribute(NameOID.COMMON_NAME, name),
                x509.NameAttribute(NameOID.ORGANIZATIONAL_UNIT_NAME, checked),
                x509.NameAttribute(NameOID.ORGANIZATION_NAME, ORGANISATION),
            ]
        )
        usages = [ExtendedKeyUsageOID.CLIENT_AUTH]
        alt: list[x509.GeneralName] = []
        for host in hosts:
            try:
                alt.append(x509.IPAddress(ipaddress.ip_address(host)))
            except ValueError:
                alt.append(x509.DNSName(host))
        if hosts:
            usages.append(ExtendedKeyUsageOID.SERVER_AUTH)
        if approver_key is not None:
            alt.append(x509.UniformResourceIdentifier(KEYID_URI + approver_key.keyid))
        builder = (
            x509.CertificateBuilder()
            .subject_name(subject)
            .issuer_name(ca.cert.subject)
            .public_key(public)
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - timedelta(minutes=5))
            .not_valid_after(not_after)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(
                x509.KeyUsage(True, False, False, False, False, False, False, False, False), critical=True
            )
            .add_extension(x509.ExtendedKeyUsage(usages), critical=False)
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(public), critical=False)
            .add_extension(
                x509.AuthorityKeyIdentifier.from_issuer_public_key(ca._private().public_key()), critical=False
            )
        )
        if alt:
            builder = builder.add_extension(x509.SubjectAlternativeName(alt), critical=False)
        cert = builder.sign(ca._private(), hashes.SHA384())
        key.write(key_path, key_passphrase)
        certificate.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
        identity = certificate_identity(cert)
        index = _read_index(ca_dir)
        index["issued"].append(
            {
                "serial": identity.serial_hex,
                "name": name,
                "role": checked,
                "fingerprint": identity.fingerprint,
                "not_after": format_time(identity.not_after),
                "keyid": identity.keyid,
                "hosts": list(identity.hosts),
                "issued": format_time(now),
            }
        )
        _write_index(ca_dir, index)
    return identity


def revoke(
    ca_dir: Path,
    *,
    serial: str | None = None,
    cert: Path | None = None,
    reason: str = "unspecified",
    ca_passphrase: bytes | None = None,
    now: datetime | None = None,
    crl_days: int = DEFAULT_CRL_DAYS,
) -> tuple[int, Path]:
    """Revoke a certificate (by file or serial) and re-sign the CRL; returns (serial, CRL path).
    With neither, only re-signs the CRL (a fresh next-update time)."""
    if reason not in REASONS:
        raise UsageError(f"--reason {reason!r}: choose one of {', '.join(REASONS)}")
    now = now or datetime.now(UTC)
    with _locked(ca_dir):
        ca = CA.load(ca_dir, ca_passphrase)
        number: int | None = None
        if cert is not None:
            loaded = load_certificate(cert)
            if not issued_by(loaded, ca.cert):
                raise TrustError(f"{cert}: not issued by the CA in {ca_dir}")
            number = loaded.serial_number
        elif serial is not None:
            try:
                number = int(serial.lower().removeprefix("0x").replace(":", ""), 16)
            except ValueError:
                raise UsageError(f"--serial {serial!r}: expected the serial in hex") from None
        index = _read_index(ca_dir)
        if number is not None:
            if cert is None and not any(int(i["serial"], 16) == number for i in index["issued"]):
                raise UsageError(f"--serial {serial}: this CA never issued it (see {ca_dir / INDEX})")
            if not any(int(r["serial"], 16) == number for r in index["revoked"]):
                index["revoked"].append(
                    {"serial": format(number, "x"), "time": format_time(now), "reason": reason}
                )
        path = _sign_crl(ca, index, now, crl_days)
    return (number or 0), path


def _sign_crl(ca: CA, index: dict[str, Any], now: datetime, days: int) -> Path:
    if days < 1:
        raise UsageError("--crl-days must be at least 1")
    index["crl_number"] = int(index["crl_number"]) + 1
    builder = (
        x509.CertificateRevocationListBuilder()
        .issuer_name(ca.cert.subject)
        .last_update(now - timedelta(minutes=5))
        .next_update(now + timedelta(days=days))
        .add_extension(x509.CRLNumber(index["crl_number"]), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca._private().public_key()), critical=False
        )
    )
    for entry in index["revoked"]:
        revoked = (
            x509.RevokedCertificateBuilder()
            .serial_number(int(entry["serial"], 16))
            .revocation_date(parse_time(entry["time"]))
            .add_extension(x509.CRLReason(REASONS[entry["reason"]]), critical=False)
            .build()
        )
        builder = builder.add_revoked_certificate(revoked)
    crl = builder.sign(ca._private(), hashes.SHA384())
    path = ca.dir / CRL_FILE
    # Atomic: a gateway reloading the CRL sees the old list or the new one, never half of one.
    atomic_write(path, crl.public_bytes(serialization.Encoding.PEM), 0o644)
    _write_index(ca.dir, index)
    return path


@dataclass(frozen=True)
class RevocationList:
    revoked: frozenset[int]
    number: int
    next_update: datetime

    def stale(self, now: datetime) -> bool:
        return now >= self.next_update


def load_crl(path: Path, ca_cert: x509.Certificate, now: datetime | None = None) -> RevocationList:
    """A CRL signed by `ca_cert`, not past its next update; TrustError otherwise."""
    data = read_regular(path, "CRL", 64 * MAX_PEM)
    try:
        crl = x509.load_pem_x509_crl(data)
    except ValueError as exc:
        raise UsageError(f"{path}: not a PEM CRL ({exc})") from None
    if crl.issuer != ca_cert.subject:
        raise TrustError(f"{path}: issued by {crl.issuer.rfc4514_string()}, not by the client CA")
    public = ca_cert.public_key()
    if not isinstance(public, ec.EllipticCurvePublicKey) or not crl.is_signature_valid(public):
        raise TrustError(f"{path}: the CRL's signature does not verify against the client CA")
    next_update = crl.next_update_utc
    if next_update is None:
        raise TrustError(f"{path}: the CRL has no next-update time")
    if now is not None and now >= next_update:
        raise TrustError(
            f"{path}: the CRL expired at {format_time(next_update)}; "
            "re-sign it with `enclave ca revoke --ca DIR`"
        )
    try:
        number = int(crl.extensions.get_extension_for_class(x509.CRLNumber).value.crl_number)
    except x509.ExtensionNotFound:
        number = 0
    return RevocationList(frozenset(r.serial_number for r in crl), number, next_update)


# -- the index (the CA's own bookkeeping) ------------------------------------------------------------
def _read_index(directory: Path) -> dict[str, Any]:
    path = directory / INDEX
    try:
        doc = json.loads(read_regular(path, "CA index"))
        if doc["format"] != INDEX_FORMAT or not isinstance(doc["issued"], list):
            raise ValueError("unknown format")
        if not isinstance(doc["revoked"], list) or not isinstance(doc["crl_number"], int):
            raise ValueError("malformed")
        return cast(dict[str, Any], doc)
    except MALFORMED_DOCUMENT as exc:
        raise IntegrityError(f"{path}: malformed CA index: {exc}") from None


def _write_index(directory: Path, index: dict[str, Any]) -> None:
    atomic_write(directory / INDEX, (json.dumps(index, indent=2, sort_keys=True) + "\n").encode(), 0o600)


@contextlib.contextmanager
def _locked(directory: Path) -> Iterator[None]:
    """One writer of a CA directory at a time (two `ca issue` runs would lose an index entry)."""
    if not directory.is_dir():
        raise UsageError(f"{directory}: not a CA directory; create one with `enclave ca init`")
    try:
        fd = os.open(directory / ".lock", os.O_WRONLY | os.O_CREAT, 0o600)
    except OSError as exc:
        raise os_error(exc, directory / ".lock", "cannot lock the CA directory") from None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)
