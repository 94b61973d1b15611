"""The state root: a binary compact sparse Merkle tree over the whole ledger state.

Rules (docs/architecture.md, "State root and state proofs", states them for verifiers):

* A state entry ``key -> value`` is the pair ``key_hash = SHA-256(key as UTF-8)``,
  ``value_hash = SHA-256(canonical(value))``. The tree is keyed by the 256 bits of
  ``key_hash``, most significant bit first: bit ``d`` chooses the child at depth ``d``
  (0 = left).
* A subtree with no entries is *empty* and hashes to 32 zero bytes. A subtree with exactly
  one entry is that entry's *leaf*, ``SHA-256(0x00 || key_hash || value_hash)``, wherever
  it sits (no chain of nodes down to depth 256). A subtree with two or more entries is an
  *internal* node, ``SHA-256(0x01 || left || right)``, even when one side is empty.
* The state root is the hash of the subtree at depth 0; the empty state's root is 32 zero
  bytes.

This is the binary form of Diem/Aptos's Jellyfish Merkle tree. The shape is a function of
the set of keys alone, so the root does not depend on insertion order or batch boundaries.

Theory of operation. Only the top of the tree is kept in memory, down to a fixed depth (16
levels, 4.5 MiB); below it the entries are read from a :class:`LeafSource` (the store's state
table, ordered by key hash) when a block changes them or a proof passes through them, so a
validator's memory does not grow with the state. :class:`StateTree` explains the layout; a
block's changes are *staged* (the root they give, the committed tree untouched) and then
committed or discarded, as consensus decides.
"""

from __future__ import annotations

import hashlib
import heapq
from array import array
from bisect import bisect_left, bisect_right
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from node.codec import canonical, is_hex
from node.errors import ProofError
from node.invariant import invariant

HASH_BYTES = 32
KEY_BITS = 8 * HASH_BYTES

EMPTY_HASH = bytes(HASH_BYTES)
"""Hash of an empty subtree, and so the root of the empty state."""

PROOF_SIBLINGS_MAX = KEY_BITS
"""A leaf sits at depth 255 at most (two distinct keys differ in one of 256 bits), so no
valid proof has more siblings than the key has bits. Checked before any hashing."""

_LEAF_PREFIX = b"\x00"
_NODE_PREFIX = b"\x01"


def state_key_hash(key: str) -> bytes:
    """``SHA-256`` of a state key's UTF-8 bytes: its position in the tree."""
    return hashlib.sha256(key.encode("utf-8")).digest()


def state_value_hash(value: Any) -> bytes:
    """``SHA-256`` of a state value's canonical JSON."""
    return hashlib.sha256(canonical(value)).digest()


def state_leaf_hash(key_hash: bytes, value_hash: bytes) -> bytes:
    """``SHA-256(0x00 || key_hash || value_hash)``: the hash of a one-entry subtree."""
    return hashlib.sha256(_LEAF_PREFIX + key_hash + value_hash).digest()


@dataclass(frozen=True, slots=True)
class StateLeaf:
    """A leaf as a proof shows it: the entry occupying the position of the key asked about."""

    key_hash: bytes
    value_hash: bytes

    def __post_init__(self) -> None:
        for name in ("key_hash", "value_hash"):
            field = getattr(self, name)
            if not isinstance(field, bytes) or len(field) != HASH_BYTES:
                raise ProofError(f"state proof: leaf {name} must be {HASH_BYTES} bytes")


@dataclass(frozen=True, slots=True, kw_only=True)
class StateProof:
    """What the tree holds at one key's position, and the sibling hashes up to the root.

    ``leaf`` is the leaf found by walking the key's bits from the root (``None`` when the
    walk ends in an empty subtree); ``siblings`` are the hashes of the other child at each
    internal node of the walk, from the deepest up to the root's child (leaf side first, as
    an RFC 6962 audit path). The same proof shows inclusion when ``leaf`` has the key, and
    non-inclusion when it is ``None`` or another key's leaf.
    """

    leaf: StateLeaf | None
    siblings: tuple[bytes, ...]

    def __post_init__(self) -> None:
        if self.leaf is not None and not isinstance(self.leaf, StateLeaf):
            raise ProofError("state proof: leaf must be a StateLeaf or None")
        if not isinstance(self.siblings, tuple):
            raise ProofError("state proof: siblings must be a tuple")
        if len(self.siblings) > PROOF_SIBLINGS_MAX:
            raise ProofError(
                f"state proof: {len(self.siblings)} siblings exceed {PROOF_SIBLINGS_MAX}"
            )
        for position, sibling in enumerate(self.siblings):
            if not isinstance(sibling, bytes) or len(sibling) != HASH_BYTES:
                raise ProofError(f"state proof: sibling {position} must be {HASH_BYTES} bytes")

    def to_json(self) -> dict[str, Any]:
        """The canonical-domain JSON form (docs/architecture.md): hashes as lowercase hex."""
        leaf = None
        if self.leaf is not None:
            leaf = {"key_hash": self.leaf.key_hash.hex(), "value_hash": self.leaf.value_hash.hex()}
        return {"leaf": leaf, "siblings": [sibling.hex() for sibling in self.siblings]}

    @classmethod
    def from_json(cls, value: object) -> StateProof:
        """Read a proof from untrusted parsed JSON (e.g. from :func:`node.codec.parse_json`).

        Refuses anything but the exact form with :class:`ProofError`: missing or unknown
        fields, non-hex or upper-case hex, wrong lengths, too many siblings.
        """
        if not isinstance(value, dict):
            raise ProofError("state proof: must be a JSON object")
        if set(value) != {"leaf", "siblings"}:
            raise ProofError(
                f"state proof: fields must be exactly leaf, siblings; got {sorted(value)}"
            )
        siblings = value["siblings"]
        if not isinstance(siblings, list):
            raise ProofError("state proof: siblings must be a list")
        if len(siblings) > PROOF_SIBLINGS_MAX:
            raise ProofError(f"state proof: {len(siblings)} siblings exceed {PROOF_SIBLINGS_MAX}")
        leaf_value = value["leaf"]
        leaf = None
        if leaf_value is not None:
            if not isinstance(leaf_value, dict):
                raise ProofError("state proof: leaf must be null or an object")
            if set(leaf_value) != {"key_hash", "value_hash"}:
                raise ProofError(
                    "state proof: leaf fields must be exactly key_hash, value_hash; "
                    f"got {sorted(leaf_value)}"
                )
            leaf = StateLeaf(
                _hash_from_hex(leaf_value["key_hash"], "leaf.key_hash"),
                _hash_from_hex(leaf_value["value_hash"], "leaf.value_hash"),
            )
        return cls(
            leaf=leaf,
            siblings=tuple(
                _hash_from_hex(sibling, f"siblings[{position}]")
                for position, sibling in enumerate(siblings)
            ),
        )


def _hash_from_hex(text: object, where: str) -> bytes:
    if not is_hex(text, HASH_BYTES):
        raise ProofError(f"state proof: {where} must be {2 * HASH_BYTES} lowercase hex digits")
    return bytes.fromhex(text)  # type: ignore[arg-type]


def _bit(key_hash: bytes, depth: int) -> int:
    return (key_hash[depth >> 3] >> (7 - (depth & 7))) & 1


def verify_state_proof(
    root: bytes, key_hash: bytes, value_hash: bytes | None, proof: StateProof
) -> None:
    """Check that the state with ``root`` maps ``key_hash`` to ``value_hash``.

    ``value_hash=None`` claims the key is absent. Raises :class:`ProofError` saying why the
    proof fails; returns ``None`` when it holds. The algorithm is the one documented in
    docs/architecture.md, "State root and state proofs".
    """
    for name, given in (("root", root), ("key_hash", key_hash), ("value_hash", value_hash)):
        if given is not None and len(given) != HASH_BYTES:
            raise ProofError(f"state proof: {name} must be {HASH_BYTES} bytes")
    siblings = proof.siblings
    depth = len(siblings)
    if depth > PROOF_SIBLINGS_MAX:
        raise ProofError(f"state proof: {depth} siblings exceed {PROOF_SIBLINGS_MAX}")
    leaf = proof.leaf
    if value_hash is not None:
        if leaf is None:
            raise ProofError("state proof: the proof shows the key absent, not included")
        if leaf.key_hash != key_hash:
            raise ProofError("state proof: the proof shows another key at the key's position")
        if leaf.value_hash != value_hash:
            raise ProofError("state proof: the key holds a different value hash")
    elif leaf is not None:
        if leaf.key_hash == key_hash:
            raise ProofError("state proof: the key is present, not absent")
        if _common_prefix_bits(leaf.key_hash, key_hash) < depth:
            raise ProofError("state proof: the leaf shown does not lie on the key's path")
    # In a canonical tree the subtree beside a leaf or an empty subtree holds at least one
    # leaf (else their parent would be that leaf, or empty): an empty sibling there means
    # the proof describes a tree that cannot exist.
    if depth and siblings[0] == EMPTY_HASH:
        raise ProofError("state proof: not canonical (empty sibling next to the leaf)")
    sha256 = hashlib.sha256
    current = (
        EMPTY_HASH
        if leaf is None
        else sha256(_LEAF_PREFIX + leaf.key_hash + leaf.value_hash).digest()
    )
    for position, sibling in enumerate(siblings):
        if _bit(key_hash, depth - 1 - position):
            current = sha256(_NODE_PREFIX + sibling + current).digest()
        else:
            current = sha256(_NODE_PREFIX + current + sibling).digest()
    if current != root:
        raise ProofError("state proof: computed root does not match the state root")


def _common_prefix_bits(first: bytes, second: bytes) -> int:
    difference = int.from_bytes(first, "big") ^ int.from_bytes(second, "big")
    return KEY_BITS - difference.bit_length()


# --- the tree ---------------------------------------------------------------------------
#
# Layout. The tree is cut at depth ``bucket_bits`` (16 by default) into 2**bucket_bits
# *buckets*: bucket ``b`` holds the entries whose key hashes start with the bits of ``b``.
# Above the cut, every node of the complete binary tree is kept in memory as a heap (node
# ``i`` has children ``2i`` and ``2i + 1``; the root is node 1, bucket ``b`` is node
# ``2**bucket_bits + b``), each as its subtree's hash and entry count. With the counts the
# compact rules need no special cases: a node with no entries hashes to EMPTY_HASH, one with
# a single entry to that entry's leaf hash (its non-empty child's hash), and one with two
# or more to ``SHA-256(0x01 || left || right)``. That is 4.5 MiB whatever the state's size (9 MiB
# with the staged copy).
#
# Below the cut nothing is kept: a bucket's subtree is rebuilt from its entries, read from a
# LeafSource (the store's state table, ordered by key hash), whenever a block changes it or
# a proof passes through it. At a million entries a bucket holds about 15, so a block of
# 1,000 changes reads about 1,000 short ranges and rehashes about 30,000 nodes: the same
# order of work as an in-memory tree, for a memory that does not grow with the state.
#
# Staging. ``stage`` copies the committed arrays into a second pair (two memory copies, about
# a millisecond) and writes the block's nodes there. ``commit`` swaps the pairs, once the
# source holds the block's entries; ``discard`` forgets the staged pair. Proofs always describe
# the committed state: while a block is staged, the source may already hold its entries
# (its database transaction commits before the ledger advances), so reads for proofs put
# the staged keys' committed hashes back.

BUCKET_BITS = 16
"""Depth of the cut between the in-memory top of the tree and the buckets read on demand:
65,536 buckets, 4.5 MiB of nodes above them (twice: committed and staged). The root does
not depend on it."""

_BUCKET_BITS_MAX = 24


class LeafSource(Protocol):
    """Where a :class:`StateTree` reads the committed entries below its cut."""

    def state_hashes(self, ranges: Sequence[tuple[bytes, bytes]]) -> list[tuple[bytes, bytes]]:
        """Every ``(key_hash, value_hash)`` with ``low <= key_hash <= high`` for one of the
        disjoint inclusive ``ranges``, sorted by key hash."""
        ...


class MemoryLeaves:
    """A :class:`LeafSource` held in memory: a sorted list of key hashes and their values."""

    __slots__ = ("_keys", "_values")

    def __init__(self, items: Iterable[tuple[bytes, bytes]] = ()) -> None:
        self._values: dict[bytes, bytes] = {}
        self._keys: list[bytes] = []
        self.apply(dict(items))

    def __len__(self) -> int:
        return len(self._keys)

    def items(self) -> Iterator[tuple[bytes, bytes]]:
        """Every ``(key_hash, value_hash)`` in key order."""
        values = self._values
        return ((key, values[key]) for key in self._keys)

    def state_hashes(self, ranges: Sequence[tuple[bytes, bytes]]) -> list[tuple[bytes, bytes]]:
        keys, values = self._keys, self._values
        found = []
        for low, high in sorted(ranges):
            for position in range(bisect_left(keys, low), bisect_right(keys, high)):
                found.append((keys[position], values[keys[position]]))
        return found

    def apply(self, changes: Mapping[bytes, bytes | None]) -> None:
        """Set (or with ``None`` delete) entries; one merge of the key list per call."""
        for key, value in changes.items():
            _check_entry(key, value)
        values = self._values
        added = sorted(key for key, value in changes.items() if value is not None)
        added = [key for key in added if key not in values]
        removed = {key for key, value in changes.items() if value is None and key in values}
        for key, value in changes.items():
            if value is None:
                values.pop(key, None)
            else:
                values[key] = value
        if removed:
            self._keys = [key for key in self._keys if key not in removed]
        if added:
            self._keys = list(heapq.merge(self._keys, added))


def _check_entry(key_hash: bytes, value_hash: bytes | None) -> None:
    invariant(
        isinstance(key_hash, bytes) and len(key_hash) == HASH_BYTES,
        "state key hashes are 32 bytes",
    )
    invariant(
        value_hash is None or (isinstance(value_hash, bytes) and len(value_hash) == HASH_BYTES),
        "state value hashes are 32 bytes",
    )


def _range_of(prefix: int, depth: int) -> tuple[bytes, bytes]:
    """The inclusive key-hash range of the subtree at ``depth`` whose path is ``prefix``."""
    shift = KEY_BITS - depth
    low = prefix << shift
    return low.to_bytes(HASH_BYTES, "big"), (low | ((1 << shift) - 1)).to_bytes(HASH_BYTES, "big")


def _subtree_hash(
    key_ints: list[int], leaves: list[bytes], low: int, high: int, depth: int
) -> bytes:
    """Hash of the subtree at ``depth`` over the sorted entries ``[low, high)`` (which share
    their first ``depth`` bits); ``leaves[i]`` is entry ``i``'s ``key_hash || value_hash``."""
    if high - low <= 1:
        if high == low:
            return EMPTY_HASH
        return hashlib.sha256(_LEAF_PREFIX + leaves[low]).digest()
    shift = KEY_BITS - 1 - depth
    middle = bisect_left(key_ints, ((key_ints[low] >> shift) | 1) << shift, low, high)
    left = _subtree_hash(key_ints, leaves, low, middle, depth + 1)
    right = _subtree_hash(key_ints, leaves, middle, high, depth + 1)
    return hashlib.sha256(_NODE_PREFIX + left + right).digest()


def _entries_hash(entries: Sequence[tuple[bytes, bytes]], depth: int) -> bytes:
    """Hash of the subtree at ``depth`` over sorted ``(key_hash, value_hash)`` entries."""
    if len(entries) == 1:
        key_hash, value_hash = entries[0]
        return hashlib.sha256(_LEAF_PREFIX + key_hash + value_hash).digest()
    key_ints = [int.from_bytes(key_hash, "big") for key_hash, _ in entries]
    leaves = [key_hash + value_hash for key_hash, value_hash in entries]
    return _subtree_hash(key_ints, leaves, 0, len(entries), depth)


def _write_nodes(
    hashes: bytearray, counts: array[int], buckets: Mapping[int, tuple[bytes, int]], bits: int
) -> None:
    """Set the given bucket nodes of a tree's arrays and recompute the nodes above them."""
    sha256 = hashlib.sha256
    for node, (node_hash, count) in buckets.items():
        hashes[node << 5 : (node << 5) + HASH_BYTES] = node_hash
        counts[node] = count
    level = set(buckets)
    for _ in range(bits):
        level = {node >> 1 for node in level}
        for node in level:
            # The compact rules by the counts. Children 2n and 2n + 1 sit side by side, so
            # their two hashes are one 64-byte slice.
            left_count = counts[node << 1]
            count = left_count + counts[(node << 1) | 1]
            offset = node << 6
            if count >= 2:
                node_hash = sha256(_NODE_PREFIX + hashes[offset : offset + 64]).digest()
            elif count == 1:
                offset += 0 if left_count else HASH_BYTES
                node_hash = bytes(hashes[offset : offset + HASH_BYTES])
            else:
                node_hash = EMPTY_HASH
            hashes[node << 5 : (node << 5) + HASH_BYTES] = node_hash
            counts[node] = count


class StateTree:
    """The ledger state's hash tree, ``key_hash -> value_hash``, its leaves in a LeafSource.

    Memory is fixed by ``bucket_bits`` (about ``2**(bucket_bits + 1) * 40`` bytes), not by the
    state's size. A block's root costs O(changes x (log N + entries per bucket)) hashes and
    one batched read of the buckets it changes. Not thread-safe: one writer (the ledger).
    """

    __slots__ = (
        "_bits",
        "_counts",
        "_hashes",
        "_inverse",
        "_source",
        "_staged",
        "_staged_counts",
        "_staged_hashes",
    )

    def __init__(self, source: LeafSource, *, bucket_bits: int = BUCKET_BITS) -> None:
        invariant(0 <= bucket_bits <= _BUCKET_BITS_MAX, "bucket_bits out of range")
        nodes = 2 << bucket_bits
        self._source = source
        self._bits = bucket_bits
        # Zero pages: what the nodes of an empty tree are, and untouched ones cost nothing.
        self._hashes = bytearray(HASH_BYTES * nodes)
        self._counts = array("Q", bytes(8 * nodes))
        self._staged_hashes = bytearray(HASH_BYTES * nodes)
        self._staged_counts = array("Q", bytes(8 * nodes))
        self._staged = False
        """Whether the staged arrays hold a block's tree (else they are scratch)."""
        self._inverse: dict[bytes, bytes | None] = {}
        """The committed value hash (``None``: absent) of every key the staged block changes."""

    @classmethod
    def build(
        cls,
        source: LeafSource,
        items: Iterable[tuple[bytes, bytes]],
        *,
        bucket_bits: int = BUCKET_BITS,
    ) -> StateTree:
        """The tree over ``items``, the source's entries streamed in key-hash order.

        One pass: each bucket is hashed as its entries go by, then the nodes above the
        non-empty buckets, level by level. Memory holds one bucket at a time.
        """
        tree = cls(source, bucket_bits=bucket_bits)
        first = 1 << bucket_bits
        shift = KEY_BITS - bucket_bits
        buckets: dict[int, tuple[bytes, int]] = {}
        bucket: list[tuple[bytes, bytes]] = []
        bucket_index = -1
        previous = b""
        for key_hash, value_hash in items:
            _check_entry(key_hash, value_hash)
            invariant(key_hash > previous, "state entries must come sorted by distinct key hash")
            previous = key_hash
            index = int.from_bytes(key_hash, "big") >> shift
            if index != bucket_index and bucket:
                buckets[first + bucket_index] = (_entries_hash(bucket, bucket_bits), len(bucket))
                bucket = []
            bucket_index = index
            bucket.append((key_hash, value_hash))
        if bucket:
            buckets[first + bucket_index] = (_entries_hash(bucket, bucket_bits), len(bucket))
        _write_nodes(tree._hashes, tree._counts, buckets, bucket_bits)
        return tree

    def __len__(self) -> int:
        """Entries in the committed state."""
        return self._counts[1]

    def root(self) -> bytes:
        """The committed state root: 32 zero bytes for the empty state."""
        return bytes(self._hashes[HASH_BYTES : 2 * HASH_BYTES])

    def _committed(self, node: int) -> tuple[bytes, int]:
        return bytes(self._hashes[node << 5 : (node << 5) + HASH_BYTES]), self._counts[node]

    # --- blocks ---

    def stage(self, changes: Mapping[bytes, bytes | None]) -> bytes:
        """The root after ``changes`` (``key_hash -> value_hash``, ``None`` deletes), staged
        over the committed state; replaces whatever was staged. Deleting an absent key is a
        no-op. The source must hold the committed state when this is called."""
        self.discard()
        bits = self._bits
        first = 1 << bits
        shift = KEY_BITS - bits
        touched: dict[int, list[bytes]] = {}
        for key_hash, value_hash in changes.items():
            _check_entry(key_hash, value_hash)
            touched.setdefault(int.from_bytes(key_hash, "big") >> shift, []).append(key_hash)
        if not touched:
            return self.root()
        buckets = sorted(touched)
        entries: dict[int, dict[bytes, bytes]] = {index: {} for index in buckets}
        for key_hash, value_hash in self._source.state_hashes(
            [_range_of(index, bits) for index in buckets]
        ):
            entries[int.from_bytes(key_hash, "big") >> shift][key_hash] = value_hash
        inverse = self._inverse
        staged: dict[int, tuple[bytes, int]] = {}
        for index in buckets:
            bucket = entries[index]
            for key_hash in touched[index]:
                inverse[key_hash] = bucket.get(key_hash)
                value_hash = changes[key_hash]
                if value_hash is None:
                    bucket.pop(key_hash, None)
                else:
                    bucket[key_hash] = value_hash
            if not bucket:
                staged[first + index] = (EMPTY_HASH, 0)
            else:
                staged[first + index] = (_entries_hash(sorted(bucket.items()), bits), len(bucket))
        self._staged_hashes[:] = self._hashes  # two memory copies, about 1 ms
        self._staged_counts[:] = self._counts
        self._staged = True
        _write_nodes(self._staged_hashes, self._staged_counts, staged, bits)
        return bytes(self._staged_hashes[HASH_BYTES : 2 * HASH_BYTES])

    def commit(self) -> None:
        """Make the staged changes committed: the source now holds them."""
        if self._staged:
            self._hashes, self._staged_hashes = self._staged_hashes, self._hashes
            self._counts, self._staged_counts = self._staged_counts, self._counts
        self.discard()

    def discard(self) -> None:
        """Drop the staged changes."""
        self._staged = False
        self._inverse = {}

    # --- proofs ---

    def _committed_entries(self, low: bytes, high: bytes) -> list[tuple[bytes, bytes]]:
        """The committed entries in ``[low, high]``: the source's, with any staged key put
        back to its committed value (the source may already hold the staged block)."""
        found = self._source.state_hashes([(low, high)])
        restore = {key: value for key, value in self._inverse.items() if low <= key <= high}
        if not restore:
            return found
        merged = {key: value for key, value in found if key not in restore}
        merged.update((key, value) for key, value in restore.items() if value is not None)
        return sorted(merged.items())

    def prove(self, key_hash: bytes) -> StateProof:
        """A proof of what the committed state holds at ``key_hash``: its leaf, or its
        absence."""
        _check_entry(key_hash, None)
        key_int = int.from_bytes(key_hash, "big")
        siblings: list[bytes] = []
        node, depth = 1, 0
        while depth < self._bits and self._counts[node] >= 2:
            child = (node << 1) | ((key_int >> (KEY_BITS - 1 - depth)) & 1)
            siblings.append(self._committed(child ^ 1)[0])
            node, depth = child, depth + 1
        count = self._counts[node]
        leaf = None
        if count:
            entries = self._committed_entries(*_range_of(node - (1 << depth), depth))
            invariant(len(entries) == count, "the state source disagrees with the tree")
            leaf = self._walk_entries(entries, depth, key_int, siblings)
        siblings.reverse()
        return StateProof(leaf=leaf, siblings=tuple(siblings))

    @staticmethod
    def _walk_entries(
        entries: list[tuple[bytes, bytes]], depth: int, key_int: int, siblings: list[bytes]
    ) -> StateLeaf | None:
        """Walk ``key_int``'s path through the subtree at ``depth`` over ``entries``."""
        key_ints = [int.from_bytes(key_hash, "big") for key_hash, _ in entries]
        leaves = [key_hash + value_hash for key_hash, value_hash in entries]
        low, high = 0, len(entries)
        while high - low >= 2:
            shift = KEY_BITS - 1 - depth
            middle = bisect_left(key_ints, ((key_ints[low] >> shift) | 1) << shift, low, high)
            if (key_int >> shift) & 1:
                siblings.append(_subtree_hash(key_ints, leaves, low, middle, depth + 1))
                low = middle
            else:
                siblings.append(_subtree_hash(key_ints, leaves, middle, high, depth + 1))
                high = middle
            depth += 1
        if high == low:
            return None
        return StateLeaf(*entries[low])
