"""What goes into the core (events) and what comes out of it (actions).

The core never performs I/O: the runtime (or the simulator) turns each action into I/O and
each outcome of I/O into an event. Every value here is frozen and checked on construction.
"""

from __future__ import annotations

from dataclasses import dataclass

from consensus.messages import Block, Message
from consensus.safety import SafetyRecord
from consensus.types import Height, Round, TimerKind, ValidatorId
from node.block import Commit
from node.errors import EncodingError

# --- events: inputs of Consensus.step ---------------------------------------------------


@dataclass(frozen=True, slots=True, kw_only=True)
class Start:
    """Begin (or resume) consensus at the core's starting height. Step it exactly once."""


@dataclass(frozen=True, slots=True, kw_only=True)
class Receive:
    """A consensus message arrived from the network (authenticity not yet checked)."""

    message: Message


@dataclass(frozen=True, slots=True, kw_only=True)
class TimeoutFired:
    """A timer scheduled by :class:`ScheduleTimeout` fired. Stale timers are ignored."""

    height: Height
    round: Round
    kind: TimerKind


@dataclass(frozen=True, slots=True, kw_only=True)
class BlockBuilt:
    """The application's answer to :class:`BuildBlock`."""

    height: Height
    round: Round
    block: Block


@dataclass(frozen=True, slots=True, kw_only=True)
class BlockValidated:
    """The application's verdict on a block of a :class:`ValidateBlock` request."""

    height: Height
    block_hash: str
    valid: bool


@dataclass(frozen=True, slots=True, kw_only=True)
class BlockSynced:
    """A committed block with its commit certificate, fetched after :class:`FetchBlocks`.

    Feed them in height order; the core checks the commit itself before it accepts one.
    """

    block: Block
    commit: Commit


Event = Start | Receive | TimeoutFired | BlockBuilt | BlockValidated | BlockSynced

# --- actions: outputs of Consensus.step ---------------------------------------------------


@dataclass(frozen=True, slots=True, kw_only=True)
class Persist:
    """Store ``record`` durably; it must be on disk before any later :class:`Broadcast`."""

    record: SafetyRecord


@dataclass(frozen=True, slots=True, kw_only=True)
class Broadcast:
    """Send ``message`` to every other validator (best effort; loss is tolerated)."""

    message: Message


@dataclass(frozen=True, slots=True, kw_only=True)
class ScheduleTimeout:
    """Step ``TimeoutFired(height, round, kind)`` after ``duration_ms`` of local time."""

    height: Height
    round: Round
    kind: TimerKind
    duration_ms: int

    def __post_init__(self) -> None:
        if self.duration_ms < 0:
            raise EncodingError("duration_ms must not be negative")


@dataclass(frozen=True, slots=True, kw_only=True)
class BuildBlock:
    """Build a block to propose at (height, round), ``proposer`` in its header.

    The application chooses the transactions and ``timestamp_ms`` (the proposer's clock: the
    core never reads one) and answers with :class:`BlockBuilt`.
    """

    height: Height
    round: Round
    proposer: ValidatorId


@dataclass(frozen=True, slots=True, kw_only=True)
class ValidateBlock:
    """Check ``block`` against the application's rules; answer with :class:`BlockValidated`."""

    height: Height
    block: Block


@dataclass(frozen=True, slots=True, kw_only=True)
class CommitBlock:
    """``block`` is decided at ``height`` with certificate ``commit``: execute and store it.

    Commits come in height order, one per height. The core has already moved on to the
    next height.
    """

    height: Height
    block: Block
    commit: Commit


@dataclass(frozen=True, slots=True, kw_only=True)
class FetchBlocks:
    """Fetch committed blocks with commits from ``peer``, from ``from_height`` on.

    Raised when a validator sees authentic messages of a later height: it fell behind.
    Answer with :class:`BlockSynced` events in height order; a lost request is repeated.
    """

    peer: ValidatorId
    from_height: Height


Action = (
    Persist | Broadcast | ScheduleTimeout | BuildBlock | ValidateBlock | CommitBlock | FetchBlocks
)
