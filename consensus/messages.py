"""Consensus messages: a proposed block, the proposal that carries it, and the two votes.

Every message is a frozen value that validates its own shape on construction, so a value
of one of these types is always well formed; whether it is *authentic* (signed by a genesis
validator) is checked separately by :class:`SignatureVerifier` before the message counts.

Signed payloads (DESIGN.md, "Encoding, hashing, signing"), each under its domain tag:

* ``proposal``:  ``{"chain_id", "height", "round", "pol_round", "block_hash"}``
* ``prevote``:   ``{"chain_id", "height", "round", "block_hash"}`` (``None`` for nil)
* ``precommit``: exactly :func:`node.block.precommit_message`, so the precommits of a round
  assemble into a :class:`node.block.Commit` that :func:`node.block.verify_commit` accepts.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, ClassVar, Literal, Protocol

from consensus.types import NIL_ROUND, Height, Round, ValidatorId
from node.block import Header, block_hash, check_header_shape, precommit_message
from node.codec import canonical_trusted
from node.crypto import SignatureKind, domain_tag, verify_raw
from node.errors import EncodingError

_HASH_HEX = re.compile(r"[0-9a-f]{64}")
_SIGNATURE_HEX = re.compile(r"[0-9a-f]{128}")
# node.codec.is_hex, compiled: these checks run on every message of the hot path.


def _check_natural(name: str, value: object, low: int) -> None:
    if not isinstance(value, int) or isinstance(value, bool) or value < low:
        raise EncodingError(f"{name} must be an integer >= {low}, not {value!r}")


def _check_hash(name: str, value: object, *, nil_allowed: bool) -> None:
    if value is None and nil_allowed:
        return
    if not isinstance(value, str) or not _HASH_HEX.fullmatch(value):
        raise EncodingError(f"{name} must be 32 bytes of lowercase hex")


def _check_signature(value: object) -> None:
    if not isinstance(value, str) or not _SIGNATURE_HEX.fullmatch(value):
        raise EncodingError("signature must be 64 bytes of lowercase hex")


def _check_validator(value: object) -> None:
    if not isinstance(value, str) or not value:
        raise EncodingError("validator must be a non-empty string")


@dataclass(frozen=True, slots=True, kw_only=True)
class Block:
    """A proposed block as the core sees it: a header it hashes and a body it never reads.

    ``transactions`` is opaque to the core (JSON values: transaction envelopes in the
    ledger, short strings in the simulator's toy application); only the application looks
    inside, when it builds, validates or executes the block.
    """

    header: Header
    transactions: tuple[Any, ...]
    hash: str = field(init=False)

    def __post_init__(self) -> None:
        check_header_shape(self.header)
        if not isinstance(self.transactions, tuple):
            raise EncodingError("transactions must be a tuple")
        object.__setattr__(self, "hash", block_hash(self.header))

    @property
    def height(self) -> Height:
        return Height(self.header["height"])


def vote_payload(chain_id: str, height: int, round_: int, hash_: str | None) -> dict[str, Any]:
    """What a prevote or precommit for ``hash_`` (``None``: nil) signs."""
    if hash_ is None:
        return {"chain_id": chain_id, "height": height, "round": round_, "block_hash": None}
    return precommit_message(chain_id, height, round_, hash_)


def proposal_payload(
    chain_id: str, height: int, round_: int, pol_round: int, hash_: str
) -> dict[str, Any]:
    """What a proposal signs."""
    return {
        "chain_id": chain_id,
        "height": height,
        "round": round_,
        "pol_round": pol_round,
        "block_hash": hash_,
    }


@dataclass(frozen=True, slots=True, kw_only=True)
class Proposal:
    """``PROPOSAL(height, round, block, pol_round)`` of Algorithm 1, signed by ``proposer``.

    ``pol_round`` is the round of the proof-of-lock (2f+1 prevotes) the proposer saw for
    this block, or -1 for a fresh block.
    """

    KIND: ClassVar[SignatureKind] = "proposal"
    height: Height
    round: Round
    pol_round: Round
    block: Block
    proposer: ValidatorId
    signature: str

    def __post_init__(self) -> None:
        _check_natural("height", self.height, 1)
        _check_natural("round", self.round, 0)
        _check_natural("pol_round", self.pol_round, NIL_ROUND)
        if self.pol_round >= self.round:
            raise EncodingError("pol_round must be lower than round")
        if not isinstance(self.block, Block) or self.block.height != self.height:
            raise EncodingError("the proposed block must be at the proposal's height")
        _check_validator(self.proposer)
        _check_signature(self.signature)

    @property
    def block_hash(self) -> str:
        return self.block.hash

    @property
    def signer(self) -> ValidatorId:
        return self.proposer

    def payload(self, chain_id: str) -> dict[str, Any]:
        return proposal_payload(chain_id, self.height, self.round, self.pol_round, self.block.hash)


@dataclass(frozen=True, slots=True, kw_only=True)
class _Vote:
    height: Height
    round: Round
    block_hash: str | None
    validator: ValidatorId
    signature: str

    def __post_init__(self) -> None:
        _check_natural("height", self.height, 1)
        _check_natural("round", self.round, 0)
        _check_hash("block_hash", self.block_hash, nil_allowed=True)
        _check_validator(self.validator)
        _check_signature(self.signature)

    @property
    def signer(self) -> ValidatorId:
        return self.validator

    def payload(self, chain_id: str) -> dict[str, Any]:
        return vote_payload(chain_id, self.height, self.round, self.block_hash)


@dataclass(frozen=True, slots=True, kw_only=True)
class Prevote(_Vote):
    """``PREVOTE(height, round, id(v))`` of Algorithm 1; ``block_hash=None`` is a nil vote."""

    KIND: ClassVar[SignatureKind] = "prevote"


@dataclass(frozen=True, slots=True, kw_only=True)
class Precommit(_Vote):
    """``PRECOMMIT(height, round, id(v))`` of Algorithm 1; ``block_hash=None`` is a nil vote."""

    KIND: ClassVar[SignatureKind] = "precommit"


Vote = Prevote | Precommit
Message = Proposal | Prevote | Precommit
MessageKind = Literal["proposal", "prevote", "precommit"]


class Signer(Protocol):
    """Holds a validator's private key. :class:`node.crypto.KeyPair` is one."""

    def sign(self, kind: SignatureKind, message: Any) -> str: ...


class SignatureVerifier:
    """Checks that a message is signed by the genesis validator it names.

    Verdicts are remembered (a bounded memo keyed by the signed fields), because under
    gossip the same vote arrives several times; the simulator shares one verifier between
    its validators. The memo is a pure cache: a verdict is a function of its key.
    """

    CACHE_ENTRIES_MAX = 10_000
    """A vote is only re-received while its height is current (gossip, retransmission), so
    the memo needs to span a few heights, not the chain. It was 100,000 entries (about 450
    bytes each: the key tuple and its strings); at 1,500 tx/s a validator added about 3,200
    a minute, so it grew by about 1.4 MiB a minute for half an hour before the first clear.
    """

    def __init__(self, chain_id: str, public_keys: Mapping[str, str]) -> None:
        self.chain_id = chain_id
        self._public_keys = dict(public_keys)
        self._verdicts: dict[tuple[object, ...], bool] = {}

    def is_member(self, validator: str) -> bool:
        return validator in self._public_keys

    def check(self, message: Message) -> bool:
        """True if ``message`` is signed by the genesis validator it names."""
        public_key = self._public_keys.get(message.signer)
        if public_key is None:
            return False
        pol_round = message.pol_round if isinstance(message, Proposal) else NIL_ROUND
        key = (
            message.KIND,
            message.height,
            message.round,
            pol_round,
            message.block_hash,
            message.signer,
            message.signature,
        )
        verdict = self._verdicts.get(key)
        if verdict is None:
            # The payload is built from fields validated on construction, so the canonical
            # encoder's domain walk can be skipped (node.codec.canonical_trusted).
            data = domain_tag(message.KIND) + canonical_trusted(message.payload(self.chain_id))
            verdict = verify_raw(public_key, data, message.signature)
            if len(self._verdicts) >= self.CACHE_ENTRIES_MAX:
                self._verdicts.clear()
            self._verdicts[key] = verdict
        return verdict
