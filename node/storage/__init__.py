"""Block storage: one committed block per database transaction, read back and checked.

A node keeps its chain through a :class:`BlockStore`. Two implementations behave the same
and raise the same errors:

* :class:`SqlStore` — SQLAlchemy Core over SQLite (the embedded default: WAL journal,
  ``synchronous=FULL``) or PostgreSQL (``postgresql+psycopg://...``);
* :class:`MemoryStore` — the in-memory twin for unit tests and the simulator.

Rules every implementation keeps:

* :meth:`BlockStore.commit_block` writes a block, its transactions with their receipts, the
  state changes, the asset events and the reference index in one database transaction: a
  crash leaves the last full block, never half of one. It refuses, writing nothing, a block
  that is not the successor of the stored tip (height ``tip + 1``, ``prev_hash`` the tip's
  hash, or the genesis hash for block 1).
* Opening a store stamps an empty database with :data:`SCHEMA_VERSION`, the chain id and
  the genesis hash, and refuses a database stamped differently.
* Every block read back is checked: its hash is recomputed from its header.
"""

from node.storage._memory import MemoryStore
from node.storage._model import (
    SCHEMA_VERSION,
    BlockStore,
    CommittedTx,
    StoredBlock,
    TxPosition,
)
from node.storage._sql import SqlStore

__all__ = [
    "SCHEMA_VERSION",
    "BlockStore",
    "CommittedTx",
    "MemoryStore",
    "SqlStore",
    "StoredBlock",
    "TxPosition",
]
