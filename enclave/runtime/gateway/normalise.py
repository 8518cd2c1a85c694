"""Text normalisation for policy matching ("enclave-norm-v1"): pure functions, no I/O.

Rules are matched on a *skeleton* of the text, not the text itself, so the cheap evasions
(fullwidth letters, zero-width joiners, Cyrillic look-alikes, l33t digits, letters split by
spaces or dots) land on the same skeleton as the plain spelling. Rule terms go through the
same function, so text and terms always agree; docs/GATEWAY.md specifies every step so a
second implementation produces the same tokens.
"""

from __future__ import annotations

import re
import unicodedata

NORMALISATION = "enclave-norm-v1"

# Confusable look-alikes of Latin letters (after casefold), from Unicode's confusables list,
# by code point (the characters themselves are indistinguishable from Latin in review),
# restricted to the letters an attacker can type in common keyboard layouts. NFKC already
# folds fullwidth, mathematical and circled letters, so they are not repeated here.
_CONFUSABLES = {
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
_CONFUSABLE_TABLE = str.maketrans(_CONFUSABLES)

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


def skeleton_tokens(text: str) -> list[str]:
    """The normalised tokens of `text`, in order.

    1. NFKC, then casefold.  2. NFKD; drop Mn, Me and Cf characters.  3. Confusables -> Latin.
    4. "@"/"$" touching a word character, "!"/"|" inside a word -> a, s, i, i.
    5. Tokens: maximal runs of Unicode letters and digits (everything else separates).
    6. In tokens holding a letter: 0 1 3 4 5 7 -> o i e a s t; and l -> i in every token.
    """
    folded = unicodedata.normalize("NFKC", text).casefold()
    if not folded.isascii():
        folded = _strip_invisible(folded).translate(_CONFUSABLE_TABLE)
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
