"""Peer messages on the wire: consensus messages, transaction gossip and block sync.

Every frame is a JSON object with a ``type``:

==================  =====================================================================
``proposal``        ``height, round, pol_round, proposer, signature, block`` where
                    ``block = {"header", "transactions": [envelope, ...]}``
``prevote``         ``height, round, block_hash (null = nil), validator, signature``
``precommit``       the same shape as ``prevote``
``txs``             ``envelopes``: transactions gossiped from the mempool (a batch)
``sync_request``    ``from_height, count``: committed blocks wanted
``sync_response``   ``blocks``: ``[{"header", "transactions", "commit"}, ...]`` in height order
==================  =====================================================================

:func:`decode` validates everything (shape, types, signatures are checked later by the core)
and raises :class:`~node.errors.EncodingError` on anything else; the runtime drops such a
frame and counts it against the peer.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from consensus.messages import Block, Message, Precommit, Prevote, Proposal
from consensus.types import Height, Round, ValidatorId
from node.block import check_header_shape
from node.codec import NOT_CANONICAL, canonical, in_domain, parse_canonical, parse_json, splice_list
from node.errors import EncodingError, ProofError
from node.invariant import invariant

SYNC_BLOCKS_PER_RESPONSE_MAX = 64
"""Blocks per sync response: bounded so a response stays far below the frame limit for the
usual block sizes; a large block is sent alone."""

GOSSIP_TXS_PER_FRAME_MAX = 512
"""Transactions per gossip frame: batching amortises framing and the event loop wake-up."""


def parse_frame(payload: bytes) -> Any:
    """A peer frame's payload parsed and checked, or :class:`EncodingError`.

    Canonical bytes (what every honest peer sends) are parsed once and domain-checked except
    for the envelopes they carry (``txs.envelopes``, a proposal's ``block.transactions``, a
    sync response's ``blocks[i].transactions``): nothing reads an envelope before
    :func:`~node.tx.parse_envelope` checks it whole, domain and nesting included (admission
    for gossip, ``Mempool.known`` byte for byte or ``parse_envelope`` for a block), so the
    frame does not walk thousands of envelopes a second time. Anything else goes through
    :func:`~node.codec.parse_json`, which checks everything and says what is wrong.
    """
    value = parse_canonical(payload)
    if value is not NOT_CANONICAL and _frame_in_domain(value):
        return value
    return parse_json(payload, what="peer frame")


def _frame_in_domain(frame: Any) -> bool:
    if type(frame) is not dict:
        return in_domain(frame)
    kind = frame.get("type")
    for key, item in frame.items():
        if kind == "txs" and key == "envelopes":
            ok = type(item) is list  # decode_txs and admission check the rest
        elif kind == "proposal" and key == "block":
            ok = _block_in_domain(item, 1)
        elif kind == "sync_response" and key == "blocks":
            ok = type(item) is list and all(_block_in_domain(block, 2) for block in item)
        else:
            ok = in_domain(item, 1)
        if not ok:
            return False
    return True


def _block_in_domain(block: Any, depth: int) -> bool:
    """A block (``{"header", "transactions", ...}``) at ``depth``, but its envelopes."""
    if type(block) is not dict:
        return in_domain(block, depth)
    for key, item in block.items():
        if key == "transactions" and type(item) is list:
            continue
        if not in_domain(item, depth + 1):
            return False
    return True


def encode_block(block: Block) -> dict[str, Any]:
    return {"header": dict(block.header), "transactions": list(block.transactions)}


def decode_block(value: object) -> Block:
    if not isinstance(value, dict) or set(value) != {"header", "transactions"}:
        raise EncodingError("block must have exactly header and transactions")
    transactions = value["transactions"]
    if not isinstance(transactions, list):
        raise EncodingError("block.transactions must be a list")
    try:
        header = check_header_shape(value["header"])
    except ProofError as error:
        raise EncodingError(str(error)) from error
    if header["tx_count"] != len(transactions):
        raise EncodingError("block.header.tx_count does not match its transactions")
    return Block(header=header, transactions=tuple(transactions))


def encode_message(message: Message) -> dict[str, Any]:
    match message:
        case Proposal():
            return {
                "type": "proposal",
                "height": message.height,
                "round": message.round,
                "pol_round": message.pol_round,
                "proposer": message.proposer,
                "signature": message.signature,
                "block": encode_block(message.block),
            }
        case Prevote() | Precommit():
            return {
                "type": "prevote" if isinstance(message, Prevote) else "precommit",
                "height": message.height,
                "round": message.round,
                "block_hash": message.block_hash,
                "validator": message.validator,
                "signature": message.signature,
            }


def encode_proposal(message: Proposal, envelopes: Sequence[bytes]) -> bytes:
    """The canonical payload of ``message`` with ``envelopes`` (already canonical, one per
    transaction of the block, in order) as its block's transactions. With ``envelopes[i]``
    equal to ``canonical(block.transactions[i])`` these are the bytes of
    ``canonical(encode_message(message))``, without encoding the envelopes again."""
    invariant(len(envelopes) == len(message.block.transactions), "one encoding per envelope")
    value = encode_message(message)
    value["block"]["transactions"] = []
    return splice_list(canonical(value), "transactions", envelopes)


def encode_txs(envelopes: Sequence[bytes]) -> bytes:
    """The canonical payload of a ``txs`` gossip frame of already encoded envelopes."""
    invariant(len(envelopes) <= GOSSIP_TXS_PER_FRAME_MAX, "a gossip frame holds at most 512")
    return splice_list(b'{"envelopes":[],"type":"txs"}', "envelopes", envelopes)


def _fields(frame: dict[str, Any], names: set[str]) -> None:
    if set(frame) != names | {"type"}:
        raise EncodingError(f"{frame.get('type')} frame must have exactly {sorted(names)}")


def _int(frame: dict[str, Any], name: str) -> int:
    value = frame[name]
    if not isinstance(value, int) or isinstance(value, bool):
        raise EncodingError(f"{name} must be an integer")
    return value


def decode_message(frame: dict[str, Any]) -> Message:
    """A consensus message from a ``proposal``/``prevote``/``precommit`` frame."""
    kind = frame.get("type")
    if kind == "proposal":
        _fields(frame, {"height", "round", "pol_round", "proposer", "signature", "block"})
        return Proposal(
            height=Height(_int(frame, "height")),
            round=Round(_int(frame, "round")),
            pol_round=Round(_int(frame, "pol_round")),
            proposer=ValidatorId(frame["proposer"]),
            signature=frame["signature"],
            block=decode_block(frame["block"]),
        )
    if kind in ("prevote", "precommit"):
        _fields(frame, {"height", "round", "block_hash", "validator", "signature"})
        vote_class = Prevote if kind == "prevote" else Precommit
        return vote_class(
            height=Height(_int(frame, "height")),
            round=Round(_int(frame, "round")),
            block_hash=frame["block_hash"],
            validator=ValidatorId(frame["validator"]),
            signature=frame["signature"],
        )
    raise EncodingError(f"not a consensus frame: {kind!r}")


def sync_request(from_height: int, count: int) -> dict[str, Any]:
    return {"type": "sync_request", "from_height": from_height, "count": count}


def decode_sync_request(frame: dict[str, Any]) -> tuple[int, int]:
    _fields(frame, {"from_height", "count"})
    from_height, count = _int(frame, "from_height"), _int(frame, "count")
    if from_height < 1 or not 1 <= count <= SYNC_BLOCKS_PER_RESPONSE_MAX:
        raise EncodingError("sync_request: from_height >= 1 and 1 <= count <= 64")
    return from_height, count


def decode_sync_response(frame: dict[str, Any]) -> list[tuple[Block, dict[str, Any]]]:
    """``(block, commit)`` pairs; the commit is checked by the caller against the genesis."""
    _fields(frame, {"blocks"})
    entries = frame["blocks"]
    if not isinstance(entries, list) or len(entries) > SYNC_BLOCKS_PER_RESPONSE_MAX:
        raise EncodingError("sync_response.blocks must be a list of at most 64 blocks")
    decoded = []
    for entry in entries:
        if not isinstance(entry, dict) or set(entry) != {"header", "transactions", "commit"}:
            raise EncodingError("sync_response block must have header, transactions, commit")
        block = decode_block({"header": entry["header"], "transactions": entry["transactions"]})
        if not isinstance(entry["commit"], dict):
            raise EncodingError("sync_response commit must be an object")
        decoded.append((block, entry["commit"]))
    return decoded


def decode_txs(frame: dict[str, Any]) -> list[Any]:
    _fields(frame, {"envelopes"})
    envelopes = frame["envelopes"]
    if not isinstance(envelopes, list) or len(envelopes) > GOSSIP_TXS_PER_FRAME_MAX:
        raise EncodingError("txs.envelopes must be a list of at most 512 envelopes")
    return envelopes
