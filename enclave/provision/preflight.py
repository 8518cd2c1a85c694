"""Preflight: before anything is pushed or changed, check each host over SSH (paramiko, pinned
host keys): reachable, sudo, OS family and version the roles support, Python for Ansible and the
host-side checks, free disk for the payload, a container engine that answers, clock skew.

Probing (one shell script, one `date`) is I/O; judging what it printed is pure (`evaluate`), so
the rules are unit-tested without hosts. Any failed check stops that host.
"""

from __future__ import annotations

import posixpath
import shlex
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from enclave.provision.push import INCOMING, Payload, remaining_bytes
from enclave.provision.ssh import Session

# What the roles are written and tested for (Debian paths: pam.d/common-*, dpkg, ssh.service).
SUPPORTED_OS: Mapping[str, tuple[str, ...]] = {"debian": ("12",), "ubuntu": ("22.04", "24.04")}
MIN_PYTHON = (3, 8)  # ansible-core 2.19's oldest target Python
DEFAULT_MAX_SKEW = 5.0  # seconds; signatures, root expiry and audit times are compared across hosts
DISK_RESERVE = 64 * 1024 * 1024  # left free on top of the payload

CHECKS = ("reach", "sudo", "os", "python", "disk", "engine", "clock")


@dataclass(frozen=True)
class Check:
    name: str
    ok: bool
    detail: str

    def to_dict(self) -> dict[str, Any]:
        return {"check": self.name, "status": "pass" if self.ok else "fail", "detail": self.detail}


@dataclass
class HostPreflight:
    host: str
    address: str
    checks: list[Check] = field(default_factory=list)
    reachable: bool = False
    container: str = ""  # systemd-detect-virt's name for the container type, "" on a machine

    @property
    def ok(self) -> bool:
        return self.reachable and all(c.ok for c in self.checks)

    @property
    def failures(self) -> list[Check]:
        return [c for c in self.checks if not c.ok]

    def to_dict(self) -> dict[str, Any]:
        return {
            "address": self.address,
            "ok": self.ok,
            "reachable": self.reachable,
            "container": self.container or None,
            "checks": [c.to_dict() for c in self.checks],
        }


def probe_script(python: str, bundle_dir: str) -> str:
    """A POSIX sh script printing key=value lines; every command is bounded in time."""
    py = shlex.quote(python)
    bdir = shlex.quote(bundle_dir)
    fmt = shlex.quote("{{.Server.Version}}")
    version = shlex.quote("import sys; print('.'.join(map(str, sys.version_info[:3])))")
    return "\n".join(
        [
            "if [ -r /etc/os-release ]; then . /etc/os-release; fi",
            'echo "os_id=${ID:-}"',
            'echo "os_version=${VERSION_ID:-}"',
            'echo "os_name=${PRETTY_NAME:-}"',
            f'echo "python=$(timeout 20 {py} -c {version} 2>/dev/null)"',
            f"d={shlex.quote(INCOMING)}",
            'while [ ! -d "$d" ]; do d=$(dirname "$d"); done',
            'echo "disk_path=$d"',
            'echo "disk_free=$(df -Pk "$d" 2>/dev/null | awk \'NR==2 {print $4}\')"',
            "if timeout 20 sudo -n true 2>/dev/null; then echo sudo=yes; else echo sudo=no; fi",
            f'echo "engine=$(timeout 20 sudo -n docker version --format {fmt} 2>&1 | tail -n 1)"',
            'echo "container=$(systemd-detect-virt --container 2>/dev/null)"',
            f"if [ -d {bdir} ]; then find {bdir} -type f -printf 'file=%s %P\\n'; fi",
            "true",
        ]
    )


def parse_probe(text: str) -> tuple[dict[str, str], dict[str, int]]:
    """Facts (key -> value) and the files already under the bundle directory (name -> size)."""
    facts: dict[str, str] = {}
    files: dict[str, int] = {}
    for line in text.splitlines():
        key, sep, value = line.partition("=")
        if not sep:
            continue
        if key == "file":
            size, _, name = value.partition(" ")
            if size.isdigit() and name:
                files[name] = int(size)
        else:
            facts[key] = value.strip()
    return facts, files


def _version(text: str) -> tuple[int, ...]:
    parts = []
    for piece in text.split("."):
        if not piece.isdigit():
            break
        parts.append(int(piece))
    return tuple(parts)


def evaluate(facts: Mapping[str, str], need: int, skew: float | None, max_skew: float) -> list[Check]:
    """Judge one host's probe output; `need` is the payload bytes still to send, `skew` the
    host clock minus the controller's (None when it could not be read)."""
    checks = []
    sudo = facts.get("sudo") == "yes"
    checks.append(
        Check(
            "sudo",
            sudo,
            "passwordless sudo works" if sudo else "sudo -n true failed: Ansible cannot become root",
        )
    )

    os_id, os_version = facts.get("os_id", ""), facts.get("os_version", "")
    name = facts.get("os_name") or f"{os_id} {os_version}".strip() or "unknown OS"
    supported = os_version in SUPPORTED_OS.get(os_id, ())
    wanted = ", ".join(f"{k} {'/'.join(v)}" for k, v in SUPPORTED_OS.items())
    checks.append(
        Check("os", supported, name if supported else f"{name}: not supported by the roles ({wanted})")
    )

    python = facts.get("python", "")
    py_ok = _version(python) >= MIN_PYTHON
    least = ".".join(map(str, MIN_PYTHON))
    checks.append(
        Check(
            "python",
            py_ok,
            f"python {python}" if py_ok else f"python {python or 'missing'}: need {least} or newer",
        )
    )

    free_text = facts.get("disk_free", "")
    if free_text.isdigit():
        free = int(free_text) * 1024
        wanted_bytes = need + max(DISK_RESERVE, need // 20)
        path = facts.get("disk_path", "?")
        detail = f"{_human(free)} free on {path}, {_human(wanted_bytes)} needed"
        checks.append(Check("disk", free >= wanted_bytes, detail))
    else:
        checks.append(Check("disk", False, "free space unknown (df failed)"))

    engine = facts.get("engine", "")
    engine_ok = bool(_version(engine))
    checks.append(
        Check(
            "engine",
            engine_ok,
            f"docker {engine}" if engine_ok else f"container engine not answering ({engine or 'no output'})",
        )
    )

    if skew is None:
        checks.append(Check("clock", False, "host clock unreadable"))
    else:
        ok = abs(skew) <= max_skew
        checks.append(Check("clock", ok, f"skew {skew:+.2f} s (limit {max_skew:g} s)"))
    return checks


def _human(count: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if count < 1024 or unit == "TiB":
            return f"{count:.1f} {unit}"
        count /= 1024
    return f"{count:.1f} TiB"


def measure_skew(session: Session) -> float | None:
    """Host clock minus controller clock, from a `date` bracketed by two local readings."""
    before = time.time()
    out = session.run("date -u +%s.%N", timeout=10)
    after = time.time()
    try:
        remote = float(out.text.strip())
    except ValueError:
        return None
    if out.code != 0:
        return None
    return remote - (before + after) / 2


def run_preflight(
    session: Session, payload: Payload | None, max_skew: float = DEFAULT_MAX_SKEW, payload_size: int = 0
) -> HostPreflight:
    """All checks on one logged-in host. Free disk is judged against what `payload` still needs
    on this host, or against `payload_size` bytes when there is no payload."""
    host = session.host
    report = HostPreflight(host.name, f"{host.address}:{host.port}", reachable=True)
    seen = session.seen
    contact = "first contact, key recorded" if seen.first_contact else "key pinned"
    report.checks.append(
        Check(
            "reach",
            True,
            f"ssh {host.user}@{host.address}:{host.port}, {contact} ({seen.key_type} {seen.fingerprint})",
        )
    )
    bundle_dir = payload.remote_dir if payload else posixpath.join(INCOMING, ".none")
    out = session.run(probe_script(host.python, bundle_dir), timeout=120)
    facts, files = parse_probe(out.text)
    report.container = facts.get("container", "")
    need = remaining_bytes(payload, files) if payload else payload_size
    report.checks += evaluate(facts, need, measure_skew(session), max_skew)
    return report


def unreachable(name: str, address: str, reason: str) -> HostPreflight:
    report = HostPreflight(name, address, reachable=False)
    report.checks.append(Check("reach", False, reason))
    return report


def table(reports: list[HostPreflight]) -> str:
    """The findings as a text table: one row per host and check."""
    rows = [("HOST", "CHECK", "RESULT", "DETAIL")]
    for report in reports:
        for check in report.checks:
            rows.append((report.host, check.name, "pass" if check.ok else "FAIL", check.detail))
    widths = [max(len(r[i]) for r in rows) for i in range(3)]
    return "\n".join(
        f"{r[0]:<{widths[0]}}  {r[1]:<{widths[1]}}  {r[2]:<{widths[2]}}  {r[3]}".rstrip() for r in rows
    )
