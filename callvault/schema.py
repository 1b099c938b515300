"""The ``call_logs`` DDL as pure SQL builders. Nothing here touches a connection.

Keys (see docs/design.md for the reasoning and the measurement):

* ``PRIMARY KEY (tenant_id, started_at, id) INCLUDE (call_id, ended_at, duration_sec)`` serves the
  tenant time-window query (``WHERE tenant_id = $1 AND started_at >= $2 AND started_at < $3 ORDER BY
  started_at DESC``) and keyset pagination with one index, as an index-only scan: listing a tenant's
  calls never touches the heap (where 1 KB transcripts live), so it stays fast when the table is
  far larger than memory.
* ``UNIQUE (tenant_id, call_id, started_at)`` makes a retried write idempotent and turns a lookup by
  call id into one index probe per live partition.

Both contain the partition key (Postgres requires it) and ``tenant_id`` first, so a duplicate-key
error can never reveal another tenant's data, and the layout stays Citus-compatible.
"""

from __future__ import annotations

from dataclasses import dataclass

from psycopg import sql

from callvault import columns
from callvault.config import META_SCHEMA, Settings

# The seed's columns, as format_type() prints them: name -> type (from the one spec, callvault.columns).
COLUMNS: dict[str, str] = {c.name: c.pg for c in columns.COLUMNS}
NOT_NULL = frozenset(c.name for c in columns.COLUMNS if c.not_null)
PARTITION_KEY = "started_at"


@dataclass(frozen=True)
class Names:
    """Every identifier derived from the settings, composed (never pasted) by psycopg.sql."""

    table: sql.Identifier
    pkey: sql.Identifier
    call_uq: sql.Identifier
    ended_check: sql.Identifier
    duration_check: sql.Identifier
    default_partition: sql.Identifier

    @classmethod
    def of(cls, s: Settings) -> Names:
        return cls(
            table=sql.Identifier(s.schema, s.table),
            pkey=sql.Identifier(f"{s.table}_pkey"),
            call_uq=sql.Identifier(f"{s.table}_call_uq"),
            ended_check=sql.Identifier(f"{s.table}_ended_check"),
            duration_check=sql.Identifier(f"{s.table}_duration_check"),
            default_partition=sql.Identifier(s.schema, f"{s.table}_default"),
        )


def create_schema_sql(schema: str) -> sql.Composed:
    return sql.SQL("CREATE SCHEMA IF NOT EXISTS {}").format(sql.Identifier(schema))


COLUMNS_DDL = "\n" + columns.ddl_lines()


def create_bare_table_sql(table: sql.Identifier) -> sql.Composed:
    """The seed's columns without keys (benchmarks add other key layouts to it)."""
    return sql.SQL("CREATE TABLE {} (" + COLUMNS_DDL + "\n) PARTITION BY RANGE (started_at)").format(table)


def create_table_sql(s: Settings) -> sql.Composed:
    n = Names.of(s)
    return sql.SQL(
        """CREATE TABLE {table} ("""
        + COLUMNS_DDL
        + """,
    CONSTRAINT {pkey} PRIMARY KEY (tenant_id, started_at, id) INCLUDE (call_id, ended_at, duration_sec),
    CONSTRAINT {call_uq} UNIQUE (tenant_id, call_id, started_at),
    CONSTRAINT {ended_check} CHECK (ended_at IS NULL OR ended_at >= started_at),
    CONSTRAINT {duration_check} CHECK (duration_sec IS NULL OR duration_sec >= 0)
) PARTITION BY RANGE (started_at)"""
    ).format(
        table=n.table, pkey=n.pkey, call_uq=n.call_uq, ended_check=n.ended_check,
        duration_check=n.duration_check,
    )  # fmt: skip


def drop_default_partition_sql(s: Settings) -> sql.Composed:
    return sql.SQL("DROP TABLE IF EXISTS {}").format(Names.of(s).default_partition)


def meta_schema_sql() -> list[sql.Composed]:
    """callvault's own bookkeeping: the quarantine, the archive journal and the one run history
    (``job_history``: every job's runs, maintenance included; ``status`` shows the last maintenance)."""
    return [
        create_schema_sql(META_SCHEMA),
        *quarantine_sql(),
        *archive_sql(),
        *history_sql(),
        *privacy_sql(),
    ]


def quarantine_sql() -> list[sql.Composed]:
    """Rows the writer set aside: the input as JSON text (ASCII, so NUL and lone surrogates survive as
    escapes and can be fixed and replayed), why, and for which table."""
    meta = sql.Identifier(META_SCHEMA)
    return [
        sql.SQL(
            """CREATE TABLE IF NOT EXISTS {}.quarantine (
    id            bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    target_table  text NOT NULL,
    received_at   timestamptz NOT NULL DEFAULT now(),
    reason        text NOT NULL,
    raw           text NOT NULL,
    attempts      integer NOT NULL DEFAULT 1,
    last_tried_at timestamptz NOT NULL DEFAULT now()
)"""
        ).format(meta),
        sql.SQL("CREATE INDEX IF NOT EXISTS quarantine_target_idx ON {}.quarantine (target_table, id)").format(meta),
        sql.SQL("CREATE INDEX IF NOT EXISTS quarantine_raw_idx ON {}.quarantine (target_table, md5(raw))").format(meta),
        quarantine_once_sql(),
    ]


def quarantine_once_sql() -> sql.Composed:
    """Quarantine a row of a re-sent batch unless the first attempt already did.

    SECURITY DEFINER so the trusted ingest role needs only EXECUTE: checking for the earlier copy
    means reading ``raw`` (transcripts), which that role must not be able to do itself. The
    search_path is pinned, as every SECURITY DEFINER function's must be."""
    return sql.SQL(
        """CREATE OR REPLACE FUNCTION {f}(p_target text, p_reason text, p_raw text) RETURNS void
LANGUAGE sql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $fn$
    INSERT INTO {q} (target_table, reason, raw) SELECT p_target, p_reason, p_raw
    WHERE NOT EXISTS (SELECT 1 FROM {q} WHERE target_table = p_target AND md5(raw) = md5(p_raw) AND raw = p_raw)
$fn$"""
    ).format(f=sql.Identifier(META_SCHEMA, "quarantine_once"), q=sql.Identifier(META_SCHEMA, "quarantine"))


def archive_sql() -> list[sql.Composed]:
    """The archive journal (one row per partition: the step it reached and what it needs to resume),
    its step log, the per-tenant archive retention policy and the worker's heartbeat."""
    meta = sql.Identifier(META_SCHEMA)
    return [
        sql.SQL(
            """CREATE TABLE IF NOT EXISTS {}.archive_journal (
    parent_table text NOT NULL,
    range_start  timestamptz NOT NULL,
    range_end    timestamptz NOT NULL,
    partition    text NOT NULL,
    step         text NOT NULL
                 CHECK (step IN ('pending', 'detached', 'exported', 'uploaded', 'verified', 'dropped')),
    store_url    text NOT NULL,
    format       text NOT NULL,
    state        jsonb NOT NULL DEFAULT '{{}}',
    error        text,
    attempts     integer NOT NULL DEFAULT 0,
    created_at   timestamptz NOT NULL DEFAULT now(),
    updated_at   timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (parent_table, range_start)
)"""
        ).format(meta),
        sql.SQL(
            """CREATE TABLE IF NOT EXISTS {}.archive_log (
    id           bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    parent_table text NOT NULL,
    partition    text NOT NULL,
    step         text NOT NULL,
    at           timestamptz NOT NULL DEFAULT clock_timestamp(),
    seconds      double precision,
    rows         bigint,
    bytes        bigint,
    detail       text
)"""
        ).format(meta),
        keep_policy_sql("archive_policy"),
        sql.SQL(
            """CREATE TABLE IF NOT EXISTS {}.worker_status (
    parent_table  text PRIMARY KEY,
    pid           integer NOT NULL,
    host          text NOT NULL,
    every_seconds integer NOT NULL,
    cycle_started timestamptz,
    cycle_ok      timestamptz,
    last_error    text,
    updated_at    timestamptz NOT NULL DEFAULT now()
)"""
        ).format(meta),
    ]


def revoke_quarantine_once_sql() -> sql.Composed:
    """Functions are executable by PUBLIC by default; this one is for the ingest role only."""
    return sql.SQL("REVOKE ALL ON FUNCTION {}(text, text, text) FROM PUBLIC").format(
        sql.Identifier(META_SCHEMA, "quarantine_once")
    )


def maintenance_procedure_sql(partman_schema: str) -> sql.Composed:
    """``CALL callvault.run_maintenance('schema.table')``: what pg_cron runs.

    It pins the session time zone to UTC first (pg_partman computes boundaries in the session time
    zone; monthly partitions drift otherwise) and records the run for ``callvault status``.

    An interrupted ``DETACH ... CONCURRENTLY`` is finished first (``FINALIZE``, 2 s lock budget). If a
    session keeps it pending, pg_partman's retention would fail and take premaking down with it, so
    the run premakes with retention switched off inside its own transaction (the ``part_config`` row
    is restored before commit: no other session ever sees the change) and warns; ``callvault health``
    reports the pending detach. The run is also recorded in the job history (``callvault history``;
    90 days kept), when the install has it (a run that fails rolls back, record included: pg_cron's
    ``cron.job_run_details`` has those).
    """
    return sql.SQL(
        """CREATE OR REPLACE PROCEDURE {meta}.run_maintenance(p_parent_table text)
LANGUAGE plpgsql AS $proc$
DECLARE
    t0 timestamptz := clock_timestamp();
    v_child regclass;
    v_blocked text;
    v_retention text;
BEGIN
    PERFORM set_config('timezone', 'UTC', false);
    PERFORM set_config('lock_timeout', '2s', true);
    FOR v_child IN SELECT i.inhrelid::regclass FROM pg_inherits i
                   WHERE i.inhparent = p_parent_table::regclass AND i.inhdetachpending LOOP
        BEGIN
            EXECUTE format('ALTER TABLE %s DETACH PARTITION %s FINALIZE', p_parent_table::regclass, v_child);
        EXCEPTION WHEN lock_not_available OR query_canceled THEN
            v_blocked := v_child::text;
        END;
    END LOOP;
    PERFORM set_config('lock_timeout', '0', true);
    IF v_blocked IS NOT NULL THEN
        SELECT retention INTO v_retention FROM {partman}.part_config WHERE parent_table = p_parent_table;
        UPDATE {partman}.part_config SET retention = NULL WHERE parent_table = p_parent_table;
        PERFORM {partman}.run_maintenance(p_parent_table => p_parent_table, p_analyze => false, p_jobmon => false);
        UPDATE {partman}.part_config SET retention = v_retention WHERE parent_table = p_parent_table;
        RAISE WARNING 'callvault: the interrupted detach of % cannot finish (a session holds a lock on it): '
                      'partitions were premade, retention waits for the next run', v_blocked;
    ELSE
        PERFORM {partman}.run_maintenance(p_parent_table => p_parent_table, p_analyze => false, p_jobmon => false);
    END IF;
    IF to_regclass('{meta_text}.job_history') IS NOT NULL AND to_regclass('{meta_text}.job_totals') IS NOT NULL THEN
        INSERT INTO {meta}.job_history (parent_table, job, started_at, finished_at, outcome, counts, error, host)
        VALUES (p_parent_table, 'maintain', t0, clock_timestamp(),
                CASE WHEN v_blocked IS NULL THEN 'ok' ELSE 'blocked' END, '{{"source": "pg_cron"}}',
                CASE WHEN v_blocked IS NULL THEN NULL
                ELSE 'retention did not run: the interrupted detach of ' || v_blocked || ' cannot finish' END,
                'pg_cron');
        INSERT INTO {meta}.job_totals AS t (parent_table, job, outcome, runs)
        VALUES (p_parent_table, 'maintain', CASE WHEN v_blocked IS NULL THEN 'ok' ELSE 'blocked' END, 1)
        ON CONFLICT (parent_table, job, outcome) DO UPDATE SET runs = t.runs + 1;
        DELETE FROM {meta}.job_history WHERE parent_table = p_parent_table
          AND finished_at < clock_timestamp() - interval '90 days';
    END IF;
END
$proc$"""
    ).format(meta=sql.Identifier(META_SCHEMA), partman=sql.Identifier(partman_schema), meta_text=sql.SQL(META_SCHEMA))


def describe_shape_problems(actual: dict[str, tuple[str, bool]], partition_key: str | None) -> list[str]:
    """Differences between an existing table and the shape callvault manages (pure).

    ``actual`` maps column -> (format_type, not_null); ``partition_key`` is the RANGE key column,
    or None when the table is not range-partitioned.
    """
    problems = []
    if partition_key != PARTITION_KEY:
        got = "not partitioned" if partition_key is None else f"partitioned by {partition_key}"
        problems.append(f"it must be PARTITION BY RANGE ({PARTITION_KEY}) but is {got}")
    for name, typ in COLUMNS.items():
        if name not in actual:
            problems.append(f"column {name} ({typ}) is missing")
            continue
        got_type, not_null = actual[name]
        if got_type != typ:
            problems.append(f"column {name} is {got_type}, expected {typ}")
        if name in NOT_NULL and not not_null:
            problems.append(f"column {name} must be NOT NULL")
    return problems


def keep_policy_sql(name: str) -> sql.Composed:
    """A table of "keep for" policies: the table's default (``tenant_id`` NULL) and per-tenant overrides
    (``archive_policy``, ``transcript_policy``)."""
    return sql.SQL(
        """CREATE TABLE IF NOT EXISTS {} (
    parent_table text NOT NULL,
    tenant_id    uuid,
    keep         interval NOT NULL CHECK (keep > interval '0'),
    updated_at   timestamptz NOT NULL DEFAULT now(),
    UNIQUE NULLS NOT DISTINCT (parent_table, tenant_id)
)"""
    ).format(sql.Identifier(META_SCHEMA, name))


def history_sql() -> list[sql.Composed]:
    """``callvault.job_history`` (one row per run, bounded) and ``callvault.job_totals`` (runs per outcome)."""
    meta = sql.Identifier(META_SCHEMA)
    return [
        sql.SQL(
            """CREATE TABLE IF NOT EXISTS {}.job_history (
    id           bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    parent_table text NOT NULL,
    job          text NOT NULL,
    started_at   timestamptz NOT NULL,
    finished_at  timestamptz NOT NULL,
    outcome      text NOT NULL CHECK (outcome IN ('ok', 'failed', 'blocked')),
    counts       jsonb NOT NULL DEFAULT '{{}}',
    error        text,
    host         text,
    pid          integer
)"""
        ).format(meta),
        sql.SQL(
            "CREATE INDEX IF NOT EXISTS job_history_finished_idx ON {}.job_history (parent_table, job, finished_at)"
        ).format(meta),
        sql.SQL("CREATE INDEX IF NOT EXISTS job_history_age_idx ON {}.job_history (parent_table, finished_at)").format(
            meta
        ),
        sql.SQL(
            """CREATE TABLE IF NOT EXISTS {}.job_totals (
    parent_table text NOT NULL,
    job          text NOT NULL,
    outcome      text NOT NULL,
    runs         bigint NOT NULL DEFAULT 0,
    counts       jsonb NOT NULL DEFAULT '{{}}',
    PRIMARY KEY (parent_table, job, outcome)
)"""
        ).format(meta),
    ]


# -- privacy: the subject, legal holds, erasures, transcript policies (callvault.privacy) --------------
PRIVACY_TABLES = ("privacy_subject", "holds", "erasures", "transcript_policy", "purge_queue")


def privacy_sql() -> list[sql.Composed]:
    meta = sql.Identifier(META_SCHEMA)
    return [
        sql.SQL(
            """CREATE TABLE IF NOT EXISTS {}.privacy_subject (
    parent_table text PRIMARY KEY,
    path         text[] NOT NULL,  -- the subject's key path in metadata, e.g. {{caller}}
    index_name   text,
    bloom_key    bytea,  -- keys the archive's subject filters (callvault.privacy.index)
    set_at       timestamptz NOT NULL DEFAULT now()
)"""
        ).format(meta),
        sql.SQL("ALTER TABLE {}.privacy_subject ADD COLUMN IF NOT EXISTS bloom_key bytea").format(meta),
        sql.SQL(
            """CREATE TABLE IF NOT EXISTS {}.holds (
    id           bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    parent_table text NOT NULL,
    tenant_id    uuid NOT NULL,
    subject      text,  -- NULL: the whole tenant
    reason       text NOT NULL,
    placed_by    text NOT NULL,
    placed_at    timestamptz NOT NULL DEFAULT now(),
    released_by  text,
    released_at  timestamptz
)"""
        ).format(meta),
        sql.SQL(
            "CREATE INDEX IF NOT EXISTS holds_active_idx ON {}.holds (parent_table, tenant_id) "
            "WHERE released_at IS NULL"
        ).format(meta),
        sql.SQL(
            """CREATE TABLE IF NOT EXISTS {}.erasures (
    id           uuid PRIMARY KEY,
    parent_table text NOT NULL,
    tenant_id    uuid NOT NULL,
    kind         text NOT NULL CHECK (kind IN ('tenant', 'subject', 'calls')),
    selector     jsonb,  -- the subject or call ids while the request runs; NULL once done (the receipt keeps none)
    step         text NOT NULL CHECK (step IN ('hot', 'detached', 'quarantine', 'archive', 'done')),
    counts       jsonb NOT NULL DEFAULT '{{}}',
    state        jsonb NOT NULL DEFAULT '{{}}',
    requested_by text NOT NULL,
    created_at   timestamptz NOT NULL DEFAULT now(),
    updated_at   timestamptz NOT NULL DEFAULT now(),
    finished_at  timestamptz,
    error        text
)"""
        ).format(meta),
        keep_policy_sql("transcript_policy"),
        sql.SQL(
            """CREATE TABLE IF NOT EXISTS {}.purge_queue (
    store_url text NOT NULL,
    key       text NOT NULL,
    queued_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (store_url, key)
)"""
        ).format(meta),
    ]
