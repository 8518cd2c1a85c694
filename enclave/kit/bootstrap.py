#!/usr/bin/env python3
"""verify-kit.py: check an enclave kit before any of its code runs (docs/OPERATIONS.md 15).

    python3 -I verify-kit.py KIT_DIR --trust root.json

One file, the Python standard library and the `openssl` command-line tool; nothing of the kit
is imported or run. Use a copy you trust: one that came with root.json through the trusted
channel (compare its SHA-384 with the one `enclave kit build` printed), not the kit's own copy.

It needs Python 3.9 or later (RHEL 9's python3 is 3.9, Ubuntu 22.04's 3.10) and runs isolated,
`python3 -I` (no user site-packages, no PYTHON* variables, no script or current directory on
the path; `-I -S`, without any site-packages, works as well). So it keeps to 3.9's grammar
and standard library: no `match`, no `X | Y` outside annotations (they stay unevaluated),
`timezone.utc` for datetime.UTC, no zip(strict=); tests/unit/test_kit.py checks.
enclave itself, installed from the kit, needs the Python the kit was built for (3.11 or later).

1. root.json, trusted as it came (its own signatures are not checked here: it is the anchor).
   Its expiry is checked; the ECDSA P-384 keys of its `bundle` role are the signers accepted.
2. KIT_DIR/kit.dsse.json, a DSSE envelope of an in-toto Statement v1: at least one signature
   by such a key must verify (`openssl dgst -sha384 -verify` over the DSSE pre-authentication
   encoding), and every signature by such a key must verify. ML-DSA-87 signatures are not
   checked here (OpenSSL 3.0 to 3.4 has no ML-DSA): the role's threshold and hybrid rule are
   checked by `enclave kit verify` once enclave is installed from the kit.
3. Every file of KIT_DIR but kit.dsse.json must be a subject of the statement, and every
   subject a regular file of KIT_DIR with the signed size, SHA-256 and SHA-384.

Exit 0: the kit is what the bundle role signed; 2: bad input; 3: a file differs, is missing or
is extra; 4: no trusted signature holds, or root.json has expired.
"""

from __future__ import annotations

import argparse
import base64
import hashlib
import json
import os
import re
import shutil
import stat
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

STATEMENT = "kit.dsse.json"
PAYLOAD_TYPE = "application/vnd.in-toto+json"
STATEMENT_TYPE = "https://in-toto.io/Statement/v1"
PREDICATE_TYPE = "urn:enclave:predicate:kit:v1"
DIGESTS = ("sha256", "sha384")
MAX_DOCUMENT = 64 * 1024 * 1024
MAX_FILES = 10_000
# A kit is flat: a file name is one path segment, no leading dot (no hidden or special names).
FILE_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._+-]{0,254}")
_HEX = {"sha256": re.compile(r"[0-9a-f]{64}"), "sha384": re.compile(r"[0-9a-f]{96}")}
USAGE, INTEGRITY, TRUST = 2, 3, 4
MIN_PYTHON = (3, 9)  # RHEL 9's python3; no datetime.UTC, no zip(strict=), no match here
UTC = timezone.utc


class KitError(Exception):
    """A refusal: `code` is the exit code (enclave's: 2 input, 3 integrity, 4 trust)."""

    def __init__(self, code: int, message: str) -> None:
        super().__init__(message)
        self.code = code


@dataclass(frozen=True)
class KitFile:
    name: str
    size: int
    sha256: str
    sha384: str


@dataclass(frozen=True)
class Statement:
    name: str
    version: str
    created: str
    python: str
    platforms: tuple[str, ...]
    extras: tuple[str, ...]
    files: tuple[KitFile, ...]


def pae(payload_type: str, payload: bytes) -> bytes:
    """DSSE v1 pre-authentication encoding: the bytes every signature covers."""
    kind = payload_type.encode("utf-8")
    return b"DSSEv1 %d %s %d %s" % (len(kind), kind, len(payload), payload)


def strict_json(data: bytes, what: str, code: int) -> Any:
    """JSON that two readers cannot disagree on: UTF-8, no duplicate keys, no NaN."""

    def pairs(items: list[tuple[str, Any]]) -> dict[str, Any]:
        if len({k for k, _ in items}) != len(items):
            raise ValueError("duplicate key")
        return dict(items)

    def constant(name: str) -> Any:
        raise ValueError(f"{name} is not JSON")

    try:
        return json.loads(data.decode("utf-8"), object_pairs_hook=pairs, parse_constant=constant)
    except (UnicodeDecodeError, ValueError) as exc:
        raise KitError(code, f"{what}: not valid JSON: {exc}") from None


def _read(path: Path, what: str, code: int) -> bytes:
    try:
        info = path.lstat()
        if not stat.S_ISREG(info.st_mode):
            raise KitError(code, f"{path}: {what} must be a regular file")
        if info.st_size > MAX_DOCUMENT:
            raise KitError(code, f"{path}: {what} is larger than {MAX_DOCUMENT} bytes")
        return path.read_bytes()
    except OSError as exc:
        raise KitError(code, f"{path}: cannot read {what}: {exc.strerror}") from None


def _fields(obj: Any, names: set[str], where: str) -> dict[str, Any]:
    if not isinstance(obj, dict) or set(obj) != names:
        raise ValueError(f"{where} must have exactly the fields {', '.join(sorted(names))}")
    return obj


def _str(value: Any, where: str) -> str:
    if not isinstance(value, str):
        raise ValueError(f"{where} must be a string")
    return value


def _strings(value: Any, where: str) -> tuple[str, ...]:
    if not isinstance(value, list):
        raise ValueError(f"{where} must be a list")
    return tuple(_str(v, where) for v in value)


def read_statement(payload: bytes) -> Statement:
    """Parse the kit statement strictly; KitError(3) for anything malformed."""
    doc = strict_json(payload, "kit statement", INTEGRITY)
    try:
        _fields(doc, {"_type", "subject", "predicateType", "predicate"}, "statement")
        if doc["_type"] != STATEMENT_TYPE or doc["predicateType"] != PREDICATE_TYPE:
            raise ValueError(f"not an enclave kit statement ({doc['predicateType']!r})")
        pred = _fields(
            doc["predicate"],
            {"name", "version", "created", "python", "platforms", "extras", "files"},
            "predicate",
        )
        subjects, sizes = doc["subject"], pred["files"]
        if not isinstance(subjects, list) or not isinstance(sizes, list) or len(subjects) != len(sizes):
            raise ValueError("subject and predicate.files must be lists of the same length")
        if not 0 < len(subjects) <= MAX_FILES:
            raise ValueError(f"a kit has 1 to {MAX_FILES} files")
        files: list[KitFile] = []
        for index, (subject, entry) in enumerate(zip(subjects, sizes)):  # lengths equal: above
            name = _str(_fields(subject, {"name", "digest"}, f"subject[{index}]")["name"], "name")
            _fields(entry, {"name", "size"}, f"predicate.files[{index}]")
            if entry["name"] != name:
                raise ValueError(f"subject[{index}] and predicate.files[{index}] name different files")
            if not FILE_NAME.fullmatch(name) or name == STATEMENT:
                raise ValueError(f"subject[{index}]: {name[:80]!r} is not a kit file name")
            if any(f.name == name for f in files):
                raise ValueError(f"{name}: listed twice")
            size = entry["size"]
            if not isinstance(size, int) or isinstance(size, bool) or size < 0:
                raise ValueError(f"{name}: size must be a whole number")
            digest = _fields(subject["digest"], set(DIGESTS), f"subject[{index}].digest")
            for algorithm in DIGESTS:
                if not _HEX[algorithm].fullmatch(_str(digest[algorithm], algorithm)):
                    raise ValueError(f"{name}: {algorithm} is not a lowercase hex digest")
            files.append(KitFile(name, size, digest["sha256"], digest["sha384"]))
        return Statement(
            _str(pred["name"], "predicate.name"),
            _str(pred["version"], "predicate.version"),
            _str(pred["created"], "predicate.created"),
            _str(pred["python"], "predicate.python"),
            _strings(pred["platforms"], "predicate.platforms"),
            _strings(pred["extras"], "predicate.extras"),
            tuple(files),
        )
    except (KeyError, TypeError, ValueError) as exc:
        raise KitError(INTEGRITY, f"{STATEMENT}: invalid kit statement: {exc}") from None


def hash_file(path: Path) -> tuple[int, str, str]:
    """(size, SHA-256, SHA-384) of a regular file, links not followed, read once."""
    fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise KitError(INTEGRITY, f"{path}: not a regular file")
        hashes = [hashlib.new(a) for a in DIGESTS]
        size = 0
        while block := os.read(fd, 1 << 20):
            size += len(block)
            for h in hashes:
                h.update(block)
        return size, hashes[0].hexdigest(), hashes[1].hexdigest()
    finally:
        os.close(fd)


def check_files(kit: Path, statement: Statement) -> int:
    """Every file of `kit` is a subject with its signed size and digests, and nothing else is
    there; returns the bytes hashed. KitError(3) names the first file that differs."""
    try:
        present = set(os.listdir(kit)) - {STATEMENT}
    except OSError as exc:
        raise KitError(USAGE, f"{kit}: cannot list the kit: {exc.strerror}") from None
    signed = {f.name for f in statement.files}
    if present - signed:
        raise KitError(
            INTEGRITY, f"{kit}: extra file(s) the statement does not list: {sorted(present - signed)}"
        )
    if signed - present:
        raise KitError(INTEGRITY, f"{kit}: missing file(s): {sorted(signed - present)}")
    total = 0
    for entry in statement.files:
        path = kit / entry.name
        try:
            size, sha256, sha384 = hash_file(path)
        except OSError as exc:
            raise KitError(INTEGRITY, f"{path}: cannot read: {exc.strerror}") from None
        if (size, sha256, sha384) != (entry.size, entry.sha256, entry.sha384):
            raise KitError(INTEGRITY, f"{path}: differs from the signed kit statement (size or digest)")
        total += size
    return total


@dataclass(frozen=True)
class TrustedKey:
    keyid: str
    pem: str


def bundle_keys(root_path: Path, now: datetime) -> tuple[int, list[TrustedKey], int]:
    """(root version, the bundle role's ECDSA P-384 keys, how many other keys it has)."""
    doc = strict_json(_read(root_path, "trust root", USAGE), str(root_path), USAGE)
    try:
        signed = doc["signed"]
        expires = datetime.strptime(signed["expires"], "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=UTC)
        keyids = signed["roles"]["bundle"]["keyids"]
        ecdsa: list[TrustedKey] = []
        for keyid in keyids:
            key = signed["keys"][keyid]
            if (key["keytype"], key["scheme"]) != ("ecdsa", "ecdsa-sha2-nistp384"):
                continue
            pem = _str(key["keyval"]["public"], "keyval.public")
            body = "".join(line for line in pem.strip().splitlines() if not line.startswith("-----"))
            if hashlib.sha256(base64.b64decode(body, validate=True)).hexdigest() != keyid:
                raise ValueError(f"key {keyid[:16]}: keyid is not the SHA-256 of its public key")
            ecdsa.append(TrustedKey(keyid, pem))
        version = int(signed["version"])
    except (KeyError, TypeError, ValueError) as exc:
        raise KitError(USAGE, f"{root_path}: not an enclave trust root: {exc}") from None
    if now >= expires:
        raise KitError(TRUST, f"{root_path}: trust root version {version} expired at {signed['expires']}")
    if not ecdsa:
        raise KitError(TRUST, f"{root_path}: the bundle role has no ECDSA P-384 key to check with")
    return version, ecdsa, len(keyids) - len(ecdsa)


def openssl_verify(openssl: str, key: TrustedKey, signature: bytes, message: bytes) -> bool:
    """`openssl dgst -sha384 -verify KEY -signature SIG MESSAGE` (ECDSA, DER signature)."""
    with tempfile.TemporaryDirectory(prefix="verify-kit-") as tmp:
        files = {"key.pem": key.pem.encode("ascii"), "sig.der": signature, "message": message}
        for name, data in files.items():
            Path(tmp, name).write_bytes(data)
        names = [os.path.join(tmp, n) for n in files]
        proc = subprocess.run(
            [openssl, "dgst", "-sha384", "-verify", names[0], "-signature", names[1], names[2]],
            capture_output=True,
            check=False,
        )
    return proc.returncode == 0 and b"Verified OK" in proc.stdout


def check_signatures(kit: Path, root_path: Path, now: datetime) -> tuple[bytes, list[str], str]:
    """(payload, keyids that verified, a note on what was not checked); KitError(4) else."""
    openssl = shutil.which("openssl")
    if openssl is None:
        raise KitError(USAGE, "openssl not found on PATH: the signature check needs the openssl command")
    version, keys, others = bundle_keys(root_path, now)
    envelope = strict_json(_read(kit / STATEMENT, "signed statement", TRUST), STATEMENT, TRUST)
    try:
        _fields(envelope, {"payload", "payloadType", "signatures"}, STATEMENT)
        if envelope["payloadType"] != PAYLOAD_TYPE:
            raise ValueError(f"payloadType must be {PAYLOAD_TYPE}")
        payload = base64.b64decode(_str(envelope["payload"], "payload"), validate=True)
        if not isinstance(envelope["signatures"], list):
            raise ValueError("signatures must be a list")
        signatures: list[tuple[str, bytes]] = []
        for entry in envelope["signatures"]:
            _fields(entry, {"keyid", "sig"}, "a signature")
            sig = base64.b64decode(_str(entry["sig"], "sig"), validate=True)
            signatures.append((_str(entry["keyid"], "keyid"), sig))
    except (KeyError, TypeError, ValueError) as exc:
        raise KitError(TRUST, f"{kit / STATEMENT}: not a DSSE envelope: {exc}") from None
    message = pae(PAYLOAD_TYPE, payload)
    by_id = {k.keyid: k for k in keys}
    good: list[str] = []
    bad: list[str] = []
    for keyid, signature in signatures:
        if keyid in by_id and keyid not in good:
            (good if openssl_verify(openssl, by_id[keyid], signature, message) else bad).append(keyid)
    if bad:
        raise KitError(TRUST, f"{kit / STATEMENT}: signature by trusted key {bad[0][:16]} does not verify")
    if not good:
        raise KitError(
            TRUST,
            f"{kit / STATEMENT}: no signature by an ECDSA P-384 key of the bundle role of {root_path} "
            f"(version {version})",
        )
    note = (
        f"{others} other key(s) of the bundle role (ML-DSA-87) not checked here: "
        "`enclave kit verify` checks the threshold and hybrid rule once installed"
        if others
        else "every key of the bundle role is ECDSA P-384"
    )
    return payload, good, note


def verify(kit: Path, root_path: Path, now: datetime | None = None) -> list[str]:
    """The whole check; returns the report lines, raises KitError."""
    if not kit.is_dir():
        raise KitError(USAGE, f"{kit}: not a directory")
    payload, signers, note = check_signatures(kit, root_path, now or datetime.now(UTC))
    statement = read_statement(payload)
    total = check_files(kit, statement)
    extras = ",".join(statement.extras) or "none"
    return [
        f"{kit}: {statement.name} {statement.version} kit for Python {statement.python} (extras {extras})",
        f"  ok  signed by {len(signers)} ECDSA P-384 key(s) of the bundle role: "
        + ", ".join(k[:16] for k in signers),
        f"  ok  {len(statement.files)} files, {total} bytes: size, SHA-256 and SHA-384 as signed, none extra",
        f"  note {note}",
    ]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="verify-kit.py",
        description="Check an enclave kit before any of its code runs.",
        epilog="Needs Python 3.9 or later (standard library only; python3 -I is enough) and the "
        "openssl command. Exit 0: the kit is what the bundle role signed; 2: bad input; 3: a file "
        "differs, is missing or is extra; 4: no trusted signature holds, or root.json has expired.",
    )
    parser.add_argument("kit", type=Path, help="the kit directory")
    parser.add_argument("--trust", required=True, type=Path, help="root.json from the trusted channel")
    args = parser.parse_args(argv)
    if sys.version_info < MIN_PYTHON:
        print(f"verify-kit: REFUSED: needs Python {'.'.join(map(str, MIN_PYTHON))} or later", file=sys.stderr)
        return USAGE
    try:
        lines = verify(args.kit, args.trust)
    except KitError as exc:
        print(f"verify-kit: REFUSED: {exc}", file=sys.stderr)
        return exc.code
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
