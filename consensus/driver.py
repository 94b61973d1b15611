"""The synchronous driver between the core and a runtime (etcd raft's ``RawNode``).

A runtime loops: feed events with :meth:`Driver.step`; when :meth:`Driver.has_ready`, take
one :class:`Ready`, carry out its duties in the order its fields' docstrings state, then
hand it back with :meth:`Driver.advance`. Events stepped between ``ready()`` and
``advance()`` are allowed; their actions go into the next ``Ready``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import assert_never

from consensus.core import Consensus
from consensus.events import (
    Action,
    Broadcast,
    BuildBlock,
    CommitBlock,
    Event,
    FetchBlocks,
    Persist,
    ScheduleTimeout,
    ValidateBlock,
)
from consensus.messages import Message
from consensus.safety import SafetyRecord
from node.invariant import invariant


@dataclass(frozen=True, slots=True, kw_only=True)
class Ready:
    """Everything the runtime must do, grouped by duty. Handle the fields in this order."""

    commits: tuple[CommitBlock, ...] = ()
    """Decided blocks, in height order. Execute and store each durably, in order, before
    anything else of this Ready: a later build or validation builds on them."""

    persist: SafetyRecord | None = None
    """The latest safety record. Write it durably *before sending any message* of this
    Ready: it is what keeps a restarted validator from signing twice."""

    messages: tuple[Message, ...] = ()
    """Messages to broadcast to every other validator, only after ``persist`` is durable.
    Any order; loss and duplication are tolerated."""

    timeouts: tuple[ScheduleTimeout, ...] = ()
    """Timers to start now, on the local clock; each comes back as ``TimeoutFired``. Stale
    ones are ignored by the core, so they never need cancelling."""

    builds: tuple[BuildBlock, ...] = ()
    """Blocks to build (after ``commits``); answer each with ``BlockBuilt``."""

    validations: tuple[ValidateBlock, ...] = ()
    """Blocks to check (after ``commits``); answer each with ``BlockValidated``."""

    fetches: tuple[FetchBlocks, ...] = ()
    """Catch-up requests: fetch committed blocks from the peer, answer with ``BlockSynced``."""

    action_count: int = 0
    """How many core actions this Ready holds (for :meth:`Driver.advance`)."""


class Driver:
    """Collects the core's actions and hands them out as one :class:`Ready` at a time."""

    def __init__(self, core: Consensus) -> None:
        self.core = core
        self._pending: list[Action] = []
        self._handed_out = 0

    def step(self, event: Event) -> None:
        """Feed one event to the core."""
        self._pending.extend(self.core.step(event))

    def has_ready(self) -> bool:
        return len(self._pending) > self._handed_out

    def ready(self) -> Ready:
        """Everything to do since the last ``advance``; call ``advance`` with it when done."""
        invariant(self._handed_out == 0, "advance() the previous Ready first")
        actions = list(self._pending)
        self._handed_out = len(actions)
        commits: list[CommitBlock] = []
        persist: SafetyRecord | None = None
        messages: list[Message] = []
        timeouts: list[ScheduleTimeout] = []
        builds: list[BuildBlock] = []
        validations: list[ValidateBlock] = []
        fetches: list[FetchBlocks] = []
        for action in actions:
            match action:
                case CommitBlock():
                    commits.append(action)
                case Persist(record=record):
                    persist = record
                case Broadcast(message=message):
                    messages.append(message)
                case ScheduleTimeout():
                    timeouts.append(action)
                case BuildBlock():
                    builds.append(action)
                case ValidateBlock():
                    validations.append(action)
                case FetchBlocks():
                    fetches.append(action)
                case _:
                    assert_never(action)
        return Ready(
            commits=tuple(commits),
            persist=persist,
            messages=tuple(messages),
            timeouts=tuple(timeouts),
            builds=tuple(builds),
            validations=tuple(validations),
            fetches=tuple(fetches),
            action_count=len(actions),
        )

    def advance(self, ready: Ready) -> None:
        """Acknowledge that every duty of ``ready`` is done."""
        invariant(ready.action_count == self._handed_out, "advance() takes the last Ready")
        del self._pending[: ready.action_count]
        self._handed_out = 0
