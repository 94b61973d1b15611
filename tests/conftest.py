"""Shared fixtures: databases for the storage and node tests.

PostgreSQL tests run against the server named by ``COOPLEDGER_TEST_POSTGRES_URL`` (for
example ``postgresql+psycopg://postgres@127.0.0.1:5432/test``). Without that variable they
are skipped, unless ``COOPLEDGER_REQUIRE_POSTGRES=1`` (set by ``.ci/run``) says the server is
expected: then a missing variable or an unreachable server fails every PostgreSQL test with
a message that says so. Each test gets a fresh schema of its own, dropped afterwards, so
several test runs can share one server.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path

import pytest
from sqlalchemy import create_engine, make_url, text
from sqlalchemy.exc import SQLAlchemyError

from node.records import StateKey, StateValue
from node.storage import BlockStore, MemoryStore, SqlStore

POSTGRES_URL_VARIABLE = "COOPLEDGER_TEST_POSTGRES_URL"
REQUIRE_POSTGRES_VARIABLE = "COOPLEDGER_REQUIRE_POSTGRES"
POSTGRES_CONNECT_TIMEOUT_S = 5

TEST_CHAIN_ID = "coopledger-test"
TEST_GENESIS_HASH = "9e" * 32

StoreOpener = Callable[..., BlockStore]
"""``open_store(chain_id=..., genesis_hash=..., genesis_state=...)``; every argument has a
test default. SQL openers reopen the same database; the memory opener makes a new store."""


def _postgres_unavailable(reason: str) -> None:
    if os.environ.get(REQUIRE_POSTGRES_VARIABLE) == "1":
        pytest.fail(
            f"PostgreSQL is required ({REQUIRE_POSTGRES_VARIABLE}=1) but {reason}", pytrace=False
        )
    pytest.skip(f"PostgreSQL tests skipped: {reason}")


@pytest.fixture(scope="session")
def postgres_server_url() -> str:
    """The test server's URL, checked to answer; skips or fails (see module docstring)."""
    url = os.environ.get(POSTGRES_URL_VARIABLE)
    if not url:
        _postgres_unavailable(f"{POSTGRES_URL_VARIABLE} is not set")
        raise AssertionError("unreachable")
    engine = create_engine(url, connect_args={"connect_timeout": POSTGRES_CONNECT_TIMEOUT_S})
    try:
        with engine.connect() as conn:
            conn.execute(text("SELECT 1"))
    except SQLAlchemyError as error:
        shown = make_url(url).render_as_string(hide_password=True)
        _postgres_unavailable(f"the server at {shown} cannot be reached: {error}")
    finally:
        engine.dispose()
    return url


@pytest.fixture
def postgres_url(postgres_server_url: str) -> Iterator[str]:
    """A URL whose ``search_path`` is a fresh schema, dropped after the test."""
    schema = f"test_{uuid.uuid4().hex[:20]}"
    admin = create_engine(postgres_server_url, isolation_level="AUTOCOMMIT")
    try:
        with admin.connect() as conn:
            conn.execute(text(f'CREATE SCHEMA "{schema}"'))
        url = make_url(postgres_server_url).update_query_dict(
            {"options": f"-csearch_path={schema}"}
        )
        yield url.render_as_string(hide_password=False)
        with admin.connect() as conn:
            conn.execute(text(f'DROP SCHEMA "{schema}" CASCADE'))
    finally:
        admin.dispose()


@pytest.fixture
def sqlite_url(tmp_path: Path) -> str:
    return f"sqlite:///{tmp_path / 'ledger.sqlite'}"


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def sql_url(request: pytest.FixtureRequest) -> str:
    """A database URL, once for SQLite and once for PostgreSQL."""
    url: str = request.getfixturevalue(f"{request.param}_url")
    return url


@pytest.fixture(params=["memory", "sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def open_store(request: pytest.FixtureRequest) -> Iterator[StoreOpener]:
    """Opens stores of one backend (memory, SQLite, PostgreSQL); closes them afterwards."""
    url: str | None = None
    if request.param != "memory":
        url = request.getfixturevalue(f"{request.param}_url")
    opened: list[BlockStore] = []

    def open_(
        *,
        chain_id: str = TEST_CHAIN_ID,
        genesis_hash: str = TEST_GENESIS_HASH,
        genesis_state: Mapping[StateKey, StateValue] | None = None,
    ) -> BlockStore:
        store: BlockStore
        if url is None:
            store = MemoryStore(
                chain_id=chain_id, genesis_hash=genesis_hash, genesis_state=genesis_state
            )
        else:
            store = SqlStore(
                url, chain_id=chain_id, genesis_hash=genesis_hash, genesis_state=genesis_state
            )
        opened.append(store)
        return store

    yield open_
    for store in opened:
        store.close()
