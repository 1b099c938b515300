"""Citus: ``call_logs`` distributed by ``tenant_id``, partitioned by week, on a coordinator and workers.

``callvault init`` on a Citus coordinator distributes the table before any partition exists
(``create_distributed_table(..., 'tenant_id', shard_count => N)``); pg_partman then creates the
partitions, and every partition it creates later is distributed and colocated by Citus itself. Every
unique key of the table holds ``tenant_id``, and every query callvault issues pins a tenant, so each
tenant's window runs as one task on one worker (``callvault explain`` shows it).

What differs from a single node, and how callvault handles it (docs/scaling.md):

* The tenant setting reaches the shards only as ``SET LOCAL`` with ``citus.propagate_set_commands =
  'local'``: :mod:`callvault.tenancy.session` sends both on every engine.
* ``DETACH PARTITION ... CONCURRENTLY`` is refused on distributed tables: the archive detaches with a
  plain DETACH under the lock budget, retried.
* A session's ``lock_timeout`` is not sent to the workers: DDL runs with ``SET LOCAL lock_timeout`` in
  its transaction, which Citus propagates.
* Sizes come from ``citus_total_relation_size`` (the parent's own size is 0).
* Logical replication of the parent delivers nothing (changes happen on the workers): ``publish`` and
  ``mirror`` refuse on Citus.
"""

from __future__ import annotations

from dataclasses import dataclass

from psycopg import sql

from callvault.config import Settings
from callvault.db import Conn
from callvault.errors import CallvaultError, NotInitialised

# Shards per weekly partition. Every partition is created as this many shards (one DDL per shard on
# the workers): `callvault bench citus-ddl` measures the partition DDL time against it. 16 keeps a
# weekly partition's creation well under a second with 2 workers while leaving room for 8 workers
# (2 shards each) before a rebalance would want more.
DEFAULT_SHARD_COUNT = 16


REPLICATION_WHY = (
    "its rows change on the workers, so a publication on the coordinator's parent delivers nothing; repli"
    "cate each worker instead (Citus change data capture, citus.enable_change_data_capture = on, one subs"
    "cription per worker: docs/scaling.md)"
)


class CitusUnavailable(CallvaultError):
    """Citus is asked for but cannot work here (not preloaded, not installed, no workers)."""

    exit_code = 69


class CitusUnsupported(CallvaultError):
    """The command cannot run on a Citus cluster (the message says why and what to do instead)."""

    exit_code = 2


@dataclass(frozen=True)
class CitusInfo:
    """The Citus extension on this server: its version, whether it is preloaded, the active workers."""

    version: str
    preloaded: bool
    workers: int
    coordinator: bool


# The extension can only be created where citus is preloaded: where it exists, it is loaded (reading
# shared_preload_libraries needs pg_read_all_settings, which the owner role does not have).
INFO_SQL = """
SELECT (SELECT extversion FROM pg_extension WHERE extname = 'citus'),
       (SELECT count(*) FROM pg_available_extensions WHERE name = 'citus') > 0
"""
PRELOAD_SQL = "SELECT current_setting('shared_preload_libraries') ~ '(^|[ ,])citus($|[ ,])'"
WORKERS_SQL = (
    "SELECT count(*) FILTER (WHERE groupid <> 0 AND isactive AND noderole = 'primary'), "
    "bool_or(groupid = 0) FROM pg_dist_node"
)


def detect(conn: Conn) -> CitusInfo | None:
    """The Citus extension in this database, or None when it is not created here (plain PostgreSQL)."""
    row = conn.execute(INFO_SQL).fetchone()
    if row is None or row[0] is None:
        return None
    workers = conn.execute(WORKERS_SQL).fetchone()
    n, coord = (int(workers[0] or 0), bool(workers[1])) if workers else (0, False)
    return CitusInfo(version=str(row[0]), preloaded=True, workers=n, coordinator=coord)


def is_distributed(conn: Conn, settings: Settings) -> bool:
    """Whether the table is a Citus distributed table here."""
    if detect(conn) is None:
        return False
    row = conn.execute(
        "SELECT EXISTS (SELECT 1 FROM pg_dist_partition WHERE logicalrelid = to_regclass(%s))",
        (sql.Identifier(settings.schema, settings.table).as_string(),),
    ).fetchone()
    return bool(row and row[0])


def preflight(conn: Conn, settings: Settings) -> CitusInfo:
    """What ``init --distributed`` needs: Citus preloaded, the extension created, active workers.

    :raises CitusUnavailable: one of them is missing; the message says how to add it (exit code 69)."""
    row = conn.execute(INFO_SQL).fetchone()
    assert row is not None
    version, available = row
    preloaded = version is not None
    if not preloaded and available:
        loaded = conn.execute(PRELOAD_SQL).fetchone()  # init --distributed runs as a superuser
        preloaded = bool(loaded and loaded[0])
    where = f"for {settings.qualified}"
    if not available:
        raise CitusUnavailable(
            f"--distributed {where}: the Citus extension is not installed on this server; install Citus' "
            "packages for it or use a Citus server (docs/scaling.md)"
        )
    if not preloaded:
        raise CitusUnavailable(
            f"--distributed {where}: Citus is not in shared_preload_libraries; set shared_preload_libraries = "
            "'citus' (first in the list) on the coordinator and every worker, then restart them"
        )
    if version is None:
        raise CitusUnavailable(
            f"--distributed {where}: the citus extension is not created in this database; run CREATE EXTENSION "
            "citus here and on every worker, then add the workers (SELECT citus_add_node('host', port))"
        )
    info = detect(conn)
    assert info is not None
    if info.workers == 0:
        raise CitusUnavailable(
            f"--distributed {where}: this coordinator has no active worker; add them with SELECT "
            "citus_add_node('worker-host', 5432) (and citus_set_coordinator_host on the coordinator)"
        )
    return info


def distribute_sql(settings: Settings, shard_count: int) -> sql.Composed:
    """``create_distributed_table`` by ``tenant_id`` (before partitions exist, so they inherit it)."""
    return sql.SQL("SELECT create_distributed_table({}, 'tenant_id', shard_count => {})").format(
        sql.Literal(sql.Identifier(settings.schema, settings.table).as_string()), sql.Literal(shard_count)
    )


def local_lock_budget(conn: Conn, settings: Settings) -> None:
    """In the open transaction: ``lock_timeout`` = the lock budget, as ``SET LOCAL`` with
    ``citus.propagate_set_commands = 'local'``, so DDL waits no longer on the workers than here."""
    conn.execute("SET LOCAL citus.propagate_set_commands TO 'local'")
    conn.execute(sql.SQL("SET LOCAL lock_timeout TO {}").format(sql.Literal(f"{settings.lock_timeout_ms}ms")))


def refuse(conn: Conn, settings: Settings, what: str, why: str) -> None:
    """:class:`CitusUnsupported` when the table is distributed: ``what`` cannot run on Citus, ``why``."""
    try:
        distributed = is_distributed(conn, settings)
    except NotInitialised:
        return
    if distributed:
        raise CitusUnsupported(f"{what} is not supported for {settings.qualified} on Citus: {why}")
