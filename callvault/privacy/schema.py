"""The privacy bookkeeping tables (DDL text only, pure): the subject definition, legal holds and the
erasure journal. Created by ``init`` and, for older installs, on first use (:func:`ensure`)."""

from __future__ import annotations

from psycopg import sql

from callvault.config import META_SCHEMA

TABLES = ("privacy_subject", "holds", "erasures", "transcript_policy", "purge_queue")


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
        sql.SQL(
            """CREATE TABLE IF NOT EXISTS {}.transcript_policy (
    parent_table text NOT NULL,
    tenant_id    uuid,  -- NULL: the table's default
    keep         interval NOT NULL CHECK (keep > interval '0'),
    updated_at   timestamptz NOT NULL DEFAULT now(),
    UNIQUE NULLS NOT DISTINCT (parent_table, tenant_id)
)"""
        ).format(meta),
        sql.SQL(
            """CREATE TABLE IF NOT EXISTS {}.purge_queue (
    store_url text NOT NULL,
    key       text NOT NULL,
    queued_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (store_url, key)
)"""
        ).format(meta),
    ]
