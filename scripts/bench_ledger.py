"""Micro-benchmark of the ledger core: blocks of provenance transactions executed and stored.

Not a test. Prints, per block of N transactions, the time to execute it (rule engine, state
root, tx root) and to store it (one database transaction), after signatures were verified
at admission as a node does. Usage:

    .venv/bin/python scripts/bench_ledger.py [--blocks 10] [--txs 2000] [--db URL]
        [--report-every N]

``--report-every N`` also prints, every N blocks, the mean wall and CPU time of the store
step over those N blocks with the number of transactions stored: how a commit's cost grows
with the database.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

from node.consortium import make_consortium
from node.ledger import Ledger
from node.storage import SqlStore

FIRMS = ("alpine-cheese", "valley-bakery", "bean-and-leaf")


def block_envelopes(consortium: Any, block: int, count: int, expires: int) -> list[dict[str, Any]]:
    """A provenance mix: registrations, transfers, shipments, receipts and observations.

    Each group of five transactions touches one new lot: register, observe, ship to the
    carrier, (next block) receive, transfer. Within one block the groups are independent.
    """
    envelopes = []
    for i in range(count // 4):
        firm = FIRMS[i % len(FIRMS)]
        lot = f"lot-{block}-{i}"
        envelopes.append(
            consortium.sign(
                firm,
                "asset.register",
                {
                    "asset_id": lot,
                    "product": "gtin:07612345678901",
                    "quantity": 40,
                    "unit": "kg",
                    "origin": "Fribourg, CH",
                },
                expires_at_ms=expires,
            )
        )
        envelopes.append(
            consortium.sign(
                firm,
                "asset.observe",
                {"asset_id": lot, "kind": "temperature", "data": {"celsius_tenths": 41}},
                expires_at_ms=expires,
            )
        )
        envelopes.append(
            consortium.sign(
                firm,
                "shipment.create",
                {"shipment_id": f"ship-{block}-{i}", "asset_ids": [lot], "to": "shared-freight"},
                expires_at_ms=expires,
            )
        )
        envelopes.append(
            consortium.sign(
                "shared-freight",
                "shipment.receive",
                {"shipment_id": f"ship-{block}-{i}"},
                expires_at_ms=expires,
            )
        )
    return envelopes


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--blocks", type=int, default=10)
    parser.add_argument("--txs", type=int, default=2000)
    parser.add_argument("--db", default=None, help="database URL (default: a temporary SQLite)")
    parser.add_argument("--report-every", type=int, default=0, metavar="N")
    args = parser.parse_args()
    consortium = make_consortium(chain_id="coop-bench")
    genesis = consortium.genesis
    with tempfile.TemporaryDirectory() as directory:
        url = args.db or f"sqlite:///{Path(directory) / 'bench.sqlite'}"
        store = SqlStore(url, chain_id=genesis.chain_id, genesis_hash=genesis.hash)
        ledger = Ledger(genesis, store)
        now = genesis.genesis_time_ms
        execute_ms, store_ms, admit_ms, store_cpu_ms = [], [], [], []
        for block in range(args.blocks):
            now += 1000
            envelopes = block_envelopes(consortium, block, args.txs, now + 3_600_000)
            started = time.perf_counter()
            txs = [ledger.admit(envelope, now) for envelope in envelopes]
            admitted = time.perf_counter()
            executed = ledger.execute(txs, timestamp_ms=now, proposer="validator-0")
            executed_at = time.perf_counter()
            commit = consortium.commit_for(executed.height, 0, executed.block_hash)
            signed = time.perf_counter()
            cpu_before = time.thread_time()
            ledger.commit(executed, commit)
            stored = time.perf_counter()
            store_cpu_ms.append((time.thread_time() - cpu_before) * 1000)
            failed = sum(1 for outcome in executed.outcomes if outcome.code != "ok")
            if failed:
                raise SystemExit(f"block {block}: {failed} transactions failed")
            admit_ms.append((admitted - started) * 1000)
            execute_ms.append((executed_at - admitted) * 1000)
            store_ms.append((stored - signed) * 1000)
            every = args.report_every
            if every and (block + 1) % every == 0:
                print(
                    f"{(block + 1) * args.txs:>9,} stored: store mean "
                    f"{statistics.mean(store_ms[-every:]):6.1f} ms wall, "
                    f"{statistics.mean(store_cpu_ms[-every:]):6.1f} ms CPU",
                    flush=True,
                )
        store.close()
    total = [e + s for e, s in zip(execute_ms, store_ms, strict=True)]
    print(f"database: {url.split(':')[0]}; {args.blocks} blocks of {len(txs)} transactions")
    print(
        f"admission (parse + strict signature check), median: {statistics.median(admit_ms):.0f} ms"
    )
    print(f"execute (rules + state root + tx root), median: {statistics.median(execute_ms):.0f} ms")
    print(f"store (one database transaction), median: {statistics.median(store_ms):.0f} ms")
    print(f"execute + store, median: {statistics.median(total):.0f} ms, max {max(total):.0f} ms")
    print(f"applied and stored: {len(txs) / (statistics.median(total) / 1000):.0f} tx/s")


if __name__ == "__main__":
    main()
