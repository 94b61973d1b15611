"""Measure how fast a killed validator catches up: kill -9 one node of a running testnet,
load the other three for a while, restart it and time until it holds the same height.

    .venv/bin/python scripts/measure_recovery.py --dir /tmp/recovery --seconds 20

Starts its own 4-validator testnet in --dir (which must not hold one) and stops it after.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx

from node.keys import read_key_file
from node.tx import sign_transaction


def cli(*args: str) -> None:
    subprocess.run([sys.executable, "-m", "node", *args], check=True, capture_output=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--dir", type=Path, required=True)
    parser.add_argument("--seconds", type=float, default=20.0)
    parser.add_argument("--base-port", type=int, default=29400)
    args = parser.parse_args()
    cli("testnet", "up", "--dir", str(args.dir), "--base-port", str(args.base_port))
    try:
        description = json.loads((args.dir / "testnet.json").read_text())
        token = description["operator_token"]
        headers = {"Authorization": f"Bearer {token}"}
        apis = [node["api"] for node in description["nodes"]]
        members = description["members"]
        keys = {m["id"]: read_key_file(Path(m["key_file"])).key_pair for m in members}

        def height(api: str) -> int:
            try:
                return int(
                    httpx.get(f"{api}/v1/status", headers=headers, timeout=2).json()["height"]
                )
            except (httpx.HTTPError, KeyError, ValueError):
                return -1

        stop = threading.Event()
        sent = [0]

        def load(worker: int) -> None:
            client = httpx.Client(headers=headers, timeout=10)
            member = members[worker % len(members)]["id"]
            while not stop.is_set():
                sent[0] += 1
                body = {
                    "chain_id": description["chain_id"],
                    "type": "asset.register",
                    "sender": member,
                    "nonce": sent[0],
                    "expires_at_ms": int(time.time() * 1000) + 600_000,
                    "payload": {
                        "asset_id": f"r-{worker}-{sent[0]}",
                        "product": "p",
                        "quantity": 1,
                        "unit": "kg",
                        "origin": "CH",
                    },
                }
                with contextlib.suppress(httpx.HTTPError):
                    client.post(
                        f"{apis[worker % 3]}/v1/transactions",
                        json=sign_transaction(keys[member], body),
                    )

        cli("testnet", "kill", "validator-3", "--dir", str(args.dir))
        before = height(apis[0])
        threads = [threading.Thread(target=load, args=(w,), daemon=True) for w in range(6)]
        for thread in threads:
            thread.start()
        time.sleep(args.seconds)
        stop.set()
        for thread in threads:
            thread.join()
        target = height(apis[0])
        started = time.monotonic()
        cli("testnet", "start", "validator-3", "--dir", str(args.dir))
        while height(apis[3]) < target:
            time.sleep(0.05)
        elapsed = time.monotonic() - started
        print(
            json.dumps(
                {
                    "blocks_behind": target - before,
                    "txs_sent": sent[0],
                    "catch_up_s_including_process_start": round(elapsed, 2),
                }
            )
        )
    finally:
        cli("testnet", "down", "--dir", str(args.dir))


if __name__ == "__main__":
    main()
