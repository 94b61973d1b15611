"""The gas report: what every operation costs on the EVM, measured from receipts.

:func:`measure_gas` runs one scenario through the deployed contracts (each operation at
least once, the list-shaped ones at two sizes) and returns each call's ``gasUsed``;
``coopledger contracts gas`` prints it as the Markdown table of ``docs/contracts.md``.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Any

from contracts.differential import World
from contracts.evm import EvmLedger
from node.invariant import invariant


@dataclass(frozen=True, slots=True)
class GasRow:
    operation: str
    gas_used: int
    code: str


class _Runner:
    def __init__(self, ledger: EvmLedger, world: World) -> None:
        self.ledger = ledger
        self.world = world
        self.now_s = ledger.latest_timestamp_s()
        self.rows: list[GasRow] = []
        self.last_tx_id = ""

    def run(
        self,
        label: str,
        kind: str,
        sender: str,
        /,
        advance_s: int = 1,
        setup: bool = False,
        **payload: Any,
    ) -> None:
        self.now_s += advance_s
        tx_id = hashlib.sha256(f"gas:{self.now_s}:{label}".encode()).hexdigest()
        address = self.world.addresses[self.world.keys[sender].public_key]
        body = {"type": kind, "sender": sender, "payload": payload}
        outcome = self.ledger.execute(body, address, tx_id, self.now_s)
        if not setup:  # setup steps repeat a measured operation
            self.rows.append(GasRow(label, outcome.gas_used, outcome.code))
        self.last_tx_id = tx_id
        expected = label.partition("reverts ")[2].rstrip(")") if "reverts" in label else "ok"
        invariant(outcome.code == expected, f"gas scenario: {label} gave {outcome.code}")


def _register(
    r: _Runner, asset_id: str, sender: str = "coop-a", label: str = "", setup: bool = False
) -> None:
    r.run(label or "asset.register", "asset.register", sender, asset_id=asset_id, setup=setup,
          product="whole milk", quantity=1000, unit="l", origin="Ardeche")  # fmt: skip


def measure_gas(ledger: EvmLedger, world: World) -> list[GasRow]:
    """Run the scenario on ``ledger`` (which it changes: snapshot around it) and report gas."""
    r = _Runner(ledger, world)
    _register(r, "lot-1")
    r.run("asset.register (with metadata)", "asset.register", "coop-a", asset_id="lot-2",
          product="flour", quantity=500, unit="kg", origin="Jura",
          metadata={"certificate": "AB-2024-118", "organic": True})  # fmt: skip
    for n in range(3, 7):
        _register(r, f"lot-{n}", setup=True)
    r.run("asset.transfer", "asset.transfer", "coop-a", asset_id="lot-1", to="coop-b")
    r.run("asset.observe", "asset.observe", "coop-a", asset_id="lot-1", kind="temperature",
          data={"celsius": 4})  # fmt: skip
    r.run("shipment.create (1 asset)", "shipment.create", "coop-a", shipment_id="s-1",
          asset_ids=["lot-1"], to="carrier")  # fmt: skip
    r.run("shipment.receive (1 asset)", "shipment.receive", "carrier", shipment_id="s-1")
    r.run("shipment.create (3 assets)", "shipment.create", "coop-a", shipment_id="s-2",
          asset_ids=["lot-2", "lot-3", "lot-4"], to="carrier")  # fmt: skip
    r.run("shipment.receive (3 assets)", "shipment.receive", "carrier", shipment_id="s-2")
    r.run("shipment.create (1 asset)", "shipment.create", "coop-a", setup=True,
          shipment_id="s-3", asset_ids=["lot-5"], to="carrier")  # fmt: skip
    r.run("shipment.cancel (1 asset)", "shipment.cancel", "coop-a", shipment_id="s-3")
    bread = {"asset_id": "bread-1", "product": "bread", "quantity": 80, "unit": "kg"}
    r.run("asset.transform (2 inputs, 1 output)", "asset.transform", "coop-a",
          inputs=["lot-5", "lot-6"], outputs=[bread])  # fmt: skip
    r.run("asset.transfer (reverts not-owner)", "asset.transfer", "coop-b", asset_id="lot-5",
          to="coop-b")  # fmt: skip

    tiers = [
        {"min_quantity": 100, "unit_price": 120},
        {"min_quantity": 500, "unit_price": 105},
        {"min_quantity": 1000, "unit_price": 95},
    ]
    deadline_ms = (r.now_s + 100) * 1000
    r.run("purchase.open (3 tiers)", "purchase.open", "coop-a", purchase_id="buy-1",
          supplier="mill", item="whole milk", unit="l", tiers=tiers, min_total=300,
          deadline_ms=deadline_ms)  # fmt: skip
    r.run("purchase.commit (first)", "purchase.commit", "coop-a", purchase_id="buy-1",
          quantity=400)  # fmt: skip
    r.run("purchase.commit (change)", "purchase.commit", "coop-a", purchase_id="buy-1",
          quantity=300)  # fmt: skip
    r.run("purchase.commit (second member)", "purchase.commit", "coop-b",
          purchase_id="buy-1", quantity=250)  # fmt: skip
    r.run("purchase.commit (third member)", "purchase.commit", "coop-c", purchase_id="buy-1",
          quantity=100)  # fmt: skip
    r.run("purchase.commit (withdraw)", "purchase.commit", "coop-c", purchase_id="buy-1",
          quantity=0)  # fmt: skip
    r.run("purchase.commit (third member again)", "purchase.commit", "coop-d",
          purchase_id="buy-1", quantity=200)  # fmt: skip
    r.run("purchase.close (3 participants)", "purchase.close", "auditor", advance_s=200,
          purchase_id="buy-1")  # fmt: skip
    r.run("purchase.confirm", "purchase.confirm", "mill", purchase_id="buy-1")
    _register(r, "milk-1", sender="mill", setup=True)
    r.run("shipment.create (for a purchase)", "shipment.create", "mill", shipment_id="s-4",
          asset_ids=["milk-1"], to="coop-b", purchase_id="buy-1")  # fmt: skip
    r.run("purchase.open (1 tier)", "purchase.open", "coop-b", purchase_id="buy-2",
          supplier="mill", item="sugar", unit="kg", tiers=tiers[:1], min_total=100,
          deadline_ms=(r.now_s + 10) * 1000)  # fmt: skip
    r.run("purchase.close (below minimum: failed)", "purchase.close", "coop-b", advance_s=20,
          purchase_id="buy-2")  # fmt: skip

    newco = world.keys["newco"].public_key
    member = {"id": "newco", "name": "NEWCO", "roles": ["member"], "public_keys": [newco]}
    r.run("member.propose (4 voters)", "member.propose", "coop-a", action="add", member=member)
    proposal_id = r.last_tx_id
    r.run("member.vote", "member.vote", "coop-b", proposal_id=proposal_id, approve=True)
    r.run("member.vote (deciding: adds the member)", "member.vote", "coop-c",
          proposal_id=proposal_id, approve=True)  # fmt: skip
    return r.rows


def markdown_table(rows: list[GasRow]) -> str:
    lines = ["| operation | gas used |", "| --- | ---: |"]
    lines += [f"| `{row.operation}` | {row.gas_used:,} |" for row in rows]
    return "\n".join(lines)
