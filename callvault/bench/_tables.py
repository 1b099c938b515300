"""The benchmarks' own tables: each run starts from a fresh one, on a database with or without ``init``."""

from __future__ import annotations

from psycopg import sql

from callvault.config import Settings
from callvault.db import Conn


def forget(conn: Conn, settings: Settings, *tables: str) -> None:
    """Create the bench schema (``settings.schema``) if missing, drop ``tables`` in it and forget them in
    pg_partman's ``part_config`` (when pg_partman is installed: a database without ``init`` is fine,
    ``bootstrap.init`` installs it afterwards). The caller commits."""
    conn.execute(sql.SQL("CREATE SCHEMA IF NOT EXISTS {}").format(sql.Identifier(settings.schema)))
    idents = sql.SQL(", ").join(sql.Identifier(settings.schema, t) for t in tables)
    conn.execute(sql.SQL("DROP TABLE IF EXISTS {} CASCADE").format(idents))
    row = conn.execute(
        "SELECT n.nspname FROM pg_extension e JOIN pg_namespace n ON n.oid = e.extnamespace "
        "WHERE e.extname = 'pg_partman'"
    ).fetchone()
    if row is not None:
        conn.execute(
            sql.SQL("DELETE FROM {} WHERE parent_table = ANY(%s)").format(sql.Identifier(row[0], "part_config")),
            ([f"{settings.schema}.{t}" for t in tables],),
        )
