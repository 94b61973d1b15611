"""Parameters shared by several routers, with their constraints (strict: bad ones are 422)."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from fastapi import Header, Path, Query

from gateway.problems import error_responses
from gateway.schemas import ID_PATTERN, Accepted, Receipt
from node.limits import PAGE_SIZE_MAX

AssetId = Annotated[str, Path(pattern=ID_PATTERN, description="An asset id.")]
ShipmentId = Annotated[str, Path(pattern=ID_PATTERN, description="A shipment id.")]
PurchaseId = Annotated[str, Path(pattern=ID_PATTERN, description="A purchase id.")]

Wait = Annotated[
    Literal["commit"] | None,
    Query(description="`commit`: wait (bounded) until final and answer 200 with the receipt."),
]
IdempotencyKey = Annotated[
    str | None,
    Header(
        alias="Idempotency-Key",
        pattern=r"^[\x21-\x7e]{1,255}$",
        description="Makes a retried POST return the first result instead of a second "
        "transaction (1..255 printable ASCII characters).",
    ),
]
Limit = Annotated[int, Query(ge=1, le=PAGE_SIZE_MAX, description="Page size.")]
Cursor = Annotated[
    str | None,
    Query(max_length=32, description="The `next` value of the previous page."),
]

READ_ERRORS = error_responses(401, 422, 429, 503)
OPERATOR_ERRORS = error_responses(401, 403, 422, 429, 503)
LOOKUP_ERRORS = error_responses(401, 404, 422, 429, 503)
WRITE_ERRORS = error_responses(401, 403, 409, 413, 422, 429, 503)

WRITE_RESPONSES: dict[int | str, dict[str, Any]] = {
    200: {"model": Receipt, "description": "Final (with `?wait=commit`): the receipt."},
    202: {"model": Accepted, "description": "Admitted, pending (or not final within the wait)."},
    **WRITE_ERRORS,
}
"""Responses of every write. Execution failures are receipts with a non-"ok" code."""
