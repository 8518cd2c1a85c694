"""The gateway's mutual TLS material (`enclave provision --gateway-tls DIR`), checked on the
controller before any host is contacted.

The enclave CA stays offline: the sysadmin issues each host's certificates beforehand and hands
provision a directory (docs/OPERATIONS.md section 7, "Mutual TLS on the hosts"):

    DIR/ca.pem                     the enclave CA certificate: every gateway's --client-ca
    DIR/crl.pem                    optional: the CA's signed CRL (--crl; reloaded when replaced)
    DIR/HOST/gateway.pem, .key     per inventory host: the gateway's server certificate (role
                                   service, issued with --host for the gateway's address)
    DIR/HOST/agent.pem, .key       per inventory host, when the bundle carries the agent: its
                                   service certificate (presented to the gateway for canaries;
                                   it serves the agent's /metrics too, so --host as well)

Every selected host must have certificates issued by that CA, valid now, of role `service`,
for server use, naming the address the gateway binds, not revoked by the CRL, with a key that
matches and opens with the passphrase the containers get (the audit key's: both read
ENCLAVE_KEY_PASSPHRASE). Anything else is one UsageError naming the host and the reason.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.x509.oid import ExtendedKeyUsageOID

from enclave.canonical import format_time
from enclave.errors import EnclaveError, UsageError
from enclave.identity.ca import (
    CertIdentity,
    RevocationList,
    certificate_identity,
    issued_by,
    load_certificate,
    load_crl,
)
from enclave.provision.inventory import Host
from enclave.trust.keys import SigningKey

CA_FILE = "ca.pem"
CRL_FILE = "crl.pem"
GATEWAY = "gateway"
AGENT = "agent"
ADDRESS_VAR = "enclave_deploy_gateway_address"
PORT_VAR = "enclave_deploy_gateway_port"
DEFAULT_PORT = 8080
ROLE = "service"


@dataclass(frozen=True)
class Pair:
    """A certificate and its key, checked."""

    cert: Path
    key: Path
    identity: CertIdentity

    def to_dict(self) -> dict[str, Any]:
        i = self.identity
        return {
            "name": i.name,
            "fingerprint": i.fingerprint,
            "serial": i.serial_hex,
            "notAfter": format_time(i.not_after),
            "hosts": list(i.hosts),
        }


@dataclass(frozen=True)
class HostMaterial:
    host: str
    address: str
    gateway: Pair
    agent: Pair | None


@dataclass(frozen=True)
class GatewayTLS:
    dir: Path
    ca: Path
    ca_identity: dict[str, str]
    crl: Path | None
    crl_number: int | None
    hosts: Mapping[str, HostMaterial]

    def extravars(self) -> dict[str, Any]:
        """What enclave_deploy needs: where the files are (paths only: the keys travel through
        the copy module, under no_log) and what was checked (recorded in deployment.json)."""
        return {
            "enclave_deploy_tls_dir": str(self.dir),
            "enclave_deploy_tls_crl": self.crl is not None,
            "enclave_deploy_tls_checked": self.record(),
        }

    def record(self) -> dict[str, Any]:
        return {
            "clientCa": self.ca_identity,
            "crl": {"number": self.crl_number} if self.crl is not None else None,
            "hosts": {
                name: {
                    "address": m.address,
                    "gateway": m.gateway.to_dict(),
                    "agent": m.agent.to_dict() if m.agent else None,
                }
                for name, m in self.hosts.items()
            },
        }


def gateway_address(host: Host, extravars: Mapping[str, Any]) -> str:
    """The address the gateway binds on `host`: what enclave_deploy computes (extra vars win
    over inventory variables, which win over the connection address)."""
    value = extravars.get(ADDRESS_VAR, host.vars.get(ADDRESS_VAR, host.address))
    text = str(value)
    if "{{" in text or "{%" in text:
        raise UsageError(f"host {host.name}: {ADDRESS_VAR} is a template; give enclave a literal value")
    return text


def gateway_url(host: Host, extravars: Mapping[str, Any], tls: bool) -> str:
    address = gateway_address(host, extravars)
    port = extravars.get(PORT_VAR, host.vars.get(PORT_VAR, DEFAULT_PORT))
    shown = f"[{address}]" if ":" in address else address
    return f"{'https' if tls else 'http'}://{shown}:{port}"


def check_material(
    directory: Path,
    hosts: Sequence[Host],
    *,
    agent: bool,
    passphrase: bytes | None,
    now: datetime,
    extravars: Mapping[str, Any] | None = None,
) -> GatewayTLS:
    """Check DIR for every host in `hosts` (module docstring); UsageError at the first problem."""
    extra = extravars or {}
    base = directory.resolve()
    if not base.is_dir():
        raise UsageError(f"{directory}: not a directory of gateway TLS material")
    ca_path = base / CA_FILE
    if not ca_path.is_file():
        raise UsageError(f"{directory}: no {CA_FILE} (the enclave CA certificate, from `enclave ca init`)")
    ca = _ca(ca_path, now)
    crl_path: Path | None = base / CRL_FILE
    crl: RevocationList | None = None
    if crl_path is not None and crl_path.exists():
        crl = load_crl(crl_path, ca, now)  # signed by the CA and current, as the gateway requires
    else:
        crl_path = None
    material: dict[str, HostMaterial] = {}
    for host in hosts:
        address = gateway_address(host, extra)

        def fail(reason: str, name: str = host.name) -> UsageError:
            return UsageError(f"{directory}: host {name}: {reason}")  # one line, the host named

        if not (base / host.name).is_dir():
            raise fail(
                f"no certificates: {base / host.name}/ is missing (issue them with `enclave ca issue "
                f"--role service --host {address} --out {base / host.name}/gateway`)"
            )
        gateway = _pair(base / host.name, GATEWAY, ca, crl, address, passphrase, now, fail)
        agent_pair = (
            _pair(base / host.name, AGENT, ca, crl, address, passphrase, now, fail) if agent else None
        )
        material[host.name] = HostMaterial(host.name, address, gateway, agent_pair)
    ca_identity = {
        "subject": ca.subject.rfc4514_string(),
        "fingerprint": "sha256:" + ca.fingerprint(hashes.SHA256()).hex(),
    }
    return GatewayTLS(base, ca_path, ca_identity, crl_path, crl.number if crl else None, material)


def _ca(path: Path, now: datetime) -> x509.Certificate:
    ca = load_certificate(path, "CA certificate")
    try:
        constraints = ca.extensions.get_extension_for_class(x509.BasicConstraints).value
    except x509.ExtensionNotFound:
        constraints = None
    if constraints is None or not constraints.ca:
        raise UsageError(f"{path}: not a CA certificate (give the enclave CA's ca.pem)")
    if not ca.not_valid_before_utc <= now < ca.not_valid_after_utc:
        raise UsageError(
            f"{path}: the CA certificate is not valid now (until {format_time(ca.not_valid_after_utc)})"
        )
    return ca


def _pair(
    folder: Path,
    stem: str,
    ca: x509.Certificate,
    crl: RevocationList | None,
    address: str,
    passphrase: bytes | None,
    now: datetime,
    fail: Callable[[str], UsageError],
) -> Pair:
    cert_path, key_path = folder / f"{stem}.pem", folder / f"{stem}.key"
    for path in (cert_path, key_path):
        if not path.is_file():
            raise fail(f"{stem} certificate missing: no {path}")
    try:
        cert = load_certificate(cert_path)
    except EnclaveError as exc:
        raise fail(str(exc)) from None
    if not issued_by(cert, ca):
        raise fail(
            f"{cert_path.name} was not issued by the CA in {CA_FILE} (issuer {cert.issuer.rfc4514_string()})"
        )
    try:
        identity = certificate_identity(cert)
    except ValueError as exc:
        raise fail(f"{cert_path.name} names no enclave identity: {exc}") from None
    if now >= identity.not_after:
        raise fail(f"{cert_path.name} expired at {format_time(identity.not_after)}")
    if now < identity.not_before:
        raise fail(f"{cert_path.name} is not valid before {format_time(identity.not_before)}")
    if identity.role != ROLE:
        raise fail(f"{cert_path.name} has role {identity.role}; a host's certificates have role {ROLE}")
    if not _server_use(cert):
        raise fail(f"{cert_path.name} is not a server certificate (issue it with --host {address})")
    if not _names(identity.hosts, address):
        names = ", ".join(identity.hosts) or "no address"
        raise fail(f"{cert_path.name} names {names}, not the gateway's address {address}")
    if crl is not None and identity.serial in crl.revoked:
        raise fail(f"{cert_path.name} is revoked (serial {identity.serial_hex} is in {CRL_FILE})")
    try:
        key = SigningKey.load(key_path, passphrase or b"")
    except EnclaveError:
        raise fail(
            f"{key_path.name} does not open with the audit key's passphrase (the containers read every "
            "key with ENCLAVE_KEY_PASSPHRASE: issue it with the same passphrase, or --no-passphrase)"
        ) from None
    public = cert.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    if key.public.spki_der != public:
        raise fail(f"{key_path.name} is not the key of {cert_path.name}")
    return Pair(cert_path, key_path, identity)


def _server_use(cert: x509.Certificate) -> bool:
    try:
        usages = cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    except x509.ExtensionNotFound:
        return True  # no EKU: any use
    return ExtendedKeyUsageOID.SERVER_AUTH in usages


def _names(names: Sequence[str], address: str) -> bool:
    """True when a SAN of the certificate is `address` (IP addresses compared as addresses,
    names case-insensitively; no wildcards: the CA issues none)."""
    try:
        wanted: ipaddress.IPv4Address | ipaddress.IPv6Address | str = ipaddress.ip_address(address)
    except ValueError:
        wanted = address.lower().rstrip(".")
    for name in names:
        try:
            if ipaddress.ip_address(name) == wanted:
                return True
        except ValueError:
            if name.lower().rstrip(".") == wanted:
                return True
    return False


def report_entry(
    deploy: Mapping[str, Any], hosts: Sequence[Host], extravars: Mapping[str, Any]
) -> dict[str, Any]:
    """The run report's `gateway`: how the gateways were deployed (callers: only when the bundle
    carries the gateway)."""
    checked = deploy.get("enclave_deploy_tls_checked")
    urls = {h.name: gateway_url(h, extravars, bool(checked)) for h in hosts}
    if not checked:
        return {
            "tls": None,
            "urls": urls,
            "access": "plain HTTP: anyone who reaches a gateway may call it and no record names the "
            "user (give the TLS material: enclave provision --gateway-tls DIR)",
        }
    return {"tls": "mutual", "urls": urls, **checked}


def summary_line(entry: Mapping[str, Any]) -> str:
    urls = ", ".join(entry["urls"].values())
    if entry["tls"] is None:
        return f"gateway: {urls}: {entry['access']}"
    return f"gateway: mutual TLS 1.3 on {urls} (client CA {entry['clientCa']['subject']})"
