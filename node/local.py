"""An in-process node for gateway tests: a real ledger on a real store, no network.

Every submitted transaction is admitted exactly as a validator admits it and committed at
once in a block of its own, signed by the dev consortium's validator keys (which only a
test or demo consortium holds). It implements :class:`gateway.services.NodeServices`; the
runtime in ``node/runtime.py`` is the real implementation.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from gateway.services import NodeStatus, ValidatorStatus
from node.consortium import Consortium
from node.crypto import KeyPair
from node.errors import AdmissionError
from node.genesis import Genesis
from node.ledger import Ledger
from node.metrics import NodeMetrics
from node.storage import BlockStore, CommittedTx


def wall_clock_ms() -> int:
    return time.time_ns() // 1_000_000


class LocalNode:
    def __init__(
        self,
        consortium: Consortium,
        store: BlockStore,
        clock_ms: Callable[[], int] = wall_clock_ms,
    ) -> None:
        self._consortium = consortium
        self._ledger = Ledger(consortium.genesis, store)
        self._clock_ms = clock_ms
        self.metrics = NodeMetrics()
        self.metrics.bind(
            height=lambda: self._ledger.height,
            mempool_txs=lambda: 0,
            mempool_bytes=lambda: 0,
            peers_connected=lambda: 0,
            sync_target_height=lambda: self._ledger.height,
        )

    @property
    def genesis(self) -> Genesis:
        return self._consortium.genesis

    @property
    def ledger(self) -> Ledger:
        return self._ledger

    async def submit(self, envelope: dict[str, Any]) -> str:
        now = max(self._clock_ms(), self._ledger.last_timestamp_ms + 1)
        try:
            tx = self._ledger.admit(envelope, now)
        except AdmissionError as error:
            self.metrics.txs_rejected.labels(error.code).inc()
            raise
        self.metrics.txs_admitted.inc()
        executed = self._ledger.execute([tx], timestamp_ms=now, proposer="validator-0")
        commit = self._consortium.commit_for(executed.height, 0, executed.block_hash)
        self._ledger.commit(executed, commit)
        self.metrics.blocks_committed.inc()
        self.metrics.txs_committed.inc()
        return tx.tx_id

    async def submit_many(self, envelopes: list[Any]) -> list[str | AdmissionError]:
        outcomes: list[str | AdmissionError] = []
        for envelope in envelopes:
            try:
                outcomes.append(await self.submit(envelope))
            except AdmissionError as error:
                outcomes.append(error)
        return outcomes

    async def wait_committed(self, tx_id: str, timeout_s: float) -> CommittedTx | None:
        return self._ledger.store.tx(tx_id)

    def member_key(self, member_id: str) -> KeyPair | None:
        return self._consortium.member_keys.get(member_id)

    def metrics_exposition(self) -> bytes:
        return self.metrics.exposition()

    def status(self) -> NodeStatus:
        genesis = self._consortium.genesis
        return NodeStatus(
            chain_id=genesis.chain_id,
            node_id="local",
            height=self._ledger.height,
            last_block_hash=self._ledger.last_block_hash,
            last_block_time_ms=self._ledger.last_timestamp_ms,
            mempool_txs=0,
            mempool_bytes=0,
            validators=tuple(
                ValidatorStatus(
                    id=v.id, address=v.address, connected=True, height=self._ledger.height
                )
                for v in genesis.validators
            ),
        )
