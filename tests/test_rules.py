"""The native rule engine: each rule's accept path and every reject path of docs/rules.md."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from node.consortium import make_consortium
from node.rules import (
    ERROR_CODES,
    OK,
    ZERO_HASH,
    BlockContext,
    Outcome,
    apply_transaction,
    event_hash,
    genesis_state,
)
from node.state import MemoryState
from node.tx import tx_id_of

NOW = 1_767_225_600_000
A, B, C = "alpine-cheese", "valley-bakery", "bean-and-leaf"
SUPPLIER, CARRIER, AUDITOR, OPERATOR = (
    "dairy-direct",
    "shared-freight",
    "origin-audit",
    "network-ops",
)


class World:
    """A consortium, its state, and a clock of block times."""

    def __init__(self) -> None:
        self.consortium = make_consortium()
        self.state: MemoryState = genesis_state(self.consortium.genesis)
        self.time_ms = NOW
        self.height = 1
        self.nonce = 0

    def send(
        self, sender: str, kind: str, payload: dict[str, Any], signer: str | None = None
    ) -> Outcome:
        self.nonce += 1
        body = {
            "chain_id": "coop-dev",
            "type": kind,
            "sender": sender,
            "nonce": self.nonce,
            "expires_at_ms": self.time_ms + 60_000,
            "payload": payload,
        }
        key = self.consortium.member_keys[signer or sender].public_key
        ctx = BlockContext(chain_id="coop-dev", height=self.height, timestamp_ms=self.time_ms)
        self.height += 1
        self.last_tx_id = tx_id_of(body)
        return apply_transaction(self.state, body, key, self.last_tx_id, ctx)

    def ok(self, sender: str, kind: str, payload: dict[str, Any]) -> Outcome:
        outcome = self.send(sender, kind, payload)
        assert outcome.code == OK, outcome.code
        return outcome

    def fails(self, code: str, sender: str, kind: str, payload: dict[str, Any]) -> None:
        before = dict(self.state.items())
        outcome = self.send(sender, kind, payload)
        assert outcome.code == code
        assert dict(self.state.items()) == before, "a failed transaction changed the state"
        assert outcome.asset_events == []

    def asset(self, asset_id: str) -> dict[str, Any]:
        asset = self.state.get(f"asset/{asset_id}")
        assert asset is not None
        return asset

    def register(self, asset_id: str, owner: str = A) -> None:
        self.ok(owner, "asset.register", lot(asset_id))


def lot(asset_id: str) -> dict[str, Any]:
    return {
        "asset_id": asset_id,
        "product": "gtin:0761234567890",
        "quantity": 100,
        "unit": "kg",
        "origin": "CH",
    }


@pytest.fixture
def world() -> World:
    return World()


def test_register_makes_sender_owner_and_custodian_and_starts_the_chain(world: World) -> None:
    outcome = world.ok(A, "asset.register", lot("lot-1"))
    asset = world.asset("lot-1")
    assert (asset["owner"], asset["custodian"], asset["status"]) == (A, A, "active")
    expected = event_hash(ZERO_HASH, world.last_tx_id, "asset.register", "lot-1")
    assert asset["last_event"] == expected and asset["event_count"] == 1
    assert outcome.asset_events[0].event_hash == expected
    assert ("asset", "lot-1") in outcome.refs


def test_register_rejects(world: World) -> None:
    world.register("lot-1")
    world.fails("asset-exists", B, "asset.register", lot("lot-1"))
    world.fails("role-not-allowed", CARRIER, "asset.register", lot("lot-2"))
    world.fails("role-not-allowed", AUDITOR, "asset.register", lot("lot-2"))


def test_unknown_sender_and_foreign_signer_are_refused(world: World) -> None:

    outcome = world.send(A, "asset.register", lot("lot-1"), signer=B)
    assert outcome.code == "signer-not-authorized"
    body_sender = "nobody"
    world.consortium.member_keys[body_sender] = world.consortium.member_keys[A]
    assert world.send(body_sender, "asset.register", lot("lot-1")).code == "unknown-sender"


def test_transfer(world: World) -> None:
    world.register("lot-1")
    world.fails("unknown-asset", A, "asset.transfer", {"asset_id": "nope", "to": B})
    world.fails("not-owner", B, "asset.transfer", {"asset_id": "lot-1", "to": C})
    world.fails("unknown-member", A, "asset.transfer", {"asset_id": "lot-1", "to": "ghost"})
    world.fails("same-member", A, "asset.transfer", {"asset_id": "lot-1", "to": A})
    world.fails("role-not-allowed", A, "asset.transfer", {"asset_id": "lot-1", "to": CARRIER})
    world.ok(A, "asset.transfer", {"asset_id": "lot-1", "to": B})
    asset = world.asset("lot-1")
    assert (asset["owner"], asset["custodian"], asset["event_count"]) == (B, A, 2)


def test_transfer_of_consumed_asset_is_refused(world: World) -> None:
    world.register("lot-1")
    world.ok(A, "asset.transform", transform(["lot-1"], ["lot-2"]))
    world.fails("asset-consumed", A, "asset.transfer", {"asset_id": "lot-1", "to": B})


def transform(inputs: list[str], outputs: list[str]) -> dict[str, Any]:
    return {
        "inputs": inputs,
        "outputs": [
            {"asset_id": o, "product": "bread", "quantity": 10, "unit": "loaf"} for o in outputs
        ],
    }


def test_shipment_hand_over_and_receive(world: World) -> None:
    world.register("lot-1")
    world.register("lot-2")
    world.ok(
        A, "shipment.create", {"shipment_id": "s1", "asset_ids": ["lot-1", "lot-2"], "to": CARRIER}
    )
    assert world.asset("lot-1")["status"] == "in-transit"
    assert world.asset("lot-1")["custodian"] == A
    world.fails("not-recipient", B, "shipment.receive", {"shipment_id": "s1"})
    world.ok(CARRIER, "shipment.receive", {"shipment_id": "s1"})
    asset = world.asset("lot-2")
    assert (asset["custodian"], asset["owner"], asset["status"]) == (CARRIER, A, "active")
    world.fails("shipment-not-in-transit", CARRIER, "shipment.receive", {"shipment_id": "s1"})
    # The carrier consolidates and hands over to the buyer; the owner stays A.
    world.ok(CARRIER, "shipment.create", {"shipment_id": "s2", "asset_ids": ["lot-1"], "to": B})
    world.ok(B, "shipment.receive", {"shipment_id": "s2"})
    assert world.asset("lot-1")["custodian"] == B
    assert world.asset("lot-1")["event_count"] == 5


def test_shipment_rejects_in_rule_order(world: World) -> None:
    world.register("lot-1")
    world.register("lot-b", owner=B)
    ship = {"shipment_id": "s1", "asset_ids": ["lot-1"], "to": B}
    world.ok(A, "shipment.create", ship)
    world.fails("shipment-exists", A, "shipment.create", ship)
    world.fails(
        "unknown-member", A, "shipment.create", {**ship, "shipment_id": "s2", "to": "ghost"}
    )
    world.fails("same-member", A, "shipment.create", {**ship, "shipment_id": "s2", "to": A})
    world.fails(
        "role-not-allowed", A, "shipment.create", {**ship, "shipment_id": "s2", "to": AUDITOR}
    )
    world.fails(
        "unknown-asset", A, "shipment.create", {**ship, "shipment_id": "s2", "asset_ids": ["x"]}
    )
    world.fails(
        "not-custodian", A, "shipment.create", {**ship, "shipment_id": "s2", "asset_ids": ["lot-b"]}
    )
    world.fails("asset-in-transit", A, "shipment.create", {**ship, "shipment_id": "s2"})
    world.fails("not-shipper", B, "shipment.cancel", {"shipment_id": "s1"})
    world.fails("unknown-shipment", A, "shipment.cancel", {"shipment_id": "nope"})
    world.fails("unknown-shipment", A, "shipment.receive", {"shipment_id": "nope"})
    world.ok(A, "shipment.cancel", {"shipment_id": "s1"})
    assert world.asset("lot-1")["status"] == "active"
    world.fails("shipment-not-in-transit", A, "shipment.cancel", {"shipment_id": "s1"})
    world.ok(A, "asset.transform", transform(["lot-1"], ["bread-1"]))
    world.fails("asset-consumed", A, "shipment.create", {**ship, "shipment_id": "s3"})


def test_transform_consumes_inputs_and_links_outputs(world: World) -> None:
    world.register("flour")
    world.register("milk")
    world.ok(A, "asset.transform", transform(["flour", "milk"], ["bread-1", "bread-2"]))
    assert world.asset("flour")["status"] == "consumed"
    bread = world.asset("bread-2")
    assert (
        bread["inputs"] == ["flour", "milk"] and bread["owner"] == A and bread["event_count"] == 1
    )
    world.fails("asset-consumed", A, "asset.transform", transform(["flour"], ["bread-3"]))
    world.fails("unknown-asset", A, "asset.transform", transform(["ghost"], ["bread-3"]))
    world.fails("not-custodian", B, "asset.transform", transform(["bread-1"], ["bread-3"]))
    world.fails("asset-exists", A, "asset.transform", transform(["bread-1"], ["bread-2"]))
    world.ok(A, "shipment.create", {"shipment_id": "s1", "asset_ids": ["bread-1"], "to": B})
    world.fails("asset-in-transit", A, "asset.transform", transform(["bread-1"], ["bread-3"]))


def test_observe(world: World) -> None:
    world.register("lot-1")
    world.ok(
        A,
        "asset.observe",
        {"asset_id": "lot-1", "kind": "temperature", "data": {"celsius_tenths": 41}},
    )
    world.ok(
        AUDITOR,
        "asset.observe",
        {"asset_id": "lot-1", "kind": "inspection", "data": {"passed": True}},
    )
    world.fails(
        "not-custodian-or-auditor",
        B,
        "asset.observe",
        {"asset_id": "lot-1", "kind": "x", "data": {}},
    )
    world.fails("unknown-asset", A, "asset.observe", {"asset_id": "nope", "kind": "x", "data": {}})
    assert world.asset("lot-1")["event_count"] == 3


def purchase(purchase_id: str = "milk-q1", deadline_ms: int = NOW + 10_000) -> dict[str, Any]:
    return {
        "purchase_id": purchase_id,
        "supplier": SUPPLIER,
        "item": "whole milk",
        "unit": "litre",
        "tiers": [
            {"min_quantity": 100, "unit_price": 120},
            {"min_quantity": 500, "unit_price": 100},
            {"min_quantity": 1000, "unit_price": 85},
        ],
        "min_total": 300,
        "deadline_ms": deadline_ms,
    }


def test_joint_purchase_tier_pricing_confirm_and_shipment(world: World) -> None:
    world.ok(A, "purchase.open", purchase())
    world.ok(A, "purchase.commit", {"purchase_id": "milk-q1", "quantity": 400})
    world.ok(B, "purchase.commit", {"purchase_id": "milk-q1", "quantity": 250})
    world.ok(C, "purchase.commit", {"purchase_id": "milk-q1", "quantity": 100})
    world.ok(C, "purchase.commit", {"purchase_id": "milk-q1", "quantity": 0})  # withdraw
    world.fails("deadline-not-reached", B, "purchase.close", {"purchase_id": "milk-q1"})
    world.time_ms = NOW + 10_000
    world.fails("deadline-passed", C, "purchase.commit", {"purchase_id": "milk-q1", "quantity": 5})
    world.fails("purchase-not-closed", SUPPLIER, "purchase.confirm", {"purchase_id": "milk-q1"})
    world.ok(B, "purchase.close", {"purchase_id": "milk-q1"})
    record = world.state.get("purchase/milk-q1")
    assert record is not None
    assert record["total"] == 650 and record["unit_price"] == 100
    assert record["costs"] == {A: 40_000, B: 25_000}
    assert sum(record["costs"].values()) == record["total"] * record["unit_price"]
    world.fails("purchase-not-open", B, "purchase.close", {"purchase_id": "milk-q1"})
    world.fails("not-supplier", A, "purchase.confirm", {"purchase_id": "milk-q1"})
    world.register("milk-lot", owner=SUPPLIER)
    ship = {"shipment_id": "d1", "asset_ids": ["milk-lot"], "to": A, "purchase_id": "milk-q1"}
    world.fails("purchase-not-confirmed", SUPPLIER, "shipment.create", ship)
    world.ok(SUPPLIER, "purchase.confirm", {"purchase_id": "milk-q1"})
    world.fails("not-participant", SUPPLIER, "shipment.create", {**ship, "to": C})
    world.fails("unknown-purchase", SUPPLIER, "shipment.create", {**ship, "purchase_id": "nope"})
    world.register("a-lot", owner=A)
    world.fails("not-supplier", A, "shipment.create", {**ship, "to": B, "asset_ids": ["a-lot"]})
    world.ok(SUPPLIER, "shipment.create", ship)


def test_purchase_rejects(world: World) -> None:
    world.fails("role-not-allowed", SUPPLIER, "purchase.open", purchase())
    world.fails("unknown-member", A, "purchase.open", {**purchase(), "supplier": "ghost"})
    world.fails("not-a-supplier", A, "purchase.open", {**purchase(), "supplier": B})
    world.fails("deadline-passed", A, "purchase.open", purchase(deadline_ms=NOW))
    world.ok(A, "purchase.open", purchase())
    world.fails("purchase-exists", B, "purchase.open", purchase())
    world.fails("unknown-purchase", A, "purchase.commit", {"purchase_id": "nope", "quantity": 1})
    world.fails(
        "role-not-allowed", CARRIER, "purchase.commit", {"purchase_id": "milk-q1", "quantity": 1}
    )
    world.fails("unknown-purchase", A, "purchase.close", {"purchase_id": "nope"})
    world.fails("unknown-purchase", A, "purchase.confirm", {"purchase_id": "nope"})


def test_purchase_below_minimum_fails(world: World) -> None:
    world.ok(A, "purchase.open", purchase())
    world.ok(A, "purchase.commit", {"purchase_id": "milk-q1", "quantity": 299})
    world.time_ms = NOW + 20_000
    world.ok(C, "purchase.close", {"purchase_id": "milk-q1"})
    record = world.state.get("purchase/milk-q1")
    assert record is not None and record["status"] == "failed" and record["costs"] == {}
    world.fails("purchase-not-closed", SUPPLIER, "purchase.confirm", {"purchase_id": "milk-q1"})
    world.fails(
        "purchase-not-open", A, "purchase.commit", {"purchase_id": "milk-q1", "quantity": 1}
    )


NEW_MEMBER_KEY = "3d4017c3e843895a92b70aa74d1b7ebc9c982ccf2ec4968cc0cd55f12af4660c"


def new_member(member_id: str = "new-firm", key: str = NEW_MEMBER_KEY) -> dict[str, Any]:
    return {"id": member_id, "name": "New Firm", "roles": ["member"], "public_keys": [key]}


def test_governance_needs_more_than_two_thirds_of_members(world: World) -> None:
    # Voters are the three firms with the member role: more than 2/3 of 3 means all 3.
    outcome = world.ok(A, "member.propose", {"action": "add", "member": new_member()})
    proposal_id = outcome.refs[-1][1] if outcome.refs[-1][0] == "proposal" else world.last_tx_id
    proposal_id = world.last_tx_id
    world.ok(B, "member.vote", {"proposal_id": proposal_id, "approve": True})
    assert world.state.get("member/new-firm") is None
    world.fails("already-voted", B, "member.vote", {"proposal_id": proposal_id, "approve": True})
    world.fails("not-voter", SUPPLIER, "member.vote", {"proposal_id": proposal_id, "approve": True})
    world.ok(C, "member.vote", {"proposal_id": proposal_id, "approve": True})
    member = world.state.get("member/new-firm")
    assert member is not None and member["roles"] == ["member"]
    assert world.state.get(f"key/{NEW_MEMBER_KEY}") == {"member": "new-firm"}
    registry = world.state.get("registry")
    assert registry is not None and "new-firm" in registry["voters"]
    world.fails("proposal-closed", C, "member.vote", {"proposal_id": proposal_id, "approve": True})
    world.fails("unknown-proposal", C, "member.vote", {"proposal_id": "ab" * 32, "approve": True})
    world.fails("member-exists", A, "member.propose", {"action": "add", "member": new_member()})
    world.fails("key-in-use", A, "member.propose", {"action": "add", "member": new_member("other")})
    world.fails(
        "unknown-member", A, "member.propose", {"action": "remove", "member": new_member("zz")}
    )
    world.fails(
        "role-not-allowed", SUPPLIER, "member.propose", {"action": "add", "member": new_member("q")}
    )


def test_governance_rejection_and_removal_revokes_keys(world: World) -> None:
    world.ok(
        A,
        "member.propose",
        {"action": "remove", "member": new_member(C, world.consortium.member_keys[C].public_key)},
    )
    proposal_id = world.last_tx_id
    world.ok(B, "member.vote", {"proposal_id": proposal_id, "approve": False})
    proposal = world.state.get(f"proposal/{proposal_id}")
    assert proposal is not None and proposal["status"] == "rejected"
    world.ok(
        A,
        "member.propose",
        {"action": "remove", "member": new_member(C, world.consortium.member_keys[C].public_key)},
    )
    second = world.last_tx_id
    world.ok(B, "member.vote", {"proposal_id": second, "approve": True})
    world.ok(C, "member.vote", {"proposal_id": second, "approve": True})
    assert world.state.get(f"member/{C}") is None
    assert world.send(C, "asset.register", lot("late")).code == "unknown-sender"


def test_every_error_code_is_documented() -> None:
    rules = Path(__file__).resolve().parent.parent.joinpath("docs", "rules.md").read_text()
    for code in ERROR_CODES:
        assert f"`{code}`" in rules, code
