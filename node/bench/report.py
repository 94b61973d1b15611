"""Turn a :class:`~node.bench.engine.Measurement` into the figures the benchmark reports."""

from __future__ import annotations

import itertools
import math
import statistics
from typing import Any

from node.bench.engine import Measurement
from node.bench.procstat import ProcessSample


def percentile(values: list[float], fraction: float) -> float:
    """Nearest-rank percentile (0 for no values)."""
    if not values:
        return 0.0
    ordered = sorted(values)
    rank = max(1, min(len(ordered), math.ceil(fraction * len(ordered) - 1e-9)))
    return ordered[rank - 1]


def latency_ms(values_s: list[float]) -> dict[str, float | int | None]:
    """p50, p95, p99 and max in milliseconds, and the count; with no values the figures are
    ``None`` (JSON ``null``), not 0: a window in which nothing sent was seen committed
    measured no latency (anvil's default configuration can commit only transactions sent
    before the window)."""
    if not values_s:
        return {"p50": None, "p95": None, "p99": None, "max": None, "count": 0}
    return {
        "p50": round(percentile(values_s, 0.50) * 1000, 1),
        "p95": round(percentile(values_s, 0.95) * 1000, 1),
        "p99": round(percentile(values_s, 0.99) * 1000, 1),
        "max": round(max(values_s) * 1000, 1),
        "count": len(values_s),
    }


def figures(m: Measurement) -> dict[str, Any]:
    """Throughput, latency, block shape and outcomes of one measured window."""
    duration_s = m.window_end_s - m.window_start_s
    committed = sum(block.tx_count for block in m.blocks)
    times = [b.timestamp_ms for b in m.blocks]
    intervals = [later - earlier for earlier, later in itertools.pairwise(times)]
    ok = sum(n for (_, code), n in m.outcomes.items() if code == "ok")
    by_type: dict[str, dict[str, int]] = {}
    for (kind, code), n in sorted(m.outcomes.items()):
        entry = by_type.setdefault(kind, {"ok": 0, "failed": 0})
        entry["ok" if code == "ok" else "failed"] += n
    sampled = m.sampled_latencies_s or m.latencies_s
    return {
        "duration_s": round(duration_s, 2),
        "tx_per_s": round(committed / duration_s, 1) if duration_s > 0 else 0.0,
        "committed_txs": committed,
        "latency_ms": latency_ms(sampled),
        "latency_source": "wait=commit sample" if m.sampled_latencies_s else "blocks seen",
        "latency_seen_ms": latency_ms(m.latencies_s),
        "blocks": {
            "count": len(m.blocks),
            "first_height": m.blocks[0].height if m.blocks else None,
            "last_height": m.blocks[-1].height if m.blocks else None,
            "txs_mean": round(committed / len(m.blocks), 1) if m.blocks else 0.0,
            "txs_max": max((b.tx_count for b in m.blocks), default=0),
            "interval_ms_mean": round(statistics.fmean(intervals), 1) if intervals else None,
            "interval_ms_p50": round(percentile([float(i) for i in intervals], 0.5), 1)
            if intervals
            else None,
        },
        "outcomes": {
            "ok": ok,
            "failed": sum(m.outcomes.values()) - ok,
            "by_type": by_type,
            "refused_at_admission": dict(m.refused),
            "lots_abandoned": m.lots_abandoned,
        },
        "sent_in_window": m.sent_in_window,
        "prepared_during_run": m.prepared_in_run,
        "uncommitted_at_end": m.uncommitted_at_end,
        "warnings": _warnings(m),
    }


FEW_BLOCKS = 3
"""A rate measured over fewer blocks than this is mostly edge effect."""


def _warnings(m: Measurement) -> list[str]:
    """What makes this run's figures unfit to quote."""
    warnings = []
    if not m.blocks:
        warnings.append(
            "no block committed inside the measured window: the load's first blocks came "
            "later (a loaded machine, or a window too short); lengthen --warmup and --duration "
            "or pace the load with --rate"
        )
    elif len(m.blocks) < FEW_BLOCKS:
        warnings.append(
            f"only {len(m.blocks)} blocks inside the window: the figure is mostly edge "
            "effect; lengthen --duration"
        )
    return warnings


GROWTH_SAMPLES_MIN = 4
"""RSS samples the growth figure needs in the second half of the window."""


def rss_growth_mib_per_min(timeline_kib: list[int], sample_s: float) -> float | None:
    """Least-squares slope of RSS over the second half of the window, in MiB a minute.

    The first half is left out: it holds the start-up and the filling of the bounded caches
    (state values, verified signatures, recent ids), which level off after a minute or two;
    what still grows after that is what a longer run would keep adding. ``None`` when the
    second half has fewer than :data:`GROWTH_SAMPLES_MIN` samples, or a sample is missing.
    """
    half = timeline_kib[len(timeline_kib) // 2 :]
    if len(half) < GROWTH_SAMPLES_MIN or 0 in half:
        return None
    times = [index * sample_s / 60 for index in range(len(half))]
    slope = statistics.linear_regression(times, [kib / 1024 for kib in half]).slope
    return round(slope, 1) + 0.0  # + 0.0: no -0.0 for a flat line


def process_figures(
    names: list[str],
    before: list[ProcessSample | None],
    after: list[ProcessSample | None],
    duration_s: float,
    timeline: list[list[int]],
    *,
    sample_s: float,
) -> list[dict[str, Any]]:
    """CPU share over the window, peak and current memory, the RSS timeline (MiB, one
    sample every ``sample_s``) and its growth over the window's second half."""
    result = []
    for index, name in enumerate(names):
        start, end = before[index], after[index]
        entry: dict[str, Any] = {"name": name}
        if start is not None and end is not None and duration_s > 0:
            entry["cpu_percent"] = round(100 * (end.cpu_s - start.cpu_s) / duration_s, 1)
            entry["rss_mib_start"] = round(start.rss_kib / 1024, 1)
            entry["rss_mib_end"] = round(end.rss_kib / 1024, 1)
            entry["peak_rss_mib"] = round(end.hwm_kib / 1024, 1)
        entry["rss_mib_timeline"] = [round(kib / 1024) for kib in timeline[index]]
        growth = rss_growth_mib_per_min(timeline[index], sample_s)
        if growth is not None:
            entry["rss_growth_mib_per_min"] = growth
        result.append(entry)
    return result
