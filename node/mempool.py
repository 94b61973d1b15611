"""The mempool: admitted transactions waiting for a block.

Rules:

* bounded by count (``txs_max``) and bytes (``bytes_max``); when full, new transactions
  are refused with ``mempool-full`` (the client retries; nothing already admitted is lost);
* fair between members: one sender may hold at most ``sender_share`` of the pool
  (``sender-quota-exceeded`` beyond it), and :meth:`Mempool.reap` takes transactions
  round-robin across senders, so a member flooding the network delays only itself;
* a transaction leaves when it is committed (:meth:`remove`) or expires (:meth:`prune`).

Admission checks themselves (shape, window, signature, membership) are the ledger's; the
mempool only holds what passed them.
"""

from __future__ import annotations

import heapq
from collections.abc import Iterable, Iterator

from node.codec import canonical_trusted
from node.errors import AdmissionError
from node.invariant import invariant
from node.limits import MEMPOOL_BYTES_MAX, MEMPOOL_TXS_MAX
from node.tx import Transaction

SENDER_SHARE_DEFAULT = 0.25
"""No member may hold more than a quarter of the pool: with at least four active members
none can crowd the others out."""


class Mempool:
    __slots__ = (
        "_by_id",
        "_by_sender",
        "_by_signature",
        "_bytes",
        "_expiries",
        "bytes_max",
        "sender_txs_max",
        "txs_max",
    )

    def __init__(
        self,
        *,
        txs_max: int = MEMPOOL_TXS_MAX,
        bytes_max: int = MEMPOOL_BYTES_MAX,
        sender_share: float = SENDER_SHARE_DEFAULT,
    ) -> None:
        invariant(txs_max > 0 and bytes_max > 0, "mempool bounds must be positive")
        self.txs_max = txs_max
        self.bytes_max = bytes_max
        self.sender_txs_max = max(1, int(txs_max * sender_share))
        self._by_id: dict[str, Transaction] = {}
        self._by_signature: dict[str, Transaction] = {}
        self._by_sender: dict[str, dict[str, Transaction]] = {}
        """Per sender, its transactions in arrival order (a dict: O(1) removal)."""
        self._bytes = 0
        self._expiries: list[tuple[int, str]] = []
        """Heap of ``(expires_at_ms, tx_id)``: :meth:`prune` looks only at what expired.
        Entries of transactions that left otherwise stay until they surface or the heap is
        rebuilt (when it holds more than twice the pool)."""

    def __len__(self) -> int:
        return len(self._by_id)

    def __contains__(self, tx_id: object) -> bool:
        return tx_id in self._by_id

    @property
    def size_bytes(self) -> int:
        return self._bytes

    def add(self, tx: Transaction) -> None:
        """Hold ``tx`` for a block; raise :class:`AdmissionError` if it cannot be held."""
        if tx.tx_id in self._by_id:
            raise AdmissionError("duplicate-tx", "already pending")
        queue = self._by_sender.get(tx.sender)
        if queue is not None and len(queue) >= self.sender_txs_max:
            raise AdmissionError(
                "sender-quota-exceeded",
                f"{tx.sender} has {len(queue)} pending transactions; wait for blocks",
            )
        if len(self._by_id) >= self.txs_max or self._bytes + tx.size_bytes > self.bytes_max:
            raise AdmissionError("mempool-full", "the node's mempool is full; retry shortly")
        self._by_id[tx.tx_id] = tx
        self._by_signature[tx.signature] = tx
        self._by_sender.setdefault(tx.sender, {})[tx.tx_id] = tx
        self._bytes += tx.size_bytes
        heapq.heappush(self._expiries, (tx.expires_at_ms, tx.tx_id))
        if len(self._expiries) > 2 * len(self._by_id) + 1_000:
            self._expiries = [(held.expires_at_ms, held.tx_id) for held in self._by_id.values()]
            heapq.heapify(self._expiries)

    def reap(self, txs_max: int, bytes_max: int) -> list[Transaction]:
        """Up to ``txs_max`` transactions and ``bytes_max`` bytes, round-robin by sender.

        The transactions stay in the pool until :meth:`remove` (the block may not commit).
        """
        chosen: list[Transaction] = []
        used = 0
        cursors: dict[str, Iterator[Transaction]] = {
            sender: iter(queue.values()) for sender, queue in self._by_sender.items()
        }
        while cursors and len(chosen) < txs_max:
            for sender in list(cursors):
                tx = next(cursors[sender], None)
                if tx is None or used + tx.size_bytes > bytes_max:
                    del cursors[sender]
                    continue
                chosen.append(tx)
                used += tx.size_bytes
                if len(chosen) >= txs_max:
                    break
        return chosen

    def remove(self, tx_ids: Iterable[str]) -> int:
        """Drop committed (or otherwise settled) transactions; return how many were held."""
        removed = 0
        for tx_id in tx_ids:
            tx = self._by_id.pop(tx_id, None)
            if tx is None:
                continue
            removed += 1
            self._by_signature.pop(tx.signature, None)
            self._bytes -= tx.size_bytes
            queue = self._by_sender[tx.sender]
            del queue[tx_id]
            if not queue:
                del self._by_sender[tx.sender]
        return removed

    def prune(self, now_ms: int) -> int:
        """Drop transactions that expired at or before ``now_ms`` (they can never commit)."""
        expiries = self._expiries
        expired = []
        while expiries and expiries[0][0] <= now_ms:
            expired.append(heapq.heappop(expiries)[1])
        return self.remove(expired)

    def known(self, envelope: object) -> Transaction | None:
        """The pending transaction that is exactly ``envelope``, if any.

        A validator checking a proposed block finds most of its transactions already parsed
        here (gossip got them first). Looked up by signature, then compared by canonical
        bytes (not ``==``, for which ``1``, ``1.0`` and ``True`` are equal), so an envelope
        that differs in any way from the pending one is parsed and checked afresh.
        """
        if not isinstance(envelope, dict):
            return None
        signature = envelope.get("signature")
        tx = self._by_signature.get(signature) if isinstance(signature, str) else None
        if tx is None:
            return None
        try:
            same = canonical_trusted(envelope) == tx.envelope_bytes
        except TypeError:  # not JSON at all (orjson's encode error is a TypeError)
            return None
        return tx if same else None

    def pending(self) -> list[Transaction]:
        return list(self._by_id.values())
