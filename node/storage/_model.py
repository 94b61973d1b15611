"""What both stores share: the protocol, the values they return, and the checks they make.

The checks live here so :class:`~node.storage.SqlStore` and
:class:`~node.storage.MemoryStore` refuse exactly the same blocks with the same errors, and
the encoding lives here so both stores hold the same canonical JSON text (the memory store
stores text too, which keeps callers from aliasing stored values).
"""

from __future__ import annotations

import json
from abc import ABC, abstractmethod
from collections.abc import Collection, Generator
from dataclasses import dataclass
from typing import Any, NamedTuple, Protocol

from node.block import Commit, Header, block_hash
from node.codec import canonical, canonical_trusted, sha256_hex
from node.errors import EncodingError, StorageError
from node.invariant import invariant
from node.limits import PAGE_SIZE_MAX
from node.merkle import MerkleTree, tx_leaf
from node.records import AssetEvent, BlockRecord, StateKey, StateValue, TxRecord, TxSummary

SCHEMA_VERSION = 3
"""Version of the database layout. A store migrates a database of an older one it knows (1
and 2, when opened) and refuses any other (:class:`~node.errors.SchemaVersionError`); bump it
with every change to the tables or to what the stamps in them mean."""

FIRST_HEIGHT = 1
"""Height of the first block; its ``prev_hash`` is the genesis hash (``Genesis.hash``)."""


@dataclass(frozen=True, slots=True, order=True)
class TxPosition:
    """Where a transaction sits in the chain; orders history and is the pagination cursor."""

    height: int
    index: int


@dataclass(frozen=True, slots=True, kw_only=True)
class StoredBlock:
    """A committed block as read back (its hash already checked against its header)."""

    height: int
    block_hash: str
    header: Header
    commit: Commit


@dataclass(frozen=True, slots=True, kw_only=True)
class CommittedTx:
    """A committed transaction with the block that holds it: everything a receipt needs."""

    height: int
    block_hash: str
    record: TxRecord

    @property
    def position(self) -> TxPosition:
        return TxPosition(self.height, self.record.index)


class BlockStore(Protocol):
    """The chain as a node persists it. Implementations: ``SqlStore``, ``MemoryStore``.

    Reads never return half of a block: every block is written in one transaction.
    Errors are :class:`~node.errors.StorageError` (the database cannot be used, a block is
    refused, or what was read back does not check); a caller's bug (a record that
    contradicts itself, a page size out of range) is an
    :class:`~node.invariant.InvariantViolation`.
    """

    @property
    def chain_id(self) -> str: ...

    @property
    def genesis_hash(self) -> str: ...

    def commit_block(self, record: BlockRecord) -> None:
        """Write ``record`` in one transaction, or nothing and raise ``StorageError``."""
        ...

    def tip(self) -> StoredBlock | None:
        """The highest committed block, or ``None`` before block 1."""
        ...

    def block(self, height: int) -> StoredBlock | None:
        """The block at ``height``, or ``None`` if there is none."""
        ...

    def block_txs(self, height: int) -> list[TxRecord]:
        """The transactions of block ``height`` in index order (empty if no such block)."""
        ...

    def block_tx_summaries(self, height: int) -> list[TxSummary]:
        """:meth:`block_txs` without envelopes, events and references: no JSON is decoded,
        so listing a block or building its transaction tree costs a column read and two
        hashes per transaction. The count and the ``tx_root`` (of the ids and codes) are
        checked against the header."""
        ...

    def block_tx_tree(self, height: int) -> MerkleTree | None:
        """The transaction tree of block ``height`` (leaves: ids and outcome codes), built
        from what :meth:`block_tx_summaries` reads and checked against the header's
        ``tx_root`` by that same build; ``None`` if there is no such block."""
        ...

    def tx(self, tx_id: str) -> CommittedTx | None:
        """A committed transaction with its outcome and block, or ``None``."""
        ...

    def state_get(self, key: StateKey) -> StateValue | None:
        """The current value of ``key``, or ``None`` if absent."""
        ...

    def state_get_many(self, keys: Collection[StateKey]) -> dict[StateKey, StateValue]:
        """Current values of those ``keys`` that are present (absent keys are left out)."""
        ...

    def iter_state(self) -> Generator[tuple[StateKey, StateValue]]:
        """Every state entry in key order (code point order), streamed from one snapshot.

        Consume it or close it: the SQL store holds a connection until then.
        """
        ...

    def asset_events(self, asset_id: str) -> list[AssetEvent]:
        """The event chain of ``asset_id`` in ``seq`` order."""
        ...

    def txs_by_ref(
        self, kind: str, ref_id: str, *, after: TxPosition | None = None, limit: int
    ) -> list[CommittedTx]:
        """Transactions that name ``(kind, ref_id)`` in ``TxRecord.refs``, oldest first.

        At most ``limit`` (1..``PAGE_SIZE_MAX``) of them, strictly after the position
        ``after``; pass the last result's ``position`` to get the next page.
        """
        ...

    def committed_unexpired(self, tx_ids: Collection[str], now_ms: int) -> set[str]:
        """Those of ``tx_ids`` that are committed with ``expires_at_ms > now_ms``: the
        deduplication lookup behind the ledger's in-memory set of recent ones."""
        ...

    def latest_expiry_ms(self) -> int:
        """The latest ``expires_at_ms`` of any committed transaction (0 for none): every
        transaction the store holds has expired once block time passes it."""
        ...

    def close(self) -> None:
        """Release the database; the store must not be used afterwards."""
        ...


# --- checks before writing ----------------------------------------------------------------


def check_record(record: BlockRecord, chain_id: str) -> None:
    """The record must agree with itself: anything else is a bug in the ledger."""
    header = record.header
    height = record.height
    invariant(header["chain_id"] == chain_id, f"block {height} is for chain {header['chain_id']!r}")
    invariant(
        block_hash(header) == record.block_hash, f"block {height}: block_hash is not its header's"
    )
    commit = record.commit
    invariant(
        commit["height"] == height and commit["block_hash"] == record.block_hash,
        f"block {height}: the commit certifies another block",
    )
    invariant(
        header["tx_count"] == len(record.txs),
        f"block {height}: header counts {header['tx_count']} transactions, record has "
        f"{len(record.txs)}",
    )
    tx_ids = set()
    for position, tx in enumerate(record.txs):
        invariant(
            tx.index == position, f"block {height}: transaction {position} has index {tx.index}"
        )
        tx_ids.add(tx.tx_id)
    for event in record.asset_events:
        invariant(
            event.tx_id in tx_ids,
            f"block {height}: event {event.asset_id}#{event.seq} names a transaction not in it",
        )


def check_successor(tip_height: int | None, tip_hash: str, record: BlockRecord) -> None:
    """Refuse a block that does not extend the stored tip (``tip_hash``: the tip's block
    hash, or the genesis hash when the store is empty)."""
    tip = tip_height
    expected_height = FIRST_HEIGHT if tip is None else tip + 1
    if record.height != expected_height:
        raise StorageError(
            f"refusing block {record.height}: the stored tip is "
            f"{'empty' if tip is None else tip}, so the next block is {expected_height}"
        )
    if record.header["prev_hash"] != tip_hash:
        raise StorageError(
            f"refusing block {record.height}: prev_hash {record.header['prev_hash']} is not "
            f"the hash {tip_hash} of the {'genesis' if tip is None else 'stored tip'}"
        )


def repeated_tx(tx_ids: list[str]) -> str | None:
    """What both stores say of a block that holds one of its transactions twice, or
    ``None`` if none is repeated."""
    seen: set[str] = set()
    for tx_id in tx_ids:
        if tx_id in seen:
            return f"transaction {tx_id} is in the block twice"
        seen.add(tx_id)
    return None


def check_page(limit: int) -> None:
    invariant(1 <= limit <= PAGE_SIZE_MAX, f"page size {limit} outside 1..{PAGE_SIZE_MAX}")


def unique_refs(tx: TxRecord) -> list[tuple[str, str]]:
    """The distinct references of ``tx``, in first-mention order (a transaction may name one
    member twice, as sender and as recipient; the index holds it once)."""
    return list(dict.fromkeys(tx.refs))


# --- encoding: both stores keep the same canonical text -----------------------------------


def encode(value: Any) -> str:
    """Compact canonical JSON text of a value the ledger built from checked parts."""
    return canonical_trusted(value).decode("utf-8")


def mismatch(what: str, problem: str) -> StorageError:
    return StorageError(f"{what}: {problem}; the database was altered or is corrupt")


def decode_block(height: int, hash_: str, header_text: str, commit_text: str) -> StoredBlock:
    """A block read back, after checking that its header hashes to its stored hash."""
    what = f"block {height}"
    try:
        header = json.loads(header_text)
        commit = json.loads(commit_text)
    except ValueError as error:
        raise mismatch(what, f"unreadable JSON ({error})") from error
    try:
        header_hash = block_hash(header)
    except EncodingError as error:
        raise mismatch(what, f"its header is not canonical JSON ({error})") from error
    if header_hash != hash_:
        raise mismatch(what, f"its header hashes to {header_hash}, not {hash_}")
    if header["height"] != height or commit["height"] != height:
        raise mismatch(what, "its header or commit names another height")
    if commit["block_hash"] != hash_:
        raise mismatch(what, "its commit certifies another block")
    return StoredBlock(height=height, block_hash=hash_, header=header, commit=commit)


class TxRow(NamedTuple):
    """A transaction as both stores hold it: scalars and canonical JSON text."""

    tx_id: str
    tx_index: int
    sender: str
    type: str
    code: str
    expires_at_ms: int
    envelope_json: str
    events_json: str
    refs_json: str


def tx_row(tx: TxRecord) -> TxRow:
    return TxRow(
        tx.tx_id,
        tx.index,
        tx.sender,
        tx.type,
        tx.code,
        tx.expires_at_ms,
        tx.envelope_json,
        encode(tx.events),
        encode(tx.refs),
    )


def tx_summary(tx_id: str, index: int, sender: str, type_: str, code: str) -> TxSummary:
    return TxSummary(tx_id=tx_id, index=index, sender=sender, type=type_, code=code)


def check_tx_count(height: int, header: Header, indexes: list[int]) -> None:
    """The rows read for block ``height`` are exactly indexes ``0 .. tx_count - 1``."""
    if indexes != list(range(header["tx_count"])):
        raise mismatch(
            f"block {height}",
            f"{header['tx_count']} transactions in its header, indexes {indexes[:10]}... stored",
        )


class TxSummaryReads(ABC):
    """:meth:`BlockStore.block_tx_summaries` and :meth:`BlockStore.block_tx_tree` for a store
    that reads a block's summaries and their checked tree in one ``_tx_summaries``."""

    @abstractmethod
    def _tx_summaries(self, height: int) -> tuple[list[TxSummary], MerkleTree] | None:
        """Block ``height``'s summaries and their tree (checked against its header's
        ``tx_root``), or ``None`` if there is no such block."""

    def block_tx_summaries(self, height: int) -> list[TxSummary]:
        read = self._tx_summaries(height)
        return [] if read is None else read[0]

    def block_tx_tree(self, height: int) -> MerkleTree | None:
        read = self._tx_summaries(height)
        return None if read is None else read[1]


def checked_tx_tree(height: int, header: Header, summaries: list[TxSummary]) -> MerkleTree:
    """The tree of the ids and codes read for block ``height``, which must hash to its
    header's ``tx_root``: what a listing reads without the envelopes is still checked against
    the committed header."""
    try:
        tree = MerkleTree([tx_leaf(tx.tx_id, tx.code) for tx in summaries])
        root = tree.root().hex()
    except EncodingError as error:
        raise mismatch(f"block {height}", f"unreadable transaction id or code ({error})") from error
    if root != header["tx_root"]:
        raise mismatch(f"block {height}", "the ids and codes do not match its tx_root")
    return tree


def decode_tx(row: TxRow) -> TxRecord:
    """A transaction read back, after checking that its id is the hash of its body."""
    tx_id = row.tx_id
    try:
        envelope = json.loads(row.envelope_json)
        events = json.loads(row.events_json)
        refs = json.loads(row.refs_json)
    except ValueError as error:
        raise mismatch(f"transaction {tx_id}", f"unreadable JSON ({error})") from error
    # DESIGN.md: tx_id = hex(sha256(canonical(body))). What is read back is checked as any
    # input is: an altered row may hold what canonical JSON cannot (NaN, wide integers).
    try:
        body_hash = sha256_hex(canonical(envelope.get("body")))
    except EncodingError as error:
        raise mismatch(
            f"transaction {tx_id}", f"its body is not canonical JSON ({error})"
        ) from error
    if body_hash != tx_id:
        raise mismatch(f"transaction {tx_id}", "its body does not hash to its id")
    return TxRecord(
        tx_id=tx_id,
        envelope=envelope,
        envelope_json=row.envelope_json,
        sender=row.sender,
        type=row.type,
        expires_at_ms=row.expires_at_ms,
        index=row.tx_index,
        code=row.code,
        events=events,
        refs=tuple((kind, ref_id) for kind, ref_id in refs),
    )


def decode_state(key: StateKey, value_text: str) -> StateValue:
    try:
        value: StateValue = json.loads(value_text)
    except ValueError as error:
        raise mismatch(f"state {key}", f"unreadable JSON ({error})") from error
    return value
