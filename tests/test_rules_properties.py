"""Random sequences of transactions never break the ledger's invariants (docs/rules.md)."""

from __future__ import annotations

from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import event as event_note
from hypothesis import strategies as st

from node.codec import check_canonical_value
from node.consortium import make_consortium
from node.rules import OK, ZERO_HASH, BlockContext, apply_transaction, event_hash, genesis_state
from node.state import MemoryState
from node.tx import parse_envelope, tx_id_of

CONSORTIUM = make_consortium()
MEMBERS = [
    "alpine-cheese",
    "valley-bakery",
    "bean-and-leaf",
    "dairy-direct",
    "shared-freight",
    "origin-audit",
]
ASSETS = [f"lot-{i}" for i in range(6)]
SHIPMENTS = [f"ship-{i}" for i in range(4)]
PURCHASES = ["pool-0", "pool-1"]
START_MS = 1_767_225_600_000

member = st.sampled_from(MEMBERS)
asset = st.sampled_from(ASSETS)
purchase = st.sampled_from(PURCHASES)
holder = st.sampled_from(["alpine-cheese", "valley-bakery", "shared-freight"])
"""Members that hold goods in the preamble or by receiving them: most moves come from them."""

operation = st.one_of(
    st.tuples(
        st.just("asset.register"),
        member,
        st.fixed_dictionaries(
            {
                "asset_id": asset,
                "product": st.just("flour"),
                "quantity": st.integers(1, 10**9),
                "unit": st.just("kg"),
                "origin": st.just("CH"),
            }
        ),
    ),
    st.tuples(
        st.just("asset.transfer"), member, st.fixed_dictionaries({"asset_id": asset, "to": member})
    ),
    st.tuples(
        st.just("shipment.create"),
        holder,
        st.fixed_dictionaries(
            {
                "shipment_id": st.sampled_from(SHIPMENTS),
                "asset_ids": st.lists(asset, min_size=1, max_size=3, unique=True),
                "to": holder,
            }
        ),
    ),
    st.tuples(
        st.sampled_from(["shipment.receive", "shipment.cancel"]),
        holder,
        st.fixed_dictionaries({"shipment_id": st.sampled_from(SHIPMENTS)}),
    ),
    st.tuples(
        st.just("asset.transform"),
        holder,
        st.builds(
            lambda inputs, out: {
                "inputs": inputs,
                "outputs": [{"asset_id": out, "product": "bread", "quantity": 3, "unit": "loaf"}],
            },
            st.lists(asset, min_size=1, max_size=2, unique=True),
            st.sampled_from([f"bread-{i}" for i in range(4)]),
        ),
    ),
    st.tuples(
        st.just("asset.observe"),
        member,
        st.fixed_dictionaries(
            {"asset_id": asset, "kind": st.just("temp"), "data": st.just({"c": 4})}
        ),
    ),
    st.tuples(
        st.just("purchase.open"),
        member,
        st.fixed_dictionaries(
            {
                "purchase_id": purchase,
                "supplier": st.just("dairy-direct"),
                "item": st.just("milk"),
                "unit": st.just("l"),
                "min_total": st.integers(10, 40),
                "deadline_ms": st.integers(START_MS, START_MS + 40_000),
                "tiers": st.just(
                    [{"min_quantity": 10, "unit_price": 9}, {"min_quantity": 30, "unit_price": 7}]
                ),
            }
        ),
    ),
    st.tuples(
        st.just("purchase.commit"),
        member,
        st.fixed_dictionaries({"purchase_id": purchase, "quantity": st.integers(0, 25)}),
    ),
    st.tuples(
        st.sampled_from(["purchase.close", "purchase.confirm"]),
        member,
        st.fixed_dictionaries({"purchase_id": purchase}),
    ),
)


def _lot(asset_id: str) -> dict[str, Any]:
    return {"asset_id": asset_id, "product": "flour", "quantity": 5, "unit": "kg", "origin": "CH"}


PREAMBLE: list[tuple[tuple[str, str, dict[str, Any]], int]] = [
    *((("asset.register", "alpine-cheese", _lot(a)), 0) for a in ASSETS[:3]),
    *((("asset.register", "valley-bakery", _lot(a)), 0) for a in ASSETS[3:]),
    (
        (
            "purchase.open",
            "bean-and-leaf",
            {
                "purchase_id": "pool-0",
                "supplier": "dairy-direct",
                "item": "milk",
                "unit": "l",
                "min_total": 20,
                "deadline_ms": START_MS + 20_000,
                "tiers": [
                    {"min_quantity": 10, "unit_price": 9},
                    {"min_quantity": 30, "unit_price": 7},
                ],
            },
        ),
        0,
    ),
]
"""A start that makes the deeper rules reachable: assets to move, a purchase to join."""


def check_invariants(state: MemoryState) -> None:
    members = {key.removeprefix("member/") for key, _ in state.items() if key.startswith("member/")}
    in_transit: dict[str, str] = {}
    for key, value in state.items():
        if key.startswith("shipment/") and value["status"] == "in-transit":
            for asset_id in value["asset_ids"]:
                assert asset_id not in in_transit, "an asset is in two shipments"
                in_transit[asset_id] = value["shipment_id"]
    for key, value in state.items():
        if key.startswith("asset/"):
            assert value["owner"] in members and value["custodian"] in members
            assert value["status"] in {"active", "in-transit", "consumed"}
            if value["status"] == "in-transit":
                assert in_transit.get(value["asset_id"]) == value["shipment_id"]
            else:
                assert value["asset_id"] not in in_transit and value["shipment_id"] == ""
            assert value["event_count"] >= 1 and value["last_event"] != ZERO_HASH
        if key.startswith("purchase/"):
            assert value["total"] == sum(value["commitments"].values())
            assert all(q > 0 for q in value["commitments"].values())
            if value["status"] in {"closed", "confirmed"}:
                assert value["total"] >= value["min_total"]
                reached = [t for t in value["tiers"] if t["min_quantity"] <= value["total"]]
                assert value["unit_price"] == reached[-1]["unit_price"]
                assert sum(value["costs"].values()) == value["total"] * value["unit_price"]
                assert set(value["costs"]) == set(value["commitments"])


@settings(max_examples=1500, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(st.tuples(operation, st.integers(0, 4_000)), min_size=5, max_size=40))
def test_random_sequences_keep_the_invariants(
    steps: list[tuple[tuple[str, str, dict[str, Any]], int]],
) -> None:
    state = genesis_state(CONSORTIUM.genesis)
    chains: dict[str, list[str]] = {}
    consumed: dict[str, dict[str, Any]] = {}
    now = START_MS
    for height, ((kind, sender, payload), advance) in enumerate([*PREAMBLE, *steps], start=1):
        now += advance
        envelope = CONSORTIUM.sign(sender, kind, payload, expires_at_ms=now + 60_000)
        try:
            tx = parse_envelope(envelope)
        except Exception:  # payloads the admission checks refuse never reach the engine
            continue
        before = dict(state.items())
        ctx = BlockContext(chain_id="coop-dev", height=height, timestamp_ms=now)
        outcome = apply_transaction(state, tx.body, tx.signer, tx.tx_id, ctx)
        event_note(kind, outcome.code)
        if outcome.code != OK:
            assert dict(state.items()) == before, f"failed {kind} ({outcome.code}) changed state"
            continue
        for event in outcome.asset_events:
            chain = chains.setdefault(event.asset_id, [])
            assert event.seq == len(chain)
            assert event.prev_hash == (chain[-1] if chain else ZERO_HASH)
            assert event.event_hash == event_hash(
                event.prev_hash, tx_id_of(tx.body), event.type, event.asset_id
            )
            chain.append(event.event_hash)
        for asset_id, frozen in consumed.items():
            current = state.get(f"asset/{asset_id}")
            assert current is not None
            moved = {k: current[k] for k in ("owner", "custodian", "status")}
            assert moved == frozen, "a consumed asset moved"
        for key, value in state.items():
            if (
                key.startswith("asset/")
                and value["status"] == "consumed"
                and value["asset_id"] not in consumed
            ):
                consumed[value["asset_id"]] = {
                    k: value[k] for k in ("owner", "custodian", "status")
                }
            if key.startswith("asset/"):
                assert chains[value["asset_id"]][-1] == value["last_event"]
            if before.get(key) != value:
                # The ledger encodes state values without the domain walk (Ledger.execute).
                check_canonical_value(value, key)
        check_invariants(state)
