"""``/v1/transactions``: relay a client-signed envelope; read a receipt."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Path, Request, Response
from fastapi.responses import JSONResponse
from pydantic import ValidationError

from gateway.deps import BEARER_SECURITY, CurrentPrincipal, Services, Settings, Writer, writer_of
from gateway.problems import ApiProblem
from gateway.routes.params import LOOKUP_ERRORS, WRITE_ERRORS, WRITE_RESPONSES, Wait
from gateway.schemas import TX_ID_PATTERN, BatchAccepted, BatchItem, Envelope, TransactionView
from gateway.services import NodeServices
from gateway.views import transaction_view
from gateway.writes import answer
from node.codec import parse_json
from node.errors import AdmissionError, EncodingError
from node.limits import BATCH_TXS_MAX

router = APIRouter(prefix="/v1/transactions", tags=["transactions"])

TxId = Annotated[str, Path(pattern=TX_ID_PATTERN, description="64 lowercase hex digits.")]

ENVELOPE_BODY = {
    "requestBody": {
        "required": True,
        "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Envelope"}}},
    }
}


@router.post(
    "",
    status_code=202,
    response_model=None,
    responses=WRITE_RESPONSES,
    openapi_extra=ENVELOPE_BODY,
)
async def submit_transaction(
    request: Request, principal: Writer, services: Services, settings: Settings, wait: Wait = None
) -> JSONResponse:
    """Submit an envelope signed by its sender's key (DESIGN.md). The signature is the
    authority: any member or operator token may relay it; auditor tokens never write.
    Admission failures are 4xx with the rule's code; execution failures are in the receipt.
    """
    # The body is parsed here rather than by a model so that admission (node.tx) sees
    # exactly what was sent, through the one strict parser that refuses floats and
    # duplicate keys, and answers with the rule's own error codes.
    try:
        envelope = parse_json(await request.body(), what="envelope")
    except EncodingError as error:
        raise AdmissionError("malformed-transaction", str(error)) from error
    tx_id = await services.submit(envelope)
    return await answer(services, settings, tx_id, wait is not None)


BATCH_BODY = {
    "requestBody": {
        "required": True,
        "content": {
            "application/json": {
                "schema": {
                    "type": "object",
                    "additionalProperties": False,
                    "required": ["envelopes"],
                    "properties": {
                        "envelopes": {
                            "type": "array",
                            "minItems": 1,
                            "maxItems": BATCH_TXS_MAX,
                            "items": {"$ref": "#/components/schemas/Envelope"},
                        }
                    },
                }
            }
        },
    }
}


BATCHES_PATH = "/v1/transaction-batches"

batches = APIRouter(prefix=BATCHES_PATH, tags=["transactions"])


@batches.post(
    "",
    response_model=BatchAccepted,
    responses=WRITE_ERRORS,
    openapi_extra={**BATCH_BODY, **BEARER_SECURITY},
)
async def submit_batch(request: Request) -> Response:
    """Submit up to 500 signed envelopes at once (an ERP's export). Each is admitted or
    refused on its own, exactly as by ``POST /v1/transactions``; the results come back in
    order. Poll ``GET /v1/transactions/{tx_id}`` for receipts."""
    # The route most writes take: gateway.app.DirectRoute calls this straight from the
    # middleware stack (no routing), with no dependencies to resolve (gateway.deps.writer_of),
    # and the model is serialised as it is rather than validated again as the response model.
    await writer_of(request)
    services: NodeServices = request.app.state.services
    try:
        document = parse_json(await request.body(), what="batch")
    except EncodingError as error:
        raise ApiProblem(422, "malformed-transaction", str(error)) from error
    if not isinstance(document, dict) or set(document) != {"envelopes"}:
        raise ApiProblem(422, "malformed-transaction", 'the body must be {"envelopes": [...]}')
    envelopes = document["envelopes"]
    if not isinstance(envelopes, list) or not 1 <= len(envelopes) <= BATCH_TXS_MAX:
        raise ApiProblem(
            422, "malformed-transaction", f"envelopes must be a list of 1..{BATCH_TXS_MAX}"
        )
    for position, envelope in enumerate(envelopes):
        # An item that does not match the Envelope schema breaks the request's schema:
        # refuse the whole batch, naming it. Rule failures (type, signature, expiry, ...)
        # stay per item, as POST /v1/transactions reports them.
        try:
            Envelope.model_validate(envelope)
        except ValidationError as error:
            first = error.errors()[0]
            where = ".".join(str(part) for part in first["loc"])
            raise ApiProblem(
                422, "malformed-transaction", f"envelopes[{position}].{where}: {first['msg']}"
            ) from error
    results = [
        BatchItem(status="refused", code=outcome.code, detail=outcome.detail)
        if isinstance(outcome, AdmissionError)
        else BatchItem(tx_id=outcome, status="pending")
        for outcome in await services.submit_many(envelopes)
    ]
    admitted = sum(1 for item in results if item.status == "pending")
    accepted = BatchAccepted(results=results, admitted=admitted)
    return Response(accepted.model_dump_json(), media_type="application/json")


@router.get("/{tx_id}", responses=LOOKUP_ERRORS)
async def get_transaction(
    tx_id: TxId, principal: CurrentPrincipal, services: Services
) -> TransactionView:
    """The receipt of a committed transaction, with its envelope and inclusion proof."""
    store = services.ledger.store
    committed = store.tx(tx_id)
    if committed is None:
        raise ApiProblem(404, "not-found", f"no committed transaction {tx_id}")
    return transaction_view(store, committed)
