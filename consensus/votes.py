"""The votes of one kind in one round of one height.

Votes are counted per block hash by distinct signers, as Algorithm 1 counts messages
("2f+1 PREVOTE(h, r, id(v))"). An equivocating validator's second vote for a different
hash is evidence; it also counts towards that hash when the caller allows it (the hash is
a block we know), because an honest validator that saw it may rely on it: a polka another
honest validator locked on must be visible to everyone it is relayed to. Counting an
equivocator twice is safe: two quorums of 2f+1 still share an honest validator, who never
signs both. Membership and signatures are checked by the caller.
"""

from __future__ import annotations

from consensus.messages import Vote
from consensus.types import ValidatorId


class VoteSet:
    """Votes of one (height, round, kind), counted by block hash (``None`` is nil)."""

    __slots__ = ("_by_hash", "_first")

    def __init__(self) -> None:
        self._first: dict[ValidatorId, Vote] = {}
        self._by_hash: dict[str | None, dict[ValidatorId, Vote]] = {}

    def contains(self, vote: Vote) -> bool:
        """True if this exact vote is already counted."""
        return self._by_hash.get(vote.block_hash, {}).get(vote.validator) == vote

    def add(self, vote: Vote, *, conflicting_allowed: bool) -> Vote | None:
        """Count ``vote``; return the validator's earlier, different vote if it equivocates.

        An equivocating vote counts for its hash only if ``conflicting_allowed``.
        """
        earlier = self._first.get(vote.validator)
        if earlier is None:
            self._first[vote.validator] = vote
            self._by_hash.setdefault(vote.block_hash, {})[vote.validator] = vote
            return None
        voters = self._by_hash.get(vote.block_hash, {})
        if vote.validator in voters:
            return None
        if conflicting_allowed:
            self._by_hash.setdefault(vote.block_hash, {})[vote.validator] = vote
        return earlier

    def count(self, block_hash: str | None) -> int:
        """Distinct validators that voted for ``block_hash`` (nil when ``None``)."""
        return len(self._by_hash.get(block_hash, ()))

    @property
    def total(self) -> int:
        """Distinct validators that voted for anything, nil included (2f+1 PREVOTE(h, r, *))."""
        return len(self._first)

    def hashes_with(self, votes_min: int) -> list[str]:
        """Block hashes (never nil) with at least ``votes_min`` votes."""
        return [h for h, v in self._by_hash.items() if h is not None and len(v) >= votes_min]

    def votes_for(self, block_hash: str | None) -> list[Vote]:
        return list(self._by_hash.get(block_hash, {}).values())
