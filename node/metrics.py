"""Prometheus metrics of one validator, served by the gateway at ``/metrics`` (operator token).

Every node has its own :class:`~prometheus_client.CollectorRegistry` (not the process-wide
default), so several nodes in one process (tests) keep separate figures. Gauges of things
the runtime already tracks (mempool, peers, height) are read at scrape time; counters and
histograms are updated where the event happens.
"""

from __future__ import annotations

import gc
import time
from collections.abc import Callable
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

LATENCY_BUCKETS_S = (0.05, 0.1, 0.2, 0.3, 0.5, 0.75, 1.0, 1.5, 2.0, 3.0, 5.0, 10.0, 30.0)
"""Commit latency: a healthy network commits in a few hundred ms; the tail shows timeouts."""

WORK_BUCKETS_S = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5)
"""Block execution and storage: from an empty heartbeat block to thousands of transactions."""

ROUND_BUCKETS = (1, 2, 3, 4, 6, 8, 12, 16)

GC_BUCKETS_S = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0)
"""Garbage-collector pauses, each a stall of the whole node, consensus included: with the
node's thresholds young collections are rare under load (two in six minutes at maximum rate)
and take about 100 to 400 ms each (they walk the work in flight), a full one over a large
heap hundreds."""


class NodeMetrics:
    """The metrics of one validator."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        registry = self.registry
        self.height = Gauge(
            "coopledger_height", "Height of the last committed block.", registry=registry
        )
        self.blocks_committed = Counter(
            "coopledger_blocks_committed", "Blocks committed by this node.", registry=registry
        )
        self.txs_committed = Counter(
            "coopledger_txs_committed", "Transactions in committed blocks.", registry=registry
        )
        self.commit_latency = Histogram(
            "coopledger_commit_latency_seconds",
            "Time from the start of a height on this node to its commit.",
            buckets=LATENCY_BUCKETS_S,
            registry=registry,
        )
        self.rounds_per_height = Histogram(
            "coopledger_rounds_per_height",
            "Rounds a height took to commit (1 = decided in round 0).",
            buckets=ROUND_BUCKETS,
            registry=registry,
        )
        self.block_execution = Histogram(
            "coopledger_block_execution_seconds",
            "Executing a block (rules, state root, tx root): build, validate or sync.",
            buckets=WORK_BUCKETS_S,
            registry=registry,
        )
        self.block_storage = Histogram(
            "coopledger_block_storage_seconds",
            "Storing a committed block in one database transaction.",
            buckets=WORK_BUCKETS_S,
            registry=registry,
        )
        self.txs_admitted = Counter(
            "coopledger_txs_admitted",
            "Transactions admitted into the mempool (from clients and from peers).",
            registry=registry,
        )
        self.txs_rejected = Counter(
            "coopledger_txs_rejected",
            "Transactions refused at admission, by error code.",
            ["code"],
            registry=registry,
        )
        self.mempool_txs = Gauge(
            "coopledger_mempool_txs", "Transactions pending.", registry=registry
        )
        self.mempool_bytes = Gauge(
            "coopledger_mempool_bytes", "Bytes of transactions pending.", registry=registry
        )
        self.peers_connected = Gauge(
            "coopledger_peers_connected",
            "Validators with an authenticated link.",
            registry=registry,
        )
        self.sync_blocks = Counter(
            "coopledger_sync_blocks",
            "Blocks fetched from peers and committed by block sync.",
            registry=registry,
        )
        self.sync_target_height = Gauge(
            "coopledger_sync_target_height",
            "Highest height any peer is known to have (sync progress: compare with height).",
            registry=registry,
        )
        self.frames_dropped = Counter(
            "coopledger_frames_dropped",
            "Peer frames dropped: undecodable (the peer was disconnected) or the queue was full.",
            registry=registry,
        )
        self.bad_peer_blocks = Counter(
            "coopledger_bad_peer_blocks",
            "Blocks from peers that failed verification (the peer was disconnected).",
            registry=registry,
        )

        self.gc_pause = Histogram(
            "coopledger_gc_pause_seconds",
            "Pauses of the Python garbage collector in this process, by generation.",
            ["generation"],
            buckets=GC_BUCKETS_S,
            registry=registry,
        )
        self._gc_started = 0.0

    def watch_gc(self) -> Callable[[], None]:
        """Time every collection of this process into ``gc_pause``; return the undo.

        ``gc.callbacks`` is process-wide: call the undo when the node stops, so nodes that
        share a process (tests) do not keep each other's callbacks alive.
        """

        def callback(phase: str, info: dict[str, Any]) -> None:
            if phase == "start":
                self._gc_started = time.perf_counter()
            elif self._gc_started:
                pause = time.perf_counter() - self._gc_started
                self.gc_pause.labels(str(info["generation"])).observe(pause)

        gc.callbacks.append(callback)

        def undo() -> None:
            if callback in gc.callbacks:
                gc.callbacks.remove(callback)

        return undo

    def bind(
        self,
        *,
        height: Callable[[], float],
        mempool_txs: Callable[[], float],
        mempool_bytes: Callable[[], float],
        peers_connected: Callable[[], float],
        sync_target_height: Callable[[], float],
    ) -> None:
        """Read these gauges from the runtime at scrape time."""
        self.height.set_function(height)
        self.mempool_txs.set_function(mempool_txs)
        self.mempool_bytes.set_function(mempool_bytes)
        self.peers_connected.set_function(peers_connected)
        self.sync_target_height.set_function(sync_target_height)

    def exposition(self) -> bytes:
        """The Prometheus text exposition format."""
        return generate_latest(self.registry)
