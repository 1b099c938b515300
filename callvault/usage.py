"""Usage rollups: calls and talk seconds per tenant and hour (and, optionally, per value of one metadata
key such as ``agent``), kept in ``callvault.usage``, a table pg_partman never drops, so a month's usage
outlives the weeks that held its calls.

**Exactly once, incrementally.** Three statement-level triggers on the parent (``AFTER INSERT / DELETE /
UPDATE``, with transition tables) add what each statement changed, in the statement's own transaction:

* the Writer's ``COPY`` and its idempotent ``INSERT ... ON CONFLICT DO NOTHING`` count the rows actually
  inserted (a re-sent call is skipped by the primary key, and never reaches the transition table; a batch
  that fails rolls its count back with it); late calls count in their own hour whenever they arrive;
* a ``DELETE`` (an erasure, by hand) subtracts; an ``UPDATE`` moves the difference (a changed duration,
  dimension or start). Rows of a (tenant, hour, value) that fall to zero calls are removed: the values of
  erased calls do not stay behind;
* pg_partman's detach and drop, and the archive, are DDL: nothing fires, usage stays.

Each batch's aggregate is upserted in key order, so concurrent writers never deadlock on the rollup.
What happens beside the parent is accounted for where it happens: an erasure in a detached partition or
in the archive subtracts the calls it removed (:func:`subtract_sql`, :func:`apply`), and ``restore`` into
the hot table inserts with counting off (the calls were counted when first written): the transaction-
local setting ``callvault.usage_skip``.

**Rebuilt and checked on demand** (:func:`rebuild`, :func:`check`): from the attached partitions, the
detached ones, and the archive (DuckDB over each period's objects; the periods no partition holds).
Periods whose objects a tenant's archive retention deleted are left as the rollup has them: their calls
can no longer be counted. ``init`` installs the triggers and counts the rows the table already holds;
``callvault usage --rebuild`` adds the archived weeks.

**Isolation**: row-level security on ``callvault.usage`` with the table's own tenant policy
(``app.tenant_id``); the app role reads it through :meth:`callvault.query.Reader.usage`. On Citus the
triggers are not installed (statement triggers with transition tables are not supported on distributed
tables): ``usage`` says so.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

from psycopg import sql

from callvault import catalog
from callvault.config import META_SCHEMA, Settings
from callvault.db import Conn
from callvault.errors import InvalidSetting, NotInitialised
from callvault.logs import event
from callvault.privacy.subject import Subject as MetadataKey

log = logging.getLogger(__name__)

USAGE = sql.Identifier(META_SCHEMA, "usage")
DIMENSIONS = sql.Identifier(META_SCHEMA, "usage_dimension")
SKIP_SETTING = "callvault.usage_skip"  # 'on' (transaction-local): the triggers count nothing
SKIP_SQL = "SELECT set_config('callvault.usage_skip', 'on', true)"
TRIGGERS = {"INSERT": "callvault_usage_insert", "DELETE": "callvault_usage_delete", "UPDATE": "callvault_usage_update"}
HOUR = timedelta(hours=1)


def function_name(settings: Settings) -> sql.Identifier:
    """The trigger function of ``settings``' table, in callvault's schema (short, stable, one per table)."""
    digest = hashlib.sha256(settings.qualified.encode()).hexdigest()[:12]
    return sql.Identifier(META_SCHEMA, f"usage_{digest}")


def hour_sql(column: str = "started_at") -> sql.Composed:
    """The UTC hour of ``column`` (whatever the session's time zone)."""
    return sql.SQL("date_trunc('hour', {}, 'UTC')").format(sql.Identifier(column))


def dimension_sql(dim: MetadataKey | None) -> sql.Composable:
    """The dimension's value of a row (``''`` when the key is absent or no dimension is set)."""
    return sql.SQL("coalesce({}, '')").format(dim.pg()) if dim is not None else sql.Literal("")


def tables_sql() -> list[sql.Composed]:
    """``callvault.usage`` (row-level security with the tenant policy) and ``callvault.usage_dimension``."""
    from callvault.tenancy.policy import POLICY_NAME, TENANT_EXPR

    meta = sql.Identifier(META_SCHEMA)
    return [
        sql.SQL("CREATE SCHEMA IF NOT EXISTS {}").format(meta),
        sql.SQL(
            """CREATE TABLE IF NOT EXISTS {} (
    parent_table text NOT NULL,
    tenant_id uuid NOT NULL,
    hour timestamptz NOT NULL,
    dimension text NOT NULL DEFAULT '',
    calls bigint NOT NULL,
    seconds bigint NOT NULL,
    PRIMARY KEY (parent_table, tenant_id, hour, dimension)
)"""
        ).format(USAGE),
        sql.SQL("ALTER TABLE {} ENABLE ROW LEVEL SECURITY").format(USAGE),
        sql.SQL(
            "DO $cv$ BEGIN IF NOT EXISTS (SELECT FROM pg_policy WHERE polrelid = {r}::regclass AND polname = {p}) "
            "THEN CREATE POLICY {n} ON {t} USING ({e}); END IF; END $cv$"
        ).format(
            r=sql.Literal(f"{META_SCHEMA}.usage"),
            p=sql.Literal(POLICY_NAME),
            n=sql.Identifier(POLICY_NAME),
            t=USAGE,
            e=sql.SQL(TENANT_EXPR),
        ),
        sql.SQL(
            "CREATE TABLE IF NOT EXISTS {} (parent_table text PRIMARY KEY, path text[] NOT NULL, "
            "set_at timestamptz NOT NULL DEFAULT now())"
        ).format(DIMENSIONS),
    ]


def _upsert(settings: Settings, select: sql.Composable) -> sql.Composed:
    """Add ``select``'s (tenant_id, hour, dimension, calls, seconds) rows to the rollup, in key order."""
    return sql.SQL(
        "INSERT INTO {u} AS u (parent_table, tenant_id, hour, dimension, calls, seconds) "
        "SELECT {tbl}, tenant_id, hour, dimension, sum(calls), sum(seconds) FROM ({select}) d "
        "GROUP BY tenant_id, hour, dimension HAVING sum(calls) <> 0 OR sum(seconds) <> 0 "
        "ORDER BY tenant_id, hour, dimension "
        "ON CONFLICT (parent_table, tenant_id, hour, dimension) DO UPDATE "
        "SET calls = u.calls + excluded.calls, seconds = u.seconds + excluded.seconds"
    ).format(u=USAGE, tbl=sql.Literal(settings.qualified), select=select)


def rows_sql(dim: MetadataKey | None, source: sql.Composable, sign: int = 1, where: sql.Composable | None = None,
             ) -> sql.Composed:  # fmt: skip
    """One (tenant_id, hour, dimension, calls, seconds) row per call of ``source`` (``sign`` -1: subtract)."""
    return sql.SQL(
        "SELECT tenant_id, {h} AS hour, {d} AS dimension, {s}::bigint AS calls, "
        "{s}::bigint * coalesce(duration_sec, 0)::bigint AS seconds FROM {src}{w}"
    ).format(h=hour_sql(), d=dimension_sql(dim), s=sql.Literal(sign), src=source,
             w=sql.SQL(" WHERE {}").format(where) if where is not None else sql.SQL(""))  # fmt: skip


def _drop_zeros(settings: Settings, source: sql.Composable) -> sql.Composed:
    """Remove the rollup rows of ``source``'s (tenant, hour) that fell to zero calls."""
    return sql.SQL(
        "DELETE FROM {u} u WHERE u.parent_table = {tbl} AND u.calls <= 0 AND u.seconds <= 0 "
        "AND (u.tenant_id, u.hour) IN (SELECT tenant_id, {h} FROM {src})"
    ).format(u=USAGE, tbl=sql.Literal(settings.qualified), h=hour_sql(), src=source)


def function_sql(settings: Settings, dim: MetadataKey | None) -> sql.Composed:
    """The trigger function (SECURITY DEFINER: writers need no grant on the rollup)."""
    new, old = sql.Identifier("cv_new"), sql.Identifier("cv_old")
    both = sql.SQL("{} UNION ALL {}").format(rows_sql(dim, new), rows_sql(dim, old, -1))
    return sql.SQL(
        """CREATE OR REPLACE FUNCTION {fn}() RETURNS trigger LANGUAGE plpgsql SECURITY DEFINER
SET search_path = pg_catalog, pg_temp AS $cv$
BEGIN
    IF coalesce(current_setting('callvault.usage_skip', true), '') = 'on' THEN
        RETURN NULL;  -- restore: these calls were counted when first written
    END IF;
    IF TG_OP = 'INSERT' THEN
        {ins};
    ELSIF TG_OP = 'DELETE' THEN
        {dele};
        {zero_old};
    ELSE
        {upd};
        {zero_old};
    END IF;
    RETURN NULL;
END
$cv$"""
    ).format(
        fn=function_name(settings), ins=_upsert(settings, rows_sql(dim, new)),
        dele=_upsert(settings, rows_sql(dim, old, -1)), upd=_upsert(settings, both),
        zero_old=_drop_zeros(settings, old),
    )  # fmt: skip


def triggers_sql(settings: Settings) -> list[sql.Composed]:
    parent = sql.Identifier(settings.schema, settings.table)
    out = []
    for op, name in TRIGGERS.items():
        ref = {"INSERT": "NEW TABLE AS cv_new", "DELETE": "OLD TABLE AS cv_old",
               "UPDATE": "OLD TABLE AS cv_old NEW TABLE AS cv_new"}[op]  # fmt: skip
        out.append(
            sql.SQL("CREATE TRIGGER {} AFTER {} ON {} REFERENCING {} FOR EACH STATEMENT EXECUTE FUNCTION {}()").format(
                sql.Identifier(name), sql.SQL(op), parent, sql.SQL(ref), function_name(settings)
            )
        )
    return out


def backfill_sql(settings: Settings, dim: MetadataKey | None) -> sql.Composed:
    """Count the rows the table already holds (when the triggers are first installed)."""
    return _upsert(settings, rows_sql(dim, sql.Identifier(settings.schema, settings.table)))


def subtract_sql(settings: Settings, dim: MetadataKey | None, source: sql.Composable, where: sql.Composable,
                 ) -> list[sql.Composed]:  # fmt: skip
    """Subtract the calls of ``source`` (a detached partition) matching ``where`` (before they are deleted
    there: the parent's triggers do not see it)."""
    matched = sql.SQL("(SELECT * FROM {} WHERE {}) cv_old").format(source, where)
    return [_upsert(settings, rows_sql(dim, matched, -1)), _drop_zeros(settings, matched)]


# -- state -------------------------------------------------------------------------------------------
STATE_SQL = """
SELECT to_regclass(%(usage)s) IS NOT NULL,
       (SELECT count(*) FROM pg_trigger WHERE tgrelid = to_regclass(%(parent)s) AND tgname = ANY(%(names)s)),
       to_regprocedure(%(fn)s) IS NOT NULL
"""


def state(conn: Conn, settings: Settings) -> tuple[bool, int, bool]:
    """(rollup table exists, how many of the three triggers are on the parent, the function exists)."""
    row = conn.execute(STATE_SQL, {
        "usage": f"{META_SCHEMA}.usage", "parent": catalog.parent_regclass(settings), "names": list(TRIGGERS.values()),
        "fn": function_name(settings).as_string(conn) + "()",
    }).fetchone()  # fmt: skip
    assert row is not None
    return bool(row[0]), int(row[1]), bool(row[2])


def dimension_of(conn: Conn, settings: Settings) -> MetadataKey | None:
    """The table's usage dimension (a metadata key path), or None."""
    if not catalog.meta_table_exists(conn, "usage_dimension"):
        return None
    row = conn.execute(sql.SQL("SELECT path FROM {} WHERE parent_table = %s").format(DIMENSIONS),
                       (settings.qualified,)).fetchone()  # fmt: skip
    return MetadataKey(tuple(row[0])) if row else None


def install_steps(conn: Conn | None, settings: Settings) -> list[tuple[str, sql.Composed]]:
    """What ``init`` runs for the rollup: the tables when missing; the function and triggers when missing,
    with a count of the rows already there (same transaction: nothing counted twice or missed)."""
    have_table, triggers, have_fn = (False, 0, False) if conn is None else _state_or_nothing(conn, settings)
    steps: list[tuple[str, sql.Composed]] = []
    if not have_table:
        steps += [(f"usage rollup table ({i}/{len(tables_sql())})", s) for i, s in enumerate(tables_sql(), 1)]
    dim = dimension_of(conn, settings) if conn is not None and have_table else None
    if triggers < len(TRIGGERS) or not have_fn:
        steps.append(("usage rollup: the trigger function", function_sql(settings, dim)))
        if triggers:
            parent = sql.Identifier(settings.schema, settings.table)
            drop = sql.SQL("DROP TRIGGER IF EXISTS {} ON {}")
            steps += [(f"usage rollup: replace trigger {n}", drop.format(sql.Identifier(n), parent))
                      for n in TRIGGERS.values()]  # fmt: skip
        steps += [(f"usage rollup: trigger {n}", s) for n, s in zip(TRIGGERS.values(), triggers_sql(settings),
                                                                    strict=True)]  # fmt: skip
        if conn is not None and catalog.table_exists(conn, settings):
            steps.append(("usage rollup: count the calls already in the table", backfill_sql(settings, dim)))
        else:  # a new table: what an earlier, dropped table of this name counted is not its usage
            steps.append((
                "usage rollup: forget what an earlier table of this name counted",
                sql.SQL("DELETE FROM {} WHERE parent_table = {}").format(USAGE, sql.Literal(settings.qualified)),
            ))  # fmt: skip
    return steps


def _state_or_nothing(conn: Conn, settings: Settings) -> tuple[bool, int, bool]:
    if not catalog.table_exists(conn, settings):
        have_table = bool(conn.execute("SELECT to_regclass(%s) IS NOT NULL", (f"{META_SCHEMA}.usage",)).fetchone()[0])  # type: ignore[index]
        return have_table, 0, False
    return state(conn, settings)


def require_installed(conn: Conn, settings: Settings, *, reading: bool = False) -> None:
    """NotInitialised (the command to run) unless the rollup and its triggers are in place; unless
    ``reading``, also PermissionDenied for a role row-level security binds (a recount would see one
    tenant)."""
    if not catalog.table_exists(conn, settings):
        raise NotInitialised(f"{settings.qualified} is not set up: run `callvault init` first")
    from callvault import citus

    citus.refuse(conn, settings, "usage rollups", "statement triggers with transition tables do not run on "
                 "distributed tables; count with `callvault archive query` or daily_stats instead")  # fmt: skip
    have_table, triggers, have_fn = state(conn, settings)
    row = conn.execute("SELECT row_security_active(%s::regclass), current_user",
                       (catalog.parent_regclass(settings),)).fetchone()  # fmt: skip
    if row and row[0] and not reading:
        from callvault.errors import PermissionDenied

        raise PermissionDenied(
            f"role {row[1]} reads {settings.qualified} through row-level security, so it would count one tenant's "
            "calls only: run usage --check/--rebuild/--dimension as the table's owner (callvault_owner) or a superuser"
        )
    if not (have_table and have_fn and triggers == len(TRIGGERS)):
        raise NotInitialised(
            f"{settings.qualified} has no usage rollup yet (made by an older callvault): run `callvault init` once "
            "(it installs the rollup and counts the calls in the table), then `callvault usage --rebuild` for "
            "archived weeks"
        )


# -- applying deltas from outside Postgres (an erasure in the archive) -------------------------------------
Delta = tuple[str, datetime, str, int, int]  # (tenant, hour, dimension value, calls, seconds)


def apply(conn: Conn, settings: Settings, deltas: Iterable[Delta]) -> None:
    """Add ``deltas`` (negative to subtract) in ``conn``'s transaction; rows that reach zero go."""
    rows = list(deltas)
    if not rows:
        return
    values = sql.SQL(
        "SELECT t::uuid AS tenant_id, h AS hour, d AS dimension, c::bigint AS calls, s::bigint AS seconds "
        "FROM unnest(%s::text[], %s::timestamptz[], %s::text[], %s::bigint[], %s::bigint[]) AS x(t, h, d, c, s)"
    )
    params = ([r[0] for r in rows], [r[1] for r in rows], [r[2] for r in rows], [r[3] for r in rows],
              [r[4] for r in rows])  # fmt: skip
    conn.execute(_upsert(settings, values), params)
    conn.execute(
        sql.SQL(
            "DELETE FROM {} WHERE parent_table = %s AND calls <= 0 AND seconds <= 0 AND tenant_id = ANY(%s::uuid[])"
        ).format(USAGE),
        (settings.qualified, sorted({r[0] for r in rows})),
    )


# -- rebuild and check ---------------------------------------------------------------------------------
Key = tuple[str, datetime, str]  # (tenant, hour, dimension value)


@dataclass
class Recount:
    """Usage counted again from the calls that still exist, and what it covered."""

    counts: dict[Key, tuple[int, int]] = field(default_factory=dict)
    ranges: list[tuple[datetime, datetime]] = field(default_factory=list)  # hours counted (hot, detached, archive)
    pruned: list[tuple[str, datetime, datetime]] = field(default_factory=list)  # (tenant, from, to): left as is
    sources: dict[str, int] = field(default_factory=dict)  # calls counted per source

    def add(self, key: Key, calls: int, seconds: int) -> None:
        c, s = self.counts.get(key, (0, 0))
        self.counts[key] = (c + calls, s + seconds)

    def covers(self, tenant: str, hour: datetime) -> bool:
        if any(t == tenant and lo <= hour < hi for t, lo, hi in self.pruned):
            return False
        return any(lo <= hour < hi for lo, hi in self.ranges)


def _hot_and_detached(conn: Conn, settings: Settings, dim: MetadataKey | None, out: Recount) -> set[str]:
    """Count the attached partitions and the detached ones; the names of the detached ones."""
    agg = sql.SQL("SELECT tenant_id::text, hour, dimension, sum(calls)::bigint, sum(seconds)::bigint FROM ({}) r "
                  "GROUP BY 1, 2, 3")  # fmt: skip
    parent = sql.Identifier(settings.schema, settings.table)
    n = 0
    for t, h, d, c, s in conn.execute(agg.format(rows_sql(dim, parent))):
        out.add((t, h, d), int(c), int(s))
        n += int(c)
    out.sources["hot"] = n
    out.ranges += [(lo, hi) for lo, hi in catalog.partition_bounds(conn, settings)]
    detached = set()
    n = 0
    for name, _ in catalog.list_detached(conn, settings):
        detached.add(name)
        table = sql.Identifier(settings.schema, name)
        span = conn.execute(sql.SQL("SELECT min({h}), max({h}) FROM {t}").format(h=hour_sql(), t=table)).fetchone()
        if span is None or span[0] is None:
            continue
        for t, h, d, c, s in conn.execute(agg.format(rows_sql(dim, table))):
            out.add((t, h, d), int(c), int(s))
            n += int(c)
        out.ranges.append((span[0], span[1] + HOUR))
    out.sources["detached"] = n
    return detached


def _archived(settings: Settings, store_url: str | None, dim: MetadataKey | None, skip: set[str],
              attached: list[tuple[datetime, datetime]], out: Recount) -> None:  # fmt: skip
    """Count the archived periods no attached or detached partition holds (DuckDB over their objects)."""
    from callvault.archive import tier
    from callvault.archive.location import read_store

    store = read_store(settings, store_url)
    everything = [(datetime(1970, 1, 1, tzinfo=UTC), datetime(9999, 1, 1, tzinfo=UTC))]
    n = 0
    for m in tier._manifests(store, settings, everything):
        if m.partition in skip:
            continue
        gaps = tier.uncovered(m.start, m.end, attached)
        if not gaps:
            continue  # restored: counted from Postgres
        sources = []
        for tenant, entry in m.tenants.items():
            if entry.pruned_at:
                out.pruned.append((tenant, m.start, m.end))
                continue
            sources += [tier._Source(m.period, m.fmt, o.key, gaps) for o in entry.objects]
        out.ranges += gaps
        if not sources:
            continue
        dim_expr = f"coalesce({dim.duck()}, '')" if dim is not None else "''"
        with tier._duck(store, sources) as (con, rels):
            parts, params = [], []
            for src, rel in zip(sources, rels, strict=True):
                spans = " OR ".join(
                    "(started_at >= ?::TIMESTAMPTZ AND started_at < ?::TIMESTAMPTZ)" for _ in src.ranges
                )
                parts.append(f"SELECT tenant_hex, date_trunc('hour', started_at) AS hour, {dim_expr} AS dim, "
                             f"coalesce(duration_sec, 0) AS secs FROM {rel} WHERE {spans}")  # fmt: skip
                params += [t for span in src.ranges for t in span]
            rows = con.execute(
                "SELECT tenant_hex, epoch_us(hour), dim, count(*), sum(secs)::BIGINT FROM ("
                + " UNION ALL ".join(parts) + ") GROUP BY 1, 2, 3", params,
            ).fetchall()  # fmt: skip
        for hexid, us, d, c, s in rows:
            tenant = f"{hexid[:8]}-{hexid[8:12]}-{hexid[12:16]}-{hexid[16:20]}-{hexid[20:]}"
            hour = datetime(1970, 1, 1, tzinfo=UTC) + timedelta(microseconds=int(us))
            out.add((tenant, hour, str(d)), int(c), int(s or 0))
            n += int(c)
    out.sources["archive"] = n


def recount(conn: Conn, settings: Settings, store_url: str | None) -> Recount:
    """Count usage again from what exists: attached and detached partitions (in ``conn``'s snapshot) and
    the archive (when a store is configured or recorded)."""
    from callvault.archive.location import recorded_stores

    dim = dimension_of(conn, settings)
    out = Recount()
    detached = _hot_and_detached(conn, settings, dim, out)
    if store_url or settings.archive_url or recorded_stores(settings):
        _archived(settings, store_url, dim, detached, catalog.partition_bounds(conn, settings), out)
    return out


def stored(conn: Conn, settings: Settings) -> dict[Key, tuple[int, int]]:
    rows = conn.execute(
        sql.SQL("SELECT tenant_id::text, hour, dimension, calls, seconds FROM {} WHERE parent_table = %s").format(
            USAGE
        ),
        (settings.qualified,),
    ).fetchall()
    return {(t, h, d): (int(c), int(s)) for t, h, d, c, s in rows}


@dataclass
class UsageCheck:
    """``callvault usage --check`` / ``--rebuild``: the rollup against a recount."""

    table: str
    keys_checked: int
    differences: list[dict[str, object]]
    sources: dict[str, int]
    rebuilt: bool = False

    @property
    def ok(self) -> bool:
        return not self.differences

    def to_dict(self) -> dict[str, object]:
        """JSON-ready (``callvault usage --check --json``): at most 100 differences, and their total."""
        return {"table": self.table, "ok": self.ok, "rebuilt": self.rebuilt, "keys_checked": self.keys_checked,
                "calls_counted": self.sources, "differences": self.differences[:100],
                "differences_total": len(self.differences)}  # fmt: skip


def _compare(have: dict[Key, tuple[int, int]], again: Recount) -> tuple[int, list[dict[str, object]]]:
    keys = {k for k in have if again.covers(k[0], k[1])} | set(again.counts)
    diffs = []
    for k in sorted(keys):
        want, got = again.counts.get(k, (0, 0)), have.get(k, (0, 0))
        if want != got:
            diffs.append({"tenant_id": k[0], "hour": k[1].astimezone(UTC).isoformat(), "dimension": k[2],
                          "calls": got[0], "calls_counted": want[0],
                          "seconds": got[1], "seconds_counted": want[1]})  # fmt: skip
    return len(keys), diffs


def check(conn: Conn, settings: Settings, store_url: str | None = None) -> UsageCheck:
    """Compare the rollup with a recount (writes wait meanwhile: the parent is locked SHARE, reads go on)."""
    require_installed(conn, settings)
    with conn.transaction():
        _lock(conn, settings)
        again = recount(conn, settings, store_url)
        n, diffs = _compare(stored(conn, settings), again)
    return UsageCheck(settings.qualified, n, diffs, again.sources)


def rebuild(conn: Conn, settings: Settings, store_url: str | None = None) -> UsageCheck:
    """Replace the rollup, for every hour a recount covers, by the recount (periods whose objects archive
    retention deleted keep what the rollup has). One transaction, writes waiting on the parent's lock."""
    require_installed(conn, settings)
    with conn.transaction():
        _lock(conn, settings)
        again = recount(conn, settings, store_url)
        before = stored(conn, settings)
        _, diffs = _compare(before, again)
        gone = [k for k in before if again.covers(k[0], k[1])]
        if gone:
            conn.execute(
                sql.SQL(
                    "DELETE FROM {} u USING unnest(%s::uuid[], %s::timestamptz[], %s::text[]) AS x(t, h, d) "
                    "WHERE u.parent_table = %s AND u.tenant_id = x.t AND u.hour = x.h AND u.dimension = x.d"
                ).format(USAGE),
                ([k[0] for k in gone], [k[1] for k in gone], [k[2] for k in gone], settings.qualified),
            )
        apply(conn, settings, [(k[0], k[1], k[2], c, s) for k, (c, s) in again.counts.items()])
        event(log, logging.INFO, "usage rebuilt", table=settings.qualified, keys=len(again.counts),
              differences=len(diffs), **{f"calls_{k}": v for k, v in again.sources.items()})  # fmt: skip
    return UsageCheck(settings.qualified, len(again.counts), diffs, again.sources, rebuilt=True)


def _lock(conn: Conn, settings: Settings) -> None:
    conn.execute("SELECT set_config('lock_timeout', %s, true)", (f"{settings.lock_timeout_ms}ms",))
    conn.execute(sql.SQL("LOCK TABLE {} IN SHARE MODE").format(sql.Identifier(settings.schema, settings.table)))


def set_dimension(conn: Conn, settings: Settings, key: str | None, store_url: str | None = None) -> UsageCheck:
    """Count usage by ``key`` (a metadata key path such as ``agent``; None: no dimension) from now on, and
    rebuild the rollup so that the past is counted the same way."""
    require_installed(conn, settings)
    dim = MetadataKey.parse(key) if key is not None else None
    from callvault.privacy import subject

    caller = subject.load(conn, settings)
    if dim is not None and caller is not None and caller.path == dim.path:
        raise InvalidSetting(
            f"--metadata-key {key}: that key holds the caller (the privacy subject): usage rollups are kept after "
            "the calls, so they must not hold personal data; choose a key such as agent or campaign"
        )
    with conn.transaction():
        _lock(conn, settings)
        if dim is None:
            conn.execute(sql.SQL("DELETE FROM {} WHERE parent_table = %s").format(DIMENSIONS), (settings.qualified,))
        else:
            conn.execute(
                sql.SQL("INSERT INTO {} (parent_table, path) VALUES (%s, %s) ON CONFLICT (parent_table) "
                        "DO UPDATE SET path = excluded.path, set_at = now()").format(DIMENSIONS),
                (settings.qualified, list(dim.path)),
            )  # fmt: skip
        conn.execute(function_sql(settings, dim))
        return rebuild(conn, settings, store_url)
