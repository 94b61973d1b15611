"""Build a consortium (genesis plus every key) for demos, benchmarks, tests and testnets.

Keys come from a seed string so a scenario replays with identical ids and signatures; a
real deployment generates keys with ``coopledger keygen`` instead.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from typing import Any

from node.block import Commit, precommit_message
from node.crypto import KeyPair
from node.genesis import DEFAULT_PARAMS, Genesis, Member, Validator
from node.tx import sign_transaction

DEFAULT_MEMBERS: tuple[tuple[str, str, tuple[str, ...]], ...] = (
    ("alpine-cheese", "Alpine Cheese Cooperative", ("member",)),
    ("valley-bakery", "Valley Bakery", ("member",)),
    ("bean-and-leaf", "Bean & Leaf Coffee", ("member",)),
    ("dairy-direct", "Dairy Direct Supply", ("supplier",)),
    ("shared-freight", "Shared Freight Carriers", ("carrier",)),
    ("origin-audit", "Origin Audit Services", ("auditor",)),
    ("network-ops", "Consortium Operations", ("operator",)),
)


def seeded_key(seed: str, name: str) -> KeyPair:
    """A key pair derived from ``seed`` and ``name`` (deterministic; for dev and tests only)."""
    return KeyPair(hashlib.sha256(f"coopledger-dev:{seed}:{name}".encode()).digest())


@dataclass(slots=True)
class Consortium:
    genesis: Genesis
    member_keys: dict[str, KeyPair]
    validator_keys: dict[str, KeyPair]
    _nonce: int = field(default=0)

    def sign(
        self, sender: str, kind: str, payload: dict[str, Any], *, expires_at_ms: int
    ) -> dict[str, Any]:
        """An envelope of ``kind`` from ``sender``, signed with the sender's key."""
        self._nonce += 1
        body = {
            "chain_id": self.genesis.chain_id,
            "type": kind,
            "sender": sender,
            "nonce": self._nonce,
            "expires_at_ms": expires_at_ms,
            "payload": payload,
        }
        return sign_transaction(self.member_keys[sender], body)

    def commit_for(self, height: int, round_: int, block_hash: str) -> Commit:
        """A commit certificate signed by a quorum of this consortium's validators.

        Only a consortium that holds every validator key can do this: the demo and tests.
        A network's commits come from consensus.
        """
        message = precommit_message(self.genesis.chain_id, height, round_, block_hash)
        signers = list(self.validator_keys.items())[: self.genesis.quorum]
        return {
            "height": height,
            "round": round_,
            "block_hash": block_hash,
            "signatures": [
                {"validator": vid, "signature": key.sign("precommit", message)}
                for vid, key in signers
            ],
        }


def make_consortium(
    *,
    chain_id: str = "coop-dev",
    validators: int = 4,
    members: tuple[tuple[str, str, tuple[str, ...]], ...] = DEFAULT_MEMBERS,
    seed: str = "dev",
    genesis_time_ms: int = 1_767_225_600_000,
    base_port: int = 26600,
    params: dict[str, int] | None = None,
) -> Consortium:
    """A consortium with ``validators`` validators and ``members``, keys derived from ``seed``."""
    validator_keys = {
        f"validator-{i}": seeded_key(seed, f"validator-{i}") for i in range(validators)
    }
    member_keys = {member_id: seeded_key(seed, member_id) for member_id, _, _ in members}
    genesis = Genesis(
        chain_id=chain_id,
        genesis_time_ms=genesis_time_ms,
        validators=tuple(
            Validator(vid, key.public_key, f"127.0.0.1:{base_port + i}")
            for i, (vid, key) in enumerate(validator_keys.items())
        ),
        members=tuple(
            Member(member_id, name, tuple(sorted(roles)), (member_keys[member_id].public_key,))
            for member_id, name, roles in members
        ),
        params={**DEFAULT_PARAMS, **(params or {})},
    )
    return Consortium(genesis, member_keys, validator_keys)
