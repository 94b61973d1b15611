"""``/v1/assets``: register, transfer, transform, observe; read an asset and its history."""

from __future__ import annotations

from fastapi import APIRouter
from fastapi.responses import JSONResponse

from gateway.deps import CurrentPrincipal, Services
from gateway.routes.params import (
    LOOKUP_ERRORS,
    WRITE_RESPONSES,
    AssetId,
    Cursor,
    Limit,
)
from gateway.schemas import (
    AssetRegister,
    AssetTransfer,
    AssetTransform,
    AssetView,
    HistoryPage,
    Observation,
)
from gateway.views import asset_view, history_page, parse_cursor, require_state
from gateway.writes import Custodial, drop_none

router = APIRouter(prefix="/v1/assets", tags=["assets"])


@router.post("", status_code=202, response_model=None, responses=WRITE_RESPONSES)
async def register_asset(
    body: AssetRegister,
    write: Custodial,
) -> JSONResponse:
    """Register a lot; the token's member becomes its owner and custodian (custodial)."""
    return await write("asset.register", drop_none(body.model_dump()))


@router.post(
    "/{asset_id}/transfer", status_code=202, response_model=None, responses=WRITE_RESPONSES
)
async def transfer_asset(
    asset_id: AssetId,
    body: AssetTransfer,
    write: Custodial,
) -> JSONResponse:
    """Sell the asset to another member (ownership; custody does not move)."""
    return await write("asset.transfer", {"asset_id": asset_id, "to": body.to})


@router.post(
    "/{asset_id}/transform", status_code=202, response_model=None, responses=WRITE_RESPONSES
)
async def transform_asset(
    asset_id: AssetId,
    body: AssetTransform,
    write: Custodial,
) -> JSONResponse:
    """Consume this asset (and `additional_inputs`) into new output assets."""
    payload = {
        "inputs": [asset_id, *body.additional_inputs],
        "outputs": [output.model_dump() for output in body.outputs],
    }
    return await write("asset.transform", payload)


@router.post(
    "/{asset_id}/observations", status_code=202, response_model=None, responses=WRITE_RESPONSES
)
async def observe_asset(
    asset_id: AssetId,
    body: Observation,
    write: Custodial,
) -> JSONResponse:
    """Record an observation (temperature, inspection, certificate) on the asset."""
    return await write(
        "asset.observe", {"asset_id": asset_id, "kind": body.kind, "data": body.data}
    )


@router.get("/{asset_id}", responses=LOOKUP_ERRORS)
async def get_asset(
    asset_id: AssetId, principal: CurrentPrincipal, services: Services
) -> AssetView:
    """Owner, custodian, status and lineage of an asset."""
    ledger = services.ledger
    return asset_view(ledger, require_state(ledger, "asset", asset_id))


@router.get("/{asset_id}/history", responses=LOOKUP_ERRORS)
async def get_asset_history(
    asset_id: AssetId,
    principal: CurrentPrincipal,
    services: Services,
    after: Cursor = None,
    limit: Limit = 100,
) -> HistoryPage:
    """Every event of the asset, oldest first, with block height and time (paginated)."""
    cursor = parse_cursor(after)
    ledger = services.ledger
    require_state(ledger, "asset", asset_id)
    return history_page(ledger, asset_id, cursor, limit)
