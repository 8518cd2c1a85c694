"""The labelled corpus: JSON Lines files of {"text", "label", "kind"}, read strictly.

One line names one request. Labels are the guard's classes; `kind` says what sort of request
it is (`operational` for the three stop classes; `discussion`, `hard-negative` or `ordinary`
for allow), so the evaluation can report over-blocking of discussion on its own.
"""

from __future__ import annotations

import hashlib
import json
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

from enclave.errors import UsageError
from enclave.guard.model import ALLOW, CLASSES

ALLOW_KINDS = ("discussion", "hard-negative", "ordinary")
STOP_KIND = "operational"
_KEYS = {"text", "label", "kind"}
MAX_TEXT = 20_000


@dataclass(frozen=True)
class Example:
    text: str
    label: str
    kind: str
    source: str  # file:line


@dataclass(frozen=True)
class Corpus:
    examples: tuple[Example, ...]
    digest: str  # sha256 over the files' names and bytes, in name order
    files: tuple[str, ...]

    def counts(self) -> dict[str, int]:
        return dict(sorted(Counter(f"{e.label}/{e.kind}" for e in self.examples).items()))


def load_corpus(directory: Path) -> Corpus:
    """Every *.jsonl file under `directory` (sorted); a malformed line is a UsageError naming it."""
    if not directory.is_dir():
        raise UsageError(f"{directory}: not a corpus directory")
    paths = sorted(directory.rglob("*.jsonl"))
    if not paths:
        raise UsageError(f"{directory}: no *.jsonl files")
    examples: list[Example] = []
    seen: dict[str, str] = {}
    digest = hashlib.sha256()
    for path in paths:
        data = path.read_bytes()
        name = path.relative_to(directory).as_posix()
        digest.update(name.encode() + b"\0" + hashlib.sha256(data).digest())
        try:
            lines = data.decode("utf-8").splitlines()
        except UnicodeDecodeError:
            raise UsageError(f"{path}: not UTF-8") from None
        for number, line in enumerate(lines, 1):
            where = f"{path}:{number}"
            example = _parse(line, where)
            key = text_key(example.text)
            if key in seen:
                raise UsageError(f"{where}: duplicate text (also {seen[key]})")
            seen[key] = where
            examples.append(example)
    return Corpus(tuple(examples), "sha256:" + digest.hexdigest(), tuple(p.as_posix() for p in paths))


def text_key(text: str) -> str:
    """What makes two prompts the same one: case and white space aside."""
    return " ".join(text.casefold().split())


def _parse(line: str, where: str) -> Example:
    try:
        doc = json.loads(line)
    except ValueError as exc:
        raise UsageError(f"{where}: not JSON: {exc}") from None
    if not isinstance(doc, dict) or set(doc) != _KEYS:
        raise UsageError(f"{where}: expected exactly the keys {sorted(_KEYS)}")
    text, label, kind = doc["text"], doc["label"], doc["kind"]
    if not isinstance(text, str) or not text.strip() or len(text) > MAX_TEXT:
        raise UsageError(f"{where}: text must be a non-empty string of at most {MAX_TEXT} characters")
    if label not in CLASSES:
        raise UsageError(f"{where}: label {label!r} is not one of {', '.join(CLASSES)}")
    allowed = ALLOW_KINDS if label == ALLOW else (STOP_KIND,)
    if kind not in allowed:
        raise UsageError(f"{where}: kind {kind!r} for label {label} must be one of {', '.join(allowed)}")
    return Example(text, label, kind, where)
