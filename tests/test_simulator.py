"""The simulator: determinism, zero violations over fixed seed ranges with every fault
kind, every mutant caught, the CLI, and the layering rule that keeps the core pure.

Seed ranges are fixed constants (never drawn at collection time). A failure message
carries the command that replays the failing seed.
"""

from __future__ import annotations

import ast
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import typer
from typer.testing import CliRunner

from consensus.cli import SEEDS_DEFAULT, register
from consensus.simulator import FAULT_KINDS, MUTANTS, SimulationConfig, run_seed
from consensus.simulator.batch import BatchSummary, replay_command, run_batch
from consensus.simulator.checkers import CommitRecord, Recorder, check_agreement
from consensus.simulator.scenario import BYZANTINE_FAULTS, make_scenario
from consensus.simulator.world import sim_genesis

CONSENSUS = Path(__file__).resolve().parent.parent / "consensus"
CI_BLOCKS = 40
"""Blocks each honest validator commits per CI seed (the benchmark uses 200)."""
CI_SEEDS = {4: range(0, 300), 7: range(0, 200)}
"""At least 500 seeds across n = 4 and n = 7, all fault kinds enabled."""
CHUNK = 50


def _explain(summary: BatchSummary, blocks: int) -> str:
    lines = []
    for result in summary.failures[:5]:
        lines.append(f"seed {result.seed}: {result.violations[:3]}")
        lines.append("  replay: " + replay_command(result, FAULT_KINDS, None, blocks))
    return "\n".join(lines)


@pytest.mark.slow
@pytest.mark.parametrize(
    ("validators", "start"),
    [(n, start) for n, seeds in CI_SEEDS.items() for start in seeds[::CHUNK]],
)
def test_no_violations_with_all_faults(validators: int, start: int) -> None:
    summary = run_batch(range(start, start + CHUNK), validators, blocks=CI_BLOCKS)
    assert summary.violations == 0, _explain(summary, CI_BLOCKS)
    assert summary.blocks_committed >= CHUNK * CI_BLOCKS


def test_ci_seed_ranges_exercise_every_fault_kind() -> None:
    active: set[str] = set()
    behaviours: set[str] = set()
    for validators, seeds in CI_SEEDS.items():
        for seed in seeds:
            scenario = make_scenario(seed, validators, FAULT_KINDS)
            active.update(scenario.active)
            behaviours.update(kind for _, kind in scenario.byzantine)
    assert active == set(FAULT_KINDS)
    assert behaviours == set(BYZANTINE_FAULTS)


@pytest.mark.parametrize("validators", [4, 7])
@pytest.mark.parametrize("mutant", sorted(MUTANTS))
def test_every_mutant_is_caught_within_the_default_budget(mutant: str, validators: int) -> None:
    summary = run_batch(
        range(SEEDS_DEFAULT),
        validators,
        mutant=mutant,
        blocks=CI_BLOCKS,
        stop_at_first_violation=True,
    )
    assert summary.violations > 0, f"mutant {mutant} survived {summary.seeds} seeds"


def test_same_seed_gives_the_same_trace() -> None:
    config = SimulationConfig(seed=17, validators=4, blocks=20)
    first, second = run_seed(config), run_seed(config)
    assert first.trace_hash == second.trace_hash
    other = run_seed(SimulationConfig(seed=18, validators=4, blocks=20))
    assert other.trace_hash != first.trace_hash


def test_trace_does_not_depend_on_string_hashing() -> None:
    code = (
        "from consensus.simulator import SimulationConfig, run_seed;"
        "print(run_seed(SimulationConfig(seed=5, validators=4, blocks=15)).trace_hash)"
    )
    hashes = set()
    for hash_seed in ("1", "2"):
        env = dict(os.environ, PYTHONHASHSEED=hash_seed)
        done = subprocess.run(
            [sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True
        )
        hashes.add(done.stdout.strip())
    assert len(hashes) == 1


def test_agreement_checker_reports_a_fork() -> None:
    genesis = sim_genesis(4)
    recorder = Recorder(
        genesis=genesis,
        verifier=None,  # type: ignore[arg-type]
        honest_validators=frozenset({"val-0", "val-1"}),
        honest_instances=(0, 1),
        proposer=lambda h, r: "val-0",
    )
    commit = {"height": 1, "round": 0, "block_hash": "", "signatures": []}
    for instance, block_hash in ((0, "aa" * 32), (1, "bb" * 32)):
        recorder.on_commit(
            CommitRecord(instance, 1, block_hash, commit, "00" * 32, (), 0)  # type: ignore[arg-type]
        )
    assert [v.kind for v in check_agreement(recorder)] == ["agreement"]


# --- the CLI ------------------------------------------------------------------------------------


def _app() -> typer.Typer:
    app = typer.Typer()
    register(app)

    @app.command()
    def version() -> None:  # a second command, so that "simulate" stays a subcommand
        """Unused."""

    return app


def test_cli_json_summary() -> None:
    result = CliRunner().invoke(
        _app(), ["simulate", "--validators", "4", "--seeds", "2", "--blocks", "10", "--json"]
    )
    assert result.exit_code == 0, result.output
    data = json.loads(result.output)
    assert set(data) == {
        "seeds",
        "validators",
        "violations",
        "violations_by_kind",
        "blocks_committed",
        "virtual_seconds",
        "wall_seconds",
        "failing_seeds",
    }
    assert data["seeds"] == 2 and data["violations"] == 0 and data["failing_seeds"] == []


def test_cli_failing_seed_prints_replay_command_and_trace() -> None:
    result = CliRunner().invoke(
        _app(),
        [
            "simulate",
            "--seeds",
            "1",
            "--seed-start",
            "3",
            "--blocks",
            "10",
            "--mutant",
            "quorum-2f",
        ],
    )
    assert result.exit_code == 1
    replay = "coopledger simulate --validators 4 --seeds 1 --seed-start 3 --mutant quorum-2f"
    assert f"replay: {replay} --blocks 10" in result.output
    assert "commits h" in result.output


def test_cli_rejects_unknown_fault_kind() -> None:
    result = CliRunner().invoke(_app(), ["simulate", "--faults", "meteor"])
    assert result.exit_code != 0


# --- layering: the core never does I/O -------------------------------------------------------

FORBIDDEN = {
    "asyncio",
    "socket",
    "time",
    "sqlalchemy",
    "random",
    "datetime",
    "threading",
    "selectors",
    "subprocess",
    "os",
}


def _imports(tree: ast.AST) -> list[str]:
    names = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names += [alias.name.split(".")[0] for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.append(node.module.split(".")[0])
    return names


def test_core_imports_no_clock_socket_disk_or_global_randomness() -> None:
    core_files = [p for p in CONSENSUS.rglob("*.py") if "simulator" not in p.parts]
    assert len(core_files) >= 8
    for path in core_files:
        bad = set(_imports(ast.parse(path.read_text()))) & FORBIDDEN
        assert not bad, f"{path.name} imports {bad}"


def test_simulator_uses_only_seeded_random_and_reads_time_only_to_report() -> None:
    for path in (CONSENSUS / "simulator").rglob("*.py"):
        tree = ast.parse(path.read_text())
        allowed = {"random"} | ({"time"} if path.name == "batch.py" else set())
        bad = set(_imports(tree)) & (FORBIDDEN - allowed)
        assert not bad, f"{path.name} imports {bad}"
        for node in ast.walk(tree):
            if (
                isinstance(node, ast.Attribute)
                and isinstance(node.value, ast.Name)
                and node.value.id == "random"
            ):
                assert node.attr == "Random", f"{path.name} uses random.{node.attr}"
            if isinstance(node, ast.ImportFrom) and node.module == "random":
                assert [a.name for a in node.names] == ["Random"], path.name
