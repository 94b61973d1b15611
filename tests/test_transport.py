"""Peer transport over real sockets on 127.0.0.1: framing, the mutual handshake, one link per
pair, reconnection, per-peer queues, and a peer's bad input (each attack is refused, the
offender is disconnected, the reason is counted and the honest validators keep talking).

Attackers are raw asyncio clients that speak the wire protocol as docs/architecture.md
("Peer transport") describes it, written out here independently of node.transport.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import itertools
import json
import logging
import random
import secrets
import socket
import struct
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any

import pytest

from node.codec import canonical
from node.consortium import Consortium, make_consortium
from node.crypto import KeyPair, verify
from node.errors import ConfigError, EncodingError
from node.genesis import Genesis
from node.limits import FRAME_BYTES_MAX
from node.transport import (
    HANDSHAKE_FRAME_BYTES_MAX,
    PeerNetwork,
    PeerTransport,
    TransportConfig,
)

pytestmark = pytest.mark.timeout(60)

CONFIG = TransportConfig(
    handshake_timeout_s=0.5,
    connect_timeout_s=1.0,
    backoff_initial_s=0.02,
    backoff_max_s=0.2,
)
WAIT_S = 5.0
IDS = ("validator-0", "validator-1", "validator-2", "validator-3")

Message = dict[str, Any]


def run(scenario: Callable[[], Coroutine[Any, Any, None]]) -> None:
    asyncio.run(scenario())


async def wait_for(condition: Callable[[], bool], timeout: float = WAIT_S) -> None:
    """Poll ``condition`` until it holds; fail after ``timeout`` seconds."""
    deadline = asyncio.get_running_loop().time() + timeout
    while not condition():
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError(f"condition not met within {timeout} s")
        await asyncio.sleep(0.005)


def closed_port() -> int:
    """A loopback port nobody listens on (bound, then released)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port


class Cluster:
    """Validators of one consortium, each with an inbox and its own address map."""

    def __init__(self, consortium: Consortium) -> None:
        self.consortium = consortium
        self.genesis = consortium.genesis
        self.nodes: dict[str, PeerNetwork] = {}
        self.inbox: dict[str, list[tuple[str, Message]]] = {vid: [] for vid in IDS}
        self.ports: dict[str, int] = {}
        nowhere = f"127.0.0.1:{closed_port()}"
        self.addresses: dict[str, dict[str, str]] = {
            vid: dict.fromkeys(IDS, nowhere) for vid in IDS
        }
        self.handlers: dict[str, Callable[[str, Message], None]] = {}

    async def start(self, vid: str, *, port: int = 0, config: TransportConfig = CONFIG) -> None:
        def on_message(peer_id: str, message: Message) -> None:
            handler = self.handlers.get(vid)
            if handler is not None:
                handler(peer_id, message)
            self.inbox[vid].append((peer_id, message))

        node = PeerNetwork(
            self.genesis,
            vid,
            self.consortium.validator_keys[vid],
            "127.0.0.1",
            port,
            on_message=on_message,
            rng=random.Random(f"transport-test:{vid}"),
            addresses=self.addresses[vid],
            config=config,
        )
        await node.start()
        self.nodes[vid] = node
        self.ports[vid] = node.port
        for addresses in self.addresses.values():
            addresses[vid] = f"127.0.0.1:{node.port}"

    async def stop(self, vid: str) -> None:
        await self.nodes.pop(vid).stop()

    async def stop_all(self) -> None:
        for vid in list(self.nodes):
            await self.stop(vid)

    def fully_connected(self) -> bool:
        running = set(self.nodes)
        return all(node.connected_peers() == running - {vid} for vid, node in self.nodes.items())

    def received(self, vid: str, message: Message) -> bool:
        return any(got == message for _, got in self.inbox[vid])

    def received_all(self, receivers: list[str], message: Message) -> bool:
        return all(self.received(vid, message) for vid in receivers)

    async def check_delivery(self, sender: str, tag: str) -> None:
        """Broadcasts from ``sender`` reach every other running validator.

        The transport is lossy by design (a link being replaced by its duplicate may drop
        what it held), so like the consensus above it, the check retransmits until done.
        """
        others = [vid for vid in self.nodes if vid != sender]
        deadline = asyncio.get_running_loop().time() + WAIT_S
        for attempt in itertools.count():
            message = {"type": "check", "tag": tag, "from": sender, "attempt": attempt}
            self.nodes[sender].broadcast(message)
            try:
                await wait_for(functools.partial(self.received_all, others, message), timeout=0.5)
                return
            except AssertionError:
                if asyncio.get_running_loop().time() > deadline:
                    raise


async def cluster_of(validator_ids: tuple[str, ...] = IDS, **options: Any) -> Cluster:
    cluster = Cluster(make_consortium(chain_id="transport-test", seed="transport"))
    for vid in validator_ids:
        await cluster.start(vid, **options)
    await wait_for(cluster.fully_connected)
    return cluster


def with_cluster(
    body: Callable[[Cluster], Awaitable[None]], validator_ids: tuple[str, ...] = IDS
) -> None:
    async def scenario() -> None:
        cluster = await cluster_of(validator_ids)
        try:
            await body(cluster)
        finally:
            await cluster.stop_all()

    run(scenario)


# --- a raw client that speaks the wire protocol ---------------------------------------------


def encode(message: object) -> bytes:
    payload = canonical(message)
    return struct.pack(">I", len(payload)) + payload


class RawPeer:
    """A hand-driven TCP client; records every byte it sends."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer
        self.sent = bytearray()

    @classmethod
    async def connect(cls, port: int) -> RawPeer:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        return cls(reader, writer)

    def write(self, data: bytes) -> None:
        self.sent += data
        self.writer.write(data)

    async def read_message(self) -> Message:
        (length,) = struct.unpack(">I", await self.reader.readexactly(4))
        message: Message = json.loads(await self.reader.readexactly(length))
        return message

    async def disconnected(self) -> bool:
        """True once the node has closed the connection; TimeoutError after the wait bound."""
        async with asyncio.timeout(WAIT_S):
            try:
                while await self.reader.read(65536):
                    pass
            except ConnectionResetError:
                pass
        return True

    async def close(self) -> None:
        self.writer.transport.abort()
        with contextlib.suppress(OSError):
            await self.writer.wait_closed()


def hello(genesis_chain: str, genesis_hash: str, vid: str, challenge: str) -> Message:
    return {
        "type": "hello",
        "chain_id": genesis_chain,
        "genesis_hash": genesis_hash,
        "validator": vid,
        "challenge": challenge,
    }


def auth(key: KeyPair, genesis: Genesis, signer: str, to: str, challenge: str) -> Message:
    """The auth ``signer`` sends ``to``: a handshake signature over ``to``'s challenge."""
    statement = {
        "chain_id": genesis.chain_id,
        "genesis_hash": genesis.hash,
        "challenge": challenge,
        "from": signer,
        "to": to,
    }
    return {"type": "auth", "signature": key.sign("handshake", statement)}


async def handshake(
    peer: RawPeer, cluster: Cluster, target: str, vid: str, *, key: KeyPair | None = None
) -> None:
    """Run the handshake as ``vid`` with the node ``target`` on either end of ``peer``.

    With ``key`` (someone else's key) the node is expected to refuse, so its auth is not
    awaited; otherwise the node's auth is read and verified as any validator would.
    """
    genesis = cluster.genesis
    node_hello = await peer.read_message()
    assert node_hello["type"] == "hello" and node_hello["validator"] == target
    challenge = secrets.token_hex(32)
    peer.write(encode(hello(genesis.chain_id, genesis.hash, vid, challenge)))
    signer = key or cluster.consortium.validator_keys[vid]
    peer.write(encode(auth(signer, genesis, vid, target, node_hello["challenge"])))
    if key is None:
        node_auth = await peer.read_message()
        signed = {
            "chain_id": genesis.chain_id,
            "genesis_hash": genesis.hash,
            "challenge": challenge,
            "from": target,
            "to": vid,
        }
        target_key = cluster.consortium.validator_keys[target].public_key
        assert verify("handshake", signed, target_key, node_auth["signature"])


async def handshake_as(
    cluster: Cluster, target: str, vid: str, key: KeyPair | None = None
) -> RawPeer:
    """Connect to ``target`` and run the handshake as ``vid``."""
    peer = await RawPeer.connect(cluster.ports[target])
    await handshake(peer, cluster, target, vid, key=key)
    return peer


class RawServer:
    """A listener whose accepted connections become :class:`RawPeer` values."""

    def __init__(self) -> None:
        self.accepted: asyncio.Queue[RawPeer] = asyncio.Queue()
        self.server: asyncio.Server | None = None

    async def start(self) -> str:
        def accept(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            self.accepted.put_nowait(RawPeer(reader, writer))

        self.server = await asyncio.start_server(accept, "127.0.0.1", 0)
        return f"127.0.0.1:{self.server.sockets[0].getsockname()[1]}"

    async def next_peer(self) -> RawPeer:
        async with asyncio.timeout(WAIT_S):
            return await self.accepted.get()

    async def close(self) -> None:
        assert self.server is not None
        self.server.close()
        await self.server.wait_closed()


def failures(cluster: Cluster, vid: str, reason: str) -> int:
    return cluster.nodes[vid].counters.handshake_failures[reason]


# --- the honest network ------------------------------------------------------------------------


def test_four_validators_connect_all_to_all_and_exchange_messages() -> None:
    async def body(cluster: Cluster) -> None:
        for vid in IDS:
            await cluster.check_delivery(vid, f"hello from {vid}")
        for n in range(50):
            cluster.nodes["validator-1"].send("validator-3", {"type": "direct", "n": n})
        await wait_for(lambda: cluster.received("validator-3", {"type": "direct", "n": 49}))
        direct = [m["n"] for p, m in cluster.inbox["validator-3"] if m["type"] == "direct"]
        assert direct == sorted(set(direct)), "a link delivers in order, each message once"
        for vid, node in cluster.nodes.items():
            assert {peer for peer, _ in cluster.inbox[vid]} == set(IDS) - {vid}
            assert node.counters.frames_out >= 3
            assert node.counters.bytes_in > 0

    with_cluster(body)


def test_stopped_validator_reconnects_with_backoff_and_traffic_resumes() -> None:
    async def body(cluster: Cluster) -> None:
        port = cluster.ports["validator-2"]
        await cluster.stop("validator-2")
        await wait_for(
            lambda: all("validator-2" not in n.connected_peers() for n in cluster.nodes.values())
        )
        assert not cluster.nodes["validator-0"].send("validator-2", {"type": "lost"})
        assert cluster.nodes["validator-0"].counters.drops_not_connected["validator-2"] == 1
        await cluster.check_delivery("validator-0", "while validator-2 is down")

        await cluster.start("validator-2", port=port)
        await wait_for(cluster.fully_connected)
        await cluster.check_delivery("validator-2", "back")
        await cluster.check_delivery("validator-0", "welcome back")
        for vid in ("validator-0", "validator-1", "validator-3"):
            assert cluster.nodes[vid].counters.connects >= 4
            assert sum(cluster.nodes[vid].counters.disconnects.values()) >= 1

    with_cluster(body)


def test_the_link_dialled_by_the_lower_id_is_kept_over_a_later_duplicate() -> None:
    async def scenario() -> None:
        cluster = Cluster(make_consortium(chain_id="transport-test", seed="transport"))
        fake_3 = RawServer()
        cluster.addresses["validator-0"]["validator-3"] = await fake_3.start()
        await cluster.start("validator-0")
        node = cluster.nodes["validator-0"]
        dialled = await fake_3.next_peer()
        second: RawPeer | None = None
        try:
            await handshake(dialled, cluster, "validator-0", "validator-3")
            await wait_for(lambda: node.connected_peers() == {"validator-3"})
            # validator-3 also dials validator-0: that link is the one to drop.
            second = await handshake_as(cluster, "validator-0", "validator-3")
            assert await second.disconnected()
            assert node.counters.disconnects["duplicate"] == 1
            assert node.send("validator-3", {"type": "on the kept link"})
            assert await dialled.read_message() == {"type": "on the kept link"}
        finally:
            for peer in (dialled, second):
                if peer is not None:
                    await peer.close()
            await fake_3.close()
            await cluster.stop_all()

    run(scenario)


def test_the_link_dialled_by_the_lower_id_replaces_an_earlier_one() -> None:
    async def scenario() -> None:
        cluster = Cluster(make_consortium(chain_id="transport-test", seed="transport"))
        fake_0 = RawServer()
        cluster.addresses["validator-3"]["validator-0"] = await fake_0.start()
        await cluster.start("validator-3")
        node = cluster.nodes["validator-3"]
        dialled = await fake_0.next_peer()
        preferred: RawPeer | None = None
        try:
            await handshake(dialled, cluster, "validator-3", "validator-0")
            await wait_for(lambda: node.connected_peers() == {"validator-0"})
            # validator-0 dials validator-3: its link wins, the earlier one is closed.
            preferred = await handshake_as(cluster, "validator-3", "validator-0")
            assert await dialled.disconnected()
            await wait_for(lambda: node.counters.disconnects["duplicate"] == 1)
            assert node.connected_peers() == {"validator-0"}
            assert node.send("validator-0", {"type": "on the new link"})
            assert await preferred.read_message() == {"type": "on the new link"}
        finally:
            for peer in (dialled, preferred):
                if peer is not None:
                    await peer.close()
            await fake_0.close()
            await cluster.stop_all()

    run(scenario)


def test_on_message_exception_is_logged_and_the_link_survives(
    caplog: pytest.LogCaptureFixture,
) -> None:
    async def body(cluster: Cluster) -> None:
        def explode(peer_id: str, message: Message) -> None:
            if message.get("explode"):
                raise RuntimeError("handler bug")

        cluster.handlers["validator-1"] = explode
        assert cluster.nodes["validator-0"].send("validator-1", {"explode": True})
        await wait_for(lambda: cluster.nodes["validator-1"].counters.on_message_errors == 1)
        await cluster.check_delivery("validator-0", "after the handler bug")
        assert "validator-0" in cluster.nodes["validator-1"].connected_peers()

    with caplog.at_level(logging.ERROR, logger="node.transport"):
        with_cluster(body, ("validator-0", "validator-1"))
    assert any("on_message failed" in record.message for record in caplog.records)


def test_disconnect_closes_the_link_and_the_peers_reconnect() -> None:
    async def body(cluster: Cluster) -> None:
        node = cluster.nodes["validator-0"]
        assert node.disconnect("validator-1", "served a bad block")
        await wait_for(lambda: node.counters.disconnects["requested"] == 1)
        await wait_for(cluster.fully_connected)
        await cluster.check_delivery("validator-0", "after the disconnect")
        await cluster.stop("validator-1")
        await wait_for(lambda: node.connected_peers() == set())
        assert not node.disconnect("validator-1", "already gone")

    with_cluster(body, ("validator-0", "validator-1"))


def test_send_refuses_bad_messages_and_unknown_peers() -> None:
    async def body(cluster: Cluster) -> None:
        node = cluster.nodes["validator-0"]
        with pytest.raises(ValueError):
            node.send("validator-0", {"type": "to myself"})
        with pytest.raises(ValueError):
            node.send("mallory", {"type": "x"})
        with pytest.raises(EncodingError):
            node.send("validator-1", {"amount": 1.5})
        with pytest.raises(EncodingError):
            node.broadcast({"blob": "x" * (FRAME_BYTES_MAX + 1)})

    with_cluster(body, ("validator-0", "validator-1"))


def test_configuration_is_checked() -> None:
    consortium = make_consortium(seed="transport")
    with pytest.raises(ConfigError, match="genesis key"):
        PeerNetwork(
            consortium.genesis,
            "validator-0",
            consortium.validator_keys["validator-1"],
            "127.0.0.1",
            0,
            on_message=lambda peer, message: None,
            rng=random.Random(0),
        )
    with pytest.raises(ConfigError, match="not in genesis"):
        PeerNetwork(
            consortium.genesis,
            "mallory",
            KeyPair.generate(),
            "127.0.0.1",
            0,
            on_message=lambda peer, message: None,
            rng=random.Random(0),
        )
    with pytest.raises(ConfigError, match="backoff"):
        TransportConfig(backoff_initial_s=5, backoff_max_s=1)
    with pytest.raises(ConfigError, match="maximal frame"):
        TransportConfig(queue_bytes_max=1024)


def test_sends_before_any_link_are_dropped_and_counted() -> None:
    consortium = make_consortium(seed="transport")
    network = PeerNetwork(
        consortium.genesis,
        "validator-0",
        consortium.validator_keys["validator-0"],
        "127.0.0.1",
        0,
        on_message=lambda peer, message: None,
        rng=random.Random(0),
    )
    transport: PeerTransport = network
    assert transport.connected_peers() == set()
    assert not transport.send("validator-1", {"type": "early"})
    assert transport.broadcast({"type": "early"}) == 0
    assert network.counters.drops_not_connected == {
        "validator-1": 2,
        "validator-2": 1,
        "validator-3": 1,
    }


def test_a_malformed_address_is_logged_and_retried(caplog: pytest.LogCaptureFixture) -> None:
    async def scenario() -> None:
        cluster = Cluster(make_consortium(chain_id="transport-test", seed="transport"))
        cluster.addresses["validator-0"]["validator-1"] = "no port here"
        try:
            await cluster.start("validator-0")
            await wait_for(lambda: "cannot dial validator-1" in caplog.text)
            await cluster.start("validator-1")
            await wait_for(cluster.fully_connected)
        finally:
            await cluster.stop_all()

    with caplog.at_level(logging.ERROR, logger="node.transport"):
        run(scenario)


# --- bad input from a peer ---------------------------------------------------------------------


def attack_cases() -> list[Any]:
    """(name, bytes builder, expected refusal); the builder gets the cluster."""

    def garbage(cluster: Cluster) -> bytes:
        return b"\x00\x00\x00\x10not json at all!" + bytes(range(256))

    def declares_2_gib(cluster: Cluster) -> bytes:
        return struct.pack(">I", 2 * 1024**3) + b"{}"

    def oversized_hello(cluster: Cluster) -> bytes:
        padded = hello(cluster.genesis.chain_id, cluster.genesis.hash, "validator-1", "00" * 32)
        padded["padding"] = "x" * HANDSHAKE_FRAME_BYTES_MAX
        return encode(padded)

    def not_json(cluster: Cluster) -> bytes:
        return struct.pack(">I", 9) + b"{not json"

    def json_array(cluster: Cluster) -> bytes:
        return encode(["hello", "validator-1"])

    def float_in_payload(cluster: Cluster) -> bytes:
        return struct.pack(">I", 11) + b'{"n": 1.25}'

    def empty_frame(cluster: Cluster) -> bytes:
        return struct.pack(">I", 0)

    def not_a_hello(cluster: Cluster) -> bytes:
        return encode({"type": "hello", "validator": "validator-1"})

    def short_challenge(cluster: Cluster) -> bytes:
        g = cluster.genesis
        return encode(hello(g.chain_id, g.hash, "validator-1", "ab"))

    def unknown_validator(cluster: Cluster) -> bytes:
        g = cluster.genesis
        return encode(hello(g.chain_id, g.hash, "mallory", secrets.token_hex(32)))

    def claims_our_id(cluster: Cluster) -> bytes:
        g = cluster.genesis
        return encode(hello(g.chain_id, g.hash, "validator-0", secrets.token_hex(32)))

    def wrong_chain(cluster: Cluster) -> bytes:
        g = cluster.genesis
        return encode(hello("other-chain", g.hash, "validator-1", secrets.token_hex(32)))

    def wrong_genesis(cluster: Cluster) -> bytes:
        g = cluster.genesis
        return encode(hello(g.chain_id, "ab" * 32, "validator-1", secrets.token_hex(32)))

    return [
        pytest.param(garbage, "bad-frame", id="garbage"),
        pytest.param(declares_2_gib, "frame-too-large", id="declares-2GiB"),
        pytest.param(oversized_hello, "frame-too-large", id="oversized-hello"),
        pytest.param(not_json, "bad-frame", id="not-json"),
        pytest.param(json_array, "bad-frame", id="json-array"),
        pytest.param(float_in_payload, "bad-frame", id="float"),
        pytest.param(empty_frame, "bad-frame", id="empty-frame"),
        pytest.param(not_a_hello, "bad-hello", id="not-a-hello"),
        pytest.param(short_challenge, "bad-hello", id="short-challenge"),
        pytest.param(unknown_validator, "unknown-validator", id="unknown-validator"),
        pytest.param(claims_our_id, "claims-our-id", id="claims-our-id"),
        pytest.param(wrong_chain, "wrong-chain", id="wrong-chain"),
        pytest.param(wrong_genesis, "wrong-genesis", id="wrong-genesis"),
    ]


@pytest.mark.parametrize(("build", "reason"), attack_cases())
def test_bad_first_frame_is_refused_and_the_network_keeps_running(
    build: Callable[[Cluster], bytes], reason: str
) -> None:
    async def body(cluster: Cluster) -> None:
        before = failures(cluster, "validator-0", reason)
        attacker = await RawPeer.connect(cluster.ports["validator-0"])
        try:
            attacker.write(build(cluster))
            assert await attacker.disconnected()
        finally:
            await attacker.close()
        await wait_for(lambda: failures(cluster, "validator-0", reason) == before + 1)
        await wait_for(cluster.fully_connected)
        await cluster.check_delivery("validator-0", f"after {reason}")
        await cluster.check_delivery("validator-3", f"to validator-0 after {reason}")

    with_cluster(body)


def test_impostor_signing_with_another_key_is_refused() -> None:
    async def body(cluster: Cluster) -> None:
        impostor = await handshake_as(cluster, "validator-0", "validator-3", key=KeyPair.generate())
        try:
            assert await impostor.disconnected()
        finally:
            await impostor.close()
        assert failures(cluster, "validator-0", "bad-signature") == 1
        assert "validator-3" not in cluster.nodes["validator-0"].connected_peers()
        await cluster.check_delivery("validator-0", "after the impostor")

    with_cluster(body, IDS[:3])


def test_another_validators_key_does_not_pass_for_a_validator() -> None:
    async def body(cluster: Cluster) -> None:
        # validator-2 is a genuine validator, but it may only speak as itself.
        key = cluster.consortium.validator_keys["validator-2"]
        impostor = await handshake_as(cluster, "validator-0", "validator-3", key=key)
        try:
            assert await impostor.disconnected()
        finally:
            await impostor.close()
        assert failures(cluster, "validator-0", "bad-signature") == 1
        await cluster.check_delivery("validator-0", "after the impostor")

    with_cluster(body, IDS[:3])


def test_replayed_handshake_is_refused() -> None:
    async def body(cluster: Cluster) -> None:
        # A genuine handshake as validator-3, recorded byte for byte.
        genuine = await handshake_as(cluster, "validator-0", "validator-3")
        recorded = bytes(genuine.sent)
        await wait_for(lambda: "validator-3" in cluster.nodes["validator-0"].connected_peers())
        await genuine.close()
        await wait_for(lambda: "validator-3" not in cluster.nodes["validator-0"].connected_peers())
        # The same bytes on a new connection: the node's challenge is new, the auth is not.
        replay = await RawPeer.connect(cluster.ports["validator-0"])
        try:
            replay.write(recorded)
            assert await replay.disconnected()
        finally:
            await replay.close()
        assert failures(cluster, "validator-0", "replayed-auth") == 1
        assert "validator-3" not in cluster.nodes["validator-0"].connected_peers()
        await cluster.check_delivery("validator-0", "after the replay")

    with_cluster(body, IDS[:3])


def test_a_nodes_own_auth_reflected_back_is_refused() -> None:
    async def body(cluster: Cluster) -> None:
        genesis = cluster.genesis
        port = cluster.ports["validator-0"]
        first, second = await RawPeer.connect(port), await RawPeer.connect(port)
        try:
            # The attacker claims validator-3 on both connections and hands the challenge of
            # the first to the node on the second, so the node signs an answer to itself.
            challenge_0 = (await first.read_message())["challenge"]
            first.write(encode(hello(genesis.chain_id, genesis.hash, "validator-3", "11" * 32)))
            await second.read_message()
            second.write(encode(hello(genesis.chain_id, genesis.hash, "validator-3", challenge_0)))
            node_auth = await second.read_message()
            first.write(encode(node_auth))
            assert await first.disconnected()
        finally:
            await first.close()
            await second.close()
        assert failures(cluster, "validator-0", "bad-signature") == 1
        assert "validator-3" not in cluster.nodes["validator-0"].connected_peers()
        await cluster.check_delivery("validator-0", "after the reflection")

    with_cluster(body, IDS[:3])


def test_silent_connection_is_dropped_after_the_handshake_timeout() -> None:
    async def body(cluster: Cluster) -> None:
        silent = await RawPeer.connect(cluster.ports["validator-0"])
        try:
            assert (await silent.read_message())["type"] == "hello"
            assert await silent.disconnected()
        finally:
            await silent.close()
        assert failures(cluster, "validator-0", "handshake-timeout") == 1
        await cluster.check_delivery("validator-0", "after the silent peer")

    with_cluster(body, IDS[:2])


def test_dialled_address_answering_as_another_validator_is_refused() -> None:
    async def scenario() -> None:
        cluster = await cluster_of(("validator-1", "validator-2"))
        try:
            # validator-0's map sends its dials for validator-3 to validator-2's port.
            cluster.addresses["validator-0"]["validator-3"] = (
                f"127.0.0.1:{cluster.ports['validator-2']}"
            )
            await cluster.start("validator-0")
            await wait_for(lambda: failures(cluster, "validator-0", "unexpected-peer") >= 1)
            await wait_for(cluster.fully_connected)
            await cluster.check_delivery("validator-0", "after a wrong address")
        finally:
            await cluster.stop_all()

    run(scenario)


@pytest.mark.parametrize(
    ("payload", "reason"),
    [
        pytest.param(b"\xff\xfe garbage after auth", "bad-frame", id="garbage"),
        pytest.param(b"x" * (FRAME_BYTES_MAX + 1), "frame-too-large", id="oversized-real-frame"),
        pytest.param(b"[1,2,3]", "bad-frame", id="json-array"),
    ],
)
def test_bad_frame_from_an_authenticated_peer_disconnects_it(payload: bytes, reason: str) -> None:
    async def body(cluster: Cluster) -> None:
        peer = await handshake_as(cluster, "validator-0", "validator-3")
        try:
            await wait_for(lambda: "validator-3" in cluster.nodes["validator-0"].connected_peers())
            peer.write(encode({"type": "fine"}))
            await wait_for(lambda: cluster.received("validator-0", {"type": "fine"}))
            peer.write(struct.pack(">I", len(payload)) + payload)
            assert await peer.disconnected()
        finally:
            await peer.close()
        node = cluster.nodes["validator-0"]
        await wait_for(lambda: node.counters.disconnects[reason] == 1)
        assert "validator-3" not in node.connected_peers()
        await cluster.check_delivery("validator-0", f"after {reason}")

    with_cluster(body, IDS[:3])


# --- a slow peer -------------------------------------------------------------------------------


def test_slow_peer_fills_only_its_own_queue() -> None:
    async def scenario() -> None:
        cluster = Cluster(make_consortium(chain_id="transport-test", seed="transport"))
        small_queues = TransportConfig(
            handshake_timeout_s=0.5,
            backoff_initial_s=0.02,
            backoff_max_s=0.2,
            queue_messages_max=8,
        )
        for vid in IDS[:3]:
            await cluster.start(vid, config=small_queues)
        await wait_for(cluster.fully_connected)
        # validator-3 authenticates, then never reads again.
        slow = await handshake_as(cluster, "validator-0", "validator-3")
        try:
            node = cluster.nodes["validator-0"]
            await wait_for(lambda: "validator-3" in node.connected_peers())
            big = {"type": "block", "data": "ab" * 128 * 1024}
            async with asyncio.timeout(WAIT_S):
                while node.counters.drops_queue_full["validator-3"] == 0:
                    node.send("validator-3", big)
                    await asyncio.sleep(0)
            for n in range(20):
                message = {"type": "vote", "n": n}
                assert node.broadcast(message) == 2
                await wait_for(
                    functools.partial(cluster.received_all, ["validator-1", "validator-2"], message)
                )
            assert node.counters.drops_queue_full["validator-3"] >= 21
            assert node.counters.drops_queue_full["validator-1"] == 0
            assert node.counters.drops_queue_full["validator-2"] == 0
        finally:
            await slow.close()
            await cluster.stop_all()

    run(scenario)


def test_peer_that_stops_reading_loses_its_link_after_the_write_timeout() -> None:
    async def scenario() -> None:
        cluster = Cluster(make_consortium(chain_id="transport-test", seed="transport"))
        impatient = TransportConfig(
            handshake_timeout_s=0.5, backoff_initial_s=0.02, backoff_max_s=0.2, write_timeout_s=0.3
        )
        await cluster.start("validator-0", config=impatient)
        slow = await handshake_as(cluster, "validator-0", "validator-3")
        try:
            node = cluster.nodes["validator-0"]
            await wait_for(lambda: "validator-3" in node.connected_peers())
            big = {"type": "block", "data": "ab" * 128 * 1024}
            async with asyncio.timeout(WAIT_S):
                while node.counters.disconnects["write-timeout"] == 0:
                    node.send("validator-3", big)
                    await asyncio.sleep(0.001)
            assert "validator-3" not in node.connected_peers()
        finally:
            await slow.close()
            await cluster.stop_all()

    run(scenario)
