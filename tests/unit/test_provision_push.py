"""Push planning, resume decisions and the host-side script, run here on local files: the same
source that is sent to hosts (python3 -c), exercised both in-process and as a subprocess."""

from __future__ import annotations

import base64
import hashlib
import json
import os
import shutil
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from enclave.admission import Admission
from enclave.bundle.digest import combine, hash_range
from enclave.bundle.tarformat import ENVELOPE_NAME
from enclave.provision import hostside
from enclave.provision.push import (
    HOSTSIDE_SOURCE,
    TREE_DIR_MODE,
    Payload,
    PushFile,
    _local_digest,
    _mkdirs,
    _request,
    plan_payload,
    remaining_bytes,
    resume_offset,
)
from tests.conftest import BuildFn

MIB = 1024 * 1024


@pytest.fixture
def payload(build: BuildFn, root_path: Path, tmp_path: Path) -> Payload:
    bundle = build()
    result = Admission(trust=root_path).verify(bundle, extract_to=tmp_path / "x")
    return plan_payload(result.statement, tmp_path / "x")


def weights(payload: Payload) -> PushFile:
    return next(f for f in payload.files if f.name.endswith("model.gguf"))


def host_dir(tmp_path: Path, payload: Payload) -> Path:
    root = tmp_path / "host" / payload.remote_dir.lstrip("/")
    root.mkdir(parents=True)
    return root


def test_payload_is_every_member_plus_the_envelope(payload: Payload) -> None:
    """The whole signed tree, playbooks included: the host's copy re-verifies as a whole."""
    names = [f.name for f in payload.files]
    statement = json.loads(base64.b64decode(json.loads(payload.files[-1].local.read_bytes())["payload"]))
    signed = [m["name"] for m in statement["predicate"]["members"]]
    assert names == [*signed, ENVELOPE_NAME]
    assert any(n.startswith("content/site/") for n in names)  # the playbooks component
    assert "content/weights/model.gguf" in names and "content/policy/policy.yaml" in names
    assert names[-1] == ENVELOPE_NAME
    envelope = payload.files[-1]
    assert envelope.digest == hashlib.sha384(envelope.local.read_bytes()).hexdigest()
    assert payload.remote_dir == "/var/lib/enclave/incoming/demo-1.0.0"
    assert len(weights(payload).chunks) == 4  # 3 MiB + 123 bytes in 1 MiB chunks


def test_remaining_bytes_counts_partial_and_finished_files(payload: Payload) -> None:
    w = weights(payload)
    assert remaining_bytes(payload, {}) == payload.size
    done = {f.name: f.size for f in payload.files}
    assert remaining_bytes(payload, done) == 0
    partial = {**done, w.name: 5, w.name + ".part": 2 * MIB}
    assert remaining_bytes(payload, partial) == w.size - 2 * MIB


def state_of(root: Path, payload: Payload, f: PushFile) -> dict:
    request = _request(payload, [f], with_digests=False) | {"root": str(root)}
    return hostside.state(request)["files"][f.name]


def test_resume_continues_from_the_last_right_byte(payload: Payload, tmp_path: Path) -> None:
    w = weights(payload)
    root = host_dir(tmp_path, payload)
    part = root / (w.name + ".part")
    part.parent.mkdir(parents=True)
    data = w.local.read_bytes()
    local = _local_digest(w, payload.algorithm)

    assert resume_offset(w, payload.chunk_size, None, local) == 0
    part.write_bytes(data[: 2 * MIB + 500])  # cut half way through the third chunk
    assert resume_offset(w, payload.chunk_size, state_of(root, payload, w)["part"], local) == 2 * MIB + 500

    corrupt = bytearray(data[: 2 * MIB + 500])
    corrupt[MIB + 7] ^= 0xFF  # the second chunk is wrong: keep only the first
    part.write_bytes(bytes(corrupt))
    assert resume_offset(w, payload.chunk_size, state_of(root, payload, w)["part"], local) == MIB

    corrupt = bytearray(data[: 2 * MIB + 500])
    corrupt[2 * MIB + 10] ^= 0xFF  # only the partial tail is wrong: keep the two whole chunks
    part.write_bytes(bytes(corrupt))
    assert resume_offset(w, payload.chunk_size, state_of(root, payload, w)["part"], local) == 2 * MIB

    part.write_bytes(data + b"extra")  # longer than the file: start again
    assert resume_offset(w, payload.chunk_size, state_of(root, payload, w)["part"], local) == 0


def test_resume_of_a_single_chunk_file_checks_the_prefix(payload: Payload, tmp_path: Path) -> None:
    policy = next(f for f in payload.files if f.name.endswith("policy.yaml"))
    root = host_dir(tmp_path, payload)
    part = root / (policy.name + ".part")
    part.parent.mkdir(parents=True)
    part.write_bytes(policy.local.read_bytes()[:4])
    local = _local_digest(policy, payload.algorithm)
    assert resume_offset(policy, payload.chunk_size, state_of(root, payload, policy)["part"], local) == 4
    part.write_bytes(b"XXXX")
    assert resume_offset(policy, payload.chunk_size, state_of(root, payload, policy)["part"], local) == 0


def test_host_verify_publishes_good_files_read_only_and_deletes_bad_ones(
    payload: Payload, tmp_path: Path
) -> None:
    root = host_dir(tmp_path, payload)
    for f in payload.files:
        target = root / (f.name + ".part")
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(f.local, target)
    w = weights(payload)
    bad = bytearray((root / (w.name + ".part")).read_bytes())
    bad[3 * MIB + 1] ^= 1
    (root / (w.name + ".part")).write_bytes(bytes(bad))
    answer = hostside.verify(_request(payload, payload.files, with_digests=True) | {"root": str(root)})[
        "files"
    ]
    assert answer[w.name] == {"ok": False, "error": "chunk 3 digest mismatch"}
    assert not (root / (w.name + ".part")).exists() and not (root / w.name).exists()
    for f in payload.files:
        if f is w:
            continue
        assert answer[f.name] == {"ok": True, "error": None}
        final = root / f.name
        assert final.read_bytes() == f.local.read_bytes()
        assert os.stat(final).st_mode & 0o222 == 0
        assert not (root / (f.name + ".part")).exists()


def test_host_verify_rechecks_a_finished_file(payload: Payload, tmp_path: Path) -> None:
    root = host_dir(tmp_path, payload)
    policy = next(f for f in payload.files if f.name.endswith("policy.yaml"))
    (root / policy.name).parent.mkdir(parents=True)
    (root / policy.name).write_bytes(b"rules: [tampered]\n")
    answer = hostside.verify(_request(payload, [policy], with_digests=True) | {"root": str(root)})["files"]
    assert answer[policy.name]["ok"] is False
    assert not (root / policy.name).exists()


def test_host_side_refuses_names_leaving_the_bundle_directory(tmp_path: Path) -> None:
    request = {
        "root": str(tmp_path),
        "algorithm": "sha384",
        "chunk_size": MIB,
        "files": [{"name": "../etc/x", "size": 1}],
    }
    with pytest.raises(ValueError, match="unsafe member name"):
        hostside.state(request)


@pytest.mark.parametrize("count", [1, 2, 5])
def test_host_side_combine_is_the_bundle_formats(count: int) -> None:
    digests = [os.urandom(48) for _ in range(count)]
    assert hostside.combine("sha384", MIB, digests) == combine("sha384", MIB, digests)


def test_host_side_hash_range_matches(tmp_path: Path) -> None:
    path = tmp_path / "f"
    path.write_bytes(os.urandom(5 * MIB + 3))
    fd = os.open(path, os.O_RDONLY)
    try:
        ours = hash_range(lambda view, at: os.preadv(fd, [view], at), MIB, 4 * MIB + 3, "sha512")
        assert hostside.hash_range(fd, MIB, 4 * MIB + 3, "sha512") == ours
    finally:
        os.close(fd)


def test_the_sent_source_runs_alone(payload: Payload, tmp_path: Path) -> None:
    """As on a host: `python3 -c SOURCE verify`, JSON in and out, no enclave package importable."""
    root = host_dir(tmp_path, payload)
    for f in payload.files:
        (root / f.name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(f.local, root / (f.name + ".part"))
    request = _request(payload, payload.files, with_digests=True) | {"root": str(root)}
    proc = subprocess.run(
        [sys.executable, "-I", "-S", "-c", HOSTSIDE_SOURCE, "verify"],  # -S: no site-packages
        input=json.dumps(request).encode(),
        capture_output=True,
        cwd=tmp_path,
        timeout=60,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr.decode()
    answer = json.loads(proc.stdout)["files"]
    assert all(v["ok"] for v in answer.values()), answer


def test_directories_of_the_pushed_tree_are_created_0755_whatever_the_umask(tmp_path: Path) -> None:
    """uid 10001 (the agent) reads the tree through a bind mount of the bundle directory: each
    directory the push creates is chmod'ed after mkdir (an SFTP server's umask may narrow it)."""

    class LocalSftp:  # the two calls _mkdirs makes, on the local file system, with umask 077
        def stat(self, path: str) -> os.stat_result:
            return os.stat(path)

        def mkdir(self, path: str, mode: int) -> None:
            os.mkdir(path, mode & ~0o077)

        def chmod(self, path: str, mode: int) -> None:
            os.chmod(path, mode)

    base = tmp_path / "bundle"
    base.mkdir(mode=0o755)
    _mkdirs(LocalSftp(), str(base / "content" / "weights"))  # type: ignore[arg-type]
    for directory in (base / "content", base / "content" / "weights"):
        assert stat.S_IMODE(directory.stat().st_mode) == TREE_DIR_MODE == 0o755
