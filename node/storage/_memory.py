"""The in-memory block store: the twin of the SQL store for unit tests and the simulator.

It keeps the same canonical JSON text the SQL store keeps (so nothing a caller holds
aliases stored values), refuses the same blocks with the same errors, and mirrors the SQL
constraints: a ``tx_id`` is stored once, an ``(asset_id, seq)`` once. Nothing survives the
process, so there is no schema stamp to check.
"""

from __future__ import annotations

import bisect
from collections.abc import Collection, Generator, Mapping

from node.errors import StorageError
from node.merkle import MerkleTree
from node.records import AssetEvent, BlockRecord, StateKey, StateValue, TxRecord, TxSummary
from node.storage._model import (
    CommittedTx,
    StoredBlock,
    TxPosition,
    TxRow,
    TxSummaryReads,
    check_page,
    check_record,
    check_successor,
    checked_tx_tree,
    decode_block,
    decode_state,
    decode_tx,
    encode,
    repeated_tx,
    tx_row,
    tx_summary,
    unique_refs,
)


class MemoryStore(TxSummaryReads):
    """A :class:`~node.storage.BlockStore` in dictionaries."""

    def __init__(
        self,
        *,
        chain_id: str,
        genesis_hash: str,
        genesis_state: Mapping[StateKey, StateValue] | None = None,
    ) -> None:
        self._chain_id = chain_id
        self._genesis_hash = genesis_hash
        self._blocks: list[tuple[str, str, str]] = []  # height - 1 -> hash, header, commit
        self._block_txs: list[list[TxRow]] = []  # height - 1 -> rows in index order
        self._tx_positions: dict[str, TxPosition] = {}
        self._refs: dict[tuple[str, str], list[TxPosition]] = {}
        self._events: dict[str, dict[int, AssetEvent]] = {}
        self._state: dict[StateKey, str] = {
            key: encode(value) for key, value in (genesis_state or {}).items()
        }
        self._expiry: dict[str, int] = {}

    @property
    def chain_id(self) -> str:
        return self._chain_id

    @property
    def genesis_hash(self) -> str:
        return self._genesis_hash

    def commit_block(self, record: BlockRecord) -> None:
        check_record(record, self._chain_id)
        tip = len(self._blocks)
        check_successor(tip or None, self._blocks[-1][0] if tip else self._genesis_hash, record)
        self._check_constraints(record)
        height = record.height
        self._blocks.append((record.block_hash, encode(record.header), encode(record.commit)))
        rows: list[TxRow] = []
        for tx in record.txs:
            rows.append(tx_row(tx))
            position = TxPosition(height, tx.index)
            self._tx_positions[tx.tx_id] = position
            self._expiry[tx.tx_id] = tx.expires_at_ms
            for ref in unique_refs(tx):
                self._refs.setdefault(ref, []).append(position)
        self._block_txs.append(rows)
        for key, text in record.state_changes.items():
            if text is None:
                self._state.pop(key, None)
            else:
                self._state[key] = text
        for event in record.asset_events:
            self._events.setdefault(event.asset_id, {})[event.seq] = event

    def _check_constraints(self, record: BlockRecord) -> None:
        """What the SQL store's unique keys refuse, refused here before anything is written."""
        where = f"block {record.height} not written"
        tx_ids = [tx.tx_id for tx in record.txs]
        repeated = repeated_tx(tx_ids)
        if repeated is not None:
            raise StorageError(f"{where}: {repeated}")
        stored = sorted(tx_id for tx_id in tx_ids if tx_id in self._tx_positions)
        if stored:
            raise StorageError(f"{where}: transaction {stored[0]} is already stored")
        events: set[tuple[str, int]] = set()
        for event in record.asset_events:
            key = (event.asset_id, event.seq)
            if key in events or event.seq in self._events.get(event.asset_id, {}):
                raise StorageError(f"{where}: event {event.seq} of {event.asset_id} is stored")
            events.add(key)

    def tip(self) -> StoredBlock | None:
        return self.block(len(self._blocks)) if self._blocks else None

    def block(self, height: int) -> StoredBlock | None:
        if not 1 <= height <= len(self._blocks):
            return None
        return decode_block(height, *self._blocks[height - 1])

    def block_txs(self, height: int) -> list[TxRecord]:
        if not 1 <= height <= len(self._blocks):
            return []
        return [decode_tx(row) for row in self._block_txs[height - 1]]

    def _tx_summaries(self, height: int) -> tuple[list[TxSummary], MerkleTree] | None:
        if not 1 <= height <= len(self._blocks):
            return None
        summaries = [tx_summary(*row[:5]) for row in self._block_txs[height - 1]]
        header = decode_block(height, *self._blocks[height - 1]).header
        return summaries, checked_tx_tree(height, header, summaries)

    def tx(self, tx_id: str) -> CommittedTx | None:
        position = self._tx_positions.get(tx_id)
        return None if position is None else self._committed(position)

    def _committed(self, position: TxPosition) -> CommittedTx:
        row = self._block_txs[position.height - 1][position.index]
        block_hash = self._blocks[position.height - 1][0]
        return CommittedTx(height=position.height, block_hash=block_hash, record=decode_tx(row))

    def state_get(self, key: StateKey) -> StateValue | None:
        text = self._state.get(key)
        return None if text is None else decode_state(key, text)

    def state_get_many(self, keys: Collection[StateKey]) -> dict[StateKey, StateValue]:
        return {
            key: decode_state(key, self._state[key])
            for key in sorted(set(keys))
            if key in self._state
        }

    def iter_state(self) -> Generator[tuple[StateKey, StateValue]]:
        snapshot = dict(self._state)  # one snapshot, as the SQL store streams from one
        for key in sorted(snapshot):
            yield key, decode_state(key, snapshot[key])

    def asset_events(self, asset_id: str) -> list[AssetEvent]:
        events = self._events.get(asset_id, {})
        return [events[seq] for seq in sorted(events)]

    def txs_by_ref(
        self, kind: str, ref_id: str, *, after: TxPosition | None = None, limit: int
    ) -> list[CommittedTx]:
        check_page(limit)
        positions = self._refs.get((kind, ref_id), [])
        start = 0 if after is None else bisect.bisect_right(positions, after)
        return [self._committed(position) for position in positions[start : start + limit]]

    def committed_unexpired(self, tx_ids: Collection[str], now_ms: int) -> set[str]:
        expiry = self._expiry
        return {tx_id for tx_id in tx_ids if expiry.get(tx_id, now_ms) > now_ms}

    def latest_expiry_ms(self) -> int:
        return max(self._expiry.values(), default=0)

    def close(self) -> None:
        """Nothing to release; kept for the protocol."""
