"""An index on every partition of the managed table, built without blocking writes.

``CREATE INDEX`` on a partitioned table locks every partition against writes for the whole build. The
way around it, which Postgres documents: make the index ``ON ONLY`` the parent (invalid, empty), build
each partition's index ``CONCURRENTLY`` (writes go on), then ``ALTER INDEX ... ATTACH PARTITION`` each one
(a brief lock, taken under the lock budget with retries); once every partition's index is attached the
parent's index is valid. Partitions made later (pg_partman's premake) get the index from the parent when
they are created or attached. An interrupted build is resumed by running it again: an invalid
partition index left by a cancelled ``CONCURRENTLY`` build is dropped and built again.

Used by ``columns add --index`` (:mod:`callvault.extra_columns`) and transcript search
(:mod:`callvault.search`).
"""

from __future__ import annotations

from psycopg import sql

from callvault import catalog
from callvault.config import Settings
from callvault.db import Conn


def build_on_every_partition(conn: Conn, settings: Settings, name: str, definition: sql.Composable, suffix: str) -> str:
    """Index ``name`` on the parent with ``definition`` (what follows ``ON table``, e.g. ``(tenant_id, x)``
    or ``USING gin (...)``), built partition by partition ``CONCURRENTLY`` (the partitions' indexes are
    named ``<partition>_<suffix>``) and attached. ``conn`` must be in autocommit. Returns ``name``."""
    from callvault.maintain import retry_locks

    parent = sql.Identifier(settings.schema, name)
    table = sql.Identifier(settings.schema, settings.table)
    conn.execute(sql.SQL("CREATE INDEX IF NOT EXISTS {} ON ONLY {} {}").format(sql.Identifier(name), table, definition))
    for row in catalog.list_partitions(conn, settings):
        part = row.info
        if part.is_default:
            continue
        child = f"{part.name[:40]}_{suffix}"
        if invalid(conn, settings.schema, child):  # a cancelled CONCURRENTLY build: start it again
            conn.execute(sql.SQL("DROP INDEX CONCURRENTLY IF EXISTS {}").format(sql.Identifier(settings.schema, child)))
        conn.execute(
            sql.SQL("CREATE INDEX CONCURRENTLY IF NOT EXISTS {} ON {} {}").format(
                sql.Identifier(child), sql.Identifier(settings.schema, part.name), definition
            )
        )
        if not attached(conn, settings.schema, child):

            def attach(child: str = child) -> None:
                with conn.transaction():
                    conn.execute("SELECT set_config('lock_timeout', %s, true)", (f"{settings.lock_timeout_ms}ms",))
                    conn.execute(
                        sql.SQL("ALTER INDEX {} ATTACH PARTITION {}").format(
                            parent, sql.Identifier(settings.schema, child)
                        )
                    )

            retry_locks(attach, f"attaching index {child}")
    return name


def invalid(conn: Conn, schema: str, index: str) -> bool:
    """Whether ``schema.index`` exists and is not valid (a build cancelled half-way, or a parent index
    not yet attached to every partition's)."""
    row = conn.execute(
        "SELECT NOT indisvalid FROM pg_index WHERE indexrelid = to_regclass(%s)",
        (sql.Identifier(schema, index).as_string(conn),),
    ).fetchone()
    return bool(row and row[0])


def attached(conn: Conn, schema: str, index: str) -> bool:
    """Whether ``schema.index`` (a partition's index) is attached to an index of the parent."""
    row = conn.execute(
        "SELECT EXISTS (SELECT 1 FROM pg_inherits WHERE inhrelid = to_regclass(%s))",
        (sql.Identifier(schema, index).as_string(conn),),
    ).fetchone()
    return bool(row and row[0])
