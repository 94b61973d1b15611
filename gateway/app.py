"""The FastAPI application every node serves: :func:`create_app`.

The app reaches the node only through :class:`gateway.services.NodeServices` (reads of the
committed ledger, ``submit``, ``wait_committed``, custodial keys, status). Routes are
``async def`` on purpose: the ledger is single-threaded and the node's runtime drives it
from the event loop, so the gateway reads it from the same loop instead of from a thread
pool where a read could interleave with a commit.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import Any

from fastapi import FastAPI
from fastapi.openapi.utils import get_openapi
from starlette.requests import Request
from starlette.responses import Response
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from gateway.auth import FailureLimiter, TokenStore
from gateway.deps import GatewaySettings
from gateway.explorer import router as explorer_router
from gateway.problems import PROBLEM_MEDIA_TYPE, install_handlers, problem_response
from gateway.routes import assets, audit, chain, purchases, shipments, transactions
from gateway.schemas import Envelope
from gateway.services import NodeServices
from gateway.writes import IdempotencyCache
from node.limits import BATCH_BODY_BYTES_MAX

API_VERSION = "1"


class BodyLimit:
    """Refuse request bodies over ``bytes_max`` with 413 before any route parses them.

    Checks ``Content-Length`` first, then counts what actually arrives (a chunked body has
    no length), buffering at most ``bytes_max`` bytes.
    """

    def __init__(
        self, app: ASGIApp, bytes_max: int, path_bytes_max: dict[str, int] | None = None
    ) -> None:
        self.app = app
        self.bytes_max = bytes_max
        self.path_bytes_max = path_bytes_max or {}

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        bytes_max = self.path_bytes_max.get(scope["path"], self.bytes_max)
        for name, value in scope["headers"]:
            if name == b"content-length":
                if not value.isdigit():
                    await self._refuse(scope, receive, send, 400, bytes_max)
                    return
                if int(value) > bytes_max:
                    await self._refuse(scope, receive, send, 413, bytes_max)
                    return
        body = bytearray()
        while True:
            message = await receive()
            if message["type"] != "http.request":
                break  # The client went away; let the app see the disconnect.
            body += message.get("body", b"")
            if len(body) > bytes_max:
                await self._refuse(scope, receive, send, 413, bytes_max)
                return
            if not message.get("more_body", False):
                break
        replayed = False

        async def replay() -> Message:
            nonlocal replayed
            if not replayed:
                replayed = True
                return {"type": "http.request", "body": bytes(body), "more_body": False}
            return await receive()

        await self.app(scope, replay, send)

    async def _refuse(
        self, scope: Scope, receive: Receive, send: Send, status: int, bytes_max: int
    ) -> None:
        if status == 413:
            detail = f"request bodies are limited to {bytes_max} bytes"
            code = "body-too-large"
        else:
            detail = "invalid Content-Length"
            code = "invalid-request"
        response = problem_response(None, status, code, detail)
        await response(scope, receive, send)


class DirectRoute:
    """Serve one method and path by calling its endpoint straight from the middleware stack.

    FastAPI still declares the route (its OpenAPI entry, and the same endpoint behind its
    router), but a request for it skips what lies between this middleware and the endpoint:
    exception middleware, routing over every route and request handling with dependency
    resolution, about a third of a small batch request's CPU on a validator
    (docs/benchmarks.md). Sits inside :class:`BodyLimit`, so the body limit holds. The
    endpoint takes the :class:`~starlette.requests.Request` and returns a response; what it
    raises goes to the handler the app registered for that exception's nearest class, as
    on every other route (``gateway.problems.install_handlers``).
    """

    def __init__(
        self,
        app: ASGIApp,
        method: str,
        path: str,
        endpoint: Callable[[Request], Awaitable[Response]],
    ) -> None:
        self.app = app
        self.method = method
        self.path = path
        self.endpoint = endpoint

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["path"] != self.path or scope["method"] != self.method:
            await self.app(scope, receive, send)
            return
        request = Request(scope, receive, send)
        try:
            response = await self.endpoint(request)
        except Exception as error:
            handler = _exception_handler(scope["app"], error)
            if handler is None:
                raise
            response = await handler(request, error)
        await response(scope, receive, send)


def _exception_handler(app: FastAPI, error: Exception) -> Any:
    """The handler ``app`` registered for ``error``'s nearest class (its ``Exception``
    handler answers the logged 500), or ``None``."""
    handlers = app.exception_handlers
    return next((handlers[cls] for cls in type(error).__mro__ if cls in handlers), None)


def create_app(
    services: NodeServices,
    auth: TokenStore,
    *,
    settings: GatewaySettings | None = None,
    limiter: FailureLimiter | None = None,
) -> FastAPI:
    """The REST gateway over ``services``, accepting the tokens of ``auth``."""
    settings = settings or GatewaySettings()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        # The node owns the ledger's lifetime; the gateway only checks it can read it.
        app.state.started_height = services.ledger.height
        yield

    app = FastAPI(
        title="coopledger gateway",
        version=API_VERSION,
        summary="REST API of a coopledger node: member writes, auditor reads, operator status.",
        lifespan=lifespan,
        # The node exports its own Prometheus metrics (/metrics). FastAPI's OpenTelemetry
        # hooks would otherwise look up the global providers on every request.
        telemetry={"tracing": False, "metrics": False, "logs": False},
    )
    app.state.services = services
    app.state.tokens = auth
    app.state.settings = settings
    app.state.limiter = limiter if limiter is not None else FailureLimiter()
    app.state.idempotency = IdempotencyCache(
        entries_max=settings.idempotency_entries_max, ttl_s=settings.idempotency_ttl_s
    )
    install_handlers(app)
    for router in (
        transactions.router,
        transactions.batches,
        assets.router,
        shipments.router,
        purchases.router,
        chain.members,
        chain.blocks,
        audit.router,
        chain.node,
    ):
        app.include_router(router)
    app.include_router(explorer_router)
    # Added first, so it sits inside BodyLimit (Starlette wraps the last added outermost).
    app.add_middleware(
        DirectRoute,
        method="POST",
        path=transactions.BATCHES_PATH,
        endpoint=transactions.submit_batch,
    )
    app.add_middleware(
        BodyLimit,
        bytes_max=settings.request_body_bytes_max,
        path_bytes_max={transactions.BATCHES_PATH: BATCH_BODY_BYTES_MAX},
    )
    app.openapi = lambda: _openapi(app)  # type: ignore[method-assign]
    return app


def _openapi(app: FastAPI) -> dict[str, Any]:
    """FastAPI's document, with errors declared as problem+json and the envelope schema."""
    if app.openapi_schema is not None:
        return app.openapi_schema
    document = get_openapi(
        title=app.title,
        version=app.version,
        summary=app.summary,
        routes=app.routes,
    )
    schemas = document.setdefault("components", {}).setdefault("schemas", {})
    envelope = Envelope.model_json_schema(ref_template="#/components/schemas/{model}")
    schemas.update(envelope.pop("$defs", {}))
    schemas["Envelope"] = envelope
    for path in document["paths"].values():
        for operation in path.values():
            for status, response in operation.get("responses", {}).items():
                content = response.get("content", {})
                if status[0] in "45" and "application/json" in content:
                    content[PROBLEM_MEDIA_TYPE] = content.pop("application/json")
    app.openapi_schema = document
    return document
