"""Transaction admission: every refusal has its code and names the field; dedup is bounded."""

from __future__ import annotations

import copy
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from node.codec import canonical
from node.consortium import make_consortium
from node.crypto import KeyPair
from node.errors import AdmissionError
from node.limits import TX_EXPIRY_MS_MAX
from node.tx import (
    DedupIndex,
    check_signature,
    check_window,
    parse_envelope,
    parse_envelope_bytes,
    sign_transaction,
    tx_id_of,
)
from node.validation import check_text

NOW = 1_800_000_000_000
CONSORTIUM = make_consortium()


def envelope(
    kind: str = "asset.register", payload: dict[str, Any] | None = None, **body: Any
) -> dict[str, Any]:
    full = {
        "chain_id": "coop-dev",
        "type": kind,
        "sender": "alpine-cheese",
        "nonce": 7,
        "expires_at_ms": NOW + 60_000,
        "payload": payload
        if payload is not None
        else {
            "asset_id": "lot-1",
            "product": "cheese",
            "quantity": 5,
            "unit": "kg",
            "origin": "CH",
        },
        **body,
    }
    return sign_transaction(CONSORTIUM.member_keys["alpine-cheese"], full)


def refused(code: str, candidate: object, fragment: str = "") -> None:
    with pytest.raises(AdmissionError) as caught:
        parse_envelope(candidate)
    assert caught.value.code == code
    assert fragment in caught.value.detail


def test_tx_id_is_the_hash_of_the_canonical_body() -> None:
    good = envelope()
    tx = parse_envelope(good)
    assert tx.tx_id == tx_id_of(good["body"]) and len(tx.tx_id) == 64
    assert tx.size_bytes == len(canonical(good))
    check_signature(tx)


def test_envelope_shape() -> None:
    good = envelope()
    refused("malformed-transaction", [], "must be an object")
    refused("malformed-transaction", {**good, "extra": 1}, "envelope.extra: unknown field")
    refused(
        "malformed-transaction",
        {"body": good["body"], "signer": good["signer"]},
        "signature: missing",
    )
    refused("malformed-transaction", {**good, "signer": "AB" * 32}, "signer")
    body = dict(good["body"])
    del body["nonce"]
    refused("malformed-transaction", {**good, "body": body}, "body.nonce: missing")
    refused(
        "malformed-transaction", {**good, "body": {**good["body"], "nonce": True}}, "body.nonce"
    )
    refused(
        "malformed-transaction",
        {**good, "body": {**good["body"], "sender": "a/../b"}},
        "body.sender",
    )
    refused("unknown-type", envelope(kind="asset.steal"), "asset.steal")


@pytest.mark.parametrize(
    ("kind", "payload", "fragment"),
    [
        ("asset.register", {"asset_id": "x"}, "payload.origin: missing"),
        (
            "asset.register",
            {"asset_id": "x", "product": "p", "quantity": 0, "unit": "kg", "origin": "o"},
            "payload.quantity",
        ),
        (
            "asset.register",
            {
                "asset_id": "x",
                "product": "p",
                "quantity": 1,
                "unit": "kg",
                "origin": "o",
                "color": 1,
            },
            "payload.color: unknown field",
        ),
        (
            "asset.register",
            {"asset_id": "<script>", "product": "p", "quantity": 1, "unit": "kg", "origin": "o"},
            "payload.asset_id",
        ),
        (
            "asset.register",
            {"asset_id": "x", "product": "a\x00b", "quantity": 1, "unit": "kg", "origin": "o"},
            "control characters",
        ),
        ("asset.transfer", {"asset_id": "x", "to": ""}, "payload.to"),
        (
            "asset.transform",
            {"inputs": ["a", "a"], "outputs": []},
            "payload.inputs: lists an id twice",
        ),
        (
            "asset.transform",
            {
                "inputs": ["a"],
                "outputs": [{"asset_id": "a", "product": "p", "quantity": 1, "unit": "u"}],
            },
            "repeats an input",
        ),
        ("shipment.create", {"shipment_id": "s", "asset_ids": [], "to": "b"}, "payload.asset_ids"),
        (
            "asset.observe",
            {"asset_id": "x", "kind": "t", "data": []},
            "payload.data: must be an object",
        ),
        (
            "purchase.open",
            {
                "purchase_id": "p",
                "supplier": "s",
                "item": "i",
                "unit": "u",
                "min_total": 5,
                "deadline_ms": 1,
                "tiers": [
                    {"min_quantity": 10, "unit_price": 5},
                    {"min_quantity": 10, "unit_price": 4},
                ],
            },
            "strictly increase",
        ),
        (
            "purchase.open",
            {
                "purchase_id": "p",
                "supplier": "s",
                "item": "i",
                "unit": "u",
                "min_total": 50,
                "deadline_ms": 1,
                "tiers": [
                    {"min_quantity": 10, "unit_price": 5},
                    {"min_quantity": 20, "unit_price": 6},
                ],
            },
            "may not cost more",
        ),
        (
            "purchase.open",
            {
                "purchase_id": "p",
                "supplier": "s",
                "item": "i",
                "unit": "u",
                "min_total": 5,
                "deadline_ms": 1,
                "tiers": [{"min_quantity": 10, "unit_price": 5}],
            },
            "first tier",
        ),
        ("purchase.commit", {"purchase_id": "p", "quantity": -1}, "payload.quantity"),
        (
            "member.propose",
            {
                "action": "add",
                "member": {
                    "id": "x",
                    "name": "X",
                    "roles": ["member"],
                    "public_keys": ["01" + "00" * 31],
                },
            },
            "payload.member.public_keys[0]",
        ),
        ("member.propose", {"action": "promote", "member": {}}, "payload.action"),
        ("member.vote", {"proposal_id": "p", "approve": True}, "payload.proposal_id"),
        ("member.vote", {"proposal_id": "ab" * 32, "approve": 1}, "payload.approve"),
    ],
)
def test_payload_schemas(kind: str, payload: dict[str, Any], fragment: str) -> None:
    refused("invalid-payload", envelope(kind, payload), fragment)


def test_size_limit() -> None:
    big = envelope(
        payload={
            "asset_id": "x",
            "product": "p",
            "quantity": 1,
            "unit": "u",
            "origin": "o",
            "metadata": {"blob": "x" * 20_000},
        }
    )
    refused("tx-too-large", big)
    with pytest.raises(AdmissionError) as caught:
        parse_envelope_bytes(b"{" + b" " * 70_000 + b"}")
    assert caught.value.code == "tx-too-large"
    with pytest.raises(AdmissionError) as caught:
        parse_envelope_bytes(b'{"body": 1.5}')
    assert caught.value.code == "malformed-transaction"


def test_window_and_chain() -> None:
    tx = parse_envelope(envelope())
    check_window(tx, "coop-dev", NOW)
    for chain, now, code in [
        ("other-chain", NOW, "wrong-chain"),
        ("coop-dev", NOW + 60_000, "expired"),
        ("coop-dev", NOW + 60_000 - TX_EXPIRY_MS_MAX - 1, "expiry-too-far"),
    ]:
        with pytest.raises(AdmissionError) as caught:
            check_window(tx, chain, now)
        assert caught.value.code == code


def test_forged_and_tampered_signatures() -> None:
    good = envelope()
    tampered = copy.deepcopy(good)
    tampered["body"]["payload"]["quantity"] = 5000
    impostor = KeyPair.from_seed_hex("33" * 32)
    forged = {**good, "signer": impostor.public_key}
    wrong_domain = {
        **good,
        "signature": CONSORTIUM.member_keys["alpine-cheese"].sign("prevote", good["body"]),
    }
    for candidate in (tampered, forged, wrong_domain):
        with pytest.raises(AdmissionError) as caught:
            check_signature(parse_envelope(candidate))
        assert caught.value.code == "bad-signature"


def test_dedup_index_forgets_only_expired() -> None:
    index = DedupIndex()
    for i in range(1000):
        index.add(f"{i:064x}", NOW + i)
    index.prune(NOW + 499)
    assert len(index) == 500
    assert f"{499:064x}" not in index and f"{500:064x}" in index
    index.add(f"{500:064x}", NOW + 10**9)  # a re-add never extends or duplicates
    index.prune(NOW + 10_000)
    assert len(index) == 0


@given(
    st.dictionaries(
        st.text(alphabet=st.characters(blacklist_categories=("Cs",)), max_size=8),
        st.text(alphabet=st.characters(blacklist_categories=("Cs",)), max_size=30)
        | st.integers(-(2**53) + 1, 2**53 - 1),
        max_size=5,
    ),
    st.integers(0, 2**53 - 1),
)
def test_size_and_tx_id_equal_those_of_the_canonical_envelope(
    metadata: dict[str, Any], nonce: int
) -> None:
    env = envelope(
        payload={
            "asset_id": "lot",
            "product": "p",
            "quantity": 1,
            "unit": "kg",
            "origin": "o",
            "metadata": metadata,
        },
        nonce=nonce,
    )
    tx = parse_envelope(env)
    assert tx.size_bytes == len(canonical(env))
    assert tx.tx_id == tx_id_of(env["body"]) and tx.body_bytes == canonical(env["body"])
    check_signature(tx)


def test_dedup_front_is_bounded_by_count() -> None:
    index = DedupIndex(entries_max=100)
    for i in range(1_000):
        index.add(f"{i:064x}", NOW + 10_000_000 - i)  # later ids expire sooner
    index.prune(NOW)
    assert len(index) == 100
    assert f"{0:064x}" in index, "the bound forgets the ones expiring first"
    assert f"{999:064x}" not in index


def test_dedup_front_knows_above_which_expiry_it_is_complete() -> None:
    index = DedupIndex(entries_max=3, complete_above_ms=NOW + 5)
    for i in range(3):
        index.add(f"{i:064x}", NOW + 100 + i)
    index.prune(NOW)
    assert index.complete_above_ms == NOW + 5, "nothing forgotten early yet"
    index.add(f"{9:064x}", NOW + 200)
    index.prune(NOW)  # over the bound: the one expiring first (NOW + 100) goes early
    assert f"{0:064x}" not in index
    assert index.complete_above_ms == NOW + 100
    index.prune(NOW + 150)  # plain expiry does not lower what the index vouches for
    assert index.complete_above_ms == NOW + 100
    assert len(index) == 1


@pytest.mark.parametrize(
    ("text", "ok"),
    [
        ("plain text", True),
        ("tab\there", False),
        ("unit separator \x1f", False),
        ("delete \x7f", False),
        ("space \x20 and tilde ~", True),
        ("non-ASCII: Käse, 芝士, \x80\x9f", True),
        ("", False),
    ],
)
def test_check_text_refuses_exactly_the_control_characters(text: str, ok: bool) -> None:
    assert (check_text(text) is None) is ok
