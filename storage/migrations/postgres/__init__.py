"""PostgreSQL schema migrations, applied in order by :func:`storage.postgres.apply_migrations`."""
