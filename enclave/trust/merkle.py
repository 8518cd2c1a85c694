"""RFC 9162 (Certificate Transparency 2.0) Merkle tree math: pure functions, no I/O.

leaf = SHA-256(0x00 || entry), node = SHA-256(0x01 || left || right); the tree over n
entries splits at the largest power of two smaller than n (section 2.1.1). Inclusion and
consistency proofs follow sections 2.1.3 and 2.1.4, verification algorithms verbatim.

The hash chains of the gateway's audit log (enclave.runtime.audit) and of verification receipts
(enclave.trust.receipts) share one rule: each line names the leaf hash of the line before it,
`GENESIS_PREV` for the first.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence

EMPTY_ROOT = hashlib.sha256(b"").digest()
GENESIS_PREV = "0" * 64  # the `prev` of the first line of a hash chain (hex)


def leaf_hash(entry: bytes) -> bytes:
    return hashlib.sha256(b"\x00" + entry).digest()


def node_hash(left: bytes, right: bytes) -> bytes:
    return hashlib.sha256(b"\x01" + left + right).digest()


def _split(n: int) -> int:
    """Largest power of two strictly smaller than n (n >= 2)."""
    return 1 << ((n - 1).bit_length() - 1)


class CompactRange:
    """The root of a growing tree in O(log n) memory: one perfect subtree per set bit of n.

    The writer keeps one of these so it can sign a tree head at any size without holding
    every leaf.
    """

    def __init__(self) -> None:
        self.size = 0
        self._peaks: list[bytes] = []  # roots of perfect subtrees, largest (leftmost) first

    def append(self, leaf: bytes) -> None:
        self._peaks.append(leaf)
        size = self.size
        # Merge while the new leaf completes a perfect subtree: one merge per trailing 1 bit.
        while size & 1:
            right = self._peaks.pop()
            left = self._peaks.pop()
            self._peaks.append(node_hash(left, right))
            size >>= 1
        self.size += 1

    def root(self) -> bytes:
        if not self._peaks:
            return EMPTY_ROOT
        # RFC 9162 trees are left-balanced, so the peaks fold right to left.
        result = self._peaks[-1]
        for peak in reversed(self._peaks[:-1]):
            result = node_hash(peak, result)
        return result


class MerkleTree:
    """All leaves in memory, for verification and proofs. Levels are built once, O(n)."""

    def __init__(self, leaves: Sequence[bytes]) -> None:
        self.leaves = list(leaves)
        # levels[h][i] = root of the perfect subtree over leaves [i * 2^h, (i + 1) * 2^h)
        self._levels: list[list[bytes]] = [self.leaves]
        level = self.leaves
        while len(level) > 1:
            level = [node_hash(level[i], level[i + 1]) for i in range(0, len(level) - 1, 2)]
            self._levels.append(level)

    @property
    def size(self) -> int:
        return len(self.leaves)

    def _range(self, low: int, high: int) -> bytes:
        """MTH(D[low:high]); every range met by the RFC recursions is aligned, so the perfect
        parts come straight from the levels."""
        n = high - low
        if n == 1:
            return self.leaves[low]
        height = n.bit_length() - 1
        if n == 1 << height and low % n == 0:
            return self._levels[height][low >> height]
        k = _split(n)
        return node_hash(self._range(low, low + k), self._range(low + k, high))

    def root(self, size: int | None = None) -> bytes:
        size = self.size if size is None else size
        if not 0 <= size <= self.size:
            raise ValueError(f"tree size {size} outside 0..{self.size}")
        return EMPTY_ROOT if size == 0 else self._range(0, size)

    def inclusion_proof(self, index: int, size: int) -> list[bytes]:
        """PATH(index, D[0:size]), leaf-side first (RFC 9162 2.1.3.1)."""
        if not 0 <= index < size <= self.size:
            raise ValueError(f"no inclusion proof for leaf {index} in a tree of {size}")
        proof: list[bytes] = []
        low, high = 0, size
        # Walk down from the root; siblings are collected top-down, so reverse at the end.
        while high - low > 1:
            k = _split(high - low)
            if index < low + k:
                proof.append(self._range(low + k, high))
                high = low + k
            else:
                proof.append(self._range(low, low + k))
                low = low + k
        proof.reverse()
        return proof

    def consistency_proof(self, first: int, second: int) -> list[bytes]:
        """PROOF(first, D[0:second]) (RFC 9162 2.1.4.1)."""
        if not 0 < first <= second <= self.size:
            raise ValueError(f"no consistency proof from size {first} to {second}")
        return self._subproof(first, 0, second, True)

    def _subproof(self, m: int, low: int, high: int, start: bool) -> list[bytes]:
        n = high - low
        if m == n:
            return [] if start else [self._range(low, high)]
        k = _split(n)
        if m <= k:
            return [*self._subproof(m, low, low + k, start), self._range(low + k, high)]
        return [*self._subproof(m - k, low + k, high, False), self._range(low, low + k)]


def verify_inclusion(leaf: bytes, index: int, size: int, proof: Sequence[bytes], root: bytes) -> bool:
    """RFC 9162 2.1.3.2."""
    if index >= size or index < 0:
        return False
    fn, sn, r = index, size - 1, leaf
    for p in proof:
        if sn == 0:
            return False
        if fn & 1 or fn == sn:
            r = node_hash(p, r)
            if not fn & 1:
                while not fn & 1 and fn != 0:
                    fn >>= 1
                    sn >>= 1
        else:
            r = node_hash(r, p)
        fn >>= 1
        sn >>= 1
    return sn == 0 and r == root


def verify_consistency(
    first: int, second: int, first_root: bytes, second_root: bytes, proof: Sequence[bytes]
) -> bool:
    """RFC 9162 2.1.4.2; sizes of 0 and equal sizes handled as the RFC prescribes."""
    if first < 0 or second < first:
        return False
    if first == 0:
        return not proof  # the empty tree is a prefix of every tree
    if first == second:
        return not proof and first_root == second_root
    if not proof:
        return False
    path = list(proof)
    if first & (first - 1) == 0:  # an exact power of two: the first tree is a complete subtree
        path.insert(0, first_root)
    fn, sn = first - 1, second - 1
    while fn & 1:
        fn >>= 1
        sn >>= 1
    fr = sr = path[0]
    for c in path[1:]:
        if sn == 0:
            return False
        if fn & 1 or fn == sn:
            fr = node_hash(c, fr)
            sr = node_hash(c, sr)
            if not fn & 1:
                while not fn & 1 and fn != 0:
                    fn >>= 1
                    sn >>= 1
        else:
            sr = node_hash(sr, c)
        fn >>= 1
        sn >>= 1
    return fr == first_root and sr == second_root and sn == 0
