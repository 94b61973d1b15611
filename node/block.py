"""Block headers, block hashes and commit certificates (DESIGN.md, "Blocks, state and proofs").

::

    header     = {"chain_id", "height", "round", "timestamp_ms", "proposer", "prev_hash",
                  "tx_root", "state_root", "tx_count"}
    block_hash = hex(sha256(canonical(header)))
    commit     = {"height", "round", "block_hash",
                  "signatures": [{"validator": id, "signature": hex}]}

A precommit signs ``tag("precommit") + canonical({"chain_id", "height", "round",
"block_hash"})``. A commit is valid with distinct, valid signatures of more than two thirds
of the genesis validators.
"""

from __future__ import annotations

from typing import Any, TypedDict

from node.codec import canonical, is_hex, sha256_hex
from node.crypto import verify
from node.errors import ProofError
from node.genesis import Genesis

HEADER_FIELDS = (
    "chain_id",
    "height",
    "round",
    "timestamp_ms",
    "proposer",
    "prev_hash",
    "tx_root",
    "state_root",
    "tx_count",
)

COMMIT_FIELDS = frozenset({"height", "round", "block_hash", "signatures"})


class Header(TypedDict):
    chain_id: str
    height: int
    round: int
    timestamp_ms: int
    proposer: str
    prev_hash: str
    tx_root: str
    state_root: str
    tx_count: int


class CommitSignature(TypedDict):
    validator: str
    signature: str


class Commit(TypedDict):
    height: int
    round: int
    block_hash: str
    signatures: list[CommitSignature]


def block_hash(header: Header) -> str:
    """The block's id: hex SHA-256 of the canonical header."""
    return sha256_hex(canonical(header))


def precommit_message(chain_id: str, height: int, round_: int, hash_: str) -> dict[str, Any]:
    """What a precommit for ``hash_`` signs (with the ``precommit`` domain tag)."""
    return {"chain_id": chain_id, "height": height, "round": round_, "block_hash": hash_}


def check_header_shape(header: object) -> Header:
    """Validate a header that crossed a trust boundary; :class:`ProofError` names the field."""
    if not isinstance(header, dict) or set(header) != set(HEADER_FIELDS):
        raise ProofError(f"header must have exactly the fields {', '.join(HEADER_FIELDS)}")
    for name in ("height", "round", "timestamp_ms", "tx_count"):
        value = header[name]
        if not isinstance(value, int) or isinstance(value, bool) or value < 0:
            raise ProofError(f"header.{name} must be a non-negative integer")
    for name in ("prev_hash", "tx_root", "state_root"):
        if not is_hex(header[name], 32):
            raise ProofError(f"header.{name} must be 32 bytes of lowercase hex")
    for name in ("chain_id", "proposer"):
        if not isinstance(header[name], str):
            raise ProofError(f"header.{name} must be a string")
    return header  # type: ignore[return-value]


def verify_commit(genesis: Genesis, commit: object, expected_hash: str, height: int) -> Commit:
    """Check that ``commit`` certifies block ``expected_hash`` at ``height``.

    Raises :class:`ProofError` saying exactly what is wrong: shape, height, hash, an unknown
    or repeated validator, a bad signature, or too few signatures for a quorum.
    """
    if not isinstance(commit, dict) or set(commit) != COMMIT_FIELDS:
        raise ProofError("commit needs exactly: block_hash, height, round, signatures")
    if commit["height"] != height:
        raise ProofError(f"commit is for height {commit['height']!r}, block is at height {height}")
    if commit["block_hash"] != expected_hash:
        raise ProofError(f"commit certifies block {commit['block_hash']!r}, not {expected_hash}")
    round_ = commit["round"]
    if not isinstance(round_, int) or isinstance(round_, bool) or round_ < 0:
        raise ProofError("commit.round must be a non-negative integer")
    signatures = commit["signatures"]
    if not isinstance(signatures, list):
        raise ProofError("commit.signatures must be a list")
    message = precommit_message(genesis.chain_id, height, round_, expected_hash)
    seen: set[str] = set()
    for position, entry in enumerate(signatures):
        if not isinstance(entry, dict) or set(entry) != {"validator", "signature"}:
            raise ProofError(f"commit.signatures[{position}] must be {{validator, signature}}")
        validator_id = entry["validator"]
        validator = genesis.validator(validator_id) if isinstance(validator_id, str) else None
        if validator is None:
            raise ProofError(f"commit.signatures[{position}]: unknown validator {validator_id!r}")
        if validator_id in seen:
            raise ProofError(f"commit.signatures[{position}]: validator {validator_id} signs twice")
        seen.add(validator_id)
        signature = entry["signature"]
        if not isinstance(signature, str) or not verify(
            "precommit", message, validator.public_key, signature
        ):
            raise ProofError(f"commit.signatures[{position}]: bad signature by {validator_id}")
    if len(seen) < genesis.quorum:
        raise ProofError(
            f"commit has {len(seen)} signatures; {genesis.quorum} of "
            f"{len(genesis.validators)} validators are needed"
        )
    return commit  # type: ignore[return-value]
