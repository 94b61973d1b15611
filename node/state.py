"""The ledger state as a key-value map, and the overlays that make execution atomic.

State keys (values are canonical-JSON objects):

=====================  ==============================================================
``member/<id>``        a member: ``id``, ``name``, ``roles``, ``public_keys``
``key/<public key>``   which member holds a public key (for ``key-in-use`` in O(1))
``registry``           ``members`` (all ids, sorted) and ``voters`` (ids with role
                       ``member``, sorted): governance needs them without scanning
``asset/<id>``         an asset (docs/rules.md)
``shipment/<id>``      a shipment
``purchase/<id>``      a joint purchase
``proposal/<tx_id>``   a membership proposal
=====================  ==============================================================

Execution never mutates a value in place: it reads, builds a new dict and ``put``s it, so a
:class:`TxOverlay` can be dropped to undo a failed transaction without copying anything.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from typing import Protocol

from node.records import StateKey, StateValue


class StateReader(Protocol):
    def get(self, key: StateKey) -> StateValue | None: ...


class State(StateReader, Protocol):
    def put(self, key: StateKey, value: StateValue) -> None: ...

    def delete(self, key: StateKey) -> None: ...


class MemoryState:
    """A whole state in a dict: genesis, tests, the differential harness."""

    __slots__ = ("_values",)

    def __init__(self, values: Mapping[StateKey, StateValue] | None = None) -> None:
        self._values: dict[StateKey, StateValue] = dict(values or {})

    def get(self, key: StateKey) -> StateValue | None:
        return self._values.get(key)

    def put(self, key: StateKey, value: StateValue) -> None:
        self._values[key] = value

    def delete(self, key: StateKey) -> None:
        self._values.pop(key, None)

    def items(self) -> Iterator[tuple[StateKey, StateValue]]:
        """All entries in key order."""
        for key in sorted(self._values):
            yield key, self._values[key]

    def __len__(self) -> int:
        return len(self._values)


class ChangeSet:
    """Changes over a read-only base: a block's pending state while it executes.

    ``changes`` maps every written key to its new value (``None`` = deleted), in first-write
    order; it is exactly what storage writes and what the state root is updated with.
    """

    __slots__ = ("_base", "changes")

    def __init__(self, base: StateReader) -> None:
        self._base = base
        self.changes: dict[StateKey, StateValue | None] = {}

    def get(self, key: StateKey) -> StateValue | None:
        if key in self.changes:
            return self.changes[key]
        return self._base.get(key)

    def put(self, key: StateKey, value: StateValue) -> None:
        self.changes[key] = value

    def delete(self, key: StateKey) -> None:
        self.changes[key] = None


class TxOverlay:
    """One transaction's writes, applied to the parent only by :meth:`apply`."""

    __slots__ = ("_parent", "_writes")

    def __init__(self, parent: State) -> None:
        self._parent = parent
        self._writes: dict[StateKey, StateValue | None] = {}

    def get(self, key: StateKey) -> StateValue | None:
        if key in self._writes:
            return self._writes[key]
        return self._parent.get(key)

    def put(self, key: StateKey, value: StateValue) -> None:
        self._writes[key] = value

    def delete(self, key: StateKey) -> None:
        self._writes[key] = None

    def apply(self) -> None:
        for key, value in self._writes.items():
            if value is None:
                self._parent.delete(key)
            else:
                self._parent.put(key, value)
