"""A minimal HTTP/1.1 keep-alive client for the load generator's hot path.

Why not httpx here: on this 2-core machine an ``httpx.AsyncClient`` POST costs the client
about 0.3 ms of CPU (headers, URL and cookie handling, the h11 state machine), which at
3,000 transactions a second is most of a core taken from the validators under test. The
benchmark sends pre-built request bytes (headers and body encoded while signing) and reads
only the status line, ``Content-Length`` and body of each answer: a few microseconds.
The sampled ``?wait=commit`` posts use it too, each on a connection of its own: through
httpx, whose pool rescans every waiting request on each assignment, the one-in-a-hundred
long-polls took two thirds of the load generator's CPU (py-spy, 4 validators, maximum rate).
Status and block reads go through httpx.

The gateway (uvicorn) answers every request with ``Content-Length`` and keeps the
connection open; one request is in flight per connection at a time.
"""

from __future__ import annotations

import asyncio

HEAD_BYTES_MAX = 16 * 1024
BODY_BYTES_MAX = 1024 * 1024


class HttpError(Exception):
    """The connection broke or the answer is not HTTP/1.1 as expected."""


def post_request(path: str, token: str, body: bytes) -> bytes:
    """The bytes of ``POST path`` with a bearer token and a JSON body."""
    head = (
        f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer {token}\r\n"
        f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n"
    )
    return head.encode() + body


class Connection:
    """One keep-alive connection; reconnects on the next request after a failure."""

    def __init__(self, host: str, port: int) -> None:
        self.host = host
        self.port = port
        self._reader: asyncio.StreamReader | None = None
        self._writer: asyncio.StreamWriter | None = None

    async def request(self, data: bytes) -> tuple[int, bytes]:
        """Send one pre-built request; return the status and the body.

        A kept-alive connection the server has meanwhile closed (uvicorn closes idle ones
        after 5 s) fails on first use: that request is sent once more on a new connection.
        Resending is safe here: a transaction admitted twice is refused as a duplicate.
        """
        reused = self._writer is not None
        try:
            return await self._once(data)
        except HttpError:
            if not reused:
                raise
            return await self._once(data)

    async def _once(self, data: bytes) -> tuple[int, bytes]:
        if self._writer is None:
            try:
                self._reader, self._writer = await asyncio.open_connection(self.host, self.port)
            except OSError as error:
                raise HttpError(str(error) or type(error).__name__) from error
        assert self._reader is not None
        try:
            self._writer.write(data)
            head = await self._reader.readuntil(b"\r\n\r\n")
            status, length = _parse_head(head)
            body = await self._reader.readexactly(length) if length else b""
        except (OSError, asyncio.IncompleteReadError, asyncio.LimitOverrunError) as error:
            self.close()
            raise HttpError(str(error) or type(error).__name__) from error
        return status, body

    def close(self) -> None:
        if self._writer is not None:
            self._writer.close()
        self._reader = self._writer = None


def _parse_head(head: bytes) -> tuple[int, int]:
    if len(head) > HEAD_BYTES_MAX or not head.startswith(b"HTTP/1.1 "):
        raise HttpError(f"not an HTTP/1.1 answer: {head[:40]!r}")
    try:
        status = int(head[9:12])
    except ValueError as error:
        raise HttpError(f"no status code in {head[:40]!r}") from error
    length = 0
    for line in head.split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            try:
                length = int(value.strip())
            except ValueError as error:
                raise HttpError(f"bad Content-Length {value.strip()[:20]!r}") from error
        elif name.strip().lower() == b"transfer-encoding":
            raise HttpError("chunked answers are not expected from the gateway")
    if length > BODY_BYTES_MAX:
        raise HttpError(f"answer of {length} bytes")
    return status, length
