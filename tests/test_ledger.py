"""The ledger over every store: execution, roots, invalid blocks, restart and catch-up."""

from __future__ import annotations

import copy
from collections.abc import Callable
from typing import Any

import pytest

from node.consortium import Consortium, make_consortium
from node.errors import AdmissionError, ProofError
from node.ledger import ExecutedBlock, Ledger
from node.rules import genesis_changes
from node.scenario import scenario_blocks
from node.smt import SparseMerkleTree, state_key_hash, state_value_hash
from node.storage import BlockStore, MemoryStore
from node.tx import parse_envelope

StoreOpener = Callable[..., BlockStore]


def open_ledger(consortium: Consortium, open_store: StoreOpener) -> Ledger:
    genesis = consortium.genesis
    return Ledger(genesis, open_store(chain_id=genesis.chain_id, genesis_hash=genesis.hash))


def run_block(
    ledger: Ledger, consortium: Consortium, time_ms: int, envelopes: list[dict[str, Any]]
) -> ExecutedBlock:
    txs = [ledger.admit(envelope, time_ms) for envelope in envelopes]
    executed = ledger.execute(txs, timestamp_ms=time_ms, proposer="validator-0")
    ledger.commit(executed, consortium.commit_for(executed.height, 0, executed.block_hash))
    return executed


def run_scenario(ledger: Ledger, consortium: Consortium) -> list[ExecutedBlock]:
    return [
        run_block(ledger, consortium, time_ms, envelopes)
        for time_ms, envelopes in scenario_blocks(consortium, consortium.genesis.genesis_time_ms)
    ]


def reference_root(store: BlockStore) -> str:
    """The state root recomputed from scratch from everything the store holds."""
    tree = SparseMerkleTree.from_items(
        (state_key_hash(key), state_value_hash(value)) for key, value in store.iter_state()
    )
    return tree.root().hex()


MEMORY_ROOT: dict[str, str] = {}


def memory_reference() -> tuple[str, str]:
    if not MEMORY_ROOT:
        consortium = make_consortium(chain_id="coop-demo")
        genesis = consortium.genesis
        ledger = Ledger(genesis, MemoryStore(chain_id=genesis.chain_id, genesis_hash=genesis.hash))
        run_scenario(ledger, consortium)
        MEMORY_ROOT.update(root=ledger.state_root, hash=ledger.last_block_hash)
    return MEMORY_ROOT["root"], MEMORY_ROOT["hash"]


def test_scenario_gives_identical_roots_on_every_store(open_store: StoreOpener) -> None:
    consortium = make_consortium(chain_id="coop-demo")
    ledger = open_ledger(consortium, open_store)
    blocks = run_scenario(ledger, consortium)
    assert all(outcome.code == "ok" for block in blocks for outcome in block.outcomes)
    assert (ledger.state_root, ledger.last_block_hash) == memory_reference()
    assert reference_root(ledger.store) == ledger.state_root
    bread = ledger.state_get("asset/cheese-bread-0414")
    assert bread is not None and bread["owner"] == "bean-and-leaf"
    assert [e.type for e in ledger.store.asset_events("cheese-bread-0414")] == [
        "asset.transform",
        "asset.transfer",
    ]


def test_restart_rebuilds_the_same_ledger(open_store: StoreOpener) -> None:
    consortium = make_consortium(chain_id="coop-demo")
    first = open_ledger(consortium, open_store)
    blocks = run_scenario(first, consortium)
    second = Ledger(consortium.genesis, first.store)
    assert (second.height, second.state_root, second.last_block_hash) == (
        first.height,
        first.state_root,
        first.last_block_hash,
    )
    replay = blocks[0].txs[0].envelope
    with pytest.raises(AdmissionError) as caught:
        second.admit(replay, second.last_timestamp_ms)
    assert caught.value.code == "duplicate-tx"


def genesis_root(consortium: Consortium) -> str:
    tree = SparseMerkleTree.from_items(
        (state_key_hash(k), state_value_hash(v))
        for k, v in genesis_changes(consortium.genesis).items()
    )
    return tree.root().hex()


@pytest.fixture
def fresh() -> tuple[Consortium, Ledger]:
    consortium = make_consortium()
    genesis = consortium.genesis
    return consortium, Ledger(
        genesis, MemoryStore(chain_id=genesis.chain_id, genesis_hash=genesis.hash)
    )


def lot(asset_id: str) -> dict[str, Any]:
    return {"asset_id": asset_id, "product": "cheese", "quantity": 5, "unit": "kg", "origin": "CH"}


def test_invalid_blocks_are_refused_and_change_nothing(fresh: tuple[Consortium, Ledger]) -> None:
    consortium, ledger = fresh
    t0 = consortium.genesis.genesis_time_ms + 1000
    first = consortium.sign("alpine-cheese", "asset.register", lot("a"), expires_at_ms=t0 + 60_000)
    run_block(ledger, consortium, t0, [first])
    height, root = ledger.height, ledger.state_root
    tx = ledger.admit(
        consortium.sign("alpine-cheese", "asset.register", lot("b"), expires_at_ms=t0 + 60_000), t0
    )

    cases: list[tuple[str, list[Any], int]] = [
        ("duplicate-tx", [tx, tx], t0 + 1000),
        ("expired", [tx], t0 + 60_000),
        ("invalid-block", [tx], t0),
    ]
    for code, txs, time_ms in cases:
        with pytest.raises(AdmissionError) as caught:
            ledger.execute(txs, timestamp_ms=time_ms, proposer="validator-1")
        assert caught.value.code == code

    with pytest.raises(AdmissionError) as caught:
        ledger.execute([parse_envelope(first)], timestamp_ms=t0 + 1000, proposer="validator-1")
    assert caught.value.code == "duplicate-tx"
    forged = copy.deepcopy(first)
    forged["body"]["nonce"] += 1
    with pytest.raises(AdmissionError) as caught:
        ledger.execute([parse_envelope(forged)], timestamp_ms=t0 + 1000, proposer="validator-1")
    assert caught.value.code == "bad-signature"
    assert (ledger.height, ledger.state_root) == (height, root)


def test_failed_transaction_is_recorded_and_changes_nothing_else(
    fresh: tuple[Consortium, Ledger],
) -> None:
    consortium, ledger = fresh
    t0 = consortium.genesis.genesis_time_ms + 1000
    steal = consortium.sign(
        "valley-bakery",
        "asset.transfer",
        {"asset_id": "a", "to": "valley-bakery"},
        expires_at_ms=t0 + 60_000,
    )
    executed = run_block(ledger, consortium, t0, [steal])
    assert executed.outcomes[0].code == "unknown-asset"
    assert ledger.state_root == genesis_root(consortium)
    receipt = ledger.store.tx(executed.txs[0].tx_id)
    assert receipt is not None and receipt.record.code == "unknown-asset" and receipt.height == 1


def test_a_different_block_at_the_same_height_reverts_the_first(
    fresh: tuple[Consortium, Ledger],
) -> None:
    consortium, ledger = fresh
    t0 = consortium.genesis.genesis_time_ms + 1000
    a = ledger.admit(
        consortium.sign("alpine-cheese", "asset.register", lot("a"), expires_at_ms=t0 + 60_000), t0
    )
    b = ledger.admit(
        consortium.sign("valley-bakery", "asset.register", lot("b"), expires_at_ms=t0 + 60_000), t0
    )
    block_a = ledger.execute([a], timestamp_ms=t0, proposer="validator-0")
    block_b = ledger.execute([b], timestamp_ms=t0, proposer="validator-1", round_=1)
    assert block_a.header["state_root"] != block_b.header["state_root"]
    ledger.commit(block_a, consortium.commit_for(1, 0, block_a.block_hash))
    assert ledger.state_root == block_a.header["state_root"]
    assert ledger.state_get("asset/b") is None and ledger.state_get("asset/a") is not None


def test_catch_up_verifies_commit_and_roots(fresh: tuple[Consortium, Ledger]) -> None:
    consortium, source = fresh
    blocks = run_scenario(source, consortium)
    genesis = consortium.genesis
    follower = Ledger(genesis, MemoryStore(chain_id=genesis.chain_id, genesis_hash=genesis.hash))

    def parts(height: int) -> tuple[dict[str, Any], list[dict[str, Any]], dict[str, Any]]:
        stored = source.store.block(height)
        assert stored is not None
        envelopes = [record.envelope for record in source.store.block_txs(height)]
        return copy.deepcopy(dict(stored.header)), envelopes, copy.deepcopy(dict(stored.commit))

    header, envelopes, commit = parts(1)
    bad_root = {**header, "state_root": "00" * 32}
    with pytest.raises(ProofError, match="commit certifies block"):
        follower.apply_synced_block(bad_root, envelopes, commit)
    few = {**commit, "signatures": commit["signatures"][:2]}
    with pytest.raises(ProofError, match="3 of 4 validators are needed"):
        follower.apply_synced_block(header, envelopes, few)
    with pytest.raises(ProofError, match="number of transactions"):
        follower.apply_synced_block(header, envelopes[:-1], commit)
    swapped = [envelopes[1], envelopes[0], *envelopes[2:]]
    with pytest.raises(ProofError, match="tx_root"):
        follower.apply_synced_block(header, swapped, commit)
    assert follower.height == 0
    for block in blocks:
        follower.apply_synced_block(*parts(block.height))
    assert (follower.state_root, follower.last_block_hash) == (
        source.state_root,
        source.last_block_hash,
    )
    with pytest.raises(ProofError):
        follower.apply_synced_block(*parts(1))


def test_replays_are_refused_after_the_front_forgets_them_and_after_restart(
    open_store: StoreOpener, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The in-memory front of the replay check is bounded; the store answers for the rest,
    for every transaction the front cannot vouch for (forgotten early, or from before a
    restart), so a replay is refused whichever of them remembers it."""
    monkeypatch.setattr("node.ledger.RECENT_TX_IDS_MAX", 2)
    consortium = make_consortium()
    store = open_store(chain_id=consortium.genesis.chain_id, genesis_hash=consortium.genesis.hash)
    ledger = Ledger(consortium.genesis, store)
    t0 = consortium.genesis.genesis_time_ms + 1000
    signed = [
        consortium.sign(
            "alpine-cheese", "asset.register", lot(f"r{i}"), expires_at_ms=t0 + 60_000 + i
        )
        for i in range(4)
    ]
    run_block(ledger, consortium, t0, signed)
    assert ledger.committed_among([parse_envelope(e) for e in signed]) == {
        parse_envelope(e).tx_id for e in signed
    }
    for replay in (signed[0], signed[3]):  # forgotten early / still in the front
        with pytest.raises(AdmissionError) as caught:
            ledger.admit(replay, t0 + 1000)
        assert caught.value.code == "duplicate-tx"
    restarted = Ledger(consortium.genesis, store)
    for replay in signed:
        with pytest.raises(AdmissionError) as caught:
            restarted.admit(replay, t0 + 1000)
        assert caught.value.code == "duplicate-tx"
    fresh_tx = consortium.sign(
        "alpine-cheese", "asset.register", lot("new"), expires_at_ms=t0 + 90_000
    )
    assert restarted.admit(fresh_tx, t0 + 1000).tx_id == parse_envelope(fresh_tx).tx_id
