"""RFC 9162 Merkle math against a literal transcription of the RFC's recursive definitions."""

from __future__ import annotations

import hashlib

from hypothesis import given, settings
from hypothesis import strategies as st

from enclave.trust.merkle import (
    EMPTY_ROOT,
    CompactRange,
    MerkleTree,
    leaf_hash,
    node_hash,
    verify_consistency,
    verify_inclusion,
)


def reference_root(entries: list[bytes]) -> bytes:
    """MTH(D[n]) exactly as RFC 9162 2.1.1 writes it."""
    n = len(entries)
    if n == 0:
        return hashlib.sha256(b"").digest()
    if n == 1:
        return hashlib.sha256(b"\x00" + entries[0]).digest()
    k = 1
    while k * 2 < n:
        k *= 2
    return hashlib.sha256(b"\x01" + reference_root(entries[:k]) + reference_root(entries[k:])).digest()


def entries_of(n: int) -> list[bytes]:
    return [f"record {i}".encode() for i in range(n)]


def test_known_small_trees() -> None:
    assert MerkleTree([]).root() == EMPTY_ROOT
    one = MerkleTree([leaf_hash(b"a")])
    assert one.root() == hashlib.sha256(b"\x00a").digest()
    three = MerkleTree([leaf_hash(x) for x in (b"a", b"b", b"c")])
    expected = node_hash(node_hash(leaf_hash(b"a"), leaf_hash(b"b")), leaf_hash(b"c"))
    assert three.root() == expected


@settings(max_examples=60, deadline=None)
@given(st.integers(min_value=0, max_value=70))
def test_roots_match_the_rfc_at_every_size(n: int) -> None:
    entries = entries_of(n)
    tree = MerkleTree([leaf_hash(e) for e in entries])
    compact = CompactRange()
    for size in range(n + 1):
        assert tree.root(size) == reference_root(entries[:size])
        assert compact.root() == tree.root(size)
        if size < n:
            compact.append(leaf_hash(entries[size]))


@settings(max_examples=60, deadline=None)
@given(st.integers(min_value=1, max_value=70), st.data())
def test_inclusion_proofs_verify_and_tampering_fails(n: int, data: st.DataObject) -> None:
    tree = MerkleTree([leaf_hash(e) for e in entries_of(n)])
    size = data.draw(st.integers(min_value=1, max_value=n))
    index = data.draw(st.integers(min_value=0, max_value=size - 1))
    root = tree.root(size)
    proof = tree.inclusion_proof(index, size)
    assert verify_inclusion(tree.leaves[index], index, size, proof, root)
    assert not verify_inclusion(leaf_hash(b"forged"), index, size, proof, root)
    if size > 1:
        assert not verify_inclusion(tree.leaves[index], (index + 1) % size, size, proof, root)
    if proof:
        bad = [*proof]
        bad[0] = bytes(32)
        assert not verify_inclusion(tree.leaves[index], index, size, bad, root)
        assert not verify_inclusion(tree.leaves[index], index, size, proof[:-1], root)


@settings(max_examples=80, deadline=None)
@given(st.integers(min_value=1, max_value=70), st.data())
def test_consistency_proofs_verify_and_forks_fail(n: int, data: st.DataObject) -> None:
    entries = entries_of(n)
    tree = MerkleTree([leaf_hash(e) for e in entries])
    first = data.draw(st.integers(min_value=1, max_value=n))
    second = data.draw(st.integers(min_value=first, max_value=n))
    proof = tree.consistency_proof(first, second)
    assert verify_consistency(first, second, tree.root(first), tree.root(second), proof)
    # A fork: the first `first` entries rewritten, then the same continuation.
    forked = MerkleTree([leaf_hash(b"rewritten " + e) for e in entries[:first]] + tree.leaves[first:])
    assert not verify_consistency(first, second, forked.root(first), tree.root(second), proof)
    if first < second:
        assert not verify_consistency(first, second, tree.root(first), forked.root(second), proof)
        assert not verify_consistency(first, second, tree.root(first), tree.root(second), [])


def test_consistency_edge_cases() -> None:
    tree = MerkleTree([leaf_hash(e) for e in entries_of(8)])
    assert verify_consistency(0, 8, EMPTY_ROOT, tree.root(), [])
    assert verify_consistency(8, 8, tree.root(), tree.root(), [])
    assert not verify_consistency(8, 8, tree.root(), tree.root(7), [])
    assert not verify_consistency(5, 4, tree.root(5), tree.root(4), [])
