"""Text to sparse TF-IDF features, the one definition shared by training and the gateway.

Pure functions, no I/O. The text first goes through the gateway's policy normaliser
(look-alike letters, invisible characters and l33t digits folded), so a disguise that the
rules see through is also seen through here. Two blocks of features, each L2-normalised and
scaled by 1/sqrt(2): word uni- and bigrams, and character 3- to 5-grams inside each word
(padded with a space on both sides), which carry misspellings and unseen inflections.
"""

from __future__ import annotations

import math
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
