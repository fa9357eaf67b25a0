"""Fixtures of the store tests: a throwaway PostgreSQL server and a fresh database per test."""

from tests.pg import pg_server, pg_url

__all__ = ["pg_server", "pg_url"]
