"""The enclave CA, its CRL and the signed users file: through the CLI, and what the gateway's
authenticator makes of them (reloads, rollbacks, tampering)."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from enclave.cli import main
from enclave.errors import TrustError, UsageError
from enclave.identity.ca import (
    CA,
    certificate_identity,
    init_ca,
    issue,
    load_certificate,
    load_crl,
    revoke,
)
from enclave.identity.users import add_api_key, load_users
from enclave.runtime.gateway.access import Authenticator, RateLimiter
from enclave.trust.keys import PASSPHRASE_ENV, SigningKey


def cli(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, dict[str, object]]:
    code = main([*argv, "--json"])
    out = capsys.readouterr().out
    return code, json.loads(out) if code == 0 else {}


def test_ca_commands_issue_revoke_and_keys(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(PASSPHRASE_ENV, "correct horse")
    ca = tmp_path / "ca"
    assert cli(capsys, "ca", "init", "--out", str(ca))[0] == 0
    assert b"ENCRYPTED PRIVATE KEY" in (ca / "ca.key").read_bytes()  # like the signing keys
    assert (ca / "ca.key").stat().st_mode & 0o777 == 0o600
    approver = SigningKey.generate("ecdsa-p384")
    approver.write(tmp_path / "appr", None)
    dana = ["--name", "dana", "--role", "approver", "--out", str(tmp_path / "dana")]
    code, doc = cli(
        capsys, "ca", "issue", "--ca", str(ca), *dana, "--approver-key", str(tmp_path / "appr.pub")
    )
    assert code == 0 and doc["keyid"] == approver.keyid and doc["role"] == "approver"
    assert b"ENCRYPTED PRIVATE KEY" in (tmp_path / "dana.key").read_bytes()
    identity = certificate_identity(load_certificate(tmp_path / "dana.pem"))
    assert identity.subject == "O=enclave,OU=approver,CN=dana" and identity.keyid == approver.keyid
    gateway = ["--name", "gw", "--role", "service", "--out", str(tmp_path / "gw"), "--days", "30"]
    code, doc = cli(
        capsys, "ca", "issue", "--ca", str(ca), *gateway, "--host", "10.0.0.5", "--host", "gw.enclave"
    )
    assert code == 0 and doc["hosts"] == ["gw.enclave", "10.0.0.5"]
    # An approver certificate without the approver's key is refused; so is an unknown role.
    assert (
        main(
            [
                "ca",
                "issue",
                "--ca",
                str(ca),
                "--name",
                "x",
                "--role",
                "approver",
                "--out",
                str(tmp_path / "x"),
            ]
        )
        == 2
    )
    capsys.readouterr()

    code, doc = cli(capsys, "ca", "revoke", "--ca", str(ca), "--cert", str(tmp_path / "dana.pem"))
    assert code == 0 and doc["serial"] == identity.serial_hex
    ca_cert = CA.load(ca, with_key=False).cert
    crl = load_crl(ca / "crl.pem", ca_cert, datetime.now(UTC))
    assert identity.serial in crl.revoked and crl.number == 2
    index = json.loads((ca / "index.json").read_text())
    assert [i["name"] for i in index["issued"]] == ["dana", "gw"] and len(index["revoked"]) == 1

    users = tmp_path / "users.json"
    code, doc = cli(capsys, "ca", "api-key", "--ca", str(ca), "--users", str(users), "--name", "erin",
                    "--role", "user", "--role", "auditor", "--out", str(tmp_path / "erin.key"))  # fmt: skip
    assert code == 0 and (tmp_path / "erin.key").stat().st_mode & 0o777 == 0o600
    key = (tmp_path / "erin.key").read_text().strip()
    loaded = load_users(users, CA.load(ca, with_key=False).public)
    assert loaded.find(key) is not None and loaded.find(key + "x") is None
    assert key not in users.read_text()  # only its hash is stored
    code, doc = cli(capsys, "ca", "revoke", "--ca", str(ca), "--api-key", "erin", "--users", str(users))
    assert code == 0 and doc["version"] == 2
    assert load_users(users, CA.load(ca, with_key=False).public).find(key) is None


def test_crl_and_users_file_must_be_the_cas(tmp_path: Path) -> None:
    ca = init_ca(tmp_path / "ca")
    other = init_ca(tmp_path / "other")
    with pytest.raises(TrustError, match="signature does not verify"):
        load_crl(tmp_path / "other" / "crl.pem", ca.cert)
    later = datetime.now(UTC) + timedelta(days=31)
    with pytest.raises(TrustError, match="CRL expired"):
        load_crl(tmp_path / "ca" / "crl.pem", ca.cert, later)
    assert other.key is not None and ca.key is not None
    add_api_key(tmp_path / "users.json", other.key, "frank", ["user"])
    with pytest.raises(TrustError, match="not signed by the client CA"):
        load_users(tmp_path / "users.json", ca.public)
    with pytest.raises(UsageError, match="not a CA directory"):
        issue(tmp_path / "nowhere", "a", "user", tmp_path / "a")
    with pytest.raises(TrustError, match="not issued by the CA"):
        issue(tmp_path / "other", "g", "user", tmp_path / "g")
        revoke(tmp_path / "ca", cert=tmp_path / "g.pem")


def test_authenticator_reloads_and_refuses_rollbacks(tmp_path: Path) -> None:
    ca = init_ca(tmp_path / "ca")
    assert ca.key is not None
    users = tmp_path / "users.json"
    first = add_api_key(users, ca.key, "gina", ["user"])
    old_users = users.read_bytes()
    auth = Authenticator(tmp_path / "ca" / "ca.pem", tmp_path / "ca" / "crl.pem", users, check_seconds=0)
    assert auth.authenticate(None, f"Bearer {first}").name == "gina"
    old_crl = (tmp_path / "ca" / "crl.pem").read_bytes()
    revoke(tmp_path / "ca")  # re-signed: number 2
    add_api_key(users, ca.key, "hank", ["auditor"])
    auth.refresh()
    assert (
        auth.crl is not None and auth.crl.number == 2 and auth.users is not None and auth.users.version == 2
    )
    # An older CRL or users file put back would un-revoke a certificate or bring back a key.
    (tmp_path / "ca" / "crl.pem").write_bytes(old_crl)
    users.write_bytes(old_users)
    auth.refresh()
    assert auth.crl is None and "older" in (auth.crl_error or "")
    assert auth.users is None and "older" in (auth.users_error or "")
    with pytest.raises(Exception, match="API keys cannot be checked"):
        auth.authenticate(None, f"Bearer {first}")
    assert [e["ok"] for e in auth.events] == [True, True, False, False]


def test_token_bucket() -> None:
    bucket = RateLimiter(rate=2.0, burst=2)
    assert [bucket.take("a", 0.0), bucket.take("a", 0.0)] == [0.0, 0.0]
    assert bucket.take("a", 0.0) == pytest.approx(0.5)
    assert bucket.take("b", 0.0) == 0.0  # a bucket per user
    assert bucket.take("a", 0.5) == 0.0
    with pytest.raises(UsageError):
        RateLimiter(0, 1)
