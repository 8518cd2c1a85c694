"""Attacks on the archive layer (issue 16, items 1, 2, 5 and the archive rules of 9): each one
carried out on a real, really signed bundle through `enclave bundle verify`, with the exit code
that refuses it and nothing published."""

from __future__ import annotations

import tarfile
import tracemalloc
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from enclave.admission import Admission
from enclave.bundle.build import build_bundle
from enclave.bundle.tarformat import ENVELOPE_NAME, MAX_EXTENDED_HEADER, check_name, member_header
from enclave.bundle.volumes import split_bundle
from enclave.cli import main
from enclave.errors import EnclaveError, IntegrityError, UnsafeArchiveError
from enclave.trust.dsse import MAX_ENVELOPE
from enclave.trust.root import TrustRoot
from tests.conftest import MANIFEST, BuildFn, Keys, write_inputs
from tests.tarsurgery import Part, join, resign, split
from tests.unit.test_bundle_negative import run_verify

NOW = datetime.now(UTC)
TIB = 1 << 40


def _with_size_field(header: bytes, field: bytes) -> bytes:
    """A header block with another size field and its checksum made right again."""
    block = bytearray(header[:512])
    block[124:136] = field
    block[148:156] = b" " * 8
    block[148:156] = b"%06o\x00 " % sum(block)
    return bytes(block) + header[512:]


def _base256(value: int) -> bytes:
    return b"\x80" + value.to_bytes(11, "big")


def _pax(records: dict[str, str], name: str = "content/weights/z") -> Part:
    """A member behind an `x` header holding exactly `records` (Python's tarfile writes it)."""
    info = tarfile.TarInfo(name)
    info.pax_headers = records
    return Part.raw(info, b"data")


def _typed(kind: bytes, name: str = "content/weights/t", fmt: int = tarfile.USTAR_FORMAT) -> Part:
    info = tarfile.TarInfo(name)
    info.type, info.size = kind, 0
    return Part(name, info.tobuf(fmt), b"", 0, 0o644)


def _global_header() -> Part:
    return Part(
        "", tarfile.TarInfo.create_pax_global_header({"comment": "applies to every member"}), b"", 0, 0
    )


def _gnu_long_name() -> Part:
    info = tarfile.TarInfo("content/weights/" + "n" * 120)
    info.size = 4
    return Part(info.name, info.tobuf(tarfile.GNU_FORMAT), b"evil", 0, 0o644)


def _gnu_long_link() -> Part:
    info = tarfile.TarInfo("content/weights/l")
    info.type, info.linkname = tarfile.SYMTYPE, "/" + "k" * 120
    return Part(info.name, info.tobuf(tarfile.GNU_FORMAT), b"", 0, 0o644)


def _two_extended_headers() -> Part:
    first = _pax({"path": "content/weights/" + "p" * 100}).header
    pax = first[: len(first) - 512]  # the `x` header and its records, without the ustar block
    return Part("content/weights/two", pax + first, b"data", 0, 0o644)


def _extended_header_of(size_field: bytes, after: bytes = b"") -> Part:
    """An `x` header whose size field says `size_field` (its records are not there)."""
    pax = _pax({"path": "content/weights/" + "q" * 100}).header
    return Part("", after + _with_size_field(pax, size_field)[:512], b"", 0, 0)


def _small_then_huge() -> Part:
    small = _pax({"path": "content/weights/" + "s" * 100}).header
    return _extended_header_of(_base256(TIB), after=small[: len(small) - 512])


Insert = Callable[[], Part]
FIRST: dict[str, Insert] = {  # placed before the envelope: refused before any signature is checked
    "pax global header (g)": _global_header,
    "GNU long name (L)": _gnu_long_name,
    "x of 1 TiB in base-256": lambda: _extended_header_of(_base256(TIB)),
    "x of 64 KiB + 1": lambda: _extended_header_of(b"%011o\x00" % (MAX_EXTENDED_HEADER + 1)),
    "small x, then an x of 1 TiB": _small_then_huge,
}
AFTER: dict[str, Insert] = {  # placed among the content members
    **FIRST,
    "GNU long link name (K)": _gnu_long_link,
    "old-style regular file (NUL typeflag)": lambda: _typed(tarfile.AREGTYPE),
    "contiguous file (7)": lambda: _typed(tarfile.CONTTYPE),
    "GNU sparse file (S)": lambda: _typed(tarfile.GNUTYPE_SPARSE, fmt=tarfile.GNU_FORMAT),
    "two x headers in a row": _two_extended_headers,
    "pax record the format never writes (comment)": lambda: _pax({"comment": "hi"}),
    "pax GNU sparse record": lambda: _pax({"GNU.sparse.major": "1", "GNU.sparse.minor": "0"}),
    "pax records out of order (size before path)": lambda: _pax(
        {"size": "4", "path": "content/weights/" + "o" * 100}
    ),
}


@pytest.mark.parametrize("case", list(FIRST))
def test_header_before_the_envelope_is_refused(
    case: str, build: BuildFn, root_path: Path, tmp_path: Path
) -> None:
    bundle = join([FIRST[case](), *split(build())], tmp_path / "first.bundle")
    assert run_verify(bundle, root_path, tmp_path / "out") == 6


@pytest.mark.parametrize("case", list(AFTER))
def test_header_type_the_format_never_writes_is_refused(
    case: str, build: BuildFn, root_path: Path, tmp_path: Path
) -> None:
    parts = split(build())
    bundle = join([*parts[:2], AFTER[case](), *parts[2:]], tmp_path / "typed.bundle")
    assert run_verify(bundle, root_path, tmp_path / "out") == 6


def test_a_chained_extended_header_is_refused_before_it_is_read(root_path: Path, tmp_path: Path) -> None:
    """Peak memory does not grow with the size an extended header claims: the archive is a few
    blocks long and claims 1 TiB; the refusal is 6 (not a truncation, 3: nothing was read)."""
    bundle = join([_small_then_huge()], tmp_path / "chain.bundle")
    root = TrustRoot.load(root_path)

    def refuse() -> int:
        tracemalloc.start()
        try:
            with pytest.raises(UnsafeArchiveError, match="extended header"):
                Admission(trust=root, at=NOW).verify(bundle)
            return tracemalloc.get_traced_memory()[1]
        finally:
            tracemalloc.stop()

    refuse()  # imports and caches out of the way
    assert refuse() < 8 * MAX_EXTENDED_HEADER


# -- the checksum, and its place in the order of header checks ------------------------------------------
def _bad_checksum(part: Part) -> Part:
    """The first header block's checksum off by one (every header here is one block, or a
    global header block followed by its records)."""
    header = bytearray(part.header)
    header[148:154] = b"%06o" % ((int(header[148:154], 8) + 1) % 0o1000000)
    return Part(part.name, bytes(header), part.data, part.mtime, part.mode)


@pytest.mark.parametrize(
    ("where", "code"),
    [("content member", 3), ("envelope", 3), ("global header (checksum comes first)", 3)],
)
def test_tar_checksum_is_checked_first(
    where: str, code: int, build: BuildFn, root_path: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    parts = split(build())
    if where == "envelope":
        parts[0] = _bad_checksum(parts[0])
    elif where == "content member":
        parts[3] = _bad_checksum(parts[3])
    else:
        parts.insert(2, _bad_checksum(_global_header()))
    assert run_verify(join(parts, tmp_path / "sum.bundle"), root_path, tmp_path / "out") == code
    assert "checksum" in capsys.readouterr().err


# -- item 5: names a filesystem cannot hold ------------------------------------------------------------------
def _add_member(name: str) -> Callable[[dict[str, Any]], None]:
    """Sign a statement that also lists `name` in the site component (the insider's bundle)."""

    def edit(statement: dict[str, Any]) -> None:
        existing = statement["predicate"]["members"][-1]
        statement["predicate"]["members"].append({**existing, "name": name})
        statement["subject"].append({**statement["subject"][-1], "name": name})
        site = next(c for c in statement["predicate"]["components"] if c["name"] == "site")
        site["members"].append(name)

    return edit


@pytest.mark.parametrize(
    "name",
    [
        "content/site/site.yml/x",  # site.yml is a file already: a file and a directory at once
        "content/site/SITE.YML/x",  # the same on a case-insensitive filesystem
        "content/site/" + "a" * 256,  # one segment over NAME_MAX (ENAMETOOLONG)
        "content/site/" + "é" * 128,  # 256 bytes of UTF-8 in 128 characters
    ],
)
def test_names_no_filesystem_can_hold_are_refused_at_the_statement(
    name: str, build: BuildFn, keys: Keys, root_path: Path, tmp_path: Path
) -> None:
    bundle = resign(build(), keys, tmp_path / "t.bundle", _add_member(name))
    assert run_verify(bundle, root_path, tmp_path / "out") == 6


def test_builder_refuses_a_file_that_is_also_a_directory(keys: Keys, tmp_path: Path) -> None:
    src = write_inputs(tmp_path / "src")
    (src / "playbooks" / "SITE.YML").mkdir()  # site.yml exists: one file, one directory, once case-folded
    (src / "playbooks" / "SITE.YML" / "x").write_text("x\n")
    (src / "bundle.yaml").write_text(MANIFEST.format(name="tree", version="1.0.0", digest="sha256"))
    with pytest.raises(EnclaveError, match="also a directory") as caught:
        build_bundle(src / "bundle.yaml", tmp_path / "out", [keys.ecdsa, keys.mldsa], show_progress=False)
    assert caught.value.exit_code == 2


@pytest.mark.parametrize(
    "name",
    [
        "content/a/" + "x" * 256,
        "content/a/b\x85c",  # C1: NEXT LINE
        "content/a/b\u202ecod.exe",  # RIGHT-TO-LEFT OVERRIDE: spoofs the name shown
        "content/a/b\u2028c",  # LINE SEPARATOR
        "content/a/b\x7fc",
    ],
)
def test_segment_length_and_control_characters_are_defined(name: str) -> None:
    with pytest.raises(UnsafeArchiveError):
        check_name(name)


def test_a_signed_name_with_a_bidi_override_is_refused(
    build: BuildFn, keys: Keys, root_path: Path, tmp_path: Path
) -> None:
    bundle = resign(build(), keys, tmp_path / "t.bundle", _add_member("content/site/gpj.\u202eexe"))
    assert run_verify(bundle, root_path, tmp_path / "out") == 6


# -- item 9: the caps, written down and enforced ------------------------------------------------------------
def test_envelope_over_its_cap_is_an_unsafe_archive(build: BuildFn, root_path: Path, tmp_path: Path) -> None:
    parts = split(build())
    oversize = Part(ENVELOPE_NAME, member_header(ENVELOPE_NAME, MAX_ENVELOPE + 1, 0o644, 0), b"", 0, 0o644)
    bundle = join([oversize, *parts[1:]], tmp_path / "big.bundle")
    assert run_verify(bundle, root_path, tmp_path / "out") == 6


def test_total_size_cap_is_inclusive(build: BuildFn, root_path: Path) -> None:
    bundle = build()
    root = TrustRoot.load(root_path)
    total = Admission(trust=root, at=NOW).verify(bundle).statement.total_size
    assert Admission(trust=root, at=NOW, max_bytes=total).verify(bundle)
    with pytest.raises(UnsafeArchiveError, match="exceed the"):
        Admission(trust=root, at=NOW, max_bytes=total - 1).verify(bundle)


def test_member_over_2_to_the_50_is_an_unsafe_archive(
    build: BuildFn, keys: Keys, root_path: Path, tmp_path: Path
) -> None:
    def edit(statement: dict[str, Any]) -> None:
        statement["predicate"]["members"][-1]["size"] = (1 << 50) + 1

    bundle = resign(build(), keys, tmp_path / "t.bundle", edit)
    assert run_verify(bundle, root_path, tmp_path / "out") == 6


def test_content_order_is_enforced(build: BuildFn, keys: Keys, root_path: Path, tmp_path: Path) -> None:
    """Members of a component sorted by UTF-8 bytes, in component order (FORMAT.md 1, 3)."""

    def edit(statement: dict[str, Any]) -> None:
        members, subjects = statement["predicate"]["members"], statement["subject"]
        weights = next(c for c in statement["predicate"]["components"] if c["name"] == "weights")
        weights["members"].reverse()
        by_name = {m["name"]: (m, s) for m, s in zip(members, subjects, strict=True)}
        at = [n for n, m in enumerate(members) if m["name"] in weights["members"]]
        for n, name in zip(at, weights["members"], strict=True):
            members[n], subjects[n] = by_name[name]

    with pytest.raises(IntegrityError, match="not sorted"):
        Admission(trust=root_path, at=NOW).verify(resign(build(), keys, tmp_path / "t.bundle", edit))


def test_sbom_provenance_and_model_signatures_are_not_required_by_verify(
    build: BuildFn, keys: Keys, root_path: Path, tmp_path: Path
) -> None:
    """FORMAT.md 1: members 2 to 4 are checked as members only; their absence is not refused."""
    documents = ("sbom.cdx.json", "provenance.dsse.json", "model-signatures/")

    def edit(statement: dict[str, Any]) -> None:
        statement["subject"] = [s for s in statement["subject"] if not s["name"].startswith(documents)]
        members = statement["predicate"]["members"]
        statement["predicate"]["members"] = [m for m in members if not m["name"].startswith(documents)]

    resigned = split(resign(build(), keys, tmp_path / "t.bundle", edit))
    bundle = join([p for p in resigned if not p.name.startswith(documents)], tmp_path / "bare.bundle")
    assert (
        main(
            ["bundle", "verify", str(bundle), "--trust", str(root_path), "--extract-to", str(tmp_path / "o")]
        )
        == 0
    )
    assert not (tmp_path / "o" / "sbom.cdx.json").exists()


def test_a_damaged_chunk_across_volumes_names_the_volume_holding_the_damage(
    build: BuildFn, keys: Keys, root_path: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    volume = 1024 * 1024
    parts, index = split_bundle(build(), volume, [keys.ecdsa, keys.mldsa])
    with parts[2].open("r+b") as handle:  # its first bytes end a chunk that starts in parts[1]
        handle.seek(100)
        byte = handle.read(1)
        handle.seek(100)
        handle.write(bytes([byte[0] ^ 0xFF]))
    target = tmp_path / "x"
    assert main(["bundle", "verify", str(index), "--trust", str(root_path), "--extract-to", str(target)]) == 3
    err = capsys.readouterr().err
    assert f"digest mismatch [in {parts[2].name}]" in err and not target.exists()
