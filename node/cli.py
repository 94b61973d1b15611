"""The ``coopledger`` command line.

Each subsystem adds its commands with a ``register(app)`` function; expected failures
(:class:`~node.errors.CoopledgerError`) are printed as one clear line and exit with 2,
never as a traceback.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table

from consensus.cli import register as register_consensus
from contracts.cli import register as register_contracts
from gateway.cli import register as register_gateway
from node.bench.cli import register as register_bench
from node.cli_node import register as register_node
from node.crypto import public_key_problem
from node.demo import register as register_demo
from node.errors import ConfigError, CoopledgerError
from node.genesis import (
    DEFAULT_PARAMS,
    Genesis,
    Member,
    Validator,
    address_problem,
    load_genesis,
    parse_genesis,
    write_genesis,
)
from node.keys import generate_key_file, read_key_file, write_key_file
from node.validation import ROLES, check_id, check_text

app = typer.Typer(
    name="coopledger",
    help="coopledger: the permissioned ledger small and medium businesses run together.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
console = Console()


@app.command()
def keygen(
    identity: Annotated[str, typer.Option("--id", help="Member or validator id the key is for.")],
    out: Annotated[Path, typer.Option(help="Key file to write (mode 0600).")],
    force: Annotated[bool, typer.Option(help="Overwrite an existing key file.")] = False,
) -> None:
    """Generate an Ed25519 key file for a member or validator."""
    key_file = generate_key_file(identity)
    write_key_file(out, key_file, overwrite=force)
    console.print(f"wrote {out} for [bold]{identity}[/bold]; share with the consortium:")
    console.print(f"{identity}:{key_file.public_key}", highlight=False, soft_wrap=True)


genesis_app = typer.Typer(help="Create and check genesis files.", no_args_is_help=True)
app.add_typer(genesis_app, name="genesis")


def _identity(option: str, spec: str) -> tuple[str, str]:
    """``ID:PUBLIC_KEY`` (what a firm sends the consortium), or a key file path."""
    identity, separator, public_key = spec.partition(":")
    if separator and len(public_key) == 64 and not Path(spec).exists():
        problem = check_id(identity)
        if problem:
            raise ConfigError(option, spec, f"id {problem}")
        problem = public_key_problem(public_key)
        if problem:
            raise ConfigError(option, spec, f"public key {problem}")
        return identity, public_key
    key_file = read_key_file(Path(spec))
    return key_file.id, key_file.public_key


@genesis_app.command("create")
def genesis_create(
    chain_id: Annotated[str, typer.Option(help="Chain id, e.g. coop-alps-1.")],
    out: Annotated[Path, typer.Option(help="Genesis file to write.")],
    validator: Annotated[
        list[str],
        typer.Option(help="ID:PUBLIC_KEY=HOST:PORT or KEYFILE=HOST:PORT per validator (repeat)."),
    ],
    member: Annotated[
        list[str],
        typer.Option(help="ID:PUBLIC_KEY=ROLE[,ROLE...]=NAME or KEYFILE=ROLES=NAME per member."),
    ],
    genesis_time_ms: Annotated[int, typer.Option(help="Genesis time in Unix ms.")] = 0,
) -> None:
    """Write a genesis file from the validators' and members' public keys.

    Each firm runs `coopledger keygen` on its own host and sends only `ID:PUBLIC_KEY`;
    a key file path is accepted too (a testnet or a single operator holding every key).
    """
    validators = []
    for entry in validator:
        identity, _, address = entry.partition("=")
        problem = address_problem(address)
        if problem:
            raise ConfigError("--validator", entry, problem)
        validator_id, public_key = _identity("--validator", identity)
        validators.append(Validator(validator_id, public_key, address))
    members = []
    for entry in member:
        parts = entry.split("=", 2)
        if len(parts) != 3:
            raise ConfigError("--member", entry, "must be KEYFILE=ROLES=NAME")
        identity, roles_text, name = parts
        roles = tuple(sorted(role.strip() for role in roles_text.split(",")))
        for role in roles:
            if role not in ROLES:
                raise ConfigError("--member", entry, f"role {role!r} is not one of {ROLES}")
        problem = check_text(name)
        if problem:
            raise ConfigError("--member", entry, f"name {problem}")
        member_id, public_key = _identity("--member", identity)
        members.append(Member(member_id, name, roles, (public_key,)))
    genesis = Genesis(
        chain_id, genesis_time_ms, tuple(validators), tuple(members), dict(DEFAULT_PARAMS)
    )
    checked = parse_genesis(genesis.to_json(), "the new genesis")
    write_genesis(out, checked)
    console.print(
        f"wrote {out}: chain {chain_id}, {len(validators)} validators, "
        f"{len(members)} members, genesis hash {checked.hash}"
    )


@genesis_app.command("check")
def genesis_check(path: Annotated[Path, typer.Argument(help="Genesis file.")]) -> None:
    """Validate a genesis file and summarise it."""
    genesis = load_genesis(path)
    table = Table(title=f"{genesis.chain_id} (genesis hash {genesis.hash[:16]}...)")
    for column in ("kind", "id", "roles / address", "public key"):
        table.add_column(column)
    for v in genesis.validators:
        table.add_row("validator", v.id, v.address, v.public_key[:16] + "...")
    for m in genesis.members:
        table.add_row("member", m.id, ", ".join(m.roles), m.public_keys[0][:16] + "...")
    console.print(table)
    console.print(f"quorum {genesis.quorum} of {len(genesis.validators)}; params {genesis.params}")


# Subsystems add their commands here: one import and one register(app) call each.
register_demo(app)
register_contracts(app)
register_gateway(app)
register_node(app)
register_consensus(app)
register_bench(app)


def main() -> None:
    """Console-script entry point."""
    try:
        app()
    except CoopledgerError as error:
        Console(stderr=True).print(f"[red]error:[/red] {error}", highlight=False)
        sys.exit(2)
