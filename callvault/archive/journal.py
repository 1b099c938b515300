"""The archive journal: one row per partition in ``callvault.archive_journal`` (the step it reached and
everything needed to resume), its history in ``callvault.archive_log``, and the catalog state of a
partition (attached / pending / detached / missing) that every step checks first."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

from psycopg import sql
from psycopg.types.json import Jsonb

from callvault import catalog
from callvault.config import META_SCHEMA, Settings
from callvault.db import Conn

STEPS = ("pending", "detached", "exported", "uploaded", "verified", "dropped")


@dataclass
class Job:
    """One partition's journal row, in memory."""

    partition: str
    start: datetime
    end: datetime
    step: str
    state: dict[str, Any]
    store_url: str
    fmt: str


def _meta(name: str) -> sql.Identifier:
    return sql.Identifier(META_SCHEMA, name)


ARCHIVE_TABLES = ("archive_journal", "archive_log", "archive_policy", "worker_status")


def ensure_tables(conn: Conn) -> None:
    """Create the archive bookkeeping of installs older than the archive (a no-op otherwise: the owner
    role may not create schemas in the database, and need not)."""
    from callvault.schema import archive_sql

    catalog.ensure_meta(conn, ARCHIVE_TABLES, archive_sql())


def load(conn: Conn, settings: Settings) -> dict[datetime, Job]:
    rows = conn.execute(
        sql.SQL(
            "SELECT partition, range_start, range_end, step, state, store_url, format FROM {} WHERE parent_table = %s"
        ).format(_meta("archive_journal")),
        (settings.qualified,),
    ).fetchall()
    return {r[1]: Job(r[0], r[1], r[2], r[3], dict(r[4]), r[5], r[6]) for r in rows}


def relation_state(conn: Conn, settings: Settings, name: str) -> str:
    """attached | pending (an interrupted DETACH CONCURRENTLY) | detached | missing."""
    row = conn.execute(
        """SELECT c.relispartition, i.inhdetachpending FROM pg_class c
           JOIN pg_namespace n ON n.oid = c.relnamespace LEFT JOIN pg_inherits i ON i.inhrelid = c.oid
           WHERE n.nspname = %s AND c.relname = %s AND c.relkind = 'r'""",
        (settings.schema, name),
    ).fetchone()
    if row is None:
        return "missing"
    if row[1]:
        return "pending"
    return "attached" if row[0] else "detached"


def save(conn: Conn, settings: Settings, job: Job, error: str | None = None, bump: bool = False) -> None:
    conn.execute(
        sql.SQL(
            """INSERT INTO {} AS j (parent_table, range_start, range_end, partition, step, store_url, format, state,
                                   error, attempts)
               VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s)
               ON CONFLICT (parent_table, range_start) DO UPDATE SET
                 range_end = excluded.range_end, partition = excluded.partition, step = excluded.step,
                 store_url = excluded.store_url, format = excluded.format, state = excluded.state,
                 error = excluded.error, attempts = j.attempts + excluded.attempts, updated_at = now()"""
        ).format(_meta("archive_journal")),
        (
            settings.qualified, job.start, job.end, job.partition, job.step, job.store_url, job.fmt,
            Jsonb(job.state), error, 1 if bump else 0,
        ),
    )  # fmt: skip


def log(conn: Conn, settings: Settings, job: Job, step: str, seconds: float, rows: int | None, size: int | None,
         detail: str | None = None) -> None:  # fmt: skip
    conn.execute(
        sql.SQL(
            "INSERT INTO {} (parent_table, partition, step, seconds, rows, bytes, detail) "
            "VALUES (%s, %s, %s, %s, %s, %s, %s)"
        ).format(_meta("archive_log")),
        (settings.qualified, job.partition, step, seconds, rows, size, detail),
    )


def journal_rows(conn: Conn, settings: Settings) -> list[dict[str, object]]:
    if not catalog.meta_table_exists(conn, "archive_journal"):
        return []
    rows = conn.execute(
        sql.SQL(
            "SELECT partition, range_start, step, error, attempts, updated_at FROM {} WHERE parent_table = %s "
            "ORDER BY range_start"
        ).format(_meta("archive_journal")),
        (settings.qualified,),
    ).fetchall()
    return [
        {"partition": p, "from": s.isoformat(), "step": st, "error": e, "attempts": a, "updated_at": u.isoformat()}
        for p, s, st, e, a, u in rows
    ]
