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

from psycopg import sql

from callvault import catalog, db, partman, schema, tenancy
from callvault.config import META_SCHEMA, Settings
from callvault.db import Conn
from callvault.errors import InvalidSetting, NotInitialised, SchemaMismatch
from callvault.partman import PartmanInfo
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
    what: str
    statement: sql.Composed


@dataclass
class InitReport:
    steps: list[Step] = field(default_factory=list)
    secured: list[str] = field(default_factory=list)  # partition repairs (tenant policy, grants, owner)

    @property
    def changed(self) -> bool:
        return bool(self.steps or self.secured)


def first_partition_start(settings: Settings, now: datetime) -> datetime:
    """Partitions are made to cover the whole retention window, so recent history can be loaded."""
    lc = settings.lifecycle
    origin = lc.retention.cutoff(now) if lc.retention else now
    return lc.interval.floor(origin)


def check_shape(conn: Conn, settings: Settings) -> None:
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


def _table_steps(conn: Conn | None, settings: Settings, pm: PartmanInfo, now: datetime) -> list[Step]:
    exists = conn is not None and catalog.table_exists(conn, settings)
    if exists:
        assert conn is not None
        check_shape(conn, settings)
        current = partman.read_config(conn, settings, pm)
        if current is None:
            if catalog.list_partitions(conn, settings):
                raise NotInitialised(
                    f"{settings.qualified} is partitioned but not managed by pg_partman, and already has "
                    "partitions; callvault will not take it over. Register it with create_parent yourself "
                    "or use another --table"
                )
        elif current.interval != settings.lifecycle.interval:
            raise InvalidSetting(
                f"{settings.qualified} is already partitioned {current.interval}; --interval "
                f"{settings.lifecycle.interval} would need a data migration. Keep --interval {current.interval}"
            )
        elif current == settings.lifecycle:
            return []
        else:
            # A config change alone: the next maintenance applies it (retention detaches only there).
            return [Step(f"update premake/retention of {settings.qualified}", partman.configure_sql(settings, pm))]
    steps: list[Step] = []
    if not exists:
        if conn is None or not _schema_exists(conn, settings.schema):
            steps.append(Step(f"create schema {settings.schema}", schema.create_schema_sql(settings.schema)))
        steps.append(Step(f"create partitioned table {settings.qualified}", schema.create_table_sql(settings)))
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
    if conn is not None:
        row = conn.execute(
            "SELECT to_regclass(%s) IS NOT NULL AND to_regclass(%s) IS NOT NULL AND to_regprocedure(%s) IS NOT NULL "
            "AND to_regprocedure(%s) IS NOT NULL",
            (f"{META_SCHEMA}.maintenance_log", f"{META_SCHEMA}.quarantine", f"{META_SCHEMA}.run_maintenance(text)",
             f"{META_SCHEMA}.quarantine_once(text,text,text)"),
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
    conn: Conn | None, settings: Settings, now: datetime | None = None, *, roles: bool = False
) -> list[Step]:
    """What ``init`` would run, given what exists (``conn=None``: assume an empty database).
    ``roles``: also create the four roles and their grants (:mod:`callvault.roles`)."""
    if now is None:
        now = db.server_now(conn) if conn is not None else datetime.now(UTC)
    steps: list[Step] = []
    pm = partman.installed(conn) if conn is not None else None
    if pm is None:
        version = partman.available_version(conn) if conn is not None else OFFLINE_PARTMAN.version
        pm = PartmanInfo(version=version, schema=settings.partman_schema)
        steps += [
            Step(f"install pg_partman {version} ({i}/2)", stmt)
            for i, stmt in enumerate(partman.install_sql(pm.schema), 1)
        ]
    steps += _table_steps(conn, settings, pm, now)
    meta = _meta_steps(conn, pm)
    steps += meta
    steps += _rls_steps(conn, settings)
    if roles:
        fresh = bool(meta) or not (conn is not None and catalog.table_exists(conn, settings))
        steps += [Step(s.what, s.statement) for s in role_steps(conn, settings, pm, fresh=fresh)]
    return steps


def init(conn: Conn, settings: Settings, now: datetime | None = None, *, roles: bool = False) -> InitReport:
    """Run :func:`init_steps` in one transaction, then secure every partition; a failure changes nothing."""
    with conn.transaction():
        steps = init_steps(conn, settings, now, roles=roles)
        if roles:
            require_role_admin(conn, steps)
        for step in steps:
            conn.execute(step.statement)
        if any(step.what.startswith(CREATE_PARENT) for step in steps):
            _settle(conn, settings)
        secured = tenancy.secure(conn, settings).require(f"init of {settings.qualified}")
    return InitReport(steps=steps, secured=secured)


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
