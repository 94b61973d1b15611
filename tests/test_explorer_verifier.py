"""The in-browser verifier's primitives equal the Python ones (headless Chromium).

``gateway/explorer/static/verifier.js`` re-implements, for an auditor's browser, what
``node.audit.verify_bundle`` relies on: the strict JSON parser, canonical JSON, SHA-256 event
hashes, RFC 6962 inclusion proofs, sparse-Merkle state proofs and strict Ed25519. Each test
runs the JavaScript through ``page.evaluate`` on the same inputs as the Python and requires the
same answer, including the refusals. The page is served from a loopback origin so that
WebCrypto is available (it is only offered to secure contexts).
"""

from __future__ import annotations

import hashlib
import json
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import nacl.bindings
import pytest
from test_explorer_browser import CHROMIUM, CHROMIUM_ARGS, require_browser

from gateway.explorer import STATIC_DIR
from node.codec import canonical, parse_json
from node.crypto import KeyPair, signing_bytes, verify_raw
from node.errors import EncodingError, ProofError
from node.merkle import MerkleTree, tx_leaf, verify_inclusion
from node.rules import event_hash
from node.smt import SparseMerkleTree, state_key_hash, verify_state_proof

GROUP_L = 2**252 + 27742317777372353535851937790883648493


class _Handler(BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        if self.path == "/verifier.js":
            body, media_type = (STATIC_DIR / "verifier.js").read_bytes(), "text/javascript"
        else:
            body, media_type = b"<!doctype html><title>verifier</title>", "text/html"
        self.send_response(200)
        self.send_header("Content-Type", media_type)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:
        return


@pytest.fixture(scope="module")
def js(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    """A page with ``window.v`` = the verifier module."""
    sync_api = require_browser()
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        with sync_api.sync_playwright() as playwright:
            browser = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
            page = browser.new_page()
            page.goto(f"http://127.0.0.1:{server.server_address[1]}/")
            page.evaluate("async () => { window.v = await import('/verifier.js'); }")
            yield page
            browser.close()
    finally:
        server.shutdown()
        thread.join()
        server.server_close()


# --- strict JSON and canonical JSON ----------------------------------------------------

TRICKY_STRINGS = [
    "",
    "plain",
    "line\u2028separator\u2029paragraph",
    "".join(chr(c) for c in range(0x20)) + "\x7f",
    '"quoted" \\back\\slash /slash',
    "é ü ß ≠ 中文 日本語",
    "emoji 😀 and 𝄞",
    "\ue000 private use \uffff last BMP",
    "<img src=x onerror=alert(1)>",
    "\u00a0nbsp \u200b zero width \ufeff bom",
]

TRICKY_VALUES: list[Any] = [
    *TRICKY_STRINGS,
    {s: s for s in TRICKY_STRINGS},
    {"b": 1, "a": 2, "B": 3, "é": 4, "\ue000": 5, "😀": 6, "aa": 7, "": 8, "__proto__": 9},
    {"z": [{"y": None, "x": True}, False, [], {}], "n": [0, -1, 2**53 - 1, -(2**53 - 1)]},
    {"nested": {"deeper": {"deepest": ["\n", "\t", "\x00"]}}},
]


def js_canonical_of(js: Any, texts: list[str]) -> list[dict[str, str]]:
    result: list[dict[str, str]] = js.evaluate(
        """(texts) => texts.map((text) => {
            try { return {ok: v.canonical(v.parseStrictJson(text))}; }
            catch (error) { return {error: error.message}; }
        })""",
        texts,
    )
    return result


def test_canonical_json_equals_python_on_tricky_values(js: Any) -> None:
    # Shipped to the page as ASCII-escaped JSON, so the transport cannot alter any character.
    texts = [json.dumps(value, ensure_ascii=True) for value in TRICKY_VALUES]
    for value, answer in zip(TRICKY_VALUES, js_canonical_of(js, texts), strict=True):
        assert answer == {"ok": canonical(value).decode("utf-8")}, value


def test_key_order_is_by_code_point_not_utf16_unit(js: Any) -> None:
    # U+E000 sorts before U+1F600 by code point, after it by UTF-16 unit (0xE000 > 0xD83D).
    text = json.dumps({"😀": 1, "\ue000": 2})
    assert js_canonical_of(js, [text])[0]["ok"] == canonical({"😀": 1, "\ue000": 2}).decode()
    assert canonical({"😀": 1, "\ue000": 2}).decode().index("\ue000") < 4


STRICT_JSON_CASES = [
    '{"a": 1}',
    " \t\n\r[1, 2, 3] \n",
    '{"a": 1.0}',
    '{"a": 1e3}',
    '{"a": -0}',
    "[NaN]",
    "[Infinity]",
    '{"a": 1, "a": 2}',
    f"[{2**53 - 1}]",
    f"[{2**53}]",
    f"[-{2**53}]",
    '["\\ud800"]',
    '["\\ud83d\\ude00"]',
    '["\\u00e9\\u2028"]',
    '["raw\tcontrol"]',
    '["\\x41"]',
    "[01]",
    "[1,]",
    '{"a":1}x',
    "[" * 33 + "]" * 33,
    "[" * 32 + "]" * 32,
    '{"__proto__": {"polluted": 1}}',
    "[true, false, null]",
    "[tru]",
    "",
]


def test_strict_parser_accepts_and_refuses_exactly_what_python_does(js: Any) -> None:
    answers = js_canonical_of(js, STRICT_JSON_CASES)
    for text, answer in zip(STRICT_JSON_CASES, answers, strict=True):
        try:
            expected = canonical(parse_json(text, what="case")).decode()
        except EncodingError:
            assert "error" in answer, (text, answer)
        else:
            assert answer == {"ok": expected}, text
    assert js.evaluate("({}).polluted") is None


# --- hashes ----------------------------------------------------------------------


def test_event_hash_equals_python(js: Any) -> None:
    cases = [
        ("00" * 32, hashlib.sha256(b"tx1").hexdigest(), "asset.register", "lot-1"),
        (hashlib.sha256(b"prev").hexdigest(), "ab" * 32, "shipment.receive", "käse-ü"),
        ("ff" * 32, "01" * 32, "asset.transform", "bread:2026.04-14_a"),
    ]
    answers = js.evaluate(
        "(cases) => Promise.all(cases.map((c) => v.eventHash(...c)))", [list(c) for c in cases]
    )
    assert answers == [event_hash(*case) for case in cases]


def test_tx_leaf_equals_python(js: Any) -> None:
    cases = [("ab" * 32, "ok"), ("cd" * 32, "not-custodian")]
    answers = js.evaluate(
        "(cases) => cases.map(([id, code]) => v.toHex(v.txLeaf(id, code)))",
        [list(c) for c in cases],
    )
    assert answers == [tx_leaf(*case).hex() for case in cases]


# --- RFC 6962 ----------------------------------------------------------------------


def python_inclusion(root: bytes, leaf: bytes, index: int, size: int, path: list[bytes]) -> bool:
    try:
        verify_inclusion(root, leaf, index, size, path)
    except ProofError:
        return False
    return True


def test_rfc6962_inclusion_proofs_agree_for_every_leaf_of_trees_up_to_17(js: Any) -> None:
    cases: list[dict[str, Any]] = []
    expected: list[bool] = []
    genuine: list[int] = []
    for size in range(1, 18):
        leaves = [tx_leaf(f"{i:064x}", "ok" if i % 3 else "asset-consumed") for i in range(size)]
        tree = MerkleTree(leaves)
        root = tree.root()
        for index in range(size):
            path = tree.inclusion_proof(index)
            # The genuine proof, then the same path claimed for another size, another index,
            # a changed leaf and a path with one hash flipped.
            variants = [
                (leaves[index], index, size, path),
                (leaves[index], index, size + 1, path),
                (leaves[index], (index + 1) % size, size, path),
                (tx_leaf(f"{index:064x}", "changed"), index, size, path),
            ]
            if path:
                variants.append((leaves[index], index, size, [bytes(32), *path[1:]]))
            genuine.append(len(cases))
            for leaf, claimed_index, claimed_size, claimed_path in variants:
                cases.append(
                    {
                        "root": root.hex(),
                        "leaf": leaf.hex(),
                        "index": claimed_index,
                        "size": claimed_size,
                        "path": [step.hex() for step in claimed_path],
                    }
                )
                expected.append(
                    python_inclusion(root, leaf, claimed_index, claimed_size, claimed_path)
                )
    answers = js.evaluate(
        """(cases) => Promise.all(cases.map(async (c) => {
            try {
                await v.verifyInclusion(v.fromHex(c.root), v.fromHex(c.leaf), c.index, c.size,
                                        c.path.map(v.fromHex));
                return true;
            } catch (error) { return false; }
        }))""",
        cases,
    )
    assert answers == expected
    # Every genuine proof holds; a path claimed for another size may hold too (the shape
    # ambiguity node.merkle documents: verifiers take the size from the header).
    assert all(expected[i] for i in genuine)
    assert expected.count(False) > len(expected) // 2


# --- state proofs ----------------------------------------------------------------------


def test_state_proofs_agree_on_inclusion_absence_and_tampering(js: Any) -> None:
    tree = SparseMerkleTree()
    values = {
        state_key_hash(f"asset/lot-{i}"): hashlib.sha256(f"v{i}".encode()).digest()
        for i in range(40)
    }
    root = tree.update(values)
    cases: list[dict[str, Any]] = []
    expected: list[bool] = []
    keys = [*list(values)[:12], *(state_key_hash(f"asset/absent-{i}") for i in range(8))]
    for key in keys:
        proof = tree.prove(key)
        claims: list[bytes | None] = [values.get(key), bytes(32) if key in values else None]
        if key not in values:
            claims.append(hashlib.sha256(b"made up").digest())
        for claim in claims:
            cases.append(
                {
                    "root": root.hex(),
                    "key": key.hex(),
                    "value": None if claim is None else claim.hex(),
                    "proof": proof.to_json(),
                }
            )
            try:
                verify_state_proof(root, key, claim, proof)
                expected.append(True)
            except ProofError:
                expected.append(False)
    answers = js.evaluate(
        """(cases) => Promise.all(cases.map(async (c) => {
            try {
                await v.verifyStateProof(v.fromHex(c.root), v.fromHex(c.key),
                    c.value === null ? null : v.fromHex(c.value), v.parseStateProof(c.proof));
                return true;
            } catch (error) { return false; }
        }))""",
        cases,
    )
    assert answers == expected
    assert True in expected and False in expected


# --- Ed25519 ----------------------------------------------------------------------


def test_ed25519_strict_verification_agrees_with_libsodium(js: Any) -> None:
    key = KeyPair.generate()
    message = {"chain_id": "coop", "height": 7, "round": 0, "block_hash": "ab" * 32}
    data = signing_bytes("precommit", message)
    signature = bytes.fromhex(key.sign("precommit", message))
    r, s = signature[:32], int.from_bytes(signature[32:], "little")
    other = KeyPair.generate()
    cases = [
        (key.public_key, signature.hex()),  # genuine
        (other.public_key, signature.hex()),  # another key
        (key.public_key, (signature[:-1] + bytes([signature[-1] ^ 1])).hex()),  # flipped bit
        (key.public_key, (r + (s + GROUP_L).to_bytes(32, "little")).hex()),  # S >= L
        ("00" * 32, signature.hex()),  # small-order public key
        ("01" + "00" * 31, signature.hex()),  # the identity point
        (key.public_key, ("01" + "00" * 31) + signature[32:].hex()),  # small-order R
        ("ed" + "ff" * 30 + "7f", signature.hex()),  # non-canonical key (y = p)
        (key.public_key, signature.hex()[:-2]),  # short signature
    ]
    expected = [verify_raw(pk, data, sig) for pk, sig in cases]
    assert expected[0] and not any(expected[1:])
    answers = js.evaluate(
        """([cases, message]) => Promise.all(cases.map(
            ([pk, sig]) => v.verifySigned("precommit", message, pk, sig)))""",
        [[list(c) for c in cases], message],
    )
    assert answers == expected


def test_small_order_list_matches_libsodium(js: Any) -> None:
    encodings: list[str] = js.evaluate(
        """() => [
            "0000000000000000000000000000000000000000000000000000000000000000",
            "0100000000000000000000000000000000000000000000000000000000000000",
            "26e8958fc2b227b045c3f489f2ef98f0d5dfac05d3c63339b13802886d53fc05",
            "c7176a703d4dd84fba3c0b760d10670f2a2053fa2c39ccc64ec7fd7792ac037a",
            "ecffffffffffffffffffffffffffffffffffffffffffffffffffffffffffff7f",
        ].filter((hex) => v.hasSmallOrder(v.fromHex(hex)))"""
    )
    assert len(encodings) == 5
    for encoding in encodings:
        # libsodium refuses each of them as a public key.
        assert not nacl.bindings.crypto_core_ed25519_is_valid_point(bytes.fromhex(encoding))
    # A genuine key is neither small-order nor non-canonical for the JavaScript checks.
    public_key = KeyPair.generate().public_key
    assert js.evaluate(
        "(pk) => !v.hasSmallOrder(v.fromHex(pk)) && v.isCanonicalPoint(v.fromHex(pk))",
        public_key,
    )
