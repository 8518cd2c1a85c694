"""Every way a bundle can be wrong: the exit code, and nothing published."""

from __future__ import annotations

import base64
import json
import tarfile
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from enclave.admission import Admission
from enclave.cli import main
from enclave.errors import EnclaveError
from enclave.trust.root import TrustRoot
from tests.conftest import BuildFn, Keys, make_root
from tests.tarsurgery import Part, join, split

NOW = datetime.now(UTC)
Surgery = Callable[[list[Part]], list[Part]]


def run_verify(bundle: Path, root: Path, target: Path, *extra: str) -> int:
    code = main(["bundle", "verify", str(bundle), "--trust", str(root), "--extract-to", str(target), *extra])
    assert not target.exists(), "nothing may be published on failure"
    assert not list(target.parent.glob(f".{target.name}.staging-*")), "staging must be removed"
    return code


def _edit_envelope(parts: list[Part], edit: Callable[[dict[str, object]], None]) -> list[Part]:
    doc = json.loads(parts[0].data)
    edit(doc)
    return [parts[0].with_data(json.dumps(doc, separators=(",", ":"), sort_keys=True).encode()), *parts[1:]]


def _flip_b64(text: str, at: int = 10) -> str:
    raw = bytearray(base64.b64decode(text))
    raw[at] ^= 0x01
    return base64.b64encode(bytes(raw)).decode()


def _flip_payload(doc: dict[str, object]) -> None:
    doc["payload"] = _flip_b64(str(doc["payload"]), 40)


def _flip_signature(doc: dict[str, object]) -> None:
    sigs = doc["signatures"]
    assert isinstance(sigs, list)
    sigs[0]["sig"] = _flip_b64(sigs[0]["sig"])


def _duplicate_signature(doc: dict[str, object]) -> None:
    sigs = doc["signatures"]
    assert isinstance(sigs, list)
    sigs.append(dict(sigs[0]))


def _content(parts: list[Part], name: str = "content/weights/model.gguf") -> int:
    return next(i for i, p in enumerate(parts) if p.name == name)


def _flip_content(parts: list[Part]) -> list[Part]:
    i = _content(parts)
    data = bytearray(parts[i].data)
    data[len(data) // 2] ^= 0x80
    parts[i] = Part(parts[i].name, parts[i].header, bytes(data), parts[i].mtime, parts[i].mode)
    return parts


def _tar(name: str, kind: bytes = tarfile.REGTYPE, linkname: str = "") -> Part:
    info = tarfile.TarInfo(name)
    info.type, info.linkname, info.mtime = kind, linkname, 0
    return Part.raw(info, b"evil" if kind == tarfile.REGTYPE else b"")


def _insert(part: Part) -> Surgery:
    return lambda parts: [*parts[:2], part, *parts[2:]]


CASES: dict[str, tuple[Surgery, int]] = {
    "flipped byte in content": (_flip_content, 3),
    "flipped byte in envelope payload": (lambda p: _edit_envelope(p, _flip_payload), 4),
    "flipped byte in a signature": (lambda p: _edit_envelope(p, _flip_signature), 4),
    "same key signing twice": (lambda p: _edit_envelope(p, _duplicate_signature), 4),
    "member added": (lambda p: [*p, Part.regular("content/weights/extra.bin", b"x", p[1].mtime)], 3),
    "member removed": (lambda p: [q for q in p if q.name != "content/policy/policy.yaml"], 3),
    "member renamed": (
        lambda p: [q.renamed("content/weights/m.gguf") if q.name.endswith("model.gguf") else q for q in p],
        3,
    ),
    "member reordered before the envelope": (lambda p: [p[1], p[0], *p[2:]], 4),
    "content members swapped": (lambda p: [*p[:2], p[3], p[2], *p[4:]], 3),
    "traversal ../": (_insert(_tar("content/../../etc/evil")), 6),
    "absolute path": (_insert(_tar("/etc/evil")), 6),
    "symlink": (_insert(_tar("content/weights/link", tarfile.SYMTYPE, "/etc/passwd")), 6),
    "hardlink": (_insert(_tar("content/weights/hard", tarfile.LNKTYPE, "sbom.cdx.json")), 6),
    "device": (_insert(_tar("content/weights/dev", tarfile.CHRTYPE)), 6),
    "fifo": (_insert(_tar("content/weights/fifo", tarfile.FIFOTYPE)), 6),
    "directory": (_insert(_tar("content/weights/dir", tarfile.DIRTYPE)), 6),
    "duplicate name": (lambda p: [*p[:3], p[2], *p[3:]], 6),
    "case-colliding name": (lambda p: [*p[:3], p[2].renamed(p[2].name.upper()), *p[3:]], 6),
    "size disagrees with statement": (
        lambda p: [q.with_data(q.data + b"!") if q.name.endswith("policy.yaml") else q for q in p],
        3,
    ),
    "non-canonical header (mtime changed)": (
        lambda p: [
            Part.regular(q.name, q.data, q.mtime + 1) if q.name.endswith("policy.yaml") else q for q in p
        ],
        3,
    ),
    "empty archive (no envelope)": (lambda p: [], 4),
}


@pytest.mark.parametrize("case", list(CASES))
def test_tampered_bundle_is_refused(case: str, build: BuildFn, root_path: Path, tmp_path: Path) -> None:
    surgery, code = CASES[case]
    bundle = join(surgery(split(build())), tmp_path / "tampered.bundle")
    assert run_verify(bundle, root_path, tmp_path / "out") == code


def test_untampered_control_passes(build: BuildFn, root_path: Path, tmp_path: Path) -> None:
    bundle = join(split(build()), tmp_path / "rejoined.bundle")  # surgery round trip is lossless
    assert (
        main(
            ["bundle", "verify", str(bundle), "--trust", str(root_path), "--extract-to", str(tmp_path / "o")]
        )
        == 0
    )
    assert (tmp_path / "o" / "content" / "weights" / "model.gguf").is_file()


@pytest.mark.parametrize("cut", [1, 600, 1024 * 1024 + 7, -1])
def test_truncated_bundle(cut: int, build: BuildFn, root_path: Path, tmp_path: Path) -> None:
    blob = build().read_bytes()
    bundle = tmp_path / "cut.bundle"
    bundle.write_bytes(blob[: len(blob) - cut] if cut > 0 else blob[: len(blob) // 2])
    assert run_verify(bundle, root_path, tmp_path / "out") == 3


def test_trailing_data_is_refused(build: BuildFn, root_path: Path, tmp_path: Path) -> None:
    bundle = build()
    with bundle.open("ab") as handle:
        handle.write(b"\x00" * 10240)
    assert run_verify(bundle, root_path, tmp_path / "out") == 3


def test_untrusted_signer(build: BuildFn, keys: Keys, root_path: Path, tmp_path: Path) -> None:
    bundle = build(signers=(keys.stranger, keys.mldsa))
    assert run_verify(bundle, root_path, tmp_path / "out") == 4


def test_only_classical_signatures_fail_hybrid_rule(build: BuildFn, keys: Keys, tmp_path: Path) -> None:
    root = make_root(keys, tmp_path / "r.json", threshold=2)
    bundle = build(signers=(keys.ecdsa, keys.ecdsa2))  # two distinct trusted keys, both classical
    assert run_verify(bundle, root, tmp_path / "out") == 4
    relaxed = make_root(keys, tmp_path / "r2.json", threshold=2, hybrid=False)
    assert main(["bundle", "verify", str(bundle), "--trust", str(relaxed)]) == 0


def test_threshold_short(build: BuildFn, keys: Keys, tmp_path: Path) -> None:
    root = make_root(keys, tmp_path / "r.json", threshold=3)
    assert run_verify(build(), root, tmp_path / "out") == 4


def test_expired_root(build: BuildFn, keys: Keys, root_path: Path, tmp_path: Path) -> None:
    bundle = build()
    later = (NOW + timedelta(days=31)).strftime("%Y-%m-%dT%H:%M:%SZ")  # --at never extracts
    assert main(["bundle", "verify", str(bundle), "--trust", str(root_path), "--at", later]) == 4


def test_root_not_signed_by_its_root_role(build: BuildFn, keys: Keys, tmp_path: Path) -> None:
    path = make_root(keys, tmp_path / "r.json")
    doc = json.loads(path.read_text())
    doc["signed"]["roles"]["bundle"]["threshold"] = 1  # edited after signing
    path.write_text(json.dumps(doc))
    assert run_verify(build(), path, tmp_path / "out") == 4


def test_existing_target_is_not_touched(build: BuildFn, root_path: Path, tmp_path: Path) -> None:
    target = tmp_path / "exists"
    target.mkdir()
    (target / "keep").write_text("mine")
    assert (
        main(["bundle", "verify", str(build()), "--trust", str(root_path), "--extract-to", str(target)]) == 2
    )
    assert (target / "keep").read_text() == "mine"


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_random_byte_flips_never_verify(
    data: st.DataObject, keys: Keys, tmp_path_factory: pytest.TempPathFactory
) -> None:
    """Flip random bytes anywhere in a real bundle: verification must never succeed."""
    cache = tmp_path_factory.getbasetemp() / "fuzz"
    if not cache.exists():
        cache.mkdir()
        from enclave.bundle.build import build_bundle
        from tests.conftest import write_inputs

        src = write_inputs(cache / "src", weights_size=1024 * 1024 + 5)
        (src / "bundle.yaml").write_text(
            "apiVersion: enclave/v1\nkind: Bundle\nmetadata: {name: f, version: 1.0.0}\n"
            "spec:\n  chunkSize: 1MiB\n  components:\n    - {name: w, kind: model, path: ./weights}\n"
            "    - {name: p, kind: playbooks, path: ./playbooks}\n"
        )
        build_bundle(src / "bundle.yaml", cache / "out", [keys.ecdsa, keys.mldsa], show_progress=False)
        make_root(keys, cache / "root.json")
    blob = bytearray((cache / "out" / "f-1.0.0.bundle").read_bytes())
    root = TrustRoot.load(cache / "root.json")
    flips = data.draw(st.lists(st.integers(0, len(blob) - 1), min_size=1, max_size=3, unique=True))
    for position in flips:
        blob[position] ^= data.draw(st.integers(1, 255))
    candidate = cache / "fuzzed.bundle"
    candidate.write_bytes(bytes(blob))
    with pytest.raises(EnclaveError):
        Admission(trust=root, at=NOW).verify(candidate)


def test_content_flip_names_the_member_and_chunk(build: BuildFn, root_path: Path, tmp_path: Path) -> None:
    bundle = join(_flip_content(split(build())), tmp_path / "t.bundle")
    pattern = r"content/weights/model.gguf'?: chunk 1 digest mismatch"
    with pytest.raises(EnclaveError, match=pattern) as caught:
        Admission(trust=root_path, at=NOW).verify(bundle)
    assert caught.value.exit_code == 3
