"""The mempool: bounded, fair between members, and it forgets committed and expired txs."""

from __future__ import annotations

import pytest

from node.consortium import make_consortium
from node.errors import AdmissionError
from node.mempool import Mempool
from node.tx import Transaction, parse_envelope

CONSORTIUM = make_consortium()
NOW = 1_800_000_000_000


def tx(sender: str, n: int, expires_in_ms: int = 60_000) -> Transaction:
    payload = {
        "asset_id": f"{sender}-{n}",
        "product": "p",
        "quantity": 1,
        "unit": "kg",
        "origin": "o",
    }
    return parse_envelope(
        CONSORTIUM.sign(sender, "asset.register", payload, expires_at_ms=NOW + expires_in_ms)
    )


def codes(pool: Mempool, candidate: Transaction) -> str:
    with pytest.raises(AdmissionError) as caught:
        pool.add(candidate)
    return caught.value.code


def test_bounds_and_duplicates() -> None:
    pool = Mempool(txs_max=8, bytes_max=10**6, sender_share=0.5)
    first = tx("alpine-cheese", 0)
    pool.add(first)
    assert codes(pool, first) == "duplicate-tx"
    for n in range(1, 4):
        pool.add(tx("alpine-cheese", n))
    assert codes(pool, tx("alpine-cheese", 9)) == "sender-quota-exceeded"
    for n in range(4):
        pool.add(tx("valley-bakery", n))
    assert codes(pool, tx("bean-and-leaf", 0)) == "mempool-full"
    assert len(pool) == 8
    two = [tx("alpine-cheese", 0), tx("valley-bakery", 0)]
    small = Mempool(txs_max=100, bytes_max=sum(t.size_bytes for t in two))
    for item in two:
        small.add(item)
    assert codes(small, tx("bean-and-leaf", 0)) == "mempool-full"


def test_reap_is_round_robin_and_respects_limits() -> None:
    pool = Mempool(txs_max=1000)
    flood = [tx("alpine-cheese", n) for n in range(50)]
    for item in flood:
        pool.add(item)
    others = [tx("valley-bakery", 0), tx("bean-and-leaf", 0)]
    for item in others:
        pool.add(item)
    block = pool.reap(6, 10**9)
    assert len(block) == 6
    assert {t.tx_id for t in others} <= {t.tx_id for t in block}, "a flood delayed others"
    assert [t.tx_id for t in block if t.sender == "alpine-cheese"] == [t.tx_id for t in flood[:4]]
    assert len(pool.reap(1000, flood[0].size_bytes * 3)) == 3
    assert len(pool) == 52, "reaping does not remove"


def test_remove_and_prune() -> None:
    pool = Mempool()
    keep, short = tx("alpine-cheese", 0), tx("valley-bakery", 0, expires_in_ms=1_000)
    pool.add(keep)
    pool.add(short)
    total = pool.size_bytes
    assert pool.prune(NOW + 1_000) == 1
    assert short.tx_id not in pool and pool.size_bytes == total - short.size_bytes
    assert pool.remove([keep.tx_id, "00" * 32]) == 1
    assert len(pool) == 0 and pool.size_bytes == 0 and pool.reap(10, 10**6) == []


def test_prune_after_churn_drops_exactly_the_expired() -> None:
    """Prune looks only at what expired; transactions that left by commit and came back,
    and many that came and went, change nothing about what it drops."""
    pool = Mempool(txs_max=10_000, sender_share=1.0)
    lasting = [tx("alpine-cheese", n, expires_in_ms=60_000) for n in range(3)]
    for item in lasting:
        pool.add(item)
    churn = [tx("valley-bakery", n, expires_in_ms=1_000 + n) for n in range(3_000)]
    for item in churn:
        pool.add(item)
        pool.remove([item.tx_id])  # committed at once
    back = churn[10]
    pool.add(back)  # removed, then admitted again (the block that held it did not commit)
    assert len(pool._expiries) <= 2 * len(pool) + 1_001, "stale entries are bounded"
    assert pool.prune(NOW + 1_009) == 0, "not expired yet"
    assert back.tx_id in pool
    assert pool.prune(NOW + 1_010) == 1
    assert back.tx_id not in pool and len(pool) == 3
    assert pool.prune(NOW + 59_999) == 0
    assert pool.prune(NOW + 60_000) == 3 and len(pool) == 0 and pool.size_bytes == 0


def test_known_finds_only_the_exact_pending_envelope() -> None:
    pool = Mempool()
    held = tx("alpine-cheese", 0)
    pool.add(held)
    assert pool.known(dict(held.envelope)) is held
    altered = {**held.envelope, "body": {**held.envelope["body"], "nonce": 999}}
    assert pool.known(altered) is None, "same signature, different body: parse it afresh"
    assert pool.known("not an envelope") is None
    # Equal under == (True == 1) but another document: parsed afresh, not the pending one.
    payload = held.body["payload"]
    assert payload["quantity"] == 1
    as_bool = {
        **held.envelope,
        "body": {**held.body, "payload": {**payload, "quantity": True}},
    }
    assert as_bool == held.envelope
    assert pool.known(as_bool) is None
    pool.remove([held.tx_id])
    assert pool.known(held.envelope) is None
