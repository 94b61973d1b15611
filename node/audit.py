"""Audit bundles (``coopledger-audit/1``): an asset's whole history, provable offline.

A bundle holds every committed transaction that touched an asset (and, with lineage, every
asset it was made from), the blocks with the commits that certify them, an RFC 6962
inclusion proof for each transaction, and a state proof of each asset's record against the
``state_root`` of the chain's tip block at the time the bundle was built::

    {"format": "coopledger-audit/1", "chain_id": str, "asset_id": str, "lineage": bool,
     "blocks":  [{"header": header, "block_hash": hex, "commit": commit}],     # by height
     "entries": [{"tx": envelope, "tx_id": hex, "height": int, "index": int, "code": str,
                  "proof": {"tree_size": int, "leaf_index": int, "path": [hex, ...]}}],
     "state":   {"height": int,                 # a block in "blocks": the tip when built
                 "proofs": [{"key": "asset/<id>", "value": asset record,
                             "proof": {"leaf": ..., "siblings": [...]}}]}}

Theory of operation. :func:`verify_bundle` trusts nothing but the genesis file:

1. each block's header hashes to its ``block_hash`` and its commit carries distinct, valid
   precommit signatures of a quorum of the genesis validators (genuine blocks);
2. each entry is a well-formed, correctly signed transaction of this chain whose leaf
   ``{"tx_id", "code"}`` is at ``index`` of its block's ``tx_root`` (genuine transactions,
   with their outcomes);
3. each asset record is in the ``state_root`` of the certified state block (genuine
   current state);
4. the asset event chain (docs/rules.md) recomputed from the entries, in chain order, ends
   exactly at each asset's proven ``last_event`` after exactly ``event_count`` events. The
   hash chain links every event to the one before, so no event can be dropped, added or
   reordered without changing the head: this is what shows the history is *complete*, not
   only genuine. With lineage, every input named by a proven asset must be proven too.

Any failure raises :class:`~node.errors.ProofError` naming the block, entry or asset and
what is wrong.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

from node.block import block_hash, check_header_shape, verify_commit
from node.codec import is_hex, parse_json
from node.errors import AdmissionError, CoopledgerError, EncodingError, ProofError, StorageError
from node.genesis import Genesis
from node.invariant import invariant
from node.ledger import Ledger
from node.limits import PAGE_SIZE_MAX
from node.merkle import MerkleTree, tx_leaf, verify_inclusion
from node.records import StateValue
from node.rules import OK, ZERO_HASH, event_hash
from node.smt import StateProof, state_key_hash, state_value_hash, verify_state_proof
from node.storage import CommittedTx, TxPosition
from node.tx import check_signature, parse_envelope

BUNDLE_FORMAT = "coopledger-audit/1"

BUNDLE_FIELDS = frozenset(
    {"format", "chain_id", "asset_id", "lineage", "blocks", "entries", "state"}
)

AUDIT_ASSETS_MAX = 256
"""Assets in one bundle (the asset and its lineage): a bread batch made from flour made from
grain stays far below this; a deeper lineage is audited in parts."""

AUDIT_ENTRIES_MAX = 20_000
"""Transactions in one bundle: years of observations on one lot, at about 1 KiB each."""

BUNDLE_BYTES_MAX = 256 * 1024 * 1024
"""Largest bundle file the verifier reads."""

_BUILD_ATTEMPTS_MAX = 3


class BundleTooLarge(CoopledgerError):
    """The asset's history or lineage exceeds the bundle limits."""


# --- building -------------------------------------------------------------------------------


def build_bundle(ledger: Ledger, asset_id: str, *, lineage: bool = False) -> dict[str, Any] | None:
    """The ``coopledger-audit/1`` bundle of ``asset_id`` as of the ledger's tip, or ``None``
    if there is no such asset. Raises :class:`BundleTooLarge` past the limits."""
    for _ in range(_BUILD_ATTEMPTS_MAX):
        height = ledger.height
        with ledger.committed_proofs() as prove:
            proofs = _state_proofs(prove, asset_id, lineage=lineage)
        if ledger.height != height:
            continue  # A block was committed meanwhile: the proofs may mix two roots.
        if proofs is None:
            return None
        return _assemble(ledger, asset_id, lineage, height, proofs)
    raise ProofError("the chain advanced during every attempt to build the bundle")


def _state_proofs(
    prove: Callable[[str], tuple[StateValue | None, StateProof]],
    asset_id: str,
    *,
    lineage: bool,
) -> list[dict[str, Any]] | None:
    proofs: list[dict[str, Any]] = []
    queue = [asset_id]
    seen = {asset_id}
    while queue:
        current = queue.pop(0)
        key = f"asset/{current}"
        value, proof = prove(key)
        if value is None:
            if current == asset_id:
                return None
            raise ProofError(f"asset {current}, an input of the lineage, is not in the state")
        proofs.append({"key": key, "value": value, "proof": proof.to_json()})
        if lineage:
            for parent in value["inputs"]:
                if parent not in seen:
                    seen.add(parent)
                    queue.append(parent)
                    if len(seen) > AUDIT_ASSETS_MAX:
                        raise BundleTooLarge(
                            f"the lineage of {asset_id} has more than {AUDIT_ASSETS_MAX} assets"
                        )
    return proofs


def _asset_txs(ledger: Ledger, asset_id: str, height_max: int) -> Iterable[CommittedTx]:
    after: TxPosition | None = None
    while True:
        page = ledger.store.txs_by_ref("asset", asset_id, after=after, limit=PAGE_SIZE_MAX)
        for committed in page:
            if committed.height <= height_max:
                yield committed
        if len(page) < PAGE_SIZE_MAX:
            return
        after = page[-1].position


def _assemble(
    ledger: Ledger, asset_id: str, lineage: bool, height: int, proofs: list[dict[str, Any]]
) -> dict[str, Any]:
    store = ledger.store
    found: dict[str, CommittedTx] = {}
    for proof in proofs:
        for committed in _asset_txs(ledger, proof["value"]["asset_id"], height):
            found[committed.record.tx_id] = committed
            if len(found) > AUDIT_ENTRIES_MAX:
                raise BundleTooLarge(f"the history has more than {AUDIT_ENTRIES_MAX} transactions")
    ordered = sorted(found.values(), key=lambda committed: committed.position)
    trees: dict[int, MerkleTree] = {}
    entries = []
    for committed in ordered:
        tree = trees.get(committed.height)
        if tree is None:
            tree = store.block_tx_tree(committed.height)
            if tree is None:
                raise StorageError(
                    f"block {committed.height}, which holds a found transaction, is missing"
                )
            trees[committed.height] = tree
        record = committed.record
        entries.append(
            {
                "tx": record.envelope,
                "tx_id": record.tx_id,
                "height": committed.height,
                "index": record.index,
                "code": record.code,
                "proof": {
                    "tree_size": len(tree),
                    "leaf_index": record.index,
                    "path": [step.hex() for step in tree.inclusion_proof(record.index)],
                },
            }
        )
    blocks: list[dict[str, Any]] = []
    for block_height in sorted({committed.height for committed in ordered} | {height}):
        stored = store.block(block_height)
        invariant(stored is not None, f"block {block_height} is committed but not stored")
        assert stored is not None
        blocks.append(
            {"header": stored.header, "block_hash": stored.block_hash, "commit": stored.commit}
        )
    state_root = bytes.fromhex(blocks[-1]["header"]["state_root"])
    for proof in proofs:
        # Check our own proofs against the certified header: a mismatch is a node bug.
        verify_state_proof(
            state_root,
            state_key_hash(proof["key"]),
            state_value_hash(proof["value"]),
            StateProof.from_json(proof["proof"]),
        )
    return {
        "format": BUNDLE_FORMAT,
        "chain_id": ledger.genesis.chain_id,
        "asset_id": asset_id,
        "lineage": lineage,
        "blocks": blocks,
        "entries": entries,
        "state": {"height": height, "proofs": proofs},
    }


# --- verifying ------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True, kw_only=True)
class AuditEvent:
    """One verified transaction of the history, as the CLI prints it."""

    height: int
    timestamp_ms: int
    index: int
    tx_id: str
    type: str
    sender: str
    code: str
    assets: tuple[str, ...]
    """The bundle's assets this transaction appended an event to."""
    payload: dict[str, Any]


@dataclass(frozen=True, slots=True, kw_only=True)
class AuditReport:
    chain_id: str
    asset_id: str
    lineage: bool
    height: int
    """The state block: the history is complete as of this height."""
    timestamp_ms: int
    events: tuple[AuditEvent, ...]
    assets: dict[str, dict[str, Any]]
    """Each proven asset's record at ``height``."""


def verify_bundle_bytes(data: bytes, genesis: Genesis) -> AuditReport:
    """Parse a bundle file (strict JSON) and verify it; see :func:`verify_bundle`."""
    if len(data) > BUNDLE_BYTES_MAX:
        raise ProofError(f"bundle is larger than {BUNDLE_BYTES_MAX} bytes")
    try:
        bundle = parse_json(data, what="audit bundle")
    except EncodingError as error:
        raise ProofError(f"bundle is not valid JSON: {error}") from error
    return verify_bundle(bundle, genesis)


def verify_bundle(bundle: object, genesis: Genesis) -> AuditReport:
    """Verify a parsed bundle with nothing but ``genesis``; raise :class:`ProofError`."""
    if not isinstance(bundle, dict) or set(bundle) != BUNDLE_FIELDS:
        raise ProofError(f"bundle must have exactly the fields {', '.join(sorted(BUNDLE_FIELDS))}")
    if bundle["format"] != BUNDLE_FORMAT:
        raise ProofError(f"bundle format is {bundle['format']!r}, not {BUNDLE_FORMAT}")
    if bundle["chain_id"] != genesis.chain_id:
        raise ProofError(
            f"bundle is for chain {bundle['chain_id']!r}, the genesis is for {genesis.chain_id!r}"
        )
    asset_id = bundle["asset_id"]
    lineage = bundle["lineage"]
    if not isinstance(asset_id, str) or not isinstance(lineage, bool):
        raise ProofError("bundle.asset_id must be a string and bundle.lineage a boolean")
    headers = _verify_blocks(bundle["blocks"], genesis)
    entries = _verify_entries(bundle["entries"], headers, genesis)
    state_height, assets = _verify_state(bundle["state"], headers)
    _check_asset_set(assets, asset_id, lineage)
    events = _verify_chains(entries, assets, state_height, headers)
    return AuditReport(
        chain_id=genesis.chain_id,
        asset_id=asset_id,
        lineage=lineage,
        height=state_height,
        timestamp_ms=headers[state_height]["timestamp_ms"],
        events=events,
        assets=assets,
    )


def _verify_blocks(blocks: object, genesis: Genesis) -> dict[int, dict[str, Any]]:
    if not isinstance(blocks, list) or not blocks:
        raise ProofError("bundle.blocks must be a non-empty list")
    headers: dict[int, dict[str, Any]] = {}
    previous = 0
    for position, block in enumerate(blocks):
        where = f"blocks[{position}]"
        if not isinstance(block, dict) or set(block) != {"header", "block_hash", "commit"}:
            raise ProofError(f"{where} must have exactly header, block_hash, commit")
        try:
            header = check_header_shape(block["header"])
        except ProofError as error:
            raise ProofError(f"{where}: {error}") from error
        height = header["height"]
        if header["chain_id"] != genesis.chain_id:
            raise ProofError(f"{where}: block {height} is for chain {header['chain_id']!r}")
        if height <= previous:
            raise ProofError(f"{where}: blocks must be in strictly increasing height order")
        previous = height
        hash_ = block_hash(header)
        if block["block_hash"] != hash_:
            raise ProofError(
                f"{where}: block {height}'s header hashes to {hash_}, not the stated block_hash"
            )
        try:
            verify_commit(genesis, block["commit"], hash_, height)
        except ProofError as error:
            raise ProofError(
                f"{where}: block {height}'s commit does not verify: {error}"
            ) from error
        headers[height] = dict(header)
    return headers


def _verify_entries(
    entries: object, headers: dict[int, dict[str, Any]], genesis: Genesis
) -> list[dict[str, Any]]:
    if not isinstance(entries, list):
        raise ProofError("bundle.entries must be a list")
    fields = {"tx", "tx_id", "height", "index", "code", "proof"}
    previous: tuple[int, int] = (0, -1)
    for position, entry in enumerate(entries):
        where = f"entries[{position}]"
        if not isinstance(entry, dict) or set(entry) != fields:
            raise ProofError(f"{where} must have exactly {', '.join(sorted(fields))}")
        height, index, code = entry["height"], entry["index"], entry["code"]
        if not all(isinstance(v, int) and not isinstance(v, bool) for v in (height, index)):
            raise ProofError(f"{where}: height and index must be integers")
        if not isinstance(code, str):
            raise ProofError(f"{where}: code must be a string")
        if (height, index) <= previous:
            raise ProofError(f"{where}: entries must be in chain order without repeats")
        previous = (height, index)
        try:
            tx = parse_envelope(entry["tx"])
            check_signature(tx)
        except AdmissionError as error:
            raise ProofError(f"{where}: the transaction is not genuine: {error}") from error
        if tx.tx_id != entry["tx_id"]:
            raise ProofError(f"{where}: its body hashes to {tx.tx_id}, not the stated tx_id")
        if tx.body["chain_id"] != genesis.chain_id:
            raise ProofError(f"{where}: the transaction is for chain {tx.body['chain_id']!r}")
        header = headers.get(height)
        if header is None:
            raise ProofError(f"{where}: block {height} that holds it is not in the bundle")
        _verify_inclusion_proof(where, entry, header)
    return entries


def _verify_inclusion_proof(where: str, entry: dict[str, Any], header: dict[str, Any]) -> None:
    proof = entry["proof"]
    if not isinstance(proof, dict) or set(proof) != {"tree_size", "leaf_index", "path"}:
        raise ProofError(f"{where}.proof must have exactly tree_size, leaf_index, path")
    height = header["height"]
    if proof["tree_size"] != header["tx_count"]:
        raise ProofError(
            f"{where}: proof is for a tree of {proof['tree_size']!r} leaves; block {height} "
            f"holds {header['tx_count']}"
        )
    if proof["leaf_index"] != entry["index"]:
        raise ProofError(f"{where}: proof is for leaf {proof['leaf_index']!r}, not the entry's")
    path = proof["path"]
    if not isinstance(path, list) or not all(is_hex(step, 32) for step in path):
        raise ProofError(f"{where}.proof.path must be a list of 32-byte lowercase hex hashes")
    try:
        verify_inclusion(
            bytes.fromhex(header["tx_root"]),
            tx_leaf(entry["tx_id"], entry["code"]),
            entry["index"],
            header["tx_count"],
            [bytes.fromhex(step) for step in path],
        )
    except ProofError as error:
        raise ProofError(
            f"{where}: tx {entry['tx_id'][:16]}... with code {entry['code']!r} is not in "
            f"block {height}'s tx_root: {error}"
        ) from error


def _verify_state(
    state: object, headers: dict[int, dict[str, Any]]
) -> tuple[int, dict[str, dict[str, Any]]]:
    if not isinstance(state, dict) or set(state) != {"height", "proofs"}:
        raise ProofError("bundle.state must have exactly height, proofs")
    height = state["height"]
    header = headers.get(height) if isinstance(height, int) else None
    if header is None:
        raise ProofError(f"bundle.state: its block {height!r} is not in the bundle")
    if height != max(headers):
        raise ProofError("bundle.state must be proven against the highest block of the bundle")
    proofs = state["proofs"]
    if not isinstance(proofs, list) or not proofs:
        raise ProofError("bundle.state.proofs must be a non-empty list")
    root = bytes.fromhex(header["state_root"])
    assets: dict[str, dict[str, Any]] = {}
    for position, item in enumerate(proofs):
        where = f"state.proofs[{position}]"
        if not isinstance(item, dict) or set(item) != {"key", "value", "proof"}:
            raise ProofError(f"{where} must have exactly key, value, proof")
        key, value = item["key"], item["value"]
        if not isinstance(key, str) or not key.startswith("asset/"):
            raise ProofError(f"{where}: key must be asset/<id>")
        asset_id = key.removeprefix("asset/")
        if not _is_asset_record(value, asset_id):
            raise ProofError(f"{where}: value is not the record of asset {asset_id}")
        if asset_id in assets:
            raise ProofError(f"{where}: asset {asset_id} is proven twice")
        try:
            verify_state_proof(
                root,
                state_key_hash(key),
                state_value_hash(value),
                StateProof.from_json(item["proof"]),
            )
        except (ProofError, EncodingError) as error:
            raise ProofError(
                f"{where}: asset {asset_id}'s record is not in block {height}'s state_root: {error}"
            ) from error
        assets[asset_id] = value
    return height, assets


def _is_asset_record(value: object, asset_id: str) -> bool:
    return (
        isinstance(value, dict)
        and value.get("asset_id") == asset_id
        and is_hex(value.get("last_event"), 32)
        and isinstance(value.get("event_count"), int)
        and isinstance(value.get("inputs"), list)
    )


def _check_asset_set(assets: dict[str, dict[str, Any]], asset_id: str, lineage: bool) -> None:
    if asset_id not in assets:
        raise ProofError(f"the bundle proves no state for its asset {asset_id}")
    if not lineage:
        if set(assets) != {asset_id}:
            raise ProofError("a bundle without lineage proves the state of its asset only")
        return
    for proven, value in assets.items():
        for parent in value["inputs"]:
            if parent not in assets:
                raise ProofError(
                    f"lineage incomplete: {proven} was made from {parent}, whose state the "
                    "bundle does not prove"
                )


def _touched(tx_type: str, payload: dict[str, Any], shipments: dict[str, list[str]]) -> list[str]:
    """The assets a successful transaction appends events to, in event order (docs/rules.md)."""
    if tx_type in ("asset.register", "asset.transfer", "asset.observe"):
        return [payload["asset_id"]]
    if tx_type == "shipment.create":
        shipments[payload["shipment_id"]] = list(payload["asset_ids"])
        return list(payload["asset_ids"])
    if tx_type in ("shipment.receive", "shipment.cancel"):
        return shipments.get(payload["shipment_id"], [])
    if tx_type == "asset.transform":
        return [*payload["inputs"], *(output["asset_id"] for output in payload["outputs"])]
    return []


def _verify_chains(
    entries: list[dict[str, Any]],
    assets: dict[str, dict[str, Any]],
    state_height: int,
    headers: dict[int, dict[str, Any]],
) -> tuple[AuditEvent, ...]:
    heads = dict.fromkeys(assets, ZERO_HASH)
    counts = dict.fromkeys(assets, 0)
    shipments: dict[str, list[str]] = {}
    events = []
    for position, entry in enumerate(entries):
        where = f"entries[{position}]"
        if entry["height"] > state_height:
            raise ProofError(f"{where}: at height {entry['height']}, after the proven state")
        body = entry["tx"]["body"]
        touched: list[str] = []
        if entry["code"] == OK:
            touched = [a for a in _touched(body["type"], body["payload"], shipments) if a in heads]
        if not touched:
            raise ProofError(
                f"{where}: tx {entry['tx_id'][:16]}... ({body['type']}) appends no event to "
                "an asset of the bundle"
            )
        for asset in touched:
            heads[asset] = event_hash(heads[asset], entry["tx_id"], body["type"], asset)
            counts[asset] += 1
        events.append(
            AuditEvent(
                height=entry["height"],
                timestamp_ms=headers[entry["height"]]["timestamp_ms"],
                index=entry["index"],
                tx_id=entry["tx_id"],
                type=body["type"],
                sender=body["sender"],
                code=entry["code"],
                assets=tuple(touched),
                payload=body["payload"],
            )
        )
    for asset, value in assets.items():
        if counts[asset] != value["event_count"] or heads[asset] != value["last_event"]:
            raise ProofError(
                f"history of {asset} incomplete or altered: the bundle's {counts[asset]} "
                f"events chain to {heads[asset][:16]}..., the proven state at height "
                f"{state_height} names {value['event_count']} events ending at "
                f"{value['last_event'][:16]}..."
            )
    return tuple(events)
