"""A small typed client of the REST API, used by the CLI, the tests and the demo.

::

    with Client("http://127.0.0.1:26601", token) as api:
        receipt = api.register_asset("lot-7", "Gruyère", 40, "kg", "Fribourg", wait=True)
        print(api.asset("lot-7").custodian)

Every method returns a response schema of :mod:`gateway.schemas`; an error response raises
:class:`ApiError` carrying the problem's ``status``, stable ``code`` and ``detail``. Pass
``http=`` to use another ``httpx.Client`` (e.g. an in-process test client).
"""

from __future__ import annotations

from collections.abc import Iterator
from types import TracebackType
from typing import Any, Self, TypeVar

import httpx
from pydantic import BaseModel

from gateway.schemas import (
    Accepted,
    AssetView,
    BlockView,
    Health,
    HistoryEvent,
    HistoryPage,
    MembersPage,
    MemberView,
    PurchaseView,
    Receipt,
    ShipmentView,
    StatusView,
    TransactionView,
)

DEFAULT_TIMEOUT_S = 30.0
"""Above the gateway's longest commit wait (10 s), so a waited write answers first."""

Model = TypeVar("Model", bound=BaseModel)


class ApiError(Exception):
    """An error response (RFC 9457 problem+json) from the gateway."""

    def __init__(self, status: int, code: str, detail: str, problem: dict[str, Any]) -> None:
        super().__init__(f"{status} {code}: {detail}" if detail else f"{status} {code}")
        self.status = status
        self.code = code
        self.detail = detail
        self.problem = problem


class Client:
    def __init__(
        self,
        base_url: str = "",
        token: str | None = None,
        *,
        http: httpx.Client | None = None,
        timeout_s: float = DEFAULT_TIMEOUT_S,
    ) -> None:
        self._owned = http is None
        self._http = http or httpx.Client(base_url=base_url, timeout=timeout_s)
        self._headers = {"Authorization": f"Bearer {token}"} if token else {}

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        trace: TracebackType | None,
    ) -> None:
        self.close()

    def close(self) -> None:
        if self._owned:
            self._http.close()

    # --- plumbing ---------------------------------------------------------------------------

    def request(
        self,
        method: str,
        path: str,
        *,
        json: Any = None,
        params: dict[str, Any] | None = None,
        headers: dict[str, str] | None = None,
    ) -> httpx.Response:
        response = self._http.request(
            method, path, json=json, params=params, headers={**self._headers, **(headers or {})}
        )
        if response.status_code >= 400:
            try:
                problem = response.json()
            except ValueError:
                problem = {}
            if not isinstance(problem, dict):
                problem = {}
            raise ApiError(
                response.status_code,
                str(problem.get("code", "http-error")),
                str(problem.get("detail", response.text[:200])),
                problem,
            )
        return response

    def _get(self, path: str, model: type[Model], params: dict[str, Any] | None = None) -> Model:
        return model.model_validate(self.request("GET", path, params=params).json())

    def _write(
        self,
        path: str,
        body: dict[str, Any] | None,
        *,
        wait: bool,
        idempotency_key: str | None,
    ) -> Receipt | Accepted:
        headers = {"Idempotency-Key": idempotency_key} if idempotency_key else None
        params = {"wait": "commit"} if wait else None
        response = self.request("POST", path, json=body, params=params, headers=headers)
        if response.status_code == 200:
            return Receipt.model_validate(response.json())
        return Accepted.model_validate(response.json())

    # --- writes -------------------------------------------------------------------------------

    def submit(self, envelope: dict[str, Any], *, wait: bool = False) -> Receipt | Accepted:
        """Relay a client-signed envelope (``node.tx.sign_transaction``)."""
        return self._write("/v1/transactions", envelope, wait=wait, idempotency_key=None)

    def register_asset(
        self,
        asset_id: str,
        product: str,
        quantity: int,
        unit: str,
        origin: str,
        *,
        metadata: dict[str, Any] | None = None,
        wait: bool = False,
        idempotency_key: str | None = None,
    ) -> Receipt | Accepted:
        body: dict[str, Any] = {
            "asset_id": asset_id,
            "product": product,
            "quantity": quantity,
            "unit": unit,
            "origin": origin,
        }
        if metadata is not None:
            body["metadata"] = metadata
        return self._write("/v1/assets", body, wait=wait, idempotency_key=idempotency_key)

    def transfer_asset(
        self, asset_id: str, to: str, *, wait: bool = False, idempotency_key: str | None = None
    ) -> Receipt | Accepted:
        return self._write(
            f"/v1/assets/{asset_id}/transfer",
            {"to": to},
            wait=wait,
            idempotency_key=idempotency_key,
        )

    def transform_asset(
        self,
        asset_id: str,
        outputs: list[dict[str, Any]],
        *,
        additional_inputs: list[str] | None = None,
        wait: bool = False,
        idempotency_key: str | None = None,
    ) -> Receipt | Accepted:
        body = {"outputs": outputs, "additional_inputs": additional_inputs or []}
        return self._write(
            f"/v1/assets/{asset_id}/transform", body, wait=wait, idempotency_key=idempotency_key
        )

    def observe_asset(
        self,
        asset_id: str,
        kind: str,
        data: dict[str, Any],
        *,
        wait: bool = False,
        idempotency_key: str | None = None,
    ) -> Receipt | Accepted:
        return self._write(
            f"/v1/assets/{asset_id}/observations",
            {"kind": kind, "data": data},
            wait=wait,
            idempotency_key=idempotency_key,
        )

    def create_shipment(
        self,
        shipment_id: str,
        asset_ids: list[str],
        to: str,
        *,
        purchase_id: str | None = None,
        wait: bool = False,
        idempotency_key: str | None = None,
    ) -> Receipt | Accepted:
        body: dict[str, Any] = {"shipment_id": shipment_id, "asset_ids": asset_ids, "to": to}
        if purchase_id is not None:
            body["purchase_id"] = purchase_id
        return self._write("/v1/shipments", body, wait=wait, idempotency_key=idempotency_key)

    def receive_shipment(
        self, shipment_id: str, *, wait: bool = False, idempotency_key: str | None = None
    ) -> Receipt | Accepted:
        return self._write(
            f"/v1/shipments/{shipment_id}/receive",
            None,
            wait=wait,
            idempotency_key=idempotency_key,
        )

    def cancel_shipment(
        self, shipment_id: str, *, wait: bool = False, idempotency_key: str | None = None
    ) -> Receipt | Accepted:
        return self._write(
            f"/v1/shipments/{shipment_id}/cancel",
            None,
            wait=wait,
            idempotency_key=idempotency_key,
        )

    def open_purchase(
        self,
        purchase_id: str,
        *,
        supplier: str,
        item: str,
        unit: str,
        tiers: list[dict[str, int]],
        min_total: int,
        deadline_ms: int,
        wait: bool = False,
        idempotency_key: str | None = None,
    ) -> Receipt | Accepted:
        body = {
            "purchase_id": purchase_id,
            "supplier": supplier,
            "item": item,
            "unit": unit,
            "tiers": tiers,
            "min_total": min_total,
            "deadline_ms": deadline_ms,
        }
        return self._write("/v1/purchases", body, wait=wait, idempotency_key=idempotency_key)

    def commit_to_purchase(
        self,
        purchase_id: str,
        quantity: int,
        *,
        wait: bool = False,
        idempotency_key: str | None = None,
    ) -> Receipt | Accepted:
        return self._write(
            f"/v1/purchases/{purchase_id}/commitments",
            {"quantity": quantity},
            wait=wait,
            idempotency_key=idempotency_key,
        )

    def close_purchase(
        self, purchase_id: str, *, wait: bool = False, idempotency_key: str | None = None
    ) -> Receipt | Accepted:
        return self._write(
            f"/v1/purchases/{purchase_id}/close", None, wait=wait, idempotency_key=idempotency_key
        )

    def confirm_purchase(
        self, purchase_id: str, *, wait: bool = False, idempotency_key: str | None = None
    ) -> Receipt | Accepted:
        return self._write(
            f"/v1/purchases/{purchase_id}/confirm",
            None,
            wait=wait,
            idempotency_key=idempotency_key,
        )

    # --- reads --------------------------------------------------------------------------------

    def health(self) -> Health:
        return self._get("/healthz", Health)

    def status(self) -> StatusView:
        return self._get("/v1/status", StatusView)

    def asset(self, asset_id: str) -> AssetView:
        return self._get(f"/v1/assets/{asset_id}", AssetView)

    def asset_history_page(
        self, asset_id: str, *, after: str | None = None, limit: int = 100
    ) -> HistoryPage:
        params: dict[str, Any] = {"limit": limit}
        if after is not None:
            params["after"] = after
        return self._get(f"/v1/assets/{asset_id}/history", HistoryPage, params)

    def asset_history(self, asset_id: str, *, page_size: int = 100) -> Iterator[HistoryEvent]:
        """Every event of the asset, following the pages."""
        after: str | None = None
        while True:
            page = self.asset_history_page(asset_id, after=after, limit=page_size)
            yield from page.items
            if page.next is None:
                return
            after = page.next

    def shipment(self, shipment_id: str) -> ShipmentView:
        return self._get(f"/v1/shipments/{shipment_id}", ShipmentView)

    def purchase(self, purchase_id: str) -> PurchaseView:
        return self._get(f"/v1/purchases/{purchase_id}", PurchaseView)

    def members(self, *, page_size: int = 100) -> list[MemberView]:
        found: list[MemberView] = []
        after: str | None = None
        while True:
            params: dict[str, Any] = {"limit": page_size}
            if after is not None:
                params["after"] = after
            page = self._get("/v1/members", MembersPage, params)
            found.extend(page.items)
            if page.next is None:
                return found
            after = page.next

    def transaction(self, tx_id: str) -> TransactionView:
        return self._get(f"/v1/transactions/{tx_id}", TransactionView)

    def block(self, height: int) -> BlockView:
        return self._get(f"/v1/blocks/{height}", BlockView)

    def audit_bundle(self, asset_id: str, *, lineage: bool = False) -> dict[str, Any]:
        """The raw bundle (verify it with :func:`node.audit.verify_bundle`)."""
        params = {"asset": asset_id, "lineage": "true" if lineage else "false"}
        bundle: dict[str, Any] = self.request("GET", "/v1/audit/bundle", params=params).json()
        return bundle
