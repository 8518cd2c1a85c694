"""Wheelhouses for the reference images, made on the low side (the only side with an index).

Each image's build context lists what it installs (`requirements.txt`); `pip wheel` resolves and
fetches those, pinned to the versions installed here (the environment the tests ran in), and the
image installs them with `--no-index --no-deps`: nothing is resolved or fetched inside the image.
`enclave` in a requirements file means the project's own wheel, built from this source tree
(or repacked from the installed enclave), without its declared dependencies (an image gets only
the third-party packages it lists).
pip itself is carried as a wheel and run from it (`python pip.whl/pip install ...`), so the
images have no pip. Everything is cached under the enclave cache directory, keyed by a hash of
its inputs: a second build with the same inputs runs no pip at all.
"""

from __future__ import annotations

import base64
import hashlib
import importlib.metadata
import os
import shutil
import subprocess
import sys
import tempfile
import zipfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from enclave.errors import ProvisionError, UsageError
from enclave.images.store import cache_root

PROJECT = "enclave"
PIP_TIMEOUT = 1800  # seconds for one pip run (a cold cache downloads ~100 MB)


@dataclass(frozen=True)
class Wheelhouse:
    wheels: tuple[Path, ...]  # to install, sorted by file name
    pip: Path  # pip's own wheel, to run


def source_tree() -> Path | None:
    """The source tree this enclave runs from (it holds pyproject.toml); None when installed."""
    root = Path(__file__).resolve().parents[2]
    if (root / "pyproject.toml").is_file() and (root / PROJECT).is_dir():
        return root
    return None


def parse_requirements(path: Path) -> list[str]:
    """Requirement lines (comments and blanks dropped); options are not allowed here."""
    try:
        lines = path.read_text().splitlines()
    except OSError as exc:
        raise UsageError(f"{path}: cannot read: {exc.strerror}") from None
    found = []
    for number, line in enumerate(lines, start=1):
        text = line.split("#", 1)[0].strip()
        if not text:
            continue
        if text.startswith("-") or "://" in text or "/" in text:
            raise UsageError(f"{path}:{number}: only package names (with extras/markers) are allowed")
        found.append(text)
    return found


def constraints() -> str:
    """`name==version` for every distribution installed here except the project itself."""
    pins = set()
    for dist in importlib.metadata.distributions():
        name = (dist.metadata["Name"] or "").strip()
        if name and _canonical(name) != PROJECT:
            pins.add(f"{_canonical(name)}=={dist.version}")
    return "".join(f"{pin}\n" for pin in sorted(pins))


def _canonical(name: str) -> str:
    return "-".join(name.replace("_", "-").replace(".", "-").lower().split("-"))


def wheelhouse(requirements: Sequence[str], python: tuple[int, int]) -> Wheelhouse:
    """The wheels for `requirements` (and the project's wheel if `enclave` is listed)."""
    if sys.version_info[:2] != python:
        have = ".".join(map(str, sys.version_info[:2]))
        raise UsageError(
            f"image wheels are made for Python {python[0]}.{python[1]} (the base image's); "
            f"this is Python {have}: run enclave images build with Python {python[0]}.{python[1]}"
        )
    third_party = [r for r in requirements if _canonical(_name_of(r)) != PROJECT]
    wheels = list(_third_party(third_party)) if third_party else []
    if len(third_party) != len(requirements):
        wheels.append(project_wheel())
    return Wheelhouse(tuple(sorted(wheels, key=lambda p: p.name)), _pip_wheel())


def _name_of(requirement: str) -> str:
    for stop in "[<>=!~;@ ":
        requirement = requirement.split(stop, 1)[0]
    return requirement


def cache_key(*parts: str | bytes) -> str:
    h = hashlib.sha256()
    for part in parts:
        data = part.encode() if isinstance(part, str) else part
        h.update(len(data).to_bytes(8, "big") + data)
    return h.hexdigest()[:24]


def _third_party(requirements: Sequence[str]) -> list[Path]:
    pins = constraints()
    target = cache_root() / "wheels" / f"deps-{cache_key(*requirements, pins, sys.version)}"

    def make(directory: Path) -> None:
        listing = directory / "constraints.txt"
        listing.write_text(pins)
        run_pip(["wheel", "--wheel-dir", str(directory), "--constraint", str(listing), *requirements])
        listing.unlink()

    return cached_dir(target, make)


def project_wheel() -> Path:
    """enclave's own wheel: built from the source tree it runs from, or for an installed
    enclave repacked from its installed files; cached by content either way."""
    root = source_tree()
    return _built_wheel(root) if root is not None else _installed_wheel()


def _built_wheel(root: Path) -> Path:
    files = [root / "pyproject.toml", root / "README.md"]
    for directory, dirnames, filenames in os.walk(root / PROJECT, followlinks=True):  # enclave/_data links
        dirnames[:] = sorted(d for d in dirnames if d != "__pycache__")
        files += [Path(directory) / name for name in sorted(filenames)]
    digest = hashlib.sha256()
    for path in files:
        digest.update(cache_key(str(path.relative_to(root)), path.read_bytes()).encode())
    target = cache_root() / "wheels" / f"project-{digest.hexdigest()[:24]}"

    def make(directory: Path) -> None:
        # A copy of just what the wheel is made of: setuptools writes build/ and *.egg-info
        # beside the sources, and the tree may hold work directories of any size. The copy
        # follows enclave/_data's links: the package data goes in as files.
        source = directory / "src"
        source.mkdir()
        for name in ("pyproject.toml", "README.md"):
            shutil.copy2(root / name, source / name)
        shutil.copytree(root / PROJECT, source / PROJECT, ignore=shutil.ignore_patterns("__pycache__"))
        run_pip(["wheel", "--no-deps", "--wheel-dir", str(directory), str(source)])
        shutil.rmtree(source)

    (wheel,) = cached_dir(target, make)
    return wheel


# What pip writes at installation, not part of the wheel it installed.
_INSTALL_RECORDS = frozenset({"RECORD", "INSTALLER", "REQUESTED", "direct_url.json"})


def _installed_wheel() -> Path:
    """The installed distribution packed back into a wheel: its files as installed (pip copies
    a wheel's files verbatim), a fresh RECORD, fixed times; the console script is rebuilt by
    whoever installs it from entry_points.txt."""
    dist = importlib.metadata.distribution(PROJECT)
    info = f"{PROJECT}-{dist.version}.dist-info"
    files: dict[str, bytes] = {}
    for entry in dist.files or []:
        parts = entry.parts
        if parts[0] not in (PROJECT, info) or "__pycache__" in parts:
            continue
        if parts[0] == info and parts[-1] in _INSTALL_RECORDS:
            continue
        files["/".join(parts)] = Path(str(dist.locate_file(entry))).read_bytes()
    if f"{info}/WHEEL" not in files:
        raise UsageError(f"{PROJECT} {dist.version} is not installed from a wheel: cannot repack it")
    target = cache_root() / "wheels" / f"installed-{cache_key(*files, *files.values())}"
    name = f"{PROJECT}-{dist.version}-py3-none-any.whl"

    def make(directory: Path) -> None:
        lines = [f"{n},sha256={_record_hash(d)},{len(d)}" for n, d in sorted(files.items())]
        record = "".join(f"{line}\n" for line in [*lines, f"{info}/RECORD,,"]).encode()
        with zipfile.ZipFile(directory / name, "w", zipfile.ZIP_DEFLATED) as wheel:
            for member, data in [*sorted(files.items()), (f"{info}/RECORD", record)]:
                wheel.writestr(zipfile.ZipInfo(member, (1980, 1, 1, 0, 0, 0)), data, zipfile.ZIP_DEFLATED)

    (wheel,) = cached_dir(target, make)
    return wheel


def _record_hash(data: bytes) -> str:
    """A RECORD line's hash: urlsafe base64 of SHA-256, unpadded (PEP 376, PEP 427)."""
    return base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode("ascii")


def _pip_wheel() -> Path:
    version = importlib.metadata.version("pip")
    target = cache_root() / "wheels" / f"pip-{version}"

    def make(directory: Path) -> None:
        run_pip(["download", "--no-deps", "--only-binary=:all:", "--dest", str(directory), f"pip=={version}"])

    (wheel,) = cached_dir(target, make)
    return wheel


def cached_dir(target: Path, make: Callable[[Path], None]) -> list[Path]:
    """The wheels in `target`, made first (in a scratch directory renamed into place) if absent."""
    if not target.is_dir():
        target.parent.mkdir(parents=True, exist_ok=True)
        scratch = Path(tempfile.mkdtemp(prefix=f".{target.name}-", dir=target.parent))
        try:
            make(scratch)
            if not any(scratch.glob("*.whl")):
                raise ProvisionError(f"pip made no wheels for {target.name}")
            try:
                os.rename(scratch, target)
            except OSError:
                if not target.is_dir():  # else another build made it first: use that one
                    raise
        finally:
            shutil.rmtree(scratch, ignore_errors=True)
    wheels = sorted(target.glob("*.whl"))
    if not wheels:
        raise ProvisionError(f"{target}: cached wheelhouse is empty; remove it and build again")
    return wheels


def run_pip(args: list[str]) -> None:
    env = dict(os.environ, PIP_DISABLE_PIP_VERSION_CHECK="1", PIP_NO_INPUT="1")
    try:
        proc = subprocess.run(
            [sys.executable, "-m", "pip", *args],
            capture_output=True,
            text=True,
            env=env,
            timeout=PIP_TIMEOUT,
            check=False,
        )
    except subprocess.TimeoutExpired:
        raise ProvisionError(f"pip {args[0]} took more than {PIP_TIMEOUT} s") from None
    if proc.returncode != 0:
        lines = [line for line in (proc.stderr or proc.stdout).strip().splitlines() if line.strip()]
        # pip's first ERROR line says what failed; what follows it (a resolver's story) is longer.
        first = next((line for line in lines if line.startswith("ERROR:")), (lines or ["no output"])[-1])
        raise ProvisionError(f"pip {args[0]} failed (exit {proc.returncode}): {first}")
