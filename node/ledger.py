"""The ledger: executes blocks over the stored state and commits them.

Theory of operation. A :class:`Ledger` wraps a :class:`~node.storage.BlockStore` and keeps
three things in memory that make execution fast and deterministic:

* the state-root tree (:class:`~node.smt.SparseMerkleTree`), rebuilt from the state table at
  start-up and updated by each block's changes only (O(changes x log N));
* the deduplication index of unexpired committed ``tx_id``s;
* a bounded cache of state values, filled by one batched read per block.

:meth:`Ledger.execute` runs a block's transactions (the proposer before proposing, every
validator before voting) and yields an :class:`ExecutedBlock` whose header commits to the
outcomes (``tx_root``) and the state after it (``state_root``). Nothing is stored yet:
consensus may still pick another block. :meth:`Ledger.commit` stores the executed block with
its commit certificate in one database transaction. :meth:`Ledger.apply_synced_block` is
the path of a node catching up: verify the commit, re-execute, compare roots, store.

Block 1 carries the genesis state (members and their keys) in its state changes, so
``state_root`` always covers the whole state and the database holds nothing but blocks.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

from node.block import Commit, Header, block_hash, check_header_shape, verify_commit
from node.codec import canonical_trusted, sha256
from node.errors import AdmissionError, ProofError
from node.genesis import Genesis
from node.invariant import invariant
from node.merkle import MerkleTree, tx_leaf
from node.records import BlockRecord, StateKey, StateValue, TxRecord
from node.rules import OK, BlockContext, Outcome, apply_transaction, genesis_changes
from node.smt import SparseMerkleTree, StateProof, state_key_hash, state_value_hash
from node.state import ChangeSet
from node.storage import BlockStore
from node.tx import DedupIndex, Transaction, check_signature, check_window, parse_envelope

STATE_CACHE_ENTRIES_MAX = 40_000
"""State values kept in memory between blocks (about 1 KiB each): the working set of active
assets and purchases, and room for the keys of two maximal blocks (5,000 transactions read
about 4 keys each) so a block's batched prefetch is not evicted before it executes; beyond
it values are read again from the database."""

VERIFIED_SIGNATURES_MAX = 50_000
"""Signatures remembered as verified (mempool admission), so a node checks each once: ten
full blocks, enough for everything pending plus a proposal's worth of gossip lag."""

RECENT_TX_IDS_MAX = 50_000
"""Committed tx ids answered from memory by the replay check; older unexpired ones are asked
of the store (its ``txs`` table is indexed by ``tx_id``)."""


@dataclass(frozen=True, slots=True, kw_only=True)
class ExecutedBlock:
    """A block executed but not yet committed: its header and every outcome."""

    header: Header
    block_hash: str
    txs: tuple[Transaction, ...]
    outcomes: tuple[Outcome, ...]
    changes: dict[StateKey, StateValue | None]
    encoded_changes: dict[StateKey, bytes | None]
    """``canonical`` of each value in :attr:`changes`: what the state root hashes."""

    @property
    def height(self) -> int:
        return self.header["height"]


class _CachedReader:
    """Reads state through a bounded cache in front of the store (or the genesis state)."""

    __slots__ = ("_cache", "_genesis_values", "_store")

    def __init__(self, store: BlockStore, genesis_values: dict[StateKey, StateValue] | None):
        self._store = store
        self._genesis_values = genesis_values
        self._cache: OrderedDict[StateKey, StateValue | None] = OrderedDict()

    def get(self, key: StateKey) -> StateValue | None:
        if key in self._cache:
            return self._cache[key]
        value = (
            self._genesis_values.get(key)
            if self._genesis_values is not None
            else self._store.state_get(key)
        )
        self._remember(key, value)
        return value

    def prefetch(self, keys: Iterable[StateKey]) -> None:
        missing = [key for key in set(keys) if key not in self._cache]
        if not missing or self._genesis_values is not None:
            return
        found = self._store.state_get_many(missing)
        for key in sorted(missing):
            self._remember(key, found.get(key))

    def applied(self, changes: dict[StateKey, StateValue | None]) -> None:
        self._genesis_values = None
        for key, value in changes.items():
            self._remember(key, value)

    def _remember(self, key: StateKey, value: StateValue | None) -> None:
        self._cache[key] = value
        self._cache.move_to_end(key)
        while len(self._cache) > STATE_CACHE_ENTRIES_MAX:
            self._cache.popitem(last=False)


def _payload_keys(body: dict[str, Any]) -> list[StateKey]:
    """State keys a transaction will read, from its payload alone (for one batched read)."""
    payload = body["payload"]
    keys = [f"member/{body['sender']}"]
    for name in ("asset_id",):
        if name in payload:
            keys.append(f"asset/{payload[name]}")
    for asset_id in payload.get("asset_ids", []) + payload.get("inputs", []):
        keys.append(f"asset/{asset_id}")
    for output in payload.get("outputs", []):
        keys.append(f"asset/{output['asset_id']}")
    for name, prefix in (("to", "member"), ("supplier", "member"), ("shipment_id", "shipment")):
        if name in payload:
            keys.append(f"{prefix}/{payload[name]}")
    if "purchase_id" in payload:
        keys.append(f"purchase/{payload['purchase_id']}")
    return keys


class Ledger:
    """One node's ledger: state, roots and committed chain."""

    def __init__(self, genesis: Genesis, store: BlockStore) -> None:
        if store.chain_id != genesis.chain_id or store.genesis_hash != genesis.hash:
            raise ProofError("the store belongs to another chain or genesis")
        self.genesis = genesis
        self.store = store
        self._verified: OrderedDict[tuple[str, str], None] = OrderedDict()
        tip = store.tip()
        if tip is None:
            genesis_values = genesis_changes(genesis)
            self.height = 0
            self.last_block_hash = genesis.hash
            self.last_timestamp_ms = genesis.genesis_time_ms
            self._tree = SparseMerkleTree.from_items(
                (state_key_hash(k), state_value_hash(v)) for k, v in genesis_values.items()
            )
            self._reader = _CachedReader(store, genesis_values)
        else:
            self.height = tip.height
            self.last_block_hash = tip.block_hash
            self.last_timestamp_ms = tip.header["timestamp_ms"]
            self._tree = SparseMerkleTree.from_items(
                (state_key_hash(k), state_value_hash(v)) for k, v in store.iter_state()
            )
            self._reader = _CachedReader(store, None)
            invariant(
                self._tree.root().hex() == tip.header["state_root"],
                "the stored state does not match the tip's state_root",
            )
        self._recent = DedupIndex(RECENT_TX_IDS_MAX, complete_above_ms=store.latest_expiry_ms())
        """Recently committed tx ids: the fast front of the store's deduplication index."""
        self._pending: tuple[str, dict[bytes, bytes | None], dict[bytes, bytes | None]] | None = (
            None
        )
        """The executed, uncommitted block applied to the tree: its hash, the changes that
        undo it and the changes that redo it."""

    # --- reads ---------------------------------------------------------------------------

    @property
    def state_root(self) -> str:
        return self._tree.root().hex()

    def state_get(self, key: StateKey) -> StateValue | None:
        """Committed state. A block being executed is not visible here: its changes live in
        its own ChangeSet, so reading leaves the executed block (and its state root) intact
        for the commit that usually follows."""
        return self._reader.get(key)

    def state_proof(self, key: StateKey) -> tuple[StateValue | None, StateProof]:
        """The committed value of ``key`` and its proof against :attr:`state_root`.

        The root is the ``state_root`` of block :attr:`height`; the proof shows inclusion of
        the value, or the key's absence.
        """
        with self.committed_proofs() as prove:
            return prove(key)

    @contextmanager
    def committed_proofs(
        self,
    ) -> Iterator[Callable[[StateKey], tuple[StateValue | None, StateProof]]]:
        """A function giving what :meth:`state_proof` gives, for many keys against one root.

        A block executed but not yet committed (under load there nearly always is one) is
        taken off the tree once for all of them, and put back on leaving. Each costs a tree
        update of a whole block's changes, which :meth:`state_proof` alone pays for every
        key: 36.7 ms a key with a 2,000-transaction block pending at 25,000 entries, against
        1.75 ms a key for 20 keys inside one ``with`` (docs/benchmarks.md). An audit bundle
        proves its lineage's assets inside one. Nothing may execute or commit inside it.
        """
        pending = self._pending
        if pending is not None:
            self._tree.update(pending[1])
        try:
            yield lambda key: (self._reader.get(key), self._tree.prove(state_key_hash(key)))
        finally:
            if pending is not None:
                self._tree.update(pending[2])

    def committed_among(self, txs: Sequence[Transaction]) -> set[str]:
        """The ids of those of ``txs`` committed and not yet expired: the replay check.

        Recent ones are answered from memory. The store is asked, in one batched query, only
        about transactions the memory cannot vouch for: those expiring no later than the
        latest expiry it forgot early (or held in the store at start-up). So the memory this
        takes is bounded whatever the rate, and a client that sets its expiries as it signs
        (now plus a window) is checked without a database read.
        """
        recent = self._recent
        found = {tx.tx_id for tx in txs if tx.tx_id in recent}
        bound = recent.complete_above_ms
        rest = [tx.tx_id for tx in txs if tx.expires_at_ms <= bound and tx.tx_id not in found]
        if rest:
            found |= self.store.committed_unexpired(rest, self.last_timestamp_ms)
        return found

    # --- admission -------------------------------------------------------------------------

    def is_verified(self, tx: Transaction) -> bool:
        return (tx.tx_id, tx.signature) in self._verified

    def record_verified(self, tx: Transaction) -> None:
        """Remember that ``tx``'s signature checked out (by :func:`check_signature`)."""
        self._verified[(tx.tx_id, tx.signature)] = None
        while len(self._verified) > VERIFIED_SIGNATURES_MAX:
            self._verified.popitem(last=False)

    def verify_signature(self, tx: Transaction) -> None:
        """Strict signature check, done once per (tx_id, signature) on this node."""
        if not self.is_verified(tx):
            check_signature(tx)
            self.record_verified(tx)

    def admit(self, envelope: object, now_ms: int) -> Transaction:
        """Mempool admission: shape, window, duplicate, signature and membership."""
        tx = self.admit_unsigned(envelope, now_ms)
        self.verify_signature(tx)
        self.admit_member(tx)
        return tx

    def admit_unsigned(self, envelope: object, now_ms: int) -> Transaction:
        """Admission before the signature check: shape, window and duplicate."""
        outcome = self.admit_unsigned_many([envelope], now_ms)[0]
        if isinstance(outcome, AdmissionError):
            raise outcome
        return outcome

    def admit_unsigned_many(
        self, envelopes: Sequence[object], now_ms: int
    ) -> list[Transaction | AdmissionError]:
        """:meth:`admit_unsigned` for many envelopes, with one replay lookup for all.

        With :meth:`admit_member` after a signature check this is :meth:`admit` in phases,
        so a node can check many signatures at once off its event loop in between.
        """
        outcomes: list[Transaction | AdmissionError] = []
        for envelope in envelopes:
            try:
                tx = parse_envelope(envelope)
                check_window(tx, self.genesis.chain_id, now_ms)
            except AdmissionError as error:
                outcomes.append(error)
            else:
                outcomes.append(tx)
        committed = self.committed_among([o for o in outcomes if isinstance(o, Transaction)])
        return [
            AdmissionError("duplicate-tx", "already committed")
            if isinstance(o, Transaction) and o.tx_id in committed
            else o
            for o in outcomes
        ]

    def admit_member(self, tx: Transaction) -> None:
        """Admission's last check: the signer is an active key of the sender."""
        member = self.state_get(f"member/{tx.sender}")
        if member is None:
            raise AdmissionError("unknown-sender", f"{tx.sender} is not a member")
        if tx.signer not in member["public_keys"]:
            raise AdmissionError("signer-not-authorized", f"key is not one of {tx.sender}'s")

    def check_block_txs(self, txs: Sequence[Transaction], timestamp_ms: int) -> None:
        """Block validity: every transaction in window, not a duplicate, correctly signed."""
        seen: set[str] = set()
        committed = self.committed_among(txs)
        for tx in txs:
            check_window(tx, self.genesis.chain_id, timestamp_ms)
            if tx.tx_id in committed or tx.tx_id in seen:
                raise AdmissionError("duplicate-tx", f"{tx.tx_id} is already committed")
            seen.add(tx.tx_id)
            self.verify_signature(tx)

    # --- execution -------------------------------------------------------------------------

    def execute(
        self,
        txs: Sequence[Transaction],
        *,
        timestamp_ms: int,
        proposer: str,
        round_: int = 0,
    ) -> ExecutedBlock:
        """Execute ``txs`` as the next block; raise :class:`AdmissionError` if it is invalid."""
        if timestamp_ms <= self.last_timestamp_ms:
            raise AdmissionError("invalid-block", "block time must increase")
        self.check_block_txs(txs, timestamp_ms)
        self._revert_pending()
        height = self.height + 1
        context = BlockContext(
            chain_id=self.genesis.chain_id, height=height, timestamp_ms=timestamp_ms
        )
        self._reader.prefetch(key for tx in txs for key in _payload_keys(tx.body))
        changes = ChangeSet(self._reader)
        if height == 1:
            for key, value in genesis_changes(self.genesis).items():
                changes.put(key, value)
        outcomes = tuple(
            apply_transaction(changes, tx.body, tx.signer, tx.tx_id, context) for tx in txs
        )
        # Each new value is encoded once: its leaf hashes these bytes and the store keeps them.
        # The rules build values only from checked payloads, the genesis (checked when loaded)
        # and arithmetic the limits keep within canonical integers (node/limits.py), so the
        # domain walk of ``canonical`` is skipped (tests/test_rules_properties.py checks it).
        encoded = {
            key: None if value is None else canonical_trusted(value)
            for key, value in changes.changes.items()
        }
        tree_changes = {
            state_key_hash(key): None if data is None else sha256(data)
            for key, data in encoded.items()
        }
        inverse = {key_hash: self._tree.get(key_hash) for key_hash in tree_changes}
        state_root = self._tree.update(tree_changes).hex()
        tx_root = MerkleTree(
            [tx_leaf(tx.tx_id, outcome.code) for tx, outcome in zip(txs, outcomes, strict=True)]
        ).root()
        header: Header = {
            "chain_id": self.genesis.chain_id,
            "height": height,
            "round": round_,
            "timestamp_ms": timestamp_ms,
            "proposer": proposer,
            "prev_hash": self.last_block_hash,
            "tx_root": tx_root.hex(),
            "state_root": state_root,
            "tx_count": len(txs),
        }
        hash_ = block_hash(header)
        self._pending = (hash_, inverse, tree_changes)
        return ExecutedBlock(
            header=header,
            block_hash=hash_,
            txs=tuple(txs),
            outcomes=outcomes,
            changes=dict(changes.changes),
            encoded_changes=encoded,
        )

    def _revert_pending(self) -> None:
        if self._pending is not None:
            self._tree.update(self._pending[1])
            self._pending = None

    # --- commit ------------------------------------------------------------------------------

    def commit(self, executed: ExecutedBlock, commit: Commit) -> BlockRecord:
        """Store ``executed`` with its certificate; the commit must be valid for it."""
        record = self.prepare_commit(executed, commit)
        self.store.commit_block(record)
        self.finish_commit(executed)
        return record

    def prepare_commit(self, executed: ExecutedBlock, commit: Commit) -> BlockRecord:
        """:meth:`commit` in phases: check and build the record to store.

        The caller writes it with ``store.commit_block`` (possibly in another thread: the
        ledger's memory is not touched meanwhile) and then calls :meth:`finish_commit`.
        Nothing else may execute or commit on this ledger between the phases.
        """
        verify_commit(self.genesis, commit, executed.block_hash, executed.height)
        invariant(executed.height == self.height + 1, "commit out of order")
        if self._pending is None or self._pending[0] != executed.block_hash:
            # Another block was executed since (a different round's proposal): redo this one.
            redone = self.execute(
                executed.txs,
                timestamp_ms=executed.header["timestamp_ms"],
                proposer=executed.header["proposer"],
                round_=executed.header["round"],
            )
            invariant(redone.block_hash == executed.block_hash, "re-execution diverged")
        return self._record(executed, commit)

    def finish_commit(self, executed: ExecutedBlock) -> None:
        """After the record of ``executed`` is durably stored: advance the ledger to it."""
        invariant(
            self._pending is not None and self._pending[0] == executed.block_hash,
            "finish_commit without the block's prepare_commit",
        )
        self._pending = None
        self._reader.applied(executed.changes)
        self.height = executed.height
        self.last_block_hash = executed.block_hash
        self.last_timestamp_ms = executed.header["timestamp_ms"]
        for tx in executed.txs:
            self._recent.add(tx.tx_id, tx.expires_at_ms)
        self._recent.prune(self.last_timestamp_ms)

    def apply_synced_block(
        self, header: object, envelopes: Sequence[object], commit: object
    ) -> BlockRecord:
        """Catch-up: verify a fetched block and its commit, re-execute it, check, store."""
        checked = check_header_shape(header)
        hash_ = block_hash(checked)
        certificate = verify_commit(self.genesis, commit, hash_, self.height + 1)
        if checked["chain_id"] != self.genesis.chain_id or checked["height"] != self.height + 1:
            raise ProofError("block is not the next block of this chain")
        if checked["prev_hash"] != self.last_block_hash:
            raise ProofError("block does not extend this node's chain (prev_hash)")
        if len(envelopes) != checked["tx_count"]:
            raise ProofError("block has a different number of transactions than its header")
        try:
            txs = [parse_envelope(envelope) for envelope in envelopes]
            executed = self.execute(
                txs,
                timestamp_ms=checked["timestamp_ms"],
                proposer=checked["proposer"],
                round_=checked["round"],
            )
        except AdmissionError as error:
            self._revert_pending()
            raise ProofError(f"block holds an invalid transaction: {error}") from error
        for name, ours, theirs in (
            ("tx_root", executed.header["tx_root"], checked["tx_root"]),
            ("state_root", executed.header["state_root"], checked["state_root"]),
        ):
            if ours != theirs:
                self._revert_pending()
                raise ProofError(f"re-execution gives another {name} than the block's header")
        invariant(executed.block_hash == hash_, "identical headers must hash identically")
        return self.commit(executed, certificate)

    def _record(self, executed: ExecutedBlock, commit: Commit) -> BlockRecord:
        tx_records = [
            TxRecord(
                tx_id=tx.tx_id,
                envelope=tx.envelope,
                envelope_json=tx.envelope_bytes.decode("utf-8"),
                sender=tx.sender,
                type=tx.type,
                expires_at_ms=tx.expires_at_ms,
                index=index,
                code=outcome.code,
                events=outcome.events,
                refs=outcome.refs,
            )
            for index, (tx, outcome) in enumerate(zip(executed.txs, executed.outcomes, strict=True))
        ]
        return BlockRecord(
            header=executed.header,
            block_hash=executed.block_hash,
            commit=commit,
            txs=tx_records,
            state_changes={
                key: None if data is None else data.decode("utf-8")
                for key, data in executed.encoded_changes.items()
            },
            asset_events=[event for outcome in executed.outcomes for event in outcome.asset_events],
        )


def ok_count(executed: ExecutedBlock) -> int:
    return sum(1 for outcome in executed.outcomes if outcome.code == OK)
