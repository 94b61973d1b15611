// The asset page: summary, in-browser verification, custody and ownership path, lineage graph
// and the provenance timeline.

import { outcome } from "./pages.js";
import { clearGenesis, loadedGenesis, setGenesis } from "./trust.js";
import { ago, badge, dataTable, facts, get, h, hash, link, member, memberNames, number, time } from "./ui.js";
import { CHECKS, ProofError, cryptoAvailable, parseStrictJson, verifyBundle } from "./verifier.js";

const HISTORY_PAGES_MAX = 40;
const LINEAGE_NODES_MAX = 64;

const EVENT_LABELS = {
  "asset.register": "Registered",
  "asset.transfer": "Sold (ownership)",
  "shipment.create": "Shipped (custody hand-over)",
  "shipment.receive": "Received",
  "shipment.cancel": "Shipment cancelled",
  "asset.transform": "Transformed",
  "asset.observe": "Observation",
};

async function history(assetId) {
  const items = [];
  let after = null;
  for (let page = 0; page < HISTORY_PAGES_MAX; page += 1) {
    const query = `?limit=500${after === null ? "" : `&after=${encodeURIComponent(after)}`}`;
    const result = await get(`/v1/assets/${encodeURIComponent(assetId)}/history${query}`);
    items.push(...result.items);
    if (result.next === null) break;
    after = result.next;
  }
  return items;
}

export async function assetPage(page, assetId) {
  const [asset, events, names] = await Promise.all([get(`/v1/assets/${encodeURIComponent(assetId)}`), history(assetId), memberNames()]);
  const lineage = await lineageGraph(asset);
  const statusTone = { active: "ok", "in-transit": "warn", consumed: "neutral" }[asset.status] ?? "neutral";
  page.append(
    h("p", { class: "kicker" }, "Asset"),
    h("h1", {}, `${asset.product} · ${asset.asset_id}`),
    facts([
      ["Quantity", `${number(asset.quantity)} ${asset.unit}`],
      ["Status", [badge(asset.status, statusTone), asset.shipment_id ? [" in shipment ", h("code", {}, asset.shipment_id)] : null]],
      ["Owner", member(asset.owner, names)],
      ["Custodian", member(asset.custodian, names)],
      ["Origin", asset.origin || (asset.inputs.length ? "made from other assets (see lineage)" : "—")],
      ["Events", [number(asset.event_count), " · last ", hash(asset.last_event)]],
      Object.keys(asset.metadata).length ? ["Metadata", dataTable(asset.metadata)] : null,
    ]),
    verifyPanel(asset, page),
    pathsSection(asset, events, names),
    lineageSection(asset, lineage),
    timelineSection(asset, events, names),
  );
}

// --- custody and ownership --------------------------------------------------------------------

function paths(events, assetId) {
  const owners = [];
  const custody = [];
  const shippers = new Map();
  for (const e of events) {
    const p = e.payload;
    if (e.type === "asset.register" || (e.type === "asset.transform" && !p.inputs.includes(assetId))) {
      owners.push({ who: e.sender, how: e.type === "asset.register" ? "registered" : "made", e });
      custody.push({ who: e.sender, how: e.type === "asset.register" ? "registered" : "made", e });
    } else if (e.type === "asset.transfer") {
      owners.push({ who: p.to, how: "bought", e });
    } else if (e.type === "shipment.create") {
      shippers.set(p.shipment_id, e.sender);
      custody.push({ who: p.to, how: `in transit (shipment ${p.shipment_id})`, e, transit: true });
    } else if (e.type === "shipment.receive") {
      custody.push({ who: e.sender, how: `received (shipment ${p.shipment_id})`, e });
    } else if (e.type === "shipment.cancel") {
      custody.push({ who: e.sender, how: `shipment ${p.shipment_id} cancelled`, e });
    }
  }
  return { owners, custody, shippers };
}

function pathList(steps, names, label) {
  return h(
    "ol",
    { class: "path", "aria-label": label },
    steps.map((s) => h("li", { class: s.transit ? "transit" : "" }, member(s.who, names), h("span", { class: "how" }, s.how, " · ", time(s.e.timestamp_ms)))),
  );
}

function pathsSection(asset, events, names) {
  const { owners, custody } = paths(events, asset.asset_id);
  return h(
    "section",
    { class: "card", "aria-labelledby": "paths-title" },
    h("h2", { id: "paths-title" }, "Custody and ownership"),
    h("h3", {}, "Custody: who held it"),
    pathList(custody, names, "Custody path"),
    h("h3", {}, "Ownership: who owned it"),
    pathList(owners, names, "Ownership path"),
  );
}

// --- lineage ----------------------------------------------------------------------------------

/** Layers of ancestors (by distance) and descendants, with each node's record. */
async function lineageGraph(asset) {
  const records = new Map([[asset.asset_id, asset]]);
  const up = [];
  let frontier = [asset];
  let budget = LINEAGE_NODES_MAX;
  while (frontier.length && budget > 0) {
    const ids = [...new Set(frontier.flatMap((a) => a.inputs))].filter((id) => !records.has(id)).slice(0, budget);
    if (!ids.length) break;
    budget -= ids.length;
    frontier = await Promise.all(ids.map((id) => get(`/v1/assets/${encodeURIComponent(id)}`)));
    frontier.forEach((a) => records.set(a.asset_id, a));
    up.push(frontier);
  }
  const down = [];
  frontier = [asset];
  budget = LINEAGE_NODES_MAX;
  while (frontier.length && budget > 0) {
    const ids = [...new Set(frontier.flatMap((a) => a.outputs))].filter((id) => !records.has(id)).slice(0, budget);
    if (!ids.length) break;
    budget -= ids.length;
    frontier = await Promise.all(ids.map((id) => get(`/v1/assets/${encodeURIComponent(id)}`)));
    frontier.forEach((a) => records.set(a.asset_id, a));
    down.push(frontier);
  }
  return { up, down, records };
}

function lineageNode(a, relation, current = false) {
  return h(
    "li",
    { class: `node${current ? " current" : ""}` },
    current
      ? h("span", { class: "name", "aria-current": "page" }, a.product)
      : link("asset", a.asset_id, a.product, { class: "name", "aria-label": `${a.product}, asset ${a.asset_id}` }),
    h("span", { class: "id" }, a.asset_id),
    h("span", { class: "rel" }, `${number(a.quantity)} ${a.unit} · ${a.status}`),
    relation ? h("span", { class: "rel" }, relation) : null,
  );
}

function lineageSection(asset, { up, down, records }) {
  const section = h("section", { class: "card", "aria-labelledby": "lineage-title" }, h("h2", { id: "lineage-title" }, "Lineage"));
  if (!up.length && !down.length) {
    section.append(h("p", { class: "muted" }, "Not made from other assets, and not transformed into any."));
    return section;
  }
  const columns = [];
  const childrenOf = (id) => [...records.values()].filter((r) => r.inputs.includes(id)).map((r) => r.asset_id);
  up.forEach((layer, i) => {
    columns.unshift(
      h("div", { class: "layer" }, h("h3", {}, i === 0 ? "Made from" : `Made from (${i + 1} steps back)`),
        h("ul", {}, layer.map((a) => lineageNode(a, `→ into ${childrenOf(a.asset_id).join(", ")}`)))),
    );
  });
  columns.push(h("div", { class: "layer this" }, h("h3", {}, "This asset"), h("ul", {}, lineageNode(asset, "", true))));
  down.forEach((layer, i) => {
    columns.push(
      h("div", { class: "layer" }, h("h3", {}, i === 0 ? "Became" : `Became (${i + 1} steps on)`),
        h("ul", {}, layer.map((a) => lineageNode(a, `← from ${a.inputs.join(", ")}`)))),
    );
  });
  section.append(h("div", { class: "lineage", role: "group", "aria-label": "Lineage graph, oldest inputs first" }, columns));
  return section;
}

// --- timeline ---------------------------------------------------------------------------------

function eventDetail(asset, e, shippers, names) {
  const p = e.payload;
  const arrow = (from, to, what) => h("p", { class: "move" }, what, ": ", from ? member(from, names) : "—", h("span", { class: "arrow", "aria-label": "to" }, " → "), to);
  switch (e.type) {
    case "asset.register":
      return [arrow(null, member(e.sender, names), "Owner and custodian"), p.origin ? h("p", {}, `Origin: ${p.origin}`) : null, p.metadata && Object.keys(p.metadata).length ? dataTable(p.metadata, "Metadata") : null];
    case "asset.transfer":
      return arrow(e.sender, member(p.to, names), "Ownership");
    case "shipment.create":
      return [arrow(e.sender, member(p.to, names), "Custody"), h("p", {}, `Shipment ${p.shipment_id}${p.purchase_id ? ` for purchase ${p.purchase_id}` : ""}, ${p.asset_ids.length} asset(s)`)];
    case "shipment.receive":
      return arrow(shippers.get(p.shipment_id) ?? null, member(e.sender, names), `Custody (shipment ${p.shipment_id})`);
    case "shipment.cancel":
      return h("p", {}, `Shipment ${p.shipment_id} cancelled; custody stays with `, member(e.sender, names));
    case "asset.transform": {
      const outputs = p.outputs.map((o) => o.asset_id);
      const inputsLinks = p.inputs.map((id) => (id === asset.asset_id ? h("strong", {}, id) : link("asset", id)));
      const outputLinks = outputs.map((id) => (id === asset.asset_id ? h("strong", {}, id) : link("asset", id)));
      return h("p", { class: "move" }, "Inputs ", h("span", { class: "links" }, inputsLinks), h("span", { class: "arrow", "aria-label": "became" }, " → "), h("span", { class: "links" }, outputLinks));
    }
    case "asset.observe":
      return [h("p", {}, "Kind: ", h("strong", {}, p.kind)), dataTable(p.data, "Observation data")];
    default:
      return null;
  }
}

function timelineSection(asset, events, names) {
  const { shippers } = paths(events, asset.asset_id);
  return h(
    "section",
    { class: "card", "aria-labelledby": "timeline-title" },
    h("h2", { id: "timeline-title" }, `Provenance timeline (${events.length} events)`),
    h(
      "ol",
      { class: "timeline" },
      events.map((e) =>
        h(
          "li",
          { class: "event", "data-tx": e.tx_id, "data-type": e.type },
          h("div", { class: "when" }, time(e.timestamp_ms), h("span", { class: "muted" }, ` · ${ago(e.timestamp_ms)}`)),
          h("h3", {}, EVENT_LABELS[e.type] ?? e.type, " ", h("span", { class: "verified-mark" })),
          h("p", { class: "actor" }, "By ", member(e.sender, names)),
          eventDetail(asset, e, shippers, names),
          h("p", { class: "refs" }, link("tx", e.tx_id, `tx ${e.tx_id.slice(0, 10)}…`, { "aria-label": `Transaction ${e.tx_id}` }), " in ", link("block", String(e.height), `block ${e.height}`), " · event ", hash(e.event, 10)),
        ),
      ),
    ),
  );
}

// --- verification -----------------------------------------------------------------------------

function genesisSummary(trusted) {
  if (!trusted) return h("p", { class: "muted" }, "No genesis loaded yet.");
  const g = trusted.genesis;
  return h(
    "div",
    { class: trusted.fromNode ? "notice warn" : "notice" },
    h("p", {}, `Genesis of chain ${g.chainId}: ${g.validators.size} validators, quorum ${g.quorum}. `, trusted.fromNode ? h("strong", {}, "Fetched from this node: a verdict based on it trusts this node.") : `Loaded from ${trusted.source}.`),
    h("p", {}, "Genesis SHA-256 (compare it with the consortium's published value): ", h("code", { class: "wrap" }, g.hash)),
  );
}

function verifyPanel(asset, page) {
  const summary = h("div", { id: "genesis-summary" });
  const result = h("div", { id: "verify-result", role: "status", "aria-live": "polite" });
  const checklist = h("ol", { id: "checklist", class: "checklist", "aria-label": "What was verified" });
  const fileInput = h("input", { id: "genesis-file", type: "file", accept: ".json,application/json" });
  const paste = h("textarea", { id: "genesis-text", rows: "3", spellcheck: "false", placeholder: '{"chain_id": ...}' });
  const lineage = h("input", { id: "verify-lineage", type: "checkbox", checked: true });
  const refresh = async () => summary.replaceChildren(genesisSummary(await loadedGenesis()));
  const load = async (text, source, fromNode) => {
    try {
      await setGenesis(text, source, fromNode);
      result.replaceChildren();
    } catch (error) {
      clearGenesis();
      result.replaceChildren(h("p", { class: "bad-text" }, `Genesis not loaded: ${error.message}`));
    }
    await refresh();
  };
  fileInput.addEventListener("change", async () => {
    const file = fileInput.files[0];
    if (file) await load(await file.text(), `file ${file.name}`, false);
  });
  refresh();
  return h(
    "section",
    { class: "card verify", id: "verify", "aria-labelledby": "verify-title" },
    h("h2", { id: "verify-title" }, "Verify in this browser"),
    h("p", {}, "Checks this asset's audit bundle (coopledger-audit/1) here, with SHA-256 and Ed25519 from the browser's WebCrypto, against the genesis validator keys you load: the node that served this page is not trusted for the verdict."),
    h(
      "div",
      { class: "genesis-inputs" },
      h("div", {}, h("label", { for: "genesis-file" }, "Genesis file (trusted)"), fileInput),
      h("details", {}, h("summary", {}, "Or paste the genesis JSON"), h("label", { for: "genesis-text", class: "sr-only" }, "Genesis JSON"), paste,
        h("button", { type: "button", onclick: () => load(paste.value, "pasted text", false) }, "Use pasted genesis")),
      h("div", {},
        h("button", { type: "button", class: "quiet", onclick: async () => load(new TextDecoder().decode(await get("/explorer/genesis.json", { bytes: true })), "this node", true) }, "Fetch genesis from this node"),
        h("p", { class: "muted small" }, "Convenient, but then the check trusts this node; load the file your consortium gave you for an independent check.")),
    ),
    summary,
    h("div", { class: "verify-actions" },
      h("label", { class: "check" }, lineage, " Include lineage (every input it was made from)"),
      h("button", { type: "button", id: "verify-button", class: "primary", onclick: () => runVerification(asset, lineage.checked, result, checklist, page) }, "Verify audit bundle")),
    result,
    checklist,
  );
}

async function runVerification(asset, lineage, result, checklist, page) {
  const trusted = await loadedGenesis();
  checklist.replaceChildren();
  page.querySelectorAll(".verified-mark").forEach((m) => m.replaceChildren());
  if (!trusted) {
    result.replaceChildren(h("p", { class: "bad-text" }, "Load the genesis file first: it is what the bundle is checked against."));
    return;
  }
  if (!cryptoAvailable()) {
    result.replaceChildren(h("p", { class: "bad-text" }, "This browser offers no WebCrypto here: open the explorer over HTTPS or on localhost."));
    return;
  }
  const items = new Map(
    CHECKS.map(([id, label]) => {
      const li = h("li", { class: "pending", "data-check": id }, h("span", { class: "mark", "aria-hidden": "true" }, "·"), h("span", { class: "label" }, label), h("span", { class: "detail" }));
      return [id, li];
    }),
  );
  checklist.append(...items.values());
  const mark = (id, state, detail) => {
    const li = items.get(id);
    li.className = state;
    li.querySelector(".mark").textContent = state === "passed" ? "✓" : state === "failed" ? "✗" : "·";
    li.querySelector(".detail").textContent = detail;
    li.setAttribute("aria-label", `${state}: ${li.querySelector(".label").textContent}. ${detail}`);
  };
  result.replaceChildren(h("p", {}, "Verifying…"));
  const started = performance.now();
  try {
    const bytes = await get(`/v1/audit/bundle?asset=${encodeURIComponent(asset.asset_id)}&lineage=${lineage}`, { bytes: true });
    let text;
    try {
      text = new TextDecoder("utf-8", { fatal: true }).decode(bytes);
    } catch {
      throw Object.assign(new ProofError("bundle is not UTF-8"), { stage: "format" });
    }
    const bundle = parseStrictJson(text, "audit bundle");
    if (bundle?.asset_id !== asset.asset_id) {
      throw Object.assign(new ProofError(`the node served a bundle for ${JSON.stringify(bundle?.asset_id)}, not for ${asset.asset_id}`), { stage: "format" });
    }
    const report = await verifyBundle(bundle, trusted.genesis, (id, detail) => mark(id, "passed", detail));
    const seconds = ((performance.now() - started) / 1000).toFixed(2);
    const mine = report.events.filter((e) => e.assets.includes(asset.asset_id));
    result.replaceChildren(
      h("div", { class: "verdict ok", id: "verdict" },
        h("p", { class: "big" }, "✓ Verified"),
        h("p", {}, `${mine.length} events of ${asset.asset_id}${report.assets.size > 1 ? ` and the history of the ${report.assets.size - 1} input assets it was made from` : ""} are genuine and complete as of block ${report.height} (`, time(report.timestampMs), `), certified by a quorum of the ${trusted.genesis.validators.size} genesis validators. Checked in ${seconds} s.`),
        trusted.fromNode ? h("p", { class: "warn-text" }, "The genesis came from this node: load the consortium's genesis file for an independent verdict.") : null),
    );
    const verified = new Set(mine.map((e) => e.txId));
    page.querySelectorAll(".timeline .event").forEach((li) => {
      if (verified.has(li.dataset.tx)) li.querySelector(".verified-mark").replaceChildren(badge("verified", "ok"));
    });
  } catch (error) {
    const stage = error.stage ?? "format";
    const reason = error instanceof ProofError ? error.message : `could not fetch the bundle: ${error.message}`;
    mark(stage, "failed", reason);
    for (const [id, li] of items) if (li.className === "pending" && id !== stage) mark(id, "skipped", "not reached");
    result.replaceChildren(
      h("div", { class: "verdict bad", id: "verdict" }, h("p", { class: "big" }, "✗ Verification failed"), h("p", { class: "reason" }, reason)),
    );
  }
}

