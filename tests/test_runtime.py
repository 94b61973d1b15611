"""The validator runtime in one process: four NodeRuntimes on real loopback sockets.

Faster than the multi-process tests (tests/test_testnet.py) and able to look inside: chains
agree, a stopped validator restarts from its database and catches up by block sync.
"""

from __future__ import annotations

import asyncio
import gc
import random
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import orjson
import pytest
from tests_support import free_base_port

from consensus.driver import Ready
from consensus.events import ScheduleTimeout
from consensus.messages import Block, Proposal
from consensus.types import Height, Round, TimerKind, ValidatorId
from node import runtime
from node.config import load_config, parse_config
from node.consortium import make_consortium
from node.errors import AdmissionError, ConfigError
from node.genesis import load_genesis
from node.keys import read_key_file
from node.ledger import Ledger
from node.mempool import Mempool
from node.runtime import LedgerApplication, NodeRuntime
from node.storage import MemoryStore
from node.testnet import generate
from node.transport import PeerNetwork
from node.tx import sign_transaction, tx_id_of


def metric(node: NodeRuntime, name: str, **labels: str) -> float:
    return node.metrics.registry.get_sample_value(name, labels) or 0.0


async def wait_until(condition: Callable[[], bool], timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError("condition not reached in time")
        await asyncio.sleep(0.05)


class Network:
    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.description = generate(directory, validators=4, base_port=free_base_port(8))
        self.nodes: dict[int, NodeRuntime] = {}
        self.tasks: dict[int, asyncio.Task[None]] = {}
        member = self.description["members"][0]
        self.member_id = member["id"]
        self.key = read_key_file(Path(member["key_file"])).key_pair
        self.nonce = 0

    def start(self, index: int) -> NodeRuntime:
        node = NodeRuntime(load_config(self.directory / f"validator-{index}" / "config.json"))
        self.nodes[index] = node
        self.tasks[index] = asyncio.get_running_loop().create_task(node.run())
        return node

    async def start_meshed(self, count: int) -> list[NodeRuntime]:
        """Start validators 0 .. count-1 and wait until each is connected to all the others."""
        nodes = [self.start(i) for i in range(count)]
        await wait_until(
            lambda: all(len(n.network.connected_peers()) == count - 1 for n in nodes), 10
        )
        return nodes

    async def stop(self, index: int) -> None:
        self.nodes[index].stop()
        await self.tasks.pop(index)
        del self.nodes[index]

    def envelope(self, asset_id: str) -> dict[str, Any]:
        self.nonce += 1
        body = {
            "chain_id": self.description["chain_id"],
            "type": "asset.register",
            "sender": self.member_id,
            "nonce": self.nonce,
            "expires_at_ms": int(time.time() * 1000) + 120_000,
            "payload": {
                "asset_id": asset_id,
                "product": "cheese",
                "quantity": 5,
                "unit": "kg",
                "origin": "CH",
            },
        }
        return sign_transaction(self.key, body)

    async def impostor(self) -> PeerNetwork:
        """validator-3's real key and address in a bare transport the test drives: a
        genuine validator that sends what the test wants (validator-3 itself not started)."""
        config = load_config(self.directory / "validator-3" / "config.json")
        peer = PeerNetwork(
            load_genesis(Path(self.description["genesis"])),
            "validator-3",
            read_key_file(config.key_file).key_pair,
            config.peer_listen[0],
            config.peer_listen[1],
            on_message=lambda peer, frame: None,
            rng=random.Random(7),
        )
        await peer.start()
        return peer

    async def close(self) -> None:
        for index in list(self.nodes):
            await self.stop(index)


def run(directory: Path, scenario: Callable[[Network], Awaitable[None]]) -> None:
    async def main() -> None:
        network = Network(directory)
        try:
            await scenario(network)
        finally:
            await network.close()

    asyncio.run(main())


def test_four_validators_agree_on_every_block(tmp_path: Path) -> None:
    async def scenario(net: Network) -> None:
        nodes = await net.start_meshed(4)
        tx_ids = [await nodes[i % 4].submit(net.envelope(f"lot-{i}")) for i in range(40)]
        committed = await nodes[0].wait_committed(tx_ids[-1], 20)
        assert committed is not None and committed.record.code == "ok"
        for tx_id in tx_ids:
            assert await nodes[3].wait_committed(tx_id, 20) is not None
        await wait_until(lambda: len({n.ledger.height for n in nodes}) == 1, 10)
        top = nodes[0].ledger.height
        for height in range(1, top + 1):
            hashes = {n.ledger.store.block(height).block_hash for n in nodes}  # type: ignore[union-attr]
            assert len(hashes) == 1, f"validators disagree at height {height}"
        assert len({n.ledger.state_root for n in nodes}) == 1
        assert all((n.config.data_dir / "safety.0").exists() for n in nodes)
        status = nodes[2].status()
        assert status.height == top and all(v.connected for v in status.validators)

    run(tmp_path, scenario)


def test_a_stopped_validator_restarts_and_catches_up(tmp_path: Path) -> None:
    async def scenario(net: Network) -> None:
        nodes = await net.start_meshed(4)
        first = await nodes[0].submit(net.envelope("before"))
        assert await nodes[0].wait_committed(first, 20) is not None
        await net.stop(3)
        # Three of four is a quorum: the network keeps committing without validator-3.
        tx_ids = [await nodes[i % 3].submit(net.envelope(f"while-down-{i}")) for i in range(30)]
        for tx_id in tx_ids:
            assert await nodes[0].wait_committed(tx_id, 30) is not None
        behind = nodes[0].ledger.height
        restarted = net.start(3)
        await wait_until(lambda: restarted.ledger.height >= behind, 30)
        block = restarted.ledger.store.block(behind)
        assert (
            block is not None and block.block_hash == nodes[0].ledger.store.block(behind).block_hash
        )  # type: ignore[union-attr]
        late = await restarted.submit(net.envelope("after"))
        assert await nodes[1].wait_committed(late, 30) is not None

    run(tmp_path, scenario)


def test_a_genuine_peer_serving_a_bad_block_is_disconnected(tmp_path: Path) -> None:
    """validator-3's real key, but forged blocks: refused, disconnected, chain unharmed."""

    async def scenario(net: Network) -> None:
        nodes = await net.start_meshed(3)
        tx_id = await nodes[0].submit(net.envelope("honest"))
        assert await nodes[0].wait_committed(tx_id, 20) is not None
        victim = nodes[0]
        height = victim.ledger.height
        good = victim.ledger.store.block(height)
        assert good is not None
        header = dict(good.header)
        evil = await net.impostor()
        try:
            await wait_until(lambda: "validator-0" in evil.connected_peers(), 10)
            height = victim.ledger.height
            forged = {
                **header,
                "height": height + 1,
                "prev_hash": victim.ledger.last_block_hash,
                "tx_count": 0,
            }
            bad_commit = {
                "height": height + 1,
                "round": 0,
                "block_hash": "ab" * 32,
                "signatures": [],
            }
            evil.send(
                "validator-0",
                {
                    "type": "sync_response",
                    "blocks": [{"header": forged, "transactions": [], "commit": bad_commit}],
                },
            )
            await wait_until(lambda: metric(victim, "coopledger_bad_peer_blocks_total") >= 1, 10)
            # Disconnected (it may redial: a disconnect is not a ban).
            await wait_until(lambda: victim.network.counters.disconnects["requested"] >= 1, 10)
            evil.send("validator-1", {"type": "sync_response", "blocks": "garbage"})
            await wait_until(lambda: metric(nodes[1], "coopledger_frames_dropped_total") >= 1, 10)
            await wait_until(lambda: nodes[1].network.counters.disconnects["requested"] >= 1, 10)
        finally:
            await evil.stop()
        assert (
            victim.ledger.store.block(height + 1) is None
            or victim.ledger.store.block(height + 1).block_hash != "ab" * 32
        )  # type: ignore[union-attr]
        later = await nodes[1].submit(net.envelope("after-the-attack"))
        assert await victim.wait_committed(later, 30) is not None

    run(tmp_path, scenario)


def test_a_float_inside_a_gossiped_envelope_costs_that_transaction_only(tmp_path: Path) -> None:
    """Frames leave their envelopes to admission (node.wire.parse_frame): a genuine peer's
    gossip frame with a float in one envelope loses that transaction, not its neighbour, and
    no link is dropped."""

    async def scenario(net: Network) -> None:
        nodes = await net.start_meshed(3)
        peer = await net.impostor()
        try:
            await wait_until(lambda: len(peer.connected_peers()) == 3, 10)
            good = net.envelope("gossiped-good")
            bad = net.envelope("gossiped-float")
            bad["body"]["nonce"] = 1.5
            frame = orjson.dumps(
                {"type": "txs", "envelopes": [bad, good]}, option=orjson.OPT_SORT_KEYS
            )
            assert b'"nonce":1.5' in frame
            assert peer.broadcast_payload(frame) == 3
            good_id = tx_id_of(good["body"])
            for node in nodes:
                assert await node.wait_committed(good_id, 30) is not None
                await wait_until(
                    lambda node=node: (
                        metric(  # type: ignore[misc]
                            node, "coopledger_txs_rejected_total", code="malformed-transaction"
                        )
                        == 1
                    ),
                    10,
                )
                assert metric(node, "coopledger_frames_dropped_total") == 0
                assert node.network.counters.disconnects["requested"] == 0
        finally:
            await peer.stop()

    run(tmp_path, scenario)


def test_a_refused_proposal_whose_envelopes_do_not_encode_is_not_relayed(tmp_path: Path) -> None:
    """The core re-sends every proposal of the round it holds, refused ones too. Frames
    leave envelopes to validation, so a forged proposal's may not be canonical JSON: the
    node skips relaying it instead of stopping its consensus loop on the encoding error."""

    async def scenario(net: Network) -> None:
        nodes = await net.start_meshed(3)
        tx_id = await nodes[0].submit(net.envelope("before"))
        assert await nodes[0].wait_committed(tx_id, 20) is not None
        victim = nodes[0]
        stored = victim.ledger.store.block(victim.ledger.height)
        assert stored is not None
        header = {
            **stored.header,
            "height": victim.ledger.height + 1,
            "prev_hash": victim.ledger.last_block_hash,
            "tx_count": 1,
        }
        block = Block(header=header, transactions=(1.5,))
        assert victim.application.validate_block(block) is False
        forged = Proposal(
            height=Height(header["height"]),
            round=Round(0),
            pol_round=Round(-1),
            block=block,
            proposer=ValidatorId("validator-3"),
            signature="ab" * 64,
        )
        sent = victim.network.counters.frames_out
        await victim._handle(Ready(messages=(forged,)))  # as the core's retransmit does
        assert victim.network.counters.frames_out == sent, "nothing relayed"
        later = await nodes[1].submit(net.envelope("after"))
        assert await victim.wait_committed(later, 30) is not None

    run(tmp_path, scenario)


def test_a_failing_consensus_loop_stops_the_node_with_its_error(tmp_path: Path) -> None:
    """Fail-stop: a bug that ends the consensus loop shuts the node down cleanly and makes
    ``run`` raise, instead of leaving a gateway that accepts what never commits."""

    async def scenario(net: Network) -> None:
        nodes = await net.start_meshed(3)
        victim = nodes[0]

        async def bug() -> None:
            raise RuntimeError("a bug in the loop")

        victim._enqueue(bug)
        task = net.tasks.pop(0)
        del net.nodes[0]
        with pytest.raises(RuntimeError, match="a bug in the loop"):
            await asyncio.wait_for(task, 10)
        # Shut down cleanly: the data directory's lock is free for a restart.
        restarted = net.start(0)
        tx_id = await nodes[1].submit(net.envelope("after-the-restart"))
        assert await restarted.wait_committed(tx_id, 30) is not None

    run(tmp_path, scenario)


def test_metrics_move_by_the_right_amounts_after_a_burst(tmp_path: Path) -> None:
    async def scenario(net: Network) -> None:
        nodes = await net.start_meshed(4)
        envelopes = [net.envelope(f"burst-{i}") for i in range(30)]
        tx_ids = [await nodes[0].submit(envelope) for envelope in envelopes]
        with pytest.raises(AdmissionError):
            await nodes[0].submit(envelopes[0])
        for tx_id in tx_ids:
            assert await nodes[0].wait_committed(tx_id, 30) is not None
        await wait_until(lambda: len({n.ledger.height for n in nodes}) == 1, 10)
        for node in nodes:
            height = node.ledger.height
            assert metric(node, "coopledger_txs_committed_total") == 30
            assert metric(node, "coopledger_txs_admitted_total") == 30
            assert metric(node, "coopledger_blocks_committed_total") == height
            assert metric(node, "coopledger_height") == height
            assert metric(node, "coopledger_block_storage_seconds_count") == height
            assert metric(node, "coopledger_commit_latency_seconds_count") == height
            assert metric(node, "coopledger_rounds_per_height_count") == height
            assert metric(node, "coopledger_block_execution_seconds_count") >= height
            assert metric(node, "coopledger_peers_connected") == 3
        assert metric(nodes[0], "coopledger_txs_rejected_total", code="duplicate-tx") == 1
        text = nodes[1].metrics_exposition().decode()
        assert "# TYPE coopledger_commit_latency_seconds histogram" in text

    run(tmp_path, scenario)


def test_concurrent_submissions_are_admitted_together_each_with_its_own_answer(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Requests and gossip frames that queue while an admission runs are admitted in one
    batch (one signature-check hand-off), and each caller gets exactly its own outcomes."""
    batches: list[int] = []
    admit_many = NodeRuntime._admit_many

    async def counted(self: NodeRuntime, envelopes: list[Any]) -> list[Any]:
        batches.append(len(envelopes))
        return await admit_many(self, envelopes)

    monkeypatch.setattr(NodeRuntime, "_admit_many", counted)
    monkeypatch.setattr(runtime, "GOSSIP_QUEUED_TXS_MAX", 5)

    async def scenario(net: Network) -> None:
        node = net.start(0)
        await wait_until(lambda: node._queue is not None, 10)
        requests = [[net.envelope(f"lot-{i}-{j}") for j in range(3)] for i in range(20)]
        forged = dict(requests[7][1], signature=requests[7][0]["signature"])
        requests[7][1] = forged
        requests[12].append(requests[3][2])  # also sent by another client, earlier
        gossip = [net.envelope(f"peer-{j}") for j in range(4)]
        cancelled = asyncio.get_running_loop().create_task(node.submit_many([net.envelope("gone")]))
        answers = asyncio.gather(*(node.submit_many(envelopes) for envelopes in requests))
        await asyncio.sleep(0)
        node._on_peer_frame("validator-1", {"type": "txs", "envelopes": gossip})
        # A peer's frame that would queue more gossip than the bound is dropped, counted.
        flood = [net.envelope(f"flood-{j}") for j in range(2)]
        node._on_peer_frame("validator-2", {"type": "txs", "envelopes": flood})
        cancelled.cancel()
        results = await answers
        assert batches == [1 + 61 + 4]
        for envelopes, outcomes in zip(requests, results, strict=True):
            assert len(outcomes) == len(envelopes)
            for envelope, outcome in zip(envelopes, outcomes, strict=True):
                if envelope is forged:
                    assert isinstance(outcome, AdmissionError) and outcome.code == "bad-signature"
                elif envelopes is requests[12] and envelope is requests[3][2]:
                    assert isinstance(outcome, AdmissionError) and outcome.code == "duplicate-tx"
                else:
                    assert outcome == tx_id_of(envelope["body"])
        assert all(tx_id_of(envelope["body"]) in node.mempool for envelope in gossip)
        assert not any(tx_id_of(envelope["body"]) in node.mempool for envelope in flood)
        assert metric(node, "coopledger_frames_dropped_total") == 1
        # A client that went away does not take its transactions back.
        with pytest.raises(asyncio.CancelledError):
            await cancelled
        assert len(node.mempool) == 1 + 59 + 4
        later = net.envelope("later")
        assert await node.submit_many([later]) == [tx_id_of(later["body"])]
        assert batches[-1] == 1
        # A small batch is checked on the loop (SIGNATURE_CHECKS_INLINE_MAX), as strictly.
        other = net.envelope("later-2")
        [refused] = await node.submit_many([dict(other, signature=later["signature"])])
        assert isinstance(refused, AdmissionError) and refused.code == "bad-signature"
        assert tx_id_of(other["body"]) not in node.mempool
        node._on_peer_frame("validator-2", {"type": "txs", "envelopes": flood})
        await wait_until(lambda: all(tx_id_of(e["body"]) in node.mempool for e in flood), 10)
        assert batches[-1] == 2

    run(tmp_path, scenario)


def test_a_failing_batch_is_admitted_again_request_by_request_and_stopping_answers_503(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    batches: list[int] = []
    admit_many = NodeRuntime._admit_many
    gate = asyncio.Event()

    async def faulty(self: NodeRuntime, envelopes: list[Any]) -> list[Any]:
        batches.append(len(envelopes))
        assets = {e["body"]["payload"]["asset_id"] for e in envelopes}
        if "poison" in assets:
            raise RuntimeError("a bug in admission")
        if "slow" in assets:
            await gate.wait()
        return await admit_many(self, envelopes)

    monkeypatch.setattr(NodeRuntime, "_admit_many", faulty)
    monkeypatch.setattr(runtime, "ADMISSION_BATCH_TXS_MAX", 5)

    async def scenario(net: Network) -> None:
        node = net.start(0)
        await wait_until(lambda: node._queue is not None, 10)
        requests = [[net.envelope(f"lot-{i}-{j}") for j in range(2)] for i in range(4)]
        requests[1][1] = net.envelope("poison")
        results = await asyncio.gather(
            *(node.submit_many(envelopes) for envelopes in requests), return_exceptions=True
        )
        # Two requests fit a batch of at most 5; the first batch fails and is admitted
        # again request by request, so only the request holding the poison fails.
        assert batches == [4, 2, 2, 4]
        assert isinstance(results[1], RuntimeError)
        for index in (0, 2, 3):
            assert results[index] == [tx_id_of(e["body"]) for e in requests[index]]
        # Stopping answers whoever still waits, and whoever comes later, with node-stopping.
        waiting = asyncio.get_running_loop().create_task(node.submit_many([net.envelope("slow")]))
        await wait_until(lambda: batches[-1] == 1, 10)
        await net.stop(0)
        for late in (waiting, node.submit_many([net.envelope("late")])):
            with pytest.raises(AdmissionError) as refused:
                await late
            assert refused.value.code == "node-stopping"
        assert node._admission_task is None and not node._admission_queue

    run(tmp_path, scenario)


def test_consensus_timers_are_freed_without_the_cyclic_collector(tmp_path: Path) -> None:
    # Young collections are rare in a node (node/cli_node.py, GC_THRESHOLDS), so a timer
    # that leaves a reference cycle (a closure re-scheduling itself) stays in memory until
    # one runs: every fired timer must be freed by reference counting alone, on each path
    # (a plain timeout; a propose timeout held while the node is idle, then let go).
    generate(tmp_path, validators=4, base_port=free_base_port(8))
    node = NodeRuntime(load_config(tmp_path / "validator-0" / "config.json"))
    fired: list[Any] = []
    idle = [True]
    node._enqueue = fired.append  # type: ignore[method-assign]
    node._idle = lambda: idle[0]  # type: ignore[method-assign]

    def timeout(height: int, kind: TimerKind) -> ScheduleTimeout:
        return ScheduleTimeout(height=Height(height), round=Round(0), kind=kind, duration_ms=1)

    async def scenario() -> int:
        gc.collect()
        gc.disable()
        try:
            for height in range(1, 301):
                node._schedule(timeout(height, TimerKind.PREVOTE))
            for height in range(1, 101):
                node._schedule(timeout(height, TimerKind.PROPOSE))
            await asyncio.sleep(0.2)  # the propose timeouts poll while idle
            assert len(fired) == 300
            idle[0] = False
            await asyncio.sleep(0.2)
            assert len(fired) == 400
            return gc.collect()
        finally:
            gc.enable()

    try:
        unreachable = asyncio.run(scenario())
    finally:
        node.close()
    assert unreachable < 100, f"{unreachable} objects left in cycles by 400 timers"


def test_a_second_process_on_the_same_data_dir_is_refused(tmp_path: Path) -> None:
    """Two instances of one validator could sign conflicting votes: the second must not start."""
    generate(tmp_path, validators=4, base_port=free_base_port(8))
    config = load_config(tmp_path / "validator-0" / "config.json")
    first = NodeRuntime(config)
    with pytest.raises(ConfigError, match="in use by another running node"):
        NodeRuntime(config)
    script = (
        "import sys; from pathlib import Path; from node.config import load_config; "
        "from node.runtime import NodeRuntime; NodeRuntime(load_config(Path(sys.argv[1])))"
    )
    other = subprocess.run(
        [sys.executable, "-c", script, str(config.source)],
        capture_output=True,
        text=True,
        check=False,
    )
    assert other.returncode != 0 and "in use by another running node" in other.stderr
    first.close()
    NodeRuntime(config).close()  # released: the next start succeeds


def test_blocks_shrink_when_validation_gets_slow_and_grow_back() -> None:
    consortium = make_consortium()
    genesis = consortium.genesis
    ledger = Ledger(genesis, MemoryStore(chain_id=genesis.chain_id, genesis_hash=genesis.hash))
    app = LedgerApplication(ledger, Mempool(), lambda h, r: ValidatorId("validator-0"), lambda: 0)
    assert app.block_txs_limit() == genesis.params["block_txs_max"]
    budget_s = genesis.params["timeout_propose_ms"] / 1000 * 0.3
    for _ in range(30):
        app.observe_cost(seconds=2.0, txs=1000)  # 2 ms a transaction: a slow, loaded host
    assert app.block_txs_limit() == int(budget_s / 0.002)
    for _ in range(30):
        app.observe_cost(seconds=100.0, txs=1000)
    assert app.block_txs_limit() == 64  # never below the floor
    for _ in range(60):
        app.observe_cost(seconds=0.02, txs=1000)
    assert app.block_txs_limit() == genesis.params["block_txs_max"]


def test_block_wait_is_read_from_the_config_bounded_and_capped_by_the_propose_timeout(
    tmp_path: Path,
) -> None:
    generate(tmp_path, validators=4, base_port=free_base_port(8))
    path = tmp_path / "validator-0" / "config.json"
    document = orjson.loads(path.read_bytes())
    assert load_config(path).block_wait_ms == 50  # the default
    for value, problem in ((-1, "between 0 and 1000"), (1001, "between"), (True, "integer")):
        with pytest.raises(ConfigError, match=f"block_wait_ms.*{problem}"):
            parse_config({**document, "block_wait_ms": value}, path)
    path.write_bytes(orjson.dumps({**document, "block_wait_ms": 1000}))
    node = NodeRuntime(load_config(path))
    try:
        timeout_propose_ms = node.genesis.params["timeout_propose_ms"]
        assert node._block_wait_s == timeout_propose_ms // 4 / 1000  # a quarter at most
    finally:
        node.close()


def test_a_proposer_lets_a_small_block_fill_until_the_wait_is_over_but_not_a_full_one(
    tmp_path: Path,
) -> None:
    """Under light load a block waits up to ``block_wait_ms`` after the last commit for more
    transactions; once the mempool holds ``BLOCK_TXS_MIN`` it is built at once."""
    net = Network(tmp_path)

    async def main() -> None:
        node = NodeRuntime(load_config(tmp_path / "validator-0" / "config.json"))
        builds: list[float] = []
        node._enqueue = lambda item: builds.append(time.monotonic())  # type: ignore[method-assign]
        node._work = asyncio.Event()
        try:
            for i in range(3):
                await node.submit(net.envelope(f"few-{i}"))
            node._block_wait_s = 0.3
            node._last_commit_monotonic = committed = time.monotonic()
            await node._build_when_there_is_work(Height(1), Round(0), node.validator_id)
            assert len(builds) == 1 and builds[0] - committed >= 0.3

            envelopes = [net.envelope(f"many-{i}") for i in range(runtime.BLOCK_TXS_MIN)]
            for envelope in envelopes:
                await node.submit(envelope)
            node._block_wait_s = 60.0  # would outlast the test: a full block must not wait
            node._last_commit_monotonic = time.monotonic()
            await asyncio.wait_for(
                node._build_when_there_is_work(Height(1), Round(0), node.validator_id), 30
            )
            assert len(builds) == 2
        finally:
            node.close()

    asyncio.run(main())
