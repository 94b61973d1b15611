"""``coopledger contracts ...``: build the contracts and check them against the native engine.

Heavy imports (web3, py-solc-x) happen inside the commands, so that the rest of the CLI
starts fast.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

if TYPE_CHECKING:
    from contracts.replay import ReplayReport


def register(app: typer.Typer) -> None:
    """Add the ``contracts`` sub-commands to the ``coopledger`` app."""
    contracts_app = typer.Typer(
        help="The Solidity contracts: build their artifacts, compare them with the native engine.",
        no_args_is_help=True,
    )
    contracts_app.command("build")(build)
    contracts_app.command("check")(check)
    contracts_app.command("gas")(gas)
    contracts_app.command("replay")(replay)
    app.add_typer(contracts_app, name="contracts")


def build(
    verify: Annotated[
        bool,
        typer.Option("--verify", help="Only check that the committed artifacts match the sources."),
    ] = False,
) -> None:
    """Compile the contracts with the pinned solc and write contracts/artifacts/*.json."""
    from contracts.build import (  # noqa: PLC0415 (see the module docstring)
        ARTIFACTS_DIR,
        artifact_bytes,
        compile_contracts,
        write_artifacts,
    )

    artifacts = compile_contracts()
    if verify:
        stale = [
            name
            for name, artifact in sorted(artifacts.items())
            if not (ARTIFACTS_DIR / f"{name}.json").is_file()
            or (ARTIFACTS_DIR / f"{name}.json").read_bytes() != artifact_bytes(artifact)
        ]
        if stale:
            typer.echo(f"stale artifacts: {', '.join(stale)}; run `coopledger contracts build`")
            raise typer.Exit(1)
        typer.echo("artifacts match the sources")
        return
    for path in write_artifacts(artifacts):
        typer.echo(f"wrote {path}")


def check(
    sequences: Annotated[int, typer.Option(min=1, help="Random sequences to run.")] = 300,
    steps: Annotated[int, typer.Option(min=1, help="Operations per sequence.")] = 30,
    seed: Annotated[int, typer.Option(min=0, help="Seed; the same seed replays exactly.")] = 0,
    json_output: Annotated[bool, typer.Option("--json", help="Print one JSON object.")] = False,
) -> None:
    """Run random sequences through the native engine and the contracts on anvil, compare.

    Exits 1 if they diverge, printing the shortest failing sequence found.
    """
    from contracts.anvil import Anvil  # noqa: PLC0415
    from contracts.differential import DifferentialHarness, run_check  # noqa: PLC0415

    with Anvil.start() as anvil:
        harness = DifferentialHarness.deploy(anvil)
        report = run_check(harness, sequences, steps, seed)
    if json_output:
        typer.echo(json.dumps(report.to_json(), sort_keys=True))
    else:
        typer.echo(
            f"{report.sequences} sequences, {report.operations} operations, "
            f"{report.divergences} divergences (seed {report.seed}, {report.seconds:.1f} s)"
        )
        if report.divergences:
            typer.echo("shortest failing sequence:")
            for operation in report.shortest_failure:
                typer.echo("  " + json.dumps(operation, sort_keys=True))
            typer.echo(report.failure_detail)
    if report.divergences:
        raise typer.Exit(1)


def gas() -> None:
    """Measure the gas of every operation on a fresh anvil; print the docs/contracts.md table."""
    from web3 import Web3  # noqa: PLC0415

    from contracts.anvil import Anvil  # noqa: PLC0415
    from contracts.differential import World  # noqa: PLC0415
    from contracts.evm import EvmLedger  # noqa: PLC0415
    from contracts.gas import markdown_table, measure_gas  # noqa: PLC0415

    with Anvil.start() as anvil:
        world = World.build(Web3(Web3.HTTPProvider(anvil.url)).eth.accounts)
        ledger = EvmLedger.deploy(anvil.url, world.evm_members())
        ledger.key_addresses.update(world.addresses)
        typer.echo(markdown_table(measure_gas(ledger, world)))


def replay(  # noqa: PLR0917 (typer maps parameters to options)
    node: Annotated[str, typer.Option("--node", help="Base URL of a node's REST API.")],
    genesis_path: Annotated[
        Path,
        typer.Option(
            "--genesis",
            exists=True,
            dir_okay=False,
            help="The consortium's genesis file: the trusted source of members and validators.",
        ),
    ],
    token: Annotated[
        str, typer.Option("--token", envvar="COOPLEDGER_TOKEN", help="An auditor's token.")
    ],
    follow: Annotated[
        bool, typer.Option("--follow", help="Keep mirroring blocks as they commit.")
    ] = False,
    until_height: Annotated[
        int | None, typer.Option(min=1, help="Stop after replaying this height.")
    ] = None,
    max_blocks: Annotated[int | None, typer.Option(min=1, help="Replay at most this many.")] = None,
    metrics_port: Annotated[
        int | None,
        typer.Option(min=1, max=65535, help="Serve coopledger_replay_* on 127.0.0.1:PORT."),
    ] = None,
    poll_interval_s: Annotated[
        float, typer.Option("--poll-interval", min=0.05, max=10.0, help="--follow: seconds.")
    ] = 0.5,
    artifacts_dir: Annotated[
        Path | None,
        typer.Option(
            "--artifacts",
            exists=True,
            file_okay=False,
            help="Contract artifacts to deploy (default: contracts/artifacts).",
        ),
    ] = None,
    json_output: Annotated[bool, typer.Option("--json", help="Print one JSON object.")] = False,
) -> None:
    """Replay a live ledger's committed blocks onto freshly deployed contracts on anvil.

    Every block is verified against the genesis file (commit certificate, tx_root, and
    re-execution to its state_root) before its transactions are replayed; each transaction's
    EVM outcome and the records it touched are compared with the ledger's. Exits 3 on a
    divergence (with --follow: at the first), 2 if the node's data does not verify.
    """
    import logging  # noqa: PLC0415 (see the module docstring)

    from contracts.build import load_artifacts  # noqa: PLC0415
    from contracts.replay import (  # noqa: PLC0415
        EXIT_DIVERGENCE,
        Bounds,
        ReplayMetrics,
        replay_node,
    )
    from gateway.client import ApiError  # noqa: PLC0415
    from node.genesis import load_genesis  # noqa: PLC0415

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s %(message)s")
    logging.getLogger("httpx").setLevel(logging.WARNING)  # one line per request otherwise
    genesis = load_genesis(genesis_path)
    artifacts = load_artifacts(artifacts_dir) if artifacts_dir else None
    metrics = ReplayMetrics()
    if metrics_port is not None:
        metrics.serve(metrics_port)
    try:
        report = replay_node(
            node,
            token,
            genesis,
            artifacts=artifacts,
            bounds=Bounds(until_height=until_height, max_blocks=max_blocks),
            follow=follow,
            poll_interval_s=poll_interval_s,
            metrics=metrics,
        )
    except ApiError as error:
        typer.echo(f"error: the node answered {error}", err=True)
        raise typer.Exit(2) from error
    _print_replay(report, json_output)
    if report.divergence_count:
        raise typer.Exit(EXIT_DIVERGENCE)


def _print_replay(report: ReplayReport, json_output: bool) -> None:
    from rich.console import Console  # noqa: PLC0415
    from rich.table import Table  # noqa: PLC0415

    if json_output:
        typer.echo(json.dumps(report.to_json(), sort_keys=True))
        return
    console = Console()
    rate = report.transactions / report.seconds if report.seconds else 0.0
    console.print(
        f"chain {report.chain_id}: {report.blocks} blocks, {report.transactions} transactions "
        f"replayed up to height {report.tip} ({report.skipped} skipped, {rate:.0f} tx/s); "
        f"{report.divergence_count} divergences"
    )
    if report.divergences:
        table = Table("height", "index", "type", "sender", "ledger", "evm", "differences")
        for d in report.divergences:
            table.add_row(
                str(d.height), str(d.index), d.type, d.sender, d.ledger_code, d.evm_code,
                "\n".join(d.differences),
            )  # fmt: skip
        console.print(table)
