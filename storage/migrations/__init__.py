"""A small schema migration runner.

Migrations are SQL files shipped as package data in ``storage/migrations/<dialect>/``, named
``NNNN_description.sql`` and numbered from 1 without gaps. The database records the number of the
last applied file in ``schema_version`` (one row). Each file is applied, and the version bumped, in
one transaction, so a failed migration leaves the previous schema in place and running the
migrations again is harmless.
"""

from __future__ import annotations

import re
import sqlite3
from dataclasses import dataclass
from importlib import resources

import aiosqlite

from storage.base import StoreError

_FILE_NAME = re.compile(r"^(?P<version>\d{4})_[A-Za-z0-9_-]+\.sql$")


@dataclass(frozen=True, slots=True)
class Migration:
    version: int
    name: str  # file name, for error messages
    sql: str


def load_migrations(dialect: str = "sqlite") -> list[Migration]:
    """The migrations of ``dialect`` in version order, read with :mod:`importlib.resources`."""
    root = resources.files(f"storage.migrations.{dialect}")
    migrations: list[Migration] = []
    for entry in root.iterdir():
        match = _FILE_NAME.match(entry.name)
        if match is None:
            continue
        migrations.append(Migration(int(match["version"]), entry.name, entry.read_text(encoding="utf-8")))
    migrations.sort(key=lambda m: m.version)
    expected = list(range(1, len(migrations) + 1))
    if [m.version for m in migrations] != expected:
        names = ", ".join(m.name for m in migrations)
        raise StoreError(f"{dialect} migrations must be numbered 1, 2, 3, ... without gaps: {names}")
    return migrations


def split_statements(sql: str) -> list[str]:
    """Split a SQL script into complete statements, respecting strings, comments and triggers."""
    statements: list[str] = []
    buffer = ""
    *pieces, tail = sql.split(";")
    for piece in pieces:
        buffer += piece + ";"
        if sqlite3.complete_statement(buffer):
            statements.append(buffer.strip())
            buffer = ""
    buffer = (buffer + tail).strip()
    if buffer:
        statements.append(buffer)
    return statements


async def _create_version_table(conn: aiosqlite.Connection) -> None:
    await conn.execute("BEGIN IMMEDIATE")
    try:
        await conn.execute(
            "CREATE TABLE IF NOT EXISTS schema_version ("
            " id INTEGER PRIMARY KEY CHECK (id = 1),"
            " version INTEGER NOT NULL)"
        )
        await conn.execute("INSERT INTO schema_version (id, version) VALUES (1, 0) ON CONFLICT DO NOTHING")
        await conn.execute("COMMIT")
    except BaseException:
        await conn.rollback()
        raise


async def current_version(conn: aiosqlite.Connection) -> int:
    """The last applied migration number (0 for a database without any)."""
    rows = list(await conn.execute_fetchall("SELECT version FROM schema_version WHERE id = 1"))
    return int(rows[0][0]) if rows else 0


async def apply_migrations(conn: aiosqlite.Connection, migrations: list[Migration] | None = None) -> int:
    """Apply every migration newer than the database's version; return the resulting version.

    ``conn`` must be in autocommit mode (``isolation_level=None``): the runner opens its own
    ``BEGIN IMMEDIATE`` transactions, and checks the version again inside each one, so that two
    processes starting on the same file do not apply a migration twice.
    """
    if migrations is None:
        migrations = load_migrations("sqlite")
    latest = migrations[-1].version if migrations else 0
    await _create_version_table(conn)
    version = await current_version(conn)
    if version > latest:
        raise StoreError(
            f"the database schema is at version {version}, newer than this agent-relay knows "
            f"(up to {latest}); upgrade agent-relay"
        )
    for migration in migrations:
        if migration.version <= version:
            continue
        await conn.execute("BEGIN IMMEDIATE")
        try:
            version = await current_version(conn)
            if migration.version <= version:  # another process applied it meanwhile
                await conn.execute("COMMIT")
                continue
            for statement in split_statements(migration.sql):
                await conn.execute(statement)
            await conn.execute("UPDATE schema_version SET version = ? WHERE id = 1", (migration.version,))
            await conn.execute("COMMIT")
        except sqlite3.Error as exc:
            await conn.rollback()
            raise StoreError(f"migration {migration.name} failed: {exc}") from exc
        except BaseException:
            await conn.rollback()
            raise
        version = migration.version
    return version
