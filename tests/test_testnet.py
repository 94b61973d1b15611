"""The testnet as operators run it: real validator processes on real sockets.

``coopledger testnet up`` starts four processes; the tests load them through the REST API,
kill -9 validators (one, then all), restart them with ``testnet start``, and check from the
databases themselves that every validator holds the same blocks, that every acknowledged
transaction survived, and that no validator ever signed two different blocks at a height.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy import create_engine, text
from tests_support import free_base_port

from node.keys import read_key_file
from node.testnet import start_node
from node.tx import sign_transaction

pytestmark = pytest.mark.slow


def cli(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(
        [sys.executable, "-m", "node", *args],
        capture_output=True,
        text=True,
        timeout=180,
        check=False,
    )
    if check and result.returncode != 0:
        raise AssertionError(
            f"coopledger {' '.join(args)} failed:\n{result.stdout}\n{result.stderr}"
        )
    return result


class LiveNet:
    def __init__(self, directory: Path, db: str = "sqlite") -> None:
        self.directory = directory
        cli(
            "testnet",
            "up",
            "--dir",
            str(directory),
            "--base-port",
            str(free_base_port(8)),
            "--db",
            db,
        )
        self.description: dict[str, Any] = json.loads((directory / "testnet.json").read_text())
        member = self.description["members"][0]
        self.member_id = member["id"]
        self.token = member["token"]
        self.key = read_key_file(Path(member["key_file"])).key_pair
        self.nonce = int(time.time() * 1000)
        self.lock = threading.Lock()

    @property
    def apis(self) -> list[str]:
        return [node["api"] for node in self.description["nodes"]]

    def envelope(self, asset_id: str) -> dict[str, Any]:
        with self.lock:
            self.nonce += 1
            nonce = self.nonce
        body = {
            "chain_id": self.description["chain_id"],
            "type": "asset.register",
            "sender": self.member_id,
            "nonce": nonce,
            "expires_at_ms": int(time.time() * 1000) + 300_000,
            "payload": {
                "asset_id": asset_id,
                "product": "rye flour",
                "quantity": 25,
                "unit": "kg",
                "origin": "CH",
            },
        }
        return sign_transaction(self.key, body)

    def submit(self, api: str, asset_id: str, wait: bool = True) -> dict[str, Any] | None:
        """Post a transaction; return the receipt if it was acknowledged as committed."""
        try:
            response = httpx.post(
                f"{api}/v1/transactions",
                params={"wait": "commit"} if wait else {},
                json=self.envelope(asset_id),
                headers={"Authorization": f"Bearer {self.token}"},
                timeout=30,
            )
        except httpx.HTTPError:
            return None
        if response.status_code == 200:
            receipt: dict[str, Any] = response.json()
            return receipt
        return None

    def height(self, api: str) -> int | None:
        try:
            response = httpx.get(
                f"{api}/v1/status", timeout=2, headers={"Authorization": f"Bearer {self.token}"}
            )
        except httpx.HTTPError:
            return None
        return int(response.json()["height"]) if response.status_code == 200 else None

    def wait_height(
        self, height: int, apis: list[str] | None = None, timeout_s: float = 60
    ) -> None:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            heights = [self.height(api) for api in apis or self.apis]
            if all(h is not None and h >= height for h in heights):
                return
            time.sleep(0.2)
        raise AssertionError(f"not all nodes reached height {height}: {heights}")

    def database_urls(self) -> dict[str, str]:
        urls = {}
        for node in self.description["nodes"]:
            config = json.loads((self.directory / node["name"] / "config.json").read_text())
            urls[node["name"]] = config["database"]
        return urls

    def down(self) -> None:
        cli("testnet", "down", "--dir", str(self.directory), check=False)


class Load:
    """A steady stream of transactions to every node in turn, from a background thread."""

    def __init__(self, net: LiveNet) -> None:
        self.net = net
        self.acknowledged: list[dict[str, Any]] = []
        self.stopping = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.sent = 0

    def _run(self) -> None:
        while not self.stopping.is_set():
            api = self.net.apis[self.sent % len(self.net.apis)]
            receipt = self.net.submit(api, f"load-{self.sent}")
            self.sent += 1
            if receipt is not None:
                self.acknowledged.append(receipt)

    def __enter__(self) -> Load:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stopping.set()
        self.thread.join(60)


def chains(net: LiveNet) -> dict[str, dict[int, tuple[str, dict[str, Any]]]]:
    """height -> (block_hash, commit) read from every node's database."""
    result = {}
    for name, url in net.database_urls().items():
        engine = create_engine(url)
        try:
            with engine.connect() as connection:
                rows = connection.execute(
                    text("SELECT height, block_hash, commit_json FROM blocks")
                )
                result[name] = {int(h): (str(b), json.loads(c)) for h, b, c in rows}
        finally:
            engine.dispose()
    return result


def check_agreement(net: LiveNet) -> int:
    """Same block at every height on every node; no validator signed two blocks at a height."""
    per_node = chains(net)
    heights = min(len(chain) for chain in per_node.values())
    assert heights > 0
    signed: dict[tuple[int, str], str] = {}
    for height in range(1, heights + 1):
        assert len({chain[height][0] for chain in per_node.values()}) == 1, f"fork at {height}"
        for chain in per_node.values():
            commit = chain[height][1]
            for signature in commit["signatures"]:
                key = (height, signature["validator"])
                assert signed.setdefault(key, commit["block_hash"]) == commit["block_hash"]
    return heights


def committed_tx_ids(net: LiveNet) -> dict[str, set[str]]:
    result = {}
    for name, url in net.database_urls().items():
        engine = create_engine(url)
        try:
            with engine.connect() as connection:
                result[name] = {
                    str(r[0]) for r in connection.execute(text("SELECT tx_id FROM txs"))
                }
        finally:
            engine.dispose()
    return result


@pytest.fixture
def testnet(tmp_path: Path) -> Iterator[LiveNet]:
    net = LiveNet(tmp_path / "net")
    try:
        yield net
    finally:
        net.down()


def test_up_writes_the_description_and_commits(testnet: LiveNet) -> None:
    description = testnet.description
    assert set(description) == {
        "chain_id",
        "genesis",
        "nodes",
        "members",
        "auditor_token",
        "operator_token",
    }
    assert len(description["nodes"]) == 4 and all(node["pid"] > 0 for node in description["nodes"])
    assert len(description["members"]) >= 3
    receipt = testnet.submit(testnet.apis[2], "first-lot")
    assert receipt is not None and receipt["code"] == "ok"
    status = cli("testnet", "status", "--dir", str(testnet.directory)).stdout
    assert status.count("running") == 4
    logs = cli("testnet", "logs", "validator-2", "--dir", str(testnet.directory), "--lines", "400")
    lines = logs.stdout.splitlines()
    assert any("step node=validator-2 height=" in line and " round=" in line for line in lines)
    assert any(f"committed height={receipt['height']} " in line for line in lines)
    assert all(" level=" in line and " logger=" in line for line in lines if line.strip())


def test_kill_one_validator_under_load_and_restart(testnet: LiveNet) -> None:
    with Load(testnet) as load:
        testnet.wait_height(3)
        cli("testnet", "kill", "validator-3", "--dir", str(testnet.directory))
        survivors = testnet.apis[:3]
        before = min(h for h in (testnet.height(api) for api in survivors) if h is not None)
        testnet.wait_height(before + 3, survivors)  # three of four keep committing
        down_height = testnet.height(survivors[0]) or 0
        started = time.monotonic()
        cli("testnet", "start", "validator-3", "--dir", str(testnet.directory))
        testnet.wait_height(down_height, [testnet.apis[3]], timeout_s=60)
        caught_up_s = time.monotonic() - started
        testnet.wait_height(down_height + 2)
    assert len(load.acknowledged) > 10
    # Acknowledged means committed by a quorum; the restarted node holds it once caught up.
    testnet.wait_height(max(receipt["height"] for receipt in load.acknowledged))
    print(f"validator-3 caught up {down_height} blocks {caught_up_s:.1f} s after restart")
    testnet.down()
    check_agreement(testnet)
    ids = committed_tx_ids(testnet)
    for receipt in load.acknowledged:
        assert all(receipt["tx_id"] in node_ids for node_ids in ids.values())


def test_kill_all_validators_at_once_and_restart(testnet: LiveNet) -> None:
    with Load(testnet) as load:
        testnet.wait_height(3)
        pids = [int(node["pid"]) for node in testnet.description["nodes"]]
        for pid in pids:
            os.kill(pid, 9)
    acknowledged = list(load.acknowledged)
    assert acknowledged
    # Right after the crash: a node acknowledges only what it has durably stored, so every
    # acknowledged transaction is on disk on at least the node that answered.
    crashed = committed_tx_ids(testnet)
    for receipt in acknowledged:
        assert any(receipt["tx_id"] in ids for ids in crashed.values()), (
            "an acknowledged tx was lost"
        )
    for node in testnet.description["nodes"]:
        cli("testnet", "start", node["name"], "--dir", str(testnet.directory))
    top = max(len(chain) for chain in chains(testnet).values())
    receipt = testnet.submit(testnet.apis[0], "after-restart")
    assert receipt is not None and receipt["height"] > top - 1
    testnet.wait_height(receipt["height"])
    testnet.down()
    # After restart and catch-up: on every node, and no node signed two blocks at a height.
    for node_ids in committed_tx_ids(testnet).values():
        assert all(r["tx_id"] in node_ids for r in acknowledged)
    check_agreement(testnet)


@pytest.mark.postgres
def test_kill_and_restart_on_postgresql(tmp_path: Path, postgres_server_url: str) -> None:
    net = LiveNet(tmp_path / "pgnet", db=postgres_server_url)
    try:
        with Load(net) as load:
            net.wait_height(2)
            cli("testnet", "kill", "validator-1", "--dir", str(net.directory))
            net.wait_height(
                (net.height(net.apis[0]) or 0) + 2, [net.apis[0], net.apis[2], net.apis[3]]
            )
            cli("testnet", "start", "validator-1", "--dir", str(net.directory))
            net.wait_height((net.height(net.apis[0]) or 0), [net.apis[1]])
        # Acknowledged means committed by a quorum; the restarted node holds it once caught up.
        net.wait_height(max(receipt["height"] for receipt in load.acknowledged))
        net.down()
        check_agreement(net)
        ids = committed_tx_ids(net)
        for receipt in load.acknowledged:
            assert all(receipt["tx_id"] in node_ids for node_ids in ids.values())
    finally:
        net.down()


def test_up_names_a_validator_that_cannot_start_instead_of_waiting_out_the_timeout(
    tmp_path: Path,
) -> None:
    """validator-1's peer port is taken: `up` says so at once, with the node's own words."""
    base = free_base_port(8)
    directory = tmp_path / "net"
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", base + 2))
        taken.listen()
        try:
            result = cli(
                "testnet", "up", "--dir", str(directory), "--base-port", str(base), check=False
            )
        finally:
            cli("testnet", "down", "--dir", str(directory), check=False)
    assert result.returncode != 0
    message = " ".join((result.stdout + result.stderr).split())
    assert "validator-1 exited" in message, message
    assert "address already in use" in message, message
    assert "testnet down --dir" in message, message


def test_a_node_runs_the_code_of_the_command_that_started_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Started from a directory that holds another ``node`` package (another checkout), a
    validator still runs this one: ``python -m`` alone would import the working directory's."""
    elsewhere = tmp_path / "elsewhere"
    (elsewhere / "node").mkdir(parents=True)
    ran = tmp_path / "the other package ran"
    (elsewhere / "node" / "__init__.py").write_text("")
    (elsewhere / "node" / "__main__.py").write_text(f"open({str(ran)!r}, 'w').close()\n")
    (tmp_path / "net" / "validator-0").mkdir(parents=True)
    (tmp_path / "net" / "validator-0" / "config.json").write_text("{}")
    monkeypatch.chdir(elsewhere)
    pid = start_node(Path("../net"), "validator-0")
    _, status = os.waitpid(pid, 0)
    log = (tmp_path / "net" / "validator-0" / "node.log").read_text()
    assert not ran.exists()
    assert os.waitstatus_to_exitcode(status) != 0 and "validator_id: missing" in log, log
