"""`enclave provision --gateway-tls DIR`: the checks made on the controller before any host is
contacted, with real certificates from enclave.identity.ca. Each refusal is one UsageError
(exit 2) naming the host and the reason; what passes is what enclave_deploy installs."""

from __future__ import annotations

import shutil
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from enclave.admission import Admission
from enclave.errors import TrustError, UsageError
from enclave.identity.ca import init_ca, issue, revoke
from enclave.provision import Options
from enclave.provision.gateway_tls import check_material, report_entry, summary_line
from enclave.provision.inventory import Host
from enclave.provision.provision import deploy_secrets
from enclave.trust.keys import SigningKey
from enclave.trust.root import TrustRoot
from tests.conftest import Keys
from tests.unit.test_provision_deploy import GATEWAY, POLICY, SERVER, WEIGHTS, root_with_audit, statement

ADDRESS = {"host1": "127.0.0.11", "host2": "127.0.0.12"}
PASSPHRASE = b"tls test passphrase"
# Certificates are issued at the real time (valid from 5 minutes before); each check runs at the
# real time too, never at a time fixed at import (the suite may reach these tests minutes later).
NOW = datetime.now(UTC)  # only to place certificates in the past


def host(name: str, **variables: Any) -> Host:
    return Host(name, ADDRESS[name], 22, "enclave", None, "/usr/bin/python3", variables)


HOSTS = (host("host1"), host("host2"))


def material(base: Path, ca: Path, name: str, *, agent: bool = True, **options: Any) -> None:
    """What the sysadmin issues for one host: gateway and agent service certificates."""
    (base / name).mkdir(parents=True, exist_ok=True)
    hosts = options.pop("hosts", [ADDRESS[name], name])
    settings: dict[str, Any] = {"hosts": hosts, "key_passphrase": PASSPHRASE} | options
    issue(ca, f"{name}-gateway", settings.pop("role", "service"), base / name / "gateway", **settings)
    if agent:
        issue(ca, f"{name}-agent", "service", base / name / "agent", hosts=hosts, key_passphrase=PASSPHRASE)


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A CA (kept apart, offline) and the directory handed to provision: ca.pem, crl.pem, and
    each host's certificates."""
    base = tmp_path_factory.mktemp("tls")
    init_ca(base / "ca")
    given = base / "given"
    given.mkdir()
    shutil.copyfile(base / "ca" / "ca.pem", given / "ca.pem")
    shutil.copyfile(base / "ca" / "crl.pem", given / "crl.pem")
    for name in ADDRESS:
        material(given, base / "ca", name)
    return base


def fresh(pki: Path, tmp_path: Path) -> Path:
    """A copy of the good directory to spoil."""
    shutil.copytree(pki / "given", tmp_path / "tls")
    return tmp_path / "tls"


def check(directory: Path, hosts: tuple[Host, ...] = HOSTS, **kw: Any) -> Any:
    options: dict[str, Any] = {"agent": True, "passphrase": PASSPHRASE, "now": datetime.now(UTC)} | kw
    return check_material(directory, hosts, **options)


def test_good_material_is_checked_and_handed_to_the_role(pki: Path) -> None:
    checked = check(pki / "given")
    assert set(checked.hosts) == {"host1", "host2"}
    one = checked.hosts["host1"]
    assert one.address == "127.0.0.11" and one.gateway.identity.name == "host1-gateway"
    assert one.agent is not None and one.agent.identity.role == "service"
    out = checked.extravars()
    assert out["enclave_deploy_tls_dir"] == str((pki / "given").resolve())
    assert out["enclave_deploy_tls_crl"] is True
    record = out["enclave_deploy_tls_checked"]
    assert record["clientCa"]["fingerprint"].startswith("sha256:") and record["crl"] == {"number": 1}
    assert record["hosts"]["host2"]["gateway"]["hosts"] == ["host2", "127.0.0.12"]
    assert "key" not in str(record).lower().replace("keyid", "")  # paths and fingerprints, no key
    entry = report_entry(out, HOSTS, {})
    assert entry["tls"] == "mutual" and entry["urls"]["host1"] == "https://127.0.0.11:8080"
    assert summary_line(entry).startswith("gateway: mutual TLS 1.3 on https://127.0.0.11:8080, ")


def test_without_material_the_report_says_plain_http(pki: Path) -> None:
    entry = report_entry({"enclave_deploy_tls_dir": ""}, HOSTS, {"enclave_deploy_gateway_port": 9000})
    assert entry["tls"] is None and entry["urls"]["host2"] == "http://127.0.0.12:9000"
    assert "plain HTTP" in summary_line(entry) and "--gateway-tls DIR" in entry["access"]


def refusal(directory: Path, **kw: Any) -> str:
    with pytest.raises(UsageError) as info:
        check(directory, **kw)
    assert info.value.exit_code == 2
    message = str(info.value)
    assert "\n" not in message  # one line
    return message


def test_a_certificate_from_another_ca_is_refused(pki: Path, tmp_path: Path) -> None:
    directory = fresh(pki, tmp_path)
    init_ca(tmp_path / "other", "another CA")
    shutil.rmtree(directory / "host2")
    material(directory, tmp_path / "other", "host2")
    message = refusal(directory)
    assert message.startswith(f"{directory}: host host2: gateway.pem was not issued by the CA in ca.pem")
    assert "CN=another CA" in message


def test_an_expired_certificate_is_refused(pki: Path, tmp_path: Path) -> None:
    directory = fresh(pki, tmp_path)
    shutil.rmtree(directory / "host1")
    material(directory, pki / "ca", "host1", days=1, now=NOW - timedelta(days=3))
    expired = (NOW - timedelta(days=2)).strftime("%Y-%m-%dT%H:%M")
    assert f"host host1: gateway.pem expired at {expired}" in refusal(directory)


def test_a_certificate_for_another_address_is_refused(pki: Path, tmp_path: Path) -> None:
    directory = fresh(pki, tmp_path)
    shutil.rmtree(directory / "host1")
    material(directory, pki / "ca", "host1", hosts=["127.0.0.12", "host1.enclave"])
    message = refusal(directory)
    assert message.endswith(
        "host host1: gateway.pem names host1.enclave, 127.0.0.12, not the gateway's address 127.0.0.11"
    )
    # The address checked is the one the gateway binds: an inventory variable moves it.
    moved = (host("host1", enclave_deploy_gateway_address="host1.enclave"), HOSTS[1])
    assert check(directory, hosts=moved).hosts["host1"].address == "host1.enclave"
    entry = report_entry({}, moved, {})
    assert entry["urls"]["host1"] == "http://host1.enclave:8080"


def test_a_key_that_is_not_the_certificates_is_refused(pki: Path, tmp_path: Path) -> None:
    directory = fresh(pki, tmp_path)
    shutil.copyfile(directory / "host2" / "agent.key", directory / "host2" / "gateway.key")
    assert refusal(directory).endswith("host host2: gateway.key is not the key of gateway.pem")


def test_a_key_the_containers_cannot_open_is_refused(pki: Path, tmp_path: Path) -> None:
    message = refusal(pki / "given", passphrase=b"the audit key's, which differs")
    assert "host host1: gateway.key does not open with the audit key's passphrase" in message
    assert "ENCLAVE_KEY_PASSPHRASE" in message
    assert "host host1: gateway.key" in refusal(pki / "given", passphrase=None)


def test_a_missing_host_and_a_missing_agent_certificate_are_refused(pki: Path, tmp_path: Path) -> None:
    directory = fresh(pki, tmp_path)
    shutil.rmtree(directory / "host2")
    message = refusal(directory)
    assert f"host host2: no certificates: {directory.resolve() / 'host2'}/ is missing" in message
    assert "enclave ca issue --role service --host 127.0.0.12" in message
    check(directory, hosts=HOSTS[:1])  # a host not selected needs nothing
    (directory / "host1" / "agent.pem").unlink()
    assert "host host1: agent certificate missing: no " in refusal(directory, hosts=HOSTS[:1])
    check(directory, hosts=HOSTS[:1], agent=False)  # a bundle without the agent needs no agent certificate


def test_a_revoked_a_user_and_a_client_only_certificate_are_refused(pki: Path, tmp_path: Path) -> None:
    directory = fresh(pki, tmp_path)
    ca = tmp_path / "ca"
    shutil.copytree(pki / "ca", ca)
    revoke(ca, cert=directory / "host1" / "agent.pem")
    shutil.copyfile(ca / "crl.pem", directory / "crl.pem")
    assert "host host1: agent.pem is revoked (serial " in refusal(directory)
    (directory / "crl.pem").unlink()  # without a CRL nothing is known revoked
    checked = check(directory)
    assert checked.crl is None and checked.extravars()["enclave_deploy_tls_crl"] is False
    shutil.rmtree(directory / "host1")
    material(directory, ca, "host1", role="user")
    assert "host host1: gateway.pem has role user; a host's certificates have role service" in refusal(
        directory
    )
    shutil.rmtree(directory / "host1")
    material(directory, ca, "host1", hosts=[])
    assert "host host1: gateway.pem is not a server certificate (issue it with --host 127.0.0.11)" in (
        refusal(directory)
    )


def test_the_ca_and_its_crl_must_be_good(pki: Path, tmp_path: Path) -> None:
    directory = fresh(pki, tmp_path)
    (directory / "crl.pem").write_bytes(b"not a CRL\n")
    with pytest.raises(UsageError, match="not a PEM CRL"):
        check(directory)
    init_ca(tmp_path / "other", "another CA")
    shutil.copyfile(tmp_path / "other" / "crl.pem", directory / "crl.pem")
    with pytest.raises(TrustError, match="not by the client CA"):
        check(directory)
    (directory / "crl.pem").unlink()
    shutil.copyfile(directory / "host1" / "gateway.pem", directory / "ca.pem")
    assert "not a CA certificate" in refusal(directory)
    (directory / "ca.pem").unlink()
    assert refusal(directory).endswith("no ca.pem (the enclave CA certificate, from `enclave ca init`)")
    assert "not a directory" in refusal(tmp_path / "absent")


def options(
    inventory: Path, tls: Path | None, key: Path, passphrase: bytes | None, root: TrustRoot
) -> Options:
    """Options for deploy_secrets alone (nothing is admitted here)."""
    return Options(
        inventory=inventory,
        bundle=Path("b"),
        admission=Admission(trust=root),
        deploy_key=key,
        deploy_passphrase=passphrase,
        gateway_tls=tls,
    )


def test_provision_checks_the_selected_hosts_before_contacting_any(
    pki: Path, tmp_path: Path, keys: Keys
) -> None:
    """deploy_secrets runs after the bundle verified and before preflight: a host without its
    certificates stops the run there, naming it (nothing is pushed)."""
    inventory = tmp_path / "inventory.yml"
    inventory.write_text(
        "enclave_hosts:\n  hosts:\n"
        "    host1: {ansible_host: 127.0.0.11}\n"
        "    host2: {ansible_host: 127.0.0.12, enclave_deploy_gateway_address: 127.0.0.99}\n"
    )
    audit = SigningKey.generate("ecdsa-p384")
    audit.write(tmp_path / "audit.key", PASSPHRASE)
    root = root_with_audit(keys, audit)
    s = statement(WEIGHTS, SERVER, GATEWAY, POLICY)
    extracted = tmp_path / "x"
    (extracted / "content" / "policy").mkdir(parents=True)
    shutil.copyfile(
        Path(__file__).resolve().parents[2] / "bundles" / "policy" / "default.yaml",
        extracted / "content" / "policy" / "default.yaml",
    )
    given = options(inventory, pki / "given", tmp_path / "audit.key", PASSPHRASE, root)
    with pytest.raises(UsageError, match=r"host host2: gateway.pem names host2, 127.0.0.12, not the "):
        deploy_secrets(s, root, given, tmp_path, extracted)
    given.limit = "host1"
    out = deploy_secrets(s, root, given, tmp_path, extracted)
    assert out["enclave_deploy_tls_dir"] == str((pki / "given").resolve())
    # This statement has no agent image: no agent certificate is asked for or recorded.
    assert out["enclave_deploy_tls_checked"]["hosts"]["host1"]["agent"] is None
    plain = deploy_secrets(
        s, root, options(inventory, None, tmp_path / "audit.key", PASSPHRASE, root), tmp_path, extracted
    )
    assert plain["enclave_deploy_tls_dir"] == ""
    no_gateway = statement(WEIGHTS, SERVER, POLICY)
    with pytest.raises(UsageError, match="carries no safety gateway"):
        deploy_secrets(no_gateway, root, given, tmp_path, extracted)
