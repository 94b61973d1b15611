// The explorer's shell: sign-in, hash routing (#/network, #/asset/ID, #/block/H, #/tx/ID,
// #/purchase/ID) and the search box. The token lives in sessionStorage, never in the URL.

import { assetPage } from "./asset.js";
import { blockPage, networkPage, purchasePage, txPage } from "./pages.js";
import { ApiError, errorBox, forgetMembers, get, h, setToken, token } from "./ui.js";

const view = document.getElementById("view");
const signIn = document.getElementById("sign-in");
const nav = document.getElementById("nav");
let renderCount = 0;
let refreshTimer = null;

const ROUTES = {
  network: networkPage,
  asset: assetPage,
  block: blockPage,
  tx: txPage,
  purchase: purchasePage,
};

function parseHash() {
  const [kind, ...rest] = location.hash.replace(/^#\/?/, "").split("/");
  const id = rest.length ? decodeURIComponent(rest.join("/")) : "";
  return ROUTES[kind] ? { kind, id } : { kind: "network", id: "" };
}

function showSignIn(message = "") {
  setToken(null);
  forgetMembers();
  nav.hidden = true;
  view.replaceChildren();
  signIn.hidden = false;
  document.getElementById("sign-in-error").textContent = message;
  document.getElementById("token").focus();
}

/** Render the page the hash names; a later navigation wins over a slow earlier one. */
export async function render({ refresh = false } = {}) {
  clearTimeout(refreshTimer);
  if (!token()) {
    showSignIn();
    return;
  }
  signIn.hidden = true;
  nav.hidden = false;
  const mine = ++renderCount;
  const { kind, id } = parseHash();
  const page = h("div", { class: "page", "aria-busy": "true" });
  if (!refresh) view.replaceChildren(h("p", { class: "loading" }, "Loading…"));
  try {
    const context = {
      stillCurrent: () => mine === renderCount,
      scheduleRefresh: (ms) => {
        refreshTimer = setTimeout(() => mine === renderCount && render({ refresh: true }), ms);
      },
    };
    await ROUTES[kind](page, id, context);
    if (mine !== renderCount) return;
    page.removeAttribute("aria-busy");
    view.replaceChildren(page);
  } catch (error) {
    if (mine !== renderCount) return;
    if (error instanceof ApiError && error.status === 401) return; // the sign-in form is shown
    view.replaceChildren(errorBox(error));
  }
  if (!refresh) {
    const heading = view.querySelector("h1");
    if (heading) {
      heading.setAttribute("tabindex", "-1");
      heading.focus({ preventScroll: true });
      document.title = `${heading.textContent} · coopledger explorer`;
    }
  }
}

document.getElementById("sign-in-form").addEventListener("submit", async (event) => {
  event.preventDefault();
  const input = document.getElementById("token");
  const value = input.value.trim();
  setToken(value);
  try {
    await get("/v1/status");
  } catch (error) {
    showSignIn(error instanceof ApiError && error.status === 401 ? "This token is not accepted by this node." : `Sign-in failed: ${error.message}`);
    return;
  }
  input.value = "";
  if (!location.hash) location.hash = "#/network";
  render();
});

document.getElementById("sign-out").addEventListener("click", () => showSignIn("Signed out."));
document.addEventListener("coopledger:unauthorized", () => showSignIn("The node refused the token: sign in again."));

document.getElementById("search").addEventListener("submit", async (event) => {
  event.preventDefault();
  const input = document.getElementById("search-input");
  const q = input.value.trim();
  if (!q) return;
  if (/^[0-9]+$/.test(q)) location.hash = `#/block/${q}`;
  else if (/^[0-9a-f]{64}$/.test(q)) location.hash = `#/tx/${q}`;
  else {
    // An id may name an asset or a purchase: try the asset first.
    let kind = "asset";
    try {
      await get(`/v1/assets/${encodeURIComponent(q)}`);
    } catch (error) {
      if (error instanceof ApiError && error.status === 404) kind = "purchase";
    }
    location.hash = `#/${kind}/${encodeURIComponent(q)}`;
  }
  input.value = "";
});

window.addEventListener("hashchange", () => render());
render();
