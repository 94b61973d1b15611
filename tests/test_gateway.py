"""The REST gateway in process: every route, every role, auth, idempotency and bad input.

The app runs over :class:`node.local.LocalNode` (a real ledger on a real store that commits
each transaction in a block of its own) through Starlette's test client. The role matrix and
the attack cases are plain functions of an ``httpx.Client`` so that
``tests/test_gateway_live.py`` runs the same ones against real validator processes.
"""

from __future__ import annotations

import json
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import quote

import httpx
import pytest
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse
from typer.testing import CliRunner

from gateway.app import BodyLimit, DirectRoute, create_app
from gateway.auth import (
    TOKENS_FILE_CHECK_S,
    FailureLimiter,
    TokenStore,
    add_token,
    revoke_token,
)
from gateway.client import ApiError, Client
from gateway.deps import GatewaySettings
from gateway.problems import ApiProblem, install_handlers
from gateway.routes.transactions import BATCHES_PATH
from gateway.schemas import BatchAccepted, Receipt
from node.audit import verify_bundle
from node.cli import app
from node.consortium import Consortium, make_consortium
from node.crypto import KeyPair
from node.errors import AdmissionError
from node.local import LocalNode
from node.storage import MemoryStore
from node.tx import sign_transaction

with warnings.catch_warnings():
    # Starlette suggests another HTTP library for its test client; httpx is what we use.
    warnings.simplefilter("ignore")
    from fastapi.testclient import TestClient

MEMBER_A, MEMBER_B, SUPPLIER = "alpine-cheese", "valley-bakery", "dairy-direct"
ROLES = ("member_a", "member_b", "auditor", "operator", "none")

TOKENS = {
    "member_a": "token-a-" + "a" * 40,
    "member_b": "token-b-" + "b" * 40,
    "supplier": "token-s-" + "s" * 40,
    "auditor": "token-au-" + "u" * 40,
    "operator": "token-op-" + "o" * 40,
}


class Clock:
    """Block and wall time for the in-process node, moved only by the test."""

    def __init__(self, start_ms: int) -> None:
        self.now_ms = start_ms

    def __call__(self) -> int:
        return self.now_ms


@dataclass
class Gateway:
    consortium: Consortium
    node: LocalNode
    http: TestClient
    clock: Clock
    limiter_clock: list[float]

    def client(self, role: str) -> Client:
        return Client(token=TOKENS.get(role), http=self.http)


def make_gateway(tokens: TokenStore | None = None) -> Iterator[Gateway]:
    consortium = make_consortium(chain_id="coop-gateway")
    genesis = consortium.genesis
    clock = Clock(genesis.genesis_time_ms + 1_000)
    node = LocalNode(
        consortium, MemoryStore(chain_id=genesis.chain_id, genesis_hash=genesis.hash), clock
    )
    limiter_time = [0.0]
    app = create_app(
        node,
        tokens
        or TokenStore.from_secrets(
            {
                TOKENS["member_a"]: ("member", MEMBER_A),
                TOKENS["member_b"]: ("member", MEMBER_B),
                TOKENS["supplier"]: ("member", SUPPLIER),
                TOKENS["auditor"]: ("auditor", None),
                TOKENS["operator"]: ("operator", None),
            }
        ),
        settings=GatewaySettings(clock_ms=clock),
        limiter=FailureLimiter(clock=lambda: limiter_time[0]),
    )
    with TestClient(app, client=("203.0.113.7", 50000)) as http:
        yield Gateway(consortium, node, http, clock, limiter_time)


@pytest.fixture
def gw() -> Iterator[Gateway]:
    yield from make_gateway()


def headers(token: str | None) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"} if token else {}


def lot(asset_id: str, **extra: Any) -> dict[str, Any]:
    return {
        "asset_id": asset_id,
        "product": "Gruyère AOP wheel",
        "quantity": 40,
        "unit": "kg",
        "origin": "Fribourg, CH",
        **extra,
    }


def envelope(
    key: KeyPair,
    chain_id: str,
    sender: str,
    tx_type: str,
    payload: dict[str, Any],
    *,
    now_ms: int,
) -> dict[str, Any]:
    body = {
        "chain_id": chain_id,
        "type": tx_type,
        "sender": sender,
        "nonce": now_ms,
        "expires_at_ms": now_ms + 600_000,
        "payload": payload,
    }
    return sign_transaction(key, body)


def is_problem(response: httpx.Response, status: int, code: str | None = None) -> bool:
    if response.status_code != status:
        return False
    if not response.headers["content-type"].startswith("application/problem+json"):
        return False
    problem = response.json()
    return {"type", "title", "status", "code"} <= set(problem) and (
        code is None or problem["code"] == code
    )


# --- the role matrix: shared with the live tests --------------------------------------------


@dataclass(frozen=True)
class Ctx:
    """What the matrix and attack cases need from a running gateway."""

    http: httpx.Client
    tokens: dict[str, str | None]
    """Role -> token; the role ``none`` maps to ``None``."""
    chain_id: str
    key_a: KeyPair
    key_b: KeyPair
    now_ms: Callable[[], int]
    tag: str
    """Makes ids unique per run (the live testnet is shared by several tests)."""


def seed(ctx: Ctx) -> dict[str, str]:
    """Member A registers an asset; returns ids the read routes can find."""
    response = ctx.http.post(
        "/v1/assets?wait=commit",
        json=lot(f"{ctx.tag}-seed"),
        headers=headers(ctx.tokens["member_a"]),
    )
    assert response.status_code == 200, response.text
    return {"asset": f"{ctx.tag}-seed", "tx": response.json()["tx_id"]}


def matrix(ctx: Ctx) -> list[tuple[str, str, dict[str, int]]]:
    """(method, path or case name, expected status per role). See run_matrix."""
    read = {"member_a": 200, "member_b": 200, "auditor": 200, "operator": 200, "none": 401}
    custodial = {"member_a": 202, "member_b": 202, "auditor": 403, "operator": 403, "none": 401}
    relay = {"member_a": 202, "member_b": 202, "auditor": 403, "operator": 202, "none": 401}
    return [
        ("GET", "/healthz", dict.fromkeys(ROLES, 200)),
        ("GET", "/v1/status", read),
        ("GET", "/v1/members", read),
        ("GET", "/v1/assets/{asset}", read),
        ("GET", "/v1/assets/{asset}/history", read),
        ("GET", "/v1/transactions/{tx}", read),
        ("GET", "/v1/blocks/1", read),
        ("GET", "/v1/audit/bundle?asset={asset}", read),
        ("GET", "/metrics", {**dict.fromkeys(ROLES, 403), "operator": 200, "none": 401}),
        ("POST", "register", custodial),
        ("POST", "relay", relay),
        ("POST", "observe", {**custodial, "member_a": 200, "member_b": 200}),
    ]


def run_matrix(ctx: Ctx) -> dict[tuple[str, str], int]:
    """Every case for every role; returns the statuses seen, keyed by (case, role)."""
    ids = seed(ctx)
    seen: dict[tuple[str, str], int] = {}
    for method, case, _ in matrix(ctx):
        for role in ROLES:
            auth = headers(ctx.tokens[role])
            unique = f"{ctx.tag}-{role}".replace("_", "-")
            if method == "GET":
                response = ctx.http.get(case.format(**ids), headers=auth)
            elif case == "register":
                response = ctx.http.post("/v1/assets", json=lot(f"{unique}-reg"), headers=auth)
            elif case == "relay":
                signed = envelope(
                    ctx.key_a,
                    ctx.chain_id,
                    MEMBER_A,
                    "asset.register",
                    lot(f"{unique}-relay"),
                    now_ms=ctx.now_ms(),
                )
                response = ctx.http.post("/v1/transactions", json=signed, headers=auth)
            else:
                response = ctx.http.post(
                    f"/v1/assets/{ids['asset']}/observations?wait=commit",
                    json={"kind": "inspection", "data": {"by": role}},
                    headers=auth,
                )
                if response.status_code == 200:
                    # A custodial write signs as the token's own member: B is not the custodian.
                    expected = "ok" if role == "member_a" else "not-custodian-or-auditor"
                    assert response.json()["code"] == expected, (role, response.json())
            if response.status_code >= 400:
                assert is_problem(response, response.status_code), response.text
            seen[(case, role)] = response.status_code
    return seen


def check_matrix(ctx: Ctx) -> None:
    seen = run_matrix(ctx)
    expected = {
        (case, role): status
        for _, case, statuses in matrix(ctx)
        for role, status in statuses.items()
    }
    assert seen == expected


# --- attacks: shared with the live tests ------------------------------------------------------


INJECTION_IDS = [
    "../../etc/passwd",
    "..%2F..%2Fetc%2Fpasswd",
    "x' OR '1'='1",
    "x; DROP TABLE txs;--",
    "<script>alert(1)</script>",
    "%00",
    "a" * 65,
    "lot\nnext",
    "ünïcode",
    "..",
]


def run_attacks(ctx: Ctx) -> None:
    """Every attack is refused with a 4xx problem, writes nothing, and the node stays up."""
    a = headers(ctx.tokens["member_a"])
    now = ctx.now_ms()
    tag = ctx.tag

    def signed(asset: str, **changes: Any) -> dict[str, Any]:
        env = envelope(ctx.key_a, ctx.chain_id, MEMBER_A, "asset.register", lot(asset), now_ms=now)
        return env | changes

    def post(value: Any, expected: int, code: str | None = None) -> None:
        response = ctx.http.post("/v1/transactions", json=value, headers=a)
        assert is_problem(response, expected, code), (expected, code, response.text)

    # A forged signature (valid hex, wrong bytes).
    forged = signed(f"{tag}-forged")
    forged["signature"] = ("0" if forged["signature"][0] != "0" else "1") + forged["signature"][1:]
    post(forged, 422, "bad-signature")
    # A payload tampered with after signing.
    tampered = signed(f"{tag}-tampered")
    tampered["body"] = {**tampered["body"], "payload": lot(f"{tag}-tampered", quantity=41)}
    post(tampered, 422, "bad-signature")
    # A transaction for another chain.
    other_chain = envelope(
        ctx.key_a, "another-chain", MEMBER_A, "asset.register", lot(f"{tag}-chain"), now_ms=now
    )
    post(other_chain, 422, "wrong-chain")
    # Member B's key signing as member A.
    as_other = envelope(
        ctx.key_b, ctx.chain_id, MEMBER_A, "asset.register", lot(f"{tag}-b"), now_ms=now
    )
    post(as_other, 403, "signer-not-authorized")
    # Replay of a committed transaction.
    original = signed(f"{tag}-replayed")
    first = ctx.http.post("/v1/transactions?wait=commit", json=original, headers=a)
    assert first.status_code == 200, first.text
    post(original, 409, "duplicate-tx")
    # An auditor token writing, even a correctly signed envelope.
    response = ctx.http.post(
        "/v1/transactions", json=signed(f"{tag}-audit"), headers=headers(ctx.tokens["auditor"])
    )
    assert is_problem(response, 403, "role-forbidden")
    # Malformed bodies.
    for raw, status in (
        (b"{", 422),
        (b"[]", 422),
        (b'{"body": 1.5}', 422),
        (b"[" * 5000 + b"]" * 5000, 422),
        (b"\xff\xfe", 422),
        (json.dumps(signed(f"{tag}-dup"))[:-1].encode() + b', "signer": "00"}', 422),
        (b"x" * 70_000, 413),
    ):
        response = ctx.http.post(
            "/v1/transactions", content=raw, headers=a | {"content-type": "application/json"}
        )
        assert is_problem(response, status), (raw[:40], response.text)
    for raw, status in (
        (b'{"asset_id": "x", "quantity": "40"}', 422),
        (json.dumps(lot(f"{tag}-extra", sender=MEMBER_B)).encode(), 422),
        (json.dumps(lot(f"{tag}-float", quantity=40.0)).encode(), 422),
        (json.dumps(lot(f"{tag}-meta", metadata={"x": 0.5})).encode(), 422),
        (json.dumps(lot(f"{tag}-big", quantity=10**30)).encode(), 422),
        (b'{"asset_id": ' + b"[" * 5000 + b"]" * 5000 + b"}", 422),
        (b"x" * 70_000, 413),
    ):
        response = ctx.http.post(
            "/v1/assets", content=raw, headers=a | {"content-type": "application/json"}
        )
        assert is_problem(response, status), (raw[:40], response.text)
    # Path traversal and injection strings in ids: refused or not found, never a 5xx.
    for raw_id in INJECTION_IDS:
        # Slashes, dots and percent signs go raw (traversal attempts); the rest is encoded.
        bad = quote(raw_id, safe="/.%")
        for method, path in (
            ("GET", f"/v1/assets/{bad}"),
            ("GET", f"/v1/assets/{bad}/history"),
            ("GET", f"/v1/shipments/{bad}"),
            ("GET", f"/v1/purchases/{bad}"),
            ("GET", f"/v1/transactions/{bad}"),
            ("GET", f"/v1/blocks/{bad}"),
            ("POST", f"/v1/assets/{bad}/transfer"),
            ("POST", f"/v1/shipments/{bad}/receive"),
        ):
            response = ctx.http.request(
                method, path, headers=a, json={"to": MEMBER_B} if method == "POST" else None
            )
            assert 400 <= response.status_code < 500, (method, path, response.status_code)
            assert is_problem(response, response.status_code)
        response = ctx.http.get("/v1/audit/bundle", params={"asset": raw_id}, headers=a)
        assert response.status_code in (404, 422), response.text
        assert is_problem(response, response.status_code)
    # Nothing was written.
    for asset in ("forged", "tampered", "chain", "b", "audit", "dup", "extra", "float", "meta"):
        response = ctx.http.get(f"/v1/assets/{tag}-{asset}", headers=a)
        assert is_problem(response, 404, "unknown-asset"), (asset, response.text)
    # The node is healthy and still takes writes.
    assert ctx.http.get("/healthz").status_code == 200
    ok = ctx.http.post("/v1/assets?wait=commit", json=lot(f"{tag}-after"), headers=a)
    assert ok.status_code == 200 and ok.json()["code"] == "ok", ok.text


def local_ctx(gw: Gateway, tag: str = "t") -> Ctx:
    return Ctx(
        http=gw.http,
        tokens={**{role: TOKENS.get(role) for role in ROLES}, "none": None},
        chain_id=gw.consortium.genesis.chain_id,
        key_a=gw.consortium.member_keys[MEMBER_A],
        key_b=gw.consortium.member_keys[MEMBER_B],
        now_ms=gw.clock,
        tag=tag,
    )


# --- tests ------------------------------------------------------------------------------------


def test_role_matrix_in_process(gw: Gateway) -> None:
    check_matrix(local_ctx(gw))


def test_attacks_in_process(gw: Gateway) -> None:
    run_attacks(local_ctx(gw))


def test_provenance_story_through_the_client(gw: Gateway) -> None:
    cheese, bakery = gw.client("member_a"), gw.client("member_b")
    registered = cheese.register_asset(
        "lot-1", "Gruyère AOP wheel", 40, "kg", "Fribourg, CH", metadata={"aop": True}, wait=True
    )
    assert isinstance(registered, Receipt) and registered.code == "ok"
    assert registered.proof.tree_size == 1
    flour = bakery.register_asset("flour-1", "Rye flour", 250, "kg", "Emmental, CH", wait=True)
    assert isinstance(flour, Receipt) and flour.code == "ok"
    shipped = cheese.create_shipment("ship-1", ["lot-1"], MEMBER_B, wait=True)
    assert isinstance(shipped, Receipt) and shipped.code == "ok"
    assert cheese.shipment("ship-1").status == "in-transit"
    assert cheese.asset("lot-1").shipment_id == "ship-1"
    received = bakery.receive_shipment("ship-1", wait=True)
    assert isinstance(received, Receipt) and received.code == "ok"
    view = cheese.asset("lot-1")
    assert (view.owner, view.custodian, view.status) == (MEMBER_A, MEMBER_B, "active")
    bought = cheese.transfer_asset("lot-1", MEMBER_B, wait=True)
    assert isinstance(bought, Receipt) and bought.code == "ok"
    output = {"asset_id": "bread-1", "product": "Cheese bread", "quantity": 180, "unit": "loaf"}
    made = bakery.transform_asset("lot-1", [output], additional_inputs=["flour-1"], wait=True)
    assert isinstance(made, Receipt) and made.code == "ok"
    bread = bakery.asset("bread-1")
    assert bread.inputs == ["lot-1", "flour-1"]
    assert set(bread.ancestors) == {"lot-1", "flour-1"}
    assert bakery.asset("lot-1").outputs == ["bread-1"]
    observed = gw.client("member_b").observe_asset(
        "bread-1", "temperature", {"celsius": 4}, wait=True
    )
    assert isinstance(observed, Receipt) and observed.code == "ok"
    history = list(cheese.asset_history("lot-1", page_size=1))
    assert [event.type for event in history] == [
        "asset.register",
        "shipment.create",
        "shipment.receive",
        "asset.transfer",
        "asset.transform",
    ]
    assert [event.seq for event in history] == [0, 1, 2, 3, 4]
    assert all(event.timestamp_ms > 0 for event in history)
    auditor = gw.client("auditor")
    bundle = auditor.audit_bundle("bread-1", lineage=True)
    report = verify_bundle(bundle, gw.consortium.genesis)
    assert set(report.assets) == {"bread-1", "lot-1", "flour-1"}
    tx = auditor.transaction(observed.tx_id)
    assert tx.type == "asset.observe" and tx.envelope["body"]["sender"] == MEMBER_B
    block = auditor.block(tx.height)
    assert block.block_hash == tx.block_hash and block.txs[0].tx_id == tx.tx_id
    assert block.commit["block_hash"] == block.block_hash
    status = gw.client("operator").status()
    assert status.height == block.height and all(v.connected for v in status.validators)
    members = auditor.members(page_size=2)
    assert {m.id for m in members} == {m.id for m in gw.consortium.genesis.members}
    cancelled_ship = bakery.create_shipment("ship-2", ["bread-1"], MEMBER_A, wait=True)
    assert isinstance(cancelled_ship, Receipt) and cancelled_ship.code == "ok"
    cancelled = bakery.cancel_shipment("ship-2", wait=True)
    assert isinstance(cancelled, Receipt) and cancelled.code == "ok"
    assert bakery.shipment("ship-2").status == "cancelled"


def test_joint_purchase_shows_tiers_and_costs(gw: Gateway) -> None:
    coffee, bakery, supplier = gw.client("member_a"), gw.client("member_b"), gw.client("supplier")
    deadline = gw.clock.now_ms + 60_000
    opened = coffee.open_purchase(
        "milk-1",
        supplier=SUPPLIER,
        item="Whole milk",
        unit="litre",
        tiers=[{"min_quantity": 100, "unit_price": 120}, {"min_quantity": 500, "unit_price": 95}],
        min_total=100,
        deadline_ms=deadline,
        wait=True,
    )
    assert isinstance(opened, Receipt) and opened.code == "ok"
    coffee.commit_to_purchase("milk-1", 300, wait=True)
    bakery.commit_to_purchase("milk-1", 250, wait=True)
    view = coffee.purchase("milk-1")
    assert (view.total, view.tier_reached, view.unit_price, view.costs_final) == (550, 1, 95, False)
    early = coffee.close_purchase("milk-1", wait=True)
    assert isinstance(early, Receipt) and early.code == "deadline-not-reached"
    gw.clock.now_ms = deadline + 1
    closed = coffee.close_purchase("milk-1", wait=True)
    assert isinstance(closed, Receipt) and closed.code == "ok"
    confirmed = supplier.confirm_purchase("milk-1", wait=True)
    assert isinstance(confirmed, Receipt) and confirmed.code == "ok"
    view = coffee.purchase("milk-1")
    assert view.status == "confirmed" and view.costs_final
    assert {(c.member, c.cost) for c in view.commitments} == {
        (MEMBER_A, 300 * 95),
        (MEMBER_B, 250 * 95),
    }


def test_without_wait_a_write_is_accepted_with_its_tx_id(gw: Gateway) -> None:
    response = gw.http.post("/v1/assets", json=lot("lot-x"), headers=headers(TOKENS["member_a"]))
    assert response.status_code == 202
    tx_id = response.json()["tx_id"]
    assert response.headers["location"] == f"/v1/transactions/{tx_id}"
    assert gw.client("auditor").transaction(tx_id).code == "ok"


def test_idempotency_key_returns_the_first_result(gw: Gateway) -> None:
    cheese = gw.client("member_a")
    first = cheese.register_asset("lot-i", "Cheese", 1, "kg", "CH", idempotency_key="k-1")
    again = cheese.register_asset("lot-i", "Cheese", 1, "kg", "CH", idempotency_key="k-1")
    waited = cheese.register_asset(
        "lot-i", "Cheese", 1, "kg", "CH", idempotency_key="k-1", wait=True
    )
    assert first.tx_id == again.tx_id == waited.tx_id
    assert isinstance(waited, Receipt) and waited.code == "ok"
    assert len(list(cheese.asset_history("lot-i"))) == 1
    with pytest.raises(ApiError) as refused:
        cheese.register_asset("lot-j", "Cheese", 1, "kg", "CH", idempotency_key="k-1")
    assert (refused.value.status, refused.value.code) == (422, "idempotency-key-reused")
    # The key belongs to the member: another member's identical key is a new request.
    other = gw.client("member_b").register_asset(
        "lot-k", "Cheese", 1, "kg", "CH", idempotency_key="k-1", wait=True
    )
    assert other.tx_id != first.tx_id
    # Without a key, a retry is a second transaction; the rules refuse it in its receipt.
    retry = cheese.register_asset("lot-i", "Cheese", 1, "kg", "CH", wait=True)
    assert isinstance(retry, Receipt) and retry.code == "asset-exists"
    bad = gw.http.post(
        "/v1/assets",
        json=lot("lot-z"),
        headers=headers(TOKENS["member_a"]) | {"Idempotency-Key": "bad key with spaces"},
    )
    assert is_problem(bad, 422, "invalid-request")


def test_auth_failures_are_rate_limited_per_client(gw: Gateway) -> None:
    good = headers(TOKENS["auditor"])
    for _ in range(20):
        assert is_problem(gw.http.get("/v1/status", headers=headers("guess")), 401, "invalid-token")
    limited = gw.http.get("/v1/status", headers=good)
    assert is_problem(limited, 429, "too-many-auth-failures")
    assert int(limited.headers["retry-after"]) > 0
    gw.limiter_clock[0] += 61
    assert gw.http.get("/v1/status", headers=good).status_code == 200
    missing = gw.http.get("/v1/status")
    assert is_problem(missing, 401, "unauthenticated")
    assert missing.headers["www-authenticate"] == "Bearer"


def test_limiter_table_is_bounded() -> None:
    limiter = FailureLimiter(clients_max=3, clock=lambda: 0.0)
    for client in ("a", "b", "c", "d", "e"):
        limiter.record_failure(client)
    assert len(limiter) == 3


def test_tokens_file_changes_apply_without_restart(tmp_path: Path) -> None:
    path = tmp_path / "tokens.json"
    issued = add_token(path, role="member", member=MEMBER_A)
    assert oct(path.stat().st_mode & 0o777) == "0o600"
    assert issued.secret not in path.read_text()
    now = [0.0]
    for gw in make_gateway(TokenStore(path, clock=lambda: now[0])):
        auth = headers(issued.secret)
        assert gw.http.get("/v1/status", headers=auth).status_code == 200
        # A new token works at once: a token not in the table makes the node look again.
        auditor = add_token(path, role="auditor", member=None, token_id="auditor-1")
        assert gw.http.get("/v1/status", headers=headers(auditor.secret)).status_code == 200
        # A revocation: the file is looked at once per TOKENS_FILE_CHECK_S for known tokens.
        revoke_token(path, issued.entry.id)
        assert gw.http.get("/v1/status", headers=auth).status_code == 200
        now[0] += TOKENS_FILE_CHECK_S
        assert is_problem(gw.http.get("/v1/status", headers=auth), 401, "invalid-token")
        # A broken hand edit keeps the last good table instead of locking everyone out.
        path.write_text("{not json")
        now[0] += TOKENS_FILE_CHECK_S
        assert gw.http.get("/v1/status", headers=headers(auditor.secret)).status_code == 200


def test_token_cli_adds_lists_and_revokes(tmp_path: Path) -> None:
    path = str(tmp_path / "tokens.json")
    runner = CliRunner()
    added = runner.invoke(
        app,
        [
            "token",
            "add",
            "--tokens-file",
            path,
            "--role",
            "member",
            "--member",
            MEMBER_A,
            "--id",
            "cheese-erp",
        ],
    )
    assert added.exit_code == 0, added.output
    secret = added.output.strip().splitlines()[-1]
    assert secret.startswith("coop_")
    now = [0.0]
    store = TokenStore(Path(path), clock=lambda: now[0])
    principal = store.authenticate(secret)
    assert principal is not None and principal.member == MEMBER_A
    listed = runner.invoke(app, ["token", "list", "--tokens-file", path])
    assert "cheese-erp" in listed.output and secret not in listed.output
    revoked = runner.invoke(app, ["token", "revoke", "--tokens-file", path, "cheese-erp"])
    assert revoked.exit_code == 0, revoked.output
    now[0] += TOKENS_FILE_CHECK_S
    assert store.authenticate(secret) is None
    refused = runner.invoke(app, ["token", "add", "--tokens-file", path, "--role", "member"])
    assert refused.exit_code != 0


def test_custodial_writes_need_a_key_the_node_holds(gw: Gateway) -> None:
    del gw.consortium.member_keys[MEMBER_B]
    response = gw.http.post("/v1/assets", json=lot("lot-n"), headers=headers(TOKENS["member_b"]))
    assert is_problem(response, 403, "no-custodial-key")


def test_reads_of_unknown_things_are_404_problems(gw: Gateway) -> None:
    auth = headers(TOKENS["auditor"])
    for path, code in (
        ("/v1/assets/nope", "unknown-asset"),
        ("/v1/assets/nope/history", "unknown-asset"),
        ("/v1/shipments/nope", "unknown-shipment"),
        ("/v1/purchases/nope", "unknown-purchase"),
        ("/v1/transactions/" + "0" * 64, "not-found"),
        ("/v1/blocks/99", "not-found"),
        ("/v1/audit/bundle?asset=nope", "unknown-asset"),
        ("/v1/nothing-here", "not-found"),
    ):
        assert is_problem(gw.http.get(path, headers=auth), 404, code), path
    assert is_problem(gw.http.get("/v1/assets/x/history?after=zz", headers=auth), 422)
    assert is_problem(gw.http.get("/v1/members?limit=0", headers=auth), 422)
    assert is_problem(gw.http.get("/v1/members?limit=501", headers=auth), 422)
    assert is_problem(gw.http.delete("/v1/members", headers=auth), 405, "method-not-allowed")


def test_openapi_declares_every_route_with_its_errors(gw: Gateway) -> None:
    document = gw.http.get("/openapi.json").json()
    assert gw.http.get("/docs").status_code == 200
    operations = [
        (path, method, operation)
        for path, item in document["paths"].items()
        for method, operation in item.items()
    ]
    assert len(operations) == 24
    for path, method, operation in operations:
        responses = operation["responses"]
        success = [status for status in responses if status.startswith("2")]
        assert success, (path, method)
        media = "text/plain" if path == "/metrics" else "application/json"
        for status in success:
            assert media in responses[status]["content"], (path, method, status)
        if path != "/healthz":
            assert "401" in responses and "422" in responses, (path, method)
            assert responses["401"]["content"]["application/problem+json"]["schema"] == {
                "$ref": "#/components/schemas/Problem"
            }
        if method == "post":
            # A batch answers 200 with per-envelope outcomes; single writes may answer 202.
            expected = {"200", "403", "413"} | (
                {"202"} if path != "/v1/transaction-batches" else set()
            )
            assert expected <= set(responses), path
    submit = document["paths"]["/v1/transactions"]["post"]
    assert submit["requestBody"]["content"]["application/json"]["schema"] == {
        "$ref": "#/components/schemas/Envelope"
    }
    assert "Envelope" in document["components"]["schemas"]
    assert document["components"]["securitySchemes"]["HTTPBearer"]["scheme"] == "bearer"
    for path, method, operation in operations:
        if path not in ("/healthz", "/openapi.json"):
            assert operation.get("security") == [{"HTTPBearer": []}], (path, method)
    batch = document["paths"]["/v1/transaction-batches"]["post"]
    assert batch["responses"]["200"]["content"]["application/json"]["schema"] == {
        "$ref": "#/components/schemas/BatchAccepted"
    }


def test_direct_route_answers_ahead_of_the_router_and_maps_errors_as_the_app_does() -> None:
    """gateway.app.DirectRoute: its method and path reach the endpoint without FastAPI's
    routing; what the endpoint raises gets the app's problem+json (the handler registered
    for the nearest class, or the logged 500); everything else goes on to the router."""

    async def direct(request: Request) -> JSONResponse:
        body = await request.body()
        if body == b"problem":
            raise ApiProblem(409, "idempotency-key-reused", "seen", {"X-Seen": "1"})
        if body == b"rule":
            raise AdmissionError("mempool-full", "full")  # a subclass of a registered class
        if body == b"boom":
            raise RuntimeError("unexpected")
        return JSONResponse({"answered_by": "direct", "body": body.decode()})

    app = FastAPI()
    install_handlers(app)

    @app.post("/direct")
    async def routed() -> dict[str, str]:
        return {"answered_by": "router"}

    @app.get("/other")
    async def other() -> dict[str, str]:
        return {"answered_by": "router"}

    app.add_middleware(DirectRoute, method="POST", path="/direct", endpoint=direct)
    with TestClient(app, raise_server_exceptions=False) as http:
        assert http.post("/direct", content=b"hi").json() == {"answered_by": "direct", "body": "hi"}
        assert http.get("/other").json() == {"answered_by": "router"}
        assert is_problem(http.get("/direct"), 405, "method-not-allowed")
        problem = http.post("/direct", content=b"problem")
        assert is_problem(problem, 409, "idempotency-key-reused")
        assert problem.json()["instance"] == "/direct" and problem.headers["x-seen"] == "1"
        assert is_problem(http.post("/direct", content=b"rule"), 503, "mempool-full")
        assert is_problem(http.post("/direct", content=b"boom"), 500, "internal-error")


def test_batch_submission_admits_each_envelope_on_its_own(gw: Gateway) -> None:
    key = gw.consortium.member_keys[MEMBER_A]
    now = gw.clock.now_ms
    good = [
        envelope(key, "coop-gateway", MEMBER_A, "asset.register", lot(f"batch-{i}"), now_ms=now + i)
        for i in range(3)
    ]
    tampered_body = {**good[0]["body"], "payload": {**good[0]["body"]["payload"], "quantity": 999}}
    forged = {**good[0], "body": tampered_body}
    body = {"envelopes": [*good, forged, good[1]]}
    response = gw.http.post(
        "/v1/transaction-batches", json=body, headers=headers(TOKENS["member_b"])
    )
    assert response.status_code == 200, response.text
    results = response.json()["results"]
    assert [r["status"] for r in results] == ["pending"] * 3 + ["refused"] * 2
    assert [r["code"] for r in results[3:]] == ["bad-signature", "duplicate-tx"]
    assert response.json()["admitted"] == 3
    # Served by DirectRoute inside BodyLimit (the 413 below would not hold outside it).
    app = gw.http.app
    assert isinstance(app, FastAPI)
    # user_middleware lists the outermost first.
    layers: list[tuple[object, object]] = [
        (m.cls, m.kwargs.get("path")) for m in app.user_middleware
    ]
    assert layers.index((DirectRoute, BATCHES_PATH)) > layers.index((BodyLimit, None))
    # The route serialises its model itself (gateway.routes.transactions.submit_batch):
    # every field, null included, as the declared response model has them.
    assert BatchAccepted.model_validate(response.json()).model_dump() == response.json()
    assert set(results[0]) == set(results[3]) == {"tx_id", "status", "code", "detail"}
    assert results[3]["tx_id"] is None and results[0]["code"] is None
    for result in results[:3]:
        assert (
            gw.http.get(
                f"/v1/transactions/{result['tx_id']}", headers=headers(TOKENS["auditor"])
            ).status_code
            == 200
        )
    auditor = gw.http.post("/v1/transaction-batches", json=body, headers=headers(TOKENS["auditor"]))
    assert is_problem(auditor, 403, "role-forbidden")
    missing = gw.http.post("/v1/transaction-batches", json=body)
    assert is_problem(missing, 401, "unauthenticated")
    assert missing.headers["www-authenticate"] == "Bearer"
    basic = gw.http.post(
        "/v1/transaction-batches", json=body, headers={"Authorization": "Basic bWU6cHc="}
    )
    assert is_problem(basic, 401, "unauthenticated")
    guess = gw.http.post("/v1/transaction-batches", json=body, headers=headers("guess"))
    assert is_problem(guess, 401, "invalid-token")
    too_many = gw.http.post(
        "/v1/transaction-batches",
        json={"envelopes": [good[0]] * 501},
        headers=headers(TOKENS["member_a"]),
    )
    assert is_problem(too_many, 422)
    huge = gw.http.post(
        "/v1/transaction-batches",
        content=b'{"envelopes": ["' + b"x" * (5 * 1024 * 1024) + b'"]}',
        headers={**headers(TOKENS["member_a"]), "Content-Type": "application/json"},
    )
    assert is_problem(huge, 413, "body-too-large")
    single = gw.http.post(
        "/v1/transactions",
        content=b'{"body": "' + b"x" * (100 * 1024) + b'"}',
        headers={**headers(TOKENS["member_a"]), "Content-Type": "application/json"},
    )
    assert is_problem(single, 413, "body-too-large")
