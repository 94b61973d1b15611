"""The deployment artefacts in ``deploy/`` checked against the code they deploy.

No Docker engine runs where these tests run, so the image and the compose file are checked
statically, but against the real thing: every ``coopledger`` command line they contain is
parsed by the real CLI (and its options looked up in the real ``--help``), every node
configuration they mount is validated by :func:`node.config.parse_config`, and every file a
configuration names is found through the mounts in what ``deploy/compose/init.sh`` really
generates. The builder stage's install is reproduced from exactly the files it copies. The
systemd unit is parsed and, where ``systemd-analyze`` exists, verified by systemd itself.

The backup procedure of ``docs/deployment.md`` is proven on a live node: its documented
commands copy the database while the node commits, the node stops on SIGTERM within the
unit's ``TimeoutStopSec``, the copy's chain tip verifies against the genesis validators, and
the node starts again on the restored copy.
"""

from __future__ import annotations

import configparser
import json
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import threading
import time
import uuid
import zipfile
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any

import httpx
import pytest
import typer
import yaml
from sqlalchemy import create_engine, make_url, text
from tests_support import free_base_port

try:  # typer 0.2x vendors click as typer._click; older typer uses click itself.
    from typer._click.exceptions import UsageError
except ImportError:  # pragma: no cover
    from click.exceptions import UsageError

from gateway.auth import read_tokens, token_hash
from node.block import verify_commit
from node.cli import app as cli_app
from node.config import NodeConfig, load_config, parse_config
from node.genesis import Genesis, load_genesis
from node.keys import read_key_file
from node.storage import SqlStore
from node.testnet import generate

ROOT = Path(__file__).resolve().parent.parent
DEPLOY = ROOT / "deploy"
DOCKERFILE = DEPLOY / "Dockerfile"
COMPOSE = DEPLOY / "compose.yaml"
UNIT = DEPLOY / "coopledger-node.service"
HOST_CONFIG = DEPLOY / "node-config.example.json"
INIT_SCRIPT = DEPLOY / "compose" / "init.sh"
DEPLOYMENT_DOC = ROOT / "docs" / "deployment.md"
COOPLEDGER = Path(sys.executable).parent / "coopledger"
"""The venv's console script: the same entry point the image and the unit run."""

NODE_START_TIMEOUT_S = 60.0


# --- the CLI as the artefacts invoke it -------------------------------------------------------


def check_invocation(argv: list[str]) -> Any:
    """``argv`` (``coopledger SUBCOMMAND... OPTIONS``) names a real command and parses.

    The command path is followed through the real click tree, the remaining arguments are
    parsed by that command (unknown options, missing required ones and bad values fail),
    and each option is also looked up in the real ``coopledger ... --help`` output.
    """
    assert PurePosixPath(argv[0]).name == "coopledger", argv
    command = typer.main.get_command(cli_app)
    path: list[str] = []
    rest = list(argv[1:])
    while hasattr(command, "commands") and rest and rest[0] in command.commands:
        path.append(rest[0])
        command = command.commands[rest.pop(0)]
    assert not hasattr(command, "commands"), f"{argv}: {path} is a group, not a command"
    command.make_context(" ".join(["coopledger", *path]), list(rest))
    help_text = subprocess.run(
        [str(COOPLEDGER), *path, "--help"],
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
        env={**os.environ, "COLUMNS": "200", "NO_COLOR": "1", "TERM": "dumb"},
    ).stdout
    for argument in rest:
        if argument.startswith("--"):
            option = argument.split("=", 1)[0]
            assert re.search(rf"(?<![\w-]){re.escape(option)}(?![\w-])", help_text), (
                f"{option} is not in `coopledger {' '.join(path)} --help`"
            )
    return command


def option_value(argv: list[str], option: str) -> str:
    for index, argument in enumerate(argv):
        if argument == option:
            return argv[index + 1]
        if argument.startswith(option + "="):
            return argument.split("=", 1)[1]
    raise AssertionError(f"{option} not in {argv}")


def test_check_invocation_refuses_what_the_cli_does_not_have() -> None:
    with pytest.raises(UsageError):
        check_invocation(["coopledger", "node", "run", "--config", "c.json", "--no-such"])
    with pytest.raises(UsageError):
        check_invocation(["coopledger", "node", "run"])
    with pytest.raises(AssertionError):
        check_invocation(["coopledger", "node"])


# --- Dockerfile -------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Instruction:
    keyword: str
    arguments: str


@dataclass(slots=True)
class Stage:
    base: str
    name: str
    instructions: list[Instruction]

    def all(self, keyword: str) -> list[str]:
        return [i.arguments for i in self.instructions if i.keyword == keyword]

    def last(self, keyword: str) -> str:
        found = self.all(keyword)
        assert found, f"stage {self.name} has no {keyword}"
        return found[-1]


def parse_dockerfile(text_: str) -> tuple[dict[str, str], list[Stage]]:
    """Global ARG defaults and the stages, with continuation lines joined."""
    logical: list[str] = []
    pending = ""
    for raw in text_.splitlines():
        line = raw.strip()
        if not pending and (not line or line.startswith("#")):
            continue
        if line.startswith("#"):
            continue  # a comment inside a continued instruction
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        logical.append(pending + line)
        pending = ""
    assert not pending, "Dockerfile ends inside a continued instruction"
    arguments: dict[str, str] = {}
    stages: list[Stage] = []
    for line in logical:
        keyword, _, rest = line.partition(" ")
        instruction = Instruction(keyword.upper(), rest.strip())
        if instruction.keyword == "FROM":
            parts = instruction.arguments.split()
            base = parts[0]
            for name, value in arguments.items():
                base = base.replace("${" + name + "}", value)
            name = parts[2] if len(parts) == 3 and parts[1].upper() == "AS" else str(len(stages))
            stages.append(Stage(base, name, []))
        elif not stages and instruction.keyword == "ARG":
            name, _, value = instruction.arguments.partition("=")
            arguments[name] = value
        else:
            assert stages, f"{line!r} before the first FROM"
            stages[-1].instructions.append(instruction)
    return arguments, stages


def exec_form(arguments: str) -> list[str]:
    value = json.loads(arguments)
    assert isinstance(value, list) and all(isinstance(v, str) for v in value), arguments
    return value


@pytest.fixture(scope="module")
def dockerfile() -> dict[str, Stage]:
    _, stages = parse_dockerfile(DOCKERFILE.read_text())
    return {stage.name: stage for stage in stages}


def test_image_is_multi_stage_with_a_venv_builder_and_a_slim_runtime(
    dockerfile: dict[str, Stage],
) -> None:
    assert list(dockerfile) == ["builder", "runtime"]
    builder, runtime = dockerfile["builder"], dockerfile["runtime"]
    runs = " ".join(builder.all("RUN"))
    assert "python -m venv /opt/coopledger" in runs
    assert "/opt/coopledger/bin/python -m pip install ." in runs
    assert "slim" in runtime.base, runtime.base
    assert runtime.base.startswith("python:3.11"), "the Python the test suite runs on"
    copies = runtime.all("COPY")
    assert copies == ["--from=builder /opt/coopledger /opt/coopledger"], (
        "the runtime stage takes only the built environment: no sources, no secrets"
    )
    assert "/opt/coopledger/bin" in runtime.last("ENV").split("PATH=", 1)[1]


def test_image_runs_as_a_non_root_user(dockerfile: dict[str, Stage]) -> None:
    runtime = dockerfile["runtime"]
    user = runtime.last("USER").split(":")[0]
    assert user not in ("root", "0"), user
    useradd = " ".join(runtime.all("RUN"))
    match = re.search(rf"useradd .*--uid (\d+) .*\b{user}\b", useradd)
    assert match and int(match.group(1)) >= 1000, "a fixed, unprivileged uid"
    index = [i.keyword for i in runtime.instructions].index("USER")
    later = [i.keyword for i in runtime.instructions[index:]]
    assert "RUN" not in later, "nothing runs as root after USER (the user is the last word)"


def test_image_entrypoint_cmd_ports_and_healthcheck(dockerfile: dict[str, Stage]) -> None:
    runtime = dockerfile["runtime"]
    assert exec_form(runtime.last("ENTRYPOINT")) == ["coopledger"]
    check_invocation(["coopledger", *exec_form(runtime.last("CMD"))])
    assert set(" ".join(runtime.all("EXPOSE")).split()) == {"26600", "26601"}
    assert runtime.last("STOPSIGNAL") == "SIGTERM"
    healthcheck = runtime.last("HEALTHCHECK")
    options, _, command = healthcheck.partition("CMD ")
    assert "--interval=" in options and "--start-period=" in options
    argv = exec_form(command)
    assert argv[:2] == ["python", "-c"] and "/healthz" in argv[2]
    # The check itself is run against a live node in test_sqlite_online_backup_...


def test_image_is_built_from_the_whole_package_and_no_secret(dockerfile: dict[str, Stage]) -> None:
    builder = dockerfile["builder"]
    sources = set()
    for copy in builder.all("COPY"):
        parts = copy.split()
        assert not parts[0].startswith("--from"), copy
        for source in parts[:-1]:
            assert (ROOT / source).exists(), f"COPY {source}: not in the repository"
            sources.add(source)
    pyproject = (ROOT / "pyproject.toml").read_text()
    include = re.search(r"include = \[(.*?)\]", pyproject)
    assert include is not None
    packages = {name.strip(' "*') for name in include.group(1).split(",")}
    readme = re.search(r'^readme = "(.*)"', pyproject, re.MULTILINE)
    assert readme is not None
    assert sources == packages | {"pyproject.toml", readme.group(1)}
    ignored = (DEPLOY / "Dockerfile.dockerignore").read_text().split()
    assert ignored[ignored.index("*") - 1 :] and "*" in ignored, "a deny-all build context"
    for secret in ("**/keys", "**/tokens.json", "**/safety.json", "**/safety.[01]", "**/*.sqlite*"):
        assert secret in ignored, f"{secret} must stay out of the build context"


@pytest.mark.slow
def test_builder_stage_install_is_complete(dockerfile: dict[str, Stage], tmp_path: Path) -> None:
    """Build the wheel ``pip install .`` builds, from exactly the files the builder copies."""
    source = tmp_path / "src"
    source.mkdir()
    for copy in dockerfile["builder"].all("COPY"):
        *names, _ = copy.split()
        for name in names:
            origin = ROOT / name
            if origin.is_dir():
                shutil.copytree(origin, source / name, ignore=shutil.ignore_patterns("__pycache__"))
            else:
                shutil.copy2(origin, source / name)
    subprocess.run(
        [
            *(sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps"),
            *("--no-build-isolation", "--wheel-dir", str(tmp_path / "dist"), str(source)),
        ],
        check=True,
        capture_output=True,
        timeout=300,
    )
    (wheel,) = (tmp_path / "dist").glob("coopledger-*.whl")
    with zipfile.ZipFile(wheel) as archive:
        names = set(archive.namelist())
        entry_points = next(n for n in names if n.endswith("entry_points.txt"))
        assert "coopledger = node.cli:main" in archive.read(entry_points).decode()
    tracked = subprocess.run(
        ["git", "ls-files", "node", "consensus", "contracts", "gateway"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=True,
    ).stdout.split()
    # Every tracked file of the packages must be installed (package data such as the
    # contract artifacts or web assets included), except tools used only at build time.
    build_only = {"contracts/solc-wrapper.js"}
    missing = sorted(set(tracked) - build_only - names)
    assert not missing, f"the image would lack {missing}"


# --- compose ----------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Mount:
    source: str
    target: PurePosixPath
    read_only: bool


def mounts(service: dict[str, Any]) -> list[Mount]:
    found = []
    for volume in service.get("volumes", []):
        assert isinstance(volume, str), "short syntax only (SOURCE:TARGET[:ro])"
        parts = volume.split(":")
        assert len(parts) in (2, 3), volume
        read_only = len(parts) == 3 and parts[2] == "ro"
        found.append(Mount(parts[0], PurePosixPath(parts[1]), read_only))
    return found


def mount_of(service: dict[str, Any], path: Path | PurePosixPath) -> Mount:
    """The mount that holds the container path ``path`` (the innermost one)."""
    path = PurePosixPath(path)
    holding = [m for m in mounts(service) if path == m.target or m.target in path.parents]
    assert holding, f"{path} is not on any mount of the service"
    return max(holding, key=lambda m: len(m.target.parts))


def host_path(service: dict[str, Any], path: Path | PurePosixPath, state: Path) -> Path:
    """Where container path ``path`` is on the host (``./compose/state`` is at ``state``)."""
    mount = mount_of(service, path)
    relative = PurePosixPath(path).relative_to(mount.target)
    source = mount.source
    if source.startswith("./compose/state"):
        return state / source.removeprefix("./compose/state").lstrip("/") / relative
    assert source.startswith("./"), f"{source}: bind mounts of repository files only"
    return DEPLOY / source / relative


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    document = yaml.safe_load(COMPOSE.read_text())
    assert isinstance(document, dict)
    return document


def node_argv(service: dict[str, Any], dockerfile: dict[str, Stage]) -> list[str]:
    entrypoint = service.get("entrypoint") or exec_form(dockerfile["runtime"].last("ENTRYPOINT"))
    command = service.get("command") or exec_form(dockerfile["runtime"].last("CMD"))
    assert isinstance(command, list), "exec form, so no shell rewrites the arguments"
    return [*entrypoint, *command]


def validators(compose: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {name: s for name, s in compose["services"].items() if "build" in s}


def service_config(service: dict[str, Any], dockerfile: dict[str, Stage]) -> NodeConfig:
    """The node config the service runs with, validated at its path inside the container."""
    config_path = PurePosixPath(option_value(node_argv(service, dockerfile), "--config"))
    mount = mount_of(service, config_path)
    assert mount.read_only, "the node never writes its configuration"
    source = host_path(service, config_path, Path("/nonexistent"))
    return parse_config(json.loads(source.read_text()), Path(str(config_path)))


def test_compose_runs_four_validators_with_real_commands(
    compose: dict[str, Any], dockerfile: dict[str, Stage]
) -> None:
    nodes = validators(compose)
    assert sorted(nodes) == [f"validator-{n}" for n in range(4)]
    for name, service in nodes.items():
        assert service["build"] == {"context": "..", "dockerfile": "deploy/Dockerfile"}
        assert (DEPLOY / service["build"]["context"] / service["build"]["dockerfile"]).exists()
        argv = node_argv(service, dockerfile)
        assert argv[1:3] == ["node", "run"], name
        check_invocation(argv)
        config = service_config(service, dockerfile)
        assert config.validator_id == name
        # As compose interpolates it with COOPLEDGER_UID/GID unset: ${NAME:-default}.
        user = re.sub(r"\$\{\w+:-([^}]*)\}", r"\1", str(service["user"]))
        assert user == "10001:10001", "non-root by default, the image's uid"
        assert service["stop_signal"] == "SIGTERM"
        assert service["read_only"] is True and service["cap_drop"] == ["ALL"]


def test_compose_gives_each_validator_its_own_healthy_postgres(
    compose: dict[str, Any], dockerfile: dict[str, Stage]
) -> None:
    services = compose["services"]
    used: set[str] = set()
    for name, service in validators(compose).items():
        config = service_config(service, dockerfile)
        url = make_url(config.database)
        assert url.drivername == "postgresql+psycopg"
        assert url.password is None, "the password comes from PGPASSFILE, not the config"
        database = services[url.host]
        assert service["depends_on"] == {url.host: {"condition": "service_healthy"}}
        assert url.host not in used, f"{url.host} serves two validators"
        used.add(url.host)
        environment = database["environment"]
        assert (environment["POSTGRES_USER"], environment["POSTGRES_DB"]) == (
            url.username,
            url.database,
        )
        assert "pg_isready" in " ".join(database["healthcheck"]["test"])
        assert "ports" not in database, "PostgreSQL is never published"
        (network,) = database["networks"]
        assert compose["networks"][network] == {"internal": True}
        joined = [n for n, s in services.items() if network in s.get("networks", [])]
        assert sorted(joined) == sorted([name, url.host]), "only its validator reaches it"
        (volume,) = mounts(database)
        assert volume.source in compose["volumes"] and volume.source.startswith("postgres-")
        (secret,) = database["secrets"]
        assert environment["POSTGRES_PASSWORD_FILE"] == f"/run/secrets/{secret}"
    volumes = [mounts(services[host])[0].source for host in used]
    assert len(set(volumes)) == 4, "four databases, four volumes"


def test_compose_mounts_every_file_a_config_names(
    compose: dict[str, Any], dockerfile: dict[str, Stage]
) -> None:
    for name, service in validators(compose).items():
        config = service_config(service, dockerfile)
        readable = [config.key_file, config.genesis, *config.member_keys.values()]
        assert config.tokens_file is not None
        readable.append(config.tokens_file)
        for path in readable:
            assert mount_of(service, path).read_only, f"{name}: {path} must be mounted read-only"
        assert not mount_of(service, config.data_dir).read_only, f"{name}: data_dir writable"
        secrets = mount_of(service, config.key_file)
        assert secrets.source == f"./compose/state/{name}/secrets", "its own secrets only"
        passfile = PurePosixPath(service["environment"]["PGPASSFILE"])
        assert mount_of(service, passfile) == secrets


def test_compose_publishes_only_the_api_on_loopback_and_checks_health(
    compose: dict[str, Any], dockerfile: dict[str, Stage]
) -> None:
    exposed = set(" ".join(dockerfile["runtime"].all("EXPOSE")).split())
    for name, service in validators(compose).items():
        config = service_config(service, dockerfile)
        assert {str(config.peer_listen[1]), str(config.api_listen[1])} == exposed
        assert config.peer_listen[0] == config.api_listen[0] == "0.0.0.0"
        (published,) = service["ports"]
        host, _host_port, container_port = published.split(":")
        assert host == "127.0.0.1", f"{name}: the API is for a TLS proxy on the host"
        assert int(container_port) == config.api_listen[1]
        assert set(service["networks"]) == {"peers", f"db-{name.rsplit('-', 1)[1]}"}
        test_argv = service["healthcheck"]["test"]
        assert test_argv[0] == "CMD"
        assert f"http://127.0.0.1:{config.api_listen[1]}/healthz" in test_argv[-1]


def run_init(state: Path, shim_bin: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["bash", str(INIT_SCRIPT), str(state)],
        check=False,
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "PATH": f"{shim_bin}{os.pathsep}{os.environ['PATH']}"},
    )


@dataclass(frozen=True, slots=True)
class InitRun:
    state: Path
    invocations: list[list[str]]


@pytest.fixture(scope="module")
def compose_state(tmp_path_factory: pytest.TempPathFactory) -> InitRun:
    """Run init.sh for real, with a ``coopledger`` on PATH that records each command line
    and then runs the venv's real one."""
    directory = tmp_path_factory.mktemp("compose")
    shim_bin = directory / "bin"
    shim_bin.mkdir()
    log = directory / "invocations.jsonl"
    shim = shim_bin / "coopledger"
    shim.write_text(
        f"#!{sys.executable}\n"
        "import json, os, sys\n"
        f"with open({str(log)!r}, 'a') as log:\n"
        "    log.write(json.dumps(sys.argv[1:]) + '\\n')\n"
        f"os.execv({str(COOPLEDGER)!r}, ['coopledger', *sys.argv[1:]])\n"
    )
    shim.chmod(0o755)
    state = directory / "state"
    result = run_init(state, shim_bin)
    assert result.returncode == 0, result.stderr
    invocations = [json.loads(line) for line in log.read_text().splitlines()]
    again = run_init(state, shim_bin)
    assert again.returncode != 0 and "already holds a network" in again.stderr
    return InitRun(state, [["coopledger", *argv] for argv in invocations])


def test_init_script_uses_existing_commands_and_options(compose_state: InitRun) -> None:
    invocations = compose_state.invocations
    commands = {tuple(w for w in argv[1:3] if not w.startswith("-")) for argv in invocations}
    assert commands == {("keygen",), ("genesis", "create"), ("token", "add")}
    for argv in invocations:
        check_invocation(argv)
    (genesis_create,) = [argv for argv in invocations if argv[1:3] == ["genesis", "create"]]
    assert genesis_create.count("--validator") == 4


def test_init_script_output_is_what_the_compose_network_mounts(
    compose: dict[str, Any], dockerfile: dict[str, Stage], compose_state: InitRun
) -> None:
    state = compose_state.state
    genesis = load_genesis(state / "genesis.json")
    assert len(genesis.validators) == 4 and genesis.quorum == 3
    services = compose["services"]
    secrets = compose["secrets"]
    tokens_issued = [
        line.split("\t") for line in (state / "offline" / "tokens.tsv").read_text().splitlines()[1:]
    ]
    for name, service in validators(compose).items():
        config = service_config(service, dockerfile)
        validator = genesis.validator(name)
        assert validator is not None
        assert validator.address == f"{name}:{config.peer_listen[1]}", "the service's DNS name"
        host_genesis = host_path(service, config.genesis, state)
        assert load_genesis(host_genesis).hash == genesis.hash
        key = read_key_file(host_path(service, config.key_file, state))  # refuses mode > 0600
        assert (key.id, key.public_key) == (name, validator.public_key)
        for member_id, path in config.member_keys.items():
            member_key = read_key_file(host_path(service, path, state))
            (member,) = [m for m in genesis.members if m.id == member_id]
            assert member_key.public_key in member.public_keys
        assert config.tokens_file is not None
        entries = read_tokens(host_path(service, config.tokens_file, state))
        issued = {who: secret for node, who, secret in tokens_issued if node == name}
        assert {e.sha256 for e in entries} == {token_hash(s) for s in issued.values()}
        assert {e.member for e in entries if e.role == "member"} == set(config.member_keys)
        passfile = host_path(service, PurePosixPath(service["environment"]["PGPASSFILE"]), state)
        assert passfile.stat().st_mode & 0o077 == 0, "libpq ignores a pgpass open to others"
        url = make_url(config.database)
        host, port, database, user, password = passfile.read_text().strip().split(":")
        assert (host, int(port), database, user) == (url.host, 5432, url.database, url.username)
        (secret,) = services[url.host]["secrets"]
        secret_file = secrets[secret]["file"]
        assert host_path({"volumes": [f"{secret_file}:/s"]}, PurePosixPath("/s"), state)
        assert (state / secret_file.removeprefix("./compose/state/")).read_text() == password
        assert host_path(service, config.data_dir, state).is_dir()


@pytest.mark.slow
def test_init_script_network_commits_with_per_firm_tokens_and_keys(
    compose: dict[str, Any],
    dockerfile: dict[str, Stage],
    compose_state: InitRun,
    tmp_path: Path,
) -> None:
    """Run the compose network's four validators on loopback, from init.sh's secrets.

    Only what Docker provides is replaced: SQLite for each PostgreSQL, loopback ports for
    the service names (through the config's ``peers`` override) and host paths for mounts.
    """
    state = compose_state.state
    base = free_base_port(8)
    nodes = validators(compose)
    peers = {name: f"127.0.0.1:{base + 2 * n}" for n, name in enumerate(sorted(nodes))}
    processes: list[subprocess.Popen[bytes]] = []
    apis: dict[str, str] = {}
    try:
        for n, (name, service) in enumerate(sorted(nodes.items())):
            config = service_config(service, dockerfile)
            assert config.tokens_file is not None
            document = {
                "validator_id": name,
                "key_file": str(host_path(service, config.key_file, state)),
                "genesis": str(host_path(service, config.genesis, state)),
                "data_dir": str(tmp_path / name),
                "database": f"sqlite:///{tmp_path / name / 'ledger.sqlite'}",
                "peer_listen": peers[name],
                "api_listen": f"127.0.0.1:{base + 2 * n + 1}",
                "peers": {other: peers[other] for other in peers if other != name},
                "tokens_file": str(host_path(service, config.tokens_file, state)),
                "member_keys": {
                    m: str(host_path(service, p, state)) for m, p in config.member_keys.items()
                },
            }
            path = tmp_path / f"{name}.json"
            path.write_text(json.dumps(document))
            load_config(path)
            apis[name] = f"http://127.0.0.1:{base + 2 * n + 1}"
            processes.append(start(path, tmp_path / f"{name}.log"))
        issued = [
            line.split("\t")
            for line in (state / "offline" / "tokens.tsv").read_text().splitlines()[1:]
        ]
        for api in apis.values():
            wait_healthy(api)
        member = next((n, w.split()[1], s) for n, w, s in issued if w.startswith("member "))
        node, member_id, secret = member
        other = next(name for name in apis if name != node)
        headers = {"Authorization": f"Bearer {secret}"}
        asset = {"asset_id": "lot-1", "product": "gtin:1", "quantity": 5, "unit": "kg"}
        asset["origin"] = "CH"
        refused = httpx.post(f"{apis[other]}/v1/assets", json=asset, headers=headers, timeout=10)
        assert refused.status_code == 401, "a firm's token is known only to its own node"
        response = httpx.post(
            f"{apis[node]}/v1/assets",
            params={"wait": "commit"},
            json=asset,
            headers=headers,
            timeout=60,
        )
        assert response.status_code == 200, response.text
        assert response.json()["code"] == "ok"
        operator = {n: s for n, w, s in issued if w == "operator"}
        for name, api in apis.items():
            read = {"Authorization": f"Bearer {operator[name]}"}
            status = httpx.get(f"{api}/v1/assets/lot-1", headers=read, timeout=10)
            deadline = time.monotonic() + 30
            while status.status_code == 404 and time.monotonic() < deadline:
                time.sleep(0.2)
                status = httpx.get(f"{api}/v1/assets/lot-1", headers=read, timeout=10)
            assert status.status_code == 200 and status.json()["owner"] == member_id
    finally:
        for process in processes:
            stop(process)


# --- systemd ----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def unit() -> configparser.ConfigParser:
    parser = configparser.ConfigParser(
        strict=False, interpolation=None, empty_lines_in_values=False
    )
    parser.optionxform = str  # type: ignore[assignment,method-assign]
    parser.read_string(UNIT.read_text())
    return parser


def test_unit_runs_node_run_with_options_that_exist(unit: configparser.ConfigParser) -> None:
    service = unit["Service"]
    argv = shlex.split(service["ExecStart"])
    assert PurePosixPath(argv[0]) == PurePosixPath("/opt/coopledger/bin/coopledger")
    assert argv[1:3] == ["node", "run"]
    check_invocation(argv)
    config_path = PurePosixPath(option_value(argv, "--config"))
    assert config_path.parent == PurePosixPath("/etc/coopledger")
    config = parse_config(json.loads(HOST_CONFIG.read_text()), Path(str(config_path)))
    writable = [PurePosixPath(p) for p in service["ReadWritePaths"].split()]
    state = PurePosixPath("/var/lib") / service["StateDirectory"]
    assert state in writable
    database = PurePosixPath(config.database.removeprefix("sqlite:///"))
    for path in (PurePosixPath(config.data_dir), database):
        assert any(path == w or w in path.parents for w in writable), f"{path} is read-only"
    for path in (config.key_file, config.genesis, *config.member_keys.values()):
        assert PurePosixPath(path).is_relative_to("/etc/coopledger")
    assert config.api_listen[0] == "127.0.0.1", "the API only behind the TLS proxy"


def test_unit_is_unprivileged_hardened_and_stops_gracefully(
    unit: configparser.ConfigParser,
) -> None:
    service = unit["Service"]
    assert service["User"] not in ("root", "0") and service["User"] == service["Group"]
    assert service["Restart"] == "on-failure"
    assert service["KillSignal"] == "SIGTERM"
    assert timeout_stop_s(unit) >= 10
    for directive, value in {
        "NoNewPrivileges": "yes",
        "ProtectSystem": "strict",
        "ProtectHome": "yes",
        "PrivateTmp": "yes",
        "PrivateDevices": "yes",
        "CapabilityBoundingSet": "",
        "UMask": "0077",
        "StateDirectoryMode": "0700",
    }.items():
        assert service[directive] == value, directive
    assert unit["Install"]["WantedBy"] == "multi-user.target"


def timeout_stop_s(unit: configparser.ConfigParser) -> float:
    value = unit["Service"]["TimeoutStopSec"]
    match = re.fullmatch(r"(\d+)(s|min)?", value)
    assert match, value
    return int(match.group(1)) * (60 if match.group(2) == "min" else 1)


@pytest.mark.skipif(
    shutil.which("systemd-analyze") is None, reason="systemd-analyze is not installed here"
)
def test_unit_passes_systemd_analyze_verify(tmp_path: Path) -> None:
    """systemd's own parser: unknown directives and bad values are reported on stderr.

    The only change: ExecStart's binary is the venv's, since systemd checks that it exists.
    """
    text_ = UNIT.read_text().replace("/opt/coopledger/bin/coopledger", str(COOPLEDGER))
    copy = tmp_path / UNIT.name
    copy.write_text(text_)
    result = subprocess.run(
        ["systemd-analyze", "verify", str(copy)],
        check=False,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    assert result.stderr.strip() == "", result.stderr


# --- a live node: backups, health check, graceful stop, restore ---------------------------------


def start(config: Path, log: Path) -> subprocess.Popen[bytes]:
    """``coopledger node run --config FILE``: the unit's and the image's command."""
    with log.open("ab") as handle:
        return subprocess.Popen(
            [str(COOPLEDGER), "node", "run", "--config", str(config)],
            stdout=handle,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
        )


def stop(process: subprocess.Popen[bytes]) -> float:
    """SIGTERM; return how long the node took to exit (SIGKILL after the unit's timeout)."""
    if process.poll() is not None:
        return 0.0
    started = time.monotonic()
    process.send_signal(signal.SIGTERM)
    try:
        process.wait(timeout=30)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()
    return time.monotonic() - started


def wait_healthy(api: str, height: int = 0) -> int:
    deadline = time.monotonic() + NODE_START_TIMEOUT_S
    while time.monotonic() < deadline:
        try:
            response = httpx.get(f"{api}/healthz", timeout=2)
            if response.status_code == 200 and response.json()["height"] >= height:
                return int(response.json()["height"])
        except httpx.HTTPError:
            pass
        time.sleep(0.1)
    raise AssertionError(f"{api} not healthy at height {height} within {NODE_START_TIMEOUT_S} s")


def documented_commands(tool: str) -> list[list[str]]:
    """The command lines of docs/deployment.md that start with ``sudo -u coopledger TOOL``."""
    found = []
    for line in DEPLOYMENT_DOC.read_text().splitlines():
        words = shlex.split(line) if line.startswith("sudo -u coopledger ") else []
        if words[3:4] == [tool]:
            found.append(words[3:])
    assert found, f"docs/deployment.md shows no `sudo -u coopledger {tool} ...` command"
    return found


def substitute(argv: list[str], paths: dict[str, str]) -> list[str]:
    out = []
    for word in argv:
        replaced = word
        for documented, actual in paths.items():
            replaced = replaced.replace(documented, actual)
        out.append(replaced)
    return out


@dataclass(slots=True)
class SingleNode:
    directory: Path
    description: dict[str, Any]
    config_path: Path
    config: NodeConfig
    genesis: Genesis

    @property
    def api(self) -> str:
        return str(self.description["nodes"][0]["api"])

    @property
    def member(self) -> dict[str, Any]:
        return dict(self.description["members"][0])


@pytest.fixture
def single_node(tmp_path: Path) -> SingleNode:
    directory = tmp_path / "net"
    description = generate(directory, validators=1, base_port=free_base_port(2))
    config_path = directory / "validator-0" / "config.json"
    config = load_config(config_path)
    return SingleNode(directory, description, config_path, config, load_genesis(config.genesis))


class Writer:
    """Registers assets through the member's custodial API while a backup is taken."""

    def __init__(self, node: SingleNode) -> None:
        self.node = node
        self.stopping = threading.Event()
        self.committed = 0
        self.thread = threading.Thread(target=self.run, daemon=True)

    def run(self) -> None:
        token = self.node.member["token"]
        while not self.stopping.is_set():
            asset = {
                "asset_id": f"lot-{uuid.uuid4().hex[:12]}",
                "product": "gtin:07612345000019",
                "quantity": 10,
                "unit": "kg",
                "origin": "CH",
            }
            response = httpx.post(
                f"{self.node.api}/v1/assets",
                params={"wait": "commit"},
                json=asset,
                headers={"Authorization": f"Bearer {token}"},
                timeout=30,
            )
            assert response.status_code == 200, response.text
            self.committed += 1

    def __enter__(self) -> Writer:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stopping.set()
        self.thread.join(timeout=60)


def verified_tip(url: str, node: SingleNode) -> int:
    """Open a (restored) database as the node does and verify its tip's commit certificate."""
    store = SqlStore(url, chain_id=node.genesis.chain_id, genesis_hash=node.genesis.hash)
    try:
        tip = store.tip()
        assert tip is not None
        verify_commit(node.genesis, tip.commit, tip.block_hash, tip.height)
        for height in range(1, tip.height + 1):
            assert store.block(height) is not None, f"block {height} missing from the backup"
        return tip.height
    finally:
        store.close()


def run_healthcheck(dockerfile: dict[str, Stage], api_port: int) -> int:
    """The image's HEALTHCHECK command, run on this host against the node."""
    argv = exec_form(dockerfile["runtime"].last("HEALTHCHECK").split("CMD ", 1)[1])
    environment = {**os.environ, "COOPLEDGER_API_PORT": str(api_port)}
    argv[0] = sys.executable
    result = subprocess.run(argv, check=False, env=environment, capture_output=True, timeout=30)
    return result.returncode


@pytest.mark.slow
@pytest.mark.skipif(shutil.which("sqlite3") is None, reason="the sqlite3 CLI is not installed")
def test_sqlite_online_backup_of_a_live_node_verifies_and_restores(
    single_node: SingleNode,
    unit: configparser.ConfigParser,
    dockerfile: dict[str, Stage],
    tmp_path: Path,
) -> None:
    node = single_node
    database = node.config.database.removeprefix("sqlite:///")
    backups = {tool: tmp_path / f"backup-{tool}.sqlite" for tool in ("sqlite3", "python3")}
    log = node.directory / "validator-0" / "node.log"
    process = start(node.config_path, log)
    try:
        wait_healthy(node.api, height=1)
        assert run_healthcheck(dockerfile, node.config.api_listen[1]) == 0
        with Writer(node) as writer:
            deadline = time.monotonic() + 30
            while writer.committed < 5 and time.monotonic() < deadline:
                time.sleep(0.05)
            for tool, backup in backups.items():
                (command,) = documented_commands(tool)
                argv = substitute(
                    command,
                    {
                        "/var/lib/coopledger/ledger.sqlite": database,
                        "/var/backups/coopledger/ledger.sqlite": str(backup),
                    },
                )
                subprocess.run(argv, check=True, timeout=60, capture_output=True)
            assert process.poll() is None, "the node kept running through the backups"
        assert writer.committed >= 5
        live_height = wait_healthy(node.api)
    finally:
        stopped_in_s = stop(process)
    assert process.returncode == 0, "SIGTERM is a clean stop: Restart=on-failure leaves it"
    assert stopped_in_s < timeout_stop_s(unit), "stops well within TimeoutStopSec"
    assert run_healthcheck(dockerfile, node.config.api_listen[1]) != 0
    heights = {tool: verified_tip(f"sqlite:///{backup}", node) for tool, backup in backups.items()}
    assert all(1 <= h <= live_height for h in heights.values()), heights

    # Restore: the copy replaces the database (and its WAL); the node verifies the tip at
    # start and serves again. The safety record is the node's own, newer than the copy.
    for suffix in ("", "-wal", "-shm"):
        Path(database + suffix).unlink(missing_ok=True)
    shutil.copy2(backups["sqlite3"], database)
    process = start(node.config_path, log)
    try:
        assert wait_healthy(node.api, height=heights["sqlite3"]) >= heights["sqlite3"]
    finally:
        stop(process)
    assert "chain tip verified" in log.read_text()


@pytest.mark.slow
@pytest.mark.postgres
@pytest.mark.skipif(
    shutil.which("pg_dump") is None or shutil.which("pg_restore") is None,
    reason="pg_dump/pg_restore are not installed",
)
def test_pg_dump_of_a_live_node_restores(tmp_path: Path, postgres_server_url: str) -> None:
    chain_id = f"deploy-{uuid.uuid4().hex[:8]}"
    directory = tmp_path / "net"
    description = generate(
        directory,
        validators=1,
        base_port=free_base_port(2),
        db=postgres_server_url,
        chain_id=chain_id,
    )
    config_path = directory / "validator-0" / "config.json"
    config = load_config(config_path)
    node = SingleNode(directory, description, config_path, config, load_genesis(config.genesis))
    url = make_url(config.database)
    schema = str(url.query["options"]).removeprefix("-csearch_path=")
    libpq = url.difference_update_query(["options"]).set(drivername="postgresql")
    libpq_url = libpq.render_as_string(hide_password=False)
    dump = tmp_path / "ledger.pgdump"
    (dump_command,) = documented_commands("pg_dump")
    (restore_command,) = documented_commands("pg_restore")
    documented = {
        "postgresql://coopledger@127.0.0.1:5432/coopledger": libpq_url,
        "/var/backups/coopledger/ledger.pgdump": str(dump),
    }
    log = directory / "validator-0" / "node.log"
    admin = create_engine(libpq.set(drivername="postgresql+psycopg"), isolation_level="AUTOCOMMIT")
    process = start(config_path, log)
    try:
        wait_healthy(node.api, height=1)
        with Writer(node) as writer:
            deadline = time.monotonic() + 30
            while writer.committed < 5 and time.monotonic() < deadline:
                time.sleep(0.05)
            # The node's database is one schema of the test server: dump only that one.
            argv = [*substitute(dump_command, documented), f"--schema={schema}"]
            subprocess.run(argv, check=True, timeout=120, capture_output=True)
        stop(process)
        assert process.returncode == 0
        with admin.connect() as connection:
            connection.execute(text(f'DROP SCHEMA "{schema}" CASCADE'))
        subprocess.run(
            substitute(restore_command, documented), check=True, timeout=120, capture_output=True
        )
        height = verified_tip(config.database, node)
        process = start(config_path, log)
        assert wait_healthy(node.api, height=height) >= height
    finally:
        stop(process)
        with admin.connect() as connection:
            connection.execute(text(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE'))
        admin.dispose()


def test_readme_points_to_the_deployment_guide() -> None:
    assert "docs/deployment.md" in (ROOT / "README.md").read_text()
