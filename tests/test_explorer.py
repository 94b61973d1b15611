"""The explorer's router (in process): files from a fixed table, security headers, the
genesis convenience route behind a token, and nothing added to the REST API's OpenAPI."""

from __future__ import annotations

import re
from collections.abc import Iterator

import pytest
from test_gateway import TOKENS, Gateway, headers, make_gateway

from gateway.explorer import STATIC_DIR
from node.codec import canonical


@pytest.fixture
def gw() -> Iterator[Gateway]:
    yield from make_gateway()


def test_index_is_served_with_a_strict_content_security_policy(gw: Gateway) -> None:
    response = gw.http.get("/explorer/")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/html")
    policy = response.headers["content-security-policy"]
    assert "script-src 'self'" in policy
    assert "connect-src 'self'" in policy
    assert "unsafe-inline" not in policy
    assert response.headers["x-content-type-options"] == "nosniff"
    assert response.headers["referrer-policy"] == "no-referrer"
    # No script or style is inline (the policy would block it) and nothing leaves the origin.
    html = response.text
    assert "<script>" not in html and "<style" not in html
    assert not re.search(r"<[^>]*\son[a-z]+=", html)
    assert not re.search(r"(src|href)=\"(https?:)?//", html)


def test_bare_path_redirects_to_the_page(gw: Gateway) -> None:
    response = gw.http.get("/explorer", follow_redirects=False)
    assert response.status_code == 307
    assert response.headers["location"] == "/explorer/"


@pytest.mark.parametrize(
    ("name", "media_type"),
    [
        ("app.js", "text/javascript"),
        ("verifier.js", "text/javascript"),
        ("explorer.css", "text/css"),
        ("favicon.svg", "image/svg+xml"),
    ],
)
def test_static_files_have_their_media_type(gw: Gateway, name: str, media_type: str) -> None:
    response = gw.http.get(f"/explorer/{name}")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith(media_type)
    assert response.content == (STATIC_DIR / name).read_bytes()


@pytest.mark.parametrize(
    "path",
    [
        "/explorer/nope.js",
        "/explorer/..%2Fapp.py",
        "/explorer/%2E%2E%2F__init__.py",
        "/explorer/a/b",
    ],
)
def test_only_files_of_the_table_are_served(gw: Gateway, path: str) -> None:
    response = gw.http.get(path)
    assert response.status_code == 404
    assert response.headers["content-type"].startswith("application/problem+json")


def test_every_module_the_page_imports_is_served(gw: Gateway) -> None:
    for script in STATIC_DIR.glob("*.js"):
        for imported in re.findall(r'from "\./([a-z-]+\.js)"', script.read_text()):
            assert gw.http.get(f"/explorer/{imported}").status_code == 200, (script, imported)


def test_javascript_never_writes_html_from_data() -> None:
    for script in STATIC_DIR.glob("*.js"):
        text = script.read_text()
        for sink in ("innerHTML", "outerHTML", "insertAdjacentHTML", "document.write", "eval("):
            assert sink not in text, f"{script.name} uses {sink}"


def test_genesis_route_needs_a_token_and_serves_the_canonical_genesis(gw: Gateway) -> None:
    assert gw.http.get("/explorer/genesis.json").status_code == 401
    response = gw.http.get("/explorer/genesis.json", headers=headers(TOKENS["auditor"]))
    assert response.status_code == 200
    assert response.content == canonical(gw.consortium.genesis.to_json())


def test_explorer_routes_stay_out_of_the_rest_api_document(gw: Gateway) -> None:
    paths = gw.http.get("/openapi.json").json()["paths"]
    assert not [path for path in paths if path.startswith("/explorer")]
