"""`enclave kit build`: enclave and every dependency as wheels for an offline installation.

The project's wheel comes from enclave.images.wheels (built from the source tree, or repacked
from the installed enclave). Its dependencies, with the extras asked for, are fetched by
`pip download --only-binary=:all:` for the target Python and platforms, constrained to the
versions installed here (the environment the tests ran in), and cached under the enclave
cache directory keyed by everything that decides the resolution (the wheel's declared
dependencies, extras, Python, platforms, the pins and pip's version): a second build with the
same inputs runs no pip. The kit directory then gets:

    *.whl              every wheel, enclave's included
    requirements.txt   `name==version --hash=sha256:...` for each (pip --require-hashes)
    install.sh         venv + `pip install --no-index --find-links KIT --require-hashes`
    verify-kit.py      the bootstrap check (enclave/kit/bootstrap.py, verbatim)
    sbom.cdx.json      CycloneDX 1.6 of the kit (enclave.bundle.sbom)
    kit.dsse.json      the in-toto statement of all the above, DSSE-signed by every --key
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib.metadata
import os
import re
import shutil
import sys
import tempfile
import zipfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

from enclave import __version__
from enclave.bundle.build import created_time
from enclave.bundle.sbom import build_sbom, wheel_purl
from enclave.bundle.statement import ComponentEntry, Member
from enclave.canonical import canonical, format_time
from enclave.errors import UsageError
from enclave.images.store import cache_root
from enclave.images.wheels import cache_key, cached_dir, constraints, project_wheel, run_pip
from enclave.kit import bootstrap
from enclave.kit.bootstrap import PREDICATE_TYPE, STATEMENT, STATEMENT_TYPE
from enclave.trust.dsse import IN_TOTO_PAYLOAD_TYPE, Envelope
from enclave.trust.keys import SigningKey

REQUIREMENTS = "requirements.txt"
INSTALL = "install.sh"
VERIFIER = "verify-kit.py"
SBOM = "sbom.cdx.json"
PYTHONS = ("3.11", "3.12")
PROJECT = "enclave"

Progress = Callable[[str], None]


@dataclass(frozen=True)
class Kit:
    path: Path
    version: str
    python: str
    extras: tuple[str, ...]
    wheels: tuple[str, ...]  # file names
    statement_sha256: str  # of the signed payload
    verifier_sha384: str  # of verify-kit.py: publish it with root.json (docs/OPERATIONS.md 15)


def declared(wheel: Path) -> tuple[list[str], set[str]]:
    """(Requires-Dist lines, Provides-Extra names) from a wheel's METADATA."""
    with zipfile.ZipFile(wheel) as archive:
        name = next(n for n in archive.namelist() if n.endswith(".dist-info/METADATA"))
        metadata = archive.read(name).decode("utf-8")
    requires, extras = [], set()
    for line in metadata.split("\n\n", 1)[0].splitlines():
        key, _, value = line.partition(": ")
        if key == "Requires-Dist":
            requires.append(value.strip())
        elif key == "Provides-Extra":
            extras.add(value.strip())
    return requires, extras


_MANYLINUX = re.compile(r"manylinux_2_(\d+)_(\w+)")
_LEGACY = {17: "manylinux2014", 12: "manylinux2010", 5: "manylinux1"}  # PEP 600's aliases


def platform_tags(platforms: Sequence[str]) -> list[str]:
    """`--platform` values for pip: a manylinux_2_N tag also admits every older glibc's (a host
    with glibc 2.N runs them all, but pip takes only the tags it is given)."""
    tags: list[str] = []
    for platform in platforms:
        found = [platform]
        if match := _MANYLINUX.fullmatch(platform):
            newest, arch = int(match[1]), match[2]
            for glibc in range(newest, 4, -1):
                found.append(f"manylinux_2_{glibc}_{arch}")
                if glibc in _LEGACY:
                    found.append(f"{_LEGACY[glibc]}_{arch}")
        tags += [tag for tag in dict.fromkeys(found) if tag not in tags]
    return tags


def dependencies(wheel: Path, extras: Sequence[str], python: str, platforms: Sequence[str]) -> list[Path]:
    """The wheels of every dependency of `wheel` with `extras`, for `python` and `platforms`."""
    requires, _ = declared(wheel)
    pins = constraints()
    pip_version = importlib.metadata.version("pip")
    inputs = [*requires, "|", *extras, "|", python, *platforms, "|", pins, pip_version]
    target = cache_root() / "kit" / f"deps-{cache_key(*inputs)}"
    target_args = ["--python-version", python, "--implementation", "cp"]
    target_args += [arg for platform in platform_tags(platforms) for arg in ("--platform", platform)]
    spec = f"{PROJECT}[{','.join(extras)}]" if extras else PROJECT

    def make(directory: Path) -> None:
        listing = directory / "constraints.txt"
        listing.write_text(pins)
        download = ["download", "--dest", str(directory), "--only-binary=:all:", *target_args]
        run_pip([*download, "--constraint", str(listing), f"{spec} @ {wheel.resolve().as_uri()}"])
        listing.unlink()
        for own in directory.glob(f"{PROJECT}-*.whl"):  # the project's wheel is added fresh
            own.unlink()

    return cached_dir(target, make)


def requirements_text(wheels: Sequence[Path], extras: Sequence[str], header: str) -> str:
    """One `name==version --hash=sha256:...` line per distribution (pip's hash-checking mode)."""
    hashes: dict[tuple[str, str], list[str]] = {}
    for wheel in wheels:
        parsed = wheel_purl(wheel.name)
        if parsed is None:
            raise UsageError(f"{wheel}: not a wheel file name")
        name, version, _ = parsed
        others = [v for (n, v) in hashes if n == name and v != version]
        if others:
            raise UsageError(f"{name}: two versions in one kit ({others[0]} and {version})")
        hashes.setdefault((name, version), []).append(hashlib.sha256(wheel.read_bytes()).hexdigest())
    lines = [f"# {line}".rstrip() for line in header.splitlines()]
    for (name, version), digests in sorted(hashes.items()):
        label = f"{name}[{','.join(extras)}]" if name == PROJECT and extras else name
        lines.append(f"{label}=={version} " + " ".join(f"--hash=sha256:{d}" for d in sorted(digests)))
    return "\n".join(lines) + "\n"


Hashed = dict[str, tuple[int, str, str]]  # file name -> (size, SHA-256, SHA-384)


def statement_payload(
    hashed: Hashed, version: str, created: str, python: str, platforms: Sequence[str], extras: Sequence[str]
) -> bytes:
    """The in-toto statement of the kit's files (its reader is bootstrap.read_statement)."""
    names = sorted(hashed)
    return canonical(
        {
            "_type": STATEMENT_TYPE,
            "subject": [
                {"name": n, "digest": {"sha256": hashed[n][1], "sha384": hashed[n][2]}} for n in names
            ],
            "predicateType": PREDICATE_TYPE,
            "predicate": {
                "name": PROJECT,
                "version": version,
                "created": created,
                "python": python,
                "platforms": list(platforms),
                "extras": list(extras),
                "files": [{"name": n, "size": hashed[n][0]} for n in names],
            },
        }
    )


def kit_sbom(hashed: Hashed, version: str, created: str) -> bytes:
    """CycloneDX of the kit: its wheels (a wheelhouse: each a library with its purl), its tools."""
    names = sorted(hashed)
    members = [Member(n, hashed[n][0], 0o644, hashed[n][2]) for n in names]
    components = [
        ComponentEntry("wheels", "wheelhouse", tuple(n for n in names if n.endswith(".whl"))),
        ComponentEntry("tools", "files", tuple(n for n in names if not n.endswith(".whl"))),
    ]
    return build_sbom(f"{PROJECT}-kit", version, created, "sha384", components, members, __version__)


def build_kit(
    out: Path,
    keys: Sequence[SigningKey],
    python: str | None = None,
    platforms: Sequence[str] = (),
    extras: Sequence[str] = (),
    progress: Progress | None = None,
) -> Kit:
    """Build the kit into the new directory `out` (it appears only when complete)."""
    say = progress or (lambda _line: None)
    python = python or f"{sys.version_info[0]}.{sys.version_info[1]}"
    if python not in PYTHONS:
        raise UsageError(f"--python {python}: choose one of {', '.join(PYTHONS)}")
    if not keys:
        raise UsageError("a kit is signed: give --key (keys of the bundle role)")
    if out.exists():
        raise UsageError(f"{out}: already exists; give a new directory")
    say("enclave wheel")
    own = project_wheel()
    wanted = tuple(sorted(set(extras)))
    _, known = declared(own)
    unknown = [e for e in wanted if e not in known or e == "dev"]
    if unknown:
        choices = ", ".join(sorted(known - {"dev"}))
        raise UsageError(f"--extras {unknown[0]}: not an extra of enclave (have: {choices})")
    say(f"dependencies for Python {python}" + (f" on {', '.join(platforms)}" if platforms else ""))
    wheels = sorted([*dependencies(own, wanted, python, platforms), own], key=lambda p: p.name)
    parsed = wheel_purl(own.name)
    if parsed is None:
        raise UsageError(f"{own}: not a wheel file name")
    version = parsed[1]
    created = format_time(created_time())
    where = ", ".join(platforms) or "this machine's platform"
    header = (
        f"enclave {version} kit: CPython {python} ({where}), extras: {', '.join(wanted) or 'none'}.\n"
        "Install offline, only after verify-kit.py passed (docs/OPERATIONS.md 15):\n"
        f"  pip install --no-index --find-links KIT --require-hashes -r KIT/{REQUIREMENTS}"
    )
    out.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{out.name}-", dir=out.parent))
    try:
        for wheel in wheels:
            shutil.copyfile(wheel, staging / wheel.name)
        (staging / REQUIREMENTS).write_text(requirements_text(wheels, wanted, header))
        for name, source in ((INSTALL, "install.sh"), (VERIFIER, "bootstrap.py")):
            (staging / name).write_bytes(resources.files("enclave.kit").joinpath(source).read_bytes())
            (staging / name).chmod(0o755)
        hashed = {name: bootstrap.hash_file(staging / name) for name in os.listdir(staging)}
        (staging / SBOM).write_bytes(kit_sbom(hashed, version, created))
        hashed[SBOM] = bootstrap.hash_file(staging / SBOM)
        payload = statement_payload(hashed, version, created, python, platforms, wanted)
        envelope = Envelope(IN_TOTO_PAYLOAD_TYPE, payload)
        for key in keys:
            envelope.sign(key)
        (staging / STATEMENT).write_bytes(envelope.to_json())
        os.chmod(staging, 0o755)
        os.rename(staging, out)
    finally:
        with contextlib.suppress(FileNotFoundError):
            shutil.rmtree(staging)
    say(f"{out}: {len(wheels)} wheels")
    return Kit(
        out,
        version,
        python,
        wanted,
        tuple(w.name for w in wheels),
        hashlib.sha256(payload).hexdigest(),
        hashed[VERIFIER][2],
    )
