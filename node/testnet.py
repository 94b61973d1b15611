"""A local multi-validator testnet: generated keys, genesis and configs, one process a node.

``coopledger testnet up --validators 4 --dir DIR`` writes::

    DIR/genesis.json
    DIR/keys/<validator or member>.json          (mode 0600)
    DIR/tokens.json                              gateway tokens, hashed (shared by the nodes)
    DIR/<node>/config.json, <node>/node.log      one directory per validator
    DIR/testnet.json                             the network as DESIGN.md describes it

then starts every validator as its own OS process on loopback ports and waits until they
commit. On a testnet every node accepts every listed token and holds every member's key for
custodial signing, so any node serves any user; in production each firm's node knows only
its own.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
from sqlalchemy import create_engine, make_url, text

from gateway.auth import Role, TokenEntry, new_secret, token_hash, write_tokens
from node.codec import parse_json
from node.consortium import DEFAULT_MEMBERS
from node.errors import ConfigError, CoopledgerError, EncodingError
from node.genesis import DEFAULT_PARAMS, Genesis, Member, Validator, write_genesis
from node.keys import generate_key_file, write_key_file

TESTNET_PARAMS = {**DEFAULT_PARAMS, "heartbeat_ms": 3_000}
"""A testnet makes a heartbeat block every 3 s when idle, so ``up`` sees blocks quickly."""

START_TIMEOUT_S = 60.0
STOP_TIMEOUT_S = 15.0


class TestnetError(CoopledgerError):
    """A testnet command cannot do what was asked (nothing running, a node that will not start)."""


@dataclass(frozen=True, slots=True)
class NodeLayout:
    name: str
    directory: Path
    config: Path
    api: str
    peer_port: int
    api_port: int


def node_name(index: int) -> str:
    return f"validator-{index}"


def _database_url(db: str, directory: Path, name: str, chain_id: str) -> str:
    if db == "sqlite":
        return f"sqlite:///{directory / 'ledger.sqlite'}"
    if not db.startswith("postgresql"):
        raise ConfigError("--db", "db", "must be sqlite or a postgresql+psycopg:// URL")
    schema = f"{chain_id}_{name}".replace("-", "_")
    separator = "&" if "?" in db else "?"
    return f"{db}{separator}options=-csearch_path%3D{schema}"


def _create_postgres_schema(url: str) -> None:
    parsed = make_url(url)
    options = parsed.query.get("options", "")
    schema = str(options).removeprefix("-csearch_path=")
    admin = create_engine(parsed.difference_update_query(["options"]), isolation_level="AUTOCOMMIT")
    try:
        with admin.connect() as connection:
            connection.execute(text(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE'))
            connection.execute(text(f'CREATE SCHEMA "{schema}"'))
    finally:
        admin.dispose()


def generate(
    directory: Path,
    *,
    validators: int = 4,
    base_port: int = 26600,
    db: str = "sqlite",
    chain_id: str = "coop-testnet",
) -> dict[str, Any]:
    """Write keys, genesis, tokens and node configs; return the testnet description."""
    if (directory / "testnet.json").exists():
        raise TestnetError(f"{directory} already holds a testnet; use another --dir or `down` it")
    if not 1 <= validators <= 31:
        raise ConfigError("--validators", "validators", "must be 1..31 on one machine")
    keys = directory / "keys"
    keys.mkdir(parents=True, exist_ok=True)
    layouts: list[NodeLayout] = []
    validator_entries: list[Validator] = []
    for index in range(validators):
        name = node_name(index)
        key_file = generate_key_file(name)
        write_key_file(keys / f"{name}.json", key_file)
        peer_port, api_port = base_port + 2 * index, base_port + 2 * index + 1
        validator_entries.append(Validator(name, key_file.public_key, f"127.0.0.1:{peer_port}"))
        node_dir = directory / name
        layouts.append(
            NodeLayout(
                name,
                node_dir,
                node_dir / "config.json",
                f"http://127.0.0.1:{api_port}",
                peer_port,
                api_port,
            )
        )
    members: list[Member] = []
    member_entries: list[dict[str, Any]] = []
    tokens: list[TokenEntry] = []
    auditor_token = operator_token = ""
    for member_id, display_name, roles in DEFAULT_MEMBERS:
        key_file = generate_key_file(member_id)
        key_path = keys / f"{member_id}.json"
        write_key_file(key_path, key_file)
        members.append(
            Member(member_id, display_name, tuple(sorted(roles)), (key_file.public_key,))
        )
        token = new_secret()
        role: Role
        if "auditor" in roles:
            role, auditor_token = "auditor", token
        elif "operator" in roles:
            role, operator_token = "operator", token
        else:
            role = "member"
            member_entries.append({"id": member_id, "token": token, "key_file": str(key_path)})
        tokens.append(
            TokenEntry(
                id=member_id,
                role=role,
                member=member_id if role == "member" else None,
                sha256=token_hash(token),
            )
        )
    genesis = Genesis(
        chain_id,
        int(time.time() * 1000),
        tuple(validator_entries),
        tuple(members),
        dict(TESTNET_PARAMS),
    )
    write_genesis(directory / "genesis.json", genesis)
    write_tokens(directory / "tokens.json", tuple(tokens))
    for layout in layouts:
        layout.directory.mkdir(parents=True, exist_ok=True)
        database = _database_url(db, layout.directory, layout.name, chain_id)
        if database.startswith("postgresql"):
            _create_postgres_schema(database)
        config = {
            "validator_id": layout.name,
            "key_file": f"../keys/{layout.name}.json",
            "genesis": "../genesis.json",
            "data_dir": ".",
            "database": database,
            "peer_listen": f"127.0.0.1:{layout.peer_port}",
            "api_listen": f"127.0.0.1:{layout.api_port}",
            "tokens_file": "../tokens.json",
            "member_keys": {m.id: f"../keys/{m.id}.json" for m in members},
        }
        layout.config.write_bytes(json.dumps(config, indent=2).encode() + b"\n")
    description = {
        "chain_id": chain_id,
        "genesis": str(directory / "genesis.json"),
        "nodes": [{"name": layout.name, "api": layout.api, "pid": 0} for layout in layouts],
        "members": member_entries,
        "auditor_token": auditor_token,
        "operator_token": operator_token,
    }
    write_description(directory, description)
    return description


def write_description(directory: Path, description: dict[str, Any]) -> None:
    path = directory / "testnet.json"
    temporary = path.with_name("testnet.json.tmp")
    temporary.write_bytes(json.dumps(description, indent=2).encode() + b"\n")
    os.chmod(temporary, 0o600)
    os.replace(temporary, path)


def read_description(directory: Path) -> dict[str, Any]:
    path = directory / "testnet.json"
    try:
        value = parse_json(path.read_bytes(), what=str(path))
    except FileNotFoundError as error:
        raise TestnetError(
            f"no testnet in {directory} (no testnet.json); run `testnet up`"
        ) from error
    except EncodingError as error:
        raise TestnetError(str(error)) from error
    if not isinstance(value, dict) or not isinstance(value.get("nodes"), list):
        raise TestnetError(f"{path} is not a testnet description")
    return value


def node_entry(description: dict[str, Any], name: str) -> dict[str, Any]:
    for entry in description["nodes"]:
        if entry["name"] == name:
            return dict(entry)
    names = ", ".join(entry["name"] for entry in description["nodes"])
    raise TestnetError(f"no node {name!r} in this testnet (nodes: {names})")


def pid_alive(pid: int) -> bool:
    """True while ``pid`` runs (a zombie child of ours is reaped and counts as gone)."""
    if pid <= 0:
        return False
    with contextlib.suppress(ChildProcessError):
        reaped, _ = os.waitpid(pid, os.WNOHANG)
        if reaped == pid:
            return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:
        with open(f"/proc/{pid}/stat") as handle:
            return handle.read().split()[2] != "Z"
    except OSError:
        return True


_CODE_ROOT = str(Path(__file__).resolve().parent.parent)
"""The directory that holds this ``node`` package (and its sibling packages)."""


def start_node(directory: Path, name: str) -> int:
    """Launch one validator process in its own session (it outlives this command); its pid.

    The node runs the code of the command that starts it: ``-P`` keeps the working directory
    off the front of its module path, where ``python -m`` puts it, and this package's root
    goes first on ``PYTHONPATH``. Otherwise a command started in another checkout (a
    benchmark of an older commit, say) ran its nodes on the working directory's code.

    ``posix_spawn`` rather than ``subprocess.Popen``: the node is not this process's to wait
    for, and a ``Popen`` object dropped while its child runs is a resource leak warning.
    """
    config = directory / name / "config.json"
    if not config.exists():
        raise TestnetError(f"no node {name!r} in {directory}")
    log = str(directory / name / "node.log")
    path = [_CODE_ROOT, *filter(None, [os.environ.get("PYTHONPATH")])]
    return os.posix_spawn(
        sys.executable,
        [sys.executable, "-P", "-m", "node", "node", "run", "--config", str(config)],
        {**os.environ, "PYTHONPATH": os.pathsep.join(path)},
        file_actions=[
            (os.POSIX_SPAWN_OPEN, 0, os.devnull, os.O_RDONLY, 0),
            (os.POSIX_SPAWN_OPEN, 1, log, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644),
            (os.POSIX_SPAWN_DUP2, 1, 2),
        ],
        setsid=True,
    )


def node_status(api: str, token: str, timeout_s: float = 2.0) -> dict[str, Any] | None:
    try:
        response = httpx.get(
            f"{api}/v1/status", timeout=timeout_s, headers={"Authorization": f"Bearer {token}"}
        )
    except httpx.HTTPError:
        return None
    if response.status_code != 200:
        return None
    value = response.json()
    return value if isinstance(value, dict) else None


def wait_started(directory: Path, description: dict[str, Any]) -> None:
    """Wait until every node of the testnet in ``directory`` reports block 1. A node whose
    process exits meanwhile (its port taken, say) is named at once, with the last line of
    its log, instead of after ``START_TIMEOUT_S``."""
    nodes = description["nodes"]
    deadline = time.monotonic() + START_TIMEOUT_S
    heights: dict[str, int] = {}
    while time.monotonic() < deadline:
        for node in nodes:
            if not pid_alive(int(node["pid"])):
                log = directory / node["name"] / "node.log"
                raise TestnetError(
                    f"{node['name']} exited: {last_log_line(log) or 'its log is empty'} "
                    f"(see {log}); `coopledger testnet down --dir {directory}` stops the others"
                )
            status = node_status(node["api"], description["operator_token"])
            if status is not None:
                heights[node["name"]] = int(status["height"])
        if len(heights) == len(nodes) and min(heights.values()) >= 1:
            return
        time.sleep(0.2)
    logs = ", ".join(str(directory / node["name"] / "node.log") for node in nodes)
    raise TestnetError(
        f"nodes did not reach height 1 within {START_TIMEOUT_S:.0f} s: {heights}; see {logs}"
    )


def last_log_line(path: Path) -> str:
    """The last non-empty line of a node's log (what it said as it stopped), or ``""``."""
    try:
        with open(path, "rb") as handle:
            handle.seek(max(0, handle.seek(0, os.SEEK_END) - 8192))
            tail = handle.read().decode("utf-8", errors="replace")
    except OSError:
        return ""
    lines = [line.strip() for line in tail.splitlines() if line.strip()]
    return lines[-1] if lines else ""


def stop_node(pid: int, *, hard: bool = False) -> None:
    """SIGTERM (or SIGKILL with ``hard``) and wait until the process is gone."""
    if not pid_alive(pid):
        return
    os.kill(pid, signal.SIGKILL if hard else signal.SIGTERM)
    deadline = time.monotonic() + STOP_TIMEOUT_S
    while pid_alive(pid) and time.monotonic() < deadline:
        time.sleep(0.05)
    if pid_alive(pid):
        os.kill(pid, signal.SIGKILL)
        while pid_alive(pid):
            time.sleep(0.05)
