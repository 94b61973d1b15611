"""Every bound in coopledger, in one place, each with the reason for its value.

The relations between them are checked at import (TigerBeetle's ``constants.zig``,
raft's ``Config.validate``): a change that breaks one fails the first test that imports
this module.
"""

from __future__ import annotations

from node.invariant import invariant

# --- transactions -----------------------------------------------------------------------

TX_BYTES_MAX = 16 * 1024
"""Largest canonical envelope. A provenance record with metadata is well under 2 KiB; 16 KiB
leaves room for certificates in observations while keeping a block of thousands bounded."""

TX_EXPIRY_MS_MAX = 24 * 60 * 60 * 1000
"""A transaction may expire at most 24 h after the block time that includes it (DESIGN.md);
this bounds how long a committed ``tx_id`` must be remembered for deduplication."""

ID_CHARS_MAX = 64
"""Client-chosen ids (assets, shipments, purchases, members): long enough for a GTIN plus a
lot number or a UUID, short enough to index. Allowed characters are ``[A-Za-z0-9._:-]``,
which keeps ids safe in URLs and file names."""

TEXT_CHARS_MAX = 128
"""Product names, units, origins, observation kinds: one line of text."""

ASSETS_PER_SHIPMENT_MAX = 64
"""A consolidated shipment of a shared carrier: one pallet list."""

TRANSFORM_INPUTS_MAX = 32
TRANSFORM_OUTPUTS_MAX = 32

PRICE_TIERS_MAX = 16

QUANTITY_MAX = 10**9
"""Largest quantity in one record or one commitment, in integer base units."""

UNIT_PRICE_MAX = 10**6
"""Largest unit price in minor units. QUANTITY_MAX * UNIT_PRICE_MAX = 10**15 stays below
2**53 - 1, so every cost is exact in canonical JSON and in JavaScript."""

MEMBERS_MAX = 1_000
"""Consortium size bound: governance counts votes over all members."""

PUBLIC_KEYS_PER_MEMBER_MAX = 8

# --- blocks and consensus ---------------------------------------------------------------

VALIDATORS_MAX = 100
"""n = 3f + 1 with every validator verifying every vote: beyond 100 the all-to-all vote
traffic of a small BFT protocol stops being cheap."""

BLOCK_TXS_MAX = 5_000
"""Transactions per block: a block of 5,000 executes in well under a second."""

BLOCK_BYTES_MAX = 8 * 1024 * 1024
"""Bytes of canonical envelopes per block."""

FRAME_BYTES_MAX = BLOCK_BYTES_MAX + 1024 * 1024
"""A peer frame carries at most one block with its commit and framing."""

TX_BODY_FRAME_DEPTH = 5
"""How deep a transaction body sits in the deepest document that carries it, a sync
response (frame, ``blocks``, a block, its ``transactions``, the envelope). Admission counts
it into the nesting limit (node.codec.NESTING_DEPTH_MAX), so a body admitted from a client
fits every peer frame and the safety record, and no peer refuses the frame that carries it."""

# --- gateway -----------------------------------------------------------------------------

REQUEST_BODY_BYTES_MAX = 64 * 1024
"""REST request bodies: one transaction envelope with room for the JSON around it."""

BATCH_TXS_MAX = 500
"""Envelopes in one ``POST /v1/transactions/batch``: an ERP's hourly export in a few calls."""

BATCH_BODY_BYTES_MAX = 4 * 1024 * 1024
"""A batch request body: 500 typical envelopes (under 1 KiB each) with ample room; a batch
of maximal 16 KiB transactions must be split."""

PAGE_SIZE_MAX = 500
"""Items in one page of a list endpoint."""

# --- mempool -----------------------------------------------------------------------------

MEMPOOL_TXS_MAX = 50_000
MEMPOOL_BYTES_MAX = 64 * 1024 * 1024

invariant(QUANTITY_MAX * UNIT_PRICE_MAX <= 2**53 - 1, "costs must fit in canonical integers")
invariant(TX_BYTES_MAX <= REQUEST_BODY_BYTES_MAX, "a transaction must fit in a request body")
invariant(REQUEST_BODY_BYTES_MAX <= BATCH_BODY_BYTES_MAX, "a batch holds at least one request")
invariant(TX_BYTES_MAX * 8 <= BLOCK_BYTES_MAX, "a block must hold several maximal transactions")
invariant(BLOCK_BYTES_MAX < FRAME_BYTES_MAX, "a frame must carry a whole block")
invariant(BLOCK_TXS_MAX <= MEMPOOL_TXS_MAX, "the mempool must hold at least one full block")
invariant(MEMBERS_MAX * QUANTITY_MAX <= 2**53 - 1, "a pooled total must fit in canonical integers")
