"""Pick a :class:`storage.base.Store` backend from a ``DATABASE_URL``."""

from __future__ import annotations

from pathlib import Path
from urllib.parse import unquote

from storage._common import URL_SCHEME, redact_url
from storage.base import Store, StoreError
from storage.sqlite import MEMORY, SQLiteStore

ACCEPTED_FORMS = (
    "sqlite:///relative/path.db, sqlite:////absolute/path.db, sqlite:///:memory:, a plain file path,"
    " or postgresql://user:password@host:5432/database (also postgres://)"
)
POSTGRES_SCHEMES = ("postgresql", "postgres")


def open_store(database_url: str) -> Store:
    """The store for ``database_url``, not yet opened: the caller awaits ``init()``.

    Raises :class:`StoreError` for a URL of an unsupported backend or of an unknown form, and for a
    PostgreSQL URL when the ``postgres`` extra (asyncpg) is not installed. asyncpg is imported only
    here, when a PostgreSQL URL asks for it.
    """
    url = database_url.strip()
    if not url:
        raise StoreError(f"DATABASE_URL is empty: use {ACCEPTED_FORMS}")
    match = URL_SCHEME.match(url)
    if match is None:
        return SQLiteStore(Path(url).expanduser())
    scheme = match["scheme"].lower()
    if scheme in POSTGRES_SCHEMES and match["rest"].startswith("//"):
        return _postgres_store(url)
    if scheme == "sqlite":
        rest = match["rest"]
        # "sqlite:///x.db" -> "x.db"; "sqlite:////abs/x.db" -> "/abs/x.db". Nothing may come
        # between "//" and the third "/" (no host), and SQLite URL parameters are not supported.
        if rest.startswith("///") and len(rest) > 3 and "?" not in rest:
            path = unquote(rest[3:])
            return SQLiteStore(MEMORY if path == MEMORY else Path(path).expanduser())
    raise StoreError(f"unsupported DATABASE_URL {redact_url(url)!r}: use {ACCEPTED_FORMS}")


def _postgres_store(url: str) -> Store:
    try:
        from storage.postgres import PostgresStore  # noqa: PLC0415 - asyncpg is an optional extra
    except ImportError as exc:
        raise StoreError(
            f"DATABASE_URL {redact_url(url)!r} needs PostgreSQL support: install agent-relay[postgres]"
            f" (the asyncpg package could not be imported: {exc.msg})"
        ) from None
    return PostgresStore(url)
