"""The low side's forecast: will the high side accept these signatures?

`bundle build`, `sign` and `split` with `--trust ROOT` compare the keys that sign (or signed)
with the root's `bundle` role before the bundle crosses: a key the role does not list, a
threshold or hybrid rule the signatures do not meet yet, an expired root, and a model
component that gets no OpenSSF model signature (model_signing verifies ECDSA P-384 only).
These are warnings, not errors: a bundle is often built by one key holder and co-signed by
another (`enclave bundle sign`), so the first signature alone rarely meets the rule.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from pathlib import Path

from enclave.errors import EnclaveError
from enclave.trust.dsse import Envelope, verify_signatures
from enclave.trust.keys import PublicKey, SigningKey
from enclave.trust.root import TrustRoot


def signature_warnings(root: TrustRoot, signers: Sequence[PublicKey], what: str, now: datetime) -> list[str]:
    """What keeps `signers` from meeting the root's bundle role for `what`."""
    warnings = []
    try:
        root.check(now)
    except EnclaveError as exc:
        warnings.append(f"{root.source}: {exc}: the high side will refuse everything under it")
    allowed = set(root.roles["bundle"].keyids)
    warnings += [
        f"key {key.keyid[:16]} ({key.algorithm}) is not in the bundle role of trust root "
        f"v{root.version}: its signature on {what} will not count"
        for key in signers
        if key.keyid not in allowed
    ]
    check = root.check_role("bundle", signers)
    if not check.met:
        warnings.append(
            f"{what} will not verify under trust root v{root.version} yet: {check.explain()} "
            "(co-sign it with `enclave bundle sign` before it crosses)"
        )
    return warnings


def envelope_signers(envelope: Envelope, root: TrustRoot) -> list[PublicKey]:
    """The bundle-role keys whose signatures on `envelope` are valid."""
    return list(verify_signatures(envelope, root.role_keys("bundle")).keys)


def model_signature_warning(models: Sequence[str], signers: Sequence[PublicKey]) -> list[str]:
    """A model component without an ECDSA P-384 signer gets no OpenSSF model signature."""
    if not models or any(key.algorithm == "ecdsa-p384" for key in signers):
        return []
    return [
        f"no ECDSA P-384 --key: model component(s) {', '.join(models)} get no OpenSSF model "
        "signature (model_signing verifies ECDSA P-384 only); add an ECDSA key to the build"
    ]


def _bundle_envelope(bundle: Path) -> Envelope:
    from enclave.bundle.source import ArchiveSource
    from enclave.bundle.verify import read_envelope

    with ArchiveSource([bundle]) as source:
        return read_envelope(source).envelope


def for_build(root: TrustRoot, manifest: Path, keys: Sequence[SigningKey], now: datetime) -> list[str]:
    """Before `bundle build`: the build's own signatures, and its model signatures."""
    from enclave.bundle.manifest import load_manifest

    signers = [key.public for key in keys]
    models = [c.name for c in load_manifest(manifest).components if c.kind == "model"]
    return signature_warnings(root, signers, "the bundle", now) + model_signature_warning(models, signers)


def for_sign(root: TrustRoot, bundle: Path, key: SigningKey, now: datetime) -> list[str]:
    """Before `bundle sign`: the valid signatures already there, plus this one."""
    signers = [*envelope_signers(_bundle_envelope(bundle), root), key.public]
    return signature_warnings(root, signers, f"{bundle.name} with this signature", now)


def for_split(root: TrustRoot, bundle: Path, keys: Sequence[SigningKey], now: datetime) -> list[str]:
    """Before `bundle split`: the bundle's signatures, and the volume index's (same rule)."""
    signers = envelope_signers(_bundle_envelope(bundle), root)
    return signature_warnings(root, signers, bundle.name, now) + signature_warnings(
        root, [key.public for key in keys], "the volume index", now
    )


def forecast(trust: str | None, check: Callable[[TrustRoot, datetime], list[str]]) -> list[str]:
    """`--trust ROOT` given: run `check` against it as of now (no --trust: nothing to say)."""
    if not trust:
        return []
    return check(TrustRoot.load(Path(trust)), datetime.now(UTC))
