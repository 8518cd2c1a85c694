"""Keys, the trust root and the CLI's error contract (one line, the documented code)."""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from enclave.cli import main
from enclave.errors import UsageError
from enclave.trust.keys import SigningKey
from enclave.trust.root import TrustRoot
from tests.conftest import Keys, make_root


@pytest.mark.parametrize("algorithm", ["ecdsa-p384", "ml-dsa-87"])
def test_generate_encrypted_key(algorithm: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ENCLAVE_KEY_PASSPHRASE", "correct horse")
    out = tmp_path / "k"
    assert main(["keys", "generate", "--algorithm", algorithm, "--out", str(out)]) == 0
    assert stat.S_IMODE(out.stat().st_mode) == 0o600
    assert b"ENCRYPTED PRIVATE KEY" in out.read_bytes()
    assert (tmp_path / "k.pub").read_text().startswith("-----BEGIN PUBLIC KEY-----")
    key = SigningKey.load(out)
    assert key.public.verify(key.sign(b"m"), b"m") and not key.public.verify(key.sign(b"m"), b"n")
    monkeypatch.setenv("ENCLAVE_KEY_PASSPHRASE", "wrong")
    with pytest.raises(UsageError, match="wrong passphrase"):
        SigningKey.load(out)
    assert main(["keys", "generate", "--algorithm", algorithm, "--out", str(out)]) == 2  # never overwrites


def test_no_passphrase_only_when_asked(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("ENCLAVE_KEY_PASSPHRASE", raising=False)
    assert main(["keys", "generate", "--algorithm", "ecdsa-p384", "--out", str(tmp_path / "a")]) == 2
    assert not (tmp_path / "a").exists()
    assert (
        main(
            ["keys", "generate", "--algorithm", "ecdsa-p384", "--out", str(tmp_path / "b"), "--no-passphrase"]
        )
        == 0
    )
    assert b"BEGIN PRIVATE KEY" in (tmp_path / "b").read_bytes()


def _init(keys: Keys, out: Path, *bundle_keys: str) -> list[str]:
    args = ["trust", "init", "--out", str(out), "--root-key", str(keys.path("root.pub"))]
    args += ["--sign", str(keys.path("root"))]
    for name in bundle_keys:
        args += ["--bundle-key", str(keys.path(f"{name}.pub"))]
    return args


def test_trust_init_and_show(keys: Keys, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "root.json"
    args = _init(keys, out, "ecdsa", "mldsa")
    args += ["--threshold", "bundle=2", "--expires", "10"]
    assert main(args) == 0
    doc = json.loads(out.read_text())
    assert doc["signed"]["_type"] == "root" and doc["signed"]["version"] == 1
    assert doc["signed"]["roles"]["bundle"] == {
        "keyids": sorted([keys.ecdsa.keyid, keys.mldsa.keyid]),
        "threshold": 2,
        "x-enclave-hybrid": True,
    }
    assert set(doc["signed"]["roles"]) == {"root", "bundle", "approver", "audit"}
    capsys.readouterr()
    assert main(["trust", "show", str(out), "--json"]) == 0
    shown = json.loads(capsys.readouterr().out)
    assert shown["valid"] is True and shown["roles"]["bundle"]["hybrid"] is True


def test_trust_init_refuses_a_hybrid_role_without_both_kinds(keys: Keys, tmp_path: Path) -> None:
    out = tmp_path / "root.json"
    code = main(_init(keys, out, "ecdsa"))
    assert code == 2 and not out.exists()


@pytest.mark.parametrize(
    "edit",
    ["threshold0", "dupsig", "keyid_mismatch", "unknown_role", "wrong_signer"],
)
def test_invalid_roots_are_refused(edit: str, keys: Keys, tmp_path: Path) -> None:
    path = make_root(keys, tmp_path / "r.json")
    doc = json.loads(path.read_text())
    if edit == "threshold0":
        doc["signed"]["roles"]["bundle"]["threshold"] = 0
    elif edit == "dupsig":
        doc["signatures"].append(dict(doc["signatures"][0]))
    elif edit == "keyid_mismatch":  # key confusion: a key filed under another key's id
        keyid = keys.ecdsa.keyid
        doc["signed"]["keys"][keyid]["keyval"]["public"] = keys.stranger.public.pem
    elif edit == "unknown_role":
        doc["signed"]["roles"]["targets"] = {"keyids": [], "threshold": 1}
    elif edit == "wrong_signer":
        from enclave.canonical import canonical

        doc["signatures"] = [
            {"keyid": keys.root.keyid, "sig": keys.stranger.sign(canonical(doc["signed"])).hex()}
        ]
    path.write_text(json.dumps(doc))
    assert main(["trust", "show", str(path)]) in (0, 4)  # show reports; it does not enforce
    from datetime import UTC, datetime

    from enclave.errors import TrustError

    with pytest.raises(TrustError):
        TrustRoot.load(path).check(datetime.now(UTC))


def _cli(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ, ENCLAVE_KEY_PASSPHRASE="pw")
    return subprocess.run(
        [sys.executable, "-m", "enclave.cli", *args], cwd=cwd, env=env, capture_output=True, text=True
    )


@pytest.mark.parametrize(
    ("text", "expect"),
    [
        (
            "    - {name: w, kind: model, pth: ./w}\n",
            "bundle.yaml:8: spec.components[0].pth: 'pth' is not allowed (did you mean 'path'?)",
        ),
        (
            "    - {name: w, kind: modle, path: ./w}\n",
            "bundle.yaml:8: spec.components[0].kind: 'modle' is not one of",
        ),
        (
            "    - {name: W!, kind: model, path: ./w}\n",
            "bundle.yaml:8: spec.components[0].name: 'W!' has the wrong form",
        ),
        (
            "    - {name: w, kind: model, path: ./missing}\n",
            "spec.components[0].path: ./missing does not exist",
        ),
        ("    - {name: w, kind: model, path: ./w\n", "bundle.yaml:9: invalid YAML: expected ',' or '}'"),
    ],
)
def test_manifest_typo_is_one_clear_line(text: str, expect: str, keys: Keys, tmp_path: Path) -> None:
    (tmp_path / "w").mkdir()
    (tmp_path / "w" / "f").write_text("x")
    head = (
        "apiVersion: enclave/v1\nkind: Bundle\nmetadata:\n  name: a\n  version: 1.0.0\nspec:\n  components:\n"
    )
    (tmp_path / "bundle.yaml").write_text(head + text)
    result = _cli(
        "bundle", "build", "bundle.yaml", "--out", "out", "--key", str(keys.path("ecdsa")), cwd=tmp_path
    )
    assert result.returncode == 2, result.stderr
    assert result.stderr.count("\n") == 1 and "Traceback" not in result.stderr
    assert expect in result.stderr
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").iterdir())


def test_missing_bundle_and_bad_trust_file(keys: Keys, tmp_path: Path) -> None:
    root = make_root(keys, tmp_path / "r.json")
    result = _cli("bundle", "verify", "nope.bundle", "--trust", str(root), cwd=tmp_path)
    assert result.returncode == 2 and "nope.bundle" in result.stderr and result.stderr.count("\n") == 1
    (tmp_path / "bad.json").write_text("{")
    (tmp_path / "x.bundle").write_bytes(b"")
    result = _cli("bundle", "verify", "x.bundle", "--trust", "bad.json", cwd=tmp_path)
    assert result.returncode == 4 and "bad.json" in result.stderr


def test_digest_command(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    import hashlib

    f = tmp_path / "f"
    f.write_bytes(b"abc")
    assert main(["bundle", "digest", str(f), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["digest"]["sha384"] == hashlib.sha384(b"abc").hexdigest()
