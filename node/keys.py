"""Key files: ``{"id": str, "public_key": hex, "private_key": hex}`` with mode 0600.

``private_key`` is the 32-byte Ed25519 seed (DESIGN.md, wire formats). A key file readable
by group or others is refused, as OpenSSH refuses such a private key: a seed that others
could read must be treated as leaked.
"""

from __future__ import annotations

import stat
from dataclasses import dataclass
from pathlib import Path

from node.codec import canonical, is_hex, parse_json
from node.crypto import KeyPair
from node.errors import ConfigError, EncodingError
from node.files import write_atomically
from node.validation import check_id

KEY_FILE_BYTES_MAX = 4096


@dataclass(frozen=True, slots=True)
class KeyFile:
    """An identity (member or validator id) with its key pair."""

    id: str
    key_pair: KeyPair

    @property
    def public_key(self) -> str:
        return self.key_pair.public_key

    def to_json(self) -> dict[str, str]:
        seed = self.key_pair.seed.hex()
        return {"id": self.id, "public_key": self.public_key, "private_key": seed}


def generate_key_file(identity: str) -> KeyFile:
    """A new random key pair for ``identity``."""
    problem = check_id(identity)
    if problem:
        raise ConfigError("key", "id", problem)
    return KeyFile(identity, KeyPair.generate())


def write_key_file(path: Path, key_file: KeyFile, *, overwrite: bool = False) -> None:
    """Write ``key_file`` to ``path`` (mode 0600, atomically); never replace a key by accident."""
    if path.exists() and not overwrite:
        raise ConfigError(str(path), "$", "file exists; refusing to overwrite a key")
    write_atomically(path, canonical(key_file.to_json()) + b"\n", mode=0o600)


def parse_key_file(data: bytes, source: str) -> KeyFile:
    """Validate key-file JSON; :class:`ConfigError` names the bad field."""
    if len(data) > KEY_FILE_BYTES_MAX:
        raise ConfigError(source, "$", f"larger than {KEY_FILE_BYTES_MAX} bytes")
    try:
        document = parse_json(data, what=source)
    except EncodingError as error:
        raise ConfigError(source, "$", str(error)) from error
    if not isinstance(document, dict):
        raise ConfigError(source, "$", "must be a JSON object")
    expected = {"id", "public_key", "private_key"}
    for name in sorted(set(document) - expected):
        raise ConfigError(source, name, "unknown field")
    for name in sorted(expected - set(document)):
        raise ConfigError(source, name, "missing")
    problem = check_id(document["id"])
    if problem:
        raise ConfigError(source, "id", problem)
    if not is_hex(document["private_key"], 32):
        raise ConfigError(source, "private_key", "must be 64 lowercase hex characters (a seed)")
    if not is_hex(document["public_key"], 32):
        raise ConfigError(source, "public_key", "must be 64 lowercase hex characters")
    key_pair = KeyPair.from_seed_hex(document["private_key"])
    if key_pair.public_key != document["public_key"]:
        raise ConfigError(source, "public_key", "does not match private_key")
    return KeyFile(document["id"], key_pair)


def read_key_file(path: Path) -> KeyFile:
    """Load and validate a key file, refusing one that others may read."""
    try:
        mode = path.stat().st_mode
        data = path.read_bytes()
    except OSError as error:
        raise ConfigError(str(path), "$", f"cannot read: {error.strerror}") from error
    if mode & (stat.S_IRWXG | stat.S_IRWXO):
        raise ConfigError(
            str(path), "$", f"permissions {stat.S_IMODE(mode):04o} are too open; chmod 600"
        )
    return parse_key_file(data, str(path))
