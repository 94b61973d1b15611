"""Where a running validator's block time goes, interval by interval, from its /metrics.

    .venv/bin/python scripts/sample_metrics.py --testnet DIR [--node 0] [--every 30] [--for 660]

Reads ``DIR/testnet.json`` (written by ``coopledger testnet up``) for the node's API and the
operator token, scrapes ``/metrics`` every ``--every`` seconds and prints one JSON line per
interval: blocks committed, mean transactions a block, mean execution and storage time a
block (``coopledger_block_execution_seconds``, ``coopledger_block_storage_seconds``), mean
height-start-to-commit time, the mempool and the collector's pauses. Run it beside
``coopledger bench --testnet DIR`` to see how a long run's blocks and their phases evolve.
"""

from __future__ import annotations

import argparse
import json
import re
import time
from pathlib import Path

import httpx

_SAMPLE = re.compile(r"^([a-z_]+) (\S+)$")


def scrape(client: httpx.Client, api: str, token: str) -> dict[str, float]:
    response = client.get(f"{api}/metrics", headers={"Authorization": f"Bearer {token}"})
    response.raise_for_status()
    values: dict[str, float] = {}
    for line in response.text.splitlines():
        match = _SAMPLE.match(line)  # unlabelled samples only
        if match:
            values[match.group(1)] = float(match.group(2))
    return values


def interval(before: dict[str, float], after: dict[str, float], seconds: float) -> dict[str, float]:
    def delta(name: str) -> float:
        return after.get(name, 0.0) - before.get(name, 0.0)

    def mean_ms(name: str) -> float:
        count = delta(f"{name}_count")
        return round(1000 * delta(f"{name}_sum") / count, 1) if count else 0.0

    blocks = delta("coopledger_blocks_committed_total")
    txs = delta("coopledger_txs_committed_total")
    return {
        "t": round(seconds),
        "height": after.get("coopledger_height", 0.0),
        "blocks": blocks,
        "txs_per_block": round(txs / blocks, 1) if blocks else 0.0,
        "exec_ms": mean_ms("coopledger_block_execution_seconds"),
        "store_ms": mean_ms("coopledger_block_storage_seconds"),
        "commit_latency_ms": mean_ms("coopledger_commit_latency_seconds"),
        "mempool": after.get("coopledger_mempool_txs", 0.0),
        "gc_ms": round(1000 * delta("coopledger_gc_pause_seconds_sum")),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--testnet", type=Path, required=True)
    parser.add_argument("--node", type=int, default=0)
    parser.add_argument("--every", type=float, default=30.0)
    parser.add_argument("--for", dest="total", type=float, default=660.0)
    args = parser.parse_args()
    description = json.loads((args.testnet / "testnet.json").read_text())
    api, token = description["nodes"][args.node]["api"], description["operator_token"]
    started = time.monotonic()
    before: dict[str, float] | None = None
    with httpx.Client(timeout=10) as client:
        while time.monotonic() - started < args.total:
            try:
                now = scrape(client, api, token)
            except httpx.HTTPError as error:
                print(json.dumps({"error": str(error)}), flush=True)
            else:
                if before is not None:
                    print(json.dumps(interval(before, now, time.monotonic() - started)), flush=True)
                before = now
            time.sleep(args.every)


if __name__ == "__main__":
    main()
