"""Always-on invariant checks.

A broken invariant is a bug, not an expected failure: it must crash loudly, even under
``python -O`` where a plain ``assert`` vanishes (TigerBeetle's rule).
"""

from __future__ import annotations


class InvariantViolation(AssertionError):
    """An internal invariant does not hold: the process state cannot be trusted."""


def invariant(condition: object, message: str) -> None:
    """Raise :class:`InvariantViolation` with ``message`` unless ``condition`` is truthy."""
    if not condition:
        raise InvariantViolation(message)
