"""Export (engine -> blob store -> component files) and load (verified files -> engine) logic,
against a fake engine that speaks real docker-archive tars. The real engine: tests/integration."""

from __future__ import annotations

import io
import json
import tarfile
from pathlib import Path
from typing import Any

import pytest

from enclave.bundle.statement import ComponentEntry, ImageRecord
from enclave.errors import IntegrityError, ProvisionError, UsageError
from enclave.images.export import export_image
from enclave.images.layout import blob_path
from enclave.images.load import check_component, image_tar, load_image
from enclave.images.store import BlobStore
from tests.unit.test_images_support import (
    FakeClient,
    FakeEngine,
    FakeImage,
    config_for,
    digest,
    docker_archive,
    layer_tar,
)

BASE = layer_tar({"bin/sh": b"#!" + b"x" * 3000})
APP = layer_tar({"app/main.py": b"print('hi')\n"})
EMPTYISH = layer_tar({"tmp/.keep": b""})
LAYERS = [BASE, EMPTYISH, APP, EMPTYISH]  # a repeated diff: docker save writes a symlink
CONFIG = config_for(LAYERS)
IMAGE_ID = digest(CONFIG)


def engine_with(archive: bytes | None = None, tags: tuple[str, ...] = ("app:1",)) -> FakeEngine:
    return FakeEngine(
        [FakeImage(IMAGE_ID, archive or docker_archive(CONFIG, LAYERS, list(tags)), list(tags))]
    )


def export(tmp_path: Path, engine: FakeEngine, ref: str = "app:1") -> Any:
    return export_image(
        FakeClient(engine), ref, BlobStore(tmp_path / "store"), "bundle.yaml: component app", False
    )


def component_tree(tmp_path: Path, exported: Any, name: str = "app") -> Path:
    """What verification publishes for the component: content/<name>/<path> (copies)."""
    tree = tmp_path / "tree"
    for rel, source in exported.files.items():
        target = tree / "content" / name / rel
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(source.read_bytes())
    return tree


def entry_for(exported: Any, name: str = "app", record: ImageRecord | None = None) -> ComponentEntry:
    members = tuple(f"content/{name}/{p}" for p in exported.layout.paths())
    return ComponentEntry(name, "image", members, None, record or exported.layout.record)


# -- export --------------------------------------------------------------------------------------


def test_export_streams_docker_save_into_content_addressed_blobs(tmp_path: Path) -> None:
    engine = engine_with()
    exported = export(tmp_path, engine)
    record = exported.layout.record
    assert record.id == IMAGE_ID and record.ref == "app:1" and record.platform == "linux/amd64"
    assert engine.saves == [IMAGE_ID]  # saved by ID, so a moving tag cannot swap the content
    for rel, path in exported.files.items():
        assert path.is_file()
        if rel.startswith("blobs/"):
            assert digest(path.read_bytes()) == "sha256:" + rel.rsplit("/", 1)[1]
    assert exported.files[blob_path(digest(APP))].read_bytes() == APP
    assert exported.files[blob_path(digest(EMPTYISH))].read_bytes() == EMPTYISH
    assert json.loads(exported.files["manifest.json"].read_bytes())[0]["Layers"] == [
        blob_path(digest(layer)) for layer in LAYERS
    ]
    # Nothing but blobs named by their digest in the store (v1 metadata was not kept).
    names = [p.name for p in (tmp_path / "store/blobs/sha256").iterdir()]
    assert all(len(n) == 64 for n in names)


def test_second_export_uses_the_store_without_saving_again(tmp_path: Path) -> None:
    engine = engine_with()
    first = export(tmp_path, engine)
    second = export(tmp_path, engine)
    assert engine.saves == [IMAGE_ID]
    assert second.layout == first.layout and second.files == first.files


def test_a_corrupt_cached_blob_is_replaced_by_a_fresh_save(tmp_path: Path) -> None:
    engine = engine_with()
    first = export(tmp_path, engine)
    layer = first.files[blob_path(digest(APP))]
    layer.write_bytes(b"rotten")
    second = export(tmp_path, engine)
    assert engine.saves == [IMAGE_ID, IMAGE_ID]
    assert second.files[blob_path(digest(APP))].read_bytes() == APP


def test_missing_image_is_a_usage_error_naming_the_component(tmp_path: Path) -> None:
    with pytest.raises(UsageError) as caught:
        export(tmp_path, engine_with(), "app:2")
    assert caught.value.exit_code == 2
    assert str(caught.value).startswith("bundle.yaml: component app: image app:2 is not in the Docker engine")


def test_digest_references_are_refused_at_build(tmp_path: Path) -> None:
    with pytest.raises(UsageError, match="give NAME:TAG, not a digest"):
        export(tmp_path, engine_with(), "app@" + IMAGE_ID)


def test_compressed_layers_are_refused(tmp_path: Path) -> None:
    import gzip

    archive = docker_archive(CONFIG, LAYERS)
    # Replace one layer with its gzip form, as a containerd image store would save it.
    parts = []
    with tarfile.open(fileobj=io.BytesIO(archive)) as tar:
        for info in tar:
            data = tar.extractfile(info).read() if info.isreg() else b""  # type: ignore[union-attr]
            if data == APP:
                data = gzip.compress(APP)
                info.size = len(data)
            parts.append((info, data))
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w") as tar:
        for info, data in parts:
            tar.addfile(info, io.BytesIO(data) if info.isreg() else None)
    with pytest.raises(IntegrityError, match="not its diff ID"):
        export(tmp_path, engine_with(out.getvalue()))


def test_archive_without_a_layer_is_refused(tmp_path: Path) -> None:
    archive = docker_archive(CONFIG, LAYERS[:3])  # manifest lists 3 layers, config 4
    with pytest.raises(IntegrityError, match="disagree on layers"):
        export(tmp_path, engine_with(archive))


def test_archive_of_another_image_is_refused(tmp_path: Path) -> None:
    other = config_for(LAYERS, arch="arm64")
    with pytest.raises(IntegrityError, match="not image"):
        export(tmp_path, engine_with(docker_archive(other, LAYERS)))


# -- load: checks on the verified tree ----------------------------------------------------------------


def test_check_component_accepts_what_export_made(tmp_path: Path) -> None:
    exported = export(tmp_path, engine_with())
    tree = component_tree(tmp_path, exported)
    assert check_component(tree, entry_for(exported)) == exported.layout


def _mutations(exported: Any) -> dict[str, Any]:
    record = exported.layout.record
    other = "sha256:" + "c" * 64
    return {
        "signed id differs": lambda tree, entry: entry_for(
            exported, record=ImageRecord(other, record.manifest_digest, record.platform, record.ref)
        ),
        "signed ref differs": lambda tree, entry: entry_for(
            exported, record=ImageRecord(record.id, record.manifest_digest, record.platform, "app:2")
        ),
        "signed platform differs": lambda tree, entry: entry_for(
            exported, record=ImageRecord(record.id, record.manifest_digest, "linux/arm64", record.ref)
        ),
        "manifest digest differs": lambda tree, entry: entry_for(
            exported, record=ImageRecord(record.id, other, record.platform, record.ref)
        ),
        "extra file": lambda tree, entry: _add_member(tree, entry, "extra.txt", b"x"),
        "missing layer": lambda tree, entry: _drop_member(entry, blob_path(digest(APP))),
        "edited index.json": lambda tree, entry: _rewrite(tree, entry, "index.json", b" "),
        "edited manifest.json": lambda tree, entry: _rewrite(tree, entry, "manifest.json", b"\n"),
        "layer grew": lambda tree, entry: _rewrite(tree, entry, blob_path(digest(APP)), b"\0"),
        "layer byte flipped": lambda tree, entry: _flip(tree, entry, blob_path(digest(APP))),
        "member outside the component": lambda tree, entry: ComponentEntry(
            entry.name, entry.kind, (*entry.members, "content/other/x"), None, entry.image
        ),
    }


def _add_member(tree: Path, entry: ComponentEntry, rel: str, data: bytes) -> ComponentEntry:
    (tree / "content" / entry.name / rel).write_bytes(data)
    return ComponentEntry(
        entry.name, entry.kind, (*entry.members, f"content/{entry.name}/{rel}"), None, entry.image
    )


def _drop_member(entry: ComponentEntry, rel: str) -> ComponentEntry:
    kept = tuple(m for m in entry.members if m != f"content/{entry.name}/{rel}")
    return ComponentEntry(entry.name, entry.kind, kept, None, entry.image)


def _rewrite(tree: Path, entry: ComponentEntry, rel: str, extra: bytes) -> ComponentEntry:
    path = tree / "content" / entry.name / rel
    path.write_bytes(path.read_bytes() + extra)
    return entry


def _flip(tree: Path, entry: ComponentEntry, rel: str) -> ComponentEntry:
    path = tree / "content" / entry.name / rel
    data = bytearray(path.read_bytes())
    data[600] ^= 1  # same size: only the SHA-256 check can see it
    path.write_bytes(bytes(data))
    return entry


@pytest.mark.parametrize(
    "case",
    [
        "signed id differs",
        "signed ref differs",
        "signed platform differs",
        "manifest digest differs",
        "extra file",
        "missing layer",
        "edited index.json",
        "edited manifest.json",
        "layer grew",
        "layer byte flipped",
        "member outside the component",
    ],
)
def test_check_component_refuses_inconsistent_signed_content(tmp_path: Path, case: str) -> None:
    exported = export(tmp_path, engine_with())
    tree = component_tree(tmp_path, exported)
    entry = _mutations(exported)[case](tree, entry_for(exported))
    with pytest.raises(IntegrityError) as caught:
        check_component(tree, entry)
    assert caught.value.exit_code == 3
    assert str(caught.value).startswith("component app: ")
    if case == "layer byte flipped":
        assert "SHA-256 is not the digest it is named by" in str(caught.value)


def test_check_component_needs_a_record(tmp_path: Path) -> None:
    exported = export(tmp_path, engine_with())
    tree = component_tree(tmp_path, exported)
    entry = entry_for(exported)
    with pytest.raises(IntegrityError, match="without a signed image record"):
        check_component(tree, ComponentEntry(entry.name, "image", entry.members, None, None))


# -- load: the stream and the ID check --------------------------------------------------------------


def test_image_tar_is_a_docker_archive_of_the_verified_files(tmp_path: Path) -> None:
    exported = export(tmp_path, engine_with())
    tree = component_tree(tmp_path, exported)
    directory = tree / "content/app"
    chunks = list(image_tar(directory, exported.layout.paths()))
    assert max(len(c) for c in chunks) <= 1024 * 1024
    data = b"".join(chunks)
    assert len(data) % 512 == 0
    with tarfile.open(fileobj=io.BytesIO(data)) as tar:
        files = {i.name: tar.extractfile(i).read() for i in tar if i.isreg()}  # type: ignore[union-attr]
        dirs = [i.name for i in tar if i.isdir()]
    assert dirs == ["blobs", "blobs/sha256"]
    assert files == {rel: (directory / rel).read_bytes() for rel in exported.layout.paths()}


def test_load_checks_the_engine_id_against_the_signed_one(tmp_path: Path) -> None:
    exported = export(tmp_path, engine_with())
    tree = component_tree(tmp_path, exported)
    target = FakeEngine()
    loaded = load_image(FakeClient(target), tree / "content/app", exported.layout, "app")
    assert loaded == IMAGE_ID
    assert len(target.loaded) == 1 and target.removed == []


def test_an_engine_that_loads_something_else_gets_it_removed(tmp_path: Path) -> None:
    exported = export(tmp_path, engine_with())
    tree = component_tree(tmp_path, exported)
    target = FakeEngine()
    impostor = "sha256:" + "e" * 64

    def wrong(received: bytes) -> Any:
        target.images.append(FakeImage(impostor, received, ["app:1"]))
        yield {"stream": "Loaded image: app:1\n"}

    target.load_answer = wrong  # type: ignore[method-assign]
    with pytest.raises(IntegrityError) as caught:
        load_image(FakeClient(target), tree / "content/app", exported.layout, "app")
    assert caught.value.exit_code == 3
    assert f"the engine loaded ID {impostor}, the bundle signed {IMAGE_ID}" in str(caught.value)
    assert f"{impostor} was removed" in str(caught.value)
    assert target.removed == [impostor]
    assert all(i.id != impostor for i in target.images)


def test_an_engine_error_is_a_provisioning_failure(tmp_path: Path) -> None:
    exported = export(tmp_path, engine_with())
    tree = component_tree(tmp_path, exported)
    target = FakeEngine()

    def refuse(received: bytes) -> Any:
        yield {"error": "no space left on device"}

    target.load_answer = refuse  # type: ignore[method-assign]
    with pytest.raises(ProvisionError, match="engine refused the image: no space left"):
        load_image(FakeClient(target), tree / "content/app", exported.layout, "app")


# -- load: the verified tree and the order of things ----------------------------------------------


def test_load_verified_needs_image_components(tmp_path: Path) -> None:
    from enclave.bundle.statement import BundleStatement
    from enclave.images.load import load_verified

    statement = BundleStatement("demo", "1.0.0", "2026-01-01T00:00:00Z", "sha384", 1 << 24, (), ())
    with pytest.raises(UsageError, match=r"demo 1\.0\.0: the bundle has no image components") as caught:
        load_verified(FakeClient(FakeEngine()), tmp_path, statement)
    assert caught.value.exit_code == 2


def test_every_image_is_checked_before_any_is_loaded(tmp_path: Path) -> None:
    from enclave.bundle.statement import BundleStatement
    from enclave.images.load import load_verified

    exported = export(tmp_path, engine_with())
    tree = component_tree(tmp_path, exported, "one")
    for rel, source in exported.files.items():  # a second component, then spoil its index.json
        target = tree / "content" / "two" / rel
        target.parent.mkdir(parents=True, exist_ok=True)
        data = source.read_bytes()
        target.write_bytes(data.replace(b"schemaVersion", b"schemaVersioN") if rel == "index.json" else data)
    entries = (entry_for(exported, "one"), entry_for(exported, "two"))
    statement = BundleStatement("demo", "1.0.0", "2026-01-01T00:00:00Z", "sha384", 1 << 24, entries, ())
    target = FakeEngine()
    with pytest.raises(IntegrityError, match=r"component two: content/two/index\.json is not the one"):
        load_verified(FakeClient(target), tree, statement)
    assert target.loaded == []  # the good first image was not loaded either


def test_no_engine_means_nothing_is_read(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from enclave.admission import Admission
    from enclave.images.load import load_bundle_images

    def no_engine(url: str | None) -> Any:
        raise ProvisionError(f"{url}: no Docker engine answers")

    monkeypatch.setenv("TMPDIR", str(tmp_path))
    with pytest.raises(ProvisionError, match="no Docker engine answers"):
        # The bundle does not even exist: the engine is asked first.
        load_bundle_images(Admission(), tmp_path / "missing.bundle", "unix:///x", connector=no_engine)
    assert list(tmp_path.iterdir()) == []


def test_extraction_dir_is_removed_unless_named(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from enclave.images.load import extraction_dir

    monkeypatch.setenv("TMPDIR", str(tmp_path))
    with extraction_dir(None) as tree:
        assert tree.parent.parent == tmp_path and not tree.exists()
        tree.mkdir()
        (tree / "f").write_text("x")
    assert list(tmp_path.iterdir()) == []
    kept = tmp_path / "kept"
    with extraction_dir(kept) as tree:
        assert tree == kept
        kept.mkdir()
    assert kept.is_dir()


def test_an_unsigned_id_the_engine_reports_is_removed_too(tmp_path: Path) -> None:
    exported = export(tmp_path, engine_with())
    tree = component_tree(tmp_path, exported)
    target = FakeEngine()
    stray = "sha256:" + "f" * 64
    honest = target.load_answer

    def also_stray(received: bytes) -> Any:
        yield from honest(received)
        target.images.append(FakeImage(stray, b"", []))
        yield {"stream": f"Loaded image ID: {stray}\n"}

    target.load_answer = also_stray  # type: ignore[method-assign]
    with pytest.raises(IntegrityError, match=f"the engine loaded ID {stray}"):
        load_image(FakeClient(target), tree / "content/app", exported.layout, "app")
    assert target.removed == [stray]
