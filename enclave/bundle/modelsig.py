"""OpenSSF model-signing v1.0 signatures of model components, written from our own digests.

The format is the one `model_signing sign key` writes (model-signing 1.1): a Sigstore bundle
v0.3 (JSON) holding a DSSE envelope over an in-toto Statement v1 whose predicate
`https://model_signing/signature/v1.0` lists every file of the model directory with its plain
SHA-256, serialised by method `files`. `model_signing verify key DIR --signature SIG
--public_key PEM` re-hashes DIR and accepts it when the listed files and digests match, so an
auditor checks extracted weights with the standard tool. We produce the document ourselves
(no low-side dependency on model_signing and its Sigstore stack); tests prove equivalence by
running the real verifier on what we write.

Details the real verifier depends on (model_signing/_signing/sign_ec_key.py, signing.py):
- the key is ECDSA; P-384 signs with SHA-384 (DER signature over the DSSE PAE);
- `verificationMaterial.publicKey.hint` is the hex SHA-256 of the public key's SPKI **PEM**
  text (not of the DER, which is our keyid), and must match the key the auditor passes;
- the subject digest is SHA-256 over the resource digests (raw bytes) in the order listed;
- with its default `--ignore-git-paths`, the verifier skips `.git`, `.gitattributes`,
  `.github`, `.gitignore` at the top of DIR, so those are left out here too (they stay
  covered by the bundle signature).
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from enclave.errors import IntegrityError, UsageError
from enclave.trust.dsse import IN_TOTO_PAYLOAD_TYPE, pae
from enclave.trust.keys import PublicKey, SigningKey

SIGNATURE_DIR = "model-signatures/"
BUNDLE_MEDIA_TYPE = "application/vnd.dev.sigstore.bundle.v0.3+json"
PREDICATE_TYPE = "https://model_signing/signature/v1.0"
STATEMENT_TYPE = "https://in-toto.io/Statement/v1"
# model_signing's default ignore list (hashing.Config, ignore_git_paths=True), in a fixed order.
IGNORED = (".git", ".gitattributes", ".github", ".gitignore")
MAX_SIGNATURE_BYTES = 64 * 1024 * 1024


def signature_member(component: str) -> str:
    """Where a model component's signature lives in the bundle (outside the weights directory,
    so the directory model_signing hashes is exactly the component)."""
    return f"{SIGNATURE_DIR}{component}.sig"


def is_ignored(relative: str) -> bool:
    """True for the paths model_signing's verifier skips by default (top level of DIR only)."""
    top = relative.split("/", 1)[0]
    return top in IGNORED


def _sort_key(name: str) -> tuple[str, ...]:
    # model_signing sorts resources as PurePosixPath objects, i.e. by path components, which
    # differs from plain string order ("a/b" before "a-b").
    return tuple(name.split("/"))


def hint_of(key: PublicKey) -> str:
    """model_signing's key hint: SHA-256 of the SPKI PEM text."""
    return hashlib.sha256(key.pem.encode("ascii")).hexdigest()


def root_digest(resources: list[tuple[str, str]]) -> str:
    h = hashlib.sha256()
    for _, digest in resources:
        h.update(bytes.fromhex(digest))
    return h.hexdigest()


def payload_for(model_name: str, sha256_by_file: Mapping[str, str]) -> bytes:
    """The in-toto statement model_signing signs, laid out as it writes it (indent 2)."""
    resources = sorted(
        ((name, digest) for name, digest in sha256_by_file.items() if not is_ignored(name)),
        key=lambda item: _sort_key(item[0]),
    )
    doc = {
        "_type": STATEMENT_TYPE,
        "subject": [{"name": model_name, "digest": {"sha256": root_digest(resources)}}],
        "predicateType": PREDICATE_TYPE,
        "predicate": {
            "serialization": {
                "allow_symlinks": False,
                "hash_type": "sha256",
                "method": "files",
                "ignore_paths": list(IGNORED),
            },
            "resources": [{"name": n, "algorithm": "sha256", "digest": d} for n, d in resources],
        },
    }
    return json.dumps(doc, indent=2, ensure_ascii=False).encode("utf-8")


def sign_model(model_name: str, sha256_by_file: Mapping[str, str], key: SigningKey) -> bytes:
    """The signature file for a model directory whose files have these plain SHA-256 digests.

    Deterministic for a given key (RFC 6979 ECDSA), so reproducible builds stay byte-identical.
    """
    if key.public.algorithm != "ecdsa-p384":
        raise UsageError("an OpenSSF model signature needs an ECDSA P-384 key")
    payload = payload_for(model_name, sha256_by_file)
    signature = key.sign(pae(IN_TOTO_PAYLOAD_TYPE, payload))
    doc = {
        "mediaType": BUNDLE_MEDIA_TYPE,
        "verificationMaterial": {"publicKey": {"hint": hint_of(key.public)}, "tlogEntries": []},
        "dsseEnvelope": {
            "payload": base64.b64encode(payload).decode("ascii"),
            "payloadType": IN_TOTO_PAYLOAD_TYPE,
            "signatures": [{"sig": base64.b64encode(signature).decode("ascii"), "keyid": ""}],
        },
    }
    return json.dumps(doc, separators=(",", ":")).encode("ascii")


@dataclass(frozen=True)
class ModelSignature:
    model_name: str
    root: str  # sha256 hex over the resources
    resources: tuple[tuple[str, str], ...]  # (path relative to the model directory, sha256 hex)
    hint: str
    payload: bytes
    signature: bytes

    def signed_by(self, key: PublicKey) -> bool:
        """True when `key` made this signature (the hint must name it, as model_signing requires)."""
        return (
            key.algorithm == "ecdsa-p384"
            and self.hint == hint_of(key)
            and key.verify(self.signature, pae(IN_TOTO_PAYLOAD_TYPE, self.payload))
        )


def _get(obj: Any, key: str, kind: type, where: str) -> Any:
    if not isinstance(obj, dict) or not isinstance(obj.get(key), kind):
        raise ValueError(f"{where}.{key} is missing or not a {kind.__name__}")
    return obj[key]


def parse_signature(data: bytes, where: str) -> ModelSignature:
    """Read a model signature (for inspect); IntegrityError naming `where` if it is not one."""
    try:
        doc = json.loads(data)
        if _get(doc, "mediaType", str, "bundle") != BUNDLE_MEDIA_TYPE:
            raise ValueError(f"mediaType is not {BUNDLE_MEDIA_TYPE}")
        material = _get(doc, "verificationMaterial", dict, "bundle")
        hint = _get(_get(material, "publicKey", dict, "verificationMaterial"), "hint", str, "publicKey")
        envelope = _get(doc, "dsseEnvelope", dict, "bundle")
        if _get(envelope, "payloadType", str, "dsseEnvelope") != IN_TOTO_PAYLOAD_TYPE:
            raise ValueError("payloadType is not in-toto")
        signatures = _get(envelope, "signatures", list, "dsseEnvelope")
        if len(signatures) != 1:
            raise ValueError("exactly one signature expected")
        signature = base64.b64decode(_get(signatures[0], "sig", str, "signatures[0]"), validate=True)
        payload = base64.b64decode(_get(envelope, "payload", str, "dsseEnvelope"), validate=True)
        statement = json.loads(payload)
        if (
            not isinstance(statement, dict)
            or statement.get("_type") != STATEMENT_TYPE
            or statement.get("predicateType") != PREDICATE_TYPE
        ):
            raise ValueError(f"not an in-toto statement of {PREDICATE_TYPE}")
        subjects = _get(statement, "subject", list, "statement")
        if len(subjects) != 1:
            raise ValueError("exactly one subject expected")
        name = _get(subjects[0], "name", str, "subject[0]")
        root = _get(_get(subjects[0], "digest", dict, "subject[0]"), "sha256", str, "subject[0].digest")
        predicate = _get(statement, "predicate", dict, "statement")
        serialization = _get(predicate, "serialization", dict, "predicate")
        if serialization.get("method") != "files" or serialization.get("hash_type") != "sha256":
            raise ValueError("serialization is not method files with sha256")
        resources = []
        for index, entry in enumerate(_get(predicate, "resources", list, "predicate")):
            at = f"resources[{index}]"
            if _get(entry, "algorithm", str, at) != "sha256":
                raise ValueError(f"{at}.algorithm is not sha256")
            digest = _get(entry, "digest", str, at)
            if len(digest) != 64:
                raise ValueError(f"{at}.digest is not a sha256 digest")
            bytes.fromhex(digest)
            resources.append((_get(entry, "name", str, at), digest))
        if root_digest(resources) != root:
            raise ValueError("subject digest is not the one its resources define")
    except (json.JSONDecodeError, UnicodeDecodeError, binascii.Error, TypeError, ValueError) as exc:
        raise IntegrityError(f"{where}: not an OpenSSF model signature: {exc}") from None
    return ModelSignature(name, root, tuple(resources), hint, payload, signature)
