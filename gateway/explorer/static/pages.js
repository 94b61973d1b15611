// Network, block, transaction and purchase pages.

import { loadedGenesis } from "./trust.js";
import { ago, badge, dataTable, facts, get, h, hash, link, member, memberNames, number, table, time } from "./ui.js";
import { canonicalBytes, sha256Hex, verifySigned } from "./verifier.js";

const RECENT_BLOCKS = 12;
const REFRESH_MS = 5000;

// --- network --------------------------------------------------------------------------------

function validatorState(validator, status) {
  if (validator.id === status.node_id) return ["this node", "ok"];
  if (!validator.connected) return ["disconnected", "bad"];
  if (validator.height === null) return ["connected", "ok"];
  const behind = status.height - validator.height;
  return behind > 1 ? [`behind by ${behind} blocks`, "warn"] : ["connected", "ok"];
}

function commitRate(blocks) {
  if (blocks.length < 2) return null;
  const newest = blocks[0].header.timestamp_ms;
  const oldest = blocks[blocks.length - 1].header.timestamp_ms;
  const spanMs = Math.max(1, newest - oldest);
  const txs = blocks.slice(0, -1).reduce((n, b) => n + b.header.tx_count, 0);
  return { blocksPerMin: ((blocks.length - 1) * 60000) / spanMs, txPerS: (txs * 1000) / spanMs, spanMs };
}

export async function networkPage(page, _id, context) {
  const status = await get("/v1/status");
  const heights = [];
  for (let height = status.height; height >= 1 && heights.length < RECENT_BLOCKS; height -= 1) heights.push(height);
  const blocks = await Promise.all(heights.map((height) => get(`/v1/blocks/${height}`)));
  const rate = commitRate(blocks);
  const connected = status.validators.filter((v) => v.connected).length;
  page.append(
    h("h1", {}, "Network"),
    h(
      "div",
      { class: "cards" },
      stat("Chain", status.chain_id),
      stat("Height", number(status.height), ["last block ", ago(status.last_block_time_ms)]),
      stat("Validators connected", `${connected} of ${status.validators.length}`, `seen from ${status.node_id}`),
      stat("Commit rate", rate ? `${rate.blocksPerMin.toFixed(1)} blocks/min` : "—", rate ? `${rate.txPerS.toFixed(2)} tx/s over the last ${blocks.length} blocks` : "not enough blocks yet"),
      stat("Mempool", `${number(status.mempool_txs)} tx`, `${number(status.mempool_bytes)} bytes`),
    ),
    h("h2", {}, "Validators"),
    table(
      ["Validator", "Address", "Status", ["Height", "num"]],
      status.validators.map((v) => {
        const [text, tone] = validatorState(v, status);
        return h("tr", {}, h("th", { scope: "row" }, v.id), h("td", {}, h("code", {}, v.address)), h("td", {}, badge(text, tone)), h("td", { class: "num" }, v.height === null ? "unknown" : number(v.height)));
      }),
      { caption: "Connection and height of each genesis validator, as this node sees them" },
    ),
    h("h2", {}, "Recent blocks"),
    table(
      ["Height", "Time", "Proposer", ["Txs", "num"], ["Signatures", "num"], "Block hash"],
      blocks.map((b) =>
        h("tr", {},
          h("th", { scope: "row" }, link("block", String(b.height), number(b.height), { "aria-label": `Block ${b.height}` })),
          h("td", {}, time(b.header.timestamp_ms)),
          h("td", {}, b.header.proposer),
          h("td", { class: "num" }, number(b.header.tx_count)),
          h("td", { class: "num" }, `${b.commit.signatures.length} of ${status.validators.length}`),
          h("td", {}, hash(b.block_hash))),
      ),
    ),
    h("p", { class: "muted" }, `Refreshes every ${REFRESH_MS / 1000} s.`),
  );
  context.scheduleRefresh(REFRESH_MS);
}

function stat(label, value, note = "") {
  return h("div", { class: "card stat" }, h("div", { class: "label" }, label), h("div", { class: "value" }, value), note ? h("div", { class: "note" }, note) : null);
}

// --- blocks and commits ------------------------------------------------------------------------

/** The commit signatures, each checked against the loaded genesis when there is one. */
async function commitSection(block) {
  const trusted = await loadedGenesis();
  const genesis = trusted?.genesis;
  const section = h("section", { "aria-labelledby": "commit-title" }, h("h2", { id: "commit-title" }, `Commit certificate (round ${block.commit.round})`));
  let checked = null;
  if (genesis) {
    const hashOk = (await sha256Hex(canonicalBytes(block.header))) === block.block_hash;
    const message = { chain_id: genesis.chainId, height: block.height, round: block.commit.round, block_hash: block.block_hash };
    checked = await Promise.all(
      block.commit.signatures.map(async (s) => hashOk && genesis.validators.has(s.validator) && verifySigned("precommit", message, genesis.validators.get(s.validator), s.signature)),
    );
    const valid = new Set(block.commit.signatures.filter((_, i) => checked[i]).map((s) => s.validator)).size;
    section.append(
      h("p", { class: valid >= genesis.quorum ? "ok-text" : "bad-text" },
        `${valid} valid precommit signatures of ${genesis.validators.size} genesis validators (quorum ${genesis.quorum}), checked in this browser against the genesis ${trusted.fromNode ? "fetched from this node" : `from ${trusted.source}`}; header hashes ${hashOk ? "to" : "NOT to"} the block hash.`),
    );
  } else {
    section.append(h("p", { class: "muted" }, "Load a genesis file on an asset's Verify panel to check these signatures in the browser."));
  }
  section.append(
    table(
      ["Validator", "Signature", ...(checked ? ["Checked"] : [])],
      block.commit.signatures.map((s, i) =>
        h("tr", {}, h("th", { scope: "row" }, s.validator), h("td", {}, h("code", { class: "wrap" }, s.signature)), checked ? h("td", {}, checked[i] ? badge("valid", "ok") : badge("invalid", "bad")) : null),
      ),
      { caption: "Ed25519 precommit signatures over the block hash" },
    ),
  );
  return section;
}

export async function blockPage(page, id) {
  const height = Number(id);
  const [block, names] = await Promise.all([get(`/v1/blocks/${encodeURIComponent(id)}`), memberNames()]);
  const header = block.header;
  page.append(
    h("h1", {}, `Block ${number(height)}`),
    h("nav", { class: "pager", "aria-label": "Neighbouring blocks" },
      height > 1 ? link("block", String(height - 1), `← Block ${height - 1}`) : null,
      link("block", String(height + 1), `Block ${height + 1} →`)),
    facts([
      ["Block hash", h("code", { class: "wrap" }, block.block_hash)],
      ["Time", time(header.timestamp_ms)],
      ["Chain", header.chain_id],
      ["Proposer", header.proposer],
      ["Round", String(header.round)],
      ["Previous block", height > 1 ? link("block", String(height - 1), header.prev_hash, { class: "wrap mono" }) : h("code", { class: "wrap" }, `${header.prev_hash} (genesis)`)],
      ["Transaction root", h("code", { class: "wrap" }, header.tx_root)],
      ["State root", h("code", { class: "wrap" }, header.state_root)],
      ["Transactions", number(header.tx_count)],
    ]),
    await commitSection(block),
    h("h2", {}, "Transactions"),
    block.txs.length === 0
      ? h("p", { class: "muted" }, "No transactions (a heartbeat block).")
      : table(
          ["#", "Transaction", "Type", "Sender", "Outcome"],
          block.txs.map((t) =>
            h("tr", {}, h("td", { class: "num" }, String(t.index)), h("td", {}, link("tx", t.tx_id, t.tx_id.slice(0, 16) + "…", { "aria-label": `Transaction ${t.tx_id}` })), h("td", {}, t.type), h("td", {}, member(t.sender, names)), h("td", {}, outcome(t.code))),
          ),
        ),
  );
}

export function outcome(code) {
  return code === "ok" ? badge("ok", "ok") : badge(code, "bad");
}

// --- transactions -------------------------------------------------------------------------------

function referencedLinks(payload) {
  const out = [];
  const assets = new Set();
  for (const key of ["asset_id"]) if (typeof payload[key] === "string") assets.add(payload[key]);
  for (const key of ["asset_ids", "inputs"]) if (Array.isArray(payload[key])) payload[key].forEach((a) => assets.add(a));
  if (Array.isArray(payload.outputs)) payload.outputs.forEach((o) => assets.add(o.asset_id));
  for (const asset of assets) out.push(link("asset", asset, asset));
  if (typeof payload.purchase_id === "string") out.push(link("purchase", payload.purchase_id, `purchase ${payload.purchase_id}`));
  return out;
}

export async function txPage(page, id) {
  const [tx, names] = await Promise.all([get(`/v1/transactions/${encodeURIComponent(id)}`), memberNames()]);
  const block = await get(`/v1/blocks/${tx.height}`);
  const payload = tx.envelope.body.payload;
  const refs = referencedLinks(payload);
  page.append(
    h("h1", {}, `Transaction ${tx.type}`),
    facts([
      ["Transaction id", h("code", { class: "wrap" }, tx.tx_id)],
      ["Outcome", outcome(tx.code)],
      ["Sender", member(tx.sender, names)],
      ["Block", [link("block", String(tx.height), `Block ${number(tx.height)}`), `, position ${tx.index}`]],
      ["Time", time(tx.timestamp_ms)],
      refs.length ? ["Concerns", h("span", { class: "links" }, refs)] : null,
      ["Signer key", h("code", { class: "wrap" }, tx.envelope.signer)],
      ["Signature", h("code", { class: "wrap" }, tx.envelope.signature)],
      ["Nonce", String(tx.envelope.body.nonce)],
      ["Expires", time(tx.envelope.body.expires_at_ms)],
    ]),
    h("h2", {}, "Payload"),
    dataTable(payload),
    h("h2", {}, "Inclusion proof"),
    facts([
      ["Tree size", number(tx.proof.tree_size)],
      ["Leaf index", String(tx.proof.leaf_index)],
      ["Audit path", tx.proof.path.length ? h("ol", { class: "plain" }, tx.proof.path.map((p) => h("li", {}, h("code", { class: "wrap" }, p)))) : "empty (the only transaction of its block)"],
    ]),
    await commitSection(block),
  );
}

// --- purchases ---------------------------------------------------------------------------------

export async function purchasePage(page, id) {
  const [purchase, names] = await Promise.all([get(`/v1/purchases/${encodeURIComponent(id)}`), memberNames()]);
  const tiers = purchase.tiers;
  const reached = purchase.tier_reached;
  const tone = { open: "neutral", closed: "ok", confirmed: "ok", failed: "bad" }[purchase.status] ?? "neutral";
  page.append(
    h("h1", {}, `Joint purchase ${purchase.purchase_id}`),
    facts([
      ["Item", `${purchase.item} (per ${purchase.unit})`],
      ["Status", badge(purchase.status, tone)],
      ["Supplier", member(purchase.supplier, names)],
      ["Opened by", member(purchase.opener, names)],
      ["Deadline", time(purchase.deadline_ms)],
      ["Pooled quantity", `${number(purchase.total)} ${purchase.unit} (minimum ${number(purchase.min_total)})`],
      ["Unit price", purchase.unit_price === null ? "no tier reached yet" : `${number(purchase.unit_price)} minor units${purchase.costs_final ? "" : " (at the tier reached so far)"}`],
    ]),
    h("h2", {}, "Price tiers"),
    table(
      [["From quantity", "num"], ["Unit price (minor units)", "num"], "Reached"],
      tiers.map((t, i) =>
        h("tr", { class: i === reached ? "reached" : "", "aria-current": i === reached ? "true" : null },
          h("td", { class: "num" }, `${number(t.min_quantity)} ${purchase.unit}`),
          h("td", { class: "num" }, number(t.unit_price)),
          h("td", {}, i === reached ? badge("tier reached", "ok") : purchase.total >= t.min_quantity ? "passed" : `${number(t.min_quantity - purchase.total)} ${purchase.unit} to go`)),
      ),
      { caption: "The unit price falls as the pooled quantity rises" },
    ),
    h("h2", {}, "Commitments"),
    purchase.commitments.length === 0
      ? h("p", { class: "muted" }, "No commitments yet.")
      : table(
          ["Participant", ["Quantity", "num"], [purchase.costs_final ? "Cost (final)" : "Cost at the tier reached", "num"]],
          purchase.commitments.map((c) =>
            h("tr", {}, h("th", { scope: "row" }, member(c.member, names)), h("td", { class: "num" }, `${number(c.quantity)} ${purchase.unit}`), h("td", { class: "num" }, c.cost === null ? "—" : `${number(c.cost)} minor units`)),
          ),
          { caption: "Each participant pays quantity × unit price, in integer minor units" },
        ),
  );
}

