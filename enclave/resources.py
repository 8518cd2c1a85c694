"""What enclave reads at run time from its own package: the manifest JSON Schema, the image
build contexts, the playbooks, the default usage policy and canaries, the learned guard and
the demo manifest (importlib.resources, so an installed wheel has them as well as a checkout).

In the source tree `enclave/_data/{manifests,playbooks,bundles}` are symbolic links to the
top-level folders of the same names, which stay the one copy anyone edits; building the wheel
copies the files behind the links into the package (pyproject.toml, package-data; the guard's
training corpus `bundles/guard/corpus` is left out: only `enclave guard train --corpus` reads
it). A manifest names shipped files with the prefix `enclave:` (`path: enclave:playbooks`).
"""

from __future__ import annotations

from importlib import resources
from pathlib import Path

from enclave.errors import UsageError

DATA = "_data"
PREFIX = "enclave:"  # in a manifest's component path: a file or folder shipped with enclave
FOLDERS = ("manifests", "playbooks", "bundles")  # the top-level sources of the package data


def data_root() -> Path:
    """The package's data folder, a real directory (enclave is installed as files, never zipped)."""
    return Path(str(resources.files("enclave").joinpath(DATA)))


def data_path(*parts: str) -> Path:
    """A shipped file or folder, e.g. `data_path("manifests", "schema", "bundle.schema.json")`."""
    path = data_root().joinpath(*parts)
    if not path.exists():
        raise UsageError(f"{path}: not shipped with this enclave (a damaged installation?)")
    return path


def shipped(text: str) -> Path | None:
    """The shipped path a manifest names with `enclave:REL`; None for any other path."""
    if not text.startswith(PREFIX):
        return None
    parts = text[len(PREFIX) :].strip("/").split("/")
    if not parts[0] or any(p in ("", ".", "..") for p in parts):
        raise UsageError(f"{text}: name a file or folder shipped with enclave, e.g. {PREFIX}playbooks")
    return data_path(*parts)
