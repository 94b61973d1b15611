// DOM building, formatting and the REST client shared by the explorer's pages.
//
// Everything shown comes from the ledger, and ids, names and observation data are user input:
// text only ever enters the page through text nodes (h() appends strings as text), never as
// HTML. Links are built from fixed "#/kind/" prefixes plus encodeURIComponent(id).

const TOKEN_KEY = "coopledger.explorer.token";

/** Create an element: h("a", {href, class}, "text", child, [more]). Strings become text nodes. */
export function h(tag, props = {}, ...children) {
  const element = document.createElement(tag);
  for (const [name, value] of Object.entries(props)) {
    if (value === undefined || value === null || value === false) continue;
    if (name === "class") element.className = value;
    else if (name.startsWith("on")) element.addEventListener(name.slice(2), value);
    else element.setAttribute(name, value === true ? "" : String(value));
  }
  append(element, children);
  return element;
}

export function append(element, children) {
  for (const child of [children].flat(Infinity)) {
    if (child === undefined || child === null || child === false) continue;
    element.append(child instanceof Node ? child : String(child)); // a string is a text node
  }
  return element;
}

export function link(kind, id, text = id, props = {}) {
  return h("a", { href: `#/${kind}/${encodeURIComponent(id)}`, ...props }, text);
}

export function short(hex, n = 12) {
  return typeof hex === "string" && hex.length > n ? `${hex.slice(0, n)}…` : String(hex);
}

/** A hash shown shortened, whole in its title and to screen readers. */
export function hash(hex, n = 12) {
  return h("code", { class: "hash", title: hex, "aria-label": hex }, short(hex, n));
}

export function time(ms) {
  const iso = new Date(ms).toISOString();
  return h("time", { datetime: iso }, `${iso.slice(0, 10)} ${iso.slice(11, 19)} UTC`);
}

export function ago(ms, now = Date.now()) {
  const s = Math.max(0, Math.round((now - ms) / 1000));
  if (s < 90) return `${s} s ago`;
  if (s < 5400) return `${Math.round(s / 60)} min ago`;
  return `${Math.round(s / 3600)} h ago`;
}

export function number(n) {
  return typeof n === "number" ? n.toLocaleString("en-US") : "—";
}

export function badge(text, tone = "neutral") {
  return h("span", { class: `badge ${tone}` }, text);
}

/** A <dl> from [term, value] pairs (values: text or nodes). */
export function facts(pairs, props = {}) {
  return h("dl", { class: "facts", ...props }, pairs.filter(Boolean).map(([term, value]) => [h("dt", {}, term), h("dd", {}, value)]));
}

/** Any JSON value as text (observation data, payloads): never interpreted as markup. */
export function jsonText(value) {
  return typeof value === "string" ? value : JSON.stringify(value);
}

export function dataTable(data, caption) {
  const rows = Object.keys(data).sort().map((key) => h("tr", {}, h("th", { scope: "row" }, key), h("td", {}, jsonText(data[key]))));
  return h("table", { class: "data" }, caption ? h("caption", {}, caption) : null, h("tbody", {}, rows));
}

/** A table; a heading given as [text, "num"] right-aligns its column's heading. */
export function table(headings, rows, props = {}) {
  return h(
    "div",
    { class: "table-wrap", ...props.wrap },
    h("table", { class: props.class ?? "" }, props.caption ? h("caption", {}, props.caption) : null,
      h("thead", {}, h("tr", {}, headings.map((t) => (Array.isArray(t) ? h("th", { scope: "col", class: t[1] }, t[0]) : h("th", { scope: "col" }, t))))),
      h("tbody", {}, rows)),
  );
}

// --- the REST client ---------------------------------------------------------------------------

export function token() {
  return sessionStorage.getItem(TOKEN_KEY);
}

export function setToken(value) {
  if (value === null) sessionStorage.removeItem(TOKEN_KEY);
  else sessionStorage.setItem(TOKEN_KEY, value);
}

export class ApiError extends Error {
  constructor(status, problem) {
    super(problem.detail || problem.title || `HTTP ${status}`);
    this.status = status;
    this.code = problem.code ?? "";
  }
}

/** GET a /v1 path with the signed-in token; JSON by default, raw bytes with {bytes: true}. */
export async function get(path, { bytes = false } = {}) {
  const response = await fetch(path, {
    headers: { Authorization: `Bearer ${token()}`, Accept: "application/json" },
    cache: "no-store",
    credentials: "omit",
  });
  if (!response.ok) {
    let problem = {};
    try {
      problem = await response.json();
    } catch {
      // not problem+json: keep the status alone
    }
    const error = new ApiError(response.status, problem);
    if (response.status === 401) document.dispatchEvent(new CustomEvent("coopledger:unauthorized", { detail: error.message }));
    throw error;
  }
  return bytes ? new Uint8Array(await response.arrayBuffer()) : response.json();
}

let membersCache = null;

/** Member id -> display name (one fetch per sign-in). */
export async function memberNames() {
  if (membersCache === null) {
    membersCache = new Map();
    let after = null;
    for (let page = 0; page < 10; page += 1) {
      const query = after === null ? "" : `?after=${encodeURIComponent(after)}`;
      const result = await get(`/v1/members${query}`);
      for (const member of result.items) membersCache.set(member.id, member.name);
      if (result.next === null) break;
      after = result.next;
    }
  }
  return membersCache;
}

export function forgetMembers() {
  membersCache = null;
}

/** A member shown by display name with its id (both as text). */
export function member(id, names) {
  const name = names?.get(id);
  return h("span", { class: "member", title: id }, name ? [name, " ", h("span", { class: "id" }, `(${id})`)] : id);
}

export function errorBox(error) {
  const detail = error instanceof ApiError ? `${error.status} ${error.code}: ${error.message}` : String(error.message ?? error);
  return h("div", { class: "card error", role: "alert" }, h("h1", {}, "Could not load this page"), h("p", {}, detail));
}
