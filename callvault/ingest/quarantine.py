"""``callvault quarantine list|replay``: rows the writer set aside, and putting them back.

A quarantined row keeps the input as JSON text and the reason. To fix one, edit its ``raw`` JSON
(``UPDATE callvault.quarantine SET raw = ... WHERE id = ...``) or fix the cause (e.g. run
``callvault maintain`` so the missing partition exists), then ``replay``: each row is validated
again; good rows are inserted idempotently and leave the quarantine in the same transaction, rows
still bad stay with the new reason and an attempt count.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import datetime

from psycopg import sql

from callvault import catalog
from callvault.config import META_SCHEMA, Settings
from callvault.db import Conn
from callvault.ingest import _batch as b
from callvault.ingest._sync_io import _quarantine, merge_rows
from callvault.ingest.validate import LiveRange, Rejected, Row, Rules, validate

Q = sql.Identifier(META_SCHEMA, "quarantine")
DEFAULT_LIMIT = 10_000  # rows per replay run: one transaction, bounded memory


@dataclass(frozen=True)
class QuarantinedRow:
    id: int
    received_at: datetime
    reason: str
    raw: str
    attempts: int

    def to_dict(self) -> dict[str, object]:
        return {"id": self.id, "received_at": self.received_at.isoformat(), "reason": self.reason,
                "raw": self.raw, "attempts": self.attempts}  # fmt: skip


@dataclass(frozen=True)
class ReplayReport:
    tried: int
    written: int
    duplicates: int
    still_bad: int

    def to_dict(self) -> dict[str, int]:
        return self.__dict__.copy()


def list_rows(conn: Conn, settings: Settings, limit: int = 50) -> list[QuarantinedRow]:
    rows = conn.execute(
        sql.SQL(
            "SELECT id, received_at, reason, raw, attempts FROM {} WHERE target_table = %s ORDER BY id DESC LIMIT %s"
        ).format(Q),
        (settings.qualified, limit),
    ).fetchall()
    return [QuarantinedRow(*r) for r in rows]


def count(conn: Conn, settings: Settings) -> int:
    row = conn.execute(sql.SQL("SELECT count(*) FROM {} WHERE target_table = %s").format(Q), (settings.qualified,))
    got = row.fetchone()
    return int(got[0]) if got else 0


def _select(conn: Conn, settings: Settings, ids: list[int] | None, limit: int) -> list[tuple[int, str]]:
    where = sql.SQL("target_table = %s") + (sql.SQL(" AND id = ANY(%s)") if ids else sql.SQL(""))
    params: list[object] = [settings.qualified, *([ids] if ids else []), limit]
    query = sql.SQL("SELECT id, raw FROM {} WHERE {} ORDER BY id LIMIT %s FOR UPDATE SKIP LOCKED").format(Q, where)
    return [(int(i), str(raw)) for i, raw in conn.execute(query, params).fetchall()]


def replay(
    conn: Conn,
    settings: Settings,
    *,
    ids: list[int] | None = None,
    assume_utc: bool = False,
    limit: int = DEFAULT_LIMIT,
) -> ReplayReport:
    """Validate quarantined rows again; insert the good ones (idempotently) and remove them."""
    b.prepare_connection(conn)
    rules = Rules(assume_utc=assume_utc, live=LiveRange(catalog.partition_bounds(conn, settings)))
    with conn.transaction():
        picked = _select(conn, settings, ids, limit)
        good: list[Row] = []
        done: list[int] = []
        for qid, raw in picked:
            try:
                out = validate(json.loads(raw), rules)
            except ValueError as exc:
                out = Rejected(
                    raw, f"raw is not valid JSON ({exc}): fix it with UPDATE ... SET raw = ... WHERE id = {qid}"
                )
            if isinstance(out, Rejected):
                conn.execute(
                    sql.SQL(
                        "UPDATE {} SET reason = %s, attempts = attempts + 1, last_tried_at = now() WHERE id = %s"
                    ).format(Q),
                    (out.reason, qid),
                )
            else:
                good.append(out)
                done.append(qid)
        conn.execute(b.STAGE_DDL)
        written, refused = merge_rows(conn, settings, good)
        _quarantine(conn, settings, refused)  # refused by the database: back in with its reason
        conn.execute(sql.SQL("DELETE FROM {} WHERE id = ANY(%s)").format(Q), (done,))
    bad = len(picked) - len(done) + len(refused)
    return ReplayReport(
        tried=len(picked), written=written, duplicates=len(good) - written - len(refused), still_bad=bad
    )
