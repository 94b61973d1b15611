// The coopledger-audit/1 verifier, in the browser: the same checks as node/audit.py's
// verify_bundle, with nothing trusted but the genesis file the auditor loads.
//
// Primitives (each proven equal to the Python implementation by tests/test_explorer_verifier.py):
//   parseStrictJson  node.codec.parse_json: no floats, NaN, duplicate keys, lone surrogates,
//                    integers beyond +-(2^53-1), nesting deeper than 32
//   canonical        node.codec.canonical: keys sorted by code point, no whitespace, UTF-8
//   sha256           crypto.subtle.digest("SHA-256")
//   ed25519Verify    crypto.subtle.verify("Ed25519") plus the checks libsodium's strict verify
//                    makes and WebCrypto does not promise: S < L, R not of small order, the
//                    public key canonical (y < p) and not of small order
//   verifyInclusion  RFC 9162 section 2.1.3.2, as node.merkle.verify_inclusion
//   verifyStateProof docs/architecture.md "State root and state proofs", as node.smt
//   eventHash        docs/rules.md "Asset event chain"
//
// Every failure throws ProofError with a message naming the block, entry or asset, worded as
// node/audit.py words it.

export class ProofError extends Error {
  constructor(message) {
    super(message);
    this.name = "ProofError";
  }
}

export const BUNDLE_FORMAT = "coopledger-audit/1";
export const INT_ABS_MAX = 2 ** 53 - 1;
export const NESTING_DEPTH_MAX = 32;
export const ZERO_HASH = "00".repeat(32);
const TX_BYTES_MAX = 16 * 1024;
const ID_CHARS_MAX = 64;
const TEXT_CHARS_MAX = 128;
const QUANTITY_MAX = 10 ** 9;
const UNIT_PRICE_MAX = 10 ** 6;
const PATH_LENGTH_MAX = 64;
const PROOF_SIBLINGS_MAX = 256;
const ENCODER = new TextEncoder();

// --- strict JSON ------------------------------------------------------------------------------

const WHITESPACE = new Set([" ", "\t", "\n", "\r"]);
const ESCAPES = { '"': '"', "\\": "\\", "/": "/", b: "\b", f: "\f", n: "\n", r: "\r", t: "\t" };

/** Parse untrusted JSON text the way node.codec.parse_json does, or throw ProofError. */
export function parseStrictJson(text, what = "JSON") {
  let at = 0;
  const fail = (message) => {
    throw new ProofError(`${what}: ${message} at character ${at}`);
  };
  const skip = () => {
    while (at < text.length && WHITESPACE.has(text[at])) at += 1;
  };
  const value = (depth) => {
    if (depth > NESTING_DEPTH_MAX) fail(`nested deeper than ${NESTING_DEPTH_MAX} levels`);
    skip();
    const c = text[at];
    if (c === "{") return object(depth);
    if (c === "[") return array(depth);
    if (c === '"') return string();
    if (c === "-" || (c >= "0" && c <= "9")) return number();
    for (const [word, result] of [["true", true], ["false", false], ["null", null]]) {
      if (text.startsWith(word, at)) {
        at += word.length;
        return result;
      }
    }
    return fail(c === undefined ? "unexpected end" : `unexpected ${JSON.stringify(c)}`);
  };
  const object = (depth) => {
    const result = Object.create(null); // "__proto__" stays an ordinary key
    const seen = new Set();
    at += 1;
    skip();
    if (text[at] === "}") {
      at += 1;
      return result;
    }
    for (;;) {
      skip();
      if (text[at] !== '"') fail("expected a string key");
      const key = string();
      if (seen.has(key)) fail(`duplicate key ${JSON.stringify(key)}`);
      seen.add(key);
      skip();
      if (text[at] !== ":") fail("expected ':'");
      at += 1;
      result[key] = value(depth + 1);
      skip();
      if (text[at] === ",") {
        at += 1;
      } else if (text[at] === "}") {
        at += 1;
        return result;
      } else {
        fail("expected ',' or '}'");
      }
    }
  };
  const array = (depth) => {
    const result = [];
    at += 1;
    skip();
    if (text[at] === "]") {
      at += 1;
      return result;
    }
    for (;;) {
      result.push(value(depth + 1));
      skip();
      if (text[at] === ",") {
        at += 1;
      } else if (text[at] === "]") {
        at += 1;
        return result;
      } else {
        fail("expected ',' or ']'");
      }
    }
  };
  const string = () => {
    let out = "";
    at += 1;
    for (;;) {
      const c = text[at];
      if (c === undefined) fail("unterminated string");
      if (c === '"') {
        at += 1;
        break;
      }
      if (c < " ") fail("control character in string");
      if (c === "\\") {
        const e = text[at + 1];
        if (e === "u") {
          const hex = text.slice(at + 2, at + 6);
          if (!/^[0-9a-fA-F]{4}$/.test(hex)) fail("bad \\u escape");
          out += String.fromCharCode(parseInt(hex, 16));
          at += 6;
        } else if (e in ESCAPES) {
          out += ESCAPES[e];
          at += 2;
        } else {
          fail("bad escape");
        }
      } else {
        out += c;
        at += 1;
      }
    }
    if (!out.isWellFormed()) fail("not valid Unicode text (lone surrogate)");
    return out;
  };
  const number = () => {
    const match = /^-?(0|[1-9][0-9]*)([.eE][-+0-9.eE]*)?/.exec(text.slice(at, at + 400));
    if (match === null) fail("bad number");
    if (match[2] !== undefined) fail(`number ${match[0]} is not an integer (floats are not allowed)`);
    const big = BigInt(match[0]);
    if (big > BigInt(INT_ABS_MAX) || big < -BigInt(INT_ABS_MAX)) {
      fail(`integer ${match[0]} outside +-(2^53-1)`);
    }
    at += match[0].length;
    return Number(big);
  };
  const result = value(0);
  skip();
  if (at !== text.length) fail("extra data after the value");
  return result;
}

// --- canonical JSON -----------------------------------------------------------------------------

function compareCodePoints(a, b) {
  // Python sorts str by code point; JavaScript's default sort compares UTF-16 code units,
  // which orders U+E000..U+FFFF after the astral planes. Compare code points explicitly.
  const x = Array.from(a, (c) => c.codePointAt(0));
  const y = Array.from(b, (c) => c.codePointAt(0));
  for (let i = 0; i < Math.min(x.length, y.length); i += 1) {
    if (x[i] !== y[i]) return x[i] - y[i];
  }
  return x.length - y.length;
}

function canonicalText(value, path, depth) {
  if (depth > NESTING_DEPTH_MAX) throw new ProofError(`${path}: nested deeper than ${NESTING_DEPTH_MAX} levels`);
  if (value === null) return "null";
  if (value === true) return "true";
  if (value === false) return "false";
  if (typeof value === "number") {
    if (!Number.isSafeInteger(value)) {
      throw new ProofError(`${path}: ${value} is not an integer within +-(2^53-1)`);
    }
    return String(value === 0 ? 0 : value); // -0 is 0
  }
  if (typeof value === "string") {
    if (!value.isWellFormed()) throw new ProofError(`${path}: not valid Unicode text (lone surrogate)`);
    // JSON.stringify escapes exactly what Python's json.dumps(ensure_ascii=False) does:
    // " \ and U+0000..U+001F (\b \f \n \r \t by name, the rest as lower-case \u00xx).
    return JSON.stringify(value);
  }
  if (Array.isArray(value)) {
    return `[${value.map((item, i) => canonicalText(item, `${path}[${i}]`, depth + 1)).join(",")}]`;
  }
  if (typeof value === "object") {
    const keys = Object.keys(value).sort(compareCodePoints);
    const parts = keys.map((key) => {
      if (!key.isWellFormed()) throw new ProofError(`${path} key: not valid Unicode text`);
      return `${JSON.stringify(key)}:${canonicalText(value[key], `${path}.${key}`, depth + 1)}`;
    });
    return `{${parts.join(",")}}`;
  }
  throw new ProofError(`${path}: ${typeof value} is not a JSON value`);
}

/** The canonical JSON text of a value (node.codec.canonical, as a string). */
export function canonical(value) {
  return canonicalText(value, "$", 0);
}

/** The canonical JSON bytes (UTF-8) of a value. */
export function canonicalBytes(value) {
  return ENCODER.encode(canonical(value));
}

// --- bytes and hashes ---------------------------------------------------------------------------

export function isHex(text, lengthBytes) {
  if (typeof text !== "string" || text.length % 2 !== 0) return false;
  if (lengthBytes !== undefined && text.length !== 2 * lengthBytes) return false;
  return /^[0-9a-f]*$/.test(text);
}

export function fromHex(text) {
  const out = new Uint8Array(text.length / 2);
  for (let i = 0; i < out.length; i += 1) out[i] = parseInt(text.slice(2 * i, 2 * i + 2), 16);
  return out;
}

export function toHex(bytes) {
  return Array.from(bytes, (b) => b.toString(16).padStart(2, "0")).join("");
}

export function concat(...parts) {
  const out = new Uint8Array(parts.reduce((n, p) => n + p.length, 0));
  let at = 0;
  for (const part of parts) {
    out.set(part, at);
    at += part.length;
  }
  return out;
}

function equalBytes(a, b) {
  return a.length === b.length && a.every((x, i) => x === b[i]);
}

export function cryptoAvailable() {
  return typeof crypto !== "undefined" && crypto.subtle !== undefined;
}

export async function sha256(bytes) {
  return new Uint8Array(await crypto.subtle.digest("SHA-256", bytes));
}

export async function sha256Hex(bytes) {
  return toHex(await sha256(bytes));
}

const EVENT_TAG = ENCODER.encode("coopledger:event:v1:");

/** One link of an asset's event chain (docs/rules.md): hex of sha256(tag||prev||tx||type||0||id). */
export async function eventHash(prevHex, txId, type, assetId) {
  return sha256Hex(
    concat(EVENT_TAG, fromHex(prevHex), fromHex(txId), ENCODER.encode(type), new Uint8Array([0]), ENCODER.encode(assetId)),
  );
}

// --- Ed25519, strict ------------------------------------------------------------------------------

const FIELD_P = 2n ** 255n - 19n;
const GROUP_L = 2n ** 252n + 27742317777372353535851937790883648493n;

// libsodium's ge25519_has_small_order list: encodings of points of order 1, 2, 4 and 8, and
// the non-canonical encodings of some of them; the sign bit (bit 255) is ignored.
const SMALL_ORDER = [
  "0000000000000000000000000000000000000000000000000000000000000000",
  "0100000000000000000000000000000000000000000000000000000000000000",
  "26e8958fc2b227b045c3f489f2ef98f0d5dfac05d3c63339b13802886d53fc05",
  "c7176a703d4dd84fba3c0b760d10670f2a2053fa2c39ccc64ec7fd7792ac037a",
  "ecffffffffffffffffffffffffffffffffffffffffffffffffffffffffffff7f",
  "edffffffffffffffffffffffffffffffffffffffffffffffffffffffffffff7f",
  "eeffffffffffffffffffffffffffffffffffffffffffffffffffffffffffff7f",
].map(fromHex);

function littleEndian(bytes) {
  let n = 0n;
  for (let i = bytes.length - 1; i >= 0; i -= 1) n = (n << 8n) | BigInt(bytes[i]);
  return n;
}

export function hasSmallOrder(point) {
  return SMALL_ORDER.some((bad) => bad.every((b, i) => (i === 31 ? point[i] & 0x7f : point[i]) === b));
}

export function isCanonicalPoint(point) {
  const y = littleEndian(point.slice(0, 31)) + (BigInt(point[31] & 0x7f) << 248n);
  return y < FIELD_P;
}

const importedKeys = new Map();

/** libsodium-strict Ed25519: the WebCrypto verification plus the encoding checks above. */
export async function ed25519Verify(publicKeyHex, signatureHex, message) {
  if (!isHex(publicKeyHex, 32) || !isHex(signatureHex, 64)) return false;
  const publicKey = fromHex(publicKeyHex);
  const signature = fromHex(signatureHex);
  if (!isCanonicalPoint(publicKey) || hasSmallOrder(publicKey)) return false;
  if (hasSmallOrder(signature.slice(0, 32))) return false;
  if (littleEndian(signature.slice(32)) >= GROUP_L) return false;
  let key = importedKeys.get(publicKeyHex);
  if (key === undefined) {
    try {
      key = await crypto.subtle.importKey("raw", publicKey, { name: "Ed25519" }, false, ["verify"]);
    } catch {
      return false; // not a point on the curve
    }
    importedKeys.set(publicKeyHex, key);
  }
  return crypto.subtle.verify({ name: "Ed25519" }, key, signature, message);
}

/** Verify a signature over tag("coopledger:<kind>:v1:") + canonical(message). */
export async function verifySigned(kind, message, publicKeyHex, signatureHex) {
  const bytes = concat(ENCODER.encode(`coopledger:${kind}:v1:`), canonicalBytes(message));
  return ed25519Verify(publicKeyHex, signatureHex, bytes);
}

// --- RFC 6962 inclusion -----------------------------------------------------------------------------

export function txLeaf(txId, code) {
  return canonicalBytes({ tx_id: txId, code });
}

/** RFC 9162 section 2.1.3.2, step by step (node.merkle.verify_inclusion). */
export async function verifyInclusion(root, leaf, index, treeSize, path) {
  if (root.length !== 32) throw new ProofError(`root must be 32 bytes, got ${root.length}`);
  if (treeSize <= 0) throw new ProofError(`tree size must be positive, got ${treeSize}`);
  if (!(index >= 0 && index < treeSize)) throw new ProofError(`leaf index ${index} outside a tree of ${treeSize} leaves`);
  if (path.length > PATH_LENGTH_MAX) throw new ProofError(`audit path of ${path.length} hashes exceeds ${PATH_LENGTH_MAX}`);
  // Plain arithmetic rather than bit operators: those truncate to 32 bits.
  const half = (n) => Math.floor(n / 2);
  let fn = index;
  let sn = treeSize - 1;
  let r = await sha256(concat(new Uint8Array([0]), leaf));
  for (let position = 0; position < path.length; position += 1) {
    const p = path[position];
    if (p.length !== 32) throw new ProofError(`audit path hash ${position} is ${p.length} bytes, not 32`);
    if (sn === 0) throw new ProofError(`audit path too long: ${path.length} hashes for leaf ${index} of ${treeSize}`);
    if (fn % 2 === 1 || fn === sn) {
      r = await sha256(concat(new Uint8Array([1]), p, r));
      while (fn !== 0 && fn % 2 === 0) {
        fn = half(fn);
        sn = half(sn);
      }
    } else {
      r = await sha256(concat(new Uint8Array([1]), r, p));
    }
    fn = half(fn);
    sn = half(sn);
  }
  if (sn !== 0) throw new ProofError(`audit path too short: ${path.length} hashes for leaf ${index} of ${treeSize}`);
  if (!equalBytes(r, root)) throw new ProofError(`leaf ${index} of ${treeSize}: computed root does not match`);
}

// --- state proofs (sparse Merkle tree) ----------------------------------------------------------

function hashFromHex(text, where) {
  if (!isHex(text, 32)) throw new ProofError(`state proof: ${where} must be 64 lowercase hex digits`);
  return fromHex(text);
}

/** StateProof.from_json: exactly {leaf, siblings}, hashes as 64 lowercase hex digits. */
export function parseStateProof(value) {
  if (!isObject(value)) throw new ProofError("state proof: must be a JSON object");
  if (!hasExactly(value, ["leaf", "siblings"])) {
    throw new ProofError(`state proof: fields must be exactly leaf, siblings; got ${Object.keys(value).sort()}`);
  }
  const { siblings } = value;
  if (!Array.isArray(siblings)) throw new ProofError("state proof: siblings must be a list");
  if (siblings.length > PROOF_SIBLINGS_MAX) throw new ProofError(`state proof: ${siblings.length} siblings exceed ${PROOF_SIBLINGS_MAX}`);
  let leaf = null;
  if (value.leaf !== null) {
    if (!isObject(value.leaf)) throw new ProofError("state proof: leaf must be null or an object");
    if (!hasExactly(value.leaf, ["key_hash", "value_hash"])) {
      throw new ProofError("state proof: leaf fields must be exactly key_hash, value_hash");
    }
    leaf = {
      keyHash: hashFromHex(value.leaf.key_hash, "leaf.key_hash"),
      valueHash: hashFromHex(value.leaf.value_hash, "leaf.value_hash"),
    };
  }
  return { leaf, siblings: siblings.map((s, i) => hashFromHex(s, `siblings[${i}]`)) };
}

function bit(keyHash, depth) {
  return (keyHash[depth >> 3] >> (7 - (depth & 7))) & 1;
}

function commonPrefixBits(a, b) {
  for (let d = 0; d < 256; d += 1) if (bit(a, d) !== bit(b, d)) return d;
  return 256;
}

/** node.smt.verify_state_proof: valueHash null claims the key is absent. */
export async function verifyStateProof(root, keyHash, valueHash, proof) {
  for (const [name, given] of [["root", root], ["key_hash", keyHash], ["value_hash", valueHash]]) {
    if (given !== null && given.length !== 32) throw new ProofError(`state proof: ${name} must be 32 bytes`);
  }
  const { leaf, siblings } = proof;
  const depth = siblings.length;
  if (depth > PROOF_SIBLINGS_MAX) throw new ProofError(`state proof: ${depth} siblings exceed ${PROOF_SIBLINGS_MAX}`);
  if (valueHash !== null) {
    if (leaf === null) throw new ProofError("state proof: the proof shows the key absent, not included");
    if (!equalBytes(leaf.keyHash, keyHash)) throw new ProofError("state proof: the proof shows another key at the key's position");
    if (!equalBytes(leaf.valueHash, valueHash)) throw new ProofError("state proof: the key holds a different value hash");
  } else if (leaf !== null) {
    if (equalBytes(leaf.keyHash, keyHash)) throw new ProofError("state proof: the key is present, not absent");
    if (commonPrefixBits(leaf.keyHash, keyHash) < depth) throw new ProofError("state proof: the leaf shown does not lie on the key's path");
  }
  if (depth > 0 && siblings[0].every((b) => b === 0)) {
    throw new ProofError("state proof: not canonical (empty sibling next to the leaf)");
  }
  let current = leaf === null ? new Uint8Array(32) : await sha256(concat(new Uint8Array([0]), leaf.keyHash, leaf.valueHash));
  for (let position = 0; position < depth; position += 1) {
    const sibling = siblings[position];
    current = bit(keyHash, depth - 1 - position)
      ? await sha256(concat(new Uint8Array([1]), sibling, current))
      : await sha256(concat(new Uint8Array([1]), current, sibling));
  }
  if (!equalBytes(current, root)) throw new ProofError("state proof: computed root does not match the state root");
}

// --- genesis ------------------------------------------------------------------------------------

function isObject(value) {
  return value !== null && typeof value === "object" && !Array.isArray(value);
}

function hasExactly(obj, fields) {
  const keys = Object.keys(obj);
  return keys.length === fields.length && fields.every((f) => Object.prototype.hasOwnProperty.call(obj, f));
}

function isInt(value) {
  return typeof value === "number" && Number.isSafeInteger(value);
}

/** The parts of a genesis file the verifier trusts: chain id and validator keys. */
export async function parseGenesis(text) {
  const document = parseStrictJson(text, "genesis");
  if (!isObject(document) || typeof document.chain_id !== "string" || !Array.isArray(document.validators)) {
    throw new ProofError("genesis: not a coopledger genesis file (chain_id, validators)");
  }
  const validators = new Map();
  for (const [i, v] of document.validators.entries()) {
    if (!isObject(v) || typeof v.id !== "string" || !isHex(v.public_key, 32)) {
      throw new ProofError(`genesis: validators[${i}] needs an id and a 32-byte hex public_key`);
    }
    const key = fromHex(v.public_key);
    if (!isCanonicalPoint(key) || hasSmallOrder(key)) {
      throw new ProofError(`genesis: validators[${i}].public_key is not an acceptable Ed25519 key`);
    }
    if (validators.has(v.id)) throw new ProofError(`genesis: validator ${v.id} is listed twice`);
    validators.set(v.id, v.public_key);
  }
  if (validators.size === 0) throw new ProofError("genesis: no validators");
  return {
    chainId: document.chain_id,
    validators,
    quorum: Math.floor((2 * validators.size) / 3) + 1,
    hash: await sha256Hex(canonicalBytes(document)),
  };
}

// --- envelopes (node.tx.parse_envelope) ----------------------------------------------------------

const ID_PATTERN = /^[A-Za-z0-9._:-]+$/;

function checkId(value) {
  if (typeof value !== "string") return "must be a string";
  if (value.length < 1 || value.length > ID_CHARS_MAX) return `must be 1..${ID_CHARS_MAX} characters`;
  if (!ID_PATTERN.test(value) || value === "." || value === "..") return "may contain only letters, digits and . _ : -";
  return null;
}

function checkText(value) {
  if (typeof value !== "string") return "must be a string";
  const chars = Array.from(value); // Python counts code points
  if (chars.length < 1 || chars.length > TEXT_CHARS_MAX) return `must be 1..${TEXT_CHARS_MAX} characters`;
  if (chars.some((c) => c.codePointAt(0) < 0x20 || c.codePointAt(0) === 0x7f)) return "must not contain control characters";
  return null;
}

function checkInt(value, low, high) {
  if (!isInt(value)) return "must be an integer";
  if (value < low || value > high) return `must be between ${low} and ${high}`;
  return null;
}

function requireOk(problem, field) {
  if (problem) throw new ProofError(`${field}: ${problem}`);
}

function fields(payload, required, optional = []) {
  for (const key of Object.keys(payload).sort()) {
    if (!required.includes(key) && !optional.includes(key)) throw new ProofError(`payload.${key}: unknown field`);
  }
  for (const key of [...required].sort()) {
    if (!(key in payload)) throw new ProofError(`payload.${key}: missing`);
  }
}

function idList(value, field, limit) {
  if (!Array.isArray(value) || value.length < 1 || value.length > limit) throw new ProofError(`${field}: must be a list of 1..${limit} ids`);
  value.forEach((item, i) => requireOk(checkId(item), `${field}[${i}]`));
  if (new Set(value).size !== value.length) throw new ProofError(`${field}: lists an id twice`);
}

const PAYLOAD_CHECKS = {
  "asset.register": (p) => {
    fields(p, ["asset_id", "product", "quantity", "unit", "origin"], ["metadata"]);
    requireOk(checkId(p.asset_id), "payload.asset_id");
    requireOk(checkText(p.product), "payload.product");
    requireOk(checkInt(p.quantity, 1, QUANTITY_MAX), "payload.quantity");
    requireOk(checkText(p.unit), "payload.unit");
    requireOk(checkText(p.origin), "payload.origin");
    if ("metadata" in p && !isObject(p.metadata)) throw new ProofError("payload.metadata: must be an object");
  },
  "asset.transfer": (p) => {
    fields(p, ["asset_id", "to"]);
    requireOk(checkId(p.asset_id), "payload.asset_id");
    requireOk(checkId(p.to), "payload.to");
  },
  "asset.transform": (p) => {
    fields(p, ["inputs", "outputs"]);
    idList(p.inputs, "payload.inputs", 32);
    if (!Array.isArray(p.outputs) || p.outputs.length < 1 || p.outputs.length > 32) throw new ProofError("payload.outputs: must be a list of 1..32");
    const seen = new Set();
    p.outputs.forEach((o, i) => {
      const where = `payload.outputs[${i}]`;
      if (!isObject(o) || !hasExactly(o, ["asset_id", "product", "quantity", "unit"])) throw new ProofError(`${where}: must be {asset_id, product, quantity, unit}`);
      requireOk(checkId(o.asset_id), `${where}.asset_id`);
      requireOk(checkText(o.product), `${where}.product`);
      requireOk(checkInt(o.quantity, 1, QUANTITY_MAX), `${where}.quantity`);
      requireOk(checkText(o.unit), `${where}.unit`);
      if (seen.has(o.asset_id) || p.inputs.includes(o.asset_id)) throw new ProofError(`${where}.asset_id: repeats an input or another output`);
      seen.add(o.asset_id);
    });
  },
  "asset.observe": (p) => {
    fields(p, ["asset_id", "kind", "data"]);
    requireOk(checkId(p.asset_id), "payload.asset_id");
    requireOk(checkText(p.kind), "payload.kind");
    if (!isObject(p.data)) throw new ProofError("payload.data: must be an object");
  },
  "shipment.create": (p) => {
    fields(p, ["shipment_id", "asset_ids", "to"], ["purchase_id"]);
    requireOk(checkId(p.shipment_id), "payload.shipment_id");
    idList(p.asset_ids, "payload.asset_ids", 64);
    requireOk(checkId(p.to), "payload.to");
    if ("purchase_id" in p) requireOk(checkId(p.purchase_id), "payload.purchase_id");
  },
  "shipment.receive": (p) => {
    fields(p, ["shipment_id"]);
    requireOk(checkId(p.shipment_id), "payload.shipment_id");
  },
  "purchase.open": (p) => {
    fields(p, ["purchase_id", "supplier", "item", "unit", "tiers", "min_total", "deadline_ms"]);
    requireOk(checkId(p.purchase_id), "payload.purchase_id");
    requireOk(checkId(p.supplier), "payload.supplier");
    requireOk(checkText(p.item), "payload.item");
    requireOk(checkText(p.unit), "payload.unit");
    if (!Array.isArray(p.tiers) || p.tiers.length < 1 || p.tiers.length > 16) throw new ProofError("payload.tiers: must be a list of 1..16 tiers");
    p.tiers.forEach((t, i) => {
      if (!isObject(t) || !hasExactly(t, ["min_quantity", "unit_price"])) throw new ProofError(`payload.tiers[${i}]: must be {min_quantity, unit_price}`);
      requireOk(checkInt(t.min_quantity, 1, QUANTITY_MAX), `payload.tiers[${i}].min_quantity`);
      requireOk(checkInt(t.unit_price, 0, UNIT_PRICE_MAX), `payload.tiers[${i}].unit_price`);
    });
    requireOk(checkInt(p.min_total, 1, QUANTITY_MAX), "payload.min_total");
    requireOk(checkInt(p.deadline_ms, 0, INT_ABS_MAX), "payload.deadline_ms");
  },
  "purchase.commit": (p) => {
    fields(p, ["purchase_id", "quantity"]);
    requireOk(checkId(p.purchase_id), "payload.purchase_id");
    requireOk(checkInt(p.quantity, 0, QUANTITY_MAX), "payload.quantity");
  },
  "member.propose": (p) => fields(p, ["action", "member"]),
  "member.vote": (p) => fields(p, ["proposal_id", "approve"]),
};
PAYLOAD_CHECKS["shipment.cancel"] = PAYLOAD_CHECKS["shipment.receive"];
PAYLOAD_CHECKS["purchase.close"] = (p) => {
  fields(p, ["purchase_id"]);
  requireOk(checkId(p.purchase_id), "payload.purchase_id");
};
PAYLOAD_CHECKS["purchase.confirm"] = PAYLOAD_CHECKS["purchase.close"];

/** Shape, payload schema and size of an envelope; returns its tx_id. */
export async function parseEnvelope(envelope) {
  if (!isObject(envelope) || !hasExactly(envelope, ["body", "signer", "signature"])) {
    throw new ProofError("envelope must have exactly body, signer, signature");
  }
  const { body } = envelope;
  if (!isObject(body) || !hasExactly(body, ["chain_id", "type", "sender", "nonce", "expires_at_ms", "payload"])) {
    throw new ProofError("body must have exactly chain_id, type, sender, nonce, expires_at_ms, payload");
  }
  if (!isHex(envelope.signer, 32)) throw new ProofError("signer must be 64 lowercase hex characters");
  if (!isHex(envelope.signature, 64)) throw new ProofError("signature must be 128 lowercase hex characters");
  requireOk(checkId(body.chain_id), "body.chain_id");
  requireOk(checkId(body.sender), "body.sender");
  requireOk(checkInt(body.nonce, 0, INT_ABS_MAX), "body.nonce");
  requireOk(checkInt(body.expires_at_ms, 0, INT_ABS_MAX), "body.expires_at_ms");
  const check = typeof body.type === "string" ? PAYLOAD_CHECKS[body.type] : undefined;
  if (check === undefined) throw new ProofError(`unknown transaction type ${JSON.stringify(body.type)}`);
  if (!isObject(body.payload)) throw new ProofError("payload must be an object");
  const size = canonicalBytes(envelope).length;
  if (size > TX_BYTES_MAX) throw new ProofError(`${size} bytes; at most ${TX_BYTES_MAX}`);
  check(body.payload);
  return sha256Hex(canonicalBytes(body));
}

// --- blocks and commits (node.block) ------------------------------------------------------------

const HEADER_FIELDS = ["chain_id", "height", "round", "timestamp_ms", "proposer", "prev_hash", "tx_root", "state_root", "tx_count"];

export function checkHeaderShape(header) {
  if (!isObject(header) || !hasExactly(header, HEADER_FIELDS)) {
    throw new ProofError(`header must have exactly the fields ${HEADER_FIELDS.join(", ")}`);
  }
  for (const name of ["height", "round", "timestamp_ms", "tx_count"]) {
    if (!isInt(header[name]) || header[name] < 0) throw new ProofError(`header.${name} must be a non-negative integer`);
  }
  for (const name of ["prev_hash", "tx_root", "state_root"]) {
    if (!isHex(header[name], 32)) throw new ProofError(`header.${name} must be 32 bytes of lowercase hex`);
  }
  for (const name of ["chain_id", "proposer"]) {
    if (typeof header[name] !== "string") throw new ProofError(`header.${name} must be a string`);
  }
  return header;
}

/** node.block.verify_commit: a quorum of distinct, valid genesis-validator precommits. */
export async function verifyCommit(genesis, commit, expectedHash, height) {
  if (!isObject(commit) || !hasExactly(commit, ["height", "round", "block_hash", "signatures"])) {
    throw new ProofError("commit needs exactly: block_hash, height, round, signatures");
  }
  if (commit.height !== height) throw new ProofError(`commit is for height ${commit.height}, block is at height ${height}`);
  if (commit.block_hash !== expectedHash) throw new ProofError(`commit certifies block ${commit.block_hash}, not ${expectedHash}`);
  if (!isInt(commit.round) || commit.round < 0) throw new ProofError("commit.round must be a non-negative integer");
  if (!Array.isArray(commit.signatures)) throw new ProofError("commit.signatures must be a list");
  const message = { chain_id: genesis.chainId, height, round: commit.round, block_hash: expectedHash };
  const seen = new Set();
  for (const [i, entry] of commit.signatures.entries()) {
    if (!isObject(entry) || !hasExactly(entry, ["validator", "signature"])) {
      throw new ProofError(`commit.signatures[${i}] must be {validator, signature}`);
    }
    const id = entry.validator;
    const publicKey = typeof id === "string" ? genesis.validators.get(id) : undefined;
    if (publicKey === undefined) throw new ProofError(`commit.signatures[${i}]: unknown validator ${JSON.stringify(id)}`);
    if (seen.has(id)) throw new ProofError(`commit.signatures[${i}]: validator ${id} signs twice`);
    seen.add(id);
    if (typeof entry.signature !== "string" || !(await verifySigned("precommit", message, publicKey, entry.signature))) {
      throw new ProofError(`commit.signatures[${i}]: bad signature by ${id}`);
    }
  }
  if (seen.size < genesis.quorum) {
    throw new ProofError(`commit has ${seen.size} signatures; ${genesis.quorum} of ${genesis.validators.size} validators are needed`);
  }
  return seen.size;
}

// --- the bundle -------------------------------------------------------------------------------

const BUNDLE_FIELDS = ["format", "chain_id", "asset_id", "lineage", "blocks", "entries", "state"];

/** The checklist the page shows: one item per stage, in order. */
export const CHECKS = [
  ["format", "Bundle format and chain match the genesis"],
  ["blocks", "Block headers hash to their block_hash"],
  ["commits", "Commit certificates: a quorum of distinct genesis validators, Ed25519 precommit signatures"],
  ["transactions", "Transactions: shape, strict Ed25519 signature (tx domain), tx_id = SHA-256 of the body, chain"],
  ["inclusion", "RFC 6962 inclusion of {tx_id, code} in each block's tx_root (tree size from the header)"],
  ["state", "Asset records proven against the state_root of the newest block (sparse Merkle proofs)"],
  ["assets", "The proven assets are the asset and, with lineage, every input it was made from"],
  ["chains", "Event chains recomputed from the entries end at each asset's proven last_event and event_count"],
];

/**
 * Verify a parsed bundle against a parsed genesis (parseGenesis). Calls progress(id, detail)
 * as each stage passes. Returns the report; throws ProofError {stage} at the first failure.
 */
export async function verifyBundle(bundle, genesis, progress = () => {}) {
  let stage = "format";
  try {
    if (!isObject(bundle) || !hasExactly(bundle, BUNDLE_FIELDS)) {
      throw new ProofError(`bundle must have exactly the fields ${[...BUNDLE_FIELDS].sort().join(", ")}`);
    }
    if (bundle.format !== BUNDLE_FORMAT) throw new ProofError(`bundle format is ${JSON.stringify(bundle.format)}, not ${BUNDLE_FORMAT}`);
    if (bundle.chain_id !== genesis.chainId) {
      throw new ProofError(`bundle is for chain ${JSON.stringify(bundle.chain_id)}, the genesis is for ${JSON.stringify(genesis.chainId)}`);
    }
    if (typeof bundle.asset_id !== "string" || typeof bundle.lineage !== "boolean") {
      throw new ProofError("bundle.asset_id must be a string and bundle.lineage a boolean");
    }
    progress("format", `chain ${genesis.chainId}, asset ${bundle.asset_id}${bundle.lineage ? " with lineage" : ""}`);
    stage = "blocks";
    const headers = await verifyBlocks(bundle.blocks, genesis, progress, (s) => { stage = s; });
    stage = "transactions";
    await verifyEntries(bundle.entries, headers, genesis, progress, (s) => { stage = s; });
    stage = "state";
    const { height, assets } = await verifyState(bundle.state, headers);
    progress("state", `${assets.size} asset record${assets.size === 1 ? "" : "s"} against block ${height}'s state_root`);
    stage = "assets";
    checkAssetSet(assets, bundle.asset_id, bundle.lineage);
    progress("assets", [...assets.keys()].join(", "));
    stage = "chains";
    const events = await verifyChains(bundle.entries, assets, height, headers);
    const total = [...assets.values()].reduce((n, a) => n + a.event_count, 0);
    progress("chains", `${total} events over ${assets.size} asset${assets.size === 1 ? "" : "s"}: complete as of block ${height}`);
    return { chainId: genesis.chainId, assetId: bundle.asset_id, lineage: bundle.lineage, height, timestampMs: headers.get(height).timestamp_ms, events, assets };
  } catch (error) {
    if (error instanceof ProofError) error.stage = stage;
    throw error;
  }
}

// Headers first, then commits (and envelopes first, then inclusion proofs): the same checks as
// node/audit.py, which interleaves them per block and per entry, in two passes so that the
// checklist can tell which kind of check failed.
async function verifyBlocks(blocks, genesis, progress, setStage) {
  if (!Array.isArray(blocks) || blocks.length === 0) throw new ProofError("bundle.blocks must be a non-empty list");
  const headers = new Map();
  const hashes = [];
  let previous = 0;
  for (const [position, block] of blocks.entries()) {
    const where = `blocks[${position}]`;
    if (!isObject(block) || !hasExactly(block, ["header", "block_hash", "commit"])) {
      throw new ProofError(`${where} must have exactly header, block_hash, commit`);
    }
    let header;
    try {
      header = checkHeaderShape(block.header);
    } catch (error) {
      throw new ProofError(`${where}: ${error.message}`);
    }
    const { height } = header;
    if (header.chain_id !== genesis.chainId) throw new ProofError(`${where}: block ${height} is for chain ${JSON.stringify(header.chain_id)}`);
    if (height <= previous) throw new ProofError(`${where}: blocks must be in strictly increasing height order`);
    previous = height;
    const hash = await sha256Hex(canonicalBytes(header));
    if (block.block_hash !== hash) throw new ProofError(`${where}: block ${height}'s header hashes to ${hash}, not the stated block_hash`);
    hashes.push(hash);
    headers.set(height, header);
  }
  progress("blocks", `${blocks.length} block${blocks.length === 1 ? "" : "s"} (heights ${[...headers.keys()].join(", ")})`);
  setStage("commits");
  let signatures = 0;
  for (const [position, block] of blocks.entries()) {
    const { height } = block.header;
    try {
      signatures += await verifyCommit(genesis, block.commit, hashes[position], height);
    } catch (error) {
      throw new ProofError(`blocks[${position}]: block ${height}'s commit does not verify: ${error.message}`);
    }
  }
  progress("commits", `${signatures} precommit signatures checked; quorum ${genesis.quorum} of ${genesis.validators.size} validators`);
  return headers;
}

async function verifyEntries(entries, headers, genesis, progress, setStage) {
  if (!Array.isArray(entries)) throw new ProofError("bundle.entries must be a list");
  const fieldsWanted = ["tx", "tx_id", "height", "index", "code", "proof"];
  let previous = [0, -1];
  for (const [position, entry] of entries.entries()) {
    const where = `entries[${position}]`;
    if (!isObject(entry) || !hasExactly(entry, fieldsWanted)) throw new ProofError(`${where} must have exactly ${[...fieldsWanted].sort().join(", ")}`);
    const { height, index, code } = entry;
    if (!isInt(height) || !isInt(index)) throw new ProofError(`${where}: height and index must be integers`);
    if (typeof code !== "string") throw new ProofError(`${where}: code must be a string`);
    if (height < previous[0] || (height === previous[0] && index <= previous[1])) {
      throw new ProofError(`${where}: entries must be in chain order without repeats`);
    }
    previous = [height, index];
    let txId;
    try {
      txId = await parseEnvelope(entry.tx);
      if (!(await verifySigned("tx", entry.tx.body, entry.tx.signer, entry.tx.signature))) {
        throw new ProofError("signature does not verify for signer and body");
      }
    } catch (error) {
      throw new ProofError(`${where}: the transaction is not genuine: ${error.message}`);
    }
    if (txId !== entry.tx_id) throw new ProofError(`${where}: its body hashes to ${txId}, not the stated tx_id`);
    if (entry.tx.body.chain_id !== genesis.chainId) throw new ProofError(`${where}: the transaction is for chain ${JSON.stringify(entry.tx.body.chain_id)}`);
    if (!headers.has(height)) throw new ProofError(`${where}: block ${height} that holds it is not in the bundle`);
  }
  progress("transactions", `${entries.length} transaction${entries.length === 1 ? "" : "s"}`);
  setStage("inclusion");
  for (const [position, entry] of entries.entries()) {
    await verifyInclusionProof(`entries[${position}]`, entry, headers.get(entry.height));
  }
  progress("inclusion", `${entries.length} audit path${entries.length === 1 ? "" : "s"}`);
}

async function verifyInclusionProof(where, entry, header) {
  const { proof } = entry;
  if (!isObject(proof) || !hasExactly(proof, ["tree_size", "leaf_index", "path"])) {
    throw new ProofError(`${where}.proof must have exactly tree_size, leaf_index, path`);
  }
  const { height } = header;
  if (proof.tree_size !== header.tx_count) {
    throw new ProofError(`${where}: proof is for a tree of ${proof.tree_size} leaves; block ${height} holds ${header.tx_count}`);
  }
  if (proof.leaf_index !== entry.index) throw new ProofError(`${where}: proof is for leaf ${proof.leaf_index}, not the entry's`);
  if (!Array.isArray(proof.path) || !proof.path.every((step) => isHex(step, 32))) {
    throw new ProofError(`${where}.proof.path must be a list of 32-byte lowercase hex hashes`);
  }
  try {
    await verifyInclusion(fromHex(header.tx_root), txLeaf(entry.tx_id, entry.code), entry.index, header.tx_count, proof.path.map(fromHex));
  } catch (error) {
    throw new ProofError(
      `${where}: tx ${entry.tx_id.slice(0, 16)}... with code ${JSON.stringify(entry.code)} is not in block ${height}'s tx_root: ${error.message}`,
    );
  }
}

function isAssetRecord(value, assetId) {
  return isObject(value) && value.asset_id === assetId && isHex(value.last_event, 32) && isInt(value.event_count) && Array.isArray(value.inputs);
}

async function verifyState(state, headers) {
  if (!isObject(state) || !hasExactly(state, ["height", "proofs"])) throw new ProofError("bundle.state must have exactly height, proofs");
  const { height } = state;
  const header = isInt(height) ? headers.get(height) : undefined;
  if (header === undefined) throw new ProofError(`bundle.state: its block ${height} is not in the bundle`);
  if (height !== Math.max(...headers.keys())) throw new ProofError("bundle.state must be proven against the highest block of the bundle");
  if (!Array.isArray(state.proofs) || state.proofs.length === 0) throw new ProofError("bundle.state.proofs must be a non-empty list");
  const root = fromHex(header.state_root);
  const assets = new Map();
  for (const [position, item] of state.proofs.entries()) {
    const where = `state.proofs[${position}]`;
    if (!isObject(item) || !hasExactly(item, ["key", "value", "proof"])) throw new ProofError(`${where} must have exactly key, value, proof`);
    const { key, value } = item;
    if (typeof key !== "string" || !key.startsWith("asset/")) throw new ProofError(`${where}: key must be asset/<id>`);
    const assetId = key.slice("asset/".length);
    if (!isAssetRecord(value, assetId)) throw new ProofError(`${where}: value is not the record of asset ${assetId}`);
    if (assets.has(assetId)) throw new ProofError(`${where}: asset ${assetId} is proven twice`);
    try {
      const keyHash = await sha256(ENCODER.encode(key));
      const valueHash = await sha256(canonicalBytes(value));
      await verifyStateProof(root, keyHash, valueHash, parseStateProof(item.proof));
    } catch (error) {
      throw new ProofError(`${where}: asset ${assetId}'s record is not in block ${height}'s state_root: ${error.message}`);
    }
    assets.set(assetId, value);
  }
  return { height, assets };
}

function checkAssetSet(assets, assetId, lineage) {
  if (!assets.has(assetId)) throw new ProofError(`the bundle proves no state for its asset ${assetId}`);
  if (!lineage) {
    if (assets.size !== 1) throw new ProofError("a bundle without lineage proves the state of its asset only");
    return;
  }
  for (const [proven, value] of assets) {
    for (const parent of value.inputs) {
      if (!assets.has(parent)) throw new ProofError(`lineage incomplete: ${proven} was made from ${parent}, whose state the bundle does not prove`);
    }
  }
}

function touched(type, payload, shipments) {
  if (type === "asset.register" || type === "asset.transfer" || type === "asset.observe") return [payload.asset_id];
  if (type === "shipment.create") {
    shipments.set(payload.shipment_id, [...payload.asset_ids]);
    return [...payload.asset_ids];
  }
  if (type === "shipment.receive" || type === "shipment.cancel") return shipments.get(payload.shipment_id) ?? [];
  if (type === "asset.transform") return [...payload.inputs, ...payload.outputs.map((o) => o.asset_id)];
  return [];
}

async function verifyChains(entries, assets, stateHeight, headers) {
  const heads = new Map([...assets.keys()].map((a) => [a, ZERO_HASH]));
  const counts = new Map([...assets.keys()].map((a) => [a, 0]));
  const shipments = new Map();
  const events = [];
  for (const [position, entry] of entries.entries()) {
    const where = `entries[${position}]`;
    if (entry.height > stateHeight) throw new ProofError(`${where}: at height ${entry.height}, after the proven state`);
    const { body } = entry.tx;
    let hit = [];
    if (entry.code === "ok") hit = touched(body.type, body.payload, shipments).filter((a) => heads.has(a));
    if (hit.length === 0) {
      throw new ProofError(`${where}: tx ${entry.tx_id.slice(0, 16)}... (${body.type}) appends no event to an asset of the bundle`);
    }
    for (const asset of hit) {
      heads.set(asset, await eventHash(heads.get(asset), entry.tx_id, body.type, asset));
      counts.set(asset, counts.get(asset) + 1);
    }
    events.push({ height: entry.height, timestampMs: headers.get(entry.height).timestamp_ms, index: entry.index, txId: entry.tx_id, type: body.type, sender: body.sender, code: entry.code, assets: hit, payload: body.payload });
  }
  for (const [asset, value] of assets) {
    if (counts.get(asset) !== value.event_count || heads.get(asset) !== value.last_event) {
      throw new ProofError(
        `history of ${asset} incomplete or altered: the bundle's ${counts.get(asset)} events chain to ${heads.get(asset).slice(0, 16)}..., ` +
          `the proven state at height ${stateHeight} names ${value.event_count} events ending at ${value.last_event.slice(0, 16)}...`,
      );
    }
  }
  return events;
}
