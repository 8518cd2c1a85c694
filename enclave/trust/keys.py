"""Keys and raw signatures: ECDSA P-384 (CNSA 1.0) and ML-DSA-87 (CNSA 2.0, FIPS 204).

The only module that touches private-key material. Everything else sees `SigningKey`
(sign bytes) and `PublicKey` (verify bytes), identified by a keyid: the SHA-256 of the
public key's SubjectPublicKeyInfo DER, in hex.
"""

from __future__ import annotations

import getpass
import hashlib
import os
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, mldsa

from enclave.errors import UsageError
from enclave.fileio import read_regular

Algorithm = Literal["ecdsa-p384", "ml-dsa-87"]
ALGORITHMS: tuple[Algorithm, ...] = ("ecdsa-p384", "ml-dsa-87")

# Signature scheme names (docs/FORMAT.md) and their TUF keytype/scheme spelling in root.json.
SCHEME_BY_ALGORITHM: dict[Algorithm, str] = {
    "ecdsa-p384": "ecdsa-p384-sha384",
    "ml-dsa-87": "ml-dsa-87",
}
TUF_KEYTYPE: dict[Algorithm, tuple[str, str]] = {
    "ecdsa-p384": ("ecdsa", "ecdsa-sha2-nistp384"),
    "ml-dsa-87": ("ml-dsa", "ml-dsa-87"),
}
POST_QUANTUM: frozenset[Algorithm] = frozenset({"ml-dsa-87"})

PASSPHRASE_ENV = "ENCLAVE_KEY_PASSPHRASE"
_ECDSA = ec.ECDSA(hashes.SHA384(), deterministic_signing=True)  # RFC 6979: reproducible

_PrivateKey = ec.EllipticCurvePrivateKey | mldsa.MLDSA87PrivateKey
_PublicKey = ec.EllipticCurvePublicKey | mldsa.MLDSA87PublicKey


def _algorithm_of(key: _PublicKey) -> Algorithm:
    if isinstance(key, ec.EllipticCurvePublicKey):
        if not isinstance(key.curve, ec.SECP384R1):
            raise UsageError(f"ECDSA key on curve {key.curve.name}: only P-384 is allowed")
        return "ecdsa-p384"
    return "ml-dsa-87"


@dataclass(frozen=True)
class PublicKey:
    """A verification key with its algorithm and keyid."""

    key: _PublicKey
    algorithm: Algorithm

    @classmethod
    def from_pem(cls, pem: bytes, source: str = "public key") -> PublicKey:
        try:
            key = serialization.load_pem_public_key(pem)
        except (ValueError, UnsupportedAlgorithm) as exc:
            raise UsageError(f"{source}: not a PEM public key ({exc})") from None
        if not isinstance(key, ec.EllipticCurvePublicKey | mldsa.MLDSA87PublicKey):
            raise UsageError(f"{source}: unsupported key type {type(key).__name__}")
        return cls(key, _algorithm_of(key))

    @classmethod
    def load(cls, path: Path) -> PublicKey:
        return cls.from_pem(_read(path), str(path))

    @property
    def spki_der(self) -> bytes:
        return self.key.public_bytes(
            serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
        )

    @property
    def pem(self) -> str:
        return self.key.public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        ).decode("ascii")

    @property
    def keyid(self) -> str:
        return hashlib.sha256(self.spki_der).hexdigest()

    @property
    def scheme(self) -> str:
        return SCHEME_BY_ALGORITHM[self.algorithm]

    @property
    def post_quantum(self) -> bool:
        return self.algorithm in POST_QUANTUM

    def verify(self, signature: bytes, data: bytes) -> bool:
        """True when `signature` is a valid signature of `data` by this key; never raises."""
        try:
            if isinstance(self.key, ec.EllipticCurvePublicKey):
                self.key.verify(signature, data, ec.ECDSA(hashes.SHA384()))
            else:
                self.key.verify(signature, data)
        except (InvalidSignature, ValueError):
            return False
        return True


@dataclass(frozen=True)
class SigningKey:
    """A private key that signs bytes."""

    key: _PrivateKey
    public: PublicKey

    @classmethod
    def generate(cls, algorithm: Algorithm) -> SigningKey:
        key: _PrivateKey
        if algorithm == "ecdsa-p384":
            key = ec.generate_private_key(ec.SECP384R1())
        elif algorithm == "ml-dsa-87":
            key = mldsa.MLDSA87PrivateKey.generate()
        else:
            raise UsageError(f"unknown algorithm {algorithm!r}: choose one of {', '.join(ALGORITHMS)}")
        return cls(key, PublicKey(key.public_key(), algorithm))

    @classmethod
    def load(cls, path: Path, passphrase: bytes | None = None) -> SigningKey:
        """Load a PKCS#8 PEM private key; asks for a passphrase only when the key is encrypted."""
        pem = _read(path)
        encrypted = _is_encrypted(pem)
        if encrypted and passphrase is None:
            passphrase = read_passphrase(f"passphrase for {path}: ")
        try:
            key = serialization.load_pem_private_key(pem, passphrase if encrypted else None)
        except (ValueError, TypeError, UnsupportedAlgorithm) as exc:
            reason = "wrong passphrase or not a PKCS#8 PEM key" if encrypted else str(exc)
            raise UsageError(f"{path}: cannot load private key: {reason}") from None
        if not isinstance(key, ec.EllipticCurvePrivateKey | mldsa.MLDSA87PrivateKey):
            raise UsageError(f"{path}: unsupported key type {type(key).__name__}")
        public = key.public_key()
        return cls(key, PublicKey(public, _algorithm_of(public)))

    @property
    def keyid(self) -> str:
        return self.public.keyid

    def sign(self, data: bytes) -> bytes:
        if isinstance(self.key, ec.EllipticCurvePrivateKey):
            return self.key.sign(data, _ECDSA)
        return self.key.sign(data)

    def private_pem(self, passphrase: bytes | None) -> bytes:
        encryption: serialization.KeySerializationEncryption = (
            serialization.BestAvailableEncryption(passphrase) if passphrase else serialization.NoEncryption()
        )
        return self.key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, encryption
        )

    def write(self, path: Path, passphrase: bytes | None) -> Path:
        """Write the private key (mode 0600, never overwriting) and PATH.pub beside it."""
        public_path = path.with_name(path.name + ".pub")
        for target in (path, public_path):
            if target.exists():
                raise UsageError(f"{target}: already exists; refusing to overwrite a key")
        path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "wb") as out:
            out.write(self.private_pem(passphrase))
        public_path.write_text(self.public.pem)
        return public_path


def read_passphrase(prompt: str, confirm: bool = False) -> bytes:
    """The passphrase from ENCLAVE_KEY_PASSPHRASE, else a terminal prompt; never an argument."""
    env = os.environ.get(PASSPHRASE_ENV)
    if env is not None:
        if not env:
            raise UsageError(f"{PASSPHRASE_ENV} is set but empty")
        return env.encode("utf-8")
    if not sys.stdin.isatty():
        raise UsageError(f"no passphrase: set {PASSPHRASE_ENV} or run on a terminal")
    first = getpass.getpass(prompt)
    if confirm and getpass.getpass("again: ") != first:
        raise UsageError("passphrases do not match")
    if not first:
        raise UsageError("empty passphrase; use --no-passphrase to write an unencrypted key")
    return first.encode("utf-8")


def passphrase_for(path: Path) -> bytes | None:
    """The passphrase a private key file needs (ENCLAVE_KEY_PASSPHRASE or a prompt), asked
    once up front by a command that loads the key more than once; None when not encrypted."""
    return read_passphrase(f"passphrase for {path}: ") if _is_encrypted(_read(path)) else None


def _is_encrypted(pem: bytes) -> bool:
    return b"ENCRYPTED PRIVATE KEY" in pem


MAX_KEY_BYTES = 1 << 20  # a PEM key is a few KB; more is not a key


def _read(path: Path) -> bytes:
    return read_regular(path, "key", MAX_KEY_BYTES)
