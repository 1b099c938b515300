"""pg_partman adapter: 4.x and 5.x, chosen by ``extversion``; every call uses named arguments.

Differences handled here (checked against 4.7.2 on this machine, written against the 5.x API):

* 4.x wants ``p_type => 'native'`` and named intervals (``'weekly'``); 5.x has ``'range'`` and plain
  intervals (``'1 week'``) and no named ones.
* 4.x always creates ``<table>_default``; 5.x takes ``p_default_table``. callvault's default policy is
  *no default partition* (see :mod:`callvault.bootstrap`), so on 4.x the default is dropped right away.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from psycopg import sql

from callvault.config import Settings
from callvault.db import Conn
from callvault.errors import ExtensionMissing
from callvault.plan import Interval, LifecycleConfig, Retention

INSTALL_HINT = (
    "install it on the database server: on Debian/Ubuntu `apt-get install postgresql-{major}-partman` "
    "(RDS/Cloud SQL: enable the pg_partman extension), then run `callvault init` again"
)


@dataclass(frozen=True)
class PartmanInfo:
    version: str
    schema: str

    @property
    def major(self) -> int:
        return int(self.version.split(".")[0])


def installed(conn: Conn) -> PartmanInfo | None:
    row = conn.execute(
        """SELECT e.extversion, n.nspname FROM pg_extension e
           JOIN pg_namespace n ON n.oid = e.extnamespace WHERE e.extname = 'pg_partman'"""
    ).fetchone()
    return PartmanInfo(version=row[0], schema=row[1]) if row else None


def available_version(conn: Conn, name: str = "pg_partman") -> str:
    """The version ``CREATE EXTENSION pg_partman`` would install; ExtensionMissing when absent."""
    row = conn.execute("SELECT default_version FROM pg_available_extensions WHERE name = %s", (name,)).fetchone()
    if row is None:
        major = conn.execute("SELECT current_setting('server_version_num')::int / 10000").fetchone()
        hint = INSTALL_HINT.format(major=major[0] if major else "<major>")
        raise ExtensionMissing(f"{name} is not installed on the database server: {hint}")
    return str(row[0])


def install_sql(schema: str) -> list[sql.Composed]:
    ident = sql.Identifier(schema)
    return [
        sql.SQL("CREATE SCHEMA IF NOT EXISTS {}").format(ident),
        sql.SQL("CREATE EXTENSION IF NOT EXISTS pg_partman WITH SCHEMA {}").format(ident),
    ]


def _fn(partman: PartmanInfo, name: str) -> sql.Identifier:
    return sql.Identifier(partman.schema, name)


def create_parent_sql(settings: Settings, partman: PartmanInfo, start: datetime) -> sql.Composed:
    interval = settings.lifecycle.interval
    args: dict[str, sql.Composable] = {
        "p_parent_table": sql.Literal(settings.qualified),
        "p_control": sql.Literal("started_at"),
        "p_interval": sql.Literal(interval.partman_4x() if partman.major < 5 else interval.partman_5x()),
        "p_type": sql.Literal("native" if partman.major < 5 else "range"),
        "p_premake": sql.Literal(settings.lifecycle.premake),
        "p_start_partition": sql.Literal(start.strftime("%Y-%m-%d %H:%M:%S+00")),
        "p_jobmon": sql.Literal(False),
    }
    if partman.major >= 5:
        args["p_default_table"] = sql.Literal(settings.default_partition)
    named = sql.SQL(", ").join(sql.SQL("{} => {}").format(sql.SQL(k), v) for k, v in args.items())
    return sql.SQL("SELECT {}({})").format(_fn(partman, "create_parent"), named)


def configure_sql(settings: Settings, partman: PartmanInfo) -> sql.Composed:
    """Premake, retention and infinite_time_partitions in ``part_config``.

    ``retention_keep_table = true``: retention *detaches* expired partitions and keeps them as plain
    tables; nothing is dropped before it is archived and verified (the archiver drops them).
    ``infinite_time_partitions = true``: premake counts from now, not from the newest row.
    """
    retention = settings.lifecycle.retention
    return sql.SQL(
        "UPDATE {} SET premake = {}, retention = {}, retention_keep_table = true, "
        "infinite_time_partitions = true WHERE parent_table = {}"
    ).format(
        sql.Identifier(partman.schema, "part_config"),
        sql.Literal(settings.lifecycle.premake),
        sql.Literal(retention.to_pg() if retention else None),
        sql.Literal(settings.qualified),
    )


def read_config(conn: Conn, settings: Settings, partman: PartmanInfo) -> LifecycleConfig | None:
    """The lifecycle pg_partman actually runs with, or None when the table is not managed."""
    query = sql.SQL(
        """SELECT CASE partition_interval::interval
                    WHEN '1 day' THEN 'daily' WHEN '7 days' THEN 'weekly' WHEN '1 mon' THEN 'monthly'
                    ELSE partition_interval END,
                  premake,
                  (extract(year FROM retention::interval) * 12 + extract(month FROM retention::interval))::int,
                  extract(day FROM retention::interval)::int
           FROM {} WHERE parent_table = %s"""
    ).format(sql.Identifier(partman.schema, "part_config"))
    row = conn.execute(query, (settings.qualified,)).fetchone()
    if row is None:
        return None
    interval, premake, months, days = row
    retention = Retention(months=months, days=days) if months is not None and (months or days) else None
    return LifecycleConfig(interval=Interval.parse(interval), premake=premake, retention=retention)


def run_maintenance_sql(settings: Settings, partman: PartmanInfo) -> sql.Composed:
    return sql.SQL("SELECT {}(p_parent_table => {}, p_analyze => false, p_jobmon => false)").format(
        _fn(partman, "run_maintenance"), sql.Literal(settings.qualified)
    )


def create_partitions_sql(settings: Settings, partman: PartmanInfo, starts: list[datetime]) -> sql.Composed:
    return sql.SQL("SELECT {}(p_parent_table => {}, p_partition_times => {}::timestamptz[])").format(
        _fn(partman, "create_partition_time"), sql.Literal(settings.qualified), sql.Literal(starts)
    )


def retention_sql(settings: Settings, partman: PartmanInfo, at: datetime) -> sql.Composed:
    """Apply the configured retention as if it were ``at`` (detach, keep the table)."""
    return sql.SQL("SELECT {}(p_parent_table => {}, p_reference_timestamp => {})").format(
        _fn(partman, "drop_partition_time"), sql.Literal(settings.qualified), sql.Literal(at)
    )
