"""``coopledger bench``: committed throughput and latency of a local network under load."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.table import Table

from node.bench.run import Options, run_coopledger
from node.errors import ConfigError


def register(app: typer.Typer) -> None:
    @app.command("bench")
    def bench(  # noqa: PLR0917 (typer maps parameters to options)
        validators: Annotated[int, typer.Option(help="Validators of the network it starts.")] = 4,
        db: Annotated[str, typer.Option(help="sqlite, or a postgresql+psycopg:// URL.")] = "sqlite",
        duration: Annotated[float, typer.Option(help="Measured seconds.")] = 30.0,
        warmup: Annotated[float, typer.Option(help="Seconds of load before measuring.")] = 5.0,
        clients: Annotated[
            int, typer.Option(help="Concurrent HTTP clients (keep-alive connections), all nodes.")
        ] = 192,
        rate: Annotated[
            float, typer.Option(help="Open-loop target tx/s; 0 sends as fast as accepted.")
        ] = 0.0,
        testnet: Annotated[
            Path | None, typer.Option(help="Load this running testnet instead of starting one.")
        ] = None,
        directory: Annotated[
            Path | None, typer.Option("--dir", help="Where to create the testnet (kept).")
        ] = None,
        base_port: Annotated[int, typer.Option(help="First port of the testnet it starts.")] = (
            31000
        ),
        compare_anvil: Annotated[
            bool, typer.Option(help="Also run the same mix on anvil (default and tuned).")
        ] = False,
        profile: Annotated[
            bool, typer.Option(help="Sample validator-0 with py-spy during the window.")
        ] = False,
        keep: Annotated[bool, typer.Option(help="Keep the testnet's directory.")] = False,
        json_output: Annotated[bool, typer.Option("--json", help="Print one JSON object.")] = False,
    ) -> None:
        """Load a 4-validator network with the business mix and report committed tx/s,
        submit-to-final latency, block shape, CPU and memory per validator."""
        if duration <= 0 or warmup < 0 or clients < 1 or rate < 0:
            raise ConfigError("bench", "options", "need duration > 0, warmup >= 0, clients >= 1")
        console = Console(stderr=True)
        options = Options(
            validators=validators,
            db=db,
            duration_s=duration,
            warmup_s=warmup,
            clients=clients,
            rate_per_s=rate,
            testnet=testnet,
            directory=directory.resolve() if directory else None,
            base_port=base_port,
            profile=profile,
            keep=keep,
        )
        with console.status("starting") as status:

            def progress(text: str) -> None:
                status.update(text)

            result = run_coopledger(options, progress)
            if compare_anvil:
                from node.bench.evm import run_anvil  # noqa: PLC0415 (web3 loads slowly)

                anvil = run_anvil(options, progress)
                result["anvil"] = anvil
                result["anvil_tx_per_s"] = anvil["tuned"]["tx_per_s"]
                result["anvil_default_tx_per_s"] = anvil["default"]["tx_per_s"]
                tuned = anvil["tuned"]["tx_per_s"]
                result["ratio_to_anvil"] = round(result["tx_per_s"] / tuned, 2) if tuned else None
        if json_output:
            typer.echo(json.dumps(result, indent=2))
        else:
            show(Console(), result)


def show(console: Console, result: dict[str, Any]) -> None:
    latency = result["latency_ms"]
    blocks = result["blocks"]
    table = Table(title=f"coopledger, {result['validators']} validators, {result['db']}")
    table.add_column("figure")
    table.add_column("value", justify="right")
    table.add_row("committed tx/s", f"{result['tx_per_s']:,.0f}")
    table.add_row(
        "submit-to-final p50 / p95 / p99 ms",
        latency_row(latency),
    )
    table.add_row("blocks, mean txs, mean interval ms", _blocks(blocks))
    outcomes = result["outcomes"]
    table.add_row("outcomes ok / failed", f"{outcomes['ok']:,} / {outcomes['failed']:,}")
    table.add_row("refused at admission", json.dumps(outcomes["refused_at_admission"]))
    table.add_row(
        "signature limit (share)",
        f"{result['sig_limit_tx_per_s']:,} tx/s ({100 * result['sig_limit_share']:.0f} %)",
    )
    table.add_row("load generator CPU", f"{result['load_generator_cpu_percent']} %")
    for node in result["per_validator"]:
        table.add_row(
            f"{node['name']} CPU / peak RSS / RSS growth",
            f"{node.get('cpu_percent', '-')} % / {node.get('peak_rss_mib', '-')} MiB / "
            f"{node.get('rss_growth_mib_per_min', '-')} MiB/min",
        )
    if "anvil" in result:
        for name in ("default", "tuned"):
            run = result["anvil"][name]
            table.add_row(f"anvil {name} ({run['config']}) tx/s", f"{run['tx_per_s']:,.0f}")
        table.add_row("coopledger / anvil tuned", f"{result['ratio_to_anvil']}")
    console.print(table)
    for warning in result.get("warnings", []):
        console.print(f"[yellow]warning:[/yellow] {warning}")
    if "profile" in result:
        console.print(f"profile of {result['profile']['validator']}: {result['profile']['phases']}")


def latency_row(latency: dict[str, Any]) -> str:
    """``p50 / p95 / p99`` in whole milliseconds, ``-`` where nothing was measured."""
    return " / ".join(
        "-" if latency[q] is None else f"{latency[q]:,.0f}" for q in ("p50", "p95", "p99")
    )


def _blocks(blocks: dict[str, Any]) -> str:
    return f"{blocks['count']}, {blocks['txs_mean']:,.0f}, {blocks['interval_ms_mean']}"
