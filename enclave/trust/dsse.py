"""DSSE v1 envelopes (secure-systems-lab/dsse): PAE, parsing, signing, signature checks.

Parsing is strict: unknown fields, wrong types, bad base64 and duplicate keyids are errors,
so two verifiers can never disagree about what an envelope says.
"""

from __future__ import annotations

import base64
import binascii
import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

from enclave.errors import DocumentLimitError, EnclaveError, TrustError
from enclave.strictjson import strict_json
from enclave.trust.keys import PublicKey, SigningKey

IN_TOTO_PAYLOAD_TYPE = "application/vnd.in-toto+json"
MAX_ENVELOPE = 64 * 1024 * 1024  # FORMAT.md 5 step 2: the cap on BUNDLE.dsse.json and a volume index


def pae(payload_type: str, payload: bytes) -> bytes:
    """DSSE pre-authentication encoding: the exact bytes every signature covers."""
    type_bytes = payload_type.encode("utf-8")
    return b"DSSEv1 %d %s %d %s" % (len(type_bytes), type_bytes, len(payload), payload)


@dataclass(frozen=True)
class Signature:
    keyid: str
    sig: bytes


@dataclass
class Envelope:
    payload_type: str
    payload: bytes
    signatures: list[Signature] = field(default_factory=list)

    def sign(self, key: SigningKey) -> None:
        """Append `key`'s signature; a key signs an envelope at most once."""
        if any(s.keyid == key.keyid for s in self.signatures):
            raise TrustError(f"key {key.keyid[:16]} has already signed this envelope")
        self.signatures.append(Signature(key.keyid, key.sign(pae(self.payload_type, self.payload))))

    def to_json(self) -> bytes:
        doc = {
            "payload": base64.b64encode(self.payload).decode("ascii"),
            "payloadType": self.payload_type,
            "signatures": [
                {"keyid": s.keyid, "sig": base64.b64encode(s.sig).decode("ascii")} for s in self.signatures
            ],
        }
        return json.dumps(doc, sort_keys=True, separators=(",", ":")).encode("ascii")

    @classmethod
    def from_json(
        cls,
        data: bytes,
        source: str = "envelope",
        max_bytes: int = MAX_ENVELOPE,
        limit_error: type[EnclaveError] = TrustError,
    ) -> Envelope:
        """Parse strictly (strictjson.strict_json; TrustError). Over `max_bytes` or too deeply nested:
        `limit_error` (UnsafeArchiveError for an archive member)."""
        try:
            doc = strict_json(data, max_bytes)
        except DocumentLimitError as exc:
            raise limit_error(f"{source}: {exc}") from None
        except ValueError as exc:
            raise TrustError(f"{source}: not a DSSE envelope: {exc}") from None
        if not isinstance(doc, dict) or set(doc) != {"payload", "payloadType", "signatures"}:
            raise TrustError(f"{source}: not a DSSE envelope (fields payload, payloadType, signatures)")
        payload_type, payload, sigs = doc["payloadType"], doc["payload"], doc["signatures"]
        if not isinstance(payload_type, str) or not isinstance(payload, str):
            raise TrustError(f"{source}: payload and payloadType must be strings")
        if not isinstance(sigs, list):
            raise TrustError(f"{source}: signatures must be a list")
        signatures: list[Signature] = []
        for entry in sigs:
            if not isinstance(entry, dict) or set(entry) != {"keyid", "sig"}:
                raise TrustError(f"{source}: each signature needs exactly keyid and sig")
            keyid, sig = entry["keyid"], entry["sig"]
            if not isinstance(keyid, str) or not isinstance(sig, str):
                raise TrustError(f"{source}: keyid and sig must be strings")
            if any(s.keyid == keyid for s in signatures):
                raise TrustError(f"{source}: key {keyid[:16]} signs more than once")
            signatures.append(Signature(keyid, _b64(sig, source)))
        return cls(payload_type, _b64(payload, source), signatures)


def _b64(text: str, source: str) -> bytes:
    try:
        data = base64.b64decode(text.encode("ascii"), validate=True)
    except (binascii.Error, UnicodeEncodeError):
        raise TrustError(f"{source}: invalid base64") from None
    # Unused trailing bits make base64 malleable ("YQ==" and "YR==" both decode to b"a"):
    # accept only the canonical encoding so no byte of the envelope goes unchecked.
    if base64.b64encode(data).decode("ascii") != text:
        raise TrustError(f"{source}: non-canonical base64")
    return data


@dataclass(frozen=True)
class Verified:
    """Keys whose signatures verified, in envelope order."""

    keys: tuple[PublicKey, ...]

    @property
    def keyids(self) -> tuple[str, ...]:
        return tuple(k.keyid for k in self.keys)


def verify_signatures(envelope: Envelope, trusted: Mapping[str, PublicKey]) -> Verified:
    """Check every signature whose keyid names a trusted key; return the keys that verified.

    The keyid is a hint only: a signature counts when the trusted key it names verifies it.
    Signatures by unknown keys are ignored here; the threshold decides whether that matters.
    """
    message = pae(envelope.payload_type, envelope.payload)
    good: list[PublicKey] = []
    for signature in envelope.signatures:
        key = trusted.get(signature.keyid)
        if key is not None and key.verify(signature.sig, message):
            good.append(key)
    return Verified(tuple(good))


def keyids_of(envelope: Envelope) -> Iterable[str]:
    return (s.keyid for s in envelope.signatures)
