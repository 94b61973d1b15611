"""Helpers shared by the tests that run real sockets and processes."""

from __future__ import annotations

import random
import socket
from pathlib import Path

_LOWEST_TEST_PORT = 20_000


def _ephemeral_low() -> int:
    """The first port the kernel hands to outgoing connections (Linux default 32768)."""
    try:
        return int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return 32_768


def free_base_port(count: int) -> int:
    """A base port with ``count`` consecutive free loopback ports (bound, then released).

    Chosen below the kernel's ephemeral range: a port from that range can be taken by any
    outgoing connection (a node dialing a peer that is not up yet, a load client) between
    this check and the node's bind, which failed validator-3's start with "address already
    in use" in a CI run.
    """
    rng = random.Random()
    high = _ephemeral_low() - count
    for _ in range(200):
        base = rng.randrange(_LOWEST_TEST_PORT, high)
        sockets: list[socket.socket] = []
        try:
            for port in range(base, base + count):
                candidate = socket.socket()
                sockets.append(candidate)
                candidate.bind(("127.0.0.1", port))
            return base
        except OSError:
            continue
        finally:
            for candidate in sockets:
                candidate.close()
    raise RuntimeError("no free range of loopback ports")
