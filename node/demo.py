"""``coopledger demo``: the seeds' scenario executed, stored and shown, in one process.

It runs the real ledger core (admission, rule engine, state root, storage) with a dev
consortium whose validator keys the demo holds, so it can sign each block's commit itself.
It is not consensus: ``coopledger testnet up`` runs separate validator processes.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table

from node.consortium import make_consortium
from node.genesis import write_genesis
from node.ledger import Ledger
from node.scenario import scenario_blocks
from node.storage import SqlStore

console = Console()


def run_demo(directory: Path, database_url: str | None) -> Ledger:
    """Execute the scenario into a fresh store under ``directory``; return the ledger."""
    directory.mkdir(parents=True, exist_ok=True)
    consortium = make_consortium(chain_id="coop-demo")
    genesis = consortium.genesis
    write_genesis(directory / "genesis.json", genesis)
    url = database_url or f"sqlite:///{directory / 'ledger.sqlite'}"
    store = SqlStore(url, chain_id=genesis.chain_id, genesis_hash=genesis.hash)
    ledger = Ledger(genesis, store)
    if ledger.height:
        raise typer.BadParameter(f"{url} already holds a chain; use an empty --dir")
    for block_time_ms, envelopes in scenario_blocks(consortium, genesis.genesis_time_ms):
        txs = [ledger.admit(envelope, block_time_ms) for envelope in envelopes]
        executed = ledger.execute(txs, timestamp_ms=block_time_ms, proposer="validator-0")
        commit = consortium.commit_for(executed.height, 0, executed.block_hash)
        ledger.commit(executed, commit)
        failed = [
            (tx.type, outcome.code)
            for tx, outcome in zip(executed.txs, executed.outcomes, strict=True)
            if outcome.code != "ok"
        ]
        console.print(
            f"block {executed.height}: {len(txs)} txs, state_root "
            f"{executed.header['state_root'][:16]}...  {failed or ''}"
        )
    return ledger


def show(ledger: Ledger) -> None:
    history = Table(title="Provenance of cheese-bread-0414 and its inputs")
    for column in ("asset", "seq", "event", "tx"):
        history.add_column(column)
    for asset_id in ("gruyere-2026-041", "rye-flour-0193", "cheese-bread-0414"):
        for event in ledger.store.asset_events(asset_id):
            history.add_row(asset_id, str(event.seq), event.type, event.tx_id[:12])
    console.print(history)
    purchase = ledger.state_get("purchase/milk-pool-q1") or {}
    pool = Table(title=f"Joint purchase milk-pool-q1: {purchase.get('status')}")
    for column in ("member", "litres", "cost (minor units)"):
        pool.add_column(column)
    for member, quantity in purchase.get("commitments", {}).items():
        pool.add_row(member, str(quantity), str(purchase["costs"].get(member, "-")))
    pool.add_row("total", str(purchase.get("total")), f"at {purchase.get('unit_price')} per litre")
    console.print(pool)


def register(app: typer.Typer) -> None:
    @app.command()
    def demo(
        directory: Annotated[Path, typer.Option("--dir", help="Where to write the chain.")] = Path(
            "demo-ledger"
        ),
        db: Annotated[
            str | None, typer.Option(help="Database URL (default: SQLite in --dir).")
        ] = None,
    ) -> None:
        """Run the seeds' scenario through the ledger core and show the provenance."""
        ledger = run_demo(directory, db)
        show(ledger)
        console.print(
            f"chain at height {ledger.height}, block {ledger.last_block_hash[:16]}...; "
            f"genesis and database in {directory}"
        )
