"""Every error the gateway returns, as RFC 9457 problem+json, mapped in one place.

A problem carries ``type`` (``urn:coopledger:problem:<code>``), ``title``, ``status``,
``detail``, ``instance`` (the request path) and the extension member ``code``: the stable
kebab-case code of docs/rules.md for rule failures, or one of the gateway's own codes
(:data:`GATEWAY_CODES`). Clients branch on ``code``, never on ``detail``.
"""

from __future__ import annotations

import logging
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from gateway.schemas import Problem
from node.audit import BundleTooLarge
from node.errors import CoopledgerError, EncodingError, ProofError, RuleError, StorageError

log = logging.getLogger("coopledger.gateway")

PROBLEM_MEDIA_TYPE = "application/problem+json"

RULE_STATUS = {
    "duplicate-tx": 409,
    "tx-too-large": 413,
    "signer-not-authorized": 403,
    "sender-quota-exceeded": 429,
    "mempool-full": 503,
    "node-stopping": 503,
}
"""HTTP status of admission codes other than 422 (the transaction is unacceptable as sent)."""

GATEWAY_CODES = {
    "unauthenticated": "No bearer token was presented.",
    "invalid-token": "The bearer token is not valid on this node.",
    "too-many-auth-failures": "Too many failed authentications from this client.",
    "role-forbidden": "The token's role may not do this.",
    "no-custodial-key": "This node does not hold the member's signing key.",
    "not-found": "No such resource.",
    "method-not-allowed": "The method is not allowed on this resource.",
    "invalid-request": "The request does not match the schema.",
    "body-too-large": "The request body exceeds the size limit.",
    "idempotency-key-reused": "The Idempotency-Key was used for a different request.",
    "bundle-too-large": "The audit bundle would exceed its limits.",
    "storage-unavailable": "The node's database cannot be used right now.",
    "internal-error": "An unexpected error; it is logged on the node.",
}


class ApiProblem(Exception):
    """A gateway-level refusal: raise it anywhere in a route or dependency."""

    def __init__(
        self, status: int, code: str, detail: str = "", headers: dict[str, str] | None = None
    ) -> None:
        super().__init__(f"{status} {code}: {detail}")
        self.status = status
        self.code = code
        self.detail = detail
        self.headers = headers or {}


def problem_response(
    request: Request | None,
    status: int,
    code: str,
    detail: str = "",
    *,
    headers: dict[str, str] | None = None,
    extra: dict[str, Any] | None = None,
) -> JSONResponse:
    body: dict[str, Any] = {
        "type": f"urn:coopledger:problem:{code}",
        "title": GATEWAY_CODES.get(code, code.replace("-", " ").capitalize()),
        "status": status,
        "detail": detail,
        "code": code,
    }
    if request is not None:
        body["instance"] = request.url.path
    if extra:
        body.update(extra)
    return JSONResponse(body, status_code=status, headers=headers, media_type=PROBLEM_MEDIA_TYPE)


def rule_status(code: str) -> int:
    return RULE_STATUS.get(code, 422)


def _validation_errors(error: RequestValidationError) -> list[dict[str, Any]]:
    # Only location, message and type: the raw input may be large or not JSON-serialisable.
    return [
        {
            "loc": [str(part) for part in item.get("loc", ())],
            "msg": str(item.get("msg", "")),
            "type": str(item.get("type", "")),
        }
        for item in error.errors()[:20]
    ]


def install_handlers(app: FastAPI) -> None:
    """Map every expected failure to problem+json; anything else is a logged 500."""

    async def on_problem(request: Request, error: Exception) -> JSONResponse:
        assert isinstance(error, ApiProblem)
        return problem_response(
            request, error.status, error.code, error.detail, headers=error.headers
        )

    async def on_rule(request: Request, error: Exception) -> JSONResponse:
        assert isinstance(error, RuleError)
        return problem_response(request, rule_status(error.code), error.code, error.detail)

    async def on_coopledger(request: Request, error: Exception) -> JSONResponse:
        if isinstance(error, StorageError):
            log.error("storage failure on %s: %s", request.url.path, error)
            return problem_response(request, 503, "storage-unavailable", "retry shortly")
        if isinstance(error, BundleTooLarge):
            return problem_response(request, 422, "bundle-too-large", str(error))
        if isinstance(error, EncodingError):
            return problem_response(request, 422, "invalid-request", str(error))
        if isinstance(error, ProofError):
            log.error("proof failure on %s: %s", request.url.path, error)
            return problem_response(request, 503, "storage-unavailable", str(error))
        return problem_response(request, 422, "invalid-request", str(error))

    async def on_validation(request: Request, error: Exception) -> JSONResponse:
        assert isinstance(error, RequestValidationError)
        errors = _validation_errors(error)
        detail = "; ".join(f"{'.'.join(e['loc'])}: {e['msg']}" for e in errors[:3])
        return problem_response(request, 422, "invalid-request", detail, extra={"errors": errors})

    async def on_http(request: Request, error: Exception) -> JSONResponse:
        assert isinstance(error, StarletteHTTPException)
        status = error.status_code
        # FastAPI answers 400 when a body cannot be parsed at all (e.g. nested too deeply):
        # for the client that is a request that breaks the schema, like any other.
        if status == 400:
            status = 422
        code = {404: "not-found", 405: "method-not-allowed", 413: "body-too-large"}.get(
            status, "invalid-request"
        )
        return problem_response(
            request, status, code, str(error.detail), headers=dict(error.headers or {})
        )

    async def on_recursion(request: Request, error: Exception) -> JSONResponse:
        return problem_response(request, 422, "invalid-request", "JSON nested too deeply")

    async def on_unexpected(request: Request, error: Exception) -> JSONResponse:
        log.exception("unexpected error on %s %s", request.method, request.url.path)
        return problem_response(request, 500, "internal-error", "see the node's log")

    app.add_exception_handler(ApiProblem, on_problem)
    app.add_exception_handler(RuleError, on_rule)
    app.add_exception_handler(CoopledgerError, on_coopledger)
    app.add_exception_handler(RequestValidationError, on_validation)
    app.add_exception_handler(StarletteHTTPException, on_http)
    app.add_exception_handler(RecursionError, on_recursion)
    app.add_exception_handler(Exception, on_unexpected)


def error_responses(*statuses: int) -> dict[int | str, dict[str, Any]]:
    """OpenAPI ``responses`` entries for these error statuses (problem+json, see app.py)."""
    descriptions = {
        401: "No valid bearer token (unauthenticated, invalid-token).",
        403: "The token's role may not do this (role-forbidden, no-custodial-key), or the "
        "signer is not the sender's key (signer-not-authorized).",
        404: "No such resource (not-found, or the rule code such as unknown-asset).",
        409: "The transaction was already committed or is pending (duplicate-tx).",
        413: "The request body or the transaction is too large.",
        422: "The request breaks the schema or an admission rule (the code says which).",
        429: "Too many failed authentications, or the sender's mempool quota is full.",
        503: "The node cannot take it now (mempool-full, node-stopping, storage-unavailable).",
    }
    return {status: {"model": Problem, "description": descriptions[status]} for status in statuses}
