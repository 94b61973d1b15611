"""``/v1/shipments``: hand custody over, receive, cancel; read a shipment."""

from __future__ import annotations

from fastapi import APIRouter
from fastapi.responses import JSONResponse

from gateway.deps import CurrentPrincipal, Services
from gateway.routes.params import LOOKUP_ERRORS, WRITE_RESPONSES, ShipmentId
from gateway.schemas import ShipmentCreate, ShipmentView
from gateway.views import require_state, shipment_view
from gateway.writes import Custodial, drop_none

router = APIRouter(prefix="/v1/shipments", tags=["shipments"])


@router.post("", status_code=202, response_model=None, responses=WRITE_RESPONSES)
async def create_shipment(
    body: ShipmentCreate,
    write: Custodial,
) -> JSONResponse:
    """Hand custody of assets the token's member holds to another member."""
    return await write("shipment.create", drop_none(body.model_dump()))


@router.post(
    "/{shipment_id}/receive", status_code=202, response_model=None, responses=WRITE_RESPONSES
)
async def receive_shipment(
    shipment_id: ShipmentId,
    write: Custodial,
) -> JSONResponse:
    """The recipient takes custody."""
    return await write("shipment.receive", {"shipment_id": shipment_id})


@router.post(
    "/{shipment_id}/cancel", status_code=202, response_model=None, responses=WRITE_RESPONSES
)
async def cancel_shipment(
    shipment_id: ShipmentId,
    write: Custodial,
) -> JSONResponse:
    """The shipper cancels before receipt."""
    return await write("shipment.cancel", {"shipment_id": shipment_id})


@router.get("/{shipment_id}", responses=LOOKUP_ERRORS)
async def get_shipment(
    shipment_id: ShipmentId, principal: CurrentPrincipal, services: Services
) -> ShipmentView:
    """A shipment: shipper, recipient, assets, status."""
    return shipment_view(require_state(services.ledger, "shipment", shipment_id))
