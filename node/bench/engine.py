"""The load engine: runs the mix against a chain through a :class:`Backend` and measures.

Theory of operation. Lots (:mod:`node.bench.workload`) are *prepared* first (signed and
encoded: the expensive part of a client's work), as many as the run should need, before
the clock starts; more are prepared on the fly only if the run outgrows them (counted in
the report). A dispatcher then sends ready operations at the target rate (open loop; rate 0
sends as fast as the chain commits, keeping about :data:`QUEUE_S` of its recent throughput
unfinished), preferring operations whose lot is waiting for them over new lots. A monitor polls
the chain for new blocks and learns each transaction's outcome from them: that releases a
lot's next stage, counts outcomes, and gives every transaction's submit-to-seen latency.

The measured window starts after the warm-up and lasts ``duration_s``. Committed
throughput counts the transactions of the blocks first seen inside the window, so it is a
count of durable, final transactions whoever sent them.
"""

from __future__ import annotations

import asyncio
import time
from collections import Counter, deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any, Protocol

from node.bench.workload import Lot, Op

TICK_S = 0.005
"""Dispatcher period: at 3,000 tx/s a tick sends about 15 transactions."""

POLL_S = 0.05
"""Monitor period: the resolution of the block-observed latency."""

DRAIN_S_MAX = 10.0
"""After the window, how long sampled waits may still complete (they were sent inside it)."""

QUEUE_S = 2.0
"""Without a target rate, keep about this many seconds of recently committed throughput
unfinished: enough to fill the next blocks, few enough that each lot's later stages (which
wait for the earlier ones) keep their share of the mix instead of queueing behind new lots."""

OUTSTANDING_MIN = 12_000
"""A floor on unfinished transactions: several full blocks (the adaptive block size of the
validators decides how many fit), so that a slow start or slow blocks do not shrink the
queue and with it the throughput (Little's law). Latency at full load is queueing."""

PREPARE_PER_TICK_MAX = 20
"""Lots prepared per dispatcher tick when the prepared buffer runs out during the run."""


@dataclass(slots=True)
class Prepared:
    """An operation ready to send: ``data`` is what the backend sends (request bytes for
    coopledger, calldata for the EVM); ``key`` identifies it in blocks once known."""

    op: Op
    key: str
    data: Any


@dataclass(frozen=True, slots=True)
class SeenBlock:
    height: int
    seen_s: float
    """Monotonic time when the monitor first saw the block committed."""
    timestamp_ms: int
    tx_count: int
    outcomes: list[tuple[str, str]]
    """``(key, code)`` of each transaction, ``code`` ``"ok"`` or the rule's error."""


class Backend(Protocol):
    name: str
    outstanding_max: int

    def prepare(self, op: Op) -> Prepared:
        """Sign or encode ``op`` ahead of time."""
        ...

    def dispatch(self, item: Prepared, sample: bool) -> str:
        """Queue ``item`` for sending; return its key. ``sample`` asks for a timed wait."""
        ...

    async def poll_blocks(self) -> list[SeenBlock]:
        """Blocks committed since the last call, oldest first."""
        ...


@dataclass(slots=True)
class _LotState:
    lot: list[list[Prepared]]
    stage: int = 0
    remaining: int = 0


@dataclass(slots=True)
class _Pending:
    lot: _LotState
    sent_s: float
    type: str


@dataclass(slots=True)
class Measurement:
    """What one run measured; times in seconds unless named otherwise."""

    window_start_s: float = 0.0
    window_end_s: float = 0.0
    blocks: list[SeenBlock] = field(default_factory=list)
    latencies_s: list[float] = field(default_factory=list)
    """Submit to block seen, every transaction sent in the window and committed."""
    sampled_latencies_s: list[float] = field(default_factory=list)
    """Submit to final receipt (``?wait=commit``), a sample sent in the window."""
    outcomes: Counter[tuple[str, str]] = field(default_factory=Counter)
    """``(type, code)`` of our transactions committed in the window."""
    refused: Counter[str] = field(default_factory=Counter)
    """Admission refusals (4xx codes) or send errors during the window."""
    sent_in_window: int = 0
    prepared_in_run: int = 0
    lots_abandoned: int = 0
    uncommitted_at_end: int = 0


class Engine:
    def __init__(
        self,
        backend: Backend,
        lots: Iterator[Lot],
        *,
        rate_per_s: float,
        sample_every: int,
    ) -> None:
        self.backend = backend
        self._lots = lots
        self.rate_per_s = rate_per_s
        self.sample_every = sample_every
        self._buffer: deque[list[list[Prepared]]] = deque()
        self._ready: deque[tuple[_LotState, Prepared]] = deque()
        self._pending: dict[str, _Pending] = {}
        self._samples: dict[str, float] = {}
        self.measurement = Measurement()
        self.sent = 0
        self.committed_ours = 0
        self.height = 0
        self._in_window = False
        self._recent: deque[tuple[float, int]] = deque()

    # --- preparation ------------------------------------------------------------------------

    def prepare(self, txs: int, progress: Callable[[int], None] | None = None) -> None:
        """Prepare lots until ``txs`` transactions are ready to send."""
        prepared = 0
        while prepared < txs:
            lot = next(self._lots)
            self._buffer.append([[self.backend.prepare(op) for op in st] for st in lot.stages])
            prepared += lot.size
            if progress is not None and len(self._buffer) % 200 == 0:
                progress(prepared)

    @property
    def prepared_txs(self) -> int:
        return sum(len(stage) for lot in self._buffer for stage in lot)

    # --- callbacks from the backend ---------------------------------------------------------

    def refused(self, key: str, code: str) -> None:
        """``key`` was refused at admission (or could not be sent): its lot stops."""
        pending = self._pending.pop(key, None)
        if self._in_window:
            self.measurement.refused[code] += 1
        if pending is not None:
            self.measurement.lots_abandoned += 1

    def sample_answered(self, key: str) -> None:
        """The timed wait of sampled transaction ``key`` answered with its final receipt."""
        sent_s = self._samples.pop(key, None)
        m = self.measurement
        if sent_s is not None and m.window_start_s <= sent_s <= m.window_end_s:
            m.sampled_latencies_s.append(time.monotonic() - sent_s)

    def sample_failed(self, key: str) -> None:
        self._samples.pop(key, None)

    # --- the run ---------------------------------------------------------------------------

    async def run(
        self, warmup_s: float, duration_s: float, progress: Callable[[str], None]
    ) -> Measurement:
        start = time.monotonic()
        m = self.measurement
        m.window_start_s, m.window_end_s = start + warmup_s, start + warmup_s + duration_s
        monitor = asyncio.get_running_loop().create_task(self._monitor())
        try:
            await self._dispatch(start, progress)
            drain_until = time.monotonic() + DRAIN_S_MAX
            while self._samples_open() and time.monotonic() < drain_until:
                await asyncio.sleep(POLL_S)
        finally:
            monitor.cancel()
        m.uncommitted_at_end = len(self._pending)
        return m

    def _samples_open(self) -> bool:
        return any(sent <= self.measurement.window_end_s for sent in self._samples.values())

    async def _dispatch(self, start: float, progress: Callable[[str], None]) -> None:
        m = self.measurement
        last_report = 0.0
        while True:
            now = time.monotonic()
            if now >= m.window_end_s:
                self._in_window = False
                return
            if not self._in_window and now >= m.window_start_s:
                self._in_window = True
            if self.rate_per_s > 0:
                budget = int(self.rate_per_s * (now - start)) - self.sent
            else:
                budget = 1_000
            budget = min(budget, self._outstanding_max(now) - len(self._pending))
            self._send(budget, now)
            if now - last_report >= 0.5:
                last_report = now
                progress(self._status(now))
            await asyncio.sleep(TICK_S)

    def _outstanding_max(self, now: float) -> int:
        while self._recent and self._recent[0][0] < now - 3.0:
            self._recent.popleft()
        rate = sum(count for _, count in self._recent) / 3.0
        wanted = max(OUTSTANDING_MIN, int(QUEUE_S * rate))
        return min(wanted, self.backend.outstanding_max)

    def _send(self, budget: int, now: float) -> None:
        for _ in range(max(budget, 0)):
            if not self._ready:
                self._start_lot()
            state, item = self._ready.popleft()
            self.sent += 1
            sample = self.sent % self.sample_every == 0
            key = self.backend.dispatch(item, sample)
            self._pending[key] = _Pending(state, now, item.op.type)
            if sample:
                self._samples[key] = now
            if self._in_window:
                self.measurement.sent_in_window += 1

    def _start_lot(self) -> None:
        if not self._buffer:
            before = self.prepared_txs
            for _ in range(PREPARE_PER_TICK_MAX):
                self.prepare(1)
            self.measurement.prepared_in_run += self.prepared_txs - before
        lot = self._buffer.popleft()
        state = _LotState(lot, 0, len(lot[0]))
        self._ready.extend((state, item) for item in lot[0])

    def _status(self, now: float) -> str:
        m = self.measurement
        if now < m.window_start_s:
            phase = f"warm-up {m.window_start_s - now:4.1f} s left"
        else:
            phase = f"measuring {m.window_end_s - now:5.1f} s left"
        window = [b for b in m.blocks if b.seen_s >= m.window_start_s]
        elapsed = max(now - m.window_start_s, 1e-9)
        rate = sum(b.tx_count for b in window) / elapsed if window else 0.0
        return (
            f"{self.backend.name}: {phase} | height {self.height} | sent {self.sent} | "
            f"committed {self.committed_ours} | in flight {len(self._pending)} | "
            f"{rate:,.0f} tx/s"
        )

    async def _monitor(self) -> None:
        while True:
            for block in await self.backend.poll_blocks():
                self._seen(block)
            await asyncio.sleep(POLL_S)

    def _seen(self, block: SeenBlock) -> None:
        m = self.measurement
        self.height = max(self.height, block.height)
        self._recent.append((block.seen_s, block.tx_count))
        inside = m.window_start_s <= block.seen_s <= m.window_end_s
        if inside:
            m.blocks.append(block)
        for key, code in block.outcomes:
            pending = self._pending.pop(key, None)
            if pending is None:
                continue
            self.committed_ours += 1
            if inside:
                m.outcomes[(pending.type, code)] += 1
            if m.window_start_s <= pending.sent_s <= m.window_end_s:
                m.latencies_s.append(block.seen_s - pending.sent_s)
            self._advance(pending.lot, code)

    def _advance(self, state: _LotState, code: str) -> None:
        if code != "ok":
            # A failed step (a race the rules refused) ends its lot: the next stage
            # would only fail in turn.
            state.stage = len(state.lot)
            self.measurement.lots_abandoned += 1
            return
        state.remaining -= 1
        if state.remaining == 0 and state.stage + 1 < len(state.lot):
            state.stage += 1
            stage = state.lot[state.stage]
            state.remaining = len(stage)
            self._ready.extendleft((state, item) for item in reversed(stage))
