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


SUPPORTED = ((4, 7), (5, 99))  # oldest and newest (major, minor) callvault knows


def check_version(version: str) -> None:
    """Refuse a pg_partman callvault does not know (older than 4.7, or a major after 5).

    :raises ExtensionMissing: the version is outside what callvault supports (exit code 69)."""
    try:
        major, minor = (int(x) for x in version.split(".")[:2])
    except ValueError:
        raise ExtensionMissing(
            f"pg_partman {version!r}: cannot read its version; callvault supports 4.7 to 5.x"
        ) from None
    if (major, minor) < SUPPORTED[0]:
        raise ExtensionMissing(
            f"pg_partman {version} is older than callvault supports (4.7 to 5.x): update it on the server "
            "(ALTER EXTENSION pg_partman UPDATE, after installing 4.7 or newer), then run `callvault init` again"
        )
    if (major, minor) > SUPPORTED[1]:
        raise ExtensionMissing(
            f"pg_partman {version} is newer than callvault knows (4.7 to 5.x): its API and naming may have "
            "changed; use a callvault release that supports it, or pg_partman 5.x"
        )


@dataclass(frozen=True)
class Registration:
    """The ``part_config`` settings callvault checks (``status`` reports the ones it did not make)."""

    interval: str  # partition_interval as pg_partman stores it ('7 days')
    datetime_string: str
    retention_keep_table: bool
    infinite_time_partitions: bool


def read_registration(conn: Conn, settings: Settings, partman: PartmanInfo) -> Registration | None:
    query = sql.SQL(
        "SELECT partition_interval, datetime_string, retention_keep_table, infinite_time_partitions "
        "FROM {} WHERE parent_table = %s"
    ).format(sql.Identifier(partman.schema, "part_config"))
    row = conn.execute(query, (settings.qualified,)).fetchone()
    return Registration(str(row[0]), str(row[1] or ""), bool(row[2]), bool(row[3])) if row else None


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
        # 4.x: named intervals, except weekly: '1 week' (not 'weekly', whose ISO week names pg_partman 5.x
        # refuses to maintain), so a table made today survives the extension's update to 5.x
        "p_interval": sql.Literal(
            interval.partman_5x() if partman.major >= 5 or interval is Interval.WEEKLY else interval.partman_4x()
        ),
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


def registration(conn: Conn, settings: Settings, partman: PartmanInfo) -> tuple[str, str] | None:
    """The table's ``part_config`` row as (schema, name) of its template table ('' when none), or None
    when pg_partman does not know the table (the row outlives a table dropped by hand)."""
    query = sql.SQL("SELECT coalesce(template_table, '') FROM {} WHERE parent_table = %s").format(
        sql.Identifier(partman.schema, "part_config")
    )
    row = conn.execute(query, (settings.qualified,)).fetchone()
    if row is None:
        return None
    schema, _, name = str(row[0]).partition(".")
    return (schema, name) if name else ("", "")


def forget_sql(settings: Settings, partman: PartmanInfo, template: tuple[str, str]) -> sql.Composed:
    """Remove pg_partman's registration of a table that no longer exists: its ``part_config`` and
    ``part_config_sub`` rows and its template table (pg_partman's ``undo_partition`` needs the table)."""
    cfg, sub = sql.Identifier(partman.schema, "part_config"), sql.Identifier(partman.schema, "part_config_sub")
    q = sql.Literal(settings.qualified)
    stmts = [
        sql.SQL("DELETE FROM {} WHERE sub_parent = {}").format(sub, q),
        sql.SQL("DELETE FROM {} WHERE parent_table = {}").format(cfg, q),
    ]
    if template[1]:
        stmts.append(sql.SQL("DROP TABLE IF EXISTS {}").format(sql.Identifier(*template)))
    return sql.SQL("; ").join(stmts)


def datetime_string(conn: Conn, settings: Settings, partman: PartmanInfo) -> str | None:
    """The table's ``part_config.datetime_string`` (how pg_partman names its partitions), None when unmanaged."""
    query = sql.SQL("SELECT datetime_string FROM {} WHERE parent_table = %s").format(
        sql.Identifier(partman.schema, "part_config")
    )
    row = conn.execute(query, (settings.qualified,)).fetchone()
    return str(row[0]) if row and row[0] else None


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
