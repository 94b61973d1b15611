"""The SQL block store: SQLAlchemy Core over SQLite or PostgreSQL.

Tables (docs/architecture.md, "Storage", says why each index exists)::

    coopledger_meta  name PK, value             schema_version, chain_id, genesis_hash,
                                                tx_ids_through, tx_ids_moving (while a batch
                                                moves into tx_ids)
    blocks           height PK, block_hash UNIQUE, header_json, commit_json
    txs              (height, tx_index) PK, tx_id, sender, type, code, expires_at_ms,
                     envelope_json, events_json, refs_json
                     index (expires_at_ms, tx_id)  -- deduplication index at start-up
    tx_ids           (id_key, height, tx_index) PK -- a transaction by id, added in batches
    tx_refs          (kind, ref_id, height, tx_index) PK  -- history: one range scan
    asset_events     (asset_id, seq) PK (beside the rowid), event_hash, prev_hash, tx_id, type
    state            key PK, value_json

Durability: SQLite runs in WAL mode with ``synchronous=FULL`` (every commit is fsynced
before it returns) and ``foreign_keys=ON``; PostgreSQL keeps its default
``synchronous_commit=on``. pysqlite's own transaction handling is switched off and
``BEGIN`` is issued on every transaction (SQLAlchemy's documented pysqlite recipe), so that
schema creation is transactional too and a write transaction takes the write lock at once
(``BEGIN IMMEDIATE``): the tip it checks is the tip it extends.
"""

from __future__ import annotations

import logging
import threading
from bisect import bisect_left
from collections.abc import Collection, Generator, Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from functools import partial
from typing import Any, NamedTuple

import psycopg
from sqlalchemy import (
    BigInteger,
    Column,
    Connection,
    Engine,
    ForeignKey,
    ForeignKeyConstraint,
    Index,
    Integer,
    MetaData,
    PrimaryKeyConstraint,
    Row,
    Table,
    Text,
    bindparam,
    create_engine,
    event,
    func,
    inspect,
    make_url,
    select,
    tuple_,
)
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import Dialect
from sqlalchemy.exc import ArgumentError, SQLAlchemyError

from node.block import Header
from node.codec import is_hex
from node.errors import SchemaVersionError, StorageError
from node.invariant import invariant
from node.limits import BLOCK_TXS_MAX
from node.merkle import MerkleTree
from node.records import AssetEvent, BlockRecord, StateKey, StateValue, TxRecord, TxSummary
from node.storage._model import (
    SCHEMA_VERSION,
    CommittedTx,
    StoredBlock,
    TxPosition,
    TxRow,
    TxSummaryReads,
    check_page,
    check_record,
    check_successor,
    check_tx_count,
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

_log = logging.getLogger("coopledger.storage")

KEYS_PER_QUERY_MAX = 500
"""Keys in one ``IN (...)`` list: far below SQLite's 32,766 bound variables, and a few
hundred keys per round trip already amortise its cost."""

SQLITE_CACHE_KIB = 64 * 1024
"""Page cache of the one connection that writes blocks (the default is 2 MiB). A block
updates thousands of pages at random keys (state, asset events, history index); with the
upper levels of those B-trees cached, a commit does not re-read them from the OS. The cache
stays warm because every commit goes through that connection (see :class:`SqlStore`)."""

SQLITE_READ_CACHE_KIB = 4 * 1024
"""Page cache of each reading connection. In WAL mode a connection discards its whole cache
when it starts a read after another connection committed, that is after every block, so a
large cache would only be filled and thrown away (and fragment the heap): it needs to hold
the upper B-tree levels that one query walks, a few hundred pages."""

SQLITE_CHECKPOINT_INTERVAL_S = 2.0
"""Least time between two copies of the WAL back into the database. They run in a thread of
their own (:class:`_Checkpointer`), each a ``PASSIVE`` checkpoint on a reading connection,
once blocks were written since the last: a block's commit no longer does it. A copy made
inside a commit added 100-300 ms to it; with the thread, commits over 100 ms went from 23-24
to 13-14 of 200 blocks of 1,000 transactions (docs/benchmarks.md)."""

SQLITE_CHECKPOINT_PAGES = 50_000
"""WAL pages (4 KiB) after which the writer's own commit checkpoints (SQLite's default is
1,000): a backstop that bounds the WAL at about 200 MiB should the background copy fall
behind or fail, never reached while it keeps up."""

STATE_ROWS_PER_FETCH = 1_000
"""Rows fetched at a time while streaming the state: a few hundred KiB in memory."""

# Ids and keys compare by code point everywhere: SQLite's BINARY collation does that for
# UTF-8, PostgreSQL does it with collation "C" (and its B-trees are faster for it).
_Key = Text().with_variant(postgresql.TEXT(collation="C"), "postgresql")
_Height = BigInteger().with_variant(Integer(), "sqlite")  # INTEGER PRIMARY KEY is the rowid

metadata = MetaData()

meta_table = Table(
    "coopledger_meta",
    metadata,
    Column("name", _Key, primary_key=True),
    Column("value", Text, nullable=False),
)

blocks_table = Table(
    "blocks",
    metadata,
    Column("height", _Height, primary_key=True, autoincrement=False),
    Column("block_hash", _Key, nullable=False, unique=True),
    Column("header_json", Text, nullable=False),
    Column("commit_json", Text, nullable=False),
)

txs_table = Table(
    "txs",
    metadata,
    Column("height", _Height, ForeignKey("blocks.height"), nullable=False),
    Column("tx_id", _Key, nullable=False),
    Column("tx_index", Integer, nullable=False),
    Column("sender", _Key, nullable=False),
    Column("type", Text, nullable=False),
    Column("code", Text, nullable=False),
    Column("expires_at_ms", BigInteger, nullable=False),
    Column("envelope_json", Text, nullable=False),
    Column("events_json", Text, nullable=False),
    Column("refs_json", Text, nullable=False),
    PrimaryKeyConstraint("height", "tx_index"),
    # Covering: the deduplication index is rebuilt from this index alone.
    Index("txs_expiry", "expires_at_ms", "tx_id"),
)

tx_refs_table = Table(
    "tx_refs",
    metadata,
    Column("kind", _Key, nullable=False),
    Column("ref_id", _Key, nullable=False),
    Column("height", _Height, nullable=False),
    Column("tx_index", Integer, nullable=False),
    PrimaryKeyConstraint("kind", "ref_id", "height", "tx_index"),
    ForeignKeyConstraint(["height", "tx_index"], ["txs.height", "txs.tx_index"]),
    sqlite_with_rowid=False,
)

asset_events_table = Table(
    "asset_events",
    metadata,
    Column("asset_id", _Key, nullable=False),
    Column("seq", Integer, nullable=False),
    Column("event_hash", Text, nullable=False),
    Column("prev_hash", Text, nullable=False),
    Column("tx_id", _Key, nullable=False),  # in the same block: check_record
    Column("type", Text, nullable=False),
    PrimaryKeyConstraint("asset_id", "seq"),
)

tx_ids_table = Table(
    # A transaction by id: id_key(tx_id) to its position, the full id compared in the row.
    # Holds the transactions of blocks up to the tx_ids_through stamp; those above it are
    # found from memory (_RecentIds) until a batch adds them (docs/architecture.md,
    # "Storage", says why not a unique index on tx_id).
    "tx_ids",
    metadata,
    Column("id_key", BigInteger, nullable=False),
    Column("height", _Height, nullable=False),
    Column("tx_index", Integer, nullable=False),
    PrimaryKeyConstraint("id_key", "height", "tx_index"),
    sqlite_with_rowid=False,
)

state_table = Table(
    "state",
    metadata,
    Column("key", _Key, primary_key=True),
    Column("value_json", Text, nullable=False),
    sqlite_with_rowid=False,
)

_AnyRow = Row[*tuple[Any, ...]]

# _BlockRows builds tuples in table column order, which COPY and the compiled INSERTs use.
invariant(
    [column.name for column in txs_table.columns] == ["height", *TxRow._fields],
    "txs columns must be the height and then the fields of TxRow",
)

_ID_KEY_SIGN = 1 << 63


def id_key(tx_id: str) -> int | None:
    """The first 8 bytes of a transaction id as a signed 64-bit integer (the key of
    ``tx_ids``), or ``None`` for a text that is no transaction id."""
    if not is_hex(tx_id, 32):  # a sha256
        return None
    key = int(tx_id[:16], 16)
    return key - (_ID_KEY_SIGN << 1) if key >= _ID_KEY_SIGN else key


ID_BATCH_TXS = 50_000
"""Transactions a store finds by id from memory before it adds them to ``tx_ids`` as one
batch, sorted by key. A block's ids are random keys: added block by block they dirtied about
one page of the index each, wherever they fell, which a commit writes to the WAL and a
checkpoint copies again; a sorted batch of 50,000 dirties each page of the index about once
for all of them. The memory this costs: 5.7 MiB at 50,000 (docs/benchmarks.md), and, while
a batch moves (over 32 blocks at most), its sorted keys (0.4 MiB) and the ids of the blocks
after it."""

ID_MOVE_PARTS = 32
"""The key ranges (parts, of equal width) in which a batch moves into ``tx_ids``: the commit
of each block after the batch filled adds at least one part, and the ids of at least as
many keys as the block adds to memory, so that the batch is in before the next one fills. A
part dirties its own pages of the index, each about once, so the batch costs the index what
one insert of it did, spread over blocks: at 900 tx/s the commit of the block that filled a
batch took 1.0 to 1.4 s with a single insert, and at most 94 ms with parts
(docs/benchmarks.md)."""

ID_MOVE_PARTS_MAX = 1 << 16
"""The most parts a ``tx_ids_moving`` stamp may name; more say the database is corrupt."""

_INDEX_BITS = 16
invariant(BLOCK_TXS_MAX < 1 << _INDEX_BITS, "a position packs the index into 16 bits")


class _RecentIds:
    """The positions of the transactions stored above ``tx_ids_through``, by id key.

    Written only by the writer. A reader takes the store's current instance before it opens
    its connection: the writer replaces the instance only after the commit that added its
    transactions to ``tx_ids``, so a reader that holds the new one reads that commit.
    """

    __slots__ = ("count", "positions")

    def __init__(self) -> None:
        self.positions: dict[int, int | tuple[int, ...]] = {}
        self.count = 0

    def add(self, key: int, height: int, index: int) -> None:
        packed = height << _INDEX_BITS | index
        held = self.positions.get(key)
        self.positions[key] = packed if held is None else (*_as_tuple(held), packed)
        self.count += 1

    def remove(self, key: int, height: int, index: int) -> None:
        packed = height << _INDEX_BITS | index
        held = _as_tuple(self.positions.get(key, ()))
        rest = tuple(p for p in held if p != packed)
        if len(rest) == len(held):
            return
        self.count -= 1
        if rest:
            self.positions[key] = rest
        else:
            del self.positions[key]

    def find(self, keys: Collection[int]) -> list[tuple[int, int]]:
        """The positions ``(height, index)`` held under any of ``keys``."""
        mask = (1 << _INDEX_BITS) - 1
        found: list[tuple[int, int]] = []
        for key in keys:
            held = self.positions.get(key)
            if held is not None:
                found.extend((packed >> _INDEX_BITS, packed & mask) for packed in _as_tuple(held))
        return found

    def rows(self, keys: Iterable[int]) -> list[tuple[int, int, int]]:
        """The entries under ``keys`` (held ones) as ``tx_ids`` rows ``(id_key, height,
        tx_index)``, in the order of ``keys``, a key's in chain order."""
        mask = (1 << _INDEX_BITS) - 1
        positions = self.positions
        return [
            (key, packed >> _INDEX_BITS, packed & mask)
            for key in keys
            for packed in _as_tuple(positions[key])
        ]


def _as_tuple(held: int | tuple[int, ...]) -> tuple[int, ...]:
    return (held,) if isinstance(held, int) else held


class _Moving:
    """A full batch: the ids of blocks ``(tx_ids_through, top]``, on their way into
    ``tx_ids`` one part (key range) at a time. All of them stay in memory (``ids``) until the
    last part is in, so a reader finds each in memory, and some also in the index.

    ``done`` parts of ``parts`` are in the index; the ``tx_ids_moving`` stamp (``top
    done/parts``) says so in the database, and is what a store opened again resumes from.
    Only the writer changes ``done``, after the commit that added the parts.

    The batch's keys are sorted once, into one list of integers, and a part's rows are made
    when it moves: the node collects garbage when 250,000 containers were allocated
    (node/cli_node.py), and making a batch's 50,000 rows at once, as tuples, set off a young
    collection at every batch, which took a validator at 900 tx/s 310 to 470 ms.
    """

    __slots__ = ("_keys", "done", "ids", "parts", "top")

    def __init__(self, ids: _RecentIds, top: int, *, done: int = 0, parts: int) -> None:
        self.ids = ids
        self.top = top
        self.done = done
        self.parts = parts
        self._keys = sorted(ids.positions)

    def _start(self, part: int) -> int:
        """Where part ``part`` (and every later one) starts in the sorted keys."""
        if part >= self.parts:
            return len(self._keys)
        return bisect_left(
            self._keys, -_ID_KEY_SIGN + ((part << 64) + self.parts - 1) // self.parts
        )

    def upto(self, added: int, *, all_parts: bool) -> int:
        """The parts in the index after a block that adds ``added`` ids to memory: at least
        one more, and ids of at least ``added`` keys more, or every part if ``all_parts``."""
        if all_parts:
            return self.parts
        first, end = self._start(self.done), self.done + 1
        while end < self.parts and self._start(end) - first < added:
            end += 1
        return end

    def rows(self, upto: int) -> list[tuple[int, int, int]]:
        """The ``tx_ids`` rows of the parts from ``done`` to ``upto``, sorted."""
        return self.ids.rows(self._keys[self._start(self.done) : self._start(upto)])


def _moving_stamp(top: int, done: int, parts: int) -> str:
    """The ``tx_ids_moving`` stamp: a batch up to height ``top``, ``done`` of ``parts`` in."""
    return f"{top} {done}/{parts}"


def _read_moving_stamp(stamp: str, through: int) -> tuple[int, int, int]:
    """``(top, done, parts)`` of a ``tx_ids_moving`` stamp, checked against the
    ``tx_ids_through`` stamp ``through``."""
    top_text, _, progress = stamp.partition(" ")
    done_text, _, parts_text = progress.partition("/")
    top, done, parts = (
        _stamp_int(text, f"tx_ids_moving {stamp!r}") for text in (top_text, done_text, parts_text)
    )
    if not (top > through and 0 <= done < parts <= ID_MOVE_PARTS_MAX):
        raise StorageError(
            f"tx_ids_moving {stamp!r} does not fit tx_ids_through {through}: "
            "the database is corrupt"
        )
    return top, done, parts


def _stamp_int(text: str, name: str) -> int:
    if not text.isdigit() or len(text) > 18:
        raise StorageError(f"the stamp {name} holds no count: the database is corrupt")
    return int(text)


class _HeldIds(NamedTuple):
    """The ids a store finds from memory: those of the blocks above a batch, and the batch
    moving into the index, if any. The writer replaces the pair only after a commit, so a
    reader takes it, once, before it opens its connection (see :class:`_RecentIds`)."""

    recent: _RecentIds
    moving: _Moving | None

    def find(self, keys: Collection[int]) -> list[tuple[int, int]]:
        found = self.recent.find(keys)
        if self.moving is not None:
            found.extend(self.moving.ids.find(keys))
        return found


class SqlStore(TxSummaryReads):
    """A :class:`~node.storage.BlockStore` in SQLite (``sqlite:///path``) or PostgreSQL
    (``postgresql+psycopg://user@host/db``; ``?options=-csearch_path%3Dschema`` selects a
    schema).

    Opening stamps an empty database (schema version, ``chain_id``, ``genesis_hash`` and the
    optional ``genesis_state``, in one transaction) or checks the stamp of an existing one.

    Two engines: blocks are written through a pool of exactly one connection, and everything
    else reads through its own pool. On SQLite that keeps the writer's page cache warm: a
    connection's cache is discarded whenever another connection has committed, so with one
    shared pool each block landed on whichever connection came next and re-read the pages
    it updates from the OS. Readers, whose caches are discarded after every block anyway,
    keep small ones (:data:`SQLITE_READ_CACHE_KIB`).
    """

    def __init__(
        self,
        url: str,
        *,
        chain_id: str,
        genesis_hash: str,
        genesis_state: Mapping[StateKey, StateValue] | None = None,
    ) -> None:
        self._chain_id = chain_id
        self._genesis_hash = genesis_hash
        self._write_engine = _create_engine(url, writer=True)
        try:
            self._engine = _create_engine(url, writer=False)
        except BaseException:
            self._write_engine.dispose()
            raise
        self._where = self._write_engine.url.render_as_string(hide_password=True)
        self._writes = _Writes(self._write_engine.dialect)
        self._held = _HeldIds(_RecentIds(), None)
        self._checkpointer: _Checkpointer | None = None
        try:
            with _database_errors(f"cannot open database {self._where}"):
                self._open(genesis_state or {})
            if self._engine.dialect.name == "sqlite":
                self._checkpointer = _Checkpointer(self._engine, self._where)
        except BaseException:
            self.close()
            raise

    @property
    def chain_id(self) -> str:
        return self._chain_id

    @property
    def genesis_hash(self) -> str:
        return self._genesis_hash

    # --- opening ---------------------------------------------------------------------------

    def _open(self, genesis_state: Mapping[StateKey, StateValue]) -> None:
        # On the writer, so on SQLite under the write lock (BEGIN IMMEDIATE): two processes
        # creating the same database cannot both find it empty.
        with self._write_engine.connect() as conn, conn.begin():
            if self._write_engine.dialect.name == "sqlite":
                mode = conn.exec_driver_sql("PRAGMA journal_mode").scalar()
                if mode != "wal":
                    raise StorageError(f"{self._where}: SQLite refused WAL mode (mode {mode})")
            present = set(inspect(conn).get_table_names()) & set(metadata.tables)
            if meta_table.name not in present:
                if present:
                    raise StorageError(
                        f"{self._where} has tables {', '.join(sorted(present))} but no "
                        f"{meta_table.name}: it was not created by coopledger or only in part"
                    )
                self._create(conn, genesis_state)
            self._check_stamp(conn)
            self._held = _load_held(conn)

    def _create(self, conn: Connection, genesis_state: Mapping[StateKey, StateValue]) -> None:
        metadata.create_all(conn)
        stamp = {
            "schema_version": str(SCHEMA_VERSION),
            "chain_id": self._chain_id,
            "genesis_hash": self._genesis_hash,
            "tx_ids_through": "0",
        }
        conn.execute(
            meta_table.insert(), [{"name": name, "value": value} for name, value in stamp.items()]
        )
        if genesis_state:
            conn.execute(
                state_table.insert(),
                [{"key": key, "value_json": encode(value)} for key, value in genesis_state.items()],
            )

    def _check_stamp(self, conn: Connection) -> None:
        stamp = dict(conn.execute(select(meta_table.c.name, meta_table.c.value)).all())
        found = (stamp.get("chain_id"), stamp.get("genesis_hash"))
        if found != (self._chain_id, self._genesis_hash):
            raise StorageError(
                f"{self._where} holds chain {found[0]!r} with genesis {found[1]}, but this node "
                f"is configured for chain {self._chain_id!r} with genesis {self._genesis_hash}: "
                "point it at the database of its own chain"
            )
        version = stamp.get("schema_version")
        if version == "1":
            _migrate_from_1(conn)
            version = str(SCHEMA_VERSION)
        if version == "2":
            _stamp_version(conn)
            version = str(SCHEMA_VERSION)
        if version != str(SCHEMA_VERSION):
            raise SchemaVersionError(
                f"{self._where} has storage schema version {version}, this coopledger uses "
                f"version {SCHEMA_VERSION}: use a coopledger release of version {version}, "
                "or start from an empty database and sync the chain from peers"
            )

    # --- writing ---------------------------------------------------------------------------

    def commit_block(self, record: BlockRecord) -> None:
        check_record(record, self._chain_id)
        rows = _BlockRows(record)  # encode before taking the write lock
        height = record.height
        held = self._held
        added: list[tuple[int, int, int]] = []
        try:
            with (
                _database_errors(f"block {height} not written"),
                self._write_engine.connect() as conn,
                conn.begin(),
            ):
                held = self._held  # under the write lock: what the last commit left
                recent, moving = held
                full = recent.count + len(rows.ids) >= ID_BATCH_TXS
                tip = conn.execute(
                    select(blocks_table.c.height, blocks_table.c.block_hash)
                    .order_by(blocks_table.c.height.desc())
                    .limit(1)
                ).first()
                if tip is None:
                    check_successor(None, self._genesis_hash, record)
                else:
                    check_successor(tip.height, tip.block_hash, record)
                tx_ids = [tx.tx_id for tx in record.txs]
                _refuse_stored_txs(conn, held, height, tx_ids, [key for key, _, _ in rows.ids])
                self._writes.write(conn, rows)
                upto = 0
                if moving is not None:
                    # A full batch still moving goes in whole, before the next one starts.
                    upto = moving.upto(len(rows.ids), all_parts=full)
                    self._writes.add_ids(conn, moving.rows(upto))
                    if upto == moving.parts:
                        self._writes.stamp(conn, "tx_ids_through", str(moving.top))
                stamp: str | None = None  # no batch moving, or its last part is in
                if full:
                    stamp = _moving_stamp(height, 0, ID_MOVE_PARTS)
                elif moving is not None and upto < moving.parts:
                    stamp = _moving_stamp(moving.top, upto, moving.parts)
                if full or moving is not None:
                    self._writes.stamp(conn, "tx_ids_moving", stamp)
                # Before the commit, so that a reader never misses a committed
                # transaction; taken back if the commit fails.
                for entry in rows.ids:
                    recent.add(*entry)
                    added.append(entry)
        except BaseException:
            for entry in added:
                held.recent.remove(*entry)
            raise
        if moving is not None:
            moving.done = upto
            if upto == moving.parts:
                moving = None
        if full:
            moving = _Moving(recent, height, parts=ID_MOVE_PARTS)
            recent = _RecentIds()
        if recent is not held.recent or moving is not held.moving:
            self._held = _HeldIds(recent, moving)
        if self._checkpointer is not None:
            self._checkpointer.written()

    # --- reading ---------------------------------------------------------------------------

    def tip(self) -> StoredBlock | None:
        query = _block_query().order_by(blocks_table.c.height.desc()).limit(1)
        with _database_errors("reading the tip"), self._engine.connect() as conn:
            row = conn.execute(query).first()
        return None if row is None else _block_from_row(row)

    def block(self, height: int) -> StoredBlock | None:
        query = _block_query().where(blocks_table.c.height == height)
        with _database_errors(f"reading block {height}"), self._engine.connect() as conn:
            row = conn.execute(query).first()
        return None if row is None else _block_from_row(row)

    def block_txs(self, height: int) -> list[TxRecord]:
        read = self._block_rows(height, _TX_COLUMNS)
        return [] if read is None else [_tx_from_row(row) for row in read[1]]

    def _tx_summaries(self, height: int) -> tuple[list[TxSummary], MerkleTree] | None:
        read = self._block_rows(height, _TX_COLUMNS[:5])
        if read is None:
            return None
        header, rows = read
        summaries = [tx_summary(*row) for row in rows]
        return summaries, checked_tx_tree(height, header, summaries)

    def _block_rows(
        self, height: int, columns: tuple[Any, ...]
    ) -> tuple[Header, list[_AnyRow]] | None:
        """Block ``height``'s header and its transactions' rows (``columns``, the index
        second) in index order, checked to be exactly ``tx_count``; ``None`` if no block."""
        query = select(*columns).where(txs_table.c.height == height).order_by(txs_table.c.tx_index)
        with _database_errors(f"reading block {height}"), self._engine.connect() as conn:
            block_row = conn.execute(_block_query().where(blocks_table.c.height == height)).first()
            rows = conn.execute(query).all()
        if block_row is None:
            return None
        header = _block_from_row(block_row).header
        check_tx_count(height, header, [row[1] for row in rows])
        return header, list(rows)

    def tx(self, tx_id: str) -> CommittedTx | None:
        held = self._held  # before the connection: see _RecentIds
        with _database_errors(f"reading transaction {tx_id}"), self._engine.connect() as conn:
            for condition in _by_id(held, _id_keys((tx_id,))):
                query = _committed_tx_query().where(condition, txs_table.c.tx_id == tx_id)
                row = conn.execute(query).first()
                if row is not None:
                    return _committed_tx_from_row(row)
        return None

    def state_get(self, key: StateKey) -> StateValue | None:
        query = select(state_table.c.value_json).where(state_table.c.key == key)
        with _database_errors(f"reading state {key}"), self._engine.connect() as conn:
            text = conn.execute(query).scalar()
        return None if text is None else decode_state(key, text)

    def state_get_many(self, keys: Collection[StateKey]) -> dict[StateKey, StateValue]:
        distinct = sorted(set(keys))
        found: dict[StateKey, StateValue] = {}
        with _database_errors("reading state"), self._engine.connect() as conn:
            for start in range(0, len(distinct), KEYS_PER_QUERY_MAX):
                chunk = distinct[start : start + KEYS_PER_QUERY_MAX]
                query = select(state_table.c.key, state_table.c.value_json).where(
                    state_table.c.key.in_(chunk)
                )
                for key, text in conn.execute(query):
                    found[key] = decode_state(key, text)
        return found

    def iter_state(self) -> Generator[tuple[StateKey, StateValue]]:
        query = select(state_table.c.key, state_table.c.value_json).order_by(state_table.c.key)
        # The result is closed before its connection, also when the caller drops the stream
        # half way: on PostgreSQL it is a server-side cursor.
        with (
            _database_errors("streaming the state"),
            self._engine.connect() as conn,
            conn.execution_options(yield_per=STATE_ROWS_PER_FETCH).execute(query) as rows,
        ):
            for key, text in rows:
                yield key, decode_state(key, text)

    def asset_events(self, asset_id: str) -> list[AssetEvent]:
        table = asset_events_table
        query = select(table).where(table.c.asset_id == asset_id).order_by(table.c.seq)
        with _database_errors(f"reading the events of {asset_id}"), self._engine.connect() as conn:
            rows = conn.execute(query).all()
        return [
            AssetEvent(
                asset_id=row.asset_id,
                seq=row.seq,
                event_hash=row.event_hash,
                prev_hash=row.prev_hash,
                tx_id=row.tx_id,
                type=row.type,
            )
            for row in rows
        ]

    def txs_by_ref(
        self, kind: str, ref_id: str, *, after: TxPosition | None = None, limit: int
    ) -> list[CommittedTx]:
        check_page(limit)
        refs = tx_refs_table
        query = (
            select(*_TX_COLUMNS, txs_table.c.height, blocks_table.c.block_hash)
            .select_from(
                refs.join(
                    txs_table,
                    (txs_table.c.height == refs.c.height)
                    & (txs_table.c.tx_index == refs.c.tx_index),
                ).join(blocks_table, blocks_table.c.height == refs.c.height)
            )
            .where(refs.c.kind == kind, refs.c.ref_id == ref_id)
            .order_by(refs.c.height, refs.c.tx_index)
            .limit(limit)
        )
        if after is not None:
            query = query.where(
                tuple_(refs.c.height, refs.c.tx_index) > tuple_(after.height, after.index)
            )
        with (
            _database_errors(f"reading the history of {kind} {ref_id}"),
            self._engine.connect() as conn,
        ):
            rows = conn.execute(query).all()
        return [_committed_tx_from_row(row) for row in rows]

    def committed_unexpired(self, tx_ids: Collection[str], now_ms: int) -> set[str]:
        held = self._held  # before the connection: see _RecentIds
        with _database_errors("reading the deduplication index"), self._engine.connect() as conn:
            wanted = set(tx_ids)
            expiry = txs_table.c.expires_at_ms > now_ms
            return _stored_tx_ids(conn, held, wanted, _id_keys(wanted), expiry)

    def latest_expiry_ms(self) -> int:
        query = select(func.max(txs_table.c.expires_at_ms))  # the txs_expiry index's last entry
        with _database_errors("reading the deduplication index"), self._engine.connect() as conn:
            latest = conn.execute(query).scalar()
        return int(latest or 0)

    def close(self) -> None:
        if self._checkpointer is not None:
            self._checkpointer.close()
        self._engine.dispose()
        self._write_engine.dispose()


class _Checkpointer:
    """Copies the SQLite WAL back into the database beside the writer, not inside its commits.

    A thread waits until a block was written, runs ``PRAGMA wal_checkpoint(PASSIVE)`` on a
    connection of the reading pool, and then rests :data:`SQLITE_CHECKPOINT_INTERVAL_S`. A
    passive checkpoint takes no lock that a commit or a read waits for: it copies the frames
    that no reader still needs and fsyncs the database file, while the writer goes on
    appending to the WAL. When the whole WAL has been copied and no reader is in it, the
    writer's next transaction starts it again from the beginning (over 70 s at 900 tx/s the
    file grew to 46 MiB in the first 15 s and no further). Durability does not depend on
    it: every commit is fsynced in the WAL before it returns, and a crash before a copy
    replays the WAL when the database is next opened. A failed copy is logged and tried
    again after the next block; the writer's own backstop (:data:`SQLITE_CHECKPOINT_PAGES`)
    bounds the WAL meanwhile.
    """

    def __init__(self, engine: Engine, where: str) -> None:
        self._engine = engine
        self._where = where
        self._written = threading.Event()
        self._stopping = threading.Event()
        self.copies = 0
        """Checkpoints run so far (for tests and diagnostics)."""
        self._thread = threading.Thread(target=self._run, name="sqlite-checkpoint", daemon=True)
        self._thread.start()

    def written(self) -> None:
        """A block was committed: copy the WAL back at the next opportunity."""
        self._written.set()

    def _run(self) -> None:
        while True:
            self._written.wait()
            if self._stopping.is_set():
                return
            self._written.clear()
            try:
                self._copy()
            except Exception as error:  # the backstop bounds the WAL; the next block retries
                _log.warning("%s: WAL checkpoint failed: %s", self._where, error)
            if self._stopping.wait(SQLITE_CHECKPOINT_INTERVAL_S):
                return

    def _copy(self) -> None:
        connection = self._engine.raw_connection()  # autocommit: outside any transaction
        try:
            cursor = connection.cursor()
            try:
                cursor.execute("PRAGMA wal_checkpoint(PASSIVE)")
                cursor.fetchall()
            finally:
                cursor.close()
        finally:
            connection.close()
        self.copies += 1

    def close(self) -> None:
        """Stop the thread, waiting for a copy under way to finish."""
        self._stopping.set()
        self._written.set()
        self._thread.join()


MIGRATION_BLOCKS_PER_STEP = 1_000
"""Blocks whose transactions :func:`_migrate_from_1` reads and indexes in one statement."""


def _migrate_from_1(conn: Connection) -> None:
    """Schema 1 to 3, inside the opening transaction: the ``tx_ids`` index, filled with every
    stored transaction, and its ``tx_ids_through`` stamp. What schema 1 had instead (a
    unique index on ``tx_id``, and the asset events' foreign key to it) stays: it still
    holds, and only costs the writes of such a database what it cost before."""
    tx_ids_table.create(conn)
    txs = txs_table
    top = conn.execute(select(func.max(txs.c.height))).scalar() or 0
    for low in range(0, top + 1, MIGRATION_BLOCKS_PER_STEP):
        rows = conn.execute(
            select(txs.c.tx_id, txs.c.height, txs.c.tx_index).where(
                txs.c.height >= low, txs.c.height < low + MIGRATION_BLOCKS_PER_STEP
            )
        ).all()
        ids = [(id_key(tx_id), height, index) for tx_id, height, index in rows]
        ids = [row for row in ids if row[0] is not None]  # a corrupt row says so when read
        if ids:
            conn.execute(
                tx_ids_table.insert(),
                [{"id_key": k, "height": h, "tx_index": i} for k, h, i in sorted(ids)],
            )
    conn.execute(meta_table.insert(), [{"name": "tx_ids_through", "value": str(top)}])
    _stamp_version(conn)


def _stamp_version(conn: Connection) -> None:
    """Stamp :data:`SCHEMA_VERSION` on a database migrated to it. From schema 2 that is the
    whole migration: schema 3 only adds the ``tx_ids_moving`` stamp, which a store of schema 2
    would not read (it would add a moving batch to ``tx_ids`` again, and fail on its primary
    key), so a database that may hold one is stamped for stores that read it."""
    conn.execute(
        meta_table.update()
        .where(meta_table.c.name == "schema_version")
        .values(value=str(SCHEMA_VERSION))
    )


def _id_keys(tx_ids: Collection[str]) -> list[int]:
    return [key for key in map(id_key, tx_ids) if key is not None]


def _by_id(held: _HeldIds, id_keys: Collection[int]) -> Iterator[Any]:
    """Conditions on ``txs`` that select the stored transactions with these ``id_keys``
    (each condition alone: the ``tx_ids`` index is a subquery): those held in memory by
    position, the rest through the index. The caller compares the ids read."""
    keys = sorted(set(id_keys))
    positions = held.find(keys)
    position = tuple_(txs_table.c.height, txs_table.c.tx_index)
    for start in range(0, len(positions), KEYS_PER_QUERY_MAX):
        yield position.in_(positions[start : start + KEYS_PER_QUERY_MAX])
    for start in range(0, len(keys), KEYS_PER_QUERY_MAX):
        yield position.in_(
            select(tx_ids_table.c.height, tx_ids_table.c.tx_index).where(
                tx_ids_table.c.id_key.in_(keys[start : start + KEYS_PER_QUERY_MAX])
            )
        )


def _stored_tx_ids(
    conn: Connection, held: _HeldIds, tx_ids: set[str], keys: Collection[int], *where: Any
) -> set[str]:
    """Those of ``tx_ids`` (whose id keys are ``keys``) that are stored and match ``where``."""
    found: set[str] = set()
    for condition in _by_id(held, keys):
        query = select(txs_table.c.tx_id).where(condition, *where)
        found.update(tx_id for (tx_id,) in conn.execute(query) if tx_id in tx_ids)
    return found


def _refuse_stored_txs(
    conn: Connection, held: _HeldIds, height: int, tx_ids: list[str], keys: list[int]
) -> None:
    """Refuse block ``height`` if it repeats a transaction, its own or one stored before: what
    a unique index on ``tx_id`` would refuse, without its cost (docs/architecture.md)."""
    repeated = repeated_tx(tx_ids)
    if repeated is not None:
        raise StorageError(f"block {height} not written: {repeated}")
    stored = _stored_tx_ids(conn, held, set(tx_ids), keys)
    if stored:
        raise StorageError(
            f"block {height} not written: transaction {min(stored)} is already stored"
        )


def _load_held(conn: Connection) -> _HeldIds:
    """The ids held in memory: the transactions above the ``tx_ids_through`` stamp, read in
    chain order, and among them the batch that the ``tx_ids_moving`` stamp says was moving
    into ``tx_ids``, which moves on from the part it reached."""
    stamps = dict(
        conn.execute(
            select(meta_table.c.name, meta_table.c.value).where(
                meta_table.c.name.in_(("tx_ids_through", "tx_ids_moving"))
            )
        ).all()
    )
    through = _stamp_int(stamps.get("tx_ids_through") or "0", "tx_ids_through")
    moving_stamp = stamps.get("tx_ids_moving")
    top = done = parts = 0
    if moving_stamp is not None:
        top, done, parts = _read_moving_stamp(moving_stamp, through)
    recent, batch = _RecentIds(), _RecentIds()
    query = (
        select(txs_table.c.tx_id, txs_table.c.height, txs_table.c.tx_index)
        .where(txs_table.c.height > through)
        .order_by(txs_table.c.height, txs_table.c.tx_index)
    )
    for tx_id, height, index in conn.execute(query):
        key = id_key(tx_id)
        if key is not None:  # else the row is corrupt, and reading it will say so
            (batch if height <= top else recent).add(key, height, index)
    if moving_stamp is None:
        return _HeldIds(recent, None)
    return _HeldIds(recent, _Moving(batch, top, done=done, parts=parts))


_Parameters = list[tuple[Any, ...]]


class _BlockRows:
    """The parameter rows of one block as tuples, in the column order of :class:`_Writes`."""

    __slots__ = ("block", "events", "ids", "refs", "state_deletes", "state_puts", "txs")

    def __init__(self, record: BlockRecord) -> None:
        height = record.height
        self.block: _Parameters = [
            (height, record.block_hash, encode(record.header), encode(record.commit))
        ]
        self.txs: _Parameters = []
        self.refs: _Parameters = []
        self.ids: list[tuple[int, int, int]] = []  # tx_ids rows
        for tx in record.txs:
            self.txs.append((height, *tx_row(tx)))
            key = id_key(tx.tx_id)
            invariant(key is not None, f"block {height}: {tx.tx_id!r} is not a transaction id")
            self.ids.append((key, height, tx.index))  # type: ignore[arg-type]
            self.refs.extend((kind, ref_id, height, tx.index) for kind, ref_id in unique_refs(tx))
        changes = record.state_changes.items()
        self.state_puts: _Parameters = [(key, text) for key, text in changes if text is not None]
        self.state_deletes: _Parameters = [(key,) for key, text in changes if text is None]
        self.events: _Parameters = [
            (e.asset_id, e.seq, e.event_hash, e.prev_hash, e.tx_id, e.type)
            for e in record.asset_events
        ]


class _Writes:
    """The statements of a block commit, compiled once for the engine's dialect, in the order
    they run (asset events last), the inserts that move a batch of ids into ``tx_ids``, and
    the stamps in ``coopledger_meta`` that say how far it is.

    The rows go straight to the driver, as SQLAlchemy's per-row parameter processing would
    cost more than the database work: on SQLite by ``executemany`` (in-process, no round
    trips); on PostgreSQL inserts go by ``COPY``, which measured two to three times faster
    than pipelined or multi-row ``INSERT`` (docs/benchmarks.md), and the state upserts and
    deletes by ``executemany``.
    """

    def __init__(self, dialect: Dialect) -> None:
        self._copy = dialect.name == "postgresql"
        delete = state_table.delete().where(state_table.c.key == bindparam("state_key"))
        self._insert_block = self._insert_sql(dialect, blocks_table)
        self._insert_txs = self._insert_sql(dialect, txs_table)
        self._insert_refs = self._insert_sql(dialect, tx_refs_table)
        self._upsert_state = self._upsert_sql(dialect, state_table, "key", "value_json")
        self._delete_state = _positional(delete, dialect, ("state_key",))
        self._insert_events = self._insert_sql(dialect, asset_events_table)
        self._insert_ids = self._insert_sql(dialect, tx_ids_table)
        self._upsert_meta = self._upsert_sql(dialect, meta_table, "name", "value")
        self._delete_meta = _positional(
            meta_table.delete().where(meta_table.c.name == bindparam("meta_name")),
            dialect,
            ("meta_name",),
        )

    def _upsert_sql(self, dialect: Dialect, table: Table, key: str, value: str) -> str:
        upsert = (postgresql.insert if self._copy else sqlite.insert)(table)
        upsert = upsert.on_conflict_do_update(
            index_elements=[table.c[key]], set_={value: upsert.excluded[value]}
        )
        return _positional(upsert, dialect, (key, value))

    def _insert_sql(self, dialect: Dialect, table: Table) -> str:
        columns = [column.name for column in table.columns]
        if not self._copy:
            return _positional(table.insert(), dialect, columns)
        quote = dialect.identifier_preparer.quote
        names = ", ".join(quote(name) for name in columns)
        return f"COPY {quote(table.name)} ({names}) FROM STDIN"

    def write(self, conn: Connection, rows: _BlockRows) -> None:
        """Write ``rows`` (in table column order) inside ``conn``'s open transaction."""
        self._insert(conn, self._insert_block, rows.block)
        self._insert(conn, self._insert_txs, rows.txs)
        self._insert(conn, self._insert_refs, rows.refs)
        if rows.state_puts:
            conn.exec_driver_sql(self._upsert_state, rows.state_puts)
        if rows.state_deletes:
            conn.exec_driver_sql(self._delete_state, rows.state_deletes)
        self._insert(conn, self._insert_events, rows.events)

    def add_ids(self, conn: Connection, ids: list[tuple[int, int, int]]) -> None:
        """Add ``ids`` (``tx_ids`` rows, sorted by key) to the index."""
        self._insert(conn, self._insert_ids, ids)

    def stamp(self, conn: Connection, name: str, value: str | None) -> None:
        """Set the ``coopledger_meta`` entry ``name`` to ``value``, or remove it (``None``)."""
        if value is None:
            conn.exec_driver_sql(self._delete_meta, (name,))
        else:
            conn.exec_driver_sql(self._upsert_meta, (name, value))

    def _insert(self, conn: Connection, sql: str, parameters: _Parameters) -> None:
        if not parameters:
            return
        if not self._copy:
            conn.exec_driver_sql(sql, parameters)
            return
        cursor = conn.connection.driver_connection.cursor()  # type: ignore[union-attr]
        try:  # a psycopg.Error here becomes a StorageError in _database_errors
            with cursor.copy(sql) as copy:
                for row in parameters:
                    copy.write_row(row)
        finally:
            cursor.close()


def _positional(statement: Any, dialect: Dialect, columns: Sequence[str]) -> str:
    """The SQL of ``statement`` with positional parameters in exactly the order ``columns``."""
    compiled = statement.compile(dialect=dialect, column_keys=list(columns))
    invariant(
        tuple(compiled.positiontup or ()) == tuple(columns),
        f"parameters of {compiled} are {compiled.positiontup}, not {columns}",
    )
    return str(compiled)


# --- queries and rows -----------------------------------------------------------------------


def _block_query() -> Any:
    table = blocks_table
    return select(table.c.height, table.c.block_hash, table.c.header_json, table.c.commit_json)


def _block_from_row(row: _AnyRow) -> StoredBlock:
    return decode_block(row.height, row.block_hash, row.header_json, row.commit_json)


_TX_COLUMNS = (  # the first five are a TxSummary's, in its order
    txs_table.c.tx_id,
    txs_table.c.tx_index,
    txs_table.c.sender,
    txs_table.c.type,
    txs_table.c.code,
    txs_table.c.expires_at_ms,
    txs_table.c.envelope_json,
    txs_table.c.events_json,
    txs_table.c.refs_json,
)


def _tx_from_row(row: _AnyRow) -> TxRecord:
    return decode_tx(TxRow(*row[: len(_TX_COLUMNS)]))


def _committed_tx_query() -> Any:
    return select(*_TX_COLUMNS, txs_table.c.height, blocks_table.c.block_hash).join_from(
        txs_table, blocks_table, txs_table.c.height == blocks_table.c.height
    )


def _committed_tx_from_row(row: _AnyRow) -> CommittedTx:
    return CommittedTx(height=row.height, block_hash=row.block_hash, record=_tx_from_row(row))


# --- engine -------------------------------------------------------------------------------


def _create_engine(url: str, *, writer: bool) -> Engine:
    """The writing engine (one connection; on SQLite ``BEGIN IMMEDIATE`` and the large page
    cache) or the reading one."""
    try:
        parsed = make_url(url)
        postgres = parsed.get_backend_name() == "postgresql"
        database = parsed.database or ""
        if parsed.get_backend_name() == "sqlite" and (
            database in ("", ":memory:")
            or database.startswith("file::memory:")
            or parsed.query.get("mode") == "memory"
        ):
            raise ValueError(
                "SQLite needs a file (sqlite:///PATH): an in-memory database is "
                "private to one connection, and the store uses several"
            )
        pool: dict[str, Any] = (
            {"pool_size": 1, "max_overflow": 0}
            if writer
            # Last returned, first reused: reads between two blocks find a cache still valid.
            else {"pool_use_lifo": True}
        )
        # Positional parameters on both drivers (see _Writes).
        engine = create_engine(
            parsed, pool_pre_ping=postgres, paramstyle="format" if postgres else "qmark", **pool
        )
    except (ArgumentError, ImportError, ValueError, TypeError) as error:
        # TypeError: pool options a URL's own pool class refuses.
        raise StorageError(f"cannot use database URL {url!r}: {error}") from error
    if engine.dialect.name == "sqlite":
        cache_kib = SQLITE_CACHE_KIB if writer else SQLITE_READ_CACHE_KIB
        event.listen(engine, "connect", partial(_sqlite_connect, cache_kib=cache_kib))
        begin = "BEGIN IMMEDIATE" if writer else "BEGIN"
        event.listen(engine, "begin", partial(_sqlite_begin, statement=begin))
    elif engine.dialect.name != "postgresql":
        engine.dispose()
        raise StorageError(
            f"unsupported database {engine.dialect.name!r}: use sqlite:///PATH or "
            "postgresql+psycopg://USER@HOST/DATABASE"
        )
    return engine


def _sqlite_connect(dbapi_connection: Any, _connection_record: Any, *, cache_kib: int) -> None:
    # Stop pysqlite from issuing its own BEGIN (it skips DDL); _sqlite_begin does it.
    dbapi_connection.isolation_level = None
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA synchronous=FULL")
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.execute(f"PRAGMA cache_size=-{cache_kib}")
    cursor.execute(f"PRAGMA wal_autocheckpoint={SQLITE_CHECKPOINT_PAGES}")
    cursor.close()


def _sqlite_begin(conn: Connection, *, statement: str) -> None:
    """``BEGIN`` for readers; ``BEGIN IMMEDIATE`` for the writer, which takes the write lock
    at once rather than at the first write."""
    conn.exec_driver_sql(statement)


@contextmanager
def _database_errors(what: str) -> Iterator[None]:
    """Turn a driver or SQLAlchemy failure into a :class:`StorageError` that says what failed."""
    try:
        yield
    except (SQLAlchemyError, psycopg.Error) as error:  # psycopg's own from COPY
        detail = getattr(error, "orig", None) or error
        raise StorageError(f"{what}: {detail}".strip()) from error
