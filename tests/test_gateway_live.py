"""The gateway over real HTTP on a real network: role matrix, attacks, audit CLI, fuzzing.

A module-scoped 4-validator testnet (the processes `coopledger testnet up` starts, each with
its consensus, storage, peers and gateway) serves every test here. The cases are the same
functions as the in-process tests (tests/test_gateway.py), which take only a base URL,
tokens and keys. The nodes' auth-failure limit is raised in their configs so the fuzzer's
bad-token cases do not lock it out after 20 tries; the limiter itself is tested in
tests/test_gateway.py.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
from test_gateway import MEMBER_A, MEMBER_B, Ctx, check_matrix, run_attacks
from tests_support import free_base_port

from node.crypto import KeyPair
from node.keys import read_key_file
from node.testnet import (
    generate,
    start_node,
    stop_node,
    wait_started,
    write_description,
)

pytestmark = pytest.mark.slow


@dataclass(frozen=True)
class LiveNode:
    api: str
    apis: list[str]
    chain_id: str
    genesis: Path
    tokens: dict[str, str | None]
    keys: dict[str, KeyPair]


@pytest.fixture(scope="module")
def live(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveNode]:
    directory = tmp_path_factory.mktemp("live")
    description = generate(directory, validators=4, base_port=free_base_port(8))
    for node in description["nodes"]:
        config_path = directory / node["name"] / "config.json"
        config = json.loads(config_path.read_text())
        config["auth_failures_max"] = 1_000_000
        config_path.write_text(json.dumps(config))
    for node in description["nodes"]:
        node["pid"] = start_node(directory, node["name"])
    write_description(directory, description)
    try:
        apis = [node["api"] for node in description["nodes"]]
        wait_started(directory, description)
        members = {m["id"]: m for m in description["members"]}
        yield LiveNode(
            api=apis[1],
            apis=apis,
            chain_id=description["chain_id"],
            genesis=Path(description["genesis"]),
            tokens={
                "member_a": members[MEMBER_A]["token"],
                "member_b": members[MEMBER_B]["token"],
                "auditor": description["auditor_token"],
                "operator": description["operator_token"],
                "none": None,
            },
            keys={
                member_id: read_key_file(Path(member["key_file"])).key_pair
                for member_id, member in members.items()
            },
        )
    finally:
        for node in description["nodes"]:
            stop_node(int(node["pid"]))


def live_ctx(node: LiveNode, http: httpx.Client, tag: str) -> Ctx:
    return Ctx(
        http=http,
        tokens=node.tokens,
        chain_id=node.chain_id,
        key_a=node.keys[MEMBER_A],
        key_b=node.keys[MEMBER_B],
        now_ms=lambda: time.time_ns() // 1_000_000,
        tag=tag,
    )


def test_role_matrix_over_http(live: LiveNode) -> None:
    with httpx.Client(base_url=live.api, timeout=30) as http:
        check_matrix(live_ctx(live, http, "matrix"))


def test_attacks_over_http(live: LiveNode) -> None:
    with httpx.Client(base_url=live.api, timeout=30) as http:
        run_attacks(live_ctx(live, http, "attack"))
        assert http.get("/healthz").json()["status"] == "ok"


def cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "node", *args],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
        env={"COLUMNS": "200", "PATH": "/usr/bin:/bin"},
    )


def test_auditor_fetches_and_verifies_a_bundle_with_the_cli(live: LiveNode, tmp_path: Path) -> None:
    member = {"Authorization": f"Bearer {live.tokens['member_a']}"}
    with httpx.Client(base_url=live.api, timeout=30) as http:
        for path, body in (
            (
                "/v1/assets",
                {
                    "asset_id": "cli-lot",
                    "product": "Gruyère",
                    "quantity": 40,
                    "unit": "kg",
                    "origin": "Fribourg",
                },
            ),
            ("/v1/assets/cli-lot/observations", {"kind": "temperature", "data": {"c": 4}}),
            (
                "/v1/shipments",
                {"shipment_id": "cli-ship", "asset_ids": ["cli-lot"], "to": MEMBER_B},
            ),
        ):
            response = http.post(f"{path}?wait=commit", json=body, headers=member)
            assert response.json()["code"] == "ok", response.text
    bundle = tmp_path / "bundle.json"
    fetched = cli(
        "audit",
        "bundle",
        "--node",
        live.api,
        "--token",
        str(live.tokens["auditor"]),
        "--asset",
        "cli-lot",
        "--out",
        str(bundle),
    )
    assert fetched.returncode == 0, fetched.stderr
    verified = cli("audit", "verify", str(bundle), "--genesis", str(live.genesis))
    assert verified.returncode == 0, verified.stderr
    assert "verified" in verified.stdout and "shipment.create" in verified.stdout
    document = json.loads(bundle.read_text())
    document["entries"].pop(1)
    bundle.write_text(json.dumps(document))
    forged = cli("audit", "verify", str(bundle), "--genesis", str(live.genesis))
    assert forged.returncode == 2
    assert "incomplete or altered" in forged.stderr


def test_schemathesis_finds_no_server_errors_or_schema_violations(live: LiveNode) -> None:
    """Fuzz every operation of a live validator's /openapi.json (fixed seed, small budget).

    ``positive_data_acceptance`` is left out: a schema-valid envelope with a random
    signature is rightly refused (422 bad-signature), which that check counts as a failure.
    """
    result = subprocess.run(
        [
            str(Path(sys.executable).with_name("schemathesis")),
            "run",
            f"{live.apis[2]}/openapi.json",
            "--header",
            f"Authorization: Bearer {live.tokens['member_a']}",
            "--checks",
            "all",
            "--exclude-checks",
            "positive_data_acceptance",
            "--max-examples",
            "10",
            "--seed",
            "20261124",
            "--no-color",
        ],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert result.returncode == 0, result.stdout[-6000:]
    assert "24 selected" in result.stdout
    for api in live.apis:
        assert httpx.get(f"{api}/healthz", timeout=5).json()["status"] == "ok"
