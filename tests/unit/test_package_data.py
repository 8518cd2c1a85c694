"""What enclave reads at run time is package data (enclave/resources.py): `enclave/_data/` holds
links to the top-level manifests/, playbooks/ and bundles/, which stay the one copy anyone
edits. The wheel built from them is compared with these folders in tests/integration/test_kit.py."""

from __future__ import annotations

import hashlib
import os
import tomllib
from pathlib import Path

import pytest

from enclave.bundle.manifest import load_manifest, load_schema
from enclave.errors import UsageError
from enclave.images.reference import IMAGES, contexts_dir
from enclave.resources import FOLDERS, data_path, data_root

REPO = Path(__file__).resolve().parents[2]
NOT_SHIPPED = ("bundles/guard/corpus",)  # read only by `enclave guard train --corpus`


def tree(root: Path) -> dict[str, str]:
    """Relative path -> SHA-256 of every file below `root` (links followed), as a wheel ships it."""
    found = {}
    for directory, dirnames, filenames in os.walk(root, followlinks=True):
        dirnames[:] = [d for d in dirnames if d != "__pycache__"]
        for name in filenames:
            path = Path(directory) / name
            found[path.relative_to(root).as_posix()] = hashlib.sha256(path.read_bytes()).hexdigest()
    return found


def shipped_sources(folder: str) -> dict[str, str]:
    """The top-level folder's files, less what the package leaves out."""
    return {
        rel: digest
        for rel, digest in tree(REPO / folder).items()
        if not any(f"{folder}/{rel}".startswith(f"{skip}/") for skip in NOT_SHIPPED)
    }


@pytest.mark.parametrize("folder", FOLDERS)
def test_package_data_is_the_top_level_folder(folder: str) -> None:
    data = data_root() / folder
    if data.is_symlink():  # the layout of the source tree: one copy, nothing to keep in step
        assert data.resolve() == (REPO / folder).resolve()
    found = tree(data)
    for skip in NOT_SHIPPED:  # a link shows it here; the wheel leaves it out (pyproject.toml)
        found = {r: d for r, d in found.items() if not f"{folder}/{r}".startswith(f"{skip}/")}
    assert found == shipped_sources(folder)
    assert found  # not an empty or dangling link


def test_pyproject_ships_the_data_and_leaves_out_the_corpus() -> None:
    setuptools = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["setuptools"]
    assert "_data/**/*" in setuptools["package-data"]["enclave"]
    assert "_data/bundles/guard/corpus/*" in setuptools["exclude-package-data"]["enclave"]
    assert "enclave._data*" in setuptools["packages"]["find"]["exclude"]


def test_run_time_readers_use_the_package_data() -> None:
    assert load_schema()["$id"] == "urn:enclave:schema:bundle-manifest:v1"
    assert contexts_dir() == data_path("bundles", "images")
    assert all((contexts_dir() / name / "Dockerfile").is_file() for name in IMAGES)
    shipped = [
        "bundles/policy/default.yaml",
        "bundles/policy/canaries.yaml",
        "bundles/guard/model/guard.json",
    ]
    for rel in [*shipped, "playbooks/site.yml", "manifests/demo.yaml"]:
        assert data_path(*rel.split("/")).is_file(), rel


def _manifest(tmp_path: Path, path: str) -> Path:
    manifest = tmp_path / "bundle.yaml"
    manifest.write_text(
        "apiVersion: enclave/v1\nkind: Bundle\nmetadata: {name: b, version: 1.0.0}\n"
        f"spec:\n  components:\n    - {{name: site, kind: playbooks, path: '{path}'}}\n"
    )
    return manifest


def test_a_manifest_names_shipped_files_with_the_enclave_prefix(tmp_path: Path) -> None:
    (component,) = load_manifest(_manifest(tmp_path, "enclave:playbooks")).components
    assert component.path == (REPO / "playbooks").resolve()
    (component,) = load_manifest(_manifest(tmp_path, "enclave:bundles/policy/default.yaml")).components
    assert component.path == (REPO / "bundles" / "policy" / "default.yaml").resolve()


@pytest.mark.parametrize(
    "path", ["enclave:", "enclave:../pyproject.toml", "enclave:playbooks/../..", "enclave:nothing"]
)
def test_the_enclave_prefix_stays_in_the_package_data(tmp_path: Path, path: str) -> None:
    with pytest.raises(UsageError, match="enclave"):
        load_manifest(_manifest(tmp_path, path))
