"""Bearer tokens: who is calling, in which role, and a brake on guessing.

Rules.

* A token is a random 32-byte secret, shown once when issued (``coopledger token add``).
  The node keeps only its SHA-256, in a JSON tokens file::

      {"tokens": [{"id": "tok-1f3a...", "role": "member", "member": "alpine-cheese",
                   "sha256": "<64 hex>"}]}

  SHA-256 without a salt is enough here because the secret has 256 bits of entropy: there
  is no dictionary to precompute, unlike for passwords.
* Roles: ``member`` (bound to one member id; reads and writes as that member), ``auditor``
  (reads only, never writes), ``operator`` (reads, node status, relays signed envelopes;
  custodial writes only if bound to a member).
* A presented token is hashed and compared with every stored hash with
  :func:`hmac.compare_digest`, so the time taken does not depend on where a guess differs.
* The file is re-read whenever its modification time, size or inode changes, so
  ``coopledger token add|revoke`` takes effect on a running node without a restart: an
  added token at once (an unknown token makes the node look at the file), a revocation
  within :data:`TOKENS_FILE_CHECK_S` (the file is looked at, one ``stat``, at most that
  often for tokens it knows, not on every request). Writers
  replace it atomically and durably (:func:`node.files.write_atomically`), so a reader
  never sees half a file; an unreadable file keeps the last good table and is logged.
* Failed attempts are counted per client address in a bounded table: after
  :data:`AUTH_FAILURES_MAX` failures within :data:`AUTH_FAILURE_WINDOW_S` the client is
  refused (429) until the window passes, whatever it presents.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
import secrets
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from node.codec import is_hex, parse_json
from node.errors import ConfigError, EncodingError
from node.files import write_atomically
from node.validation import check_id

log = logging.getLogger("coopledger.gateway.auth")

Role = Literal["member", "auditor", "operator"]
ROLES: tuple[Role, ...] = ("member", "auditor", "operator")

TOKEN_BYTES = 32
"""Entropy of an issued token: 256 bits, so guessing is hopeless and unsalted SHA-256 is a
sound way to store it."""

TOKEN_PREFIX = "coop_"
"""Makes a leaked token recognisable to secret scanners and in logs."""

TOKEN_CHARS_MAX = 256
"""A presented token longer than this is refused before hashing."""

TOKENS_FILE_BYTES_MAX = 1024 * 1024
"""About 8,000 tokens: far more than a consortium's members, auditors and operators."""

TOKENS_FILE_CHECK_S = 1.0
"""How often, at most, the tokens file is checked for changes: a revoked token is refused
within this time (a token not in the table makes the file be checked at once, so a new
token works at once). A ``stat`` on every request cost 2.4 % of a validator's busy time under
load (a system call that releases the GIL, which the loop then waits to get back)."""

AUTH_FAILURES_MAX = 20
"""Failed attempts a client may make per window before it is refused outright. Enough for a
misconfigured client to show its error, far too few to guess a 256-bit secret."""

AUTH_FAILURE_WINDOW_S = 60.0

AUTH_CLIENTS_TRACKED_MAX = 4096
"""Clients whose failures are remembered; the least recently failing are forgotten first,
so a flood of addresses cannot grow the table without bound."""


@dataclass(frozen=True, slots=True, kw_only=True)
class Principal:
    """Who a valid token speaks for."""

    token_id: str
    role: Role
    member: str | None

    @property
    def may_write(self) -> bool:
        """Auditors never write; members and operators may relay signed envelopes."""
        return self.role in ("member", "operator")


@dataclass(frozen=True, slots=True, kw_only=True)
class TokenEntry:
    id: str
    role: Role
    member: str | None
    sha256: str

    def to_json(self) -> dict[str, str | None]:
        return {"id": self.id, "role": self.role, "member": self.member, "sha256": self.sha256}


@dataclass(frozen=True, slots=True, kw_only=True)
class IssuedToken:
    """A freshly issued token: ``secret`` is shown once and never stored."""

    entry: TokenEntry
    secret: str


def token_hash(secret: str) -> str:
    return hashlib.sha256(secret.encode("utf-8")).hexdigest()


def new_secret() -> str:
    return TOKEN_PREFIX + secrets.token_urlsafe(TOKEN_BYTES)


# --- the tokens file ------------------------------------------------------------------------


def parse_tokens(document: object, source: str) -> tuple[TokenEntry, ...]:
    """Validate a tokens document; :class:`ConfigError` names the offending field."""
    if not isinstance(document, dict) or set(document) != {"tokens"}:
        raise ConfigError(source, "$", 'must be an object {"tokens": [...]}')
    entries = document["tokens"]
    if not isinstance(entries, list):
        raise ConfigError(source, "tokens", "must be a list")
    parsed: list[TokenEntry] = []
    ids: set[str] = set()
    for position, entry in enumerate(entries):
        where = f"tokens[{position}]"
        if not isinstance(entry, dict) or set(entry) != {"id", "role", "member", "sha256"}:
            raise ConfigError(source, where, "needs exactly id, role, member, sha256")
        problem = check_id(entry["id"])
        if problem:
            raise ConfigError(source, f"{where}.id", problem)
        if entry["id"] in ids:
            raise ConfigError(source, f"{where}.id", "is used twice")
        ids.add(entry["id"])
        role = entry["role"]
        if role not in ROLES:
            raise ConfigError(source, f"{where}.role", f"must be one of {', '.join(ROLES)}")
        member = entry["member"]
        if member is not None and check_id(member):
            raise ConfigError(source, f"{where}.member", "must be a member id or null")
        if role == "member" and member is None:
            raise ConfigError(source, f"{where}.member", "a member token must name its member")
        if not is_hex(entry["sha256"], 32):
            raise ConfigError(source, f"{where}.sha256", "must be 64 lowercase hex digits")
        parsed.append(TokenEntry(id=entry["id"], role=role, member=member, sha256=entry["sha256"]))
    return tuple(parsed)


def read_tokens(path: Path) -> tuple[TokenEntry, ...]:
    """The entries of a tokens file; a missing file is an empty table."""
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        return ()
    except OSError as error:
        raise ConfigError(str(path), "$", f"cannot be read: {error}") from error
    if len(data) > TOKENS_FILE_BYTES_MAX:
        raise ConfigError(str(path), "$", f"larger than {TOKENS_FILE_BYTES_MAX} bytes")
    try:
        document = parse_json(data, what="tokens file")
    except EncodingError as error:
        raise ConfigError(str(path), "$", str(error)) from error
    return parse_tokens(document, str(path))


def write_tokens(path: Path, entries: tuple[TokenEntry, ...]) -> None:
    """Replace the tokens file atomically (mode 0600), so a running node never reads half."""
    text = json.dumps({"tokens": [entry.to_json() for entry in entries]}, indent=2) + "\n"
    write_atomically(path, text.encode("utf-8"), mode=0o600)


def add_token(
    path: Path, *, role: Role, member: str | None, token_id: str | None = None
) -> IssuedToken:
    """Issue a token and record its hash in ``path``; return the secret (shown once)."""
    if role not in ROLES:
        raise ConfigError("token", "role", f"must be one of {', '.join(ROLES)}")
    if member is not None and check_id(member):
        raise ConfigError("token", "member", f"{check_id(member)}")
    if role == "member" and member is None:
        raise ConfigError("token", "member", "a member token must name its member")
    entries = read_tokens(path)
    token_id = token_id or f"tok-{secrets.token_hex(6)}"
    problem = check_id(token_id)
    if problem:
        raise ConfigError("token", "id", problem)
    if any(entry.id == token_id for entry in entries):
        raise ConfigError(str(path), "id", f"a token {token_id} exists already")
    secret = new_secret()
    entry = TokenEntry(id=token_id, role=role, member=member, sha256=token_hash(secret))
    write_tokens(path, (*entries, entry))
    return IssuedToken(entry=entry, secret=secret)


def revoke_token(path: Path, token_id: str) -> TokenEntry:
    """Remove token ``token_id`` from ``path``; a running node stops accepting it at once."""
    entries = read_tokens(path)
    kept = tuple(entry for entry in entries if entry.id != token_id)
    if len(kept) == len(entries):
        raise ConfigError(str(path), "id", f"no token {token_id}")
    write_tokens(path, kept)
    return next(entry for entry in entries if entry.id == token_id)


# --- the node's view --------------------------------------------------------------------------


class TokenStore:
    """The tokens a node accepts: a file re-read when it changes, or a fixed table (tests)."""

    def __init__(
        self,
        path: Path | None = None,
        entries: tuple[TokenEntry, ...] = (),
        *,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._path = path
        self._entries = entries
        self._clock = clock
        self._stamp: tuple[int, int, int] | None = None
        self._checked_at = 0.0
        if path is not None:
            self._entries = read_tokens(path)
            self._stamp = self._file_stamp()
            self._checked_at = clock()

    @classmethod
    def from_secrets(cls, tokens: dict[str, tuple[Role, str | None]]) -> TokenStore:
        """A fixed table from ``secret -> (role, member)``; for tests and embedded use."""
        return cls(
            entries=tuple(
                TokenEntry(id=f"tok-{i}", role=role, member=member, sha256=token_hash(secret))
                for i, (secret, (role, member)) in enumerate(tokens.items())
            )
        )

    def _file_stamp(self) -> tuple[int, int, int] | None:
        assert self._path is not None
        try:
            stat = self._path.stat()
        except FileNotFoundError:
            return None
        return (stat.st_mtime_ns, stat.st_size, stat.st_ino)

    def _refresh(self, *, at_once: bool = False) -> bool:
        """Re-read the file if it changed; ``True`` if it did. Looked at once per
        :data:`TOKENS_FILE_CHECK_S`, or at once if ``at_once``."""
        if self._path is None:
            return False
        now = self._clock()
        if not at_once and now - self._checked_at < TOKENS_FILE_CHECK_S:
            return False
        self._checked_at = now
        stamp = self._file_stamp()
        if stamp == self._stamp:
            return False
        try:
            self._entries = read_tokens(self._path)
        except ConfigError as error:
            # Keep serving with the last good table: a typo in a hand edit must not lock
            # every client out of a running node.
            log.error("tokens file not reloaded, keeping the previous table: %s", error)
        self._stamp = stamp
        return True

    def entries(self) -> tuple[TokenEntry, ...]:
        self._refresh()
        return self._entries

    def authenticate(self, secret: str) -> Principal | None:
        """The principal of ``secret``, or ``None``; constant time over the whole table."""
        if not secret or len(secret) > TOKEN_CHARS_MAX:
            return None
        presented = token_hash(secret).encode("ascii")
        found = self._find(presented, self.entries())
        if found is None and self._refresh(at_once=True):
            # A token added a moment ago works at once: a miss looks at the file (failed
            # attempts are rate-limited, so guesses cannot turn this into a stat storm).
            found = self._find(presented, self._entries)
        if found is None:
            return None
        return Principal(token_id=found.id, role=found.role, member=found.member)

    @staticmethod
    def _find(presented: bytes, entries: tuple[TokenEntry, ...]) -> TokenEntry | None:
        found: TokenEntry | None = None
        for entry in entries:
            # Compare against every entry (no early exit) so timing reveals nothing.
            if hmac.compare_digest(presented, entry.sha256.encode("ascii")):
                found = entry
        return found


class FailureLimiter:
    """Failed authentication attempts per client, in a bounded table with a time window."""

    def __init__(
        self,
        *,
        failures_max: int = AUTH_FAILURES_MAX,
        window_s: float = AUTH_FAILURE_WINDOW_S,
        clients_max: int = AUTH_CLIENTS_TRACKED_MAX,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._failures_max = failures_max
        self._window_s = window_s
        self._clients_max = clients_max
        self._clock = clock
        self._table: OrderedDict[str, tuple[float, int]] = OrderedDict()

    def retry_after_s(self, client: str) -> int | None:
        """Seconds until ``client`` may try again, or ``None`` if it is not blocked."""
        entry = self._table.get(client)
        if entry is None:
            return None
        started, count = entry
        elapsed = self._clock() - started
        if elapsed >= self._window_s:
            del self._table[client]
            return None
        if count < self._failures_max:
            return None
        return max(1, int(self._window_s - elapsed + 0.999))

    def record_failure(self, client: str) -> None:
        now = self._clock()
        started, count = self._table.get(client, (now, 0))
        if now - started >= self._window_s:
            started, count = now, 0
        self._table[client] = (started, count + 1)
        self._table.move_to_end(client)
        while len(self._table) > self._clients_max:
            self._table.popitem(last=False)

    def __len__(self) -> int:
        return len(self._table)
