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

Theory of operation. The nodes live in flat arenas (a ``bytearray`` of internal hashes, an
``array`` of child references, a ``bytearray`` of leaves), not one Python object each: this
keeps a million entries near 130 MB and out of the cyclic garbage collector's way (see the
comment above :class:`_Arena`). An update sorts its batch once and walks down from the root,
splitting the batch at each internal node by bisecting the keys as 256-bit integers, so each
touched node is visited and rehashed once: O(changes x log N) hashes per block. Where the
walk reaches a leaf or an empty subtree, the few entries there are rebuilt into a subtree;
on the way back up, a node left with a single leaf is replaced by that leaf.
"""

from __future__ import annotations

import hashlib
from array import array
from bisect import bisect_left
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any

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
# Storage. Nodes live in three flat arenas instead of one Python object each: at a million
# entries a tuple per node costs about twice the memory, and CPython's cyclic collector
# keeps traversing those tuples, which showed as full collections of 50-100 ms every few
# blocks. A node is named by an integer reference:
#
#   ref == 0   the empty subtree;
#   ref > 0    internal node ``ref``: its hash is ``hashes[32 ref : 32 ref + 32]``, its
#              children ``children[2 ref]`` and ``children[2 ref + 1]``;
#   ref < 0    leaf ``-ref``: ``leaves[64 (-ref) : 64 (-ref) + 64]`` is key_hash || value_hash.
#
# Slot 0 of each arena is never used, so that 0 can mean empty. Slots freed by an update go
# to a free list and are reused. A leaf's hash is not stored: it is one sha256 call away,
# and storing it would add 32 bytes to every entry.

_REF_MAX = 2**31 - 1
"""References are stored in ``array('i')``; a tree never needs two billion nodes."""


class _Arena:
    """The three arenas and their free lists, with the node operations updates need."""

    __slots__ = ("children", "free_leaves", "free_nodes", "hashes", "leaves")

    def __init__(self) -> None:
        self.hashes = bytearray(HASH_BYTES)
        self.children = array("i", (0, 0))
        self.leaves = bytearray(2 * HASH_BYTES)
        self.free_nodes: list[int] = []
        self.free_leaves: list[int] = []

    def copy(self) -> _Arena:
        twin = _Arena()
        twin.hashes = bytearray(self.hashes)
        twin.children = array("i", self.children)
        twin.leaves = bytearray(self.leaves)
        twin.free_nodes = list(self.free_nodes)
        twin.free_leaves = list(self.free_leaves)
        return twin

    def hash_of(self, ref: int) -> bytes:
        if ref > 0:
            offset = ref << 5
            return bytes(self.hashes[offset : offset + 32])
        if ref < 0:
            offset = -ref << 6
            return hashlib.sha256(_LEAF_PREFIX + self.leaves[offset : offset + 64]).digest()
        return EMPTY_HASH

    def new_leaf(self, leaf: bytes) -> int:
        if self.free_leaves:
            slot = self.free_leaves.pop()
            offset = slot << 6
            self.leaves[offset : offset + 64] = leaf
        else:
            slot = len(self.leaves) >> 6
            invariant(slot < _REF_MAX, "state tree leaf arena full")
            self.leaves += leaf
        return -slot

    def new_node(
        self, left: int, left_hash: bytes, right: int, right_hash: bytes
    ) -> tuple[int, bytes]:
        """An internal node over children whose hashes the caller knows; with its hash."""
        node_hash = hashlib.sha256(_NODE_PREFIX + left_hash + right_hash).digest()
        if self.free_nodes:
            ref = self.free_nodes.pop()
            self.children[ref << 1] = left
            self.children[(ref << 1) + 1] = right
            self.hashes[ref << 5 : (ref << 5) + 32] = node_hash
        else:
            ref = len(self.children) >> 1
            invariant(ref < _REF_MAX, "state tree node arena full")
            self.children.append(left)
            self.children.append(right)
            self.hashes += node_hash
        return ref, node_hash

    def build(
        self, key_ints: list[int], refs: list[int], low: int, high: int, depth: int
    ) -> tuple[int, bytes]:
        """The subtree at ``depth`` over the sorted, distinct leaves ``refs[low:high]``."""
        if high - low <= 1:
            if high == low:
                return 0, EMPTY_HASH
            ref = refs[low]
            return ref, self.hash_of(ref)
        middle = _split(key_ints, low, high, depth)
        left, left_hash = self.build(key_ints, refs, low, middle, depth + 1)
        right, right_hash = self.build(key_ints, refs, middle, high, depth + 1)
        return self.new_node(left, left_hash, right, right_hash)


def _split(key_ints: list[int], low: int, high: int, depth: int) -> int:
    """First position in ``key_ints[low:high]`` whose bit ``depth`` is 1.

    The keys in the range share their first ``depth`` bits and are sorted, so those with bit
    ``depth`` clear come first; the threshold is the shared prefix followed by a 1 bit.
    """
    shift = KEY_BITS - 1 - depth
    threshold = ((key_ints[low] >> shift) | 1) << shift
    return bisect_left(key_ints, threshold, low, high)


class _Batch:
    """One sorted batch of changes being applied to an arena, in one walk from the root."""

    __slots__ = ("arena", "key_ints", "leaves", "size_delta")

    def __init__(self, arena: _Arena, key_ints: list[int], leaves: list[bytes | None]) -> None:
        self.arena = arena
        self.key_ints = key_ints
        self.leaves = leaves  # key_hash || value_hash, or None to delete
        self.size_delta = 0  # entries added minus entries removed

    def apply(self, ref: int, low: int, high: int, depth: int) -> int:
        """Subtree ``ref`` (at ``depth``) with the changes ``[low, high)`` applied."""
        if high - low == 1:
            return self._apply_one(ref, low, depth)
        if ref <= 0:
            return self._merge(ref, low, high, depth)
        # The hot loop of a block: _split and _Arena.hash_of are inlined here.
        key_ints = self.key_ints
        shift = KEY_BITS - 1 - depth
        middle = bisect_left(key_ints, ((key_ints[low] >> shift) | 1) << shift, low, high)
        arena = self.arena
        children = arena.children
        position = ref << 1
        left = children[position]
        right = children[position + 1]
        if low < middle:
            left = self.apply(left, low, middle, depth + 1)
        if middle < high:
            right = self.apply(right, middle, high, depth + 1)
        if (left == 0 and right <= 0) or (right == 0 and left < 0):
            # At most one leaf is left under this node: the leaf (or nothing) replaces it.
            arena.free_nodes.append(ref)
            return left or right
        children[position] = left
        children[position + 1] = right
        hashes = arena.hashes
        sha256 = hashlib.sha256
        if left > 0:
            left_hash: bytes | bytearray = hashes[left << 5 : (left << 5) + 32]
        elif left < 0:
            left_hash = sha256(_LEAF_PREFIX + arena.leaves[-left << 6 : (-left << 6) + 64]).digest()
        else:
            left_hash = EMPTY_HASH
        if right > 0:
            right_hash: bytes | bytearray = hashes[right << 5 : (right << 5) + 32]
        elif right < 0:
            right_hash = sha256(
                _LEAF_PREFIX + arena.leaves[-right << 6 : (-right << 6) + 64]
            ).digest()
        else:
            right_hash = EMPTY_HASH
        # Always rehash, even if no child reference changed: a leaf below may have changed
        # its value in place.
        hashes[ref << 5 : (ref << 5) + 32] = sha256(_NODE_PREFIX + left_hash + right_hash).digest()
        return ref

    def _apply_one(self, ref: int, position: int, depth: int) -> int:
        """Subtree ``ref`` with the single change ``position``: a loop down and back up.

        Below the top levels that a block's changes share, most nodes lie on the path of one
        change only; walking that path in a loop (no recursion, no bisection, the child's
        hash carried up instead of read back) is the main saving of a block update.
        """
        arena = self.arena
        children = arena.children
        hashes = arena.hashes
        key_int = self.key_ints[position]
        path: list[int] = []
        shift = KEY_BITS - 1 - depth
        while ref > 0:
            ref_position = (ref << 1) | ((key_int >> shift) & 1)
            path.append(ref_position)
            ref = children[ref_position]
            shift -= 1
        ref, child_hash = self._merge_one(ref, position, KEY_BITS - 1 - shift)
        sha256 = hashlib.sha256
        for ref_position in reversed(path):
            sibling = children[ref_position ^ 1]
            parent = ref_position >> 1
            if (ref == 0 and sibling <= 0) or (sibling == 0 and ref < 0):
                # At most one leaf is left under the parent: it takes the parent's place.
                arena.free_nodes.append(parent)
                if ref == 0:
                    ref = sibling
                    child_hash = arena.hash_of(sibling)
                continue
            children[ref_position] = ref
            if sibling > 0:
                sibling_hash: bytes | bytearray = hashes[sibling << 5 : (sibling << 5) + 32]
            elif sibling < 0:
                sibling_hash = sha256(
                    _LEAF_PREFIX + arena.leaves[-sibling << 6 : (-sibling << 6) + 64]
                ).digest()
            else:
                sibling_hash = EMPTY_HASH
            if ref_position & 1:
                child_hash = sha256(_NODE_PREFIX + sibling_hash + child_hash).digest()
            else:
                child_hash = sha256(_NODE_PREFIX + child_hash + sibling_hash).digest()
            hashes[parent << 5 : (parent << 5) + 32] = child_hash
            ref = parent
        return ref

    def _merge_one(self, ref: int, position: int, depth: int) -> tuple[int, bytes]:
        """A leaf or empty subtree with the single change ``position``; with its hash."""
        arena = self.arena
        leaf = self.leaves[position]
        if ref == 0:
            if leaf is None:
                return 0, EMPTY_HASH
            self.size_delta += 1
            return arena.new_leaf(leaf), hashlib.sha256(_LEAF_PREFIX + leaf).digest()
        offset = -ref << 6
        resident = bytes(arena.leaves[offset : offset + 64])
        resident_hash = hashlib.sha256(_LEAF_PREFIX + resident).digest()
        resident_key = int.from_bytes(resident[:HASH_BYTES], "big")
        key_int = self.key_ints[position]
        if resident_key == key_int:
            if leaf is None:
                arena.free_leaves.append(-ref)
                self.size_delta -= 1
                return 0, EMPTY_HASH
            arena.leaves[offset : offset + 64] = leaf
            return ref, hashlib.sha256(_LEAF_PREFIX + leaf).digest()
        if leaf is None:
            return ref, resident_hash
        self.size_delta += 1
        new_ref = arena.new_leaf(leaf)
        new_hash = hashlib.sha256(_LEAF_PREFIX + leaf).digest()
        # The two leaves part at the first bit where their keys differ; above that, down
        # from ``depth``, a chain of internal nodes with one empty side leads to them.
        split_depth = KEY_BITS - (resident_key ^ key_int).bit_length()
        if (key_int >> (KEY_BITS - 1 - split_depth)) & 1:
            node_ref, node_hash = arena.new_node(ref, resident_hash, new_ref, new_hash)
        else:
            node_ref, node_hash = arena.new_node(new_ref, new_hash, ref, resident_hash)
        for chain_depth in range(split_depth - 1, depth - 1, -1):
            if (key_int >> (KEY_BITS - 1 - chain_depth)) & 1:
                node_ref, node_hash = arena.new_node(0, EMPTY_HASH, node_ref, node_hash)
            else:
                node_ref, node_hash = arena.new_node(node_ref, node_hash, 0, EMPTY_HASH)
        return node_ref, node_hash

    def _merge(self, ref: int, low: int, high: int, depth: int) -> int:
        """A leaf or an empty subtree with changes: rebuild it from the entries that remain."""
        arena = self.arena
        key_ints: list[int] = []
        refs: list[int] = []
        resident_key = -1
        if ref < 0:
            offset = -ref << 6
            resident_key = int.from_bytes(arena.leaves[offset : offset + 32], "big")
        for position in range(low, high):
            key_int = self.key_ints[position]
            leaf = self.leaves[position]
            if resident_key != -1 and resident_key < key_int:
                key_ints.append(resident_key)
                refs.append(ref)
                resident_key = -1
            if key_int == resident_key:
                resident_key = -1
                if leaf is None:
                    arena.free_leaves.append(-ref)
                    self.size_delta -= 1
                else:
                    offset = -ref << 6
                    arena.leaves[offset : offset + 64] = leaf
                    key_ints.append(key_int)
                    refs.append(ref)
            elif leaf is not None:
                key_ints.append(key_int)
                refs.append(arena.new_leaf(leaf))
                self.size_delta += 1
        if resident_key != -1:
            key_ints.append(resident_key)
            refs.append(ref)
        return arena.build(key_ints, refs, 0, len(refs), depth)[0]


class SparseMerkleTree:
    """The ledger state's hash tree: ``key_hash -> value_hash``, with an O(log N) root update.

    Not thread-safe: one writer (the ledger) at a time.
    """

    __slots__ = ("_arena", "_root", "_size")

    def __init__(self) -> None:
        self._arena = _Arena()
        self._root = 0
        self._size = 0

    @classmethod
    def from_items(cls, items: Iterable[tuple[bytes, bytes]]) -> SparseMerkleTree:
        """A tree of the given ``(key_hash, value_hash)`` pairs, built in one bottom-up pass.

        Sorting once and creating each node once is several times faster than inserting the
        entries one by one. Each key must appear once.
        """
        leaves = []
        for key_hash, value_hash in items:
            invariant(
                len(key_hash) == HASH_BYTES and len(value_hash) == HASH_BYTES,
                "state tree entries are 32-byte key and value hashes",
            )
            leaves.append(key_hash + value_hash)
        leaves.sort()
        key_ints = [int.from_bytes(leaf[:HASH_BYTES], "big") for leaf in leaves]
        for position in range(1, len(key_ints)):
            invariant(key_ints[position - 1] != key_ints[position], "duplicate state key hash")
        invariant(len(leaves) < _REF_MAX, "too many state entries for one tree")
        tree = cls()
        # The sorted leaves fill the leaf arena in order: leaf slot i + 1 is leaves[i].
        tree._arena.leaves += b"".join(leaves)
        del leaves
        refs = list(range(-1, -len(key_ints) - 1, -1))
        tree._root = tree._arena.build(key_ints, refs, 0, len(refs), 0)[0]
        tree._size = len(refs)
        return tree

    def copy(self) -> SparseMerkleTree:
        """An independent tree with the same entries (a few bulk memory copies)."""
        twin = SparseMerkleTree()
        twin._arena = self._arena.copy()
        twin._root = self._root
        twin._size = self._size
        return twin

    def __len__(self) -> int:
        return self._size

    def root(self) -> bytes:
        """The state root: 32 zero bytes for the empty state."""
        return self._arena.hash_of(self._root)

    def update(self, changes: Mapping[bytes, bytes | None]) -> bytes:
        """Apply one batch (``key_hash -> value_hash``, ``None`` deletes) and return the root.

        The batch is sorted once and applied in one walk that visits each touched node once,
        so a block's changes share the work of the nodes above them. Deleting an absent key
        is a no-op.
        """
        if not changes:
            return self.root()
        key_hashes = sorted(changes)
        leaves: list[bytes | None] = []
        for key_hash in key_hashes:
            value_hash = changes[key_hash]
            invariant(len(key_hash) == HASH_BYTES, "state key hashes are 32 bytes")
            if value_hash is None:
                leaves.append(None)
            else:
                invariant(len(value_hash) == HASH_BYTES, "state value hashes are 32 bytes")
                leaves.append(key_hash + value_hash)
        key_ints = [int.from_bytes(key_hash, "big") for key_hash in key_hashes]
        batch = _Batch(self._arena, key_ints, leaves)
        self._root = batch.apply(self._root, 0, len(leaves), 0)
        self._size += batch.size_delta
        invariant(self._size >= 0, "state tree size went negative")
        return self.root()

    def _walk(self, key_hash: bytes, siblings: list[bytes] | None) -> int:
        """The reference where ``key_hash``'s path ends (a leaf or empty), noting siblings."""
        invariant(len(key_hash) == HASH_BYTES, "state key hashes are 32 bytes")
        arena = self._arena
        children = arena.children
        key_int = int.from_bytes(key_hash, "big")
        ref = self._root
        shift = KEY_BITS - 1
        while ref > 0:
            position = (ref << 1) | ((key_int >> shift) & 1)
            if siblings is not None:
                siblings.append(arena.hash_of(children[position ^ 1]))
            ref = children[position]
            shift -= 1
        return ref

    def _leaf(self, ref: int) -> tuple[bytes, bytes]:
        offset = -ref << 6
        leaf = bytes(self._arena.leaves[offset : offset + 64])
        return leaf[:HASH_BYTES], leaf[HASH_BYTES:]

    def get(self, key_hash: bytes) -> bytes | None:
        """The value hash stored under ``key_hash``, or ``None``."""
        ref = self._walk(key_hash, None)
        if ref < 0:
            leaf_key, value_hash = self._leaf(ref)
            if leaf_key == key_hash:
                return value_hash
        return None

    def prove(self, key_hash: bytes) -> StateProof:
        """A proof of what the tree holds at ``key_hash``: its leaf, or its absence."""
        siblings: list[bytes] = []
        ref = self._walk(key_hash, siblings)
        siblings.reverse()
        leaf = StateLeaf(*self._leaf(ref)) if ref < 0 else None
        return StateProof(leaf=leaf, siblings=tuple(siblings))

    def items(self) -> Iterator[tuple[bytes, bytes]]:
        """Every ``(key_hash, value_hash)`` in key order."""
        children = self._arena.children
        stack = [self._root]
        while stack:
            ref = stack.pop()
            if ref > 0:
                stack.append(children[(ref << 1) + 1])
                stack.append(children[ref << 1])
            elif ref < 0:
                yield self._leaf(ref)
