"""Storage: every operation against the memory store, SQLite and PostgreSQL.

The chain these tests store comes from :class:`ChainBuilder`, which is deterministic: block
``h`` is always the same, so a test (or the parent of a crashed writer) can rebuild what a
store must hold at any height and compare it with what the store gives back.

Run as a script (``python tests/test_storage.py URL TXS_PER_BLOCK``) this module is the
writer that the crash test kills: it commits blocks until it is killed and prints each
height once its commit has returned.
"""

from __future__ import annotations

import copy
import json
import os
import random
import signal
import subprocess
import sys
import threading
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
from conftest import TEST_CHAIN_ID, TEST_GENESIS_HASH, StoreOpener
from sqlalchemy import Engine, create_engine, event
from sqlalchemy.exc import OperationalError

from node.block import Commit, Header, block_hash
from node.codec import canonical, sha256_hex
from node.errors import SchemaVersionError, StorageError
from node.invariant import InvariantViolation
from node.limits import PAGE_SIZE_MAX
from node.merkle import MerkleTree, tx_leaf
from node.records import AssetEvent, BlockRecord, StateKey, StateValue, TxRecord, TxSummary
from node.storage import SCHEMA_VERSION, BlockStore, CommittedTx, SqlStore, TxPosition
from node.storage import _sql as sql_store
from node.storage._sql import SQLITE_CACHE_KIB, SQLITE_READ_CACHE_KIB

REPO_ROOT = Path(__file__).resolve().parent.parent
MEMBERS = ("m0", "m1", "m2")
CRASH_WAIT_S_MAX = 120
"""Bound on how long the crash test waits for its writer to report a commit."""


# --- a deterministic chain ----------------------------------------------------------------


class ChainBuilder:
    """Builds blocks 1, 2, ... and tracks what a store must hold after each.

    Transaction ``i`` of block ``h`` registers asset ``a-h-i`` and opens shipment
    ``s-h-i``; from block 2 on it also observes asset ``a-(h-1)-i`` (a second event in that
    asset's chain) and closes shipment ``s-(h-1)-i`` (a state delete). Every seventh
    transaction fails with a rule code, as failed transactions are recorded too.
    """

    def __init__(self, chain_id: str = TEST_CHAIN_ID, genesis_hash: str = TEST_GENESIS_HASH):
        self.chain_id = chain_id
        self.tip_hash = genesis_hash
        self.height = 0
        self.tx_counts: dict[int, int] = {}
        self.state: dict[StateKey, StateValue] = {}
        self.events: dict[str, list[AssetEvent]] = {}
        self.blocks: dict[int, BlockRecord] = {}

    def next_block(self, tx_count: int) -> BlockRecord:
        height = self.height + 1
        txs: list[TxRecord] = []
        changes: dict[StateKey, StateValue | None] = {}
        events: list[AssetEvent] = []
        for index in range(tx_count):
            txs.append(self._tx(height, index, changes, events))
        header: Header = {
            "chain_id": self.chain_id,
            "height": height,
            "round": height % 3,
            "timestamp_ms": 1_000 * height,
            "proposer": "v0",
            "prev_hash": self.tip_hash,
            "tx_root": MerkleTree([tx_leaf(tx.tx_id, tx.code) for tx in txs]).root().hex(),
            "state_root": sha256_hex(f"state {height}".encode()),
            "tx_count": tx_count,
        }
        hash_ = block_hash(header)
        commit: Commit = {
            "height": height,
            "round": header["round"],
            "block_hash": hash_,
            "signatures": [{"validator": "v0", "signature": "ab" * 64}],
        }
        record = BlockRecord(
            header=header,
            block_hash=hash_,
            commit=commit,
            txs=txs,
            state_changes={
                key: None if value is None else canonical(value).decode()
                for key, value in changes.items()
            },
            asset_events=events,
        )
        self.advance(record)
        return record

    def advance(self, record: BlockRecord) -> None:
        """Take ``record`` as committed: what the store must now hold."""
        self.height = record.height
        self.tip_hash = record.block_hash
        self.tx_counts[record.height] = len(record.txs)
        self.blocks[record.height] = record
        for key, text in record.state_changes.items():
            if text is None:
                self.state.pop(key, None)
            else:
                self.state[key] = json.loads(text)
        for asset_event in record.asset_events:
            self.events.setdefault(asset_event.asset_id, []).append(asset_event)

    def _tx(
        self,
        height: int,
        index: int,
        changes: dict[StateKey, StateValue | None],
        events: list[AssetEvent],
    ) -> TxRecord:
        sender = MEMBERS[index % len(MEMBERS)]
        recipient = MEMBERS[(index + 1) % len(MEMBERS)]
        asset_id = f"a-{height}-{index}"
        body = {
            "chain_id": self.chain_id,
            "type": "asset.register",
            "sender": sender,
            "nonce": height * 100_000 + index,
            "expires_at_ms": 1_000 * height + index,
            "payload": {"asset_id": asset_id, "product": "flour ü", "quantity": 25},
        }
        tx_id = sha256_hex(canonical(body))
        refs: list[tuple[str, str]] = [("asset", asset_id), ("member", sender)]
        changes[f"asset/{asset_id}"] = {"id": asset_id, "owner": sender, "event_count": 1}
        changes[f"shipment/s-{height}-{index}"] = {"id": f"s-{height}-{index}", "to": recipient}
        refs += [("shipment", f"s-{height}-{index}"), ("member", recipient), ("member", sender)]
        events.append(self._event(asset_id, tx_id, "asset.register"))
        previous = f"a-{height - 1}-{index}"
        if previous in self.events:
            changes[f"asset/{previous}"] = {"id": previous, "owner": sender, "event_count": 2}
            changes[f"shipment/s-{height - 1}-{index}"] = None
            refs.append(("asset", previous))
            events.append(self._event(previous, tx_id, "asset.observe"))
        code = "not-custodian" if index % 7 == 6 else "ok"
        envelope = {"body": body, "signer": "cd" * 32, "signature": "ef" * 64}
        return TxRecord(
            tx_id=tx_id,
            envelope=envelope,
            envelope_json=canonical(envelope).decode(),
            sender=sender,
            type="asset.register",
            expires_at_ms=body["expires_at_ms"],  # type: ignore[arg-type]
            index=index,
            code=code,
            events=[{"type": "asset.registered", "asset_id": asset_id}] if code == "ok" else [],
            refs=tuple(refs),
        )

    def _event(self, asset_id: str, tx_id: str, type_: str) -> AssetEvent:
        chain = self.events.get(asset_id, [])
        prev = chain[-1].event_hash if chain else "00" * 32
        return AssetEvent(
            asset_id=asset_id,
            seq=len(chain),
            event_hash=sha256_hex(f"{prev}{tx_id}{type_}{asset_id}".encode()),
            prev_hash=prev,
            tx_id=tx_id,
            type=type_,
        )


def build_chain(store: BlockStore, tx_counts: list[int]) -> ChainBuilder:
    builder = ChainBuilder()
    for tx_count in tx_counts:
        store.commit_block(builder.next_block(tx_count))
    return builder


def rehash(record: BlockRecord, **header_changes: Any) -> BlockRecord:
    """``record`` with a changed header, consistently re-hashed (only the chain link breaks)."""
    header: Header = {**record.header, **header_changes}  # type: ignore[typeddict-item]
    hash_ = block_hash(header)
    commit: Commit = {**record.commit, "height": header["height"], "block_hash": hash_}
    return replace(record, header=header, block_hash=hash_, commit=commit)


def assert_store_holds(store: BlockStore, builder: ChainBuilder) -> None:
    """Every block, transaction, event and state entry the builder made is stored whole."""
    tip = store.tip()
    assert tip is not None and tip.height == builder.height
    for height, record in builder.blocks.items():
        stored = store.block(height)
        assert stored is not None
        assert (stored.block_hash, stored.header, stored.commit) == (
            record.block_hash,
            record.header,
            record.commit,
        )
        assert store.block_txs(height) == record.txs
        for tx in record.txs:  # found by id: the SQL store goes through its id-key index
            assert store.tx(tx.tx_id) == CommittedTx(
                height=height, block_hash=record.block_hash, record=tx
            )
        assert store.block_tx_summaries(height) == [
            TxSummary(tx_id=tx.tx_id, index=tx.index, sender=tx.sender, type=tx.type, code=tx.code)
            for tx in record.txs
        ]
        tree = store.block_tx_tree(height)
        assert tree is not None and len(tree) == len(record.txs)
        assert tree.root().hex() == record.header["tx_root"]
    assert dict(store.iter_state()) == builder.state
    for asset_id, events in builder.events.items():
        assert store.asset_events(asset_id) == events


# --- round trips --------------------------------------------------------------------------


def test_an_empty_store_has_no_tip_and_no_data(open_store: StoreOpener) -> None:
    store = open_store()
    assert store.tip() is None
    assert store.block(1) is None
    assert store.block_txs(1) == []
    assert store.block_tx_summaries(1) == []
    assert store.block_tx_tree(1) is None
    assert store.tx("00" * 32) is None
    assert store.state_get("asset/x") is None
    assert store.state_get_many(["asset/x"]) == {}
    assert list(store.iter_state()) == []
    assert store.asset_events("x") == []
    assert store.txs_by_ref("asset", "x", limit=10) == []
    assert store.committed_unexpired(["00" * 32], 0) == set()
    assert (store.chain_id, store.genesis_hash) == (TEST_CHAIN_ID, TEST_GENESIS_HASH)


def test_blocks_round_trip(open_store: StoreOpener) -> None:
    store = open_store()
    builder = build_chain(store, [5, 0, 8])
    assert_store_holds(store, builder)
    assert store.block(0) is None
    assert store.block(4) is None
    assert store.block_txs(2) == []
    assert store.block_tx_summaries(2) == []
    assert store.block_tx_summaries(4) == []
    assert store.block_tx_tree(4) is None


def test_a_transaction_reads_back_with_its_block(open_store: StoreOpener) -> None:
    store = open_store()
    builder = build_chain(store, [3, 4])
    for height in (1, 2):
        for record in builder.blocks[height].txs:
            committed = store.tx(record.tx_id)
            assert committed is not None
            assert committed.record == record
            assert committed.height == height
            assert committed.block_hash == builder.blocks[height].block_hash
            assert committed.position == TxPosition(height, record.index)


def test_state_reads(open_store: StoreOpener) -> None:
    store = open_store()
    builder = build_chain(store, [4, 4])
    assert store.state_get("asset/a-2-3") == builder.state["asset/a-2-3"]
    assert store.state_get("shipment/s-1-0") is None  # deleted by block 2
    assert store.state_get("shipment/s-2-0") == {"id": "s-2-0", "to": "m1"}
    keys = ["asset/a-1-0", "asset/a-2-1", "asset/none", "asset/a-1-0", "shipment/s-1-1"]
    assert store.state_get_many(keys) == {
        "asset/a-1-0": builder.state["asset/a-1-0"],
        "asset/a-2-1": builder.state["asset/a-2-1"],
    }
    many = [f"asset/a-{h}-{i}" for h in (1, 2) for i in range(4)] * 300  # several IN chunks
    assert store.state_get_many(many) == {key: builder.state[key] for key in set(many)}


def test_iter_state_streams_in_code_point_order(open_store: StoreOpener) -> None:
    genesis_state: dict[StateKey, StateValue] = {
        key: {"name": key} for key in ("member/zoe", "member/Zoë", "member/é", "member/Z", "k")
    }
    store = open_store(genesis_state=genesis_state)
    builder = build_chain(store, [30] * 3)
    expected = {**genesis_state, **builder.state}
    stream = store.iter_state()
    assert [key for key, _ in stream] == sorted(expected)
    stream = store.iter_state()
    assert next(stream) == ("asset/a-1-0", expected["asset/a-1-0"])
    stream.close()  # a stream closed half way holds nothing back
    store.commit_block(builder.next_block(2))
    assert dict(store.iter_state()) == {**genesis_state, **builder.state}


def test_genesis_state_is_written_once_with_the_stamp(sql_url: str) -> None:
    state: dict[StateKey, StateValue] = {"member/m0": {"id": "m0"}, "registry": {"members": []}}
    store = SqlStore(
        sql_url, chain_id=TEST_CHAIN_ID, genesis_hash=TEST_GENESIS_HASH, genesis_state=state
    )
    store.commit_block(ChainBuilder().next_block(1))
    store.close()
    reopened = SqlStore(
        sql_url, chain_id=TEST_CHAIN_ID, genesis_hash=TEST_GENESIS_HASH, genesis_state={"x": {}}
    )
    try:
        assert reopened.state_get_many(["member/m0", "registry", "x"]) == state
    finally:
        reopened.close()


def test_asset_events_come_in_seq_order(open_store: StoreOpener) -> None:
    store = open_store()
    builder = build_chain(store, [3, 3])
    events = store.asset_events("a-1-2")
    assert [event.seq for event in events] == [0, 1]
    assert events == builder.events["a-1-2"]
    assert events[1].prev_hash == events[0].event_hash


def test_committed_unexpired_are_those_expiring_after_now(open_store: StoreOpener) -> None:
    store = open_store()
    builder = build_chain(store, [3, 3])
    everything = {tx.tx_id: tx.expires_at_ms for b in builder.blocks.values() for tx in b.txs}
    asked = [*everything, "00" * 32, "ff" * 32]
    assert store.committed_unexpired(asked, 0) == set(everything)
    # block 1 expires at 1000..1002, block 2 at 2000..2002; "expired" includes now itself.
    later = {tx_id for tx_id, expiry in everything.items() if expiry > 2_000}
    assert store.committed_unexpired(asked, 2_000) == later
    assert len(later) == 2
    assert store.committed_unexpired(asked, 2_002) == set()
    assert store.committed_unexpired([], 0) == set()


def test_a_text_that_is_no_transaction_id_finds_nothing(open_store: StoreOpener) -> None:
    store = open_store()
    builder = build_chain(store, [3])
    stored = builder.blocks[1].txs[0].tx_id
    for text in ("", "zz" * 32, stored.upper(), stored[:-2], stored + "00", "a'; --"):
        assert store.tx(text) is None
        assert store.committed_unexpired([text], 0) == set()
    assert store.committed_unexpired([stored, "zz" * 32], 0) == {stored}


def _recent_rows(store: SqlStore) -> list[tuple[int, int, int]]:
    """The ids the store holds in memory above a moving batch, as ``tx_ids`` rows."""
    recent = store._held.recent
    return sorted(recent.rows(recent.positions))


def _moving(store: SqlStore) -> tuple[int, int, list[tuple[int, int, int]]] | None:
    """The batch moving into the index: its top height, the parts in, and its ids."""
    moving = store._held.moving
    if moving is None:
        return None
    return moving.top, moving.done, sorted(moving.ids.rows(moving.ids.positions))


def _ids_above(builder: ChainBuilder, through: int, top: int | None = None) -> list[Any]:
    return sorted(
        (key, height, tx.index)
        for height, block in builder.blocks.items()
        if through < height <= (top if top is not None else height)
        for tx in block.txs
        if (key := sql_store.id_key(tx.tx_id)) is not None
    )


def _index_rows(url: str) -> list[tuple[int, int, int]]:
    return sorted(_query(url, "SELECT id_key, height, tx_index FROM tx_ids"))


def _id_stamps(url: str) -> dict[str, str]:
    names = "('tx_ids_through', 'tx_ids_moving')"
    return dict(_query(url, f"SELECT name, value FROM coopledger_meta WHERE name IN {names}"))


def _part(row: tuple[int, int, int], parts: int) -> int:
    return (row[0] + (1 << 63)) * parts >> 64


def _open_batched(
    url: str, monkeypatch: pytest.MonkeyPatch, batch: int, parts: int = sql_store.ID_MOVE_PARTS
) -> SqlStore:
    """A store whose id batches fill at ``batch`` transactions and move in ``parts``."""
    monkeypatch.setattr(sql_store, "ID_BATCH_TXS", batch)
    monkeypatch.setattr(sql_store, "ID_MOVE_PARTS", parts)
    return SqlStore(url, chain_id=TEST_CHAIN_ID, genesis_hash=TEST_GENESIS_HASH)


def _commit_fails(store: SqlStore, record: BlockRecord) -> None:
    """Commit ``record`` with the database failing at the commit itself, after every
    statement ran (and the ids were taken in memory)."""

    def fail(_conn: Any) -> None:
        raise OperationalError("COMMIT", None, OSError("disk gone at the commit"))

    event.listen(store._write_engine, "commit", fail)
    try:
        with pytest.raises(StorageError, match="disk gone at the commit"):
            store.commit_block(record)
    finally:
        event.remove(store._write_engine, "commit", fail)


def test_ids_move_from_memory_to_the_index_in_batches(
    sql_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    store = _open_batched(sql_url, monkeypatch, 10, 4)
    builder = ChainBuilder()
    try:
        for count in (4, 4):  # 8 in memory
            store.commit_block(builder.next_block(count))
        assert _recent_rows(store) == _ids_above(builder, 0)
        assert _moving(store) is None and _index_rows(sql_url) == []
        store.commit_block(builder.next_block(3))  # 11: blocks 1 to 3 are a full batch
        batch = _ids_above(builder, 0)
        assert _recent_rows(store) == [] and _moving(store) == (3, 0, batch)
        assert _index_rows(sql_url) == [] and _id_stamps(sql_url) == {
            "tx_ids_through": "0",
            "tx_ids_moving": "3 0/4",
        }
        # Each block adds at least one part, and at least as many ids as it brings (while
        # any are left).
        done, moved = 0, 0
        while _moving(store) is not None:
            store.commit_block(builder.next_block(1))
            moving = _moving(store)
            now = moving[1] if moving is not None else 4
            index = _index_rows(sql_url)
            assert now > done and len(index) - moved >= min(1, len(batch) - moved)
            assert index == [row for row in batch if _part(row, 4) < now]
            done, moved = now, len(index)
            assert_store_holds(store, builder)  # found from memory, the index, or both
            done = now
        assert _id_stamps(sql_url) == {"tx_ids_through": "3"}
        assert _recent_rows(store) == _ids_above(builder, 3)
        every = {tx.tx_id for block in builder.blocks.values() for tx in block.txs}
        assert store.committed_unexpired(every, 0) == every
        expected = copy.deepcopy(builder)
        for replayed_from in (1, 4):  # one in the index, one in memory
            good = builder.next_block(2)
            replayed = replace(expected.blocks[replayed_from].txs[0], index=2)
            bad = rehash(replace(good, txs=[*good.txs, replayed]), tx_count=3)
            with pytest.raises(StorageError, match="already stored"):
                store.commit_block(bad)
            _assert_unchanged(store, expected, bad)
            builder = copy.deepcopy(expected)
    finally:
        store.close()
    reopened = SqlStore(sql_url, chain_id=TEST_CHAIN_ID, genesis_hash=TEST_GENESIS_HASH)
    try:
        assert _recent_rows(reopened) == _ids_above(builder, 3)  # read back from txs
        assert _moving(reopened) is None
        assert_store_holds(reopened, builder)
    finally:
        reopened.close()


def test_a_batch_moving_into_the_index_resumes_where_it_stopped(
    sql_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A store stopped halfway through a move (here by a failed commit and a close) opens
    with the batch in memory and the stamp's parts in the index, and moves the rest: every
    row goes in exactly once (a second time would break the index's primary key)."""
    store = _open_batched(sql_url, monkeypatch, 30, 8)
    try:
        builder = build_chain(store, [16, 16, 0, 0])  # a batch of 32, and one part each
        batch = _ids_above(builder, 0, 2)
        moving = _moving(store)
        assert moving is not None and moving[:2] == (2, 2)
        index = _index_rows(sql_url)
        assert index == [row for row in batch if _part(row, 8) < 2] and index
        _commit_fails(store, copy.deepcopy(builder).next_block(3))
        assert _moving(store) == moving and _index_rows(sql_url) == index
        assert _id_stamps(sql_url)["tx_ids_moving"] == "2 2/8"
    finally:
        store.close()
    monkeypatch.setattr(sql_store, "ID_MOVE_PARTS", 2)  # the stamp's 8 parts hold
    reopened = SqlStore(sql_url, chain_id=TEST_CHAIN_ID, genesis_hash=TEST_GENESIS_HASH)
    try:
        assert _moving(reopened) == moving and _recent_rows(reopened) == []
        assert_store_holds(reopened, builder)
        while _moving(reopened) is not None:
            reopened.commit_block(builder.next_block(1))
        assert _index_rows(sql_url) == batch
        assert _id_stamps(sql_url) == {"tx_ids_through": "2"}
        assert_store_holds(reopened, builder)
    finally:
        reopened.close()


def test_a_batch_still_moving_goes_in_whole_when_the_next_one_fills(
    sql_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    store = _open_batched(sql_url, monkeypatch, 10, 1_000)
    try:
        builder = build_chain(store, [19])  # a batch of 19, of which the next 10 move
        store.commit_block(builder.next_block(10))  # and fill the next batch
        assert _index_rows(sql_url) == _ids_above(builder, 0, 1)
        assert _moving(store) == (2, 0, _ids_above(builder, 1))
        assert _id_stamps(sql_url) == {"tx_ids_through": "1", "tx_ids_moving": "2 0/1000"}
        assert_store_holds(store, builder)
    finally:
        store.close()


def test_readers_find_every_committed_id_while_batches_move(
    sql_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Readers look ids up while the writer fills batches and moves them into the index: an
    id committed before a look-up started is always found, in memory or in the index."""
    store = _open_batched(sql_url, monkeypatch, 7, 4)
    committed: list[str] = []
    missed: list[set[str]] = []
    errors: list[Exception] = []
    stop = threading.Event()

    def read() -> None:
        try:
            while not stop.is_set():
                wanted = set(committed)
                found = store.committed_unexpired(wanted, 0)
                if found != wanted:
                    missed.append(wanted - found)
        except Exception as error:  # reported by the assertions below
            errors.append(error)

    threads = [threading.Thread(target=read) for _ in range(2)]
    builder = ChainBuilder()
    try:
        for thread in threads:
            thread.start()
        for _ in range(40):
            block = builder.next_block(3)
            store.commit_block(block)
            committed.extend(tx.tx_id for tx in block.txs)
    finally:
        stop.set()
        for thread in threads:
            thread.join()
        store.close()
    assert errors == [] and missed == []
    through = int(_id_stamps(sql_url)["tx_ids_through"])  # batches did move meanwhile
    assert through > 0 and set(_ids_above(builder, 0, through)) <= set(_index_rows(sql_url))


@pytest.mark.parametrize(
    ("stamp", "message"),
    [
        ("2 1/", "holds no count"),
        ("x 0/4", "holds no count"),
        ("2 -1/4", "holds no count"),
        ("2 4/4", "does not fit"),
        ("0 0/4", "does not fit"),
        ("2 0/99999", "does not fit"),
    ],
)
def test_a_corrupt_moving_stamp_is_refused(sql_url: str, stamp: str, message: str) -> None:
    store = SqlStore(sql_url, chain_id=TEST_CHAIN_ID, genesis_hash=TEST_GENESIS_HASH)
    build_chain(store, [3, 3])
    store.close()
    _execute(sql_url, f"INSERT INTO coopledger_meta VALUES ('tx_ids_moving', '{stamp}')")
    with pytest.raises(StorageError, match=message):
        SqlStore(sql_url, chain_id=TEST_CHAIN_ID, genesis_hash=TEST_GENESIS_HASH)


def test_a_refused_block_leaves_no_ids_in_memory(
    sql_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    store = _open_batched(sql_url, monkeypatch, 1_000)
    try:
        builder = build_chain(store, [4, 4])
        before = _ids_above(builder, 0)
        good = builder.next_block(4)
        _commit_fails(store, good)
        assert _recent_rows(store) == before and len(before) == 8
        assert store.tip() is not None and store.tip().height == 2  # type: ignore[union-attr]
        store.commit_block(good)
        assert _recent_rows(store) == _ids_above(builder, 0)
    finally:
        store.close()


@pytest.mark.parametrize("batch", [3, 1_000])
def test_ids_sharing_an_id_key_are_told_apart(
    sql_url: str, monkeypatch: pytest.MonkeyPatch, batch: int
) -> None:
    """The id-key index is not unique: with keys of 4 bits (16 values) instead of 64, many
    ids share a key, and every look-up must still compare the whole id, in memory
    (``batch`` 1,000) and in the index (3)."""
    monkeypatch.setattr(sql_store, "ID_BATCH_TXS", batch)
    real = sql_store.id_key

    def coarse(tx_id: str) -> int | None:
        key = real(tx_id)
        return None if key is None else key % 16

    monkeypatch.setattr(sql_store, "id_key", coarse)
    store = SqlStore(sql_url, chain_id=TEST_CHAIN_ID, genesis_hash=TEST_GENESIS_HASH)
    try:
        builder = build_chain(store, [20, 20, 20])
        assert_store_holds(store, builder)
        stored = {tx.tx_id for block in builder.blocks.values() for tx in block.txs}
        taken = {coarse(tx_id) for tx_id in stored}
        absent = [sha256_hex(f"absent {n}".encode()) for n in range(40)]
        absent = [tx_id for tx_id in absent if coarse(tx_id) in taken]
        assert len(absent) >= 20  # each shares its key with a stored id
        assert all(store.tx(tx_id) is None for tx_id in absent)
        assert store.committed_unexpired([*stored, *absent], 0) == stored
        store.commit_block(builder.next_block(20))  # new ids, keys already taken: accepted
        assert_store_holds(store, builder)
    finally:
        store.close()


# --- history pages ------------------------------------------------------------------------


def test_history_pages_cover_every_transaction_once_in_order(open_store: StoreOpener) -> None:
    store = open_store()
    builder = build_chain(store, [9, 0, 12, 7])
    expected = [
        TxPosition(height, tx.index)
        for height, record in sorted(builder.blocks.items())
        for tx in record.txs
        if ("member", "m1") in tx.refs
    ]
    assert len(expected) == 19  # m1 sends at index 1 mod 3 and receives at index 0 mod 3
    for limit in (1, 2, 5, len(expected), PAGE_SIZE_MAX):
        positions: list[TxPosition] = []
        after: TxPosition | None = None
        while page := store.txs_by_ref("member", "m1", after=after, limit=limit):
            assert len(page) <= limit
            positions += [committed.position for committed in page]
            after = page[-1].position
        assert positions == expected


def test_history_page_bounds(open_store: StoreOpener) -> None:
    store = open_store()
    builder = build_chain(store, [3, 3])
    history = store.txs_by_ref("asset", "a-1-1", limit=10)
    assert [c.record.tx_id for c in history] == [
        builder.blocks[1].txs[1].tx_id,
        builder.blocks[2].txs[1].tx_id,
    ]
    assert history[1].block_hash == builder.blocks[2].block_hash
    assert store.txs_by_ref("asset", "a-1-1", limit=1) == history[:1]
    assert store.txs_by_ref("asset", "a-1-1", after=history[0].position, limit=10) == history[1:]
    assert store.txs_by_ref("asset", "a-1-1", after=TxPosition(1, 99), limit=10) == history[1:]
    assert store.txs_by_ref("asset", "a-1-1", after=history[1].position, limit=10) == []
    assert store.txs_by_ref("asset", "a-1-1", after=TxPosition(99, 0), limit=10) == []
    assert store.txs_by_ref("shipment", "a-1-1", limit=10) == []  # kinds do not mix
    for limit in (0, -1, PAGE_SIZE_MAX + 1):
        with pytest.raises(InvariantViolation, match="page size"):
            store.txs_by_ref("asset", "a-1-1", limit=limit)


def test_a_reference_named_twice_by_one_transaction_is_indexed_once(
    open_store: StoreOpener,
) -> None:
    store = open_store()
    builder = build_chain(store, [1])
    record = builder.blocks[1].txs[0]
    assert record.refs.count(("member", "m0")) == 2
    assert [c.record for c in store.txs_by_ref("member", "m0", limit=10)] == [record]


# --- refused blocks -----------------------------------------------------------------------


def test_the_first_block_must_be_height_one_after_genesis(open_store: StoreOpener) -> None:
    store = open_store()
    block = ChainBuilder().next_block(1)
    with pytest.raises(StorageError, match=r"tip is empty, so the next block is 1"):
        store.commit_block(rehash(block, height=2))
    with pytest.raises(StorageError, match=r"is not the hash .* of the genesis"):
        store.commit_block(rehash(block, prev_hash="11" * 32))
    assert store.tip() is None
    store.commit_block(block)


def test_a_block_that_does_not_extend_the_tip_is_refused(open_store: StoreOpener) -> None:
    store = open_store()
    builder = build_chain(store, [2, 2])
    following = builder.next_block(2)
    with pytest.raises(StorageError, match=r"refusing block 2: the stored tip is 2"):
        store.commit_block(builder.blocks[2])
    with pytest.raises(StorageError, match=r"refusing block 4: .* next block is 3"):
        store.commit_block(rehash(following, height=4))
    with pytest.raises(StorageError, match=r"refusing block 3: prev_hash 1111"):
        store.commit_block(rehash(following, prev_hash="11" * 32))
    tip = store.tip()
    assert tip is not None and tip.height == 2
    store.commit_block(following)


def test_a_record_that_contradicts_itself_is_a_bug(open_store: StoreOpener) -> None:
    store = open_store()
    block = ChainBuilder().next_block(3)
    with pytest.raises(InvariantViolation, match="block_hash is not its header's"):
        store.commit_block(replace(block, block_hash="00" * 32))
    with pytest.raises(InvariantViolation, match="header counts 3 transactions"):
        store.commit_block(replace(block, txs=block.txs[:2]))
    with pytest.raises(InvariantViolation, match="transaction 0 has index 1"):
        store.commit_block(replace(block, txs=[block.txs[1], block.txs[0], block.txs[2]]))
    with pytest.raises(InvariantViolation, match="for chain 'other'"):
        store.commit_block(rehash(block, chain_id="other"))
    assert store.tip() is None


# --- one block, one transaction -----------------------------------------------------------


def _assert_unchanged(store: BlockStore, builder: ChainBuilder, refused: BlockRecord) -> None:
    assert_store_holds(store, builder)
    assert store.block(refused.height) is None
    assert store.block_txs(refused.height) == []
    new_tx_ids = {tx.tx_id for tx in refused.txs} - {
        tx.tx_id for block in builder.blocks.values() for tx in block.txs
    }
    assert all(store.tx(tx_id) is None for tx_id in new_tx_ids)
    assert store.txs_by_ref("asset", f"a-{refused.height}-0", limit=10) == []
    committed = {tx.tx_id for block in builder.blocks.values() for tx in block.txs}
    assert store.committed_unexpired([*committed, *new_tx_ids], 0) == committed


def test_a_constraint_failing_at_the_last_write_leaves_nothing(open_store: StoreOpener) -> None:
    store = open_store()
    builder = build_chain(store, [4, 4])
    expected = copy.deepcopy(builder)
    good = builder.next_block(4)
    # Asset events are written last: a repeated (asset, seq) fails after the block row,
    # the transactions, their references and the state changes are written.
    repeated = replace(good.asset_events[-1], seq=0)
    bad = replace(good, asset_events=[*good.asset_events, repeated])
    with pytest.raises(StorageError, match="block 3 not written"):
        store.commit_block(bad)
    _assert_unchanged(store, expected, bad)
    store.commit_block(good)
    assert_store_holds(store, builder)


def test_a_transaction_stored_twice_leaves_nothing(open_store: StoreOpener) -> None:
    store = open_store()
    builder = build_chain(store, [4])
    expected = copy.deepcopy(builder)
    good = builder.next_block(3)
    replayed = replace(expected.blocks[1].txs[0], index=3)
    bad = rehash(replace(good, txs=[*good.txs, replayed]), tx_count=4)
    with pytest.raises(StorageError, match=r"block 2 not written: transaction .* already stored"):
        store.commit_block(bad)
    _assert_unchanged(store, expected, bad)


def test_a_transaction_twice_in_one_block_leaves_nothing(open_store: StoreOpener) -> None:
    store = open_store()
    builder = build_chain(store, [4])
    expected = copy.deepcopy(builder)
    good = builder.next_block(3)
    repeated = replace(good.txs[0], index=3)
    bad = rehash(replace(good, txs=[*good.txs, repeated]), tx_count=4)
    message = f"block 2 not written: transaction {repeated.tx_id} is in the block twice"
    with pytest.raises(StorageError, match=message):
        store.commit_block(bad)
    _assert_unchanged(store, expected, bad)
    store.commit_block(good)
    assert_store_holds(store, builder)


# --- the database as found on disk --------------------------------------------------------


def _execute(url: str, statement: str) -> None:
    engine = create_engine(url)
    try:
        with engine.begin() as conn:
            conn.exec_driver_sql(statement)
    finally:
        engine.dispose()


def _query(url: str, statement: str) -> list[Any]:
    engine = create_engine(url)
    try:
        with engine.connect() as conn:
            return [tuple(row) for row in conn.exec_driver_sql(statement)]
    finally:
        engine.dispose()


def test_reopening_finds_the_chain(sql_url: str) -> None:
    store = SqlStore(sql_url, chain_id=TEST_CHAIN_ID, genesis_hash=TEST_GENESIS_HASH)
    builder = build_chain(store, [3, 3])
    store.close()
    reopened = SqlStore(sql_url, chain_id=TEST_CHAIN_ID, genesis_hash=TEST_GENESIS_HASH)
    try:
        assert_store_holds(reopened, builder)
        reopened.commit_block(builder.next_block(2))
        assert_store_holds(reopened, builder)
    finally:
        reopened.close()


def _sqlite_table_sql(url: str) -> dict[str, str]:
    engine = create_engine(url)
    try:
        with engine.connect() as conn:
            rows = conn.exec_driver_sql("SELECT name, sql FROM sqlite_master WHERE type = 'table'")
            return {name: sql for name, sql in rows}
    finally:
        engine.dispose()


def test_sqlite_appends_event_rows_and_keeps_narrow_tables_without_rowid(sqlite_url: str) -> None:
    # docs/architecture.md, "Why asset_events keeps its rowid on SQLite": the wide event rows
    # go in rowid order, only their (asset_id, seq) index takes random inserts.
    SqlStore(sqlite_url, chain_id=TEST_CHAIN_ID, genesis_hash=TEST_GENESIS_HASH).close()
    tables = _sqlite_table_sql(sqlite_url)
    assert "WITHOUT ROWID" not in tables["asset_events"]
    assert "PRIMARY KEY (asset_id, seq)" in tables["asset_events"]
    assert "WITHOUT ROWID" in tables["tx_refs"]
    assert "WITHOUT ROWID" in tables["state"]


def test_a_sqlite_database_with_the_earlier_event_table_layout_still_works(
    sqlite_url: str,
) -> None:
    SqlStore(sqlite_url, chain_id=TEST_CHAIN_ID, genesis_hash=TEST_GENESIS_HASH).close()
    earlier = _sqlite_table_sql(sqlite_url)["asset_events"] + " WITHOUT ROWID"
    _execute(sqlite_url, "DROP TABLE asset_events")
    _execute(sqlite_url, earlier)
    store = SqlStore(sqlite_url, chain_id=TEST_CHAIN_ID, genesis_hash=TEST_GENESIS_HASH)
    try:
        assert "WITHOUT ROWID" in _sqlite_table_sql(sqlite_url)["asset_events"]
        builder = build_chain(store, [4, 4, 4])
        assert_store_holds(store, builder)
    finally:
        store.close()


def test_sqlite_blocks_go_through_one_connection_with_the_large_cache(sqlite_url: str) -> None:
    # node/storage/_sql.py, SqlStore: a connection's page cache is discarded when another
    # connection commits, so every block must be written by the same one. Readers running
    # meanwhile (as the gateway and the ledger do) made a shared pool hand blocks to
    # whichever connection was free.
    writers: list[tuple[int, int]] = []  # (connection, its cache_size) per block written
    caches: dict[int, int] = {}  # every connection that ran a statement: its cache_size

    def record(conn: Any, _cursor: Any, statement: str, *_: Any) -> None:
        dbapi = conn.connection.dbapi_connection
        cache = dbapi.execute("PRAGMA cache_size").fetchone()[0]
        caches[id(dbapi)] = cache
        if statement.startswith("INSERT INTO blocks"):
            writers.append((id(dbapi), cache))

    store = SqlStore(sqlite_url, chain_id=TEST_CHAIN_ID, genesis_hash=TEST_GENESIS_HASH)
    event.listen(Engine, "before_cursor_execute", record)
    stop = threading.Event()
    reads: list[int] = []
    errors: list[Exception] = []

    def read() -> None:
        try:
            while not stop.is_set():
                store.tip()
                store.state_get("member/nobody")
                reads.append(1)
        except Exception as error:  # reported by the assertions below
            errors.append(error)

    threads = [threading.Thread(target=read) for _ in range(3)]
    try:
        for thread in threads:
            thread.start()
        builder = ChainBuilder()
        for _ in range(12):
            store.commit_block(builder.next_block(3))
            time.sleep(0.01)
    finally:
        stop.set()
        for thread in threads:
            thread.join()
        event.remove(Engine, "before_cursor_execute", record)
        store.close()
    assert errors == [] and len(reads) > 12
    assert len(writers) == 12
    (writer,) = {connection for connection, _ in writers}
    assert {cache for _, cache in writers} == {-SQLITE_CACHE_KIB}
    readers = {cache for connection, cache in caches.items() if connection != writer}
    assert readers == {-SQLITE_READ_CACHE_KIB}


def _checkpoint_threads() -> list[threading.Thread]:
    return [thread for thread in threading.enumerate() if thread.name == "sqlite-checkpoint"]


def test_sqlite_copies_the_wal_back_beside_the_writer(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # node/storage/_sql.py, _Checkpointer: blocks reach the database file by a thread of
    # the store's own, not by a checkpoint inside the commit of whichever block filled the
    # WAL. The writer's own backstop is far above what these blocks write, so the database
    # file grows only if the thread copied the WAL back, while the store is open (closing the
    # last connection would checkpoint too).
    monkeypatch.setattr(sql_store, "SQLITE_CHECKPOINT_INTERVAL_S", 0.01)
    path = tmp_path / "ledger.sqlite"
    before = _checkpoint_threads()
    store = SqlStore(f"sqlite:///{path}", chain_id=TEST_CHAIN_ID, genesis_hash=TEST_GENESIS_HASH)
    try:
        assert len(_checkpoint_threads()) == len(before) + 1
        writer = store._write_engine.raw_connection()
        try:
            backstop = writer.execute("PRAGMA wal_autocheckpoint").fetchone()[0]
        finally:
            writer.close()
        assert backstop == sql_store.SQLITE_CHECKPOINT_PAGES
        empty = path.stat().st_size
        builder = build_chain(store, [40] * 5)
        deadline = time.monotonic() + 30
        while path.stat().st_size <= empty and time.monotonic() < deadline:
            time.sleep(0.02)
        assert path.stat().st_size > empty, "the WAL was never copied back"
        assert store._checkpointer is not None and store._checkpointer.copies >= 1
        assert_store_holds(store, builder)
    finally:
        store.close()
    assert _checkpoint_threads() == before  # close stops the thread


def test_a_failing_checkpoint_is_logged_and_the_writer_goes_on(
    sqlite_url: str, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setattr(sql_store, "SQLITE_CHECKPOINT_INTERVAL_S", 0.01)

    def fail(self: Any) -> None:
        raise OperationalError("PRAGMA wal_checkpoint", {}, Exception("disk I/O error"))

    monkeypatch.setattr(sql_store._Checkpointer, "_copy", fail)
    store = SqlStore(sqlite_url, chain_id=TEST_CHAIN_ID, genesis_hash=TEST_GENESIS_HASH)
    try:
        builder = build_chain(store, [5, 5, 5])
        deadline = time.monotonic() + 30
        while "WAL checkpoint failed" not in caplog.text and time.monotonic() < deadline:
            time.sleep(0.02)
        assert "WAL checkpoint failed" in caplog.text and "disk I/O error" in caplog.text
        store.commit_block(builder.next_block(5))  # the thread lives on, the writer too
        assert_store_holds(store, builder)
        assert store._checkpointer is not None and store._checkpointer._thread.is_alive()
    finally:
        store.close()


def test_a_database_of_another_schema_version_is_refused(sql_url: str) -> None:
    SqlStore(sql_url, chain_id=TEST_CHAIN_ID, genesis_hash=TEST_GENESIS_HASH).close()
    _execute(sql_url, "UPDATE coopledger_meta SET value = '99' WHERE name = 'schema_version'")
    message = rf"schema version 99, this coopledger uses version {SCHEMA_VERSION}"
    with pytest.raises(SchemaVersionError, match=message):
        SqlStore(sql_url, chain_id=TEST_CHAIN_ID, genesis_hash=TEST_GENESIS_HASH)


def _as_schema_1(url: str) -> None:
    """Turn a database of this schema into what schema 1 left: no ``tx_ids`` table and
    stamp, a unique index on ``tx_id`` instead, and the stamp of version 1."""
    for statement in (
        "DROP TABLE tx_ids",
        "DELETE FROM coopledger_meta WHERE name = 'tx_ids_through'",
        "CREATE UNIQUE INDEX schema_1_tx_id ON txs (tx_id)",
        "UPDATE coopledger_meta SET value = '1' WHERE name = 'schema_version'",
    ):
        _execute(url, statement)


def _stamped_version(url: str) -> str:
    engine = create_engine(url)
    try:
        with engine.connect() as conn:
            query = "SELECT value FROM coopledger_meta WHERE name = 'schema_version'"
            return str(conn.exec_driver_sql(query).scalar())
    finally:
        engine.dispose()


def test_a_schema_2_database_is_stamped_3_on_opening(sql_url: str) -> None:
    store = SqlStore(sql_url, chain_id=TEST_CHAIN_ID, genesis_hash=TEST_GENESIS_HASH)
    builder = build_chain(store, [5, 0, 7])
    store.close()
    _execute(sql_url, "UPDATE coopledger_meta SET value = '2' WHERE name = 'schema_version'")
    migrated = SqlStore(sql_url, chain_id=TEST_CHAIN_ID, genesis_hash=TEST_GENESIS_HASH)
    try:
        assert _stamped_version(sql_url) == str(SCHEMA_VERSION) == "3"
        assert_store_holds(migrated, builder)
    finally:
        migrated.close()


def test_a_schema_1_database_is_migrated_on_opening(sql_url: str) -> None:
    store = SqlStore(sql_url, chain_id=TEST_CHAIN_ID, genesis_hash=TEST_GENESIS_HASH)
    builder = build_chain(store, [5, 0, 7, 3])
    store.close()
    _as_schema_1(sql_url)
    # Another chain's node does not touch it.
    with pytest.raises(StorageError, match="holds chain"):
        SqlStore(sql_url, chain_id="other", genesis_hash=TEST_GENESIS_HASH)
    assert _stamped_version(sql_url) == "1"
    migrated = SqlStore(sql_url, chain_id=TEST_CHAIN_ID, genesis_hash=TEST_GENESIS_HASH)
    try:
        assert _stamped_version(sql_url) == str(SCHEMA_VERSION) == "3"
        assert_store_holds(migrated, builder)
        every = {tx.tx_id for block in builder.blocks.values() for tx in block.txs}
        assert migrated.committed_unexpired(every, 0) == every
        expected = copy.deepcopy(builder)
        good = builder.next_block(3)
        replayed = replace(expected.blocks[3].txs[1], index=3)
        bad = rehash(replace(good, txs=[*good.txs, replayed]), tx_count=4)
        with pytest.raises(StorageError, match="already stored"):
            migrated.commit_block(bad)
        _assert_unchanged(migrated, expected, bad)
        migrated.commit_block(good)
        assert_store_holds(migrated, builder)
    finally:
        migrated.close()
    reopened = SqlStore(sql_url, chain_id=TEST_CHAIN_ID, genesis_hash=TEST_GENESIS_HASH)
    try:
        assert_store_holds(reopened, builder)
    finally:
        reopened.close()


def test_a_database_of_another_chain_is_refused(sql_url: str) -> None:
    SqlStore(sql_url, chain_id=TEST_CHAIN_ID, genesis_hash=TEST_GENESIS_HASH).close()
    with pytest.raises(StorageError, match=r"holds chain 'coopledger-test' .* for chain 'other'"):
        SqlStore(sql_url, chain_id="other", genesis_hash=TEST_GENESIS_HASH)
    with pytest.raises(StorageError, match=rf"with genesis {TEST_GENESIS_HASH}, but .* genesis 11"):
        SqlStore(sql_url, chain_id=TEST_CHAIN_ID, genesis_hash="11" * 32)


def test_a_database_with_foreign_tables_is_refused(sql_url: str) -> None:
    _execute(sql_url, "CREATE TABLE blocks (height INTEGER PRIMARY KEY)")
    with pytest.raises(StorageError, match="has tables blocks but no coopledger_meta"):
        SqlStore(sql_url, chain_id=TEST_CHAIN_ID, genesis_hash=TEST_GENESIS_HASH)


def test_an_unusable_url_is_a_storage_error(tmp_path: Path) -> None:
    with pytest.raises(StorageError, match=r"unsupported database 'mysql'|cannot use database"):
        SqlStore("mysql://nowhere/x", chain_id=TEST_CHAIN_ID, genesis_hash=TEST_GENESIS_HASH)
    for memory in ("sqlite://", "sqlite:///:memory:", "sqlite:///file:x?mode=memory&uri=true"):
        with pytest.raises(StorageError, match="SQLite needs a file"):
            SqlStore(memory, chain_id=TEST_CHAIN_ID, genesis_hash=TEST_GENESIS_HASH)
    with pytest.raises(StorageError, match="cannot use database URL"):
        SqlStore("sqlite:rel.db", chain_id=TEST_CHAIN_ID, genesis_hash=TEST_GENESIS_HASH)
    missing = tmp_path / "no" / "such" / "dir" / "ledger.sqlite"
    with pytest.raises(StorageError, match="cannot open database"):
        SqlStore(f"sqlite:///{missing}", chain_id=TEST_CHAIN_ID, genesis_hash=TEST_GENESIS_HASH)


def test_a_block_altered_in_the_database_is_detected_on_read(sql_url: str) -> None:
    store = SqlStore(sql_url, chain_id=TEST_CHAIN_ID, genesis_hash=TEST_GENESIS_HASH)
    try:
        build_chain(store, [3, 3])
        _execute(
            sql_url,
            "UPDATE blocks SET header_json = replace(header_json, '\"round\":2', '\"round\":1')"
            " WHERE height = 2",
        )
        with pytest.raises(StorageError, match=r"block 2: its header hashes to .* altered"):
            store.tip()
        with pytest.raises(StorageError, match=r"block 2: its header hashes to .* altered"):
            store.block(2)
        assert store.block(1) is not None
    finally:
        store.close()


def test_a_commit_altered_in_the_database_is_detected_on_read(sql_url: str) -> None:
    store = SqlStore(sql_url, chain_id=TEST_CHAIN_ID, genesis_hash=TEST_GENESIS_HASH)
    try:
        builder = build_chain(store, [3, 3])
        _execute(
            sql_url,
            "UPDATE blocks SET commit_json = replace(commit_json, "
            f"'{builder.blocks[1].block_hash}', '{'00' * 32}') WHERE height = 1",
        )
        with pytest.raises(StorageError, match="block 1: its commit certifies another block"):
            store.block(1)
    finally:
        store.close()


def test_a_transaction_altered_in_the_database_is_detected_on_read(sql_url: str) -> None:
    store = SqlStore(sql_url, chain_id=TEST_CHAIN_ID, genesis_hash=TEST_GENESIS_HASH)
    try:
        builder = build_chain(store, [3, 3])
        _execute(
            sql_url,
            "UPDATE txs SET envelope_json = replace(envelope_json, 'flour', 'sugar')"
            " WHERE height = 2 AND tx_index = 1",
        )
        altered = builder.blocks[2].txs[1]
        with pytest.raises(StorageError, match=f"{altered.tx_id}: its body does not hash"):
            store.block_txs(2)
        with pytest.raises(StorageError, match="its body does not hash to its id"):
            store.tx(altered.tx_id)
        with pytest.raises(StorageError, match="its body does not hash to its id"):
            store.txs_by_ref("asset", altered.refs[0][1], limit=10)
        # A block's listing reads no envelope, but its ids and codes must still make the
        # header's tx_root.
        assert [tx.tx_id for tx in store.block_tx_summaries(2)] == [
            tx.tx_id for tx in builder.blocks[2].txs
        ]
        _execute(sql_url, "UPDATE txs SET code = 'ok-ish' WHERE height = 2 AND tx_index = 0")
        with pytest.raises(StorageError, match="do not match its tx_root"):
            store.block_tx_summaries(2)
        with pytest.raises(StorageError, match="do not match its tx_root"):
            store.block_tx_tree(2)
        # NaN is not JSON, but the standard parser reads it: refused, not hashed as null.
        _execute(
            sql_url,
            "UPDATE txs SET envelope_json = replace(envelope_json, '\"quantity\":25', "
            "'\"quantity\":NaN') WHERE height = 1 AND tx_index = 0",
        )
        with pytest.raises(StorageError, match="its body is not canonical JSON"):
            store.block_txs(1)
    finally:
        store.close()


def test_a_missing_transaction_row_is_detected_on_read(sql_url: str) -> None:
    store = SqlStore(sql_url, chain_id=TEST_CHAIN_ID, genesis_hash=TEST_GENESIS_HASH)
    try:
        build_chain(store, [3, 3])
        gone = "height = 2 AND tx_index = 2"
        _execute(sql_url, f"DELETE FROM tx_refs WHERE {gone}")
        _execute(
            sql_url, f"DELETE FROM asset_events WHERE tx_id IN (SELECT tx_id FROM txs WHERE {gone})"
        )
        _execute(sql_url, f"DELETE FROM txs WHERE {gone}")
        with pytest.raises(StorageError, match="3 transactions in its header"):
            store.block_txs(2)
        with pytest.raises(StorageError, match="3 transactions in its header"):
            store.block_tx_summaries(2)
    finally:
        store.close()


# --- crashes ------------------------------------------------------------------------------


def _start_writer(url: str, tx_count: int, kill_at_write: int) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, __file__, url, str(tx_count), str(kill_at_write)],
        cwd=REPO_ROOT,
        env={**os.environ, "PYTHONPATH": str(REPO_ROOT)},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def _reap(child: subprocess.Popen[str]) -> None:
    child.send_signal(signal.SIGKILL)
    child.wait(timeout=CRASH_WAIT_S_MAX)
    assert child.stdout is not None and child.stderr is not None
    child.stdout.close()
    child.stderr.close()
    assert child.returncode == -signal.SIGKILL


def _assert_whole_blocks(url: str, tx_count: int, reported: int, *, exact: bool) -> None:
    """The reopened store holds blocks 1..tip, each complete, the tip at least ``reported``
    (exactly, when the kill is known to have hit before the next commit), and carries on."""
    store = SqlStore(url, chain_id=TEST_CHAIN_ID, genesis_hash=TEST_GENESIS_HASH)
    try:
        tip = store.tip()
        height = 0 if tip is None else tip.height
        assert height == reported if exact else height >= reported
        builder = ChainBuilder()
        for _ in range(height):
            builder.next_block(tx_count)
        if height:
            assert_store_holds(store, builder)
        store.commit_block(builder.next_block(tx_count))
    finally:
        store.close()


@pytest.mark.slow
@pytest.mark.parametrize("seed", [1, 2, 3])
def test_a_writer_killed_at_a_random_moment_leaves_whole_blocks(sql_url: str, seed: int) -> None:
    rng = random.Random(seed)
    tx_count = rng.choice([50, 200, 600])
    child = _start_writer(sql_url, tx_count, kill_at_write=0)
    try:
        reported = _read_commits(child, rng.randint(2, 6))
    finally:
        # The writer is already building or writing the block after the last one reported.
        _reap(child)
    _assert_whole_blocks(sql_url, tx_count, reported, exact=False)


@pytest.mark.slow
@pytest.mark.parametrize("seed", [1, 2, 3, 4])
def test_a_writer_killed_inside_a_block_transaction_leaves_the_block_out(
    sql_url: str, seed: int
) -> None:
    rng = random.Random(seed)
    tx_count = rng.choice([20, 100, 300])
    # The writer kills itself right after its n-th INSERT or DELETE: always inside the
    # transaction of a block, before its COMMIT.
    child = _start_writer(sql_url, tx_count, kill_at_write=rng.randint(1, 15))
    try:
        reported = _read_commits(child, None)
    finally:
        _reap(child)
    _assert_whole_blocks(sql_url, tx_count, reported, exact=True)


def _read_commits(child: subprocess.Popen[str], count: int | None) -> int:
    """Read the writer's reports, ``count`` of them or until it dies (``None``); return the
    last height reported."""
    assert child.stdout is not None
    height = 0
    while count is None or count > 0:
        line = child.stdout.readline()  # bounded: the writer commits or dies, and EOF ends it
        if not line:
            if count is None:
                break
            assert child.stderr is not None
            pytest.fail(f"the writer died: {child.stderr.read()}")
        height = int(line)
        count = None if count is None else count - 1
    return height


def _crash_writer(url: str, tx_count: int, kill_at_write: int) -> None:
    """Commit blocks until killed, printing each height once its commit has returned; with
    ``kill_at_write`` > 0, SIGKILL itself right after that many INSERT or DELETE statements."""
    store = SqlStore(url, chain_id=TEST_CHAIN_ID, genesis_hash=TEST_GENESIS_HASH)
    writes = 0

    def after_execute(*arguments: Any) -> None:
        nonlocal writes
        statement: str = arguments[2]
        if statement.lstrip().upper().startswith(("INSERT", "DELETE")):
            writes += 1
            if writes == kill_at_write:
                os.kill(os.getpid(), signal.SIGKILL)

    # Registered on the Engine class (not the store's engine): after the store is open.
    event.listen(Engine, "after_cursor_execute", after_execute)
    builder = ChainBuilder()
    while True:
        block = builder.next_block(tx_count)
        store.commit_block(block)
        print(block.height, flush=True)


def _main(arguments: list[str]) -> None:
    url, tx_count, kill_at_write = arguments
    _crash_writer(url, int(tx_count), int(kill_at_write))


if __name__ == "__main__":
    _main(sys.argv[1:])
