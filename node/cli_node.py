"""``coopledger node run`` and ``coopledger testnet up|status|down|kill|start|logs``."""

from __future__ import annotations

import asyncio
import gc
import logging
import time
from pathlib import Path
from typing import Annotated, Any

import typer
import uvloop
from rich.console import Console
from rich.table import Table

from gateway.app import create_app
from gateway.auth import FailureLimiter, TokenStore
from node.config import load_config
from node.demo_testnet import post_demo
from node.runtime import NodeRuntime
from node.testnet import (
    TestnetError,
    generate,
    node_entry,
    node_status,
    pid_alive,
    read_description,
    start_node,
    stop_node,
    wait_started,
    write_description,
)

console = Console()

DIRECTORY_OPTION = typer.Option("--dir", help="The testnet's directory.")
"""Shared by the testnet commands (module level: typer resolves annotations by name)."""

LOG_FORMAT = "%(asctime)s level=%(levelname)s logger=%(name)s %(message)s"


def run_node(config_path: Path) -> None:
    """Run one validator in the foreground until SIGTERM or SIGINT."""
    logging.basicConfig(level=logging.INFO, format=LOG_FORMAT)
    config = load_config(config_path)
    runtime = NodeRuntime(config)
    tokens = TokenStore(config.tokens_file) if config.tokens_file else TokenStore(None)
    app = create_app(runtime, tokens, limiter=FailureLimiter(failures_max=config.auth_failures_max))
    tune_gc()
    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        runner.run(runtime.run(app))


GC_THRESHOLDS = (250_000, 20, 100)
"""Young-generation size and the collections between older ones (CPython: 700, 10, 10).

A validator allocates tens of thousands of containers a second (parsed envelopes, rule
records, state values) and keeps most of them for seconds: in the mempool, in the block
pipeline, in the state cache. A young collection walks every container still alive, so its
cost is the in-flight work, and it finds almost nothing to free (about 100 objects each).
The defaults collected generation 0 about 40 times a second and promoted in-flight work
into older generations, so full collections over the whole heap came every few seconds
(about 190 ms each). At 50,000, young collections came every 1.3 s at maximum rate, 20 to 250
ms each, 1.6 to 2.2 s in a 35-second run per validator; at 250,000 there are two or three,
0.3 to 0.7 s in all (the longest 380 ms), and the network carried 11 % more
(docs/benchmarks.md, "`92c63f7`"). The count is allocations minus deallocations, so what
triggers a collection is a burst: executing a block of thousands of transactions allocates
more than 50,000 containers before the previous block's are freed, but rarely 250,000. Over
six minutes at maximum rate: at 50,000, 228 to 243 young collections and 4 of generation 1
(up to 430 ms), 21 to 25 s per validator, and 2,221 tx/s; at 250,000, two young collections
(the longest 393 ms), 0.5 to 0.6 s, and 2,463 tx/s. The middle threshold is 20, not 50, so
that generation 1 waits for fewer of those rare collections. See docs/architecture.md,
"Validator runtime"."""


def tune_gc() -> None:
    """Freeze what start-up built (modules, genesis, state tree) out of the collector's
    reach and collect less often: a process-wide policy, so the node's entry point sets it,
    not the runtime (tests run several nodes in one process)."""
    gc.collect()
    gc.freeze()
    gc.set_threshold(*GC_THRESHOLDS)


def register(app: typer.Typer) -> None:
    node_app = typer.Typer(help="Run a validator node.", no_args_is_help=True)
    app.add_typer(node_app, name="node")

    @node_app.command("run")
    def node_run(
        config: Annotated[Path, typer.Option(help="The node's configuration file (JSON).")],
    ) -> None:
        """Run a validator: consensus, storage, peers and the REST gateway, until SIGTERM."""
        run_node(config)

    testnet_app = typer.Typer(help="A local multi-validator network.", no_args_is_help=True)
    app.add_typer(testnet_app, name="testnet")

    @testnet_app.command("up")
    def testnet_up(
        directory: Annotated[Path, DIRECTORY_OPTION] = Path("testnet"),
        validators: Annotated[int, typer.Option(help="Number of validators (n = 3f + 1).")] = 4,
        db: Annotated[
            str, typer.Option(help="sqlite, or a postgresql+psycopg:// URL (a schema per node).")
        ] = "sqlite",
        base_port: Annotated[
            int, typer.Option(help="First of 2 x validators loopback ports.")
        ] = 26600,
        demo: Annotated[bool, typer.Option(help="Post the seeds' scenario once running.")] = False,
    ) -> None:
        """Generate keys, genesis and configs, start every validator, wait for blocks."""
        directory = directory.resolve()
        with console.status("generating keys, genesis and node configs"):
            description = generate(directory, validators=validators, base_port=base_port, db=db)
        with console.status("starting validators") as status:
            for entry in description["nodes"]:
                entry["pid"] = start_node(directory, entry["name"])
                status.update(f"started {entry['name']} (pid {entry['pid']})")
            write_description(directory, description)
            status.update("waiting for the first committed block")
            wait_started(directory, description)
        if demo:
            with console.status("posting the demo scenario"):
                post_demo(description)
        show(description, directory)

    @testnet_app.command("status")
    def testnet_status(directory: Annotated[Path, DIRECTORY_OPTION] = Path("testnet")) -> None:
        """Each node's process, height and peers."""
        show(read_description(directory.resolve()), directory.resolve())

    @testnet_app.command("down")
    def testnet_down(directory: Annotated[Path, DIRECTORY_OPTION] = Path("testnet")) -> None:
        """Stop every node gracefully (SIGTERM, then SIGKILL after 15 s)."""
        directory = directory.resolve()
        description = read_description(directory)
        for entry in description["nodes"]:
            stop_node(int(entry["pid"]))
            entry["pid"] = 0
            console.print(f"stopped {entry['name']}")
        write_description(directory, description)

    @testnet_app.command("kill")
    def testnet_kill(
        name: Annotated[str, typer.Argument(help="Node to kill, e.g. validator-2.")],
        directory: Annotated[Path, DIRECTORY_OPTION] = Path("testnet"),
    ) -> None:
        """Kill one node with SIGKILL (a crash: nothing acknowledged may be lost)."""
        directory = directory.resolve()
        description = read_description(directory)
        entry = node_entry(description, name)
        stop_node(int(entry["pid"]), hard=True)
        console.print(f"killed {name} (pid {entry['pid']})")

    @testnet_app.command("start")
    def testnet_start(
        name: Annotated[str, typer.Argument(help="Node to (re)start with its existing data.")],
        directory: Annotated[Path, DIRECTORY_OPTION] = Path("testnet"),
    ) -> None:
        """Re-launch a killed or stopped node with its data; update its pid."""
        directory = directory.resolve()
        description = read_description(directory)
        entry = node_entry(description, name)
        if pid_alive(int(entry["pid"])):
            raise TestnetError(f"{name} is running (pid {entry['pid']})")
        pid = start_node(directory, name)
        for node in description["nodes"]:
            if node["name"] == name:
                node["pid"] = pid
        write_description(directory, description)
        console.print(f"started {name} (pid {pid})")

    @testnet_app.command("logs")
    def testnet_logs(
        name: Annotated[str, typer.Argument(help="Node whose log to show.")],
        directory: Annotated[Path, DIRECTORY_OPTION] = Path("testnet"),
        follow: Annotated[bool, typer.Option("--follow", "-f", help="Keep printing.")] = False,
        lines: Annotated[int, typer.Option(help="Lines from the end to start with.")] = 50,
    ) -> None:
        """Print a node's log (structured key=value lines)."""
        directory = directory.resolve()
        node_entry(read_description(directory), name)
        path = directory / name / "node.log"
        with open(path, encoding="utf-8", errors="replace") as handle:
            for line in handle.readlines()[-lines:]:
                typer.echo(line, nl=False)
            while follow:
                line = handle.readline()
                if line:
                    typer.echo(line, nl=False)
                else:
                    time.sleep(0.2)


def show(description: dict[str, Any], directory: Path) -> None:
    table = Table(title=f"testnet {description['chain_id']} in {directory}")
    for column in ("node", "api", "pid", "process", "height", "peers"):
        table.add_column(column)
    for entry in description["nodes"]:
        alive = pid_alive(int(entry["pid"]))
        status = node_status(entry["api"], description["operator_token"]) if alive else None
        peers = "-"
        height = "-"
        if status is not None:
            height = str(status["height"])
            connected = sum(1 for v in status["validators"] if v["connected"]) - 1
            peers = f"{connected}/{len(status['validators']) - 1}"
        table.add_row(
            entry["name"],
            entry["api"],
            str(entry["pid"]),
            "running" if alive else "stopped",
            height,
            peers,
        )
    console.print(table)
    tokens = Table(title="API tokens (Authorization: Bearer ...)")
    tokens.add_column("who")
    tokens.add_column("token")
    for member in description["members"]:
        tokens.add_row(f"member {member['id']}", member["token"])
    tokens.add_row("auditor", description["auditor_token"])
    tokens.add_row("operator", description["operator_token"])
    console.print(tokens)
    console.print(f"genesis: {description['genesis']}; description: {directory / 'testnet.json'}")
