"""``coopledger contracts replay`` against a real 4-validator network.

A module-scoped testnet (the processes ``coopledger testnet up`` starts) receives a
realistic story over the REST API: registrations by several firms in one burst, shipments
through a shared carrier and their receipts, an observation, a sale, a transform, a joint
milk purchase through commitments, close and confirm, a shipment for it, a membership
proposal that passes and the new member's first registration, and transactions that fail a
rule at execution (a sale by a non-owner, an early close, a late commitment, a confirm by a
non-supplier, a second vote). The real CLI then replays the chain onto the contracts on
anvil from the genesis file; a contract built without the owner check on ``transfer`` (the
differential test's broken variant, compiled in the background meanwhile) must be caught;
and ``--follow`` must mirror blocks committed after it started, with its metric showing it.
"""

from __future__ import annotations

import itertools
import json
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import httpx
import pytest
from tests_support import free_base_port

from contracts.anvil import Anvil, free_port
from contracts.build import compile_contracts, read_sources, write_artifacts
from contracts.replay import (
    ANVIL_HEADROOM_S,
    EXIT_DIVERGENCE,
    Bounds,
    FetchedBlock,
    Replayer,
    ReplayReport,
    replay_range,
)
from gateway.client import Client
from gateway.schemas import Receipt
from node.block import block_hash, check_header_shape
from node.consortium import Consortium, make_consortium
from node.crypto import KeyPair
from node.errors import ProofError
from node.keys import read_key_file
from node.ledger import Ledger
from node.storage import MemoryStore
from node.testnet import generate, start_node, stop_node, wait_started
from node.tx import parse_envelope, sign_transaction

pytestmark = [pytest.mark.evm, pytest.mark.slow]

CHEESE, BAKERY, COFFEE = "alpine-cheese", "valley-bakery", "bean-and-leaf"
SUPPLIER, CARRIER = "dairy-direct", "shared-freight"
NEW_MEMBER = "mountain-roaster"

OWNER_CHECK = '        require(a.owner == sender, "not-owner");\n'
NONCES = itertools.count()
WAIT_S = 30.0
"""Bound on every wait for the network or a replay process."""


@dataclass
class Story:
    api: str
    genesis: Path
    chain_id: str
    auditor_token: str
    operator_token: str
    tokens: dict[str, str]
    keys: dict[str, KeyPair]
    receipts: list[Receipt]
    height: int
    """The network's height once the story is committed."""
    broken_artifacts: Future[Path]

    def client(self, member: str) -> Client:
        return Client(self.api, self.tokens[member])

    def height_now(self) -> int:
        with Client(self.api, self.auditor_token) as api:
            return api.status().height


def compile_without_owner_check(directory: Path) -> Path:
    sources = read_sources()
    assert sources["Provenance.sol"].count(OWNER_CHECK) == 1
    sources["Provenance.sol"] = sources["Provenance.sol"].replace(OWNER_CHECK, "")
    write_artifacts(compile_contracts(sources), directory)
    return directory


@pytest.fixture(scope="module")
def story(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Story]:
    directory = tmp_path_factory.mktemp("replay")
    with ThreadPoolExecutor(max_workers=1) as pool:
        # solc-js takes about 30 s with viaIR: it compiles while the network runs the story.
        broken = pool.submit(compile_without_owner_check, directory / "broken")
        description = generate(directory / "net", validators=4, base_port=free_base_port(8))
        for node in description["nodes"]:
            node["pid"] = start_node(directory / "net", node["name"])
        try:
            apis = [node["api"] for node in description["nodes"]]
            wait_started(directory / "net", description)
            members = {m["id"]: m for m in description["members"]}
            current = Story(
                api=apis[1],
                genesis=Path(description["genesis"]),
                chain_id=description["chain_id"],
                auditor_token=description["auditor_token"],
                operator_token=description["operator_token"],
                tokens={member_id: m["token"] for member_id, m in members.items()},
                keys={
                    member_id: read_key_file(Path(m["key_file"])).key_pair
                    for member_id, m in members.items()
                },
                receipts=[],
                height=0,
                broken_artifacts=broken,
            )
            tell_story(current)
            current.height = current.height_now()
            yield current
        finally:
            for node in description["nodes"]:
                stop_node(int(node["pid"]))


def post(story: Story, member: str, call: Callable[[Client], Any], expected: str) -> Receipt:
    with story.client(member) as api:
        receipt = call(api)
    assert isinstance(receipt, Receipt), receipt
    assert receipt.code == expected, (member, receipt)
    story.receipts.append(receipt)
    return receipt


def burst(story: Story, calls: list[tuple[str, Callable[[Client], Any], str]]) -> None:
    """Several members' writes at once, so that blocks hold more than one transaction."""
    with ThreadPoolExecutor(max_workers=len(calls)) as pool:
        futures = [pool.submit(post, story, *call) for call in calls]
        for future in futures:
            future.result()


def signed(story: Story, key: KeyPair, sender: str, kind: str, payload: dict[str, Any]) -> Any:
    body = {
        "chain_id": story.chain_id,
        "type": kind,
        "sender": sender,
        "nonce": next(NONCES),
        "expires_at_ms": time.time_ns() // 1_000_000 + 600_000,
        "payload": payload,
    }
    return lambda api: api.submit(sign_transaction(key, body), wait=True)


def register(asset_id: str, product: str, quantity: int) -> Callable[[Client], Any]:
    return lambda api: api.register_asset(asset_id, product, quantity, "kg", "Jura", wait=True)


def tell_story(story: Story) -> None:
    burst(
        story,
        [
            (CHEESE, register("comte-1", "Comté", 40), "ok"),
            (CHEESE, register("comte-2", "Comté", 25), "ok"),
            (BAKERY, register("flour-1", "flour", 500), "ok"),
            (COFFEE, register("beans-1", "coffee beans", 60), "ok"),
            (SUPPLIER, register("milk-1", "whole milk", 300), "ok"),
        ],
    )
    post(
        story,
        CHEESE,
        lambda a: a.observe_asset("comte-1", "temperature", {"c": 4}, wait=True),
        "ok",
    )
    post(
        story,
        CHEESE,
        lambda a: a.create_shipment("ship-1", ["comte-1", "comte-2"], CARRIER, wait=True),
        "ok",
    )
    post(story, CARRIER, lambda a: a.receive_shipment("ship-1", wait=True), "ok")
    post(
        story, CARRIER, lambda a: a.create_shipment("ship-2", ["comte-1"], BAKERY, wait=True), "ok"
    )
    post(story, BAKERY, lambda a: a.receive_shipment("ship-2", wait=True), "ok")
    # Fails at execution: the bakery holds the cheese but does not own it.
    post(story, BAKERY, lambda a: a.transfer_asset("comte-1", COFFEE, wait=True), "not-owner")
    post(story, CHEESE, lambda a: a.transfer_asset("comte-1", BAKERY, wait=True), "ok")
    outputs = [{"asset_id": "bread-1", "product": "cheese bread", "quantity": 80, "unit": "kg"}]
    post(
        story,
        BAKERY,
        lambda a: a.transform_asset("flour-1", outputs, additional_inputs=["comte-1"], wait=True),
        "ok",
    )
    post(
        story,
        COFFEE,
        lambda a: a.observe_asset("flour-1", "inspection", {"ok": True}, wait=True),
        "not-custodian-or-auditor",
    )
    purchase(story)
    governance(story)


def purchase(story: Story) -> None:
    deadline_ms = time.time_ns() // 1_000_000 + 6_000
    tiers = [{"min_quantity": 1, "unit_price": 120}, {"min_quantity": 50, "unit_price": 100}]
    post(
        story,
        COFFEE,
        lambda a: a.open_purchase(
            "milk-pool", supplier=SUPPLIER, item="whole milk", unit="l", tiers=tiers,
            min_total=30, deadline_ms=deadline_ms, wait=True,
        ),
        "ok",
    )  # fmt: skip
    burst(
        story,
        [
            (CHEESE, lambda a: a.commit_to_purchase("milk-pool", 20, wait=True), "ok"),
            (BAKERY, lambda a: a.commit_to_purchase("milk-pool", 25, wait=True), "ok"),
            (COFFEE, lambda a: a.commit_to_purchase("milk-pool", 10, wait=True), "ok"),
        ],
    )
    post(story, BAKERY, lambda a: a.commit_to_purchase("milk-pool", 15, wait=True), "ok")
    post(story, CARRIER, lambda a: a.close_purchase("milk-pool", wait=True), "deadline-not-reached")
    until = time.monotonic() + WAIT_S
    while time.time_ns() // 1_000_000 <= deadline_ms + 50:  # the block time passes it next
        assert time.monotonic() < until
        time.sleep(0.05)
    post(
        story, CHEESE, lambda a: a.commit_to_purchase("milk-pool", 30, wait=True), "deadline-passed"
    )
    post(story, CARRIER, lambda a: a.close_purchase("milk-pool", wait=True), "ok")
    post(story, CHEESE, lambda a: a.confirm_purchase("milk-pool", wait=True), "not-supplier")
    post(story, SUPPLIER, lambda a: a.confirm_purchase("milk-pool", wait=True), "ok")
    post(
        story,
        SUPPLIER,
        lambda a: a.create_shipment(
            "milk-ship", ["milk-1"], COFFEE, purchase_id="milk-pool", wait=True
        ),
        "ok",
    )
    post(story, COFFEE, lambda a: a.receive_shipment("milk-ship", wait=True), "ok")


def governance(story: Story) -> None:
    newcomer = KeyPair(bytes(range(32)))
    entry = {"id": NEW_MEMBER, "name": "Mountain Roaster", "roles": ["member"],
             "public_keys": [newcomer.public_key]}  # fmt: skip
    keys = story.keys
    proposal = post(
        story,
        CHEESE,
        signed(story, keys[CHEESE], CHEESE, "member.propose", {"action": "add", "member": entry}),
        "ok",
    )
    vote = {"proposal_id": proposal.tx_id, "approve": True}
    post(story, BAKERY, signed(story, keys[BAKERY], BAKERY, "member.vote", vote), "ok")
    post(story, BAKERY, signed(story, keys[BAKERY], BAKERY, "member.vote", vote), "already-voted")
    post(story, COFFEE, signed(story, keys[COFFEE], COFFEE, "member.vote", vote), "ok")
    payload = {"asset_id": "roast-1", "product": "espresso roast", "quantity": 12,
               "unit": "kg", "origin": "Jura"}  # fmt: skip
    post(story, CHEESE, signed(story, newcomer, NEW_MEMBER, "asset.register", payload), "ok")


def replay_cli(story: Story, *args: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [
            sys.executable, "-m", "node", "contracts", "replay",
            "--node", story.api, "--token", story.auditor_token,
            "--genesis", str(story.genesis), *args,
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={"COLUMNS": "200", "PATH": "/usr/bin:/bin"},
    )  # fmt: skip


def finish(process: subprocess.Popen[str]) -> tuple[int, str, str]:
    stdout, stderr = process.communicate(timeout=120)
    return process.returncode, stdout, stderr


def test_replay_of_the_story_finds_no_divergence(story: Story) -> None:
    started = time.monotonic()
    code, stdout, stderr = finish(replay_cli(story, "--until-height", str(story.height), "--json"))
    assert code == 0, stderr
    report = json.loads(stdout)
    assert report["divergences"] == [] and report["divergence_count"] == 0
    assert report["blocks"] == report["tip"] == story.height
    assert report["transactions"] == len(story.receipts) == 31
    failed = [r.code for r in story.receipts if r.code != "ok"]
    assert report["codes"] == {"ok": len(story.receipts) - len(failed)} | {
        code: failed.count(code) for code in failed
    }
    assert len(failed) == 6
    # Blocks with several transactions were replayed (the bursts).
    assert len({r.height for r in story.receipts}) < len(story.receipts)
    print(
        f"replayed {report['transactions']} tx in {report['seconds']:.2f} s "
        f"({report['transactions'] / report['seconds']:.0f} tx/s; "
        f"{time.monotonic() - started:.1f} s with anvil and deployment)"
    )


def test_a_contract_without_the_owner_check_diverges(story: Story) -> None:
    broken = story.broken_artifacts.result(timeout=120)
    code, stdout, stderr = finish(
        replay_cli(story, "--until-height", str(story.height), "--artifacts", str(broken), "--json")
    )
    assert code == EXIT_DIVERGENCE, stderr
    report = json.loads(stdout)
    first = report["divergences"][0]
    not_owner = next(r for r in story.receipts if r.code == "not-owner")
    assert (first["height"], first["index"], first["tx_id"]) == (
        not_owner.height, not_owner.index, not_owner.tx_id,
    )  # fmt: skip
    assert first["type"] == "asset.transfer"
    assert (first["ledger_code"], first["evm_code"]) == ("not-owner", "ok")
    assert "code: ledger 'not-owner', evm 'ok'" in first["differences"]
    assert "divergence: block" in stderr


def metric(port: int, name: str) -> float | None:
    try:
        text = httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=2).text
    except httpx.HTTPError:
        return None
    for line in text.splitlines():
        if line.startswith(name + " "):
            return float(line.split()[1])
    return None


def wait_for(condition: Callable[[], bool], what: str) -> None:
    until = time.monotonic() + WAIT_S
    while not condition():
        assert time.monotonic() < until, f"timed out waiting for {what}"
        time.sleep(0.1)


def test_follow_mirrors_new_blocks_and_reports_its_height(story: Story) -> None:
    start_height = story.height_now()
    port = free_port()
    target = start_height + 3
    process = replay_cli(
        story, "--follow", "--until-height", str(target), "--metrics-port", str(port)
    )
    try:
        height = "coopledger_replay_height"
        wait_for(lambda: (metric(port, height) or 0) >= start_height, "the replay to catch up")
        new = [f"late-{n}" for n in range(3)]
        with story.client(SUPPLIER) as api:
            for asset_id in new:
                assert register(asset_id, "cream", 10)(api).code == "ok"
        wait_for(lambda: (metric(port, height) or 0) > start_height, "a new block mirrored")
        assert metric(port, "coopledger_replay_divergences_total") == 0
        code, _, stderr = finish(process)
    finally:
        process.kill()
    assert code == 0, stderr
    assert f"block {target}: " in stderr
    assert "divergence" not in stderr.replace("0 divergences", "")


# --- in process: the clock mapping and the refusal of unverifiable blocks ------------------


class LedgerSource:
    """Blocks of a local ledger, served as a node serves them (the in-memory twin of
    :class:`contracts.replay.NodeSource`)."""

    def __init__(self, ledger: Ledger) -> None:
        self.ledger = ledger

    def tip(self) -> int:
        return self.ledger.height

    def block(self, height: int) -> FetchedBlock:
        stored = self.ledger.store.block(height)
        assert stored is not None
        txs = self.ledger.store.block_txs(height)
        return FetchedBlock(
            height=height,
            block_hash=stored.block_hash,
            header=dict(stored.header),
            commit=dict(stored.commit),
            tx_ids=[tx.tx_id for tx in txs],
            codes=[tx.code for tx in txs],
            envelopes=[tx.envelope for tx in txs],
        )


@dataclass
class LocalChain:
    consortium: Consortium
    ledger: Ledger

    @classmethod
    def start(cls) -> LocalChain:
        consortium = make_consortium(chain_id="coop-replay")
        genesis = consortium.genesis
        store = MemoryStore(chain_id=genesis.chain_id, genesis_hash=genesis.hash)
        return cls(consortium, Ledger(genesis, store))

    def block(self, at_ms: int, *txs: tuple[str, str, dict[str, Any]]) -> list[str]:
        """Commit one block at genesis time + ``at_ms``; its codes."""
        timestamp_ms = self.consortium.genesis.genesis_time_ms + at_ms
        envelopes = [
            self.consortium.sign(sender, kind, payload, expires_at_ms=timestamp_ms + 60_000)
            for sender, kind, payload in txs
        ]
        executed = self.ledger.execute(
            [parse_envelope(e) for e in envelopes], timestamp_ms=timestamp_ms, proposer="v"
        )
        commit = self.consortium.commit_for(executed.height, 0, executed.block_hash)
        self.ledger.commit(executed, commit)
        return [outcome.code for outcome in executed.outcomes]


@pytest.fixture
def local_replay() -> Iterator[tuple[LocalChain, Replayer]]:
    chain = LocalChain.start()
    genesis = chain.consortium.genesis
    start_s = genesis.genesis_time_ms // 1000 - ANVIL_HEADROOM_S
    with Anvil.start(extra_args=("--timestamp", str(start_s))) as anvil:
        yield chain, Replayer.deploy(genesis, anvil.url)


def test_deadlines_inside_a_second_fall_on_the_ledgers_side(
    local_replay: tuple[LocalChain, Replayer],
) -> None:
    """The contracts see whole seconds; blocks several to a second, with a deadline in the
    middle of one, still give the ledger's outcomes (the genesis time is a whole second)."""
    chain, replayer = local_replay
    deadline_ms = chain.consortium.genesis.genesis_time_ms + 1_300
    opening = {
        "purchase_id": "p",
        "supplier": SUPPLIER,
        "item": "milk",
        "unit": "l",
        "tiers": [{"min_quantity": 1, "unit_price": 90}],
        "min_total": 5,
        "deadline_ms": deadline_ms,
    }
    close = (CARRIER, "purchase.close", {"purchase_id": "p"})

    def commit(member: str, quantity: int) -> tuple[str, str, dict[str, Any]]:
        return member, "purchase.commit", {"purchase_id": "p", "quantity": quantity}

    assert chain.block(100, (COFFEE, "purchase.open", opening)) == ["ok"]
    assert chain.block(1_200, commit(CHEESE, 9), close) == ["ok", "deadline-not-reached"]
    assert chain.block(1_400, commit(BAKERY, 4)) == ["deadline-passed"]
    assert chain.block(1_500, close) == ["ok"]
    report = ReplayReport(chain_id="coop-replay")
    replay_range(replayer, LedgerSource(chain.ledger), Bounds(), report)
    assert (report.blocks, report.transactions, report.divergence_count) == (4, 5, 0)
    assert report.codes == {"ok": 3, "deadline-not-reached": 1, "deadline-passed": 1}


def tampered(fetched: FetchedBlock, **changes: Any) -> FetchedBlock:
    return replace(fetched, **changes)


def test_a_block_that_does_not_verify_against_the_genesis_is_refused(
    local_replay: tuple[LocalChain, Replayer],
) -> None:
    chain, replayer = local_replay
    payload = {"asset_id": "a", "product": "p", "quantity": 1, "unit": "kg", "origin": "o"}
    sale = (BAKERY, "asset.transfer", {"asset_id": "a", "to": COFFEE})
    chain.block(10, (CHEESE, "asset.register", payload), sale)
    genuine = LedgerSource(chain.ledger).block(1)
    assert genuine.codes == ["ok", "not-owner"]
    commit = dict(genuine.commit)
    commit["signatures"] = commit["signatures"][:2]
    forged_header = check_header_shape(
        {**genuine.header, "timestamp_ms": genuine.header["timestamp_ms"] + 1}
    )
    for fake, problem in (
        (tampered(genuine, codes=["ok", "ok"]), "tx_root"),
        (tampered(genuine, commit=commit), "signatures"),
        (tampered(genuine, envelopes=genuine.envelopes[::-1]), "the envelope is not"),
        (tampered(genuine, header=forged_header), "hashes to"),
        (
            tampered(genuine, header=forged_header, block_hash=block_hash(forged_header)),
            "certifies",
        ),
    ):
        with pytest.raises(ProofError, match=problem):
            replayer.replay(fake)
        assert replayer.height == 0
    result = replayer.replay(genuine)
    assert (result.height, result.transactions, result.divergences) == (1, 2, [])
