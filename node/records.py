"""What the ledger hands to storage for one block, and what storage hands back.

The ledger (``node/ledger.py``) executes a block and produces one :class:`BlockRecord`;
storage (``node/storage.py``) writes all of it in one database transaction, so a crash
leaves the last full block and never half of one.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from node.block import Commit, Header

StateKey = str
"""Ledger state key: ``member/<id>``, ``asset/<id>``, ``shipment/<id>``, ``purchase/<id>``,
``proposal/<tx_id>``."""

StateValue = dict[str, Any]


@dataclass(frozen=True, slots=True, kw_only=True)
class AssetEvent:
    """One link of an asset's event chain (docs/rules.md, "Asset event chain")."""

    asset_id: str
    seq: int
    event_hash: str
    prev_hash: str
    tx_id: str
    type: str


@dataclass(frozen=True, slots=True, kw_only=True)
class TxRecord:
    """A transaction as committed: its envelope, where it sits, and its outcome."""

    tx_id: str
    envelope: dict[str, Any]
    envelope_json: str
    """``canonical(envelope)`` as text: what the store keeps, encoded once on admission."""
    sender: str
    type: str
    expires_at_ms: int
    index: int
    code: str
    events: list[dict[str, Any]]
    refs: tuple[tuple[str, str], ...]
    """Objects the transaction names, as (kind, id): ``("asset", id)``, ``("shipment", id)``,
    ``("purchase", id)``, ``("member", id)`` for its sender and every party it names.
    Indexed, so an asset's history or a member's shipments is one range scan."""


@dataclass(frozen=True, slots=True, kw_only=True)
class TxSummary:
    """A committed transaction as a block lists it: what a block page shows and what its
    transaction tree is built from (``tx_leaf(tx_id, code)``), without the envelope."""

    tx_id: str
    index: int
    sender: str
    type: str
    code: str


@dataclass(frozen=True, slots=True, kw_only=True)
class BlockRecord:
    """Everything one committed block writes."""

    header: Header
    block_hash: str
    commit: Commit
    txs: list[TxRecord]
    state_changes: dict[StateKey, str | None]
    """Canonical JSON text of the new value of every state key the block changed (the
    bytes its state-root leaf hashes); ``None`` deletes the key."""
    asset_events: list[AssetEvent] = field(default_factory=list)

    @property
    def height(self) -> int:
        return self.header["height"]
