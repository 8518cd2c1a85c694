"""Provisioning wall time: `enclave provision` on 1, 4 and 8 testbed hosts, side by side with a
plain `ansible-playbook` run of the same site.yml at Ansible's defaults.

Usage: python3 bench/bench_provision.py [--hosts 1,4,8] [--json]

For each host count, on fresh testbed hosts each time (hardening changes them):
- enclave: `provision()` as the CLI runs it: verify the bundle (3 MiB weights), preflight and
  push over paramiko, then site.yml through ansible-runner with pipelining, forks = host count,
  per-run ControlPath; the wall time of all of it, and of its Ansible part alone;
- enclave again: the same run on the now-hardened hosts (nothing changes, nothing is sent);
- plain: `ansible-playbook site.yml` at Ansible's defaults: forks 5, no pipelining, the default
  ssh_args (ControlPersist 60 s) plus the pinned known_hosts, StrictHostKeyChecking=yes.

Target: 8 hosts in at most 2x the wall time of 1 host. Needs the Docker engine
(enclave/testbed/engine.sh) and the testbed addresses 127.0.0.11-18 free.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from enclave.admission import Admission
from enclave.bundle.build import build_bundle
from enclave.provision import Options, provision
from enclave.testbed import ENGINE_SCRIPT, down, up
from enclave.trust.keys import SigningKey
from enclave.trust.root import TrustRoot, sign_document

REPO = Path(__file__).resolve().parents[1]
PLAYBOOKS = REPO / "playbooks"
MANIFEST = """\
apiVersion: enclave/v1
kind: Bundle
metadata: {{name: bench, version: 1.0.0}}
spec:
  digest: sha384
  chunkSize: 1MiB
  components:
    - {{name: weights, kind: model, path: ./weights, format: gguf}}
    - {{name: site, kind: playbooks, path: {playbooks}}}
"""
PLAIN_TIMEOUT = 1800  # seconds for one plain ansible-playbook run


def make_bundle(work: Path) -> tuple[Path, TrustRoot]:
    root_key, ecdsa, mldsa = (SigningKey.generate(a) for a in ("ecdsa-p384", "ecdsa-p384", "ml-dsa-87"))
    signed = TrustRoot.create(
        {"root": [root_key.public], "bundle": [ecdsa.public, mldsa.public]},
        {"bundle": 2},
        datetime.now(UTC) + timedelta(days=1),
        hybrid_roles=("bundle",),
    )
    (work / "root.json").write_bytes(sign_document(signed, [root_key]))
    (work / "src" / "weights").mkdir(parents=True)
    (work / "src" / "weights" / "model.gguf").write_bytes(os.urandom(3 * 1024 * 1024))
    (work / "src" / "bundle.yaml").write_text(MANIFEST.format(playbooks=PLAYBOOKS))
    bundle = build_bundle(work / "src" / "bundle.yaml", work / "out", [ecdsa, mldsa], show_progress=False)
    return bundle, TrustRoot.load(work / "root.json")


def enclave_run(testbed: Path, bundle: Path, root: TrustRoot) -> tuple[float, float, int]:
    """(wall seconds, Ansible seconds, changed tasks) of one `enclave provision`."""
    started = time.monotonic()
    outcome = provision(
        Options(
            inventory=testbed / "inventory.yml",
            bundle=bundle,
            admission=Admission(trust=root),
            show_progress=False,
        )
    )
    wall = time.monotonic() - started
    changed = sum(h["changed"] for h in outcome.report["hosts"].values())
    return wall, float(outcome.report["ansible"]["seconds"]), changed


def plain_run(testbed: Path) -> float:
    """One `ansible-playbook site.yml` at Ansible's defaults (host keys pinned all the same)."""
    env = {
        **os.environ,
        "ANSIBLE_HOST_KEY_CHECKING": "True",
        # Ansible's default ssh_args, plus the pin: without it the run would not connect at all.
        "ANSIBLE_SSH_ARGS": "-C -o ControlMaster=auto -o ControlPersist=60s "
        f"-o UserKnownHostsFile={testbed / 'known_hosts'} -o StrictHostKeyChecking=yes",
    }
    for key in ("ANSIBLE_PIPELINING", "ANSIBLE_FORKS", "ANSIBLE_CONFIG"):
        env.pop(key, None)
    started = time.monotonic()
    proc = subprocess.run(
        ["ansible-playbook", "-i", str(testbed / "inventory.yml"), str(PLAYBOOKS / "site.yml")],
        capture_output=True,
        text=True,
        env=env,
        cwd=tempfile.gettempdir(),  # no ansible.cfg from the repository
        timeout=PLAIN_TIMEOUT,
        check=False,
    )
    wall = time.monotonic() - started
    if proc.returncode != 0:
        tail = "\n".join(proc.stdout.splitlines()[-15:])
        raise SystemExit(f"plain ansible-playbook failed (rc {proc.returncode}):\n{tail}")
    return wall


def fresh(testbed: Path, hosts: int) -> None:
    down(testbed)
    up(testbed, hosts)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--hosts", default="1,4,8", help="comma-separated host counts")
    parser.add_argument("--json", action="store_true", help="print the rows as JSON too")
    args = parser.parse_args()
    counts = [int(n) for n in args.hosts.split(",")]
    subprocess.run(["bash", str(ENGINE_SCRIPT)], check=True, timeout=600)
    load = os.getloadavg()[0]
    rows: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="bench-provision-") as tmp:
        work = Path(tmp)
        bundle, root = make_bundle(work)
        testbed = work / "testbed"
        testbed.mkdir()
        try:
            for count in counts:
                fresh(testbed, count)
                wall, ansible, changed = enclave_run(testbed, bundle, root)
                again, _, again_changed = enclave_run(testbed, bundle, root)
                fresh(testbed, count)
                plain = plain_run(testbed)
                rows.append(
                    {
                        "hosts": count,
                        "enclave": round(wall, 1),
                        "enclave_ansible": round(ansible, 1),
                        "changed": changed,
                        "rerun": round(again, 1),
                        "rerun_changed": again_changed,
                        "plain": round(plain, 1),
                    }
                )
                print(
                    f"  {count} host(s): enclave {wall:.1f} s, rerun {again:.1f} s, plain {plain:.1f} s",
                    file=sys.stderr,
                )
        finally:
            down(testbed)
    base = rows[0]["enclave"] if rows else 1.0
    print(f"load average at start: {load:.2f} (2 cores)")
    print(
        "| hosts | enclave provision s | of it Ansible s | x 1 host | rerun s (changed) "
        "| plain ansible-playbook s | plain / enclave |"
    )
    print(
        "|------:|--------------------:|----------------:|---------:|------------------:|-------------------------:|----------------:|"
    )
    for row in rows:
        print(
            f"| {row['hosts']:>5} | {row['enclave']:>19.1f} | {row['enclave_ansible']:>15.1f} "
            f"| {row['enclave'] / base:>8.2f} | {row['rerun']:>10.1f} ({row['rerun_changed']}) "
            f"| {row['plain']:>24.1f} | {row['plain'] / row['enclave']:>15.2f} |"
        )
    eight = next((r for r in rows if r["hosts"] == 8), None)
    if eight and rows[0]["hosts"] == 1:
        ratio = eight["enclave"] / base
        print(f"target 8 hosts <= 2x 1 host: {'met' if ratio <= 2 else 'NOT met'} ({ratio:.2f}x)")
    if args.json:
        print(json.dumps({"load": load, "rows": rows}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
