"""Text to sparse TF-IDF features, the one definition shared by training and the gateway.

Pure functions, no I/O. The text first goes through the gateway's policy normaliser
(look-alike letters, invisible characters and l33t digits folded), so a disguise that the
rules see through is also seen through here. Two blocks of features, each L2-normalised and
scaled by 1/sqrt(2): word uni- and bigrams, and character 3- to 5-grams inside each word
(padded with a space on both sides), which carry misspellings and unseen inflections.

`decoded_views` gives what an encoded request says once decoded (base64 runs, ROT13): the
model behind the gateway can read those encodings, so the guard judges them too.
"""

from __future__ import annotations

import base64
import binascii
import codecs
import math
import re
from collections import Counter
from collections.abc import Mapping, Sequence

from enclave.normalise import skeleton_tokens

CHAR_NGRAMS = (3, 5)
WORD_NGRAMS = (1, 2)
_BLOCK_SCALE = 1 / math.sqrt(2)
# Words a guard has seen, with the vocabulary positions of their character n-grams: the costly
# part of a request's features, and the same words recur from request to request.
WordCache = dict[str, tuple[int, ...]]
MAX_CACHED_WORDS = 200_000
DECODED_VIEWS = ("base64", "hex", "rot13", "unspaced")
# A base64 run long enough to carry a request (12+ bytes decoded), standard or URL-safe alphabet.
_BASE64_RUN = re.compile(r"[A-Za-z0-9+/_-]{16,}={0,2}")
_HEX_RUN = re.compile(r"\b(?:[0-9A-Fa-f]{2}){12,}\b")
# Letters spelled out one by one with one separator between them ("s u r v e i l", "k-i-l-l"):
# three or more letters, no letter or digit touching either end ("I'm a", "5-0" stay as they are).
_SPACED_RUN = re.compile(r"(?<![^\W_])[^\W\d_](?:[ \-._*|/+~][^\W\d_]){2,}(?![^\W_])")
MAX_VIEWS = 8  # decoded texts judged per request at most: a bound on work
_NESTING = 2  # base64 inside base64 is decoded this deep


def tokens(text: str) -> list[str]:
    return skeleton_tokens(text)


def word_ngrams(words: Sequence[str]) -> Counter[str]:
    found: Counter[str] = Counter()
    low, high = WORD_NGRAMS
    for n in range(low, high + 1):
        for i in range(len(words) - n + 1):
            found["w:" + " ".join(words[i : i + n])] += 1
    return found


def char_grams(word: str) -> list[str]:
    """The "c:" character n-grams of one word, padded with a space on both sides."""
    padded = f" {word} "
    low, high = CHAR_NGRAMS
    return ["c:" + padded[i : i + n] for n in range(low, high + 1) for i in range(len(padded) - n + 1)]


def terms(text: str) -> tuple[Counter[str], Counter[str]]:
    """Raw term counts of the two blocks: ("w:" word n-grams, "c:" char n-grams)."""
    words = tokens(text)
    chars: Counter[str] = Counter()
    for word in words:
        chars.update(char_grams(word))
    return word_ngrams(words), chars


def vectorise(
    text: str, vocabulary: Mapping[str, int], idf: Sequence[float], cache: WordCache | None = None
) -> tuple[list[int], list[float]]:
    """Sparse TF-IDF vector (indices ascending, values) over `vocabulary`; unknown terms drop.
    With `cache` (one per vocabulary), each word's character n-grams are looked up once."""
    words = tokens(text)
    chars: Counter[int] = Counter()
    for word in words:
        found = cache.get(word) if cache is not None else None
        if found is None:
            found = tuple(i for g in char_grams(word) if (i := vocabulary.get(g)) is not None)
            if cache is not None:
                if len(cache) >= MAX_CACHED_WORDS:
                    cache.clear()
                cache[word] = found
        chars.update(found)
    blocks = (Counter({vocabulary[t]: n for t, n in word_ngrams(words).items() if t in vocabulary}), chars)
    entries: dict[int, float] = {}
    for block in blocks:
        weighted = {index: (1.0 + math.log(count)) * idf[index] for index, count in block.items()}
        norm = math.sqrt(sum(v * v for v in weighted.values()))
        if norm > 0:
            for index, value in weighted.items():
                entries[index] = value / norm * _BLOCK_SCALE
    ordered = sorted(entries)
    return ordered, [entries[i] for i in ordered]


def decoded_views(text: str) -> list[str]:
    """The text under ROT13; the text with letters spelled out one by one joined back into words
    (if it has any); every base64 or hex run in it (to `_NESTING` levels) that decodes to
    readable UTF-8 text. At most MAX_VIEWS, in that order. Plain text under ROT13 is gibberish,
    which the guard scores as allow, so judging the view costs benign requests (almost) nothing."""
    views = [codecs.encode(text, "rot13")]
    unspaced = _SPACED_RUN.sub(lambda m: m.group()[::2], text)
    if unspaced != text:
        views.append(unspaced)
    pending = [(text, 0)]
    while pending and len(views) < MAX_VIEWS:
        source, depth = pending.pop(0)
        runs = [(run, _base64_text) for run in _BASE64_RUN.findall(source)]
        runs += [(run, _hex_text) for run in _HEX_RUN.findall(source)]
        for run, decode in runs:
            decoded = decode(run)
            if decoded is not None and len(views) < MAX_VIEWS:
                views.append(decoded)
                if depth + 1 < _NESTING:
                    pending.append((decoded, depth + 1))
    return views


def _base64_text(run: str) -> str | None:
    """`run` decoded as base64 if that gives readable text (UTF-8, mostly printable), else None."""
    stripped = run.rstrip("=")
    if len(stripped) % 4 == 1:
        return None
    padded = stripped + "=" * (-len(stripped) % 4)
    altchars = b"-_" if ("-" in padded or "_" in padded) else None
    try:
        return _readable(base64.b64decode(padded, altchars=altchars, validate=True))
    except (binascii.Error, ValueError):
        return None


def _hex_text(run: str) -> str | None:
    """`run` decoded as hexadecimal bytes if that gives readable text, else None."""
    return _readable(bytes.fromhex(run))


def _readable(data: bytes) -> str | None:
    """`data` as text if it is UTF-8, mostly printable and mostly letters, else None."""
    try:
        decoded = data.decode("utf-8")
    except UnicodeDecodeError:
        return None
    readable = sum(c.isprintable() or c.isspace() for c in decoded)
    letters = sum(c.isalpha() for c in decoded)
    if readable < 0.95 * len(decoded) or letters < 0.5 * len(decoded):
        return None
    return decoded
