"""The mutual challenge-response handshake between two validators.

Rules (docs/architecture.md, "Peer transport"):

1. Right after the TCP connection opens, each side sends
   ``{"type": "hello", "chain_id", "genesis_hash", "validator": <own id>,
   "challenge": <32 fresh random bytes, hex>}``.
2. Each side checks the peer's hello (same chain and genesis, a genesis validator other than
   itself, the expected one when it dialled) and only then answers with
   ``{"type": "auth", "signature": sign("handshake", statement)}`` where
   ``statement = {"chain_id", "genesis_hash", "challenge": <the PEER's challenge>,
   "from": <own id>, "to": <peer id>}``.
3. Each side verifies the peer's signature over the statement built with *its own* challenge,
   against the genesis public key of the id the peer claimed.

The challenge is fresh per connection, so a recorded auth never verifies on another
connection: a replayed handshake is refused. ``from`` and ``to`` bind the signature to one
direction of one pair, so a node's own auth cannot be reflected back at it. The ``handshake``
domain tag keeps these signatures apart from votes and transactions.
"""

from __future__ import annotations

import secrets
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

from node.codec import is_hex
from node.crypto import KeyPair, verify
from node.genesis import Genesis

CHALLENGE_BYTES = 32
"""Fresh randomness per connection: 256 bits never repeat by chance."""

HANDSHAKE_FRAME_BYTES_MAX = 4096
"""A hello or an auth is under 400 bytes; an unauthenticated peer may not make us buffer more."""

_HELLO_FIELDS = frozenset({"type", "chain_id", "genesis_hash", "validator", "challenge"})
_AUTH_FIELDS = frozenset({"type", "signature"})


class Refusal(StrEnum):
    """Why a handshake was refused: the keys of ``TransportCounters.handshake_failures``."""

    BAD_FRAME = "bad-frame"
    FRAME_TOO_LARGE = "frame-too-large"
    TIMEOUT = "handshake-timeout"
    CLOSED = "closed-during-handshake"
    TOO_MANY_PENDING = "too-many-pending"
    BAD_HELLO = "bad-hello"
    WRONG_CHAIN = "wrong-chain"
    WRONG_GENESIS = "wrong-genesis"
    UNKNOWN_VALIDATOR = "unknown-validator"
    CLAIMS_OUR_ID = "claims-our-id"
    UNEXPECTED_PEER = "unexpected-peer"
    BAD_AUTH = "bad-auth"
    BAD_SIGNATURE = "bad-signature"
    REPLAYED_AUTH = "replayed-auth"


class HandshakeRefused(Exception):
    """The peer failed the handshake; the connection is closed and ``reason`` counted."""

    def __init__(self, reason: Refusal, detail: str) -> None:
        self.reason = reason
        self.detail = detail
        super().__init__(f"{reason}: {detail}")


def new_challenge() -> str:
    return secrets.token_bytes(CHALLENGE_BYTES).hex()


def statement(
    chain_id: str, genesis_hash: str, challenge: str, signer_id: str, verifier_id: str
) -> dict[str, str]:
    """What an auth signs: ``signer_id`` answers ``verifier_id``'s ``challenge``."""
    return {
        "chain_id": chain_id,
        "genesis_hash": genesis_hash,
        "challenge": challenge,
        "from": signer_id,
        "to": verifier_id,
    }


@dataclass(frozen=True, slots=True)
class HandshakeParty:
    """One validator's side of the handshake: builds its messages and checks the peer's."""

    genesis: Genesis
    genesis_hash: str
    own_id: str
    key_pair: KeyPair

    def hello(self, challenge: str) -> dict[str, Any]:
        return {
            "type": "hello",
            "chain_id": self.genesis.chain_id,
            "genesis_hash": self.genesis_hash,
            "validator": self.own_id,
            "challenge": challenge,
        }

    def auth(self, peer_id: str, peer_challenge: str) -> dict[str, Any]:
        signed = statement(
            self.genesis.chain_id, self.genesis_hash, peer_challenge, self.own_id, peer_id
        )
        return {"type": "auth", "signature": self.key_pair.sign("handshake", signed)}

    def check_hello(self, hello: dict[str, Any], expected_peer: str | None) -> tuple[str, str]:
        """Return the peer's ``(validator id, challenge)`` or raise :class:`HandshakeRefused`.

        ``expected_peer`` is the validator this node dialled, None for an accepted connection.
        """
        if set(hello) != _HELLO_FIELDS or hello["type"] != "hello":
            raise HandshakeRefused(Refusal.BAD_HELLO, f"fields {sorted(hello)} are not a hello")
        if hello["chain_id"] != self.genesis.chain_id:
            raise HandshakeRefused(Refusal.WRONG_CHAIN, f"chain {hello['chain_id']!r}")
        if hello["genesis_hash"] != self.genesis_hash:
            raise HandshakeRefused(Refusal.WRONG_GENESIS, f"genesis {hello['genesis_hash']!r}")
        if not is_hex(hello["challenge"], CHALLENGE_BYTES):
            raise HandshakeRefused(Refusal.BAD_HELLO, f"challenge is not {CHALLENGE_BYTES} bytes")
        peer_id = hello["validator"]
        if not isinstance(peer_id, str) or self.genesis.validator(peer_id) is None:
            raise HandshakeRefused(Refusal.UNKNOWN_VALIDATOR, f"validator {peer_id!r}")
        if peer_id == self.own_id:
            raise HandshakeRefused(Refusal.CLAIMS_OUR_ID, f"validator {peer_id!r} is this node")
        if expected_peer is not None and peer_id != expected_peer:
            raise HandshakeRefused(
                Refusal.UNEXPECTED_PEER, f"dialled {expected_peer!r}, answered {peer_id!r}"
            )
        return peer_id, hello["challenge"]

    def check_auth(
        self,
        auth: dict[str, Any],
        peer_id: str,
        own_challenge: str,
        earlier_challenges: tuple[str, ...] = (),
    ) -> None:
        """Verify the peer's auth over ``own_challenge``, else raise :class:`HandshakeRefused`.

        ``earlier_challenges`` are challenges this node gave the same claimed peer on earlier
        connections: a signature over one of them is a recorded handshake played back,
        reported as ``replayed-auth`` rather than ``bad-signature`` so an operator sees it.
        """
        if (
            set(auth) != _AUTH_FIELDS
            or auth["type"] != "auth"
            or not isinstance(auth["signature"], str)
        ):
            raise HandshakeRefused(Refusal.BAD_AUTH, f"fields {sorted(auth)} are not an auth")
        validator = self.genesis.validator(peer_id)
        if validator is None:  # check_hello has refused unknown ids already
            raise HandshakeRefused(Refusal.UNKNOWN_VALIDATOR, f"validator {peer_id!r}")
        public_key = validator.public_key
        signature = auth["signature"]

        def signs(challenge: str) -> bool:
            signed = statement(
                self.genesis.chain_id, self.genesis_hash, challenge, peer_id, self.own_id
            )
            return verify("handshake", signed, public_key, signature)

        if signs(own_challenge):
            return
        if any(signs(challenge) for challenge in earlier_challenges):
            raise HandshakeRefused(Refusal.REPLAYED_AUTH, "signature answers an earlier challenge")
        raise HandshakeRefused(Refusal.BAD_SIGNATURE, f"not signed by {peer_id!r}'s genesis key")
