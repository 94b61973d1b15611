"""Blocks, members, node status and liveness."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Path, Query
from fastapi.responses import Response

from gateway.deps import CurrentPrincipal, Operator, Services
from gateway.routes.params import LOOKUP_ERRORS, OPERATOR_ERRORS, READ_ERRORS, Limit
from gateway.schemas import (
    ID_PATTERN,
    BlockView,
    Health,
    MembersPage,
    MemberView,
    StatusView,
    ValidatorView,
)
from gateway.views import block_view
from node.limits import PAGE_SIZE_MAX

blocks = APIRouter(prefix="/v1/blocks", tags=["blocks"])
members = APIRouter(prefix="/v1/members", tags=["members"])
node = APIRouter(tags=["node"])


@blocks.get("/{height}", responses=LOOKUP_ERRORS)
async def get_block(
    height: Annotated[int, Path(ge=1, le=2**53 - 1)],
    principal: CurrentPrincipal,
    services: Services,
) -> BlockView:
    """A committed block: header, block_hash, commit certificate and its transactions."""
    return block_view(services.ledger.store, height)


@members.get("", responses=READ_ERRORS)
async def list_members(
    principal: CurrentPrincipal,
    services: Services,
    after: Annotated[
        str | None, Query(pattern=ID_PATTERN, description="The `next` of the previous page.")
    ] = None,
    limit: Limit = PAGE_SIZE_MAX,
) -> MembersPage:
    """The consortium's current members, by id (paginated)."""
    ledger = services.ledger
    registry = ledger.state_get("registry") or {"members": []}
    ids = [member_id for member_id in registry["members"] if after is None or member_id > after]
    page = ids[:limit]
    items = []
    for member_id in page:
        record = ledger.state_get(f"member/{member_id}")
        if record is not None:
            items.append(MemberView(**record))
    return MembersPage(items=items, next=page[-1] if len(ids) > limit else None)


@node.get("/v1/status", tags=["node"], responses=READ_ERRORS)
async def get_status(principal: CurrentPrincipal, services: Services) -> StatusView:
    """Chain id, height, last block, mempool, and each validator's connection."""
    status = services.status()
    return StatusView(
        chain_id=status.chain_id,
        node_id=status.node_id,
        height=status.height,
        last_block_hash=status.last_block_hash,
        last_block_time_ms=status.last_block_time_ms,
        mempool_txs=status.mempool_txs,
        mempool_bytes=status.mempool_bytes,
        validators=[
            ValidatorView(id=v.id, address=v.address, connected=v.connected, height=v.height)
            for v in status.validators
        ],
    )


@node.get(
    "/metrics",
    tags=["node"],
    responses={
        **OPERATOR_ERRORS,
        200: {"content": {"text/plain": {}}, "description": "Prometheus text format 0.0.4."},
    },
    response_class=Response,
)
async def get_metrics(principal: Operator, services: Services) -> Response:
    """The node's metrics for Prometheus (operator token): height, commit latency, rounds,
    mempool, peers, admitted and rejected transactions, block execution and storage time,
    sync progress."""
    return Response(
        services.metrics_exposition(), media_type="text/plain; version=0.0.4; charset=utf-8"
    )


@node.get("/healthz", tags=["node"])
async def healthz(services: Services) -> Health:
    """Liveness, without a token: the process serves and its ledger answers."""
    return Health(status="ok", height=services.ledger.height)
