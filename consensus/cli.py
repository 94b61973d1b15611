"""``coopledger simulate``: run the deterministic simulator over a range of seeds.

``node/cli.py`` owns the typer app; this module only adds the command to it through
:func:`register`.
"""

from __future__ import annotations

import json
from typing import Annotated

import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table
from rich.text import Text

from consensus.simulator.batch import BatchSummary, replay_command, run_batch, violation_trace
from consensus.simulator.mutants import MUTANTS
from consensus.simulator.run import BLOCKS_DEFAULT, SeedResult
from consensus.simulator.scenario import FAULT_KINDS

SEEDS_DEFAULT = 200
"""The default seed budget: every mutant is caught well within it (docs/consensus.md)."""
TRACE_LINES_SHOWN = 40
VALIDATORS_MIN = 4
VALIDATORS_SIM_MAX = 31


def parse_faults(text: str) -> tuple[str, ...]:
    """``all``, ``none`` or a comma-separated list of fault kinds."""
    if text == "all":
        return FAULT_KINDS
    if text == "none":
        return ()
    kinds = tuple(k.strip() for k in text.split(",") if k.strip())
    unknown = [k for k in kinds if k not in FAULT_KINDS]
    if unknown:
        raise typer.BadParameter(
            f"unknown fault kind {', '.join(unknown)}; known: {', '.join(FAULT_KINDS)}"
        )
    return tuple(k for k in FAULT_KINDS if k in kinds)


def simulate(  # noqa: PLR0917 (typer maps parameters to options)
    validators: Annotated[int, typer.Option(help="Validators (n = 3f + 1: 4, 7, ...).")] = 4,
    seeds: Annotated[int, typer.Option(help="How many seeds to run.")] = SEEDS_DEFAULT,
    seed_start: Annotated[int, typer.Option(help="First seed.")] = 0,
    faults: Annotated[
        str, typer.Option(help=f"all, none, or a list of: {','.join(FAULT_KINDS)}.")
    ] = "all",
    mutant: Annotated[
        str | None, typer.Option(help=f"A deliberately broken core: {', '.join(MUTANTS)}.")
    ] = None,
    blocks: Annotated[int, typer.Option(help="Blocks each honest validator commits.")] = (
        BLOCKS_DEFAULT
    ),
    as_json: Annotated[bool, typer.Option("--json", help="Print one JSON object.")] = False,
) -> None:
    """Run the consensus simulator; exit 1 if any checker reports a violation."""
    if not VALIDATORS_MIN <= validators <= VALIDATORS_SIM_MAX:
        raise typer.BadParameter(f"--validators must be {VALIDATORS_MIN}..{VALIDATORS_SIM_MAX}")
    if seeds < 1 or seed_start < 0 or blocks < 1:
        raise typer.BadParameter("--seeds and --blocks must be positive, --seed-start >= 0")
    if mutant is not None and mutant not in MUTANTS:
        raise typer.BadParameter(f"unknown mutant {mutant!r}; known: {', '.join(MUTANTS)}")
    fault_kinds = parse_faults(faults)
    seed_range = range(seed_start, seed_start + seeds)
    if as_json:
        summary = run_batch(
            seed_range, validators, faults=fault_kinds, mutant=mutant, blocks=blocks
        )
        typer.echo(json.dumps(summary.to_json(), sort_keys=True))
    else:
        console = Console()
        summary = _run_with_progress(
            console,
            seed_range=seed_range,
            validators=validators,
            faults=fault_kinds,
            mutant=mutant,
            blocks=blocks,
        )
        _print_summary(console, summary, fault_kinds, mutant, blocks)
    if summary.violations:
        raise typer.Exit(1)


def _run_with_progress(
    console: Console,
    *,
    seed_range: range,
    validators: int,
    faults: tuple[str, ...],
    mutant: str | None,
    blocks: int,
) -> BatchSummary:
    columns = (
        TextColumn("[bold]simulate[/] n={task.fields[n]}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("{task.fields[bad]} failing"),
        TimeElapsedColumn(),
    )
    with Progress(*columns, console=console, transient=True) as progress:
        task = progress.add_task("seeds", total=len(seed_range), n=validators, bad=0)
        failing = 0

        def advance(result: SeedResult) -> None:
            nonlocal failing
            failing += 1 if result.violations else 0
            progress.update(task, advance=1, bad=failing)

        return run_batch(
            seed_range, validators, faults=faults, mutant=mutant, blocks=blocks, on_seed=advance
        )


def _print_summary(
    console: Console,
    summary: BatchSummary,
    faults: tuple[str, ...],
    mutant: str | None,
    blocks: int,
) -> None:
    for result in summary.failures[:3]:
        console.rule(f"[red]seed {result.seed} failed")
        console.print(f"scenario: {result.scenario}", markup=False, highlight=False)
        for violation in result.violations[:10]:
            where = f" at height {violation.height}" if violation.height is not None else ""
            console.print(Text.assemble((violation.kind, "red"), f"{where}: {violation.detail}"))
        trace = violation_trace(result, faults, mutant, blocks, TRACE_LINES_SHOWN)
        console.print(f"trace of the violation's height, last {len(trace)} events:")
        for line in trace:
            console.print(f"  {line}", markup=False, highlight=False, soft_wrap=True)
        command = replay_command(result, faults, mutant, blocks)
        console.print(f"replay: {command}", markup=False, highlight=False, soft_wrap=True)
    data = summary.to_json()
    table = Table(title="simulation summary" + (f" (mutant {mutant})" if mutant else ""))
    table.add_column("measure")
    table.add_column("value", justify="right")
    for key in (
        "seeds",
        "validators",
        "violations",
        "blocks_committed",
        "virtual_seconds",
        "wall_seconds",
    ):
        table.add_row(key.replace("_", " "), str(data[key]))
    for kind, count in data["violations_by_kind"].items():
        table.add_row(f"  {kind}", str(count))
    seeds_per_minute = 60 * summary.seeds / summary.wall_seconds if summary.wall_seconds else 0
    table.add_row("seeds per minute", f"{seeds_per_minute:.0f}")
    shown = ", ".join(str(s) for s in summary.failing_seeds[:20])
    table.add_row("failing seeds", shown or "none")
    console.print(table)


def register(app: typer.Typer) -> None:
    """Add the ``simulate`` command to the ``coopledger`` app."""
    app.command("simulate")(simulate)
