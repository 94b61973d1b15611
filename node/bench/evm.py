"""The same mix through the Solidity contracts on anvil, as a :class:`Backend`.

anvil runs with interval mining (automine stalls under pipelined load: DESIGN.md) in two
configurations: *default* (1 s blocks, the default 30 M block gas limit) and *tuned*
(0.2 s blocks, a 300 M gas limit). Both start with a zero base fee, so that full blocks do
not price a fixed gas price out of the pool during the run (a fee market is not what is
measured). The contracts are deployed with :class:`contracts.evm.EvmLedger`; every member
of the testnet's consortium gets :data:`ACCOUNTS_PER_MEMBER` funded accounts, and each
transaction is a legacy (EIP-155) transaction signed by one of its sender's accounts, with
nonces counted locally, and sent with ``eth_sendRawTransaction`` in JSON-RPC batches
without waiting for receipts (pipelined). Calldata is encoded before the clock starts;
signing happens when a transaction is sent (its nonce depends on the order of sending).
Blocks and each transaction's status come from ``eth_getBlockReceipts``.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
import uuid
from typing import Any

import httpx
import rlp  # type: ignore[import-untyped]
from eth_account import Account
from eth_hash.auto import keccak
from eth_keys.datatypes import PrivateKey

from contracts.anvil import Anvil
from contracts.evm import EvmLedger, EvmMember
from node.bench.engine import Engine, Prepared, SeenBlock
from node.bench.report import figures
from node.bench.run import Options, Progress, prepare_count
from node.bench.workload import Op, lots
from node.codec import canonical, sha256_hex
from node.consortium import DEFAULT_MEMBERS

MNEMONIC = "test test test test test test test test test test test junk"
"""anvil's default mnemonic: its dev accounts are m/44'/60'/0'/0/i of it."""

ACCOUNTS_PER_MEMBER = 3
TX_GAS = 400_000
"""Gas limit of each transaction: above the costliest operation of the mix (a one-asset
shipment, ~184,000 gas; docs/contracts.md). Blocks are filled by gas used, not this limit."""

GAS_PRICE_WEI = 10**9
OUTSTANDING_MAX = 8_000
BATCH_MAX = 500

CONFIGS = {
    "default": ("1 s blocks, 30 M gas", ("--block-time", "1", "--base-fee", "0")),
    "tuned": (
        "0.2 s blocks, 300 M gas",
        ("--block-time", "0.2", "--gas-limit", "300000000", "--base-fee", "0"),
    ),
}


def sign_legacy(key: PrivateKey, nonce: int, to: bytes, data: bytes, chain_id: int) -> bytes:
    """A signed EIP-155 transaction (what ``Account.sign_transaction`` makes, ~3x faster)."""
    fields = [nonce, GAS_PRICE_WEI, TX_GAS, to, 0, data]
    signature = key.sign_msg_hash(keccak(rlp.encode([*fields, chain_id, 0, 0])))
    v = signature.v + 35 + 2 * chain_id
    raw: bytes = rlp.encode([*fields, v, signature.r, signature.s])
    return raw


def dev_keys(count: int) -> list[PrivateKey]:
    Account.enable_unaudited_hdwallet_features()
    return [
        PrivateKey(
            bytes(Account.from_mnemonic(MNEMONIC, account_path=f"m/44'/60'/0'/0/{index}").key)
        )
        for index in range(count)
    ]


class EvmBackend:
    name = "anvil"
    outstanding_max = OUTSTANDING_MAX

    def __init__(self, url: str, ledger: EvmLedger, accounts: dict[str, list[PrivateKey]]):
        self.url = url
        self.ledger = ledger
        self._accounts = accounts
        self._turn = dict.fromkeys(accounts, 0)
        self._nonces: dict[bytes, int] = {}
        self.chain_id = int(ledger.w3.eth.chain_id)
        self.engine: Engine | None = None
        self._batch: list[tuple[str, bytes]] = []
        self._http: httpx.AsyncClient | None = None
        self._sender: asyncio.Task[None] | None = None
        self._seen_height = 0
        self._counter = 0

    def prepare(self, op: Op) -> Prepared:
        self._counter += 1
        body = {"type": op.type, "sender": op.sender, "nonce": self._counter, "payload": op.payload}
        tx_id = sha256_hex(canonical(body))
        contract, function, args = self.ledger.call_for(body, bytes.fromhex(tx_id))
        data = bytes.fromhex(contract.encode_abi(function, args)[2:])
        return Prepared(op, "", (bytes.fromhex(contract.address[2:]), data))

    def dispatch(self, item: Prepared, sample: bool) -> str:
        accounts = self._accounts[item.op.sender]
        turn = self._turn[item.op.sender]
        self._turn[item.op.sender] = turn + 1
        key = accounts[turn % len(accounts)]
        address = key.public_key.to_canonical_address()
        nonce = self._nonces.get(address, 0)
        self._nonces[address] = nonce + 1
        to, data = item.data
        raw = sign_legacy(key, nonce, to, data, self.chain_id)
        tx_hash = "0x" + keccak(raw).hex()
        self._batch.append((tx_hash, raw))
        return tx_hash

    async def start(self) -> None:
        self._http = httpx.AsyncClient(timeout=60.0)
        self._seen_height = int(await self._rpc("eth_blockNumber", []), 16)
        self._sender = asyncio.get_running_loop().create_task(self._send_loop())

    async def close(self) -> None:
        if self._sender is not None:
            self._sender.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._sender
        if self._http is not None:
            await self._http.aclose()

    async def _rpc(self, method: str, params: list[Any]) -> Any:
        assert self._http is not None
        answer = (await self._http.post(self.url, json=_call(1, method, params))).json()
        return answer["result"]

    async def _send_loop(self) -> None:
        assert self._http is not None and self.engine is not None
        while True:
            batch, self._batch = self._batch[:BATCH_MAX], self._batch[BATCH_MAX:]
            if not batch:
                await asyncio.sleep(0.005)
                continue
            calls = [
                _call(i, "eth_sendRawTransaction", ["0x" + raw.hex()])
                for i, (_, raw) in enumerate(batch)
            ]
            try:
                answers = (await self._http.post(self.url, json=calls)).json()
            except httpx.HTTPError:
                answers = [{"id": i, "error": {"message": "send-error"}} for i in range(len(batch))]
            for answer in answers:
                if "error" in answer:
                    self.engine.refused(batch[answer["id"]][0], "rpc-error")

    async def poll_blocks(self) -> list[SeenBlock]:
        assert self._http is not None
        height = int(await self._rpc("eth_blockNumber", []), 16)
        seen_s = time.monotonic()
        blocks = []
        while self._seen_height < height:
            number = hex(self._seen_height + 1)
            calls = [
                _call(0, "eth_getBlockByNumber", [number, False]),
                _call(1, "eth_getBlockReceipts", [number]),
            ]
            header, receipts = sorted(
                (await self._http.post(self.url, json=calls)).json(), key=lambda a: a["id"]
            )
            outcomes = [
                (r["transactionHash"], "ok" if r["status"] == "0x1" else "reverted")
                for r in receipts["result"]
            ]
            blocks.append(
                SeenBlock(
                    height=self._seen_height + 1,
                    seen_s=seen_s,
                    timestamp_ms=int(header["result"]["timestamp"], 16) * 1000,
                    tx_count=len(outcomes),
                    outcomes=outcomes,
                )
            )
            self._seen_height += 1
        return blocks


def _call(identifier: int, method: str, params: list[Any]) -> dict[str, Any]:
    return {"jsonrpc": "2.0", "id": identifier, "method": method, "params": params}


def run_anvil(options: Options, progress: Progress) -> dict[str, Any]:
    """The mix on anvil in its default and tuned configurations."""
    return {name: run_one(name, options, progress) for name in CONFIGS}


def run_one(name: str, options: Options, progress: Progress) -> dict[str, Any]:
    config, extra_args = CONFIGS[name]
    members = [member_id for member_id, _, _ in DEFAULT_MEMBERS]
    private = dev_keys(1 + ACCOUNTS_PER_MEMBER * len(members))
    accounts = {
        member_id: private[1 + i * ACCOUNTS_PER_MEMBER : 1 + (i + 1) * ACCOUNTS_PER_MEMBER]
        for i, member_id in enumerate(members)
    }
    progress(f"anvil {name}: starting and deploying the contracts")
    with Anvil.start(accounts=len(private), extra_args=extra_args) as chain:
        evm_members = [
            EvmMember(
                member_id,
                display,
                tuple(sorted(roles)),
                tuple(k.public_key.to_checksum_address() for k in accounts[member_id]),
            )
            for member_id, display, roles in DEFAULT_MEMBERS
        ]
        ledger = EvmLedger.deploy(chain.url, evm_members)
        backend = EvmBackend(chain.url, ledger, accounts)
        deadline_ms = (int(time.time()) + 86_400) * 1000
        engine = Engine(
            backend,
            lots(uuid.uuid4().hex[:8], deadline_ms),
            rate_per_s=options.rate_per_s,
            sample_every=10**9,
        )
        backend.engine = engine
        count = min(prepare_count(options), 150_000)
        engine.prepare(count, lambda n: progress(f"anvil {name}: encoding calls {n:,}"))

        async def measure() -> dict[str, Any]:
            await backend.start()
            try:
                measurement = await engine.run(options.warmup_s, options.duration_s, progress)
            finally:
                await backend.close()
            return figures(measurement)

        result = asyncio.run(measure())
    result["config"] = config
    result["anvil_args"] = " ".join(extra_args)
    return result
