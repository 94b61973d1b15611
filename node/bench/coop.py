"""The coopledger side of the benchmark: a testnet's gateways as a :class:`Backend`.

Every transaction is signed with its sender's own key (the testnet's key files) and relayed
as a client-signed envelope, round robin over all nodes: in batches to
``POST /v1/transaction-batches`` under the operator's token (the signature, not the token, is
the authority), and a sample one at a time to ``POST /v1/transactions?wait=commit`` with the
sender's own token (the auditor's observations with the operator's: auditor tokens never
write), timed to its final receipt.

Blocks are learnt by polling ``/v1/status`` and reading each new ``/v1/blocks/{h}`` (tx ids
and codes, no envelopes) from the node that reported it, rotating over the nodes.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx

from node.bench.engine import Engine, Prepared, SeenBlock
from node.bench.rawhttp import Connection, HttpError, post_request
from node.bench.workload import Op
from node.codec import canonical
from node.crypto import KeyPair
from node.keys import read_key_file
from node.scenario import AUDITOR
from node.testnet import (
    generate,
    read_description,
    start_node,
    stop_node,
    write_description,
)
from node.tx import sign_transaction, tx_id_of

CONNECTIONS_PER_NODE = 48
"""Keep-alive connections per gateway: enough requests in flight to cover the ~1 ms a
node takes to admit one, across 4-7 nodes sharing 2 cores, without flooding uvicorn."""

OUTSTANDING_MAX = 20_000
"""Transactions sent but not yet seen committed: several full blocks (2,000 each), well
below a node's mempool bound (50,000), so max-rate runs queue in the mempool, not fail."""

HTTP_TIMEOUT_S = 30.0

BATCH_TXS_MAX = 100
"""Envelopes per ``POST /v1/transaction-batches`` (the route takes up to 500): what queued
while the previous request was in flight, so batches grow with load and stay small when idle."""


class CoopBackend:
    name = "coopledger"
    outstanding_max = OUTSTANDING_MAX

    def __init__(
        self,
        description: dict[str, Any],
        expiry_window_ms: int,
        *,
        connections_per_node: int = CONNECTIONS_PER_NODE,
    ) -> None:
        self.connections_per_node = connections_per_node
        self.description = description
        self.chain_id: str = description["chain_id"]
        self.apis: list[str] = [node["api"] for node in description["nodes"]]
        self.expiry_window_ms = expiry_window_ms
        """Each transaction expires this long after it is signed, as a client would set it."""
        self._operator = description["operator_token"]
        self._tokens = {m["id"]: m["token"] for m in description["members"]}
        self._keys: dict[str, KeyPair] = {
            m["id"]: read_key_file(Path(m["key_file"])).key_pair for m in description["members"]
        }
        auditor_file = Path(description["genesis"]).parent / "keys" / f"{AUDITOR}.json"
        self._keys[AUDITOR] = read_key_file(auditor_file).key_pair
        self.engine: Engine | None = None
        self._queues: list[asyncio.Queue[tuple[str, bytes]]] = []
        """Per node, (key, canonical envelope) waiting to be sent in a batch."""
        self._tasks: list[asyncio.Task[None]] = []
        self._waits: set[asyncio.Task[None]] = set()
        self._http: httpx.AsyncClient | None = None
        self._next_node = 0
        self._nonce = 0
        self._seen_height = 0
        self._poll_node = 0

    # --- preparation -----------------------------------------------------------------------

    def prepare(self, op: Op) -> Prepared:
        self._nonce += 1
        body = {
            "chain_id": self.chain_id,
            "type": op.type,
            "sender": op.sender,
            "nonce": self._nonce,
            "expires_at_ms": time.time_ns() // 1_000_000 + self.expiry_window_ms,
            "payload": op.payload,
        }
        envelope = sign_transaction(self._keys[op.sender], body)
        token = self._tokens.get(op.sender, self._operator)
        return Prepared(op, tx_id_of(body), (token, canonical(envelope)))

    # --- sending ----------------------------------------------------------------------------

    async def start_http(self) -> None:
        self._http = httpx.AsyncClient(
            timeout=HTTP_TIMEOUT_S,
            headers={"Authorization": f"Bearer {self._operator}"},
            limits=httpx.Limits(max_connections=64, max_keepalive_connections=64),
        )

    async def start(self, height: int) -> None:
        """Open the senders; blocks above ``height`` are the run's."""
        self._seen_height = height
        loop = asyncio.get_running_loop()
        for api in self.apis:
            url = urlsplit(api)
            queue: asyncio.Queue[tuple[str, bytes]] = asyncio.Queue()
            self._queues.append(queue)
            for _ in range(self.connections_per_node):
                connection = Connection(url.hostname or "127.0.0.1", url.port or 80)
                self._tasks.append(loop.create_task(self._worker(queue, connection)))

    async def close(self) -> None:
        tasks = [*self._tasks, *self._waits]
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        if self._http is not None:
            await self._http.aclose()

    def dispatch(self, item: Prepared, sample: bool) -> str:
        node = self._next_node
        self._next_node = (node + 1) % len(self.apis)
        token, body = item.data
        if sample:
            task = asyncio.get_running_loop().create_task(
                self._waited(self.apis[node], item.key, token, body)
            )
            self._waits.add(task)
            task.add_done_callback(self._waits.discard)
        else:
            self._queues[node].put_nowait((item.key, body))
        return item.key

    async def _worker(
        self, queue: asyncio.Queue[tuple[str, bytes]], connection: Connection
    ) -> None:
        assert self.engine is not None
        while True:
            batch = [await queue.get()]
            while len(batch) < BATCH_TXS_MAX and not queue.empty():
                batch.append(queue.get_nowait())
            body = b'{"envelopes":[' + b",".join(envelope for _, envelope in batch) + b"]}"
            request = post_request("/v1/transaction-batches", self._operator, body)
            try:
                status, answer = await connection.request(request)
            except HttpError:
                for key, _ in batch:
                    self.engine.refused(key, "send-error")
                continue
            if status >= 400:
                for key, _ in batch:
                    self.engine.refused(key, _problem_code(answer))
                continue
            for (key, _), result in zip(batch, json.loads(answer)["results"], strict=True):
                if result["status"] == "refused":
                    self.engine.refused(key, result["code"])

    async def _waited(self, api: str, key: str, token: str, body: bytes) -> None:
        """Post one sampled transaction alone with ``?wait=commit``, on a connection of its
        own (the answer takes as long as the commit): its latency is submit to receipt."""
        assert self.engine is not None
        url = urlsplit(api)
        connection = Connection(url.hostname or "127.0.0.1", url.port or 80)
        request = post_request("/v1/transactions?wait=commit", token, body)
        try:
            async with asyncio.timeout(HTTP_TIMEOUT_S):
                status, answer = await connection.request(request)
        except (HttpError, TimeoutError):
            self.engine.refused(key, "send-error")
            self.engine.sample_failed(key)
            return
        finally:
            connection.close()
        if status == 200:
            self.engine.sample_answered(key)
            return
        self.engine.sample_failed(key)
        if status >= 400:
            self.engine.refused(key, _problem_code(answer))

    # --- observing --------------------------------------------------------------------------

    async def height(self, api: str) -> int:
        assert self._http is not None
        response = await self._http.get(f"{api}/v1/status")
        response.raise_for_status()
        return int(response.json()["height"])

    async def poll_blocks(self) -> list[SeenBlock]:
        assert self._http is not None
        api = self.apis[self._poll_node]
        self._poll_node = (self._poll_node + 1) % len(self.apis)
        try:
            height = await self.height(api)
        except httpx.HTTPError:
            return []
        seen_s = time.monotonic()
        blocks: list[SeenBlock] = []
        while self._seen_height < height:
            block = await self.block(api, self._seen_height + 1, seen_s)
            if block is None:
                break
            blocks.append(block)
            self._seen_height += 1
        return blocks

    async def block(self, api: str, height: int, seen_s: float) -> SeenBlock | None:
        assert self._http is not None
        try:
            response = await self._http.get(f"{api}/v1/blocks/{height}")
        except httpx.HTTPError:
            return None
        if response.status_code != 200:
            return None
        view = response.json()
        return SeenBlock(
            height=height,
            seen_s=seen_s,
            timestamp_ms=int(view["header"]["timestamp_ms"]),
            tx_count=int(view["header"]["tx_count"]),
            outcomes=[(tx["tx_id"], tx["code"]) for tx in view["txs"]],
        )


def _problem_code(answer: bytes) -> str:
    try:
        problem = json.loads(answer)
    except ValueError:
        return "http-error"
    return str(problem.get("code", "http-error")) if isinstance(problem, dict) else "http-error"


# --- a testnet of the benchmark's own ---------------------------------------------------------


def start_testnet(directory: Path, *, validators: int, db: str, base_port: int) -> dict[str, Any]:
    """Generate and start a testnet in ``directory``; return its description once it commits."""
    description = generate(
        directory, validators=validators, base_port=base_port, db=db, chain_id="coop-bench"
    )
    for entry in description["nodes"]:
        entry["pid"] = start_node(directory, entry["name"])
    write_description(directory, description)
    return description


def stop_testnet(directory: Path) -> None:
    description = read_description(directory)
    for entry in description["nodes"]:
        stop_node(int(entry["pid"]))
        entry["pid"] = 0
    write_description(directory, description)
