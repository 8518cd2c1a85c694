"""Text normalisation for policy matching ("enclave-norm-v2"): pure functions, no I/O but
reading the look-alike table that ships beside this module.

Rules are matched on a *skeleton* of the text, not the text itself, so the cheap evasions
(fullwidth letters, zero-width joiners, look-alike letters of any script, l33t digits,
letters split by spaces or dots) land on the same skeleton as the plain spelling. Rule terms go through the
same function, so text and terms always agree; docs/GATEWAY.md specifies every step so a
second implementation produces the same tokens. The learned guard (enclave.guard.features)
tokenises with it too, which is why it sits below both.
"""

from __future__ import annotations

import functools
import json
import re
import unicodedata
from pathlib import Path

from enclave.errors import IntegrityError

NORMALISATION = "enclave-norm-v2"

# Look-alikes of Latin letters and digits: every character Unicode's confusables data (UTS #39)
# gives a prototype that normalises to ASCII letters and digits, generated into a committed
# file by enclave.runtime.gateway.gen_confusables (which records the Unicode version and the
# source's digest).
CONFUSABLES_PATH = Path(__file__).with_name("confusables.json")
CONFUSABLES_FORMAT = "enclave-confusables/v1"
_TARGET = re.compile(r"[a-z0-9]+")
_CODE_POINT = re.compile(r"[0-9A-F]{4,6}")


@functools.cache
def confusables() -> dict[int, str]:
    """The look-alike table: code point -> the ASCII letters and digits it stands for.

    Loaded once, on first use; a damaged file is an IntegrityError naming it."""
    path = CONFUSABLES_PATH
    try:
        doc = json.loads(path.read_bytes())
    except (OSError, ValueError) as exc:
        raise IntegrityError(f"{path}: cannot read the look-alike table: {exc}") from None
    if not isinstance(doc, dict) or doc.get("format") != CONFUSABLES_FORMAT:
        raise IntegrityError(f"{path}: not a look-alike table of format {CONFUSABLES_FORMAT}")
    if doc.get("normalisation") != NORMALISATION:
        raise IntegrityError(
            f"{path}: table of {doc.get('normalisation')!r}, the normaliser is {NORMALISATION}"
        )
    table = doc.get("table")
    if not isinstance(table, dict) or len(table) != doc.get("entries"):
        raise IntegrityError(f"{path}: the table does not hold the {doc.get('entries')} entries it names")
    result: dict[int, str] = {}
    for key, target in table.items():
        if not _CODE_POINT.fullmatch(key) or not isinstance(target, str) or not _TARGET.fullmatch(target):
            raise IntegrityError(f"{path}: entry {key!r}: expected HEX -> lowercase ASCII letters/digits")
        code = int(key, 16)
        if code < 0x80:
            raise IntegrityError(f"{path}: entry {key!r}: ASCII is never folded")
        result[code] = target
    return result


# l33t digits, folded only inside tokens that also hold a letter ("surv3il" but not "2024").
# The letters i and l share one class because "1", "|" and "!" stand for either of them.
_MIXED_TOKEN_TABLE = str.maketrans({"0": "o", "1": "i", "3": "e", "4": "a", "5": "s", "7": "t", "l": "i"})
_LETTER_TABLE = str.maketrans({"l": "i"})

# Symbols used as letters. "@" and "$" fold when they touch a word character ("$urveil",
# "u$"); "!" and "|" only inside a word, so "stop!" keeps its meaning as punctuation.
_AT_DOLLAR = re.compile(r"(?<=[^\W_])[@$]|[@$](?=[^\W_])")
_BANG_PIPE = re.compile(r"(?<=[^\W_])[!|](?=[^\W_])")
_SYMBOL_TABLE = str.maketrans({"@": "a", "$": "s", "!": "i", "|": "i"})
_TOKEN = re.compile(r"[^\W_]+")


def _fold_symbol(match: re.Match[str]) -> str:
    return match.group(0).translate(_SYMBOL_TABLE)


def _strip_invisible(text: str) -> str:
    """Decompose, then drop combining marks (Mn, Me) and format characters (Cf).

    Cf covers zero-width space/joiners, word joiner, BOM, soft hyphen, bidi controls and
    tag characters: all invisible, all usable to split a word without changing its look.
    """
    decomposed = unicodedata.normalize("NFKD", text)
    return "".join(ch for ch in decomposed if unicodedata.category(ch) not in ("Mn", "Me", "Cf"))


def fold(text: str) -> str:
    """Steps 1-2: NFKC, casefold; for non-ASCII text then NFKD and Mn, Me, Cf dropped."""
    folded = unicodedata.normalize("NFKC", text).casefold()
    return folded if folded.isascii() else _strip_invisible(folded)


def skeleton_tokens(text: str) -> list[str]:
    """The normalised tokens of `text`, in order.

    1. NFKC, then casefold.  2. NFKD; drop Mn, Me and Cf characters.  3. Look-alikes -> Latin
    (confusables.json).  4. "@"/"$" touching a word character, "!"/"|" inside a word -> a, s,
    i, i.  5. Tokens: maximal runs of Unicode letters and digits (everything else separates).
    6. In tokens holding a letter: 0 1 3 4 5 7 -> o i e a s t; and l -> i in every token.
    """
    folded = fold(text)
    if not folded.isascii():
        folded = folded.translate(confusables())
    if "@" in folded or "$" in folded:
        folded = _AT_DOLLAR.sub(_fold_symbol, folded)
    if "!" in folded or "|" in folded:
        folded = _BANG_PIPE.sub(_fold_symbol, folded)
    tokens = _TOKEN.findall(folded)
    return [
        token.translate(_LETTER_TABLE)
        if token.isdigit() or token.isalpha()
        else token.translate(_MIXED_TOKEN_TABLE)
        for token in tokens
    ]


def squeeze(term: str) -> str:
    """A rule term's skeleton: its tokens joined without separators ("U.S. persons" -> "uspersons")."""
    return "".join(skeleton_tokens(term))
