"""The explorer in headless Chromium against a live 4-validator network.

A module fixture starts the network (the processes `coopledger testnet up` starts) and posts
a story through the REST API: flour and milk registered by two firms, the milk shipped to
the shared carrier and on to the bakery, both received, flour and milk transformed into
bread, the bread observed; and a joint purchase with commitments. The tests then drive the
page as a user would: sign in, look at the network, the bread's timeline and lineage (and
click through to an input and back), verify the bundle in the browser against the genesis
file, and see tampered bundles fail with the reason. Screenshots go to
``test-artifacts/explorer/``.

Debian's ``chromium`` is driven by Playwright through ``executable_path`` (scripts/bootstrap.sh
installs both; ``playwright install`` is never run).
"""

from __future__ import annotations

import json
import re
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
from tests_support import free_base_port

from node.testnet import generate, start_node, stop_node, wait_started

pytestmark = pytest.mark.slow

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
ARTIFACTS = Path(__file__).resolve().parent.parent / "test-artifacts" / "explorer"
TIMEOUT_MS = 20_000

MILK, FLOUR, BREAD, PURCHASE = "milk-0414", "flour-0414", "bread-0414", "oat-milk-q2"
HOSTILE = '<img src=x onerror="window.pwned=1">'


def require_browser() -> Any:
    """The Playwright module, or a failure that says how to install what is missing."""
    if not CHROMIUM.exists():
        pytest.fail("/usr/bin/chromium is missing: run scripts/bootstrap.sh (apt-get chromium)")
    try:
        from playwright import sync_api  # noqa: PLC0415 - only the browser tests need it
    except ImportError:
        pytest.fail("playwright is missing: run scripts/bootstrap.sh (pip install -e '.[dev]')")
    return sync_api


@dataclass(frozen=True)
class Story:
    api: str
    genesis: Path
    auditor_token: str
    tx_ids: dict[str, str]


def post(http: httpx.Client, token: str, path: str, body: dict[str, Any]) -> dict[str, Any]:
    response = http.post(
        f"{path}?wait=commit", json=body, headers={"Authorization": f"Bearer {token}"}
    )
    assert response.status_code == 200, response.text
    receipt: dict[str, Any] = response.json()
    assert receipt["code"] == "ok", receipt
    return receipt


def post_story(api: str, tokens: dict[str, str]) -> dict[str, str]:
    """Flour + milk -> carrier -> bakery -> bread, an observation, and a joint purchase."""
    alpine, bakery, freight = (
        tokens["alpine-cheese"],
        tokens["valley-bakery"],
        tokens["shared-freight"],
    )
    done: dict[str, str] = {}
    with httpx.Client(base_url=api, timeout=30) as http:

        def step(name: str, token: str, path: str, body: dict[str, Any]) -> None:
            done[name] = post(http, token, path, body)["tx_id"]

        step(
            "milk",
            alpine,
            "/v1/assets",
            {
                "asset_id": MILK,
                "product": "Raw milk",
                "quantity": 400,
                "unit": "l",
                "origin": "Alpine pasture, CH",
                "metadata": {"fat_permille": 38},
            },
        )
        step(
            "flour",
            bakery,
            "/v1/assets",
            {
                "asset_id": FLOUR,
                "product": "Rye flour",
                "quantity": 120,
                "unit": "kg",
                "origin": "Valley mill",
            },
        )
        step(
            "ship-1",
            alpine,
            "/v1/shipments",
            {
                "shipment_id": "ship-0414-a",
                "asset_ids": [MILK],
                "to": "shared-freight",
            },
        )
        step("receive-1", freight, "/v1/shipments/ship-0414-a/receive", {})
        step(
            "observe-milk",
            freight,
            f"/v1/assets/{MILK}/observations",
            {
                "kind": "temperature",
                "data": {"celsius": 4, "probe": "truck-7", "note": HOSTILE},
            },
        )
        step(
            "ship-2",
            freight,
            "/v1/shipments",
            {
                "shipment_id": "ship-0414-b",
                "asset_ids": [MILK],
                "to": "valley-bakery",
            },
        )
        step("receive-2", bakery, "/v1/shipments/ship-0414-b/receive", {})
        step(
            "transform",
            bakery,
            f"/v1/assets/{FLOUR}/transform",
            {
                "additional_inputs": [MILK],
                "outputs": [
                    {
                        "asset_id": BREAD,
                        "product": "Milk rye bread",
                        "quantity": 300,
                        "unit": "loaf",
                    }
                ],
            },
        )
        step(
            "observe-bread",
            bakery,
            f"/v1/assets/{BREAD}/observations",
            {
                "kind": "inspection",
                "data": {"result": "pass", "inspector": "Q. Baker", "line": "≠ U+2028:\u2028 end"},
            },
        )
        deadline_ms = time.time_ns() // 1_000_000 + 3_600_000
        step(
            "purchase",
            tokens["bean-and-leaf"],
            "/v1/purchases",
            {
                "purchase_id": PURCHASE,
                "supplier": "dairy-direct",
                "item": "Oat milk",
                "unit": "l",
                "tiers": [
                    {"min_quantity": 100, "unit_price": 210},
                    {"min_quantity": 300, "unit_price": 180},
                    {"min_quantity": 600, "unit_price": 150},
                ],
                "min_total": 100,
                "deadline_ms": deadline_ms,
            },
        )
        for member_id, quantity in (
            ("bean-and-leaf", 200),
            ("alpine-cheese", 150),
            ("valley-bakery", 50),
        ):
            step(
                f"commit-{member_id}",
                tokens[member_id],
                f"/v1/purchases/{PURCHASE}/commitments",
                {"quantity": quantity},
            )
    return done


@pytest.fixture(scope="module")
def story(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Story]:
    require_browser()
    directory = tmp_path_factory.mktemp("explorer")
    description = generate(directory, validators=4, base_port=free_base_port(8))
    for node in description["nodes"]:
        node["pid"] = start_node(directory, node["name"])
    try:
        apis = [node["api"] for node in description["nodes"]]
        wait_started(directory, description)
        tokens = {member["id"]: member["token"] for member in description["members"]}
        tx_ids = post_story(apis[0], tokens)
        # The page is read from another node than the one written to: any node serves it.
        yield Story(apis[2], Path(description["genesis"]), description["auditor_token"], tx_ids)
    finally:
        for node in description["nodes"]:
            stop_node(int(node["pid"]))


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    sync_api = require_browser()
    with sync_api.sync_playwright() as playwright:
        chromium = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        try:
            yield chromium
        finally:
            chromium.close()


@pytest.fixture
def page(browser: Any, story: Story) -> Iterator[Any]:
    context = browser.new_context(viewport={"width": 1280, "height": 900})
    page = context.new_page()
    page.set_default_timeout(TIMEOUT_MS)
    errors: list[str] = []
    page.on("pageerror", lambda error: errors.append(str(error)))
    yield page
    context.close()
    assert not errors, errors


def shot(page: Any, name: str, *, full_page: bool = True) -> None:
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / f"{name}.png"), full_page=full_page)


def sign_in(page: Any, story: Story, route: str = "#/network") -> None:
    page.goto(f"{story.api}/explorer/{route}")
    page.get_by_label("API token").fill(story.auditor_token)
    page.get_by_role("button", name="Sign in").click()
    page.locator("#nav").wait_for(state="visible")


def open_asset(page: Any, story: Story, asset_id: str) -> None:
    page.goto(f"{story.api}/explorer/#/asset/{asset_id}")
    page.locator(".timeline").wait_for()


# --- sign-in and network ----------------------------------------------------------------------


def test_sign_in_refuses_a_bad_token_and_shows_the_network(page: Any, story: Story) -> None:
    page.goto(f"{story.api}/explorer/")
    page.get_by_label("API token").fill("coop_not-a-token")
    page.get_by_role("button", name="Sign in").click()
    expect = require_browser().expect
    expect(page.locator("#sign-in-error")).to_contain_text("not accepted")
    shot(page, "01-sign-in", full_page=False)
    sign_in(page, story)
    expect(page.get_by_role("heading", name="Network", level=1)).to_be_visible()
    rows = page.locator("table:has(caption:text('genesis validator')) tbody tr")
    expect(rows).to_have_count(4)
    expect(page.locator("main")).to_contain_text("this node")
    expect(page.get_by_role("link", name=re.compile(r"^Block \d+$")).first).to_be_visible()
    # The token never appears in the URL, and it stays in this tab only.
    assert story.auditor_token not in page.url
    assert page.evaluate("localStorage.length") == 0
    shot(page, "02-network")


# --- the asset: timeline, paths, lineage ---------------------------------------------------------


def test_asset_timeline_paths_and_lineage_both_ways(page: Any, story: Story) -> None:
    expect = require_browser().expect
    sign_in(page, story, f"#/asset/{BREAD}")
    page.locator(".timeline").wait_for()
    expect(page.get_by_role("heading", level=1)).to_have_text(f"Milk rye bread · {BREAD}")
    events = page.locator(".timeline .event")
    expect(events).to_have_count(2)
    expect(events.nth(0)).to_contain_text("Transformed")
    expect(events.nth(1)).to_contain_text("Observation")
    expect(events.nth(1)).to_contain_text("inspection")
    expect(events.nth(1)).to_contain_text("Q. Baker")
    lineage = page.get_by_role("group", name="Lineage graph, oldest inputs first")
    expect(lineage).to_contain_text("Made from")
    expect(lineage.get_by_role("link", name=f"Rye flour, asset {FLOUR}")).to_be_visible()
    shot(page, "03-asset-bread")

    # To an input: its history shows both hand-overs through the carrier, and the hostile
    # observation text is shown as text, never run as markup.
    lineage.get_by_role("link", name=f"Raw milk, asset {MILK}").click()
    expect(page.get_by_role("heading", level=1)).to_have_text(f"Raw milk · {MILK}")
    milk_events = page.locator(".timeline .event")
    expect(milk_events).to_have_count(7)
    types = [milk_events.nth(i).get_attribute("data-type") for i in range(7)]
    assert types == [
        "asset.register",
        "shipment.create",
        "shipment.receive",
        "asset.observe",
        "shipment.create",
        "shipment.receive",
        "asset.transform",
    ]
    custody = page.get_by_role("list", name="Custody path")
    expect(custody.locator("li")).to_have_count(5)
    expect(custody).to_contain_text("Shared Freight Carriers")
    expect(custody.locator("li").last).to_contain_text("Valley Bakery")
    expect(milk_events.nth(3)).to_contain_text(HOSTILE)
    assert page.locator(".timeline img").count() == 0
    assert page.evaluate("window.pwned") is None
    expect(page.get_by_role("group", name="Lineage graph, oldest inputs first")).to_contain_text(
        "Became"
    )
    shot(page, "04-asset-milk")

    # And back, from the input to what it became.
    page.get_by_role("link", name=f"Milk rye bread, asset {BREAD}").click()
    expect(page.get_by_role("heading", level=1)).to_have_text(f"Milk rye bread · {BREAD}")


# --- verification in the browser ---------------------------------------------------------------


def load_genesis_file(page: Any, story: Story) -> None:
    page.get_by_label("Genesis file (trusted)").set_input_files(str(story.genesis))
    require_browser().expect(page.locator("#genesis-summary")).to_contain_text("Loaded from file")


def verify(page: Any) -> Any:
    page.get_by_role("button", name="Verify audit bundle").click()
    verdict = page.locator("#verdict")
    verdict.wait_for()
    return verdict


def test_verification_in_the_browser_succeeds_with_the_checklist(page: Any, story: Story) -> None:
    expect = require_browser().expect
    sign_in(page, story, f"#/asset/{BREAD}")
    page.locator(".timeline").wait_for()
    load_genesis_file(page, story)
    verdict = verify(page)
    expect(verdict).to_have_class(re.compile(r"\bok\b"))
    expect(verdict).to_contain_text("Verified")
    expect(verdict).to_contain_text("and the history of the 2 input assets it was made from")
    checklist = page.get_by_role("list", name="What was verified")
    expect(checklist.locator("li.passed")).to_have_count(8)
    expect(checklist).to_contain_text("precommit signatures checked; quorum 3 of 4 validators")
    expect(checklist).to_contain_text(f"{BREAD}, {FLOUR}, {MILK}")
    expect(page.locator(".timeline .badge:text('verified')")).to_have_count(2)
    shot(page, "05-verified")


def drop_bread_observation(bundle: dict[str, Any]) -> str:
    bundle["entries"] = [
        e
        for e in bundle["entries"]
        if not (
            e["tx"]["body"]["type"] == "asset.observe"
            and e["tx"]["body"]["payload"]["asset_id"] == BREAD
        )
    ]
    return f"history of {BREAD} incomplete or altered"


def flip_commit_signature(bundle: dict[str, Any]) -> str:
    signature = bundle["blocks"][0]["commit"]["signatures"][0]
    signature["signature"] = ("1" if signature["signature"][0] == "0" else "0") + signature[
        "signature"
    ][1:]
    return f"bad signature by {signature['validator']}"


def alter_observation(bundle: dict[str, Any]) -> str:
    for entry in bundle["entries"]:
        if entry["tx"]["body"]["type"] == "asset.observe":
            entry["tx"]["body"]["payload"]["data"]["celsius"] = 3
            return "the transaction is not genuine: signature does not verify"
    raise AssertionError("no observation in the bundle")


def alter_asset_record(bundle: dict[str, Any]) -> str:
    bundle["state"]["proofs"][0]["value"]["owner"] = "bean-and-leaf"
    return "record is not in block"


STAGES = ["format", "blocks", "commits", "transactions", "inclusion", "state", "assets", "chains"]
"""The checklist of the page, in order (verifier.js CHECKS)."""


@pytest.mark.parametrize(
    ("tamper", "stage"),
    [
        (drop_bread_observation, "chains"),
        (flip_commit_signature, "commits"),
        (alter_observation, "transactions"),
        (alter_asset_record, "state"),
    ],
)
def test_a_tampered_bundle_fails_with_the_reason(
    page: Any, story: Story, tamper: Callable[[dict[str, Any]], str], stage: str
) -> None:
    expect = require_browser().expect
    reasons: list[str] = []

    def intercept(route: Any) -> None:
        response = route.fetch()
        bundle = json.loads(response.body())
        reasons.append(tamper(bundle))
        route.fulfill(response=response, body=json.dumps(bundle))

    page.route("**/v1/audit/bundle?*", intercept)
    sign_in(page, story, f"#/asset/{BREAD}")
    page.locator(".timeline").wait_for()
    load_genesis_file(page, story)
    verdict = verify(page)
    expect(verdict).to_have_class(re.compile(r"\bbad\b"))
    expect(verdict).to_contain_text("Verification failed")
    expect(verdict).to_contain_text(reasons[0])
    failed = page.locator(f"#checklist li[data-check='{stage}']")
    expect(failed).to_have_class("failed")
    expect(page.locator("#checklist li.passed")).to_have_count(STAGES.index(stage))
    if tamper is drop_bread_observation:
        shot(page, "06-tampered")


# --- block, transaction and purchase pages ---------------------------------------------


def test_block_and_transaction_pages_show_checked_commit_signatures(
    page: Any, story: Story
) -> None:
    expect = require_browser().expect
    sign_in(page, story, f"#/asset/{BREAD}")
    page.locator(".timeline").wait_for()
    load_genesis_file(page, story)
    page.get_by_role("link", name=f"Transaction {story.tx_ids['transform']}").click()
    expect(page.get_by_role("heading", level=1)).to_have_text("Transaction asset.transform")
    expect(page.locator("main")).to_contain_text("valid precommit signatures of 4 genesis")
    page.get_by_role("link", name=re.compile(r"^Block \d+$")).first.click()
    expect(page.get_by_role("heading", level=1)).to_contain_text("Block")
    signatures = page.locator("table:has(caption:text('precommit signatures')) tbody tr")
    expect(signatures.first).to_be_visible()
    count = signatures.count()
    assert count >= 3
    expect(page.locator("table .badge:text('valid')")).to_have_count(count)
    expect(page.locator("main")).to_contain_text("asset.transform")
    shot(page, "07-block")


def test_purchase_page_shows_tiers_and_costs(page: Any, story: Story) -> None:
    expect = require_browser().expect
    sign_in(page, story, f"#/purchase/{PURCHASE}")
    expect(page.get_by_role("heading", level=1)).to_have_text(f"Joint purchase {PURCHASE}")
    reached = page.locator("tr[aria-current='true']")
    expect(reached).to_contain_text("300 l")
    expect(reached).to_contain_text("tier reached")
    costs = page.locator("table:has(caption:text('each participant pays')) tbody tr")
    expect(costs).to_have_count(3)
    expect(costs.filter(has_text="Bean & Leaf Coffee")).to_contain_text("36,000 minor units")
    expect(costs.filter(has_text="Valley Bakery")).to_contain_text("9,000 minor units")
    shot(page, "08-purchase")


# --- phone width ---------------------------------------------------------------------------------


def test_phone_width_has_no_horizontal_scroll(browser: Any, story: Story) -> None:
    expect = require_browser().expect
    context = browser.new_context(
        viewport={"width": 390, "height": 844},
        device_scale_factor=2,
        is_mobile=True,
        has_touch=True,
    )
    page = context.new_page()
    page.set_default_timeout(TIMEOUT_MS)

    def assert_fits(route: str) -> None:
        width = page.evaluate("document.documentElement.scrollWidth")
        assert width <= 390, f"{route} is {width} px wide on a 390 px screen"

    try:
        sign_in(page, story, f"#/asset/{MILK}")
        page.locator(".timeline").wait_for()
        load_genesis_file(page, story)
        page.evaluate("window.scrollTo(0, 0)")
        shot(page, "10-phone-asset", full_page=False)
        expect(verify(page)).to_contain_text("Verified")
        assert_fits("the asset page")
        page.locator("#verdict").scroll_into_view_if_needed()
        shot(page, "11-phone-verified", full_page=False)
        page.locator(".timeline").scroll_into_view_if_needed()
        shot(page, "12-phone-timeline", full_page=False)
        for route, name in (("#/network", "09-phone-network"), (f"#/purchase/{PURCHASE}", "")):
            page.goto(f"{story.api}/explorer/{route}")
            page.locator("#view h1").wait_for()
            assert_fits(route)
            if name:
                shot(page, name, full_page=False)
    finally:
        context.close()
