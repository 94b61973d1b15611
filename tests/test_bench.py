"""``coopledger bench``: the mix, the report's arithmetic, and a short run on a real testnet.

No throughput figure is asserted: only that the report is complete and consistent with the
chain it measured.
"""

from __future__ import annotations

import itertools
import json
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest
from eth_account import Account

from gateway.client import Client
from node.bench.cli import latency_row
from node.bench.coop import start_testnet, stop_testnet
from node.bench.engine import Measurement, SeenBlock
from node.bench.evm import sign_legacy
from node.bench.profile import summarise
from node.bench.report import figures, percentile, rss_growth_mib_per_min
from node.bench.workload import PATTERN, TXS_PER_PATTERN, lots
from node.testnet import wait_started
from node.tx import PAYLOAD_CHECKS

BASE_PORT = 31700


def test_mix_of_one_pattern_and_unique_ids() -> None:
    pattern = list(itertools.islice(lots("run", 10**12), len(PATTERN)))
    ops = [op for lot in pattern for stage in lot.stages for op in stage]
    assert len(ops) == TXS_PER_PATTERN
    counts = Counter(op.type for op in ops)
    assert counts == {
        "asset.register": 8,
        "asset.observe": 10,
        "shipment.create": 4,
        "shipment.receive": 4,
        "asset.transform": 2,
        "purchase.open": 1,
        "purchase.commit": 6,
    }
    for op in ops:
        PAYLOAD_CHECKS[op.type](op.payload)  # every payload passes admission's schema
    asset_ids = [op.payload["asset_id"] for op in ops if op.type == "asset.register"]
    assert len(set(asset_ids)) == len(asset_ids)


def test_percentile_is_nearest_rank() -> None:
    values = [float(v) for v in range(1, 101)]
    assert percentile(values, 0.5) == 50.0
    assert percentile(values, 0.99) == 99.0
    assert percentile([], 0.5) == 0.0


def test_report_warns_when_the_window_saw_no_block() -> None:
    empty = Measurement(window_start_s=10.0, window_end_s=13.0)
    report = figures(empty)
    assert report["tx_per_s"] == 0.0
    assert "no block committed" in report["warnings"][0]
    # Nothing measured is null, not a latency of 0 ms; the table shows a dash.
    nothing = {"p50": None, "p95": None, "p99": None, "max": None, "count": 0}
    assert report["latency_ms"] == report["latency_seen_ms"] == nothing
    assert latency_row(report["latency_ms"]) == "- / - / -"
    full = Measurement(window_start_s=10.0, window_end_s=13.0)
    full.blocks = [SeenBlock(h, 10.5 + h / 10, 1000 * h, 5, []) for h in range(1, 6)]
    assert figures(full)["warnings"] == []
    full.latencies_s = [0.25, 0.5, 2.0]
    assert figures(full)["latency_seen_ms"] == {
        "p50": 500.0, "p95": 2000.0, "p99": 2000.0, "max": 2000.0, "count": 3
    }  # fmt: skip
    assert latency_row(figures(full)["latency_ms"]) == "500 / 2,000 / 2,000"
    assert figures(full)["tx_per_s"] == pytest.approx(25 / 3, rel=0.01)


def test_memory_growth_is_the_slope_of_the_second_half() -> None:
    mib = 1024
    # Caches filling for the first half (steep), then 3 MiB a minute: one sample every 5 s.
    filling = [100 * mib + 2_000 * i for i in range(12)]
    steady = [filling[-1] + round(i * 3 * mib / 12) for i in range(1, 13)]
    assert rss_growth_mib_per_min(filling + steady, 5.0) == pytest.approx(3.0, abs=0.1)
    assert rss_growth_mib_per_min([300 * mib] * 24, 5.0) == 0.0
    # Too few samples to fit, or a validator that was not running for a sample: no figure.
    assert rss_growth_mib_per_min([300 * mib] * 6, 5.0) is None
    assert rss_growth_mib_per_min([300 * mib] * 20 + [0] + [300 * mib] * 3, 5.0) is None


def test_fast_signer_matches_eth_account() -> None:
    key = Account.create()
    from eth_keys.datatypes import PrivateKey  # noqa: PLC0415

    to, data = bytes.fromhex("11" * 20), bytes(range(200))
    raw = sign_legacy(PrivateKey(bytes(key.key)), 7, to, data, 31337)
    expected = Account.sign_transaction(
        {"to": "0x" + to.hex(), "data": data, "gas": 400_000, "gasPrice": 10**9,
         "nonce": 7, "chainId": 31337, "value": 0},
        key.key,
    )  # fmt: skip
    assert raw == expected.raw_transaction


@pytest.mark.timeout(120)
def test_short_run_reports_consistent_figures(tmp_path: Path) -> None:
    directory = tmp_path / "net"
    description = start_testnet(directory, validators=4, db="sqlite", base_port=BASE_PORT)
    try:
        wait_started(directory, description)
        run = subprocess.run(
            # A paced load (not "as fast as accepted"): an unpaced burst of 12,000
            # transactions can take longer than a short window to reach its first block on
            # a loaded 2-core CI machine, and this test is about the report, not the peak.
            [sys.executable, "-m", "node", "bench", "--testnet", str(directory),
             "--rate", "300", "--clients", "16", "--duration", "6", "--warmup", "3", "--json"],
            capture_output=True, check=True, timeout=90,
        )  # fmt: skip
        result = json.loads(run.stdout)
        for field in ("tx_per_s", "latency_ms", "validators", "duration_s", "sig_limit_tx_per_s"):
            assert field in result
        assert result["validators"] == 4
        assert result["tx_per_s"] > 0, result["warnings"]
        latency = result["latency_ms"]
        assert 0 < latency["p50"] <= latency["p95"] <= latency["p99"]
        assert result["tx_per_s"] == pytest.approx(
            result["committed_txs"] / result["duration_s"], rel=0.01
        )
        blocks = result["blocks"]
        api = description["nodes"][0]["api"]
        with Client(api, description["operator_token"]) as client:
            counted = sum(
                client.block(height).header["tx_count"]
                for height in range(blocks["first_height"], blocks["last_height"] + 1)
            )
        assert counted == result["committed_txs"]
        assert result["outcomes"]["ok"] + result["outcomes"]["failed"] <= counted
        assert len(result["per_validator"]) == 4
        for node in result["per_validator"]:
            assert node["cpu_percent"] > 0
            assert node["peak_rss_mib"] >= node["rss_mib_start"] > 0
    finally:
        stop_testnet(directory)


def test_profile_charges_each_stack_to_its_deepest_phase(tmp_path: Path) -> None:
    # Stacks as py-spy writes them for a validator: a client batch admitted through the
    # gateway, its signatures checked in a worker thread, a block written by the store,
    # and the event loop alone.
    loop = "Runner.run (asyncio/runners.py:118)"
    http = f"{loop};APIRoute.handle (fastapi/routing.py:1)"
    admit = "NodeRuntime._admit_many (node/runtime.py:560)"
    worker = "Thread.run (threading.py:982);_worker (concurrent/futures/thread.py:81)"
    raw = tmp_path / "raw.txt"
    raw.write_text(
        f"{http};submit_batch (gateway/routes/transactions.py:116) 5\n"
        f"{http};submit_batch (gateway/routes/transactions.py:116);{admit} 3\n"
        f"{worker};_signatures_valid (node/runtime.py:130);check_signature (node/tx.py:1) 6\n"
        f"{worker};SqlStore.commit_block (node/storage/_sql.py:400) 4\n"
        f"{loop} 2\n"
    )
    summary = summarise(raw)
    assert summary["samples"] == 20
    assert summary["phases"] == {
        "admission": 0.45,
        "http and gateway": 0.25,
        "storage": 0.2,
        "other (event loop, asyncio, logging)": 0.1,
    }
