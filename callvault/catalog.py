"""Read what exists: partitions of the managed table, their bounds and sizes, detached leftovers."""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from psycopg import sql

from callvault import columns
from callvault.config import META_SCHEMA, Settings
from callvault.db import Conn
from callvault.errors import SchemaMismatch
from callvault.plan import PartitionInfo

_FAR = datetime.max.replace(tzinfo=UTC)
_BOUND = re.compile(r"FROM \('([^']+)'\) TO \('([^']+)'\)")

PARTITIONS_SQL = """
SELECT c.relname,
       pg_get_expr(c.relpartbound, 0) AS bound,
       c.reltuples::bigint AS reltuples,
       pg_total_relation_size(c.oid) AS bytes
FROM pg_inherits i
JOIN pg_class c ON c.oid = i.inhrelid
WHERE i.inhparent = %s::regclass
"""

# On a Citus coordinator a distributed partition is an empty shell: its size is its shards', read from
# every worker in one call (citus_shard_sizes), not one remote call per partition.
CITUS_PARTITIONS_SQL = """
WITH sizes AS (
    SELECT s.logicalrelid AS oid, sum(z.size)::bigint AS bytes
    FROM citus_shard_sizes() z JOIN pg_dist_shard s ON s.shardid = z.shard_id
    GROUP BY 1
)
SELECT c.relname,
       pg_get_expr(c.relpartbound, 0) AS bound,
       c.reltuples::bigint AS reltuples,
       coalesce(sz.bytes, pg_total_relation_size(c.oid)) AS bytes
FROM pg_inherits i
JOIN pg_class c ON c.oid = i.inhrelid
LEFT JOIN sizes sz ON sz.oid = c.oid
WHERE i.inhparent = %s::regclass
"""
CITUS_SQL = "SELECT EXISTS (SELECT 1 FROM pg_extension WHERE extname = 'citus')"

DETACHED_SQL = """
SELECT c.relname, pg_total_relation_size(c.oid)
FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
WHERE n.nspname = %s AND c.relkind = 'r' AND NOT c.relispartition
  AND left(c.relname, length(%s)) = %s
ORDER BY c.relname
"""


@dataclass(frozen=True)
class PartitionRow:
    info: PartitionInfo
    bytes: int


def parse_bound(bound: str) -> tuple[datetime | None, datetime | None, bool]:
    """``FOR VALUES FROM ('...') TO ('...')`` -> (start, end, is_default). Pure."""
    if bound.strip().upper() == "DEFAULT":
        return None, None, True
    m = _BOUND.search(bound)
    if m is None:  # MINVALUE/MAXVALUE bounds: not something callvault created
        return None, None, False
    return datetime.fromisoformat(m.group(1)), datetime.fromisoformat(m.group(2)), False


def parent_regclass(settings: Settings) -> str:
    return sql.Identifier(settings.schema, settings.table).as_string()


def table_exists(conn: Conn, settings: Settings) -> bool:
    row = conn.execute("SELECT to_regclass(%s) IS NOT NULL", (parent_regclass(settings),)).fetchone()
    return bool(row and row[0])


SHAPE_SQL = """
SELECT a.attname, format_type(a.atttypid, a.atttypmod), a.attnotnull
FROM pg_attribute a WHERE a.attrelid = to_regclass(%s) AND a.attnum > 0 AND NOT a.attisdropped
ORDER BY a.attnum"""


def shape_from_rows(rows: list[tuple[Any, ...]], settings: Settings) -> columns.Shape:
    """The table's :class:`~callvault.columns.Shape` from :data:`SHAPE_SQL`'s rows (SchemaMismatch, exit 65,
    for a column of a type callvault does not carry)."""
    try:
        return columns.shape_of([(str(n), str(t), bool(nn)) for n, t, nn in rows])
    except ValueError as e:
        raise SchemaMismatch(f"{settings.qualified}: {e} (change its type, or drop it if nothing needs it)") from None


def table_shape(conn: Conn, settings: Settings) -> columns.Shape:
    """The managed table's columns: the seed's and the platform's own (extras), read from the table."""
    return shape_from_rows(conn.execute(SHAPE_SQL, (parent_regclass(settings),)).fetchall(), settings)


def meta_table_exists(conn: Conn, name: str) -> bool:
    """Whether callvault's bookkeeping table ``callvault.<name>`` exists (older installs may lack it)."""
    row = conn.execute(
        "SELECT to_regclass(%s) IS NOT NULL", (sql.Identifier(META_SCHEMA, name).as_string(),)
    ).fetchone()
    return bool(row and row[0])


def list_partitions(conn: Conn, settings: Settings) -> list[PartitionRow]:
    """Attached partitions, oldest first, the default partition (if any) last."""
    citus = conn.execute(CITUS_SQL).fetchone()
    query = CITUS_PARTITIONS_SQL if citus and citus[0] else PARTITIONS_SQL
    rows = conn.execute(query, (parent_regclass(settings),)).fetchall()
    out = []
    for name, bound, reltuples, size in rows:
        start, end, is_default = parse_bound(str(bound))
        est = int(reltuples) if reltuples >= 0 else None  # -1: never analysed
        info = PartitionInfo(name=name, start=start, end=end, is_default=is_default, rows_estimate=est)
        out.append(PartitionRow(info=info, bytes=int(size)))
    return sorted(out, key=lambda r: (r.info.is_default, r.info.start or _FAR))


NAMES_SQL = """
SELECT c.relname, c.relispartition FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
WHERE n.nspname = %s AND c.relkind = 'r' AND left(c.relname, length(%s)) = %s
  AND (NOT c.relispartition OR c.oid IN (SELECT inhrelid FROM pg_inherits WHERE inhparent = %s::regclass))
"""


def partition_names(conn: Conn, settings: Settings) -> tuple[set[str], set[str]]:
    """(attached, detached) partition names from the catalog alone: takes no table locks."""
    prefix = f"{settings.table}_"
    rows = conn.execute(NAMES_SQL, (settings.schema, prefix, prefix, parent_regclass(settings))).fetchall()
    attached = {name for name, part in rows if part}
    return attached, {name for name, part in rows if not part and name.startswith(f"{prefix}p")}


def pending_detach(conn: Conn, settings: Settings) -> list[str]:
    """Partitions of the table whose ``DETACH ... CONCURRENTLY`` was interrupted ("pending detach")."""
    rows = conn.execute(
        "SELECT c.relname FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid "
        "WHERE i.inhparent = %s::regclass AND i.inhdetachpending ORDER BY c.relname",
        (parent_regclass(settings),),
    ).fetchall()
    return [str(r[0]) for r in rows]


def list_detached(conn: Conn, settings: Settings) -> list[tuple[str, int]]:
    """Tables detached by retention (``retention_keep_table``) and not yet archived/dropped."""
    prefix = f"{settings.table}_p"
    rows = conn.execute(DETACHED_SQL, (settings.schema, prefix, prefix)).fetchall()
    return [(name, int(size)) for name, size in rows]


def default_rows(conn: Conn, settings: Settings, limit: int = 1_000_000) -> int:
    """Exact row count of the default partition (capped), 0 when there is none."""
    name = f"{settings.table}_default"
    ident = sql.Identifier(settings.schema, name)
    exists = conn.execute("SELECT to_regclass(%s) IS NOT NULL", (ident.as_string(),)).fetchone()
    if not exists or not exists[0]:
        return 0
    query = sql.SQL("SELECT count(*) FROM (SELECT 1 FROM {} LIMIT %s) s").format(ident)
    row = conn.execute(query, (limit,)).fetchone()
    return int(row[0]) if row else 0


# pg_get_expr(..., 0): deparse without opening the relation, so no lock is taken (DDL may hold one).
BOUNDS_SQL = (
    "SELECT pg_get_expr(c.relpartbound, 0) FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid "
    "WHERE i.inhparent = %s::regclass"
)


def bounds_from_rows(rows: list[tuple[Any, ...]]) -> list[tuple[datetime, datetime]]:
    out = []
    for (bound,) in rows:
        start, end, _ = parse_bound(str(bound))
        if start is not None and end is not None:
            out.append((start, end))
    return sorted(out)


def partition_bounds(conn: Conn, settings: Settings) -> list[tuple[datetime, datetime]]:
    """[start, end) of every attached, non-default partition, from the catalog alone (no locks)."""
    return bounds_from_rows(conn.execute(BOUNDS_SQL, (parent_regclass(settings),)).fetchall())


def newest_row(conn: Conn, settings: Settings) -> datetime | None:
    """``max(started_at)`` over the attached partitions (pg_partman 5.x premakes from it)."""
    query = sql.SQL("SELECT max(started_at) FROM {}").format(sql.Identifier(settings.schema, settings.table))
    row = conn.execute(query).fetchone()
    return row[0] if row else None


def default_newest(conn: Conn, settings: Settings) -> datetime | None:
    """The newest row in the default partition, None when there is none (or it is empty)."""
    ident = sql.Identifier(settings.schema, f"{settings.table}_default")
    exists = conn.execute("SELECT to_regclass(%s) IS NOT NULL", (ident.as_string(),)).fetchone()
    if not exists or not exists[0]:
        return None
    row = conn.execute(sql.SQL("SELECT max(started_at) FROM ONLY {}").format(ident)).fetchone()
    return row[0] if row else None


def ensure_meta(conn: Conn, names: tuple[str, ...], statements: list[sql.Composed]) -> None:
    """Create callvault bookkeeping tables an older install lacks, in one transaction (autocommit
    connection); a no-op when ``names`` all exist (the owner role may not create schemas, and need not)."""
    if all(meta_table_exists(conn, name) for name in names):
        return
    with conn.transaction():
        conn.execute(sql.SQL("CREATE SCHEMA IF NOT EXISTS {}").format(sql.Identifier(META_SCHEMA)))
        for stmt in statements:
            conn.execute(stmt)
