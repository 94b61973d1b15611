"""Length-prefixed frames: a 4-byte big-endian payload length, then canonical JSON of an object.

A frame is refused, and its connection closed, when the declared length is zero or over the
limit the caller passes (checked before a single payload byte is read, so a peer declaring
2 GiB costs four bytes of buffer, not two gigabytes), or when the payload is not a JSON object
in the canonical domain (:func:`node.codec.parse_json`; after the handshake the runtime's
:func:`node.wire.parse_frame`, which leaves the envelopes a frame carries to admission).
"""

from __future__ import annotations

import asyncio
import struct
from collections.abc import Callable
from typing import Any

from node.codec import canonical, parse_json
from node.errors import EncodingError
from node.limits import FRAME_BYTES_MAX

HEADER = struct.Struct(">I")
"""The length prefix: unsigned 32-bit big-endian byte count of the payload."""


class FrameError(Exception):
    """A peer sent a frame that breaks the framing rules; ``reason`` is a stable kebab-case code.

    Raised inside the transport only and turned into a refusal or a disconnect there.
    """

    def __init__(self, reason: str, detail: str) -> None:
        self.reason = reason
        self.detail = detail
        super().__init__(f"{reason}: {detail}")


def encode_payload(message: dict[str, Any]) -> bytes:
    """Canonical bytes of ``message``; raise :class:`EncodingError` if it cannot be a frame."""
    if not isinstance(message, dict):
        raise EncodingError(f"a peer message must be a JSON object, not {type(message).__name__}")
    return check_payload(canonical(message))


def check_payload(payload: bytes) -> bytes:
    """``payload``, if it fits in a frame; raise :class:`EncodingError` if not."""
    if len(payload) > FRAME_BYTES_MAX:
        raise EncodingError(f"message of {len(payload)} bytes exceeds {FRAME_BYTES_MAX} bytes")
    return payload


def frame(payload: bytes) -> bytes:
    """The frame carrying ``payload`` (already canonical)."""
    return HEADER.pack(len(payload)) + payload


def parse_frame_strict(payload: bytes) -> Any:
    """Every byte checked (:func:`node.codec.parse_json`): handshakes and by default."""
    return parse_json(payload, what="peer frame")


async def read_frame(
    reader: asyncio.StreamReader,
    payload_bytes_max: int,
    parse: Callable[[bytes], Any] = parse_frame_strict,
) -> tuple[Any, int]:
    """Read one frame; return its message (a ``dict``) and its size on the wire.

    ``parse`` turns the payload into the message or raises :class:`EncodingError`.

    Raises :class:`FrameError` for a frame that breaks the rules and lets
    :class:`asyncio.IncompleteReadError` through when the peer closes mid-frame.
    """
    header = await reader.readexactly(HEADER.size)
    (length,) = HEADER.unpack(header)
    if length > payload_bytes_max:
        raise FrameError("frame-too-large", f"declares {length} bytes, limit {payload_bytes_max}")
    if length == 0:
        raise FrameError("bad-frame", "empty payload")
    # readexactly grows its buffer as bytes arrive; nothing of size ``length`` is allocated
    # before the peer has actually sent that much.
    payload = await reader.readexactly(length)
    try:
        message = parse(payload)
    except EncodingError as error:
        raise FrameError("bad-frame", str(error)) from error
    if not isinstance(message, dict):
        raise FrameError("bad-frame", f"payload is a JSON {type(message).__name__}, not an object")
    return message, HEADER.size + length
