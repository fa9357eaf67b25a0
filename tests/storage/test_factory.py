"""``DATABASE_URL`` parsing of :func:`storage.open_store`."""

from __future__ import annotations

import socket
import sys
from pathlib import Path
from urllib.parse import urlsplit

import pytest

from storage import StoreError, open_store
from storage._common import redact_url
from storage.postgres import PostgresStore
from storage.sqlite import SQLiteStore
from tests.pg import with_database


def sqlite_path(url: str) -> str | Path:
    store = open_store(url)
    assert isinstance(store, SQLiteStore)
    return store.path


@pytest.mark.parametrize(
    ("url", "path"),
    [
        ("sqlite:///relative/path.db", Path("relative/path.db")),
        ("sqlite:///relay.db", Path("relay.db")),
        ("sqlite:////absolute/path.db", Path("/absolute/path.db")),
        ("SQLite:////absolute/path.db", Path("/absolute/path.db")),
        ("sqlite:///with%20space.db", Path("with space.db")),
        ("sqlite:///:memory:", ":memory:"),
        ("data/relay.db", Path("data/relay.db")),
        ("/var/lib/agent-relay/relay.db", Path("/var/lib/agent-relay/relay.db")),
        ("  sqlite:///relay.db \n", Path("relay.db")),
    ],
)
def test_sqlite_urls(url: str, path: str | Path) -> None:
    assert sqlite_path(url) == path


def test_home_is_expanded_in_a_bare_path(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("HOME", str(tmp_path))

    assert sqlite_path("~/relay.db") == tmp_path / "relay.db"


async def test_relative_url_opens_a_file_under_the_working_directory(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.chdir(tmp_path)
    store = open_store("sqlite:///data/relay.db")
    await store.init()
    try:
        assert await store.claim("k", "v") is True
    finally:
        await store.close()

    assert (tmp_path / "data" / "relay.db").is_file()


@pytest.mark.parametrize(
    "url",
    [
        "postgres://relay:s3cr3t-pw@db.internal:5432/relay",
        "postgresql://relay:s3cr3t-pw@db.internal/relay",
        "PostgreSQL://relay@db.internal/relay?sslmode=require",
        "  postgresql://db.internal/relay\n",
    ],
)
def test_postgres_urls_open_the_postgres_store(url: str) -> None:
    store = open_store(url)

    assert isinstance(store, PostgresStore)
    assert store.url == url.strip()


async def test_postgres_errors_never_show_the_password() -> None:
    with socket.socket() as sock:  # a loopback port that nothing listens on
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    store = open_store(f"postgresql://relay:s3cr3t-pw@127.0.0.1:{port}/relay")

    with pytest.raises(StoreError) as caught:
        await store.init()

    message = str(caught.value)
    assert "cannot open the PostgreSQL database" in message
    assert f"postgresql://***@127.0.0.1:{port}/relay" in message
    assert "s3cr3t-pw" not in message
    assert caught.value.__cause__ is None
    assert caught.value.__suppress_context__ is True  # the driver's exception is not printed


async def test_postgres_server_errors_never_show_the_password(pg_url: str) -> None:
    parts = urlsplit(with_database(pg_url, "no_such_database"))
    url = parts._replace(netloc=f"postgres:pa%40ss-s3cr3t@{parts.hostname}:{parts.port}").geturl()
    store = open_store(url)

    with pytest.raises(StoreError) as caught:
        await store.init()

    assert "no_such_database" in str(caught.value)
    assert "s3cr3t" not in str(caught.value)


def test_postgres_without_asyncpg_names_the_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "asyncpg", None)  # import asyncpg now raises ImportError
    monkeypatch.delitem(sys.modules, "storage.postgres")

    with pytest.raises(StoreError) as caught:
        open_store("postgresql://relay:s3cr3t-pw@db.internal/relay")

    assert "install agent-relay[postgres]" in str(caught.value)
    assert "s3cr3t-pw" not in str(caught.value)
    # SQLite needs no asyncpg.
    assert isinstance(open_store("sqlite:///:memory:"), SQLiteStore)


@pytest.mark.parametrize(
    "url",
    [
        "mysql://relay:s3cr3t-pw@db.internal/relay",
        "postgresql+asyncpg://relay:s3cr3t-pw@db.internal/relay",
        "postgresql:relay",
        "redis://:s3cr3t-pw@cache:6379/0",
        "sqlite://relay:s3cr3t-pw@host/relay.db",
        "sqlite:relay.db",
        "sqlite://relay.db",
        "sqlite:///",
        "sqlite:///relay.db?mode=ro",
        "",
        "   ",
    ],
)
def test_other_urls_are_refused_naming_the_accepted_forms(url: str) -> None:
    with pytest.raises(StoreError) as caught:
        open_store(url)

    message = str(caught.value)
    assert "sqlite:///relative/path.db" in message
    assert "sqlite:////absolute/path.db" in message
    assert "sqlite:///:memory:" in message
    assert "postgresql://user:password@host:5432/database" in message
    assert "s3cr3t-pw" not in message


@pytest.mark.parametrize(
    ("url", "shown"),
    [
        ("mysql://user:pw@host/db", "mysql://***@host/db"),
        ("mysql://user:p@ss/w@rd@host/db", "mysql://***@host/db"),
        ("mysql://host/db", "mysql://host/db"),
        ("user:pw@host", "user:***@host"),
    ],
)
def test_redact_url(url: str, shown: str) -> None:
    assert redact_url(url) == shown
