"""Peer transport: authenticated, framed TCP links between genesis validators.

Public surface: :class:`PeerNetwork` (the real transport), :class:`PeerTransport` (what the
node runtime depends on), :class:`TransportConfig`, :class:`TransportCounters` and
:class:`Refusal` (the handshake failure reasons counted for metrics). The wire protocol is
described in docs/architecture.md, "Peer transport".
"""

from __future__ import annotations

from typing import Any, Protocol

from node.transport._handshake import CHALLENGE_BYTES, HANDSHAKE_FRAME_BYTES_MAX, Refusal
from node.transport._network import (
    MessageHandler,
    PeerNetwork,
    TransportConfig,
    TransportCounters,
)


class PeerTransport(Protocol):
    """What the node runtime needs from a transport: non-blocking, lossy sends to peers."""

    def send(self, peer_id: str, message: dict[str, Any]) -> bool: ...

    def broadcast(self, message: dict[str, Any]) -> int: ...

    def broadcast_payload(self, payload: bytes) -> int: ...

    def connected_peers(self) -> set[str]: ...

    def disconnect(self, peer_id: str, reason: str) -> bool: ...


__all__ = [
    "CHALLENGE_BYTES",
    "HANDSHAKE_FRAME_BYTES_MAX",
    "MessageHandler",
    "PeerNetwork",
    "PeerTransport",
    "Refusal",
    "TransportConfig",
    "TransportCounters",
]
