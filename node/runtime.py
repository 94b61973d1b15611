"""The validator process: the asyncio runtime around the sans-IO consensus core.

Theory of operation. One event loop is the only writer. Everything that can change the
node (a peer's message, a timer, a client's transaction, a fetched block) becomes an item
on one bounded queue, and :meth:`NodeRuntime._loop` takes them one at a time: consensus
events are stepped into the :class:`~consensus.driver.Driver`, and every ``Ready`` it hands
out is carried out in the order its fields prescribe (etcd raft's ``Ready`` loop):

1. ``commits``: execute and store each decided block (one database transaction each);
2. ``persist``: write the safety record and ``fsync`` it, *before*
3. ``messages``: are broadcast to the peers;
4. ``timeouts``: started on the loop's monotonic clock;
5. ``builds`` / ``validations``: answered by the :class:`LedgerApplication`;
6. ``fetches``: block-sync requests to a peer.

Idle network: the proposer of a new height waits for a transaction (or for the heartbeat
to elapse) before building, and the others hold back their propose timeout while their own
mempool is empty and the heartbeat has not elapsed, so an idle network makes a heartbeat
block and no empty blocks in between. Under load blocks follow each other as fast as the
three message delays of a round allow.

Catch-up: a validator that sees messages from a later height gets ``FetchBlocks`` from the
core; a validator that has committed nothing for a while also probes a peer. Each fetched
block must carry a valid commit and re-execute to exactly its header (``tx_root``,
``state_root``) before it is stepped into the core as ``BlockSynced``; a peer that serves
anything else is disconnected and another peer is asked.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import logging
import os
import random
import signal
import struct
import time
import zlib
from collections import deque
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import uvicorn

from consensus.core import Config, Consensus, Resume
from consensus.driver import Driver, Ready
from consensus.events import (
    BlockBuilt,
    BlockSynced,
    BlockValidated,
    Event,
    Receive,
    ScheduleTimeout,
    Start,
    TimeoutFired,
)
from consensus.messages import Block, Proposal, SignatureVerifier
from consensus.safety import SafetyRecord
from consensus.types import Height, Round, TimerKind, ValidatorId
from gateway.services import NodeStatus, ValidatorStatus
from node.block import Commit, verify_commit
from node.codec import canonical, canonical_trusted, parse_json, splice_list
from node.config import NodeConfig
from node.crypto import KeyPair
from node.errors import AdmissionError, ConfigError, CoopledgerError, EncodingError, ProofError
from node.files import fsync_directory
from node.genesis import Genesis, load_genesis
from node.invariant import invariant
from node.keys import read_key_file
from node.ledger import ExecutedBlock, Ledger
from node.limits import FRAME_BYTES_MAX
from node.mempool import Mempool
from node.metrics import NodeMetrics
from node.storage import CommittedTx, SqlStore
from node.transport import PeerNetwork
from node.tx import Transaction, check_signature, check_window, parse_envelope
from node.wire import (
    GOSSIP_TXS_PER_FRAME_MAX,
    SYNC_BLOCKS_PER_RESPONSE_MAX,
    decode_message,
    decode_sync_request,
    decode_sync_response,
    decode_txs,
    encode_message,
    encode_proposal,
    encode_txs,
    parse_frame,
    sync_request,
)

log = logging.getLogger("coopledger.node")

CLOCK_DRIFT_MS_MAX = 30_000
"""How far ahead of a validator's clock a proposed block's time may be. Validators are
expected to run NTP; 30 s tolerates a badly synchronised host without letting a proposer
push block time (and so transaction expiry and purchase deadlines) far into the future."""

EVENT_QUEUE_MAX = 50_000
"""Items waiting for the event loop; a peer flooding beyond this loses messages, which BFT
tolerates (the core retransmits), rather than growing memory without bound."""

SYNC_RETRY_S = 2.0
"""A sync request that brought no new block within this time goes to another peer."""

SYNC_PROBE_IDLE_S = 3.0
"""A node that committed nothing for this long asks a peer whether it is behind."""

COMMIT_WAIT_S_MAX = 60.0
"""Longest a client may wait for its transaction to commit (``?wait=commit``)."""

GOSSIP_FLUSH_S = 0.02
"""Transactions admitted from clients are gossiped in batches at most this old. Each frame
costs every peer a parse, an admission batch and a socket read whatever it holds; at
1,500 tx/s a 5 ms flush sent each peer about 200 frames a second of two envelopes."""

ADMISSION_BATCH_TXS_MAX = 2_000
"""Most envelopes admitted together: what client requests and peer frames brought while the
previous admission ran, parsed on the loop and signature-checked in one worker-thread call.
Bounded so that parsing one batch holds the event loop for tens of milliseconds at most."""

SIGNATURE_CHECKS_INLINE_MAX = 16
"""A batch with at most this many signatures to check is checked on the loop (under a
millisecond); a larger one in a worker thread. The hand-off costs about as much as a few
checks (a thread wake-up, a future, a GIL hand-over each way), and at 1,500 tx/s most
batches hold one gossip frame or one small client request."""

GOSSIP_QUEUED_TXS_MAX = 20_000
"""Gossiped envelopes waiting for admission beyond which a peer's txs frame is dropped
(counted in ``coopledger_frames_dropped``), so a flooding peer cannot grow the queue without
bound. Gossip is best effort: a dropped transaction reaches this node again only in the
proposal of the validator it was sent to (checked then, during validation) or when its
client resends it. Client requests are bounded by their connections and body limits."""

BLOCK_TIME_BUDGET_SHARE = 0.3
"""Share of the propose timeout that building (and so validating) a block may take: the
proposal must reach the others, be validated and be voted on before their propose timeout."""

BLOCK_TXS_MIN = 64
"""Adaptive sizing never shrinks a block below this: progress even on a very slow host."""

COST_SMOOTHING = 0.2
"""Weight of the newest block in the moving average of seconds per transaction."""


def wall_clock_ms() -> int:
    return time.time_ns() // 1_000_000


def _signatures_valid(txs: list[Transaction]) -> list[bool]:
    """Strict signature checks of ``txs`` (pure: safe to run in a worker thread)."""
    valid = []
    for tx in txs:
        try:
            check_signature(tx)
        except AdmissionError:
            valid.append(False)
        else:
            valid.append(True)
    return valid


# --- the safety record on disk ---------------------------------------------------------------


class SafetyFile:
    """The consensus safety record, durable before any vote leaves.

    Two slot files in the data directory, ``safety.0`` and ``safety.1``, are written in
    turn, each in place and made durable with one ``fdatasync``: a header (magic, sequence
    number, payload length, CRC-32 of the payload) and the record's canonical JSON. Loading
    takes the valid slot with the higher sequence number. A crash during a write leaves that
    slot torn (its CRC fails) and the other one holding the record before it, which is what
    the validator had signed last: Persist precedes Broadcast, so nothing signed in the torn
    record had left. The next save goes to the slot not holding the newest valid record, so
    that one is never overwritten.

    Why not a temporary file renamed over the old one: that takes two ``fsync`` calls (the
    file, then its directory for the rename), 4.3 ms against 1.1 ms for an in-place
    ``fdatasync`` on the CI machine, and a height saves the record up to three times on its
    critical path (propose, prevote, precommit). A ``safety.json`` from a node of an
    earlier version is read when no slot holds a record, and removed after the first save.
    """

    SLOT_NAMES = ("safety.0", "safety.1")
    LEGACY_NAME = "safety.json"

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.slots = tuple(directory / name for name in self.SLOT_NAMES)
        self.legacy = directory / self.LEGACY_NAME
        self._sequence = 0
        self._newest = 0
        """Index of the slot holding the newest valid record; the next save goes to the other."""
        self._legacy_removed = False
        self._fds: tuple[int, int] | None = None

    def load(self) -> SafetyRecord | None:
        newest: tuple[int, bytes, int] | None = None
        torn: list[Path] = []
        for index, path in enumerate(self.slots):
            try:
                data = path.read_bytes()
            except FileNotFoundError:
                continue
            slot = read_slot(data)
            if slot is None:
                if data:
                    torn.append(path)
                continue
            if newest is None or slot[0] > newest[0]:
                newest = (slot[0], slot[1], index)
        if newest is None:
            if len(torn) == len(self.slots):
                # One write at a time can be torn, never both slots: this is not a crash.
                raise ConfigError(str(self.directory), "$", "corrupt safety record: no valid slot")
            return self._load_legacy()
        sequence, payload, index = newest
        self._sequence, self._newest = sequence, index
        path = self.slots[index]
        try:
            return SafetyRecord.from_json(parse_json(payload, what=str(path)))
        except EncodingError as error:
            raise ConfigError(str(path), "$", f"corrupt safety record: {error}") from error

    def _load_legacy(self) -> SafetyRecord | None:
        try:
            data = self.legacy.read_bytes()
        except FileNotFoundError:
            return None
        try:
            return SafetyRecord.from_json(parse_json(data, what=str(self.legacy)))
        except EncodingError as error:
            raise ConfigError(str(self.legacy), "$", f"corrupt safety record: {error}") from error

    def save(self, record: SafetyRecord, locked_envelopes: Sequence[bytes] = ()) -> None:
        """Write ``record`` durably; ``locked_envelopes`` are the canonical bytes of its
        locked block's envelopes (spliced in, not encoded again)."""
        locked = record.locked_block
        invariant(
            len(locked_envelopes) == (0 if locked is None else len(locked.transactions)),
            "one encoding per envelope of the locked block",
        )
        # The record holds what the consensus core checked (votes, a validated block), so
        # it is encoded without a domain walk, and a locked block's thousands of envelopes
        # go in as the bytes they were admitted as.
        value = record.to_json()
        if value["locked_block"] is None:
            data = canonical_trusted(value)
        else:
            value["locked_block"]["transactions"] = []
            data = splice_list(canonical_trusted(value), "transactions", locked_envelopes)
        sequence, target = self._sequence + 1, 1 - self._newest
        fd = self._open()[target]
        _write_all(fd, encode_slot(sequence, data))
        os.fdatasync(fd)
        self._sequence, self._newest = sequence, target
        if not self._legacy_removed:
            self.legacy.unlink(missing_ok=True)
            self._legacy_removed = True

    def _open(self) -> tuple[int, int]:
        if self._fds is None:
            created = not all(path.exists() for path in self.slots)
            self._fds = (
                os.open(self.slots[0], os.O_RDWR | os.O_CREAT, 0o644),
                os.open(self.slots[1], os.O_RDWR | os.O_CREAT, 0o644),
            )
            if created:
                fsync_directory(self.directory)
        return self._fds

    def close(self) -> None:
        if self._fds is not None:
            for fd in self._fds:
                os.close(fd)
            self._fds = None


_SLOT_MAGIC = b"coopsafe"
_SLOT_HEAD = struct.Struct("<8sQII")
"""A slot's header: magic, sequence number, payload length, CRC-32 of the payload."""


def encode_slot(sequence: int, payload: bytes) -> bytes:
    """A slot's bytes: its header, then ``payload``."""
    return _SLOT_HEAD.pack(_SLOT_MAGIC, sequence, len(payload), zlib.crc32(payload)) + payload


def read_slot(data: bytes) -> tuple[int, bytes] | None:
    """``(sequence, payload)`` of a slot written whole, else ``None`` (empty or torn)."""
    if len(data) < _SLOT_HEAD.size:
        return None
    magic, sequence, length, crc = _SLOT_HEAD.unpack_from(data)
    payload = data[_SLOT_HEAD.size : _SLOT_HEAD.size + length]
    if magic != _SLOT_MAGIC or len(payload) != length or zlib.crc32(payload) != crc:
        return None
    return sequence, payload


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    offset = 0
    while offset < len(view):
        offset += os.pwrite(fd, view[offset:], offset)


class DataDirLock:
    """An exclusive lock on the data directory for the life of the process.

    Two processes running one validator (one key, one safety record) could sign
    conflicting votes: the second to start is refused with a clear error. The kernel
    releases the lock when the process dies, so a kill -9 leaves nothing stale.
    """

    def __init__(self, path: Path) -> None:
        self._handle = open(path, "a+b")  # noqa: SIM115 - held for the process's life
        try:
            fcntl.flock(self._handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError as error:
            self._handle.close()
            raise ConfigError(
                str(path.parent), "data_dir", "is in use by another running node (node.lock)"
            ) from error

    def release(self) -> None:
        if not self._handle.closed:
            fcntl.flock(self._handle.fileno(), fcntl.LOCK_UN)
            self._handle.close()


# --- the application consensus drives ------------------------------------------------------


class LedgerApplication:
    """The ledger as the consensus core sees it: build, validate and commit blocks."""

    def __init__(
        self,
        ledger: Ledger,
        mempool: Mempool,
        proposer_of: Callable[[Height, Round], ValidatorId],
        clock_ms: Callable[[], int],
    ) -> None:
        self.ledger = ledger
        self.mempool = mempool
        self._proposer_of = proposer_of
        self._clock_ms = clock_ms
        self._executed: dict[str, ExecutedBlock] = {}
        self.metrics: NodeMetrics | None = None
        params = ledger.genesis.params
        self.block_txs_max = params["block_txs_max"]
        self.block_bytes_max = params["block_bytes_max"]
        self._budget_s = params["timeout_propose_ms"] / 1000 * BLOCK_TIME_BUDGET_SHARE
        self._seconds_per_tx = 0.0
        """Moving average of building or validating a block, per transaction, on this node."""

    def observe_cost(self, seconds: float, txs: int) -> None:
        if txs:
            sample = seconds / txs
            previous = self._seconds_per_tx or sample
            self._seconds_per_tx = previous + COST_SMOOTHING * (sample - previous)

    def block_txs_limit(self) -> int:
        """Adaptive block size: as many transactions as fit the time budget, within bounds."""
        if self._seconds_per_tx <= 0:
            return self.block_txs_max
        fitting = int(self._budget_s / self._seconds_per_tx)
        return max(BLOCK_TXS_MIN, min(self.block_txs_max, fitting))

    def _execute(self, txs: list[Transaction], header_fields: dict[str, Any]) -> ExecutedBlock:
        started = time.perf_counter()
        executed = self.ledger.execute(
            txs,
            timestamp_ms=header_fields["timestamp_ms"],
            proposer=header_fields["proposer"],
            round_=header_fields["round"],
        )
        if self.metrics is not None:
            self.metrics.block_execution.observe(time.perf_counter() - started)
        return executed

    def encoded_envelopes(self, block: Block) -> list[bytes]:
        """The canonical bytes of ``block``'s envelopes: of the transactions this node
        executed for that block hash when it built or validated it (as it has every block
        it proposes or locks), spliced from their admitted bytes; else encoded now. The
        executed transactions have the block's tx ids, and the proposal's envelopes were
        matched to them byte for byte (``Mempool.known``) or parsed from them."""
        executed = self._executed.get(block.hash)
        if executed is not None:
            return [tx.envelope_bytes for tx in executed.txs]
        return [canonical(envelope) for envelope in block.transactions]

    def _parse(self, block: Block) -> list[Transaction]:
        """The block's transactions, reusing those this node already admitted."""
        known = self.mempool.known
        return [known(envelope) or parse_envelope(envelope) for envelope in block.transactions]

    def build_block(self, height: Height, round_: Round, proposer: ValidatorId) -> Block:
        invariant(height == self.ledger.height + 1, "build at the next height only")
        started = time.perf_counter()
        timestamp = max(self._clock_ms(), self.ledger.last_timestamp_ms + 1)
        candidates = self.mempool.reap(self.block_txs_limit(), self.block_bytes_max)
        txs: list[Transaction] = []
        stale: list[str] = []
        committed = self.ledger.committed_among(candidates)
        for tx in candidates:
            try:
                check_window(tx, self.ledger.genesis.chain_id, timestamp)
            except AdmissionError:
                stale.append(tx.tx_id)
                continue
            if tx.tx_id in committed:
                stale.append(tx.tx_id)
                continue
            txs.append(tx)
        self.mempool.remove(stale)
        executed = self._execute(
            txs, {"timestamp_ms": timestamp, "proposer": proposer, "round": round_}
        )
        self._executed[executed.block_hash] = executed
        self.observe_cost(time.perf_counter() - started, len(txs))
        return Block(header=executed.header, transactions=tuple(tx.envelope for tx in txs))

    def validate_block(self, block: Block) -> bool:
        if block.hash in self._executed:
            return True
        try:
            self._execute_exactly(block)
        except (CoopledgerError, KeyError, TypeError) as error:
            log.info("block %s at height %s refused: %s", block.hash[:12], block.height, error)
            return False
        return True

    def _execute_exactly(self, block: Block) -> ExecutedBlock:
        """Re-execute ``block`` and require the same header; raise on any difference."""
        started = time.perf_counter()
        header = block.header
        if header["chain_id"] != self.ledger.genesis.chain_id:
            raise ProofError("block of another chain")
        if header["height"] != self.ledger.height + 1:
            raise ProofError(f"block height {header['height']} is not {self.ledger.height + 1}")
        if header["prev_hash"] != self.ledger.last_block_hash:
            raise ProofError("block does not extend the last committed block")
        if header["proposer"] != self._proposer_of(
            Height(header["height"]), Round(header["round"])
        ):
            raise ProofError("block names another proposer than the round's")
        if header["timestamp_ms"] > self._clock_ms() + CLOCK_DRIFT_MS_MAX:
            raise ProofError("block time is too far in the future")
        txs = self._parse(block)
        executed = self._execute(txs, dict(header))
        if executed.header != header:
            raise ProofError("re-execution gives another header (tx_root or state_root)")
        self._executed[executed.block_hash] = executed
        self.observe_cost(time.perf_counter() - started, len(txs))
        return executed

    def check_synced(self, block: Block, commit: dict[str, Any]) -> Commit:
        """A fetched block: its commit is valid and it re-executes to its header."""
        certificate = verify_commit(self.ledger.genesis, commit, block.hash, self.ledger.height + 1)
        if block.hash not in self._executed:
            header = block.header
            txs = self._parse(block)
            executed = self._execute(txs, dict(header))
            if executed.header != header:
                raise ProofError("fetched block does not re-execute to its header")
            self._executed[executed.block_hash] = executed
        return certificate

    async def commit_block(self, block: Block, commit: Commit) -> ExecutedBlock:
        """Execute (if not yet) and store the decided block. The database write runs in a
        worker thread (SQLite and psycopg release the GIL), so peer traffic and client
        requests go on meanwhile; nothing else executes or commits until it returns."""
        executed = self._executed.get(block.hash)
        if executed is None:
            executed = self._execute_exactly(block)
        started = time.perf_counter()
        record = self.ledger.prepare_commit(executed, commit)
        await asyncio.to_thread(self.ledger.store.commit_block, record)
        self.ledger.finish_commit(executed)
        if self.metrics is not None:
            self.metrics.block_storage.observe(time.perf_counter() - started)
        self._executed.clear()
        self.mempool.remove(tx.tx_id for tx in executed.txs)
        self.mempool.prune(self.ledger.last_timestamp_ms)
        return executed


# --- the runtime -----------------------------------------------------------------------------

QueueItem = Event | Callable[[], Awaitable[None]]


@dataclass(frozen=True, slots=True)
class _Admission:
    """Envelopes waiting for admission, and where their outcomes go (``None``: gossip,
    which nobody waits for)."""

    envelopes: list[Any]
    future: asyncio.Future[list[Transaction | AdmissionError]] | None

    def fail(self, error: Exception) -> None:
        if self.future is not None and not self.future.done():
            self.future.set_exception(error)


def _stopping() -> AdmissionError:
    return AdmissionError("node-stopping", "this node is stopping; send it to another node")


@dataclass(slots=True)
class _Sync:
    peer: str
    from_height: int
    asked_at: float


class NodeRuntime:
    """One validator: consensus, ledger, mempool, peers and the gateway's services."""

    def __init__(self, config: NodeConfig, *, clock_ms: Callable[[], int] = wall_clock_ms):
        self.config = config
        self._genesis = load_genesis(config.genesis)
        key_file = read_key_file(config.key_file)
        validator = self._genesis.validator(config.validator_id)
        if validator is None:
            raise ConfigError(str(config.source), "validator_id", "not a validator in genesis")
        if key_file.public_key != validator.public_key:
            raise ConfigError(str(config.key_file), "public_key", "is not the genesis key")
        self.validator_id = ValidatorId(config.validator_id)
        self.key_pair = key_file.key_pair
        self._member_keys: dict[str, KeyPair] = {}
        for member_id, path in config.member_keys.items():
            member_key = read_key_file(path)
            if member_key.id != member_id:
                raise ConfigError(str(path), "id", f"is {member_key.id!r}, not {member_id!r}")
            self._member_keys[member_id] = member_key.key_pair
        config.data_dir.mkdir(parents=True, exist_ok=True)
        self._lock = DataDirLock(config.data_dir / "node.lock")
        self._clock_ms = clock_ms
        store = SqlStore(
            config.database, chain_id=self._genesis.chain_id, genesis_hash=self._genesis.hash
        )
        self._ledger = Ledger(self._genesis, store)
        self._check_tip()
        self.mempool = Mempool(txs_max=config.mempool_txs_max)
        self._safety = SafetyFile(config.data_dir)
        verifier = SignatureVerifier(
            self._genesis.chain_id, {v.id: v.public_key for v in self._genesis.validators}
        )
        self.core = Consensus(
            Config.from_genesis(self._genesis, self.validator_id),
            self.key_pair,
            verifier,
            Resume(height=Height(self._ledger.height + 1), record=self._safety.load()),
        )
        self.driver = Driver(self.core)
        self.application = LedgerApplication(
            self._ledger, self.mempool, self.core.proposer, clock_ms
        )
        self._rng = random.Random(int.from_bytes(os.urandom(8), "big"))
        addresses = dict(config.peers)
        self.network = PeerNetwork(
            self._genesis,
            config.validator_id,
            self.key_pair,
            config.peer_listen[0],
            config.peer_listen[1],
            on_message=self._on_peer_frame,
            rng=self._rng,
            addresses=addresses,
            parse_frame=parse_frame,
        )
        self._queue: asyncio.Queue[QueueItem] | None = None
        self._stopping: asyncio.Event | None = None
        self._work: asyncio.Event | None = None
        self._commit_waiters: dict[str, list[asyncio.Future[None]]] = {}
        self._last_commit_monotonic = time.monotonic()
        self._block_wait_s = (
            min(config.block_wait_ms, self._genesis.params["timeout_propose_ms"] // 4) / 1000
        )
        """How long after the last commit a block of fewer than ``BLOCK_TXS_MIN`` waits to fill."""
        self._sync: _Sync | None = None
        self._peer_heights: dict[str, int] = {}
        self._gossip_buffer: list[bytes] = []
        self._background: set[asyncio.Task[Any]] = set()
        self._admission_queue: deque[_Admission] = deque()
        self._gossip_queued = 0
        """Envelopes from peers' txs frames in :attr:`_admission_queue`."""
        self._admission_task: asyncio.Task[None] | None = None
        self._gossip_scheduled = False
        self._position: tuple[int, int, int] = (0, -1, 0)
        self.metrics = NodeMetrics()
        self.metrics.bind(
            height=lambda: self._ledger.height,
            mempool_txs=lambda: len(self.mempool),
            mempool_bytes=lambda: self.mempool.size_bytes,
            peers_connected=lambda: len(self.network.connected_peers()),
            sync_target_height=lambda: max([self._ledger.height, *self._peer_heights.values()]),
        )
        self.application.metrics = self.metrics
        self._height_started = time.monotonic()

    # --- start-up checks ---------------------------------------------------------------------

    def _check_tip(self) -> None:
        """Verify the stored chain tip (hash and commit) before joining consensus."""
        tip = self._ledger.store.tip()
        if tip is None:
            return
        verify_commit(self._genesis, tip.commit, tip.block_hash, tip.height)
        log.info("chain tip verified: height %s, block %s", tip.height, tip.block_hash[:16])

    # --- NodeServices -----------------------------------------------------------------------

    @property
    def genesis(self) -> Genesis:
        return self._genesis

    @property
    def ledger(self) -> Ledger:
        return self._ledger

    async def submit(self, envelope: dict[str, Any]) -> str:
        (outcome,) = await self.submit_many([envelope])
        if isinstance(outcome, AdmissionError):
            raise outcome
        return outcome

    async def submit_many(self, envelopes: list[Any]) -> list[str | AdmissionError]:
        future: asyncio.Future[list[Transaction | AdmissionError]] = (
            asyncio.get_running_loop().create_future()
        )
        self._queue_admission(_Admission(envelopes, future))
        outcomes = await future
        return [o.tx_id if isinstance(o, Transaction) else o for o in outcomes]

    async def wait_committed(self, tx_id: str, timeout_s: float) -> CommittedTx | None:
        committed = self._ledger.store.tx(tx_id)
        if committed is not None:
            return committed
        loop = asyncio.get_running_loop()
        future: asyncio.Future[None] = loop.create_future()
        self._commit_waiters.setdefault(tx_id, []).append(future)
        try:
            await asyncio.wait_for(future, min(timeout_s, COMMIT_WAIT_S_MAX))
        except TimeoutError:
            return None
        finally:
            waiters = self._commit_waiters.get(tx_id, [])
            if future in waiters:
                waiters.remove(future)
            if not waiters:
                self._commit_waiters.pop(tx_id, None)
        return self._ledger.store.tx(tx_id)

    def member_key(self, member_id: str) -> KeyPair | None:
        return self._member_keys.get(member_id)

    def metrics_exposition(self) -> bytes:
        return self.metrics.exposition()

    def status(self) -> NodeStatus:
        connected = self.network.connected_peers()
        return NodeStatus(
            chain_id=self._genesis.chain_id,
            node_id=self.validator_id,
            height=self._ledger.height,
            last_block_hash=self._ledger.last_block_hash,
            last_block_time_ms=self._ledger.last_timestamp_ms,
            mempool_txs=len(self.mempool),
            mempool_bytes=self.mempool.size_bytes,
            validators=tuple(
                ValidatorStatus(
                    id=v.id,
                    address=v.address,
                    connected=v.id == self.validator_id or v.id in connected,
                    height=self._ledger.height
                    if v.id == self.validator_id
                    else self._peer_heights.get(v.id),
                )
                for v in self._genesis.validators
            ),
        )

    # --- admission and gossip ---------------------------------------------------------------

    def _queue_admission(self, admission: _Admission) -> None:
        if self._stopping is not None and self._stopping.is_set():
            admission.fail(_stopping())
            return
        if admission.future is None:
            self._gossip_queued += len(admission.envelopes)
        self._admission_queue.append(admission)
        if self._admission_task is None or self._admission_task.done():
            task = asyncio.get_running_loop().create_task(self._admit_queued())
            self._admission_task = task
            self._background.add(task)
            task.add_done_callback(self._admission_ended)

    def _admission_ended(self, task: asyncio.Task[None]) -> None:
        self._background.discard(task)
        if self._admission_task is not task:
            return  # a newer task owns the queue
        self._admission_task = None
        # Cancelled: the node is stopping (perhaps before the task ever ran). An exception
        # that is not an Exception (those fail their batch's requests only) ends it too.
        if task.cancelled() or task.exception() is not None:
            if not task.cancelled():
                log.error("admission stopped", exc_info=task.exception())
            for admission in self._admission_queue:
                admission.fail(_stopping())
            self._admission_queue.clear()
            self._gossip_queued = 0

    async def _admit_queued(self) -> None:
        """Admit what is queued, in batches, until nothing is.

        Under load, requests and gossip frames arrive faster than one admission finishes, so
        each batch takes everything that queued meanwhile: one replay lookup and one
        worker-thread hand-off for many envelopes instead of one per request or frame. The
        outcomes are those of admitting the envelopes one by one in arrival order (a
        duplicate of an earlier one is refused, quotas fill in that order).
        """
        queue = self._admission_queue
        while queue:
            taken = [queue.popleft()]
            count = len(taken[0].envelopes)
            while queue and count + len(queue[0].envelopes) <= ADMISSION_BATCH_TXS_MAX:
                count += len(queue[0].envelopes)
                taken.append(queue.popleft())
            self._gossip_queued -= sum(len(a.envelopes) for a in taken if a.future is None)
            try:
                await self._admit_batch(taken)
            except asyncio.CancelledError:
                for admission in taken:
                    admission.fail(_stopping())
                raise
            await asyncio.sleep(0)  # requests and frames get the loop between batches

    async def _admit_batch(self, taken: list[_Admission]) -> None:
        try:
            outcomes = await self._admit_many(
                [envelope for admission in taken for envelope in admission.envelopes]
            )
        except Exception as error:  # a bug or the database: fail requests one at a time
            if len(taken) == 1:
                log.exception("admission of %s envelopes failed", len(taken[0].envelopes))
                taken[0].fail(error)
                return
            for admission in taken:
                await self._admit_batch([admission])
            return
        start = 0
        for admission in taken:
            end = start + len(admission.envelopes)
            if admission.future is not None:
                # A client's transactions are relayed even if the client has gone away.
                for outcome in outcomes[start:end]:
                    if isinstance(outcome, Transaction):
                        self._gossip(outcome)
                if not admission.future.done():
                    admission.future.set_result(outcomes[start:end])
            start = end

    async def _admit_many(self, envelopes: list[Any]) -> list[Transaction | AdmissionError]:
        """Admit each envelope or say why not, checking the signatures of a large batch in a
        worker thread (a small one on the loop: ``SIGNATURE_CHECKS_INLINE_MAX``).

        libsodium releases the GIL, so a batch's signature checks run on another core while
        this loop goes on with consensus; everything that reads or changes the ledger, the
        mempool or the metrics stays on the loop.
        """
        now_ms = self._clock_ms()
        outcomes: list[Transaction | AdmissionError] = []
        unchecked: list[Transaction] = []
        for parsed in self._ledger.admit_unsigned_many(envelopes, now_ms):
            outcome: Transaction | AdmissionError = parsed
            if isinstance(parsed, Transaction) and parsed.tx_id in self.mempool:
                outcome = AdmissionError("duplicate-tx", "already pending")
            outcomes.append(outcome)
            if isinstance(outcome, Transaction) and not self._ledger.is_verified(outcome):
                unchecked.append(outcome)
        if unchecked:
            if len(unchecked) <= SIGNATURE_CHECKS_INLINE_MAX:
                valid = _signatures_valid(unchecked)
            else:
                valid = await asyncio.to_thread(_signatures_valid, unchecked)
            for tx, ok in zip(unchecked, valid, strict=True):
                if ok:
                    self._ledger.record_verified(tx)
        for position, outcome in enumerate(outcomes):
            if not isinstance(outcome, Transaction):
                continue
            try:
                if not self._ledger.is_verified(outcome):
                    raise AdmissionError("bad-signature", "signature does not verify")
                self._ledger.admit_member(outcome)
                self.mempool.add(outcome)
            except AdmissionError as error:
                outcomes[position] = error
        for outcome in outcomes:
            if isinstance(outcome, AdmissionError):
                self.metrics.txs_rejected.labels(outcome.code).inc()
            else:
                self.metrics.txs_admitted.inc()
        if self._work is not None and any(isinstance(o, Transaction) for o in outcomes):
            self._work.set()
        return outcomes

    def _gossip(self, tx: Transaction) -> None:
        self._gossip_buffer.append(tx.envelope_bytes)
        if len(self._gossip_buffer) >= GOSSIP_TXS_PER_FRAME_MAX:
            self._flush_gossip()
        elif not self._gossip_scheduled:
            self._gossip_scheduled = True
            asyncio.get_running_loop().call_later(GOSSIP_FLUSH_S, self._flush_gossip)

    def _flush_gossip(self) -> None:
        self._gossip_scheduled = False
        if self._gossip_buffer:
            envelopes, self._gossip_buffer = self._gossip_buffer, []
            self.network.broadcast_payload(encode_txs(envelopes))

    # --- peer frames --------------------------------------------------------------------------

    def _on_peer_frame(self, peer: str, frame: dict[str, Any]) -> None:
        kind = frame.get("type")
        try:
            if kind in ("proposal", "prevote", "precommit"):
                message = decode_message(frame)
                self._peer_heights[peer] = max(self._peer_heights.get(peer, 0), message.height - 1)
                self._enqueue(Receive(message=message))
            elif kind == "txs":
                envelopes = decode_txs(frame)
                if self._gossip_queued + len(envelopes) > GOSSIP_QUEUED_TXS_MAX:
                    self.metrics.frames_dropped.inc()
                else:
                    self._queue_admission(_Admission(envelopes, None))
            elif kind == "sync_request":
                from_height, count = decode_sync_request(frame)
                self._serve_sync(peer, from_height, count)
            elif kind == "sync_response":
                blocks = decode_sync_response(frame)
                self._enqueue(lambda: self._apply_synced(peer, blocks))
            else:
                raise EncodingError(f"unknown frame type {kind!r}")
        except EncodingError as error:
            # An authenticated validator sending frames that do not decode is faulty (or
            # runs an incompatible version): drop the frame and the link; it may redial.
            self.metrics.frames_dropped.inc()
            log.warning("dropped a bad frame from %s and disconnected it: %s", peer, error)
            self.network.disconnect(peer, f"bad frame: {error}")

    def _enqueue(self, item: QueueItem) -> None:
        if self._queue is None:
            return
        try:
            self._queue.put_nowait(item)
        except asyncio.QueueFull:
            self.metrics.frames_dropped.inc()

    # --- block sync -----------------------------------------------------------------------------

    def _serve_sync(self, peer: str, from_height: int, count: int) -> None:
        store = self._ledger.store
        blocks: list[dict[str, Any]] = []
        size = 0
        for height in range(from_height, min(self._ledger.height, from_height + count - 1) + 1):
            stored = store.block(height)
            if stored is None:
                break
            entry = {
                "header": dict(stored.header),
                "transactions": [record.envelope for record in store.block_txs(height)],
                "commit": dict(stored.commit),
            }
            entry_size = len(canonical(entry))
            if blocks and size + entry_size > FRAME_BYTES_MAX // 2:
                break
            blocks.append(entry)
            size += entry_size
        self.network.send(peer, {"type": "sync_response", "blocks": blocks})

    def _request_sync(self, peer: str, from_height: int) -> None:
        self._sync = _Sync(peer, from_height, time.monotonic())
        self.network.send(peer, sync_request(from_height, SYNC_BLOCKS_PER_RESPONSE_MAX))

    async def _apply_synced(self, peer: str, blocks: list[tuple[Block, dict[str, Any]]]) -> None:
        applied = 0
        for block, commit in blocks:
            if block.height <= self._ledger.height:
                continue
            if block.height != self._ledger.height + 1:
                break
            try:
                certificate = self.application.check_synced(block, commit)
            except (CoopledgerError, KeyError, TypeError) as error:
                self.metrics.bad_peer_blocks.inc()
                log.warning("peer %s served a bad block %s: %s", peer, block.height, error)
                self.network.disconnect(peer, f"bad block: {error}")
                self._retry_sync(exclude=peer)
                return
            self.driver.step(BlockSynced(block=block, commit=certificate))
            await self._drain()
            self.metrics.sync_blocks.inc()
            applied += 1
        if applied and blocks:
            self._peer_heights[peer] = max(self._peer_heights.get(peer, 0), blocks[-1][0].height)
            if len(blocks) == SYNC_BLOCKS_PER_RESPONSE_MAX:
                self._request_sync(peer, self._ledger.height + 1)
            else:
                self._sync = None

    def _retry_sync(self, exclude: str | None = None) -> None:
        peers = sorted(
            self.network.connected_peers() - {exclude}
            if exclude
            else self.network.connected_peers()
        )
        if peers:
            self._request_sync(self._rng.choice(peers), self._ledger.height + 1)

    async def _sync_watchdog(self) -> None:
        """Re-ask a silent sync peer, and probe when nothing has committed for a while."""
        assert self._stopping is not None
        while not self._stopping.is_set():
            await asyncio.sleep(0.5)
            now = time.monotonic()
            if self._sync is not None and now - self._sync.asked_at > SYNC_RETRY_S:
                self._retry_sync(exclude=self._sync.peer)
            elif self._sync is None and now - self._last_commit_monotonic > SYNC_PROBE_IDLE_S:
                self._retry_sync()
                self._last_commit_monotonic = now - SYNC_PROBE_IDLE_S / 2

    # --- the loop ---------------------------------------------------------------------------------

    def _idle(self) -> bool:
        heartbeat_s = self._genesis.params["heartbeat_ms"] / 1000
        recent = time.monotonic() - self._last_commit_monotonic < heartbeat_s
        return recent and len(self.mempool) == 0

    def _schedule(self, timeout: ScheduleTimeout) -> None:
        asyncio.get_running_loop().call_later(
            timeout.duration_ms / 1000, self._fire, timeout, False
        )

    def _fire(self, timeout: ScheduleTimeout, postponed: bool) -> None:
        # A method, not a closure that re-schedules itself: such a closure refers to itself
        # through its cell, so every timer left a reference cycle that only the cyclic
        # collector reclaims, and a node runs it rarely (node/cli_node.py, GC_THRESHOLDS).
        if timeout.kind == TimerKind.PROPOSE:
            loop = asyncio.get_running_loop()
            if self._idle():
                loop.call_later(0.05, self._fire, timeout, True)
                return
            if postponed:
                # Work just appeared: give the proposer the whole propose timeout to
                # build and broadcast, as if the round had started now.
                loop.call_later(timeout.duration_ms / 1000, self._fire, timeout, False)
                return
        self._enqueue(TimeoutFired(height=timeout.height, round=timeout.round, kind=timeout.kind))

    async def _build_when_there_is_work(
        self, height: Height, round_: Round, proposer: ValidatorId
    ) -> None:
        assert self._work is not None
        heartbeat_s = self._genesis.params["heartbeat_ms"] / 1000
        remaining = heartbeat_s - (time.monotonic() - self._last_commit_monotonic)
        if len(self.mempool) == 0 and remaining > 0:
            self._work.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._work.wait(), remaining)
        # Light load: let the block fill for a moment instead of committing a block for
        # every few transactions, each costing every validator a round of votes, a database
        # commit and its fsyncs (docs/architecture.md, "Validator runtime").
        remaining = self._block_wait_s - (time.monotonic() - self._last_commit_monotonic)
        if remaining > 0 and len(self.mempool) < BLOCK_TXS_MIN:
            await asyncio.sleep(remaining)

        async def build() -> None:
            if self.core.height != height or self._ledger.height + 1 != height:
                return
            block = self.application.build_block(height, round_, proposer)
            self.driver.step(BlockBuilt(height=height, round=round_, block=block))
            await self._drain()

        self._enqueue(build)

    async def _handle(self, ready: Ready) -> None:
        for decided in ready.commits:
            executed = await self.application.commit_block(decided.block, decided.commit)
            self._after_commit(executed)
        if ready.persist is not None:
            locked = ready.persist.locked_block
            self._safety.save(
                ready.persist, () if locked is None else self.application.encoded_envelopes(locked)
            )
        for message in ready.messages:
            if isinstance(message, Proposal):
                try:
                    envelopes = self.application.encoded_envelopes(message.block)
                except EncodingError as error:
                    # Another validator's proposal, refused when validated: peer frames
                    # leave envelopes to validation (node.wire.parse_frame), so they may not
                    # be canonical JSON. It is not relayed.
                    log.info("not relaying proposal %s: %s", message.block.hash[:12], error)
                    continue
                self.network.broadcast_payload(encode_proposal(message, envelopes))
            else:
                self.network.broadcast(encode_message(message))
        for timeout in ready.timeouts:
            self._schedule(timeout)
        for build in ready.builds:
            asyncio.get_running_loop().create_task(
                self._build_when_there_is_work(build.height, build.round, build.proposer)
            )
        for validation in ready.validations:
            valid = self.application.validate_block(validation.block)
            self.driver.step(
                BlockValidated(
                    height=validation.height, block_hash=validation.block.hash, valid=valid
                )
            )
        for fetch in ready.fetches:
            if self._sync is None or time.monotonic() - self._sync.asked_at > SYNC_RETRY_S:
                self._request_sync(fetch.peer, self._ledger.height + 1)

    def _after_commit(self, executed: ExecutedBlock) -> None:
        self._last_commit_monotonic = time.monotonic()
        self.metrics.blocks_committed.inc()
        self.metrics.txs_committed.inc(len(executed.txs))
        self.metrics.rounds_per_height.observe(executed.header["round"] + 1)
        self.metrics.commit_latency.observe(self._last_commit_monotonic - self._height_started)
        log.info(
            "committed height=%s round=%s txs=%s block=%s",
            executed.height,
            executed.header["round"],
            len(executed.txs),
            executed.block_hash[:16],
        )
        for tx in executed.txs:
            for future in self._commit_waiters.pop(tx.tx_id, []):
                if not future.done():
                    future.set_result(None)

    async def _drain(self) -> None:
        while self.driver.has_ready():
            ready = self.driver.ready()
            await self._handle(ready)
            self.driver.advance(ready)
        position = (self.core.height, self.core.round, int(self.core.step_))
        if position != self._position:
            if position[0] != self._position[0]:
                self._height_started = time.monotonic()
            self._position = position
            log.info(
                "step node=%s height=%s round=%s step=%s",
                self.validator_id,
                position[0],
                position[1],
                self.core.step_.name.lower(),
            )

    async def _loop(self) -> None:
        assert self._queue is not None and self._stopping is not None
        self.driver.step(Start())
        await self._drain()
        while not self._stopping.is_set():
            item = await self._queue.get()
            if callable(item):
                await item()
            else:
                self.driver.step(item)
            await self._drain()

    # --- lifecycle -------------------------------------------------------------------------------

    async def run(self, app: Any | None = None) -> None:
        """Run until SIGTERM/SIGINT (or :meth:`stop`); serve ``app`` on the API address."""
        self._queue = asyncio.Queue(EVENT_QUEUE_MAX)
        self._stopping = asyncio.Event()
        self._work = asyncio.Event()
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(signum, self.stop)
        unwatch_gc = self.metrics.watch_gc()
        try:
            await self._serve(app)
        finally:
            unwatch_gc()  # process-wide: never left behind, even if start-up fails

    async def _serve(self, app: Any | None) -> None:
        assert self._stopping is not None
        loop = asyncio.get_running_loop()
        await self.network.start()
        server: uvicorn.Server | None = None
        server_task: asyncio.Task[None] | None = None
        if app is not None:
            host, port = self.config.api_listen
            server = _QuietServer(
                uvicorn.Config(
                    app,
                    host=host,
                    port=port,
                    http="httptools",
                    log_level="warning",
                    access_log=False,
                )
            )
            server_task = loop.create_task(server.serve())
        log.info(
            "validator %s started at height %s (peers %s, api %s)",
            self.validator_id,
            self._ledger.height,
            self.config.peer_listen,
            self.config.api_listen,
        )
        loop_task = loop.create_task(self._loop(), name="consensus loop")
        watchdog = loop.create_task(self._sync_watchdog(), name="sync watchdog")
        for task in (loop_task, watchdog):
            task.add_done_callback(self._fail_stop)
        await self._stopping.wait()
        log.info("validator %s stopping", self.validator_id)
        failure: Exception | None = None
        for task in (loop_task, watchdog, *self._background):
            task.cancel()
            try:
                await task
            except asyncio.CancelledError:
                pass
            except Exception as error:  # the node still shuts down cleanly, then re-raises
                failure = failure or error
        if server is not None and server_task is not None:
            server.should_exit = True
            await server_task
        await self.network.stop()
        self.close()
        if failure is not None:
            raise failure

    def _fail_stop(self, task: asyncio.Task[None]) -> None:
        """Stop the node when its consensus loop or sync watchdog fails.

        Without them the gateway would keep accepting transactions that never commit. A
        crashed validator is what BFT tolerates: the process exits with the error (``run``
        re-raises it), its supervisor restarts it, and it recovers from its store and safety
        record like after kill -9.
        """
        if task.cancelled() or task.exception() is None:
            return
        log.critical(
            "validator %s stops: its %s failed: %r",
            self.validator_id,
            task.get_name(),
            task.exception(),
        )
        self.stop()

    def close(self) -> None:
        """Release the database, the safety record's files and the data-dir lock (after
        :meth:`run`, or instead of it)."""
        self._ledger.store.close()
        self._safety.close()
        self._lock.release()

    def stop(self) -> None:
        if self._stopping is not None:
            self._stopping.set()


class _QuietServer(uvicorn.Server):
    """uvicorn without its own signal handling: the runtime owns SIGTERM and SIGINT."""

    @contextlib.contextmanager
    def capture_signals(self):  # type: ignore[no-untyped-def]
        yield
