"""Admission as one library object: root resolution (stored, given, carried) before the volume
index is judged, so a bundle that rotates the root admits from its volumes too.

Regression (issue 17): a bundle carrying a rotation, signed only by keys the new root adds,
verified from a single file but was refused once split into volumes (exit 4), because the
volume index was checked against the old root before the carried roots were applied.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from enclave.admission import Admission
from enclave.bundle.volumes import split_bundle
from enclave.cli import main
from enclave.errors import IntegrityError, RotationRefused, ThresholdNotMet
from enclave.trust.keys import SigningKey
from enclave.trust.receipts import verify_receipt_log
from enclave.trust.root import TrustRoot
from enclave.trust.state import StateDir
from enclave.trust.trusted import TrustedRoot
from tests.conftest import Keys, RotateFn, bundle_with_trust, make_root

VOLUME = 1 << 20  # the smallest volume: the 3 MiB bundle spans four


@pytest.fixture(scope="module")
def newcomer() -> SigningKey:
    """A bundle key only root v2 adds."""
    return SigningKey.generate("ecdsa-p384")


def rotated_in_volumes(
    keys: Keys, newcomer: SigningKey, rotate: RotateFn, tmp_path: Path, state: Path
) -> tuple[Path, list[Path], Path]:
    """v1 stored; a bundle carrying v2 (which adds `newcomer`), signed by `newcomer` and the
    ML-DSA key, split into volumes whose index the same two keys sign."""
    v1 = make_root(keys, tmp_path / "1.root.json")
    v2 = rotate(v1, [keys.root], add={"bundle": [newcomer]})
    StateDir.open(state).store_root(TrustRoot.load(v1))
    bundle = bundle_with_trust(tmp_path, [v2], [newcomer, keys.mldsa])
    parts, _index = split_bundle(bundle, VOLUME, [newcomer, keys.mldsa])
    bundle.unlink()  # only the volumes cross the gap
    return v2, parts, tmp_path / "published"


def test_a_rotating_bundle_admits_from_its_first_volume(
    keys: Keys, newcomer: SigningKey, rotate: RotateFn, tmp_path: Path, state_dir: Path
) -> None:
    v2, parts, published = rotated_in_volumes(keys, newcomer, rotate, tmp_path, state_dir)
    assert len(parts) >= 4
    assert (
        main(
            ["bundle", "verify", str(parts[0]), "--state-dir", str(state_dir), "--extract-to", str(published)]
        )
        == 0
    )
    assert (published / "content" / "trust" / v2.name).read_bytes() == v2.read_bytes()
    assert StateDir.open(state_dir).read_root().version == 2  # type: ignore[union-attr]


def test_the_library_says_how_the_root_was_reached(
    keys: Keys, newcomer: SigningKey, rotate: RotateFn, tmp_path: Path, state_dir: Path
) -> None:
    _v2, parts, published = rotated_in_volumes(keys, newcomer, rotate, tmp_path, state_dir)
    seen: list[str] = []
    admitted = Admission(state_dir, on_check=seen.append).verify(parts[-1], extract_to=published)
    assert admitted.root.version == 2 and admitted.files == parts
    assert {k.keyid for k in admitted.signers} == {newcomer.keyid, keys.mldsa.keyid}
    assert seen == admitted.checks
    order = [
        next(i for i, c in enumerate(seen) if c.startswith(p))
        for p in ("trust root v1 stored", "trust component", "volume index", "signatures", "published")
    ]
    assert order == sorted(order)
    assert admitted.receipt is not None and admitted.receipt["seq"] == 0


def test_a_tampered_carried_root_in_a_volume_is_refused(
    keys: Keys, newcomer: SigningKey, rotate: RotateFn, tmp_path: Path, state_dir: Path
) -> None:
    v2, parts, published = rotated_in_volumes(keys, newcomer, rotate, tmp_path, state_dir)
    # One hex digit of v2's root signature, where it lies in the volumes: still valid JSON.
    data = v2.read_bytes()
    sig = data.index(b'"sig"')
    digit = sig + data[sig:].index(b'"', 6) + 1  # the first character of the hex value
    whole = b"".join(p.read_bytes() for p in parts)
    at = whole.index(data) + digit
    volume, offset = divmod(at, VOLUME)
    with parts[volume].open("r+b") as handle:
        handle.seek(offset)
        old = handle.read(1)
        handle.seek(offset)
        handle.write(b"0" if old != b"0" else b"1")
    assert (
        main(
            ["bundle", "verify", str(parts[0]), "--state-dir", str(state_dir), "--extract-to", str(published)]
        )
        == 4
    )
    with pytest.raises(RotationRefused) as info:
        Admission(state_dir).verify(parts[0], extract_to=published)
    assert (info.value.trusted_version, info.value.offered_version) == (1, 2)
    assert not published.exists()
    assert StateDir.open(state_dir).read_root().version == 1  # type: ignore[union-attr]
    report = verify_receipt_log(
        StateDir.open(state_dir).receipts_path, TrustedRoot.load(tmp_path / "1.root.json")
    )
    assert (report.receipts, report.failed, report.verified) == (2, 2, 0)


def test_the_index_is_still_judged_by_the_rotated_root(
    keys: Keys, newcomer: SigningKey, rotate: RotateFn, tmp_path: Path, state_dir: Path
) -> None:
    """Rotation applied, an index signed by a key no root trusts is refused (4), nothing out."""
    v1 = make_root(keys, tmp_path / "1.root.json")
    v2 = rotate(v1, [keys.root], add={"bundle": [newcomer]})
    StateDir.open(state_dir).store_root(TrustRoot.load(v1))
    bundle = bundle_with_trust(tmp_path, [v2], [newcomer, keys.mldsa])
    parts, _index = split_bundle(bundle, VOLUME, [keys.stranger, keys.mldsa])
    with pytest.raises(ThresholdNotMet, match=r"volumes\.dsse\.json: bundle signatures not accepted"):
        Admission(state_dir).verify(parts[0], extract_to=tmp_path / "published")
    assert not (tmp_path / "published").exists()


def test_a_missing_or_cut_volume_of_a_rotating_bundle_is_named_before_anything_is_read(
    keys: Keys, newcomer: SigningKey, rotate: RotateFn, tmp_path: Path, state_dir: Path
) -> None:
    _v2, parts, published = rotated_in_volumes(keys, newcomer, rotate, tmp_path, state_dir)
    moved = parts[2].rename(tmp_path / "elsewhere")
    with pytest.raises(IntegrityError, match=rf"{parts[2].name}: volume missing"):
        Admission(state_dir).verify(parts[0], extract_to=published)
    moved.rename(parts[2])
    with parts[1].open("r+b") as handle:
        handle.truncate(VOLUME - 1)
    with pytest.raises(IntegrityError, match=r"truncated or padded volume"):
        Admission(state_dir).verify(parts[0], extract_to=published)
    assert not published.exists()
    assert StateDir.open(state_dir).read_root().version == 1  # type: ignore[union-attr]


def test_a_recheck_applies_the_carried_roots_but_stores_nothing(
    keys: Keys, newcomer: SigningKey, rotate: RotateFn, tmp_path: Path, state_dir: Path
) -> None:
    _v2, parts, _published = rotated_in_volumes(keys, newcomer, rotate, tmp_path, state_dir)
    admitted = Admission(state_dir, recheck=True).verify(parts[0])
    assert admitted.mode == "audit" and admitted.root.version == 2 and admitted.extracted_to is None
    assert StateDir.open(state_dir).read_root().version == 1  # type: ignore[union-attr]
    assert StateDir.open(state_dir).read_rollback().bundles == {}
    assert admitted.receipt is not None  # a re-check still leaves its receipt
