"""Take over an existing, unpartitioned call-log table while the application keeps writing to it.

The pattern (pg_partman's "online partitioning" with a view in front, made resumable):

1. **plan** (read only): map the source's columns — its time column (``timestamptz``, or ``timestamp``
   read in ``--time-zone``), tenant column (``uuid`` or text holding UUIDs), integer id, the seed's columns
   it has by name (or ``--map old=new``) and every other column as an *extra* of the same type — and count
   what it holds: rows, weeks, rows past retention, rows in the future, rows without a usable tenant.
2. **create**: ``callvault init`` of the target table (weekly partitions by pg_partman, RLS...), the
   extras added, partitions made back to the oldest row's week.
3. **switch** (one short transaction under a lock budget, retried): the source is renamed
   ``<name>_cv_old``; a view with the source's name and columns (the target's rows, then the old table's)
   takes its place, with ``INSTEAD OF`` triggers: an INSERT lands in the target (a row the target cannot
   hold goes to ``callvault.quarantine`` with its reason), UPDATE and DELETE reach whichever table holds
   the row. The target's id sequence continues after the source's.
4. **move**: the old rows go to their weeks in batches, each batch one statement (``DELETE ... RETURNING``
   feeding the ``INSERT``) in its own transaction: a row is in exactly one of the two tables at every
   instant, and a kill -9 loses nothing (the next run goes on). Rows that cannot land are quarantined
   with the reason, in the same statement. Maintenance and archive wait (the table lock) meanwhile.
5. **finish** (short transaction): the view reads the target alone, the empty old table is dropped.
   Rows older than retention are then archived (verified) by the archive pipeline, or kept (``--keep-old``)
   for the next ``callvault archive``.

Every phase is recorded in ``callvault.adoptions`` (one row per source) in the transaction that does it,
so ``adopt`` run again resumes where it stopped, and a finished adoption is a no-op.
"""

from __future__ import annotations

import logging
import shutil
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import psycopg
from psycopg import sql

from callvault import catalog, columns, partman, waits
from callvault.config import META_SCHEMA, Settings
from callvault.db import Conn, server_now
from callvault.errors import CallvaultError, InvalidSetting, SchemaMismatch, StoreUnavailable
from callvault.logs import event, get_logger

log = get_logger("adopt")

OLD_SUFFIX = "_cv_old"
DEFAULT_BATCH_ROWS = 5_000
SWITCH_LOCK_MS = 300  # the switch's lock wait: writers queue behind it at most this long per attempt
PLANNED_ROWS_PER_S = 20_000  # for the dry run's estimate (docs/benchmarks.md has the measured rate)
_UUID_RE = "^[0-9A-Fa-f]{8}-?[0-9A-Fa-f]{4}-?[0-9A-Fa-f]{4}-?[0-9A-Fa-f]{4}-?[0-9A-Fa-f]{12}$"
_TIME_TYPES = ("timestamp with time zone", "timestamp without time zone")
_INT_TYPES = ("bigint", "integer", "smallint")
# the seed's columns a source may hold (by name, or --map): the types each accepts
_BASE_TYPES = {
    "call_id": ("uuid",),
    "ended_at": _TIME_TYPES,
    "duration_sec": _INT_TYPES,
    "transcript": ("text", "character varying"),
    "metadata": ("jsonb", "json"),
}
PHASES = ("planned", "created", "switched", "moved", "done")
# tenants known by a name get tenant_id = uuid3(TENANT_NAMESPACE, name) (Python: callvault.adopt.tenant_uuid)
TENANT_NAMESPACE = uuid.UUID("6c9a1d52-4a3e-5b7e-9c1f-0d2b8e4f7a31")

ADOPTIONS_SQL = sql.SQL(
    """CREATE TABLE IF NOT EXISTS {} (
    source       text PRIMARY KEY,
    target       text NOT NULL,
    phase        text NOT NULL,
    plan         jsonb NOT NULL,
    moved        bigint NOT NULL DEFAULT 0,
    quarantined  bigint NOT NULL DEFAULT 0,
    started_at   timestamptz NOT NULL DEFAULT now(),
    updated_at   timestamptz NOT NULL DEFAULT now(),
    finished_at  timestamptz
)"""
).format(sql.Identifier(META_SCHEMA, "adoptions"))


# -- the plan (pure once the catalog is read) -----------------------------------------------------
@dataclass(frozen=True)
class Source:
    schema: str
    table: str

    @property
    def qualified(self) -> str:
        return f"{self.schema}.{self.table}"

    @property
    def ident(self) -> sql.Identifier:
        return sql.Identifier(self.schema, self.table)

    @property
    def old(self) -> sql.Identifier:
        return sql.Identifier(self.schema, old_name(self.table))


def old_name(table: str) -> str:
    return f"{table[: 63 - len(OLD_SUFFIX)]}{OLD_SUFFIX}"


def parse_source(text: str, default_schema: str) -> Source:
    name = (text or "").strip()
    if not name:
        raise InvalidSetting("adopt needs the table to take over, e.g. `callvault adopt public.calls ...`")
    schema, _, table = name.rpartition(".")
    return Source(schema or default_schema, table)


@dataclass
class Plan:
    """What adoption will do, decided from the source's catalog and a scan of its keys."""

    source: str
    target: str
    time_column: str
    time_type: str
    time_zone: str
    tenant_column: str
    tenant_type: str
    id_column: str
    mapped: dict[str, str]  # source column -> the seed's column
    extras: dict[str, str]  # source column -> its type (kept as the target's own column)
    order: list[str]  # the source's columns in order (the view keeps them)
    defaults: dict[str, str]  # source column -> its DEFAULT expression
    types: dict[str, str] = field(default_factory=dict)  # source column -> its type (the view keeps them)
    default_tenant: str | None = None
    keep_old: bool = False
    roles: bool = True  # init --roles: the owner, ingest, app and tenant-writer roles and their grants
    rows: int = 0
    bytes: int = 0
    oldest: datetime | None = None
    newest: datetime | None = None
    weeks: int = 0
    past_retention: int = 0
    future: int = 0
    no_tenant: int = 0
    bad_tenant: int = 0
    tenant_names: bool = False  # the tenant column holds names: tenant_id = tenant_uuid(name), the name kept
    no_time: int = 0
    free_bytes: int | None = None
    seconds: float = 0.0
    notes: list[str] = field(default_factory=list)

    def to_dict(self, *, pairs: bool = False) -> dict[str, Any]:
        """JSON-ready; ``pairs``: the column maps as lists of pairs (for the journal: jsonb sorts an object's
        keys, and their order is the table's)."""
        out = dict(self.__dict__)
        for k in ("oldest", "newest"):
            v = out[k]
            out[k] = v.isoformat() if isinstance(v, datetime) else v
        for k in _PAIRS if pairs else ():
            out[k] = [list(kv) for kv in out[k].items()]
        return out

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Plan:
        d = dict(d)
        for k in ("oldest", "newest"):
            if d.get(k):
                d[k] = datetime.fromisoformat(d[k])
        for k in _PAIRS:
            v = d.get(k) or []
            d[k] = dict(v) if isinstance(v, dict) else dict(map(tuple, v))
        return cls(**d)


_PAIRS = ("mapped", "extras", "defaults", "types")


@dataclass
class Report:
    plan: Plan
    phase: str
    moved: int = 0
    quarantined: int = 0
    batches: int = 0
    seconds: float = 0.0
    archived: int = 0
    dry_run: bool = False
    reasons: dict[str, int] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {
            "plan": self.plan.to_dict(),
            "phase": self.phase,
            "moved": self.moved,
            "quarantined": self.quarantined,
            "batches": self.batches,
            "seconds": round(self.seconds, 3),
            "archived_partitions": self.archived,
            "dry_run": self.dry_run,
            "reasons": self.reasons,
        }


ATTRS_SQL = """
SELECT a.attname, format_type(a.atttypid, a.atttypmod), a.attnotnull, pg_get_expr(d.adbin, d.adrelid)
FROM pg_attribute a LEFT JOIN pg_attrdef d ON d.adrelid = a.attrelid AND d.adnum = a.attnum
WHERE a.attrelid = to_regclass(%s) AND a.attnum > 0 AND NOT a.attisdropped ORDER BY a.attnum"""


def _relkind(conn: Conn, ident: sql.Identifier) -> str | None:
    row = conn.execute(
        "SELECT c.relkind::text FROM pg_class c WHERE c.oid = to_regclass(%s)", (ident.as_string(conn),)
    ).fetchone()
    return str(row[0]) if row else None


def map_columns(
    source: Source,
    attrs: list[tuple[str, str, bool, str | None]],
    *,
    time_column: str,
    tenant_column: str,
    id_column: str,
    renames: dict[str, str],
) -> tuple[dict[str, str], dict[str, str], dict[str, str]]:
    """(mapped, extras, types) from the source's attributes (pure); InvalidSetting naming what is wrong."""
    types = {n: t for n, t, _, _ in attrs}
    where = f"table {source.qualified}"
    for flag, name in (("--time-column", time_column), ("--tenant-column", tenant_column), ("--id-column", id_column)):
        if name not in types:
            raise InvalidSetting(
                f"{flag} {name!r}: {where} has no such column (it has {', '.join(types)}); name the right column"
            )
    if types[time_column] not in _TIME_TYPES:
        raise InvalidSetting(
            f"--time-column {time_column} is {types[time_column]}: it must be timestamptz or timestamp; name the "
            "column holding when the call started"
        )
    if types[tenant_column] not in ("uuid", "text") and not types[tenant_column].startswith("character varying"):
        raise InvalidSetting(
            f"--tenant-column {tenant_column} is {types[tenant_column]}: it must be uuid or text holding UUIDs"
        )
    if types[id_column] not in _INT_TYPES:
        raise InvalidSetting(f"--id-column {id_column} is {types[id_column]}: it must be an integer id (bigserial)")
    mapped: dict[str, str] = {}
    for old, new in renames.items():
        if old not in types:
            raise InvalidSetting(f"--map {old}={new}: {where} has no column {old!r}")
        if new not in _BASE_TYPES:
            raise InvalidSetting(f"--map {old}={new}: {new!r} is not one of {', '.join(_BASE_TYPES)}")
        mapped[old] = new
    for name in types:
        if name in _BASE_TYPES and name not in mapped and name not in mapped.values():
            mapped[name] = name
    for old, new in mapped.items():
        if columns.base_type(types[old]) not in _BASE_TYPES[new]:
            raise InvalidSetting(
                f"column {old} is {types[old]} but {new} takes {' or '.join(_BASE_TYPES[new])}: convert it first "
                f"or leave it out of --map"
            )
    taken = {time_column, tenant_column, id_column, *mapped}
    extras: dict[str, str] = {}
    bad = []
    for name, typ, _, _ in attrs:
        if name in taken:
            continue
        if name in columns.NAMES:
            bad.append(f"{name} ({typ}) clashes with callvault's own {name}: rename it or --map it")
        elif columns.base_type(typ) not in columns.EXTRA_TYPES:
            bad.append(f"{name} is {typ}, which callvault does not carry")
        else:
            extras[name] = typ
    if bad:
        raise SchemaMismatch(
            f"{where} cannot be adopted as it is: {'; '.join(bad)}. Types callvault carries: {columns.EXTRA_TYPE_LIST}"
        )
    return mapped, extras, types


def inspect(
    conn: Conn,
    settings: Settings,
    source: Source,
    *,
    time_column: str,
    tenant_column: str,
    id_column: str = "id",
    renames: dict[str, str] | None = None,
    time_zone: str = "UTC",
    default_tenant: str | None = None,
    keep_old: bool = False,
    roles: bool = True,
) -> Plan:
    """The plan for ``source`` (reads the catalog and one pass over the source's keys)."""
    kind = _relkind(conn, source.ident)
    if kind is None:
        raise InvalidSetting(f"table {source.qualified} does not exist: check the name and --schema")
    if kind == "p":
        key = conn.execute("SELECT pg_get_partkeydef(to_regclass(%s))", (source.ident.as_string(conn),)).fetchone()
        raise SchemaMismatch(
            f"{source.qualified} is already partitioned ({key[0] if key else '?'}): adopt takes over a plain table; "
            "point callvault at a table it created (`callvault init --table ...`) and copy the rows, or detach "
            "its partitions first"
        )
    if kind != "r":
        raise InvalidSetting(f"{source.qualified} is not a table (relkind {kind}): adopt takes over a plain table")
    if (settings.schema, settings.table) == (source.schema, source.table):
        raise InvalidSetting(
            f"--table {settings.table} is the table being adopted: callvault's table needs another name "
            "(e.g. --table call_logs); the old name keeps working as a view"
        )
    if catalog.table_exists(conn, settings):
        row = conn.execute(
            sql.SQL("SELECT EXISTS (SELECT 1 FROM {})").format(sql.Identifier(settings.schema, settings.table))
        ).fetchone()
        if row and row[0]:
            raise InvalidSetting(
                f"{settings.qualified} already holds rows: adopt into a new table (--table another_name)"
            )
    try:
        zone_ok = conn.execute("SELECT true FROM pg_timezone_names WHERE name = %s", (time_zone,)).fetchone()
    except psycopg.Error:
        zone_ok = None
    if not zone_ok:
        raise InvalidSetting(
            f"--time-zone {time_zone!r} is not a time zone Postgres knows: use e.g. UTC or Europe/Berlin"
        )
    if default_tenant is not None:
        from callvault.tenancy.ids import as_uuid

        default_tenant = as_uuid(
            default_tenant, "--default-tenant", ": give the UUID of the tenant for rows without one"
        )
    attrs = [(str(n), str(t), bool(nn), d) for n, t, nn, d in conn.execute(ATTRS_SQL, (source.ident.as_string(conn),))]
    mapped, extras, types = map_columns(
        source, attrs, time_column=time_column, tenant_column=tenant_column, id_column=id_column, renames=renames or {}
    )
    plan = Plan(
        source=source.qualified,
        target=settings.qualified,
        time_column=time_column,
        time_type=types[time_column],
        time_zone=time_zone,
        tenant_column=tenant_column,
        tenant_type=types[tenant_column],
        id_column=id_column,
        mapped=mapped,
        extras=extras,
        order=[a[0] for a in attrs],
        defaults={a[0]: a[3] for a in attrs if a[3]},
        types=types,
        default_tenant=default_tenant,
        keep_old=keep_old,
        roles=roles,
    )
    _measure(conn, settings, source.ident, plan)
    return plan


def _measure(conn: Conn, settings: Settings, table: sql.Identifier, plan: Plan) -> None:
    """Counts and disk: one pass over the source's keys."""
    now = server_now(conn)
    lc = settings.lifecycle
    cutoff = lc.retention.cutoff(now) if lc.retention else None
    horizon = lc.interval.add(lc.interval.floor(now), lc.premake + 1)
    ts = _time_expr(plan, sql.Identifier(plan.time_column))
    ten = sql.Identifier(plan.tenant_column)
    row = conn.execute(
        sql.SQL(
            "SELECT count(*), min({ts}), max({ts}), count(*) FILTER (WHERE {ts} < %(cutoff)s), "
            "count(*) FILTER (WHERE {ts} >= %(horizon)s), count(*) FILTER (WHERE {ten} IS NULL), "
            "count(*) FILTER (WHERE {ten} IS NOT NULL AND {ten}::text !~ %(re)s), "
            "count(*) FILTER (WHERE {ts} IS NULL), "
            "count(DISTINCT date_trunc('week', {ts})), count(*) FILTER (WHERE {ten}::text ~ %(re)s) FROM {t}"
        ).format(ts=ts, ten=ten, t=table),
        {"cutoff": cutoff or datetime.min.replace(tzinfo=UTC), "horizon": horizon, "re": _UUID_RE},
    ).fetchone()
    assert row is not None
    (
        plan.rows,
        plan.oldest,
        plan.newest,
        plan.past_retention,
        plan.future,
        plan.no_tenant,
        plan.bad_tenant,
        plan.no_time,
        plan.weeks,
    ) = (int(row[0]), row[1], row[2], int(row[3]), int(row[4]), int(row[5]), int(row[6]), int(row[7]), int(row[8]))
    if plan.bad_tenant and not int(row[9]) and plan.tenant_type != "uuid":
        plan.tenant_names = True  # no tenant value is a UUID: the column holds names
    if plan.tenant_names:
        if plan.tenant_column in columns.NAMES:
            raise SchemaMismatch(
                f"{plan.source}.{plan.tenant_column} holds tenant names, which adopt keeps in a column of that "
                "name beside tenant_id: rename the column first (ALTER TABLE ... RENAME COLUMN)"
            )
        plan.extras = {plan.tenant_column: plan.tenant_type, **plan.extras}
        plan.bad_tenant = 0
        plan.notes.append(
            f"{plan.tenant_column} holds tenant names: each gets a stable tenant_id (callvault.adopt.tenant_uuid, "
            f"uuid3 in {TENANT_NAMESPACE}); the name is kept in {plan.tenant_column}"
        )
    size = conn.execute("SELECT pg_total_relation_size(to_regclass(%s))", (table.as_string(conn),)).fetchone()
    plan.bytes = int(size[0]) if size and size[0] else 0
    plan.free_bytes = _free_bytes(conn)
    plan.seconds = round(plan.rows / PLANNED_ROWS_PER_S, 1)
    if plan.default_tenant is not None and plan.no_tenant:
        plan.notes.append(f"{plan.no_tenant} rows without a tenant go to tenant {plan.default_tenant}")
    elif plan.no_tenant:
        plan.notes.append(f"{plan.no_tenant} rows without a tenant are quarantined (or pass --default-tenant)")
    if plan.bad_tenant:
        plan.notes.append(f"{plan.bad_tenant} rows whose tenant is not a UUID are quarantined")
    if plan.no_time:
        plan.notes.append(f"{plan.no_time} rows without a {plan.time_column} are quarantined")
    if plan.future:
        plan.notes.append(f"{plan.future} rows after {horizon:%Y-%m-%d} (in the future) are quarantined")
    if plan.past_retention:
        then = "kept until the next `callvault archive`" if plan.keep_old else "archived (verified) once moved"
        plan.notes.append(f"{plan.past_retention} rows are older than retention: {then}")
    if plan.time_type == "timestamp without time zone":
        plan.notes.append(f"{plan.time_column} has no time zone: read as {plan.time_zone}")


def _free_bytes(conn: Conn) -> int | None:
    """Free bytes on the server's data directory when it is on this machine (None: not known)."""
    try:
        row = conn.execute("SELECT current_setting('data_directory')").fetchone()
    except psycopg.Error:
        return None
    try:
        return shutil.disk_usage(str(row[0])).free if row else None
    except OSError:
        return None


def check_disk(plan: Plan) -> None:
    """StoreUnavailable (exit 69) when the data directory is known to lack room: the rows exist twice
    in places until the old table is dropped (heap + indexes + WAL), so ~1.5x the source is asked."""
    need = int(plan.bytes * 1.5)
    if plan.free_bytes is not None and need > plan.free_bytes:
        raise StoreUnavailable(
            f"adopting {plan.source} needs about {need // 2**20} MB free on the database's disk, which has "
            f"{plan.free_bytes // 2**20} MB: free space (or grow the volume) and run adopt again; nothing was changed"
        )


# -- SQL pieces -----------------------------------------------------------------------------------
def _time_expr(plan: Plan, col: sql.Composable) -> sql.Composable:
    if plan.time_type == "timestamp without time zone":
        return sql.SQL("({} AT TIME ZONE {})").format(col, sql.Literal(plan.time_zone))
    return col


def _time_back(plan: Plan, col: sql.Composable) -> sql.Composable:
    """The target's timestamptz as the source's column type (for the view)."""
    if plan.time_type == "timestamp without time zone":
        return sql.SQL("({} AT TIME ZONE {})").format(col, sql.Literal(plan.time_zone))
    return col


def tenant_uuid(name: str) -> uuid.UUID:
    """The tenant_id ``adopt`` gives a tenant known by a name: ``uuid3(TENANT_NAMESPACE, name)``."""
    return uuid.uuid3(TENANT_NAMESPACE, name)


def tenant_uuid_sql() -> sql.Composed:
    """``callvault.tenant_uuid(name)``: :func:`tenant_uuid` in SQL (RFC 4122 version 3: md5 of the
    namespace's bytes and the name's UTF-8, version and variant bits set)."""
    return sql.SQL(
        """CREATE OR REPLACE FUNCTION {}(name text) RETURNS uuid LANGUAGE sql IMMUTABLE STRICT PARALLEL SAFE
AS $fn$ SELECT (substr(h, 1, 12) || '3' || substr(h, 14, 3)
        || substr('89ab', (('x' || substr(h, 17, 1))::bit(4)::int & 3) + 1, 1) || substr(h, 18, 15))::uuid
    FROM (SELECT md5(decode({}, 'hex') || convert_to(name, 'UTF8')) AS h) s $fn$"""
    ).format(sql.Identifier(META_SCHEMA, "tenant_uuid"), sql.Literal(TENANT_NAMESPACE.hex))


def _tenant_expr(plan: Plan, col: sql.Composable) -> sql.Composable:
    if plan.tenant_names:
        value: sql.Composable = sql.SQL("{}({}::text)").format(sql.Identifier(META_SCHEMA, "tenant_uuid"), col)
    else:
        value = sql.SQL("{}::text::uuid").format(col)
    if plan.default_tenant is not None:
        return sql.SQL("coalesce({}, {}::uuid)").format(value, sql.Literal(plan.default_tenant))
    return value


def _call_id_expr(plan: Plan, rec: str) -> sql.Composable:
    src = next((o for o, n in plan.mapped.items() if n == "call_id"), None)
    if src is not None:
        return sql.SQL("{}.{}").format(sql.Identifier(rec), sql.Identifier(src))
    # deterministic from the row's id: the same row always gets the same call id (moves are idempotent)
    return sql.SQL("md5({} || ':' || {}.{})::uuid").format(
        sql.Literal(plan.source), sql.Identifier(rec), sql.Identifier(plan.id_column)
    )


def _why_expr(plan: Plan, rec: str) -> sql.Composable:
    """NULL when the row can land; else why not (no content of the row in it)."""
    r = sql.Identifier(rec)
    ten = sql.SQL("{}.{}").format(r, sql.Identifier(plan.tenant_column))
    ts = sql.SQL("{}.{}").format(r, sql.Identifier(plan.time_column))
    tenant_missing = sql.SQL("false") if plan.default_tenant is not None else sql.SQL("{} IS NULL").format(ten)
    return sql.SQL(
        "CASE WHEN {missing} THEN {m1} WHEN {names} AND {ten} IS NOT NULL AND {ten}::text !~ {re} THEN {m2} "
        "WHEN {ts} IS NULL THEN {m3} "
        "WHEN {tse} < %(low)s THEN {m4} WHEN {tse} >= %(high)s THEN {m5} END"
    ).format(
        missing=tenant_missing,
        names=sql.SQL("false" if plan.tenant_names else "true"),
        ten=ten,
        re=sql.Literal(_UUID_RE),
        ts=ts,
        tse=_time_expr(plan, ts),
        m1=sql.Literal(
            f"adopt: {plan.tenant_column} is NULL (no tenant): set it and insert the row again through "
            f"{plan.source} (docs/adopt.md)"
        ),
        m2=sql.Literal(
            f"adopt: {plan.tenant_column} is not a UUID: set the tenant's UUID and insert the row again "
            f"through {plan.source}"
        ),
        m3=sql.Literal(
            f"adopt: {plan.time_column} is NULL: set the call's start and insert it again through {plan.source}"
        ),
        m4=sql.Literal(
            f"adopt: {plan.time_column} is before the oldest partition: `callvault maintain`, then "
            f"insert it again through {plan.source}"
        ),
        m5=sql.Literal(
            f"adopt: {plan.time_column} is in the future, past the newest partition: fix the time and insert "
            f"it again through {plan.source}"
        ),
    )


def _target_cols(plan: Plan) -> list[str]:
    base = ["id", "tenant_id", "call_id", "started_at"]
    base += [n for n in plan.mapped.values() if n != "call_id"]
    return base + list(plan.extras)


def _target_values(plan: Plan, rec: str) -> list[sql.Composable]:
    r = sql.Identifier(rec)

    def col(name: str) -> sql.Composable:
        return sql.SQL("{}.{}").format(r, sql.Identifier(name))

    values: list[sql.Composable] = [
        col(plan.id_column),
        _tenant_expr(plan, col(plan.tenant_column)),
        _call_id_expr(plan, rec),
        _time_expr(plan, col(plan.time_column)),
    ]
    for old, new in plan.mapped.items():
        if new == "call_id":
            continue
        value: sql.Composable = col(old)
        if new == "ended_at":
            value = _time_expr(plan, value)
        elif new == "metadata":
            value = sql.SQL("{}::jsonb").format(value)
        elif new == "duration_sec":
            value = sql.SQL("{}::integer").format(value)
        values.append(value)
    values += [col(name) for name in plan.extras]
    return values


def _view_select(plan: Plan, target: sql.Identifier, old: sql.Identifier | None) -> sql.Composed:
    """The view: the source's columns, in order, from the target (and the old table while rows remain)."""
    back = {
        plan.id_column: sql.SQL("id"),
        plan.tenant_column: sql.SQL("tenant_id::text"),
        plan.time_column: _time_back(plan, sql.Identifier("started_at")),
    }
    for old_col, new in plan.mapped.items():
        back[old_col] = _time_back(plan, sql.Identifier(new)) if new == "ended_at" else sql.Identifier(new)
    for name in plan.extras:
        back[name] = sql.Identifier(name)
    if plan.tenant_type == "uuid":
        back[plan.tenant_column] = sql.SQL("tenant_id")
    for c in (plan.id_column, plan.tenant_column, *plan.mapped):  # as the source had them (json, varchar(n)...)
        if c in plan.types:
            back[c] = sql.SQL("CAST({} AS {})").format(back[c], sql.SQL(plan.types[c]))  # the catalog's own type text
    cols = sql.SQL(", ").join(sql.SQL("{} AS {}").format(back[c], sql.Identifier(c)) for c in plan.order)
    out = sql.SQL("SELECT {} FROM {}").format(cols, target)
    if old is not None:
        out = sql.SQL("{} UNION ALL SELECT {} FROM {}").format(
            out, sql.SQL(", ").join(map(sql.Identifier, plan.order)), old
        )
    return out


def _trigger_fn_sql(plan: Plan, fn: sql.Identifier, target: sql.Identifier, old: sql.Identifier | None) -> sql.Composed:
    """The view's INSTEAD OF trigger. SECURITY DEFINER: the application keeps its grants on the name
    only; the function (owned by who adopted) writes the target with the tenant set for the row."""
    tcols = sql.SQL(", ").join(map(sql.Identifier, _target_cols(plan)))
    vals = sql.SQL(", ").join(_target_values(plan, "new"))
    why = _why_expr(plan, "new")
    ten_new = _tenant_expr(plan, sql.SQL("new.{}").format(sql.Identifier(plan.tenant_column)))
    ts_old = _time_expr(plan, sql.SQL("old.{}").format(sql.Identifier(plan.time_column)))
    ten_old = _tenant_expr(plan, sql.SQL("old.{}").format(sql.Identifier(plan.tenant_column)))
    sets = sql.SQL(", ").join(
        sql.SQL("{} = {}").format(sql.Identifier(c), v)
        for c, v in zip(_target_cols(plan), _target_values(plan, "new"), strict=True)
        if c not in ("id", "call_id")
    )
    old_sets = sql.SQL(", ").join(
        sql.SQL("{} = new.{}").format(sql.Identifier(c), sql.Identifier(c)) for c in plan.order
    )
    idc = sql.Identifier(plan.id_column)
    old_update = (
        sql.SQL("UPDATE {} o SET {} WHERE o.{} = old.{};").format(old, old_sets, idc, idc) if old else sql.SQL("")
    )
    old_delete = sql.SQL("DELETE FROM {} o WHERE o.{} = old.{};").format(old, idc, idc) if old else sql.SQL("")
    # the trigger's bounds are the partitions that exist when it runs: a row outside them is quarantined
    body = sql.SQL(
        """CREATE OR REPLACE FUNCTION {fn}() RETURNS trigger LANGUAGE plpgsql SECURITY DEFINER
SET search_path = pg_catalog, pg_temp AS $cv$
DECLARE why text;
BEGIN
    IF TG_OP = 'INSERT' THEN
        why := {why_low};
        IF why IS NULL THEN
            PERFORM set_config('app.tenant_id', ({ten_new})::text, true);
            BEGIN
                INSERT INTO {target} ({tcols}) VALUES ({vals});
            EXCEPTION WHEN check_violation OR unique_violation THEN
                why := 'adopt: ' || SQLERRM;
            END;
        END IF;
        IF why IS NOT NULL THEN
            INSERT INTO {quarantine} (target_table, reason, raw) VALUES ({tq}, why, to_jsonb(new)::text);
        END IF;
        RETURN new;
    ELSIF TG_OP = 'UPDATE' THEN
        {old_update}
        PERFORM set_config('app.tenant_id', ({ten_old})::text, true);
        UPDATE {target} t SET {sets} WHERE t.tenant_id = {ten_old} AND t.started_at = {ts_old} AND t.id = old.{idc};
        RETURN new;
    ELSE
        {old_delete}
        PERFORM set_config('app.tenant_id', ({ten_old})::text, true);
        DELETE FROM {target} t WHERE t.tenant_id = {ten_old} AND t.started_at = {ts_old} AND t.id = old.{idc};
        RETURN old;
    END IF;
END
$cv$"""
    )
    # inside plpgsql the partition bounds are not parameters: the low/high checks use -infinity/infinity
    # (a row outside every partition fails the INSERT with check_violation and is quarantined there)
    why_low = sql.SQL(
        why.as_string(None)
        .replace("%(low)s", "'-infinity'::timestamptz")
        .replace("%(high)s", "'infinity'::timestamptz")
    )
    return body.format(
        fn=fn,
        why_low=why_low,
        ten_new=ten_new,
        target=target,
        tcols=tcols,
        vals=vals,
        quarantine=sql.Identifier(META_SCHEMA, "quarantine"),
        tq=sql.Literal(plan.target),
        old_update=old_update,
        ten_old=ten_old,
        sets=sets,
        ts_old=ts_old,
        idc=idc,
        old_delete=old_delete,
    )


def _names(settings: Settings, source: Source) -> tuple[sql.Identifier, sql.Identifier, sql.Identifier]:
    target = sql.Identifier(settings.schema, settings.table)
    fn = sql.Identifier(source.schema, f"{source.table[:40]}_cv_adopt")
    trg = sql.Identifier(f"{source.table[:40]}_cv_adopt")
    return target, fn, trg


# -- the phases -----------------------------------------------------------------------------------
def _journal(conn: Conn) -> None:
    conn.execute(sql.SQL("CREATE SCHEMA IF NOT EXISTS {}").format(sql.Identifier(META_SCHEMA)))
    conn.execute(ADOPTIONS_SQL)


def _record(conn: Conn, source: Source) -> tuple[str, Plan, int, int] | None:
    row = conn.execute(
        sql.SQL("SELECT phase, plan, moved, quarantined FROM {} WHERE source = %s").format(
            sql.Identifier(META_SCHEMA, "adoptions")
        ),
        (source.qualified,),
    ).fetchone()
    return (str(row[0]), Plan.from_dict(row[1]), int(row[2]), int(row[3])) if row else None


def _set_phase(conn: Conn, source: Source, phase: str, plan: Plan | None = None) -> None:
    from psycopg.types.json import Jsonb

    conn.execute(
        sql.SQL(
            "INSERT INTO {} (source, target, phase, plan) VALUES (%(s)s, %(t)s, %(p)s, %(plan)s) "
            "ON CONFLICT (source) DO UPDATE SET phase = excluded.phase, updated_at = now(), "
            "plan = CASE WHEN %(has)s THEN excluded.plan ELSE {t}.plan END, "
            "finished_at = CASE WHEN excluded.phase = 'done' THEN now() END"
        ).format(sql.Identifier(META_SCHEMA, "adoptions"), t=sql.Identifier("adoptions")),
        {
            "s": source.qualified,
            "t": plan.target if plan else "",
            "p": phase,
            "plan": Jsonb(plan.to_dict(pairs=True) if plan else {}),
            "has": plan is not None,
        },
    )


def _create(conn: Conn, settings: Settings, plan: Plan) -> None:
    """init the target, add the extras, partitions back to the oldest row's week (idempotent)."""
    from callvault import bootstrap, extra_columns
    from callvault.tenancy import repair

    bootstrap.init(conn, settings, roles=plan.roles)
    if plan.tenant_names:
        conn.execute(tenant_uuid_sql())
    # the application looks rows up by their id through the old name: an index on id on every partition
    # (the primary key leads with tenant_id); made while the table is empty, inherited by later partitions
    conn.execute(sql.SQL("CREATE INDEX IF NOT EXISTS {} ON {} (id)").format(
        sql.Identifier(f"{settings.table[:50]}_id_idx"), sql.Identifier(settings.schema, settings.table)))  # fmt: skip
    conn.commit()
    conn.autocommit = True
    try:
        for name, typ in plan.extras.items():
            extra_columns.add_column(conn, settings, name, typ)
        pm = partman.installed(conn)
        assert pm is not None
        bounds = catalog.partition_bounds(conn, settings)
        first = min((lo for lo, _ in bounds), default=None)
        if plan.oldest is not None and first is not None and plan.oldest < first:
            starts = []
            at = settings.lifecycle.interval.floor(plan.oldest)
            while at < first:
                starts.append(at)
                at = settings.lifecycle.interval.add(at)
            conn.execute(partman.create_partitions_sql(settings, pm, starts))
        repair.secure(conn, settings)
    finally:
        conn.autocommit = False


def _grants(conn: Conn, source: Source) -> list[tuple[str, str]]:
    rows = conn.execute(
        "SELECT a.grantee::regrole::text, a.privilege_type FROM pg_class c, aclexplode(c.relacl) a "
        "WHERE c.oid = to_regclass(%s) AND a.grantee <> c.relowner AND a.grantee <> 0",
        (source.ident.as_string(conn),),
    ).fetchall()
    return [(str(g), str(p)) for g, p in rows]


def _switch(conn: Conn, settings: Settings, source: Source, plan: Plan) -> None:
    """Rename, view, triggers, sequence: one transaction, a short lock wait, retried."""
    from callvault.maintain import retry_locks

    target, fn, trg = _names(settings, source)

    def work() -> None:
        _cancel_autovacuum(conn, source.ident)
        with conn.transaction():
            conn.execute("SELECT set_config('lock_timeout', %s, true)", (f"{SWITCH_LOCK_MS}ms",))
            conn.execute(sql.SQL("LOCK TABLE {} IN ACCESS EXCLUSIVE MODE").format(source.ident))
            grants = _grants(conn, source)
            conn.execute(
                sql.SQL("ALTER TABLE {} RENAME TO {}").format(source.ident, sql.Identifier(old_name(source.table)))
            )
            seq = conn.execute("SELECT pg_get_serial_sequence(%s, 'id')", (target.as_string(conn),)).fetchone()
            old_seq = conn.execute(
                "SELECT pg_get_serial_sequence(%s, %s)", (source.old.as_string(conn), plan.id_column)
            ).fetchone()
            high = conn.execute(
                sql.SQL("SELECT max({}) FROM {}").format(sql.Identifier(plan.id_column), source.old)
            ).fetchone()
            top = max(int(high[0] or 0) if high else 0, 1)
            if old_seq and old_seq[0]:
                last = conn.execute(sql.SQL("SELECT last_value FROM {}").format(sql.SQL(old_seq[0]))).fetchone()
                top = max(top, int(last[0]) if last else 0)
            assert seq and seq[0]
            conn.execute("SELECT setval(%s::regclass, %s)", (seq[0], top))  # the target's ids continue the source's
            # the old table is emptied, then dropped: vacuuming it is wasted I/O (and would hold the drop off)
            conn.execute(sql.SQL("ALTER TABLE {} SET (autovacuum_enabled = false, toast.autovacuum_enabled = false)")
                         .format(source.old))  # fmt: skip
            conn.execute(_trigger_fn_sql(plan, fn, target, source.old))
            conn.execute(sql.SQL("CREATE VIEW {} AS {}").format(source.ident, _view_select(plan, target, source.old)))
            conn.execute(
                sql.SQL("ALTER VIEW {} ALTER COLUMN {} SET DEFAULT nextval({})").format(
                    source.ident, sql.Identifier(plan.id_column), sql.Literal(seq[0])
                )
            )
            for col, expr in plan.defaults.items():
                if col != plan.id_column:
                    conn.execute(
                        sql.SQL("ALTER VIEW {} ALTER COLUMN {} SET DEFAULT {}").format(
                            source.ident, sql.Identifier(col), sql.SQL(expr)
                        )
                    )  # the source's own DEFAULT text
            conn.execute(
                sql.SQL(
                    "CREATE TRIGGER {} INSTEAD OF INSERT OR UPDATE OR DELETE ON {} FOR EACH ROW EXECUTE FUNCTION {}()"
                ).format(trg, source.ident, fn)
            )
            for grantee, privilege in grants:
                conn.execute(
                    sql.SQL("GRANT {} ON {} TO {}").format(sql.SQL(privilege), source.ident, sql.Identifier(grantee))
                )
                if privilege == "INSERT":
                    conn.execute(
                        sql.SQL("GRANT USAGE ON SEQUENCE {} TO {}").format(sql.SQL(seq[0]), sql.Identifier(grantee))
                    )
            _set_phase(conn, source, "switched")

    retry_locks(work, f"switching {source.qualified} to a view over {plan.target}", logger=log)


def _move_sql(plan: Plan, settings: Settings, source: Source) -> sql.Composed:
    target = sql.Identifier(settings.schema, settings.table)
    tcols = sql.SQL(", ").join(map(sql.Identifier, _target_cols(plan)))
    idc = sql.Identifier(plan.id_column)
    return sql.SQL(
        """WITH batch AS (
    DELETE FROM {old} o WHERE o.{idc} IN (
        SELECT {idc} FROM {old} WHERE {idc} > %(after)s ORDER BY {idc} LIMIT %(n)s FOR UPDATE SKIP LOCKED)
    RETURNING o.*
), judged AS (SELECT b, {why} AS cv_why FROM batch b),
moved AS (
    INSERT INTO {target} ({tcols}) SELECT {vals} FROM judged j, LATERAL (SELECT (j.b).*) b WHERE j.cv_why IS NULL
    ON CONFLICT DO NOTHING RETURNING id
), aside AS (
    INSERT INTO {quarantine} (target_table, reason, raw)
    SELECT %(target)s, coalesce(j.cv_why, 'adopt: a call with the same tenant, call id and start is already there'),
           to_jsonb(j.b)::text
    FROM judged j WHERE j.cv_why IS NOT NULL OR (j.b).{idc} NOT IN (SELECT id FROM moved)
    RETURNING reason
)
SELECT (SELECT count(*) FROM batch), (SELECT count(*) FROM moved), (SELECT max({idc}) FROM batch),
       (SELECT coalesce(jsonb_object_agg(reason, n), '{{}}')
        FROM (SELECT reason, count(*) n FROM aside GROUP BY 1) r)"""
    ).format(
        old=source.old,
        idc=idc,
        why=_why_expr(plan, "b"),
        target=target,
        tcols=tcols,
        vals=sql.SQL(", ").join(_target_values(plan, "b")),
        quarantine=sql.Identifier(META_SCHEMA, "quarantine"),
    )


def _move(
    conn: Conn,
    settings: Settings,
    source: Source,
    plan: Plan,
    report: Report,
    batch_rows: int,
    progress: Callable[[Report], None] | None,
) -> None:
    from callvault.maintain import table_lock

    stmt = _move_sql(plan, settings, source)
    conn.commit()
    conn.autocommit = True
    try:
        conn.execute("SELECT set_config('lock_timeout', %s, false)", (f"{settings.lock_timeout_ms}ms",))
        with table_lock(conn, settings, "adopt", logger=log):  # maintenance and archive wait meanwhile
            after = -(2**63)  # keyset: each batch starts past the last one (no walk over dead index entries)
            while True:
                bounds = catalog.partition_bounds(conn, settings)
                low = min(lo for lo, _ in bounds)
                high = max(hi for _, hi in bounds)
                with conn.transaction():
                    row = conn.execute(
                        stmt, {"n": batch_rows, "low": low, "high": high, "target": plan.target, "after": after}
                    ).fetchone()
                    assert row is not None
                    taken, moved, last, reasons = int(row[0]), int(row[1]), row[2], dict(row[3] or {})
                    if last is not None:
                        after = int(last)
                    aside = sum(int(v) for v in reasons.values())
                    conn.execute(
                        sql.SQL(
                            "UPDATE {} SET moved = moved + %s, quarantined = quarantined + %s, updated_at = now() "
                            "WHERE source = %s"
                        ).format(sql.Identifier(META_SCHEMA, "adoptions")),
                        (moved, aside, source.qualified),
                    )
                report.moved += moved
                report.quarantined += aside
                report.batches += 1
                for k, v in reasons.items():
                    key = k.split(":", 2)[1].strip() if k.count(":") >= 1 else k
                    report.reasons[key] = report.reasons.get(key, 0) + int(v)
                if progress is not None:
                    progress(report)
                if taken == 0:
                    left = conn.execute(sql.SQL("SELECT EXISTS (SELECT 1 FROM {})").format(source.old)).fetchone()
                    if not (left and left[0]):
                        break
                    # rows skipped while the application held them (its own UPDATEs): sweep again from the start
                    after = -(2**63)
                    waits.sleep(0.2)
            with conn.transaction():
                _set_phase(conn, source, "moved")
    finally:
        conn.autocommit = False


def _cancel_autovacuum(conn: Conn, table: sql.Identifier) -> None:
    """Cancel an autovacuum of ``table`` (it would hold our short lock wait off: it yields only after
    deadlock_timeout). Needs the right to signal it (superuser, or pg_signal_backend); without, the lock
    wait's retries are all there is."""
    try:
        conn.execute(
            "SELECT pg_cancel_backend(a.pid) FROM pg_stat_activity a JOIN pg_locks l ON l.pid = a.pid "
            "WHERE a.backend_type = 'autovacuum worker' AND l.relation = to_regclass(%s)",
            (table.as_string(conn),),
        )
        conn.commit()
    except psycopg.Error:
        conn.rollback()


def _finish(conn: Conn, settings: Settings, source: Source, plan: Plan) -> None:
    from callvault.maintain import retry_locks

    target, fn, _ = _names(settings, source)
    # Checked before the lock, not under it (a scan of the emptied table's pages would stall the writers):
    # since the switch nothing inserts into the old table, so empty now is empty for good.
    exists = _relkind(conn, source.old) is not None
    if exists:
        left = conn.execute(sql.SQL("SELECT EXISTS (SELECT 1 FROM {})").format(source.old)).fetchone()
        conn.commit()
        if left and left[0]:
            raise CallvaultError(f"{source.qualified}: rows are left in {old_name(source.table)}; run adopt again")

    def work() -> None:
        # an autovacuum of the emptied table would hold DROP off past our short lock wait (it yields
        # only after deadlock_timeout): its autovacuum is off since the switch; cancel one already running
        _cancel_autovacuum(conn, source.old)
        with conn.transaction():
            conn.execute("SELECT set_config('lock_timeout', %s, true)", (f"{SWITCH_LOCK_MS}ms",))
            conn.execute(sql.SQL("LOCK TABLE {} IN ACCESS EXCLUSIVE MODE").format(source.ident))
            if exists:
                conn.execute(sql.SQL("LOCK TABLE {} IN ACCESS EXCLUSIVE MODE").format(source.old))
            conn.execute(
                sql.SQL("CREATE OR REPLACE VIEW {} AS {}").format(source.ident, _view_select(plan, target, None))
            )
            conn.execute(_trigger_fn_sql(plan, fn, target, None))
            if exists:
                conn.execute(sql.SQL("DROP TABLE {}").format(source.old))
            _set_phase(conn, source, "done")

    retry_locks(work, f"finishing the adoption of {source.qualified}", logger=log)


def adopt(
    conn: Conn,
    settings: Settings,
    source: Source,
    *,
    time_column: str | None = None,
    tenant_column: str | None = None,
    id_column: str = "id",
    renames: dict[str, str] | None = None,
    time_zone: str = "UTC",
    default_tenant: str | None = None,
    keep_old: bool = False,
    roles: bool = True,
    batch_rows: int = DEFAULT_BATCH_ROWS,
    dry_run: bool = False,
    progress: Callable[[Report], None] | None = None,
    archive: tuple[Callable[[], None], Callable[[], int]] | None = None,
) -> Report:
    """Adopt ``source`` into the settings' table (see the module docstring); resumes a started one."""
    if not 1 <= batch_rows <= 1_000_000:
        raise InvalidSetting(f"--batch-rows {batch_rows} must be between 1 and 1000000")
    t0 = time.perf_counter()
    conn.autocommit = False
    _journal(conn)
    conn.commit()
    known = _record(conn, source)
    conn.rollback()  # nothing held while the plan is made
    if known is None or known[0] == "planned":
        if time_column is None or tenant_column is None:
            raise InvalidSetting(
                "adopt needs --time-column and --tenant-column: the columns holding when the call "
                "started and whose call it is"
            )
        plan = inspect(
            conn,
            settings,
            source,
            time_column=time_column,
            tenant_column=tenant_column,
            id_column=id_column,
            renames=renames,
            time_zone=time_zone,
            default_tenant=default_tenant,
            keep_old=keep_old,
            roles=roles,
        )
        conn.rollback()
        check_disk(plan)
        if dry_run:
            return Report(plan, "planned", dry_run=True)
        _set_phase(conn, source, "planned", plan)
        conn.commit()
        phase, moved, aside = "planned", 0, 0
    else:
        phase, plan, moved, aside = known
        if dry_run:
            return Report(plan, phase, moved, aside, dry_run=True)
    needs_archive = not plan.keep_old and plan.past_retention > 0
    if needs_archive:
        if archive is None:
            raise InvalidSetting(
                f"{plan.past_retention} rows of {plan.source} are older than retention and would be archived: "
                "configure the archive store (--store / CALLVAULT_ARCHIVE_URL) or pass --keep-old"
            )
        archive[0]()  # the store is usable: refused here, before anything changes
    report = Report(plan, phase, moved, aside)
    if phase == "planned":
        _create(conn, settings, plan)
        _set_phase(conn, source, "created")
        conn.commit()
        phase = "created"
    if phase == "created":
        _switch(conn, settings, source, plan)
        phase = "switched"
    if phase == "switched":
        _move(conn, settings, source, plan, report, batch_rows, progress)
        phase = "moved"
    if phase == "moved":
        _finish(conn, settings, source, plan)
        phase = "done"
    if needs_archive and archive is not None:  # again on a re-run: archive resumes what it had not finished
        report.archived = archive[1]()
    report.phase = phase
    report.seconds = time.perf_counter() - t0
    event(
        log,
        logging.INFO,
        "adopted",
        source=plan.source,
        target=plan.target,
        moved=report.moved,
        quarantined=report.quarantined,
        seconds=round(report.seconds, 1),
    )
    return report
