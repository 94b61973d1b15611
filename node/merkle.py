"""RFC 6962 Merkle tree over a block's transactions: ``tx_root`` and inclusion proofs.

Definitions (RFC 6962 section 2.1, unchanged in RFC 9162 section 2.1.1):

* ``MTH({}) = SHA-256()``, the hash of the empty string;
* ``MTH({d0}) = SHA-256(0x00 || d0)``, a leaf hash;
* ``MTH(D[n]) = SHA-256(0x01 || MTH(D[0:k]) || MTH(D[k:n]))`` for ``n > 1``, where ``k`` is
  the largest power of two smaller than ``n``.

The domain bytes 0x00 and 0x01 keep a leaf from ever being read as an interior node
(second-preimage resistance). One leaf per transaction, in block order:
``leaf = canonical({"tx_id": ..., "code": ...})`` (DESIGN.md, "Blocks, state and proofs").

Theory of operation: the recursive split is the same tree as pairing hashes level by level
from the left and carrying an odd last node up unchanged, so :class:`MerkleTree` builds the
levels bottom-up in one pass (no recursion, one ``sha256`` call per node) and keeps them, so
every inclusion proof of the same block is a walk of ``log2(n)`` list look-ups. Verification
is RFC 9162 section 2.1.3.2 verbatim: iterative, without rebuilding any tree.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence

from node.codec import canonical
from node.errors import ProofError
from node.invariant import invariant

HASH_BYTES = 32

EMPTY_ROOT = hashlib.sha256(b"").digest()
"""``MTH({})``: the ``tx_root`` of a block without transactions."""

PATH_LENGTH_MAX = 64
"""An audit path has at most ``ceil(log2(tree_size))`` hashes; ``tree_size`` is a 64-bit
count in RFC 9162, so no valid path is longer than this."""

_LEAF_PREFIX = b"\x00"
_NODE_PREFIX = b"\x01"


def tx_leaf(tx_id: str, code: str) -> bytes:
    """The leaf of one transaction in its block's tree: its id and its outcome code."""
    return canonical({"tx_id": tx_id, "code": code})


def leaf_hash(leaf: bytes) -> bytes:
    """``SHA-256(0x00 || leaf)``."""
    return hashlib.sha256(_LEAF_PREFIX + leaf).digest()


def node_hash(left: bytes, right: bytes) -> bytes:
    """``SHA-256(0x01 || left || right)``."""
    return hashlib.sha256(_NODE_PREFIX + left + right).digest()


class MerkleTree:
    """All levels of one RFC 6962 tree, built once, serving any number of proofs.

    ``levels[0]`` holds the leaf hashes, ``levels[-1]`` the root alone. An odd last node of
    a level is carried up unchanged, which is exactly the RFC's split into a left subtree of
    the largest power of two and the rest.
    """

    __slots__ = ("_levels", "_size")

    def __init__(self, leaves: Sequence[bytes]) -> None:
        sha256 = hashlib.sha256
        level = [sha256(_LEAF_PREFIX + leaf).digest() for leaf in leaves]
        self._size = len(level)
        self._levels: list[list[bytes]] = [level]
        while len(level) > 1:
            parents = [
                sha256(_NODE_PREFIX + level[i] + level[i + 1]).digest()
                for i in range(0, len(level) - 1, 2)
            ]
            if len(level) % 2:
                parents.append(level[-1])
            level = parents
            self._levels.append(level)

    def __len__(self) -> int:
        return self._size

    def root(self) -> bytes:
        """The Merkle tree hash of all leaves (``SHA-256()`` when there are none)."""
        if self._size == 0:
            return EMPTY_ROOT
        return self._levels[-1][0]

    def inclusion_proof(self, index: int) -> list[bytes]:
        """The audit path of leaf ``index`` (RFC 6962 section 2.1.1), leaf side first."""
        if not 0 <= index < self._size:
            raise IndexError(f"leaf index {index} outside a tree of {self._size} leaves")
        path: list[bytes] = []
        position = index
        for level in self._levels[:-1]:
            sibling = position ^ 1
            # A node without a right sibling is carried up unchanged: it adds no hash.
            if sibling < len(level):
                path.append(level[sibling])
            position >>= 1
        invariant(len(path) <= PATH_LENGTH_MAX, "audit path longer than any tree allows")
        return path


def merkle_root(leaves: Sequence[bytes]) -> bytes:
    """``MTH(leaves)``: the ``tx_root`` of a block whose transactions give these leaves."""
    return MerkleTree(leaves).root()


def inclusion_proof(leaves: Sequence[bytes], index: int) -> list[bytes]:
    """The audit path of ``leaves[index]``; build a :class:`MerkleTree` for several proofs."""
    return MerkleTree(leaves).inclusion_proof(index)


def verify_inclusion(
    root: bytes, leaf: bytes, index: int, tree_size: int, path: Sequence[bytes]
) -> None:
    """Check that ``leaf`` is leaf ``index`` of the tree of ``tree_size`` leaves with ``root``.

    Follows RFC 9162 section 2.1.3.2 step by step; raises :class:`ProofError` saying why
    the proof fails, returns ``None`` when it holds. ``tree_size`` must come from a trusted
    place (the committed header's ``tx_count``): an audit path binds the size only through
    its shape, so leaf 0 of a tree of 3 has the same path as leaf 0 of a tree of 4.
    """
    if len(root) != HASH_BYTES:
        raise ProofError(f"root must be {HASH_BYTES} bytes, got {len(root)}")
    if tree_size <= 0:
        raise ProofError(f"tree size must be positive, got {tree_size}")
    if not 0 <= index < tree_size:
        raise ProofError(f"leaf index {index} outside a tree of {tree_size} leaves")
    if len(path) > PATH_LENGTH_MAX:
        raise ProofError(f"audit path of {len(path)} hashes exceeds {PATH_LENGTH_MAX}")
    sha256 = hashlib.sha256
    # Step 2: fn is the node's index at the current level, sn the last index there.
    fn = index
    sn = tree_size - 1
    # Step 3.
    r = sha256(_LEAF_PREFIX + leaf).digest()
    # Step 4.
    for position, p in enumerate(path):
        if len(p) != HASH_BYTES:
            raise ProofError(f"audit path hash {position} is {len(p)} bytes, not {HASH_BYTES}")
        if sn == 0:
            raise ProofError(
                f"audit path too long: {len(path)} hashes for leaf {index} of {tree_size}"
            )
        if fn & 1 or fn == sn:
            r = sha256(_NODE_PREFIX + p + r).digest()
            # A right-most node without a sibling was carried up: skip those levels.
            while fn and not fn & 1:
                fn >>= 1
                sn >>= 1
        else:
            r = sha256(_NODE_PREFIX + r + p).digest()
        fn >>= 1
        sn >>= 1
    # Step 5.
    if sn != 0:
        raise ProofError(
            f"audit path too short: {len(path)} hashes for leaf {index} of {tree_size}"
        )
    if r != root:
        raise ProofError(f"leaf {index} of {tree_size}: computed root does not match")
