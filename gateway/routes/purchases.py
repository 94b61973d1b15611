"""``/v1/purchases``: open, commit, close, confirm a joint purchase; read it."""

from __future__ import annotations

from fastapi import APIRouter
from fastapi.responses import JSONResponse

from gateway.deps import CurrentPrincipal, Services
from gateway.routes.params import LOOKUP_ERRORS, WRITE_RESPONSES, PurchaseId
from gateway.schemas import Commitment, PurchaseOpen, PurchaseView
from gateway.views import purchase_view, require_state
from gateway.writes import Custodial

router = APIRouter(prefix="/v1/purchases", tags=["purchases"])


@router.post("", status_code=202, response_model=None, responses=WRITE_RESPONSES)
async def open_purchase(
    body: PurchaseOpen,
    write: Custodial,
) -> JSONResponse:
    """Open a joint purchase with price tiers, a minimum total and a deadline."""
    return await write("purchase.open", body.model_dump())


@router.post(
    "/{purchase_id}/commitments", status_code=202, response_model=None, responses=WRITE_RESPONSES
)
async def commit_to_purchase(
    purchase_id: PurchaseId,
    body: Commitment,
    write: Custodial,
) -> JSONResponse:
    """Set the member's committed quantity (its new total; 0 withdraws)."""
    return await write("purchase.commit", {"purchase_id": purchase_id, "quantity": body.quantity})


@router.post(
    "/{purchase_id}/close", status_code=202, response_model=None, responses=WRITE_RESPONSES
)
async def close_purchase(
    purchase_id: PurchaseId,
    write: Custodial,
) -> JSONResponse:
    """Close after the deadline: the tier reached sets each participant's cost."""
    return await write("purchase.close", {"purchase_id": purchase_id})


@router.post(
    "/{purchase_id}/confirm", status_code=202, response_model=None, responses=WRITE_RESPONSES
)
async def confirm_purchase(
    purchase_id: PurchaseId,
    write: Custodial,
) -> JSONResponse:
    """The supplier confirms a closed purchase."""
    return await write("purchase.confirm", {"purchase_id": purchase_id})


@router.get("/{purchase_id}", responses=LOOKUP_ERRORS)
async def get_purchase(
    purchase_id: PurchaseId, principal: CurrentPrincipal, services: Services
) -> PurchaseView:
    """Commitments, total, tier reached and each participant's cost."""
    return purchase_view(require_state(services.ledger, "purchase", purchase_id))
