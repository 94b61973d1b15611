"""How a write becomes a transaction: custodial signing, idempotency, waiting for commit.

A custodial write builds the body from the request (``sender`` is always the token's own
member, never taken from the request), signs it with the member's key held by this node and
hands it to :meth:`NodeServices.submit`, exactly like a client-signed envelope. Admission
failures propagate as :class:`node.errors.AdmissionError` (mapped to 4xx in one place);
execution failures come back in the receipt's ``code``.

Idempotency: a custodial POST with an ``Idempotency-Key`` header is remembered per member
for :attr:`GatewaySettings.idempotency_ttl_s` (in memory, so not across a node restart).
A retry with the same key and the same request gets the first transaction's result; the
same key with a different request is refused (422 ``idempotency-key-reused``). A retry that
arrives while the first request is still being admitted waits for it. A first request
refused at admission is forgotten, so a retry may succeed later.
"""

from __future__ import annotations

import asyncio
import secrets
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Annotated, Any

from fastapi import Depends, Request
from fastapi.responses import JSONResponse

from gateway.deps import CustodialMember, Custodian, GatewaySettings, Services, Settings
from gateway.problems import ApiProblem
from gateway.routes.params import IdempotencyKey, Wait
from gateway.services import NodeServices
from gateway.views import receipt
from node.codec import hash_canonical
from node.tx import NONCE_MAX, sign_transaction


@dataclass(slots=True)
class _Remembered:
    fingerprint: str
    created_s: float
    done: asyncio.Event = field(default_factory=asyncio.Event)
    tx_id: str | None = None
    error: Exception | None = None


class IdempotencyCache:
    """Bounded, expiring memory of ``(member, Idempotency-Key) -> tx_id``."""

    def __init__(
        self, *, entries_max: int, ttl_s: float, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self._entries_max = entries_max
        self._ttl_s = ttl_s
        self._clock = clock
        self._entries: OrderedDict[tuple[str, str], _Remembered] = OrderedDict()

    def __len__(self) -> int:
        return len(self._entries)

    def _expire(self) -> None:
        now = self._clock()
        while self._entries:
            key, oldest = next(iter(self._entries.items()))
            if now - oldest.created_s < self._ttl_s and len(self._entries) <= self._entries_max:
                return
            del self._entries[key]

    async def run(
        self, scope: tuple[str, str], fingerprint: str, submit: Callable[[], Awaitable[str]]
    ) -> str:
        """The ``tx_id`` of the first request under ``scope``, submitting it if this is it."""
        self._expire()
        known = self._entries.get(scope)
        if known is not None:
            if known.fingerprint != fingerprint:
                raise ApiProblem(
                    422,
                    "idempotency-key-reused",
                    "this Idempotency-Key was used for a different request",
                )
            await known.done.wait()  # Bounded: the first request's admission finishes.
            if known.tx_id is not None:
                return known.tx_id
            assert known.error is not None
            raise known.error
        remembered = _Remembered(fingerprint, self._clock())
        self._entries[scope] = remembered
        try:
            remembered.tx_id = await submit()
        except Exception as error:
            remembered.error = error
            if self._entries.get(scope) is remembered:
                del self._entries[scope]
            raise
        finally:
            remembered.done.set()
        return remembered.tx_id


def custodial_envelope(
    services: NodeServices,
    settings: GatewaySettings,
    custodian: Custodian,
    tx_type: str,
    payload: dict[str, Any],
) -> dict[str, Any]:
    body = {
        "chain_id": services.genesis.chain_id,
        "type": tx_type,
        "sender": custodian.member,
        # Random: two identical requests must be two transactions unless an
        # Idempotency-Key says they are one.
        "nonce": secrets.randbelow(NONCE_MAX + 1),
        "expires_at_ms": settings.clock_ms() + settings.custodial_tx_ttl_ms,
        "payload": payload,
    }
    return sign_transaction(custodian.key, body)


async def answer(
    services: NodeServices, settings: GatewaySettings, tx_id: str, wait: bool
) -> JSONResponse:
    """200 with the receipt once final (``wait``), else 202 with the ``tx_id``."""
    location = {"Location": f"/v1/transactions/{tx_id}"}
    if wait:
        committed = await services.wait_committed(tx_id, settings.wait_timeout_s)
        if committed is not None:
            view = receipt(services.ledger.store, committed)
            return JSONResponse(view.model_dump(mode="json"), status_code=200, headers=location)
    return JSONResponse({"tx_id": tx_id, "status": "pending"}, status_code=202, headers=location)


@dataclass(frozen=True, slots=True, kw_only=True)
class CustodialWrite:
    """Everything a custodial route needs: call it with the type and payload to write."""

    request: Request
    services: NodeServices
    settings: GatewaySettings
    custodian: Custodian
    wait: bool
    idempotency_key: str | None

    async def __call__(self, tx_type: str, payload: dict[str, Any]) -> JSONResponse:
        services, settings = self.services, self.settings

        async def submit() -> str:
            envelope = custodial_envelope(services, settings, self.custodian, tx_type, payload)
            return await services.submit(envelope)

        if self.idempotency_key is None:
            tx_id = await submit()
        else:
            cache: IdempotencyCache = self.request.app.state.idempotency
            fingerprint = hash_canonical(
                {"method": self.request.method, "path": self.request.url.path, "payload": payload}
            )
            scope = (self.custodian.member, self.idempotency_key)
            tx_id = await cache.run(scope, fingerprint, submit)
        return await answer(services, settings, tx_id, self.wait)


async def custodial_write(
    *,
    request: Request,
    custodian: CustodialMember,
    services: Services,
    settings: Settings,
    wait: Wait = None,
    idempotency_key: IdempotencyKey = None,
) -> CustodialWrite:
    return CustodialWrite(
        request=request,
        services=services,
        settings=settings,
        custodian=custodian,
        wait=wait is not None,
        idempotency_key=idempotency_key,
    )


Custodial = Annotated[CustodialWrite, Depends(custodial_write)]
"""A custodial write as the token's own member (403 for auditors and unbound tokens)."""


def drop_none(values: dict[str, Any]) -> dict[str, Any]:
    """A payload without its absent optional fields (the schema refuses ``null``)."""
    return {name: value for name, value in values.items() if value is not None}
