"""``callvault publish``: a logical-replication publication of the managed table.

The publication is on the partitioned parent with ``publish_via_partition_root = true``: subscribers see
one table, ``call_logs``, whatever partitions the primary has — the ones maintenance creates tomorrow
included, with no further action (Postgres publishes a partitioned table's changes through its root).
Optionally a column list (``--columns metadata`` = everything but the transcript) and a tenant row
filter (``--tenant U``, repeatable).

Postgres 15 rules callvault checks before any SQL runs: a column list and a row filter must keep the
replica identity (the primary key: ``tenant_id, started_at, id``) so updates and deletes can be
published; ``wal_level`` must be ``logical`` (a server restart is needed to change it).
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field

import psycopg
from psycopg import sql

from callvault import columns as cols
from callvault.config import Settings
from callvault.db import Conn, connect
from callvault.errors import CallvaultError, InvalidSetting

REPLICA_IDENTITY = ("tenant_id", "started_at", "id")  # the primary key
COLUMN_SETS: dict[str, tuple[str, ...]] = {
    "all": cols.NAMES,
    "metadata": tuple(n for n in cols.NAMES if n != "transcript"),
}
PUBLISH = "insert, update, delete, truncate"


class WalLevelTooLow(CallvaultError):
    """The server's ``wal_level`` is not ``logical``."""

    exit_code = 69


def default_name(settings: Settings) -> str:
    """``callvault_<table>`` (``callvault_<schema>_<table>`` outside ``public``), at most 63 bytes."""
    base = settings.table if settings.schema == "public" else f"{settings.schema}_{settings.table}"
    return f"callvault_{base}".encode()[:63].decode(errors="ignore")


def parse_columns(text: str | None, names: tuple[str, ...] = cols.NAMES) -> tuple[str, ...]:
    """``all`` (default), ``metadata`` (all but the transcript) or ``c1,c2,...`` (must hold the primary
    key) of the table's columns ``names`` (its own columns included); InvalidSetting naming what is wrong."""
    if text is None or text.strip() == "" or text == "all":
        return names
    if text == "metadata":
        return tuple(n for n in names if n != "transcript")
    picked = tuple(dict.fromkeys(c.strip() for c in text.split(",") if c.strip()))
    unknown = [c for c in picked if c not in names]
    if unknown:
        raise InvalidSetting(
            f"--columns {text!r}: unknown column(s) {', '.join(unknown)}; use all, metadata or a list of "
            f"{', '.join(names)}"
        )
    missing = [c for c in REPLICA_IDENTITY if c not in picked]
    if missing:
        raise InvalidSetting(
            f"--columns {text!r} leaves out {', '.join(missing)}: a published column list must hold the primary "
            f"key ({', '.join(REPLICA_IDENTITY)}) so updates and deletes replicate; add them"
        )
    return tuple(c for c in names if c in picked)  # in the table's order


def parse_tenants(values: list[str] | tuple[str, ...]) -> tuple[str, ...]:
    """Each a UUID (InvalidSetting naming the bad one), deduplicated, sorted."""
    from callvault.tenancy.ids import as_uuid

    return tuple(sorted({as_uuid(v, "--tenant", "") for v in values}))


@dataclass(frozen=True)
class PublicationSpec:
    """What to publish: the publication's name, the columns (the table's order), the tenants (none: all)."""

    name: str
    columns: tuple[str, ...]
    tenants: tuple[str, ...] = ()
    table_columns: tuple[str, ...] = cols.NAMES  # every column of the table: publishing them all needs no list

    def create_sql(self, settings: Settings) -> sql.Composed:
        """``CREATE PUBLICATION`` for this spec."""
        return sql.SQL(
            "CREATE PUBLICATION {} FOR TABLE {} WITH (publish = {}, publish_via_partition_root = true)"
        ).format(sql.Identifier(self.name), self._table(settings), sql.Literal(PUBLISH))

    def alter_sql(self, settings: Settings) -> list[sql.Composed]:
        """``ALTER PUBLICATION`` statements that make an existing publication this spec."""
        ident = sql.Identifier(self.name)
        return [
            sql.SQL("ALTER PUBLICATION {} SET TABLE {}").format(ident, self._table(settings)),
            sql.SQL("ALTER PUBLICATION {} SET (publish = {}, publish_via_partition_root = true)").format(
                ident, sql.Literal(PUBLISH)
            ),
        ]

    def _table(self, settings: Settings) -> sql.Composed:
        table = sql.Identifier(settings.schema, settings.table)
        parts: list[sql.Composable] = [table]
        if self.columns != self.table_columns:
            parts.append(sql.SQL(" ({})").format(sql.SQL(", ").join(map(sql.Identifier, self.columns))))
        if self.tenants:
            parts.append(
                sql.SQL(" WHERE (tenant_id IN ({}))").format(
                    sql.SQL(", ").join(sql.SQL("{}::uuid").format(sql.Literal(t)) for t in self.tenants)
                )
            )
        return sql.Composed(parts)


@dataclass
class PublishReport:
    """What ``publish`` did (or, with ``sql_only``, would do): ``action`` is created, replaced,
    unchanged or sql."""

    name: str
    table: str
    columns: tuple[str, ...]
    tenants: tuple[str, ...]
    action: str
    statements: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, object]:
        """JSON-ready (``callvault publish --json``)."""
        return {
            "publication": self.name, "table": self.table, "columns": list(self.columns), "tenants": list(self.tenants),
            "publish_via_partition_root": True, "action": self.action, "statements": self.statements,
        }  # fmt: skip


_SHAPE_SQL = """
SELECT p.pubviaroot, p.pubinsert, p.pubupdate, p.pubdelete, p.pubtruncate,
       coalesce((SELECT array_agg(t.schemaname || '.' || t.tablename || ' ' || coalesce(t.attnames::text, '')
                                  || ' ' || coalesce(t.rowfilter, '') ORDER BY t.schemaname, t.tablename)
                 FROM pg_publication_tables t WHERE t.pubname = p.pubname), '{}')
FROM pg_publication p WHERE p.pubname = %s
"""


def _shape(conn: Conn, name: str) -> tuple[object, ...] | None:
    row = conn.execute(_SHAPE_SQL, (name,)).fetchone()
    return tuple(row) if row is not None else None


def _wanted_shape(conn: Conn, settings: Settings, spec: PublicationSpec) -> tuple[object, ...] | None:
    """The catalog shape Postgres gives ``spec``: created under a scratch name and rolled back."""
    probe = PublicationSpec(f"callvault_probe_{uuid.uuid4().hex[:12]}", spec.columns, spec.tenants)
    with conn.transaction(force_rollback=True):
        conn.execute(probe.create_sql(settings))
        return _shape(conn, probe.name)


def wal_level(conn: Conn) -> str:
    """The server's ``wal_level``."""
    row = conn.execute("SELECT current_setting('wal_level')").fetchone()
    return str(row[0]) if row else ""


def require_logical(conn: Conn, what: str) -> None:
    """:class:`WalLevelTooLow` unless the server's ``wal_level`` is ``logical``."""
    level = wal_level(conn)
    if level != "logical":
        raise WalLevelTooLow(
            f"{what} needs wal_level = logical, the server has {level}: set it (ALTER SYSTEM SET wal_level = "
            "logical, or postgresql.conf) and restart the server — it does not change on reload; the embedded "
            "cluster has it from `callvault dev down && callvault dev up`"
        )


def publish(
    settings: Settings,
    *,
    name: str | None = None,
    columns: str | None = None,
    tenants: list[str] | tuple[str, ...] = (),
    replace: bool = False,
    sql_only: bool = False,
) -> PublishReport:
    """Create (or, with ``replace``, alter) the table's publication; idempotent.

    :param name: the publication (default :func:`default_name`).
    :param columns: ``all``, ``metadata`` (all but the transcript) or ``c1,c2`` (must hold the primary key).
    :param tenants: publish only these tenants' rows (a row filter); default every tenant.
    :param replace: an existing publication of that name with other options is altered to these.
    :param sql_only: return the statements; change nothing.
    :raises InvalidSetting: a bad column or tenant, or the publication exists with other options and
        ``replace`` is not set (exit code 2).
    :raises WalLevelTooLow: ``wal_level`` is not ``logical`` (exit code 69).
    :raises NotInitialised: the table does not exist (exit code 66).
    """
    from callvault import catalog
    from callvault.errors import NotInitialised

    spec = PublicationSpec(name or default_name(settings), (), parse_tenants(tenants))  # columns: the table's, below
    if len(spec.name.encode()) > 63 or not spec.name:
        raise InvalidSetting(f"publication name {spec.name!r} must be 1 to 63 bytes")
    report = PublishReport(spec.name, settings.qualified, spec.columns, spec.tenants, "unchanged")
    with connect(settings, autocommit=True) as conn:
        if not catalog.table_exists(conn, settings):
            raise NotInitialised(f"{settings.qualified} does not exist: run `callvault init` first")
        from callvault import citus

        citus.refuse(conn, settings, "callvault publish", citus.REPLICATION_WHY)
        names = catalog.table_shape(conn, settings).names  # the table's own columns can be named too
        spec = PublicationSpec(spec.name, parse_columns(columns, names), spec.tenants, names)
        report.columns = spec.columns
        have = _shape(conn, spec.name)
        if sql_only:
            stmts = spec.alter_sql(settings) if have is not None else [spec.create_sql(settings)]
            report.action, report.statements = "sql", [s.as_string(conn) for s in stmts]
            return report
        require_logical(conn, f"publishing {settings.qualified}")
        if have is None:
            stmt = spec.create_sql(settings)
            conn.execute(stmt)
            report.action, report.statements = "created", [stmt.as_string(conn)]
            return report
        want = _wanted_shape(conn, settings, spec)
        if have == want:
            return report
        if not replace:
            raise InvalidSetting(
                f"publication {spec.name} exists with other options than asked (columns, tenants or table): pass "
                "--replace to alter it (its subscribers then receive the new shape), or choose another --name"
            )
        stmts = spec.alter_sql(settings)
        try:
            with conn.transaction():
                for stmt in stmts:
                    conn.execute(stmt)
        except psycopg.Error as exc:
            raise CallvaultError(f"altering publication {spec.name} failed: {exc.diag.message_primary or exc}") from exc
        report.action, report.statements = "replaced", [s.as_string(conn) for s in stmts]
    return report
