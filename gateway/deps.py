"""The gateway's settings and the dependencies routes declare (``Annotated`` aliases).

Everything a route needs comes from ``request.app.state`` through these functions, never
from a module-level singleton, so one process can serve several apps (tests do).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Annotated, Any

from fastapi import Depends, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from gateway.auth import FailureLimiter, Principal, TokenStore
from gateway.problems import ApiProblem
from gateway.services import NodeServices
from node.crypto import KeyPair
from node.limits import REQUEST_BODY_BYTES_MAX


def wall_clock_ms() -> int:
    return time.time_ns() // 1_000_000


@dataclass(frozen=True, slots=True, kw_only=True)
class GatewaySettings:
    wait_timeout_s: float = 10.0
    """Longest a ``?wait=commit`` request waits for finality before answering 202: several
    block times, well under common client and proxy timeouts (30-60 s)."""

    custodial_tx_ttl_ms: int = 10 * 60 * 1000
    """Expiry of a transaction the node signs for a member: long enough to be included
    under load, short enough that the dedup index stays small."""

    idempotency_entries_max: int = 10_000
    """Idempotency keys remembered (least recent forgotten first)."""

    idempotency_ttl_s: float = 24 * 60 * 60
    """How long an Idempotency-Key is remembered: a client's retry window."""

    request_body_bytes_max: int = REQUEST_BODY_BYTES_MAX

    clock_ms: Callable[[], int] = field(default=wall_clock_ms)
    """Wall clock for custodial expiries; a test may pass a fixed one."""


async def get_services(request: Request) -> NodeServices:
    services: NodeServices = request.app.state.services
    return services


async def get_settings(request: Request) -> GatewaySettings:
    settings: GatewaySettings = request.app.state.settings
    return settings


Services = Annotated[NodeServices, Depends(get_services)]
Settings = Annotated[GatewaySettings, Depends(get_settings)]

_bearer = HTTPBearer(auto_error=False, description="A token from `coopledger token add`.")


def client_address(request: Request) -> str:
    return request.client.host if request.client is not None else "unknown"


def authenticate(request: Request, credentials: HTTPAuthorizationCredentials | None) -> Principal:
    """The caller, from its bearer token: 401 without a valid one, 429 when rate-limited."""
    limiter: FailureLimiter = request.app.state.limiter
    tokens: TokenStore = request.app.state.tokens
    challenge = {"WWW-Authenticate": "Bearer"}
    if credentials is None:
        # No guess was made, so there is nothing to limit: always a plain 401.
        raise ApiProblem(401, "unauthenticated", "send Authorization: Bearer TOKEN", challenge)
    client = client_address(request)
    retry_after = limiter.retry_after_s(client)
    if retry_after is not None:
        raise ApiProblem(
            429,
            "too-many-auth-failures",
            f"too many failed attempts; retry in {retry_after} s",
            headers={"Retry-After": str(retry_after)},
        )
    principal = tokens.authenticate(credentials.credentials)
    if principal is None:
        limiter.record_failure(client)
        raise ApiProblem(401, "invalid-token", "the token is not valid on this node", challenge)
    return principal


async def current_principal(
    request: Request,
    credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)],
) -> Principal:
    return authenticate(request, credentials)


CurrentPrincipal = Annotated[Principal, Depends(current_principal)]


def may_write(principal: Principal) -> Principal:
    """A principal that may write: members and operators; auditors never."""
    if not principal.may_write:
        raise ApiProblem(403, "role-forbidden", f"a token of role {principal.role} cannot write")
    return principal


async def writer(principal: CurrentPrincipal) -> Principal:
    return may_write(principal)


Writer = Annotated[Principal, Depends(writer)]


async def writer_of(request: Request) -> Principal:
    """What :data:`Writer` gives, without FastAPI resolving dependencies, for the route that
    carries the bulk of a network's writes (``POST /v1/transaction-batches``): resolving
    this chain and :data:`Services` per request cost a validator about a fifth of a small
    batch request's CPU (930 against 740 µs for a one-envelope batch, docs/benchmarks.md).
    Such a route declares :data:`BEARER_SECURITY` so the OpenAPI document still names the
    scheme."""
    return may_write(authenticate(request, await _bearer(request)))


BEARER_SECURITY: dict[str, Any] = {"security": [{"HTTPBearer": []}]}


async def operator(principal: CurrentPrincipal) -> Principal:
    """A principal that may see node internals (metrics): operators only."""
    if principal.role != "operator":
        raise ApiProblem(403, "role-forbidden", f"a token of role {principal.role} cannot do this")
    return principal


Operator = Annotated[Principal, Depends(operator)]


@dataclass(frozen=True, slots=True)
class Custodian:
    """The member a custodial write signs as (always the token's own) and its key."""

    member: str
    key: KeyPair


async def custodian(principal: Writer, services: Services) -> Custodian:
    if principal.member is None:
        raise ApiProblem(403, "role-forbidden", "custodial writes need a token bound to a member")
    key = services.member_key(principal.member)
    if key is None:
        raise ApiProblem(
            403, "no-custodial-key", f"this node does not hold {principal.member}'s key"
        )
    return Custodian(principal.member, key)


CustodialMember = Annotated[Custodian, Depends(custodian)]
