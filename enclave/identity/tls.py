"""TLS contexts for the gateway and its clients: TLS 1.3, P-384, AES-256-GCM-SHA384 first.

Server side: TLS 1.3 only unless TLS 1.2 is asked for (then ECDHE with AES-256-GCM-SHA384
only); key exchange on P-384 only (every mainstream TLS stack offers it); the server's cipher
order wins, and OpenSSL's TLS 1.3 list starts with TLS_AES_256_GCM_SHA384, so a client that
offers it gets it (Python 3.11 cannot narrow the TLS 1.3 list further). With a client CA the
server asks every client for a certificate (mutual TLS) and verifies its chain during the
handshake; a certificate from another CA ends the handshake. The validity period is left to
the gateway (X509_V_FLAG_NO_CHECK_TIME), which checks it on every request together with the
CRL, so an expired or revoked certificate gets an HTTP 401 and a record instead of a bare
TLS alert.
"""

from __future__ import annotations

import ssl
from pathlib import Path

from enclave.errors import UsageError
from enclave.trust.keys import passphrase_for

CURVE = "secp384r1"
TLS12_CIPHERS = "ECDHE-ECDSA-AES256-GCM-SHA384:ECDHE-RSA-AES256-GCM-SHA384"
NO_CHECK_TIME = 0x200000  # OpenSSL's X509_V_FLAG_NO_CHECK_TIME


def _password(key: Path, passphrase: bytes | None) -> bytes | None:
    return passphrase if passphrase is not None else passphrase_for(key)


def _load_chain(context: ssl.SSLContext, cert: Path, key: Path, passphrase: bytes | None) -> None:
    try:
        context.load_cert_chain(cert, key, password=_password(key, passphrase))
    except (ssl.SSLError, OSError) as exc:
        raise UsageError(f"{cert}, {key}: cannot load the certificate and key: {exc}") from None


def _load_ca(context: ssl.SSLContext, ca: Path) -> None:
    try:
        context.load_verify_locations(cafile=ca)
    except (ssl.SSLError, OSError) as exc:
        raise UsageError(f"{ca}: cannot load the CA certificate: {exc}") from None


def server_context(
    cert: Path,
    key: Path,
    client_ca: Path | None = None,
    *,
    tls12: bool = False,
    passphrase: bytes | None = None,
) -> ssl.SSLContext:
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = ssl.TLSVersion.TLSv1_2 if tls12 else ssl.TLSVersion.TLSv1_3
    context.set_ciphers(TLS12_CIPHERS)
    context.set_ecdh_curve(CURVE)
    context.options |= ssl.OP_CIPHER_SERVER_PREFERENCE | ssl.OP_NO_COMPRESSION
    _load_chain(context, cert, key, passphrase)
    if client_ca is not None:
        _load_ca(context, client_ca)
        # Asked for, not required: a client without a certificate may still present an API
        # key, and one with neither gets an HTTP 401 with a record rather than a TLS alert.
        context.verify_mode = ssl.CERT_OPTIONAL
        context.verify_flags = ssl.VerifyFlags(int(context.verify_flags) | NO_CHECK_TIME)
    return context


def client_context(
    ca: Path,
    cert: Path | None = None,
    key: Path | None = None,
    *,
    passphrase: bytes | None = None,
    tls12: bool = False,
) -> ssl.SSLContext:
    """A client's context: trusts `ca` for the server, presents `cert`/`key` when given."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.minimum_version = ssl.TLSVersion.TLSv1_2 if tls12 else ssl.TLSVersion.TLSv1_3
    context.set_ciphers(TLS12_CIPHERS)
    _load_ca(context, ca)
    if cert is not None:
        if key is None:
            raise UsageError(f"{cert}: a client certificate needs its key")
        _load_chain(context, cert, key, passphrase)
    return context
