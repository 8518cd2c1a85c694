"""TrustedRoot, the one place trust decisions are taken: every rule it applies, with real keys,
real roots and real DSSE signatures (no mocks)."""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from enclave.errors import (
    ExpiredRoot,
    KeyNotInRole,
    NoTrustRoot,
    RotationRefused,
    ThresholdNotMet,
    TrustError,
)
from enclave.trust.dsse import IN_TOTO_PAYLOAD_TYPE, Envelope, Signature
from enclave.trust.keys import SigningKey
from enclave.trust.root import TrustRoot, sign_document
from enclave.trust.trusted import TrustedRoot
from tests.conftest import Keys, RotateFn, make_root

NOW = datetime.now(UTC)


def envelope(*signers: SigningKey, payload: bytes = b'{"x": 1}') -> Envelope:
    signed = Envelope(IN_TOTO_PAYLOAD_TYPE, payload)
    for key in signers:
        signed.sign(key)
    return signed


def trusted(path: Path, at: datetime = NOW) -> TrustedRoot:
    return TrustedRoot.resolve(None, TrustRoot.load(path), at)


# -- require: threshold, distinct keys, hybrid ------------------------------------------------------------
def test_threshold_met_by_two_distinct_keys_of_both_families(keys: Keys, root_path: Path) -> None:
    check = trusted(root_path).require("bundle", envelope(keys.ecdsa, keys.mldsa), "doc")
    assert {k.keyid for k in check.signers} == {keys.ecdsa.keyid, keys.mldsa.keyid}


def test_threshold_short_names_the_role_and_the_untrusted_keys(keys: Keys, root_path: Path) -> None:
    with pytest.raises(ThresholdNotMet) as info:
        trusted(root_path).require("bundle", envelope(keys.mldsa, keys.stranger), "doc.dsse.json")
    error = info.value
    assert error.exit_code == 4 and isinstance(error, TrustError)
    assert (error.role, error.threshold) == ("bundle", 2)
    assert error.valid_keyids == (keys.mldsa.keyid,)
    assert error.untrusted_keyids == (keys.stranger.keyid,) and error.invalid == 0
    assert str(error).startswith("doc.dsse.json: bundle signatures not accepted: 1 of threshold 2")


def test_one_key_signing_twice_counts_once(keys: Keys, root_path: Path) -> None:
    twice = envelope(keys.mldsa)
    twice.signatures.append(Signature(keys.mldsa.keyid, twice.signatures[0].sig))
    with pytest.raises(ThresholdNotMet) as info:
        trusted(root_path).require("bundle", twice, "doc")
    assert info.value.valid_keyids == (keys.mldsa.keyid,)


def test_hybrid_role_needs_a_classical_and_a_post_quantum_signature(keys: Keys, root_path: Path) -> None:
    with pytest.raises(ThresholdNotMet, match="hybrid needs 1 of each"):
        trusted(root_path).require("bundle", envelope(keys.ecdsa, keys.ecdsa2), "doc")


def test_a_signature_that_does_not_verify_is_counted_as_invalid(keys: Keys, root_path: Path) -> None:
    forged = envelope(keys.ecdsa, keys.mldsa)
    forged.payload = b'{"x": 2}'  # the signatures were made over another payload
    with pytest.raises(ThresholdNotMet) as info:
        trusted(root_path).require("bundle", forged, "doc")
    assert info.value.valid_keyids == () and info.value.invalid == 2


def test_accepts_reports_instead_of_raising(keys: Keys, root_path: Path) -> None:
    root = trusted(root_path)
    assert root.accepts("bundle", [keys.ecdsa.public, keys.mldsa.public]) is None
    assert "1 of threshold 2" in (root.accepts("bundle", [keys.ecdsa.public]) or "")


# -- require_member -------------------------------------------------------------------------------------
def test_require_member_refuses_a_key_the_role_does_not_list(keys: Keys, root_path: Path) -> None:
    root = trusted(root_path)
    root.require_member("bundle", keys.ecdsa.public, "k")
    with pytest.raises(KeyNotInRole) as info:
        root.require_member("bundle", keys.stranger.public, "stranger.key")
    assert info.value.exit_code == 2
    assert (info.value.keyid, info.value.role, info.value.root_version) == (keys.stranger.keyid, "bundle", 1)
    assert str(info.value).startswith(
        f"stranger.key: key {keys.stranger.keyid[:16]} is not a key of the bundle"
    )


# -- expiry, at the one time fixed for the run -----------------------------------------------------------
def test_expired_root_is_refused_at_the_reference_time(keys: Keys, tmp_path: Path) -> None:
    path = make_root(keys, tmp_path / "root.json", expires=NOW + timedelta(days=1))
    trusted(path, NOW).check_current()
    later = trusted(path, NOW + timedelta(days=2))
    with pytest.raises(ExpiredRoot) as info:
        later.check_current()
    assert info.value.version == 1 and info.value.at > info.value.expires


def test_load_checks_expiry_at_once(keys: Keys, tmp_path: Path) -> None:
    path = make_root(keys, tmp_path / "root.json", expires=NOW + timedelta(hours=1))
    assert TrustedRoot.load(path, NOW).version == 1
    with pytest.raises(ExpiredRoot):
        TrustedRoot.load(path, NOW + timedelta(hours=2))


def test_a_root_its_own_root_role_did_not_sign_is_refused(keys: Keys, tmp_path: Path) -> None:
    signed = TrustRoot.create(
        {"root": [keys.root.public], "bundle": [keys.ecdsa.public]},
        {"bundle": 1},
        NOW + timedelta(days=1),
        hybrid_roles=(),
    )
    path = tmp_path / "root.json"
    path.write_bytes(sign_document(signed, [keys.stranger]))
    with pytest.raises(ThresholdNotMet) as info:
        trusted(path)
    assert info.value.role == "root"


# -- resolution: stored, then given ---------------------------------------------------------------------
def test_nothing_stored_and_nothing_given_is_a_usage_error() -> None:
    with pytest.raises(NoTrustRoot) as info:
        TrustedRoot.resolve(None, None, NOW)
    assert info.value.exit_code == 2


def test_the_stored_root_wins_over_an_older_given_one(keys: Keys, rotate: RotateFn, tmp_path: Path) -> None:
    v1 = make_root(keys, tmp_path / "1.root.json")
    v2 = TrustRoot.load(rotate(v1, [keys.root]))
    resolved = TrustedRoot.resolve(v2, TrustRoot.load(v1), NOW)
    assert resolved.root is v2 and resolved.stored_digest == v2.digest
    assert "rotated away since" in resolved.notes[0]


def test_a_newer_given_root_applies_only_as_a_rotation(keys: Keys, rotate: RotateFn, tmp_path: Path) -> None:
    v1 = make_root(keys, tmp_path / "1.root.json")
    v2 = TrustRoot.load(rotate(v1, [keys.root]))
    resolved = TrustedRoot.resolve(TrustRoot.load(v1), v2, NOW)
    assert resolved.version == 2 and resolved.stored_digest == TrustRoot.load(v1).digest
    impostor = TrustRoot.load(rotate(v1, [keys.stranger], out=tmp_path / "impostor.json"))
    with pytest.raises(RotationRefused) as info:
        TrustedRoot.resolve(TrustRoot.load(v1), impostor, NOW)
    assert (info.value.trusted_version, info.value.offered_version) == (1, 2)


def test_a_different_root_of_the_stored_version_is_refused(keys: Keys, tmp_path: Path) -> None:
    stored = TrustRoot.load(make_root(keys, tmp_path / "a.json"))
    other = TrustRoot.load(make_root(keys, tmp_path / "b.json", threshold=1))
    with pytest.raises(TrustError, match="differs from the v1 stored"):
        TrustedRoot.resolve(stored, other, NOW)


# -- carried roots ---------------------------------------------------------------------------------------
def test_carried_roots_chain_in_any_order_and_skip_old_ones(
    keys: Keys, rotate: RotateFn, tmp_path: Path
) -> None:
    v1 = make_root(keys, tmp_path / "1.root.json")
    v2 = rotate(v1, [keys.root])
    v3 = rotate(v2, [keys.root], revoke=[keys.ecdsa2])
    start = trusted(v1)
    after = start.with_carried([TrustRoot.load(p) for p in (v3, v1, v2)])
    assert after.version == 3 and after.carried == 3 and after.at == start.at
    assert after.notes[-1].endswith("root v1 rotated to v3")
    assert start.version == 1  # a TrustedRoot is never changed in place
    with pytest.raises(ThresholdNotMet):  # the revoked key no longer counts
        after.require("bundle", envelope(keys.ecdsa2, keys.mldsa), "doc")


def test_a_gap_in_carried_roots_is_refused(keys: Keys, rotate: RotateFn, tmp_path: Path) -> None:
    v1 = make_root(keys, tmp_path / "1.root.json")
    v3 = rotate(rotate(v1, [keys.root]), [keys.root])
    with pytest.raises(RotationRefused, match="does not follow version 1"):
        trusted(v1).with_carried([TrustRoot.load(v3)])


def test_a_carried_fork_of_the_trusted_version_is_refused(keys: Keys, tmp_path: Path) -> None:
    v1 = make_root(keys, tmp_path / "1.root.json")
    fork = TrustRoot.load(make_root(keys, tmp_path / "fork.json", threshold=1))
    with pytest.raises(RotationRefused, match="a fork"):
        trusted(v1).with_carried([fork])


def test_an_expired_intermediate_root_does_not_matter_only_the_final_one(
    keys: Keys, rotate: RotateFn, tmp_path: Path
) -> None:
    v1 = make_root(keys, tmp_path / "1.root.json", expires=NOW - timedelta(days=1))
    v2 = rotate(v1, [keys.root], expires=NOW + timedelta(days=5))
    resolved = TrustedRoot.resolve(TrustRoot.load(v1), None, NOW).with_carried([TrustRoot.load(v2)])
    resolved.check_current()
    with pytest.raises(ExpiredRoot):
        replace(resolved, at=NOW + timedelta(days=6)).check_current()
