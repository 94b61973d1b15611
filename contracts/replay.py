"""Replay of a live ledger onto the contracts: an auditor's check of the validators' engine.

Theory of operation. :class:`Replayer` starts from the consortium's genesis file (the
auditor's trusted source) and walks the committed chain of a running network block by
block, trusting nothing the node says:

1. **Verify.** A fetched block's header must hash to its ``block_hash``, carry the genesis
   chain id, and be certified by a commit of more than two thirds of the genesis validators
   (:func:`node.block.verify_commit`); the listed ``(tx_id, code)`` pairs must give the
   header's ``tx_root`` (so the recorded codes are the ones the validators signed); every
   envelope must hash to its ``tx_id``. A local :class:`~node.ledger.Ledger` on a memory
   store then takes the block as a syncing node does (``apply_synced_block``: prev_hash,
   re-execution, ``tx_root`` and ``state_root``), so the local native state *is* the
   validators' state, proven against their roots. Anything that fails is a
   :class:`~node.errors.ProofError`: the node is not to be believed, and the replay stops.
2. **Replay.** Each transaction is applied, in block order, to the contracts freshly
   deployed on anvil (:class:`~contracts.evm.EvmLedger`, with the ledger ``tx_id``) and to
   a per-transaction copy of the native state (as the differential harness steps both
   engines). The EVM outcome (``ok`` or the revert reason) is compared with the certified
   code, and the records the transaction touched (the keys the native engine read or
   wrote, plus the ids its payload names) with :func:`contracts.differential.compare_step`.

Identity: every member key acts on the EVM from the address :func:`contracts.evm.address_of_key`
gives it (anvil impersonates and funds them), so keys added later by governance need no
set-up. A transaction recorded with ``signer-not-authorized`` has no EVM counterpart (a
call cannot claim another member's id) and is counted as skipped.

Time: the contracts see ``block.timestamp * 1000``, whole seconds, while blocks carry
milliseconds and several blocks may share a second. anvil takes the block's second (never
going back: equal timestamps are allowed), except that a deadline check (``purchase.open``,
``commit``, ``close``) takes the next second when the deadline lies inside the block's
second at or before its time, so both engines see the deadline on the same side. When that
is impossible (an earlier transaction already moved anvil past it) and the outcomes differ,
the divergence says so.
"""

from __future__ import annotations

import hashlib
import logging
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from prometheus_client import CollectorRegistry, Counter, Gauge, start_http_server

from contracts.anvil import Anvil
from contracts.build import Artifact
from contracts.differential import Observation, compare_step, native_records
from contracts.evm import EvmLedger, EvmMember, address_of_key
from gateway.client import Client
from node.block import block_hash, check_header_shape, verify_commit
from node.errors import AdmissionError, ProofError
from node.genesis import Genesis
from node.invariant import invariant
from node.ledger import Ledger
from node.merkle import MerkleTree, tx_leaf
from node.records import StateKey, StateValue
from node.rules import BlockContext, apply_transaction, genesis_state
from node.state import MemoryState
from node.storage import MemoryStore
from node.tx import Transaction, parse_envelope

log = logging.getLogger("coopledger.replay")

EXIT_DIVERGENCE = 3
"""Exit code of ``coopledger contracts replay`` when the engines disagree (2 is an error,
such as a block that does not verify against the genesis file)."""

POLL_INTERVAL_S = 0.5
"""``--follow`` asks the node's status this often: blocks commit in about a second under
load, and a status read costs the node next to nothing."""

ANVIL_HEADROOM_S = 600
"""anvil starts this long before the genesis time, so that deploying the contracts (a few
blocks, well under a minute) leaves anvil's clock before the ledger's first block."""

BALANCE_WEI = 10**24
"""Funds given to each impersonated member address: far more gas than any replay spends."""

DIVERGENCES_KEPT_MAX = 100
"""Divergences listed in a report; after the first, later ones are often its consequences,
so only the count of the rest is kept."""

SKIPPED_CODES = frozenset({"signer-not-authorized"})
"""Native outcomes the contracts cannot express (docs/contracts.md, "Identity")."""

COMPARED_KINDS = ("asset/", "shipment/", "purchase/", "member/", "proposal/")
"""State key kinds both engines hold (docs/contracts.md); ``key/`` and ``registry`` are
native bookkeeping that the contracts keep in another shape."""

NOBODY = address_of_key(hashlib.sha256(b"coopledger:replay:nobody").hexdigest())
"""The address of a non-member whose key governance gave to a member (as the differential
harness's ``nobody``): from the key's own address it would act as that member."""


# --- where blocks come from ----------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class FetchedBlock:
    """A block as a node serves it: nothing here is trusted until :class:`Replayer` checks it."""

    height: int
    block_hash: str
    header: dict[str, Any]
    commit: dict[str, Any]
    tx_ids: list[str]
    codes: list[str]
    envelopes: list[dict[str, Any]]


class BlockSource(Protocol):
    def tip(self) -> int:
        """The height of the last committed block."""
        ...

    def block(self, height: int) -> FetchedBlock: ...


class NodeSource:
    """Blocks from a node's REST API: ``GET /v1/status``, ``/v1/blocks/{height}`` and
    ``/v1/transactions/{tx_id}`` for each envelope."""

    def __init__(self, client: Client) -> None:
        self.client = client

    def chain_id(self) -> str:
        return self.client.status().chain_id

    def tip(self) -> int:
        return self.client.status().height

    def block(self, height: int) -> FetchedBlock:
        view = self.client.block(height)
        txs = sorted(view.txs, key=lambda tx: tx.index)
        envelopes = [self.client.transaction(tx.tx_id).envelope for tx in txs]
        return FetchedBlock(
            height=view.height,
            block_hash=view.block_hash,
            header=view.header,
            commit=view.commit,
            tx_ids=[tx.tx_id for tx in txs],
            codes=[tx.code for tx in txs],
            envelopes=envelopes,
        )


# --- results -------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Divergence:
    height: int
    index: int
    tx_id: str
    type: str
    sender: str
    ledger_code: str
    evm_code: str
    differences: list[str]

    def to_json(self) -> dict[str, Any]:
        return {
            "height": self.height,
            "index": self.index,
            "tx_id": self.tx_id,
            "type": self.type,
            "sender": self.sender,
            "ledger_code": self.ledger_code,
            "evm_code": self.evm_code,
            "differences": self.differences,
        }

    def describe(self) -> str:
        where = f"block {self.height} tx {self.index} ({self.type} by {self.sender})"
        return f"{where} {self.tx_id}: " + "; ".join(self.differences)


@dataclass(frozen=True, slots=True)
class BlockResult:
    height: int
    transactions: int
    skipped: int
    divergences: list[Divergence]


@dataclass
class ReplayReport:
    chain_id: str
    blocks: int = 0
    transactions: int = 0
    skipped: int = 0
    tip: int = 0
    """The last height replayed."""
    divergence_count: int = 0
    divergences: list[Divergence] = field(default_factory=list)
    codes: dict[str, int] = field(default_factory=dict)
    seconds: float = 0.0

    def add(self, result: BlockResult, codes: Sequence[str]) -> None:
        self.blocks += 1
        self.tip = result.height
        self.transactions += result.transactions
        self.skipped += result.skipped
        self.divergence_count += len(result.divergences)
        room = DIVERGENCES_KEPT_MAX - len(self.divergences)
        self.divergences.extend(result.divergences[: max(room, 0)])
        for code in codes:
            self.codes[code] = self.codes.get(code, 0) + 1

    def to_json(self) -> dict[str, Any]:
        return {
            "chain_id": self.chain_id,
            "blocks": self.blocks,
            "transactions": self.transactions,
            "skipped": self.skipped,
            "tip": self.tip,
            "divergence_count": self.divergence_count,
            "divergences": [d.to_json() for d in self.divergences],
            "codes": dict(sorted(self.codes.items())),
            "seconds": round(self.seconds, 3),
        }


# --- the replayer --------------------------------------------------------------------------


class _RecordingState:
    """A view of a :class:`MemoryState` that notes every key the native engine reads or writes."""

    def __init__(self, inner: MemoryState) -> None:
        self.inner = inner
        self.keys: set[StateKey] = set()

    def get(self, key: StateKey) -> StateValue | None:
        self.keys.add(key)
        return self.inner.get(key)

    def put(self, key: StateKey, value: StateValue) -> None:
        self.keys.add(key)
        self.inner.put(key, value)

    def delete(self, key: StateKey) -> None:
        self.keys.add(key)
        self.inner.delete(key)


def evm_members(genesis: Genesis) -> list[EvmMember]:
    """The genesis members, each key acting from its :func:`address_of_key` address."""
    return [
        EvmMember(m.id, m.name, m.roles, tuple(address_of_key(k) for k in m.public_keys))
        for m in genesis.members
    ]


def payload_keys(body: Mapping[str, Any], tx_id: str) -> set[StateKey]:
    """The records a transaction's payload names, whether or not its checks reach them."""
    p = body["payload"]
    asset_ids = [p["asset_id"]] if "asset_id" in p else []
    asset_ids += list(p.get("asset_ids", [])) + list(p.get("inputs", []))
    asset_ids += [output["asset_id"] for output in p.get("outputs", [])]
    keys = {f"asset/{asset_id}" for asset_id in asset_ids}
    for name, kind in (("shipment_id", "shipment"), ("purchase_id", "purchase")):
        if name in p:
            keys.add(f"{kind}/{p[name]}")
    if body["type"] == "member.propose":
        keys.update({f"member/{p['member']['id']}", f"proposal/{tx_id}"})
    if body["type"] == "member.vote":
        keys.add(f"proposal/{p['proposal_id']}")
    return keys


def verify_fetched(genesis: Genesis, fetched: FetchedBlock, height: int) -> list[Transaction]:
    """Check a served block against the genesis alone; its transactions, parsed.

    Raises :class:`ProofError` naming what does not hold.
    """
    header = check_header_shape(fetched.header)
    hash_ = block_hash(header)
    if fetched.height != height or header["height"] != height:
        raise ProofError(f"asked for block {height}, got {fetched.height}/{header['height']}")
    if hash_ != fetched.block_hash:
        raise ProofError(f"block {height}: the header hashes to {hash_}, not {fetched.block_hash}")
    if header["chain_id"] != genesis.chain_id:
        raise ProofError(
            f"block {height} is of chain {header['chain_id']!r}, the genesis file's is "
            f"{genesis.chain_id!r}"
        )
    verify_commit(genesis, fetched.commit, hash_, height)
    count = header["tx_count"]
    if not len(fetched.tx_ids) == len(fetched.codes) == len(fetched.envelopes) == count:
        raise ProofError(f"block {height}: the header counts {count} transactions")
    pairs = zip(fetched.tx_ids, fetched.codes, strict=True)
    leaves = [tx_leaf(tx_id, code) for tx_id, code in pairs]
    if MerkleTree(leaves).root().hex() != header["tx_root"]:
        raise ProofError(f"block {height}: the listed outcomes do not give the header's tx_root")
    txs = []
    for index, (tx_id, envelope) in enumerate(zip(fetched.tx_ids, fetched.envelopes, strict=True)):
        try:
            tx = parse_envelope(envelope)
        except AdmissionError as error:
            raise ProofError(f"block {height} tx {index}: {error}") from error
        if tx.tx_id != tx_id:
            raise ProofError(f"block {height} tx {index}: the envelope is not {tx_id}")
        txs.append(tx)
    return txs


class Replayer:
    """The contracts on anvil and a verified native state, advanced block by block."""

    def __init__(self, genesis: Genesis, evm: EvmLedger) -> None:
        self.genesis = genesis
        self.evm = evm
        self.verifier = Ledger(
            genesis, MemoryStore(chain_id=genesis.chain_id, genesis_hash=genesis.hash)
        )
        self.state = genesis_state(genesis)
        self.anvil_now_s = evm.latest_timestamp_s()
        self._funded: set[str] = set()
        self.evm.rpc("anvil_autoImpersonateAccount", [True])

    @classmethod
    def deploy(
        cls, genesis: Genesis, anvil_url: str, artifacts: dict[str, Artifact] | None = None
    ) -> Replayer:
        return cls(genesis, EvmLedger.deploy(anvil_url, evm_members(genesis), artifacts))

    @property
    def height(self) -> int:
        return self.verifier.height

    def replay(self, fetched: FetchedBlock) -> BlockResult:
        """Verify the next block and replay its transactions; :class:`ProofError` if it fails."""
        height = self.height + 1
        txs = verify_fetched(self.genesis, fetched, height)
        record = self.verifier.apply_synced_block(fetched.header, fetched.envelopes, fetched.commit)
        invariant(
            [tx.code for tx in record.txs] == fetched.codes,
            "re-execution matched tx_root, so it must give the listed codes",
        )
        timestamp_ms = int(fetched.header["timestamp_ms"])
        context = BlockContext(
            chain_id=self.genesis.chain_id, height=height, timestamp_ms=timestamp_ms
        )
        divergences: list[Divergence] = []
        skipped = 0
        for index, (tx, code) in enumerate(zip(txs, fetched.codes, strict=True)):
            if code in SKIPPED_CODES:
                self._apply_native(tx, context, code)
                skipped += 1
                continue
            found = self._replay_tx(tx, context, code)
            if found:
                divergences.append(
                    Divergence(height, index, tx.tx_id, tx.type, tx.sender, code, *found)
                )
        return BlockResult(height, len(txs), skipped, divergences)

    def _apply_native(self, tx: Transaction, context: BlockContext, code: str) -> set[StateKey]:
        recorder = _RecordingState(self.state)
        outcome = apply_transaction(recorder, tx.body, tx.signer, tx.tx_id, context)
        invariant(outcome.code == code, "the verified re-execution gave this code")
        return recorder.keys

    def _replay_tx(
        self, tx: Transaction, context: BlockContext, code: str
    ) -> tuple[str, list[str]] | None:
        """Run one transaction on both sides; ``(evm_code, differences)`` if they differ."""
        from_address = self._from_address(tx.sender, tx.signer)
        seconds, exact = self._seconds_for(tx.body, context.timestamp_ms)
        keys = self._apply_native(tx, context, code) | payload_keys(tx.body, tx.tx_id)
        self._fund(from_address)
        outcome = self.evm.execute(tx.body, from_address, tx.tx_id, seconds)
        self.anvil_now_s = seconds
        compared = sorted(key for key in keys if key.startswith(COMPARED_KINDS))
        differences = compare_step(
            Observation(code, native_records(self.state, compared)),
            Observation(outcome.code, self.evm.records(compared)),
        )
        if not differences:
            return None
        if not exact:
            differences.append(
                f"note: block time {context.timestamp_ms} ms and a deadline fall in one second, "
                f"which the contracts (whole seconds) could not separate here"
            )
        differences = [line.replace("native ", "ledger ", 1) for line in differences]
        return outcome.code, differences

    def _from_address(self, sender: str, signer: str) -> str:
        if self.state.get(f"member/{sender}") is not None:
            return address_of_key(signer)
        if self.state.get(f"key/{signer}") is not None:
            return NOBODY
        return address_of_key(signer)

    def _fund(self, address: str) -> None:
        if address not in self._funded:
            self.evm.rpc("anvil_setBalance", [address, hex(BALANCE_WEI)])
            self._funded.add(address)

    def _seconds_for(self, body: Mapping[str, Any], timestamp_ms: int) -> tuple[int, bool]:
        """anvil's block time for ``body`` and whether it puts any deadline on the right side."""
        floor_s = timestamp_ms // 1000
        deadline = self._deadline_ms(body)
        seconds = floor_s
        if deadline is not None and (deadline <= timestamp_ms) != (deadline <= floor_s * 1000):
            seconds = floor_s + 1
        seconds = max(seconds, self.anvil_now_s)
        exact = deadline is None or (deadline <= seconds * 1000) == (deadline <= timestamp_ms)
        return seconds, exact

    def _deadline_ms(self, body: Mapping[str, Any]) -> int | None:
        kind, payload = body["type"], body["payload"]
        if kind == "purchase.open":
            return int(payload["deadline_ms"])
        if kind in ("purchase.commit", "purchase.close"):
            purchase = self.state.get(f"purchase/{payload['purchase_id']}")
            return None if purchase is None else int(purchase["deadline_ms"])
        return None


# --- driving a replay ----------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Bounds:
    until_height: int | None = None
    max_blocks: int | None = None

    def last_height(self, start: int, tip: int) -> int:
        last = tip if self.until_height is None else min(tip, self.until_height)
        if self.max_blocks is not None:
            last = min(last, start + self.max_blocks)
        return last

    def reached(self, start: int, height: int) -> bool:
        if self.until_height is not None and height >= self.until_height:
            return True
        return self.max_blocks is not None and height - start >= self.max_blocks


def replay_range(
    replayer: Replayer,
    source: BlockSource,
    bounds: Bounds,
    report: ReplayReport,
    on_block: Callable[[BlockResult], None] = lambda result: None,
) -> None:
    """Replay from the replayer's height to the node's tip (within ``bounds``)."""
    started = time.monotonic()
    start = replayer.height
    for height in range(start + 1, bounds.last_height(start, source.tip()) + 1):
        fetched = source.block(height)
        result = replayer.replay(fetched)
        report.add(result, fetched.codes)
        on_block(result)
    report.seconds += time.monotonic() - started


def follow_blocks(
    replayer: Replayer,
    source: BlockSource,
    bounds: Bounds,
    report: ReplayReport,
    on_block: Callable[[BlockResult], None] = lambda result: None,
    *,
    poll_interval_s: float = POLL_INTERVAL_S,
) -> None:
    """Mirror blocks as they commit until the first divergence or the bounds are reached."""
    start = replayer.height
    for _ in _polls(poll_interval_s):
        if bounds.reached(start, replayer.height):
            return
        tip = source.tip()
        while replayer.height < tip and not bounds.reached(start, replayer.height):
            started = time.monotonic()
            fetched = source.block(replayer.height + 1)
            result = replayer.replay(fetched)
            report.add(result, fetched.codes)
            report.seconds += time.monotonic() - started
            on_block(result)
            if result.divergences:
                return


def _polls(interval_s: float) -> Iterator[None]:
    """Yield at once, then once per ``interval_s`` (follow mode runs until told to stop)."""
    while True:
        yielded_at = time.monotonic()
        yield
        time.sleep(max(0.0, interval_s - (time.monotonic() - yielded_at)))


def replay_node(
    node_url: str,
    token: str,
    genesis: Genesis,
    *,
    artifacts: dict[str, Artifact] | None,
    bounds: Bounds,
    follow: bool,
    poll_interval_s: float,
    metrics: ReplayMetrics,
) -> ReplayReport:
    """``coopledger contracts replay``: a fresh anvil, the contracts, then the node's blocks."""
    report = ReplayReport(chain_id=genesis.chain_id)

    def on_block(result: BlockResult) -> None:
        metrics.observe(result)
        if follow:
            log.info(
                "block %d: %d transactions replayed, %d divergences",
                result.height,
                result.transactions,
                len(result.divergences),
            )
        for divergence in result.divergences:
            log.error("divergence: %s", divergence.describe())

    anvil_start_s = genesis.genesis_time_ms // 1000 - ANVIL_HEADROOM_S
    with (
        Client(node_url, token) as client,
        Anvil.start(extra_args=("--timestamp", str(anvil_start_s))) as anvil,
    ):
        source = NodeSource(client)
        served = source.chain_id()
        if served != genesis.chain_id:
            raise ProofError(
                f"the node serves chain {served!r}; the genesis file is {genesis.chain_id!r}'s"
            )
        replayer = Replayer.deploy(genesis, anvil.url, artifacts)
        if follow:
            follow_blocks(
                replayer, source, bounds, report, on_block, poll_interval_s=poll_interval_s
            )
        else:
            replay_range(replayer, source, bounds, report, on_block)
    return report


# --- metrics -------------------------------------------------------------------------------


class ReplayMetrics:
    """``coopledger_replay_*`` on a registry of its own, served by ``--metrics-port``."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self.height = Gauge(
            "coopledger_replay_height", "Height of the last block replayed.", registry=self.registry
        )
        self.transactions = Counter(
            "coopledger_replay_transactions",
            "Transactions replayed onto the contracts.",
            registry=self.registry,
        )
        self.divergences = Counter(
            "coopledger_replay_divergences",
            "Transactions whose outcome or records differ between the ledger and the contracts.",
            registry=self.registry,
        )

    def observe(self, result: BlockResult) -> None:
        self.height.set(result.height)
        self.transactions.inc(result.transactions)
        self.divergences.inc(len(result.divergences))

    def serve(self, port: int) -> None:
        """Serve the metrics on 127.0.0.1:``port`` from a daemon thread."""
        start_http_server(port, addr="127.0.0.1", registry=self.registry)
