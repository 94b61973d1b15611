"""The seam between the gateway and the node it runs in.

The gateway never reaches into consensus: it reads committed data through the ledger and
its store, and hands writes to the node through :class:`NodeServices`. The node runtime
(``node/runtime.py``) implements it over the mempool, peer gossip and consensus;
:class:`node.local.LocalNode` is the in-process twin for gateway unit tests: a real ledger
on a real store that commits every submitted transaction in a block of its own.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Protocol

from node.crypto import KeyPair
from node.errors import AdmissionError
from node.genesis import Genesis
from node.ledger import Ledger
from node.storage import CommittedTx


@dataclass(frozen=True, slots=True, kw_only=True)
class ValidatorStatus:
    id: str
    address: str
    connected: bool
    """Whether this node has an authenticated connection to it (always true for itself)."""
    height: int | None
    """The last height this node heard it at, if known."""


@dataclass(frozen=True, slots=True, kw_only=True)
class NodeStatus:
    chain_id: str
    node_id: str
    height: int
    last_block_hash: str
    last_block_time_ms: int
    mempool_txs: int
    mempool_bytes: int
    validators: tuple[ValidatorStatus, ...]


class NodeServices(Protocol):
    """What a node offers its gateway."""

    @property
    def genesis(self) -> Genesis: ...

    @property
    def ledger(self) -> Ledger:
        """Committed state and chain (read only for the gateway)."""
        ...

    async def submit(self, envelope: dict[str, Any]) -> str:
        """Admit ``envelope`` into the mempool and gossip it; return its ``tx_id``.

        Raises :class:`node.errors.AdmissionError` with the rule's code if refused.
        """
        ...

    async def submit_many(self, envelopes: list[Any]) -> list[str | AdmissionError]:
        """:meth:`submit` for many envelopes at once: each one's ``tx_id`` or its refusal,
        in order (a node may check the batch's signatures together)."""
        ...

    async def wait_committed(self, tx_id: str, timeout_s: float) -> CommittedTx | None:
        """The committed transaction once final, or ``None`` if not within ``timeout_s``."""
        ...

    def member_key(self, member_id: str) -> KeyPair | None:
        """The member's signing key if this node holds it (custodial signing), else ``None``."""
        ...

    def status(self) -> NodeStatus: ...

    def metrics_exposition(self) -> bytes:
        """The node's metrics in the Prometheus text format."""
        ...
