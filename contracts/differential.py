"""Differential testing: the native rule engine and the contracts, step by step.

Theory of operation. A :class:`World` fixes a small consortium (members with every role,
an outsider, candidates for governance), each party holding a deterministic Ed25519 key and
an anvil account. :func:`draw_operation` draws one transaction (type, sender, payload,
time advance) through a :class:`Chooser`: a seeded ``random.Random`` for the CLI, hypothesis
data for the stateful test, so both explore the same space and hypothesis can shrink. Ids
come from small pools so that collisions (``asset-exists``, ``unknown-shipment``, ...) are
common, and the sender is often the one the rules want (the owner for a transfer, the
recipient for a receipt) so that sequences reach deep states.

:class:`DifferentialHarness` applies each operation to both engines: the native engine
(``node.rules.apply_transaction`` on a ``MemoryState``) and the contracts on anvil (one mined
call from the sender's account at the same block time, with the same ``tx_id``). After every
step :func:`compare_step` compares the outcome code and every record the step could touch
(assets with owner, custodian, status, shipment and event chain head; shipments; purchases
with totals, commitments, tier price and costs; members; proposals), and at the end of a
sequence every record of the pools. anvil snapshots reset the chain between sequences.

:func:`run_check` is ``coopledger contracts check``: N sequences of M steps from a seed,
counting the sequences that diverge and shrinking the first to its shortest failing form.
"""

from __future__ import annotations

import hashlib
import random
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol, TypeVar

from web3 import Web3

from contracts.anvil import Anvil
from contracts.build import Artifact
from contracts.evm import EvmLedger, EvmMember
from node.codec import canonical, sha256_hex
from node.crypto import KeyPair
from node.genesis import Genesis, Member, Validator
from node.invariant import invariant
from node.rules import BlockContext, apply_transaction, genesis_state
from node.state import MemoryState
from node.tx import PAYLOAD_CHECKS

T = TypeVar("T")

CHAIN_ID = "coop-differential"
EXPIRY_MS = 60 * 60 * 1000

GENESIS_PARTIES: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("coop-a", ("member",)),
    ("coop-b", ("member",)),
    ("coop-c", ("member", "supplier")),
    ("coop-d", ("carrier", "member")),
    ("mill", ("supplier",)),
    ("carrier", ("carrier",)),
    ("auditor", ("auditor",)),
)
OUTSIDERS = ("ghost", "newco", "newco-2")
"""Not members at genesis; governance may add ``newco`` and ``newco-2``."""
CANDIDATES = ("newco", "newco-2")

ASSET_IDS = tuple(f"lot-{n}" for n in range(8))
SHIPMENT_IDS = tuple(f"ship-{n}" for n in range(4))
PURCHASE_IDS = tuple(f"buy-{n}" for n in range(3))
PROPOSAL_REFS_MAX = 4

ADVANCES_S = (1, 1, 1, 2, 10, 60, 600)
"""Block time advance per step: mostly small, sometimes past a purchase deadline."""
DEADLINE_OFFSETS_MS = (-5_000, 0, 1, 999, 1_000, 20_000, 120_000, 600_000)
"""``deadline_ms`` relative to the block time: in the past, at it, inside and across seconds
(the contracts see seconds times 1000), and minutes ahead."""


# --- the world -----------------------------------------------------------------------------


def party_key(party_id: str) -> KeyPair:
    """A deterministic key per party, so runs (and their tx ids) replay exactly."""
    return KeyPair(hashlib.sha256(b"coopledger:differential:" + party_id.encode()).digest())


@dataclass(frozen=True, slots=True)
class World:
    genesis: Genesis
    keys: dict[str, KeyPair]
    """Each party's own key."""
    addresses: dict[str, str]
    """Public key (hex) to anvil account."""
    nobody: str
    """An account that is no party's and never registered."""

    @classmethod
    def build(cls, accounts: Sequence[str]) -> World:
        party_ids = [party for party, _ in GENESIS_PARTIES] + list(OUTSIDERS)
        invariant(len(accounts) >= len(party_ids) + 2, "anvil has too few accounts")
        keys = {party: party_key(party) for party in party_ids}
        addresses = {
            keys[party].public_key: accounts[1 + index] for index, party in enumerate(party_ids)
        }
        members = tuple(
            Member(party, party.upper(), tuple(sorted(roles)), (keys[party].public_key,))
            for party, roles in GENESIS_PARTIES
        )
        validator_key = party_key("validator-0").public_key
        genesis = Genesis(
            CHAIN_ID, 0, (Validator("validator-0", validator_key, "127.0.0.1:1"),), members
        )
        return cls(genesis, keys, addresses, accounts[1 + len(party_ids)])

    def evm_members(self) -> list[EvmMember]:
        return [
            EvmMember(m.id, m.name, m.roles, tuple(self.addresses[k] for k in m.public_keys))
            for m in self.genesis.members
        ]

    @property
    def party_ids(self) -> tuple[str, ...]:
        return tuple(party for party, _ in GENESIS_PARTIES) + OUTSIDERS


# --- operations ----------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Operation:
    """One transaction to apply to both engines, independent of the run's clock and ids.

    ``payload`` is the payload of DESIGN.md except for the two fields that depend on when
    and after what the operation runs: a ``purchase.open`` deadline is ``deadline_offset_ms``
    after the block time, and a ``member.vote`` names the ``proposal_ref``-th proposal of the
    run. This keeps an operation meaningful when shrinking removes earlier ones.
    """

    type: str
    sender: str
    payload: dict[str, Any]
    advance_s: int
    deadline_offset_ms: int = 0
    proposal_ref: int = 0

    def to_json(self) -> dict[str, Any]:
        document: dict[str, Any] = {
            "type": self.type,
            "sender": self.sender,
            "payload": self.payload,
            "advance_s": self.advance_s,
        }
        if self.type == "purchase.open":
            document["deadline_offset_ms"] = self.deadline_offset_ms
        if self.type == "member.vote":
            document["proposal_ref"] = self.proposal_ref
        return document


class Chooser(Protocol):
    """The source of every choice :func:`draw_operation` makes."""

    def integer(self, low: int, high: int) -> int:
        """An integer in ``low..high`` inclusive."""
        ...


class RandomChooser:
    def __init__(self, rng: random.Random) -> None:
        self.rng = rng

    def integer(self, low: int, high: int) -> int:
        return self.rng.randint(low, high)


def pick(chooser: Chooser, options: Sequence[T]) -> T:
    return options[chooser.integer(0, len(options) - 1)]


def chance(chooser: Chooser, in_four: int) -> bool:
    """True ``in_four`` times out of four."""
    return chooser.integer(0, 3) < in_four


def distinct(chooser: Chooser, options: Sequence[T], count_max: int) -> list[T]:
    pool = list(options)
    chosen: list[T] = []
    for _ in range(chooser.integer(1, min(count_max, len(pool)))):
        chosen.append(pool.pop(chooser.integer(0, len(pool) - 1)))
    return chosen


OPERATION_WEIGHTS: tuple[tuple[str, int], ...] = (
    ("asset.register", 6),
    ("asset.transfer", 3),
    ("asset.transform", 2),
    ("asset.observe", 2),
    ("shipment.create", 4),
    ("shipment.receive", 3),
    ("shipment.cancel", 2),
    ("purchase.open", 3),
    ("purchase.commit", 5),
    ("purchase.close", 2),
    ("purchase.confirm", 2),
    ("member.propose", 1),
    ("member.vote", 3),
)
_WEIGHTED_TYPES = tuple(kind for kind, weight in OPERATION_WEIGHTS for _ in range(weight))


def draw_operation(chooser: Chooser, world: World, state: MemoryState) -> Operation:
    """Draw one operation; ``state`` (the native engine's) only steers senders to likely ones."""
    kind = pick(chooser, _WEIGHTED_TYPES)
    draw = _DRAWERS[kind]
    sender, payload, extra = draw(_Draw(chooser, world, state))
    return Operation(
        type=kind,
        sender=sender,
        payload=payload,
        advance_s=pick(chooser, ADVANCES_S),
        deadline_offset_ms=extra.get("deadline_offset_ms", 0),
        proposal_ref=extra.get("proposal_ref", 0),
    )


@dataclass(slots=True)
class _Draw:
    chooser: Chooser
    world: World
    state: MemoryState

    def anyone(self) -> str:
        """A genesis party seven times in eight, else an outsider or governance candidate."""
        if self.chooser.integer(0, 7) == 0:
            return pick(self.chooser, OUTSIDERS)
        return pick(self.chooser, [party for party, _ in GENESIS_PARTIES])

    def existing(self, prefix: str, pool: Sequence[str]) -> str:
        """An id of the pool that exists three times in four (when one does), else any."""
        present = [name for name in pool if self.state.get(f"{prefix}/{name}") is not None]
        if present and chance(self.chooser, 3):
            return pick(self.chooser, present)
        return pick(self.chooser, pool)

    def preferred(self, likely: str | None) -> str:
        """``likely`` three times in four (when there is one), else anyone."""
        if likely and chance(self.chooser, 3):
            return likely
        return self.anyone()

    def with_role(self, role: str) -> str | None:
        registry = self.state.get("registry") or {"members": []}
        holders = [
            m
            for m in registry["members"]
            if role in (self.state.get(f"member/{m}") or {"roles": []})["roles"]
        ]
        return pick(self.chooser, holders) if holders else None

    def field(self, key: str, name: str) -> str | None:
        record = self.state.get(key)
        return None if record is None else str(record[name])


_Drawn = tuple[str, dict[str, Any], dict[str, int]]


def _register(d: _Draw) -> _Drawn:
    payload: dict[str, Any] = {
        "asset_id": pick(d.chooser, ASSET_IDS),
        "product": pick(d.chooser, ("flour", "milk", "coffee beans")),
        "quantity": d.chooser.integer(1, 1000),
        "unit": pick(d.chooser, ("kg", "l")),
        "origin": pick(d.chooser, ("Ardèche", "Jura")),
    }
    if chance(d.chooser, 1):
        payload["metadata"] = {"lot": d.chooser.integer(0, 99), "organic": True}
    return d.preferred(d.with_role(pick(d.chooser, ("member", "supplier")))), payload, {}


def _transfer(d: _Draw) -> _Drawn:
    asset_id = d.existing("asset", ASSET_IDS)
    sender = d.preferred(d.field(f"asset/{asset_id}", "owner"))
    return sender, {"asset_id": asset_id, "to": d.anyone()}, {}


def _transform(d: _Draw) -> _Drawn:
    first = d.existing("asset", ASSET_IDS)
    others = [asset_id for asset_id in ASSET_IDS if asset_id != first]
    inputs = [first] + (distinct(d.chooser, others, 1) if chance(d.chooser, 1) else [])
    free = [asset_id for asset_id in ASSET_IDS if asset_id not in inputs]
    outputs = [
        {
            "asset_id": asset_id,
            "product": "bread",
            "quantity": d.chooser.integer(1, 500),
            "unit": "kg",
        }
        for asset_id in distinct(d.chooser, free, 2)
    ]
    sender = d.preferred(d.field(f"asset/{inputs[0]}", "custodian"))
    return sender, {"inputs": inputs, "outputs": outputs}, {}


def _observe(d: _Draw) -> _Drawn:
    asset_id = d.existing("asset", ASSET_IDS)
    sender = d.preferred(d.field(f"asset/{asset_id}", "custodian"))
    data = {"celsius": d.chooser.integer(-20, 40)}
    return sender, {"asset_id": asset_id, "kind": "temperature", "data": data}, {}


def _shipment_create(d: _Draw) -> _Drawn:
    first = d.existing("asset", ASSET_IDS)
    others = [asset_id for asset_id in ASSET_IDS if asset_id != first]
    asset_ids = [first] + (distinct(d.chooser, others, 2) if chance(d.chooser, 1) else [])
    payload: dict[str, Any] = {
        "shipment_id": pick(d.chooser, SHIPMENT_IDS),
        "asset_ids": asset_ids,
        "to": d.anyone(),
    }
    likely = d.field(f"asset/{asset_ids[0]}", "custodian")
    if chance(d.chooser, 1):
        purchase_id = d.existing("purchase", PURCHASE_IDS)
        payload["purchase_id"] = purchase_id
        likely = d.field(f"purchase/{purchase_id}", "supplier") or likely
        purchase = d.state.get(f"purchase/{purchase_id}")
        if purchase and purchase["commitments"] and chance(d.chooser, 3):
            payload["to"] = pick(d.chooser, sorted(purchase["commitments"]))
    return d.preferred(likely), payload, {}


def _shipment_receive(d: _Draw) -> _Drawn:
    shipment_id = d.existing("shipment", SHIPMENT_IDS)
    sender = d.preferred(d.field(f"shipment/{shipment_id}", "to"))
    return sender, {"shipment_id": shipment_id}, {}


def _shipment_cancel(d: _Draw) -> _Drawn:
    shipment_id = d.existing("shipment", SHIPMENT_IDS)
    sender = d.preferred(d.field(f"shipment/{shipment_id}", "from"))
    return sender, {"shipment_id": shipment_id}, {}


def _purchase_open(d: _Draw) -> _Drawn:
    tiers = []
    min_quantity, unit_price = 0, d.chooser.integer(50, 1_000_000)
    for _ in range(d.chooser.integer(1, 3)):
        min_quantity += d.chooser.integer(1, 40)
        tiers.append({"min_quantity": min_quantity, "unit_price": unit_price})
        unit_price = d.chooser.integer(0, unit_price)
    payload = {
        "purchase_id": pick(d.chooser, PURCHASE_IDS),
        "supplier": d.preferred(d.with_role("supplier")),
        "item": "whole milk",
        "unit": "l",
        "tiers": tiers,
        "min_total": tiers[0]["min_quantity"] + d.chooser.integer(0, 30),
        "deadline_ms": 0,  # replaced by block time + deadline_offset_ms when run
    }
    offset = pick(d.chooser, DEADLINE_OFFSETS_MS)
    return d.preferred(d.with_role("member")), payload, {"deadline_offset_ms": offset}


def _purchase_commit(d: _Draw) -> _Drawn:
    quantity = 0 if chance(d.chooser, 1) else d.chooser.integer(1, 60)
    payload = {"purchase_id": d.existing("purchase", PURCHASE_IDS), "quantity": quantity}
    return d.preferred(d.with_role("member")), payload, {}


def _purchase_close(d: _Draw) -> _Drawn:
    return d.anyone(), {"purchase_id": d.existing("purchase", PURCHASE_IDS)}, {}


def _purchase_confirm(d: _Draw) -> _Drawn:
    purchase_id = d.existing("purchase", PURCHASE_IDS)
    sender = d.preferred(d.field(f"purchase/{purchase_id}", "supplier"))
    return sender, {"purchase_id": purchase_id}, {}


def _member_propose(d: _Draw) -> _Drawn:
    action = "add" if chance(d.chooser, 3) else "remove"
    if action == "add":
        member_id = pick(d.chooser, CANDIDATES) if chance(d.chooser, 3) else d.anyone()
    else:
        member_id = d.anyone()
    key_owner = member_id if chance(d.chooser, 3) else d.anyone()
    roles = sorted(set(distinct(d.chooser, ("member", "supplier", "carrier", "auditor"), 2)))
    entry = {
        "id": member_id,
        "name": member_id.upper(),
        "roles": roles,
        "public_keys": [d.world.keys[key_owner].public_key],
    }
    sender = d.preferred(d.with_role("member"))
    return sender, {"action": action, "member": entry}, {}


def _member_vote(d: _Draw) -> _Drawn:
    approve = chance(d.chooser, 3)
    payload = {"proposal_id": "00" * 32, "approve": approve}  # resolved when run
    reference = d.chooser.integer(0, PROPOSAL_REFS_MAX - 1)
    return d.preferred(d.with_role("member")), payload, {"proposal_ref": reference}


_DRAWERS: dict[str, Callable[[_Draw], _Drawn]] = {
    "asset.register": _register,
    "asset.transfer": _transfer,
    "asset.transform": _transform,
    "asset.observe": _observe,
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


# --- comparison ----------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Observation:
    """What one engine shows after a step: the outcome code and the records compared."""

    code: str
    records: dict[str, Any]


def compare_step(native: Observation, evm: Observation) -> list[str]:
    """Every difference between the two engines' observations, as readable lines."""
    differences = []
    if native.code != evm.code:
        differences.append(f"code: native {native.code!r}, evm {evm.code!r}")
    for key in sorted(set(native.records) | set(evm.records)):
        left, right = native.records.get(key), evm.records.get(key)
        if left != right:
            differences.append(f"{key}: native {left!r}, evm {right!r}")
    return differences


ASSET_FIELDS = (
    "owner",
    "custodian",
    "status",
    "shipment_id",
    "quantity",
    "last_event",
    "event_count",
)
SHIPMENT_FIELDS = ("from", "to", "status", "purchase_id", "asset_ids")
PURCHASE_FIELDS = (
    "status", "opener", "supplier", "deadline_ms", "min_total", "total", "unit_price",
    "tiers", "commitments", "costs",
)  # fmt: skip


def _project(record: dict[str, Any] | None, fields: Sequence[str]) -> dict[str, Any] | None:
    return None if record is None else {name: record[name] for name in fields}


def native_records(state: MemoryState, keys: Sequence[str]) -> dict[str, Any]:
    """The native state's records under ``keys`` in the shape of :class:`EvmLedger`'s views."""
    records: dict[str, Any] = {}
    for key in keys:
        kind, _, _ = key.partition("/")
        value = state.get(key)
        if kind == "asset":
            records[key] = _project(value, ASSET_FIELDS)
        elif kind == "shipment":
            records[key] = _project(value, SHIPMENT_FIELDS)
        elif kind == "purchase":
            records[key] = _project(value, PURCHASE_FIELDS)
        elif kind == "member":
            records[key] = None if value is None else {"roles": sorted(value["roles"])}
        elif kind == "proposal":
            records[key] = (
                None
                if value is None
                else {
                    "status": value["status"],
                    "voters": len(value["voters"]),
                    "approvals": len(value["approvals"]),
                    "rejections": len(value["rejections"]),
                }
            )
    return records


def evm_records(ledger: EvmLedger, keys: Sequence[str]) -> dict[str, Any]:
    """The contracts' records under ``keys`` (state keys of the native engine)."""
    return ledger.records(keys)


# --- the harness ---------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class StepReport:
    index: int
    operation: Operation
    body: dict[str, Any]
    native_code: str
    evm_code: str
    gas_used: int
    differences: list[str]

    def describe(self) -> str:
        lines = [
            f"step {self.index}: {self.operation.type} by {self.operation.sender}",
            f"  body: {canonical(self.body).decode()}",
            *(f"  {line}" for line in self.differences),
        ]
        return "\n".join(lines)


@dataclass
class DifferentialHarness:
    """Both engines from the same genesis, stepped in lockstep."""

    ledger: EvmLedger
    world: World
    state: MemoryState = field(init=False)
    now_s: int = field(init=False, default=0)
    step_index: int = field(init=False, default=0)
    proposals: list[str] = field(init=False, default_factory=list)
    _snapshot: str = field(init=False, default="")

    def __post_init__(self) -> None:
        self.ledger.key_addresses.update(self.world.addresses)
        self._snapshot = self.ledger.snapshot()
        self.reset()

    @classmethod
    def deploy(
        cls, anvil: Anvil, artifacts: dict[str, Artifact] | None = None
    ) -> DifferentialHarness:
        accounts = Web3(Web3.HTTPProvider(anvil.url)).eth.accounts
        world = World.build(accounts)
        ledger = EvmLedger.deploy(anvil.url, world.evm_members(), artifacts)
        return cls(ledger, world)

    def reset(self) -> None:
        """Back to genesis on both sides (an anvil snapshot is used up by its revert)."""
        self.ledger.revert(self._snapshot)
        self._snapshot = self.ledger.snapshot()
        self.state = genesis_state(self.world.genesis)
        self.now_s = self.ledger.latest_timestamp_s()
        self.step_index = 0
        self.proposals = []

    # the sender's credentials on each side

    def _signer(self, sender: str) -> str:
        member = self.state.get(f"member/{sender}")
        if member is not None:
            return str(member["public_keys"][0])
        return self.world.keys[sender].public_key

    def _from_address(self, sender: str, signer: str) -> str:
        if self.state.get(f"member/{sender}") is not None:
            return self.world.addresses[signer]
        # A non-member sends from its own account, unless governance gave that key to a
        # member: then the account would act as that member, which the native engine (where
        # the sender id, not the key, names the actor) cannot express.
        if self.state.get(f"key/{signer}") is not None:
            return self.world.nobody
        return self.world.addresses[signer]

    def body_for(self, operation: Operation) -> dict[str, Any]:
        payload = dict(operation.payload)
        if operation.type == "purchase.open":
            payload["deadline_ms"] = max(0, self.now_s * 1000 + operation.deadline_offset_ms)
        if operation.type == "member.vote" and self.proposals:
            payload["proposal_id"] = self.proposals[operation.proposal_ref % len(self.proposals)]
        body = {
            "chain_id": CHAIN_ID,
            "type": operation.type,
            "sender": operation.sender,
            "nonce": self.step_index,
            "expires_at_ms": self.now_s * 1000 + EXPIRY_MS,
            "payload": payload,
        }
        PAYLOAD_CHECKS[operation.type](payload)  # the generator makes only admissible bodies
        return body

    def step(self, operation: Operation) -> StepReport:
        self.now_s += operation.advance_s
        body = self.body_for(operation)
        tx_id = sha256_hex(canonical(body))
        signer = self._signer(operation.sender)
        from_address = self._from_address(operation.sender, signer)
        touched = self.touched_keys(body, tx_id)

        ctx = BlockContext(
            chain_id=CHAIN_ID, height=self.step_index + 1, timestamp_ms=self.now_s * 1000
        )
        native_code = apply_transaction(self.state, body, signer, tx_id, ctx).code
        evm = self.ledger.execute(body, from_address, tx_id, self.now_s)
        if operation.type == "member.propose" and native_code == "ok":
            self.proposals.append(tx_id)
        touched = sorted(set(touched) | set(self.touched_keys(body, tx_id)))
        differences = compare_step(
            Observation(native_code, native_records(self.state, touched)),
            Observation(evm.code, evm_records(self.ledger, touched)),
        )
        report = StepReport(
            self.step_index, operation, body, native_code, evm.code, evm.gas_used, differences
        )
        self.step_index += 1
        return report

    def touched_keys(self, body: dict[str, Any], tx_id: str) -> list[str]:
        """The state keys a transaction can change, plus the members and ids it names."""
        p = body["payload"]
        # Only governance changes members; they are compared on its steps and at the end.
        governance = body["type"].startswith("member.")
        keys = {f"member/{body['sender']}"} if governance else set()
        asset_ids = [p[name] for name in ("asset_id",) if name in p]
        asset_ids += p.get("asset_ids", []) + p.get("inputs", [])
        asset_ids += [output["asset_id"] for output in p.get("outputs", [])]
        if "shipment_id" in p:
            keys.add(f"shipment/{p['shipment_id']}")
            shipment = self.state.get(f"shipment/{p['shipment_id']}")
            if shipment is not None:
                asset_ids += shipment["asset_ids"]
        keys.update(f"asset/{asset_id}" for asset_id in asset_ids)
        if "purchase_id" in p:
            keys.add(f"purchase/{p['purchase_id']}")
        if body["type"] == "member.propose":
            keys.update({f"member/{p['member']['id']}", f"proposal/{tx_id}"})
        if body["type"] == "member.vote":
            keys.add(f"proposal/{p['proposal_id']}")
            proposal = self.state.get(f"proposal/{p['proposal_id']}")
            if proposal is not None:
                keys.add(f"member/{proposal['member']['id']}")
        return sorted(keys)

    def all_keys(self) -> list[str]:
        keys = [f"asset/{a}" for a in ASSET_IDS] + [f"shipment/{s}" for s in SHIPMENT_IDS]
        keys += [f"purchase/{p}" for p in PURCHASE_IDS]
        keys += [f"member/{m}" for m in self.world.party_ids]
        keys += [f"proposal/{p}" for p in self.proposals]
        return keys

    def final_differences(self) -> list[str]:
        """A comparison of every record of the pools (end of a sequence)."""
        keys = self.all_keys()
        return compare_step(
            Observation("ok", native_records(self.state, keys)),
            Observation("ok", evm_records(self.ledger, keys)),
        )

    def run(self, operations: Sequence[Operation]) -> StepReport | list[str] | None:
        """Replay ``operations`` from genesis; the first divergence, or ``None``."""
        self.reset()
        for operation in operations:
            report = self.step(operation)
            if report.differences:
                return report
        final = self.final_differences()
        return final or None


# --- the command-line check ----------------------------------------------------------------


@dataclass
class CheckReport:
    sequences: int
    operations: int
    divergences: int
    seed: int
    seconds: float = 0.0
    shortest_failure: list[dict[str, Any]] = field(default_factory=list)
    failure_detail: str = ""
    codes: dict[str, int] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        document: dict[str, Any] = {
            "sequences": self.sequences,
            "operations": self.operations,
            "divergences": self.divergences,
            "seed": self.seed,
        }
        if self.divergences:
            document["shortest_failure"] = self.shortest_failure
            document["failure_detail"] = self.failure_detail
        return document


def sequence_seed(seed: int, index: int) -> int:
    return seed * 1_000_003 + index


def run_check(harness: DifferentialHarness, sequences: int, steps: int, seed: int) -> CheckReport:
    """``sequences`` random sequences of ``steps`` operations from ``seed``."""
    started = time.monotonic()
    report = CheckReport(sequences=0, operations=0, divergences=0, seed=seed)
    first_failure: list[Operation] | None = None
    for index in range(sequences):
        chooser = RandomChooser(random.Random(sequence_seed(seed, index)))
        harness.reset()
        operations: list[Operation] = []
        diverged = False
        for _ in range(steps):
            operation = draw_operation(chooser, harness.world, harness.state)
            operations.append(operation)
            step = harness.step(operation)
            report.operations += 1
            report.codes[step.native_code] = report.codes.get(step.native_code, 0) + 1
            if step.differences:
                diverged = True
                break
        if not diverged and harness.final_differences():
            diverged = True
        report.sequences += 1
        if diverged:
            report.divergences += 1
            if first_failure is None:
                first_failure = operations
    if first_failure is not None:
        shortest = shrink(harness, first_failure)
        report.shortest_failure = [operation.to_json() for operation in shortest]
        outcome = harness.run(shortest)
        if isinstance(outcome, StepReport):
            report.failure_detail = outcome.describe()
        elif outcome:
            report.failure_detail = "\n".join(outcome)
    report.seconds = time.monotonic() - started
    return report


SHRINK_RUNS_MAX = 400
"""Replays the shrinker may spend; each costs one sequence on anvil (tens of ms)."""


def shrink(harness: DifferentialHarness, operations: list[Operation]) -> list[Operation]:
    """A shortest-found subsequence that still diverges (delta debugging, then one by one)."""
    runs = 0

    def fails(candidate: list[Operation]) -> bool:
        nonlocal runs
        runs += 1
        return bool(candidate) and harness.run(candidate) is not None

    current = list(operations)
    chunk = max(1, len(current) // 2)
    while chunk >= 1 and runs < SHRINK_RUNS_MAX:
        start, removed = 0, False
        while start < len(current) and runs < SHRINK_RUNS_MAX:
            candidate = current[:start] + current[start + chunk :]
            if fails(candidate):
                current, removed = candidate, True
            else:
                start += chunk
        if not removed:
            chunk //= 2
    return current
