"""``DATABASE_URL`` parsing of :func:`storage.open_store`."""

from __future__ import annotations

from pathlib import Path

import pytest

from storage import StoreError, open_store
from storage.factory import redact_url
from storage.sqlite import SQLiteStore


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
        "postgresql+asyncpg://relay:s3cr3t-pw@db.internal/relay",
    ],
)
def test_postgres_is_refused_without_echoing_the_password(url: str) -> None:
    with pytest.raises(StoreError) as caught:
        open_store(url)

    assert str(caught.value) == "PostgreSQL is not supported yet: use a sqlite:/// DATABASE_URL"
    assert "s3cr3t-pw" not in str(caught.value)


@pytest.mark.parametrize(
    "url",
    [
        "mysql://relay:s3cr3t-pw@db.internal/relay",
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
