"""The contracts deployed on an EVM chain, driven with ledger transaction bodies.

:class:`EvmLedger` deploys Membership, JointPurchase and Provenance with web3.py and turns a
transaction body of DESIGN.md (``type`` and ``payload``) into the matching contract call,
made from the sender's address with the ledger ``tx_id`` as first argument (so the asset
event chains match the native engine's byte for byte). A reverted call's reason is the
error code; it is read from the mined transaction's trace, so what is compared is what the
chain executed, at the block time the caller set.

Its views return records shaped like the native engine's state values (``owner``,
``custodian``, ``status`` as strings, hashes as lowercase hex), restricted to the fields
both sides hold.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from eth_abi.abi import decode as abi_decode
from eth_utils.abi import get_abi_output_types
from web3 import Web3

from contracts.anvil import AnvilError
from contracts.build import Artifact, load_artifacts
from node.codec import canonical

ROLE_BITS = {"member": 1, "supplier": 2, "carrier": 4, "auditor": 8, "operator": 16}
ASSET_STATUS = {1: "active", 2: "in-transit", 3: "consumed"}
SHIPMENT_STATUS = {1: "in-transit", 2: "received", 3: "cancelled"}
PURCHASE_STATUS = {1: "open", 2: "closed", 3: "failed", 4: "confirmed"}
PROPOSAL_STATUS = {1: "open", 2: "passed", 3: "rejected"}
ACTIONS = {"add": 1, "remove": 2}

CALL_GAS_MAX = 15_000_000
"""Gas limit of every call: far above the costliest operation (a 64-asset shipment), below
anvil's 30 M block gas limit. A fixed limit (no estimate) lets a reverting call be mined,
so its reason is read from the chain that executed it."""

ERROR_SELECTOR = "08c379a0"
"""``Error(string)``: what ``require(condition, "code")`` reverts with."""


@dataclass(frozen=True, slots=True)
class EvmMember:
    """A genesis member as the contracts see it: addresses in place of public keys."""

    id: str
    name: str
    roles: tuple[str, ...]
    addresses: tuple[str, ...]

    def entry(self) -> tuple[str, str, int, list[str]]:
        return (self.id, self.name, role_bits(self.roles), list(self.addresses))


@dataclass(frozen=True, slots=True)
class EvmOutcome:
    code: str
    """``"ok"`` or the revert reason (an error code of docs/rules.md)."""
    gas_used: int
    tx_hash: str


def role_bits(roles: Sequence[str]) -> int:
    bits = 0
    for role in roles:
        bits |= ROLE_BITS[role]
    return bits


def roles_of(bits: int) -> list[str]:
    return sorted(role for role, bit in ROLE_BITS.items() if bits & bit)


def address_of_key(public_key_hex: str) -> str:
    """A stable stand-in address for a public key that has no account of its own."""
    digest = hashlib.sha256(b"coopledger:key-address:" + bytes.fromhex(public_key_hex)).digest()
    return str(Web3.to_checksum_address(digest[:20]))


def decode_revert(output_hex: str) -> str:
    """The reason of an ``Error(string)`` revert, else a description of the raw revert."""
    data = output_hex.removeprefix("0x")
    if data.startswith(ERROR_SELECTOR) and len(data) >= 8 + 128:
        payload = bytes.fromhex(data[8:])
        length = int.from_bytes(payload[32:64], "big")
        return payload[64 : 64 + length].decode("utf-8", errors="replace")
    return f"evm-revert:0x{data[:72]}" if data else "evm-revert"


class EvmLedger:
    """Deployed contracts plus the means to call them as ledger transactions."""

    def __init__(self, w3: Any, membership: Any, purchases: Any, provenance: Any) -> None:
        self.w3 = w3
        self.membership = membership
        self.purchases = purchases
        self.provenance = provenance
        self.key_addresses: dict[str, str] = {}
        """Public key (hex) to address, for the keys of ``member.propose`` payloads."""
        self._types: dict[tuple[str, str], list[str]] = {}

    # --- deployment ---------------------------------------------------------------------

    @classmethod
    def deploy(
        cls,
        url: str,
        members: Sequence[EvmMember],
        artifacts: Mapping[str, Artifact] | None = None,
    ) -> EvmLedger:
        """Deploy the three contracts on the chain at ``url`` from its first account."""
        w3 = Web3(Web3.HTTPProvider(url, request_kwargs={"timeout": 60}))
        artifacts = load_artifacts() if artifacts is None else artifacts
        deployer = w3.eth.accounts[0]
        membership = cls._deploy_one(
            w3, artifacts["Membership"], deployer, [m.entry() for m in members]
        )
        purchases = cls._deploy_one(w3, artifacts["JointPurchase"], deployer, membership.address)
        provenance = cls._deploy_one(
            w3, artifacts["Provenance"], deployer, membership.address, purchases.address
        )
        return cls(w3, membership, purchases, provenance)

    @staticmethod
    def _deploy_one(w3: Any, artifact: Artifact, deployer: str, *args: Any) -> Any:
        factory = w3.eth.contract(abi=artifact.abi, bytecode=artifact.bytecode)
        tx_hash = factory.constructor(*args).transact({"from": deployer})
        receipt = w3.eth.wait_for_transaction_receipt(tx_hash)
        if receipt["status"] != 1:
            raise AnvilError(f"deploying {artifact.name} failed")
        return w3.eth.contract(address=receipt["contractAddress"], abi=artifact.abi)

    # --- raw JSON-RPC (the hot path of the differential test) ---------------------------

    def rpc(self, method: str, params: list[Any]) -> Any:
        response = self.w3.provider.make_request(method, params)
        if "error" in response:
            raise AnvilError(f"{method}: {response['error'].get('message', response['error'])}")
        return response["result"]

    def snapshot(self) -> str:
        return str(self.rpc("evm_snapshot", []))

    def revert(self, snapshot_id: str) -> None:
        if self.rpc("evm_revert", [snapshot_id]) is not True:
            raise AnvilError(f"evm_revert {snapshot_id} failed")

    def latest_timestamp_s(self) -> int:
        return int(self.rpc("eth_getBlockByNumber", ["latest", False])["timestamp"], 16)

    # --- transactions -------------------------------------------------------------------

    def execute(
        self,
        body: Mapping[str, Any],
        from_address: str,
        tx_id: str,
        timestamp_s: int | None = None,
    ) -> EvmOutcome:
        """Mine one call for ``body`` from ``from_address``; the block time is ``timestamp_s``."""
        contract, function, args = self.call_for(body, bytes.fromhex(tx_id))
        data = contract.encode_abi(function, args)
        if timestamp_s is not None:
            self.rpc("evm_setNextBlockTimestamp", [timestamp_s])
        # eth_sendTransactionSync (EIP-7966, anvil >= 1.3) answers with the receipt once the
        # transaction is mined; plain eth_sendTransaction answers before automine has sealed
        # the block, so an immediate receipt lookup races with it.
        receipt = self.rpc(
            "eth_sendTransactionSync",
            [
                {
                    "from": from_address,
                    "to": contract.address,
                    "data": data,
                    "gas": hex(CALL_GAS_MAX),
                }
            ],
        )
        tx_hash = str(receipt["transactionHash"])
        gas_used = int(receipt["gasUsed"], 16)
        if int(receipt["status"], 16) == 1:
            return EvmOutcome("ok", gas_used, tx_hash)
        trace = self.rpc("debug_traceTransaction", [tx_hash, {"tracer": "callTracer"}])
        return EvmOutcome(decode_revert(trace.get("output", "")), gas_used, tx_hash)

    def call_for(self, body: Mapping[str, Any], tx_id: bytes) -> tuple[Any, str, list[Any]]:
        """The contract, function name and arguments that state ``body``'s transaction."""
        kind: str = body["type"]
        p: Mapping[str, Any] = body["payload"]
        pv, jp, ms = self.provenance, self.purchases, self.membership
        if kind == "asset.register":
            metadata = canonical(p["metadata"]) if "metadata" in p else b""
            args = [p["asset_id"], p["product"], p["quantity"], p["unit"], p["origin"], metadata]
            return pv, "register", [tx_id, *args]
        if kind == "asset.transfer":
            return pv, "transfer", [tx_id, p["asset_id"], p["to"]]
        if kind == "asset.transform":
            outputs = [
                (o["asset_id"], o["product"], o["quantity"], o["unit"]) for o in p["outputs"]
            ]
            return pv, "transform", [tx_id, list(p["inputs"]), outputs]
        if kind == "asset.observe":
            return pv, "observe", [tx_id, p["asset_id"], p["kind"], canonical(p["data"])]
        if kind == "shipment.create":
            args = [p["shipment_id"], list(p["asset_ids"]), p["to"], p.get("purchase_id", "")]
            return pv, "createShipment", [tx_id, *args]
        if kind == "shipment.receive":
            return pv, "receiveShipment", [tx_id, p["shipment_id"]]
        if kind == "shipment.cancel":
            return pv, "cancelShipment", [tx_id, p["shipment_id"]]
        if kind == "purchase.open":
            tiers = [(t["min_quantity"], t["unit_price"]) for t in p["tiers"]]
            args = [p["purchase_id"], p["supplier"], p["item"], p["unit"], tiers]
            return jp, "open", [tx_id, *args, p["min_total"], p["deadline_ms"]]
        if kind == "purchase.commit":
            return jp, "commit", [tx_id, p["purchase_id"], p["quantity"]]
        if kind == "purchase.close":
            return jp, "close", [tx_id, p["purchase_id"]]
        if kind == "purchase.confirm":
            return jp, "confirm", [tx_id, p["purchase_id"]]
        if kind == "member.propose":
            m = p["member"]
            keys = [self.key_addresses.get(k) or address_of_key(k) for k in m["public_keys"]]
            entry = (m["id"], m["name"], role_bits(m["roles"]), keys)
            return ms, "propose", [tx_id, ACTIONS[p["action"]], entry]
        if kind == "member.vote":
            return ms, "vote", [tx_id, bytes.fromhex(p["proposal_id"]), p["approve"]]
        raise ValueError(f"no contract call for transaction type {kind!r}")

    # --- views, shaped like the native state --------------------------------------------

    def view(self, calls: Sequence[tuple[Any, str, list[Any]]]) -> list[Any]:
        """Several view calls in one JSON-RPC batch (one round trip), decoded."""
        requests = []
        for contract, function, args in calls:
            data = contract.encode_abi(function, args)
            requests.append(("eth_call", [{"to": contract.address, "data": data}, "latest"]))
        responses = self.w3.provider.make_batch_request(requests)
        results = []
        for (contract, function, _), response in zip(calls, responses, strict=True):
            if "error" in response:
                raise AnvilError(f"{function}: {response['error'].get('message')}")
            types = self._output_types(contract, function)
            results.append(abi_decode(types, bytes.fromhex(response["result"][2:])))
        return results

    def _output_types(self, contract: Any, function: str) -> list[str]:
        key = (contract.address, function)
        if key not in self._types:
            abi = contract.get_function_by_name(function).abi
            self._types[key] = list(get_abi_output_types(abi))
        return self._types[key]

    def records(self, keys: Sequence[str]) -> dict[str, Any]:
        """The records under native state ``keys`` (``asset/<id>``, ``shipment/<id>``,
        ``purchase/<id>``, ``member/<id>``, ``proposal/<tx id>``), fetched in one batch."""
        by_kind: dict[str, list[str]] = {}
        for key in keys:
            kind, _, name = key.partition("/")
            by_kind.setdefault(kind, []).append(name)
        calls: list[tuple[Any, str, list[Any]]] = []
        shapers: list[Any] = []
        if by_kind.get("asset"):
            ids = by_kind["asset"]
            calls.append((self.provenance, "assetsOf", [ids]))
            shapers.append(lambda out, ids=ids: _keyed("asset", ids, out[0], _asset))
        if by_kind.get("shipment"):
            ids = by_kind["shipment"]
            calls.append((self.provenance, "shipmentsOf", [ids]))
            shapers.append(lambda out, ids=ids: _keyed("shipment", ids, out[0], _shipment))
        if by_kind.get("purchase"):
            ids = by_kind["purchase"]
            calls.append((self.purchases, "purchasesOf", [ids]))
            shapers.append(lambda out, ids=ids: _keyed("purchase", ids, out[0], _purchase))
        for member_id in by_kind.get("member", []):
            calls.append((self.membership, "member", [member_id]))
            shapers.append(lambda out, m=member_id: {f"member/{m}": _member(out)})
        for proposal_id in by_kind.get("proposal", []):
            calls.append((self.membership, "proposal", [bytes.fromhex(proposal_id)]))
            shapers.append(lambda out, p=proposal_id: {f"proposal/{p}": _proposal(out)})
        records: dict[str, Any] = {}
        if calls:
            for shaper, output in zip(shapers, self.view(calls), strict=True):
                records.update(shaper(output))
        return records


def _keyed(kind: str, ids: Sequence[str], views: Sequence[Any], shape: Any) -> dict[str, Any]:
    return {f"{kind}/{name}": shape(v) for name, v in zip(ids, views, strict=True)}


def _asset(v: Sequence[Any]) -> dict[str, Any] | None:
    exists, status, owner, custodian, shipment_id, quantity, last_event, count = v
    if not exists:
        return None
    return {
        "owner": owner,
        "custodian": custodian,
        "status": ASSET_STATUS[status],
        "shipment_id": shipment_id,
        "quantity": quantity,
        "last_event": bytes(last_event).hex(),
        "event_count": count,
    }


def _shipment(v: Sequence[Any]) -> dict[str, Any] | None:
    exists, status, sender, recipient, purchase_id, asset_ids = v
    if not exists:
        return None
    return {
        "from": sender,
        "to": recipient,
        "status": SHIPMENT_STATUS[status],
        "purchase_id": purchase_id,
        "asset_ids": list(asset_ids),
    }


def _purchase(v: Sequence[Any]) -> dict[str, Any] | None:
    (exists, status, opener, supplier, deadline_ms, min_total, total, unit_price,
     tiers, participants, commitments, costs) = v  # fmt: skip
    if not exists:
        return None
    status_name = PURCHASE_STATUS[status]
    # The contract keeps a zero cost per participant until the close; the native record
    # has no costs until then.
    settled = status_name in ("closed", "confirmed")
    return {
        "status": status_name,
        "opener": opener,
        "supplier": supplier,
        "deadline_ms": deadline_ms,
        "min_total": min_total,
        "total": total,
        "unit_price": unit_price,
        "tiers": [{"min_quantity": q, "unit_price": u} for q, u in tiers],
        "commitments": dict(sorted(zip(participants, commitments, strict=True))),
        "costs": dict(sorted(zip(participants, costs, strict=True))) if settled else {},
    }


def _member(v: Sequence[Any]) -> dict[str, Any] | None:
    active, _name, roles, _keys = v
    return {"roles": roles_of(roles)} if active else None


def _proposal(v: Sequence[Any]) -> dict[str, Any] | None:
    status, _action, _member_id, voters, approvals, rejections = v
    if status == 0:
        return None
    return {
        "status": PROPOSAL_STATUS[status],
        "voters": voters,
        "approvals": approvals,
        "rejections": rejections,
    }
