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

from enclave.runtime.gateway.normalise import skeleton_tokens

CHAR_NGRAMS = (3, 5)
WORD_NGRAMS = (1, 2)
_BLOCK_SCALE = 1 / math.sqrt(2)


def tokens(text: str) -> list[str]:
    return skeleton_tokens(text)


def terms(text: str) -> tuple[Counter[str], Counter[str]]:
    """Raw term counts of the two blocks: ("w:" word n-grams, "c:" char n-grams)."""
    words = tokens(text)
    word_terms: Counter[str] = Counter()
    low, high = WORD_NGRAMS
    for n in range(low, high + 1):
        for i in range(len(words) - n + 1):
            word_terms["w:" + " ".join(words[i : i + n])] += 1
    char_terms: Counter[str] = Counter()
    clow, chigh = CHAR_NGRAMS
    for word in words:
        padded = f" {word} "
        for n in range(clow, chigh + 1):
            for i in range(len(padded) - n + 1):
                char_terms["c:" + padded[i : i + n]] += 1
    return word_terms, char_terms


def vectorise(
    text: str, vocabulary: Mapping[str, int], idf: Sequence[float]
) -> tuple[list[int], list[float]]:
    """Sparse TF-IDF vector (indices ascending, values) over `vocabulary`; unknown terms drop."""
    entries: dict[int, float] = {}
    for block in terms(text):
        weighted: dict[int, float] = {}
        for term, count in block.items():
            index = vocabulary.get(term)
            if index is not None:
                weighted[index] = (1.0 + math.log(count)) * idf[index]
        norm = math.sqrt(sum(v * v for v in weighted.values()))
        if norm > 0:
            for index, value in weighted.items():
                entries[index] = value / norm * _BLOCK_SCALE
    ordered = sorted(entries)
    return ordered, [entries[i] for i in ordered]
