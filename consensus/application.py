"""The application seam: what consensus needs from the ledger, and nothing more.

The core treats a block's body as opaque. Three questions go to the application:

* :meth:`Application.build_block` — the proposer's block for (height, round). The
  application picks the transactions and ``timestamp_ms`` from its own clock (the core never
  reads one), executes them, and fills ``tx_root`` and ``state_root``.
* :meth:`Application.validate_block` — would this block be a valid next block? Check the
  header (chain, height, ``prev_hash``, proposer, time) and re-execute to check the roots.
* :meth:`Application.commit_block` — the block is decided: execute it for good and store
  it with its commit, durably, before returning.

:func:`serve` answers a :class:`Ready`'s application duties in the required order (commits
first) and returns the events to step back into the driver. The simulator's toy
application implements this protocol now; ``node/ledger.py`` will in the runtime issue.
"""

from __future__ import annotations

from typing import Protocol

from consensus.driver import Ready
from consensus.events import BlockBuilt, BlockValidated, Event
from consensus.messages import Block
from consensus.types import Height, Round, ValidatorId
from node.block import Commit


class Application(Protocol):
    """The ledger as consensus sees it."""

    def build_block(self, height: Height, round_: Round, proposer: ValidatorId) -> Block:
        """A new block to propose at ``height`` (``round_`` goes in its header)."""
        ...

    def validate_block(self, block: Block) -> bool:
        """True if ``block`` is a valid next block on top of the last committed one."""
        ...

    def commit_block(self, block: Block, commit: Commit) -> None:
        """Execute and store the decided ``block`` with ``commit``; durable on return."""
        ...


def serve(application: Application, ready: Ready) -> list[Event]:
    """Do the application's part of ``ready`` (commits, then builds and validations)."""
    for decided in ready.commits:
        application.commit_block(decided.block, decided.commit)
    events: list[Event] = []
    for build in ready.builds:
        block = application.build_block(build.height, build.round, build.proposer)
        events.append(BlockBuilt(height=build.height, round=build.round, block=block))
    for validation in ready.validations:
        valid = application.validate_block(validation.block)
        events.append(
            BlockValidated(height=validation.height, block_hash=validation.block.hash, valid=valid)
        )
    return events
