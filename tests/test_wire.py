"""Encoding once: frames and records spliced from admitted envelope bytes are exactly the
canonical encoding, so peers and a restarted node read them as before."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from consensus.messages import Block, Precommit, Proposal
from consensus.safety import SafetyRecord
from consensus.types import Height, Round, Step, ValidatorId
from node.codec import NESTING_DEPTH_MAX, canonical, canonical_trusted, parse_json, splice_list
from node.consortium import make_consortium
from node.errors import AdmissionError
from node.invariant import InvariantViolation
from node.ledger import ExecutedBlock, Ledger
from node.limits import TX_BODY_FRAME_DEPTH
from node.runtime import SafetyFile
from node.scenario import scenario_blocks
from node.storage import MemoryStore
from node.tx import parse_envelope
from node.wire import decode_message, decode_txs, encode_message, encode_proposal, encode_txs


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
    safety = SafetyFile(tmp_path / "safety.json")
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
    assert safety.path.read_bytes() == canonical_trusted(record.to_json())
    assert safety.load() == record
    with pytest.raises(InvariantViolation):
        safety.save(record, ())
    unlocked = SafetyRecord(
        height=Height(BLOCK.height + 1), round=Round(0), step=Step.PREVOTE, block_hash=None
    )
    safety.save(unlocked)
    assert safety.load() == unlocked
    assert json.loads(safety.path.read_text())["locked_block"] is None
