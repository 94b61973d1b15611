"""A validator node's configuration file (JSON), validated with errors that name the field.

::

    {"validator_id": "validator-0",
     "key_file": "keys/validator-0.json",        # the validator's own key (mode 0600)
     "genesis": "genesis.json",
     "data_dir": "data/validator-0",             # safety record, node.lock
     "database": "sqlite:///data/validator-0/ledger.sqlite",   # or postgresql+psycopg://...
     "peer_listen": "127.0.0.1:26600",
     "api_listen": "127.0.0.1:8600",
     "peers": {"validator-1": "127.0.0.1:26601"},   # optional: override genesis addresses
     "tokens_file": "tokens.json",               # optional: gateway API tokens (hashed)
     "member_keys": {"alpine-cheese": "keys/alpine-cheese.json"},  # optional: custodial keys
     "mempool_txs_max": 50000,                   # optional
     "block_wait_ms": 50,                        # optional: how long a small block may wait to fill
     "auth_failures_max": 20}                    # optional: failed tokens per client a minute

Relative paths are resolved against the directory of the configuration file, so a node
directory can be moved as a whole.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from gateway.auth import AUTH_FAILURES_MAX
from node.codec import parse_json
from node.errors import ConfigError, EncodingError
from node.genesis import address_problem
from node.limits import MEMPOOL_TXS_MAX
from node.validation import check_id, check_int

CONFIG_BYTES_MAX = 256 * 1024

REQUIRED = (
    "validator_id",
    "key_file",
    "genesis",
    "data_dir",
    "database",
    "peer_listen",
    "api_listen",
)
OPTIONAL = (
    "peers",
    "tokens_file",
    "member_keys",
    "mempool_txs_max",
    "block_wait_ms",
    "auth_failures_max",
)

BLOCK_WAIT_MS_DEFAULT = 50
"""How long after its last commit a proposer with fewer than 64 transactions pending waits for
more before it builds (docs/architecture.md, "Validator runtime", says why)."""

BLOCK_WAIT_MS_MAX = 1_000


@dataclass(frozen=True, slots=True, kw_only=True)
class NodeConfig:
    source: Path
    validator_id: str
    key_file: Path
    genesis: Path
    data_dir: Path
    database: str
    peer_listen: tuple[str, int]
    api_listen: tuple[str, int]
    peers: dict[str, str] = field(default_factory=dict)
    tokens_file: Path | None = None
    member_keys: dict[str, Path] = field(default_factory=dict)
    mempool_txs_max: int = MEMPOOL_TXS_MAX
    block_wait_ms: int = BLOCK_WAIT_MS_DEFAULT
    """A proposer with fewer than 64 transactions pending builds only this long after its last
    commit (0: at once). Capped at run time at a quarter of the genesis ``timeout_propose_ms``."""
    auth_failures_max: int = AUTH_FAILURES_MAX
    """Failed token attempts per client address per minute before the gateway answers 429."""


def split_address(address: str) -> tuple[str, int]:
    host, _, port = address.rpartition(":")
    return host.strip("[]"), int(port)


def parse_config(document: object, source: Path) -> NodeConfig:
    where = str(source)
    if not isinstance(document, dict):
        raise ConfigError(where, "$", "must be a JSON object")
    for name in sorted(document):
        if name not in REQUIRED and name not in OPTIONAL:
            raise ConfigError(where, name, "unknown field")
    for name in REQUIRED:
        if name not in document:
            raise ConfigError(where, name, "missing")
    base = source.parent

    def path(name: str, value: object) -> Path:
        if not isinstance(value, str) or not value:
            raise ConfigError(where, name, "must be a non-empty path")
        return (base / value).resolve()

    def address(name: str, value: object) -> tuple[str, int]:
        problem = address_problem(value)
        if problem:
            raise ConfigError(where, name, problem)
        assert isinstance(value, str)
        return split_address(value)

    problem = check_id(document["validator_id"])
    if problem:
        raise ConfigError(where, "validator_id", problem)
    database = document["database"]
    if not isinstance(database, str) or not database.startswith(("sqlite:", "postgresql")):
        raise ConfigError(where, "database", "must be a sqlite:/// or postgresql+psycopg:// URL")
    if database.startswith("sqlite:///") and not database.startswith("sqlite:////"):
        database = "sqlite:///" + str((base / database.removeprefix("sqlite:///")).resolve())
    peers = document.get("peers", {})
    if not isinstance(peers, dict):
        raise ConfigError(where, "peers", "must be an object of validator id to host:port")
    for peer_id, peer_address in peers.items():
        address(f"peers.{peer_id}", peer_address)
    member_keys_raw = document.get("member_keys", {})
    if not isinstance(member_keys_raw, dict):
        raise ConfigError(where, "member_keys", "must be an object of member id to key file")
    member_keys = {
        member_id: path(f"member_keys.{member_id}", key_path)
        for member_id, key_path in member_keys_raw.items()
    }
    mempool_txs_max = document.get("mempool_txs_max", MEMPOOL_TXS_MAX)
    problem = check_int(mempool_txs_max, 1, MEMPOOL_TXS_MAX)
    if problem:
        raise ConfigError(where, "mempool_txs_max", problem)
    block_wait_ms = document.get("block_wait_ms", BLOCK_WAIT_MS_DEFAULT)
    problem = check_int(block_wait_ms, 0, BLOCK_WAIT_MS_MAX)
    if problem:
        raise ConfigError(where, "block_wait_ms", problem)
    auth_failures_max = document.get("auth_failures_max", AUTH_FAILURES_MAX)
    problem = check_int(auth_failures_max, 1, 10**9)
    if problem:
        raise ConfigError(where, "auth_failures_max", problem)
    tokens_file = document.get("tokens_file")
    return NodeConfig(
        source=source,
        validator_id=document["validator_id"],
        key_file=path("key_file", document["key_file"]),
        genesis=path("genesis", document["genesis"]),
        data_dir=path("data_dir", document["data_dir"]),
        database=database,
        peer_listen=address("peer_listen", document["peer_listen"]),
        api_listen=address("api_listen", document["api_listen"]),
        peers=dict(peers),
        tokens_file=None if tokens_file is None else path("tokens_file", tokens_file),
        member_keys=member_keys,
        mempool_txs_max=mempool_txs_max,
        block_wait_ms=block_wait_ms,
        auth_failures_max=auth_failures_max,
    )


def load_config(source: Path) -> NodeConfig:
    try:
        data = source.read_bytes()
    except OSError as error:
        raise ConfigError(str(source), "$", f"cannot read: {error.strerror}") from error
    if len(data) > CONFIG_BYTES_MAX:
        raise ConfigError(str(source), "$", f"larger than {CONFIG_BYTES_MAX} bytes")
    try:
        document: Any = parse_json(data, what=str(source))
    except EncodingError as error:
        raise ConfigError(str(source), "$", str(error)) from error
    return parse_config(document, source.resolve())
