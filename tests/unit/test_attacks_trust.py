"""Attacks on names, parsers, volumes, --at and the state directory (issue 16, items 3, 4, 6, 7, 8
and the trust rules of 9): real keys, real signatures, real bundles, through the `enclave`
command, with the exit code that refuses each and nothing published or recorded."""

from __future__ import annotations

import ast
import base64
import hashlib
import json
import re
import shutil
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from enclave.bundle.statement import NAME, BundleStatement
from enclave.bundle.volumes import split_bundle, write_index
from enclave.canonical import canonical
from enclave.cli import main
from enclave.trust.dsse import IN_TOTO_PAYLOAD_TYPE, Envelope
from enclave.trust.root import TrustRoot
from tests.conftest import BuildFn, Keys, RotateFn, make_root
from tests.tarsurgery import join, resign, split
from tests.unit.test_rotation import raw_root
from tests.unit.test_threat_model import verify

REPO = Path(__file__).resolve().parents[2]
DEEP = b"[" * 100_000
VOLUME = 1024 * 1024


def _at(delta: timedelta) -> str:
    return (datetime.now(UTC) + delta).strftime("%Y-%m-%dT%H:%M:%SZ")


# -- item 3: the signed name and version become a path --------------------------------------------------
def _set(*path: str, value: Any) -> Callable[[dict[str, Any]], None]:
    def edit(statement: dict[str, Any]) -> None:
        doc = statement
        for key in path[:-1]:
            doc = doc[key]
        doc[path[-1]] = value

    return edit


def _component_named(value: str) -> Callable[[dict[str, Any]], None]:
    def edit(statement: dict[str, Any]) -> None:
        statement["predicate"]["components"][1]["name"] = value

    return edit


UNSAFE_NAMES: dict[str, Callable[[dict[str, Any]], None]] = {
    "name ../../../outside/evil": _set("predicate", "name", value="../../../outside/evil"),
    "name absolute": _set("predicate", "name", value="/ABSOLUTE/evil"),  # /ABSOLUTE: the test's tmp_path
    "name with a slash": _set("predicate", "name", value="a/b"),
    "name ..": _set("predicate", "name", value=".."),
    "name with capitals": _set("predicate", "name", value="Demo"),
    "name of 65 characters": _set("predicate", "name", value="a" * 65),
    "version ../../x": _set("predicate", "version", value="../../x"),
    "version 1.0.0/../../x": _set("predicate", "version", value="1.0.0/../../x"),
    "version not semver": _set("predicate", "version", value="1.0"),
    "component ../x": _component_named("../x"),
}


@pytest.mark.parametrize("case", list(UNSAFE_NAMES))
def test_signed_name_or_version_that_is_not_one_safe_segment_is_refused(
    case: str, build: BuildFn, keys: Keys, root_path: Path, tmp_path: Path, state_dir: Path
) -> None:
    def edit(statement: dict[str, Any]) -> None:
        UNSAFE_NAMES[case](statement)
        statement["predicate"]["name"] = statement["predicate"]["name"].replace("/ABSOLUTE", str(tmp_path))

    bundle = resign(build(), keys, tmp_path / "t.bundle", edit)
    assert verify(bundle, "--trust", str(root_path), target=tmp_path / "out") == 6
    assert not (state_dir.parent / "outside").exists() and not (tmp_path / "evil").exists()
    assert not (state_dir / "rollback.json").exists() and not (state_dir / "store").exists()


def test_bundle_name_syntax_is_the_manifest_schema_s() -> None:
    schema = json.loads((REPO / "manifests" / "schema" / "bundle.schema.json").read_text())
    pattern = schema["properties"]["metadata"]["properties"]["name"]["pattern"]
    for name in ["a", "demo", "a-b", "x" * 64, "x" * 65, "-a", "a-", "A", "a_b", "a.b", ".."]:
        assert bool(re.fullmatch(pattern.strip("^$"), name)) == bool(NAME.fullmatch(name)), name


# -- item 4: one strict parser for every signed or trusted document ----------------------------------------
def _duplicate_in_envelope(parts: list[Any]) -> list[Any]:
    raw = parts[0].data
    evil = base64.b64encode(b'{"_type":"something else"}').decode()
    return [
        parts[0].with_data(raw.replace(b'{"payload":', b'{"payload":"%s","payload":' % evil.encode(), 1)),
        *parts[1:],
    ]


def test_duplicate_key_in_the_envelope_is_refused(build: BuildFn, root_path: Path, tmp_path: Path) -> None:
    bundle = join(_duplicate_in_envelope(split(build())), tmp_path / "dup.bundle")
    assert verify(bundle, "--trust", str(root_path), target=tmp_path / "out") == 4


def test_duplicate_key_in_the_signed_statement_is_refused(
    build: BuildFn, keys: Keys, root_path: Path, tmp_path: Path
) -> None:
    def edit(statement: dict[str, Any]) -> bytes:
        text = json.dumps(statement, sort_keys=True).encode()
        return text.replace(b'"version": "1.0.0"', b'"version": "9.9.9", "version": "1.0.0"', 1)

    bundle = resign(build(), keys, tmp_path / "t.bundle", edit)
    assert verify(bundle, "--trust", str(root_path), target=tmp_path / "out") == 3


def test_duplicate_key_in_the_root_is_refused(build: BuildFn, root_path: Path) -> None:
    text = root_path.read_bytes()
    root_path.write_bytes(text.replace(b'"_type": "root"', b'"_type": "other", "_type": "root"', 1))
    assert verify(build(), "--trust", str(root_path)) == 4


def test_duplicate_key_in_the_rollback_record_is_refused(
    build: BuildFn, root_path: Path, state_dir: Path
) -> None:
    assert verify(build(version="1.0.0"), "--trust", str(root_path)) == 0
    path = state_dir / "rollback.json"
    path.write_bytes(path.read_bytes().replace(b"{", b'{"format": "other", ', 1))
    assert verify(build(version="2.0.0"), "--trust", str(root_path)) == 5


def test_duplicate_key_in_a_receipt_line_is_refused(build: BuildFn, root_path: Path, state_dir: Path) -> None:
    assert verify(build(), "--trust", str(root_path)) == 0
    log = state_dir / "receipts.log"
    log.write_bytes(log.read_bytes().replace(b'{"payload"', b'{"signatures":[],"payload"', 1))
    assert main(["receipts", "verify", "--trust", str(root_path)]) == 3


def test_duplicate_key_in_the_volume_index_is_refused(
    build: BuildFn, keys: Keys, root_path: Path, tmp_path: Path
) -> None:
    parts, index = split_bundle(build(), VOLUME, [keys.ecdsa, keys.mldsa])
    payload = Envelope.from_json(index.read_bytes()).payload
    evil = Envelope(
        IN_TOTO_PAYLOAD_TYPE, payload.replace(b'{"bundle":', b'{"bundle":"x.bundle","bundle":', 1)
    )
    evil.sign(keys.ecdsa)
    evil.sign(keys.mldsa)
    index.write_bytes(evil.to_json())
    assert verify(parts[0], "--trust", str(root_path), target=tmp_path / "out") == 3


def test_deeply_nested_envelope_member_is_an_unsafe_archive(
    build: BuildFn, root_path: Path, tmp_path: Path
) -> None:
    parts = split(build())
    bundle = join([parts[0].with_data(DEEP), *parts[1:]], tmp_path / "deep.bundle")
    assert verify(bundle, "--trust", str(root_path), target=tmp_path / "out") == 6


def test_deeply_nested_signed_statement_is_an_unsafe_archive(
    build: BuildFn, keys: Keys, root_path: Path, tmp_path: Path
) -> None:
    bundle = resign(build(), keys, tmp_path / "t.bundle", lambda _statement: DEEP)
    assert verify(bundle, "--trust", str(root_path), target=tmp_path / "out") == 6


@pytest.mark.parametrize("data", [DEEP, b" " * ((1 << 20) + 1)], ids=["deep", "over 1 MiB"])
def test_deep_or_oversize_root_is_a_trust_failure(data: bytes, build: BuildFn, tmp_path: Path) -> None:
    root = tmp_path / "root.json"
    root.write_bytes(data)
    assert verify(build(), "--trust", str(root)) == 4


def test_deeply_nested_rollback_record_is_refused(build: BuildFn, root_path: Path, state_dir: Path) -> None:
    assert verify(build(version="1.0.0"), "--trust", str(root_path)) == 0
    (state_dir / "rollback.json").write_bytes(DEEP)
    assert verify(build(version="2.0.0"), "--trust", str(root_path)) == 5


def test_deeply_nested_receipt_line_is_refused(build: BuildFn, root_path: Path, state_dir: Path) -> None:
    assert verify(build(), "--trust", str(root_path)) == 0
    with (state_dir / "receipts.log").open("ab") as log:
        log.write(DEEP + b"\n")
    assert main(["receipts", "verify", "--trust", str(root_path)]) == 3


def test_deeply_nested_volume_index_is_refused(
    build: BuildFn, keys: Keys, root_path: Path, tmp_path: Path
) -> None:
    parts, index = split_bundle(build(), VOLUME, [keys.ecdsa, keys.mldsa])
    index.write_bytes(DEEP)
    assert verify(parts[0], "--trust", str(root_path), target=tmp_path / "out") == 4


# -- item 6: the volume index is bound to its name and to the statement ------------------------------------
def test_a_newer_index_copied_over_an_older_one_is_refused(
    build: BuildFn, keys: Keys, root_path: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "media"
    out.mkdir()
    old_parts, old_index = split_bundle(
        Path(shutil.copy(build(version="1.0.0"), out)), VOLUME, [keys.ecdsa, keys.mldsa]
    )
    _, new_index = split_bundle(
        Path(shutil.copy(build(version="1.1.0"), out)), VOLUME, [keys.ecdsa, keys.mldsa]
    )
    shutil.copyfile(new_index, old_index)  # the newer volumes lie beside it, complete and signed
    assert verify(old_parts[0], "--trust", str(root_path), target=tmp_path / "out") == 3
    assert main(["bundle", "verify-volume", str(old_parts[0]), "--trust", str(root_path)]) == 3
    assert "bound to its name" in capsys.readouterr().err


def test_an_index_naming_another_statement_is_refused(
    build: BuildFn, keys: Keys, root_path: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    parts, index = split_bundle(build(), VOLUME, [keys.ecdsa, keys.mldsa])
    other = split(build())  # same name and version, other content: another statement
    payload = Envelope.from_json(other[0].data).payload
    index.unlink()
    write_index(
        index.with_name(index.name.replace(".volumes.dsse.json", ".bundle")),
        parts,
        BundleStatement.from_payload(payload),
        payload,
        [keys.ecdsa, keys.mldsa],
        VOLUME,
    )
    assert verify(parts[0], "--trust", str(root_path), target=tmp_path / "out") == 3
    assert "names statement" in capsys.readouterr().err


def test_a_volume_the_index_does_not_list_is_refused(
    build: BuildFn, keys: Keys, root_path: Path, tmp_path: Path
) -> None:
    parts, _index = split_bundle(build(), VOLUME, [keys.ecdsa, keys.mldsa])
    stray = parts[0].with_name(parts[0].name[:-3] + "999")
    shutil.copyfile(parts[0], stray)
    assert verify(stray, "--trust", str(root_path), target=tmp_path / "out") == 3


# -- item 7: --at re-checks evidence; it never publishes, and the stored root still decides ------------------
@pytest.mark.parametrize("option", ["--extract-to", "--receipt"])
def test_at_never_extracts_or_writes_a_receipt_file(
    option: str, build: BuildFn, keys: Keys, tmp_path: Path, state_dir: Path
) -> None:
    expired = make_root(keys, tmp_path / "expired.json", expires=datetime.now(UTC) - timedelta(days=1))
    target = tmp_path / "T"
    args = ["bundle", "verify", str(build()), "--trust", str(expired), "--at", _at(-timedelta(days=2))]
    assert main([*args, option, str(target)]) == 2
    assert not target.exists() and not (state_dir / "rollback.json").exists()
    assert not (state_dir / "root.json").exists()


def test_at_does_not_ignore_a_revocation_in_the_stored_root(
    build: BuildFn, keys: Keys, rotate: RotateFn, tmp_path: Path, state_dir: Path
) -> None:
    v1 = make_root(keys, tmp_path / "1.root.json")
    signed_before = build(signers=(keys.ecdsa, keys.mldsa))
    v2 = rotate(v1, [keys.root], revoke=[keys.ecdsa])
    assert main(["trust", "update", str(v2), "--trust", str(v1)]) == 0
    at = _at(timedelta(minutes=1))
    assert verify(signed_before, "--trust", str(v1), "--at", at) == 4  # an old root.json does not help
    assert verify(signed_before, "--at", at) == 4


def test_at_records_nothing(build: BuildFn, root_path: Path, state_dir: Path) -> None:
    assert verify(build(version="2.0.0"), "--trust", str(root_path)) == 0
    before = (state_dir / "rollback.json").read_bytes()
    assert verify(build(version="3.0.0"), "--trust", str(root_path), "--at", _at(timedelta(minutes=1))) == 0
    assert (state_dir / "rollback.json").read_bytes() == before


# -- item 8: a root without a rollback record is a damaged state directory -----------------------------------
def test_deleted_rollback_record_is_refused_until_restored(
    build: BuildFn, root_path: Path, state_dir: Path, tmp_path: Path
) -> None:
    assert verify(build(version="2.0.0"), "--trust", str(root_path)) == 0
    backup = tmp_path / "rollback.json.backup"
    shutil.copyfile(state_dir / "rollback.json", backup)
    (state_dir / "rollback.json").unlink()
    old = build(version="1.0.0")
    assert verify(old, "--trust", str(root_path), target=tmp_path / "out") == 5
    assert main(["trust", "update", "--trust", str(root_path)]) == 5
    assert not (state_dir / "rollback.json").exists(), "refused, never started afresh"
    shutil.copyfile(backup, state_dir / "rollback.json")  # the restore of docs/OPERATIONS.md
    assert verify(old, "--trust", str(root_path)) == 5
    assert verify(build(version="2.1.0"), "--trust", str(root_path)) == 0


def test_a_crash_in_a_new_state_directory_never_leaves_a_root_without_a_record(
    build: BuildFn, root_path: Path, state_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from enclave.trust import state as state_module

    written: list[str] = []
    real = state_module.atomic_write

    def crash_after_one(path: Path, data: bytes, mode: int = 0o644) -> None:
        if written:
            raise KeyboardInterrupt("killed between the two writes")
        written.append(path.name)
        real(path, data, mode)

    monkeypatch.setattr(state_module, "atomic_write", crash_after_one)
    with pytest.raises(KeyboardInterrupt):
        state_module.StateDir.open(state_dir).store_root(TrustRoot.load(root_path))
    assert written == ["rollback.json"] and not (state_dir / "root.json").exists()
    monkeypatch.setattr(state_module, "atomic_write", real)
    assert verify(build(), "--trust", str(root_path)) == 0
    assert {p.name for p in state_dir.iterdir()} >= {"root.json", "rollback.json"}


# -- item 9: the trust root, the rollback record and the statement, exactly as written -------------------
def _root_edit(edit: Callable[[dict[str, Any]], None]) -> Callable[[Keys, Path], Path]:
    def make(keys: Keys, path: Path) -> Path:
        signed = json.loads(make_root(keys, path).read_text())["signed"]
        edit(signed)
        return raw_root(signed, [keys.root], path)

    return make


def _hybrid_role_field(signed: dict[str, Any]) -> None:
    signed["roles"]["bundle"]["comment"] = "x"


ROOTS: dict[str, Callable[[Keys, Path], Path]] = {
    "consistent_snapshot true": _root_edit(lambda s: s.update(consistent_snapshot=True)),
    "consistent_snapshot missing": _root_edit(lambda s: s.pop("consistent_snapshot")),
    "unknown field in signed": _root_edit(lambda s: s.update(delegations={})),
    "unknown field in a key": _root_edit(
        lambda s: next(iter(s["keys"].values())).update(keyid_hash_algorithms=[])
    ),
    "unknown field in a role": _root_edit(_hybrid_role_field),
    "spec_version 2.0.0": _root_edit(lambda s: s.update(spec_version="2.0.0")),
    "spec_version 1.x": _root_edit(lambda s: s.update(spec_version="1.x")),
    "spec_version 1.0": _root_edit(lambda s: s.update(spec_version="1.0")),
}


@pytest.mark.parametrize("case", list(ROOTS))
def test_root_fields_are_exactly_as_written(case: str, build: BuildFn, keys: Keys, tmp_path: Path) -> None:
    root = ROOTS[case](keys, tmp_path / "root.json")
    assert verify(build(), "--trust", str(root)) == 4


def test_root_signature_hex_is_lowercase_only(build: BuildFn, root_path: Path) -> None:
    doc = json.loads(root_path.read_text())
    doc["signatures"][0]["sig"] = doc["signatures"][0]["sig"].upper()
    root_path.write_text(json.dumps(doc))
    assert verify(build(), "--trust", str(root_path)) == 4


def test_rollback_checksum_covers_the_other_three_fields(
    build: BuildFn, root_path: Path, state_dir: Path
) -> None:
    assert verify(build(), "--trust", str(root_path)) == 0
    doc = json.loads((state_dir / "rollback.json").read_text())
    body = {k: doc[k] for k in ("format", "rootVersion", "bundles")}
    assert set(doc) == {*body, "sha256"} and hashlib.sha256(canonical(body)).hexdigest() == doc["sha256"]


def test_differential_base_of_another_name_is_refused(
    build: BuildFn, keys: Keys, root_path: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    base = {"name": "other", "version": "1.0.0", "statementDigest": {"sha256": "0" * 64}}
    bundle = resign(build(), keys, tmp_path / "t.bundle", _set("predicate", "base", value=base))
    assert verify(bundle, "--trust", str(root_path), target=tmp_path / "out") == 3
    assert "predicate.base names bundle 'other'" in capsys.readouterr().err


def test_predicate_volumes_is_not_a_field(
    build: BuildFn, keys: Keys, root_path: Path, tmp_path: Path
) -> None:
    bundle = resign(build(), keys, tmp_path / "t.bundle", _set("predicate", "volumes", value=[]))
    assert verify(bundle, "--trust", str(root_path), target=tmp_path / "out") == 3


def test_threat_model_rows_name_tests_that_exist() -> None:
    """Every `tests/...py::name` in docs/THREAT-MODEL.md is a test function of that file."""
    text = (REPO / "docs" / "THREAT-MODEL.md").read_text()
    named = 0
    for row in text.splitlines():
        current: Path | None = None
        for path, name in re.findall(r"`(tests/[\w/]+\.py)?::(\w+)`", row):
            current = REPO / path if path else current
            assert current is not None and current.is_file(), row
            tree = ast.parse(current.read_text())
            assert name in {n.name for n in ast.walk(tree) if isinstance(n, ast.FunctionDef)}, (current, name)
            named += 1
    assert named > 30
