"""`enclave evidence build`: gather what enclave left behind into one signed package.

Every source file is copied unchanged: the receipt log, each admitted bundle's signed statement,
SBOM, provenance and guard model cards (from the state directory's content store, or a
published bundle directory, each checked against its signed digest first), each provisioning
report and CKLB checklist, the attestations, and an `enclave audit export` of each audit log.
Beside them the package gets what is derived from them: checklists with the attestations
merged, `summary.json` (every number the report shows, with the file it comes from),
`index.html`, the POA&M (`poam.csv`, `poam.xlsx`) and the signed manifest. It is built in a
staging directory and renamed into place, then copied into `DIR.tar`.
"""

from __future__ import annotations

import copy
import json
import shutil
import socket
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

from enclave import __version__
from enclave.canonical import format_time
from enclave.errors import MALFORMED_DOCUMENT, IntegrityError, UsageError
from enclave.evidence import facts, page, poam
from enclave.evidence.facts import UNREADABLE
from enclave.evidence.package import MANIFEST, digest_file, sign_manifest, write_tar
from enclave.fileio import published_directory, read_regular
from enclave.strictjson import strict_json
from enclave.trust import attest
from enclave.trust.keys import SigningKey
from enclave.trust.root import TrustRoot
from enclave.trust.state import StateDir
from enclave.trust.trusted import TrustedRoot

MAX_DOCUMENT = 256 * 1024 * 1024  # a report, checklist or provenance document; larger is not one
Say = Callable[[str], None]


@dataclass
class Sources:
    """What `enclave evidence build` reads. `state_dir` None: the default one, if it exists."""

    state_dir: Path | None = None
    audit_logs: Sequence[Path] = ()
    reports: Sequence[Path] = ()
    checklists: Sequence[Path] = ()
    bundle_dirs: Sequence[Path] = ()
    attestations: Sequence[Path] = ()
    since: str | None = None
    until: str | None = None


@dataclass
class Built:
    out: Path
    tar: Path
    index: Path
    files: int
    summary: dict[str, Any]
    problems: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return {
            "out": str(self.out),
            "tar": str(self.tar),
            "index": str(self.index),
            "files": self.files,
            "problems": self.problems,
            "totals": self.summary["totals"],
        }


class _Stage:
    """The staging directory and where each of its files came from."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.sources: dict[str, str] = {}

    def free(self, rel: str) -> str:
        """`rel`, or `rel` with -2, -3, ... before its suffix when taken."""
        stem, dot, suffix = rel.rpartition(".") if "." in rel.rsplit("/", 1)[-1] else (rel, "", "")
        candidate, n = rel, 1
        while candidate in self.sources or (self.path / candidate).exists():
            n += 1
            candidate = f"{stem}-{n}{dot}{suffix}"
        return candidate

    def copy(self, rel: str, source: Path) -> str:
        rel = self.free(rel)
        target = self.path / rel
        target.parent.mkdir(parents=True, exist_ok=True)
        try:
            shutil.copyfile(source, target, follow_symlinks=False)
        except OSError as exc:
            raise UsageError(f"{source}: cannot copy into the evidence package: {exc.strerror}") from None
        self.sources[rel] = str(source.resolve())
        return rel

    def write(self, rel: str, data: bytes, source: str = "derived") -> str:
        target = self.path / rel
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(data)
        self.sources[rel] = source
        return rel

    def adopt(self, directory: str, source: str) -> None:
        """Files something else wrote under `directory` (the audit export)."""
        for path in sorted((self.path / directory).rglob("*")):
            if path.is_file():
                self.sources[path.relative_to(self.path).as_posix()] = source


def build(
    out: Path,
    sources: Sources,
    key: SigningKey,
    trust: Path,
    now: datetime,
    say: Say | None = None,
) -> Built:
    """Build the package at `out` (must not exist, or be empty) and `out.tar`. Sources that do
    not verify (an audit log, the receipt log) are still packaged, with their findings: then
    IntegrityError (3) is raised after the package is complete, naming them."""
    speak: Say = say or (lambda _line: None)
    trusted = TrustedRoot.load(trust, now)
    trusted.require_member("audit", key.public, "evidence signer")
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise UsageError(f"{out}: exists and is not an empty directory")
    tar = out.with_name(out.name + ".tar")
    if tar.exists():
        raise UsageError(f"{tar}: already exists; an evidence package is never overwritten")
    state = _state_dir(sources.state_dir)
    with published_directory(out) as staging:
        built = _build(out, staging, sources, state, key, trusted, trust, now, speak)
    write_tar(out, tar, int(now.timestamp()))
    if built.problems:
        more = f" (and {len(built.problems) - 1} more)" if len(built.problems) > 1 else ""
        error = IntegrityError(f"{built.problems[0]}{more} (evidence package written to {out})")
        error.details = built.to_dict()
        raise error
    return built


def _state_dir(path: Path | None) -> StateDir | None:
    if path is not None:
        return StateDir.existing(path)
    try:
        return StateDir.existing(None)
    except UsageError:
        return None  # no state directory here: evidence from the other sources only


def _build(
    out: Path,
    staging: Path,
    sources: Sources,
    state: StateDir | None,
    key: SigningKey,
    trusted: TrustedRoot,
    trust: Path,
    now: datetime,
    say: Say,
) -> Built:
    stage = _Stage(staging)
    notes: list[str] = []
    problems: list[str] = []
    root = trusted.root
    stage.copy("trust/root.json", trust)
    receipts_rel = None
    receipt_docs: list[dict[str, Any]] = []
    if state is not None and state.receipts_path.is_file():
        receipts_rel = stage.copy("receipts/receipts.log", state.receipts_path)
        receipt_docs = facts.receipts(staging / receipts_rel)
    window = (sources.since, sources.until)
    statements = _statements(stage, state, sources.bundle_dirs, root, receipt_docs, window, notes)
    reports = [stage.copy(f"hosts/reports/{p.name}", p) for p in _files(sources.reports, ".json", "report")]
    for rel in reports:
        doc = _document(staging / rel, "provisioning report")
        if not isinstance(doc, dict) or doc.get("enclave") != "provision-report/v1":
            raise UsageError(
                f"{stage.sources[rel]}: not an enclave provisioning report (provision-report/v1)"
            )
    checklists = _checklists(stage, sources.checklists)
    attested = _attestations(stage, sources.attestations, checklists, root, now, say)
    audits = _audit_exports(stage, sources.audit_logs, trust, window, problems)
    summary = facts.summary(
        staging,
        created=format_time(now),
        window=window,
        root=trusted,
        signer=key.keyid,
        receipts=receipts_rel,
        statements=statements,
        reports=reports,
        checklists=checklists,
        attestations=attested,
        audits=audits,
        notes=notes,
    )
    if receipts_rel is not None and not summary["receipts"]["ok"]:
        problems.append(
            f"receipt log {state.receipts_path if state else ''} does not verify: "
            f"{summary['receipts']['problems'][0]}"
        )
    rows = poam.rows(summary)
    stage.write("poam.csv", poam.csv_bytes(rows))
    stage.write("poam.xlsx", poam.xlsx_bytes(rows, now))
    summary["poam"] = {"rows": len(rows), "csv": "poam.csv", "xlsx": "poam.xlsx"}
    stage.write("summary.json", (json.dumps(summary, indent=2, sort_keys=True) + "\n").encode("utf-8"))
    stage.write("index.html", page.render(summary).encode("utf-8"))
    manifest = {
        "_type": "urn:enclave:evidence:v1",
        "created": format_time(now),
        "builder": {"tool": "enclave", "version": __version__, "host": socket.gethostname()},
        "trustRoot": {"version": root.version, "digest": root.digest},
        "window": {"since": sources.since, "until": sources.until},
        "files": _listing(stage),
        "notes": notes + problems,
    }
    stage.write(MANIFEST, sign_manifest(manifest, key), "signature")
    for line in notes:
        say(f"note: {line}")
    return Built(
        out, out.with_name(out.name + ".tar"), out / "index.html", len(manifest["files"]), summary, problems
    )


def _listing(stage: _Stage) -> list[dict[str, Any]]:
    entries = []
    for path in sorted(stage.path.rglob("*"), key=lambda p: p.relative_to(stage.path).as_posix()):
        if not path.is_file():
            continue
        rel = path.relative_to(stage.path).as_posix()
        size, digest = digest_file(path)
        entries.append(
            {"path": rel, "size": size, "sha384": digest, "source": stage.sources.get(rel, "derived")}
        )
    return entries


def _files(paths: Sequence[Path], suffix: str, what: str) -> list[Path]:
    """Each file given, and each directory's `*SUFFIX` files in name order."""
    found: list[Path] = []
    for path in paths:
        if path.is_dir():
            found.extend(
                p for p in sorted(path.glob(f"*{suffix}")) if p.is_file() and not p.name.startswith(".")
            )
        elif path.is_file():
            found.append(path)
        else:
            raise UsageError(f"{path}: no such {what} file or directory")
    return found


def _document(path: Path, what: str) -> Any:
    try:
        return strict_json(read_regular(path, what, MAX_DOCUMENT), MAX_DOCUMENT)
    except MALFORMED_DOCUMENT as exc:
        raise UsageError(f"{path}: not a {what} (JSON): {exc}") from None


# -- checklists and attestations ---------------------------------------------------------------------
def _checklists(stage: _Stage, paths: Sequence[Path]) -> dict[str, dict[str, str]]:
    """host -> {"source": package path of the checklist as given}."""
    from enclave.provision.cklb import validate_checklist

    found: dict[str, dict[str, str]] = {}
    for path in _files(paths, ".cklb", "checklist"):
        doc = _document(path, "CKLB checklist")
        try:
            validate_checklist(doc)
            host = str(doc["target_data"]["host_name"])
        except UNREADABLE as exc:
            raise UsageError(f"{path}: not a STIG Viewer 3 checklist: {exc}") from None
        if host in found:
            raise UsageError(
                f"{path}: a second checklist for host {host} (the first: {found[host]['given']})"
            )
        rel = stage.copy(f"checklists/{path.name}", path)
        found[host] = {"source": rel, "effective": rel, "given": str(path)}
    return found


def _attestations(
    stage: _Stage,
    paths: Sequence[Path],
    checklists: dict[str, dict[str, str]],
    root: TrustRoot,
    now: datetime,
    say: Say,
) -> dict[str, Any]:
    """Copy the attestation files; merge the valid ones into copies of the checklists."""
    from enclave.provision.cklb import validate_checklist

    copied = [stage.copy(f"attestations/{p.name}", p) for p in attest.attestation_files(paths)]
    valid, ignored = attest.load([stage.path / rel for rel in copied], root, now)
    base = f"{stage.path}/"
    valid = [_relative(a, base) for a in valid]
    ignored = [attest.Ignored(i.file.removeprefix(base), i.reason.replace(base, "")) for i in ignored]
    ignored += attest.for_hosts(valid, checklists)
    applied: dict[str, list[attest.Attestation]] = {}
    for host, entry in checklists.items():
        doc = json.loads((stage.path / entry["source"]).read_bytes())
        merged = copy.deepcopy(doc)
        applied[host], missing = attest.merge(merged, host, valid)
        ignored += missing
        if applied[host]:
            validate_checklist(merged)
            rel = stage.write(
                f"checklists/attested/{Path(entry['source']).name}",
                (json.dumps(merged, indent=2) + "\n").encode("utf-8"),
                "derived: attestations merged",
            )
            entry["effective"] = rel
    for line in attest.summary(applied, ignored):
        say(line)
    return {
        "applied": [a.to_dict() | {"host": a.host} for items in applied.values() for a in items],
        "ignored": [i.to_dict() for i in ignored],
    }


def _relative(item: attest.Attestation, base: str) -> attest.Attestation:
    fields = item.to_dict()
    fields["file"] = item.file.removeprefix(base)
    return attest.Attestation(**fields)


# -- bundles ------------------------------------------------------------------------------------------
def _statements(
    stage: _Stage,
    state: StateDir | None,
    bundle_dirs: Sequence[Path],
    root: TrustRoot,
    receipt_docs: list[dict[str, Any]],
    window: tuple[str | None, str | None],
    notes: list[str],
) -> list[dict[str, Any]]:
    """Each admitted bundle's statement and documents: from the content store (those admitted
    in the window, when one is given) and from published bundle directories."""
    from enclave.evidence import bundles

    found: dict[str, dict[str, Any]] = {}
    if state is not None:
        admitted = {
            d["digest"]
            for d in receipt_docs
            if d["result"] == "verified" and d["mode"] == "admission" and facts.in_window(d["time"], window)
        }
        for stored in bundles.stored(state.path):
            if window != (None, None) and stored.digest not in admitted:
                continue
            found.setdefault(stored.digest, bundles.package(stage, stored, root, notes))
    for directory in bundle_dirs:
        published = bundles.published(directory)
        if published.digest not in found:
            found[published.digest] = bundles.package(stage, published, root, notes)
    return sorted(found.values(), key=lambda s: (s["name"], s["version"]))


# -- audit logs ---------------------------------------------------------------------------------------
def _audit_exports(
    stage: _Stage,
    logs: Sequence[Path],
    trust: Path,
    window: tuple[str | None, str | None],
    problems: list[str],
) -> list[dict[str, Any]]:
    from enclave.runtime.audit import LogVerificationError, export

    exported = []
    for log in logs:
        if not log.is_file():
            raise UsageError(f"{log}: no such audit log")
        rel = stage.free(f"audit/{log.stem or 'log'}")
        try:
            export(log, stage.path / rel, trust, since=window[0], until=window[1])
        except LogVerificationError as exc:
            problems.append(f"audit log {log} does not verify: {exc.report.problems[0]}")
        stage.adopt(rel, f"enclave audit export of {log.resolve()}")
        exported.append({"log": str(log), "dir": rel})
    return exported
