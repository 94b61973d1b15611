"""The safety record: what this validator has signed, so that it never signs twice.

A validator that signs two different votes for one (height, round, step) equivocates, and
f + 1 equivocators break agreement. Crashes must not make an honest validator one, so the
core hands the runtime a :class:`SafetyRecord` to persist *before* any message it signed
may leave (``Ready.persist``), and a restarted core is given the record back. It then
refuses to sign anything that conflicts with it: an earlier (height, round, step), or the
same one with a different block hash. Re-signing the identical payload is allowed (Ed25519
is deterministic, so the signature is the same bytes).

The record also carries this height's votes signed in its last two rounds
(``signed_votes``): a restarted validator re-sends them, since validators still in those
rounds may need them to reach 2f+1 (the paper's gossip assumption; Tendermint's WAL
serves the same end). And it carries the lock (``locked_round``, ``locked_block``): the
locking rule of Algorithm 1 (line 22 and line 28) is only safe if a restart cannot forget
what the validator precommitted.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from consensus.messages import Block, Precommit, Prevote, Vote
from consensus.types import NIL_ROUND, Height, Round, Step, ValidatorId
from node.block import check_header_shape
from node.errors import EncodingError

_STEP_NAMES = {Step.PROPOSE: "propose", Step.PREVOTE: "prevote", Step.PRECOMMIT: "precommit"}


@dataclass(frozen=True, slots=True, kw_only=True)
class SafetyRecord:
    """The last (height, round, step, block hash) signed, with the lock held at that time."""

    height: Height
    round: Round
    step: Step
    block_hash: str | None
    locked_round: Round = NIL_ROUND
    locked_block: Block | None = None
    signed_votes: tuple[Vote, ...] = ()

    def __post_init__(self) -> None:
        if self.height < 1 or self.round < 0:
            raise EncodingError("safety record: height >= 1 and round >= 0 are required")
        if (self.locked_block is None) != (self.locked_round == NIL_ROUND):
            raise EncodingError("safety record: a lock has both a round and a block, or neither")
        for vote in self.signed_votes:
            if vote.height != self.height or vote.round > self.round:
                raise EncodingError("safety record: signed_votes must be of its height and rounds")

    def conflicts(self, height: Height, round_: Round, step: Step, block_hash: str | None) -> bool:
        """True if signing ``block_hash`` at (height, round, step) could equivocate."""
        new = (height, round_, step)
        last = (self.height, self.round, self.step)
        if new == last:
            return block_hash != self.block_hash
        return new < last

    def to_json(self) -> dict[str, Any]:
        """A JSON value for the runtime to store (canonical domain)."""
        locked = self.locked_block
        return {
            "height": self.height,
            "round": self.round,
            "step": _STEP_NAMES[self.step],
            "block_hash": self.block_hash,
            "locked_round": self.locked_round,
            "locked_block": None
            if locked is None
            else {"header": dict(locked.header), "transactions": list(locked.transactions)},
            "signed_votes": [
                {
                    "kind": vote.KIND,
                    "round": vote.round,
                    "block_hash": vote.block_hash,
                    "validator": vote.validator,
                    "signature": vote.signature,
                }
                for vote in self.signed_votes
            ],
        }

    @classmethod
    def from_json(cls, value: object) -> SafetyRecord:
        """Read back a stored record, checking it as anything read from disk is checked."""
        if not isinstance(value, dict) or set(value) != {
            "height",
            "round",
            "step",
            "block_hash",
            "locked_round",
            "locked_block",
            "signed_votes",
        }:
            raise EncodingError("safety record: wrong fields")
        steps = {name: step for step, name in _STEP_NAMES.items()}
        if value["step"] not in steps:
            raise EncodingError("safety record: unknown step")
        locked_value = value["locked_block"]
        locked_block = None
        if locked_value is not None:
            if not isinstance(locked_value, dict) or not isinstance(
                locked_value.get("transactions"), list
            ):
                raise EncodingError("safety record: locked_block must be {header, transactions}")
            header = check_header_shape(locked_value.get("header"))
            locked_block = Block(header=header, transactions=tuple(locked_value["transactions"]))
        for name in ("height", "round", "locked_round"):
            if not isinstance(value[name], int) or isinstance(value[name], bool):
                raise EncodingError(f"safety record: {name} must be an integer")
        block_hash = value["block_hash"]
        if block_hash is not None and not isinstance(block_hash, str):
            raise EncodingError("safety record: block_hash must be a string or null")
        votes_value = value["signed_votes"]
        if not isinstance(votes_value, list):
            raise EncodingError("safety record: signed_votes must be a list")
        return cls(
            signed_votes=tuple(_vote_from_json(value["height"], v) for v in votes_value),
            height=Height(value["height"]),
            round=Round(value["round"]),
            step=steps[value["step"]],
            block_hash=block_hash,
            locked_round=Round(value["locked_round"]),
            locked_block=locked_block,
        )


def _vote_from_json(height: int, value: object) -> Vote:
    if not isinstance(value, dict) or set(value) != {
        "kind",
        "round",
        "block_hash",
        "validator",
        "signature",
    }:
        raise EncodingError("safety record: a signed vote has the wrong fields")
    vote_type: type[Prevote] | type[Precommit]
    if value["kind"] == "prevote":
        vote_type = Prevote
    elif value["kind"] == "precommit":
        vote_type = Precommit
    else:
        raise EncodingError("safety record: a signed vote is a prevote or a precommit")
    return vote_type(
        height=Height(height),
        round=Round(value["round"]),
        block_hash=value["block_hash"],
        validator=ValidatorId(value["validator"]),
        signature=value["signature"],
    )
