"""``callvault init``: create (once) the partitioned table and hand it to pg_partman.

Idempotent: every step is decided from what exists, so a second run executes nothing. The same
decision gives the ``--sql`` twin: :func:`init_steps` returns the statements, :func:`init` runs them
in one transaction (all or nothing).

Default-partition policy: **none**. pg_partman 4.x creates ``<table>_default``; callvault drops it.
A row outside the live partition range then fails loudly (and the writer quarantines it with a reason)
instead of landing silently in a default partition, where it would make later maintenance fail
("updated partition constraint for default partition would be violated") and would block
``DETACH PARTITION ... CONCURRENTLY``. ``--default-partition`` keeps it; ``status``/``health`` then
report rows stranded there.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime

import psycopg
from psycopg import sql

from callvault import catalog, citus, db, embedded, naming, partman, schema, tenancy
from callvault.config import META_SCHEMA, Settings
from callvault.db import Conn
from callvault.errors import CallvaultError, InvalidSetting, NotInitialised, SchemaMismatch
from callvault.partman import PartmanInfo
from callvault.plan import Interval, PartitionInfo, partition_name
from callvault.roles import require_role_admin, role_steps
from callvault.tenancy import policy

OFFLINE_PARTMAN = PartmanInfo(version="4.7.2", schema="partman")  # what --sql assumes with no database

SHAPE_SQL = """
SELECT a.attname, format_type(a.atttypid, a.atttypmod), a.attnotnull
FROM pg_attribute a WHERE a.attrelid = %s::regclass AND a.attnum > 0 AND NOT a.attisdropped
"""
PARTKEY_SQL = """
SELECT p.partstrat, (SELECT attname FROM pg_attribute WHERE attrelid = p.partrelid AND attnum = p.partattrs[0])
FROM pg_partitioned_table p WHERE p.partrelid = %s::regclass
"""


@dataclass(frozen=True)
class Step:
    """One DDL step of ``init``: what it does, the statement, and the fix when it can fail on what exists."""

    what: str
    statement: sql.Composed
    fix: str | None = None  # when the statement can fail on what exists: what to do (init then names the step)


@dataclass
class InitReport:
    """What ``init`` did: the steps it ran (none when already initialised) and isolation repairs."""

    steps: list[Step] = field(default_factory=list)
    secured: list[str] = field(default_factory=list)  # partition repairs (tenant policy, grants, owner)

    def to_dict(self) -> dict[str, object]:
        """The report as ``callvault init --json`` prints it."""
        return {"changed": self.changed, "steps": [s.what for s in self.steps], "secured": self.secured}

    @property
    def changed(self) -> bool:
        """Whether init changed anything."""
        return bool(self.steps or self.secured)


def first_partition_start(settings: Settings, now: datetime) -> datetime:
    """Partitions are made to cover the whole retention window, so recent history can be loaded."""
    lc = settings.lifecycle
    origin = lc.retention.cutoff(now) if lc.retention else now
    return lc.interval.floor(origin)


def check_shape(conn: Conn, settings: Settings) -> None:
    """SchemaMismatch (exit 65) naming every difference when the table exists with another shape."""
    reg = catalog.parent_regclass(settings)
    actual = {name: (typ, notnull) for name, typ, notnull in conn.execute(SHAPE_SQL, (reg,)).fetchall()}
    key = conn.execute(PARTKEY_SQL, (reg,)).fetchone()
    partition_key = key[1] if key and key[0] == "r" else None
    problems = schema.describe_shape_problems(actual, partition_key)
    if problems:
        raise SchemaMismatch(
            f"{settings.qualified} exists with another shape: {'; '.join(problems)}. Nothing was changed; "
            "use another --table/--schema, or rename the existing table"
        )


def _interval_mismatch(settings: Settings, actual: Interval) -> InvalidSetting:
    return InvalidSetting(
        f"{settings.qualified} is already partitioned {actual}; --interval "
        f"{settings.lifecycle.interval} would need a data migration. Keep --interval {actual}"
    )


def _table_steps(
    conn: Conn | None, settings: Settings, pm: PartmanInfo, now: datetime, *, partman_installed: bool = True
) -> list[Step]:
    exists = conn is not None and catalog.table_exists(conn, settings)
    if exists:
        assert conn is not None
        check_shape(conn, settings)
        # Without the extension there is no part_config to read (e.g. after DROP EXTENSION pg_partman).
        current = partman.read_config(conn, settings, pm) if partman_installed else None
        if current is None:
            rows = catalog.list_partitions(conn, settings)
            if rows:
                return _reregister_steps(conn, settings, pm, now, rows, partman_installed=partman_installed)
        elif current.interval != settings.lifecycle.interval:
            raise _interval_mismatch(settings, current.interval)
        elif current == settings.lifecycle:
            return []
        else:
            # A config change alone: the next maintenance applies it (retention detaches only there).
            return [Step(f"update premake/retention of {settings.qualified}", partman.configure_sql(settings, pm))]
    steps: list[Step] = []
    stale = partman.registration(conn, settings, pm) if not exists and conn is not None and partman_installed else None
    if stale is not None:  # the table was dropped by hand: pg_partman's part_config row (and template) outlived it
        what = f"forget pg_partman's registration of the dropped table {settings.qualified}"
        steps.append(Step(what, partman.forget_sql(settings, pm, stale)))
    if not exists:
        if conn is None or not _schema_exists(conn, settings.schema):
            steps.append(Step(f"create schema {settings.schema}", schema.create_schema_sql(settings.schema)))
        steps.append(Step(f"{CREATE_TABLE} {settings.qualified}", schema.create_table_sql(settings)))
    start = first_partition_start(settings, now)
    steps.append(
        Step(
            f"{CREATE_PARENT} ({settings.lifecycle.interval}, from {start:%Y-%m-%d})",
            partman.create_parent_sql(settings, pm, start),
        )
    )
    if pm.major < 5 and not settings.default_partition:
        steps.append(Step("drop the default partition (policy: none)", schema.drop_default_partition_sql(settings)))
    steps.append(Step("configure retention/premake", partman.configure_sql(settings, pm)))
    return steps


CREATE_PARENT = "pg_partman create_parent"
DEFAULT_ASIDE_SUFFIX = "_cv_aside"  # the default partition's name while pg_partman re-registers the table


def _spans(p: PartitionInfo, interval: Interval) -> bool:
    """Whether ``p`` is exactly one aligned ``interval`` (pure)."""
    if p.start is None or p.end is None:
        return False
    return interval.floor(p.start) == p.start and interval.add(p.start) == p.end


def infer_interval(parts: list[PartitionInfo]) -> Interval | None:
    """The one interval every ranged partition spans exactly (aligned), or None (pure)."""
    ranged = [p for p in parts if not p.is_default]
    return next((i for i in Interval if ranged and all(_spans(p, i) for p in ranged)), None)


def _detach_sql(settings: Settings, child: str) -> sql.Composed:
    return sql.SQL("ALTER TABLE {} DETACH PARTITION {}").format(
        sql.Identifier(settings.schema, settings.table), sql.Identifier(settings.schema, child)
    )


def _rename_sql(schema_name: str, old: str, new: str) -> sql.Composed:
    return sql.SQL("ALTER TABLE {} RENAME TO {}").format(sql.Identifier(schema_name, old), sql.Identifier(new))


def _attach_default_sql(settings: Settings, child: str) -> sql.Composed:
    return sql.SQL("ALTER TABLE {} ATTACH PARTITION {} DEFAULT").format(
        sql.Identifier(settings.schema, settings.table), sql.Identifier(settings.schema, child)
    )


def _has_tenant_policy(conn: Conn, settings: Settings) -> bool:
    row = conn.execute(
        "SELECT 1 FROM pg_policy WHERE polrelid = %s::regclass AND polname = %s",
        (catalog.parent_regclass(settings), policy.POLICY_NAME),
    ).fetchone()
    return row is not None


def _reregister_steps(
    conn: Conn, settings: Settings, pm: PartmanInfo, now: datetime, rows: list[catalog.PartitionRow],
    *, partman_installed: bool,
) -> list[Step]:  # fmt: skip
    """A table callvault made whose pg_partman registration is gone (``DROP EXTENSION pg_partman
    CASCADE`` drops ``part_config``, not the table): hand it to pg_partman again with its partitions
    and rows as they are. ``create_parent`` skips the partitions that exist and creates the missing
    ones; a default partition is set aside meanwhile (pg_partman 4.x creates its own) and put back."""
    q = settings.qualified
    why = "pg_partman is not installed" if not partman_installed else f"pg_partman has no part_config row for {q}"
    if not _has_tenant_policy(conn, settings):
        raise NotInitialised(
            f"{q} is partitioned but not managed by pg_partman ({why}), already has partitions, and carries "
            f"no callvault tenant policy ({policy.POLICY_NAME}), so callvault did not create it and will not "
            "take it over. Register it with pg_partman's create_parent yourself, or use another --table"
        )
    infos = [r.info for r in rows]
    ranged = [p for p in infos if not p.is_default]
    interval = infer_interval(infos) if ranged else settings.lifecycle.interval
    if interval is None:
        widths = {i: sum(_spans(p, i) for p in ranged) for i in Interval}
        likely = max(widths, key=lambda i: widths[i])
        odd = next(p for p in ranged if not _spans(p, likely))
        lo, hi = (t.isoformat() if t else "unbounded" for t in (odd.start, odd.end))
        raise NotInitialised(
            f"{q} lost its pg_partman registration ({why}) and callvault cannot re-register it: its partitions "
            f"are not all one daily, weekly or monthly interval ({odd.name} spans {lo} to {hi}). Nothing was changed; "
            "move that partition's rows and drop it (or register the table with pg_partman's create_parent "
            "yourself), then run `callvault init` again"
        )
    if interval != settings.lifecycle.interval:
        raise _interval_mismatch(settings, interval)
    pattern = naming.default_pattern(interval, pm.major)  # what create_parent will name them
    misnamed = [
        p
        for p in ranged
        if p.start is not None and p.name != partition_name(settings.table, interval, p.start, pm.major, pattern)
    ]
    if misnamed:
        p = misnamed[0]
        assert p.start is not None
        raise NotInitialised(
            f"{q} lost its pg_partman registration ({why}) and callvault cannot re-register it: partition "
            f"{p.name} is not named as pg_partman {pm.version} names it "
            f"({partition_name(settings.table, interval, p.start, pm.major, pattern)}), so pg_partman would try to "
            "create an overlapping one. Nothing was changed; rename the partition, then run `callvault init` again"
        )
    default = next((p.name for p in infos if p.is_default), None)
    fix = (
        "`callvault init --sql` prints every statement of the repair: run them by hand to see which object is in "
        f"the way, or register {q} with pg_partman's create_parent yourself (docs/operations.md, \"pg_partman "
        'dropped")'
    )
    steps: list[Step] = []
    aside = None
    if default is not None:
        aside = default[: 63 - len(DEFAULT_ASIDE_SUFFIX)] + DEFAULT_ASIDE_SUFFIX
        taken = conn.execute("SELECT to_regclass(%s)", (sql.Identifier(settings.schema, aside).as_string(),))
        row = taken.fetchone()
        if row is not None and row[0] is not None:
            raise NotInitialised(
                f"{q} lost its pg_partman registration and its default partition {default} must be set aside "
                f"under the name {aside} while pg_partman re-registers the table, but a table of that name exists "
                "in the same schema. Nothing was changed; rename or drop that table, then run `callvault init` again"
            )
        steps += [
            Step(f"set the default partition {default} aside (its rows are kept)",
                 _detach_sql(settings, default), fix),
            Step(f"rename {default} to {aside} meanwhile", _rename_sql(settings.schema, default, aside), fix),
        ]  # fmt: skip
    start = first_partition_start(settings, now)
    steps.append(
        Step(
            f"{CREATE_PARENT}: re-register {q} and its {len(ranged)} existing {interval} partitions "
            f"(their rows are kept; missing ones from {start:%Y-%m-%d} are created)",
            partman.create_parent_sql(settings, pm, start),
            fix,
        )
    )
    # pg_partman 4.x always makes <table>_default (5.x when asked): the old one returns in its place, or
    # callvault's policy (none) drops it
    if aside is not None and (pm.major < 5 or settings.default_partition):
        steps.append(Step("drop the empty default partition pg_partman made (the old one returns)",
                          schema.drop_default_partition_sql(settings)))  # fmt: skip
    elif pm.major < 5 and not settings.default_partition:
        steps.append(Step("drop the default partition (policy: none)", schema.drop_default_partition_sql(settings)))
    if aside is not None and default is not None:
        steps += [
            Step(f"rename {aside} back to {default}", _rename_sql(settings.schema, aside, default), fix),
            Step(f"attach {default} again as the default partition", _attach_default_sql(settings, default), fix),
        ]
    steps.append(Step("configure retention/premake", partman.configure_sql(settings, pm)))
    return steps


def _settle(conn: Conn, settings: Settings) -> None:
    """``create_parent`` premakes by its own rule, pg_partman's maintenance by another (it counts from
    now, not from the current partition: see :mod:`callvault.partman_rules`). Create what maintenance
    would at this instant, so init ends where maintenance would and a `plan` right after init is empty.
    (Not ``run_maintenance()`` itself: pg_partman 4.7's show_partitions breaks on quoted names.)"""
    from callvault.maintain import current_plan

    pm = partman.installed(conn)
    assert pm is not None
    plan = current_plan(conn, settings, pm, db.server_now(conn))
    if plan.create:
        conn.execute(partman.create_partitions_sql(settings, pm, [p.start for p in plan.create]))


def _schema_exists(conn: Conn, name: str) -> bool:
    return conn.execute("SELECT 1 FROM pg_namespace WHERE nspname = %s", (name,)).fetchone() is not None


def _meta_steps(conn: Conn | None, pm: PartmanInfo) -> list[Step]:
    if conn is not None:  # an older install (no job history, or a pg_cron procedure that does not record it)
        row = conn.execute(
            "SELECT to_regclass(%s) IS NOT NULL AND to_regprocedure(%s) IS NOT NULL "
            "AND to_regprocedure(%s) IS NOT NULL AND to_regclass(%s) IS NOT NULL "
            "AND position('job_history' in pg_get_functiondef(to_regprocedure(%s))) > 0",
            (f"{META_SCHEMA}.quarantine", f"{META_SCHEMA}.run_maintenance(text)",
             f"{META_SCHEMA}.quarantine_once(text,text,text)", f"{META_SCHEMA}.job_history",
             f"{META_SCHEMA}.run_maintenance(text)"),
        ).fetchone()  # fmt: skip
        if row and row[0]:
            return []
    meta = schema.meta_schema_sql()
    steps = [Step(f"callvault bookkeeping ({i}/{len(meta)})", stmt) for i, stmt in enumerate(meta, 1)]
    steps.append(Step("maintenance procedure for pg_cron", schema.maintenance_procedure_sql(pm.schema)))
    steps.append(Step("only granted roles may quarantine through the definer", schema.revoke_quarantine_once_sql()))
    return steps


RLS_STATE_SQL = """
SELECT c.relrowsecurity, c.relforcerowsecurity,
       EXISTS (SELECT 1 FROM pg_policy p WHERE p.polrelid = c.oid AND p.polname = %s)
FROM pg_class c WHERE c.oid = %s::regclass
"""


def _rls_steps(conn: Conn | None, settings: Settings) -> list[Step]:
    """Row-level security on the parent: enabled, forced, callvault's tenant policy (always, with or
    without --roles). Partitions get the same from :func:`callvault.tenancy.secure` after creation."""
    rls = force = has_policy = False
    if conn is not None and catalog.table_exists(conn, settings):
        row = conn.execute(RLS_STATE_SQL, (policy.POLICY_NAME, catalog.parent_regclass(settings))).fetchone()
        assert row is not None
        rls, force, has_policy = row
    parent = policy.table(settings)
    steps = []
    if not rls:
        steps.append(Step("enable row-level security on the parent", policy.enable_rls_sql(parent)))
    if not force:
        steps.append(Step("force row-level security on the parent (its owner too)", policy.force_rls_sql(parent)))
    if not has_policy:
        steps.append(Step(f"tenant policy {policy.POLICY_NAME} (app.tenant_id)", policy.create_policy_sql(parent)))
    return steps


def init_steps(
    conn: Conn | None,
    settings: Settings,
    now: datetime | None = None,
    *,
    roles: bool = False,
    distributed: bool | None = None,
    shard_count: int | None = None,
) -> list[Step]:
    """What ``init`` would run, given what exists (``conn=None``: assume an empty database).
    ``roles``: also create the four roles and their grants (:mod:`callvault.roles`).
    ``distributed``: distribute the new table by ``tenant_id`` on Citus (:mod:`callvault.citus`; None:
    when this is a Citus coordinator with active workers), ``shard_count`` shards per partition."""
    if now is None:
        now = db.server_now(conn) if conn is not None else datetime.now(UTC)
    steps: list[Step] = []
    pm = partman.installed(conn) if conn is not None else None
    partman_installed = pm is not None
    if pm is None:
        version = partman.available_version(conn) if conn is not None else OFFLINE_PARTMAN.version
        pm = PartmanInfo(version=version, schema=settings.partman_schema)
        steps += [
            Step(f"install pg_partman {version} ({i}/2)", stmt)
            for i, stmt in enumerate(partman.install_sql(pm.schema), 1)
        ]
    partman.check_version(pm.version)
    table = _table_steps(conn, settings, pm, now, partman_installed=partman_installed)
    steps += _distribute(conn, settings, table, distributed, shard_count)
    meta = _meta_steps(conn, pm)
    steps += meta
    steps += _rls_steps(conn, settings)
    steps += _usage_steps(conn, settings, steps)
    if roles:
        # a (re)installed pg_partman has lost the owner's grants on its schema
        fresh = bool(meta) or not partman_installed or not (conn is not None and catalog.table_exists(conn, settings))
        steps += [Step(s.what, s.statement) for s in role_steps(conn, settings, pm, fresh=fresh)]
    return steps


def _usage_steps(conn: Conn | None, settings: Settings, steps: list[Step]) -> list[Step]:
    """The usage rollup (:mod:`callvault.usage`): not on Citus (its triggers cannot run on distributed tables)."""
    from callvault import usage

    if any(st.what.startswith("distribute ") for st in steps):
        return []
    if conn is not None and catalog.table_exists(conn, settings) and citus.is_distributed(conn, settings):
        return []
    return [Step(what, stmt) for what, stmt in usage.install_steps(conn, settings)]


def _distribute(
    conn: Conn | None, settings: Settings, table: list[Step], distributed: bool | None, shard_count: int | None
) -> list[Step]:
    """``table``'s steps with ``create_distributed_table`` right after the table is created (before
    pg_partman makes partitions, so each is distributed and colocated), when asked for or on Citus."""
    creating = next((i for i, st in enumerate(table) if st.what.startswith(CREATE_TABLE)), None)
    if distributed is False:
        return table
    if shard_count is not None and shard_count < 1:
        raise InvalidSetting(f"--shard-count {shard_count} must be at least 1 (e.g. {citus.DEFAULT_SHARD_COUNT})")
    info = None
    if conn is not None:
        info = citus.preflight(conn, settings) if distributed else citus.detect(conn)
        if distributed is None and (info is None or not info.preloaded or info.workers == 0):
            return table
        if creating is None and not citus.is_distributed(conn, settings) and catalog.table_exists(conn, settings):
            if distributed:
                raise InvalidSetting(
                    f"--distributed: {settings.qualified} already exists as a local table; callvault distributes a "
                    "table when it creates it (create_distributed_table on a filled table copies every row: do it "
                    "yourself in a quiet hour, then `callvault init` again)"
                )
            return table
    elif not distributed:
        return table
    if creating is None:
        return table
    n = shard_count or citus.DEFAULT_SHARD_COUNT
    step = Step(f"distribute {settings.qualified} by tenant_id ({n} shards per partition)",
                citus.distribute_sql(settings, n))  # fmt: skip
    return [*table[: creating + 1], step, *table[creating + 1 :]]


CREATE_TABLE = "create partitioned table"


def init(
    conn: Conn,
    settings: Settings,
    now: datetime | None = None,
    *,
    roles: bool = False,
    distributed: bool | None = None,
    shard_count: int | None = None,
) -> InitReport:
    """Run :func:`init_steps` in one transaction, then secure every partition; a failure changes nothing."""
    embedded.require_current_binaries(conn, f"init of {settings.qualified}")
    with conn.transaction():
        steps = init_steps(conn, settings, now, roles=roles, distributed=distributed, shard_count=shard_count)
        if roles:
            require_role_admin(conn, steps)
        for step in steps:
            _execute(conn, settings, step)
        if any(step.what.startswith(CREATE_PARENT) for step in steps):
            _settle(conn, settings)
        secured = tenancy.secure(conn, settings).require(f"init of {settings.qualified}")
    return InitReport(steps=steps, secured=secured)


def _execute(conn: Conn, settings: Settings, step: Step) -> None:
    try:
        conn.execute(step.statement)
    except psycopg.Error as exc:
        if step.fix is None or exc.sqlstate == "42501":  # privileges: the CLI's own message says whom to run as
            raise
        reason = (exc.diag.message_primary or str(exc) or type(exc).__name__).strip().splitlines()[0]
        raise CallvaultError(
            f"init of {settings.qualified} failed at step '{step.what}': {reason}. Nothing was changed (init is one "
            f"transaction); {step.fix}"
        ) from exc


def render(steps: list[Step], conn: Conn | None) -> str:
    """The steps as a SQL script (``init --sql``)."""
    parts = [f"-- {s.what}\n{s.statement.as_string(conn)};\n" for s in steps]
    if not parts:
        return "-- nothing to do: already initialised\n"
    parts.append(
        "-- then each partition gets the same policy, forced row-level security and the parent's owner, and\n"
        "-- loses any grant: `callvault init` does it in the same transaction, `callvault audit --fix` later.\n"
    )
    return "\n".join(parts)
