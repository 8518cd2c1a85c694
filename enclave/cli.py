"""The `enclave` command: parses arguments, calls the library, maps errors to exit codes.

Every command takes --json (machine-readable stdout) and --debug (tracebacks for bugs).
Errors are one line on stderr; the exit code is the error's (enclave.errors).
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from enclave import __version__
from enclave.cliout import warn, with_report
from enclave.errors import EnclaveError, TrustError, UsageError

Result = tuple[str, Any]  # (human text, JSON document)
Handler = Callable[[argparse.Namespace], Result]


def _now(args: argparse.Namespace) -> datetime:
    at = getattr(args, "at", None)
    if at:
        from enclave.canonical import parse_time

        try:
            return parse_time(at)
        except ValueError as exc:
            raise UsageError(f"--at: {exc}") from None
    return datetime.now(UTC)


# -- keys -------------------------------------------------------------------------------------
def cmd_keys_generate(args: argparse.Namespace) -> Result:
    from enclave.trust.keys import SigningKey, read_passphrase

    passphrase = None if args.no_passphrase else read_passphrase(f"passphrase for {args.out}: ", confirm=True)
    key = SigningKey.generate(args.algorithm)
    public = key.write(Path(args.out), passphrase)
    doc = {"private": args.out, "public": str(public), "algorithm": args.algorithm, "keyid": key.keyid}
    return f"{args.algorithm} key {key.keyid[:16]}: {args.out} (private, 0600), {public}", doc


# -- trust ------------------------------------------------------------------------------------
def _thresholds(values: Sequence[str]) -> dict[str, int]:
    out: dict[str, int] = {}
    for value in values:
        role, _, number = value.partition("=")
        if not number.isdigit():
            raise UsageError(f"--threshold {value!r}: expected ROLE=N")
        out[role] = int(number)
    return out


def cmd_trust_init(args: argparse.Namespace) -> Result:
    from enclave.trust.keys import PublicKey, SigningKey
    from enclave.trust.root import ROLES, TrustRoot, default_expiry, sign_document

    role_keys = {
        "root": [PublicKey.load(Path(p)) for p in args.root_key],
        "bundle": [PublicKey.load(Path(p)) for p in args.bundle_key],
        "approver": [PublicKey.load(Path(p)) for p in args.approver_key],
        "audit": [PublicKey.load(Path(p)) for p in args.audit_key],
    }
    thresholds = _thresholds(args.threshold)
    unknown = set(thresholds) - set(ROLES)
    if unknown:
        raise UsageError(f"--threshold: unknown role {sorted(unknown)[0]!r} (roles: {', '.join(ROLES)})")
    signed = TrustRoot.create(
        role_keys,
        thresholds,
        default_expiry(datetime.now(UTC), args.expires),
        hybrid_roles=() if args.no_hybrid else ("bundle",),
    )
    signers = [SigningKey.load(Path(p)) for p in args.sign]
    out = Path(args.out)
    if out.exists():
        raise UsageError(f"{out}: already exists; refusing to overwrite a trust root")
    out.write_bytes(sign_document(signed, signers))
    root = TrustRoot.load(out)
    try:
        root.check(datetime.now(UTC))
    except EnclaveError:
        out.unlink()
        raise
    return (
        f"trust root v{root.version} written to {out} (expires {signed['expires']})",
        {
            "path": str(out),
            "version": root.version,
            "digest": root.digest,
            "expires": signed["expires"],
        },
    )


def cmd_trust_show(args: argparse.Namespace) -> Result:
    from enclave.trust.root import ROLES, TrustRoot
    from enclave.trust.state import StateDir, default_state_dir

    now = _now(args)  # a bad --at is a usage error (2), not a status line
    if args.root is None:  # the root the high side trusts now
        state = StateDir(Path(args.state_dir) if args.state_dir else default_state_dir())
        stored = state.read_root()
        if stored is None:
            raise UsageError(
                f"{state.root_path}: no trust root stored; give ROOT or run `enclave trust update`"
            )
        root, args.root = stored, str(state.root_path)
    else:
        root = TrustRoot.load(Path(args.root))
    doc: dict[str, Any] = {
        "path": args.root,
        "version": root.version,
        "expires": root.signed["expires"],
        "digest": root.digest,
        "roles": {},
    }
    lines = [
        f"{args.root}: trust root v{root.version}, expires {root.signed['expires']}, sha256 {root.digest}"
    ]
    for name in ROLES:
        role = root.roles[name]
        keys = [{"keyid": k, "scheme": root.keys[k].scheme} for k in role.keyids]
        doc["roles"][name] = {"threshold": role.threshold, "hybrid": role.hybrid, "keys": keys}
        rule = " (hybrid: 1 classical + 1 post-quantum)" if role.hybrid else ""
        lines.append(f"  {name}: threshold {role.threshold} of {len(keys)}{rule}")
        lines += [f"    {k['keyid'][:16]}  {k['scheme']}" for k in keys]
    try:
        root.check(now)
        doc["valid"], status = True, "signatures valid, not expired"
    except EnclaveError as exc:
        doc["valid"], status, problem = False, f"NOT VALID: {exc}", exc
    lines.append(f"  status: {status}")
    if not doc["valid"]:  # shown in full, then exit 4 like every refusal
        error = TrustError(f"{args.root}: trust root v{root.version} is not valid: {problem}")
        raise with_report(error, "\n".join(lines), doc, args.json)
    return "\n".join(lines), doc


def cmd_trust_rotate(args: argparse.Namespace) -> Result:
    from enclave.trust.keys import PublicKey
    from enclave.trust.root import ROLES, TrustRoot, default_expiry, sign_document
    from enclave.trust.rotation import keyid_named, next_root, rotation_status
    from enclave.trust.state import atomic_write

    old = TrustRoot.load(Path(args.old))
    old.check_signed()
    new_path = Path(args.new)
    existing: list[dict[str, str]] = []
    if new_path.exists():  # co-signing a draft another root key holder started
        if args.add_key or args.revoke or args.threshold or args.expires is not None:
            raise UsageError(
                f"{new_path}: exists; --add-key, --revoke, --threshold, --expires only create it"
            )
        draft = TrustRoot.load(new_path)
        signed = draft.signed
        existing = [{"keyid": keyid, "sig": sig.hex()} for keyid, sig in draft.signatures]
    else:
        add: dict[str, list[PublicKey]] = {}
        for value in args.add_key:
            role, _, pub = value.partition("=")
            if role not in ROLES or not pub:
                raise UsageError(
                    f"--add-key {value!r}: expected ROLE=PUB with ROLE one of {', '.join(ROLES)}"
                )
            add.setdefault(role, []).append(PublicKey.load(Path(pub)))
        thresholds = _thresholds(args.threshold)
        unknown = set(thresholds) - set(ROLES)
        if unknown:
            raise UsageError(f"--threshold: unknown role {sorted(unknown)[0]!r} (roles: {', '.join(ROLES)})")
        signed = next_root(
            old,
            default_expiry(datetime.now(UTC), 365 if args.expires is None else args.expires),
            add,
            [keyid_named(v, old) for v in args.revoke],
            thresholds,
        )
    signers = _load_keys(args.sign)
    useful = set(old.roles["root"].keyids) | set(signed["roles"]["root"]["keyids"])
    for path, key in zip(args.sign, signers, strict=True):
        if key.keyid not in useful:
            raise UsageError(f"{path}: not a root key of v{old.version} or of v{signed['version']}")
    data = sign_document(signed, signers, existing)
    new = TrustRoot.from_json(data, str(new_path))
    status = rotation_status(old, new)
    atomic_write(new_path, data)
    state = "complete: the high side will accept it" if status.complete else "incomplete"
    return (
        f"{new_path}: trust root v{new.version} (rotation of v{old.version}), {state}\n  {status.explain()}",
        {
            "path": str(new_path),
            "version": new.version,
            "digest": new.digest,
            "expires": new.signed["expires"],
            "complete": status.complete,
            "oldRootSigners": [k.keyid for k in status.by_old.signers],
            "newRootSigners": [k.keyid for k in status.by_new.signers],
        },
    )


def cmd_trust_update(args: argparse.Namespace) -> Result:
    from enclave.trust.root import TrustRoot
    from enclave.trust.rotation import apply_chain, skipped_roots
    from enclave.trust.state import StateDir
    from enclave.trust.trusted import TrustedRoot

    state = StateDir.open(Path(args.state_dir) if args.state_dir else None)
    given = TrustRoot.load(Path(args.trust)) if args.trust else None
    offered = [TrustRoot.load(Path(p)) for p in args.roots]
    with state.locked():
        stored = state.read_root()
        start = TrustedRoot.resolve(stored, given).root
        final = apply_chain(start, offered)
        skipped = skipped_roots(start, offered)  # said, never silently passed over
        if offered and final is start and all(r.digest != start.digest for r in offered):
            raise TrustError(f"no root applied to the trusted v{start.version}: {'; '.join(skipped)}")
        final.check(datetime.now(UTC))  # never store a root that already refuses everything
        state.store_root(final)
    for note in skipped:
        warn(note)
    before = f"v{stored.version}" if stored else "none"
    return (
        f"{state.root_path}: trusted root {before} -> v{final.version} (expires {final.signed['expires']})",
        {
            "stateDir": str(state.path),
            "previousVersion": stored.version if stored else None,
            "skipped": skipped,
            "version": final.version,
            "digest": final.digest,
            "expires": final.signed["expires"],
        },
    )


# -- bundle -----------------------------------------------------------------------------------
def _load_keys(paths: Sequence[str]) -> list[Any]:
    from enclave.trust.keys import SigningKey

    return [SigningKey.load(Path(p)) for p in paths]


def cmd_bundle_build(args: argparse.Namespace) -> Result:
    from enclave.bundle.build import build_bundle
    from enclave.bundle.forecast import for_build, forecast
    from enclave.bundle.manifest import parse_size
    from enclave.images.collect import collect_images

    if args.base and args.base_statement:
        raise UsageError("give --base or --base-statement, not both")
    base = args.base or args.base_statement
    volume_size = parse_size(args.volume_size, "--volume-size") if args.volume_size else None
    keys = _load_keys(args.key)
    warnings = _warn(forecast(args.trust, lambda root, now: for_build(root, Path(args.manifest), keys, now)))
    path = build_bundle(
        Path(args.manifest),
        Path(args.out),
        keys,
        args.digest,
        volume_size=volume_size,
        base=Path(base) if base else None,
        images=collect_images,
    )
    return str(path), {"bundle": str(path), "warnings": warnings}


def _warn(warnings: list[str]) -> list[str]:
    for line in warnings:
        warn(line)
    return warnings


def cmd_bundle_split(args: argparse.Namespace) -> Result:
    from enclave.bundle.forecast import for_split, forecast
    from enclave.bundle.manifest import parse_size
    from enclave.bundle.volumes import split_bundle

    size = parse_size(args.volume_size, "--volume-size")
    keys = _load_keys(args.key)
    warnings = _warn(forecast(args.trust, lambda root, now: for_split(root, Path(args.bundle), keys, now)))
    parts, index = split_bundle(Path(args.bundle), size, keys, show_progress=True)
    text = "\n".join([*(str(p) for p in parts), str(index)])
    return text, {"volumes": [str(p) for p in parts], "index": str(index), "warnings": warnings}


def cmd_bundle_verify_volume(args: argparse.Namespace) -> Result:
    from enclave.bundle.volumes import check_volume, index_path, load_index
    from enclave.trust.trusted import TrustedRoot

    trusted = TrustedRoot.load(Path(args.trust), _now(args))
    volume = Path(args.volume)
    index = load_index(Path(args.index) if args.index else index_path(volume), trusted)
    entry = check_volume(volume, index, show_progress=True)
    position = index.volumes.index(entry) + 1
    text = f"{volume}: volume {position} of {len(index.volumes)} of {index.bundle}: size and digest match"
    return text, {
        "volume": str(volume),
        "bundle": index.bundle,
        "position": position,
        "of": len(index.volumes),
        "size": entry.size,
        "digest": {index.algorithm: entry.digest},
    }


def cmd_bundle_sign(args: argparse.Namespace) -> Result:
    from enclave.bundle.build import sign_bundle
    from enclave.bundle.forecast import for_sign, forecast

    if args.base and args.base_statement:
        raise UsageError("give --base or --base-statement, not both")
    base = args.base or args.base_statement
    (key,) = _load_keys([args.key])
    warnings = _warn(forecast(args.trust, lambda root, now: for_sign(root, Path(args.bundle), key, now)))
    envelope = sign_bundle(Path(args.bundle), key, base=Path(base) if base else None)
    keyids = [s.keyid for s in envelope.signatures]
    return f"{args.bundle}: signed by {key.keyid[:16]}; {len(keyids)} signatures", {
        "bundle": args.bundle,
        "signatures": keyids,
        "warnings": warnings,
    }


def cmd_bundle_inspect(args: argparse.Namespace) -> Result:
    from enclave.bundle.inspect import document_lines, inspect_bundle
    from enclave.trust.root import TrustRoot

    root = TrustRoot.load(Path(args.trust)) if args.trust else None
    doc = inspect_bundle([Path(args.bundle)], root)
    lines = [
        f"{doc['bundle']}: {doc['name']} {doc['version']}, created {doc['created']}, {doc['size']} bytes",
        f"  digest {doc['digest']}, chunk size {doc['chunkSize']}",
        f"  statement sha256 {doc['statementDigest']['sha256']}",
        "  signatures:",
    ]
    for sig in doc["signatures"]:
        extra = (
            f"  {sig['algorithm']}  roles={','.join(sig['roles']) or '-'}  valid={sig['valid']}"
            if root
            else ""
        )
        lines.append(f"    {sig['keyid'][:16]}{extra}")
    lines.append("  components:")
    lines += [
        f"    {c['name']:<16} {c['kind']:<10} {c['files']:>6} files {c['bytes']:>14} bytes"
        for c in doc["components"]
    ]
    lines += document_lines(doc)  # SBOM summary, provenance, model signatures
    lines.append(f"  members (size, mode, {doc['digest']} of the content as {doc['digest']}sum prints it):")
    lines += [f"    {m['size']:>14}  {m['mode']}  {m['plainDigest']}  {m['name']}" for m in doc["members"]]
    return "\n".join(lines), doc


def _admission(args: argparse.Namespace, passphrase: bytes | None = None) -> Any:
    """The Admission a verifying command runs (`bundle verify`, `images load`, `provision`):
    the state directory, the given root, the audit signer, the time (`--at`: a re-check)."""
    from enclave.admission import Admission
    from enclave.trust.keys import SigningKey
    from enclave.trust.state import StateDir

    at = getattr(args, "at", None)
    state = StateDir.open(Path(args.state_dir) if args.state_dir else None)
    return Admission(
        state,
        Path(args.trust) if args.trust else None,
        _now(args),
        SigningKey.load(Path(args.audit_key), passphrase) if args.audit_key else None,
        recheck=at is not None,
        show_progress=not args.json,
    )


def _admitted(admitted: Any) -> Result:
    """What `bundle verify` prints and its JSON document (`images load` adds its images)."""
    from enclave.trust.receipts import describe_signers

    statement = admitted.statement
    receipt = admitted.receipt or {}
    doc = {
        "bundle": admitted.bundle,
        "name": statement.name,
        "version": statement.version,
        "result": "verified",
        "mode": admitted.mode,
        "statementDigest": {"sha256": admitted.statement_digest},
        "signers": describe_signers(admitted.signers, admitted.root),
        "trustRoot": {"version": admitted.root.version, "digest": admitted.root.digest},
        "checks": admitted.checks,
        "extractedTo": str(admitted.extracted_to) if admitted.extracted_to else None,
        "receipt": {
            "log": str(admitted.receipt_log),
            "path": str(admitted.receipt_file) if admitted.receipt_file else None,
            "signed": admitted.receipt_signed,
            **receipt,
        },
    }
    lines = [f"{admitted.bundle}: {statement.name} {statement.version} verified"]
    lines += [f"  ok  {c}" for c in admitted.checks]
    copy = f", {admitted.receipt_file}" if admitted.receipt_file else ""
    lines.append(f"  receipt {receipt.get('seq')} in {admitted.receipt_log}{copy}")
    return "\n".join(lines), doc


def cmd_bundle_verify(args: argparse.Namespace) -> Result:
    admitted = _admission(args).verify(
        Path(args.bundle),
        extract_to=Path(args.extract_to) if args.extract_to else None,
        receipt=Path(args.receipt) if args.receipt else None,
    )
    return _admitted(admitted)


def cmd_receipts_verify(args: argparse.Namespace) -> Result:
    from enclave.trust.receipts import verify_receipt_log
    from enclave.trust.root import TrustRoot
    from enclave.trust.state import StateDir, default_state_dir
    from enclave.trust.trusted import TrustedRoot

    state = StateDir(Path(args.state_dir) if args.state_dir else default_state_dir())
    path = Path(args.log) if args.log else state.receipts_path
    root = TrustRoot.load(Path(args.trust)) if args.trust else state.read_root()
    if root is None:
        raise UsageError(f"no trust root: give --trust ROOT ({state.root_path} does not exist)")
    trusted = TrustedRoot(root, _now(args))
    trusted.check_current()
    report = verify_receipt_log(path, trusted, args.require_signed, [Path(w) for w in args.witness])
    text = (
        f"{path}: {report.receipts} receipts, hash chain intact; {report.signed} signed by the audit role, "
        f"{report.unsigned} unsigned; {report.verified} verifications passed, {report.failed} failed"
    )
    return "\n".join([text, *(f"  warning: {w}" for w in report.warnings)]), report.to_dict()


def cmd_bundle_digest(args: argparse.Namespace) -> Result:
    from enclave.bundle.digest import digest_files
    from enclave.bundle.manifest import DEFAULT_CHUNK_SIZE, parse_size

    chunk = parse_size(args.chunk_size, "--chunk-size") if args.chunk_size else DEFAULT_CHUNK_SIZE
    path = Path(args.file)
    if not path.is_file():
        raise UsageError(f"{path}: not a regular file")
    (result,) = digest_files([path], args.digest, chunk)
    return f"{args.digest}:{result.digest.hex()}  {path}", {
        "file": str(path),
        "size": result.size,
        "digest": {args.digest: result.digest.hex()},
        "chunkSize": chunk,
        "chunks": len(result.chunks),
    }


# -- runtime: gateway, approvals, audit -------------------------------------------------------
def cmd_gateway_serve(args: argparse.Namespace) -> Result:
    from enclave.runtime.gateway import serve
    from enclave.runtime.gateway.server import Access

    def path(value: str | None) -> Path | None:
        return Path(value) if value else None

    access = Access(
        path(args.tls_cert), path(args.tls_key), path(args.client_ca), path(args.crl), path(args.users),
        args.tls12, args.rate_limit, args.rate_burst,
    )  # fmt: skip
    serve(
        Path(args.policy),
        args.upstream,
        Path(args.audit_log),
        Path(args.audit_key),
        Path(args.trust) if args.trust else None,
        args.listen,
        model_digest=args.model_digest,
        guard=Path(args.guard) if args.guard else None,
        guard_digest=args.guard_digest,
        buffer_streams=args.buffer_streams,
        accept_unproven_tail=args.accept_unproven_tail,
        access=access,
        held_dir=path(args.held_dir),
    )
    return "gateway stopped", {"stopped": True}


# -- the enclave CA: certificates, CRL, API keys -------------------------------------------------
def cmd_ca_init(args: argparse.Namespace) -> Result:
    from enclave.identity.ca import init_ca
    from enclave.trust.keys import read_passphrase

    passphrase = None if args.no_passphrase else read_passphrase(f"passphrase for {args.out}/ca.key: ", True)
    ca = init_ca(Path(args.out), args.name, args.days, passphrase)
    doc = {"dir": args.out, "certificate": str(ca.dir / "ca.pem"), "keyid": ca.public.keyid}
    return f"CA {args.name!r} in {args.out}: ca.pem (the --client-ca), ca.key (0600), crl.pem", doc


def cmd_ca_issue(args: argparse.Namespace) -> Result:
    from enclave.identity.ca import CA_KEY, issue
    from enclave.trust.keys import PublicKey, passphrase_for, read_passphrase

    ca_passphrase = passphrase_for(Path(args.ca) / CA_KEY)
    key_passphrase = None if args.no_passphrase else read_passphrase(f"passphrase for {args.out}.key: ", True)
    identity = issue(
        Path(args.ca), args.name, args.role, Path(args.out), days=args.days,
        approver_key=PublicKey.load(Path(args.approver_key)) if args.approver_key else None,
        hosts=args.host, key_passphrase=key_passphrase, ca_passphrase=ca_passphrase,
    )  # fmt: skip
    doc = identity.to_dict() | {"certificate": f"{args.out}.pem", "key": f"{args.out}.key"}
    return (
        f"{args.role} certificate for {args.name}: {args.out}.pem, key {args.out}.key (0600); serial "
        f"{identity.serial_hex}, {identity.fingerprint}, expires {doc['not_after']}",
        doc,
    )


def cmd_ca_revoke(args: argparse.Namespace) -> Result:
    from enclave.identity.ca import CA, CA_KEY, revoke
    from enclave.identity.users import remove_api_key
    from enclave.trust.keys import passphrase_for

    ca_passphrase = passphrase_for(Path(args.ca) / CA_KEY)
    if args.api_key:
        if not args.users:
            raise UsageError("--api-key needs --users FILE")
        ca = CA.load(Path(args.ca), ca_passphrase)
        assert ca.key is not None
        users = remove_api_key(Path(args.users), ca.key, args.api_key)
        doc = {"users": args.users, "removed": args.api_key, "version": users.version}
        return f"API key of {args.api_key} removed from {args.users} (version {users.version})", doc
    serial, crl = revoke(
        Path(args.ca), serial=args.serial, cert=Path(args.cert) if args.cert else None, reason=args.reason,
        ca_passphrase=ca_passphrase, crl_days=args.crl_days,
    )  # fmt: skip
    what = f"certificate {serial:x} revoked; " if serial else ""
    doc = {"serial": f"{serial:x}" if serial else None, "crl": str(crl)}
    return f"{what}CRL re-signed: {crl} (gateways reload it within a second)", doc


def cmd_ca_api_key(args: argparse.Namespace) -> Result:
    import os

    from enclave.identity.ca import CA, CA_KEY
    from enclave.identity.users import add_api_key
    from enclave.trust.keys import PublicKey, passphrase_for

    ca = CA.load(Path(args.ca), passphrase_for(Path(args.ca) / CA_KEY))
    assert ca.key is not None
    approver = PublicKey.load(Path(args.approver_key)) if args.approver_key else None
    out = Path(args.out)
    if out.exists():
        raise UsageError(f"{out}: already exists; refusing to overwrite")
    key = add_api_key(Path(args.users), ca.key, args.name, args.role, approver)
    fd = os.open(out, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as handle:
        handle.write(key + "\n")
    doc = {"users": args.users, "name": args.name, "roles": args.role, "key_file": str(out)}
    return f"API key for {args.name} written to {out} (0600, shown nowhere else); {args.users} re-signed", doc


# -- the learned guard ------------------------------------------------------------------------
def cmd_guard_train(args: argparse.Namespace) -> Result:
    from enclave.guardtools.build import build_guard, format_evaluation
    from enclave.guardtools.train import Settings
    from enclave.runtime.gateway.policy import load_policy

    chosen = {"seed": args.seed, "deadline_ms": args.deadline_ms}
    settings = Settings(**{k: v for k, v in chosen.items() if v is not None})
    if settings.deadline_ms <= 0:
        raise UsageError(f"--deadline-ms {settings.deadline_ms}: give a positive number of milliseconds")
    guard, _ = build_guard(
        Path(args.corpus), Path(args.out), load_policy(Path(args.policy)),
        Path(args.eval) if args.eval else None, settings, args.version,
    )  # fmt: skip
    card = json.loads((Path(guard.source) / "card.json").read_text("utf-8"))
    lines = [
        f"guard {guard.name} {guard.version} written to {args.out} ({guard.digest})",
        f"{len(guard.terms)} terms; thresholds band {guard.thresholds.band} stop {guard.thresholds.stop} "
        f"(out-of-fold: {100 * card['out_of_fold']['stop_recall']:.1f}% of stop examples stopped, "
        f"{100 * card['out_of_fold']['benign_stopped']:.1f}% of allow examples stopped)",
    ]
    if "evaluation" in card:
        overlap = card["overlap"]
        lines.append(
            f"evaluation set (nearest training prompt: mean cosine {overlap['mean']}, "
            f"p95 {overlap['p95']}, max {overlap['max']}):"
        )
        lines.append(format_evaluation(card["evaluation"]))
    return "\n".join(lines), {"digest": guard.digest, "card": card}


def cmd_guard_eval(args: argparse.Namespace) -> Result:
    from enclave.guard.model import load_guard
    from enclave.guardtools.build import format_evaluation
    from enclave.guardtools.corpus import load_corpus
    from enclave.guardtools.evaluate import evaluate
    from enclave.runtime.gateway.policy import load_policy

    guard = None if args.rules_only else load_guard(Path(args.guard))
    report = evaluate(load_policy(Path(args.policy)), guard, load_corpus(Path(args.corpus)).examples)
    header = "rules only" if guard is None else f"rules + guard {guard.digest}"
    return f"{header}\n{format_evaluation(report)}", report


def cmd_policy_test(args: argparse.Namespace) -> Result:
    from enclave.fileio import read_regular
    from enclave.guard.model import load_guard
    from enclave.runtime.gateway.decide import decide, guard_texts
    from enclave.runtime.gateway.inspect import MAX_BODY, BadRequest, parse_body, request_hash, texts_of
    from enclave.runtime.gateway.policy import load_policy

    policy = load_policy(Path(args.policy))
    guard = load_guard(Path(args.guard)) if args.guard else None
    # (label, texts for the rules, texts for the guard, request hash): a prompt is one user
    # message; a request body is decided exactly as the gateway decides it (replay of a record).
    cases: list[tuple[str, list[str], list[str], str | None]] = [(t, [t], [t], None) for t in args.text]
    if args.file:
        try:
            lines = Path(args.file).read_text("utf-8").splitlines()
        except (OSError, UnicodeDecodeError) as exc:
            raise UsageError(f"{args.file}: cannot read prompts: {exc}") from None
        cases += [(t, [t], [t], None) for t in lines if t.strip()]
    for name in args.request or ():
        body = read_regular(Path(name), "request body", MAX_BODY)
        try:
            doc = parse_body(body)
        except BadRequest as exc:
            raise UsageError(f"{name}: {exc}") from None
        cases.append((name, texts_of(doc), guard_texts(doc), request_hash("POST", args.path, body)))
    if not cases:
        raise UsageError("give TEXT, --file FILE (one prompt per line) or --request BODY.json")
    lines, docs = [], []
    for label, texts, guard_input, digest in cases:
        decision = decide(policy, guard, texts, guard_input=guard_input)
        judged = guard.judge(guard_input, explain=True) if guard else None
        doc = {
            "text": label,
            "decision": decision.action,
            "layer": decision.layer,
            "rule": decision.rule_id,
            "guard": judged.record() | {"evidence": judged.evidence} if judged else None,
        }
        if digest:
            doc["request_hash"] = digest
        docs.append(doc)
        line = f"{decision.action:<6} {decision.layer:<13} {decision.rule_id or '-':<36} {label[:70]}"
        if digest:
            line += f"\n       request_hash={digest} (POST {args.path})"
        if judged:
            scores = " ".join(f"{k}={v:.3f}" for k, v in judged.scores.items())
            evidence = ", ".join(f"{t[2:]!r} {c:+.2f}" for t, c in judged.evidence) or "-"
            line += f"\n       p_stop={judged.p_stop:.3f} {scores}\n       evidence: {evidence}"
        lines.append(line)
    return "\n".join(lines), docs


def cmd_approve(args: argparse.Namespace) -> Result:
    from enclave.runtime.gateway import approve, fetch_held
    from enclave.runtime.gateway.review import confirm, describe_held

    decision = "deny" if args.deny else "approve"
    held = fetch_held(args.request_id, args.gateway)  # shown before anything is signed
    if not args.json:
        print(describe_held(held), file=sys.stderr)
    if sys.stdin.isatty() and not args.yes and not confirm(f"{decision} request {args.request_id}? [y/N] "):
        raise UsageError(f"request {args.request_id}: not confirmed; nothing signed")
    answer = approve(args.request_id, Path(args.key), args.gateway, decision, held["request_hash"])
    return f"request {args.request_id}: {answer.get('status', 'sent')}", answer


def cmd_held_show(args: argparse.Namespace) -> Result:
    from enclave.runtime.gateway import fetch_held
    from enclave.runtime.gateway.review import describe_held

    held = fetch_held(args.request_id, args.gateway)
    return describe_held(held), held


def cmd_requester_token(args: argparse.Namespace) -> Result:
    from enclave.fileio import read_regular
    from enclave.runtime.gateway import requester_headers
    from enclave.runtime.gateway.inspect import request_hash

    body = sys.stdin.buffer.read() if args.body == "-" else read_regular(args.body, "request body")
    (key,) = _load_keys([args.key])
    ((header, token),) = requester_headers(key, args.method, args.path, body).items()
    digest = request_hash(args.method, args.path, body)
    return f"{header}: {token}", {"header": header, "token": token, "requestHash": digest}


def cmd_audit_verify(args: argparse.Namespace) -> Result:
    from enclave.runtime.audit import verify_log

    report = verify_log(
        Path(args.log),
        Path(args.trust),
        [Path(w) for w in args.witness],
        require_checkpointed=args.require_checkpointed,
        save_witness=Path(args.save_witness) if args.save_witness else None,
    )
    proven = (
        f"{report.records} records"
        if not report.unproven_records
        else f"{report.covered_records} of {report.records} records proven, "
        f"{report.unproven_records} UNPROVEN (not covered by a signed checkpoint)"
    )
    lines = [
        f"{args.log}: audit log verified: {proven}, "
        f"{report.verified_checkpoints} signed checkpoints, root {report.root_hash[:16]}",
        *(f"  warning: {w}" for w in report.warnings),
    ]
    if report.witness_saved:
        lines.append(f"  witness: the last checkpoint is saved in {report.witness_saved}")
    return "\n".join(lines), report.to_dict()


def cmd_audit_export(args: argparse.Namespace) -> Result:
    from enclave.runtime.audit import export

    out = export(Path(args.log), Path(args.out), Path(args.trust), user=args.user)
    return f"forensic package written to {out}", {"out": str(out)}


# -- runtime: monitoring agent ----------------------------------------------------------------
def _agent_tls(args: argparse.Namespace) -> Any:
    """The agent's mutual TLS files (AgentTLS), or None without --tls-ca."""
    from enclave.runtime.agent import AgentTLS

    def path(value: str | None) -> Path | None:
        return Path(value) if value else None

    given = [f for f in ("tls_cert", "tls_key", "crl") if getattr(args, f, None)]
    if args.tls_ca is None:
        if given:
            raise UsageError(f"--{given[0].replace('_', '-')} needs --tls-ca (the enclave CA)")
        return None
    return AgentTLS(
        Path(args.tls_ca), path(args.tls_cert), path(args.tls_key), path(getattr(args, "crl", None))
    )


def cmd_agent_run(args: argparse.Namespace) -> Result:
    from enclave.runtime.agent import check_once, run

    hardening = [Path(p) for p in args.hardening_file] or None
    canaries = Path(args.canaries) if args.canaries else None
    tls = _agent_tls(args)
    if args.once:
        report = check_once(
            Path(args.bundle_dir),
            Path(args.trust),
            Path(args.audit_log),
            Path(args.audit_key),
            args.gateway,
            canaries,
            hardening_files=hardening,
            rebaseline=args.rebaseline_hardening,
            accept_unproven_tail=args.accept_unproven_tail,
            tls=tls,
        )
        error = report.error()
        if error is not None:  # every finding, then the one error line (--json: its details)
            raise with_report(error, report.text(), report.to_dict(), args.json)
        return report.text(), report.to_dict()
    run(
        Path(args.bundle_dir),
        Path(args.trust),
        Path(args.audit_log),
        Path(args.audit_key),
        args.interval,
        args.listen,
        args.gateway,
        canaries,
        False,
        hardening_files=hardening,
        rebaseline=args.rebaseline_hardening,
        accept_unproven_tail=args.accept_unproven_tail,
        tls=tls,
    )
    return "agent stopped", {"stopped": True}


def cmd_agent_baseline(args: argparse.Namespace) -> Result:
    import asyncio

    from enclave.identity.tls import client_context
    from enclave.runtime.agent import record_baselines

    tls = _agent_tls(args)
    context = client_context(tls.ca, tls.cert, tls.key) if tls is not None else None
    count = asyncio.run(record_baselines(Path(args.canaries), args.gateway, Path(args.out), context))
    return f"{args.out}: {count} canary baselines recorded", {"out": args.out, "baselines": count}


# -- provisioning -----------------------------------------------------------------------------
def cmd_provision(args: argparse.Namespace) -> Result:
    from enclave.provision import Options, provision
    from enclave.provision.report import summary
    from enclave.trust.keys import passphrase_for

    # As `bundle verify` (one Admission: rollback state, a receipt for every verification, a
    # failed one too); then preflight, push, site.yml from the verified bundle. The audit key
    # signs the receipts and, when the bundle carries the gateway, is the key the gateway signs
    # its log with on the hosts: its passphrase is asked once.
    passphrase = passphrase_for(Path(args.audit_key)) if args.audit_key and not args.check else None
    admission = _admission(args, passphrase)
    outcome = provision(
        Options(
            inventory=Path(args.inventory),
            bundle=Path(args.bundle),
            admission=admission,
            receipt=Path(args.receipt) if args.receipt else None,
            check=args.check,
            limit=args.limit,
            report=Path(args.report) if args.report else None,
            checklist_dir=Path(args.checklist_dir) if args.checklist_dir else None,
            accept_new_host_keys=args.accept_new_host_keys,
            known_hosts=Path(args.known_hosts) if args.known_hosts else None,
            show_progress=not args.json,
            deploy_key=Path(args.audit_key) if args.audit_key else None,
            deploy_passphrase=passphrase,
            attestations=[Path(a) for a in args.attestations],
            gateway_tls=Path(args.gateway_tls) if args.gateway_tls else None,
        ),
        say=None if args.json else (lambda line: print(line, file=sys.stderr)),
    )
    return summary(outcome.report), outcome.report


def cmd_preflight(args: argparse.Namespace) -> Result:
    from enclave.bundle.manifest import parse_size
    from enclave.provision import check_hosts, preflight_failure, preflight_report
    from enclave.provision.preflight import table

    size = parse_size(args.payload_size, "--payload-size") if args.payload_size else 0
    reports, keys = check_hosts(
        Path(args.inventory),
        args.limit,
        args.accept_new_host_keys,
        Path(args.known_hosts) if args.known_hosts else None,
        size,
    )
    error = preflight_failure(reports)
    if error is not None:  # the whole table, then the one error line (--json: its details)
        raise with_report(error, table(reports), preflight_report(reports, keys), args.json)
    return table(reports), preflight_report(reports, keys)


def cmd_testbed(args: argparse.Namespace) -> Result:
    from enclave import testbed

    directory = Path(args.dir)
    if args.action == "down":
        testbed.down(directory)
        return f"testbed in {directory} is down", {"dir": str(directory), "up": False}
    if args.action == "up":
        say = None if args.json else (lambda line: print(line, file=sys.stderr))
        state = testbed.up(directory, args.hosts, progress=say)
    else:
        state = testbed.status(directory)
    lines = [f"testbed {directory}: {'up' if state.up else 'not up'}, inventory {state.inventory}"]
    lines += [
        f"  {h.name:<8} {h.address}:{h.port}  running={h.running}  ssh={h.ssh_ok}  {h.system_state}"
        for h in state.hosts
    ]
    return "\n".join(lines), state.to_dict()


def cmd_demo(args: argparse.Namespace) -> Result:
    from enclave import demo

    if args.down:
        demo.down()
        return "demo work directory removed", {"removed": str(demo.WORK)}

    report = demo.run(say=(lambda _line: None) if args.json else print)  # the library, never the CLI
    return "", {
        "steps": [{"step": t, "result": r, "seconds": round(s, 2)} for t, r, s in report.steps],
        "artefacts": report.artefacts,
    }


# -- images -----------------------------------------------------------------------------------
def cmd_images_load(args: argparse.Namespace) -> Result:
    from enclave.images.load import load_bundle_images

    # Exactly `bundle verify` (one Admission: trust, state, rollback, receipt), then the images.
    loaded = load_bundle_images(
        _admission(args),
        Path(args.bundle),
        engine=args.engine,
        extract_to=Path(args.extract_to) if args.extract_to else None,
        receipt=Path(args.receipt) if args.receipt else None,
    )
    text, doc = _admitted(loaded.verified)
    doc["engine"] = args.engine or "local"
    doc["images"] = [i.to_dict() for i in loaded.images]
    return text, doc


def cmd_images_base(args: argparse.Namespace) -> Result:
    import time

    from enclave.images.base import ensure_base
    from enclave.images.engine import connect

    say = None if args.json else (lambda line: print(line, file=sys.stderr))
    started = time.monotonic()
    client = connect(None)
    try:
        tag = ensure_base(client, say, rebuild=args.rebuild)
        image = client.images.get(tag)
    finally:
        client.close()
    seconds = round(time.monotonic() - started, 1)
    doc = {"tag": tag, "id": image.id, "size": image.attrs["Size"], "seconds": seconds}
    return f"{tag}  {image.id[:19]}  {doc['size']} bytes  ({seconds} s)", doc


def cmd_images_build(args: argparse.Namespace) -> Result:
    from enclave.images.engine import connect
    from enclave.images.reference import IMAGES, build_images

    say = None if args.json else (lambda line: print(line, file=sys.stderr))
    client = connect(None)
    try:
        built = build_images(client, args.image or IMAGES, say)
    finally:
        client.close()
    lines = [
        f"{b.ref:<28} {b.id[:19]}  {b.size:>11} bytes  {'built' if b.built else 'cached'}, {b.seconds:.1f} s"
        for b in built
    ]
    return "\n".join(lines), {"images": [b.to_dict() for b in built]}


# -- kits: enclave and its dependencies for an offline installation (enclave/kit) ---------------
def _kit_doc(verified: Any) -> dict[str, Any]:
    s = verified.statement
    return {"kit": str(verified.path), "name": s.name, "version": s.version, "python": s.python,
            "platforms": list(s.platforms), "extras": list(s.extras), "files": len(s.files),
            "bytes": verified.bytes, "signers": list(verified.signers)}  # fmt: skip


def cmd_kit_build(args: argparse.Namespace) -> Result:
    from enclave.kit.build import build_kit

    say = None if args.json else (lambda line: print(line, file=sys.stderr))
    extras = [e for value in args.extras for e in value.split(",") if e]
    kit = build_kit(Path(args.out), _load_keys(args.key), args.python, args.platform, extras, say)
    doc = {"kit": str(kit.path), "version": kit.version, "python": kit.python, "extras": list(kit.extras),
           "wheels": list(kit.wheels), "statementSha256": kit.statement_sha256,
           "verifierSha384": kit.verifier_sha384}  # fmt: skip
    lines = [
        f"{kit.path}: enclave {kit.version} for Python {kit.python}, {len(kit.wheels)} wheels, "
        f"extras: {', '.join(kit.extras) or 'none'}",
        f"  verify-kit.py sha384 {kit.verifier_sha384}: send it with root.json (docs/OPERATIONS.md 15)",
    ]
    return "\n".join(lines), doc


def _kit_root(args: argparse.Namespace) -> Any:
    """The root that judges a kit: the stored one when this host has a state directory (a
    root.json rotated away since, or revoking a key, is not the anchor any more), else --trust."""
    from enclave.trust.root import TrustRoot
    from enclave.trust.state import StateDir, default_state_dir
    from enclave.trust.trusted import TrustedRoot

    path = Path(args.state_dir) if args.state_dir else default_state_dir()
    stored = StateDir.existing(path).read_root() if args.state_dir or path.is_dir() else None
    return TrustedRoot.resolve(stored, TrustRoot.load(Path(args.trust))).root


def cmd_kit_verify(args: argparse.Namespace) -> Result:
    from enclave.kit.install import verify_kit

    verified = verify_kit(Path(args.kit), _kit_root(args), _now(args))
    doc = _kit_doc(verified)
    return f"{args.kit}: enclave {doc['version']} kit verified: {doc['files']} files, bundle role met", doc


def cmd_kit_install(args: argparse.Namespace) -> Result:
    from enclave.kit.install import install_kit, kit_in_bundle, verify_kit

    root, now = _kit_root(args), _now(args)
    bundle = Path(args.bundle_dir) if args.bundle_dir else None
    kit = kit_in_bundle(bundle, root, now, args.component) if bundle else Path(args.kit)
    verified = verify_kit(kit, root, now)
    line = install_kit(verified, Path(args.python) if args.python else None, args.allow_downgrade)
    text = f"{kit}: enclave {verified.statement.version} kit verified and installed: {line}"
    return text, _kit_doc(verified)


# -- content store ----------------------------------------------------------------------------
def _store(args: argparse.Namespace) -> Any:
    from enclave.bundle.store import ContentStore
    from enclave.trust.state import StateDir

    # Read (and gc) an existing state directory only: a mistyped --state-dir is an error (2).
    return ContentStore.under(StateDir.existing(Path(args.state_dir) if args.state_dir else None).path)


def cmd_store_ls(args: argparse.Namespace) -> Result:
    store = _store(args)
    bundles = store.accepted()
    entries = list(store.entries())
    files = sum(1 for e in entries if e.chunk_size is not None)
    size = sum(e.path.lstat().st_size for e in entries)  # a file object's bytes may be shared (hard link)
    kinds = f"{len(entries) - files} chunks, {files} files"
    lines = [f"{store.path}: {len(entries)} objects ({kinds}), {size} bytes"]
    lines += [f"  {b.name} {b.version}  statement {b.statement_digest[:16]}" for b in bundles]
    doc = {
        "store": str(store.path),
        "objects": len(entries),
        "files": files,
        "bytes": size,
        "bundles": [
            {"name": b.name, "version": b.version, "statementDigest": b.statement_digest} for b in bundles
        ],
    }
    return "\n".join(lines), doc


def cmd_store_verify(args: argparse.Namespace) -> Result:
    from enclave.errors import IntegrityError

    report = _store(args).verify()
    if report.damaged:
        for path in report.damaged:
            print(f"damaged: {path}", file=sys.stderr)
        raise IntegrityError(
            f"{len(report.damaged)} of {report.objects} stored objects are damaged, first {report.damaged[0]}"
        )
    return f"{report.objects} stored objects, {report.bytes} bytes: every digest matches", {
        "objects": report.objects,
        "bytes": report.bytes,
        "damaged": [],
    }


def cmd_store_gc(args: argparse.Namespace) -> Result:
    removed, freed = _store(args).gc(args.keep)
    return f"removed {removed} objects, {freed} bytes freed", {"removed": removed, "bytes": freed}


# -- parser -----------------------------------------------------------------------------------
def _agent_tls_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--tls-ca", metavar="PEM", help="the enclave CA: an https --gateway must chain to it")
    p.add_argument(
        "--tls-cert",
        metavar="PEM",
        help="the agent's service certificate: shown to the gateway, serves /metrics",
    )
    p.add_argument("--tls-key", metavar="KEY", help="its key (ENCLAVE_KEY_PASSPHRASE if encrypted)")


STORED_ROOT_HELP = (
    "its stored trust root is the anchor when there is one (default: $ENCLAVE_STATE_DIR or /var/lib/enclave)"
)


def build_parser() -> argparse.ArgumentParser:
    from enclave.clihelp import Parser, global_options

    common = global_options(top=False)  # --json/--debug after the command, not resetting them
    parser = Parser(prog="enclave", description=__doc__, parents=[global_options(top=True)])
    parser.add_argument("--version", action="version", version=f"enclave {__version__}")
    top = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def sub(group: Any, name: str, handler: Handler, help_text: str) -> argparse.ArgumentParser:
        p: argparse.ArgumentParser = group.add_parser(
            name, parents=[common], help=help_text, description=help_text
        )
        p.set_defaults(handler=handler)
        return p

    keys = top.add_parser("keys", help="signing keys").add_subparsers(dest="action", required=True)
    p = sub(keys, "generate", cmd_keys_generate, "generate a PKCS#8 private key and PATH.pub")
    p.add_argument(
        "--algorithm", required=True, choices=["ecdsa-p384", "ml-dsa-87"], help="classical or post-quantum"
    )
    p.add_argument(
        "--out", required=True, metavar="PATH", help="the private key (a new file); PATH.pub beside"
    )
    p.add_argument("--no-passphrase", action="store_true", help="write the private key unencrypted")

    trust = top.add_parser("trust", help="the trust root (root.json)").add_subparsers(
        dest="action", required=True
    )
    p = sub(trust, "init", cmd_trust_init, "create and sign a new trust root")
    p.add_argument("--out", required=True, metavar="PATH", help="the new root.json (never overwritten)")
    for role in ("root", "bundle", "approver", "audit"):
        p.add_argument(
            f"--{role}-key", action="append", default=[], metavar="PUB", help=f"a key of the {role} role"
        )
    p.add_argument(
        "--threshold", action="append", default=[], metavar="ROLE=N", help="signatures ROLE needs (1)"
    )
    p.add_argument("--expires", type=int, default=365, metavar="DAYS", help="from now (default 365)")
    p.add_argument("--sign", action="append", required=True, metavar="KEY", help="a root key signing it")
    p.add_argument(
        "--no-hybrid", action="store_true", help="do not require classical + post-quantum for bundles"
    )
    p = sub(trust, "show", cmd_trust_show, "show a trust root and check it")
    p.add_argument("root", nargs="?", help="default: the root stored in the state directory")
    p.add_argument("--state-dir", metavar="DIR", help="default: $ENCLAVE_STATE_DIR or /var/lib/enclave")
    p.add_argument("--at", metavar="TIME", help="check as of TIME (YYYY-MM-DDTHH:MM:SSZ)")
    p = sub(trust, "rotate", cmd_trust_rotate, "write or co-sign root version N+1 (rotation, revocation)")
    p.add_argument("old", metavar="OLD.json", help="the current root, version N")
    p.add_argument("new", metavar="NEW.json", help="created from OLD when missing, else co-signed")
    p.add_argument("--sign", action="append", required=True, metavar="KEY", help="a root key of OLD or NEW")
    p.add_argument("--add-key", action="append", default=[], metavar="ROLE=PUB", help="add a key to ROLE")
    p.add_argument("--revoke", action="append", default=[], metavar="PUB|KEYID", help="drop from every role")
    p.add_argument(
        "--threshold", action="append", default=[], metavar="ROLE=N", help="change ROLE's threshold"
    )
    p.add_argument("--expires", type=int, metavar="DAYS", help="from now (default 365)")
    p = sub(trust, "update", cmd_trust_update, "apply root rotations to the trusted root (high side)")
    p.add_argument("roots", nargs="*", metavar="NEW.json", help="roots N+1, N+2, ... in any order")
    p.add_argument("--trust", metavar="ROOT", help="the first root, when the state directory holds none")
    p.add_argument("--state-dir", metavar="DIR", help="default: $ENCLAVE_STATE_DIR or /var/lib/enclave")

    bundle = top.add_parser("bundle", help="build, sign, inspect, verify bundles").add_subparsers(
        dest="action", required=True
    )
    p = sub(bundle, "build", cmd_bundle_build, "build and sign a bundle from a manifest")
    p.add_argument("manifest", help="the bundle manifest (YAML)")
    p.add_argument("--out", required=True, metavar="DIR", help="where NAME-VERSION.bundle is written")
    p.add_argument(
        "--key", action="append", required=True, metavar="KEY", help="a bundle-role key signing it"
    )
    p.add_argument("--digest", choices=["sha256", "sha384", "sha512"], help="default: the manifest's")
    p.add_argument("--volume-size", metavar="SIZE", help="write media volumes of SIZE (4GiB, 4.7GB) + index")
    p.add_argument("--trust", metavar="ROOT", help="warn when the signatures will not meet this root's rule")
    p.add_argument("--base", metavar="OLD", help="differential: leave out what this older bundle carries")
    p.add_argument("--base-statement", metavar="FILE", help="differential, from the base's BUNDLE.dsse.json")
    p = sub(bundle, "split", cmd_bundle_split, "split a co-signed bundle into media volumes + signed index")
    p.add_argument("bundle", help="the co-signed single-file bundle")
    p.add_argument("--volume-size", required=True, metavar="SIZE", help="e.g. 4GiB, 4.7GB")
    p.add_argument("--trust", metavar="ROOT", help="warn when the signatures will not meet this root's rule")
    p.add_argument(
        "--key", action="append", required=True, metavar="KEY", help="signs the index (bundle role)"
    )
    p = sub(bundle, "verify-volume", cmd_bundle_verify_volume, "the courier's check of one volume")
    p.add_argument("volume", help="one volume, NAME-VERSION.bundle.NNN")
    p.add_argument("--trust", required=True, metavar="ROOT", help="the trust root the index must meet")
    p.add_argument(
        "--index", metavar="PATH", help="default: NAME-VERSION.volumes.dsse.json beside the volume"
    )
    p.add_argument("--at", metavar="TIME", help="check the root as of TIME (YYYY-MM-DDTHH:MM:SSZ)")
    p = sub(bundle, "sign", cmd_bundle_sign, "check a bundle's content and add a co-signature")
    p.add_argument("bundle", help="the single-file bundle (before it is split)")
    p.add_argument("--key", required=True, metavar="KEY", help="the co-signer's bundle-role key")
    p.add_argument(
        "--base", metavar="OLD", help="a differential bundle's base bundle (checks what it leaves out)"
    )
    p.add_argument("--base-statement", metavar="FILE", help="the same, from the base's BUNDLE.dsse.json")
    p.add_argument("--trust", metavar="ROOT", help="warn when the signatures will not meet this root's rule")
    p = sub(bundle, "inspect", cmd_bundle_inspect, "show what a bundle holds (no trust decision)")
    p.add_argument("bundle", help="the bundle file (or its first volume)")
    p.add_argument("--trust", metavar="ROOT", help="label signatures against this trust root")
    p = sub(bundle, "verify", cmd_bundle_verify, "verify signatures and every byte; optionally extract")
    p.add_argument("bundle", help="a bundle, a volume (.NNN) or the volume index")
    p.add_argument("--trust", metavar="ROOT", help="default: the root stored in the state directory")
    p.add_argument("--state-dir", metavar="DIR", help="default: $ENCLAVE_STATE_DIR or /var/lib/enclave")
    p.add_argument(
        "--extract-to", metavar="DIR", help="a new directory; it appears only when every check passed"
    )
    p.add_argument("--receipt", metavar="PATH", help="also write the receipt here (a new file)")
    p.add_argument("--audit-key", metavar="KEY", help="sign the receipt (a key of the audit role)")
    p.add_argument(
        "--at", metavar="TIME", help="audit re-check as of TIME (YYYY-MM-DDTHH:MM:SSZ); state untouched"
    )
    p = sub(bundle, "digest", cmd_bundle_digest, "print the bundle-format digest of a loose file")
    p.add_argument("file", help="a regular file")
    p.add_argument(
        "--digest", default="sha384", choices=["sha256", "sha384", "sha512"], help="default sha384"
    )
    p.add_argument("--chunk-size", metavar="SIZE", help="default: the bundle default (FORMAT.md section 2)")
    images = top.add_parser("images", help="offline image builds; load images from a bundle").add_subparsers(
        dest="action", required=True
    )
    p = sub(images, "load", cmd_images_load, "verify a bundle, then load its images into a Docker engine")
    p.add_argument("bundle", help="a bundle, a volume (.NNN) or the volume index")
    p.add_argument("--trust", metavar="ROOT", help="default: the root stored in the state directory")
    p.add_argument("--state-dir", metavar="DIR", help="default: $ENCLAVE_STATE_DIR or /var/lib/enclave")
    p.add_argument("--extract-to", metavar="DIR", help="keep the verified content here (a new directory)")
    p.add_argument("--receipt", metavar="PATH", help="also write the receipt here (a new file)")
    p.add_argument("--audit-key", metavar="KEY", help="sign the receipt (a key of the audit role)")
    p.add_argument(
        "--at", metavar="TIME", help="audit re-check as of TIME (YYYY-MM-DDTHH:MM:SSZ); state untouched"
    )
    p.add_argument(
        "--engine",
        metavar="URL",
        help="unix:///PATH or ssh://[USER@]HOST[:PORT] (default: DOCKER_HOST or the local socket)",
    )
    p = sub(images, "base", cmd_images_base, "build the Debian base image offline (cached by recipe)")
    p.add_argument("--rebuild", action="store_true", help="build even if the engine has it")
    p = sub(images, "build", cmd_images_build, "build the reference images offline (cached by content)")
    p.add_argument("image", nargs="*", help="default: enclave-gateway enclave-agent enclave-model-server")

    kit = top.add_parser("kit", help="enclave itself for an offline installation").add_subparsers(
        dest="action", required=True
    )
    p = sub(kit, "build", cmd_kit_build, "enclave and every dependency as signed, hash-pinned wheels")
    p.add_argument("--out", required=True, metavar="DIR", help="a new directory")
    p.add_argument("--key", action="append", required=True, metavar="KEY", help="a key of the bundle role")
    p.add_argument("--python", choices=["3.11", "3.12"], help="the high side's Python (default: this one)")
    p.add_argument("--platform", action="append", default=[], metavar="TAG", help="manylinux_2_28_x86_64...")
    p.add_argument("--extras", action="append", default=[], metavar="LIST", help="provision,runtime,images")
    p = sub(kit, "verify", cmd_kit_verify, "check a kit: bundle role signatures, every file's digests")
    p.add_argument("kit", metavar="DIR", help="the kit directory")
    p.add_argument("--trust", required=True, metavar="ROOT", help="root.json: its bundle role signs kits")
    p.add_argument("--state-dir", metavar="DIR", help=STORED_ROOT_HELP)
    p = sub(kit, "install", cmd_kit_install, "verify a kit, then install it offline (pip --no-index)")
    source = p.add_mutually_exclusive_group(required=True)
    source.add_argument("--bundle-dir", metavar="DIR", help="a verified bundle carrying the kit (wheelhouse)")
    source.add_argument("--kit", metavar="DIR", help="a kit directory")
    p.add_argument("--component", metavar="NAME", help="the wheelhouse component, if the bundle has several")
    p.add_argument("--trust", required=True, metavar="ROOT", help="root.json: its bundle role signs kits")
    p.add_argument("--python", metavar="PATH", help="install into this interpreter's environment")
    p.add_argument("--state-dir", metavar="DIR", help=STORED_ROOT_HELP)
    p.add_argument(
        "--allow-downgrade", action="store_true",
        help="install a kit older than the enclave installed there (refused otherwise, exit 5)",
    )  # fmt: skip

    store = top.add_parser("store", help="the high side's content store").add_subparsers(
        dest="action", required=True
    )
    for action, handler, text in (
        ("ls", cmd_store_ls, "list accepted bundle versions and stored objects (chunks and files)"),
        ("verify", cmd_store_verify, "re-hash every stored chunk; name the damaged ones"),
        ("gc", cmd_store_gc, "keep only the chunks of the last N versions of each bundle"),
    ):
        p = sub(store, action, handler, text)
        p.add_argument("--state-dir", metavar="DIR", help="default: $ENCLAVE_STATE_DIR or /var/lib/enclave")
        if action == "gc":
            p.add_argument("--keep", type=int, required=True, metavar="N", help="versions kept per bundle")

    testbed = top.add_parser("testbed", help="the local simulated enclave").add_subparsers(
        dest="action", required=True
    )
    for action, text in (
        ("up", "start N hardened-host containers"),
        ("down", "remove them"),
        ("status", "show them"),
    ):
        p = sub(testbed, action, cmd_testbed, text)
        p.add_argument("--dir", default="testbed", help="inventory, SSH key and known_hosts go here")
        p.add_argument("--hosts", type=int, default=2, help="how many hosts (up; default 2)")

    gateway = top.add_parser("gateway", help="the safety gateway").add_subparsers(
        dest="action", required=True
    )
    p = sub(gateway, "serve", cmd_gateway_serve, "serve the policy gateway in front of a model server")
    p.add_argument("--policy", required=True, metavar="FILE", help="the usage policy (YAML)")
    p.add_argument("--upstream", required=True, metavar="URL", help="the model server (OpenAI-compatible)")
    p.add_argument("--audit-log", required=True, metavar="PATH", help="the hash-chained audit log")
    p.add_argument(
        "--audit-key", required=True, metavar="KEY", help="signs the log's checkpoints (audit role)"
    )
    p.add_argument("--trust", metavar="ROOT", help="approver and audit keys come from this root")
    p.add_argument("--listen", default="127.0.0.1:8088", metavar="ADDR:PORT", help="default 127.0.0.1:8088")
    p.add_argument("--model-digest", metavar="ALG:HEX", help="the signed digest of the served weights")
    p.add_argument("--guard", metavar="DIR", help="the learned guard behind the rules (a verified copy)")
    p.add_argument(
        "--guard-digest",
        metavar="ALG:HEX",
        help="the signed digest of the guard's guard.json (pins the guard)",
    )
    p.add_argument(
        "--buffer-streams",
        action="store_true",
        help="with --guard: read a streamed answer whole and judge it before releasing any of it",
    )
    p.add_argument(
        "--accept-unproven-tail",
        action="store_true",
        help="continue an audit log whose last records no checkpoint covers (after a crash), "
        "recording the acceptance",
    )
    p.add_argument("--tls-cert", metavar="PEM", help="serve HTTPS with this certificate (ca issue --host)")
    p.add_argument("--tls-key", metavar="KEY", help="its key (ENCLAVE_KEY_PASSPHRASE if encrypted)")
    p.add_argument("--client-ca", metavar="PEM", help="mutual TLS: every caller needs an identity of this CA")
    p.add_argument("--crl", metavar="PEM", help="the CA's revocation list, reloaded when it changes")
    p.add_argument("--users", metavar="FILE", help="API keys (hashes, CA-signed) for clients without mTLS")
    p.add_argument("--tls12", action="store_true", help="also accept TLS 1.2 (ECDHE, AES-256-GCM-SHA384)")
    p.add_argument("--rate-limit", type=float, metavar="PER_SECOND", help="requests a second per user")
    p.add_argument("--rate-burst", type=int, metavar="N", help="bursts of up to N (default: the rate)")
    p.add_argument("--held-dir", metavar="DIR", help="journal of pending held requests (default LOG.held)")

    ca = top.add_parser("ca", help="the enclave CA: certificates, CRL, API keys").add_subparsers(
        dest="action", required=True
    )
    p = sub(ca, "init", cmd_ca_init, "create an offline CA (P-384): key, certificate, empty CRL")
    p.add_argument("--out", required=True, metavar="DIR", help="a new (or empty) directory")
    p.add_argument("--name", default="enclave CA", help="the CA's common name")
    p.add_argument("--days", type=int, default=3650, metavar="N", help="validity (default 3650)")
    p.add_argument("--no-passphrase", action="store_true", help="write the CA key unencrypted")
    p = sub(ca, "issue", cmd_ca_issue, "issue a client (or, with --host, server) certificate and key")
    p.add_argument("--ca", required=True, metavar="DIR", help="the CA directory (enclave ca init)")
    p.add_argument("--name", required=True, help="the user's (or host's) name: the certificate's CN")
    p.add_argument(
        "--role", required=True, choices=["user", "approver", "auditor", "service"], help="what it may do"
    )
    p.add_argument("--out", required=True, metavar="PREFIX", help="writes PREFIX.pem and PREFIX.key")
    p.add_argument("--days", type=int, default=365, metavar="N", help="validity (default 365)")
    p.add_argument("--approver-key", metavar="PUB", help="approvers: the public key they sign with")
    p.add_argument("--host", action="append", default=[], metavar="NAME|IP", help="server certificate for")
    p.add_argument("--no-passphrase", action="store_true", help="write the new key unencrypted")
    p = sub(ca, "revoke", cmd_ca_revoke, "revoke a certificate or API key; re-sign the CRL")
    p.add_argument("--ca", required=True, metavar="DIR", help="the CA directory (enclave ca init)")
    p.add_argument("--cert", metavar="PEM", help="the certificate to revoke")
    p.add_argument("--serial", metavar="HEX", help="or its serial")
    p.add_argument("--reason", default="unspecified", help="unspecified, key-compromise, superseded, ...")
    p.add_argument("--crl-days", type=int, default=30, metavar="N", help="the CRL's next update (default 30)")
    p.add_argument("--api-key", metavar="NAME", help="remove this user's API key from --users instead")
    p.add_argument("--users", metavar="FILE", help="the users file (with --api-key)")
    p = sub(ca, "api-key", cmd_ca_api_key, "give a user an API key (stored as a hash in --users)")
    p.add_argument("--ca", required=True, metavar="DIR", help="the CA directory (enclave ca init)")
    p.add_argument("--users", required=True, metavar="FILE", help="created if absent; re-signed by the CA")
    p.add_argument("--name", required=True, help="the user's name")
    p.add_argument(
        "--role",
        action="append",
        required=True,
        choices=["user", "approver", "auditor", "service"],
        help="what the key may do",
    )
    p.add_argument("--approver-key", metavar="PUB", help="approvers: the public key they sign with")
    p.add_argument("--out", required=True, metavar="FILE", help="the key is written here (0600), once")

    guard = top.add_parser("guard", help="the learned guard behind the policy rules").add_subparsers(
        dest="action", required=True
    )
    p = sub(guard, "train", cmd_guard_train, "train the guard from a labelled corpus (deterministic)")
    p.add_argument("--corpus", required=True, metavar="DIR", help="training corpus (*.jsonl)")
    p.add_argument("--eval", metavar="DIR", help="evaluation corpus written apart from training")
    p.add_argument("--policy", required=True, metavar="FILE", help="the rules the guard stands behind")
    p.add_argument("--out", required=True, metavar="DIR", help="a new directory for the guard")
    p.add_argument("--seed", type=int, metavar="N", help="the one seed of folds and self-test sample")
    p.add_argument("--version", default="1.0.0", help="the guard's version (default 1.0.0)")
    p.add_argument(
        "--deadline-ms", type=int, metavar="MS",
        help="per-request time after which the gateway holds a request for humans (default 250)",
    )  # fmt: skip
    p = sub(guard, "eval", cmd_guard_eval, "evaluate rules + guard on a labelled corpus")
    p.add_argument("--guard", metavar="DIR", help="the guard directory")
    p.add_argument("--corpus", required=True, metavar="DIR", help="labelled prompts (*.jsonl)")
    p.add_argument("--policy", required=True, metavar="FILE", help="the policy rules")
    p.add_argument("--rules-only", action="store_true", help="evaluate the rules without the guard")
    policy = top.add_parser("policy", help="check a usage policy").add_subparsers(
        dest="action", required=True
    )
    p = sub(policy, "test", cmd_policy_test, "show the decision, deciding layer, scores and evidence")
    p.add_argument("text", nargs="*", help="prompts to decide")
    p.add_argument("--file", metavar="FILE", help="more prompts, one per line")
    p.add_argument("--policy", required=True, metavar="FILE", help="the policy rules")
    p.add_argument("--guard", metavar="DIR", help="the learned guard (default: rules only)")
    p.add_argument(
        "--request", action="append", metavar="BODY.json",
        help="a request body, decided as the gateway decides it (repeatable); replays a logged decision",
    )  # fmt: skip
    p.add_argument(
        "--path", default="/v1/chat/completions", metavar="PATH",
        help="the route the bodies were sent to, for their request_hash (default /v1/chat/completions)",
    )  # fmt: skip

    p = sub(top, "approve", cmd_approve, "sign an approval (or denial) of a held request")
    p.add_argument("request_id", help="the held request's id (HTTP 202 answer)")
    p.add_argument("--key", required=True, metavar="KEY", help="your approver key (approver role)")
    p.add_argument("--gateway", required=True, metavar="URL", help="the gateway, e.g. http://127.0.0.1:8088")
    p.add_argument("--deny", action="store_true", help="sign a denial instead")
    p.add_argument("--yes", action="store_true", help="do not ask for confirmation on a terminal")
    held = top.add_parser("held", help="held requests awaiting approval").add_subparsers(dest="action")
    p = sub(held, "show", cmd_held_show, "show a held request: its rule and text, before approving it")
    p.add_argument("request_id", help="the held request's id")
    p.add_argument("--gateway", required=True, metavar="URL", help="the gateway, e.g. http://127.0.0.1:8088")
    p = sub(top, "requester-token", cmd_requester_token, "print the requester token header for a request")
    p.add_argument("--key", required=True, metavar="KEY", help="the requester's own approver-role key")
    p.add_argument("--method", default="POST", help="the HTTP method (default POST)")
    p.add_argument("--path", required=True, help="the request path, e.g. /v1/chat/completions")
    p.add_argument("--body", required=True, metavar="FILE", help="the exact request body ('-': stdin)")

    audit = top.add_parser("audit", help="the tamper-evident audit log").add_subparsers(
        dest="action", required=True
    )
    p = sub(audit, "verify", cmd_audit_verify, "verify records, hash chain and signed checkpoints")
    p.add_argument("log", help="the audit log")
    p.add_argument("--trust", required=True, metavar="ROOT", help="the root whose audit role signs")
    p.add_argument(
        "--witness", action="append", default=[], metavar="FILE", help="checkpoints kept elsewhere"
    )
    p.add_argument(
        "--require-checkpointed",
        action="store_true",
        help="records after the last signed checkpoint (unproven) fail the check (exit 3)",
    )
    p.add_argument(
        "--save-witness",
        metavar="FILE",
        help="check against FILE too (if it exists), then append the last verified checkpoint to it",
    )
    p = sub(audit, "export", cmd_audit_export, "write a forensic package")
    p.add_argument("log", help="the audit log")
    p.add_argument("--out", required=True, metavar="DIR", help="a new directory for the package")
    p.add_argument("--trust", required=True, metavar="ROOT", help="the root whose audit role signs")
    p.add_argument("--user", metavar="NAME", help="only the records of this user's requests (with proofs)")

    receipts = top.add_parser("receipts", help="verification receipts").add_subparsers(
        dest="action", required=True
    )
    p = sub(receipts, "verify", cmd_receipts_verify, "check the receipt log's hash chain and signatures")
    p.add_argument("log", nargs="?", help="default: receipts.log in the state directory")
    p.add_argument("--trust", metavar="ROOT", help="default: the root stored in the state directory")
    p.add_argument("--state-dir", metavar="DIR", help="default: $ENCLAVE_STATE_DIR or /var/lib/enclave")
    p.add_argument(
        "--witness", action="append", default=[], metavar="RECEIPT", help="a receipt file kept elsewhere"
    )
    p.add_argument("--require-signed", action="store_true", help="an unsigned receipt is a failure")
    p.add_argument("--at", metavar="TIME", help="check the root as of TIME")

    agent = top.add_parser("agent", help="the monitoring agent").add_subparsers(dest="action", required=True)
    p = sub(agent, "run", cmd_agent_run, "re-check the deployed bundle, images, hardening and canaries")
    p.add_argument(
        "--bundle-dir", required=True, metavar="DIR", help="what bundle verify --extract-to published"
    )
    p.add_argument("--trust", required=True, metavar="ROOT", help="the trust root in use")
    p.add_argument("--audit-log", required=True, metavar="PATH", help="the agent's own audit log")
    p.add_argument("--audit-key", required=True, metavar="KEY", help="a key of the root's audit role")
    p.add_argument("--interval", type=float, default=600.0, metavar="SECONDS", help="between checks (600)")
    p.add_argument("--listen", default="127.0.0.1:9108", metavar="ADDR:PORT", help="/metrics and /healthz")
    p.add_argument("--gateway", metavar="URL", help="the safety gateway the canaries go through")
    p.add_argument("--canaries", metavar="FILE", help="canary prompts (needs --gateway)")
    p.add_argument(
        "--hardening-file", action="append", default=[], metavar="PATH", help="replaces the default set"
    )
    p.add_argument(
        "--rebaseline-hardening", action="store_true", help="accept the current state as the baseline"
    )
    p.add_argument(
        "--accept-unproven-tail",
        action="store_true",
        help="continue the agent's audit log past records no checkpoint covers (after a crash), "
        "recording the acceptance",
    )
    p.add_argument("--once", action="store_true", help="every check once; exit code of the first failure")
    _agent_tls_arguments(p)
    p.add_argument("--crl", metavar="PEM", help="with --tls-cert: the CA's CRL, for callers of /metrics")
    p = sub(agent, "baseline", cmd_agent_baseline, "record allowed canaries' answers as their baselines")
    p.add_argument("--canaries", required=True, metavar="FILE", help="canary prompts (YAML)")
    p.add_argument("--gateway", required=True, metavar="URL", help="the safety gateway to ask")
    p.add_argument("--out", required=True, metavar="FILE", help="a new file")
    _agent_tls_arguments(p)

    for name, handler, text in (
        ("provision", cmd_provision, "verify a bundle, then preflight, push and run site.yml on hosts"),
        ("preflight", cmd_preflight, "check hosts over SSH before provisioning (changes nothing)"),
    ):
        p = sub(top, name, handler, text)
        p.add_argument("--inventory", required=True, metavar="INV", help="Ansible YAML inventory")
        p.add_argument("--limit", metavar="HOSTS", help="comma-separated host or group names")
        p.add_argument("--accept-new-host-keys", action="store_true", help="first contact: pin new keys")
        p.add_argument("--known-hosts", metavar="FILE", help="default: known_hosts beside the inventory")
        if name == "preflight":
            p.add_argument("--payload-size", metavar="SIZE", help="free disk needed on each host (8GiB)")
            continue
        p.add_argument("--bundle", required=True, metavar="BUNDLE", help="a bundle, volume or volume index")
        p.add_argument("--trust", metavar="ROOT", help="default: the root stored in the state directory")
        p.add_argument("--state-dir", metavar="DIR", help="default: $ENCLAVE_STATE_DIR or /var/lib/enclave")
        p.add_argument("--receipt", metavar="PATH", help="also write the receipt here (a new file)")
        p.add_argument(
            "--audit-key",
            metavar="KEY",
            help="a key of the audit role: signs the receipt, and the gateway's log on the hosts",
        )
        p.add_argument("--check", action="store_true", help="audit: report open findings, change nothing")
        p.add_argument("--report", metavar="PATH", help="write the run report (JSON) here")
        p.add_argument("--checklist-dir", metavar="DIR", help="write one CKLB checklist per host here")
        p.add_argument(
            "--attestations", action="append", default=[], metavar="DIR", help="merge valid attestations"
        )
        p.add_argument(
            "--gateway-tls",
            metavar="DIR",
            help="mutual TLS for the gateways: DIR/ca.pem, [crl.pem], HOST/gateway.pem|.key, "
            "HOST/agent.pem|.key (checked before any host is contacted; default: plain HTTP)",
        )

    p = sub(top, "demo", cmd_demo, "run the whole lifecycle locally on the SmolLM2 model")
    p.add_argument("--down", action="store_true", help="remove what the demo made")
    from enclave.clihelp import add_commands, finish
    from enclave.evidence.commands import add_commands as add_evidence_commands

    add_evidence_commands(top, sub)  # evidence build|verify, attest
    add_commands(top, sub, parser)
    return finish(parser)  # repeatable flags, group listings, exit codes (enclave.clihelp)


def main(argv: Sequence[str] | None = None) -> int:
    from enclave.cliout import run

    return run(build_parser().parse_args, argv)  # errors -> exit codes, output, --json (cliout)


if __name__ == "__main__":
    sys.exit(main())
