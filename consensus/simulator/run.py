"""One seeded simulation, and runs over ranges of seeds.

Virtual time is an integer count of milliseconds; the event queue is a heap ordered by
(time, sequence number), so events at the same instant run in the order they were
scheduled and a seed always produces the same run. Everything random comes from
``random.Random`` instances seeded from the seed; iteration is never over a ``set`` whose
order could depend on string hashing. The trace hash digests every delivery and commit,
so two runs of one seed can be compared byte for byte.
"""

from __future__ import annotations

import hashlib
import heapq
import random
from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

from consensus.core import Consensus
from consensus.messages import Block, Message, Proposal, SignatureVerifier
from consensus.simulator.checkers import (
    LIVENESS_BOUND_MS,
    CommitRecord,
    Recorder,
    Violation,
    check_all,
    check_submitted,
)
from consensus.simulator.mutants import MUTANTS
from consensus.simulator.nodes import ByzantineNode, SimNode
from consensus.simulator.scenario import FAULT_KINDS, Scenario, make_scenario
from consensus.simulator.world import sim_genesis, validator_id
from consensus.types import Height, ValidatorId
from node.block import Commit
from node.invariant import InvariantViolation

BLOCKS_DEFAULT = 200
TX_INTERVAL_MS = 15
"""A client submits a transaction about this often (to every validator)."""
FETCH_BATCH_MAX = 64
"""Blocks returned by one catch-up request."""
TRACE_LINES_KEPT = 400
BLOCK_MS_ALLOWANCE = 500
"""Virtual time allowed per target block after healing before the run is cut short."""
DELAY_CAP_CHAOS_MS = 8_000
DELAY_CAP_HEALED_MS = 300


@dataclass(frozen=True, slots=True)
class SimulationConfig:
    seed: int
    validators: int = 4
    faults: tuple[str, ...] = FAULT_KINDS
    mutant: str | None = None
    blocks: int = BLOCKS_DEFAULT
    trace_lines_kept: int = TRACE_LINES_KEPT
    """Trace lines kept for the report of a failing seed (a replay may keep them all)."""


@dataclass(slots=True)
class SeedResult:
    seed: int
    validators: int
    violations: list[Violation]
    blocks_committed: int
    virtual_ms: int
    trace_hash: str
    scenario: str
    recent_trace: list[str] = field(default_factory=list)


@dataclass(frozen=True, slots=True)
class _Fetch:
    requester: int
    from_height: Height


class Simulation:
    def __init__(self, config: SimulationConfig) -> None:
        self.config = config
        self.mutant = config.mutant
        self.core_class: type[Consensus] = MUTANTS.get(config.mutant or "", Consensus)
        self.scenario: Scenario = make_scenario(config.seed, config.validators, config.faults)
        self.genesis = sim_genesis(config.validators)
        self.verifier = SignatureVerifier(
            self.genesis.chain_id, {v.id: v.public_key for v in self.genesis.validators}
        )
        self.validator_ids = [validator_id(i) for i in range(config.validators)]
        self.rng = random.Random(f"coopledger-sim:{config.seed}:{config.validators}:network")
        self.now = 0
        self._queue: list[tuple[int, int, Callable[..., None], tuple[Any, ...]]] = []
        self._sequence = 0
        self.submitted: set[str] = set()
        self.healed = False
        self.stopped = False
        self._trace = hashlib.sha256()
        self.recent: deque[str] = deque(maxlen=config.trace_lines_kept)
        self._blocked: dict[tuple[int, int], int] = {}
        self.nodes = self._make_nodes()
        self._peers = self._make_peers()
        self._known_hashes: dict[tuple[int, int], list[str]] = {}
        honest = tuple(n.index for n in self.nodes if n.honest)
        byzantine_ids = {validator_id(i) for i, _ in self.scenario.byzantine}
        self.recorder = Recorder(
            genesis=self.genesis,
            verifier=self.verifier,
            honest_validators=frozenset(v for v in self.validator_ids if v not in byzantine_ids),
            honest_instances=honest,
            proposer=self._proposer,
        )
        self._post_heal_committers: set[int] = set()
        self._honest_count = len(honest)

    # --- construction --------------------------------------------------------------------

    def _make_nodes(self) -> list[SimNode]:
        behaviours = dict(self.scenario.byzantine)
        nodes: list[SimNode] = []
        for index in range(self.config.validators):
            behaviour = behaviours.get(index)
            if behaviour is None or behaviour == "twins":
                node = SimNode(self, index, index)
                node.honest = behaviour is None
            else:
                node = ByzantineNode(self, index, index, behaviour)
            nodes.append(node)
        twin_of = next((i for i, kind in self.scenario.byzantine if kind == "twins"), None)
        if twin_of is not None:
            twin = SimNode(self, len(nodes), twin_of)
            twin.honest = False
            nodes.append(twin)
        return nodes

    def _make_peers(self) -> list[list[int]]:
        count = len(self.nodes)
        peers = [[j for j in range(count) if j != i] for i in range(count)]
        groups = self.scenario.twin_groups
        if groups is not None:
            twin_of = next(i for i, kind in self.scenario.byzantine if kind == "twins")
            twin = count - 1
            original_group, twin_group = groups
            peers[twin_of] = list(original_group)
            peers[twin] = list(twin_group)
            for j in range(count):
                if j in (twin_of, twin):
                    continue
                peers[j] = [
                    k
                    for k in peers[j]
                    if not (k == twin_of and j not in original_group)
                    and not (k == twin and j not in twin_group)
                ]
        return peers

    def _proposer(self, height: int, round_: int) -> str:
        return self.validator_ids[(height + round_) % len(self.validator_ids)]

    # --- the event queue -----------------------------------------------------------------

    def schedule(self, delay_ms: int, callback: Callable[..., None], *args: Any) -> None:
        self._sequence += 1
        heapq.heappush(self._queue, (self.now + delay_ms, self._sequence, callback, args))

    def log(self, line: str) -> None:
        text = f"{self.now:>7} {line}"
        self._trace.update(text.encode())
        self.recent.append(text)

    # --- the network ---------------------------------------------------------------------

    def peers_of(self, index: int) -> list[int]:
        return self._peers[index]

    def _delay(self) -> int:
        scenario = self.scenario
        rng = self.rng
        if scenario.delay_scale_ms:
            cap = DELAY_CAP_HEALED_MS if self.healed else DELAY_CAP_CHAOS_MS
            delay = 1 + int(scenario.delay_scale_ms * (rng.paretovariate(1.3) - 1.0))
            delay = min(delay, cap)
        else:
            delay = rng.randrange(2, 12)
        if scenario.reorder_rate and rng.random() < scenario.reorder_rate:
            delay += rng.randrange(0, 200)
        return delay

    def _transmit(self, source: int, target: int, deliver: Callable[..., None], *args: Any) -> None:
        if self._blocked.get((source, target)):
            return
        scenario = self.scenario
        if not self.healed and scenario.loss_rate and self.rng.random() < scenario.loss_rate:
            return
        self.schedule(self._delay(), deliver, *args)
        if scenario.duplicate_rate and self.rng.random() < scenario.duplicate_rate:
            self.schedule(self._delay(), deliver, *args)

    def broadcast(self, node: SimNode, message: Message) -> None:
        self.send_to(node, self._peers[node.index], message)

    def send_to(self, node: SimNode, targets: list[int], message: Message) -> None:
        self.recorder.on_send(message, node.honest)
        if isinstance(message, Proposal):
            hashes = self._known_hashes.setdefault((message.height, message.round), [])
            if message.block_hash not in hashes:
                hashes.append(message.block_hash)
        for target in targets:
            self._transmit(node.index, target, self._deliver, target, message)

    def known_hashes(self, height: int, round_: int) -> list[str]:
        return self._known_hashes.get((height, round_), [])

    def _deliver(self, target: int, message: Message) -> None:
        node = self.nodes[target]
        if not node.up:
            return
        self.log(
            f"{target} <- {message.KIND} h{message.height} r{message.round} "
            f"{(message.block_hash or 'nil')[:8]} from {message.signer}"
            + (f" pol {message.pol_round}" if isinstance(message, Proposal) else "")
        )
        node.receive(message)

    def fetch(self, node: SimNode, peer: ValidatorId, from_height: Height) -> None:
        targets = [j for j in self._peers[node.index] if self.nodes[j].validator_id == peer]
        for target in targets[:1]:
            request = _Fetch(node.index, from_height)
            self._transmit(node.index, target, self._serve_fetch, target, request)

    def _serve_fetch(self, target: int, request: _Fetch) -> None:
        node = self.nodes[target]
        if not node.up:
            return
        chain = node.storage.chain
        start = request.from_height - 1
        blocks = chain[start : start + FETCH_BATCH_MAX]
        if blocks:
            self._transmit(
                target, request.requester, self._deliver_blocks, request.requester, blocks
            )

    def _deliver_blocks(self, target: int, blocks: list[tuple[Block, Commit]]) -> None:
        node = self.nodes[target]
        if node.up:
            self.log(f"{target} <- {len(blocks)} blocks from h{blocks[0][0].height}")
            node.synced(blocks)

    # --- clients ---------------------------------------------------------------------------

    def _submit_transaction(self, number: int) -> None:
        tx = f"tx-{self.config.seed}-{number}"
        self.submitted.add(tx)
        for node in self.nodes:
            if (
                self.healed
                or not self.scenario.loss_rate
                or self.rng.random() > self.scenario.loss_rate
            ):
                self.schedule(self._delay(), node.add_transaction, tx)
        self.schedule(TX_INTERVAL_MS, self._submit_transaction, number + 1)

    # --- faults ----------------------------------------------------------------------------

    def _cut(self, pairs: tuple[tuple[int, int], ...], label: str) -> None:
        self.log(f"fault {label}: cut {len(pairs)} links")
        for pair in pairs:
            self._blocked[pair] = self._blocked.get(pair, 0) + 1

    def _restore(self, pairs: tuple[tuple[int, int], ...], label: str) -> None:
        if self.healed:
            return
        self.log(f"fault {label}: restored")
        for pair in pairs:
            self._blocked[pair] = max(0, self._blocked.get(pair, 0) - 1)

    def _crash(self, index: int, down_ms: int, before_send: bool) -> None:
        node = self.nodes[index]
        if not node.up or self.healed:
            return
        if before_send:
            node.crash_before_send = True
        else:
            self.crash_now(node)
        self.schedule(down_ms, self._restart, index)

    def crash_now(self, node: SimNode) -> None:
        node.crash()

    def _restart(self, index: int) -> None:
        node = self.nodes[index]
        if node.up and node.crash_before_send:
            node.crash_before_send = False  # it never sent anything before the restart time
            return
        if not node.up:
            self.log(f"restart {index} from height {node.height}")
            node.start()

    def _heal(self) -> None:
        self.log("heal: links restored, losses stop, crashed validators restart")
        self.healed = True
        self._blocked.clear()
        for node in self.nodes:
            node.crash_before_send = False
            if not node.up:
                node.start()

    # --- commits and the stop condition ----------------------------------------------------

    def on_commit(self, node: SimNode, block: Block, commit: Commit) -> None:
        self.log(f"{node.index} commits h{block.height} {block.hash[:8]} r{commit['round']}")
        self.recorder.on_commit(
            CommitRecord(
                instance=node.index,
                height=block.height,
                block_hash=block.hash,
                commit=commit,
                state_root=node.storage.state_root,
                transactions=block.transactions,
                time_ms=self.now,
            )
        )
        if self.healed and node.honest:
            self._post_heal_committers.add(node.index)
            if len(self._post_heal_committers) == self._honest_count and all(
                n.storage.height >= self.config.blocks for n in self.nodes if n.honest
            ):
                self.stopped = True

    # --- running -------------------------------------------------------------------------------

    def run(self) -> SeedResult:
        scenario = self.scenario
        self.log(f"scenario {scenario.describe()}")
        for node in self.nodes:
            self.schedule(0, node.start)
        self.schedule(1, self._submit_transaction, 0)
        for fault in scenario.link_faults:
            self._queue_at(fault.start_ms, self._cut, fault.pairs, fault.label)
            self._queue_at(fault.end_ms, self._restore, fault.pairs, fault.label)
        for crash in scenario.crashes:
            self._queue_at(
                crash.at_ms, self._crash, crash.instance, crash.down_ms, crash.before_send
            )
        self._queue_at(scenario.heal_ms, self._heal)
        # Long enough for the liveness check and for every honest validator to reach
        # the block target at the pace of a Byzantine proposer every few heights.
        deadline = scenario.heal_ms + LIVENESS_BOUND_MS + self.config.blocks * BLOCK_MS_ALLOWANCE
        violations: list[Violation] = []
        queue = self._queue
        try:
            while queue and not self.stopped:
                time_ms, _, callback, args = heapq.heappop(queue)
                if time_ms > deadline:
                    self.now = deadline
                    break
                self.now = time_ms
                callback(*args)
        except InvariantViolation as error:
            violations.append(Violation("invariant", str(error)))
        violations += check_all(self.recorder, scenario.heal_ms, self.now)
        violations += check_submitted(self.recorder, self.submitted)
        honest_heights = [n.storage.height for n in self.nodes if n.honest]
        return SeedResult(
            seed=self.config.seed,
            validators=self.config.validators,
            violations=violations,
            blocks_committed=min(honest_heights) if honest_heights else 0,
            virtual_ms=self.now,
            trace_hash=self._trace.hexdigest(),
            scenario=scenario.describe(),
            recent_trace=list(self.recent) if violations else [],
        )

    def _queue_at(self, time_ms: int, callback: Callable[..., None], *args: Any) -> None:
        self._sequence += 1
        heapq.heappush(self._queue, (time_ms, self._sequence, callback, args))


def run_seed(config: SimulationConfig) -> SeedResult:
    """Run one seed and check it."""
    return Simulation(config).run()


def run_seeds(
    seeds: range,
    validators: int,
    *,
    faults: tuple[str, ...] = FAULT_KINDS,
    mutant: str | None = None,
    blocks: int = BLOCKS_DEFAULT,
) -> Iterator[SeedResult]:
    for seed in seeds:
        yield run_seed(SimulationConfig(seed, validators, faults, mutant, blocks))
