// The trusted input: the consortium's genesis file, loaded by the auditor (kept for this tab).
// A genesis fetched from the node is marked as such, because a verdict based on it trusts the
// node that served this page.

import { parseGenesis } from "./verifier.js";

const GENESIS_KEY = "coopledger.explorer.genesis";

let cached = null; // {text, source, fromNode, genesis}

/** Parse and remember a genesis text; throws ProofError if it is not a usable genesis file. */
export async function setGenesis(text, source, fromNode) {
  const genesis = await parseGenesis(text);
  cached = { text, source, fromNode, genesis };
  sessionStorage.setItem(GENESIS_KEY, JSON.stringify({ text, source, fromNode }));
  return cached;
}

export function clearGenesis() {
  cached = null;
  sessionStorage.removeItem(GENESIS_KEY);
}

/** The loaded genesis {text, source, fromNode, genesis}, or null. */
export async function loadedGenesis() {
  if (cached !== null) return cached;
  const stored = sessionStorage.getItem(GENESIS_KEY);
  if (stored === null) return null;
  try {
    const { text, source, fromNode } = JSON.parse(stored);
    return await setGenesis(text, source, fromNode);
  } catch {
    clearGenesis();
    return null;
  }
}
