"""Term matching over skeleton tokens: pure, deterministic, linear in the text.

A term is matched against the *squeezed* text (tokens joined without separators) but only
at token boundaries: it must start where a token starts and, unless it ends in "*", end
where a token ends. So "us persons" matches "U.S. persons", "US-persons" and "u s persons"
but not "thus persons"; "surveil*" matches "surveillance" and "surv eillance".

All terms of a policy live in one character trie; each token start walks the trie once,
so the cost is (tokens x depth reached), independent of the number of rules.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

# A hit: (first word position, last word position), both inclusive.
Hit = tuple[int, int]
MAX_HITS_PER_TERM = 64  # bounds the proximity search; more hits of one term add nothing


@dataclass
class _Node:
    children: dict[str, _Node] = field(default_factory=dict)
    exact: list[int] = field(default_factory=list)  # term ids ending here at a token boundary
    prefix: list[int] = field(default_factory=list)  # term ids ending here anywhere ("term*")


class Matcher:
    """Finds every hit of a fixed set of squeezed terms in a token list."""

    def __init__(self, terms: Sequence[tuple[str, bool]]) -> None:
        """`terms[i]` = (squeezed text, is_prefix); hits are reported by index i."""
        self._root = _Node()
        self.size = len(terms)
        for term_id, (text, is_prefix) in enumerate(terms):
            if not text:
                raise ValueError("empty term")
            node = self._root
            for ch in text:
                node = node.children.setdefault(ch, _Node())
            (node.prefix if is_prefix else node.exact).append(term_id)

    def find(self, tokens: Sequence[str]) -> dict[int, list[Hit]]:
        squeezed = "".join(tokens)
        # token_of[c] = index of the token holding character c; ends[c] = True when a token
        # ends right after character c.
        # Hits are reported in *word* positions: a run of single-character tokens ("s u r v")
        # counts as one word, so spelling a word out does not stretch a proximity window.
        token_of: list[int] = []
        ends: list[bool] = []
        starts: list[int] = []
        offset = 0
        word = -1
        previous_single = False
        for token in tokens:
            single = len(token) == 1
            if not (single and previous_single):
                word += 1
            previous_single = single
            starts.append(offset)
            token_of.extend([word] * len(token))
            ends.extend([False] * (len(token) - 1))
            ends.append(True)
            offset += len(token)
        hits: dict[int, list[Hit]] = {}
        root_children = self._root.children
        length = len(squeezed)
        for start in starts:
            first = token_of[start]
            node = root_children.get(squeezed[start])
            position = start
            while node is not None:
                if node.prefix:
                    _add(hits, node.prefix, (first, token_of[position]))
                if node.exact and ends[position]:
                    _add(hits, node.exact, (first, token_of[position]))
                position += 1
                if position >= length:
                    break
                node = node.children.get(squeezed[position])
        return hits


def _add(hits: dict[int, list[Hit]], term_ids: list[int], hit: Hit) -> None:
    for term_id in term_ids:
        found = hits.setdefault(term_id, [])
        if len(found) < MAX_HITS_PER_TERM:
            found.append(hit)


def within_window(groups: Sequence[Sequence[Hit]], window: int | None) -> bool:
    """True when every group has a hit and, with a window, one hit per group fits in it.

    The span of a choice of hits is max(last) - min(first) + 1 tokens. For each hit taken as
    the leftmost, pick in every group the hit starting at or after it that ends first; the
    smallest such span is the smallest possible span, so this test is exact.
    """
    if not groups or any(not g for g in groups):
        return False
    if window is None:
        return True
    anchors = sorted({hit[0] for group in groups for hit in group})
    for left in anchors:
        right = left
        for group in groups:
            ends = [last for first, last in group if first >= left]
            if not ends:
                right = -1
                break
            right = max(right, min(ends))
        if right >= 0 and right - left + 1 <= window:
            return True
    return False
