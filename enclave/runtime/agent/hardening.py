"""Hardening drift: mode, owner and content of a few security-relevant files, against a
baseline recorded on the first run.

The baseline is a JSON file next to the audit log (`LOG.hardening.json`). Its SHA-256 is
written into the audit log (`agent-baseline` record) when it is recorded, and every later
check compares the file with that record first, so editing the baseline to match a changed
host is itself a finding. A baseline the log does not know, or a known one that is gone,
fails the check instead of being silently re-recorded; the operator re-baselines on
purpose (`rebaseline`), which is recorded with the differences it accepted.
"""

from __future__ import annotations

import hashlib
import json
import os
import stat
import tempfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

from enclave.runtime.agent.results import CheckResult, Finding, could_not_run, failed, passed
from enclave.runtime.audit.records import now_text

BASELINE_FORMAT = "enclave-agent-hardening/v1"
BASELINE_EVENT = "agent-baseline"
MAX_ENTRIES = 10_000  # per directory: a baseline stays small and a scan stays short
MAX_BASELINE_BYTES = 16 * 1024 * 1024

# What an attacker with a foothold changes first: remote login, privilege escalation,
# accounts, and the container engine's isolation settings. Directories are listed one level
# deep (a file dropped into sudoers.d grants root as surely as an edit of sudoers).
DEFAULT_FILES: tuple[Path, ...] = (
    Path("/etc/ssh/sshd_config"),
    Path("/etc/ssh/sshd_config.d"),
    Path("/etc/sudoers"),
    Path("/etc/sudoers.d"),
    Path("/etc/passwd"),
    Path("/etc/group"),
    Path("/etc/docker/daemon.json"),
)

Entry = dict[str, Any]  # {"type": file|dir|symlink|other|absent, "mode", "uid", "gid", "sha256"|"target"}


def baseline_path(audit_log: Path) -> Path:
    return audit_log.with_name(audit_log.name + ".hardening.json")


# -- snapshot (I/O) -----------------------------------------------------------------------------


def _entry(path: Path) -> Entry:
    try:
        info = path.lstat()
    except FileNotFoundError:
        return {"type": "absent"}
    except OSError as exc:
        return {"type": "unreadable", "error": exc.strerror or str(exc)}
    owner = {"mode": f"{stat.S_IMODE(info.st_mode):04o}", "uid": info.st_uid, "gid": info.st_gid}
    if stat.S_ISLNK(info.st_mode):
        return {"type": "symlink", "target": os.readlink(path), **owner}
    if stat.S_ISDIR(info.st_mode):
        return {"type": "dir", **owner}
    if not stat.S_ISREG(info.st_mode):
        return {"type": "other", **owner}
    try:
        # O_NOFOLLOW: a file swapped for a link between lstat and open is not followed.
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
        with os.fdopen(fd, "rb") as handle:
            digest = hashlib.file_digest(handle, "sha256").hexdigest()
    except OSError as exc:
        return {"type": "file", **owner, "sha256": None, "error": exc.strerror or str(exc)}
    return {"type": "file", **owner, "sha256": digest}


def snapshot(paths: Sequence[Path]) -> dict[str, Entry]:
    """Every configured path, and the direct children of configured directories."""
    entries: dict[str, Entry] = {}
    for path in paths:
        entry = _entry(path)
        entries[str(path)] = entry
        if entry["type"] != "dir":
            continue
        try:
            names = sorted(os.listdir(path))
        except OSError as exc:
            entries[str(path)] = {**entry, "error": exc.strerror or str(exc)}
            continue
        for name in names[:MAX_ENTRIES]:
            entries[str(path / name)] = _entry(path / name)
        if len(names) > MAX_ENTRIES:
            entries[str(path)] = {**entry, "error": f"more than {MAX_ENTRIES} entries"}
    return entries


def unreadable(entries: Mapping[str, Entry]) -> list[Finding]:
    return [
        Finding("unreadable", path, f"cannot read: {entry['error']}")
        for path, entry in sorted(entries.items())
        if "error" in entry
    ]


# -- comparison (pure) --------------------------------------------------------------------------


def _describe(entry: Entry) -> str:
    kind = str(entry.get("type"))
    if kind == "absent":
        return "absent"
    owner = f"mode {entry.get('mode')}, owner {entry.get('uid')}:{entry.get('gid')}"
    if kind == "symlink":
        return f"symlink to {entry.get('target')!r}"
    return f"{kind}, {owner}"


def diff(baseline: Mapping[str, Entry], current: Mapping[str, Entry]) -> list[Finding]:
    """One finding per path and field that differs from the baseline."""
    findings: list[Finding] = []
    for path in sorted(set(baseline) | set(current)):
        before, now = baseline.get(path), current.get(path)
        if now is not None and "error" in now:
            findings.append(Finding("unreadable", path, f"cannot read: {now['error']}"))
            continue
        if before is None:
            assert now is not None
            findings.append(Finding("added", path, f"not in the baseline; now {_describe(now)}"))
            continue
        if now is None:
            findings.append(Finding("removed", path, f"in the baseline ({_describe(before)}); gone now"))
            continue
        if before.get("type") != now.get("type"):
            findings.append(Finding("type", path, f"was {_describe(before)}, now {_describe(now)}"))
            continue
        if before.get("mode") != now.get("mode"):
            findings.append(Finding("mode", path, f"mode {now.get('mode')}, baseline {before.get('mode')}"))
        if (before.get("uid"), before.get("gid")) != (now.get("uid"), now.get("gid")):
            findings.append(
                Finding(
                    "owner",
                    path,
                    f"owner {now.get('uid')}:{now.get('gid')}, "
                    f"baseline {before.get('uid')}:{before.get('gid')}",
                )
            )
        if before.get("sha256") != now.get("sha256"):
            findings.append(Finding("content", path, "content changed since the baseline (sha256 differs)"))
        if before.get("target") != now.get("target"):
            findings.append(
                Finding("target", path, f"points to {now.get('target')!r}, baseline {before.get('target')!r}")
            )
    return findings


# -- the baseline file --------------------------------------------------------------------------


def encode_baseline(entries: Mapping[str, Entry], recorded: str) -> bytes:
    doc = {"format": BASELINE_FORMAT, "recorded": recorded, "files": dict(sorted(entries.items()))}
    return json.dumps(doc, sort_keys=True, indent=1).encode("ascii") + b"\n"


def parse_baseline(data: bytes, source: str) -> dict[str, Entry]:
    try:
        doc = json.loads(data)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ValueError(f"{source}: not JSON: {exc}") from None
    if (
        not isinstance(doc, dict)
        or doc.get("format") != BASELINE_FORMAT
        or not isinstance(doc.get("files"), dict)
    ):
        raise ValueError(f"{source}: not a {BASELINE_FORMAT} baseline")
    files = doc["files"]
    if not all(isinstance(k, str) and isinstance(v, dict) for k, v in files.items()):
        raise ValueError(f"{source}: malformed files map")
    return cast(dict[str, Entry], files)


def write_atomically(path: Path, data: bytes) -> None:
    """Write, fsync, rename, fsync the directory: the baseline is whole or absent."""
    fd, temporary = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as out:
            out.write(data)
            out.flush()
            os.fsync(out.fileno())
        os.chmod(temporary, 0o600)
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise
    directory = os.open(path.parent, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(directory)
    finally:
        os.close(directory)


# -- the check ----------------------------------------------------------------------------------


@dataclass
class Recorded:
    """The baseline the audit log vouches for: its digest and the record's seq."""

    sha256: str
    seq: int | None  # None until the record we are about to append has a seq


@dataclass(frozen=True)
class HardeningOutcome:
    result: CheckResult
    baseline_event: dict[str, Any] | None  # to append (and make durable) before the result


def check_hardening(
    paths: Sequence[Path], baseline: Path, recorded: Recorded | None, rebaseline: bool = False
) -> HardeningOutcome:
    current = snapshot(paths)
    data: dict[str, Any] = {"baseline": str(baseline), "files": len(current)}

    def record(reason: str, accepted: Sequence[Finding]) -> HardeningOutcome:
        blocked = unreadable(current)
        if blocked:
            return HardeningOutcome(
                could_not_run(
                    "hardening",
                    Finding("unreadable", blocked[0].name, f"no baseline recorded: {blocked[0].detail}"),
                ),
                None,
            )
        encoded = encode_baseline(current, now_text())
        try:
            write_atomically(baseline, encoded)
        except OSError as exc:
            return HardeningOutcome(
                could_not_run(
                    "hardening", Finding("unreadable", str(baseline), f"cannot write: {exc.strerror}")
                ),
                None,
            )
        digest = hashlib.sha256(encoded).hexdigest()
        event = {
            "event": BASELINE_EVENT,
            "path": str(baseline),
            "sha256": digest,
            "files": len(current),
            "reason": reason,
            "accepted": [f.to_dict() for f in accepted],
        }
        summary = f"baseline recorded ({reason}): {len(current)} paths, sha256 {digest[:16]}"
        if accepted:
            summary += f"; {len(accepted)} differences from the previous baseline accepted"
        return HardeningOutcome(passed("hardening", summary, **data, baseline_sha256=digest), event)

    try:
        raw: bytes | None = _read_capped(baseline)
    except OSError as exc:
        finding = Finding("unreadable", str(baseline), f"cannot read the baseline: {exc.strerror or exc}")
        return HardeningOutcome(failed("hardening", finding.line(), [finding], **data), None)
    if raw is None:
        if recorded is not None and not rebaseline:
            finding = Finding(
                "baseline",
                str(baseline),
                f"missing, but the audit log recorded one at seq {recorded.seq} "
                f"(sha256 {recorded.sha256[:16]})",
            )
            return HardeningOutcome(failed("hardening", finding.line(), [finding], **data), None)
        return record("re-baseline requested" if rebaseline else "first run", [])
    digest = hashlib.sha256(raw).hexdigest()
    if rebaseline:
        try:
            previous = parse_baseline(raw, str(baseline))
        except ValueError:
            previous = {}
        return record("re-baseline requested", diff(previous, current))
    if recorded is None:
        finding = Finding(
            "baseline", str(baseline), "not recorded in this audit log: re-baseline on purpose to accept it"
        )
        return HardeningOutcome(failed("hardening", finding.line(), [finding], **data), None)
    if digest != recorded.sha256:
        finding = Finding(
            "baseline",
            str(baseline),
            f"changed since the audit log recorded it "
            f"(sha256 {digest[:16]}, recorded {recorded.sha256[:16]} at seq {recorded.seq})",
        )
        return HardeningOutcome(failed("hardening", finding.line(), [finding], **data), None)
    try:
        files = parse_baseline(raw, str(baseline))
    except ValueError as exc:
        finding = Finding("baseline", str(baseline), str(exc))
        return HardeningOutcome(failed("hardening", finding.line(), [finding], **data), None)
    findings = diff(files, current)
    data["baseline_sha256"] = digest
    if findings:
        paths_named = ", ".join(sorted({f.name for f in findings})[:5])
        return HardeningOutcome(
            failed(
                "hardening",
                f"{len(findings)} differences from the baseline ({paths_named})",
                findings,
                **data,
            ),
            None,
        )
    return HardeningOutcome(passed("hardening", f"{len(current)} paths match the baseline", **data), None)


def _read_capped(path: Path) -> bytes | None:
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except FileNotFoundError:
        return None
    with os.fdopen(fd, "rb") as handle:
        data = handle.read(MAX_BASELINE_BYTES + 1)
    if len(data) > MAX_BASELINE_BYTES:
        raise OSError(f"larger than {MAX_BASELINE_BYTES} bytes")
    return data
