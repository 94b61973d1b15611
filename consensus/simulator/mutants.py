"""Deliberately broken variants of the core: the checkers must catch every one.

Each overrides one seam of :class:`consensus.core.Consensus` that states one rule of the
paper. ``forget-record`` needs no subclass: the simulator restarts validators without
their safety record (see ``SimNode.start``).
"""

from __future__ import annotations

from consensus.core import Consensus
from consensus.messages import Block, Proposal
from consensus.types import Round


class QuorumTwoF(Consensus):
    """Counts 2f votes as a quorum instead of 2f + 1."""

    def _votes_needed(self) -> int:
        return 2 * self._faulty_max


class NoLockCheck(Consensus):
    """Prevotes any valid proposal, ignoring its lock (lines 22 and 28 without the lock)."""

    def _lock_permits(self, block: Block, pol_round: Round) -> bool:
        return True


class AnyProposer(Consensus):
    """Accepts a proposal from any validator, not only the round's proposer."""

    def _from_proposer(self, proposal: Proposal) -> bool:
        return True


MUTANTS: dict[str, type[Consensus]] = {
    "quorum-2f": QuorumTwoF,
    "no-lock": NoLockCheck,
    "forget-record": Consensus,
    "any-proposer": AnyProposer,
}
