"""Micro-benchmark of one validator's work per transaction, stage by stage, in one process.

Not a test. Runs a block of N signed provenance transactions through what a validator does
with each, without sockets, HTTP or other validators: parse a gossip frame, parse and check
each envelope, verify its signature, admit it to the mempool, execute the block as
proposer, splice and parse the proposal frame, persist the safety record with the block
locked, and store the block (SQLite in a temporary directory). Prints the best of
``--repeat`` runs per stage in microseconds per transaction, so that the difference to
``coopledger bench``'s CPU per transaction is what the network runtime adds (event loop,
HTTP, frames, consensus messages). Usage:

    .venv/bin/python scripts/bench_pipeline.py [--txs 2000] [--repeat 5]
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_ledger import block_envelopes

from consensus.messages import Block, Proposal
from consensus.safety import SafetyRecord
from consensus.types import Height, Round, Step, ValidatorId
from node.codec import canonical, parse_json
from node.consortium import make_consortium
from node.errors import AdmissionError
from node.ledger import Ledger
from node.mempool import Mempool
from node.runtime import SafetyFile
from node.storage import SqlStore
from node.tx import check_signature
from node.wire import (
    GOSSIP_TXS_PER_FRAME_MAX,
    decode_message,
    decode_txs,
    encode_proposal,
    encode_txs,
)


def run_once(tx_count: int) -> dict[str, float]:
    """One pass over a fresh ledger; microseconds per transaction by stage."""
    consortium = make_consortium(chain_id="coop-pipeline")
    genesis = consortium.genesis
    directory = Path(tempfile.mkdtemp(prefix="coopledger-pipeline-"))
    store = SqlStore(
        f"sqlite:///{directory}/ledger.db", chain_id=genesis.chain_id, genesis_hash=genesis.hash
    )
    ledger = Ledger(genesis, store)
    now_ms = genesis.genesis_time_ms + 1_000
    envelopes = block_envelopes(consortium, 1, tx_count, now_ms + 3_600_000)
    count = len(envelopes)
    stages: dict[str, float] = {}

    def timed(name: str, work: Callable[[], Any]) -> Any:
        started = time.perf_counter()
        result = work()
        stages[name] = (time.perf_counter() - started) / count * 1e6
        return result

    step = GOSSIP_TXS_PER_FRAME_MAX
    frames = [
        encode_txs([canonical(e) for e in envelopes[i : i + step]]) for i in range(0, count, step)
    ]
    parsed = timed("gossip frames parsed", lambda: [parse_json(f, what="frame") for f in frames])
    received = [envelope for frame in parsed for envelope in decode_txs(frame)]
    mempool = Mempool()

    def admit_unsigned() -> list[Any]:
        return ledger.admit_unsigned_many(received, now_ms)

    txs = timed("envelopes parsed and checked", admit_unsigned)
    refused = [outcome for outcome in txs if isinstance(outcome, AdmissionError)]
    if refused:
        raise SystemExit(f"the workload was refused at admission: {refused[0]}")
    timed("signatures verified", lambda: [check_signature(tx) for tx in txs])
    for tx in txs:
        ledger.record_verified(tx)

    def admit() -> None:
        for tx in txs:
            ledger.admit_member(tx)
            mempool.add(tx)

    timed("admitted to the mempool", admit)
    executed = timed(
        "block executed",
        lambda: ledger.execute(txs, timestamp_ms=now_ms, proposer="validator-0"),
    )
    block = Block(header=executed.header, transactions=tuple(tx.envelope for tx in txs))
    proposal = Proposal(
        height=Height(1),
        round=Round(0),
        pol_round=Round(-1),
        block=block,
        proposer=ValidatorId("validator-0"),
        signature="ab" * 64,
    )
    admitted = [tx.envelope_bytes for tx in txs]
    payload = timed("proposal spliced", lambda: encode_proposal(proposal, admitted))
    message = timed(
        "proposal parsed",
        lambda: decode_message(parse_json(payload, what="proposal")),
    )
    timed(
        "proposal matched to the mempool",
        lambda: [mempool.known(e) for e in message.block.transactions],
    )
    record = SafetyRecord(
        height=Height(1),
        round=Round(0),
        step=Step.PRECOMMIT,
        block_hash=block.hash,
        locked_round=Round(0),
        locked_block=block,
    )
    safety = SafetyFile(directory)
    timed("safety record persisted (locked)", lambda: safety.save(record, admitted))
    commit = consortium.commit_for(1, 0, executed.block_hash)
    prepared = timed("commit prepared", lambda: ledger.prepare_commit(executed, commit))
    timed("block stored", lambda: store.commit_block(prepared))
    timed("ledger advanced", lambda: ledger.finish_commit(executed))
    timed("mempool cleared", lambda: mempool.remove(tx.tx_id for tx in txs))
    store.close()
    shutil.rmtree(directory)
    return stages


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--txs", type=int, default=2_000)
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args()
    best: dict[str, float] = {}
    for _ in range(args.repeat):
        for stage, micros in run_once(args.txs).items():
            best[stage] = min(best.get(stage, micros), micros)
    for stage, micros in best.items():
        print(f"{micros:8.1f} µs/tx  {stage}")
    signature = best["signatures verified"]
    print(f"{sum(best.values()) - signature:8.1f} µs/tx  all but the signature check")
    print(f"{sum(best.values()):8.1f} µs/tx  in all (best of {args.repeat}, {args.txs} txs)")


if __name__ == "__main__":
    main()
