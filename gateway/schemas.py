"""Request and response schemas of the REST API (separate from the ledger's state records).

Requests are strict: unknown fields and wrong types are refused (422), and the field
constraints repeat docs/rules.md's payload schemas so that a bad custodial request is
refused before anything is signed. Responses are what the OpenAPI document promises;
:mod:`gateway.client` parses them with these same models.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field

from node.codec import check_canonical_value
from node.errors import EncodingError
from node.limits import (
    ASSETS_PER_SHIPMENT_MAX,
    ID_CHARS_MAX,
    PRICE_TIERS_MAX,
    QUANTITY_MAX,
    TEXT_CHARS_MAX,
    TRANSFORM_INPUTS_MAX,
    TRANSFORM_OUTPUTS_MAX,
    UNIT_PRICE_MAX,
)

ID_PATTERN = rf"^[A-Za-z0-9._:-]{{1,{ID_CHARS_MAX}}}$"
"""docs/rules.md's *id*. ``.`` and ``..`` match it but are refused by the rule engine's
check; the gateway refuses them too (see :func:`_not_dots`)."""

TEXT_PATTERN = rf"^[^\x00-\x1f\x7f]{{1,{TEXT_CHARS_MAX}}}$"
TX_ID_PATTERN = r"^[0-9a-f]{64}$"
HEX_PATTERN = r"^[0-9a-f]*$"


def _not_dots(value: str) -> str:
    if value in {".", ".."}:
        raise ValueError("an id may not be . or ..")
    return value


def _canonical_object(value: dict[str, Any]) -> dict[str, Any]:
    try:
        check_canonical_value(value)
    except EncodingError as error:
        raise ValueError(str(error)) from error
    return value


Id = Annotated[str, Field(pattern=ID_PATTERN), AfterValidator(_not_dots)]
Text = Annotated[str, Field(pattern=TEXT_PATTERN)]
Quantity = Annotated[int, Field(ge=1, le=QUANTITY_MAX)]
JsonObject = Annotated[dict[str, Any], AfterValidator(_canonical_object)]
"""An object in the canonical domain (no floats, integers within +-(2^53-1), bounded depth)."""
Hex = Annotated[str, Field(pattern=HEX_PATTERN)]


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)


class Response(BaseModel):
    model_config = ConfigDict(extra="forbid")


# --- problems ---------------------------------------------------------------------------------


class Problem(BaseModel):
    """RFC 9457 problem details, with the stable error ``code`` as an extension member."""

    model_config = ConfigDict(extra="allow")

    type: str = Field(description="A URI naming the problem type: urn:coopledger:problem:CODE.")
    title: str
    status: int
    detail: str = ""
    code: str = Field(description="The stable kebab-case error code (docs/rules.md).")
    instance: str | None = None


# --- writes -----------------------------------------------------------------------------------


class EnvelopeBody(Strict):
    chain_id: Id
    type: str
    sender: Id
    nonce: int
    expires_at_ms: int
    payload: dict[str, Any]


class Envelope(Strict):
    """A signed transaction (DESIGN.md). Admission checks it exactly; this is its shape."""

    body: EnvelopeBody
    signer: Annotated[str, Field(pattern=r"^[0-9a-f]{64}$")]
    signature: Annotated[str, Field(pattern=r"^[0-9a-f]{128}$")]


class AssetRegister(Strict):
    asset_id: Id
    product: Text
    quantity: Quantity
    unit: Text
    origin: Text
    metadata: JsonObject | None = None


class AssetTransfer(Strict):
    to: Id


class TransformOutput(Strict):
    asset_id: Id
    product: Text
    quantity: Quantity
    unit: Text


class AssetTransform(Strict):
    """The asset in the path is the first input; ``additional_inputs`` are the others."""

    additional_inputs: Annotated[list[Id], Field(max_length=TRANSFORM_INPUTS_MAX - 1)] = []
    outputs: Annotated[list[TransformOutput], Field(min_length=1, max_length=TRANSFORM_OUTPUTS_MAX)]


class Observation(Strict):
    kind: Text
    data: JsonObject


class ShipmentCreate(Strict):
    shipment_id: Id
    asset_ids: Annotated[list[Id], Field(min_length=1, max_length=ASSETS_PER_SHIPMENT_MAX)]
    to: Id
    purchase_id: Id | None = None


class PriceTier(Strict):
    min_quantity: Quantity
    unit_price: Annotated[int, Field(ge=0, le=UNIT_PRICE_MAX)]


class PurchaseOpen(Strict):
    purchase_id: Id
    supplier: Id
    item: Text
    unit: Text
    tiers: Annotated[list[PriceTier], Field(min_length=1, max_length=PRICE_TIERS_MAX)]
    min_total: Quantity
    deadline_ms: Annotated[int, Field(ge=0, le=2**53 - 1)]


class Commitment(Strict):
    quantity: Annotated[int, Field(ge=0, le=QUANTITY_MAX)]


class InclusionProof(Response):
    tree_size: int
    leaf_index: int
    path: list[str]


class Receipt(Response):
    """DESIGN.md's receipt, with the transaction's inclusion proof in its block."""

    tx_id: str
    height: int
    index: int
    code: str = Field(description='"ok", or the rule\'s error code if execution failed.')
    block_hash: str
    events: list[dict[str, Any]]
    proof: InclusionProof


class Accepted(Response):
    """The transaction was admitted and is pending (or was not final within the wait)."""

    tx_id: str
    status: Literal["pending"] = "pending"


class BatchItem(Response):
    """One envelope of a batch: admitted (``tx_id``, pending) or refused (``code``, ``detail``)."""

    tx_id: str | None = None
    status: Literal["pending", "refused"]
    code: str | None = None
    detail: str | None = None


class BatchAccepted(Response):
    """Per-envelope outcomes, in the order the envelopes were sent."""

    results: list[BatchItem]
    admitted: int


class TransactionView(Receipt):
    type: str
    sender: str
    timestamp_ms: int
    envelope: dict[str, Any]


# --- reads ------------------------------------------------------------------------------------


class AssetView(Response):
    asset_id: str
    product: str
    quantity: int
    unit: str
    origin: str
    metadata: dict[str, Any]
    owner: str
    custodian: str
    status: str
    shipment_id: str | None
    created_height: int
    event_count: int
    last_event: str
    inputs: list[str] = Field(description="Direct lineage: the assets this one was made from.")
    ancestors: list[str] = Field(description="All lineage inputs, transitively (bounded).")
    outputs: list[str] = Field(description="The assets this one was transformed into, if any.")


class HistoryEvent(Response):
    seq: int
    event: str = Field(description="The event hash (docs/rules.md, Asset event chain).")
    tx_id: str
    type: str
    sender: str
    height: int
    index: int
    timestamp_ms: int
    payload: dict[str, Any]


class HistoryPage(Response):
    asset_id: str
    items: list[HistoryEvent]
    next: str | None = Field(description="Cursor of the next page, or null at the end.")


class ShipmentView(Response):
    shipment_id: str
    shipper: str = Field(description="The custodian who handed the goods over.")
    to: str
    asset_ids: list[str]
    purchase_id: str | None
    status: str
    created_height: int


class ParticipantCost(Response):
    member: str
    quantity: int
    cost: int | None = Field(
        description="quantity x unit price: final once closed, else at the tier reached so "
        "far (null below the first tier)."
    )


class PurchaseView(Response):
    purchase_id: str
    opener: str
    supplier: str
    item: str
    unit: str
    tiers: list[dict[str, int]]
    min_total: int
    deadline_ms: int
    status: str
    total: int
    tier_reached: int | None = Field(description="Index into tiers of the tier the total reaches.")
    unit_price: int | None
    costs_final: bool
    commitments: list[ParticipantCost]


class MemberView(Response):
    id: str
    name: str
    roles: list[str]
    public_keys: list[str]


class MembersPage(Response):
    items: list[MemberView]
    next: str | None


class BlockTx(Response):
    tx_id: str
    index: int
    type: str
    sender: str
    code: str


class BlockView(Response):
    height: int
    block_hash: str
    header: dict[str, Any]
    commit: dict[str, Any]
    txs: list[BlockTx]


class ValidatorView(Response):
    id: str
    address: str
    connected: bool
    height: int | None


class StatusView(Response):
    chain_id: str
    node_id: str
    height: int
    last_block_hash: str
    last_block_time_ms: int
    mempool_txs: int
    mempool_bytes: int
    validators: list[ValidatorView]


class Health(Response):
    status: Literal["ok"]
    height: int


# --- audit ------------------------------------------------------------------------------------


class BundleBlock(Response):
    header: dict[str, Any]
    block_hash: str
    commit: dict[str, Any]


class BundleEntry(Response):
    tx: dict[str, Any]
    tx_id: str
    height: int
    index: int
    code: str
    proof: InclusionProof


class BundleStateProof(Response):
    key: str
    value: dict[str, Any]
    proof: dict[str, Any] = Field(description="node.smt.StateProof.to_json(): leaf, siblings.")


class BundleState(Response):
    height: int
    proofs: list[BundleStateProof]


class AuditBundle(Response):
    """``coopledger-audit/1`` (docs/architecture.md, "Gateway")."""

    format: Literal["coopledger-audit/1"]
    chain_id: str
    asset_id: str
    lineage: bool
    blocks: list[BundleBlock]
    entries: list[BundleEntry]
    state: BundleState
