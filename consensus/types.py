"""Unit types of the consensus core: heights, rounds, validator ids, steps and timers.

``Height``, ``Round`` and ``ValidatorId`` are ``NewType``s because mixing a height with a
round is the classic bug of a BFT implementation (STYLE.md, "Names").
"""

from __future__ import annotations

from enum import IntEnum
from typing import NewType

Height = NewType("Height", int)
"""Position of a block in the chain; block 1 follows genesis."""

Round = NewType("Round", int)
"""Attempt number within one height, from 0; ``NIL_ROUND`` (-1) means "no round"."""

ValidatorId = NewType("ValidatorId", str)
"""A validator's id as listed in the genesis file."""

NIL_ROUND = Round(-1)


class Step(IntEnum):
    """The steps of one round, in the order the paper takes them (Algorithm 1).

    The order matters: the safety record compares ``(height, round, step)`` tuples, and the
    ``enter_<step>`` guards refuse to go backwards.
    """

    PROPOSE = 0
    PREVOTE = 1
    PRECOMMIT = 2


class TimerKind(IntEnum):
    """What a scheduled timeout is for.

    The first three are the paper's ``OnTimeoutPropose``/``Prevote``/``Precommit``. The
    retransmit timer is ours: the paper assumes gossip eventually delivers every message
    after GST; over a lossy link the core re-sends its own messages of the current round
    (and relays the round's proposal) when this fires, which gives the same guarantee.
    """

    PROPOSE = 0
    PREVOTE = 1
    PRECOMMIT = 2
    RETRANSMIT = 3
