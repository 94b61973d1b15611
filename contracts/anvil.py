"""A local anvil (Foundry's EVM test chain) started and stopped from Python.

``with Anvil.start() as chain: ...`` runs anvil on a free loopback port with its cache in a
temporary directory (by default anvil writes state snapshots under ``~/.foundry``: gigabytes
over a long run), waits until it answers JSON-RPC, and on exit stops it with SIGTERM, then
SIGKILL if it has not exited within a bound. The binary is ``ANVIL_BINARY`` if set, else the
one npm installed (``node_modules/.bin/anvil``, pinned in ``package-lock.json``), else
``anvil`` on ``PATH``; without one, :class:`AnvilNotFound` says how to install it.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from node.errors import CoopledgerError

REPO_ROOT = Path(__file__).resolve().parent.parent

READY_TIMEOUT_S = 30.0
"""anvil answers within a second on an idle machine; 30 s covers a loaded 2-core CI runner."""

STOP_TIMEOUT_S = 10.0
"""How long SIGTERM gets before SIGKILL."""

START_ATTEMPTS_MAX = 3
"""A free port found by binding port 0 can be taken by another process before anvil binds
it; a start that fails that way is retried on a new port, a bounded number of times."""

ACCOUNTS = 30
"""Funded, unlocked accounts: members, candidates for governance and outsiders."""


class AnvilError(CoopledgerError):
    """anvil could not be started or stopped cleanly."""


class AnvilNotFound(AnvilError):
    """No anvil binary: the npm toolchain is not installed."""


def find_anvil() -> str:
    explicit = os.environ.get("ANVIL_BINARY")
    if explicit:
        if not os.access(explicit, os.X_OK):
            raise AnvilNotFound(f"ANVIL_BINARY={explicit} is not an executable file")
        return explicit
    installed = REPO_ROOT / "node_modules" / ".bin" / "anvil"
    if os.access(installed, os.X_OK):
        return str(installed)
    on_path = shutil.which("anvil")
    if on_path:
        return on_path
    raise AnvilNotFound(
        "anvil is not installed: run scripts/bootstrap.sh (it installs @foundry-rs/anvil "
        "from package-lock.json into node_modules), or set ANVIL_BINARY"
    )


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


def _rpc(url: str, method: str, params: list[object], timeout_s: float) -> object:
    request = urllib.request.Request(
        url,
        data=json.dumps({"jsonrpc": "2.0", "id": 1, "method": method, "params": params}).encode(),
        headers={"Content-Type": "application/json"},
    )
    with urllib.request.urlopen(request, timeout=timeout_s) as response:
        return json.loads(response.read())


@dataclass
class Anvil:
    """A running anvil process."""

    process: subprocess.Popen[bytes]
    port: int
    cache_dir: Path

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @classmethod
    @contextmanager
    def start(
        cls, *, accounts: int = ACCOUNTS, extra_args: tuple[str, ...] = ()
    ) -> Iterator[Anvil]:
        binary = find_anvil()
        with tempfile.TemporaryDirectory(prefix="coopledger-anvil-") as temp:
            anvil = cls._launch(binary, Path(temp), accounts, extra_args)
            try:
                yield anvil
            finally:
                anvil.stop()

    @classmethod
    def _launch(
        cls, binary: str, cache_dir: Path, accounts: int, extra_args: tuple[str, ...]
    ) -> Anvil:
        problem = "no attempt made"
        for _ in range(START_ATTEMPTS_MAX):
            port = free_port()
            args = [
                binary,
                "--host", "127.0.0.1",
                "--port", str(port),
                "--silent",
                "--accounts", str(accounts),
                "--cache-path", str(cache_dir),
                *extra_args,
            ]  # fmt: skip
            # A file, not a pipe, takes anvil's diagnostics: a pipe nobody drains can fill
            # up and block the chain.
            with (cache_dir / "anvil.log").open("wb") as log:
                process = subprocess.Popen(
                    args, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=log
                )
            anvil = cls(process, port, cache_dir)
            problem = anvil._wait_ready()
            if not problem:
                return anvil
            anvil.stop()
        raise AnvilError(f"anvil did not start after {START_ATTEMPTS_MAX} attempts: {problem}")

    def _wait_ready(self) -> str:
        """Poll JSON-RPC until anvil answers; return "" when ready, else why not."""
        deadline = time.monotonic() + READY_TIMEOUT_S
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                log = (self.cache_dir / "anvil.log").read_text(errors="replace")
                return f"exited with code {self.process.returncode}: {log.strip()[-500:]}"
            try:
                _rpc(self.url, "eth_chainId", [], timeout_s=1.0)
            except (urllib.error.URLError, ConnectionError, TimeoutError):
                time.sleep(0.02)  # a bounded poll for a condition, not a wait for time
                continue
            return ""
        return f"no JSON-RPC answer on port {self.port} within {READY_TIMEOUT_S:.0f} s"

    def stop(self) -> None:
        """SIGTERM, then SIGKILL if anvil has not exited within :data:`STOP_TIMEOUT_S`."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=STOP_TIMEOUT_S)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=STOP_TIMEOUT_S)
