"""The simulated world: a genesis with fixed keys, durable storage, and a toy application.

The toy application is a deterministic stand-in for the ledger that keeps every property
the checkers need: transactions are opaque strings that clients submit; a block may hold
only submitted, not yet committed, distinct transactions; ``tx_root`` and ``state_root``
commit to the block's content and the whole history, so diverging validators show at once.
"""

from __future__ import annotations

import functools
import itertools
from collections.abc import Callable
from dataclasses import dataclass, field

from consensus.messages import Block
from consensus.safety import SafetyRecord
from consensus.types import Height, Round, ValidatorId
from node.block import Commit, Header
from node.codec import canonical_trusted, sha256_hex
from node.crypto import KeyPair
from node.genesis import Genesis, Member, Validator

CHAIN_ID = "coopledger-sim"
GENESIS_TIME_MS = 1_700_000_000_000
BLOCK_TXS_MAX = 16
"""Transactions per simulated block: enough for blocks to differ, small enough to be fast."""
MEMPOOL_TXS_MAX = 2_000
EMPTY_STATE_ROOT = sha256_hex(b"")

SIM_PARAMS = {
    "block_txs_max": BLOCK_TXS_MAX,
    "block_bytes_max": 1024 * 1024,
    "timeout_propose_ms": 300,
    "timeout_prevote_ms": 200,
    "timeout_precommit_ms": 200,
    "timeout_delta_ms": 100,
    "heartbeat_ms": 10_000,
}


def validator_id(index: int) -> ValidatorId:
    return ValidatorId(f"val-{index}")


@functools.cache
def validator_key(index: int) -> KeyPair:
    """Fixed keys: a seed's outcome must not depend on anything but the seed."""
    return KeyPair(bytes.fromhex(sha256_hex(f"coopledger-sim-validator-{index}".encode())))


@functools.cache
def sim_genesis(validator_count: int) -> Genesis:
    validators = tuple(
        Validator(validator_id(i), validator_key(i).public_key, f"127.0.0.1:{26600 + i}")
        for i in range(validator_count)
    )
    member = Member("sim-client", "Simulated client", ("member",), (validator_key(999).public_key,))
    return Genesis(CHAIN_ID, GENESIS_TIME_MS, validators, (member,), dict(SIM_PARAMS))


@dataclass(slots=True)
class Storage:
    """What survives a crash: the chain with its commits, state roots, and the safety record."""

    chain: list[tuple[Block, Commit]] = field(default_factory=list)
    state_roots: list[str] = field(default_factory=list)
    committed_txs: set[str] = field(default_factory=set)
    record: SafetyRecord | None = None

    @property
    def height(self) -> Height:
        return Height(len(self.chain))

    @property
    def state_root(self) -> str:
        return self.state_roots[-1] if self.state_roots else EMPTY_STATE_ROOT


def tx_root(transactions: tuple[str, ...]) -> str:
    return sha256_hex(canonical_trusted(list(transactions)))


def next_state_root(previous: str, root_of_txs: str) -> str:
    return sha256_hex(bytes.fromhex(previous) + bytes.fromhex(root_of_txs))


class ToyApplication:
    """Implements :class:`consensus.application.Application` over a :class:`Storage`.

    ``clock_ms`` gives the validator's local (possibly drifting) time for block timestamps;
    ``submitted`` is the world's record of what clients really submitted, standing in for
    client signatures: a transaction nobody submitted is invalid.
    """

    def __init__(
        self,
        genesis: Genesis,
        storage: Storage,
        submitted: set[str],
        clock_ms: Callable[[], int] | None = None,
    ) -> None:
        self.genesis = genesis
        self.storage = storage
        self.submitted = submitted
        self.clock_ms = clock_ms
        self.mempool: dict[str, None] = {}
        self.validator_ids = {v.id for v in genesis.validators}

    def add_transaction(self, tx: str) -> None:
        if tx not in self.storage.committed_txs and len(self.mempool) < MEMPOOL_TXS_MAX:
            self.mempool[tx] = None

    def _prev(self) -> tuple[str, int]:
        if not self.storage.chain:
            return self.genesis.hash, self.genesis.genesis_time_ms
        last = self.storage.chain[-1][0]
        return last.hash, last.header["timestamp_ms"]

    def build_block(
        self, height: Height, round_: Round, proposer: ValidatorId, *, skew_ms: int = 0
    ) -> Block:
        committed = self.storage.committed_txs
        txs = tuple(
            itertools.islice((tx for tx in self.mempool if tx not in committed), BLOCK_TXS_MAX)
        )
        prev_hash, prev_time = self._prev()
        now = self.clock_ms() if self.clock_ms is not None else prev_time
        root = tx_root(txs)
        header: Header = {
            "chain_id": self.genesis.chain_id,
            "height": height,
            "round": round_,
            "timestamp_ms": max(now, prev_time + 1) + skew_ms,
            "proposer": proposer,
            "prev_hash": prev_hash,
            "tx_root": root,
            "state_root": next_state_root(self.storage.state_root, root),
            "tx_count": len(txs),
        }
        return Block(header=header, transactions=txs)

    def validate_block(self, block: Block) -> bool:
        header = block.header
        prev_hash, prev_time = self._prev()
        txs = block.transactions
        if (
            header["chain_id"] != self.genesis.chain_id
            or header["height"] != self.storage.height + 1
            or header["prev_hash"] != prev_hash
            or header["proposer"] not in self.validator_ids
            or header["timestamp_ms"] <= prev_time
            or header["tx_count"] != len(txs)
            or len(txs) > BLOCK_TXS_MAX
            or len(set(txs)) != len(txs)
        ):
            return False
        for tx in txs:
            if not isinstance(tx, str) or tx not in self.submitted:
                return False
            if tx in self.storage.committed_txs:
                return False
        root = tx_root(txs)
        return header["tx_root"] == root and header["state_root"] == next_state_root(
            self.storage.state_root, root
        )

    def commit_block(self, block: Block, commit: Commit) -> None:
        storage = self.storage
        root = next_state_root(storage.state_root, tx_root(block.transactions))
        storage.chain.append((block, commit))
        storage.state_roots.append(root)
        for tx in block.transactions:
            storage.committed_txs.add(tx)
            self.mempool.pop(tx, None)
