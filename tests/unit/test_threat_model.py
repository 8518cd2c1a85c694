"""One test per row of docs/THREAT-MODEL.md: the attack, carried out on real bundles, real keys
and real roots through the `enclave` command, and the exit code that refuses it."""

from __future__ import annotations

import base64
import json
import tarfile
from datetime import UTC, datetime, timedelta
from pathlib import Path

from enclave.cli import main
from enclave.trust.keys import SigningKey
from enclave.trust.root import TrustRoot
from tests.conftest import BuildFn, Keys, RotateFn, make_root
from tests.tarsurgery import Part, join, split


def verify(bundle: Path, *extra: str, target: Path | None = None) -> int:
    args = ["bundle", "verify", str(bundle), *extra]
    code = main(args + (["--extract-to", str(target)] if target else []))
    if code != 0 and target is not None:
        assert not target.exists(), "nothing is published on failure"
    return code


def _envelope(parts: list[Part]) -> dict[str, object]:
    doc: dict[str, object] = json.loads(parts[0].data)
    return doc


def _with_envelope(parts: list[Part], doc: dict[str, object]) -> list[Part]:
    return [parts[0].with_data(json.dumps(doc, separators=(",", ":"), sort_keys=True).encode()), *parts[1:]]


# -- TUF's attacks ---------------------------------------------------------------------------------------
def test_arbitrary_software_content_replaced(build: BuildFn, root_path: Path, tmp_path: Path) -> None:
    parts = split(build())
    i = next(n for n, p in enumerate(parts) if p.name.endswith("model.gguf"))
    parts[i] = Part(
        parts[i].name, parts[i].header, b"\x00" * len(parts[i].data), parts[i].mtime, parts[i].mode
    )
    bundle = join(parts, tmp_path / "evil.bundle")
    assert verify(bundle, "--trust", str(root_path), target=tmp_path / "out") == 3


def test_arbitrary_software_signed_by_an_untrusted_key(
    build: BuildFn, keys: Keys, root_path: Path, tmp_path: Path
) -> None:
    bundle = build(signers=(keys.stranger, keys.mldsa))
    assert verify(bundle, "--trust", str(root_path), target=tmp_path / "out") == 4


def test_rollback_to_an_older_version(build: BuildFn, root_path: Path, tmp_path: Path) -> None:
    old, new = build(version="1.0.0"), build(version="1.1.0")
    assert verify(new, "--trust", str(root_path)) == 0
    assert verify(old, "--trust", str(root_path), target=tmp_path / "out") == 5


def test_rollback_same_version_other_content(build: BuildFn, root_path: Path, tmp_path: Path) -> None:
    assert verify(build(version="1.0.0"), "--trust", str(root_path)) == 0
    assert verify(build(version="1.0.0"), "--trust", str(root_path), target=tmp_path / "out") == 5


def test_freeze_expired_root_refuses_everything(build: BuildFn, keys: Keys, tmp_path: Path) -> None:
    root = make_root(keys, tmp_path / "root.json", expires=datetime.now(UTC) + timedelta(seconds=5))
    bundle = build()
    later = (datetime.now(UTC) + timedelta(days=1)).strftime("%Y-%m-%dT%H:%M:%SZ")
    assert verify(bundle, "--trust", str(root), "--at", later) == 4
    expired = make_root(keys, tmp_path / "expired.json", expires=datetime.now(UTC) - timedelta(seconds=1))
    assert verify(bundle, "--trust", str(expired), target=tmp_path / "out") == 4


def test_mix_and_match_envelope_of_one_bundle_content_of_another(
    build: BuildFn, root_path: Path, tmp_path: Path
) -> None:
    a, b = split(build()), split(build())  # same name and version, different weights
    mixed = join([a[0], *b[1:]], tmp_path / "mixed.bundle")
    assert verify(mixed, "--trust", str(root_path), target=tmp_path / "out") == 3


def test_endless_data_oversize_extended_header(build: BuildFn, root_path: Path, tmp_path: Path) -> None:
    parts = split(build())
    info = tarfile.TarInfo("content/weights/" + "x" * 100)
    info.pax_headers = {"comment": "A" * (70 * 1024)}
    evil = Part.raw(info, b"data")
    bundle = join([*parts[:2], evil, *parts[2:]], tmp_path / "endless.bundle")
    assert verify(bundle, "--trust", str(root_path), target=tmp_path / "out") == 6


def test_endless_data_oversize_trust_root_member(
    keys: Keys, root_path: Path, tmp_path: Path, state_dir: Path
) -> None:
    from enclave.bundle.build import build_bundle
    from tests.conftest import MANIFEST, write_inputs

    src = write_inputs(tmp_path / "src")
    (src / "trust").mkdir()
    (src / "trust" / "2.root.json").write_bytes(b" " * (2 << 20))  # over the 1 MiB cap for a root
    (src / "bundle.yaml").write_text(
        MANIFEST.format(name="big", version="1.0.0", digest="sha256")
        + "    - {name: t, kind: trust, path: ./trust}\n"
    )
    bundle = build_bundle(
        src / "bundle.yaml", tmp_path / "out", [keys.ecdsa, keys.mldsa], show_progress=False
    )
    assert verify(bundle, "--trust", str(root_path)) == 6


def test_threshold_bypass_one_key_signing_twice(
    build: BuildFn, keys: Keys, root_path: Path, tmp_path: Path
) -> None:
    parts = split(build(signers=(keys.ecdsa, keys.mldsa)))
    doc = _envelope(parts)
    signatures = doc["signatures"]
    assert isinstance(signatures, list)
    doc["signatures"] = [signatures[0], dict(signatures[0])]
    bundle = join(_with_envelope(parts, doc), tmp_path / "twice.bundle")
    assert verify(bundle, "--trust", str(root_path), target=tmp_path / "out") == 4


def test_threshold_bypass_too_few_signers(build: BuildFn, keys: Keys, tmp_path: Path) -> None:
    root = make_root(keys, tmp_path / "root.json", threshold=3)
    assert verify(build(), "--trust", str(root), target=tmp_path / "out") == 4


def test_key_compromise_bundle_key_revoked(
    build: BuildFn, keys: Keys, rotate: RotateFn, tmp_path: Path, state_dir: Path
) -> None:
    v1 = make_root(keys, tmp_path / "1.root.json")
    stolen = build(signers=(keys.ecdsa, keys.mldsa))  # the thief also holds mldsa's signature
    v2 = rotate(v1, [keys.root], revoke=[keys.ecdsa])
    assert main(["trust", "update", str(v2), "--trust", str(v1)]) == 0
    assert verify(stolen, "--trust", str(v1), target=tmp_path / "out") == 4  # old root.json: stored v2 wins


def test_key_compromise_single_root_key_cannot_rotate(
    keys: Keys, rotate: RotateFn, tmp_path: Path, state_dir: Path
) -> None:
    root_b = SigningKey.generate("ecdsa-p384")
    v1 = make_root(keys, tmp_path / "1.root.json")
    v2 = rotate(v1, [keys.root, root_b], add={"root": [root_b]}, thresholds={"root": 2})
    assert main(["trust", "update", str(v2), "--trust", str(v1)]) == 0
    attacker = SigningKey.generate("ecdsa-p384")
    # the thief of one of two root keys writes v3 trusting their own key
    v3 = rotate(v2, [keys.root, attacker], add={"root": [attacker], "bundle": [attacker]}, revoke=[root_b])
    assert main(["trust", "update", str(v3)]) == 4
    assert TrustRoot.load(state_dir / "root.json").version == 2


# -- archive and key handling ----------------------------------------------------------------------------
def test_tar_escape_traversal(build: BuildFn, root_path: Path, tmp_path: Path) -> None:
    parts = split(build())
    info = tarfile.TarInfo("content/../../etc/cron.d/evil")
    bundle = join([*parts[:2], Part.raw(info, b"* * * * * root sh"), *parts[2:]], tmp_path / "t.bundle")
    assert verify(bundle, "--trust", str(root_path), target=tmp_path / "out") == 6
    assert not (tmp_path / "etc").exists()


def test_tar_escape_symlink(build: BuildFn, root_path: Path, tmp_path: Path) -> None:
    parts = split(build())
    info = tarfile.TarInfo("content/weights/link")
    info.type, info.linkname = tarfile.SYMTYPE, "/etc/shadow"
    bundle = join([*parts[:2], Part.raw(info), *parts[2:]], tmp_path / "t.bundle")
    assert verify(bundle, "--trust", str(root_path), target=tmp_path / "out") == 6


def test_key_confusion_keyid_names_another_key(build: BuildFn, keys: Keys, tmp_path: Path) -> None:
    path = make_root(keys, tmp_path / "root.json")
    doc = json.loads(path.read_text())
    doc["signed"]["keys"][keys.ecdsa.keyid]["keyval"]["public"] = keys.stranger.public.pem
    path.write_text(json.dumps(doc))
    assert verify(build(signers=(keys.stranger, keys.mldsa)), "--trust", str(path)) == 4


def test_key_confusion_signature_under_a_trusted_keyid(
    build: BuildFn, keys: Keys, root_path: Path, tmp_path: Path
) -> None:
    parts = split(build(signers=(keys.stranger, keys.mldsa)))
    doc = _envelope(parts)
    signatures = doc["signatures"]
    assert isinstance(signatures, list)
    signatures[0]["keyid"] = keys.ecdsa.keyid  # the hint lies; the trusted key does not verify it
    doc["signatures"] = sorted(signatures, key=lambda s: s["keyid"])
    bundle = join(_with_envelope(parts, doc), tmp_path / "hint.bundle")
    assert verify(bundle, "--trust", str(root_path), target=tmp_path / "out") == 4


def test_algorithm_downgrade_post_quantum_signature_stripped(
    build: BuildFn, keys: Keys, root_path: Path, tmp_path: Path
) -> None:
    parts = split(build(signers=(keys.ecdsa, keys.ecdsa2, keys.mldsa)))
    doc = _envelope(parts)
    signatures = doc["signatures"]
    assert isinstance(signatures, list)
    doc["signatures"] = [s for s in signatures if s["keyid"] != keys.mldsa.keyid]  # threshold 2 still met
    bundle = join(_with_envelope(parts, doc), tmp_path / "classical.bundle")
    assert verify(bundle, "--trust", str(root_path), target=tmp_path / "out") == 4


def test_algorithm_downgrade_weak_curve_key_in_root(build: BuildFn, keys: Keys, tmp_path: Path) -> None:
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ec

    path = make_root(keys, tmp_path / "root.json")
    doc = json.loads(path.read_text())
    weak = ec.generate_private_key(ec.SECP256R1()).public_key()
    pem = weak.public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    doc["signed"]["keys"][keys.ecdsa.keyid]["keyval"]["public"] = pem.decode()
    path.write_text(json.dumps(doc))
    assert verify(build(), "--trust", str(path)) == 4


def test_algorithm_downgrade_payload_type_swapped(build: BuildFn, root_path: Path, tmp_path: Path) -> None:
    parts = split(build())
    doc = _envelope(parts)
    doc["payloadType"] = "application/json"  # the signatures cover the type: PAE
    bundle = join(_with_envelope(parts, doc), tmp_path / "type.bundle")
    assert verify(bundle, "--trust", str(root_path), target=tmp_path / "out") == 4


# -- verifier state --------------------------------------------------------------------------------------
def test_state_does_not_leak_from_a_failed_run(
    build: BuildFn, keys: Keys, rotate: RotateFn, tmp_path: Path, state_dir: Path
) -> None:
    """A run that fails changes nothing a later run relies on: no rollback record, no root, no
    staging directory; only its receipt is added."""
    from enclave.bundle.build import build_bundle
    from tests.conftest import MANIFEST, write_inputs

    v1 = make_root(keys, tmp_path / "1.root.json")
    v2 = rotate(v1, [keys.root])
    src = write_inputs(tmp_path / "src")
    (src / "trust").mkdir()
    (src / "trust" / "2.root.json").write_bytes(v2.read_bytes())
    (src / "bundle.yaml").write_text(
        MANIFEST.format(name="carrier", version="5.0.0", digest="sha384")
        + "    - {name: t, kind: trust, path: ./trust}\n"
    )
    good = build_bundle(src / "bundle.yaml", tmp_path / "o", [keys.ecdsa, keys.mldsa], show_progress=False)
    parts = split(good)
    i = next(n for n, p in enumerate(parts) if p.name.endswith("model.gguf"))
    parts[i] = Part(parts[i].name, parts[i].header, bytes(len(parts[i].data)), parts[i].mtime, parts[i].mode)
    damaged = join(parts, tmp_path / "damaged.bundle")
    assert main(["trust", "update", "--trust", str(v1)]) == 0
    before = {p.name: p.read_bytes() for p in state_dir.iterdir()}
    assert verify(damaged, target=tmp_path / "out") == 3
    after = {p.name: p.read_bytes() for p in state_dir.iterdir()}
    assert after.pop("receipts.log") and after == before, "only the receipt of the failure was added"
    assert TrustRoot.load(state_dir / "root.json").version == 1, "a failed bundle's rotation is not kept"
    assert not list(tmp_path.glob(".out.staging-*"))
    assert verify(good) == 0 and TrustRoot.load(state_dir / "root.json").version == 2


def test_state_corruption_is_refused(build: BuildFn, root_path: Path, state_dir: Path) -> None:
    assert verify(build(version="1.0.0"), "--trust", str(root_path)) == 0
    path = state_dir / "rollback.json"
    path.write_bytes(path.read_bytes()[:-20])
    assert verify(build(version="2.0.0"), "--trust", str(root_path)) == 5


def test_stored_root_rolled_back(
    build: BuildFn, keys: Keys, rotate: RotateFn, tmp_path: Path, state_dir: Path
) -> None:
    v1 = make_root(keys, tmp_path / "1.root.json")
    v2 = rotate(v1, [keys.root], revoke=[keys.ecdsa])
    assert main(["trust", "update", str(v2), "--trust", str(v1)]) == 0
    assert verify(build(signers=(keys.ecdsa2, keys.mldsa), version="1.0.0")) == 0
    (state_dir / "root.json").write_bytes(v1.read_bytes())  # un-revoke by putting the old root back
    assert verify(build(signers=(keys.ecdsa, keys.mldsa), version="2.0.0")) == 5


def test_receipt_log_tampering(build: BuildFn, root_path: Path, state_dir: Path) -> None:
    for version in ("1.0.0", "1.1.0"):
        assert verify(build(version=version), "--trust", str(root_path)) == 0
    log = state_dir / "receipts.log"
    first, second = log.read_bytes().splitlines()
    log.write_bytes(second + b"\n" + first + b"\n")
    assert main(["receipts", "verify", "--trust", str(root_path)]) == 3


def test_rollback_version_claim_edited_in_the_statement(
    build: BuildFn, root_path: Path, tmp_path: Path
) -> None:
    parts = split(build(version="1.0.0"))
    doc = _envelope(parts)
    statement = json.loads(base64.b64decode(str(doc["payload"])))
    statement["predicate"]["version"] = "9.9.9"  # claim a newer version to get past the rollback check
    doc["payload"] = base64.b64encode(json.dumps(statement).encode()).decode()
    bundle = join(_with_envelope(parts, doc), tmp_path / "edited.bundle")
    assert verify(bundle, "--trust", str(root_path), target=tmp_path / "out") == 4
