"""Node metrics: the Grafana dashboard in deploy/ queries only series a node exports, and
the garbage-collector pauses are timed (with the GC policy the node's entry point sets)."""

from __future__ import annotations

import gc
import json
import re
from pathlib import Path

from node.cli_node import GC_THRESHOLDS, tune_gc
from node.metrics import NodeMetrics

DASHBOARD = Path(__file__).resolve().parent.parent / "deploy" / "grafana" / "coopledger.json"


def exported_names() -> set[str]:
    names: set[str] = set()
    for family in NodeMetrics().registry.collect():
        for sample in family.samples:
            names.add(sample.name)
        names.add(family.name)
        if family.type == "counter":
            names.add(f"{family.name}_total")
        if family.type == "histogram":
            names.update(f"{family.name}_{suffix}" for suffix in ("bucket", "sum", "count"))
    return names


def test_every_dashboard_query_names_an_exported_metric() -> None:
    dashboard = json.loads(DASHBOARD.read_text())
    exported = exported_names()
    used = set()
    for panel in dashboard["panels"]:
        for target in panel["targets"]:
            used.update(re.findall(r"coopledger_[a-z_]+", target["expr"]))
    assert used, "the dashboard queries nothing"
    assert used <= exported, sorted(used - exported)
    covered = {re.sub(r"_(bucket|sum|count|total)$", "", name) for name in used}
    assert {
        "coopledger_height",
        "coopledger_commit_latency_seconds",
        "coopledger_mempool_txs",
        "coopledger_peers_connected",
        "coopledger_txs_rejected",
    } <= covered


def gc_pause_counts(metrics: NodeMetrics) -> dict[str, float]:
    return {
        sample.labels["generation"]: sample.value
        for family in metrics.registry.collect()
        for sample in family.samples
        if sample.name == "coopledger_gc_pause_seconds_count"
    }


def test_gc_pauses_are_timed_until_the_watch_is_undone() -> None:
    metrics = NodeMetrics()
    undo = metrics.watch_gc()
    try:
        gc.collect(0)
        gc.collect(2)
    finally:
        undo()
    counts = gc_pause_counts(metrics)
    assert counts["0"] >= 1 and counts["2"] >= 1
    gc.collect(2)  # no longer watched
    assert gc_pause_counts(metrics) == counts


def test_the_node_entry_point_freezes_start_up_and_collects_less_often() -> None:
    thresholds = gc.get_threshold()
    try:
        tune_gc()
        assert gc.get_threshold() == GC_THRESHOLDS
        assert gc.get_freeze_count() > 0
    finally:
        gc.unfreeze()
        gc.set_threshold(*thresholds)
