"""Runs over ranges of seeds, their summary, and how to replay a failing seed.

The only place in ``consensus/`` that reads a clock: the wall time of a batch, for the
report. Nothing it measures feeds back into a simulation.
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from consensus.simulator.run import BLOCKS_DEFAULT, SeedResult, SimulationConfig, run_seed
from consensus.simulator.scenario import FAULT_KINDS


@dataclass(slots=True)
class BatchSummary:
    seeds: int
    validators: int
    violations: int = 0
    violations_by_kind: Counter[str] = field(default_factory=Counter)
    blocks_committed: int = 0
    virtual_ms: int = 0
    wall_seconds: float = 0.0
    failures: list[SeedResult] = field(default_factory=list)

    @property
    def failing_seeds(self) -> list[int]:
        return [result.seed for result in self.failures]

    def to_json(self) -> dict[str, Any]:
        return {
            "seeds": self.seeds,
            "validators": self.validators,
            "violations": self.violations,
            "violations_by_kind": dict(sorted(self.violations_by_kind.items())),
            "blocks_committed": self.blocks_committed,
            "virtual_seconds": round(self.virtual_ms / 1000, 3),
            "wall_seconds": round(self.wall_seconds, 3),
            "failing_seeds": self.failing_seeds,
        }


def run_batch(
    seeds: range,
    validators: int,
    *,
    faults: tuple[str, ...] = FAULT_KINDS,
    mutant: str | None = None,
    blocks: int = BLOCKS_DEFAULT,
    stop_at_first_violation: bool = False,
    on_seed: Callable[[SeedResult], None] | None = None,
) -> BatchSummary:
    """Run every seed of ``seeds``; with ``stop_at_first_violation``, stop at the first."""
    summary = BatchSummary(seeds=0, validators=validators)
    started = time.perf_counter()
    for seed in seeds:
        result = run_seed(SimulationConfig(seed, validators, faults, mutant, blocks))
        summary.seeds += 1
        summary.blocks_committed += result.blocks_committed
        summary.virtual_ms += result.virtual_ms
        if result.violations:
            summary.violations += len(result.violations)
            summary.violations_by_kind.update(v.kind for v in result.violations)
            summary.failures.append(result)
        if on_seed is not None:
            on_seed(result)
        if result.violations and stop_at_first_violation:
            break
    summary.wall_seconds = time.perf_counter() - started
    return summary


def replay_command(
    result: SeedResult, faults: tuple[str, ...], mutant: str | None, blocks: int
) -> str:
    """The exact command that replays ``result``'s seed."""
    parts = [
        "coopledger simulate",
        f"--validators {result.validators}",
        "--seeds 1",
        f"--seed-start {result.seed}",
    ]
    if tuple(faults) != FAULT_KINDS:
        parts.append(f"--faults {','.join(faults) or 'none'}")
    if mutant:
        parts.append(f"--mutant {mutant}")
    if blocks != BLOCKS_DEFAULT:
        parts.append(f"--blocks {blocks}")
    return " ".join(parts)


def violation_trace(
    result: SeedResult, faults: tuple[str, ...], mutant: str | None, blocks: int, lines_max: int
) -> list[str]:
    """The last trace lines about the first violation's height, up to where the run ended.

    The seed is replayed with its whole trace kept (a replay is exact), so the lines of a
    height decided long before the end of the run are still there.
    """
    heights = [v.height for v in result.violations if v.height is not None]
    if not heights:
        return result.recent_trace[-lines_max:]
    config = SimulationConfig(
        result.seed, result.validators, faults, mutant, blocks, trace_lines_kept=TRACE_ALL
    )
    replayed = run_seed(config)
    marker = f" h{min(heights)} "
    about = [line for line in replayed.recent_trace if marker in line]
    return about[-lines_max:]


TRACE_ALL = 10_000_000
