"""Committed ledger data turned into response schemas (read only; no consensus access)."""

from __future__ import annotations

import re
from collections import OrderedDict
from typing import Any

from gateway.problems import ApiProblem
from gateway.schemas import (
    AssetView,
    BlockTx,
    BlockView,
    HistoryEvent,
    HistoryPage,
    InclusionProof,
    ParticipantCost,
    PurchaseView,
    Receipt,
    ShipmentView,
    TransactionView,
)
from node.audit import AUDIT_ASSETS_MAX
from node.errors import StorageError
from node.ledger import Ledger
from node.merkle import MerkleTree
from node.records import StateValue
from node.storage import BlockStore, CommittedTx, TxPosition

_CURSOR = re.compile(r"^(\d{1,15})\.(\d{1,6})$")


def parse_cursor(cursor: str | None) -> TxPosition | None:
    """A history cursor ``HEIGHT.INDEX`` (the last item's position), or 422."""
    if cursor is None:
        return None
    match = _CURSOR.fullmatch(cursor)
    if match is None:
        raise ApiProblem(422, "invalid-request", "cursor must be HEIGHT.INDEX from a 'next' field")
    return TxPosition(int(match[1]), int(match[2]))


def format_cursor(position: TxPosition) -> str:
    return f"{position.height}.{position.index}"


TREES_CACHED = 16
"""Transaction trees of recent blocks kept for receipts: many receipts of one block are
asked for in a row, and a block's tree never changes."""

_trees: OrderedDict[str, MerkleTree] = OrderedDict()


def block_tree(store: BlockStore, height: int, block_hash: str) -> MerkleTree:
    """The RFC 6962 tree of a committed block, by its hash (so no store can be confused)."""
    tree = _trees.get(block_hash)
    if tree is None:
        tree = store.block_tx_tree(height)
        if tree is None:  # the callers found a committed transaction in this block
            raise StorageError(f"block {height}, which holds a found transaction, is missing")
        _trees[block_hash] = tree
        while len(_trees) > TREES_CACHED:
            _trees.popitem(last=False)
    else:
        _trees.move_to_end(block_hash)
    return tree


def inclusion_proof(store: BlockStore, committed: CommittedTx) -> InclusionProof:
    tree = block_tree(store, committed.height, committed.block_hash)
    index = committed.record.index
    return InclusionProof(
        tree_size=len(tree),
        leaf_index=index,
        path=[step.hex() for step in tree.inclusion_proof(index)],
    )


def receipt(store: BlockStore, committed: CommittedTx) -> Receipt:
    record = committed.record
    return Receipt(
        tx_id=record.tx_id,
        height=committed.height,
        index=record.index,
        code=record.code,
        block_hash=committed.block_hash,
        events=record.events,
        proof=inclusion_proof(store, committed),
    )


def transaction_view(store: BlockStore, committed: CommittedTx) -> TransactionView:
    block = store.block(committed.height)
    assert block is not None
    record = committed.record
    return TransactionView(
        **receipt(store, committed).model_dump(),
        type=record.type,
        sender=record.sender,
        timestamp_ms=block.header["timestamp_ms"],
        envelope=record.envelope,
    )


def require_state(ledger: Ledger, kind: str, object_id: str) -> StateValue:
    value = ledger.state_get(f"{kind}/{object_id}")
    if value is None:
        raise ApiProblem(404, f"unknown-{kind}", f"no {kind} {object_id}")
    return value


def asset_view(ledger: Ledger, asset: StateValue) -> AssetView:
    asset_id = asset["asset_id"]
    ancestors: list[str] = []
    seen = {asset_id}
    queue = list(asset["inputs"])
    while queue and len(ancestors) < AUDIT_ASSETS_MAX:
        parent = queue.pop(0)
        if parent in seen:
            continue
        seen.add(parent)
        ancestors.append(parent)
        record = ledger.state_get(f"asset/{parent}")
        if record is not None:
            queue.extend(record["inputs"])
    return AssetView(
        asset_id=asset_id,
        product=asset["product"],
        quantity=asset["quantity"],
        unit=asset["unit"],
        origin=asset["origin"],
        metadata=asset["metadata"],
        owner=asset["owner"],
        custodian=asset["custodian"],
        status=asset["status"],
        shipment_id=asset["shipment_id"] or None,
        created_height=asset["created_height"],
        event_count=asset["event_count"],
        last_event=asset["last_event"],
        inputs=list(asset["inputs"]),
        ancestors=ancestors,
        outputs=_outputs(ledger, asset) if asset["status"] == "consumed" else [],
    )


def _outputs(ledger: Ledger, asset: StateValue) -> list[str]:
    """The assets a consumed asset became: outputs of the transform that took it as input."""
    store = ledger.store
    for event in reversed(store.asset_events(asset["asset_id"])):
        if event.type != "asset.transform":
            continue
        committed = store.tx(event.tx_id)
        if committed is None:
            continue
        payload = committed.record.envelope["body"]["payload"]
        if asset["asset_id"] in payload["inputs"]:
            return [output["asset_id"] for output in payload["outputs"]]
    return []


def history_page(
    ledger: Ledger, asset_id: str, after: TxPosition | None, limit: int
) -> HistoryPage:
    store = ledger.store
    page = store.txs_by_ref("asset", asset_id, after=after, limit=limit)
    times: dict[int, int] = {}
    items = []
    for committed in page:
        if committed.height not in times:
            block = store.block(committed.height)
            assert block is not None
            times[committed.height] = block.header["timestamp_ms"]
        record = committed.record
        event: dict[str, Any] = next(
            (
                e
                for e in record.events
                if e.get("kind") == "asset-event" and e.get("asset_id") == asset_id
            ),
            {"seq": -1, "event": ""},
        )
        items.append(
            HistoryEvent(
                seq=event["seq"],
                event=event["event"],
                tx_id=record.tx_id,
                type=record.type,
                sender=record.sender,
                height=committed.height,
                index=record.index,
                timestamp_ms=times[committed.height],
                payload=record.envelope["body"]["payload"],
            )
        )
    next_cursor = format_cursor(page[-1].position) if len(page) == limit else None
    return HistoryPage(asset_id=asset_id, items=items, next=next_cursor)


def shipment_view(shipment: StateValue) -> ShipmentView:
    return ShipmentView(
        shipment_id=shipment["shipment_id"],
        shipper=shipment["from"],
        to=shipment["to"],
        asset_ids=list(shipment["asset_ids"]),
        purchase_id=shipment["purchase_id"] or None,
        status=shipment["status"],
        created_height=shipment["created_height"],
    )


def tier_reached(tiers: list[dict[str, int]], total: int) -> int | None:
    """Index of the last tier whose ``min_quantity`` the total reaches, or ``None``."""
    reached = None
    for index, tier in enumerate(tiers):
        if tier["min_quantity"] <= total:
            reached = index
    return reached


def purchase_view(purchase: StateValue) -> PurchaseView:
    tiers = purchase["tiers"]
    final = purchase["status"] in ("closed", "confirmed")
    reached = tier_reached(tiers, purchase["total"])
    unit_price: int | None
    if final:
        unit_price = purchase["unit_price"]
    else:
        unit_price = None if reached is None else tiers[reached]["unit_price"]
    commitments = []
    for member, quantity in purchase["commitments"].items():
        cost: int | None
        if final:
            cost = purchase["costs"].get(member)
        else:
            cost = None if unit_price is None else quantity * unit_price
        commitments.append(ParticipantCost(member=member, quantity=quantity, cost=cost))
    return PurchaseView(
        purchase_id=purchase["purchase_id"],
        opener=purchase["opener"],
        supplier=purchase["supplier"],
        item=purchase["item"],
        unit=purchase["unit"],
        tiers=[dict(tier) for tier in tiers],
        min_total=purchase["min_total"],
        deadline_ms=purchase["deadline_ms"],
        status=purchase["status"],
        total=purchase["total"],
        tier_reached=reached,
        unit_price=unit_price,
        costs_final=final,
        commitments=commitments,
    )


def block_view(store: BlockStore, height: int) -> BlockView:
    block = store.block(height)
    if block is None:
        raise ApiProblem(404, "not-found", f"no block at height {height}")
    txs = [
        BlockTx(tx_id=r.tx_id, index=r.index, type=r.type, sender=r.sender, code=r.code)
        for r in store.block_tx_summaries(height)
    ]
    header: dict[str, Any] = dict(block.header)
    commit: dict[str, Any] = dict(block.commit)
    return BlockView(
        height=height, block_hash=block.block_hash, header=header, commit=commit, txs=txs
    )
