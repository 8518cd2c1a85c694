"""Kits without the network: wheels are small fakes, so what is checked is the kit's form, its
signature rules and the bootstrap check (enclave/kit/bootstrap.py, with the real openssl).
tests/integration/test_kit.py builds a real kit and installs it offline."""

from __future__ import annotations

import base64
import hashlib
import json
import re
import sys
import zipfile
from collections.abc import Callable, Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from enclave.canonical import canonical
from enclave.cli import main
from enclave.errors import EnclaveError, IntegrityError, TrustError, UsageError
from enclave.kit import bootstrap
from enclave.kit import build as kitbuild
from enclave.kit.build import build_kit, platform_tags
from enclave.kit.install import install_kit, kit_in_bundle, verify_kit
from enclave.trust.dsse import IN_TOTO_PAYLOAD_TYPE, Envelope
from enclave.trust.keys import SigningKey
from enclave.trust.root import TrustRoot
from tests.conftest import Keys, make_root
from tests.unit.test_sbom import validate

PACKAGE = Path(bootstrap.__file__).parent


def fake_wheel(directory: Path, name: str, version: str, extras: Sequence[str] = ()) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / f"{name}-{version}-py3-none-any.whl"
    metadata = f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n"
    metadata += "".join(f"Provides-Extra: {e}\n" for e in extras) + "Requires-Dist: dep>=1\n\nREADME\n"
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr(f"{name}-{version}.dist-info/METADATA", metadata)
        archive.writestr(f"{name}/__init__.py", f"# {name} {version}\n")
    return path


BuildKit = Callable[..., Path]


@pytest.fixture
def make_kit(tmp_path: Path, keys: Keys, monkeypatch: pytest.MonkeyPatch) -> BuildKit:
    own = fake_wheel(
        tmp_path / "wheels", "enclave", "0.1.0", ["provision", "runtime", "images", "all", "dev"]
    )
    deps = [
        fake_wheel(tmp_path / "wheels", "dep", "1.2"),
        fake_wheel(tmp_path / "wheels", "other_dep", "2.0"),
    ]

    def dependencies(wheel: Path, extras: Sequence[str], python: str, platforms: Sequence[str]) -> list[Path]:
        assert wheel == own
        return deps

    monkeypatch.setattr(kitbuild, "project_wheel", lambda: own)
    monkeypatch.setattr(kitbuild, "dependencies", dependencies)
    counter = iter(range(100))

    def _make(signers: Sequence[SigningKey] | None = None, **options: object) -> Path:
        out = tmp_path / f"kit{next(counter)}"
        build_kit(out, list(signers or (keys.ecdsa, keys.mldsa)), **options)  # type: ignore[arg-type]
        return out

    return _make


@pytest.fixture
def root(keys: Keys, tmp_path: Path) -> Path:
    return make_root(keys, tmp_path / "root.json")


def now() -> datetime:
    return datetime.now(UTC)


def bootstrap_code(kit: Path, root: Path) -> int:
    return bootstrap.main([str(kit), "--trust", str(root)])


def test_a_kit_is_signed_hash_pinned_and_complete(
    make_kit: BuildKit, root: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    kit = make_kit(extras=["provision"], python="3.12", platforms=["manylinux_2_28_x86_64"])
    names = sorted(p.name for p in kit.iterdir())
    assert names == sorted(
        ["dep-1.2-py3-none-any.whl", "enclave-0.1.0-py3-none-any.whl", "other_dep-2.0-py3-none-any.whl",
         "install.sh", "kit.dsse.json", "requirements.txt", "sbom.cdx.json", "verify-kit.py"]
    )  # fmt: skip
    pins = [line for line in (kit / "requirements.txt").read_text().splitlines() if not line.startswith("#")]
    sha = {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in kit.glob("*.whl")}
    assert pins == [
        f"dep==1.2 --hash=sha256:{sha['dep-1.2-py3-none-any.whl']}",
        f"enclave[provision]==0.1.0 --hash=sha256:{sha['enclave-0.1.0-py3-none-any.whl']}",
        f"other-dep==2.0 --hash=sha256:{sha['other_dep-2.0-py3-none-any.whl']}",
    ]
    assert (kit / "verify-kit.py").read_bytes() == (PACKAGE / "bootstrap.py").read_bytes()
    assert (kit / "install.sh").read_bytes() == (PACKAGE / "install.sh").read_bytes()
    assert (kit / "install.sh").stat().st_mode & 0o111
    sbom = validate((kit / "sbom.cdx.json").read_bytes())  # CycloneDX 1.6, strictly
    wheels = {c["name"]: c for c in sbom["components"]}["wheels"]
    assert {c.get("purl", "").split("?")[0] for c in wheels["components"]} == {
        "pkg:pypi/dep@1.2", "pkg:pypi/enclave@0.1.0", "pkg:pypi/other-dep@2.0"
    }  # fmt: skip
    verified = verify_kit(kit, TrustRoot.load(root), now())
    assert (verified.statement.python, verified.statement.extras) == ("3.12", ("provision",))
    assert verified.statement.platforms == ("manylinux_2_28_x86_64",)
    assert len(verified.signers) == 2 and len(verified.statement.files) == 7  # all but kit.dsse.json
    assert bootstrap_code(kit, root) == 0
    out = capsys.readouterr().out
    assert (
        "signed by 1 ECDSA P-384 key(s)" in out and "7 files" in out and "(ML-DSA-87) not checked here" in out
    )


def test_build_options_are_checked(make_kit: BuildKit, keys: Keys, tmp_path: Path) -> None:
    with pytest.raises(
        UsageError,
        match=re.escape("--extras nope: not an extra of enclave (have: all, images, provision, runtime)"),
    ):
        make_kit(extras=["nope"])
    with pytest.raises(UsageError, match="--extras dev"):
        make_kit(extras=["dev"])
    with pytest.raises(UsageError, match=re.escape("--python 3.10")):
        make_kit(python="3.10")
    kit = make_kit()
    with pytest.raises(UsageError, match="already exists"):
        build_kit(kit, [keys.ecdsa])
    with pytest.raises(UsageError, match="give --key"):
        build_kit(tmp_path / "unsigned", [])
    assert not list(tmp_path.glob(".kit*"))  # no staging directory left behind


def test_platform_tags_admit_older_glibc() -> None:
    tags = platform_tags(["manylinux_2_28_x86_64", "win_amd64"])
    assert tags[0] == "manylinux_2_28_x86_64" and tags[-1] == "win_amd64"
    assert {"manylinux_2_17_x86_64", "manylinux2014_x86_64", "manylinux1_x86_64"} <= set(tags)
    assert "manylinux_2_29_x86_64" not in tags and len(tags) == len(set(tags))


def _wheel(kit: Path) -> Path:
    return next(kit.glob("dep-*.whl"))


def _alter(kit: Path) -> None:
    data = bytearray(_wheel(kit).read_bytes())
    data[10] ^= 1
    _wheel(kit).write_bytes(bytes(data))


def _resign(kit: Path, edit: Callable[[dict[str, object]], None], signers: Sequence[SigningKey]) -> None:
    envelope = Envelope.from_json((kit / "kit.dsse.json").read_bytes())
    doc = json.loads(envelope.payload)
    edit(doc)
    fresh = Envelope(IN_TOTO_PAYLOAD_TYPE, canonical(doc))
    for key in signers:
        fresh.sign(key)
    (kit / "kit.dsse.json").write_bytes(fresh.to_json())


def _rename_first(doc: dict[str, object]) -> None:
    subject, files = doc["subject"], doc["predicate"]["files"]  # type: ignore[index]
    subject[0]["name"] = files[0]["name"] = "../escape"  # type: ignore[index]


DAMAGE: dict[str, tuple[Callable[[Path, Keys], object], int, str]] = {
    "altered wheel": (lambda kit, _k: _alter(kit), 3, "dep-1.2-py3-none-any.whl: differs"),
    "extra file": (lambda kit, _k: (kit / "evil-1.0-py3-none-any.whl").write_bytes(b"x"), 3, "extra file"),
    "missing file": (lambda kit, _k: _wheel(kit).unlink(), 3, "missing file"),
    "statement edited": (
        lambda kit, _k: (kit / "kit.dsse.json").write_bytes(
            (kit / "kit.dsse.json").read_bytes().replace(b'"payload":"', b'"payload":"IA', 1)
        ),
        4,
        "",
    ),
    "untrusted signer": (lambda kit, k: _resign(kit, lambda _d: None, [k.stranger]), 4, "bundle"),
    "bad name, signed": (lambda kit, k: _resign(kit, _rename_first, [k.ecdsa, k.mldsa]), 3, "not a kit file"),
}  # fmt: skip


@pytest.mark.parametrize("damage", sorted(DAMAGE))
def test_a_damaged_kit_is_refused_by_both_checks(
    damage: str, make_kit: BuildKit, root: Path, keys: Keys, capsys: pytest.CaptureFixture[str]
) -> None:
    kit = make_kit()
    change, code, message = DAMAGE[damage]
    change(kit, keys)
    assert bootstrap_code(kit, root) == code
    err = capsys.readouterr().err
    assert err.startswith("verify-kit: REFUSED: ") and message in err
    with pytest.raises(EnclaveError) as caught:
        verify_kit(kit, TrustRoot.load(root), now())
    assert caught.value.exit_code == code and message in str(caught.value)


def test_the_bootstrap_checks_ecdsa_only_enclave_the_whole_rule(
    make_kit: BuildKit, root: Path, keys: Keys
) -> None:
    kit = make_kit(signers=[keys.ecdsa])  # threshold 2 and the hybrid rule are not met
    assert bootstrap_code(kit, root) == 0  # what the bootstrap can check holds: docs say so
    with pytest.raises(TrustError, match="1 of threshold 2"):
        verify_kit(kit, TrustRoot.load(root), now())
    only_pq = make_kit(signers=[keys.mldsa])
    assert bootstrap_code(only_pq, root) == 4


def test_an_expired_root_refuses_the_kit(make_kit: BuildKit, keys: Keys, tmp_path: Path) -> None:
    kit = make_kit()
    old = make_root(keys, tmp_path / "old.json", expires=datetime.now(UTC) - timedelta(days=1))
    assert bootstrap_code(kit, old) == 4
    with pytest.raises(TrustError, match="expired"):
        verify_kit(kit, TrustRoot.load(old), now())


def test_a_bad_signature_by_a_trusted_key_is_refused(make_kit: BuildKit, root: Path) -> None:
    kit = make_kit()
    doc = json.loads((kit / "kit.dsse.json").read_bytes())
    sig = bytearray(base64.b64decode(doc["signatures"][0]["sig"]))
    sig[-1] ^= 1
    doc["signatures"][0]["sig"] = base64.b64encode(bytes(sig)).decode()
    (kit / "kit.dsse.json").write_text(json.dumps(doc))
    assert bootstrap_code(kit, root) == 4


def test_install_refuses_a_kit_for_another_python(make_kit: BuildKit, root: Path) -> None:
    other = "3.12" if sys.version_info[:2] != (3, 12) else "3.11"
    verified = verify_kit(make_kit(python=other), TrustRoot.load(root), now())
    with pytest.raises(UsageError, match="the kit is for Python"):
        install_kit(verified)


def test_a_kit_travels_in_a_bundle(make_kit: BuildKit, root: Path, keys: Keys, tmp_path: Path) -> None:
    kit = make_kit()
    manifest = tmp_path / "bundle.yaml"
    manifest.write_text(
        "apiVersion: enclave/v1\nkind: Bundle\nmetadata: {name: upgrade, version: 1.0.0}\n"
        f"spec:\n  components:\n    - {{name: enclave-kit, kind: wheelhouse, path: {kit}}}\n"
    )
    assert main(["bundle", "build", str(manifest), "--out", str(tmp_path / "out"),
                 "--key", str(keys.path("ecdsa")), "--key", str(keys.path("mldsa"))]) == 0  # fmt: skip
    published = tmp_path / "published"
    bundle = tmp_path / "out" / "upgrade-1.0.0.bundle"
    assert main(["bundle", "verify", str(bundle), "--trust", str(root), "--extract-to", str(published)]) == 0
    trusted = TrustRoot.load(root)
    found = kit_in_bundle(published, trusted, now())
    assert found == published / "content" / "enclave-kit"
    assert verify_kit(found, trusted, now()).statement.name == "enclave"
    with pytest.raises(UsageError, match=re.escape("wheelhouse components ['enclave-kit']")):
        kit_in_bundle(published, trusted, now(), "other")
    wheel = _wheel(found)
    wheel.chmod(0o644)
    _alter(found)
    with pytest.raises(IntegrityError, match="differs from the bundle's signed statement"):
        kit_in_bundle(published, trusted, now())
