"""Root rotation, revocation and roots carried in a bundle (TUF 5.3.4): the library decides
(trust.rotation.apply_chain, trust.trusted.TrustedRoot, admission.Admission) and raises typed
errors; `test_cli_*` and the console-script test check the commands end to end."""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from enclave.admission import Admission
from enclave.canonical import canonical
from enclave.cli import main
from enclave.errors import ExpiredRoot, RotationRefused, ThresholdNotMet, TrustError
from enclave.trust.keys import SigningKey
from enclave.trust.root import TrustRoot, sign_document
from enclave.trust.rotation import apply_chain, next_root, rotation_status
from enclave.trust.state import StateDir
from enclave.trust.trusted import TrustedRoot
from tests.conftest import BuildFn, Keys, RotateFn, bundle_with_trust, make_root


@dataclass
class Extra:
    root_b: SigningKey
    root_c: SigningKey
    bundle_new: SigningKey
    dir: Path

    def path(self, name: str) -> Path:
        return self.dir / name


@pytest.fixture(scope="module")
def extra(tmp_path_factory: pytest.TempPathFactory) -> Extra:
    directory = tmp_path_factory.mktemp("extra-keys")
    made = {name: SigningKey.generate("ecdsa-p384") for name in ("root_b", "root_c", "bundle_new")}
    for name, key in made.items():
        key.write(directory / name, None)
    return Extra(dir=directory, **made)


def apply(trusted: Path | TrustRoot, *offered: Path) -> TrustRoot:
    """The root a high side trusting `trusted` ends with once `offered` (any order) are applied:
    each a valid rotation of the one before (apply_chain), the last current now."""
    start = trusted if isinstance(trusted, TrustRoot) else TrustRoot.load(trusted)
    final = apply_chain(start, [TrustRoot.load(p) for p in offered])
    TrustedRoot(final, datetime.now(UTC)).check_current()
    return final


def store(state_dir: Path, root: Path | TrustRoot) -> None:
    """Make `root` the trusted root of the state directory (as `trust update` ends)."""
    state = StateDir.open(state_dir)
    with state.locked():
        state.store_root(root if isinstance(root, TrustRoot) else TrustRoot.load(root))


def stored_version(state_dir: Path) -> int | None:
    path = state_dir / "root.json"
    return TrustRoot.load(path).version if path.exists() else None


def raw_root(signed: dict[str, Any], signers: list[SigningKey], path: Path) -> Path:
    """A root written exactly as given (for shapes `next_root` refuses to make)."""
    path.write_bytes(sign_document(signed, signers))
    return path


def refused(trusted: Path | TrustRoot, *offered: Path) -> RotationRefused:
    with pytest.raises(RotationRefused) as caught:
        apply(trusted, *offered)
    assert caught.value.exit_code == 4
    return caught.value


def test_valid_chain_is_accepted_in_one_go(
    keys: Keys, extra: Extra, rotate: RotateFn, tmp_path: Path
) -> None:
    v1 = make_root(keys, tmp_path / "1.root.json")
    # v2 adds a second root key; v3 drops the first (root key rotation in two steps).
    v2 = rotate(v1, [keys.root, extra.root_b], add={"root": [extra.root_b]})
    v3 = rotate(v2, [keys.root, extra.root_b], revoke=[keys.root])
    final = apply(v1, v3, v2)  # any order
    assert final.version == 3 and final.digest == TrustRoot.load(v3).digest
    assert keys.root.keyid not in final.keys
    assert apply(final, v2, v3) is final  # already applied: no-op


def test_chain_bootstraps_from_trust(keys: Keys, rotate: RotateFn, tmp_path: Path) -> None:
    v1 = make_root(keys, tmp_path / "1.root.json")
    v2 = rotate(v1, [keys.root])
    first = TrustedRoot.resolve(None, TrustRoot.load(v1))  # nothing stored: the given root
    assert first.notes == (f"trust root v1 from {v1} (none stored yet)",)
    assert apply(first.root, v2).version == 2
    # a given root newer than the stored one is applied as a rotation of it
    rotated = TrustedRoot.resolve(TrustRoot.load(v1), TrustRoot.load(v2))
    assert rotated.version == 2 and rotated.stored_digest == TrustRoot.load(v1).digest
    assert rotated.notes == (f"trust root v1 stored, rotated to v2 by {v2}",)


def test_skipped_version_is_refused(keys: Keys, rotate: RotateFn, tmp_path: Path) -> None:
    v1 = make_root(keys, tmp_path / "1.root.json")
    v2 = rotate(v1, [keys.root])
    v3 = rotate(v2, [keys.root])
    error = refused(v1, v3)
    assert (error.trusted_version, error.offered_version) == (1, 3)
    assert "does not follow version 1" in str(error)


def test_new_root_signed_only_by_new_keys_is_refused(
    keys: Keys, extra: Extra, rotate: RotateFn, tmp_path: Path
) -> None:
    v1 = make_root(keys, tmp_path / "1.root.json")
    # The new root key holder alone tries to take over: v1's root key did not sign.
    v2 = rotate(v1, [extra.root_b], add={"root": [extra.root_b]}, revoke=[keys.root])
    error = refused(v1, v2)
    assert (error.trusted_version, error.offered_version) == (1, 2)
    assert "not signed by a threshold of the root keys of v1" in str(error)


def test_new_root_signed_only_by_old_keys_is_refused(
    keys: Keys, extra: Extra, rotate: RotateFn, tmp_path: Path
) -> None:
    v1 = make_root(keys, tmp_path / "1.root.json")
    # The old root key hands over to a key that never signed: nobody proved they hold it.
    v2 = rotate(v1, [keys.root], add={"root": [extra.root_b]}, revoke=[keys.root])
    error = refused(v1, v2)
    assert (error.trusted_version, error.offered_version) == (1, 2)
    assert "not signed by a threshold of its own root keys" in str(error)


def test_one_key_signing_twice_does_not_meet_a_threshold_of_two(
    keys: Keys, extra: Extra, rotate: RotateFn, tmp_path: Path
) -> None:
    v1 = make_root(keys, tmp_path / "1.root.json")
    v2_path = rotate(v1, [keys.root, extra.root_b], add={"root": [extra.root_b]}, thresholds={"root": 2})
    v2 = apply(v1, v2_path)
    v3 = rotate(v2_path, [keys.root])
    doc = json.loads(v3.read_text())
    doc["signatures"].append(dict(doc["signatures"][0]))  # the same signature again
    v3.write_text(json.dumps(doc))
    with pytest.raises(TrustError, match="signs more than once") as caught:
        apply(v2, v3)
    assert caught.value.exit_code == 4
    # and the same key under a second, made-up keyid counts for nothing either
    doc["signatures"][1]["keyid"] = extra.root_b.keyid
    v3.write_text(json.dumps(doc))
    error = refused(v2, v3)
    assert "not signed by a threshold of the root keys of v2" in str(error)


def test_threshold_zero_is_refused(keys: Keys, rotate: RotateFn, tmp_path: Path) -> None:
    v1 = make_root(keys, tmp_path / "1.root.json")
    signed = json.loads(rotate(v1, [keys.root]).read_text())["signed"]
    signed["roles"]["root"]["threshold"] = 0  # "no signature needed" would let anyone rotate next
    zero = raw_root(signed, [keys.root], tmp_path / "zero.json")
    with pytest.raises(TrustError, match="role root: threshold must be an integer of at least 1") as caught:
        apply(v1, zero)
    assert caught.value.exit_code == 4
    signed["roles"]["root"]["threshold"] = 1
    signed["roles"]["bundle"]["threshold"] = 0
    zero_bundle = raw_root(signed, [keys.root], tmp_path / "zero-bundle.json")
    with pytest.raises(TrustError, match="role bundle: threshold must be an integer of at least 1") as caught:
        apply(v1, zero_bundle)
    assert caught.value.exit_code == 4


def test_two_roots_of_one_version_are_refused(
    keys: Keys, extra: Extra, rotate: RotateFn, tmp_path: Path
) -> None:
    v1 = make_root(keys, tmp_path / "1.root.json")
    v2a = rotate(v1, [keys.root], out=tmp_path / "2a.json")
    v2b = rotate(v1, [keys.root], add={"bundle": [extra.bundle_new]}, out=tmp_path / "2b.json")
    error = refused(v1, v2a, v2b)
    assert "two different trust roots of version 2" in str(error)
    trusted = apply(v1, v2a)
    assert trusted.version == 2
    error = refused(trusted, v2b)  # a fork of the version already trusted
    assert (error.trusted_version, error.offered_version) == (2, 2) and "a fork" in str(error)


def test_expired_final_root_is_refused(keys: Keys, rotate: RotateFn, tmp_path: Path) -> None:
    v1 = make_root(keys, tmp_path / "1.root.json")
    v2 = rotate(v1, [keys.root], expires=datetime.now(UTC) - timedelta(days=1))
    with pytest.raises(ExpiredRoot) as caught:
        apply(v1, v2)
    assert caught.value.version == 2 and caught.value.exit_code == 4
    assert caught.value.expires == TrustRoot.load(v2).signed["expires"]


def test_expired_intermediate_root_does_not_block_the_chain(
    keys: Keys, rotate: RotateFn, tmp_path: Path
) -> None:
    v1 = make_root(keys, tmp_path / "1.root.json")
    v2 = rotate(v1, [keys.root], expires=datetime.now(UTC) - timedelta(days=1))
    v3 = rotate(v2, [keys.root])
    assert apply(v1, v2, v3).version == 3


def test_revoked_key_bundle_stops_verifying(
    build: BuildFn, keys: Keys, rotate: RotateFn, tmp_path: Path, state_dir: Path
) -> None:
    v1 = make_root(keys, tmp_path / "1.root.json")
    by_revoked = build(signers=(keys.ecdsa, keys.mldsa), version="1.0.0")
    by_others = build(signers=(keys.ecdsa2, keys.mldsa), version="1.1.0")
    v2 = rotate(v1, [keys.root], revoke=[keys.ecdsa])  # the ECDSA integrator key leaked
    store(state_dir, apply(v1, v2))
    for given in (v1, None):  # the old root does not help
        with pytest.raises(ThresholdNotMet) as caught:
            Admission(state_dir, given).verify(by_revoked)
        error = caught.value
        assert error.exit_code == 4 and error.role == "bundle" and error.threshold == 2
        assert error.valid_keyids == (keys.mldsa.keyid,) and error.untrusted_keyids == (keys.ecdsa.keyid,)
        assert "bundle signatures not accepted" in str(error)
    admitted = Admission(state_dir).verify(by_others)
    assert admitted.root.version == 2
    assert {k.keyid for k in admitted.signers} == {keys.ecdsa2.keyid, keys.mldsa.keyid}


def test_cosigned_rotation_needs_both_holders(
    keys: Keys, extra: Extra, rotate: RotateFn, tmp_path: Path
) -> None:
    v1 = make_root(keys, tmp_path / "1.root.json")
    v2 = apply(
        v1, rotate(v1, [keys.root, extra.root_b], add={"root": [extra.root_b]}, thresholds={"root": 2})
    )
    # the first root key holder starts v3 (as `trust rotate` does), alone
    draft = next_root(v2, datetime.now(UTC) + timedelta(days=10))
    v3 = raw_root(draft, [keys.root], tmp_path / "3.root.json")
    assert not rotation_status(v2, TrustRoot.load(v3)).complete
    error = refused(v2, v3)  # one of two root keys: not yet
    assert (error.trusted_version, error.offered_version) == (2, 3)
    first = TrustRoot.load(v3)  # the second holder co-signs the draft, changing nothing else
    existing = [{"keyid": keyid, "sig": sig.hex()} for keyid, sig in first.signatures]
    v3.write_bytes(sign_document(first.signed, [extra.root_b], existing))
    assert rotation_status(v2, TrustRoot.load(v3)).complete
    assert apply(v2, v3).version == 3


def test_root_in_a_bundle_is_applied_before_its_signatures(
    keys: Keys, extra: Extra, rotate: RotateFn, tmp_path: Path, state_dir: Path
) -> None:
    v1 = make_root(keys, tmp_path / "1.root.json")
    v2 = rotate(v1, [keys.root], add={"bundle": [extra.bundle_new]})
    v3 = rotate(v2, [keys.root], revoke=[keys.ecdsa])
    # Signed by a key only v2 and later trust: accepted only because the roots ride along.
    bundle = bundle_with_trust(tmp_path, [v2, v3], (extra.bundle_new, keys.mldsa))
    store(state_dir, v1)
    admitted = Admission(state_dir).verify(bundle)
    assert admitted.root.version == 3 and stored_version(state_dir) == 3
    assert "trust component: 2 root(s); root v1 rotated to v3" in admitted.checks
    assert {k.keyid for k in admitted.signers} == {extra.bundle_new.keyid, keys.mldsa.keyid}
    again = Admission(state_dir).verify(bundle)  # roots already applied are skipped
    assert "trust component: 2 root(s), none newer than v3" in again.checks
    assert again.root.digest == admitted.root.digest


def test_bundle_without_its_roots_is_refused(
    build: BuildFn, keys: Keys, extra: Extra, tmp_path: Path, state_dir: Path
) -> None:
    v1 = make_root(keys, tmp_path / "1.root.json")
    bundle = build(signers=(extra.bundle_new, keys.mldsa))
    with pytest.raises(ThresholdNotMet) as caught:
        Admission(state_dir, v1).verify(bundle)
    assert caught.value.untrusted_keyids == (extra.bundle_new.keyid,)
    assert caught.value.valid_keyids == (keys.mldsa.keyid,)
    assert stored_version(state_dir) is None


def test_bad_root_in_a_bundle_is_refused_and_not_stored(
    keys: Keys, extra: Extra, rotate: RotateFn, tmp_path: Path, state_dir: Path
) -> None:
    v1 = make_root(keys, tmp_path / "1.root.json")
    # v2 signed only by a key v1 never trusted: a bundle cannot bring its own trust.
    v2 = rotate(
        v1, [extra.root_b], add={"root": [extra.root_b], "bundle": [extra.bundle_new]}, revoke=[keys.root]
    )
    bundle = bundle_with_trust(tmp_path, [v2], (extra.bundle_new, keys.mldsa))
    store(state_dir, v1)
    with pytest.raises(RotationRefused, match="not signed by a threshold of the root keys of v1") as caught:
        Admission(state_dir).verify(bundle)
    assert (caught.value.trusted_version, caught.value.offered_version) == (1, 2)
    assert caught.value.exit_code == 4
    assert stored_version(state_dir) == 1


def test_resolve_prefers_the_stored_root(keys: Keys, rotate: RotateFn, tmp_path: Path) -> None:
    v1 = TrustRoot.load(make_root(keys, tmp_path / "1.root.json"))
    v2 = TrustRoot.load(rotate(tmp_path / "1.root.json", [keys.root]))
    assert TrustedRoot.resolve(v2, v1).root is v2  # an older --trust never wins
    assert TrustedRoot.resolve(v1, v2).root is v2  # a newer one is a rotation
    assert TrustedRoot.resolve(None, v1).root is v1
    other = TrustRoot.load(make_root(keys, tmp_path / "other.json", threshold=1))
    with pytest.raises(TrustError, match="a new root must be a rotation"):
        TrustedRoot.resolve(v1, other)
    assert canonical(v2.signed) == canonical(TrustRoot.from_json(v2.to_json(), "x").signed)


# -- the commands end to end ------------------------------------------------------------------------
def update(state_dir: Path, *roots: Path, trust: Path | None = None) -> int:
    args = ["trust", "update", *map(str, roots), "--state-dir", str(state_dir)]
    return main(args + (["--trust", str(trust)] if trust else []))


def test_cli_revocation(
    build: BuildFn,
    keys: Keys,
    rotate: RotateFn,
    tmp_path: Path,
    state_dir: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """trust rotate --revoke, a refused trust update (exit 4, one line, nothing changed), then
    the update and a bundle by the revoked key refused (exit 4)."""
    v1 = make_root(keys, tmp_path / "1.root.json")
    v2 = tmp_path / "2.root.json"
    rotate_args = ["trust", "rotate", str(v1), str(v2), "--sign", str(keys.path("root"))]
    assert main([*rotate_args, "--revoke", keys.ecdsa.keyid[:16], "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["complete"] is True
    assert keys.ecdsa.keyid not in json.loads(v2.read_text())["signed"]["keys"]
    assert update(state_dir, trust=v1) == 0 and stored_version(state_dir) == 1
    before = (state_dir / "root.json").read_bytes()
    capsys.readouterr()
    assert update(state_dir, rotate(v2, [keys.root])) == 4  # v3 without v2: a gap
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "does not follow version 1" in err
    assert (state_dir / "root.json").read_bytes() == before, "a refused rotation must not change the state"
    assert main(["trust", "update", str(v2), "--trust", str(v1)]) == 0
    assert main(["bundle", "verify", str(build(signers=(keys.ecdsa, keys.mldsa)))]) == 4
    assert "bundle signatures not accepted" in capsys.readouterr().err


def test_cli_rotate_refuses_mistakes(keys: Keys, extra: Extra, rotate: RotateFn, tmp_path: Path) -> None:
    v1 = make_root(keys, tmp_path / "1.root.json")
    v2 = tmp_path / "2.root.json"
    base = ["trust", "rotate", str(v1), str(v2)]
    assert main([*base, "--sign", str(keys.path("stranger"))]) == 2 and not v2.exists()  # not a root key
    assert main([*base, "--sign", str(keys.path("root")), "--threshold", "bundle=9"]) == 2  # more than keys
    assert main([*base, "--sign", str(keys.path("root")), "--revoke", "zz"]) == 2
    assert main([*base, "--sign", str(keys.path("root"))]) == 0
    assert (
        main([*base, "--sign", str(extra.path("root_b")), "--add-key", "root=x.pub"]) == 2
    )  # exists: no edits
    assert main([*base, "--sign", str(keys.path("root"))]) == 2  # signing twice with one key


def test_rotation_lifecycle_through_the_console_script(tmp_path: Path) -> None:
    """As an operator runs it: separate processes, encrypted keys, one-line errors, exit codes."""
    import os
    import subprocess
    import sys

    env = dict(os.environ, ENCLAVE_KEY_PASSPHRASE="pw", ENCLAVE_STATE_DIR=str(tmp_path / "state"))

    def run(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "enclave.cli", *args],
            cwd=tmp_path,
            env=env,
            capture_output=True,
            text=True,
            timeout=120,
        )

    for name, algorithm in [
        ("root", "ecdsa-p384"),
        ("a", "ecdsa-p384"),
        ("b", "ml-dsa-87"),
        ("c", "ecdsa-p384"),
    ]:
        assert run("keys", "generate", "--algorithm", algorithm, "--out", name).returncode == 0
    assert run("keys", "generate", "--algorithm", "ecdsa-p384", "--out", "audit").returncode == 0
    init = ["trust", "init", "--out", "1.root.json", "--root-key", "root.pub", "--sign", "root"]
    init += [
        "--bundle-key",
        "a.pub",
        "--bundle-key",
        "b.pub",
        "--bundle-key",
        "c.pub",
        "--audit-key",
        "audit.pub",
    ]
    assert run(*init, "--threshold", "bundle=2").returncode == 0
    (tmp_path / "w").mkdir()
    (tmp_path / "w" / "m.bin").write_bytes(os.urandom(4096))
    (tmp_path / "b.yaml").write_text(
        "apiVersion: enclave/v1\nkind: Bundle\nmetadata: {name: x, version: 1.0.0}\n"
        "spec:\n  components:\n    - {name: w, kind: model, path: ./w}\n"
    )
    assert run("bundle", "build", "b.yaml", "--out", "out", "--key", "a", "--key", "b").returncode == 0
    verify = ["bundle", "verify", "out/x-1.0.0.bundle", "--audit-key", "audit"]
    assert run(*verify, "--trust", "1.root.json", "--receipt", "r0.json").returncode == 0
    rotated = run("trust", "rotate", "1.root.json", "2.root.json", "--revoke", "a.pub", "--sign", "root")
    assert rotated.returncode == 0 and "complete" in rotated.stdout
    assert run("trust", "update", "2.root.json").returncode == 0
    refused = run(*verify, "--trust", "1.root.json")  # the old root file cannot bring the key back
    assert refused.returncode == 4, refused.stderr
    assert refused.stderr.count("\n") == 1 and "Traceback" not in refused.stderr
    assert "bundle signatures not accepted" in refused.stderr
    checked = run("receipts", "verify", "--require-signed", "--witness", "r0.json")
    assert checked.returncode == 0, checked.stderr
    assert "2 receipts" in checked.stdout and "1 verifications passed, 1 failed" in checked.stdout
    shown = run("trust", "show", "--json")
    assert shown.returncode == 0 and json.loads(shown.stdout)["version"] == 2
