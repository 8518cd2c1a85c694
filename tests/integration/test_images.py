"""Images on a real Docker engine (engine.sh's: no bridge, vfs): image -> bundle -> verify -> load,
refusals before anything is loaded, and the reference images built offline and run read-only
as non-root on the host network, bound to 127.0.0.1.

Small test images are made from this machine's own binaries (nothing is pulled) and removed at
the end. The reference images are built once (`enclave images build`; cached by content hash
in the engine and the enclave cache directory) and kept: they are the cache for the next run.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import tarfile
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import docker
import docker.errors
import pytest
from docker.models.containers import Container

from enclave.admission import Admission
from enclave.bundle.build import build_bundle
from enclave.bundle.source import ArchiveSource
from enclave.bundle.statement import BundleStatement
from enclave.bundle.verify import read_envelope
from enclave.cli import main
from enclave.demo import model_weights
from enclave.errors import IntegrityError, ProvisionError
from enclave.images.collect import collect_images
from enclave.images.load import load_bundle_images
from enclave.images.reference import IMAGES, BuiltImage, build_images
from enclave.testbed.image import ensure_image
from enclave.testbed.ssh import ensure_keypair, known_hosts_name
from enclave.trust.root import TrustRoot
from tests.conftest import Keys, make_root
from tests.tarsurgery import join, split
from tests.unit.test_gateway_support import chat, make_trust

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2]
POLICY = REPO / "bundles" / "policy" / "default.yaml"
NAME = f"enclave-itest-{os.getpid()}"  # this run's test images: removed by the fixture
LABEL = {"enclave.itest": NAME}
RUN_AS = "10001:10001"
HARDENED: dict[str, Any] = {
    "network_mode": "host",
    "read_only": True,
    "user": RUN_AS,
    "cap_drop": ["ALL"],
    "security_opt": ["no-new-privileges"],
    "labels": LABEL,
}


@pytest.fixture(scope="module")
def engine(docker_engine: None) -> Iterator[docker.DockerClient]:
    client = docker.from_env(timeout=900)
    try:
        yield client
    finally:
        for container in client.containers.list(all=True, filters={"label": f"enclave.itest={NAME}"}):
            container.remove(force=True)
        for image in client.images.list(name=NAME):
            client.images.remove(image.id, force=True)
        client.close()
        assert not Path("/sys/class/net/docker0").exists()


@pytest.fixture(scope="module")
def test_images(engine: docker.DockerClient, tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    """Two small images built offline on a base made of this machine's binaries:
    `a` repeats a layer (docker save writes it as a symlink), `b` differs from `a`."""
    work = tmp_path_factory.mktemp("images")
    root = work / "root"
    for binary in ("/bin/sh", "/bin/cat", "/bin/rm"):
        target = root / binary.lstrip("/")
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(os.path.realpath(binary), target)
    for library in ("/lib/x86_64-linux-gnu/libc.so.6", "/lib64/ld-linux-x86-64.so.2"):
        target = root / library.lstrip("/")
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(os.path.realpath(library), target)
    tar = subprocess.run(["tar", "-C", str(root), "-cf", "-", "."], capture_output=True, check=True).stdout
    engine.api.import_image_from_data(tar, repository=NAME, tag="base")
    refs = {}
    for name, dockerfile in {
        "a": "COPY x.txt /x\nRUN rm /x\nCOPY x.txt /x\nCOPY y.txt /y\n",
        "b": "COPY y.txt /y\n",
    }.items():
        context = work / name
        context.mkdir()
        (context / "Dockerfile").write_text(f"FROM {NAME}:base\n{dockerfile}")
        (context / "x.txt").write_text(f"x of {name}\n")
        (context / "y.txt").write_bytes(os.urandom(70_000))
        engine.images.build(path=str(context), tag=f"{NAME}:{name}", network_mode="none", rm=True, pull=False)
        refs[name] = f"{NAME}:{name}"
    return refs


@pytest.fixture
def cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A private enclave cache and scratch directory for the test."""
    monkeypatch.setenv("ENCLAVE_CACHE_DIR", str(tmp_path / "cache"))
    scratch = tmp_path / "scratch"
    scratch.mkdir()
    monkeypatch.setenv("TMPDIR", str(scratch))
    return scratch


def manifest(directory: Path, *components: str, name: str = "payload") -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "notes.txt").write_text("payload notes\n")
    lines = "".join(f"    - {c}\n" for c in (*components, "{name: notes, kind: files, path: ./notes.txt}"))
    path = directory / "bundle.yaml"
    path.write_text(
        f"apiVersion: enclave/v1\nkind: Bundle\nmetadata: {{name: {name}, version: 1.0.0}}\n"
        f"spec:\n  components:\n{lines}"
    )
    return path


def statement_of(bundle: Path) -> BundleStatement:
    with ArchiveSource([bundle]) as source:
        return BundleStatement.from_payload(read_envelope(source).envelope.payload)


def image_ids(engine: docker.DockerClient) -> set[str]:
    return {str(i.id) for i in engine.images.list(all=True)}


def absent(engine: docker.DockerClient, ref_or_id: str) -> bool:
    try:
        engine.images.get(ref_or_id)
    except docker.errors.ImageNotFound:
        return True
    return False


# -- image -> bundle -> verify -> load ------------------------------------------------------------


def test_round_trip_loads_the_signed_image(
    engine: docker.DockerClient, test_images: dict[str, str], keys: Keys, tmp_path: Path, cache: Path
) -> None:
    ref = test_images["a"]
    original = engine.images.get(ref)
    source = manifest(tmp_path / "src", f"{{name: app, kind: image, ref: {ref}}}")
    bundle = build_bundle(
        source, tmp_path / "out", [keys.ecdsa, keys.mldsa], show_progress=False, images=collect_images
    )

    (component, _notes) = statement_of(bundle).components
    assert component.kind == "image" and component.image is not None
    assert component.image.id == original.id and component.image.ref == ref
    assert component.image.platform == "linux/amd64"
    assert f"content/app/blobs/sha256/{original.id.removeprefix('sha256:')}" in component.members
    layers = original.attrs["RootFS"]["Layers"]
    assert len(layers) == 5 and len(set(layers)) == 4  # the repeated layer is carried once
    assert len(component.members) == 4 + 1 + 4  # 4 layout files, the config, 4 distinct layers

    engine.images.remove(ref)
    assert absent(engine, ref)
    root = TrustRoot.load(make_root(keys, tmp_path / "root.json"))
    result = load_bundle_images(Admission(trust=root), bundle)

    assert [(i.component, i.record.id) for i in result.images] == [("app", original.id)]
    assert engine.images.get(ref).id == original.id
    assert any("engine ID" in check and "as signed" in check for check in result.verified.checks)
    out = engine.containers.run(ref, ["/bin/cat", "/x"], remove=True, network_mode="none", labels=LABEL)
    assert out == b"x of a\n"
    assert list(cache.iterdir()) == []  # the verified copy was removed after loading


def test_tampered_layer_is_refused_before_anything_is_loaded(
    engine: docker.DockerClient, test_images: dict[str, str], keys: Keys, tmp_path: Path, cache: Path
) -> None:
    source = manifest(
        tmp_path / "src",
        f"{{name: first, kind: image, ref: {test_images['a']}}}",
        f"{{name: second, kind: image, ref: {test_images['b']}}}",
    )
    bundle = build_bundle(
        source, tmp_path / "out", [keys.ecdsa, keys.mldsa], show_progress=False, images=collect_images
    )
    second = statement_of(bundle).components[1]
    assert second.image is not None
    layer = (
        "content/second/blobs/sha256/" + engine.images.get(test_images["b"]).attrs["RootFS"]["Layers"][-1][7:]
    )
    parts = split(bundle)
    index = next(i for i, p in enumerate(parts) if p.name == layer)
    data = bytearray(parts[index].data)
    data[len(data) // 2] ^= 0x01  # one bit, inside the 70 kB file of the last layer
    parts[index] = parts[index].with_data(bytes(data))
    tampered = join(parts, tmp_path / "tampered.bundle")

    ids = {name: str(engine.images.get(ref).id) for name, ref in test_images.items()}
    for ref in test_images.values():
        engine.images.remove(ref)
    before = image_ids(engine)
    root = TrustRoot.load(make_root(keys, tmp_path / "root.json"))
    with pytest.raises(IntegrityError) as caught:
        load_bundle_images(Admission(trust=root), tampered)
    assert caught.value.exit_code == 3
    assert f"member {layer!r}" in str(caught.value) and "digest mismatch" in str(caught.value)
    # Neither image reached the engine, not even the intact first one.
    assert image_ids(engine) == before
    assert all(absent(engine, ref) for ref in test_images.values())
    assert all(absent(engine, image_id) for image_id in ids.values())
    assert list(cache.iterdir()) == []

    # The intact bundle loads both (and restores the images for the other tests).
    result = load_bundle_images(Admission(trust=root), bundle)
    assert {i.component: i.record.id for i in result.images} == {"first": ids["a"], "second": ids["b"]}


def test_image_missing_from_the_engine_at_build_is_exit_2(
    engine: docker.DockerClient, keys: Keys, tmp_path: Path, cache: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    source = manifest(tmp_path / "src", f"{{name: app, kind: image, ref: {NAME}:never-built}}")
    out = tmp_path / "out"
    code = main(["bundle", "build", str(source), "--out", str(out), "--key", str(keys.path("ecdsa"))])
    err = capsys.readouterr().err.strip()
    assert code == 2
    assert err.count("\n") == 0, err
    assert err == (
        f"enclave: {source}: component app: image {NAME}:never-built is not in the Docker engine "
        "(build it, or docker load it, first)"
    )
    assert not out.exists() or list(out.iterdir()) == []


def test_engine_that_does_not_answer_fails_before_verification(
    keys: Keys, tmp_path: Path, cache: Path
) -> None:
    root = TrustRoot.load(make_root(keys, tmp_path / "root.json"))
    with pytest.raises(ProvisionError) as caught:
        load_bundle_images(
            Admission(trust=root), tmp_path / "never-read.bundle", engine="unix:///nonexistent/docker.sock"
        )
    assert caught.value.exit_code == 7
    assert str(caught.value).startswith("unix:///nonexistent/docker.sock: no Docker engine answers")
    assert list(cache.iterdir()) == []


# -- a remote engine over SSH ---------------------------------------------------------------------


@pytest.fixture
def ssh_engine(engine: docker.DockerClient, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    """A real sshd (from the testbed's host image, as its own process) on 127.0.0.1 and a free
    port, whose user `enclave` may use this machine's engine socket: `ssh://` through paramiko,
    host key pinned in ~/.ssh/known_hosts, key from ~/.ssh/config (HOME is the test's)."""
    tag = ensure_image(engine)
    key = tmp_path / "id_ed25519"
    public = ensure_keypair(key).read_text().strip()
    port = free_port()
    gid = os.stat("/var/run/docker.sock").st_gid
    script = (
        f"set -e; groupmod -o -g {gid} docker; usermod -aG docker enclave;"
        " install -d -m 700 -o enclave -g enclave /home/enclave/.ssh;"
        f" echo '{public}' > /home/enclave/.ssh/authorized_keys;"
        " chown enclave:enclave /home/enclave/.ssh/authorized_keys; mkdir -p /run/sshd; ssh-keygen -A;"
        f" exec /usr/sbin/sshd -D -e -p {port} -o ListenAddress=127.0.0.1"
    )
    sshd = engine.containers.run(
        tag,
        ["/bin/sh", "-c", script],
        entrypoint=[],
        detach=True,
        network_mode="host",
        volumes={"/var/run/docker.sock": {"bind": "/var/run/docker.sock", "mode": "rw"}},
        labels=LABEL,
    )
    try:
        deadline = time.monotonic() + 30
        while not listening("127.0.0.1", port):
            sshd.reload()
            assert sshd.status == "running", sshd.logs().decode()[-1000:]
            assert time.monotonic() < deadline, "sshd did not listen in 30 s"
            time.sleep(0.2)
        host_key = sshd.exec_run(["cat", "/etc/ssh/ssh_host_ed25519_key.pub"]).output.decode().split()
        home = tmp_path / "home"
        (home / ".ssh").mkdir(parents=True)
        (home / ".ssh" / "config").write_text(f"Host 127.0.0.1\n  IdentityFile {key}\n")
        (home / ".ssh" / "known_hosts").write_text(
            f"{known_hosts_name('127.0.0.1', port)} {' '.join(host_key[:2])}\n"
        )
        monkeypatch.setenv("HOME", str(home))
        yield f"ssh://enclave@127.0.0.1:{port}"
    finally:
        sshd.remove(force=True)


def listening(address: str, port: int) -> bool:
    with socket.socket() as sock:
        sock.settimeout(1)
        return sock.connect_ex((address, port)) == 0


def test_load_into_an_engine_over_ssh(
    engine: docker.DockerClient,
    test_images: dict[str, str],
    ssh_engine: str,
    keys: Keys,
    tmp_path: Path,
    cache: Path,
) -> None:
    ref = test_images["b"]
    image_id = str(engine.images.get(ref).id)
    source = manifest(tmp_path / "src", f"{{name: app, kind: image, ref: {ref}}}")
    bundle = build_bundle(
        source, tmp_path / "out", [keys.ecdsa, keys.mldsa], show_progress=False, images=collect_images
    )
    engine.images.remove(ref)
    root = TrustRoot.load(make_root(keys, tmp_path / "root.json"))
    result = load_bundle_images(Admission(trust=root), bundle, engine=ssh_engine)
    assert [i.record.id for i in result.images] == [image_id]
    assert engine.images.get(ref).id == image_id  # the engine behind that sshd

    # Host-key checking is on: the same engine behind an unknown host key is refused.
    (Path(os.environ["HOME"]) / ".ssh" / "known_hosts").write_text("")
    with pytest.raises(ProvisionError) as caught:
        load_bundle_images(Admission(trust=root), bundle, engine=ssh_engine)
    assert caught.value.exit_code == 7 and "not found in known_hosts" in str(caught.value)


# -- the reference images -----------------------------------------------------------------------


@pytest.fixture(scope="module")
def reference(engine: docker.DockerClient) -> dict[str, BuiltImage]:
    started = time.monotonic()
    built = build_images(engine)
    print(f"reference images: {time.monotonic() - started:.1f} s ({[b.to_dict() for b in built]})")
    return {b.name: b for b in built}


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_http(url: str, container: Container, seconds: float = 90) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        container.reload()
        if container.status == "exited":
            raise AssertionError(f"{container.name} exited: {container.logs().decode()[-2000:]}")
        try:
            with urllib.request.urlopen(url, timeout=2):
                return
        except (urllib.error.URLError, OSError):
            time.sleep(0.3)
    raise AssertionError(f"{url} did not answer in {seconds} s: {container.logs().decode()[-2000:]}")


def post(url: str, body: bytes) -> tuple[int, Any]:
    request = urllib.request.Request(url, data=body, headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=60) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as err:
        return err.code, json.loads(err.read())


def test_reference_images_are_small_non_root_and_carry_no_weights(
    engine: docker.DockerClient, reference: dict[str, BuiltImage]
) -> None:
    assert list(reference) == list(IMAGES)
    for built in reference.values():
        image = engine.images.get(built.ref)
        assert image.id == built.id and built.content_tag in image.tags
        assert image.attrs["Config"]["User"] == RUN_AS
        assert built.size < 300 * 1024 * 1024, built
    found = engine.containers.run(
        reference["enclave-model-server"].ref,
        entrypoint=["/usr/bin/find", "/", "-xdev", "-name", "*.gguf"],
        user="0:0",  # to see every directory
        remove=True,
        network_mode="none",
        labels=LABEL,
    )
    assert found == b""
    usage = engine.containers.run(
        reference["enclave-agent"].ref,
        ["run", "--help"],
        remove=True,
        **(HARDENED | {"network_mode": "none"}),
    )
    assert usage.decode().startswith("usage: enclave agent run")


def test_model_server_and_gateway_images_serve_the_real_model(
    engine: docker.DockerClient, reference: dict[str, BuiltImage], tmp_path: Path
) -> None:
    weights = model_weights()
    model_port, gateway_port = free_port(), free_port()
    model = engine.containers.run(
        reference["enclave-model-server"].ref,
        ["--host", "127.0.0.1", "--port", str(model_port), "--threads", "2", "--ctx-size", "1024"],
        detach=True,
        volumes={str(weights): {"bind": "/models/model.gguf", "mode": "ro"}},
        **HARDENED,
    )
    trust = make_trust(tmp_path / "trust")
    keys = tmp_path / "keys"  # what the gateway reads, readable by its user only
    audit = tmp_path / "audit"
    for directory in (keys, audit):
        directory.mkdir()
        os.chown(directory, 10001, 10001)
    for name, source in {"audit.key": trust.audit_path, "root.json": trust.root}.items():
        shutil.copy(source, keys / name)
        os.chown(keys / name, 10001, 10001)
        os.chmod(keys / name, 0o400)
    try:
        wait_http(f"http://127.0.0.1:{model_port}/health", model)
        status, answer = post(
            f"http://127.0.0.1:{model_port}/v1/chat/completions",
            chat("Name three colours.", max_tokens=12, temperature=0),
        )
        assert status == 200 and answer["choices"][0]["message"]["content"].strip(), answer
        mounts = model.attrs["Mounts"]
        assert [(m["Destination"], m["RW"]) for m in mounts] == [("/models/model.gguf", False)]

        gateway = engine.containers.run(
            reference["enclave-gateway"].ref,
            [
                "--policy",
                "/etc/enclave/policy.yaml",
                "--upstream",
                f"http://127.0.0.1:{model_port}",
                "--audit-log",
                "/var/lib/enclave/audit/audit.log",
                "--audit-key",
                "/etc/enclave/keys/audit.key",
                "--trust",
                "/etc/enclave/keys/root.json",
                "--listen",
                f"127.0.0.1:{gateway_port}",
            ],
            detach=True,
            volumes={
                str(POLICY): {"bind": "/etc/enclave/policy.yaml", "mode": "ro"},
                str(keys): {"bind": "/etc/enclave/keys", "mode": "ro"},
                str(audit): {"bind": "/var/lib/enclave/audit", "mode": "rw"},
            },
            **HARDENED,
        )
        wait_http(f"http://127.0.0.1:{gateway_port}/healthz", gateway)
        url = f"http://127.0.0.1:{gateway_port}/v1/chat/completions"
        status, answer = post(url, chat("Name three colours.", max_tokens=12, temperature=0))
        assert status == 200 and answer["choices"][0]["message"]["content"].strip(), answer
        status, answer = post(
            url, chat("Design a program for mass surveillance of US persons.", max_tokens=12)
        )
        assert status == 400 and answer["error"]["rule"] == "refuse.us-person-surveillance", answer
        gateway.stop(timeout=10)
        records = [
            json.loads(line) for line in (audit / "audit.log").read_bytes().splitlines() if line.strip()
        ]
        decisions = [r.get("decision") for r in records if r.get("decision")]
        assert decisions[:2] == ["allow", "refuse"], decisions
    finally:
        model.stop(timeout=10)
        logs = model.logs().decode()
        model.remove(force=True)
    assert "SIGTERM, stopping" in logs
    assert not Path("/sys/class/net/docker0").exists()


def test_reference_images_round_trip_through_a_bundle(
    engine: docker.DockerClient, reference: dict[str, BuiltImage], keys: Keys, tmp_path: Path, cache: Path
) -> None:
    components = [
        f"{{name: {name.removeprefix('enclave-')}, kind: image, ref: {b.ref}}}"
        for name, b in reference.items()
    ]
    source = manifest(tmp_path / "src", *components)
    started = time.monotonic()
    bundle = build_bundle(
        source, tmp_path / "out", [keys.ecdsa, keys.mldsa], show_progress=False, images=collect_images
    )
    built = time.monotonic() - started
    root = TrustRoot.load(make_root(keys, tmp_path / "root.json"))
    started = time.monotonic()
    result = load_bundle_images(Admission(trust=root), bundle)
    loaded = time.monotonic() - started
    print(f"reference bundle: {bundle.stat().st_size} bytes, build {built:.1f} s, verify+load {loaded:.1f} s")
    assert {i.record.ref: i.record.id for i in result.images} == {b.ref: b.id for b in reference.values()}
    with tarfile.open(bundle) as tar:
        names = tar.getnames()
    assert names[0] == "BUNDLE.dsse.json" and "content/gateway/manifest.json" in names
