"""The native rule engine: every transaction type of docs/rules.md.

Theory of operation. :func:`apply_transaction` executes one admitted transaction against a
state. It runs the type's checks in the exact order docs/rules.md gives (the Solidity
contracts run the same order, and the differential test compares the two), writing into a
:class:`~node.state.TxOverlay`. The first failing check raises :class:`ExecutionError`; the
overlay is dropped and the state is untouched. On success the overlay is applied.

Determinism: the engine reads no clock (the block time comes in :class:`BlockContext`),
uses no floats, and never iterates over an unordered collection in a way that reaches the
state (lists keep the order given; member lists are kept sorted).
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from node.errors import ExecutionError
from node.genesis import Genesis, Member
from node.records import AssetEvent, StateValue
from node.state import MemoryState, State, TxOverlay

OK = "ok"
ZERO_HASH = "00" * 32
EVENT_TAG = b"coopledger:event:v1:"

MAY_OWN = frozenset({"member", "supplier"})
HOLDS_GOODS = frozenset({"member", "supplier", "carrier"})


@dataclass(frozen=True, slots=True, kw_only=True)
class BlockContext:
    """What execution may know about the block: its chain, height and proposer time."""

    chain_id: str
    height: int
    timestamp_ms: int


@dataclass(slots=True)
class Outcome:
    """The result of one transaction: its code, receipt events, asset events and index refs."""

    code: str
    events: list[dict[str, Any]] = field(default_factory=list)
    asset_events: list[AssetEvent] = field(default_factory=list)
    refs: tuple[tuple[str, str], ...] = ()


def event_hash(prev_hex: str, tx_id: str, kind: str, asset_id: str) -> str:
    """One link of an asset's event chain (docs/rules.md, "Asset event chain")."""
    data = (
        EVENT_TAG
        + bytes.fromhex(prev_hex)
        + bytes.fromhex(tx_id)
        + kind.encode("utf-8")
        + b"\x00"
        + asset_id.encode("utf-8")
    )
    return hashlib.sha256(data).hexdigest()


# --- genesis -------------------------------------------------------------------------------


def member_record(member: Member) -> StateValue:
    return member.to_json()


def genesis_changes(genesis: Genesis) -> dict[str, StateValue]:
    """The state entries the genesis file defines, in key order."""
    values: dict[str, StateValue] = {}
    for member in genesis.members:
        values[f"member/{member.id}"] = member_record(member)
        for key in member.public_keys:
            values[f"key/{key}"] = {"member": member.id}
    values["registry"] = {
        "members": sorted(m.id for m in genesis.members),
        "voters": sorted(m.id for m in genesis.members if "member" in m.roles),
    }
    return dict(sorted(values.items()))


def genesis_state(genesis: Genesis) -> MemoryState:
    """A whole in-memory state at genesis."""
    return MemoryState(genesis_changes(genesis))


# --- execution -----------------------------------------------------------------------------


def apply_transaction(
    state: State, body: dict[str, Any], signer: str, tx_id: str, ctx: BlockContext
) -> Outcome:
    """Execute one admitted transaction; change ``state`` only if the outcome is ``ok``."""
    overlay = TxOverlay(state)
    run = _Run(overlay, body, signer, tx_id, ctx)
    try:
        run.check_sender()
        HANDLERS[body["type"]](run, body["payload"])
    except ExecutionError as error:
        return Outcome(error.code, refs=(("member", body["sender"]),))
    overlay.apply()
    refs = tuple(sorted(run.refs))
    return Outcome(OK, run.events, run.asset_events, refs)


class _Run:
    """The working context of one transaction's execution."""

    __slots__ = (
        "asset_events",
        "body",
        "ctx",
        "events",
        "refs",
        "sender",
        "signer",
        "state",
        "tx_id",
    )

    def __init__(
        self, state: TxOverlay, body: dict[str, Any], signer: str, tx_id: str, ctx: BlockContext
    ) -> None:
        self.state = state
        self.body = body
        self.sender: str = body["sender"]
        self.signer = signer
        self.tx_id = tx_id
        self.ctx = ctx
        self.events: list[dict[str, Any]] = []
        self.asset_events: list[AssetEvent] = []
        self.refs: set[tuple[str, str]] = {("member", self.sender)}

    # reads

    def member(self, member_id: str) -> StateValue | None:
        return self.state.get(f"member/{member_id}")

    def roles(self, member_id: str) -> list[str]:
        member = self.member(member_id)
        return [] if member is None else list(member["roles"])

    def check_sender(self) -> None:
        member = self.member(self.sender)
        if member is None:
            raise ExecutionError("unknown-sender", f"{self.sender} is not a member")
        if self.signer not in member["public_keys"]:
            raise ExecutionError("signer-not-authorized", f"key is not one of {self.sender}'s")

    def require_role(self, member_id: str, allowed: frozenset[str]) -> None:
        if not allowed.intersection(self.roles(member_id)):
            raise ExecutionError(
                "role-not-allowed", f"{member_id} needs a role of {', '.join(sorted(allowed))}"
            )

    def require_member(self, member_id: str) -> None:
        if self.member(member_id) is None:
            raise ExecutionError("unknown-member", f"{member_id} is not a member")

    def asset(self, asset_id: str) -> StateValue:
        asset = self.state.get(f"asset/{asset_id}")
        if asset is None:
            raise ExecutionError("unknown-asset", f"no asset {asset_id}")
        return asset

    def movable_asset(self, asset_id: str) -> StateValue:
        """An asset the sender may hand over or transform (docs/rules.md order of checks)."""
        asset = self.asset(asset_id)
        if asset["custodian"] != self.sender:
            raise ExecutionError("not-custodian", f"{self.sender} does not hold {asset_id}")
        if asset["status"] == "consumed":
            raise ExecutionError("asset-consumed", f"{asset_id} was consumed")
        if asset["status"] == "in-transit":
            raise ExecutionError("asset-in-transit", f"{asset_id} is in transit")
        return asset

    # writes

    def put_asset(self, asset: StateValue, kind: str) -> None:
        """Store ``asset`` after appending one event of ``kind`` to its chain."""
        asset_id = asset["asset_id"]
        prev = asset["last_event"]
        current = event_hash(prev, self.tx_id, kind, asset_id)
        seq = asset["event_count"]
        updated = {**asset, "last_event": current, "event_count": seq + 1}
        self.state.put(f"asset/{asset_id}", updated)
        self.asset_events.append(
            AssetEvent(
                asset_id=asset_id,
                seq=seq,
                event_hash=current,
                prev_hash=prev,
                tx_id=self.tx_id,
                type=kind,
            )
        )
        self.note("asset-event", asset_id=asset_id, seq=seq, event=current)
        self.refs.add(("asset", asset_id))

    def new_asset(
        self, asset_id: str, product: str, quantity: int, unit: str, origin: str, **extra: Any
    ) -> StateValue:
        return {
            "asset_id": asset_id,
            "product": product,
            "quantity": quantity,
            "unit": unit,
            "origin": origin,
            "metadata": extra.get("metadata", {}),
            "inputs": extra.get("inputs", []),
            "owner": self.sender,
            "custodian": self.sender,
            "status": "active",
            "shipment_id": "",
            "created_height": self.ctx.height,
            "last_event": ZERO_HASH,
            "event_count": 0,
        }

    def note(self, kind: str, **fields: Any) -> None:
        self.events.append({"kind": kind, **fields})


# --- provenance ----------------------------------------------------------------------------


def _asset_register(run: _Run, p: dict[str, Any]) -> None:
    run.require_role(run.sender, MAY_OWN)
    if run.state.get(f"asset/{p['asset_id']}") is not None:
        raise ExecutionError("asset-exists", f"asset {p['asset_id']} exists")
    asset = run.new_asset(
        p["asset_id"],
        p["product"],
        p["quantity"],
        p["unit"],
        p["origin"],
        metadata=p.get("metadata", {}),
    )
    run.put_asset(asset, "asset.register")


def _asset_transfer(run: _Run, p: dict[str, Any]) -> None:
    asset = run.asset(p["asset_id"])
    if asset["owner"] != run.sender:
        raise ExecutionError("not-owner", f"{run.sender} does not own {p['asset_id']}")
    if asset["status"] == "consumed":
        raise ExecutionError("asset-consumed", f"{p['asset_id']} was consumed")
    to = p["to"]
    run.require_member(to)
    if to == asset["owner"]:
        raise ExecutionError("same-member", f"{to} already owns {p['asset_id']}")
    run.require_role(to, MAY_OWN)
    run.refs.add(("member", to))
    run.put_asset({**asset, "owner": to}, "asset.transfer")


def _shipment_create(run: _Run, p: dict[str, Any]) -> None:
    shipment_id, to = p["shipment_id"], p["to"]
    if run.state.get(f"shipment/{shipment_id}") is not None:
        raise ExecutionError("shipment-exists", f"shipment {shipment_id} exists")
    run.require_member(to)
    if to == run.sender:
        raise ExecutionError("same-member", "a shipment must go to another member")
    run.require_role(to, HOLDS_GOODS)
    purchase_id = p.get("purchase_id", "")
    if purchase_id:
        purchase = run.state.get(f"purchase/{purchase_id}")
        if purchase is None:
            raise ExecutionError("unknown-purchase", f"no purchase {purchase_id}")
        if purchase["status"] != "confirmed":
            raise ExecutionError("purchase-not-confirmed", f"{purchase_id} is not confirmed")
        if purchase["supplier"] != run.sender:
            raise ExecutionError("not-supplier", f"{run.sender} is not the purchase's supplier")
        if purchase["commitments"].get(to, 0) <= 0:
            raise ExecutionError("not-participant", f"{to} has no commitment in {purchase_id}")
        run.refs.add(("purchase", purchase_id))
    assets = [run.movable_asset(asset_id) for asset_id in p["asset_ids"]]
    for asset in assets:
        moved = {**asset, "status": "in-transit", "shipment_id": shipment_id}
        run.put_asset(moved, "shipment.create")
    run.state.put(
        f"shipment/{shipment_id}",
        {
            "shipment_id": shipment_id,
            "from": run.sender,
            "to": to,
            "asset_ids": list(p["asset_ids"]),
            "purchase_id": purchase_id,
            "status": "in-transit",
            "created_height": run.ctx.height,
        },
    )
    run.refs.update({("shipment", shipment_id), ("member", to), ("shipment-party", run.sender)})
    run.refs.add(("shipment-party", to))
    run.note("shipment", shipment_id=shipment_id, status="in-transit")


def _shipment_in_transit(run: _Run, shipment_id: str, party: str, code: str) -> StateValue:
    shipment = run.state.get(f"shipment/{shipment_id}")
    if shipment is None:
        raise ExecutionError("unknown-shipment", f"no shipment {shipment_id}")
    if shipment[party] != run.sender:
        raise ExecutionError(code, f"{run.sender} is not the shipment's {party}")
    if shipment["status"] != "in-transit":
        raise ExecutionError("shipment-not-in-transit", f"shipment is {shipment['status']}")
    return shipment


def _shipment_finish(run: _Run, shipment: StateValue, status: str, kind: str) -> None:
    for asset_id in shipment["asset_ids"]:
        asset = run.asset(asset_id)
        custodian = shipment["to"] if status == "received" else asset["custodian"]
        run.put_asset(
            {**asset, "status": "active", "shipment_id": "", "custodian": custodian}, kind
        )
    run.state.put(f"shipment/{shipment['shipment_id']}", {**shipment, "status": status})
    run.refs.update({("shipment", shipment["shipment_id"]), ("member", shipment["from"])})
    run.refs.add(("member", shipment["to"]))
    run.note("shipment", shipment_id=shipment["shipment_id"], status=status)


def _shipment_receive(run: _Run, p: dict[str, Any]) -> None:
    shipment = _shipment_in_transit(run, p["shipment_id"], "to", "not-recipient")
    _shipment_finish(run, shipment, "received", "shipment.receive")


def _shipment_cancel(run: _Run, p: dict[str, Any]) -> None:
    shipment = _shipment_in_transit(run, p["shipment_id"], "from", "not-shipper")
    _shipment_finish(run, shipment, "cancelled", "shipment.cancel")


def _asset_transform(run: _Run, p: dict[str, Any]) -> None:
    inputs = [run.movable_asset(asset_id) for asset_id in p["inputs"]]
    for output in p["outputs"]:
        if run.state.get(f"asset/{output['asset_id']}") is not None:
            raise ExecutionError("asset-exists", f"asset {output['asset_id']} exists")
    for asset in inputs:
        run.put_asset({**asset, "status": "consumed"}, "asset.transform")
    for output in p["outputs"]:
        asset = run.new_asset(
            output["asset_id"],
            output["product"],
            output["quantity"],
            output["unit"],
            "",
            inputs=list(p["inputs"]),
        )
        run.put_asset(asset, "asset.transform")


def _asset_observe(run: _Run, p: dict[str, Any]) -> None:
    asset = run.asset(p["asset_id"])
    if asset["custodian"] != run.sender and "auditor" not in run.roles(run.sender):
        raise ExecutionError(
            "not-custodian-or-auditor", f"{run.sender} neither holds {p['asset_id']} nor audits"
        )
    run.put_asset(dict(asset), "asset.observe")


# --- joint purchase ------------------------------------------------------------------------


def _purchase(run: _Run, purchase_id: str) -> StateValue:
    purchase = run.state.get(f"purchase/{purchase_id}")
    if purchase is None:
        raise ExecutionError("unknown-purchase", f"no purchase {purchase_id}")
    run.refs.add(("purchase", purchase_id))
    return purchase


def _purchase_open(run: _Run, p: dict[str, Any]) -> None:
    run.require_role(run.sender, frozenset({"member"}))
    if run.state.get(f"purchase/{p['purchase_id']}") is not None:
        raise ExecutionError("purchase-exists", f"purchase {p['purchase_id']} exists")
    run.require_member(p["supplier"])
    if "supplier" not in run.roles(p["supplier"]):
        raise ExecutionError("not-a-supplier", f"{p['supplier']} lacks the supplier role")
    if p["deadline_ms"] <= run.ctx.timestamp_ms:
        raise ExecutionError("deadline-passed", "the deadline is not after the block time")
    run.state.put(
        f"purchase/{p['purchase_id']}",
        {
            "purchase_id": p["purchase_id"],
            "opener": run.sender,
            "supplier": p["supplier"],
            "item": p["item"],
            "unit": p["unit"],
            "tiers": [dict(tier) for tier in p["tiers"]],
            "min_total": p["min_total"],
            "deadline_ms": p["deadline_ms"],
            "status": "open",
            "commitments": {},
            "total": 0,
            "unit_price": 0,
            "costs": {},
        },
    )
    run.refs.update({("purchase", p["purchase_id"]), ("member", p["supplier"])})
    run.note("purchase", purchase_id=p["purchase_id"], status="open")


def _purchase_commit(run: _Run, p: dict[str, Any]) -> None:
    purchase = _purchase(run, p["purchase_id"])
    run.require_role(run.sender, frozenset({"member"}))
    if purchase["status"] != "open":
        raise ExecutionError("purchase-not-open", f"purchase is {purchase['status']}")
    if run.ctx.timestamp_ms >= purchase["deadline_ms"]:
        raise ExecutionError("deadline-passed", "the purchase's deadline has passed")
    commitments = dict(purchase["commitments"])
    if p["quantity"]:
        commitments[run.sender] = p["quantity"]
    else:
        commitments.pop(run.sender, None)
    commitments = dict(sorted(commitments.items()))
    total = sum(commitments.values())
    run.state.put(
        f"purchase/{p['purchase_id']}", {**purchase, "commitments": commitments, "total": total}
    )
    run.note("commitment", purchase_id=p["purchase_id"], quantity=p["quantity"], total=total)


def tier_price(tiers: list[dict[str, int]], total: int) -> int:
    """The unit price of the last tier whose ``min_quantity`` the total reaches."""
    price = tiers[0]["unit_price"]
    for tier in tiers:
        if tier["min_quantity"] <= total:
            price = tier["unit_price"]
    return price


def _purchase_close(run: _Run, p: dict[str, Any]) -> None:
    purchase = _purchase(run, p["purchase_id"])
    if purchase["status"] != "open":
        raise ExecutionError("purchase-not-open", f"purchase is {purchase['status']}")
    if run.ctx.timestamp_ms < purchase["deadline_ms"]:
        raise ExecutionError("deadline-not-reached", "the purchase's deadline has not passed")
    total = purchase["total"]
    if total < purchase["min_total"]:
        run.state.put(f"purchase/{p['purchase_id']}", {**purchase, "status": "failed"})
        run.note("purchase", purchase_id=p["purchase_id"], status="failed")
        return
    price = tier_price(purchase["tiers"], total)
    costs = {member: quantity * price for member, quantity in purchase["commitments"].items()}
    run.state.put(
        f"purchase/{p['purchase_id']}",
        {**purchase, "status": "closed", "unit_price": price, "costs": costs},
    )
    run.note("purchase", purchase_id=p["purchase_id"], status="closed", unit_price=price)


def _purchase_confirm(run: _Run, p: dict[str, Any]) -> None:
    purchase = _purchase(run, p["purchase_id"])
    if purchase["supplier"] != run.sender:
        raise ExecutionError("not-supplier", f"{run.sender} is not the purchase's supplier")
    if purchase["status"] != "closed":
        raise ExecutionError("purchase-not-closed", f"purchase is {purchase['status']}")
    run.state.put(f"purchase/{p['purchase_id']}", {**purchase, "status": "confirmed"})
    run.note("purchase", purchase_id=p["purchase_id"], status="confirmed")


# --- membership governance -----------------------------------------------------------------


def _membership_problem(run: _Run, action: str, entry: dict[str, Any]) -> ExecutionError | None:
    """Why ``action`` on ``entry`` cannot be applied to the current membership, if it cannot."""
    if action == "add":
        if run.member(entry["id"]) is not None:
            return ExecutionError("member-exists", f"{entry['id']} is already a member")
        for key in entry["public_keys"]:
            if run.state.get(f"key/{key}") is not None:
                return ExecutionError("key-in-use", f"key {key[:16]}... belongs to a member")
    elif run.member(entry["id"]) is None:
        return ExecutionError("unknown-member", f"{entry['id']} is not a member")
    return None


def _apply_membership(run: _Run, action: str, entry: dict[str, Any]) -> None:
    member_id = entry["id"]
    registry = run.state.get("registry")
    if registry is None:
        raise ExecutionError("unknown-member", "the ledger has no member registry")
    members = set(registry["members"])
    voters = set(registry["voters"])
    if action == "add":
        record = {**entry, "roles": sorted(entry["roles"])}
        run.state.put(f"member/{member_id}", record)
        for key in entry["public_keys"]:
            run.state.put(f"key/{key}", {"member": member_id})
        members.add(member_id)
        if "member" in record["roles"]:
            voters.add(member_id)
    else:
        current = run.member(member_id)
        assert current is not None  # checked by _membership_problem
        for key in current["public_keys"]:
            run.state.delete(f"key/{key}")
        run.state.delete(f"member/{member_id}")
        members.discard(member_id)
        voters.discard(member_id)
    run.state.put("registry", {"members": sorted(members), "voters": sorted(voters)})
    run.refs.add(("member", member_id))
    run.note("membership", action=action, member_id=member_id)


def _decide(run: _Run, proposal: StateValue) -> StateValue:
    voters = len(proposal["voters"])
    if 3 * len(proposal["approvals"]) > 2 * voters:
        problem = _membership_problem(run, proposal["action"], proposal["member"])
        if problem is not None:
            raise problem
        _apply_membership(run, proposal["action"], proposal["member"])
        return {**proposal, "status": "passed"}
    if 3 * (voters - len(proposal["rejections"])) <= 2 * voters:
        return {**proposal, "status": "rejected"}
    return proposal


def _member_propose(run: _Run, p: dict[str, Any]) -> None:
    run.require_role(run.sender, frozenset({"member"}))
    problem = _membership_problem(run, p["action"], p["member"])
    if problem is not None:
        raise problem
    registry = run.state.get("registry")
    voters = [] if registry is None else list(registry["voters"])
    proposal: StateValue = {
        "proposal_id": run.tx_id,
        "proposer": run.sender,
        "action": p["action"],
        "member": p["member"],
        "voters": voters,
        "approvals": [run.sender] if run.sender in voters else [],
        "rejections": [],
        "status": "open",
        "created_height": run.ctx.height,
    }
    proposal = _decide(run, proposal)
    run.state.put(f"proposal/{run.tx_id}", proposal)
    run.refs.add(("proposal", run.tx_id))
    run.note("proposal", proposal_id=run.tx_id, status=proposal["status"])


def _member_vote(run: _Run, p: dict[str, Any]) -> None:
    proposal = run.state.get(f"proposal/{p['proposal_id']}")
    if proposal is None:
        raise ExecutionError("unknown-proposal", f"no proposal {p['proposal_id']}")
    if proposal["status"] != "open":
        raise ExecutionError("proposal-closed", f"proposal is {proposal['status']}")
    if run.sender not in proposal["voters"]:
        raise ExecutionError("not-voter", f"{run.sender} may not vote on this proposal")
    if run.sender in proposal["approvals"] or run.sender in proposal["rejections"]:
        raise ExecutionError("already-voted", f"{run.sender} has voted")
    side = "approvals" if p["approve"] else "rejections"
    proposal = {**proposal, side: sorted([*proposal[side], run.sender])}
    proposal = _decide(run, proposal)
    run.state.put(f"proposal/{p['proposal_id']}", proposal)
    run.refs.add(("proposal", p["proposal_id"]))
    run.note("proposal", proposal_id=p["proposal_id"], status=proposal["status"])


HANDLERS: dict[str, Callable[[_Run, dict[str, Any]], None]] = {
    "asset.register": _asset_register,
    "asset.transfer": _asset_transfer,
    "asset.transform": _asset_transform,
    "asset.observe": _asset_observe,
    "shipment.create": _shipment_create,
    "shipment.receive": _shipment_receive,
    "shipment.cancel": _shipment_cancel,
    "purchase.open": _purchase_open,
    "purchase.commit": _purchase_commit,
    "purchase.close": _purchase_close,
    "purchase.confirm": _purchase_confirm,
    "member.propose": _member_propose,
    "member.vote": _member_vote,
}

ERROR_CODES = (
    "unknown-sender",
    "signer-not-authorized",
    "role-not-allowed",
    "unknown-member",
    "same-member",
    "asset-exists",
    "unknown-asset",
    "not-owner",
    "not-custodian",
    "asset-consumed",
    "asset-in-transit",
    "not-custodian-or-auditor",
    "shipment-exists",
    "unknown-shipment",
    "not-recipient",
    "not-shipper",
    "shipment-not-in-transit",
    "purchase-exists",
    "unknown-purchase",
    "not-a-supplier",
    "deadline-passed",
    "deadline-not-reached",
    "purchase-not-open",
    "purchase-not-closed",
    "purchase-not-confirmed",
    "not-supplier",
    "not-participant",
    "member-exists",
    "key-in-use",
    "unknown-proposal",
    "proposal-closed",
    "not-voter",
    "already-voted",
)
"""Every execution error code, as listed in docs/rules.md."""
