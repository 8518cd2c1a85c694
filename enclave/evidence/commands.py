"""The `enclave evidence build|verify` and `enclave attest` commands: their arguments and what
they print. `enclave.cli.build_parser` adds them with `add_commands` (as it adds completion
and man from enclave.clihelp), so the CLI module stays the one place errors become exit codes.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from enclave.errors import UsageError

Result = tuple[str, Any]


def _moment(text: str | None, flag: str, end_of_day: bool) -> str | None:
    """`YYYY-MM-DDTHH:MM:SSZ`, or a day `YYYY-MM-DD` (its first or last second)."""
    if text is None:
        return None
    day = "T23:59:59Z" if end_of_day else "T00:00:00Z"
    for pattern, suffix in (("%Y-%m-%dT%H:%M:%SZ", ""), ("%Y-%m-%d", day)):
        try:
            moment = datetime.strptime(text, pattern)
        except ValueError:
            continue
        return moment.strftime("%Y-%m-%d") + suffix if suffix else moment.strftime("%Y-%m-%dT%H:%M:%SZ")
    raise UsageError(f"{flag} {text!r}: give YYYY-MM-DD or YYYY-MM-DDTHH:MM:SSZ (UTC)")


def cmd_evidence_build(args: argparse.Namespace) -> Result:
    from enclave.evidence.build import Sources, build
    from enclave.trust.keys import SigningKey

    since = _moment(args.since, "--since", end_of_day=False)
    until = _moment(args.until, "--until", end_of_day=True)
    if since and until and since > until:
        raise UsageError(f"--since {since} is after --until {until}")
    key = SigningKey.load(Path(args.key))
    built = build(
        Path(args.out),
        Sources(
            state_dir=Path(args.state_dir) if args.state_dir else None,
            audit_logs=[Path(p) for p in args.audit_log],
            reports=[Path(p) for p in args.reports],
            checklists=[Path(p) for p in args.checklists],
            bundle_dirs=[Path(p) for p in args.bundle_dir],
            attestations=[Path(p) for p in args.attestations],
            since=since,
            until=until,
        ),
        key,
        Path(args.trust),
        datetime.now(UTC),
        say=None if args.json else (lambda line: print(line, file=sys.stderr)),
    )
    totals = built.summary["totals"]
    opened = ", ".join(f"{n} {c}" for c, n in totals["openFindings"].items())
    lines = [
        f"evidence package written to {built.out} ({built.files} files, signed) and {built.tar}",
        f"  hosts {totals['hosts']} (open findings: {opened}); bundles admitted {totals['admitted']}, "
        f"refused {totals['refused']}; gateway decisions {totals['decisions']}, held {totals['held']}",
        f"  report: {built.index}",
    ]
    return "\n".join(lines), built.to_dict()


def cmd_evidence_verify(args: argparse.Namespace) -> Result:
    from enclave.evidence.package import verify
    from enclave.trust.root import TrustRoot

    report = verify(Path(args.package), TrustRoot.load(Path(args.trust)), datetime.now(UTC))
    signers = ", ".join(k[:16] for k in report.signers)
    lines = [
        f"{args.package}: evidence package verified: {report.files} files, {report.bytes} bytes, "
        f"created {report.created}, signed by {signers} (audit role of trust root "
        f"v{report.trust_root['version']})",
        *(f"  warning: {w}" for w in report.warnings),
    ]
    return "\n".join(lines), report.to_dict()


def cmd_attest(args: argparse.Namespace) -> Result:
    from enclave.trust import attest
    from enclave.trust.keys import SigningKey
    from enclave.trust.root import TrustRoot

    out = Path(args.out)
    if out.exists() or out.is_symlink():
        raise UsageError(f"{out}: already exists; an attestation is never overwritten")
    root = TrustRoot.load(Path(args.trust)) if args.trust else None
    key = SigningKey.load(Path(args.key))
    now = datetime.now(UTC)
    data = attest.sign(args.control, args.host, args.status, args.explanation, key, now, args.expires, root)
    try:
        fd = os.open(out, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o644)
    except FileExistsError:
        raise UsageError(f"{out}: already exists; an attestation is never overwritten") from None
    except OSError as exc:
        raise UsageError(f"{out}: cannot write the attestation: {exc.strerror}") from None
    with os.fdopen(fd, "wb") as handle:
        handle.write(data)
    doc = {
        "out": str(out),
        "control": args.control,
        "host": args.host,
        "status": args.status,
        "approver": key.keyid,
        "days": args.expires,
    }
    text = (
        f"{out}: {args.control} on {args.host} attested {args.status} by approver key {key.keyid[:16]}, "
        f"valid {args.expires} days"
    )
    return text, doc


Sub = Callable[[Any, str, Callable[[argparse.Namespace], Result], str], argparse.ArgumentParser]


def add_commands(top: Any, sub: Sub) -> None:
    """`enclave evidence build|verify` and `enclave attest`."""
    from enclave.trust.attest import DEFAULT_DAYS, STATUSES

    group = top.add_parser("evidence", help="a signed evidence package for assessors").add_subparsers(
        dest="action", required=True
    )
    p = sub(group, "build", cmd_evidence_build, "gather receipts, bundles, checklists and audit logs, signed")
    p.add_argument("--out", required=True, metavar="DIR", help="a new directory (DIR.tar is written too)")
    p.add_argument("--key", required=True, metavar="AUDIT_KEY", help="an audit-role key: signs")
    p.add_argument("--trust", required=True, metavar="ROOT", help="the trust root in use")
    p.add_argument("--state-dir", metavar="DIR", help="receipts, admitted bundles")
    p.add_argument("--audit-log", action="append", default=[], metavar="LOG", help="gateway/agent log")
    p.add_argument("--reports", action="append", default=[], metavar="PATH", help="provisioning report(s)")
    p.add_argument("--checklists", action="append", default=[], metavar="PATH", help="CKLB file(s) or dir")
    p.add_argument("--bundle-dir", action="append", default=[], metavar="DIR", help="a published bundle dir")
    p.add_argument("--attestations", action="append", default=[], metavar="DIR", help="attestation file(s)")
    p.add_argument("--since", metavar="TIME", help="from (YYYY-MM-DD or YYYY-MM-DDTHH:MM:SSZ, UTC)")
    p.add_argument("--until", metavar="TIME", help="to, inclusive (same forms)")
    p = sub(group, "verify", cmd_evidence_verify, "check an evidence package's signature and every file")
    p.add_argument("package", help="the package directory, or its .tar")
    p.add_argument("--trust", required=True, metavar="ROOT", help="the trust root whose audit role signs")
    p = sub(top, "attest", cmd_attest, "sign a manual attestation of one control on one host")
    p.add_argument("control", metavar="CONTROL_ID", help="a control of enclave_harden, e.g. UBTU-22-251020")
    p.add_argument("--host", required=True, help="the host, as named in its checklist")
    p.add_argument("--status", required=True, choices=STATUSES, help="what the approver found")
    p.add_argument("--explanation", required=True, metavar="TEXT", help="why, for the assessor")
    p.add_argument("--key", required=True, metavar="APPROVER_KEY", help="a key of the approver role")
    p.add_argument(
        "--expires", type=int, default=DEFAULT_DAYS, metavar="DAYS", help=f"valid this long ({DEFAULT_DAYS})"
    )
    p.add_argument("--trust", metavar="ROOT", help="check now that the key is of the approver role")
    p.add_argument("--out", required=True, metavar="FILE", help="a new file")
