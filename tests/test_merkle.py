"""RFC 6962 transaction tree: roots, audit paths and their verification (RFC 9162 2.1.3.2)."""

from __future__ import annotations

import hashlib

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from node.errors import ProofError
from node.merkle import (
    EMPTY_ROOT,
    MerkleTree,
    inclusion_proof,
    merkle_root,
    tx_leaf,
    verify_inclusion,
)


def _sha256(data: bytes) -> bytes:
    return hashlib.sha256(data).digest()


def _leaf(data: bytes) -> bytes:
    return _sha256(b"\x00" + data)


def _node(left: bytes, right: bytes) -> bytes:
    return _sha256(b"\x01" + left + right)


# --- an independent, slow reference: the RFC 6962 section 2.1 definitions, recursively ---


def _split(n: int) -> int:
    """The largest power of two smaller than ``n`` (RFC 6962 section 2.1)."""
    k = 1
    while k * 2 < n:
        k *= 2
    return k


def reference_root(leaves: list[bytes]) -> bytes:
    if not leaves:
        return _sha256(b"")
    if len(leaves) == 1:
        return _leaf(leaves[0])
    k = _split(len(leaves))
    return _node(reference_root(leaves[:k]), reference_root(leaves[k:]))


def reference_path(index: int, leaves: list[bytes]) -> list[bytes]:
    """PATH(m, D[n]) of RFC 6962 section 2.1.1."""
    if len(leaves) == 1:
        return []
    k = _split(len(leaves))
    if index < k:
        return [*reference_path(index, leaves[:k]), reference_root(leaves[k:])]
    return [*reference_path(index - k, leaves[k:]), reference_root(leaves[:k])]


def _leaves(count: int) -> list[bytes]:
    return [
        tx_leaf(f"{position:064x}", "ok" if position % 3 else "not-custodian")
        for position in range(count)
    ]


# --- roots of small trees, written out by hand from the definition ---


def test_empty_tree_root_is_hash_of_empty_string() -> None:
    expected = bytes.fromhex("e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855")
    assert merkle_root([]) == EMPTY_ROOT == expected


def test_hand_derived_roots_of_small_trees() -> None:
    d = [bytes([value]) * (value + 1) for value in range(7)]
    h = [_leaf(item) for item in d]
    assert merkle_root(d[:1]) == h[0]
    assert merkle_root(d[:2]) == _node(h[0], h[1])
    # n = 3: k = 2, the left subtree is full, the third leaf stands alone on the right.
    assert merkle_root(d[:3]) == _node(_node(h[0], h[1]), h[2])
    # n = 5: k = 4.
    four = _node(_node(h[0], h[1]), _node(h[2], h[3]))
    assert merkle_root(d[:5]) == _node(four, h[4])
    # n = 7: k = 4, then the right part of 3 splits at 2.
    assert merkle_root(d[:7]) == _node(four, _node(_node(h[4], h[5]), h[6]))


# Published test vectors of the RFC 6962 reference code (certificate-transparency,
# trillian's testonly/constants.go): leaves, the roots of the first n leaves, audit paths.
CT_LEAVES = [
    b"",
    b"\x00",
    b"\x10",
    b"\x20\x21",
    b"\x30\x31",
    b"\x40\x41\x42\x43",
    bytes(range(0x50, 0x58)),
    bytes(range(0x60, 0x70)),
]
CT_ROOTS = [
    "6e340b9cffb37a989ca544e6bb780a2c78901d3fb33738768511a30617afa01d",
    "fac54203e7cc696cf0dfcb42c92a1d9dbaf70ad9e621f4bd8d98662f00e3c125",
    "aeb6bcfe274b70a14fb067a5e5578264db0fa9b51af5e0ba159158f329e06e77",
    "d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7",
    "4e3bbb1f7b478dcfe71fb631631519a3bca12c9aefca1612bfce4c13a86264d4",
    "76e67dadbcdf1e10e1b74ddc608abd2f98dfb16fbce75277b5232a127f2087ef",
    "ddb89be403809e325750d3d263cd78929c2942b7942a34b77e122c9594a74c8c",
    "5dc9da79a70659a9ad559cb701ded9a2ab9d823aad2f4960cfe370eff4604328",
]
CT_PATHS: list[tuple[int, int, list[str]]] = [
    (0, 1, []),
    (
        0,
        8,
        [
            "96a296d224f285c67bee93c30f8a309157f0daa35dc5b87e410b78630a09cfc7",
            "5f083f0a1a33ca076a95279832580db3e0ef4584bdff1f54c8a360f50de3031e",
            "6b47aaf29ee3c2af9af889bc1fb9254dabd31177f16232dd6aab035ca39bf6e4",
        ],
    ),
    (
        5,
        8,
        [
            "bc1a0643b12e4d2d7c77918f44e0f4f79a838b6cf9ec5b5c283e1f4d88599e6b",
            "ca854ea128ed050b41b35ffc1b87b8eb2bde461e9e3b5596ece6b9d5975a0ae0",
            "d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7",
        ],
    ),
    (2, 3, ["fac54203e7cc696cf0dfcb42c92a1d9dbaf70ad9e621f4bd8d98662f00e3c125"]),
    (
        1,
        5,
        [
            "6e340b9cffb37a989ca544e6bb780a2c78901d3fb33738768511a30617afa01d",
            "5f083f0a1a33ca076a95279832580db3e0ef4584bdff1f54c8a360f50de3031e",
            "bc1a0643b12e4d2d7c77918f44e0f4f79a838b6cf9ec5b5c283e1f4d88599e6b",
        ],
    ),
]


@pytest.mark.parametrize("count", range(1, 9))
def test_published_roots(count: int) -> None:
    assert merkle_root(CT_LEAVES[:count]).hex() == CT_ROOTS[count - 1]
    assert reference_root(CT_LEAVES[:count]).hex() == CT_ROOTS[count - 1]


@pytest.mark.parametrize(("index", "size", "path"), CT_PATHS)
def test_published_audit_paths(index: int, size: int, path: list[str]) -> None:
    leaves = CT_LEAVES[:size]
    assert [item.hex() for item in inclusion_proof(leaves, index)] == path
    root = bytes.fromhex(CT_ROOTS[size - 1])
    verify_inclusion(root, leaves[index], index, size, [bytes.fromhex(item) for item in path])


def test_tx_leaf_is_canonical_json_of_id_and_code() -> None:
    assert tx_leaf("ab", "ok") == b'{"code":"ok","tx_id":"ab"}'


# --- agreement with the reference, and every proof verifying ---


@pytest.mark.parametrize("count", [*range(0, 34), 63, 64, 65, 100, 257])
def test_root_and_paths_match_reference(count: int) -> None:
    leaves = _leaves(count)
    tree = MerkleTree(leaves)
    assert len(tree) == count
    assert tree.root() == reference_root(leaves) == merkle_root(leaves)
    for index in range(count):
        path = tree.inclusion_proof(index)
        assert path == reference_path(index, leaves)
        verify_inclusion(tree.root(), leaves[index], index, count, path)


@settings(max_examples=60, deadline=None)
@given(st.lists(st.binary(max_size=40), min_size=1, max_size=80), st.data())
def test_any_tree_proofs_verify(leaves: list[bytes], data: st.DataObject) -> None:
    index = data.draw(st.integers(min_value=0, max_value=len(leaves) - 1))
    root = merkle_root(leaves)
    assert root == reference_root(leaves)
    verify_inclusion(root, leaves[index], index, len(leaves), inclusion_proof(leaves, index))


def test_proof_index_outside_tree_is_refused() -> None:
    tree = MerkleTree(_leaves(3))
    with pytest.raises(IndexError):
        tree.inclusion_proof(3)
    with pytest.raises(IndexError):
        tree.inclusion_proof(-1)
    with pytest.raises(IndexError):
        MerkleTree([]).inclusion_proof(0)


# --- every tampering fails ---


def _flip(data: bytes, position: int) -> bytes:
    return data[:position] + bytes([data[position] ^ 0x01]) + data[position + 1 :]


@pytest.mark.parametrize("count", [1, 2, 3, 5, 7, 8, 13])
def test_flipping_any_byte_fails(count: int) -> None:
    leaves = _leaves(count)
    tree = MerkleTree(leaves)
    root = tree.root()
    for index, leaf in enumerate(leaves):
        path = tree.inclusion_proof(index)
        for position in range(len(leaf)):
            with pytest.raises(ProofError, match="does not match"):
                verify_inclusion(root, _flip(leaf, position), index, count, path)
        for position in range(len(root)):
            with pytest.raises(ProofError, match="does not match"):
                verify_inclusion(_flip(root, position), leaf, index, count, path)
        for step, sibling in enumerate(path):
            for position in range(len(sibling)):
                bad = [*path[:step], _flip(sibling, position), *path[step + 1 :]]
                with pytest.raises(ProofError, match="does not match"):
                    verify_inclusion(root, leaf, index, count, bad)


def _path_shape(index: int, size: int) -> list[bool]:
    """Whether each sibling of PATH(index, D[size]) is on the right, leaf side first."""
    if size == 1:
        return []
    k = _split(size)
    if index < k:
        return [*_path_shape(index, k), True]
    return [*_path_shape(index - k, size - k), False]


@pytest.mark.parametrize("count", [2, 3, 5, 7, 8, 13, 100])
def test_wrong_index_or_tree_size_fails(count: int) -> None:
    leaves = _leaves(count)
    tree = MerkleTree(leaves)
    root = tree.root()
    for index, leaf in enumerate(leaves):
        path = tree.inclusion_proof(index)
        for other in range(count):
            if other != index:
                with pytest.raises(ProofError):
                    verify_inclusion(root, leaf, other, count, path)
        for size in range(1, count + 9):
            if size == count:
                continue
            if index < size and _path_shape(index, size) == _path_shape(index, count):
                # An audit path does not bind the tree size when both sizes give the leaf
                # the same path shape (leaf 0 of 3 and of 4): the size must come from a
                # trusted place, the header's tx_count. Pin that property down here.
                verify_inclusion(root, leaf, index, size, path)
            else:
                with pytest.raises(ProofError):
                    verify_inclusion(root, leaf, index, size, path)


def test_specific_messages() -> None:
    leaves = _leaves(7)
    tree = MerkleTree(leaves)
    root = tree.root()
    path = tree.inclusion_proof(2)
    with pytest.raises(ProofError, match="outside a tree of 7"):
        verify_inclusion(root, leaves[2], 7, 7, path)
    with pytest.raises(ProofError, match="outside a tree of 7"):
        verify_inclusion(root, leaves[2], -1, 7, path)
    with pytest.raises(ProofError, match="tree size must be positive"):
        verify_inclusion(root, leaves[2], 0, 0, [])
    with pytest.raises(ProofError, match="too short"):
        verify_inclusion(root, leaves[2], 2, 7, path[:-1])
    with pytest.raises(ProofError, match="too long"):
        verify_inclusion(root, leaves[2], 2, 7, [*path, path[0]])
    with pytest.raises(ProofError, match="is 31 bytes"):
        verify_inclusion(root, leaves[2], 2, 7, [path[0][:31], *path[1:]])
    with pytest.raises(ProofError, match="root must be 32 bytes"):
        verify_inclusion(root[:31], leaves[2], 2, 7, path)
    with pytest.raises(ProofError, match="exceeds 64"):
        verify_inclusion(root, leaves[2], 2, 7, [path[0]] * 65)


def test_single_leaf_tree_has_empty_path() -> None:
    leaves = _leaves(1)
    assert inclusion_proof(leaves, 0) == []
    verify_inclusion(merkle_root(leaves), leaves[0], 0, 1, [])
    with pytest.raises(ProofError, match="too long"):
        verify_inclusion(merkle_root(leaves), leaves[0], 0, 1, [merkle_root(leaves)])
