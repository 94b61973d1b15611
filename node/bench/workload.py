"""The benchmark's operation mix: lots that go through the business flows of the seeds.

A *lot* is a short business story told in *stages*; every operation of a stage may run
once every operation of the previous stage has committed with ``ok`` (a carrier receives a
shipment only after its creation is final). The mix repeats a pattern of seven lots:

* four **shipping** lots: a firm registers a lot; then the auditor inspects it and the firm
  hands it to the shared carrier (``shipment.create``); then the carrier receives it; then
  the carrier records a temperature observation (5 transactions);
* two **transformation** lots: a firm registers two inputs; then turns them into a product
  (``asset.transform``); then observes the product (4 transactions);
* one **joint-purchase** lot: a firm opens a purchase from the supplier; then the three
  member firms commit quantities; then each revises its commitment (7 transactions).

Per 35 transactions: 8 registrations, 10 observations, 4 shipments and 4 receipts,
2 transformations, 1 purchase opened and 6 commitments. Ids are unique per run (``run_id``).
Bodies carry no signature: each backend turns an :class:`Op` into what its chain takes.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from node.scenario import AUDITOR, BAKERY, CARRIER, CHEESE, COFFEE, SUPPLIER

MEMBER_FIRMS = (CHEESE, BAKERY, COFFEE)
"""Firms with the ``member`` role: they may own goods and join purchases."""

OWNERS = (*MEMBER_FIRMS, SUPPLIER)
"""Parties that register and ship their own lots."""

PATTERN = ("ship", "ship", "transform", "ship", "ship", "transform", "purchase")
TXS_PER_PATTERN = 35


@dataclass(frozen=True, slots=True)
class Op:
    """One transaction of the mix, before signing."""

    sender: str
    type: str
    payload: dict[str, Any]


@dataclass(frozen=True, slots=True)
class Lot:
    stages: tuple[tuple[Op, ...], ...]

    @property
    def size(self) -> int:
        return sum(len(stage) for stage in self.stages)


def _register(owner: str, asset_id: str, quantity: int) -> Op:
    payload = {
        "asset_id": asset_id,
        "product": "Raw-milk cheese wheel",
        "quantity": quantity,
        "unit": "kg",
        "origin": "Fribourg, CH",
    }
    return Op(owner, "asset.register", payload)


def _observe(sender: str, asset_id: str, kind: str, data: dict[str, Any]) -> Op:
    return Op(sender, "asset.observe", {"asset_id": asset_id, "kind": kind, "data": data})


def shipping_lot(owner: str, prefix: str) -> Lot:
    asset_id, shipment_id = f"{prefix}-a", f"{prefix}-s"
    return Lot(
        (
            (_register(owner, asset_id, 40),),
            (
                _observe(AUDITOR, asset_id, "inspection", {"passed": True, "certificate": prefix}),
                Op(
                    owner,
                    "shipment.create",
                    {"shipment_id": shipment_id, "asset_ids": [asset_id], "to": CARRIER},
                ),
            ),
            (Op(CARRIER, "shipment.receive", {"shipment_id": shipment_id}),),
            (_observe(CARRIER, asset_id, "temperature", {"celsius_tenths": 62}),),
        )
    )


def transformation_lot(owner: str, prefix: str) -> Lot:
    inputs, output = [f"{prefix}-i1", f"{prefix}-i2"], f"{prefix}-o"
    transform = {
        "inputs": inputs,
        "outputs": [{"asset_id": output, "product": "Rye loaf", "quantity": 180, "unit": "loaf"}],
    }
    return Lot(
        (
            (_register(owner, inputs[0], 25), _register(owner, inputs[1], 250)),
            (Op(owner, "asset.transform", transform),),
            (_observe(owner, output, "batch-check", {"moisture_permille": 380}),),
        )
    )


def purchase_lot(opener: str, prefix: str, deadline_ms: int) -> Lot:
    purchase_id = f"{prefix}-p"
    tiers = [
        {"min_quantity": 100, "unit_price": 145},
        {"min_quantity": 500, "unit_price": 120},
        {"min_quantity": 800, "unit_price": 105},
    ]
    open_payload = {
        "purchase_id": purchase_id,
        "supplier": SUPPLIER,
        "item": "Whole milk",
        "unit": "litre",
        "tiers": tiers,
        "min_total": 300,
        "deadline_ms": deadline_ms,
    }

    def commit(member: str, quantity: int) -> Op:
        return Op(member, "purchase.commit", {"purchase_id": purchase_id, "quantity": quantity})

    return Lot(
        (
            (Op(opener, "purchase.open", open_payload),),
            tuple(commit(m, 200 + 50 * i) for i, m in enumerate(MEMBER_FIRMS)),
            tuple(commit(m, 300 + 25 * i) for i, m in enumerate(MEMBER_FIRMS)),
        )
    )


def lots(run_id: str, deadline_ms: int, start: int = 0) -> Iterator[Lot]:
    """The run's lots, endlessly, from lot number ``start``."""
    number = start
    while True:
        kind = PATTERN[number % len(PATTERN)]
        prefix = f"{run_id}-{number}"
        if kind == "ship":
            yield shipping_lot(OWNERS[number % len(OWNERS)], prefix)
        elif kind == "transform":
            yield transformation_lot(OWNERS[(number // 3) % len(OWNERS)], prefix)
        else:
            yield purchase_lot(MEMBER_FIRMS[number % len(MEMBER_FIRMS)], prefix, deadline_ms)
        number += 1
