"""Helpers shared by the tests that run real sockets and processes."""

from __future__ import annotations

import socket


def free_base_port(count: int) -> int:
    """A base port with ``count`` consecutive free loopback ports (bound, then released)."""
    for _ in range(100):
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            base = int(probe.getsockname()[1])
        if base + count >= 65535:
            continue
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
