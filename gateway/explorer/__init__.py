"""The explorer web page every node serves under ``/explorer/`` (docs/explorer.md).

Plain HTML, CSS and JavaScript modules from ``static/``: no build step, nothing fetched from
a CDN, so it works on a consortium network without internet access. The page signs in with
an API token and calls the ``/v1/...`` REST routes itself; the audit bundle verifier
(``static/verifier.js``) runs in the browser against a genesis file the auditor loads, so the
node serving the page is not trusted for the verdict.

Files are served from a fixed table built at import (never a path taken from the request),
with a Content-Security-Policy that allows scripts, styles and connections to this origin
only: no inline script can run, which backs up the page's rule of building the DOM with
``textContent`` from user-supplied ids and observation data.
"""

from __future__ import annotations

from pathlib import Path

from fastapi import APIRouter
from fastapi.responses import RedirectResponse, Response

from gateway.deps import CurrentPrincipal, Services
from gateway.problems import ApiProblem
from node.codec import canonical

STATIC_DIR = Path(__file__).parent / "static"

_MEDIA_TYPES = {
    ".html": "text/html; charset=utf-8",
    ".js": "text/javascript; charset=utf-8",
    ".css": "text/css; charset=utf-8",
    ".svg": "image/svg+xml",
}

SECURITY_HEADERS = {
    "Content-Security-Policy": (
        "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
        "connect-src 'self'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'"
    ),
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-cache",
}


def _load_files() -> dict[str, tuple[bytes, str]]:
    files: dict[str, tuple[bytes, str]] = {}
    for path in sorted(STATIC_DIR.iterdir()):
        media_type = _MEDIA_TYPES.get(path.suffix)
        if media_type is not None and path.is_file():
            files[path.name] = (path.read_bytes(), media_type)
    return files


_FILES = _load_files()

router = APIRouter(prefix="/explorer", tags=["explorer"], include_in_schema=False)


def _file_response(name: str) -> Response:
    found = _FILES.get(name)
    if found is None:
        raise ApiProblem(404, "not-found", f"no explorer file {name}")
    content, media_type = found
    return Response(content, media_type=media_type, headers=SECURITY_HEADERS)


@router.get("")
async def explorer_root() -> RedirectResponse:
    return RedirectResponse("/explorer/", status_code=307)


@router.get("/")
async def explorer_index() -> Response:
    """The page itself; it signs in with a token and then reads ``/v1/...``."""
    return _file_response("index.html")


@router.get("/genesis.json")
async def explorer_genesis(principal: CurrentPrincipal, services: Services) -> Response:
    """This node's genesis, canonical JSON (the bytes ``coopledger testnet`` writes, without
    the final newline). A convenience only: a verdict based on it trusts this node, which is
    why the page asks the auditor to load the consortium's genesis file instead."""
    body = canonical(services.ledger.genesis.to_json())
    return Response(body, media_type="application/json", headers={"Cache-Control": "no-store"})


@router.get("/{name}")
async def explorer_file(name: str) -> Response:
    """A static file of the page (scripts, style sheet), from the table built at import."""
    return _file_response(name)
