"""`enclave provision` against a real testbed: two systemd hosts with sshd and their own engines,
real paramiko preflight and SFTP push, real ansible-runner driving the verified bundle's
playbooks, host-key checking on throughout.

The tests share one testbed and run in file order, as an operator would: refuse unpinned keys,
audit the fresh hosts (first contact), resume a cut push, harden, re-run (nothing changes),
audit again (nothing open), then lose a host.
"""

from __future__ import annotations

import hashlib
import json
import os
import shlex
import shutil
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import docker
import jsonschema
import paramiko
import pytest

from enclave.admission import Admission
from enclave.bundle.build import build_bundle
from enclave.errors import ProvisionError
from enclave.provision import Options, provision
from enclave.provision.inventory import load_inventory
from enclave.provision.push import plan_payload, push
from enclave.provision.ssh import HostKeyStore, Session
from enclave.testbed import TestbedState, down, up
from enclave.trust.root import TrustRoot
from tests.conftest import Keys, make_root
from tests.integration import remote

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2]
SCHEMA = json.loads((REPO / "enclave" / "provision" / "schema" / "cklb-1.0.schema.json").read_text())
MIB = 1024 * 1024

MANIFEST = """\
apiVersion: enclave/v1
kind: Bundle
metadata: {{name: assistant, version: 1.0.0}}
spec:
  digest: sha384
  chunkSize: 1MiB
  components:
    - {{name: weights, kind: model, path: ./weights, format: gguf}}
    - {{name: policy, kind: policy, path: ./policy.yaml}}
    - {{name: site, kind: playbooks, path: {playbooks}}}
"""

# Asks the host's libpwquality (the library pam_pwquality calls) about two passwords, with the
# settings it reads from /etc/security/pwquality.conf and pwquality.conf.d/.
PWQUALITY_CHECK = """
import ctypes
lib = ctypes.CDLL("libpwquality.so.1")
lib.pwquality_default_settings.restype = ctypes.c_void_p
lib.pwquality_strerror.restype = ctypes.c_char_p
settings = ctypes.c_void_p(lib.pwquality_default_settings())
assert lib.pwquality_read_config(settings, None, None) == 0
for name, password in (("short", b"Xq7#Lm2$"), ("no-upper", b"xq7#lm2$vb9%tr4&")):
    aux = ctypes.c_void_p()
    rc = lib.pwquality_check(settings, password, None, None, ctypes.byref(aux))
    buf = ctypes.create_string_buffer(256)
    print(name + ": " + lib.pwquality_strerror(buf, 256, rc, aux).decode())
"""


@dataclass
class Env:
    testbed: TestbedState
    bundle: Path
    root: TrustRoot
    work: Path

    def options(self, name: str, **kw: Any) -> Options:
        out = self.work / name
        out.mkdir(exist_ok=True)
        return Options(
            inventory=self.testbed.inventory,
            bundle=self.bundle,
            admission=Admission(trust=self.root),
            report=out / "report.json",
            checklist_dir=out / "cklb",
            show_progress=False,
            **kw,
        )


@pytest.fixture(scope="module")
def env(docker_engine: None, keys: Keys, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Env]:
    work = tmp_path_factory.mktemp("provision")
    src = work / "src"
    (src / "weights").mkdir(parents=True)
    (src / "weights" / "model.gguf").write_bytes(os.urandom(3 * MIB + 321))  # 4 chunks
    (src / "policy.yaml").write_text("rules: []\n")
    (src / "bundle.yaml").write_text(MANIFEST.format(playbooks=REPO / "playbooks"))
    bundle = build_bundle(src / "bundle.yaml", work / "out", [keys.ecdsa, keys.mldsa], show_progress=False)
    root = TrustRoot.load(make_root(keys, work / "root.json"))
    directory = work / "testbed"
    try:
        yield Env(up(directory, 2), bundle, root, work)
    finally:
        down(directory)


def ssh(state: TestbedState, address: str, command: str) -> tuple[int, str]:
    code, out, err = remote.run(state, address, command)
    return code, out + err


def checklist_rules(path: Path) -> dict[str, str]:
    doc = json.loads(path.read_text())
    jsonschema.Draft201909Validator(
        SCHEMA, format_checker=jsonschema.Draft201909Validator.FORMAT_CHECKER
    ).validate(doc)
    return {rule["rule_version"]: rule["status"] for stig in doc["stigs"] for rule in stig["rules"]}


def test_unpinned_or_changed_host_keys_are_refused(env: Env) -> None:
    empty = env.work / "empty_known_hosts"
    empty.write_text("")
    with pytest.raises(ProvisionError, match=r"host1: host key refused .*not pinned") as info:
        provision(env.options("unpinned", known_hosts=empty))
    assert info.value.exit_code == 7 and "host2: host key refused" in str(info.value)
    report = json.loads((env.work / "unpinned" / "report.json").read_text())
    assert report["failed"] == ["host1", "host2"] and report["ansible"] is None
    assert empty.read_text() == ""  # nothing was pinned behind the operator's back

    # host1's address pinned to host2's keys: a changed key, refused even with first contact allowed.
    lines = env.testbed.known_hosts.read_text().splitlines()
    swapped = env.work / "swapped_known_hosts"
    swapped.write_text(
        "".join(f"127.0.0.11 {line.split(' ', 1)[1]}\n" for line in lines if line.startswith("127.0.0.12 "))
    )
    with pytest.raises(ProvisionError, match=r"host1: host key refused .*CHANGED"):
        provision(env.options("changed", known_hosts=swapped, limit="host1", accept_new_host_keys=True))
    _code, out = ssh(env.testbed, "127.0.0.11", "test -e /var/lib/enclave && echo present || echo absent")
    assert out.strip() == "absent"  # nothing reached the host


def test_audit_of_fresh_hosts_reports_open_findings_first_contact_recorded(env: Env) -> None:
    first = env.work / "first" / "known_hosts"
    first.parent.mkdir()
    outcome = provision(env.options("audit-fresh", known_hosts=first, check=True, accept_new_host_keys=True))
    report = outcome.report
    assert report["mode"] == "check" and report["result"] == "ok"
    pinned = paramiko.HostKeys(str(env.testbed.known_hosts))
    for name, address in (("host1", "127.0.0.11"), ("host2", "127.0.0.12")):
        host = report["hosts"][name]
        assert host["openFindings"] and host["failed"] == 0 and host["unreachable"] is False
        key = report["hostKeys"][name]
        assert key["firstContact"] is True and key["address"] == address
        # The recorded key is the host's real key (as the testbed read it from the container).
        assert (
            paramiko.HostKeys(str(first)).lookup(address)[key["type"]] == pinned.lookup(address)[key["type"]]
        )
        statuses = checklist_rules(Path(host["checklist"]))
        assert statuses["UBTU-22-255040"] == "open"  # X11 forwarding not yet disabled
        assert statuses["UBTU-22-611070"] == "not_a_finding"  # SHA512 already the Debian default
        assert statuses["UBTU-22-213010"] == "not_applicable"  # kernel: the hosts are containers
        assert statuses["UBTU-22-215010"] == "not_a_finding"  # libpam-pwquality is in the image
        assert statuses["UBTU-22-611035"] == "open"  # minlen only commented out (default 8)
        assert statuses["UBTU-22-611045"] == "open"  # "enforcing = 1" only commented out
    # Check mode changed nothing and pushed nothing.
    _code, out = ssh(
        env.testbed, "127.0.0.11", "ls /etc/ssh/sshd_config.d/; test -e /var/lib/enclave || echo no-payload"
    )
    assert "00-enclave-harden.conf" not in out and "no-payload" in out


def test_a_missing_auditd_is_an_open_finding_not_a_crash(env: Env) -> None:
    """Outside a container the audit controls run; the testbed has no auditd, so they are open
    findings and every other control is still evaluated (check mode: nothing is touched)."""
    opts = env.options(
        "no-auditd", check=True, limit="host1", extravars={"enclave_harden_in_container": False}
    )
    outcome = provision(opts)
    host = outcome.report["hosts"]["host1"]
    assert host["result"] == "ok" and host["failed"] == 0 and host["ignored"] > 0
    statuses = checklist_rules(Path(host["checklist"]))
    assert statuses["UBTU-22-653010"] == "open" and statuses["UBTU-22-654145"] == "open"
    assert statuses["RHEL-09-231110"] == "not_a_finding"  # the testbed's /dev/shm is nodev
    assert "auditd is not installed" in json.dumps(host["tasks"])


def test_an_interrupted_push_resumes(env: Env, tmp_path: Path) -> None:
    verified = Admission(trust=env.root).verify(env.bundle, extract_to=tmp_path / "x")
    payload = plan_payload(verified.statement, tmp_path / "x")
    weights = next(f for f in payload.files if f.name.endswith("model.gguf"))
    host = load_inventory(env.testbed.inventory).select("host2")[0]
    store = HostKeyStore(env.testbed.known_hosts, accept_new=False)

    class Cut(Exception):
        pass

    sent = 0

    def cut_after_two_mib(_host: str, count: int) -> None:
        nonlocal sent
        sent += count
        if sent >= 2 * MIB and sent < payload.size:
            raise Cut

    with Session(host, store) as session, pytest.raises(Cut):
        push(session, payload, cut_after_two_mib)
    code, out = ssh(env.testbed, "127.0.0.12", f"stat -c %s {payload.remote_dir}/{weights.name}.part")
    partial = int(out)
    assert code == 0 and 0 < partial < weights.size

    with Session(host, store) as session:
        result = push(session, payload)
    assert result.resumed[weights.name] == partial  # continued, not restarted
    assert result.bytes_sent == payload.size - sum(result.resumed.values()) < payload.size
    code, out = ssh(
        env.testbed,
        "127.0.0.12",
        f"cd {payload.remote_dir} && sha384sum content/policy/policy.yaml && ls content/weights",
    )
    assert code == 0 and out.split()[0] == hashlib.sha384(b"rules: []\n").hexdigest()
    assert out.split()[-1] == "model.gguf"  # verified on the host and renamed: no .part left


def test_harden_and_verify_two_hosts(env: Env) -> None:
    outcome = provision(env.options("apply"))
    report = outcome.report
    assert report["result"] == "ok" and report["ansible"]["forks"] == 2
    for name, address in (("host1", "127.0.0.11"), ("host2", "127.0.0.12")):
        host = report["hosts"][name]
        assert host["failed"] == 0 and host["changed"] > 10 and host["openFindings"] == []
        assert host["push"]["verifiedOnHost"] and host["push"]["files"] >= 3
        verify = [
            t for t in host["tasks"] if t.get("role") == "enclave_verify" and t["name"].startswith("Verify")
        ]
        assert sum(t["status"] == "ok" for t in verify) >= 5, verify
        assert {t["status"] for t in verify} <= {"ok", "skipped"}  # kernel parameters: skipped in containers
        statuses = checklist_rules(Path(host["checklist"]))
        assert set(statuses.values()) == {"not_a_finding", "not_applicable"}
        code, out = ssh(
            env.testbed, address, "sudo -n sshd -T | grep -E '^(x11forwarding|permitrootlogin|ciphers) '"
        )
        assert "x11forwarding no" in out and "permitrootlogin no" in out and "ciphers aes256-ctr," in out
        assert statuses["UBTU-22-611035"] == "not_a_finding"
        # What libpwquality itself now enforces (the settings it reads, not the file's text).
        code, out = ssh(env.testbed, address, f"python3 -c {shlex.quote(PWQUALITY_CHECK)}")
        assert code == 0 and out.split("\n")[0] == "short: The password is shorter than 15 characters", out
        assert out.split("\n")[1] == "no-upper: The password contains less than 1 uppercase letters", out
        code, out = ssh(env.testbed, address, "grep pam_pwquality /etc/pam.d/common-password")
        assert code == 0 and out.split() == ["password", "requisite", "pam_pwquality.so", "retry=3"], out
    # The hardened inner engine still runs containers (bridge-less, no-new-privileges).
    script = (
        "set -e; d=$(mktemp -d); cd $d; mkdir -p usr/bin lib/x86_64-linux-gnu lib64;"
        " cp /usr/bin/echo usr/bin/; cp /lib/x86_64-linux-gnu/libc.so.6 lib/x86_64-linux-gnu/;"
        " cp /lib64/ld-linux-x86-64.so.2 lib64/;"
        " tar -cf - . | sudo -n docker import - enclave-test-echo:1 >/dev/null;"
        " sudo -n docker run --rm --network none enclave-test-echo:1 /usr/bin/echo inner-ok;"
        " sudo -n docker network ls --format '{{.Driver}}'"
    )
    code, out = ssh(env.testbed, "127.0.0.11", script)
    assert code == 0 and "inner-ok" in out and "bridge" not in out, out
    assert not Path("/sys/class/net/docker0").exists()


def test_second_run_changes_nothing(env: Env) -> None:
    report = provision(env.options("again")).report
    for host in report["hosts"].values():
        assert host["changed"] == 0 and host["failed"] == 0, [
            t for t in host["tasks"] if t["status"] == "changed"
        ]
        assert host["push"]["sent"] == 0  # already there: only re-verified on the host


def test_audit_after_hardening_finds_nothing_open(env: Env) -> None:
    report = provision(env.options("audit-hardened", check=True)).report
    for host in report["hosts"].values():
        assert host["openFindings"] == [] and host["changed"] == 0
        assert "open" not in checklist_rules(Path(host["checklist"])).values()


def test_a_missing_libpam_pwquality_is_an_open_finding_and_pam_is_left_alone(env: Env) -> None:
    """Without the package every password quality control is an open finding that says why, the
    other controls still run, and the role does not ask PAM for a module that is not there."""
    code, out = ssh(env.testbed, "127.0.0.12", "sudo -n dpkg --remove libpam-pwquality 2>&1")
    assert code == 0, out
    code, out = ssh(env.testbed, "127.0.0.12", "grep -c pam_pwquality /etc/pam.d/common-password")
    assert out.strip() == "0", out  # the package's pam-auth-update profile went with it
    with pytest.raises(ProvisionError, match=r"host2") as info:
        provision(env.options("no-pwquality", limit="host2"))
    assert info.value.exit_code == 7
    host = json.loads((env.work / "no-pwquality" / "report.json").read_text())["hosts"]["host2"]
    assert host["failed"] == 0 and host["ignored"] > 0 and host["unreachable"] is False
    statuses = checklist_rules(Path(host["checklist"]))
    pwquality = ["UBTU-22-215010"] + [f"UBTU-22-6110{n}" for n in (10, 15, 20, 25, 30, 35, 40, 45)]
    assert {statuses[cid] for cid in pwquality} == {"open"}
    assert {cid for cid, status in statuses.items() if status == "open"} == set(pwquality)
    assert host["openFindings"] == sorted(pwquality)  # every other control still evaluated, and met
    doc = json.loads(Path(host["checklist"]).read_text())
    details = {r["rule_version"]: r["finding_details"] for stig in doc["stigs"] for r in stig["rules"]}
    for cid in pwquality:
        assert "libpam-pwquality is not installed and the host has no package source" in details[cid], cid
    code, out = ssh(env.testbed, "127.0.0.12", "grep -c pam_pwquality /etc/pam.d/common-password")
    assert out.strip() == "0", out


def test_a_stopped_host_fails_the_run_naming_it_while_the_other_completes(env: Env) -> None:
    engine = docker.from_env()
    try:
        engine.containers.get(env.testbed.hosts[1].container_id).stop(timeout=5)
    finally:
        engine.close()
    with pytest.raises(
        ProvisionError, match=r"^1 of 2 host\(s\) not provisioned: host2: unreachable"
    ) as info:
        provision(env.options("stopped"))
    assert info.value.exit_code == 7
    report = json.loads((env.work / "stopped" / "report.json").read_text())
    assert report["failed"] == ["host2"] and report["hosts"]["host2"]["unreachable"] is True
    assert report["hosts"]["host1"]["result"] == "ok" and report["hosts"]["host1"]["ok"] > 0
    rules = checklist_rules(Path(report["hosts"]["host2"]["checklist"]))
    assert set(rules.values()) == {"not_reviewed"}
    shutil.rmtree(env.work / "stopped")
