"""The signed statement: an in-toto Statement v1 whose predicate describes a bundle.

`BundleStatement.to_payload` and `BundleStatement.from_payload` are the only writer and
reader of the format; parsing is strict (unknown or missing fields are errors).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from functools import cached_property
from typing import Any

from enclave.bundle.digest import chunk_count, combine, new_hash
from enclave.bundle.tarformat import CONTENT_PREFIX, ENVELOPE_NAME, check_name, check_tree, collision_key
from enclave.canonical import canonical, parse_time
from enclave.errors import DocumentLimitError, IntegrityError, UnsafeArchiveError
from enclave.strictjson import strict_json
from enclave.trust.dsse import MAX_ENVELOPE
from enclave.trust.state import SemVer

STATEMENT_TYPE = "https://in-toto.io/Statement/v1"
PREDICATE_TYPE = "urn:enclave:predicate:bundle:v1"
KINDS = ("model", "image", "playbooks", "agent", "policy", "guard", "files", "wheelhouse", "trust")
MODES = {"0644": 0o644, "0755": 0o755}
HEX_LENGTH = {"sha256": 64, "sha384": 96, "sha512": 128}
MIN_CHUNK, MAX_CHUNK = 1 << 20, 1 << 30
MAX_MEMBER_SIZE = 1 << 50  # bytes of one member, inclusive (FORMAT.md 3)
# FORMAT.md 3: a bundle or component name is one safe path segment (the manifest schema's
# pattern: bundles/NAME/VERSION.dsse.json and content/NAME/ are built from them); a version is
# a semantic version 2.0.0 of at most MAX_VERSION characters.
NAME = re.compile(r"[a-z0-9](?:[a-z0-9-]{0,62}[a-z0-9])?")
MAX_VERSION = 128


def _plain(algorithm: str, data: bytes) -> str:
    h = new_hash(algorithm)
    h.update(data)
    return h.hexdigest()


@dataclass(frozen=True)
class Member:
    name: str
    size: int
    mode: int
    digest: str  # hex; for a multi-chunk file, defined from `chunks` (digest.combine)
    chunks: tuple[str, ...] = ()  # hex per chunk, only for files of more than one chunk
    # hex H(content), only for files of more than one chunk (a single chunk's digest is already
    # the plain one): what CycloneDX, SLSA and `sha384sum` compare. Signed by the builder, not
    # recomputed by `verify`, which checks the chunks instead (FORMAT.md, "Provenance documents").
    plain: str = ""
    # Differential bundles: indices of the chunks this archive carries; the others come from the
    # base version in the high side's content store. None: every chunk is carried.
    carried: tuple[int, ...] | None = None

    def chunk_digests(self) -> tuple[str, ...]:
        return self.chunks or (self.digest,)

    def chunk_length(self, index: int, chunk_size: int) -> int:
        return min(chunk_size, self.size - index * chunk_size)

    def carried_chunks(self) -> tuple[int, ...]:
        return tuple(range(len(self.chunk_digests()))) if self.carried is None else self.carried

    def archive_size(self, chunk_size: int) -> int:
        """Bytes of this member in the archive: the carried chunks, concatenated in order."""
        if self.carried is None:
            return self.size
        return sum(self.chunk_length(i, chunk_size) for i in self.carried)

    @property
    def in_archive(self) -> bool:
        return self.carried is None or bool(self.carried)

    @property
    def plain_digest(self) -> str:
        """H(content) in the bundle's algorithm, for every file."""
        return self.plain or self.digest

    @classmethod
    def of_bytes(cls, name: str, data: bytes, algorithm: str, chunk_size: int, mode: int = 0o644) -> Member:
        """The entry of an in-memory member (the documents a build writes), chunked like a file."""
        view = memoryview(data)
        chunks = []
        for index in range(chunk_count(len(data), chunk_size)):
            h = new_hash(algorithm)
            h.update(view[index * chunk_size : (index + 1) * chunk_size])
            chunks.append(h.digest())
        if len(chunks) == 1:
            return cls(name, len(data), mode, chunks[0].hex())
        return cls(
            name,
            len(data),
            mode,
            combine(algorithm, chunk_size, chunks).hex(),
            tuple(c.hex() for c in chunks),
            _plain(algorithm, data),
        )


# An image component's signed identity (FORMAT.md, "Images"). Digests are `sha256:<hex>`,
# the engine's own form; `id` is the digest of the image config (the Docker image ID),
# `manifestDigest` the digest of the OCI manifest blob carried in the bundle.
IMAGE_DIGEST = re.compile(r"sha256:[0-9a-f]{64}")
IMAGE_PLATFORM = re.compile(r"[a-z0-9]+/[a-z0-9_]+(/[a-z0-9]+)?")
# NAME:TAG as `docker load` accepts it in a docker-archive's RepoTags (a tag is required there).
IMAGE_REF = re.compile(
    r"[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*(?::[0-9]+)?"  # first component, or a host[:port]
    r"(?:/[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*)*"
    r":[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}"
)


@dataclass(frozen=True)
class ImageRecord:
    id: str  # sha256:<hex> of the image config blob
    manifest_digest: str  # sha256:<hex> of the OCI image manifest blob
    platform: str  # os/architecture[/variant]
    ref: str  # NAME:TAG the image is loaded under

    def to_dict(self) -> dict[str, str]:
        return {
            "id": self.id,
            "manifestDigest": self.manifest_digest,
            "platform": self.platform,
            "ref": self.ref,
        }


@dataclass(frozen=True)
class ComponentEntry:
    name: str
    kind: str
    members: tuple[str, ...]
    format: str | None = None
    image: ImageRecord | None = None  # exactly for kind image


@dataclass(frozen=True)
class BundleStatement:
    name: str
    version: str
    created: str
    digest: str
    chunk_size: int
    components: tuple[ComponentEntry, ...]
    members: tuple[Member, ...]  # archive order, after the envelope
    extra: dict[str, Any] = field(default_factory=dict)  # optional predicate fields (base, volumes)

    @property
    def mtime(self) -> int:
        return int(parse_time(self.created).timestamp())

    @property
    def total_size(self) -> int:
        return sum(m.size for m in self.members)

    @cached_property
    def index(self) -> dict[str, int]:
        """Position of each member in archive order."""
        return {m.name: i for i, m in enumerate(self.members)}

    def to_dict(self) -> dict[str, Any]:
        predicate: dict[str, Any] = {
            "name": self.name,
            "version": self.version,
            "created": self.created,
            "digest": self.digest,
            "chunkSize": self.chunk_size,
            "components": [
                {"name": c.name, "kind": c.kind, "members": list(c.members)}
                | ({"format": c.format} if c.format else {})
                | ({"image": c.image.to_dict()} if c.image else {})
                for c in self.components
            ],
            "members": [
                {"name": m.name, "size": m.size, "mode": f"{m.mode:04o}"}
                | ({"chunks": list(m.chunks), "plainDigest": m.plain} if m.chunks else {})
                | ({"carried": list(m.carried)} if m.carried is not None else {})
                for m in self.members
            ],
        } | self.extra
        return {
            "_type": STATEMENT_TYPE,
            "subject": [{"name": m.name, "digest": {self.digest: m.digest}} for m in self.members],
            "predicateType": PREDICATE_TYPE,
            "predicate": predicate,
        }

    def to_payload(self) -> bytes:
        return canonical(self.to_dict())

    @classmethod
    def from_payload(cls, payload: bytes) -> BundleStatement:
        """Parse strictly (strictjson.strict_json, then every rule of FORMAT.md 3): IntegrityError;
        an oversize or too deeply nested payload, an unsafe name or version: UnsafeArchiveError."""
        try:
            doc = strict_json(payload, MAX_ENVELOPE)
            return _parse(doc)
        except UnsafeArchiveError:
            raise
        except DocumentLimitError as exc:
            raise UnsafeArchiveError(f"{ENVELOPE_NAME}: statement {exc}") from None
        except (KeyError, TypeError, ValueError) as exc:
            raise IntegrityError(f"{ENVELOPE_NAME}: invalid statement: {exc}") from None


def _fields(obj: Any, required: set[str], optional: set[str], where: str) -> dict[str, Any]:
    if not isinstance(obj, dict):
        raise ValueError(f"{where} must be an object")
    missing, unknown = required - set(obj), set(obj) - required - optional
    if missing or unknown:
        raise ValueError(f"{where}: missing {sorted(missing)} / unknown {sorted(unknown)} fields")
    return obj


def _int(value: Any, where: str, low: int, high: int) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or not low <= value <= high:
        raise ValueError(f"{where} must be an integer in [{low}, {high}]")
    return value


def _str(value: Any, where: str) -> str:
    if not isinstance(value, str):
        raise ValueError(f"{where} must be a string")
    return value


def _hex(value: Any, algorithm: str, where: str) -> str:
    text = _str(value, where)
    if len(text) != HEX_LENGTH[algorithm] or text.strip("0123456789abcdef"):
        raise ValueError(f"{where} is not a lowercase hex {algorithm} digest")
    return text


def _safe_name(value: Any, where: str) -> str:
    """A name that becomes a path segment (bundles/NAME/, content/NAME/): UnsafeArchiveError."""
    text = _str(value, where)
    if not NAME.fullmatch(text):
        raise UnsafeArchiveError(
            f"{ENVELOPE_NAME}: {where} {text[:80]!r} is not a name (one path segment of [a-z0-9-],"
            " at most 64 characters, no '-' at either end)"
        )
    return text


def _safe_version(value: Any, where: str) -> str:
    """A semantic version (it becomes the file name VERSION.dsse.json): UnsafeArchiveError."""
    text = _str(value, where)
    try:
        if len(text) > MAX_VERSION:
            raise ValueError(f"longer than {MAX_VERSION} characters")
        SemVer.parse(text)
    except ValueError as exc:
        raise UnsafeArchiveError(f"{ENVELOPE_NAME}: {where} {text[:80]!r}: {exc}") from None
    return text


def _match(pattern: re.Pattern[str], value: Any, where: str, what: str) -> str:
    text = _str(value, where)
    if len(text) > 255 or not pattern.fullmatch(text):
        raise ValueError(f"{where} is not {what}")
    return text


def _image(entry: dict[str, Any], where: str) -> ImageRecord | None:
    """The optional `image` object: required for kind image, refused for every other kind."""
    if entry["kind"] != "image":
        if "image" in entry:
            raise ValueError(f"{where}.image is only allowed for kind image")
        return None
    if "image" not in entry:
        raise ValueError(f"{where}: kind image needs an image object")
    obj = _fields(entry["image"], {"id", "manifestDigest", "platform", "ref"}, set(), f"{where}.image")
    return ImageRecord(
        id=_match(IMAGE_DIGEST, obj["id"], f"{where}.image.id", "a sha256:<hex> digest"),
        manifest_digest=_match(
            IMAGE_DIGEST, obj["manifestDigest"], f"{where}.image.manifestDigest", "a sha256:<hex> digest"
        ),
        platform=_match(IMAGE_PLATFORM, obj["platform"], f"{where}.image.platform", "os/architecture"),
        ref=_match(IMAGE_REF, obj["ref"], f"{where}.image.ref", "an image reference NAME:TAG"),
    )


def _parse(doc: Any) -> BundleStatement:
    pred = _predicate(doc)
    name = _safe_name(pred["name"], "predicate.name")
    version = _safe_version(pred["version"], "predicate.version")
    algorithm = _algorithm(pred["digest"])
    chunk_size = _chunk_size(pred["chunkSize"])
    parse_time(_str(pred["created"], "predicate.created"))
    members = _members(doc["subject"], pred, algorithm, chunk_size)
    check_tree([ENVELOPE_NAME, *(m.name for m in members)])
    components = _components(pred["components"], [m.name for m in members])
    _check_base(pred, name)
    extra: dict[str, Any] = {k: pred[k] for k in ("base",) if k in pred}
    return BundleStatement(
        name=name,
        version=version,
        created=pred["created"],
        digest=algorithm,
        chunk_size=chunk_size,
        components=tuple(components),
        members=tuple(members),
        extra=extra,
    )


def _predicate(doc: Any) -> dict[str, Any]:
    """The predicate: the statement's fields and types are enclave's, the predicate's fields exact."""
    _fields(doc, {"_type", "subject", "predicateType", "predicate"}, set(), "statement")
    if doc["_type"] != STATEMENT_TYPE or doc["predicateType"] != PREDICATE_TYPE:
        raise ValueError(f"not an enclave bundle statement ({doc['predicateType']!r})")
    return _fields(
        doc["predicate"],
        {"name", "version", "created", "digest", "chunkSize", "components", "members"},
        {"base"},
        "predicate",
    )


def _algorithm(value: Any) -> str:
    """predicate.digest: the name of a supported digest algorithm."""
    algorithm = _str(value, "predicate.digest")
    if algorithm not in HEX_LENGTH:
        raise ValueError(f"unsupported digest {algorithm!r}")
    return algorithm


def _chunk_size(value: Any) -> int:
    """predicate.chunkSize: a power of two in [MIN_CHUNK, MAX_CHUNK]."""
    chunk_size = _int(value, "predicate.chunkSize", MIN_CHUNK, MAX_CHUNK)
    if chunk_size & (chunk_size - 1):
        raise ValueError("predicate.chunkSize must be a power of two")
    return chunk_size


def _members(subjects: Any, pred: dict[str, Any], algorithm: str, chunk_size: int) -> list[Member]:
    """The members: subject and predicate.members are lists pairing up one entry per member."""
    if not isinstance(subjects, list) or not isinstance(pred["members"], list):
        raise ValueError("subject and predicate.members must be lists")
    if len(subjects) != len(pred["members"]):
        raise ValueError("subject and predicate.members differ in length")
    members: list[Member] = []
    keys: set[str] = set()  # collision keys of the members so far
    for index, (subject, entry) in enumerate(zip(subjects, pred["members"], strict=True)):
        members.append(_member(index, subject, entry, keys, algorithm, chunk_size, "base" in pred))
    return members


def _member(
    index: int,
    subject: Any,
    entry: Any,
    keys: set[str],
    algorithm: str,
    chunk_size: int,
    differential: bool,
) -> Member:
    """One member from its subject and predicate entry: name, digest, size, mode and chunks."""
    where = f"predicate.members[{index}]"
    member = _member_name(index, subject, entry, keys)
    digests = _fields(subject["digest"], {algorithm}, set(), f"subject[{index}].digest")
    digest = _hex(digests[algorithm], algorithm, f"subject[{index}].digest")
    size = _member_size(entry["size"], member, where)
    mode = _mode(entry["mode"], where)
    expected_chunks = chunk_count(size, chunk_size)
    chunks, plain = _chunks(entry, index, digest, algorithm, chunk_size, expected_chunks)
    carried = _carried(entry, where, expected_chunks, differential)
    return Member(member, size, mode, digest, chunks, plain, carried)


def _member_name(index: int, subject: Any, entry: Any, keys: set[str]) -> str:
    """The member's name: both entries exact, naming the same safe member, not listed before."""
    where = f"predicate.members[{index}]"
    _fields(subject, {"name", "digest"}, set(), f"subject[{index}]")
    _fields(entry, {"name", "size", "mode"}, {"chunks", "plainDigest", "carried"}, where)
    member = _str(entry["name"], f"{where}.name")
    if subject["name"] != member:
        raise ValueError(f"subject[{index}] and {where} name different members")
    check_name(member)
    if member == ENVELOPE_NAME or collision_key(member) in keys:
        raise UnsafeArchiveError(f"member {member!r}: listed twice or colliding in the statement")
    keys.add(collision_key(member))
    return member


def _member_size(value: Any, member: str, where: str) -> int:
    """The member's size: an integer, an over-the-cap one refused as unsafe."""
    # Over the cap is an unsafe archive, not merely a malformed statement: checked first.
    if isinstance(value, int) and value > MAX_MEMBER_SIZE:
        raise UnsafeArchiveError(
            f"member {member!r}: {value} bytes exceeds the {MAX_MEMBER_SIZE} byte cap of a member"
        )
    return _int(value, f"{where}.size", 0, MAX_MEMBER_SIZE)


def _mode(value: Any, where: str) -> int:
    """The member's mode: one of MODES."""
    mode = MODES.get(_str(value, f"{where}.mode"))
    if mode is None:
        raise ValueError(f"{where}.mode must be one of {', '.join(MODES)}")
    return mode


def _chunks(
    entry: dict[str, Any], index: int, digest: str, algorithm: str, chunk_size: int, expected: int
) -> tuple[tuple[str, ...], str]:
    """Chunk and plain digests: for a multi-chunk file the chunks define `digest`; none otherwise."""
    where = f"predicate.members[{index}]"
    if expected <= 1:
        if "chunks" in entry or "plainDigest" in entry:
            raise ValueError(f"{where}: chunks and plainDigest are only for multi-chunk files")
        return (), ""
    raw = entry.get("chunks")
    if not isinstance(raw, list) or len(raw) != expected:
        raise ValueError(f"{where}.chunks must list {expected} chunk digests")
    chunks = tuple(_hex(c, algorithm, f"{where}.chunks") for c in raw)
    defined = combine(algorithm, chunk_size, [bytes.fromhex(c) for c in chunks]).hex()
    if defined != digest:
        raise ValueError(f"subject[{index}] digest is not the one its chunks define")
    if "plainDigest" not in entry:
        raise ValueError(f"{where}.plainDigest is missing for a multi-chunk file")
    return chunks, _hex(entry["plainDigest"], algorithm, f"{where}.plainDigest")


def _check_base(pred: dict[str, Any], name: str) -> None:
    """A differential bundle's base is a valid reference to an earlier version of this bundle."""
    if "base" in pred and _base(pred["base"]).name != name:
        raise ValueError(f"predicate.base names bundle {pred['base']['name']!r}, not {name!r}")


def _components(raw: Any, members: list[str]) -> list[ComponentEntry]:
    """The components; their members are exactly the statement's content members, in
    component order, each component's under content/<component>/ and sorted by UTF-8 bytes."""
    if not isinstance(raw, list):
        raise ValueError("predicate.components must be a list")
    components: list[ComponentEntry] = []
    for index, entry in enumerate(raw):
        where = f"predicate.components[{index}]"
        _fields(entry, {"name", "kind", "members"}, {"format", "image"}, where)
        component = _safe_name(entry["name"], f"{where}.name")
        if any(c.name == component for c in components):
            raise ValueError(f"{where}: component {component!r} is listed twice")
        if entry["kind"] not in KINDS:
            raise ValueError(f"{where}.kind {entry['kind']!r} is not one of {', '.join(KINDS)}")
        if not isinstance(entry["members"], list):
            raise ValueError(f"{where}.members must be a list")
        names = tuple(_str(n, f"{where}.members") for n in entry["members"])
        prefix = f"{CONTENT_PREFIX}{component}/"
        if any(not n.startswith(prefix) for n in names):
            raise ValueError(f"{where}: every member must be under {prefix}")
        if list(names) != sorted(names, key=lambda n: n.encode("utf-8", "surrogateescape")):
            raise ValueError(f"{where}: members are not sorted by their UTF-8 bytes")
        fmt = entry.get("format")
        components.append(
            ComponentEntry(component, entry["kind"], names, fmt and _str(fmt, where), _image(entry, where))
        )
    content = [n for n in members if n.startswith(CONTENT_PREFIX)]
    if [n for c in components for n in c.members] != content:
        raise ValueError("the content members are not the components' members in component order")
    if members[len(members) - len(content) :] != content:
        raise ValueError("a member outside content/ follows the content members")
    return components


def _carried(entry: dict[str, Any], where: str, chunks: int, differential: bool) -> tuple[int, ...] | None:
    if "carried" not in entry:
        return None
    if not differential:
        raise ValueError(f"{where}.carried is only for differential bundles (predicate.base)")
    raw = entry["carried"]
    if not isinstance(raw, list) or any(not isinstance(i, int) or isinstance(i, bool) for i in raw):
        raise ValueError(f"{where}.carried must be a list of chunk indices")
    if raw != sorted(set(raw)) or (raw and not 0 <= raw[0] <= raw[-1] < chunks):
        raise ValueError(f"{where}.carried must be increasing chunk indices below {chunks}")
    if len(raw) == chunks:
        raise ValueError(f"{where}.carried lists every chunk: omit it")
    return tuple(raw)


@dataclass(frozen=True)
class BaseRef:
    name: str
    version: str
    statement_digest: str  # sha256 of the base bundle's signed statement


def _base(raw: Any) -> BaseRef:
    doc = _fields(raw, {"name", "version", "statementDigest"}, set(), "predicate.base")
    digest = _fields(doc["statementDigest"], {"sha256"}, set(), "predicate.base.statementDigest")["sha256"]
    if not isinstance(digest, str) or len(digest) != 64 or digest.strip("0123456789abcdef"):
        raise ValueError("predicate.base.statementDigest.sha256 must be a sha256 hex digest")
    return BaseRef(
        _safe_name(doc["name"], "predicate.base.name"),
        _safe_version(doc["version"], "predicate.base.version"),
        digest,
    )


def base_of(statement: BundleStatement) -> BaseRef | None:
    """The base a differential bundle builds on (None for a full bundle)."""
    return _base(statement.extra["base"]) if "base" in statement.extra else None
