"""The genesis file: the consortium's chain id, validators, members and parameters.

Format (DESIGN.md, wire formats)::

    {"chain_id": str, "genesis_time_ms": int,
     "validators": [{"id": str, "public_key": hex, "address": "host:port"}],
     "members":    [{"id": str, "name": str, "roles": [str], "public_keys": [hex]}],
     "params":     {...}}

An auditor verifies everything from this file alone, so validation is strict and every
problem names its exact field (``validators[2].public_key: ...``).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from node.codec import canonical, hash_canonical, parse_json
from node.crypto import public_key_problem
from node.errors import ConfigError, EncodingError
from node.limits import (
    BLOCK_BYTES_MAX,
    BLOCK_TXS_MAX,
    MEMBERS_MAX,
    PUBLIC_KEYS_PER_MEMBER_MAX,
    VALIDATORS_MAX,
)
from node.validation import ROLES, check_id, check_int, check_text

GENESIS_BYTES_MAX = 4 * 1024 * 1024

DEFAULT_PARAMS: dict[str, int] = {
    "block_txs_max": 5_000,
    "block_bytes_max": 4 * 1024 * 1024,
    "timeout_propose_ms": 1_000,
    "timeout_prevote_ms": 500,
    "timeout_precommit_ms": 500,
    "timeout_delta_ms": 500,
    "heartbeat_ms": 10_000,
}
"""Consensus and block parameters every validator must share; the file may override any."""

_PARAM_BOUNDS: dict[str, tuple[int, int]] = {
    "block_txs_max": (1, BLOCK_TXS_MAX),
    "block_bytes_max": (1024, BLOCK_BYTES_MAX),
    "timeout_propose_ms": (10, 600_000),
    "timeout_prevote_ms": (10, 600_000),
    "timeout_precommit_ms": (10, 600_000),
    "timeout_delta_ms": (0, 600_000),
    "heartbeat_ms": (10, 3_600_000),
}


def quorum(validator_count: int) -> int:
    """Votes needed: more than two thirds of ``validator_count`` (2f + 1 when n = 3f + 1)."""
    return 2 * validator_count // 3 + 1


def fault_tolerance(validator_count: int) -> int:
    """f: how many faulty validators ``validator_count`` tolerates."""
    return (validator_count - 1) // 3


@dataclass(frozen=True, slots=True)
class Validator:
    id: str
    public_key: str
    address: str

    def to_json(self) -> dict[str, str]:
        return {"id": self.id, "public_key": self.public_key, "address": self.address}


@dataclass(frozen=True, slots=True)
class Member:
    id: str
    name: str
    roles: tuple[str, ...]
    public_keys: tuple[str, ...]

    def to_json(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "name": self.name,
            "roles": list(self.roles),
            "public_keys": list(self.public_keys),
        }


@dataclass(frozen=True, slots=True)
class Genesis:
    chain_id: str
    genesis_time_ms: int
    validators: tuple[Validator, ...]
    members: tuple[Member, ...]
    params: dict[str, int] = field(default_factory=lambda: dict(DEFAULT_PARAMS))

    def to_json(self) -> dict[str, Any]:
        return {
            "chain_id": self.chain_id,
            "genesis_time_ms": self.genesis_time_ms,
            "validators": [v.to_json() for v in self.validators],
            "members": [m.to_json() for m in self.members],
            "params": dict(self.params),
        }

    @property
    def hash(self) -> str:
        """SHA-256 of the canonical genesis: the ``prev_hash`` of block 1."""
        return hash_canonical(self.to_json())

    @property
    def quorum(self) -> int:
        return quorum(len(self.validators))

    def validator(self, validator_id: str) -> Validator | None:
        for validator in self.validators:
            if validator.id == validator_id:
                return validator
        return None


def check_member_entry(entry: object, where: str, source: str) -> Member:
    """Validate one member entry (genesis ``members[i]`` or a governance proposal)."""
    if not isinstance(entry, dict):
        raise ConfigError(source, where, "must be an object")
    _exact_fields(entry, {"id", "name", "roles", "public_keys"}, where, source)
    _field(source, f"{where}.id", check_id(entry["id"]))
    _field(source, f"{where}.name", check_text(entry["name"]))
    roles = entry["roles"]
    if not isinstance(roles, list) or not 1 <= len(roles) <= len(ROLES):
        raise ConfigError(source, f"{where}.roles", f"must be a list of 1..{len(ROLES)} roles")
    for position, role in enumerate(roles):
        if role not in ROLES:
            raise ConfigError(
                source, f"{where}.roles[{position}]", f"must be one of {', '.join(ROLES)}"
            )
    if len(set(roles)) != len(roles):
        raise ConfigError(source, f"{where}.roles", "lists a role twice")
    keys = entry["public_keys"]
    if not isinstance(keys, list) or not 1 <= len(keys) <= PUBLIC_KEYS_PER_MEMBER_MAX:
        raise ConfigError(
            source,
            f"{where}.public_keys",
            f"must be a list of 1..{PUBLIC_KEYS_PER_MEMBER_MAX} keys",
        )
    for position, key in enumerate(keys):
        _field(source, f"{where}.public_keys[{position}]", public_key_problem(key))
    if len(set(keys)) != len(keys):
        raise ConfigError(source, f"{where}.public_keys", "lists a key twice")
    return Member(entry["id"], entry["name"], tuple(sorted(roles)), tuple(keys))


def parse_genesis(document: object, source: str = "genesis") -> Genesis:
    """Validate a parsed genesis document; :class:`ConfigError` names the first bad field."""
    if not isinstance(document, dict):
        raise ConfigError(source, "$", "must be a JSON object")
    _exact_fields(
        document, {"chain_id", "genesis_time_ms", "validators", "members", "params"}, "$", source
    )
    _field(source, "chain_id", check_id(document["chain_id"]))
    _field(source, "genesis_time_ms", check_int(document["genesis_time_ms"], 0, 2**53 - 1))
    validators = _parse_validators(document["validators"], source)
    members = _parse_members(document["members"], source)
    params = _parse_params(document["params"], source)
    return Genesis(document["chain_id"], document["genesis_time_ms"], validators, members, params)


def _parse_validators(entries: object, source: str) -> tuple[Validator, ...]:
    if not isinstance(entries, list) or not 1 <= len(entries) <= VALIDATORS_MAX:
        raise ConfigError(source, "validators", f"must be a list of 1..{VALIDATORS_MAX}")
    validators: list[Validator] = []
    for position, entry in enumerate(entries):
        where = f"validators[{position}]"
        if not isinstance(entry, dict):
            raise ConfigError(source, where, "must be an object")
        _exact_fields(entry, {"id", "public_key", "address"}, where, source)
        _field(source, f"{where}.id", check_id(entry["id"]))
        _field(source, f"{where}.public_key", public_key_problem(entry["public_key"]))
        _field(source, f"{where}.address", address_problem(entry["address"]))
        if any(v.id == entry["id"] for v in validators):
            raise ConfigError(source, f"{where}.id", f"duplicate validator id {entry['id']!r}")
        if any(v.public_key == entry["public_key"] for v in validators):
            raise ConfigError(source, f"{where}.public_key", "key already used by a validator")
        validators.append(Validator(entry["id"], entry["public_key"], entry["address"]))
    return tuple(validators)


def _parse_members(entries: object, source: str) -> tuple[Member, ...]:
    if not isinstance(entries, list) or not 1 <= len(entries) <= MEMBERS_MAX:
        raise ConfigError(source, "members", f"must be a list of 1..{MEMBERS_MAX}")
    members: list[Member] = []
    seen_keys: set[str] = set()
    for position, entry in enumerate(entries):
        where = f"members[{position}]"
        member = check_member_entry(entry, where, source)
        if any(m.id == member.id for m in members):
            raise ConfigError(source, f"{where}.id", f"duplicate member id {member.id!r}")
        for key in member.public_keys:
            if key in seen_keys:
                raise ConfigError(source, f"{where}.public_keys", "key already used by a member")
            seen_keys.add(key)
        members.append(member)
    return tuple(members)


def _parse_params(params: object, source: str) -> dict[str, int]:
    if not isinstance(params, dict):
        raise ConfigError(source, "params", "must be an object")
    for name in sorted(params):
        if name not in DEFAULT_PARAMS:
            raise ConfigError(source, f"params.{name}", "unknown parameter")
        low, high = _PARAM_BOUNDS[name]
        _field(source, f"params.{name}", check_int(params[name], low, high))
    return {**DEFAULT_PARAMS, **params}


def address_problem(address: object) -> str | None:
    """Why ``address`` is not ``host:port``, or ``None``."""
    if not isinstance(address, str) or ":" not in address:
        return "must be host:port"
    host, _, port = address.rpartition(":")
    if not host or len(host) > 253 or any(c.isspace() for c in host):
        return "must be host:port with a host name or address"
    if not port.isdigit() or not 1 <= int(port) <= 65535:
        return "port must be 1..65535"
    return None


def load_genesis(path: Path) -> Genesis:
    """Read and validate a genesis file."""
    try:
        data = path.read_bytes()
    except OSError as error:
        raise ConfigError(str(path), "$", f"cannot read: {error.strerror}") from error
    if len(data) > GENESIS_BYTES_MAX:
        raise ConfigError(str(path), "$", f"larger than {GENESIS_BYTES_MAX} bytes")
    try:
        document = parse_json(data, what=str(path))
    except EncodingError as error:
        raise ConfigError(str(path), "$", str(error)) from error
    return parse_genesis(document, str(path))


def write_genesis(path: Path, genesis: Genesis) -> None:
    path.write_bytes(canonical(genesis.to_json()) + b"\n")


def _exact_fields(entry: dict[str, Any], expected: set[str], where: str, source: str) -> None:
    prefix = "" if where == "$" else f"{where}."
    for name in sorted(set(entry) - expected):
        raise ConfigError(source, f"{prefix}{name}", "unknown field")
    for name in sorted(expected - set(entry)):
        raise ConfigError(source, f"{prefix}{name}", "missing")


def _field(source: str, name: str, problem: str | None) -> None:
    if problem:
        raise ConfigError(source, name, problem)
