"""A throwaway PostgreSQL server for tests, and pytest fixtures for a fresh database per test.

:func:`pg_server` (session scope) uses ``TEST_DATABASE_URL`` when it is set (a role that may create
databases), else starts a server of its own from PostgreSQL's server binaries (``initdb`` and
``pg_ctl`` on PATH or under ``/usr/lib/postgresql/<version>/bin``) in a temporary folder, listening
on a free loopback port only, with durability switched off for speed; it is stopped and removed at
the end of the session. ``initdb`` refuses to run as root: as root the server runs as the
``postgres`` system user (Debian's ``postgresql`` package creates it).

Without binaries or ``TEST_DATABASE_URL`` the PostgreSQL tests are skipped with one line saying how
to enable them, except under ``CI=true``, where that is a failure.

:func:`pg_url` (function scope) gives each test an empty database: one database of the session,
whose schema is dropped and created again before each test (much cheaper than a new database per
test). A test that needs a database of its own (to drop it, say) calls
:meth:`PgServer.create_database`.
"""

from __future__ import annotations

import asyncio
import itertools
import os
import pwd
import shutil
import socket
import subprocess
import tempfile
from collections.abc import Coroutine, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NoReturn, TypeVar
from urllib.parse import urlsplit, urlunsplit

import pytest

ENABLE_HINT = "install PostgreSQL server binaries (initdb, pg_ctl) or set TEST_DATABASE_URL"
START_TIMEOUT = 60  # seconds for pg_ctl to see the server accept connections
_T = TypeVar("_T")


class PostgresUnavailable(Exception):
    """No way to reach a PostgreSQL server for the tests."""


def _run_async(coro: Coroutine[Any, Any, _T]) -> _T:
    """Run ``coro`` to completion on an event loop of its own, in another thread (a sync fixture
    may be set up while a test's loop is running)."""
    with ThreadPoolExecutor(max_workers=1) as pool:
        return pool.submit(asyncio.run, coro).result()


async def _admin(url: str, *statements: str) -> None:
    import asyncpg  # noqa: PLC0415 - only the PostgreSQL tests need it

    conn = await asyncpg.connect(url, timeout=30)
    try:
        for statement in statements:
            await conn.execute(statement)
    finally:
        await conn.close()


def with_database(url: str, database: str) -> str:
    """``url`` with its database (the path) replaced by ``database``."""
    parts = urlsplit(url)
    return urlunsplit(parts._replace(path="/" + database))


def find_server_binaries() -> Path | None:
    """The folder holding ``initdb`` and ``pg_ctl``: from PATH, else Debian's newest version."""
    on_path = shutil.which("initdb")
    if on_path is not None:
        folder = Path(on_path).resolve().parent
        if (folder / "pg_ctl").is_file():
            return folder
    candidates = sorted(
        Path("/usr/lib/postgresql").glob("*/bin/initdb"),
        key=lambda p: int(p.parts[-3]) if p.parts[-3].isdigit() else 0,
    )
    for initdb in reversed(candidates):
        if (initdb.parent / "pg_ctl").is_file():
            return initdb.parent
    return None


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass
class PgServer:
    """A server the tests may create databases on (``admin_url`` names its maintenance db)."""

    admin_url: str
    _stop: list[Any] = field(default_factory=list)
    _names: Iterator[int] = field(default_factory=itertools.count)
    _shared: str | None = None

    def create_database(self) -> str:
        name = f"agent_relay_test_{os.getpid()}_{next(self._names)}"
        _run_async(_admin(self.admin_url, f'CREATE DATABASE "{name}"'))
        return with_database(self.admin_url, name)

    def fresh_database(self) -> str:
        """The session's test database, emptied: no schema objects, no other connections."""
        if self._shared is None:
            self._shared = self.create_database()
        name = urlsplit(self._shared).path.lstrip("/")
        _run_async(
            _admin(
                self._shared,
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity"
                f" WHERE datname = '{name}' AND pid <> pg_backend_pid()",
                "DROP SCHEMA IF EXISTS public CASCADE",
                "CREATE SCHEMA public",
            )
        )
        return self._shared

    def drop_database(self, url: str) -> None:
        name = urlsplit(url).path.lstrip("/")
        _run_async(_admin(self.admin_url, f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))

    def stop(self) -> None:
        """Drop the session's database (it may live on a server given by TEST_DATABASE_URL), then
        stop and remove a server of our own."""
        shared, self._shared = self._shared, None
        try:
            if shared is not None:
                self.drop_database(shared)
        finally:
            while self._stop:
                self._stop.pop()()


def _owner_kwargs() -> dict[str, Any]:
    """``subprocess`` arguments that run the server binaries as an unprivileged user when we are
    root (``initdb`` refuses root)."""
    if os.geteuid() != 0:
        return {}
    try:
        user = pwd.getpwnam("postgres")
    except KeyError:
        raise PostgresUnavailable(
            "running as root needs the 'postgres' system user to run the server"
        ) from None
    env = {**os.environ, "HOME": user.pw_dir, "USER": "postgres", "LOGNAME": "postgres"}
    return {"user": user.pw_uid, "group": user.pw_gid, "extra_groups": [], "env": env}


def start_server(binaries: Path) -> PgServer:
    """initdb a temporary cluster and start it on a free loopback port."""
    owner = _owner_kwargs()
    # Not under pytest's tmp_path: its folders are private to the user running the tests.
    root = Path(tempfile.mkdtemp(prefix="agent-relay-pg-"))
    server = PgServer(admin_url="")
    server._stop.append(lambda: shutil.rmtree(root, ignore_errors=True))
    try:
        if "user" in owner:
            os.chown(root, owner["user"], owner["group"])
        data, log = root / "data", root / "server.log"
        subprocess.run(
            [
                str(binaries / "initdb"),
                "--pgdata",
                str(data),
                "--username",
                "postgres",
                "--auth",
                "trust",
                "--encoding",
                "UTF8",
                "--locale",
                "C",
                "--no-sync",
            ],
            check=True,
            capture_output=True,
            cwd=root,
            **owner,
        )
        pg_ctl = [str(binaries / "pg_ctl"), "--pgdata", str(data)]
        for _ in range(3):  # another process may take the free port before the server binds it
            port = _free_port()
            with (data / "postgresql.conf").open("a", encoding="utf-8") as conf:
                conf.write(
                    f"\nlisten_addresses = '127.0.0.1'\nport = {port}\nunix_socket_directories = ''\n"
                    "fsync = off\nsynchronous_commit = off\nfull_page_writes = off\n"
                    "max_connections = 300\n"
                )
            started = subprocess.run(
                [*pg_ctl, "--log", str(log), "--wait", "--timeout", str(START_TIMEOUT), "start"],
                check=False,
                capture_output=True,
                cwd=root,
                **owner,
            )
            if started.returncode == 0:
                break
        else:
            tail = log.read_text(errors="replace")[-2000:] if log.exists() else ""
            raise RuntimeError(f"PostgreSQL did not start: {started.stderr.decode(errors='replace')}\n{tail}")
        stop = [*pg_ctl, "--mode", "immediate", "--wait", "stop"]
        server._stop.append(lambda: subprocess.run(stop, check=False, capture_output=True, cwd=root, **owner))
        server.admin_url = f"postgresql://postgres@127.0.0.1:{port}/postgres"
    except BaseException:
        server.stop()
        raise
    return server


def open_server() -> PgServer:
    """The server to test on, or :class:`PostgresUnavailable`."""
    try:
        import asyncpg  # noqa: F401, PLC0415 - the postgres extra
    except ImportError:
        raise PostgresUnavailable("asyncpg is not installed (the postgres extra)") from None
    url = os.environ.get("TEST_DATABASE_URL", "").strip()
    if url:
        return PgServer(admin_url=url)
    binaries = find_server_binaries()
    if binaries is None:
        raise PostgresUnavailable("no PostgreSQL server binaries found")
    return start_server(binaries)


def unavailable(exc: PostgresUnavailable) -> NoReturn:
    """Skip the PostgreSQL tests with one line saying how to enable them; fail them in CI."""
    if os.environ.get("CI") == "true":
        pytest.fail(f"PostgreSQL tests cannot run in CI: {exc}; {ENABLE_HINT}")
    pytest.skip(f"PostgreSQL tests skipped ({exc}): {ENABLE_HINT}")


@pytest.fixture(scope="session")
def pg_server() -> Iterator[PgServer]:
    try:
        server = open_server()
    except PostgresUnavailable as exc:
        unavailable(exc)
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def pg_url(pg_server: PgServer) -> str:
    """The URL of an empty database, for this test alone."""
    return pg_server.fresh_database()
