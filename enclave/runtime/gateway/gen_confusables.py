"""Regenerate `confusables.json`, the look-alike table of the normaliser (development time only).

    pip install confusable-homoglyphs==3.3.1        # here only: the gateway never imports it
    python3 -m enclave.runtime.gateway.gen_confusables           # rewrite the committed table
    python3 -m enclave.runtime.gateway.gen_confusables --check   # exit 1 when it would change

The source is Unicode's confusables.txt (UTS #39) as the PyPI package `confusable-homoglyphs`
ships it: a JSON file of the file's source/prototype pairs, stored in both directions. The
table keeps every character the normaliser can meet after its steps 1-2 (docs/GATEWAY.md 2.3)
whose prototype normalises to ASCII letters and digits:

- *orientation*: a prototype is the side of a pair with more than one partner, a sequence of
  several characters, or ASCII; where the stored pairs cannot tell (two single non-ASCII
  characters, each the other's only partner) each counts as the other's prototype;
- *target*: a character produces what its prototype produces: the prototype goes through
  steps 1-2 (NFKC, casefold, NFKD, marks and format characters dropped) and each character of
  the result is replaced again, until only characters without a prototype are left (so `ꮎ`
  -> `Ꮎ` -> `o̵` -> `o`), except a character that case folding spells out as several (the
  prototype `ß` of Greek beta does not become `ss`);
- *small capitals*: Unicode makes the Latin small capitals prototypes of their own (`ᴛ`, the
  prototype of Cyrillic `т` and Greek `τ`); a character named LATIN LETTER SMALL CAPITAL X
  (or LATIN SMALL CAPITAL LETTER X) stands for the letter x;
- the prototype `rn` is the skeleton of the ASCII letter `m` (`m` -> `rn` in the data), so a
  character whose target is `rn` produces `m`;
- enclave-norm-v1's hand-made list (ENCLAVE_V1) is kept entry for entry and wins where the
  data says otherwise, so nothing folded before is left out now.

The output records the Unicode version, the package version and the SHA-256 of the package's
data file, and carries the Unicode licence under which the data is redistributed.
"""

from __future__ import annotations

import argparse
import functools
import hashlib
import importlib.metadata
import importlib.util
import json
import re
import sys
import unicodedata
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from enclave.errors import UsageError
from enclave.normalise import CONFUSABLES_FORMAT, CONFUSABLES_PATH, NORMALISATION, fold

PACKAGE = "confusable-homoglyphs"
MODULE = "confusable_homoglyphs"
# The package fetches confusables.txt and Scripts.txt from unicode.org's "latest" in one run
# and records neither version; its Scripts data tells which one "latest" was then.
_VERSION_MARKERS = (  # (first code point new in that version, version), newest first
    (0x10D40, "16.0.0"),  # Garay
    (0x2EBF0, "15.1.0"),  # CJK Unified Ideographs Extension I
    (0x11F00, "15.0.0"),  # Kawi
    (0x1E290, "14.0.0"),  # Toto
)
_SMALL_CAPITAL = re.compile(
    r"LATIN (?:LETTER SMALL CAPITAL|SMALL CAPITAL LETTER|CAPITAL LETTER SMALL CAPITAL) ([A-Z])"
)
# enclave-norm-v1's hand-made list, kept entry for entry (it wins where the data differs, e.g.
# beta is b here, not the "ss" of its prototype sharp s): what was folded before still is.
ENCLAVE_V1 = {
    # Cyrillic
    0x0430: "a", 0x0432: "b", 0x0435: "e", 0x0451: "e", 0x043A: "k", 0x043C: "m", 0x043D: "h", 0x043E: "o",
    0x043F: "n", 0x0440: "p", 0x0441: "c", 0x0442: "t", 0x0443: "y", 0x0445: "x", 0x044C: "b", 0x0455: "s",
    0x0456: "i", 0x0457: "i", 0x0458: "j", 0x0501: "d", 0x04BB: "h", 0x04CF: "l", 0x051B: "q", 0x051D: "w",
    0x04AF: "y", 0x0261: "g", 0x0475: "v", 0x0461: "w", 0x050D: "g", 0xA647: "i",
    # Greek
    0x03B1: "a", 0x03B2: "b", 0x03B3: "y", 0x03B5: "e", 0x03B7: "n", 0x03B9: "i", 0x03BA: "k", 0x03BC: "u",
    0x03BD: "v", 0x03BF: "o", 0x03C0: "n", 0x03C1: "p", 0x03C2: "c", 0x03C3: "o", 0x03C4: "t", 0x03C5: "u",
    0x03C7: "x", 0x03C9: "w", 0x03F2: "c", 0x03F3: "j", 0x03D0: "b",
    # Armenian
    0x0585: "o", 0x057D: "u", 0x0581: "g", 0x0570: "h", 0x0578: "n", 0x0561: "w",
    # Latin extensions and IPA letters that render like basic Latin ones
    0x0131: "i", 0x0237: "j", 0x0251: "a", 0x0269: "i", 0x026A: "i", 0x029F: "l", 0x1D04: "c", 0x1D0F: "o",
    0x1D20: "v", 0x1D21: "w", 0x1D22: "z", 0xA7B5: "b", 0x0262: "g", 0x029C: "h", 0x0280: "r", 0xA731: "s",
    0x1D1B: "t", 0x1D1C: "u", 0x0185: "b", 0x027E: "r", 0x028B: "v", 0x1E9F: "d",
}  # fmt: skip
_LRM = "\u200e"  # the package keeps the left-to-right marks confusables.txt puts around RTL text

LICENCE = [
    "Derived from confusables.txt (Unicode Technical Standard #39, Unicode Security Mechanisms),",
    "as shipped by the PyPI package confusable-homoglyphs (MIT licence, (c) 2016-2018 Victor Felder,",
    "2024 Elena Grandi), under the following licence:",
    "",
    "UNICODE LICENSE V3",
    "",
    "COPYRIGHT AND PERMISSION NOTICE",
    "",
    "Copyright \u00a9 1991-2023 Unicode, Inc.",
    "",
    "NOTICE TO USER: Carefully read the following legal agreement. BY DOWNLOADING, INSTALLING,",
    "COPYING OR OTHERWISE USING DATA FILES, AND/OR SOFTWARE, YOU UNEQUIVOCALLY ACCEPT, AND AGREE TO",
    "BE BOUND BY, ALL OF THE TERMS AND CONDITIONS OF THIS AGREEMENT. IF YOU DO NOT AGREE, DO NOT",
    "DOWNLOAD, INSTALL, COPY, DISTRIBUTE OR USE THE DATA FILES OR SOFTWARE.",
    "",
    "Permission is hereby granted, free of charge, to any person obtaining a copy of data files and",
    'any associated documentation (the "Data Files") or software and any associated documentation',
    '(the "Software") to deal in the Data Files or Software without restriction, including without',
    "limitation the rights to use, copy, modify, merge, publish, distribute, and/or sell copies of",
    "the Data Files or Software, and to permit persons to whom the Data Files or Software are",
    "furnished to do so, provided that either (a) this copyright and permission notice appear with",
    "all copies of the Data Files or Software, or (b) this copyright and permission notice appear in",
    "associated Documentation.",
    "",
    'THE DATA FILES AND SOFTWARE ARE PROVIDED "AS IS", WITHOUT WARRANTY OF ANY KIND, EXPRESS OR',
    "IMPLIED, INCLUDING BUT NOT LIMITED TO THE WARRANTIES OF MERCHANTABILITY, FITNESS FOR A",
    "PARTICULAR PURPOSE AND NONINFRINGEMENT OF THIRD PARTY RIGHTS.",
    "",
    "IN NO EVENT SHALL THE COPYRIGHT HOLDER OR HOLDERS INCLUDED IN THIS NOTICE BE LIABLE FOR ANY",
    "CLAIM, OR ANY SPECIAL INDIRECT OR CONSEQUENTIAL DAMAGES, OR ANY DAMAGES WHATSOEVER RESULTING",
    "FROM LOSS OF USE, DATA OR PROFITS, WHETHER IN AN ACTION OF CONTRACT, NEGLIGENCE OR OTHER",
    "TORTIOUS ACTION, ARISING OUT OF OR IN CONNECTION WITH THE USE OR PERFORMANCE OF THE DATA FILES",
    "OR SOFTWARE.",
    "",
    "Except as contained in this notice, the name of a copyright holder shall not be used in",
    "advertising or otherwise to promote the sale, use or other dealings in these Data Files or",
    "Software without prior written authorization of the copyright holder.",
    "",
    "SPDX-License-Identifier: Unicode-3.0",
]


def package_dir() -> Path:
    """Where the installed package keeps its data (found without importing it)."""
    spec = importlib.util.find_spec(MODULE)
    if spec is None or not spec.submodule_search_locations:
        raise UsageError(f"{PACKAGE} is not installed: pip install {PACKAGE} (generation only)")
    return Path(next(iter(spec.submodule_search_locations)))


def read_pairs(data: bytes, source: str) -> list[tuple[str, str]]:
    """The (character, look-alike) pairs of the package's confusables.json, LRM marks removed."""
    try:
        doc = json.loads(data)
    except ValueError as exc:
        raise UsageError(f"{source}: not JSON: {exc}") from None
    if not isinstance(doc, dict):
        raise UsageError(f"{source}: expected an object of characters")
    pairs: list[tuple[str, str]] = []
    for key, entries in doc.items():
        if not isinstance(entries, list):
            raise UsageError(f"{source}: {key!r}: expected a list")
        for entry in entries:
            if not isinstance(entry, dict) or not isinstance(entry.get("c"), str):
                raise UsageError(f"{source}: {key!r}: entry without a character 'c'")
            a, b = key.strip(_LRM), entry["c"].strip(_LRM)
            if a and b and a != b:
                pairs.append((a, b))
    return pairs


def unicode_version(categories: bytes, source: str) -> str:
    """The Unicode version of the package's data, from the code points its Scripts data knows."""
    try:
        ranges = json.loads(categories)["code_points_ranges"]
    except (ValueError, KeyError, TypeError) as exc:
        raise UsageError(f"{source}: no code_points_ranges: {exc}") from None
    for first, version in _VERSION_MARKERS:
        if any(low <= first <= high for low, high, *_ in ranges):
            return version
    raise UsageError(f"{source}: data older than Unicode {_VERSION_MARKERS[-1][1]}")


def prototypes(pairs: Iterable[tuple[str, str]]) -> dict[str, str]:
    """Each single character that is a source, mapped to its prototype (see the module doc)."""
    partners: dict[str, set[str]] = {}
    for a, b in pairs:
        partners.setdefault(a, set()).add(b)
        partners.setdefault(b, set()).add(a)
    found: dict[str, str] = {}
    for node, others in partners.items():
        if len(node) != 1 or len(others) != 1:
            continue  # a sequence, or a character with several look-alikes, is a prototype
        (other,) = others
        if len(partners[other]) > 1 or len(other) != 1 or (other.isascii() and not node.isascii()):
            found[node] = other
        elif not (node.isascii() and not other.isascii()):
            found[node] = other  # direction unknown: each is the other's prototype
    return found


def _resolve(text: str, protos: Mapping[str, str], seen: frozenset[str]) -> str:
    out: list[str] = []
    for part in text:
        normal = unicodedata.normalize("NFKC", part)
        if len(normal.casefold()) > len(normal):
            out.append(part)  # case folding spells it out (sharp s -> ss); the look is one letter
            continue
        for ch in fold(part):
            target = protos.get(ch)
            if ch.isascii() or target is None or ch in seen:
                out.append(ch)
            else:
                out.append(_resolve(target, protos, seen | {ch}))
    return "".join(out)


@functools.cache
def reachable() -> frozenset[str]:
    """Every non-ASCII character that can remain after the normaliser's steps 1-2."""
    chars: set[str] = set()
    for cp in range(0x80, sys.maxunicode + 1):
        if 0xD800 <= cp <= 0xDFFF:
            continue
        chars.update(ch for ch in fold(chr(cp)) if not ch.isascii())
    return frozenset(chars)


def small_capital(ch: str) -> str | None:
    """The letter a Latin small capital stands for (`ʀ` -> `r`), by its Unicode name."""
    match = _SMALL_CAPITAL.fullmatch(unicodedata.name(ch, ""))
    return match.group(1).lower() if match else None


def derive(pairs: Iterable[tuple[str, str]]) -> dict[int, str]:
    """Code point -> the ASCII letters and digits it produces, for every reachable source."""
    protos = prototypes(pairs)
    letter_skeletons = {
        fold(proto): letter
        for letter, proto in protos.items()
        if letter.isascii() and letter.isalnum() and len(fold(proto)) > 1
    }  # {"rn": "m"}
    chars = reachable()
    for ch in chars:
        letter = small_capital(ch)
        if letter is not None:
            protos[ch] = letter  # Unicode gives small capitals prototypes of their own
    table: dict[int, str] = {}
    for ch in sorted(chars & protos.keys()):
        target = _resolve(protos[ch], protos, frozenset({ch}))
        target = letter_skeletons.get(target, target)
        if target and target.isascii() and target.isalnum():
            table[ord(ch)] = target
    for code, target in ENCLAVE_V1.items():
        if chr(code) in chars:
            table[code] = target
    return dict(sorted(table.items()))


def document(root: Path) -> dict[str, Any]:
    data_path, categories_path = root / "confusables.json", root / "categories.json"
    data, categories = data_path.read_bytes(), categories_path.read_bytes()
    table = derive(read_pairs(data, str(data_path)))
    return {
        "format": CONFUSABLES_FORMAT,
        "normalisation": NORMALISATION,
        "unicode_version": unicode_version(categories, str(categories_path)),
        "unicode_data_of_generator": unicodedata.unidata_version,
        "source": f"{PACKAGE} {importlib.metadata.version(PACKAGE)}: {MODULE}/confusables.json",
        "source_sha256": hashlib.sha256(data).hexdigest(),
        "generator": "python3 -m enclave.runtime.gateway.gen_confusables",
        "licence": LICENCE,
        "entries": len(table),
        "table": {f"{cp:04X}": target for cp, target in table.items()},
    }


def render(doc: Mapping[str, Any]) -> bytes:
    """One table entry per line, so a review diff shows what changed."""
    head = {k: v for k, v in doc.items() if k != "table"}
    lines = [json.dumps(head, ensure_ascii=True, indent=1)[:-2] + ","]
    lines.append(' "table": {')
    rows = [f"  {json.dumps(k)}: {json.dumps(v)}" for k, v in doc["table"].items()]
    lines.append(",\n".join(rows))
    lines.append(" }\n}\n")
    return "\n".join(lines).encode("ascii")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    parser.add_argument("--check", action="store_true", help="exit 1 if the committed table would change")
    parser.add_argument("--out", type=Path, default=CONFUSABLES_PATH)
    args = parser.parse_args(argv)
    try:
        doc = document(package_dir())
    except UsageError as exc:
        print(f"gen_confusables: {exc}", file=sys.stderr)
        return exc.exit_code
    rendered = render(doc)
    if args.check:
        same = args.out.is_file() and args.out.read_bytes() == rendered
        print(f"{args.out}: {'up to date' if same else 'would change'}")
        return 0 if same else 1
    args.out.write_bytes(rendered)
    print(f"{args.out}: {len(doc['table'])} entries written")
    return 0


if __name__ == "__main__":
    sys.exit(main())
