"""Image components: the signed image record in the statement, the layout rules, engine URLs,
requirement files, the base recipe. Pure logic; no engine."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from enclave.bundle.statement import BundleStatement, ComponentEntry, ImageRecord, Member
from enclave.errors import IntegrityError, UsageError
from enclave.images import base
from enclave.images.engine import check_engine_url
from enclave.images.layout import (
    LayoutError,
    blob_path,
    digest_of_path,
    make_layout,
    normalise_ref,
    parse_config,
)
from enclave.images.wheels import constraints, parse_requirements
from tests.unit.test_images_support import config_for, digest, layer_tar

ID = "sha256:" + "a" * 64
MANIFEST = "sha256:" + "b" * 64
RECORD = ImageRecord(ID, MANIFEST, "linux/amd64", "enclave-gateway:0.1.0")


def statement(*components: ComponentEntry) -> BundleStatement:
    names = sorted({m for c in components for m in c.members})
    members = tuple(Member(n, 1, 0o644, "0" * 96) for n in names)
    return BundleStatement("demo", "1.0.0", "2026-01-01T00:00:00Z", "sha384", 1 << 24, components, members)


def image_entry(record: ImageRecord | None = RECORD, kind: str = "image") -> ComponentEntry:
    return ComponentEntry("gateway", kind, ("content/gateway/index.json",), None, record)


# -- the statement's image record ----------------------------------------------------------------


def test_image_record_round_trips_through_the_signed_statement() -> None:
    original = statement(image_entry(), ComponentEntry("site", "files", ("content/site/a",)))
    doc = original.to_dict()
    assert doc["predicate"]["components"][0]["image"] == {
        "id": ID,
        "manifestDigest": MANIFEST,
        "platform": "linux/amd64",
        "ref": "enclave-gateway:0.1.0",
    }
    assert "image" not in doc["predicate"]["components"][1]
    parsed = BundleStatement.from_payload(original.to_payload())
    assert parsed.components == original.components
    assert parsed.components[0].image == RECORD


def _payload_with(edit: Any) -> bytes:
    doc = statement(image_entry()).to_dict()
    edit(doc["predicate"]["components"][0])
    return json.dumps(doc).encode()


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (lambda c: c.pop("image"), "kind image needs an image object"),
        (lambda c: c.update(kind="files"), "only allowed for kind image"),
        (lambda c: c["image"].update(id="sha256:" + "A" * 64), "image.id is not"),
        (lambda c: c["image"].update(id="sha384:" + "a" * 96), "image.id is not"),
        (lambda c: c["image"].update(manifestDigest="a" * 64), "manifestDigest is not"),
        (lambda c: c["image"].update(platform="linux"), "platform is not"),
        (lambda c: c["image"].update(ref="enclave-gateway"), "ref is not"),  # no tag
        (lambda c: c["image"].update(ref="Enclave:1"), "ref is not"),
        (lambda c: c["image"].update(ref="x@sha256:" + "a" * 64), "ref is not"),
        (lambda c: c["image"].update(ref=5), "must be a string"),
        (lambda c: c["image"].update(extra=1), "unknown ['extra']"),
        (lambda c: c["image"].pop("platform"), "missing ['platform']"),
        (lambda c: c.update(image=[]), "must be an object"),
    ],
)
def test_statement_parser_refuses_bad_image_records(edit: Any, message: str) -> None:
    with pytest.raises(IntegrityError, match="invalid statement") as caught:
        BundleStatement.from_payload(_payload_with(edit))
    assert message in str(caught.value)
    assert caught.value.exit_code == 3


def test_null_image_on_another_kind_is_refused_too() -> None:
    def edit(c: dict[str, Any]) -> None:
        c.update(kind="files", image=None)

    with pytest.raises(IntegrityError, match="only allowed for kind image"):
        BundleStatement.from_payload(_payload_with(edit))


# -- layout --------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("ref", "full"),
    [
        ("enclave-gateway", "enclave-gateway:latest"),
        ("enclave-gateway:0.1.0", "enclave-gateway:0.1.0"),
        ("localhost:5000/team/app", "localhost:5000/team/app:latest"),
        ("localhost:5000/team/app:v1.2", "localhost:5000/team/app:v1.2"),
        ("a__b/c-d.e:1", "a__b/c-d.e:1"),
    ],
)
def test_normalise_ref_adds_latest_like_docker(ref: str, full: str) -> None:
    assert normalise_ref(ref) == full


@pytest.mark.parametrize("ref", ["App:1", "app@sha256:" + "a" * 64, "app:", ":1", "a//b:1", "app:-x", ""])
def test_normalise_ref_refuses(ref: str) -> None:
    with pytest.raises(LayoutError):
        normalise_ref(ref)


def test_layout_is_derived_from_config_layers_and_ref() -> None:
    one, two = layer_tar({"a": b"1"}), layer_tar({"b": b"2"})
    config = config_for([one, two, one])  # a repeated layer: listed twice, stored once
    sizes = {digest(one): len(one), digest(two): len(two)}
    layout = make_layout(config, sizes, "app:1")
    assert layout.record.id == digest(config)
    assert layout.record.platform == "linux/amd64"
    assert layout.record.manifest_digest == digest(layout.manifest)
    manifest = json.loads(layout.manifest)
    assert [d["digest"] for d in manifest["layers"]] == [digest(one), digest(two), digest(one)]
    assert manifest["config"] == {
        "mediaType": "application/vnd.oci.image.config.v1+json",
        "digest": digest(config),
        "size": len(config),
    }
    generated = layout.generated()
    docker_manifest = json.loads(generated["manifest.json"])
    assert docker_manifest == [
        {
            "Config": blob_path(digest(config)),
            "RepoTags": ["app:1"],
            "Layers": [blob_path(digest(x)) for x in (one, two, one)],
        }
    ]
    index = json.loads(generated["index.json"])
    assert index["manifests"][0]["digest"] == layout.record.manifest_digest
    assert index["manifests"][0]["annotations"] == {"org.opencontainers.image.ref.name": "app:1"}
    assert generated["oci-layout"] == b'{"imageLayoutVersion":"1.0.0"}'
    assert layout.paths() == sorted(layout.paths(), key=str.encode)
    assert set(layout.paths()) == {
        "index.json", "manifest.json", "oci-layout", blob_path(layout.record.manifest_digest),
        blob_path(digest(config)), blob_path(digest(one)), blob_path(digest(two)),
    }  # fmt: skip
    assert layout.size == len(config) + len(one) + len(two)
    # Same inputs, same bytes: the manifest digest is reproducible.
    assert make_layout(config, sizes, "app:1") == layout
    assert make_layout(config, sizes, "app:2").record.manifest_digest == layout.record.manifest_digest


def test_layout_needs_every_layer() -> None:
    one = layer_tar({"a": b"1"})
    with pytest.raises(LayoutError, match="missing"):
        make_layout(config_for([one]), {}, "app:1")


@pytest.mark.parametrize(
    ("doc", "message"),
    [
        (b"not json", "not JSON"),
        (b"[]", "not a JSON object"),
        (b'{"os":"linux","architecture":"amd64"}', "no rootfs"),
        (b'{"os":"linux","architecture":"amd64","rootfs":{"type":"layers","diff_ids":[]}}', "1 to"),
        (b'{"os":"linux","architecture":"amd64","rootfs":{"type":"layers","diff_ids":["x"]}}', "diff ID"),
        (
            b'{"architecture":"amd64","rootfs":{"type":"layers","diff_ids":["sha256:' + b"a" * 64 + b'"]}}',
            "os/arch",
        ),
        (b" " * (4 * 1024 * 1024 + 1), "exceeds"),
    ],
)
def test_parse_config_refuses(doc: bytes, message: str) -> None:
    with pytest.raises(LayoutError, match=message):
        parse_config(doc)


def test_platform_variant_is_kept() -> None:
    doc = json.loads(config_for([layer_tar({})], arch="arm64"))
    doc["variant"] = "v8"
    assert parse_config(json.dumps(doc).encode()).platform == "linux/arm64/v8"


def test_blob_paths() -> None:
    assert blob_path(ID) == "blobs/sha256/" + "a" * 64
    assert digest_of_path("blobs/sha256/" + "a" * 64) == ID
    assert digest_of_path("blobs/sha256/xyz") is None
    assert digest_of_path("index.json") is None
    with pytest.raises(LayoutError):
        blob_path("sha256:../../etc")


# -- engine URLs ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "url", ["unix:///var/run/docker.sock", "ssh://enclave@127.0.0.11", "ssh://127.0.0.11:2222", "ssh://h/"]
)
def test_engine_urls_accepted(url: str) -> None:
    assert check_engine_url(url) == url


@pytest.mark.parametrize(
    ("url", "message"),
    [
        ("tcp://127.0.0.1:2375", "TCP engine API is not accepted"),
        ("http://127.0.0.1:2375", "TCP engine API is not accepted"),
        ("ssh://user:secret@host", "no password"),
        ("ssh://host/path", "no password, path"),
        ("ssh://", "expected"),
        ("ssh://host:99999", "expected|out of range"),
        ("unix://relative.sock", "expected"),
        ("npipe:////./pipe/docker", "expected"),
        ("/var/run/docker.sock", "expected"),
    ],
)
def test_engine_urls_refused(url: str, message: str) -> None:
    with pytest.raises(UsageError, match=message) as caught:
        check_engine_url(url)
    assert caught.value.exit_code == 2


# -- requirement files and pins ----------------------------------------------------------------------


def test_requirements_are_names_only(tmp_path: Path) -> None:
    good = tmp_path / "requirements.txt"
    good.write_text("# comment\nenclave\naiohttp  # the server\n\npyyaml[libyaml]; python_version >= '3'\n")
    assert parse_requirements(good) == ["enclave", "aiohttp", "pyyaml[libyaml]; python_version >= '3'"]
    source_option = "--" + "index-url x"  # an option naming a package source must be refused
    for bad in (source_option, "-e .", "pkg @ https://example.invalid/x.whl", "../wheel.whl"):
        path = tmp_path / "bad.txt"
        path.write_text(f"enclave\n{bad}\n")
        with pytest.raises(UsageError, match=r"bad\.txt:2: only package names"):
            parse_requirements(path)


def test_constraints_pin_this_environment_but_not_the_project() -> None:
    pins = constraints().splitlines()
    assert pins == sorted(pins)
    names = {pin.split("==")[0] for pin in pins}
    assert "pyyaml" in names and "aiohttp" in names
    assert "enclave" not in names
    assert all("==" in pin for pin in pins)


# -- the base recipe --------------------------------------------------------------------------------


def test_base_tag_is_a_hash_of_the_recipe(monkeypatch: pytest.MonkeyPatch) -> None:
    tag = base.base_tag()
    assert tag.startswith("enclave-base:") and len(tag.split(":")[1]) == 16
    assert base.base_tag() == tag
    monkeypatch.setattr(base, "PACKAGES", (*base.PACKAGES, "curl"))
    assert base.base_tag() != tag


def test_base_customise_strips_docs_but_keeps_licences(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls: list[list[str]] = []
    monkeypatch.setattr(base, "chroot", lambda root, argv, what: calls.append(list(argv)))
    root = tmp_path / "rootfs"
    for rel in (
        "usr/share/doc/python3/copyright",
        "usr/share/doc/python3/changelog.gz",
        "usr/share/doc/python3/examples/a.py",
        "usr/share/man/man1/ls.1.gz",
        "usr/share/locale/de/LC_MESSAGES/x.mo",
        "var/lib/apt/lists/deb_InRelease",
        "var/log/dpkg.log",
        "usr/bin/python3",
        "etc/apt/sources.list",
    ):
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_text("x")
    (root / "usr/share/doc/libpython3").symlink_to("python3")
    base.customise(root)
    left = sorted(p.relative_to(root).as_posix() for p in root.rglob("*") if p.is_file())
    assert left == ["etc/apt/sources.list", "usr/bin/python3", "usr/share/doc/python3/copyright"]
    assert (root / "etc/apt/sources.list").read_text() == ""
    assert calls and calls[0][0] == "useradd" and str(base.UID) in calls[0] and calls[0][-1] == base.USER


# -- reference image contexts -----------------------------------------------------------------------


def test_reference_contexts_and_their_content_key(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from enclave.images import reference
    from enclave.images.wheels import Wheelhouse

    wheel = tmp_path / "pkg-1.0-py3-none-any.whl"
    wheel.write_bytes(b"wheel")
    pip = tmp_path / "pip-23.2.1-py3-none-any.whl"
    pip.write_bytes(b"pip")
    asked: list[list[str]] = []

    def fake_wheelhouse(requirements: list[str], python: tuple[int, int]) -> Wheelhouse:
        asked.append(list(requirements))
        return Wheelhouse((wheel,), pip)

    monkeypatch.setattr(reference, "wheelhouse", fake_wheelhouse)
    for name in reference.IMAGES:
        files = reference.context_files(name)
        assert {"Dockerfile", "requirements.txt", "pip.whl", f"wheels/{wheel.name}"} <= set(files)
        dockerfile = files["Dockerfile"].read_text()
        assert "ARG BASE" in dockerfile and "USER 10001:10001" in dockerfile and "--no-index" in dockerfile
    assert asked[0][0] == "enclave" and asked[2] == ["xllamacpp"]

    files = reference.context_files("enclave-model-server")
    key = reference.content_key("sha256:" + "1" * 64, files)
    assert reference.content_key("sha256:" + "1" * 64, files) == key
    assert reference.content_key("sha256:" + "2" * 64, files) != key  # a new base: a new image
    wheel.write_bytes(b"wheel 2")
    assert reference.content_key("sha256:" + "1" * 64, files) != key  # a new wheel: a new image


def test_unknown_reference_image_is_a_usage_error() -> None:
    from enclave.images.reference import build_images

    with pytest.raises(UsageError, match="no such image build context") as caught:
        build_images(None, ["enclave-nothing"])
    assert caught.value.exit_code == 2


def test_write_files_replaces_what_debootstrap_left(tmp_path: Path) -> None:
    from enclave.images.rootfs import write_files

    (tmp_path / "etc").mkdir()
    (tmp_path / "etc" / "motd").symlink_to("/etc/passwd")  # a link is replaced, never followed
    write_files(tmp_path, {"etc/motd": (0o644, "hello\n"), "etc/new/conf": (0o600, "x=1\n")})
    assert not (tmp_path / "etc" / "motd").is_symlink()
    assert (tmp_path / "etc" / "motd").read_text() == "hello\n"
    assert oct((tmp_path / "etc" / "new" / "conf").stat().st_mode & 0o777) == "0o600"
