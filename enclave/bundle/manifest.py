"""The bundle manifest (YAML, the low side's input): parse, validate, resolve paths.

Errors name the file, the line and the field, e.g.
`manifests/demo.yaml:12: spec.components[1]: 'pth' is not allowed (did you mean 'path'?)`.
"""

from __future__ import annotations

import difflib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import jsonschema
import yaml

from enclave.errors import UsageError
from enclave.fileio import read_regular
from enclave.resources import data_path, shipped
from enclave.yamldoc import load_yaml_document

DIGESTS = ("sha256", "sha384", "sha512")
DEFAULT_DIGEST = "sha384"
DEFAULT_CHUNK_SIZE = 16 * 1024 * 1024
SCHEMA = ("manifests", "schema", "bundle.schema.json")  # package data (enclave.resources)


@dataclass(frozen=True)
class Component:
    name: str
    kind: str
    path: Path | None  # resolved, for every kind but image
    ref: str | None  # image reference, for kind image
    format: str | None


@dataclass(frozen=True)
class Manifest:
    source: Path
    name: str
    version: str
    digest: str
    chunk_size: int
    components: tuple[Component, ...]
    raw: bytes  # the manifest file as read, for provenance

    @property
    def bundle_name(self) -> str:
        return f"{self.name}-{self.version}.bundle"


def load_schema() -> dict[str, Any]:
    schema: dict[str, Any] = json.loads(data_path(*SCHEMA).read_text("utf-8"))
    return schema


def parse_size(text: str, what: str = "size") -> int:
    """`4GiB`, `4.7GB`, `64MiB`, `1048576` -> bytes."""
    units = {
        "": 1, "B": 1, "K": 1000, "KB": 1000, "M": 1000**2, "MB": 1000**2, "G": 1000**3, "GB": 1000**3,
        "T": 1000**4, "TB": 1000**4, "KIB": 1024, "MIB": 1024**2, "GIB": 1024**3, "TIB": 1024**4,
    }  # fmt: skip
    stripped = text.strip()
    number = stripped.rstrip("BbKkMmGgTtIi")
    unit = stripped[len(number) :].upper()
    try:
        value = float(number)
    except ValueError:
        raise UsageError(f"{what}: {text!r} is not a size (e.g. 4GiB, 4.7GB, 650MB)") from None
    if unit not in units or value <= 0:
        raise UsageError(f"{what}: {text!r} is not a size (e.g. 4GiB, 4.7GB, 650MB)")
    return int(value * units[unit])


def _line_of(root: yaml.Node, path: list[str | int]) -> int:
    """The 1-based line of the YAML node at `path` (or of its nearest existing parent)."""
    node = root
    for step in path:
        if isinstance(node, yaml.MappingNode):
            match = [v for k, v in node.value if isinstance(k, yaml.ScalarNode) and k.value == step]
            if not match:
                break
            node = match[0]
        elif isinstance(node, yaml.SequenceNode) and isinstance(step, int) and step < len(node.value):
            node = node.value[step]
        else:
            break
    return int(node.start_mark.line) + 1


def _field(path: list[str | int]) -> str:
    out = ""
    for step in path:
        out += f"[{step}]" if isinstance(step, int) else (f".{step}" if out else step)
    return out or "(top level)"


def _message(error: jsonschema.ValidationError, schema: dict[str, Any]) -> tuple[list[str | int], str]:
    path = list(error.absolute_path)
    if error.validator == "additionalProperties":
        allowed = list(error.schema.get("properties", {}))
        extra = [k for k in error.instance if k not in allowed]
        if extra:
            hint = difflib.get_close_matches(extra[0], allowed, n=1)
            suffix = f" (did you mean {hint[0]!r}?)" if hint else f" (allowed: {', '.join(allowed)})"
            return [*path, extra[0]], f"{extra[0]!r} is not allowed{suffix}"
    if error.validator == "required":
        return path, error.message
    if error.validator == "enum":
        return path, f"{error.instance!r} is not one of {', '.join(map(str, error.validator_value))}"
    if error.validator == "pattern":
        return path, f"{error.instance!r} has the wrong form"
    if error.validator == "not":
        return path, "give either 'path' (files) or 'ref' (kind image), not both"
    return path, error.message


def load_manifest(path: Path) -> Manifest:
    raw = read_regular(path, "manifest")
    node, doc = load_yaml_document(raw, str(path), "manifest")  # no anchors or aliases
    if not isinstance(doc, dict):
        raise UsageError(f"{path}:1: manifest must be a YAML mapping")
    schema = load_schema()
    validator = jsonschema.Draft202012Validator(schema)
    errors = list(validator.iter_errors(doc))
    if errors:
        # A misspelt key is the likeliest typo and the most useful thing to name, before the
        # "required" error it also causes; among equals, the deepest field is the most precise.
        rank = {"additionalProperties": 0, "enum": 1, "const": 1, "pattern": 1, "type": 1, "required": 2}
        best = min(errors, key=lambda e: (rank.get(str(e.validator), 3), -len(e.absolute_path)))
        field_path, message = _message(best, schema)
        raise UsageError(f"{path}:{_line_of(node, field_path)}: {_field(field_path)}: {message}")
    spec = doc["spec"]
    chunk_size = (
        parse_size(spec["chunkSize"], "spec.chunkSize") if "chunkSize" in spec else DEFAULT_CHUNK_SIZE
    )
    if chunk_size < 1024 * 1024 or chunk_size & (chunk_size - 1):
        raise UsageError(f"{path}: spec.chunkSize must be a power of two of at least 1MiB")
    base = path.parent
    components: list[Component] = []
    seen: set[str] = set()
    for index, entry in enumerate(spec["components"]):
        where = f"{path}:{_line_of(node, ['spec', 'components', index])}: spec.components[{index}]"
        if entry["name"] in seen:
            raise UsageError(f"{where}: duplicate component name {entry['name']!r}")
        seen.add(entry["name"])
        resolved = None
        if "path" in entry:
            resolved = (shipped(entry["path"]) or base / entry["path"]).resolve()
            if not resolved.exists():
                raise UsageError(f"{where}.path: {entry['path']} does not exist (resolved to {resolved})")
        components.append(
            Component(entry["name"], entry["kind"], resolved, entry.get("ref"), entry.get("format"))
        )
    return Manifest(
        source=path,
        name=doc["metadata"]["name"],
        version=doc["metadata"]["version"],
        digest=spec.get("digest", DEFAULT_DIGEST),
        chunk_size=chunk_size,
        components=tuple(components),
        raw=raw,
    )
