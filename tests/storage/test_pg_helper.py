"""The PostgreSQL test-server helper: when it skips, when it fails, where it finds the binaries."""

from __future__ import annotations

import pytest

from tests import pg


def test_without_server_binaries_or_url_the_server_is_unavailable(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("TEST_DATABASE_URL", raising=False)
    monkeypatch.setattr(pg, "find_server_binaries", lambda: None)

    with pytest.raises(pg.PostgresUnavailable, match="no PostgreSQL server binaries"):
        pg.open_server()


def test_test_database_url_is_used_as_it_is(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TEST_DATABASE_URL", "postgresql://ci@db.test:5432/postgres")
    monkeypatch.setattr(pg, "find_server_binaries", lambda: pytest.fail("must not look for binaries"))

    server = pg.open_server()

    assert server.admin_url == "postgresql://ci@db.test:5432/postgres"
    assert pg.with_database(server.admin_url, "x") == "postgresql://ci@db.test:5432/x"


def test_unavailable_is_a_skip_saying_how_to_enable(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("CI", raising=False)

    with pytest.raises(pytest.skip.Exception) as caught:
        pg.unavailable(pg.PostgresUnavailable("no PostgreSQL server binaries found"))

    assert "install PostgreSQL server binaries (initdb, pg_ctl) or set TEST_DATABASE_URL" in str(caught.value)
    assert "\n" not in str(caught.value)


def test_unavailable_in_ci_is_a_failure(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CI", "true")

    with pytest.raises(pytest.fail.Exception, match="cannot run in CI"):
        pg.unavailable(pg.PostgresUnavailable("no PostgreSQL server binaries found"))


def test_server_binaries_are_found_on_this_machine_when_installed() -> None:
    found = pg.find_server_binaries()
    if found is None:
        pytest.skip("no PostgreSQL server binaries here")  # the CI case is covered by pg_server
    assert (found / "initdb").is_file()
    assert (found / "pg_ctl").is_file()
