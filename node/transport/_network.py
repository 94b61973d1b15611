"""PeerNetwork: authenticated TCP links from one validator to every other genesis validator.

Theory of operation (docs/architecture.md, "Peer transport"):

* **Listening and dialling.** ``start()`` listens, and runs one dial loop per other validator.
  A dial loop sleeps while a link to its peer is up; otherwise it dials the peer's address
  (genesis ``Validator.address``, or the override given for tests), and after every ended or
  failed attempt waits an exponential backoff, capped and jittered by the injected ``rng``.
* **Handshake.** Every new connection, dialled or accepted, must pass the mutual handshake of
  ``_handshake.py`` within ``handshake_timeout_s``, with frames of at most 4 KiB, and at most
  ``pending_handshakes_max`` connections may be in their handshake at once.
* **One link per pair.** Both ends dial, so two links to one peer can come up. Each end keeps
  the one dialled by the lower validator id (both ends compute the same answer) and closes
  the other; between two links of the same preference the newer wins, since an end only
  redials after it has lost its previous link.
* **Sending.** ``send`` encodes the message once, then appends the frame to that peer's
  bounded queue and returns at once; a full queue drops the message and counts it (BFT
  consensus tolerates loss and retransmits). One writer task per link empties the queue, so
  a peer that stops reading fills only its own queue and, after ``write_timeout_s`` without
  progress, loses its link.
* **Failure isolation.** Every link runs in its own task; an unexpected exception in one is
  logged and ends that link only. ``on_message`` exceptions are logged and counted, and the
  link goes on.

All methods must be called from the event loop thread that ran ``start()``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import socket
from collections import Counter, deque
from collections.abc import Callable, Coroutine, Mapping
from dataclasses import dataclass, field
from typing import Any

from node.crypto import KeyPair
from node.errors import ConfigError
from node.genesis import Genesis, address_problem
from node.invariant import invariant
from node.limits import FRAME_BYTES_MAX
from node.transport._frames import (
    FrameError,
    check_payload,
    encode_payload,
    frame,
    parse_frame_strict,
    read_frame,
)
from node.transport._handshake import (
    HANDSHAKE_FRAME_BYTES_MAX,
    HandshakeParty,
    HandshakeRefused,
    Refusal,
    new_challenge,
)

_log = logging.getLogger("node.transport")

MessageHandler = Callable[[str, dict[str, Any]], None]
"""``on_message(peer_id, message)``, called on the event loop for every message received."""

EARLIER_CHALLENGES_MAX = 8
"""Challenges remembered per claimed peer to recognise a replayed auth (diagnostics only)."""

WRITE_BATCH_BYTES_MAX = 256 * 1024
"""Frames written to the socket before waiting for it to drain: fewer system calls under load."""

STREAM_BUFFER_BYTES = 256 * 1024
"""asyncio's read buffer high-water mark per link; large frames are read in several fills."""


@dataclass(frozen=True, slots=True, kw_only=True)
class TransportConfig:
    """Timeouts, backoff and queue bounds of a :class:`PeerNetwork`; defaults suit production."""

    handshake_timeout_s: float = 5.0
    """A connection that has not completed the handshake by then is dropped."""
    connect_timeout_s: float = 5.0
    write_timeout_s: float = 30.0
    """A link whose socket accepts no bytes for this long is closed (the peer stopped reading)."""
    backoff_initial_s: float = 0.1
    backoff_max_s: float = 10.0
    """Cap of the redial delay: a validator that comes back is found within about this time."""
    queue_messages_max: int = 4096
    """Per-peer queue: a few heights of votes and proposals for a peer that is briefly slow."""
    queue_bytes_max: int = 64 * 1024 * 1024
    """Per-peer queue bytes: several maximal blocks, bounded whatever the message sizes."""
    pending_handshakes_max: int = 64
    """Unauthenticated connections at once: a flood of idle sockets cannot exhaust memory."""

    def __post_init__(self) -> None:
        for name in ("handshake_timeout_s", "connect_timeout_s", "write_timeout_s"):
            if not 0 < getattr(self, name) <= 600:
                raise ConfigError("transport", name, "must be in (0, 600] seconds")
        if not 0 < self.backoff_initial_s <= self.backoff_max_s <= 600:
            raise ConfigError(
                "transport", "backoff_max_s", "need 0 < backoff_initial_s <= backoff_max_s <= 600"
            )
        if self.queue_messages_max < 1:
            raise ConfigError("transport", "queue_messages_max", "must be at least 1")
        if self.queue_bytes_max < FRAME_BYTES_MAX:
            raise ConfigError("transport", "queue_bytes_max", "must hold one maximal frame")
        if self.pending_handshakes_max < 1:
            raise ConfigError("transport", "pending_handshakes_max", "must be at least 1")


@dataclass(slots=True)
class TransportCounters:
    """Counters for metrics. ``frames_*`` and ``bytes_*`` count messages after the handshake."""

    frames_in: int = 0
    frames_out: int = 0
    bytes_in: int = 0
    bytes_out: int = 0
    connects: int = 0
    disconnects: Counter[str] = field(default_factory=Counter)
    """Ended links by reason (``closed-by-peer``, ``bad-frame``, ``duplicate``, ...)."""
    handshake_failures: Counter[str] = field(default_factory=Counter)
    """Refused connections by :class:`Refusal` value."""
    drops_queue_full: Counter[str] = field(default_factory=Counter)
    """Messages dropped because the peer's queue was full, by peer id."""
    drops_not_connected: Counter[str] = field(default_factory=Counter)
    """Messages dropped because no link to the peer was up, by peer id."""
    on_message_errors: int = 0

    def snapshot(self) -> dict[str, Any]:
        """A plain copy for a metrics endpoint."""
        return {
            "frames_in": self.frames_in,
            "frames_out": self.frames_out,
            "bytes_in": self.bytes_in,
            "bytes_out": self.bytes_out,
            "connects": self.connects,
            "disconnects": dict(self.disconnects),
            "handshake_failures": dict(self.handshake_failures),
            "drops_queue_full": dict(self.drops_queue_full),
            "drops_not_connected": dict(self.drops_not_connected),
            "on_message_errors": self.on_message_errors,
        }


class _FrameQueue:
    """Frames waiting for one peer, bounded in count and bytes; one consumer at a time."""

    def __init__(self, messages_max: int, bytes_max: int) -> None:
        self._frames: deque[bytes] = deque()
        self._bytes = 0
        self._messages_max = messages_max
        self._bytes_max = bytes_max
        self._ready = asyncio.Event()

    def put(self, data: bytes) -> bool:
        if len(self._frames) >= self._messages_max or self._bytes + len(data) > self._bytes_max:
            return False
        self._frames.append(data)
        self._bytes += len(data)
        self._ready.set()
        return True

    def get_nowait(self) -> bytes | None:
        if not self._frames:
            return None
        data = self._frames.popleft()
        self._bytes -= len(data)
        return data

    async def get(self) -> bytes:
        while True:
            data = self.get_nowait()
            if data is not None:
                return data
            self._ready.clear()
            await self._ready.wait()


class _Link:
    """One authenticated connection to a peer."""

    def __init__(
        self,
        peer_id: str,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        *,
        dialled_by: str,
        remote: str,
    ) -> None:
        self.peer_id = peer_id
        self.reader = reader
        self.writer = writer
        self.dialled_by = dialled_by
        self.remote = remote
        self.close_reason: str | None = None

    def close(self, reason: str) -> None:
        """Close from outside the link's task; its loops see the socket end and return."""
        if self.close_reason is None:
            self.close_reason = reason
        self.writer.transport.abort()


@dataclass(slots=True)
class _Peer:
    id: str
    queue: _FrameQueue
    link: _Link | None = None
    unlinked: asyncio.Event = field(default_factory=asyncio.Event)
    earlier_challenges: deque[str] = field(
        default_factory=lambda: deque(maxlen=EARLIER_CHALLENGES_MAX)
    )


class PeerNetwork:
    """Authenticated, framed TCP links to every other genesis validator (see module docstring)."""

    def __init__(
        self,
        genesis: Genesis,
        validator_id: str,
        key_pair: KeyPair,
        listen_host: str,
        listen_port: int,
        *,
        on_message: MessageHandler,
        rng: random.Random,
        addresses: Mapping[str, str] | None = None,
        config: TransportConfig | None = None,
        parse_frame: Callable[[bytes], Any] = parse_frame_strict,
    ) -> None:
        """``addresses`` maps validator ids to ``host:port`` overriding genesis; it is read at
        every dial, so a test may fill it in after the listeners have bound port 0.
        ``parse_frame`` parses and checks the payload of each frame after the handshake (the
        handshake's own frames are always checked whole)."""
        own = genesis.validator(validator_id)
        if own is None:
            raise ConfigError("transport", "validator_id", f"{validator_id!r} is not in genesis")
        if own.public_key != key_pair.public_key:
            raise ConfigError("transport", "key", f"is not {validator_id!r}'s genesis key")
        self._genesis = genesis
        self._party = HandshakeParty(genesis, genesis.hash, validator_id, key_pair)
        self._id = validator_id
        self._listen_host = listen_host
        self._listen_port = listen_port
        self._on_message = on_message
        self._parse_frame = parse_frame
        self._rng = rng
        self._addresses = addresses if addresses is not None else {}
        self._config = config or TransportConfig()
        self.counters = TransportCounters()
        self._peers: dict[str, _Peer] = {}
        for validator in genesis.validators:
            if validator.id != validator_id:
                queue = _FrameQueue(self._config.queue_messages_max, self._config.queue_bytes_max)
                self._peers[validator.id] = _Peer(validator.id, queue)
                self._peers[validator.id].unlinked.set()
        self._server: asyncio.Server | None = None
        self._tasks: set[asyncio.Task[object]] = set()
        self._pending_handshakes = 0
        self._stopping = False

    # --- public surface ----------------------------------------------------------------

    @property
    def validator_id(self) -> str:
        return self._id

    @property
    def port(self) -> int:
        """The port the listener bound (useful with ``listen_port=0``)."""
        invariant(self._server is not None, "PeerNetwork.port read before start()")
        assert self._server is not None
        port: int = self._server.sockets[0].getsockname()[1]
        return port

    async def start(self) -> None:
        """Listen, and start dialling every other validator."""
        invariant(self._server is None and not self._stopping, "PeerNetwork started twice")
        self._server = await asyncio.start_server(
            self._accept, self._listen_host, self._listen_port, limit=STREAM_BUFFER_BYTES
        )
        _log.info("%s listening on %s:%d", self._id, self._listen_host, self.port)
        for peer in self._peers.values():
            self._spawn(self._dial_loop(peer), f"dial {peer.id}")

    async def stop(self) -> None:
        """Stop listening and dialling, close every link, and wait for every task to end."""
        if self._stopping:
            return
        self._stopping = True
        if self._server is not None:
            self._server.close()
        while self._tasks:
            tasks = list(self._tasks)
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
        if self._server is not None:
            await self._server.wait_closed()
        _log.info("%s stopped", self._id)

    def send(self, peer_id: str, message: dict[str, Any]) -> bool:
        """Queue ``message`` for ``peer_id``; False (and counted) if it was dropped.

        Never blocks. Raises :class:`node.errors.EncodingError` for a message that cannot be a
        frame and ``ValueError`` for a peer that is not another genesis validator.
        """
        data = frame(encode_payload(message))
        return self._enqueue(self._peer(peer_id), data)

    def broadcast(self, message: dict[str, Any]) -> int:
        """Queue ``message`` for every other validator; return how many queues took it."""
        return self.broadcast_payload(encode_payload(message))

    def broadcast_payload(self, payload: bytes) -> int:
        """:meth:`broadcast` of a message the caller encoded itself (canonical JSON of an
        object), such as a proposal spliced from its envelopes' admitted bytes."""
        data = frame(check_payload(payload))
        return sum(self._enqueue(peer, data) for peer in self._peers.values())

    def connected_peers(self) -> set[str]:
        return {peer.id for peer in self._peers.values() if peer.link is not None}

    def disconnect(self, peer_id: str, reason: str) -> bool:
        """Close the link to a peer that misbehaved above the transport; False if none was up.

        Not a ban: the peer may redial, and this node redials it after its backoff. The link
        is counted under the ``requested`` disconnect reason; ``reason`` goes to the log.
        """
        link = self._peer(peer_id).link
        if link is None:
            return False
        _log.warning("%s disconnecting %s: %s", self._id, peer_id, reason)
        link.close("requested")
        return True

    # --- sending -------------------------------------------------------------------------

    def _peer(self, peer_id: str) -> _Peer:
        peer = self._peers.get(peer_id)
        if peer is None:
            raise ValueError(f"{peer_id!r} is not another validator of this network")
        return peer

    def _enqueue(self, peer: _Peer, data: bytes) -> bool:
        if peer.link is None:
            self.counters.drops_not_connected[peer.id] += 1
            return False
        if not peer.queue.put(data):
            self.counters.drops_queue_full[peer.id] += 1
            _log.debug("%s dropped a message to %s: queue full", self._id, peer.id)
            return False
        return True

    # --- tasks ---------------------------------------------------------------------------

    def _spawn(self, coroutine: Coroutine[Any, Any, object], name: str) -> None:
        task = asyncio.create_task(coroutine, name=f"{self._id} {name}")
        self._tasks.add(task)
        task.add_done_callback(self._task_done)

    def _task_done(self, task: asyncio.Task[object]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            # A bug in one link must not take the node down, but it must be seen.
            _log.error("%s task %s failed", self._id, task.get_name(), exc_info=task.exception())

    def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if self._stopping:
            writer.transport.abort()
            return
        self._spawn(self._run_connection(reader, writer, None), "inbound")

    async def _dial_loop(self, peer: _Peer) -> None:
        failures = 0
        while True:
            await peer.unlinked.wait()
            try:
                authenticated = await self._dial(peer)
            except Exception:
                # A bug met on one connection must not stop this peer from being redialled.
                _log.exception("%s: dialling %s failed unexpectedly", self._id, peer.id)
                authenticated = False
            failures = 0 if authenticated else failures + 1
            await asyncio.sleep(self._backoff_s(failures))

    def _backoff_s(self, failures: int) -> float:
        base = self._config.backoff_initial_s * 2.0 ** min(failures, 32)
        jitter: float = self._rng.uniform(0.5, 1.0)
        return min(base, self._config.backoff_max_s) * jitter

    async def _dial(self, peer: _Peer) -> bool:
        address = self._addresses.get(peer.id) or self._genesis_address(peer.id)
        problem = address_problem(address)
        if problem is not None:
            _log.error("%s cannot dial %s at %r: address %s", self._id, peer.id, address, problem)
            return False
        host, _, port = address.rpartition(":")
        try:
            async with asyncio.timeout(self._config.connect_timeout_s):
                reader, writer = await asyncio.open_connection(
                    host.strip("[]"), int(port), limit=STREAM_BUFFER_BYTES
                )
        except (OSError, TimeoutError) as error:
            _log.debug("%s cannot reach %s at %s: %s", self._id, peer.id, address, error)
            return False
        return await self._run_connection(reader, writer, peer.id)

    def _genesis_address(self, peer_id: str) -> str:
        validator = self._genesis.validator(peer_id)
        invariant(validator is not None, f"dialling {peer_id!r}, which is not in genesis")
        assert validator is not None
        return validator.address

    # --- one connection --------------------------------------------------------------------

    async def _run_connection(
        self,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        expected_peer: str | None,
    ) -> bool:
        """Handshake, then serve the link until it ends; True if the peer authenticated."""
        remote = _remote(writer)
        _configure_keepalive(writer)
        try:
            peer_id = await self._authenticate(reader, writer, expected_peer, remote)
            if peer_id is None:
                return False
            link = _Link(
                peer_id,
                reader,
                writer,
                dialled_by=self._id if expected_peer is not None else peer_id,
                remote=remote,
            )
            await self._serve(link)
            return True
        finally:
            writer.transport.abort()
            with contextlib.suppress(OSError):
                await writer.wait_closed()

    async def _authenticate(
        self,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        expected_peer: str | None,
        remote: str,
    ) -> str | None:
        """The peer's validator id, or None after counting and logging the refusal."""
        if self._pending_handshakes >= self._config.pending_handshakes_max:
            self._refused(Refusal.TOO_MANY_PENDING, remote, expected_peer, "")
            return None
        self._pending_handshakes += 1
        try:
            async with asyncio.timeout(self._config.handshake_timeout_s):
                return await self._handshake(reader, writer, expected_peer)
        except HandshakeRefused as refusal:
            self._refused(refusal.reason, remote, expected_peer, refusal.detail)
        except FrameError as error:
            self._refused(Refusal(error.reason), remote, expected_peer, error.detail)
        except TimeoutError:
            self._refused(Refusal.TIMEOUT, remote, expected_peer, "")
        except (asyncio.IncompleteReadError, OSError) as error:
            self._refused(Refusal.CLOSED, remote, expected_peer, repr(error))
        finally:
            self._pending_handshakes -= 1
        return None

    async def _handshake(
        self,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        expected_peer: str | None,
    ) -> str:
        party = self._party
        challenge = new_challenge()
        writer.write(frame(encode_payload(party.hello(challenge))))
        await writer.drain()
        peer_hello, _ = await read_frame(reader, HANDSHAKE_FRAME_BYTES_MAX)
        peer_id, peer_challenge = party.check_hello(peer_hello, expected_peer)
        peer = self._peers[peer_id]
        earlier = tuple(peer.earlier_challenges)
        peer.earlier_challenges.append(challenge)
        writer.write(frame(encode_payload(party.auth(peer_id, peer_challenge))))
        await writer.drain()
        peer_auth, _ = await read_frame(reader, HANDSHAKE_FRAME_BYTES_MAX)
        party.check_auth(peer_auth, peer_id, challenge, earlier)
        return peer_id

    def _refused(
        self, reason: Refusal, remote: str, expected_peer: str | None, detail: str
    ) -> None:
        self.counters.handshake_failures[reason] += 1
        dialled = f" (dialled {expected_peer})" if expected_peer else ""
        _log.warning("%s refused %s%s: %s %s", self._id, remote, dialled, reason.value, detail)

    async def _serve(self, link: _Link) -> None:
        peer = self._peers[link.peer_id]
        if not self._install(peer, link):
            self.counters.disconnects["duplicate"] += 1
            _log.info("%s closed a duplicate link to %s (%s)", self._id, peer.id, link.remote)
            return
        self.counters.connects += 1
        _log.info(
            "%s connected to %s at %s (dialled by %s)",
            self._id,
            peer.id,
            link.remote,
            link.dialled_by,
        )
        reason = "stopping"
        loops = [
            asyncio.create_task(self._read_loop(link)),
            asyncio.create_task(self._write_loop(link, peer.queue)),
        ]
        try:
            done, _ = await asyncio.wait(loops, return_when=asyncio.FIRST_COMPLETED)
            reason = _loop_reason(done.pop())
        finally:
            for loop in loops:
                loop.cancel()
            await asyncio.gather(*loops, return_exceptions=True)
            if peer.link is link:
                peer.link = None
                peer.unlinked.set()
            reason = link.close_reason or reason
            self.counters.disconnects[reason] += 1
            _log.info("%s disconnected from %s: %s", self._id, peer.id, reason)

    def _install(self, peer: _Peer, link: _Link) -> bool:
        """Make ``link`` the peer's link unless the current one is preferred over it."""
        current = peer.link
        if current is not None and self._preferred(current) and not self._preferred(link):
            return False
        if current is not None:
            current.close("duplicate")
        peer.link = link
        peer.unlinked.clear()
        return True

    def _preferred(self, link: _Link) -> bool:
        """Both ends keep the link dialled by the lower validator id of the pair."""
        return link.dialled_by == min(self._id, link.peer_id)

    async def _read_loop(self, link: _Link) -> str:
        while True:
            try:
                message, size = await read_frame(link.reader, FRAME_BYTES_MAX, self._parse_frame)
            except FrameError as error:
                _log.warning("%s got a bad frame from %s: %s", self._id, link.peer_id, error.detail)
                return error.reason
            except asyncio.IncompleteReadError:
                return "closed-by-peer"
            except OSError as error:
                return f"connection-error: {error.__class__.__name__}"
            self.counters.frames_in += 1
            self.counters.bytes_in += size
            try:
                self._on_message(link.peer_id, message)
            except Exception:
                # The handler's bug is not the peer's fault: keep the link, make it visible.
                self.counters.on_message_errors += 1
                _log.exception(
                    "%s: on_message failed for a message from %s", self._id, link.peer_id
                )

    async def _write_loop(self, link: _Link, queue: _FrameQueue) -> str:
        writer = link.writer
        while True:
            data: bytes | None = await queue.get()
            batch_bytes = 0
            frames = 0
            while data is not None:
                writer.write(data)
                batch_bytes += len(data)
                frames += 1
                data = queue.get_nowait() if batch_bytes < WRITE_BATCH_BYTES_MAX else None
            try:
                async with asyncio.timeout(self._config.write_timeout_s):
                    await writer.drain()
            except TimeoutError:
                return "write-timeout"
            except OSError as error:
                return f"connection-error: {error.__class__.__name__}"
            self.counters.frames_out += frames
            self.counters.bytes_out += batch_bytes


def _loop_reason(task: asyncio.Task[str]) -> str:
    error = task.exception()
    if error is not None:
        _log.error("peer link loop failed", exc_info=error)
        return "internal-error"
    return task.result()


def _remote(writer: asyncio.StreamWriter) -> str:
    peer = writer.get_extra_info("peername")
    if isinstance(peer, tuple) and len(peer) >= 2:
        return f"{peer[0]}:{peer[1]}"
    return "unknown"


def _configure_keepalive(writer: asyncio.StreamWriter) -> None:
    """Let the kernel notice a peer host that vanished without closing (half-open links)."""
    sock = writer.get_extra_info("socket")
    if sock is None:
        return
    with contextlib.suppress(OSError):
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
        for option, value in (("TCP_KEEPIDLE", 30), ("TCP_KEEPINTVL", 10), ("TCP_KEEPCNT", 3)):
            if hasattr(socket, option):
                sock.setsockopt(socket.IPPROTO_TCP, getattr(socket, option), value)
