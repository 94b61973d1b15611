"""Transactions: the envelope, the body, ``tx_id`` and admission.

::

    envelope = {"body": body, "signer": <hex ed25519 public key>, "signature": <hex>}
    body     = {"chain_id": str, "type": str, "sender": <member id>, "nonce": int,
                "expires_at_ms": int, "payload": {...}}
    tx_id    = hex(sha256(canonical(body)))

Admission (docs/rules.md, "Admission codes") runs in three parts so each caller does only
what it needs:

* :func:`parse_envelope` — shape, payload schema and size; needs nothing but the bytes;
* :func:`check_window` — chain id and the expiry window against a time;
* :func:`check_signature` — the strict Ed25519 check (the expensive part, done once per node).

Membership (``unknown-sender``, ``signer-not-authorized``) depends on state and is checked by
the rule engine; deduplication by :class:`DedupIndex`.
"""

from __future__ import annotations

import heapq
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from node.codec import NESTING_DEPTH_MAX, canonical, is_hex, parse_json, sha256_hex
from node.crypto import KeyPair, domain_tag, verify_raw
from node.errors import AdmissionError, ConfigError, EncodingError, NestingError
from node.genesis import check_member_entry
from node.limits import (
    ASSETS_PER_SHIPMENT_MAX,
    PRICE_TIERS_MAX,
    QUANTITY_MAX,
    TRANSFORM_INPUTS_MAX,
    TRANSFORM_OUTPUTS_MAX,
    TX_BODY_FRAME_DEPTH,
    TX_BYTES_MAX,
    TX_EXPIRY_MS_MAX,
    UNIT_PRICE_MAX,
)
from node.validation import check_id, check_int, check_text

ENVELOPE_FIELDS = frozenset({"body", "signer", "signature"})
BODY_FIELDS = frozenset({"chain_id", "type", "sender", "nonce", "expires_at_ms", "payload"})
NONCE_MAX = 2**53 - 1
TX_SIGNING_TAG = domain_tag("tx")
ENVELOPE_FRAMING_BYTES = len(b'{"body":,"signature":"","signer":""}') + 128 + 64
"""Bytes of a canonical envelope besides its body: keys, quotes, a 64-byte signature and a
32-byte signer in hex."""
OUTPUT_FIELDS = frozenset({"asset_id", "product", "quantity", "unit"})


@dataclass(frozen=True, slots=True)
class Transaction:
    """A well-formed envelope (shape, payload schema and size checked; signature not yet).

    The fields every stage reads (signer, sender, type, expiry, the canonical envelope) are
    taken out of the envelope once, here: a block's transactions are read by admission, the
    mempool, execution, storage and gossip, and a dict lookup behind a property on each read
    cost more than the slot.
    """

    envelope: dict[str, Any]
    tx_id: str
    size_bytes: int
    """Length of the canonical envelope: what the size limits count."""
    body_bytes: bytes
    """``canonical(body)``: hashed for ``tx_id`` and signed; encoded once, here."""
    body: dict[str, Any] = field(init=False, repr=False, compare=False)
    signer: str = field(init=False, repr=False, compare=False)
    signature: str = field(init=False, repr=False, compare=False)
    sender: str = field(init=False, repr=False, compare=False)
    type: str = field(init=False, repr=False, compare=False)
    expires_at_ms: int = field(init=False, repr=False, compare=False)
    envelope_bytes: bytes = field(init=False, repr=False, compare=False)
    """``canonical(envelope)``, assembled from :attr:`body_bytes` without encoding again.

    Keys in code point order (``body`` < ``signature`` < ``signer``); the signature and the
    signer were checked to be lowercase hex, which JSON carries unescaped."""

    def __post_init__(self) -> None:
        envelope = self.envelope
        body = envelope["body"]
        signer: str = envelope["signer"]
        signature: str = envelope["signature"]
        define = object.__setattr__  # the dataclass is frozen
        define(self, "body", body)
        define(self, "signer", signer)
        define(self, "signature", signature)
        define(self, "sender", body["sender"])
        define(self, "type", body["type"])
        define(self, "expires_at_ms", body["expires_at_ms"])
        define(
            self,
            "envelope_bytes",
            b"".join(
                (
                    b'{"body":',
                    self.body_bytes,
                    b',"signature":"',
                    signature.encode("ascii"),
                    b'","signer":"',
                    signer.encode("ascii"),
                    b'"}',
                )
            ),
        )


def tx_id_of(body: dict[str, Any]) -> str:
    return sha256_hex(canonical(body))


def sign_transaction(key_pair: KeyPair, body: dict[str, Any]) -> dict[str, Any]:
    """The envelope of ``body`` signed by ``key_pair``."""
    return {"body": body, "signer": key_pair.public_key, "signature": key_pair.sign("tx", body)}


def parse_envelope_bytes(data: bytes) -> Transaction:
    """Parse an envelope received as JSON bytes (REST body, peer frame)."""
    if len(data) > 4 * TX_BYTES_MAX:
        raise AdmissionError("tx-too-large", f"{len(data)} bytes")
    try:
        envelope = parse_json(data, what="envelope")
    except EncodingError as error:
        raise AdmissionError("malformed-transaction", str(error)) from error
    return parse_envelope(envelope)


def parse_envelope(envelope: object) -> Transaction:
    """Check an envelope's shape, payload schema and size; raise :class:`AdmissionError`."""
    if not isinstance(envelope, dict):
        raise AdmissionError("malformed-transaction", "envelope must be an object")
    _exact(envelope, ENVELOPE_FIELDS, "envelope", "malformed-transaction")
    body = envelope["body"]
    if not isinstance(body, dict):
        raise AdmissionError("malformed-transaction", "body must be an object")
    _exact(body, BODY_FIELDS, "body", "malformed-transaction")
    if not is_hex(envelope["signer"], 32):
        raise AdmissionError("malformed-transaction", "signer must be 64 lowercase hex characters")
    if not is_hex(envelope["signature"], 64):
        raise AdmissionError(
            "malformed-transaction", "signature must be 128 lowercase hex characters"
        )
    _require(check_id(body["chain_id"]), "body.chain_id", "malformed-transaction")
    _require(check_id(body["sender"]), "body.sender", "malformed-transaction")
    _require(check_int(body["nonce"], 0, NONCE_MAX), "body.nonce", "malformed-transaction")
    expires_problem = check_int(body["expires_at_ms"], 0, 2**53 - 1)
    _require(expires_problem, "body.expires_at_ms", "malformed-transaction")
    kind = body["type"]
    if not isinstance(kind, str) or kind not in PAYLOAD_CHECKS:
        raise AdmissionError("unknown-type", f"unknown transaction type {kind!r}")
    payload = body["payload"]
    if not isinstance(payload, dict):
        raise AdmissionError("invalid-payload", "payload must be an object")
    try:
        body_bytes = canonical(body, depth=TX_BODY_FRAME_DEPTH)
    except NestingError as error:
        levels = NESTING_DEPTH_MAX - TX_BODY_FRAME_DEPTH
        raise AdmissionError(
            "malformed-transaction",
            f"body: nested deeper than {levels} levels (a body travels inside peer frames)",
        ) from error
    except EncodingError as error:
        raise AdmissionError("malformed-transaction", f"body: {error}") from error
    # The canonical envelope is {"body":B,"signature":"S","signer":"K"} with S and K checked
    # hex above, so its length follows from the body's without encoding it again.
    size = len(body_bytes) + ENVELOPE_FRAMING_BYTES
    if size > TX_BYTES_MAX:
        raise AdmissionError("tx-too-large", f"{size} bytes; at most {TX_BYTES_MAX}")
    PAYLOAD_CHECKS[kind](payload)
    return Transaction(envelope, sha256_hex(body_bytes), size, body_bytes)


def check_window(tx: Transaction, chain_id: str, now_ms: int) -> None:
    """Chain id and expiry window: ``now < expires_at_ms <= now + 24 h``."""
    if tx.body["chain_id"] != chain_id:
        raise AdmissionError("wrong-chain", f"transaction is for chain {tx.body['chain_id']!r}")
    if tx.expires_at_ms <= now_ms:
        raise AdmissionError("expired", f"expired at {tx.expires_at_ms}, now {now_ms}")
    if tx.expires_at_ms > now_ms + TX_EXPIRY_MS_MAX:
        raise AdmissionError("expiry-too-far", "expires_at_ms is more than 24 h ahead")


def check_signature(tx: Transaction) -> None:
    """Strict Ed25519 verification of the signer's signature over the tagged body."""
    if not verify_raw(tx.signer, TX_SIGNING_TAG + tx.body_bytes, tx.signature):
        raise AdmissionError("bad-signature", "signature does not verify for signer and body")


class DedupIndex:
    """Committed ``tx_id``s, remembered until they expire, at most ``entries_max`` of them.

    A transaction can only be included while ``block_time < expires_at_ms``, so once the
    block time passes a transaction's expiry it can never be replayed and is forgotten.
    Beyond ``entries_max`` the ones expiring first are forgotten early: the ledger keeps
    this as a fast front for its store, which answers for the rest (``committed_unexpired``).
    """

    __slots__ = ("_expiry_by_tx", "_heap", "complete_above_ms", "entries_max")

    def __init__(self, entries_max: int | None = None, *, complete_above_ms: int = 0) -> None:
        self._expiry_by_tx: dict[str, int] = {}
        self._heap: list[tuple[int, str]] = []
        self.entries_max = entries_max
        self.complete_above_ms = complete_above_ms
        """Every transaction added and expiring after this is still here: the latest expiry
        forgotten early (or, for a fresh index in front of a store, the store's latest).
        A lookup of a transaction expiring later needs nothing but this index."""

    def __contains__(self, tx_id: object) -> bool:
        return tx_id in self._expiry_by_tx

    def __len__(self) -> int:
        return len(self._expiry_by_tx)

    def add(self, tx_id: str, expires_at_ms: int) -> None:
        if tx_id not in self._expiry_by_tx:
            self._expiry_by_tx[tx_id] = expires_at_ms
            heapq.heappush(self._heap, (expires_at_ms, tx_id))

    def prune(self, block_time_ms: int) -> None:
        """Forget every transaction that expired at or before ``block_time_ms`` (and, over
        ``entries_max``, the ones expiring first)."""
        limit = self.entries_max
        while self._heap and (
            self._heap[0][0] <= block_time_ms
            or (limit is not None and len(self._expiry_by_tx) > limit)
        ):
            expires_at_ms, tx_id = heapq.heappop(self._heap)
            del self._expiry_by_tx[tx_id]
            if expires_at_ms > block_time_ms:  # forgotten early, before it expired
                self.complete_above_ms = max(self.complete_above_ms, expires_at_ms)


# --- payload schemas -----------------------------------------------------------------------


def _exact(obj: dict[str, Any], fields: frozenset[str], where: str, code: str) -> None:
    if obj.keys() == fields:
        return
    unknown = sorted(set(obj) - fields)
    if unknown:
        raise AdmissionError(code, f"{where}.{unknown[0]}: unknown field")
    missing = sorted(fields - set(obj))
    if missing:
        raise AdmissionError(code, f"{where}.{missing[0]}: missing")


def _fields(
    payload: dict[str, Any], required: set[str], optional: frozenset[str] = frozenset()
) -> None:
    unknown = sorted(set(payload) - required - optional)
    if unknown:
        raise AdmissionError("invalid-payload", f"payload.{unknown[0]}: unknown field")
    missing = sorted(required - set(payload))
    if missing:
        raise AdmissionError("invalid-payload", f"payload.{missing[0]}: missing")


def _require(problem: str | None, field: str, code: str = "invalid-payload") -> None:
    if problem:
        raise AdmissionError(code, f"{field}: {problem}")


def _id_list(value: object, field: str, limit: int) -> list[str]:
    if not isinstance(value, list) or not 1 <= len(value) <= limit:
        raise AdmissionError("invalid-payload", f"{field}: must be a list of 1..{limit} ids")
    for position, item in enumerate(value):
        _require(check_id(item), f"{field}[{position}]")
    if len(set(value)) != len(value):
        raise AdmissionError("invalid-payload", f"{field}: lists an id twice")
    return value


def _object(value: object, field: str) -> None:
    if not isinstance(value, dict):
        raise AdmissionError("invalid-payload", f"{field}: must be an object")


def _check_register(p: dict[str, Any]) -> None:
    _fields(p, {"asset_id", "product", "quantity", "unit", "origin"}, frozenset({"metadata"}))
    _require(check_id(p["asset_id"]), "payload.asset_id")
    _require(check_text(p["product"]), "payload.product")
    _require(check_int(p["quantity"], 1, QUANTITY_MAX), "payload.quantity")
    _require(check_text(p["unit"]), "payload.unit")
    _require(check_text(p["origin"]), "payload.origin")
    if "metadata" in p:
        _object(p["metadata"], "payload.metadata")


def _check_transfer(p: dict[str, Any]) -> None:
    _fields(p, {"asset_id", "to"})
    _require(check_id(p["asset_id"]), "payload.asset_id")
    _require(check_id(p["to"]), "payload.to")


def _check_transform(p: dict[str, Any]) -> None:
    _fields(p, {"inputs", "outputs"})
    inputs = _id_list(p["inputs"], "payload.inputs", TRANSFORM_INPUTS_MAX)
    outputs = p["outputs"]
    if not isinstance(outputs, list) or not 1 <= len(outputs) <= TRANSFORM_OUTPUTS_MAX:
        raise AdmissionError(
            "invalid-payload", f"payload.outputs: must be a list of 1..{TRANSFORM_OUTPUTS_MAX}"
        )
    seen: set[str] = set()
    for position, output in enumerate(outputs):
        where = f"payload.outputs[{position}]"
        _object(output, where)
        _exact(output, OUTPUT_FIELDS, where, "invalid-payload")
        _require(check_id(output["asset_id"]), f"{where}.asset_id")
        _require(check_text(output["product"]), f"{where}.product")
        _require(check_int(output["quantity"], 1, QUANTITY_MAX), f"{where}.quantity")
        _require(check_text(output["unit"]), f"{where}.unit")
        if output["asset_id"] in seen or output["asset_id"] in inputs:
            raise AdmissionError(
                "invalid-payload", f"{where}.asset_id: repeats an input or another output"
            )
        seen.add(output["asset_id"])


def _check_observe(p: dict[str, Any]) -> None:
    _fields(p, {"asset_id", "kind", "data"})
    _require(check_id(p["asset_id"]), "payload.asset_id")
    _require(check_text(p["kind"]), "payload.kind")
    _object(p["data"], "payload.data")


def _check_shipment_create(p: dict[str, Any]) -> None:
    _fields(p, {"shipment_id", "asset_ids", "to"}, frozenset({"purchase_id"}))
    _require(check_id(p["shipment_id"]), "payload.shipment_id")
    _id_list(p["asset_ids"], "payload.asset_ids", ASSETS_PER_SHIPMENT_MAX)
    _require(check_id(p["to"]), "payload.to")
    if "purchase_id" in p:
        _require(check_id(p["purchase_id"]), "payload.purchase_id")


def _check_shipment_ref(p: dict[str, Any]) -> None:
    _fields(p, {"shipment_id"})
    _require(check_id(p["shipment_id"]), "payload.shipment_id")


def _check_purchase_open(p: dict[str, Any]) -> None:
    _fields(p, {"purchase_id", "supplier", "item", "unit", "tiers", "min_total", "deadline_ms"})
    _require(check_id(p["purchase_id"]), "payload.purchase_id")
    _require(check_id(p["supplier"]), "payload.supplier")
    _require(check_text(p["item"]), "payload.item")
    _require(check_text(p["unit"]), "payload.unit")
    tiers = p["tiers"]
    if not isinstance(tiers, list) or not 1 <= len(tiers) <= PRICE_TIERS_MAX:
        raise AdmissionError(
            "invalid-payload", f"payload.tiers: must be a list of 1..{PRICE_TIERS_MAX} tiers"
        )
    for position, tier in enumerate(tiers):
        where = f"payload.tiers[{position}]"
        _object(tier, where)
        _exact(tier, frozenset({"min_quantity", "unit_price"}), where, "invalid-payload")
        _require(check_int(tier["min_quantity"], 1, QUANTITY_MAX), f"{where}.min_quantity")
        _require(check_int(tier["unit_price"], 0, UNIT_PRICE_MAX), f"{where}.unit_price")
        if position:
            previous = tiers[position - 1]
            if tier["min_quantity"] <= previous["min_quantity"]:
                raise AdmissionError(
                    "invalid-payload", f"{where}.min_quantity: tiers must strictly increase"
                )
            if tier["unit_price"] > previous["unit_price"]:
                raise AdmissionError(
                    "invalid-payload", f"{where}.unit_price: a higher tier may not cost more"
                )
    _require(check_int(p["min_total"], 1, QUANTITY_MAX), "payload.min_total")
    if p["min_total"] < tiers[0]["min_quantity"]:
        raise AdmissionError(
            "invalid-payload", "payload.min_total: must be at least the first tier's min_quantity"
        )
    _require(check_int(p["deadline_ms"], 0, 2**53 - 1), "payload.deadline_ms")


def _check_purchase_commit(p: dict[str, Any]) -> None:
    _fields(p, {"purchase_id", "quantity"})
    _require(check_id(p["purchase_id"]), "payload.purchase_id")
    _require(check_int(p["quantity"], 0, QUANTITY_MAX), "payload.quantity")


def _check_purchase_ref(p: dict[str, Any]) -> None:
    _fields(p, {"purchase_id"})
    _require(check_id(p["purchase_id"]), "payload.purchase_id")


def _check_member_propose(p: dict[str, Any]) -> None:
    _fields(p, {"action", "member"})
    if p["action"] not in ("add", "remove"):
        raise AdmissionError("invalid-payload", "payload.action: must be add or remove")
    try:
        check_member_entry(p["member"], "payload.member", "transaction")
    except ConfigError as error:
        raise AdmissionError("invalid-payload", f"{error.field}: {error.problem}") from error


def _check_member_vote(p: dict[str, Any]) -> None:
    _fields(p, {"proposal_id", "approve"})
    if not is_hex(p["proposal_id"], 32):
        raise AdmissionError("invalid-payload", "payload.proposal_id: must be a tx id (64 hex)")
    if not isinstance(p["approve"], bool):
        raise AdmissionError("invalid-payload", "payload.approve: must be true or false")


PAYLOAD_CHECKS: dict[str, Callable[[dict[str, Any]], None]] = {
    "asset.register": _check_register,
    "asset.transfer": _check_transfer,
    "asset.transform": _check_transform,
    "asset.observe": _check_observe,
    "shipment.create": _check_shipment_create,
    "shipment.receive": _check_shipment_ref,
    "shipment.cancel": _check_shipment_ref,
    "purchase.open": _check_purchase_open,
    "purchase.commit": _check_purchase_commit,
    "purchase.close": _check_purchase_ref,
    "purchase.confirm": _check_purchase_ref,
    "member.propose": _check_member_propose,
    "member.vote": _check_member_vote,
}
TX_TYPES = tuple(PAYLOAD_CHECKS)
