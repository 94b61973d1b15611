"""Encoding once: frames and records spliced from admitted envelope bytes are exactly the
canonical encoding, so peers and a restarted node read them as before."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import orjson
import pytest
from hypothesis import given
from hypothesis import strategies as st

from consensus.messages import Block, Precommit, Proposal
from consensus.safety import SafetyRecord
from consensus.types import Height, Round, Step, ValidatorId
from node.codec import NESTING_DEPTH_MAX, canonical, canonical_trusted, parse_json, splice_list
from node.consortium import make_consortium
from node.errors import AdmissionError, ConfigError, EncodingError
from node.invariant import InvariantViolation
from node.ledger import ExecutedBlock, Ledger
from node.limits import TX_BODY_FRAME_DEPTH
from node.runtime import SafetyFile, encode_slot, read_slot
from node.scenario import scenario_blocks
from node.storage import MemoryStore
from node.tx import parse_envelope
from node.wire import (
    decode_message,
    decode_txs,
    encode_message,
    encode_proposal,
    encode_txs,
    parse_frame,
)


def scenario_block() -> ExecutedBlock:
    """The demo scenario's first block, executed: real signed envelopes."""
    consortium = make_consortium(chain_id="coop-wire")
    genesis = consortium.genesis
    ledger = Ledger(genesis, MemoryStore(chain_id=genesis.chain_id, genesis_hash=genesis.hash))
    blocks = scenario_blocks(consortium, genesis.genesis_time_ms)
    time_ms, envelopes = blocks[0]  # registers "Gruyère AOP wheel": non-ASCII text
    txs = [ledger.admit(envelope, time_ms) for envelope in envelopes]
    return ledger.execute(txs, timestamp_ms=time_ms, proposer="validator-0")


EXECUTED = scenario_block()
BLOCK = Block(header=EXECUTED.header, transactions=tuple(tx.envelope for tx in EXECUTED.txs))
ADMITTED = [tx.envelope_bytes for tx in EXECUTED.txs]


def test_envelope_bytes_are_the_canonical_envelope() -> None:
    assert len(ADMITTED) >= 3
    assert any(not data.isascii() for data in ADMITTED)
    for tx, data in zip(EXECUTED.txs, ADMITTED, strict=True):
        assert data == canonical(tx.envelope)
        assert parse_envelope(parse_json(data, what="envelope")).tx_id == tx.tx_id


@given(
    text=st.text(max_size=20),
    number=st.integers(-(2**53) + 1, 2**53 - 1),
    items=st.lists(
        st.dictionaries(st.text(max_size=5), st.integers(0, 9) | st.text(max_size=5), max_size=3),
        max_size=4,
    ),
)
def test_splice_list_equals_encoding_the_whole(
    text: str, number: int, items: list[dict[str, Any]]
) -> None:
    # The decoy keys and string hold the marker's text where only a key may match it.
    whole = {"a": text, "decoy": '"transactions":[]', "transactions": items, "z": number}
    shell = {**whole, "transactions": []}
    spliced = splice_list(canonical(shell), "transactions", [canonical(i) for i in items])
    assert spliced == canonical(whole)


def test_splice_list_needs_exactly_one_empty_list() -> None:
    with pytest.raises(InvariantViolation):
        splice_list(canonical({"transactions": [1]}), "transactions", [b"2"])
    with pytest.raises(InvariantViolation):
        splice_list(canonical({"a": {"xs": []}, "b": {"xs": []}}), "xs", [b"1"])


def test_splice_list_is_not_fooled_by_a_key_that_ends_like_the_marker() -> None:
    # The key a"xs encodes as "a\"xs": its tail spells "xs":[] but it is not the member.
    shell = {'a"xs': [], "xs": [], "z": '"xs":[]'}
    spliced = splice_list(canonical(shell), "xs", [b"1", b"2"])
    assert spliced == canonical({'a"xs': [], "xs": [1, 2], "z": '"xs":[]'})
    with pytest.raises(InvariantViolation):
        splice_list(canonical({'a"xs': []}), "xs", [b"1"])


def test_proposal_spliced_from_admitted_bytes_is_the_canonical_frame() -> None:
    proposal = Proposal(
        height=Height(BLOCK.height),
        round=Round(2),
        pol_round=Round(1),
        block=BLOCK,
        proposer=ValidatorId("validator-0"),
        signature="ab" * 64,
    )
    payload = encode_proposal(proposal, ADMITTED)
    assert payload == canonical(encode_message(proposal))
    assert decode_message(parse_json(payload, what="frame")) == proposal
    with pytest.raises(InvariantViolation):
        encode_proposal(proposal, ADMITTED[1:])


def test_the_deepest_admissible_body_fits_every_frame() -> None:
    """A body admitted from a client travels in gossip, proposals, the safety record and
    sync responses (the deepest): each peer must be able to parse what it is sent."""
    levels = NESTING_DEPTH_MAX - TX_BODY_FRAME_DEPTH
    consortium = make_consortium(chain_id="coop-wire")

    def with_metadata_depth(depth: int) -> dict[str, Any]:
        metadata: Any = 1
        for _ in range(depth):
            metadata = {"k": metadata}
        payload = {"asset_id": "deep", "product": "p", "quantity": 1, "unit": "kg", "origin": "CH"}
        return consortium.sign(
            "alpine-cheese", "asset.register", {**payload, "metadata": metadata}, expires_at_ms=1
        )

    # body -> payload -> metadata: the metadata's own levels are the body's minus two.
    deepest = parse_envelope(with_metadata_depth(levels - 2))
    sync_frame = canonical({"type": "sync_response", "blocks": [{"transactions": []}]})
    frame = splice_list(sync_frame, "transactions", [deepest.envelope_bytes])
    assert parse_json(frame, what="frame")["blocks"][0]["transactions"] == [deepest.envelope]
    with pytest.raises(AdmissionError, match="travels inside peer frames") as caught:
        parse_envelope(with_metadata_depth(levels - 1))
    assert caught.value.code == "malformed-transaction"


def test_gossip_frame_spliced_from_admitted_bytes() -> None:
    payload = encode_txs(ADMITTED)
    envelopes = [tx.envelope for tx in EXECUTED.txs]
    assert payload == canonical({"type": "txs", "envelopes": envelopes})
    assert decode_txs(parse_json(payload, what="frame")) == envelopes
    assert encode_txs([]) == canonical({"type": "txs", "envelopes": []})


def test_safety_record_with_a_locked_block_round_trips(tmp_path: Path) -> None:
    safety = SafetyFile(tmp_path)
    vote = Precommit(
        height=Height(BLOCK.height),
        round=Round(1),
        block_hash=BLOCK.hash,
        validator=ValidatorId("validator-0"),
        signature="cd" * 64,
    )
    record = SafetyRecord(
        height=Height(BLOCK.height),
        round=Round(1),
        step=Step.PRECOMMIT,
        block_hash=BLOCK.hash,
        locked_round=Round(1),
        locked_block=BLOCK,
        signed_votes=(vote,),
    )
    safety.save(record, ADMITTED)
    assert newest_slot(tmp_path) == (1, canonical_trusted(record.to_json()))
    assert SafetyFile(tmp_path).load() == record
    with pytest.raises(InvariantViolation):
        safety.save(record, ())
    unlocked = SafetyRecord(
        height=Height(BLOCK.height + 1), round=Round(0), step=Step.PREVOTE, block_hash=None
    )
    safety.save(unlocked)
    assert SafetyFile(tmp_path).load() == unlocked
    sequence, payload = newest_slot(tmp_path)
    assert sequence == 2 and json.loads(payload)["locked_block"] is None


def newest_slot(directory: Path) -> tuple[int, bytes]:
    slots = [read_slot((directory / name).read_bytes()) for name in SafetyFile.SLOT_NAMES]
    return max(slot for slot in slots if slot is not None)


def records(count: int) -> list[SafetyRecord]:
    return [
        SafetyRecord(height=Height(h), round=Round(0), step=Step.PREVOTE, block_hash=None)
        for h in range(1, count + 1)
    ]


def test_safety_slots_alternate_and_a_torn_write_leaves_the_record_before_it(
    tmp_path: Path,
) -> None:
    first, second, third, fourth = records(4)
    safety = SafetyFile(tmp_path)
    assert safety.load() is None
    safety.save(first)
    safety.save(second)
    slot_0, slot_1 = (tmp_path / name for name in SafetyFile.SLOT_NAMES)
    assert read_slot(slot_1.read_bytes())[0] == 1  # type: ignore[index]
    assert read_slot(slot_0.read_bytes())[0] == 2  # type: ignore[index]
    # A crash in the middle of the third write: its slot (1) is torn, slot 0 intact.
    safety.save(third)
    torn = slot_1.read_bytes()
    for cut in (5, len(torn) - 1):
        slot_1.write_bytes(torn[:cut])
        assert SafetyFile(tmp_path).load() == second
    flipped = bytearray(torn)
    flipped[-2] ^= 1
    slot_1.write_bytes(bytes(flipped))
    restarted = SafetyFile(tmp_path)
    assert restarted.load() == second
    # The restarted node writes over the torn slot, never over the newest valid record.
    restarted.save(fourth)
    assert read_slot(slot_0.read_bytes())[0] == 2  # type: ignore[index]
    assert SafetyFile(tmp_path).load() == fourth
    restarted.close()
    safety.close()


def test_a_safety_record_with_no_valid_slot_refuses_to_start(tmp_path: Path) -> None:
    safety = SafetyFile(tmp_path)
    safety.save(records(1)[0])
    safety.save(records(2)[1])
    safety.close()
    for name in SafetyFile.SLOT_NAMES:
        data = bytearray((tmp_path / name).read_bytes())
        data[-1] ^= 1
        (tmp_path / name).write_bytes(bytes(data))
    with pytest.raises(ConfigError, match="corrupt safety record"):
        SafetyFile(tmp_path).load()
    # A valid frame around a payload that is not a safety record is refused too.
    (tmp_path / SafetyFile.SLOT_NAMES[0]).write_bytes(encode_slot(3, b'{"height": 0}'))
    with pytest.raises(ConfigError, match="corrupt safety record"):
        SafetyFile(tmp_path).load()


def test_a_save_never_overwrites_the_slot_with_the_newest_record(tmp_path: Path) -> None:
    """Whatever slot the newest record is in (files moved by hand included)."""
    first, second = records(2)
    slot_0, slot_1 = (tmp_path / name for name in SafetyFile.SLOT_NAMES)
    slot_1.write_bytes(encode_slot(8, canonical_trusted(first.to_json())))
    safety = SafetyFile(tmp_path)
    assert safety.load() == first
    safety.save(second)
    assert read_slot(slot_1.read_bytes()) == (8, canonical_trusted(first.to_json()))
    assert read_slot(slot_0.read_bytes())[0] == 9  # type: ignore[index]
    assert SafetyFile(tmp_path).load() == second
    safety.close()


def test_a_safety_json_of_an_earlier_version_is_read_then_replaced(tmp_path: Path) -> None:
    first, second = records(2)
    (tmp_path / SafetyFile.LEGACY_NAME).write_bytes(canonical_trusted(first.to_json()))
    safety = SafetyFile(tmp_path)
    assert safety.load() == first
    safety.save(second)
    assert not (tmp_path / SafetyFile.LEGACY_NAME).exists()
    assert SafetyFile(tmp_path).load() == second
    safety.close()


# --- parse_frame: envelopes are checked once, by parse_envelope ----------------------------

ENVELOPE: dict[str, Any] = EXECUTED.txs[0].envelope

JSON_LEAVES = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-(2**60), 2**60),  # wide integers too
    st.floats(allow_nan=False, allow_infinity=False),
    st.text(max_size=8),
)
JSON_VALUES = st.recursive(
    JSON_LEAVES,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=4), inner),
    max_leaves=12,
)


def frame_bytes(value: Any) -> bytes:
    return orjson.dumps(value, option=orjson.OPT_SORT_KEYS)


def outcome(parse: Any, data: bytes) -> Any:
    try:
        return ("ok", parse(data))
    except EncodingError:
        return ("refused", None)


@given(JSON_VALUES, st.sampled_from(["prevote", "precommit", "sync_request", "other"]))
def test_frames_without_envelopes_are_checked_exactly_as_parse_json(value: Any, kind: str) -> None:
    for document in (value, {"type": kind, "value": value}, {"type": kind, "block": value}):
        data = frame_bytes(document)
        assert outcome(parse_frame, data) == outcome(
            lambda d: parse_json(d, what="peer frame"), data
        )


@given(JSON_VALUES)
def test_what_parse_frame_leaves_unchecked_is_refused_by_parse_envelope(value: Any) -> None:
    """A value that is out of the domain may pass the frame only inside an envelope list,
    and there parse_envelope refuses it (floats, wide integers, depth) before any use."""
    bad_envelope = {**ENVELOPE, "body": {**ENVELOPE["body"], "nonce": value}}
    frames = [
        {"type": "txs", "envelopes": [ENVELOPE, bad_envelope]},
        {"type": "proposal", "block": {"header": {}, "transactions": [bad_envelope]}},
        {"type": "sync_response", "blocks": [{"commit": {}, "transactions": [bad_envelope]}]},
    ]
    for document in frames:
        data = frame_bytes(document)
        strict = outcome(lambda d: parse_json(d, what="peer frame"), data)
        if strict[0] == "ok":
            assert outcome(parse_frame, data) == strict
            continue
        assert outcome(parse_frame, data) == ("ok", document)
        with pytest.raises(AdmissionError):
            parse_envelope(bad_envelope)


def test_parse_frame_refuses_what_lies_outside_the_envelopes() -> None:
    envelope = EXECUTED.txs[0].envelope
    refused = [
        {"type": "proposal", "round": 1.5, "block": {"header": {}, "transactions": []}},
        {"type": "proposal", "block": {"header": {"height": 2**60}, "transactions": []}},
        {"type": "sync_response", "blocks": [{"commit": {"x": 0.5}, "transactions": []}]},
        {"type": "txs", "envelopes": [envelope], "extra": [1.0]},
    ]
    for document in refused:
        with pytest.raises(EncodingError):
            parse_frame(frame_bytes(document))
    # Deeper than orjson writes (255 levels) is not canonical: the strict parser refuses it.
    nested = "[" * 300 + "]" * 300
    with pytest.raises(EncodingError):
        parse_frame(b'{"envelopes":[' + nested.encode() + b'],"type":"txs"}')
    # Not canonical (whitespace): parsed and checked whole, as before.
    spaced = frame_bytes({"type": "txs", "envelopes": [envelope]}).replace(b":", b": ", 1)
    assert parse_frame(spaced) == {"type": "txs", "envelopes": [envelope]}
    # An envelope nested deeper than a body may be: the frame passes it, admission refuses.
    metadata: Any = 1
    for _ in range(40):
        metadata = {"k": metadata}
    deep_envelope = {**envelope, "body": {**envelope["body"], "payload": {"metadata": metadata}}}
    frame = parse_frame(frame_bytes({"type": "txs", "envelopes": [deep_envelope]}))
    with pytest.raises(AdmissionError) as caught:
        parse_envelope(decode_txs(frame)[0])
    assert caught.value.code == "malformed-transaction"


@pytest.mark.parametrize("levels", range(NESTING_DEPTH_MAX - 4, NESTING_DEPTH_MAX + 1))
def test_parse_frame_counts_nesting_from_the_frame_top(levels: int) -> None:
    """At the limit and one past it, wherever the nested value sits, as parse_json does."""
    nested: Any = 1
    for _ in range(levels):
        nested = [nested]
    documents = [
        {"type": "prevote", "x": nested},
        {"type": "proposal", "block": {"header": {"x": nested}, "transactions": []}},
        {"type": "sync_response", "blocks": [{"commit": {"x": nested}, "transactions": []}]},
    ]
    for document in documents:
        data = frame_bytes(document)
        strict = outcome(lambda d: parse_json(d, what="peer frame"), data)
        assert outcome(parse_frame, data) == strict
