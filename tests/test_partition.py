"""Partitions on real links: each validator on its own host (a network namespace).

Each validator runs inside its own namespace with its own address on a bridge (veth pairs),
so the test can cut one validator's link (``ip link set down``) or slow it (``tc netem``).
An isolated validator must stop committing while the other three go on, and catch up when
its link returns. Needs root (CI runs as root); where namespaces cannot be made the test
falls back to freezing the process (SIGSTOP), which silences it the same way on loopback.
"""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from tests_support import free_base_port

from node.testnet import generate, stop_node

pytestmark = pytest.mark.slow

SUBNET = "10.231.{net}.{host}"


def sh(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(list(args), capture_output=True, text=True, check=False, timeout=30)


def namespaces_available() -> bool:
    name = f"clprobe{uuid.uuid4().hex[:6]}"
    if sh("ip", "netns", "add", name).returncode != 0:
        return False
    sh("ip", "netns", "del", name)
    return True


class Hosts:
    """A bridge and one namespace per validator, removed on close."""

    def __init__(self, count: int) -> None:
        tag = uuid.uuid4().hex[:5]
        self.net = int(tag, 16) % 200 + 20
        self.bridge = f"clbr{tag}"
        self.names = [f"cl{tag}n{i}" for i in range(count)]
        self.links = [f"cl{tag}v{i}" for i in range(count)]
        self.addresses = [SUBNET.format(net=self.net, host=i + 1) for i in range(count)]
        self._run("ip", "link", "add", self.bridge, "type", "bridge")
        self._run(
            "ip", "addr", "add", f"{SUBNET.format(net=self.net, host=254)}/24", "dev", self.bridge
        )
        self._run("ip", "link", "set", self.bridge, "up")
        for name, link, address in zip(self.names, self.links, self.addresses, strict=True):
            self._run("ip", "netns", "add", name)
            self._run(
                "ip", "link", "add", link, "type", "veth", "peer", "name", "eth0", "netns", name
            )
            self._run("ip", "link", "set", link, "master", self.bridge)
            self._run("ip", "link", "set", link, "up")
            self._run(
                "ip", "netns", "exec", name, "ip", "addr", "add", f"{address}/24", "dev", "eth0"
            )
            self._run("ip", "netns", "exec", name, "ip", "link", "set", "eth0", "up")
            self._run("ip", "netns", "exec", name, "ip", "link", "set", "lo", "up")

    @staticmethod
    def _run(*args: str) -> None:
        result = sh(*args)
        if result.returncode != 0:
            raise RuntimeError(f"{' '.join(args)}: {result.stderr.strip()}")

    def cut(self, index: int) -> None:
        self._run("ip", "link", "set", self.links[index], "down")

    def heal(self, index: int) -> None:
        self._run("ip", "link", "set", self.links[index], "up")

    def slow(self, index: int, delay_ms: int, loss_percent: int) -> str:
        """Slow one validator's link: netem delay and loss where the kernel has netem, else a
        token-bucket rate limit (tbf) whose queue delays and whose overflow drops packets."""
        netem = sh(
            "tc",
            "qdisc",
            "add",
            "dev",
            self.links[index],
            "root",
            "netem",
            "delay",
            f"{delay_ms}ms",
            "loss",
            f"{loss_percent}%",
        )
        if netem.returncode == 0:
            return "netem"
        self._run(
            "tc",
            "qdisc",
            "add",
            "dev",
            self.links[index],
            "root",
            "tbf",
            "rate",
            "512kbit",
            "burst",
            "16kbit",
            "latency",
            f"{delay_ms}ms",
        )
        return "tbf"

    def close(self) -> None:
        for name, link in zip(self.names, self.links, strict=True):
            sh("ip", "link", "del", link)
            sh("ip", "netns", "del", name)
        sh("ip", "link", "del", self.bridge)


class Network:
    def __init__(self, directory: Path, hosts: Hosts | None) -> None:
        self.directory = directory
        self.hosts = hosts
        base_port = 28000
        self.description = generate(directory, validators=4, base_port=base_port)
        self.token = self.description["operator_token"]
        self.apis: list[str] = []
        addresses = hosts.addresses if hosts else ["127.0.0.1"] * 4
        peers = {f"validator-{i}": f"{addresses[i]}:{base_port + 2 * i}" for i in range(4)}
        for i in range(4):
            config_path = directory / f"validator-{i}" / "config.json"
            config = json.loads(config_path.read_text())
            if hosts is None:
                port = free_base_port(2)
                peers[f"validator-{i}"] = f"127.0.0.1:{port}"
                config["peer_listen"] = f"127.0.0.1:{port}"
                config["api_listen"] = f"127.0.0.1:{port + 1}"
                self.apis.append(f"http://127.0.0.1:{port + 1}")
            else:
                config["peer_listen"] = f"{addresses[i]}:{base_port + 2 * i}"
                config["api_listen"] = f"{addresses[i]}:{base_port + 2 * i + 1}"
                self.apis.append(f"http://{addresses[i]}:{base_port + 2 * i + 1}")
            config_path.write_text(json.dumps(config))
        for i in range(4):
            config_path = directory / f"validator-{i}" / "config.json"
            config = json.loads(config_path.read_text())
            config["peers"] = {k: v for k, v in peers.items() if k != f"validator-{i}"}
            config_path.write_text(json.dumps(config))
        self.processes: list[subprocess.Popen[bytes]] = []
        for i in range(4):
            prefix = ["ip", "netns", "exec", hosts.names[i]] if hosts else []
            log = open(directory / f"validator-{i}" / "node.log", "ab")  # noqa: SIM115
            self.processes.append(
                subprocess.Popen(
                    [
                        *prefix,
                        sys.executable,
                        "-m",
                        "node",
                        "node",
                        "run",
                        "--config",
                        str(directory / f"validator-{i}" / "config.json"),
                    ],
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    stdin=subprocess.DEVNULL,
                    cwd=directory / f"validator-{i}",
                )
            )
            log.close()

    def height(self, index: int) -> int | None:
        try:
            response = httpx.get(
                f"{self.apis[index]}/v1/status",
                timeout=1,
                headers={"Authorization": f"Bearer {self.token}"},
            )
        except httpx.HTTPError:
            return None
        return int(response.json()["height"]) if response.status_code == 200 else None

    def stored_height(self, index: int) -> int:
        database = self.directory / f"validator-{index}" / "ledger.sqlite"
        with sqlite3.connect(f"file:{database}?mode=ro", uri=True) as connection:
            row = connection.execute("SELECT max(height) FROM blocks").fetchone()
        return int(row[0] or 0)

    def wait(self, indexes: list[int], height: int, timeout_s: float = 60) -> None:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            heights = [self.height(i) for i in indexes]
            if all(h is not None and h >= height for h in heights):
                return
            time.sleep(0.2)
        raise AssertionError(f"validators {indexes} did not reach {height}: {heights}")

    def close(self) -> None:
        for process in self.processes:
            if process.poll() is None:
                os.kill(process.pid, signal.SIGCONT)
                stop_node(process.pid)
                process.wait(10)


@pytest.fixture
def network(tmp_path: Path) -> Iterator[Network]:
    hosts = Hosts(4) if namespaces_available() else None
    net = Network(tmp_path, hosts)
    try:
        yield net
    finally:
        net.close()
        if hosts is not None:
            hosts.close()


def test_an_isolated_validator_stops_and_rejoins(network: Network) -> None:
    network.wait([0, 1, 2, 3], 2)
    if network.hosts is not None:
        network.hosts.cut(3)
    else:
        os.kill(network.processes[3].pid, signal.SIGSTOP)
    isolated_at = network.height(0) or 0
    # The other three are a quorum and go on making (heartbeat) blocks.
    network.wait([0, 1, 2], isolated_at + 3)
    if network.hosts is not None:
        # Its API is behind the cut link too: read its height from its own database.
        stuck = network.stored_height(3)
        assert stuck <= isolated_at + 1, "an isolated validator went on committing"
    if network.hosts is not None:
        network.hosts.heal(3)
    else:
        os.kill(network.processes[3].pid, signal.SIGCONT)
    target = network.height(0) or 0
    network.wait([3], target, timeout_s=60)


def test_a_slow_lossy_link_does_not_stop_the_network(network: Network) -> None:
    if network.hosts is None:
        pytest.skip("tc netem needs network namespaces (not available here)")
    network.wait([0, 1, 2, 3], 1)
    shaper = network.hosts.slow(1, delay_ms=150, loss_percent=10)
    assert shaper in {"netem", "tbf"}
    start = network.height(0) or 0
    network.wait([0, 1, 2, 3], start + 3, timeout_s=90)
