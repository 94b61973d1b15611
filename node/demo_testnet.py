"""``testnet up --demo``: post the seeds' scenario to a running testnet over its REST API.

Each member signs with its own key file (the node only relays); the steps go to different
nodes in turn, and each step waits until its transactions are final before the next.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import httpx

from node.consortium import Consortium
from node.genesis import load_genesis
from node.keys import read_key_file
from node.scenario import PURCHASE_WINDOW_MS, scenario_blocks
from node.testnet import TestnetError

COMMIT_WAIT_S = 30.0


def _consortium(description: dict[str, Any]) -> Consortium:
    genesis = load_genesis(Path(description["genesis"]))
    keys = {}
    directory = Path(description["genesis"]).parent / "keys"
    for member in genesis.members:
        keys[member.id] = read_key_file(directory / f"{member.id}.json").key_pair
    return Consortium(genesis, keys, {})


def post_demo(description: dict[str, Any]) -> list[str]:
    """Post every step of the scenario; return the committed tx ids."""
    consortium = _consortium(description)
    token = description["operator_token"]
    apis = [node["api"] for node in description["nodes"]]
    start_ms = int(time.time() * 1000)
    deadline_ms = start_ms + PURCHASE_WINDOW_MS + 500
    committed: list[str] = []
    with httpx.Client(
        timeout=COMMIT_WAIT_S + 5, headers={"Authorization": f"Bearer {token}"}
    ) as http:
        for step, (_, envelopes) in enumerate(scenario_blocks(consortium, start_ms)):
            if any(e["body"]["type"] == "purchase.close" for e in envelopes):
                # Closing is only allowed once block time passes the purchase's deadline.
                while time.time() * 1000 < deadline_ms + 1_000:
                    time.sleep(0.1)
            api = apis[step % len(apis)]
            for envelope in envelopes:
                response = http.post(
                    f"{api}/v1/transactions", params={"wait": "commit"}, json=envelope
                )
                if response.status_code != 200:
                    raise TestnetError(f"demo step {step}: {response.status_code} {response.text}")
                receipt = response.json()
                if receipt.get("code") != "ok":
                    raise TestnetError(f"demo step {step}: {envelope['body']['type']} {receipt}")
                committed.append(receipt["tx_id"])
    return committed
