"""What `enclave provision` tells enclave_deploy about a verified bundle, and the checks it makes
before any host is contacted when the bundle carries the safety gateway."""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from enclave.admission import Admission
from enclave.bundle.statement import BundleStatement, ComponentEntry, ImageRecord, Member
from enclave.errors import KeyNotInRole, PolicyError, UsageError
from enclave.provision import Options
from enclave.provision.provision import deploy_secrets, deploy_vars, served_model_file
from enclave.provision.push import Payload
from enclave.trust.keys import SigningKey
from enclave.trust.root import TrustRoot, sign_document
from tests.conftest import Keys

REPO = Path(__file__).resolve().parents[2]
GATEWAY_ID = "sha256:" + "a" * 64
SERVER_ID = "sha256:" + "b" * 64


def image(ref: str, image_id: str) -> ImageRecord:
    return ImageRecord(id=image_id, manifest_digest="sha256:" + "c" * 64, platform="linux/amd64", ref=ref)


def statement(*components: ComponentEntry) -> BundleStatement:
    names = [m for c in components for m in c.members]
    return BundleStatement(
        name="assistant",
        version="1.2.3",
        created="2026-11-26T00:00:00Z",
        digest="sha384",
        chunk_size=1 << 20,
        components=components,
        members=tuple(Member(n, 10, 0o644, f"{i:096x}") for i, n in enumerate(names)),
    )


WEIGHTS = ComponentEntry("weights", "model", ("content/weights/README.md", "content/weights/m.gguf"), "gguf")
POLICY = ComponentEntry("policy", "policy", ("content/policy/default.yaml",))
SERVER = ComponentEntry(
    "model-server", "image", ("content/model-server/index.json",), image=image("srv:1", SERVER_ID)
)
GATEWAY = ComponentEntry("gateway", "image", ("content/gateway/index.json",), image=image("gw:1", GATEWAY_ID))
PAYLOAD = Payload("/var/lib/enclave/incoming/assistant-1.2.3", "sha384", 1 << 20, ())


def options(key: Path | None) -> Options:
    return Options(inventory=Path("inv"), bundle=Path("b"), admission=Admission(), deploy_key=key)


def root_with_audit(keys: Keys, audit: SigningKey, approvers: int = 3) -> TrustRoot:
    signed = TrustRoot.create(
        {
            "root": [keys.root.public],
            "bundle": [keys.ecdsa.public, keys.mldsa.public],
            "audit": [audit.public],
            "approver": [SigningKey.generate("ecdsa-p384").public for _ in range(approvers)],
        },
        {"approver": 2},
        datetime.now(UTC) + timedelta(days=1),
    )
    return TrustRoot.from_json(sign_document(signed, [keys.root]), "root.json")


def test_deploy_vars_name_the_images_the_served_weights_and_the_policy() -> None:
    s = statement(WEIGHTS, SERVER, GATEWAY, POLICY)
    out = deploy_vars(s, PAYLOAD)
    assert out["enclave_bundle_dir"] == PAYLOAD.remote_dir
    assert out["enclave_deploy_images"] == [
        {"component": "model-server", "dir": "content/model-server", "id": SERVER_ID, "ref": "srv:1"},
        {"component": "gateway", "dir": "content/gateway", "id": GATEWAY_ID, "ref": "gw:1"},
    ]
    assert out["enclave_deploy_model_file"] == "content/weights/m.gguf"  # the GGUF, not the README
    assert out["enclave_deploy_model_digest"] == "sha384:" + f"{1:096x}"
    assert out["enclave_deploy_policy_file"] == "content/policy/default.yaml"


def test_deploy_vars_pin_the_guard_by_the_signed_digest_of_its_manifest() -> None:
    guard = ComponentEntry(
        "guard", "guard", tuple(f"content/guard/{n}" for n in ("card.json", "guard.json", "weights.npy"))
    )
    s = statement(WEIGHTS, SERVER, GATEWAY, POLICY, guard)
    out = deploy_vars(s, PAYLOAD)
    index = [m.name for m in s.members].index("content/guard/guard.json")
    assert out["enclave_deploy_guard_dir"] == "content/guard"
    assert out["enclave_deploy_guard_digest"] == "sha384:" + f"{index:096x}"
    without = deploy_vars(statement(WEIGHTS, SERVER, GATEWAY, POLICY), PAYLOAD)
    assert (without["enclave_deploy_guard_dir"], without["enclave_deploy_guard_digest"]) == ("", "")


def test_nothing_to_deploy_in_check_mode_or_without_a_model() -> None:
    out = deploy_vars(statement(WEIGHTS, SERVER, GATEWAY, POLICY), None)
    assert out["enclave_deploy_images"] == [] and out["enclave_deploy_model_file"] == ""
    assert served_model_file(statement(POLICY)) is None
    only = ComponentEntry("w", "model", ("content/w/weights.safetensors",))
    assert served_model_file(statement(only)) == "content/w/weights.safetensors"


@pytest.fixture
def extracted(tmp_path: Path) -> Path:
    """A verified bundle's tree holding the default policy (it holds requests for 2 approvers)."""
    policy = tmp_path / "bundle" / POLICY.members[0]
    policy.parent.mkdir(parents=True)
    policy.write_bytes((REPO / "bundles" / "policy" / "default.yaml").read_bytes())
    return tmp_path / "bundle"


def test_a_bundle_without_the_gateway_needs_no_key(keys: Keys, tmp_path: Path, extracted: Path) -> None:
    root = root_with_audit(keys, keys.ecdsa2)
    assert deploy_secrets(statement(WEIGHTS, SERVER, POLICY), root, options(None), tmp_path, extracted) == {}


def test_the_gateway_needs_a_key_of_the_audit_role(keys: Keys, tmp_path: Path, extracted: Path) -> None:
    s = statement(WEIGHTS, SERVER, GATEWAY, POLICY)
    root = root_with_audit(keys, keys.ecdsa2)
    with pytest.raises(UsageError, match=r"carries the safety gateway \(image component gateway\)"):
        deploy_secrets(s, root, options(None), tmp_path, extracted)
    stray = re.escape(f"{keys.path('stranger')}: key {keys.stranger.keyid[:16]}")
    with pytest.raises(KeyNotInRole, match=f"^{stray} is not a key of the audit role of trust root v1$"):
        deploy_secrets(s, root, options(keys.path("stranger")), tmp_path, extracted)
    out = deploy_secrets(s, root, options(keys.path("ecdsa2")), tmp_path, extracted)
    assert out["enclave_deploy_audit_key_src"] == str(keys.path("ecdsa2").resolve())
    assert TrustRoot.load(Path(out["enclave_deploy_trust_root_src"])).digest == root.digest


def test_a_policy_the_gateway_would_refuse_stops_the_run_on_the_controller(
    keys: Keys, tmp_path: Path, extracted: Path
) -> None:
    s = statement(WEIGHTS, SERVER, GATEWAY, POLICY)
    short = root_with_audit(keys, keys.ecdsa2, approvers=2)  # the requester cannot approve: 1 < 2
    with pytest.raises(
        PolicyError, match=r"^content/policy/default.yaml: hold rules need 2 approvers"
    ) as info:
        deploy_secrets(s, short, options(keys.path("ecdsa2")), tmp_path, extracted)
    assert info.value.exit_code == 8
    (extracted / POLICY.members[0]).write_text("rules: []\n")
    with pytest.raises(UsageError, match=r"^content/policy/default.yaml:1: rules: unknown key"):
        deploy_secrets(
            s, root_with_audit(keys, keys.ecdsa2), options(keys.path("ecdsa2")), tmp_path, extracted
        )
