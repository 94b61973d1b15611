"""Canonical JSON and hashing: the one encoding every hash and signature is taken over.

Canonical JSON (DESIGN.md, "Encoding, hashing, signing"):

* UTF-8, object keys sorted by code point, no insignificant whitespace;
* only ``None``, ``bool``, ``int``, ``str``, ``list`` and ``dict`` with ``str`` keys;
* no floats at all: amounts are minor units and quantities integer base units;
* integers within +-(2**53 - 1), so that every JSON implementation (JavaScript in the
  explorer, an auditor's tool) reads the same number;
* byte strings travel as lowercase hex ``str`` (the caller converts; bytes are refused here
  so a forgotten conversion is an error, not a silent ``repr``).

For this restricted domain the output equals RFC 8785 (JCS) except for the key order of
keys outside the Basic Multilingual Plane (JCS sorts by UTF-16 code units). Every other module
calls :func:`canonical`; nothing else serialises for hashing.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Sequence
from typing import Any

import orjson

from node.errors import EncodingError, NestingError
from node.invariant import invariant

INT_ABS_MAX = 2**53 - 1
"""Largest integer magnitude JSON numbers carry exactly in IEEE doubles (JavaScript's
``Number.MAX_SAFE_INTEGER``)."""

NESTING_DEPTH_MAX = 32
"""Deepest nesting accepted; a payload deeper than this is hostile, not a business record."""

_SORT_KEYS = orjson.OPT_SORT_KEYS
"""orjson writes exactly the canonical form with keys sorted (by UTF-8 bytes, which is code
point order): compact, UTF-8 unescaped, the same escapes as the standard library's encoder.
tests/test_codec_crypto.py checks the bytes against the standard library's across the
domain; orjson encodes about ten times faster, which the hot path (every transaction body,
state value and stored row) feels."""


def check_canonical_value(value: Any, path: str = "$", depth: int = 0) -> None:
    """Raise :class:`EncodingError` naming the first place where ``value`` leaves the domain."""
    if not _in_domain(value, depth):
        _explain(value, path, depth)  # raises at the first problem (subclasses pass)


def _in_domain(value: Any, depth: int) -> bool:
    """True if ``value`` is in the canonical domain: the hot path of every check.

    It builds no path strings and dispatches on the exact type (``bool`` is a subclass of
    ``int``; both are fine), so it costs a fraction of :func:`_explain`, which runs only to
    name the problem once this says there is one.
    """
    if depth > NESTING_DEPTH_MAX:
        return False
    kind = type(value)
    if kind is str:
        text: str = value
        return text.isascii() or _is_text(text)  # inlined: a call per string slows the walk ~25 %
    if kind is int:
        number: int = value
        return -INT_ABS_MAX <= number <= INT_ABS_MAX
    if kind is dict:
        depth += 1
        for key, item in value.items():
            if type(key) is not str or not (key.isascii() or _is_text(key)):
                return False
            if not _in_domain(item, depth):
                return False
        return True
    if kind is list:
        depth += 1
        for item in value:  # noqa: SIM110 -- a loop: all(generator) adds a frame per list
            if not _in_domain(item, depth):
                return False
        return True
    # Subclasses of str, int, list and dict, and everything else, take the slow path.
    return value is None or kind is bool


def _explain(value: Any, path: str, depth: int) -> None:
    """Walk ``value`` with paths and raise :class:`EncodingError` at the first problem."""
    if depth > NESTING_DEPTH_MAX:
        raise NestingError(f"{path}: nested deeper than {NESTING_DEPTH_MAX} levels")
    if value is None or isinstance(value, bool):
        return
    if isinstance(value, int):
        if not -INT_ABS_MAX <= value <= INT_ABS_MAX:
            raise EncodingError(f"{path}: integer {value} outside +-(2^53-1)")
        return
    if isinstance(value, str):
        _check_text(value, path)
        return
    if isinstance(value, list):
        for position, item in enumerate(value):
            _explain(item, f"{path}[{position}]", depth + 1)
        return
    if isinstance(value, dict):
        for key, item in value.items():
            if not isinstance(key, str):
                raise EncodingError(f"{path}: object key {key!r} is not a string")
            _check_text(key, f"{path} key")
            _explain(item, f"{path}.{key}", depth + 1)
        return
    if isinstance(value, float):
        raise EncodingError(f"{path}: floats are not allowed (use integer minor units)")
    raise EncodingError(f"{path}: {type(value).__name__} is not a JSON value")


def _is_text(text: str) -> bool:
    """True if ``text`` has no lone surrogate (so it encodes as UTF-8)."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def _check_text(text: str, path: str) -> None:
    if not _is_text(text):
        raise EncodingError(f"{path}: not valid Unicode text (lone surrogate)")


def canonical(value: Any, *, depth: int = 0) -> bytes:
    """Return the canonical JSON bytes of ``value``; raise :class:`EncodingError` if it has none.

    ``depth`` is how deep ``value`` will sit inside the largest document that carries it,
    which the nesting limit counts too (a transaction body travels inside frames).
    """
    check_canonical_value(value, depth=depth)
    return _right_sized(orjson.dumps(value, option=_SORT_KEYS))


def canonical_trusted(value: Any) -> bytes:
    """Canonical bytes of a value this process built itself from checked parts.

    Skips the domain walk, which dominates the cost on the block-execution hot path. Only
    for values assembled from already-validated inputs (headers, state records); anything
    that crossed a trust boundary goes through :func:`canonical`.
    """
    return _right_sized(orjson.dumps(value, option=_SORT_KEYS))


def _right_sized(data: bytes) -> bytes:
    """``data`` copied into a ``bytes`` of its own length.

    orjson returns its output in the buffer it wrote into and never shrinks it (at least
    1 KiB before 3.12, at least 4 KiB since): a 400-byte transaction body held in the
    mempool would keep 4 KiB. Encodings are kept (a body for as long as its
    transaction is pending, state values until their block is stored), so every one is
    copied once into an exact allocation: 0.2 us more for a 427-byte body (0.27 us to
    encode), and small ones land in Python's own allocator instead of a 4 KiB ``malloc``.
    """
    return bytes(memoryview(data))


def splice_list(encoded: bytes, key: str, items: Sequence[bytes]) -> bytes:
    """``encoded`` with the empty list under ``key`` filled with ``items``, each already
    canonical: a block's thousands of envelopes go into a frame or a record as the bytes
    they were admitted as, instead of being encoded again.

    ``encoded`` must be canonical and hold the member ``"key":[]`` exactly once. A member
    starts right after ``{`` or ``,``; inside a string (a value, or another key such as
    ``a"key``) every quote is escaped, so ``{"key"`` or ``,"key"`` cannot occur there.
    """
    marker = b'"' + key.encode("utf-8") + b'":[]'
    found = []
    at = encoded.find(marker)
    while at >= 0:
        if at > 0 and encoded[at - 1 : at] in (b"{", b","):
            found.append(at)
        at = encoded.find(marker, at + 1)
    invariant(len(found) == 1, f"{key!r} must hold one empty list")
    end = found[0] + len(marker) - 1
    return b"".join((encoded[:end], b",".join(items), encoded[end:]))


def sha256(data: bytes) -> bytes:
    """SHA-256 digest of ``data``."""
    return hashlib.sha256(data).digest()


def sha256_hex(data: bytes) -> str:
    """Lowercase hex SHA-256 digest of ``data``."""
    return hashlib.sha256(data).hexdigest()


def hash_canonical(value: Any) -> str:
    """Lowercase hex SHA-256 of the canonical encoding of ``value``."""
    return sha256_hex(canonical(value))


def parse_canonical(data: bytes) -> Any:
    """What ``data`` parses to if the bytes are exactly its canonical encoding (no duplicate
    key, whitespace or other spelling), else :data:`NOT_CANONICAL`.

    The domain is **not** checked: the caller checks it (:func:`in_domain`), of the whole
    value or of every part it does not leave to a check that follows (node/wire.py).
    """
    try:
        value = orjson.loads(data)
        # orjson writes at most 255 levels and raises beyond: such input is not canonical.
        if orjson.dumps(value, option=_SORT_KEYS) == data:
            return value
    except (orjson.JSONDecodeError, orjson.JSONEncodeError):
        pass
    return NOT_CANONICAL


NOT_CANONICAL: Any = object()
"""What :func:`parse_canonical` returns for bytes that are not canonical JSON."""


def in_domain(value: Any, depth: int = 0) -> bool:
    """True if ``value``, found ``depth`` levels deep in a document, is in the canonical
    domain (nesting counted from the document's top)."""
    return _in_domain(value, depth)


def parse_json(data: bytes | str, *, what: str) -> Any:
    """Parse JSON from an untrusted source and check it is in the canonical domain.

    Floats, NaN, duplicate keys and out-of-range integers are refused with an
    :class:`EncodingError` that says which input (``what``) and where.

    Bytes that are already canonical (what peers send, and clients that encode canonically)
    take a fast path: parsed by orjson and accepted if they encode back to exactly themselves
    (so no duplicate key, whitespace or other spelling hid in them) and are in the domain.
    Anything else is parsed by the standard library with the checks that name the problem.
    """
    if isinstance(data, bytes):
        try:
            value = orjson.loads(data)
        except orjson.JSONDecodeError:
            pass
        else:
            # The domain check first: it bounds the nesting (orjson reads deeper documents
            # than it writes) and refuses floats and wide integers before any re-encoding.
            if _in_domain(value, 0) and orjson.dumps(value, option=_SORT_KEYS) == data:
                return value

    def no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
        result = dict(pairs)
        if len(result) != len(pairs):
            seen: set[str] = set()
            for key, _ in pairs:
                if key in seen:
                    raise EncodingError(f"{what}: duplicate key {key!r}")
                seen.add(key)
        return result

    def no_float(text: str) -> Any:
        raise EncodingError(f"{what}: number {text} is not an integer (floats are not allowed)")

    def no_constant(text: str) -> Any:
        raise EncodingError(f"{what}: {text} is not valid JSON")

    try:
        value = json.loads(
            data,
            object_pairs_hook=no_duplicates,
            parse_float=no_float,
            parse_constant=no_constant,
        )
    except EncodingError:
        raise
    except (ValueError, RecursionError) as error:
        raise EncodingError(f"{what}: not valid JSON ({error})") from error
    try:
        check_canonical_value(value)
    except EncodingError as error:
        raise EncodingError(f"{what}: {error}") from error
    return value


_LOWER_HEX = re.compile(r"[0-9a-f]*")


def is_hex(text: object, length_bytes: int | None = None) -> bool:
    """True if ``text`` is lowercase hex (of exactly ``length_bytes`` bytes when given)."""
    if not isinstance(text, str) or len(text) % 2:
        return False
    if length_bytes is not None and len(text) != 2 * length_bytes:
        return False
    return _LOWER_HEX.fullmatch(text) is not None
