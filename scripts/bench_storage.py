"""Storage benchmark: block commit time and history-query latency (docs/benchmarks.md).

Builds a chain of blocks shaped like the ledger's under load — per 2,000-transaction block
about 4,000 state changes, 3,000 asset events and 6,000 index references, envelopes of
about 450 bytes — and reports for each database:

* the time ``commit_block`` takes for one block (median and worst of the last blocks),
* with ``--txs-total`` transactions stored, the latency of the reads a gateway serves: an
  asset's history, a member's shipments (first page and a page deep in the history), a
  purchase's commitments, an asset's event chain, one receipt, one state entry.

Usage::

    .venv/bin/python scripts/bench_storage.py --txs-total 1000000 \\
        --postgres-url postgresql+psycopg://postgres@127.0.0.1:5432/test

SQLite goes to a temporary directory (``--sqlite-dir`` to choose); PostgreSQL to a fresh
schema that is dropped afterwards.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import random
import sqlite3
import statistics
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from sqlalchemy import create_engine, make_url, text

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from node.block import Commit, Header, block_hash
from node.codec import canonical_trusted, sha256_hex
from node.records import AssetEvent, BlockRecord, StateKey, StateValue, TxRecord
from node.storage import BlockStore, SqlStore, TxPosition
from node.storage import _sql as sql_module

CHAIN_ID = "bench"
GENESIS_HASH = "00" * 32
MEMBERS = 50
PURCHASES = 200
EVENTS_PER_ASSET = 4
"""Each asset appears in about this many transactions: its history is a few rows."""


class BlockMaker:
    """Deterministic blocks of the benchmark's shape."""

    def __init__(self, block_txs: int, txs_total: int) -> None:
        self.block_txs = block_txs
        self.asset_count = max(1, txs_total * 3 // 2 // EVENTS_PER_ASSET)
        self.height = 0
        self.tip_hash = GENESIS_HASH
        self.next_seq: dict[str, int] = {}
        self.last_event: dict[str, str] = {}
        self.random = random.Random(7)

    def next_block(self) -> BlockRecord:
        height = self.height + 1
        txs: list[TxRecord] = []
        changes: dict[StateKey, StateValue | None] = {}
        events: list[AssetEvent] = []
        for index in range(self.block_txs):
            txs.append(self._tx(height, index, changes, events))
        header: Header = {
            "chain_id": CHAIN_ID,
            "height": height,
            "round": 0,
            "timestamp_ms": 1_700_000_000_000 + height * 1_000,
            "proposer": "validator-0",
            "prev_hash": self.tip_hash,
            "tx_root": sha256_hex(b"".join(tx.tx_id.encode() for tx in txs)),
            "state_root": sha256_hex(str(height).encode()),
            "tx_count": len(txs),
        }
        hash_ = block_hash(header)
        commit: Commit = {
            "height": height,
            "round": 0,
            "block_hash": hash_,
            "signatures": [
                {"validator": f"validator-{v}", "signature": "ab" * 64} for v in range(3)
            ],
        }
        self.height, self.tip_hash = height, hash_
        return BlockRecord(
            header=header,
            block_hash=hash_,
            commit=commit,
            txs=txs,
            state_changes={
                key: None if value is None else canonical_trusted(value).decode()
                for key, value in changes.items()
            },
            asset_events=events,
        )

    def _tx(
        self,
        height: int,
        index: int,
        changes: dict[StateKey, StateValue | None],
        events: list[AssetEvent],
    ) -> TxRecord:
        number = (height - 1) * self.block_txs + index
        sender = f"member-{number % MEMBERS}"
        recipient = f"member-{(number * 7 + 3) % MEMBERS}"
        assets = [f"lot-{self.random.randrange(self.asset_count)}"]
        if index % 2 == 0:  # every other shipment consolidates two lots: 1.5 events per tx
            assets.append(f"lot-{self.random.randrange(self.asset_count)}")
            if assets[1] == assets[0]:
                assets.pop()
        shipment_id = f"ship-{number}"
        payload: dict[str, Any] = {"shipment_id": shipment_id, "asset_ids": assets, "to": recipient}
        refs = [("asset", asset) for asset in assets] + [("member", sender)]
        if index % 2 == 1:  # half the shipments go to another member
            refs.append(("member", recipient))
        if index % 20 == 0:  # some deliver a joint purchase
            payload["purchase_id"] = purchase = f"purchase-{number % PURCHASES}"
            refs.append(("purchase", purchase))
        body = {
            "chain_id": CHAIN_ID,
            "type": "shipment.create",
            "sender": sender,
            "nonce": number,
            "expires_at_ms": 1_700_000_000_000 + height * 1_000 + 3_600_000,
            "payload": payload,
        }
        tx_id = sha256_hex(canonical_trusted(body))
        for asset in assets:
            seq = self.next_seq.get(asset, 0)
            prev = self.last_event.get(asset, "00" * 32)
            event = sha256_hex(f"{prev}{tx_id}{asset}".encode())
            events.append(
                AssetEvent(
                    asset_id=asset,
                    seq=seq,
                    event_hash=event,
                    prev_hash=prev,
                    tx_id=tx_id,
                    type="shipment.create",
                )
            )
            self.next_seq[asset], self.last_event[asset] = seq + 1, event
            changes[f"asset/{asset}"] = {
                "id": asset,
                "product": "04012345678901",
                "quantity": 1200,
                "unit": "kg",
                "owner": sender,
                "custodian": recipient,
                "in_transit": shipment_id,
                "last_event": event,
                "event_count": seq + 1,
            }
        if index % 2 == 1:
            changes[f"shipment/{shipment_id}"] = {
                "id": shipment_id,
                "from": sender,
                "to": recipient,
                "asset_ids": assets,
                "status": "in-transit",
            }
        envelope = {"body": body, "signer": "cd" * 32, "signature": "ef" * 64}
        return TxRecord(
            tx_id=tx_id,
            envelope=envelope,
            envelope_json=canonical_trusted(envelope).decode(),
            sender=sender,
            type="shipment.create",
            expires_at_ms=body["expires_at_ms"],  # type: ignore[arg-type]
            index=index,
            code="ok",
            events=[{"type": "shipment.created", "shipment_id": shipment_id}],
            refs=tuple(refs),
        )


def measure(action: Callable[[], object], repeat: int) -> tuple[float, float]:
    """Median and worst wall time of ``action`` in milliseconds."""
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        action()
        times.append((time.perf_counter() - start) * 1_000)
    return statistics.median(times), max(times)


def bench(
    name: str,
    store: BlockStore,
    maker: BlockMaker,
    txs_total: int,
    samples: int,
    *,
    wal: Path | None = None,
) -> None:
    """Fill the store block by block; report the commit's wall and CPU time (this process,
    the SQLite work included: it runs in this thread) and, with ``wal``, the WAL frames
    each commit appended (the pages it wrote)."""
    blocks = max(samples, txs_total // maker.block_txs)
    commit_ms: list[float] = []
    commit_cpu_ms: list[float] = []
    wal_frames: list[int] = []
    frame_bytes = 0
    build_ms: list[float] = []
    started = time.perf_counter()
    first = maker.next_block()
    shape = (
        f"{len(first.txs)} txs, {len(first.state_changes)} state changes, "
        f"{len(first.asset_events)} events, {sum(len(set(t.refs)) for t in first.txs)} refs"
    )
    record: BlockRecord | None = first
    for number in range(blocks):
        start = time.perf_counter()
        if record is None:
            record = maker.next_block()
        build_ms.append((time.perf_counter() - start) * 1_000)
        wal_before = wal.stat().st_size if wal is not None and wal.exists() else 0
        cpu_start = time.process_time()
        start = time.perf_counter()
        store.commit_block(record)
        commit_ms.append((time.perf_counter() - start) * 1_000)
        commit_cpu_ms.append((time.process_time() - cpu_start) * 1_000)
        if wal is not None:
            frame_bytes = frame_bytes or wal_frame_bytes(wal)  # the page size, read once
            wal_frames.append((wal.stat().st_size - wal_before) // frame_bytes)
            checkpoint(wal)
        record = None
        if number % 50 == 49:
            print(f"  {name}: {number + 1}/{blocks} blocks", file=sys.stderr)
    fill_s = time.perf_counter() - started
    last = slice(-samples, None)
    print(f"\n### {name}\n")
    print(f"block shape: {shape}")
    print(f"filled {blocks} blocks ({blocks * maker.block_txs:,} txs) in {fill_s:.0f} s")
    print(
        f"commit_block, last {samples} blocks: median {statistics.median(commit_ms[last]):.1f} "
        f"ms, worst {max(commit_ms[last]):.1f} ms (first {samples}: median "
        f"{statistics.median(commit_ms[:samples]):.1f} ms); building a block in Python: "
        f"median {statistics.median(build_ms[1:] or build_ms):.1f} ms"
    )
    # A mean, not a median: a WAL checkpoint falls inside every commit or every few, so
    # the median of a few blocks depends on which of them checkpointed.
    cpu_us = sum(commit_cpu_ms[last]) * 1_000 / (len(commit_cpu_ms[last]) * maker.block_txs)
    print(f"commit CPU, last {samples} blocks: mean {cpu_us:.1f} µs a transaction")
    if wal_frames:
        print(
            f"WAL pages a commit, last {samples} blocks: median "
            f"{statistics.median(wal_frames[last]):.0f}"
        )
    queries(store, maker)


def wal_frame_bytes(wal: Path) -> int:
    """A WAL frame: a 24-byte header and one page of the database's page size."""
    database = wal.with_name(wal.name.removesuffix("-wal"))
    with contextlib.closing(sqlite3.connect(database)) as conn:
        (page_size,) = conn.execute("PRAGMA page_size").fetchone()
    return 24 + int(page_size)


def checkpoint(wal: Path) -> None:
    """Copy the WAL into the database and empty it, so the next commit's frames are counted
    from an empty file (``--wal-pages``: automatic checkpoints are off meanwhile)."""
    database = wal.with_name(wal.name.removesuffix("-wal"))
    with contextlib.closing(sqlite3.connect(database)) as conn:
        busy, _, _ = conn.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchone()
    if busy:
        raise SystemExit("the WAL checkpoint was blocked by a reader")


def queries(store: BlockStore, maker: BlockMaker) -> None:
    rng = random.Random(11)
    tip = store.tip()
    assert tip is not None
    asset_ids = [f"lot-{rng.randrange(maker.asset_count)}" for _ in range(200)]
    members = iter(f"member-{rng.randrange(MEMBERS)}" for _ in range(10_000))
    purchases = iter(f"purchase-{rng.randrange(PURCHASES)}" for _ in range(10_000))
    assets = iter(asset_ids * 5)
    deep = TxPosition(tip.height // 2, 0)
    tx_ids = [tx.tx_id for tx in store.block_txs(tip.height // 2)]
    some_tx = iter(tx_ids * 5)
    lines = {
        "asset history (txs_by_ref asset, limit 50)": lambda: store.txs_by_ref(
            "asset", next(assets), limit=50
        ),
        "asset event chain (asset_events)": lambda: store.asset_events(next(assets)),
        "member's shipments, first page (limit 50)": lambda: store.txs_by_ref(
            "member", next(members), limit=50
        ),
        "member's shipments, page from mid-chain (limit 50)": lambda: store.txs_by_ref(
            "member", next(members), after=deep, limit=50
        ),
        "purchase commitments (limit 50)": lambda: store.txs_by_ref(
            "purchase", next(purchases), limit=50
        ),
        "receipt (tx by id)": lambda: store.tx(next(some_tx)),
        "state_get(asset)": lambda: store.state_get(f"asset/{next(assets)}"),
        "block(height) with check": lambda: store.block(rng.randrange(1, tip.height + 1)),
    }
    print("\n| query | median ms | worst ms |\n| --- | ---: | ---: |")
    for label, action in lines.items():
        median, worst = measure(action, 200)
        print(f"| {label} | {median:.2f} | {worst:.2f} |")
    start = time.perf_counter()
    count = sum(1 for _ in store.iter_state())
    print(f"\niter_state over {count:,} entries: {time.perf_counter() - start:.1f} s")
    asked = [f"{i:064x}" for i in range(2_000)]
    start = time.perf_counter()
    store.committed_unexpired(asked, 1_700_000_000_000 + tip.height * 1_000)
    elapsed_ms = (time.perf_counter() - start) * 1_000
    print(f"committed_unexpired of a block's 2,000 tx ids: {elapsed_ms:.0f} ms")


@contextmanager
def postgres_schema(url: str) -> Iterator[str]:
    schema = f"bench_{uuid.uuid4().hex[:12]}"
    admin = create_engine(url, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(text(f'CREATE SCHEMA "{schema}"'))
    try:
        yield (
            make_url(url)
            .update_query_dict({"options": f"-csearch_path={schema}"})
            .render_as_string(hide_password=False)
        )
    finally:
        with admin.connect() as conn:
            conn.execute(text(f'DROP SCHEMA "{schema}" CASCADE'))
        admin.dispose()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--txs-total", type=int, default=1_000_000)
    parser.add_argument("--block-txs", type=int, default=2_000)
    parser.add_argument("--samples", type=int, default=20, help="blocks in the commit figures")
    parser.add_argument("--sqlite-dir", type=Path, default=None)
    parser.add_argument(
        "--postgres-url", default=os.environ.get("COOPLEDGER_TEST_POSTGRES_URL"), help="or none"
    )
    parser.add_argument("--only", choices=["sqlite", "postgres"], default=None)
    parser.add_argument(
        "--wal-pages",
        action="store_true",
        help="SQLite: count the pages each commit writes to the WAL (the WAL is checkpointed "
        "and emptied after every block from another connection, which also drops the store's "
        "page cache, so commit times are not the node's)",
    )
    arguments = parser.parse_args()
    if arguments.wal_pages:
        sql_module.SQLITE_CHECKPOINT_PAGES = 0  # read when a connection opens
    print(f"python {sys.version.split()[0]}, {os.cpu_count()} CPUs")
    if arguments.only != "postgres":
        with tempfile.TemporaryDirectory(dir=arguments.sqlite_dir) as directory:
            url = f"sqlite:///{Path(directory) / 'bench.sqlite'}"
            store = SqlStore(url, chain_id=CHAIN_ID, genesis_hash=GENESIS_HASH)
            maker = BlockMaker(arguments.block_txs, arguments.txs_total)
            bench(
                "SQLite (WAL, synchronous=FULL)",
                store,
                maker,
                arguments.txs_total,
                arguments.samples,
                wal=Path(directory) / "bench.sqlite-wal" if arguments.wal_pages else None,
            )
            store.close()
            size = sum(f.stat().st_size for f in Path(directory).iterdir())
            print(f"database files: {size / 2**20:.0f} MiB")
    if arguments.only != "sqlite" and arguments.postgres_url:
        with postgres_schema(arguments.postgres_url) as url:
            store = SqlStore(url, chain_id=CHAIN_ID, genesis_hash=GENESIS_HASH)
            maker = BlockMaker(arguments.block_txs, arguments.txs_total)
            name = "PostgreSQL (synchronous_commit=on)"
            bench(name, store, maker, arguments.txs_total, arguments.samples)
            store.close()


if __name__ == "__main__":
    main()
