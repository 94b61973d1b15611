"""``coopledger token add|revoke|list`` and ``coopledger audit bundle|verify``."""

from __future__ import annotations

import datetime
from pathlib import Path
from typing import Annotated, Any

import httpx
import typer
from rich.console import Console
from rich.table import Table

from gateway.auth import ROLES, Role, add_token, read_tokens, revoke_token
from gateway.client import ApiError, Client
from node.audit import AuditReport, verify_bundle_bytes
from node.errors import ConfigError, ProofError
from node.genesis import load_genesis

console = Console()

TokensFile = Annotated[
    Path, typer.Option("--tokens-file", help="The node's tokens file (tokens_file in its config).")
]


def _time(timestamp_ms: int) -> str:
    moment = datetime.datetime.fromtimestamp(timestamp_ms / 1000, tz=datetime.UTC)
    return moment.strftime("%Y-%m-%d %H:%M:%S")


def _summary(payload: dict[str, Any]) -> str:
    """One line of a transaction's payload for the history table."""
    parts = []
    for name, value in payload.items():
        if name in ("asset_id", "metadata"):
            continue
        shown = value
        if name == "outputs":
            shown = ",".join(str(output["asset_id"]) for output in value)
        elif isinstance(value, list):
            shown = ",".join(str(item) for item in value)
        parts.append(f"{name}={shown}")
    return " ".join(parts)


def print_report(report: AuditReport) -> None:
    table = Table(
        title=f"history of {report.asset_id} ({'with' if report.lineage else 'no'} lineage)"
    )
    for column in ("height", "time (UTC)", "type", "sender", "asset", "details", "tx"):
        table.add_column(column)
    for event in report.events:
        table.add_row(
            str(event.height),
            _time(event.timestamp_ms),
            event.type,
            event.sender,
            ", ".join(event.assets),
            _summary(event.payload),
            event.tx_id[:12],
        )
    console.print(table)
    asset = report.assets[report.asset_id]
    console.print(
        f"[green]verified[/green]: {len(report.events)} transactions in certified blocks; "
        f"the history of {len(report.assets)} asset(s) is complete as of block {report.height} "
        f"({_time(report.timestamp_ms)} UTC). {report.asset_id}: owner {asset['owner']}, "
        f"custodian {asset['custodian']}, status {asset['status']}."
    )


def register(app: typer.Typer) -> None:
    token_app = typer.Typer(
        help="Gateway API tokens (no node restart needed).", no_args_is_help=True
    )
    app.add_typer(token_app, name="token")

    @token_app.command("add")
    def token_add(
        tokens_file: TokensFile,
        role: Annotated[str, typer.Option(help=f"One of {', '.join(ROLES)}.")],
        member: Annotated[
            str | None, typer.Option(help="The member id the token acts for (members: required).")
        ] = None,
        token_id: Annotated[str | None, typer.Option("--id", help="A name for the token.")] = None,
    ) -> None:
        """Issue a token; the secret is printed once and only its hash is stored."""
        if role not in ROLES:
            raise ConfigError("--role", "role", f"must be one of {', '.join(ROLES)}")
        checked: Role = role
        issued = add_token(tokens_file, role=checked, member=member, token_id=token_id)
        console.print(
            f"added token [bold]{issued.entry.id}[/bold] ({issued.entry.role}"
            f"{', member ' + issued.entry.member if issued.entry.member else ''}); "
            "it is shown only now:",
            highlight=False,
        )
        print(issued.secret)

    @token_app.command("revoke")
    def token_revoke(
        tokens_file: TokensFile,
        token_id: Annotated[str, typer.Argument(help="The token's id (see `token list`).")],
    ) -> None:
        """Revoke a token; running nodes refuse it from their next request on."""
        entry = revoke_token(tokens_file, token_id)
        console.print(f"revoked token [bold]{entry.id}[/bold] ({entry.role})")

    @token_app.command("list")
    def token_list(tokens_file: TokensFile) -> None:
        """The tokens a node accepts (ids and roles; secrets are never stored)."""
        table = Table(title=str(tokens_file))
        for column in ("id", "role", "member", "sha256"):
            table.add_column(column)
        for entry in read_tokens(tokens_file):
            table.add_row(entry.id, entry.role, entry.member or "", entry.sha256[:16] + "...")
        console.print(table)

    audit_app = typer.Typer(help="Audit bundles: fetch and verify offline.", no_args_is_help=True)
    app.add_typer(audit_app, name="audit")

    @audit_app.command("verify")
    def audit_verify(
        bundle: Annotated[Path, typer.Argument(help="A coopledger-audit/1 bundle file.")],
        genesis: Annotated[Path, typer.Option(help="The consortium's genesis file.")],
    ) -> None:
        """Verify a bundle with nothing but the genesis file, and print the history."""
        try:
            data = bundle.read_bytes()
        except OSError as error:
            raise ProofError(f"cannot read {bundle}: {error}") from error
        report = verify_bundle_bytes(data, load_genesis(genesis))
        print_report(report)

    @audit_app.command("bundle")
    def audit_bundle(
        node: Annotated[str, typer.Option(help="The node's API, e.g. http://127.0.0.1:26601.")],
        token: Annotated[str, typer.Option(help="An API token (an auditor's will do).")],
        asset: Annotated[str, typer.Option(help="The asset to audit.")],
        out: Annotated[Path, typer.Option(help="Where to write the bundle.")],
        lineage: Annotated[bool, typer.Option(help="Include the asset's inputs.")] = False,
    ) -> None:
        """Fetch an asset's audit bundle from a node."""
        params = {"asset": asset, "lineage": "true" if lineage else "false"}
        try:
            with Client(node, token) as api:
                response = api.request("GET", "/v1/audit/bundle", params=params)
        except (ApiError, httpx.HTTPError) as error:
            Console(stderr=True).print(f"[red]error:[/red] {error}", highlight=False)
            raise typer.Exit(2) from error
        out.write_bytes(response.content)
        console.print(f"wrote {out} ({len(response.content)} bytes)")
