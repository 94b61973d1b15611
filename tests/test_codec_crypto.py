"""Canonical JSON, SHA-256 and domain-separated Ed25519 signatures."""

from __future__ import annotations

import json
import tracemalloc
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from node import codec
from node.codec import (
    INT_ABS_MAX,
    _explain,
    _in_domain,
    canonical,
    canonical_trusted,
    check_canonical_value,
    hash_canonical,
    parse_json,
)
from node.crypto import KeyPair, public_key_problem, signing_bytes, verify
from node.errors import EncodingError

json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-INT_ABS_MAX, INT_ABS_MAX)
    | st.text(alphabet=st.characters(blacklist_categories=("Cs",))),
    lambda children: (
        st.lists(children, max_size=4)
        | st.dictionaries(
            st.text(alphabet=st.characters(blacklist_categories=("Cs",))), children, max_size=4
        )
    ),
    max_leaves=20,
)


def test_known_vector() -> None:
    value = {"b": [1, True, None], "a": "é\n", "c": {"z": -5, "y": ""}}
    assert canonical(value) == '{"a":"é\\n","b":[1,true,null],"c":{"y":"","z":-5}}'.encode()
    assert hash_canonical({}) == "44136fa355b3678a1146ad16f7e8649e94fb4fc21fe77e8310c060f61caaff8a"


@given(json_values)
def test_round_trip_and_stability(value: Any) -> None:
    encoded = canonical(value)
    assert parse_json(encoded, what="t") == value
    assert canonical(json.loads(encoded)) == encoded
    assert canonical(parse_json(encoded, what="t")) == encoded


REFERENCE_ENCODER = json.JSONEncoder(
    ensure_ascii=False, sort_keys=True, separators=(",", ":"), allow_nan=False
)
"""The canonical form as the standard library writes it: what the fast encoder must match."""

control_heavy_text = st.text(
    alphabet=st.characters(blacklist_categories=("Cs",))
    | st.sampled_from('\x00\x1f\x7f\b\t\n\f\r"\\/\u2028\u2029\ufeff\U0001f600é'),
)
exotic_values = st.recursive(
    st.none() | st.booleans() | st.integers(-INT_ABS_MAX, INT_ABS_MAX) | control_heavy_text,
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(control_heavy_text, children, max_size=4)
    ),
    max_leaves=20,
)


@given(exotic_values)
def test_canonical_bytes_equal_the_standard_library_encoding(value: Any) -> None:
    assert canonical(value) == REFERENCE_ENCODER.encode(value).encode("utf-8")


@given(exotic_values, st.sampled_from([" ", "\n", "\t"]))
def test_fast_and_checked_parsing_agree(value: Any, space: str) -> None:
    """Canonical bytes (the fast path) and any other spelling of the same value (the
    checked path) parse to the same value."""
    encoded = canonical(value)
    assert same_json(parse_json(encoded, what="t"), value)
    assert canonical(parse_json(encoded, what="t")) == encoded
    spelled = json.dumps(value, ensure_ascii=True, indent=1, separators=(",", ":" + space))
    assert same_json(parse_json(spelled.encode(), what="t"), value)
    assert same_json(parse_json(spelled, what="t"), value)


def same_json(left: Any, right: Any) -> bool:
    """Equal as JSON documents: ``==`` with exact types (``True`` is not ``1``)."""
    if type(left) is not type(right):
        return False
    if isinstance(left, dict):
        return left.keys() == right.keys() and all(same_json(left[k], right[k]) for k in left)
    if isinstance(left, list):
        return len(left) == len(right) and all(map(same_json, left, right))
    return bool(left == right)


@pytest.mark.parametrize(
    "data",
    [
        b'{"a":1,"a":1}',  # a duplicate the fast parser would silently merge
        b'{"a":1,"a":2}',
        b'{"a":1.0}',  # canonical-looking bytes holding a float
        b'{"a":9007199254740992}',
        b'{"a":18446744073709551616}',
        b'"\\ud800"',  # a lone surrogate, escaped
        b"[" * 300 + b"]" * 300,  # orjson reads this deep but cannot write it back
        b"[" * 2000 + b"]" * 2000,
    ],
)
def test_fast_path_refuses_what_the_checked_path_refuses(data: bytes) -> None:
    with pytest.raises(EncodingError):
        parse_json(data, what="frame")


def test_encodings_hold_no_more_memory_than_their_length() -> None:
    # Bodies stay in the mempool and state values until their block is stored: an encoding
    # must not keep the buffer orjson wrote it into (4 KiB for a 400-byte one since 3.12).
    value = {"payload": {"asset_id": "a" * 64, "note": "n" * 250}, "sender": "acme"}
    size = len(canonical(value))
    was_tracing = tracemalloc.is_tracing()
    if not was_tracing:
        tracemalloc.start()
    try:
        kept = [canonical(value) for _ in range(500)]
        kept += [canonical_trusted(value) for _ in range(500)]
        # Only what node/codec.py allocated, so other threads of the test session don't count.
        snapshot = tracemalloc.take_snapshot().filter_traces(
            [tracemalloc.Filter(True, codec.__file__)]
        )
    finally:
        if not was_tracing:
            tracemalloc.stop()
    held = sum(stat.size for stat in snapshot.statistics("filename"))
    assert all(len(data) == size for data in kept)
    # A bytes object costs its length plus a 33-byte header.
    assert held < len(kept) * (size + 33 + 32), f"{held / len(kept):.0f} bytes per encoding"


@given(st.dictionaries(st.text(max_size=5), st.integers(0, 9), max_size=6))
def test_key_order_does_not_change_bytes(value: dict[str, int]) -> None:
    reversed_value = dict(reversed(list(value.items())))
    assert canonical(reversed_value) == canonical(value)


def nested(depth: int) -> Any:
    value: Any = 1
    for _ in range(depth):
        value = [value]
    return value


@pytest.mark.parametrize(
    ("value", "fragment"),
    [
        (1.5, "floats are not allowed"),
        ({"a": [2**53]}, "$.a[0]: integer"),
        ({1: "x"}, "not a string"),
        ("\ud800", "lone surrogate"),
        (b"raw", "bytes is not a JSON value"),
        (nested(40), "nested deeper"),
    ],
)
def test_values_outside_the_domain_are_refused(value: Any, fragment: str) -> None:
    with pytest.raises(EncodingError) as caught:
        canonical(value)
    assert fragment in str(caught.value)


class Text(str):
    pass


_leaves = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-(2**60), 2**60),
    st.floats(allow_nan=False),
    st.text(max_size=4),
    st.sampled_from(["\ud800", "a\udfff", Text("sub"), b"raw"]),
)
_values = st.recursive(
    _leaves,
    lambda children: st.one_of(
        st.lists(children, max_size=3),
        st.dictionaries(st.one_of(st.text(max_size=3), st.integers(0, 3)), children, max_size=3),
    ),
    max_leaves=12,
)


@given(_values, st.integers(0, 40))
def test_fast_domain_check_agrees_with_the_explaining_walk(value: Any, depth: int) -> None:
    """The hot-path check never accepts what the walk that names problems refuses, and
    ``check_canonical_value`` (fast path, then the walk) decides as the walk does."""
    wrapped = value
    for _ in range(depth):
        wrapped = [wrapped]
    try:
        _explain(wrapped, "$", 0)
    except EncodingError:
        explained_ok = False
    else:
        explained_ok = True
    if _in_domain(wrapped, 0):
        assert explained_ok  # the fast path never accepts what the walk refuses
    if explained_ok:
        check_canonical_value(wrapped)  # subclasses: refused fast, accepted by the walk
    else:
        with pytest.raises(EncodingError):
            check_canonical_value(wrapped)


def test_duplicate_keys_are_found_at_any_depth() -> None:
    with pytest.raises(EncodingError, match="duplicate key 'b'"):
        parse_json('{"a":[{"c":1},{"b":1,"d":2,"b":3}]}', what="t")
    assert parse_json('{"a":[{"b":1,"d":2}]}', what="t") == {"a": [{"b": 1, "d": 2}]}


@pytest.mark.parametrize(
    ("text", "fragment"),
    [
        ('{"a":1.0}', "not an integer"),
        ('{"a":1,"a":2}', "duplicate key"),
        ('{"a":NaN}', "not valid JSON"),
        ('{"a":9007199254740992}', "outside"),
        ("{", "not valid JSON"),
    ],
)
def test_untrusted_json_is_checked(text: str, fragment: str) -> None:
    with pytest.raises(EncodingError) as caught:
        parse_json(text, what="request")
    assert fragment in str(caught.value) and "request" in str(caught.value)


def test_signatures_are_domain_separated() -> None:
    key = KeyPair.from_seed_hex("11" * 32)
    message = {"chain_id": "c", "height": 1, "round": 0, "block_hash": "ab" * 32}
    signature = key.sign("prevote", message)
    assert verify("prevote", message, key.public_key, signature)
    assert not verify("precommit", message, key.public_key, signature)
    assert not verify("prevote", {**message, "round": 1}, key.public_key, signature)
    assert signing_bytes("tx", {}) == b"coopledger:tx:v1:{}"


def test_strict_verification_rejects_malleated_and_small_order() -> None:
    key = KeyPair.from_seed_hex("22" * 32)
    signature = bytes.fromhex(key.sign("tx", {"a": 1}))
    # S + L (the group order) is the classic malleation; strict verification refuses it.
    order = 2**252 + 27742317777372353535851937790883648493
    s = int.from_bytes(signature[32:], "little") + order
    malleated = signature[:32] + s.to_bytes(32, "little")
    assert not verify("tx", {"a": 1}, key.public_key, malleated.hex())
    identity_point = "01" + "00" * 31  # small order: signs everything with a trivial signature
    assert public_key_problem(identity_point) is not None
    assert not verify("tx", {"a": 1}, identity_point, ("01" + "00" * 31) + "00" * 32)
    assert public_key_problem("AB" * 32) is not None
    assert public_key_problem(key.public_key) is None
