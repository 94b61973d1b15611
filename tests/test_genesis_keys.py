"""Genesis and key files: valid files load; every bad field is named; the CLI writes both."""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from node import files
from node.consortium import make_consortium
from node.errors import ConfigError
from node.genesis import load_genesis, parse_genesis, quorum, write_genesis
from node.keys import generate_key_file, read_key_file, write_key_file


def good() -> dict[str, Any]:
    return make_consortium().genesis.to_json()


def test_quorum_is_more_than_two_thirds() -> None:
    assert [quorum(n) for n in (1, 3, 4, 5, 6, 7, 10)] == [1, 3, 3, 4, 5, 5, 7]
    for n in range(1, 101):
        assert 3 * quorum(n) > 2 * n and 3 * (quorum(n) - 1) <= 2 * n


def test_round_trip(tmp_path: Path) -> None:
    genesis = parse_genesis(good())
    write_genesis(tmp_path / "g.json", genesis)
    assert load_genesis(tmp_path / "g.json") == genesis
    assert genesis.hash == load_genesis(tmp_path / "g.json").hash


def mutate(path: list[Any], value: Any) -> dict[str, Any]:
    document = good()
    target: Any = document
    for step in path[:-1]:
        target = target[step]
    if value is KeyError:
        del target[path[-1]]
    else:
        target[path[-1]] = value
    return document


@pytest.mark.parametrize(
    ("path", "value", "field", "problem"),
    [
        (["chain_id"], "bad id!", "chain_id", "may contain only"),
        (["genesis_time_ms"], -1, "genesis_time_ms", "between"),
        (["validators", 2, "public_key"], "zz", "validators[2].public_key", "64 lowercase hex"),
        (["validators", 1, "address"], "nohost", "validators[1].address", "host:port"),
        (["validators", 1, "address"], "h:99999", "validators[1].address", "1..65535"),
        (["validators", 3, "extra"], 1, "validators[3].extra", "unknown field"),
        (["members", 0, "roles", 0], "king", "members[0].roles[0]", "must be one of"),
        (["members", 1, "public_keys"], [], "members[1].public_keys", "1..8 keys"),
        (["members", 2, "name"], KeyError, "members[2].name", "missing"),
        (["params", "block_txs_max"], 0, "params.block_txs_max", "between"),
        (["params", "speed"], 1, "params.speed", "unknown parameter"),
        (["validators"], [], "validators", "1..100"),
    ],
)
def test_bad_genesis_names_the_field(path: list[Any], value: Any, field: str, problem: str) -> None:
    with pytest.raises(ConfigError) as caught:
        parse_genesis(mutate(path, value), "genesis.json")
    assert caught.value.field == field
    assert problem in caught.value.problem


def test_duplicates_are_refused() -> None:
    document = good()
    document["validators"][1]["id"] = document["validators"][0]["id"]
    with pytest.raises(ConfigError, match=r"validators\[1\]\.id: duplicate"):
        parse_genesis(document)
    document = good()
    document["members"][1]["public_keys"] = document["members"][0]["public_keys"]
    with pytest.raises(ConfigError, match=r"members\[1\]\.public_keys: key already used"):
        parse_genesis(document)


def test_genesis_file_errors(tmp_path: Path) -> None:
    path = tmp_path / "g.json"
    path.write_text('{"chain_id": 1.5}')
    with pytest.raises(ConfigError, match="floats are not allowed"):
        load_genesis(path)
    with pytest.raises(ConfigError, match="cannot read"):
        load_genesis(tmp_path / "missing.json")


def test_key_file_round_trip_and_permissions(tmp_path: Path) -> None:
    key = generate_key_file("alpine-cheese")
    path = tmp_path / "k.json"
    write_key_file(path, key)
    assert os.stat(path).st_mode & 0o777 == 0o600
    assert read_key_file(path) == key
    with pytest.raises(ConfigError, match="refusing to overwrite"):
        write_key_file(path, generate_key_file("other"))
    os.chmod(path, 0o644)
    with pytest.raises(ConfigError, match="too open"):
        read_key_file(path)


@pytest.mark.parametrize(
    ("change", "field"),
    [
        ({"public_key": "00" * 32}, "public_key"),
        ({"private_key": "xyz"}, "private_key"),
        ({"id": "../etc"}, "id"),
        ({"extra": 1}, "extra"),
    ],
)
def test_bad_key_files_name_the_field(tmp_path: Path, change: dict[str, Any], field: str) -> None:
    document = {**generate_key_file("m1").to_json(), **change}
    path = tmp_path / "k.json"
    path.write_text(json.dumps(document))
    os.chmod(path, 0o600)
    with pytest.raises(ConfigError) as caught:
        read_key_file(path)
    assert caught.value.field == field


def run_cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", "from node.cli import main; main()", *args],
        capture_output=True,
        text=True,
        check=False,
    )


def test_cli_keygen_and_genesis(tmp_path: Path) -> None:
    for name in ("v0", "v1", "v2", "v3", "firm-a", "supplier-b"):
        result = run_cli("keygen", "--id", name, "--out", str(tmp_path / f"{name}.key"))
        assert result.returncode == 0, result.stderr
    args = ["genesis", "create", "--chain-id", "coop-test", "--out", str(tmp_path / "g.json")]
    for i in range(4):
        args += ["--validator", f"{tmp_path / f'v{i}.key'}=127.0.0.1:{27000 + i}"]
    args += ["--member", f"{tmp_path / 'firm-a.key'}=member=Firm A"]
    args += ["--member", f"{tmp_path / 'supplier-b.key'}=supplier,carrier=Supplier B"]
    result = run_cli(*args)
    assert result.returncode == 0, result.stderr
    genesis = load_genesis(tmp_path / "g.json")
    assert [m.id for m in genesis.members] == ["firm-a", "supplier-b"]
    assert genesis.members[1].roles == ("carrier", "supplier")
    assert genesis.quorum == 3
    checked = run_cli("genesis", "check", str(tmp_path / "g.json"))
    assert checked.returncode == 0 and "quorum 3 of 4" in checked.stdout


def test_cli_reports_bad_input_without_traceback(tmp_path: Path) -> None:
    (tmp_path / "g.json").write_text('{"chain_id": "x"}')
    result = run_cli("genesis", "check", str(tmp_path / "g.json"))
    assert result.returncode == 2
    assert "genesis_time_ms: missing" in result.stderr
    assert "Traceback" not in result.stderr


def test_cli_genesis_from_public_keys_only(tmp_path: Path) -> None:
    """Firms keep their private keys: the genesis is made from `ID:PUBLIC_KEY` they send."""
    shared = []
    for name in ("v0", "v1", "v2", "v3", "firm-a"):
        result = run_cli("keygen", "--id", name, "--out", str(tmp_path / f"{name}.key"))
        assert result.returncode == 0, result.stderr
        line = next(line for line in result.stdout.splitlines() if line.startswith(f"{name}:"))
        shared.append(line.strip())
    args = ["genesis", "create", "--chain-id", "coop-pub", "--out", str(tmp_path / "g.json")]
    for i, identity in enumerate(shared[:4]):
        args += ["--validator", f"{identity}=10.0.0.{i + 1}:26600"]
    args += ["--member", f"{shared[4]}=member,carrier=Firm A"]
    result = run_cli(*args)
    assert result.returncode == 0, result.stderr
    genesis = load_genesis(tmp_path / "g.json")
    assert genesis.members[0].public_keys[0] == read_key_file(tmp_path / "firm-a.key").public_key
    assert genesis.validators[2].address == "10.0.0.3:26600"
    bad = run_cli(
        "genesis",
        "create",
        "--chain-id",
        "c",
        "--out",
        str(tmp_path / "x.json"),
        "--validator",
        "v9:" + "00" * 32 + "=h:1",
        "--member",
        f"{shared[4]}=member=A",
    )
    assert bad.returncode == 2 and "public key" in bad.stderr


def test_write_atomically_replaces_whole_and_makes_the_rename_durable(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    target = tmp_path / "secret.json"
    target.write_bytes(b"old")
    synced: list[str] = []
    fsync = os.fsync

    def recording(fd: int) -> None:
        synced.append("directory" if stat.S_ISDIR(os.fstat(fd).st_mode) else "file")
        fsync(fd)

    monkeypatch.setattr(os, "fsync", recording)
    files.write_atomically(target, b"new")
    assert target.read_bytes() == b"new"
    assert stat.S_IMODE(target.stat().st_mode) == 0o600
    # The contents before the rename, the directory (the rename itself) after it.
    assert synced == ["file", "directory"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["secret.json"]


def test_write_atomically_that_fails_leaves_the_old_file_and_no_temporary(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    target = tmp_path / "tokens.json"
    target.write_bytes(b"old")

    def failing(source: str, destination: Path) -> None:
        raise OSError("disk full")

    monkeypatch.setattr(os, "replace", failing)
    with pytest.raises(OSError, match="disk full"):
        files.write_atomically(target, b"new")
    assert target.read_bytes() == b"old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["tokens.json"]
