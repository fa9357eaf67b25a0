"""SQLite schema migrations, applied in order of their number (``0001_init.sql``, ...)."""
