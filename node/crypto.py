"""Ed25519 keys and domain-separated signatures.

Every signed message carries a domain tag so that a signature over one kind of message can
never be replayed as another (DESIGN.md): the signed bytes are
``b"coopledger:<kind>:v1:" + canonical(obj)``.

Verification is strict. libsodium's ``crypto_sign_open`` (through PyNaCl)
rejects a non-canonical ``S``, small-order ``R`` and non-canonical or small-order public
keys; :func:`public_key_problem` repeats the key checks up front so a bad key in a genesis
file is reported when the file is loaded, not at the first signature.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

import nacl.bindings
import nacl.exceptions
import nacl.signing

from node.codec import canonical, is_hex

SignatureKind = Literal["tx", "proposal", "prevote", "precommit", "handshake"]
SIGNATURE_KINDS: tuple[SignatureKind, ...] = ("tx", "proposal", "prevote", "precommit", "handshake")

PUBLIC_KEY_BYTES = 32
SEED_BYTES = 32
SIGNATURE_BYTES = 64


def domain_tag(kind: SignatureKind) -> bytes:
    """The prefix of every signed message of ``kind``."""
    if kind not in SIGNATURE_KINDS:
        raise ValueError(f"unknown signature kind {kind!r}")
    return f"coopledger:{kind}:v1:".encode("ascii")


def signing_bytes(kind: SignatureKind, message: Any) -> bytes:
    """The exact bytes signed for ``message`` of ``kind``."""
    return domain_tag(kind) + canonical(message)


def public_key_problem(public_key_hex: object) -> str | None:
    """Why ``public_key_hex`` is not an acceptable Ed25519 public key, or ``None`` if it is."""
    if not is_hex(public_key_hex, PUBLIC_KEY_BYTES):
        return "must be 64 lowercase hex characters (a 32-byte Ed25519 public key)"
    assert isinstance(public_key_hex, str)
    raw = bytes.fromhex(public_key_hex)
    if not nacl.bindings.crypto_core_ed25519_is_valid_point(raw):
        return "is not a valid Ed25519 point (non-canonical, small-order or off the curve)"
    return None


@dataclass(frozen=True, slots=True)
class KeyPair:
    """An Ed25519 signing key with its public key."""

    seed: bytes

    def __post_init__(self) -> None:
        if len(self.seed) != SEED_BYTES:
            raise ValueError("an Ed25519 seed is 32 bytes")

    @classmethod
    def generate(cls) -> KeyPair:
        return cls(bytes(nacl.signing.SigningKey.generate()))

    @classmethod
    def from_seed_hex(cls, seed_hex: str) -> KeyPair:
        return cls(bytes.fromhex(seed_hex))

    @property
    def _signing_key(self) -> nacl.signing.SigningKey:
        return nacl.signing.SigningKey(self.seed)

    @property
    def public_key(self) -> str:
        return bytes(self._signing_key.verify_key).hex()

    def sign_raw(self, data: bytes) -> str:
        """Hex signature over ``data`` (already domain-tagged by the caller)."""
        return bytes(self._signing_key.sign(data).signature).hex()

    def sign(self, kind: SignatureKind, message: Any) -> str:
        """Hex signature over ``domain_tag(kind) + canonical(message)``."""
        return self.sign_raw(signing_bytes(kind, message))


def verify_raw(public_key_hex: str, data: bytes, signature_hex: str) -> bool:
    """True if ``signature_hex`` is a valid strict Ed25519 signature of ``data``."""
    if not is_hex(signature_hex, SIGNATURE_BYTES) or not is_hex(public_key_hex, PUBLIC_KEY_BYTES):
        return False
    try:
        # crypto_sign_open runs libsodium's strict verify on signature || message.
        nacl.bindings.crypto_sign_open(
            bytes.fromhex(signature_hex) + data, bytes.fromhex(public_key_hex)
        )
    except nacl.exceptions.BadSignatureError:
        return False
    return True


def verify(kind: SignatureKind, message: Any, public_key_hex: str, signature_hex: str) -> bool:
    """True if ``signature_hex`` signs ``message`` of ``kind`` under ``public_key_hex``."""
    return verify_raw(public_key_hex, signing_bytes(kind, message), signature_hex)
