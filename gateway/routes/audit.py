"""``/v1/audit/bundle``: an asset's history as a ``coopledger-audit/1`` bundle."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query
from fastapi.responses import JSONResponse

from gateway.deps import CurrentPrincipal, Services
from gateway.problems import ApiProblem
from gateway.routes.params import LOOKUP_ERRORS
from gateway.schemas import ID_PATTERN, AuditBundle
from node.audit import build_bundle

router = APIRouter(prefix="/v1/audit", tags=["audit"])


@router.get("/bundle", response_model=AuditBundle, responses=LOOKUP_ERRORS)
async def get_bundle(
    asset: Annotated[str, Query(pattern=ID_PATTERN, description="The asset to audit.")],
    principal: CurrentPrincipal,
    services: Services,
    lineage: Annotated[
        bool, Query(description="Include every input the asset was made from, transitively.")
    ] = False,
) -> JSONResponse:
    """Every transaction that touched the asset, the blocks and commits that hold them,
    inclusion proofs, and state proofs of the asset records: verify it offline with
    ``coopledger audit verify BUNDLE --genesis GENESIS``."""
    bundle = build_bundle(services.ledger, asset, lineage=lineage)
    if bundle is None:
        raise ApiProblem(404, "unknown-asset", f"no asset {asset}")
    # Served as built (not re-serialised through the model): the verifier hashes these
    # exact values, so nothing may be coerced on the way out.
    return JSONResponse(bundle)
