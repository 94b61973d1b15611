"""The state root's sparse Merkle tree: roots, batches, proofs and their JSON form."""

from __future__ import annotations

import hashlib
import json
import random
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from node.codec import parse_json
from node.errors import ProofError
from node.invariant import InvariantViolation
from node.smt import (
    EMPTY_HASH,
    PROOF_SIBLINGS_MAX,
    SparseMerkleTree,
    StateLeaf,
    StateProof,
    state_key_hash,
    state_leaf_hash,
    state_value_hash,
    verify_state_proof,
)

# --- an independent, slow reference: the definition applied to the whole state at once ---


def _sha256(data: bytes) -> bytes:
    return hashlib.sha256(data).digest()


def _bit_of(key: bytes, depth: int) -> int:
    return int(format(int.from_bytes(key, "big"), "0256b")[depth])


def reference_root(state: dict[bytes, bytes], depth: int = 0) -> bytes:
    """Hash of the subtree at ``depth`` holding ``state`` (all of whose keys lie under it)."""
    if not state:
        return bytes(32)
    if len(state) == 1:
        [(key, value)] = state.items()
        return _sha256(b"\x00" + key + value)
    left = {key: value for key, value in state.items() if _bit_of(key, depth) == 0}
    right = {key: value for key, value in state.items() if _bit_of(key, depth) == 1}
    return _sha256(b"\x01" + reference_root(left, depth + 1) + reference_root(right, depth + 1))


# Keys that share long prefixes exercise the chains of one-sided internal nodes; random keys
# exercise the ordinary shape.
_PREFIXES = [bytes(30), b"\xff" * 30, b"\x80" + bytes(29), b"\x7f" + b"\xff" * 29]
keys = st.one_of(
    st.binary(min_size=32, max_size=32),
    st.builds(
        lambda prefix, tail: prefix + tail,
        st.sampled_from(_PREFIXES),
        st.binary(min_size=2, max_size=2),
    ),
)
values = st.binary(min_size=32, max_size=32)
states = st.dictionaries(keys, values, max_size=40)


def _flip(data: bytes, position: int) -> bytes:
    return data[:position] + bytes([data[position] ^ 0x01]) + data[position + 1 :]


def _random_state(rng: random.Random, count: int) -> dict[bytes, bytes]:
    return {rng.randbytes(32): rng.randbytes(32) for _ in range(count)}


# --- roots ---


def test_empty_state_root_is_zero() -> None:
    tree = SparseMerkleTree()
    assert tree.root() == EMPTY_HASH == bytes(32)
    assert len(tree) == 0
    assert SparseMerkleTree.from_items([]).root() == bytes(32)


def test_single_entry_root_is_its_leaf() -> None:
    key, value = state_key_hash("asset/lot-1"), state_value_hash({"owner": "a"})
    tree = SparseMerkleTree()
    root = tree.update({key: value})
    assert root == state_leaf_hash(key, value) == _sha256(b"\x00" + key + value)


def test_two_entries_sharing_a_prefix_hang_under_a_chain() -> None:
    # Keys 0x00..00 and 0x00..01 differ only in bit 255: 255 one-sided internal nodes
    # lead down to the node that parts them.
    low, high, value = bytes(32), bytes(31) + b"\x01", b"\x07" * 32
    node = _sha256(b"\x01" + state_leaf_hash(low, value) + state_leaf_hash(high, value))
    for _ in range(255):
        node = _sha256(b"\x01" + node + bytes(32))
    tree = SparseMerkleTree()
    assert tree.update({low: value, high: value}) == node
    tree.update({high: None})
    assert tree.root() == state_leaf_hash(low, value)


def test_key_and_value_hashes() -> None:
    assert state_key_hash("asset/lot-1") == _sha256(b"asset/lot-1")
    assert state_value_hash({"b": 1, "a": "x"}) == _sha256(b'{"a":"x","b":1}')


@settings(max_examples=150, deadline=None)
@given(states)
def test_root_matches_reference(state: dict[bytes, bytes]) -> None:
    tree = SparseMerkleTree()
    assert tree.update(state) == reference_root(state)
    assert len(tree) == len(state)
    assert SparseMerkleTree.from_items(state.items()).root() == reference_root(state)


def test_root_matches_reference_for_larger_random_states() -> None:
    rng = random.Random(20261124)
    for count in (2, 3, 50, 300, 1500):
        state = _random_state(rng, count)
        assert SparseMerkleTree.from_items(state.items()).root() == reference_root(state)


@settings(max_examples=100, deadline=None)
@given(states, st.randoms(use_true_random=False), st.integers(min_value=1, max_value=8))
def test_root_independent_of_order_and_batches(
    state: dict[bytes, bytes], rng: random.Random, batch_count: int
) -> None:
    entries = list(state.items())
    rng.shuffle(entries)
    tree = SparseMerkleTree()
    for batch in range(batch_count):
        tree.update(dict(entries[batch::batch_count]))
    one_by_one = SparseMerkleTree()
    for key, value in reversed(entries):
        one_by_one.update({key: value})
    assert tree.root() == one_by_one.root() == reference_root(state)
    assert list(tree.items()) == sorted(state.items())


@settings(max_examples=100, deadline=None)
@given(states, states, st.randoms(use_true_random=False))
def test_random_change_sequences_match_reference(
    first: dict[bytes, bytes], second: dict[bytes, bytes], rng: random.Random
) -> None:
    tree = SparseMerkleTree.from_items(first.items())
    state = dict(first)
    changes: dict[bytes, bytes | None] = dict(second)
    for key in rng.sample(sorted(first), len(first) // 2):
        changes[key] = None if rng.random() < 0.6 else rng.randbytes(32)
    changes[rng.randbytes(32)] = None  # deleting an absent key is a no-op
    for key, value in changes.items():
        if value is None:
            state.pop(key, None)
        else:
            state[key] = value
    assert tree.update(changes) == reference_root(state)
    assert len(tree) == len(state)
    assert dict(tree.items()) == state
    for key, value in state.items():
        assert tree.get(key) == value


@settings(max_examples=100, deadline=None)
@given(states, states)
def test_deletes_restore_earlier_roots(base: dict[bytes, bytes], added: dict[bytes, bytes]) -> None:
    added = {key: value for key, value in added.items() if key not in base}
    tree = SparseMerkleTree.from_items(base.items())
    before = tree.root()
    tree.update(added)
    assert tree.update(dict.fromkeys(added)) == before
    assert len(tree) == len(base)
    assert tree.update(dict.fromkeys(base)) == EMPTY_HASH
    assert len(tree) == 0


def test_updating_a_value_and_back_restores_the_root() -> None:
    rng = random.Random(7)
    state = _random_state(rng, 200)
    tree = SparseMerkleTree.from_items(state.items())
    before = tree.root()
    changed = {key: rng.randbytes(32) for key in list(state)[:50]}
    assert tree.update(changed) != before
    assert tree.update({key: state[key] for key in changed}) == before


def test_copy_is_independent() -> None:
    rng = random.Random(8)
    state = _random_state(rng, 100)
    tree = SparseMerkleTree.from_items(state.items())
    twin = tree.copy()
    twin.update({rng.randbytes(32): rng.randbytes(32), next(iter(state)): None})
    assert tree.root() == reference_root(state)
    assert len(tree) == 100
    assert len(twin) == 100
    assert twin.root() != tree.root()


def test_freed_slots_are_reused() -> None:
    # Blocks that delete and insert as many keys run on reused arena slots.
    rng = random.Random(9)
    tree = SparseMerkleTree.from_items(_random_state(rng, 500).items())
    live = dict(tree.items())
    for _ in range(50):
        removed = rng.sample(sorted(live), 20)
        inserted = _random_state(rng, 20)
        tree.update({**dict.fromkeys(removed), **inserted})
        for key in removed:
            del live[key]
        live.update(inserted)
    assert tree.root() == reference_root(live)
    assert dict(tree.items()) == live


def test_bad_inputs_are_invariant_violations() -> None:
    with pytest.raises(InvariantViolation):
        SparseMerkleTree().update({b"short": bytes(32)})
    with pytest.raises(InvariantViolation):
        SparseMerkleTree().update({bytes(32): b"short"})
    with pytest.raises(InvariantViolation, match="duplicate"):
        SparseMerkleTree.from_items([(bytes(32), bytes(32)), (bytes(32), b"\x01" * 32)])


# --- proofs ---


def _check_inclusion_and_tampering(tree: SparseMerkleTree, key: bytes, value: bytes) -> None:
    root = tree.root()
    proof = tree.prove(key)
    verify_state_proof(root, key, value, proof)
    for position in range(32):
        with pytest.raises(ProofError):
            verify_state_proof(_flip(root, position), key, value, proof)
        with pytest.raises(ProofError):
            verify_state_proof(root, key, _flip(value, position), proof)
        with pytest.raises(ProofError):
            verify_state_proof(root, _flip(key, position), value, proof)
    for step, sibling in enumerate(proof.siblings):
        for position in (0, 13, 31):
            bad = (*proof.siblings[:step], _flip(sibling, position), *proof.siblings[step + 1 :])
            with pytest.raises(ProofError):
                verify_state_proof(root, key, value, StateProof(leaf=proof.leaf, siblings=bad))
    with pytest.raises(ProofError, match="the key is present"):
        verify_state_proof(root, key, None, proof)


def _check_exclusion_and_tampering(tree: SparseMerkleTree, key: bytes) -> None:
    root = tree.root()
    proof = tree.prove(key)
    verify_state_proof(root, key, None, proof)
    with pytest.raises(ProofError):
        verify_state_proof(root, key, bytes(32), proof)
    for position in range(32):
        with pytest.raises(ProofError):
            verify_state_proof(_flip(root, position), key, None, proof)
    for step, sibling in enumerate(proof.siblings):
        for position in (0, 31):
            bad = (*proof.siblings[:step], _flip(sibling, position), *proof.siblings[step + 1 :])
            with pytest.raises(ProofError):
                verify_state_proof(root, key, None, StateProof(leaf=proof.leaf, siblings=bad))
    if proof.leaf is not None:
        for field in ("key_hash", "value_hash"):
            for position in (0, 31):
                parts = {
                    "key_hash": proof.leaf.key_hash,
                    "value_hash": proof.leaf.value_hash,
                    field: _flip(getattr(proof.leaf, field), position),
                }
                bad_leaf = StateLeaf(parts["key_hash"], parts["value_hash"])
                if bad_leaf.key_hash == key:
                    continue
                with pytest.raises(ProofError):
                    verify_state_proof(
                        root, key, None, StateProof(leaf=bad_leaf, siblings=proof.siblings)
                    )


@settings(max_examples=60, deadline=None)
@given(states, keys)
def test_proofs_verify_and_tampering_fails(state: dict[bytes, bytes], absent: bytes) -> None:
    tree = SparseMerkleTree.from_items(state.items())
    for key, value in list(state.items())[:4]:
        _check_inclusion_and_tampering(tree, key, value)
    if absent not in state:
        _check_exclusion_and_tampering(tree, absent)


def test_both_kinds_of_non_inclusion() -> None:
    rng = random.Random(11)
    tree = SparseMerkleTree.from_items(_random_state(rng, 64).items())
    kinds = set()
    for _ in range(200):
        key = rng.randbytes(32)
        proof = tree.prove(key)
        kinds.add(proof.leaf is None)
        _check_exclusion_and_tampering(tree, key)
    assert kinds == {True, False}


def test_proofs_in_tiny_trees() -> None:
    key, other, value = b"\x00" * 32, b"\x80" + bytes(31), b"\x05" * 32
    empty = SparseMerkleTree()
    assert empty.prove(key) == StateProof(leaf=None, siblings=())
    verify_state_proof(empty.root(), key, None, empty.prove(key))
    with pytest.raises(ProofError, match="absent, not included"):
        verify_state_proof(empty.root(), key, value, empty.prove(key))
    single = SparseMerkleTree.from_items([(key, value)])
    _check_inclusion_and_tampering(single, key, value)
    _check_exclusion_and_tampering(single, other)


def test_specific_messages() -> None:
    rng = random.Random(12)
    state = _random_state(rng, 30)
    tree = SparseMerkleTree.from_items(state.items())
    root = tree.root()
    key, value = next(iter(state.items()))
    proof = tree.prove(key)
    with pytest.raises(ProofError, match="different value hash"):
        verify_state_proof(root, key, bytes(32), proof)
    with pytest.raises(ProofError, match="computed root does not match"):
        verify_state_proof(bytes(32), key, value, proof)
    with pytest.raises(ProofError, match="root must be 32 bytes"):
        verify_state_proof(root[:31], key, value, proof)
    with pytest.raises(ProofError, match="another key"):
        other = next(k for k in (rng.randbytes(32) for _ in range(99)) if k != key)
        verify_state_proof(root, other, value, proof)
    # A proof that shows a leaf off the key's path is refused before any hashing.
    far = bytes(a ^ 0xFF for a in key)
    with pytest.raises(ProofError, match="does not lie on the key's path"):
        verify_state_proof(root, far, None, proof)
    # An empty sibling beside the bottom cannot occur in a canonical tree.
    padded = StateProof(leaf=proof.leaf, siblings=(bytes(32), *proof.siblings))
    with pytest.raises(ProofError, match="not canonical"):
        verify_state_proof(root, key, value, padded)


def test_proof_shape_is_checked_on_construction() -> None:
    with pytest.raises(ProofError, match="exceed"):
        StateProof(leaf=None, siblings=(b"\x01" * 32,) * (PROOF_SIBLINGS_MAX + 1))
    with pytest.raises(ProofError, match="sibling 1"):
        StateProof(leaf=None, siblings=(b"\x01" * 32, b"\x01" * 31))
    with pytest.raises(ProofError, match="key_hash"):
        StateLeaf(b"\x01" * 31, b"\x01" * 32)


# --- JSON form ---


@settings(max_examples=60, deadline=None)
@given(states, keys)
def test_proof_json_round_trips(state: dict[bytes, bytes], key: bytes) -> None:
    tree = SparseMerkleTree.from_items(state.items())
    proof = tree.prove(key)
    document = proof.to_json()
    text = json.dumps(document)
    again = StateProof.from_json(parse_json(text, what="state proof"))
    assert again == proof
    verify_state_proof(tree.root(), key, state.get(key), again)


def _valid_document() -> dict[str, Any]:
    rng = random.Random(13)
    state = _random_state(rng, 20)
    tree = SparseMerkleTree.from_items(state.items())
    document = tree.prove(next(iter(state))).to_json()
    assert document["leaf"] is not None
    return document


def test_proof_json_form() -> None:
    document = _valid_document()
    assert set(document) == {"leaf", "siblings"}
    assert set(document["leaf"]) == {"key_hash", "value_hash"}
    assert all(len(item) == 64 for item in document["siblings"])


@pytest.mark.parametrize(
    "mutate",
    [
        lambda d: [d],
        lambda d: {**d, "extra": 1},
        lambda d: {"siblings": d["siblings"]},
        lambda d: {**d, "siblings": "00" * 32},
        lambda d: {**d, "siblings": [*d["siblings"], "00" * 31]},
        lambda d: {**d, "siblings": [*d["siblings"], "00" * 33]},
        lambda d: {**d, "siblings": [*d["siblings"], "zz" * 32]},
        lambda d: {**d, "siblings": [*d["siblings"], "AB" * 32]},
        lambda d: {**d, "siblings": [*d["siblings"], 7]},
        lambda d: {**d, "siblings": [*d["siblings"], None]},
        lambda d: {**d, "siblings": ["11" * 32] * (PROOF_SIBLINGS_MAX + 1)},
        lambda d: {**d, "leaf": []},
        lambda d: {**d, "leaf": "00" * 64},
        lambda d: {**d, "leaf": {"key_hash": d["leaf"]["key_hash"]}},
        lambda d: {**d, "leaf": {**d["leaf"], "more": "00"}},
        lambda d: {**d, "leaf": {**d["leaf"], "key_hash": d["leaf"]["key_hash"][:-2]}},
        lambda d: {**d, "leaf": {**d["leaf"], "value_hash": " " + d["leaf"]["value_hash"][1:]}},
        lambda d: {**d, "leaf": {**d["leaf"], "value_hash": 12}},
    ],
)
def test_bad_proof_json_is_refused(mutate: Any) -> None:
    with pytest.raises(ProofError):
        StateProof.from_json(mutate(_valid_document()))
