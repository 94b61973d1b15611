"""The seeds' scenario: artisan producers consolidating shipments through a shared carrier,
and coffee shops pooling a milk purchase for a better tier price.

Returned as blocks of signed envelopes with their block times, so the same scenario drives
the single-process demo now and a live testnet's ``--demo`` later.
"""

from __future__ import annotations

from typing import Any

from node.consortium import Consortium

CHEESE, BAKERY, COFFEE = "alpine-cheese", "valley-bakery", "bean-and-leaf"
SUPPLIER, CARRIER, AUDITOR = "dairy-direct", "shared-freight", "origin-audit"

BLOCK_INTERVAL_MS = 1_000
PURCHASE_WINDOW_MS = 3 * BLOCK_INTERVAL_MS


def scenario_blocks(
    consortium: Consortium, start_ms: int
) -> list[tuple[int, list[dict[str, Any]]]]:
    """``[(block_time_ms, [envelope, ...]), ...]`` telling the story in order."""
    expires = start_ms + 3_600_000
    deadline = start_ms + PURCHASE_WINDOW_MS + BLOCK_INTERVAL_MS // 2

    def tx(sender: str, kind: str, payload: dict[str, Any]) -> dict[str, Any]:
        return consortium.sign(sender, kind, payload, expires_at_ms=expires)

    def lot(asset_id: str, product: str, quantity: int, unit: str, origin: str) -> dict[str, Any]:
        return {
            "asset_id": asset_id,
            "product": product,
            "quantity": quantity,
            "unit": unit,
            "origin": origin,
        }

    steps: list[list[dict[str, Any]]] = [
        [
            tx(
                CHEESE,
                "asset.register",
                lot("gruyere-2026-041", "Gruyère AOP wheel", 40, "kg", "Fribourg, CH")
                | {"metadata": {"aop": True}},
            ),
            tx(
                BAKERY,
                "asset.register",
                lot("rye-flour-0193", "Stone-ground rye flour", 250, "kg", "Emmental, CH"),
            ),
            tx(
                SUPPLIER,
                "asset.register",
                lot("milk-batch-7781", "Whole milk", 900, "litre", "Gruyères, CH"),
            ),
            tx(
                COFFEE,
                "purchase.open",
                {
                    "purchase_id": "milk-pool-q1",
                    "supplier": SUPPLIER,
                    "item": "Whole milk",
                    "unit": "litre",
                    "min_total": 300,
                    "deadline_ms": deadline,
                    "tiers": [
                        {"min_quantity": 100, "unit_price": 145},
                        {"min_quantity": 500, "unit_price": 120},
                        {"min_quantity": 800, "unit_price": 105},
                    ],
                },
            ),
        ],
        [
            tx(
                CHEESE,
                "shipment.create",
                {
                    "shipment_id": "consolidated-0412-a",
                    "asset_ids": ["gruyere-2026-041"],
                    "to": CARRIER,
                },
            ),
            tx(
                BAKERY,
                "shipment.create",
                {
                    "shipment_id": "consolidated-0412-b",
                    "asset_ids": ["rye-flour-0193"],
                    "to": CARRIER,
                },
            ),
            tx(COFFEE, "purchase.commit", {"purchase_id": "milk-pool-q1", "quantity": 350}),
            tx(CHEESE, "purchase.commit", {"purchase_id": "milk-pool-q1", "quantity": 300}),
            tx(BAKERY, "purchase.commit", {"purchase_id": "milk-pool-q1", "quantity": 200}),
        ],
        [
            tx(CARRIER, "shipment.receive", {"shipment_id": "consolidated-0412-a"}),
            tx(CARRIER, "shipment.receive", {"shipment_id": "consolidated-0412-b"}),
            tx(
                CARRIER,
                "asset.observe",
                {
                    "asset_id": "gruyere-2026-041",
                    "kind": "temperature",
                    "data": {"celsius_tenths": 62, "sensor": "truck-3"},
                },
            ),
            tx(
                AUDITOR,
                "asset.observe",
                {
                    "asset_id": "gruyere-2026-041",
                    "kind": "inspection",
                    "data": {"certificate": "AOP-2026-1187", "passed": True},
                },
            ),
        ],
        [
            tx(
                CARRIER,
                "shipment.create",
                {
                    "shipment_id": "delivery-0413-1",
                    "asset_ids": ["gruyere-2026-041", "rye-flour-0193"],
                    "to": BAKERY,
                },
            ),
            tx(BAKERY, "purchase.close", {"purchase_id": "milk-pool-q1"}),
        ],
        [
            tx(BAKERY, "shipment.receive", {"shipment_id": "delivery-0413-1"}),
            tx(SUPPLIER, "purchase.confirm", {"purchase_id": "milk-pool-q1"}),
        ],
        [
            tx(
                BAKERY,
                "asset.transform",
                {
                    "inputs": ["gruyere-2026-041", "rye-flour-0193"],
                    "outputs": [
                        {
                            "asset_id": "cheese-bread-0414",
                            "product": "Gruyère rye loaf",
                            "quantity": 180,
                            "unit": "loaf",
                        }
                    ],
                },
            ),
            tx(
                SUPPLIER,
                "shipment.create",
                {
                    "shipment_id": "milk-delivery-1",
                    "asset_ids": ["milk-batch-7781"],
                    "to": COFFEE,
                    "purchase_id": "milk-pool-q1",
                },
            ),
        ],
        [
            tx(COFFEE, "shipment.receive", {"shipment_id": "milk-delivery-1"}),
            tx(BAKERY, "asset.transfer", {"asset_id": "cheese-bread-0414", "to": COFFEE}),
        ],
    ]
    return [
        (start_ms + (i + 1) * BLOCK_INTERVAL_MS, envelopes) for i, envelopes in enumerate(steps)
    ]
