"""Audit bundles: built from a real ledger, verified offline, and every forgery refused.

The ledger runs the seeds' scenario (producers consolidating shipments through a shared
carrier, a cheese-bread transform, a joint milk purchase), so the bundles hold custody
hand-overs, observations, lineage and a transfer.
"""

from __future__ import annotations

import copy
import json
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from node.audit import BUNDLE_FORMAT, build_bundle, verify_bundle, verify_bundle_bytes
from node.block import block_hash
from node.cli import app as cli_app
from node.consortium import Consortium, make_consortium
from node.errors import ProofError
from node.genesis import write_genesis
from node.ledger import Ledger
from node.scenario import scenario_blocks
from node.storage import MemoryStore

BREAD = "cheese-bread-0414"
CHEESE = "gruyere-2026-041"
FLOUR = "rye-flour-0193"

Bundle = dict[str, Any]


@pytest.fixture(scope="module")
def chain() -> tuple[Consortium, Ledger]:
    consortium = make_consortium(chain_id="coop-audit")
    genesis = consortium.genesis
    ledger = Ledger(genesis, MemoryStore(chain_id=genesis.chain_id, genesis_hash=genesis.hash))
    for time_ms, envelopes in scenario_blocks(consortium, genesis.genesis_time_ms):
        txs = [ledger.admit(envelope, time_ms) for envelope in envelopes]
        executed = ledger.execute(txs, timestamp_ms=time_ms, proposer="validator-0")
        ledger.commit(executed, consortium.commit_for(executed.height, 0, executed.block_hash))
    return consortium, ledger


@pytest.fixture(scope="module")
def bread_bundle(chain: tuple[Consortium, Ledger]) -> Bundle:
    bundle = build_bundle(chain[1], BREAD, lineage=True)
    assert bundle is not None
    return bundle


@pytest.fixture(scope="module")
def cheese_bundle(chain: tuple[Consortium, Ledger]) -> Bundle:
    bundle = build_bundle(chain[1], CHEESE)
    assert bundle is not None
    return bundle


def test_a_genuine_bundle_verifies_and_tells_the_whole_history(
    chain: tuple[Consortium, Ledger], cheese_bundle: Bundle
) -> None:
    consortium, ledger = chain
    report = verify_bundle(cheese_bundle, consortium.genesis)
    assert cheese_bundle["format"] == BUNDLE_FORMAT
    assert report.height == ledger.height
    assert [event.type for event in report.events] == [
        "asset.register",
        "shipment.create",
        "shipment.receive",
        "asset.observe",
        "asset.observe",
        "shipment.create",
        "shipment.receive",
        "asset.transform",
    ]
    assert report.assets[CHEESE]["status"] == "consumed"
    assert len(report.events) == report.assets[CHEESE]["event_count"]


def test_a_lineage_bundle_proves_every_input(
    chain: tuple[Consortium, Ledger], bread_bundle: Bundle
) -> None:
    report = verify_bundle(bread_bundle, chain[0].genesis)
    assert set(report.assets) == {BREAD, CHEESE, FLOUR}
    assert report.events[-1].type == "asset.transfer"
    for asset_id, record in report.assets.items():
        touching = [event for event in report.events if asset_id in event.assets]
        assert len(touching) == record["event_count"]


def test_a_bundle_built_while_a_block_is_executed_proves_the_committed_state() -> None:
    """Under load a validator nearly always holds an executed, undecided block: the bundle
    takes it off the tree once for all of the lineage's proofs and puts it back."""
    consortium = make_consortium(chain_id="coop-audit")
    genesis = consortium.genesis
    ledger = Ledger(genesis, MemoryStore(chain_id=genesis.chain_id, genesis_hash=genesis.hash))
    time_ms = genesis.genesis_time_ms
    for time_ms, envelopes in scenario_blocks(consortium, genesis.genesis_time_ms):
        txs = [ledger.admit(envelope, time_ms) for envelope in envelopes]
        executed = ledger.execute(txs, timestamp_ms=time_ms, proposer="validator-0")
        ledger.commit(executed, consortium.commit_for(executed.height, 0, executed.block_hash))
    inspection = {"asset_id": BREAD, "kind": "inspection", "data": {"passed": True}}
    pending = ledger.execute(
        [
            ledger.admit(
                consortium.sign(
                    "origin-audit", "asset.observe", inspection, expires_at_ms=time_ms + 60_000
                ),
                time_ms + 1,
            )
        ],
        timestamp_ms=time_ms + 1,
        proposer="validator-1",
    )
    assert pending.outcomes[0].code == "ok" and f"asset/{BREAD}" in pending.changes
    bundle = build_bundle(ledger, BREAD, lineage=True)
    assert bundle is not None
    report = verify_bundle(bundle, genesis)  # proofs against the committed tip's state_root
    assert report.height == ledger.height and set(report.assets) == {BREAD, CHEESE, FLOUR}
    assert ledger.state_root == pending.header["state_root"]  # the block is back on the tree
    ledger.commit(pending, consortium.commit_for(pending.height, 0, pending.block_hash))
    assert ledger.state_get(f"asset/{BREAD}") == ledger.store.state_get(f"asset/{BREAD}")


def test_an_unknown_asset_has_no_bundle(chain: tuple[Consortium, Ledger]) -> None:
    assert build_bundle(chain[1], "no-such-lot") is None


def forge(bundle: Bundle, change: Callable[[Bundle], None]) -> Bundle:
    forged = copy.deepcopy(bundle)
    change(forged)
    return forged


def _entry_of_type(bundle: Bundle, tx_type: str) -> dict[str, Any]:
    return next(e for e in bundle["entries"] if e["tx"]["body"]["type"] == tx_type)


def _drop_observation(bundle: Bundle) -> None:
    bundle["entries"].remove(_entry_of_type(bundle, "asset.observe"))


def _tamper_payload(bundle: Bundle) -> None:
    _entry_of_type(bundle, "asset.observe")["tx"]["body"]["payload"]["data"]["celsius"] = 30


def _flip_signature(bundle: Bundle) -> None:
    entry = bundle["entries"][0]
    signature = entry["tx"]["signature"]
    entry["tx"]["signature"] = ("1" if signature[0] == "0" else "0") + signature[1:]


def _too_few_signatures(bundle: Bundle) -> None:
    bundle["blocks"][0]["commit"]["signatures"] = bundle["blocks"][0]["commit"]["signatures"][:2]


def _unknown_validator(bundle: Bundle) -> None:
    bundle["blocks"][0]["commit"]["signatures"][0]["validator"] = "validator-99"


def _repeated_validator(bundle: Bundle) -> None:
    signatures = bundle["blocks"][0]["commit"]["signatures"]
    signatures[1] = dict(signatures[0])


def _proof_for_another_block(bundle: Bundle) -> None:
    first = bundle["entries"][0]
    other = next(
        e
        for e in bundle["entries"]
        if e["height"] != first["height"] and e["proof"]["path"] != first["proof"]["path"]
    )
    first["proof"]["path"] = list(other["proof"]["path"])


def _altered_header(bundle: Bundle) -> None:
    bundle["blocks"][0]["header"]["timestamp_ms"] += 1


def _rehashed_header(bundle: Bundle) -> None:
    block = bundle["blocks"][0]
    block["header"]["timestamp_ms"] += 1
    block["block_hash"] = block_hash(block["header"])
    block["commit"]["block_hash"] = block["block_hash"]


def _outcome_changed(bundle: Bundle) -> None:
    bundle["entries"][0]["code"] = "not-owner"


def _reordered(bundle: Bundle) -> None:
    entries = bundle["entries"]
    entries[1], entries[2] = entries[2], entries[1]


def _state_value_changed(bundle: Bundle) -> None:
    bundle["state"]["proofs"][0]["value"]["owner"] = "valley-bakery"


def _stale_state(bundle: Bundle) -> None:
    bundle["state"]["height"] = bundle["blocks"][0]["header"]["height"]


def _lineage_input_removed(bundle: Bundle) -> None:
    bundle["state"]["proofs"] = [
        p for p in bundle["state"]["proofs"] if p["key"] != f"asset/{FLOUR}"
    ]


def _other_chain(bundle: Bundle) -> None:
    bundle["chain_id"] = "coop-elsewhere"


FORGERIES: list[tuple[str, Callable[[Bundle], None], str]] = [
    ("dropped event", _drop_observation, "incomplete or altered"),
    ("tampered payload", _tamper_payload, "not genuine: bad-signature"),
    ("flipped signature", _flip_signature, "not genuine: bad-signature"),
    ("too few commit signatures", _too_few_signatures, "3 of 4 validators are needed"),
    ("unknown validator", _unknown_validator, "unknown validator 'validator-99'"),
    ("validator signing twice", _repeated_validator, "signs twice"),
    ("proof for another block", _proof_for_another_block, "is not in block"),
    ("altered header", _altered_header, "hashes to"),
    ("re-hashed altered header", _rehashed_header, "bad signature by"),
    ("changed outcome", _outcome_changed, "is not in block"),
    ("reordered entries", _reordered, "chain order"),
    ("changed state value", _state_value_changed, "not in block"),
    ("stale state block", _stale_state, "highest block"),
    ("lineage input removed", _lineage_input_removed, "lineage incomplete"),
    ("another chain", _other_chain, "is for chain 'coop-elsewhere'"),
]


@pytest.mark.parametrize(
    ("change", "message"),
    [pytest.param(change, message, id=name) for name, change, message in FORGERIES],
)
def test_every_forgery_fails_with_a_specific_message(
    chain: tuple[Consortium, Ledger],
    bread_bundle: Bundle,
    change: Callable[[Bundle], None],
    message: str,
) -> None:
    forged = forge(bread_bundle, change)
    with pytest.raises(ProofError, match=re.escape(message)):
        verify_bundle(forged, chain[0].genesis)


def test_another_consortiums_genesis_refuses_the_bundle(cheese_bundle: Bundle) -> None:
    other = make_consortium(chain_id="coop-audit", seed="another")
    with pytest.raises(ProofError, match="commit does not verify"):
        verify_bundle(cheese_bundle, other.genesis)


def test_flipping_any_byte_of_the_file_is_detected(
    chain: tuple[Consortium, Ledger], cheese_bundle: Bundle
) -> None:
    # Without \u escapes: flipping the case of an escape's hex digit is the same text.
    data = json.dumps(cheese_bundle, separators=(",", ":"), ensure_ascii=False).encode()
    genesis = chain[0].genesis
    verify_bundle_bytes(data, genesis)
    # Every 7th byte (a fixed stride, so the run is the same every time), alternating a
    # low-bit flip and a case flip.
    for position in range(0, len(data), 7):
        for mask in (0x01 if position % 2 else 0x20,):
            flipped = bytearray(data)
            flipped[position] ^= mask
            with pytest.raises(ProofError):
                verify_bundle_bytes(bytes(flipped), genesis)


def test_cli_verifies_and_prints_the_history(
    tmp_path: Path, chain: tuple[Consortium, Ledger], bread_bundle: Bundle
) -> None:
    genesis_path = tmp_path / "genesis.json"
    write_genesis(genesis_path, chain[0].genesis)
    bundle_path = tmp_path / "bundle.json"
    bundle_path.write_text(json.dumps(bread_bundle))
    runner = CliRunner()
    result = runner.invoke(
        cli_app, ["audit", "verify", str(bundle_path), "--genesis", str(genesis_path)]
    )
    assert result.exit_code == 0, result.output
    assert "verified" in result.output
    report = verify_bundle(bread_bundle, chain[0].genesis)
    assert f"{len(report.events)} transactions in certified blocks" in result.output
    assert "complete as of block" in result.output

    forged = forge(bread_bundle, _drop_observation)
    bundle_path.write_text(json.dumps(forged))
    result = runner.invoke(
        cli_app, ["audit", "verify", str(bundle_path), "--genesis", str(genesis_path)]
    )
    assert result.exit_code != 0
    assert isinstance(result.exception, ProofError)
    assert "incomplete or altered" in str(result.exception)
