"""`enclave provision`: verify the bundle, preflight and push to each host, run site.yml from the
verified bundle through ansible-runner, write the run report and a CKLB checklist per host.

Order of trust: nothing reaches a host before the bundle verified (signatures, then every byte,
extracted into a fresh directory); the playbooks that run are the bundle's, not the working
tree's; the hosts re-hash what they received before it is used. Each host goes on alone: one
that fails preflight or push is stopped, the others complete, and the run then fails (exit 7)
naming every stopped host.
"""

from __future__ import annotations

import shutil
import socket
import tempfile
import time
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TextIO

from enclave.admission import Admission, Admitted
from enclave.bundle.statement import BundleStatement
from enclave.bundle.tarformat import CONTENT_PREFIX
from enclave.errors import ProvisionError, UsageError
from enclave.provision import cklb, gateway_tls, preflight
from enclave.provision.events import OPEN, ControlResult, HostRun, RunFold, control_results
from enclave.provision.inventory import Host, Inventory, load_inventory
from enclave.provision.push import OnBytes, Payload, PushError, PushResult, plan_payload, push
from enclave.provision.report import write_json
from enclave.provision.runner import DEFAULT_TIMEOUT, RunOutcome, run_site
from enclave.provision.ssh import HostKeyRefused, HostKeyStore, HostUnreachable, SeenKey, Session
from enclave.provision.view import ProgressView
from enclave.trust.keys import PASSPHRASE_ENV, SigningKey
from enclave.trust.root import TrustRoot
from enclave.trust.trusted import TrustedRoot

MAX_PARALLEL_SSH = 16
Say = Callable[[str], None]


@dataclass
class Options:
    inventory: Path
    bundle: Path  # its file, one of its volumes or its volume index
    admission: Admission  # the state, root, time and receipt signer the bundle is admitted with
    receipt: Path | None = None  # a copy of the admission's receipt
    check: bool = False
    limit: str | None = None
    report: Path | None = None
    checklist_dir: Path | None = None
    accept_new_host_keys: bool = False
    known_hosts: Path | None = None  # default: known_hosts beside the inventory
    max_skew: float = preflight.DEFAULT_MAX_SKEW
    timeout: int = DEFAULT_TIMEOUT
    extravars: Mapping[str, Any] = field(default_factory=dict)
    show_progress: bool = True
    stream: TextIO | None = None  # progress and tables (default stderr; silent unless a tty)
    on_bytes: OnBytes | None = None
    # The safety gateway's signing key (a key of the root's audit role) and its passphrase
    # (None: unencrypted): needed when the bundle carries the gateway image. The passphrase
    # reaches the roles through the Ansible process's environment, never a file of the run.
    deploy_key: Path | None = None
    deploy_passphrase: bytes | None = None
    # Manual attestations (files or directories of them, enclave.trust.attest): the valid,
    # unexpired ones are merged into the checklists; the others are ignored, and said so.
    attestations: Sequence[Path] = ()
    # The gateways' mutual TLS material (enclave.provision.gateway_tls: the client CA, an
    # optional CRL, each host's gateway and agent certificates), checked before any host is
    # contacted. None: the gateways serve plain HTTP, and the report says so.
    gateway_tls: Path | None = None


@dataclass
class HostOutcome:
    host: Host
    preflight: preflight.HostPreflight | None = None
    key: SeenKey | None = None
    push: PushResult | None = None
    run: HostRun | None = None
    controls: dict[str, ControlResult] = field(default_factory=dict)
    stopped: str = ""  # why the host did not complete, "" when it did
    checklist: Path | None = None

    @property
    def open_findings(self) -> list[str]:
        return sorted(cid for cid, r in self.controls.items() if r.status == OPEN)


@dataclass
class Outcome:
    report: dict[str, Any]
    hosts: list[HostOutcome]

    @property
    def failed(self) -> list[HostOutcome]:
        return [h for h in self.hosts if h.stopped]


def provision(opts: Options, say: Say | None = None) -> Outcome:
    """Provision the selected hosts; returns the outcome or raises (ProvisionError names every
    host that did not complete, after the report and checklists were written)."""
    speak: Say = say or (lambda _line: None)
    started = datetime.now(UTC)
    clock = time.monotonic()
    inventory = load_inventory(opts.inventory)
    hosts = inventory.select(opts.limit)
    known_hosts = opts.known_hosts or inventory.known_hosts
    store = HostKeyStore(known_hosts, opts.accept_new_host_keys)
    work = Path(tempfile.mkdtemp(prefix="enclave-provision-"))
    try:
        # Before any host is contacted; its receipt is written whatever the outcome.
        verified = opts.admission.verify(opts.bundle, extract_to=work / "bundle", receipt=opts.receipt)
        statement = verified.statement
        assert verified.extracted_to is not None
        project = playbooks_dir(statement, verified.extracted_to)
        catalogue = cklb.load_catalogue(project)
        payload = None if opts.check else plan_payload(statement, verified.extracted_to)
        deploy = (
            deploy_secrets(statement, verified.root, opts, work, verified.extracted_to) if payload else {}
        )
        outcomes = {h.name: HostOutcome(h) for h in hosts}
        view = ProgressView([h.name for h in hosts], opts.stream) if opts.show_progress else None
        _preflight_and_push(outcomes, store, payload, opts, view)
        store.save()
        speak(preflight.table([o.preflight for o in outcomes.values() if o.preflight]))
        if view is not None:
            view.restart()  # below the table
        ready = [name for name, o in outcomes.items() if not o.stopped]
        outcome_run: RunOutcome | None = None
        if ready:
            outcome_run = _run_playbook(
                project, inventory, known_hosts, ready, statement, payload, opts, view, deploy
            )
            _collect(outcomes, outcome_run, catalogue, opts.check)
        if view is not None:
            view.finish()
        attested = _write_checklists(outcomes, catalogue, opts, statement, verified.root, speak)
        report = _report(
            opts, verified, outcomes, outcome_run, started, time.monotonic() - clock, known_hosts
        )
        if opts.attestations:
            report["attestations"] = attested
        report["gateway"] = _gateway_report(deploy, opts, speak)
        if opts.report:
            write_json(opts.report, report)
        result = Outcome(report, list(outcomes.values()))
    finally:
        shutil.rmtree(work, ignore_errors=True)
    if result.failed:
        raise ProvisionError(failure_line(result.failed, len(hosts)))
    return result


def check_hosts(
    inventory_path: Path,
    limit: str | None = None,
    accept_new_host_keys: bool = False,
    known_hosts: Path | None = None,
    payload_size: int = 0,
    max_skew: float = preflight.DEFAULT_MAX_SKEW,
) -> tuple[list[preflight.HostPreflight], dict[str, SeenKey]]:
    """Preflight alone (`enclave preflight`): every check, nothing pushed or changed. First-contact
    keys are recorded in known_hosts like `provision` does."""
    inventory = load_inventory(inventory_path)
    store = HostKeyStore(known_hosts or inventory.known_hosts, accept_new_host_keys)
    keys: dict[str, SeenKey] = {}

    def one(host: Host) -> preflight.HostPreflight:
        try:
            with Session(host, store) as session:
                keys[host.name] = session.seen
                return preflight.run_preflight(session, None, max_skew, payload_size)
        except HostUnreachable as exc:
            return preflight.unreachable(host.name, f"{host.address}:{host.port}", str(exc))

    hosts = inventory.select(limit)
    with ThreadPoolExecutor(max_workers=min(MAX_PARALLEL_SSH, max(1, len(hosts)))) as pool:
        reports = list(pool.map(one, hosts))
    store.save()
    return reports, keys


def preflight_report(
    reports: Sequence[preflight.HostPreflight], keys: Mapping[str, SeenKey]
) -> dict[str, Any]:
    """The JSON document of `enclave preflight`."""
    hosts: dict[str, Any] = {}
    for report in reports:
        key = keys.get(report.host)
        hosts[report.host] = report.to_dict() | {
            "hostKey": {
                "type": key.key_type,
                "fingerprint": key.fingerprint,
                "firstContact": key.first_contact,
            }
            if key
            else None
        }
    return {"hosts": hosts, "ok": all(r.ok for r in reports)}


def preflight_failure(reports: Sequence[preflight.HostPreflight]) -> ProvisionError | None:
    """One error naming every host that failed preflight and its first failed check."""
    failed = [r for r in reports if not r.ok]
    if not failed:
        return None
    parts = [f"{r.host}: {r.failures[0].name}: {r.failures[0].detail}" for r in failed]
    return ProvisionError(f"{len(failed)} of {len(reports)} host(s) failed preflight: " + "; ".join(parts))


def playbooks_dir(statement: BundleStatement, extracted: Path) -> Path:
    """The verified bundle's playbooks: the `site` component (kind playbooks), or the only one."""
    books = [c for c in statement.components if c.kind == "playbooks"]
    chosen = next((c for c in books if c.name == "site"), books[0] if len(books) == 1 else None)
    if chosen is None:
        raise UsageError(
            f"{statement.name} {statement.version}: no playbooks component named site "
            f"({len(books)} playbooks components): nothing to provision with"
        )
    project = extracted / "content" / chosen.name
    if not (project / "site.yml").is_file():
        raise UsageError(f"{statement.name} {statement.version}: component {chosen.name} has no site.yml")
    return project


def failure_line(failed: Sequence[HostOutcome], total: int) -> str:
    parts = [f"{h.host.name}: {h.stopped}" for h in failed]
    return f"{len(failed)} of {total} host(s) not provisioned: " + "; ".join(parts)


def _preflight_and_push(
    outcomes: dict[str, HostOutcome],
    store: HostKeyStore,
    payload: Payload | None,
    opts: Options,
    view: ProgressView | None,
) -> None:
    def one(outcome: HostOutcome) -> None:
        host = outcome.host
        address = f"{host.address}:{host.port}"
        if view:
            view.set_phase(host.name, "preflight")
        try:
            with Session(host, store) as session:
                outcome.key = session.seen
                report = preflight.run_preflight(session, payload, opts.max_skew)
                outcome.preflight = report
                if not report.ok:
                    bad = report.failures[0]
                    outcome.stopped = f"preflight {bad.name}: {bad.detail}"
                    return
                if payload is not None:
                    if view:
                        view.set_phase(host.name, "push")
                    outcome.push = push(session, payload, opts.on_bytes)
        except HostKeyRefused as exc:
            outcome.preflight = preflight.unreachable(host.name, address, str(exc))
            outcome.stopped = f"host key refused ({exc})"
        except HostUnreachable as exc:
            if outcome.preflight is None:
                outcome.preflight = preflight.unreachable(host.name, address, str(exc))
                outcome.stopped = f"unreachable ({exc})"
            else:
                outcome.stopped = f"push: {exc}"
        except PushError as exc:
            outcome.stopped = f"push: {exc}"
        finally:
            if view:
                view.set_phase(host.name, "stopped" if outcome.stopped else "ready")

    with ThreadPoolExecutor(max_workers=min(MAX_PARALLEL_SSH, max(1, len(outcomes)))) as pool:
        list(pool.map(one, outcomes.values()))


def deploy_vars(statement: BundleStatement, payload: Payload | None) -> dict[str, Any]:
    """What the roles learn about the bundle (enclave_deploy's interface, paths under the
    host's bundle directory). Nothing to deploy when nothing was pushed (check mode)."""
    out: dict[str, Any] = {
        "enclave_bundle_name": statement.name,
        "enclave_bundle_version": statement.version,
        "enclave_bundle_dir": payload.remote_dir if payload else "",
        "enclave_bundle_components": [
            {"name": c.name, "kind": c.kind, "members": list(c.members)} for c in statement.components
        ],
        "enclave_deploy_images": [],
        "enclave_deploy_model_file": "",
        "enclave_deploy_model_digest": "",
        "enclave_deploy_policy_file": "",
        "enclave_deploy_guard_dir": "",
        "enclave_deploy_guard_digest": "",
    }
    if payload is None:
        return out
    members = {m.name: m for m in statement.members}
    out["enclave_deploy_images"] = [
        {"component": c.name, "dir": f"{CONTENT_PREFIX}{c.name}", "id": c.image.id, "ref": c.image.ref}
        for c in statement.components
        if c.image is not None
    ]
    model = served_model_file(statement)
    if model is not None:
        out["enclave_deploy_model_file"] = model
        out["enclave_deploy_model_digest"] = f"{statement.digest}:{members[model].digest}"
    out["enclave_deploy_policy_file"] = policy_file(statement) or ""
    manifest = guard_manifest(statement)
    if manifest is not None:
        # The gateway pins the guard by the signed digest of its manifest, which pins the rest.
        out["enclave_deploy_guard_dir"] = manifest.rsplit("/", 1)[0]
        out["enclave_deploy_guard_digest"] = f"{statement.digest}:{members[manifest].digest}"
    return out


def guard_manifest(statement: BundleStatement) -> str | None:
    """The learned guard's guard.json: the first guard component's manifest member, if any."""
    for component in statement.components:
        if component.kind == "guard":
            return next((m for m in component.members if m.rsplit("/", 1)[-1] == "guard.json"), None)
    return None


def policy_file(statement: BundleStatement) -> str | None:
    """The usage policy the gateway enforces: the first policy component's first member."""
    policies = [c for c in statement.components if c.kind == "policy" and c.members]
    return policies[0].members[0] if policies else None


def served_model_file(statement: BundleStatement) -> str | None:
    """The member the model server serves: the first model component's GGUF file (or its only
    file); None when the bundle has no model."""
    for component in statement.components:
        if component.kind != "model" or not component.members:
            continue
        ggufs = [m for m in component.members if m.endswith(".gguf")]
        return (ggufs or list(component.members))[0]
    return None


def check_policy(statement: BundleStatement, root: TrustRoot, extracted: Path) -> None:
    """The gateway's start-up checks of its policy, on the controller: an invalid policy (exit
    2) or one that holds requests for more approvers than the root names (exit 8) stops the run
    here, not as a gateway that never becomes healthy on every host."""
    from enclave.runtime.gateway.policy import parse_policy
    from enclave.runtime.gateway.server import check_approvable

    member = policy_file(statement)
    if member is None:
        raise UsageError(f"{statement.name} {statement.version} carries the gateway but no policy component")
    policy = parse_policy((extracted / member).read_bytes(), member)
    check_approvable(
        policy,
        root.role_keys("approver"),
        root.roles["approver"].threshold,
        Path("root.json"),
        guarded=guard_manifest(statement) is not None,
    )


def gateway_component(opts: Options) -> str:
    return str(opts.extravars.get("enclave_deploy_gateway_component", "gateway"))


def deploy_secrets(
    statement: BundleStatement, root: TrustRoot, opts: Options, work: Path, extracted: Path
) -> dict[str, Any]:
    """Extra vars that hand the gateway its key and trust root, checked before any host is
    contacted: a bundle that carries the gateway image cannot be deployed without a key of the
    root's audit role (the gateway would refuse to start: fail closed, but late). With
    `gateway_tls`, every selected host's certificates are checked here too (gateway_tls)."""
    gateway = gateway_component(opts)
    if not any(c.name == gateway and c.image is not None for c in statement.components):
        if opts.gateway_tls is not None:
            raise UsageError(
                f"{statement.name} {statement.version} carries no safety gateway (image component "
                f"{gateway}): there is no gateway to give the TLS material in {opts.gateway_tls}"
            )
        return {}
    if opts.deploy_key is None:
        raise UsageError(
            f"{statement.name} {statement.version} carries the safety gateway (image component "
            f"{gateway}): give --audit-key, a key of the trust root's audit role, to deploy it"
        )
    check_policy(statement, root, extracted)
    key = SigningKey.load(opts.deploy_key, opts.deploy_passphrase or b"")
    TrustedRoot(root, opts.admission.at).require_member("audit", key.public, str(opts.deploy_key))
    tls = _gateway_tls(statement, opts)
    root_file = work / "root.json"
    root_file.write_bytes(root.to_json())
    return {
        "enclave_deploy_audit_key_src": str(opts.deploy_key.resolve()),
        "enclave_deploy_trust_root_src": str(root_file),
        **(tls.extravars() if tls is not None else {"enclave_deploy_tls_dir": ""}),
    }


def _gateway_tls(statement: BundleStatement, opts: Options) -> gateway_tls.GatewayTLS | None:
    """The checked TLS material for the selected hosts (None without `gateway_tls`)."""
    if opts.gateway_tls is None:
        return None
    agent = str(opts.extravars.get("enclave_deploy_agent_component", "agent"))
    return gateway_tls.check_material(
        opts.gateway_tls,
        load_inventory(opts.inventory).select(opts.limit),
        agent=any(c.name == agent and c.image is not None for c in statement.components),
        passphrase=opts.deploy_passphrase,
        now=opts.admission.at,  # the one reference time of this run
        extravars=opts.extravars,
    )


def _gateway_report(deploy: Mapping[str, Any], opts: Options, say: Say) -> dict[str, Any] | None:
    """The report's `gateway` (None when no gateway was deployed), said in one line too."""
    if not deploy:
        return None
    hosts = load_inventory(opts.inventory).select(opts.limit)
    entry = gateway_tls.report_entry(deploy, hosts, opts.extravars)
    say(gateway_tls.summary_line(entry))
    return entry


def _run_playbook(
    project: Path,
    inventory: Inventory,
    known_hosts: Path,
    ready: list[str],
    statement: BundleStatement,
    payload: Payload | None,
    opts: Options,
    view: ProgressView | None,
    deploy: Mapping[str, Any],
) -> RunOutcome:
    for name in ready:
        if view:
            view.set_phase(name, "ansible")

    def on_event(fold: RunFold, host: str | None) -> None:
        if view is not None and host is not None:
            view.update(fold.hosts[host])

    extravars = {**deploy_vars(statement, payload), **deploy, **opts.extravars}
    secrets = {PASSPHRASE_ENV: opts.deploy_passphrase.decode()} if deploy and opts.deploy_passphrase else {}
    return run_site(
        project,
        inventory.path,
        known_hosts,
        ready,
        extravars,
        opts.check,
        on_event,
        opts.timeout,
        secret_env=secrets,
    )


def _collect(
    outcomes: dict[str, HostOutcome],
    run: RunOutcome,
    catalogue: Sequence[Mapping[str, Any]],
    check: bool,
) -> None:
    for name, outcome in outcomes.items():
        if outcome.stopped:
            continue
        host_run = run.fold.hosts.get(name) or HostRun(name)
        outcome.run = host_run
        outcome.controls = control_results(host_run, catalogue, check)
        failure = host_run.first_failure()
        if host_run.unreachable:
            outcome.stopped = f"unreachable during the playbook ({host_run.unreachable_reason})"
        elif failure is not None:
            outcome.stopped = f"task {failure.name!r} failed: {failure.message or 'no message'}"
        elif not host_run.tasks:
            outcome.stopped = f"the playbook did not run on it (ansible-runner: {run.status}, rc {run.rc})"
        elif not check and outcome.open_findings:
            ids = outcome.open_findings
            outcome.stopped = f"{len(ids)} open finding(s) after hardening: {', '.join(ids[:5])}" + (
                ", ..." if len(ids) > 5 else ""
            )
    if run.status not in ("successful", "failed"):
        for outcome in outcomes.values():
            if not outcome.stopped:
                outcome.stopped = f"playbook run ended: {run.status}"


def _write_checklists(
    outcomes: dict[str, HostOutcome],
    catalogue: Sequence[Mapping[str, Any]],
    opts: Options,
    statement: BundleStatement,
    root: TrustRoot,
    say: Say,
) -> dict[str, Any]:
    """Write one checklist per host, with the valid attestations merged; returns what was
    applied and what was ignored (and says each ignored one)."""
    from enclave.trust import attest

    at = opts.admission.at
    valid, ignored = attest.load(opts.attestations, root, at) if opts.attestations else ([], [])
    applied: dict[str, list[attest.Attestation]] = {}
    if opts.checklist_dir is None:
        return {"applied": [], "ignored": [i.to_dict() for i in ignored]}
    ignored += attest.for_hosts(valid, outcomes)
    for name, outcome in outcomes.items():
        context = outcome.run.context if outcome.run else {}
        where = "container" if context.get("container") else "host"
        comment = (
            f"enclave provision {'audit (--check)' if opts.check else 'apply'} of bundle "
            f"{statement.name} {statement.version}; {context.get('distribution', 'OS unknown')} ({where})"
        )
        if outcome.run is None:
            comment += f"; not evaluated: {outcome.stopped}"
            results = {
                str(c["id"]): ControlResult("not_reviewed", f"Not evaluated: {outcome.stopped}")
                for c in catalogue
            }
        else:
            results = outcome.controls
        target = {"address": outcome.host.address, "fqdn": outcome.host.name}
        doc = cklb.build_checklist(name, target, catalogue, results, comment)
        applied[name], missing = attest.merge(doc, name, valid)
        ignored += missing
        path = opts.checklist_dir / f"{name}.cklb"
        cklb.write_checklist(path, doc)
        outcome.checklist = path
    for line in attest.summary(applied, ignored):
        say(line)
    return {
        "applied": [a.to_dict() for items in applied.values() for a in items],
        "ignored": [i.to_dict() for i in ignored],
    }


def _report(
    opts: Options,
    verified: Admitted,
    outcomes: dict[str, HostOutcome],
    run: RunOutcome | None,
    started: datetime,
    seconds: float,
    known_hosts: Path,
) -> dict[str, Any]:
    hosts = {name: _host_facts(o) for name, o in outcomes.items()}
    return {
        "enclave": "provision-report/v1",
        "mode": "check" if opts.check else "apply",
        "started": started.strftime("%Y-%m-%dT%H:%M:%SZ"),
        "seconds": round(seconds, 2),
        "controller": socket.gethostname(),
        "bundle": _bundle_facts(opts.bundle, verified),
        "inventory": str(opts.inventory),
        "knownHosts": str(known_hosts),
        "hostKeys": _host_keys(outcomes),
        "ansible": _ansible_facts(run, outcomes),
        "hosts": hosts,
        "failed": sorted(name for name, o in outcomes.items() if o.stopped),
        "result": "failed" if any(o.stopped for o in outcomes.values()) else "ok",
    }


def _host_facts(o: HostOutcome) -> dict[str, Any]:
    """One host's report entry: totals, result, tasks, controls, then the artefacts it left."""
    counts = _control_counts(o.controls)
    return {
        **_host_totals(o),
        "result": "stopped" if o.stopped else "ok",
        "reason": o.stopped or None,
        "tasks": [t.to_dict() for t in o.run.tasks] if o.run else [],
        "controls": counts,
        "openFindings": o.open_findings,
        "container": bool(o.run.context.get("container")) if o.run else None,
        **_host_artefacts(o),
    }


def _host_totals(o: HostOutcome) -> dict[str, Any]:
    """The host's task totals (zero if the playbook never ran on it) and whether it was unreachable."""
    summary: dict[str, Any] = (
        o.run.summary() if o.run else {"ok": 0, "changed": 0, "failed": 0, "skipped": 0, "ignored": 0}
    )
    unreachable = bool(o.run.unreachable) if o.run else bool(o.preflight and not o.preflight.reachable)
    return {**summary, "unreachable": unreachable}


def _control_counts(controls: Mapping[str, ControlResult]) -> dict[str, int]:
    """How many of the host's controls ended in each status."""
    counts: dict[str, int] = {}
    for result in controls.values():
        counts[result.status] = counts.get(result.status, 0) + 1
    return counts


def _host_artefacts(o: HostOutcome) -> dict[str, Any]:
    """The host's preflight and push records and its checklist's path (None where there is none)."""
    return {
        "preflight": o.preflight.to_dict() if o.preflight else None,
        "push": o.push.to_dict() if o.push else None,
        "checklist": str(o.checklist) if o.checklist else None,
    }


def _bundle_facts(bundle: Path, verified: Admitted) -> dict[str, Any]:
    """The verified bundle: its path, name and version, statement digest, signers and trust root."""
    statement = verified.statement
    return {
        "path": str(bundle),
        "name": statement.name,
        "version": statement.version,
        "statementDigest": {"sha256": verified.statement_digest},
        "signers": [k.keyid for k in verified.signers],
        "trustRoot": {"version": verified.root.version, "digest": verified.root.digest},
    }


def _host_keys(outcomes: Mapping[str, HostOutcome]) -> dict[str, Any]:
    """The SSH host key each contacted host presented, and whether it was first contact."""
    return {
        name: {
            "address": o.key.known_as,
            "type": o.key.key_type,
            "fingerprint": o.key.fingerprint,
            "firstContact": o.key.first_contact,
        }
        for name, o in outcomes.items()
        if o.key is not None
    }


def _ansible_facts(run: RunOutcome | None, outcomes: Mapping[str, HostOutcome]) -> dict[str, Any] | None:
    """The ansible-runner run, if one started: its ident, status, rc, duration and hosts run on."""
    if not run:
        return None
    return {
        "ident": run.ident,
        "status": run.status,
        "rc": run.rc,
        "seconds": round(run.seconds, 2),
        "forks": len([o for o in outcomes.values() if o.run]),
    }
