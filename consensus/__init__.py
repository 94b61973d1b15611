"""BFT consensus for coopledger: Tendermint's Algorithm 1 as a pure state machine.

Public surface (everything else is private to the package):

* :class:`Consensus` (the state machine) with :class:`Config` and :class:`Resume`;
* :class:`Driver` and :class:`Ready` (the raft-style driver a runtime loops on);
* :class:`Application` and :func:`serve` (what consensus asks of the ledger);
* the messages, events and actions, :class:`SafetyRecord` and :class:`SignatureVerifier`.

The simulator lives in :mod:`consensus.simulator`; the CLI command in :mod:`consensus.cli`.
"""

from consensus.application import Application, serve
from consensus.core import Config, Consensus, Resume
from consensus.driver import Driver, Ready
from consensus.events import (
    Action,
    BlockBuilt,
    BlockSynced,
    BlockValidated,
    Broadcast,
    BuildBlock,
    CommitBlock,
    Event,
    FetchBlocks,
    Persist,
    Receive,
    ScheduleTimeout,
    Start,
    TimeoutFired,
    ValidateBlock,
)
from consensus.messages import (
    Block,
    Message,
    Precommit,
    Prevote,
    Proposal,
    SignatureVerifier,
    Signer,
    Vote,
)
from consensus.safety import SafetyRecord
from consensus.types import NIL_ROUND, Height, Round, Step, TimerKind, ValidatorId

__all__ = [
    "NIL_ROUND",
    "Action",
    "Application",
    "Block",
    "BlockBuilt",
    "BlockSynced",
    "BlockValidated",
    "Broadcast",
    "BuildBlock",
    "CommitBlock",
    "Config",
    "Consensus",
    "Driver",
    "Event",
    "FetchBlocks",
    "Height",
    "Message",
    "Persist",
    "Precommit",
    "Prevote",
    "Proposal",
    "Ready",
    "Receive",
    "Resume",
    "Round",
    "SafetyRecord",
    "ScheduleTimeout",
    "SignatureVerifier",
    "Signer",
    "Start",
    "Step",
    "TimeoutFired",
    "TimerKind",
    "ValidateBlock",
    "ValidatorId",
    "Vote",
    "serve",
]
