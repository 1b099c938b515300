"""``callvault quarantine list|replay``: rows the writer set aside, and putting them back.

A quarantined row keeps the input in the quarantine's encoding (:mod:`callvault.ingest.rawform`,
docs/ingest.md) and the reason. ``replay`` lands a row only when it is what the producer sent and the
writer's own validation (:func:`~callvault.ingest.validate.validate`) now accepts it:

* a row whose ``raw`` holds a tag marking a value as not the original (``$decimal``, ``$object``,
  ``$deep``...) is never landed; it stays, with the reason saying which field and why;
* a row validation refuses again stays, with the new reason;
* a row written by an older callvault (no ``"$format"``), whose encoding could turn a value it could
  not encode into a plausible string, lands only when its reason proves the row was otherwise valid (its
  partition was missing) and no replay has judged it since; it is re-encoded in the current format;
* a good row is inserted idempotently and leaves the quarantine in the same transaction: exactly once.

To fix a row, edit ``raw`` (keep ``"$format"``; ``UPDATE callvault.quarantine SET raw = ... WHERE
id = ...``) or fix the cause (``callvault maintain`` creates a missing partition), then ``replay``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime

from psycopg import sql

from callvault import catalog
from callvault.config import META_SCHEMA, Settings
from callvault.db import Conn
from callvault.errors import InvalidSetting
from callvault.ingest import _batch as b
from callvault.ingest import rawform
from callvault.ingest._sync_io import merge_indexed
from callvault.ingest.validate import LiveRange, Rejected, Row, Rules, is_range_reason, validate

Q = sql.Identifier(META_SCHEMA, "quarantine")
DEFAULT_LIMIT = 10_000  # rows per replay run: one transaction, bounded memory

LEGACY = (
    "written by an older callvault, whose quarantine turned values it could not encode into plausible strings "
    "(e.g. \"Decimal('1.10')\"), so raw may not be what was sent: check it against the source, then add "
    f'"$format": "{rawform.FORMAT}" to raw to replay it as it stands'
)


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
    refused: tuple[tuple[int, str], ...] = field(default=())  # (quarantine id, reason) of each row that stayed

    def to_dict(self) -> dict[str, object]:
        return {"tried": self.tried, "written": self.written, "duplicates": self.duplicates,
                "still_bad": self.still_bad, "refused": [{"id": i, "reason": r} for i, r in self.refused]}  # fmt: skip


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


def _select(conn: Conn, settings: Settings, ids: list[int] | None, limit: int) -> list[tuple[int, str, str, int]]:
    where = sql.SQL("target_table = %s") + (sql.SQL(" AND id = ANY(%s)") if ids else sql.SQL(""))
    params: list[object] = [settings.qualified, *([ids] if ids else []), limit]
    query = sql.SQL(
        "SELECT id, raw, reason, attempts FROM {} WHERE {} ORDER BY id LIMIT %s FOR UPDATE SKIP LOCKED"
    ).format(Q, where)
    return [(int(i), str(raw), str(why), int(n)) for i, raw, why, n in conn.execute(query, params).fetchall()]


@dataclass(frozen=True)
class _Verdict:
    row: Row | None = None  # lands (unless the database refuses it)
    reason: str | None = None  # stays, with this reason
    raw: str | None = None  # if it stays: re-encoded in the current format (a verified older row)


def judge(raw: str, reason: str, attempts: int, rules: Rules) -> _Verdict:
    """What replay does with one quarantined row (pure): land it, or keep it with a reason."""
    decoded = rawform.decode(raw)
    if decoded.error is not None:
        return _Verdict(
            reason=f"{decoded.error}: fix raw with UPDATE callvault.quarantine SET raw = ... WHERE id = ..."
        )
    if decoded.markers:
        found = rawform.note(decoded.markers)
        if decoded.legacy:
            return _Verdict(reason=reason if reason.startswith(LEGACY) else f"{LEGACY}; {found}; it was: {reason}")
        return _Verdict(reason=reason if found in reason else f"not replayed: {found}")
    restamped = None
    if decoded.legacy:
        if attempts != 1 or not is_range_reason(reason):
            return _Verdict(reason=reason if reason.startswith(LEGACY) else f"{LEGACY}; it was: {reason}")
        restamped = rawform.encode(decoded.value).text  # verified: valid but for its partition
    out = validate(decoded.value, rules)  # type: ignore[arg-type]  # exactly the writer's validation
    if isinstance(out, Rejected):
        return _Verdict(reason=out.reason, raw=restamped)
    return _Verdict(row=out, raw=restamped)


def replay(
    conn: Conn,
    settings: Settings,
    *,
    ids: list[int] | None = None,
    assume_utc: bool = False,
    limit: int = DEFAULT_LIMIT,
) -> ReplayReport:
    """Validate quarantined rows again; insert the good ones (idempotently) and remove them, in one transaction.

    ``assume_utc``: the operator's decision to read naive timestamps as UTC this time (the writer's
    ``Writer(assume_utc=True)``); everything else is judged exactly as the writer judges rows."""
    b.prepare_connection(conn)
    shape = catalog.table_shape(conn, settings)  # the table's own columns are replayed too
    rules = Rules(assume_utc=assume_utc, live=LiveRange(catalog.partition_bounds(conn, settings)), extras=shape.extras)
    with conn.transaction():
        picked = _select(conn, settings, ids, limit)
        missing = sorted(set(ids or ()) - {qid for qid, *_ in picked})
        if missing:
            listed = ", ".join(f"#{i}" for i in missing)
            raise InvalidSetting(
                f"--id {listed}: no such row in the quarantine of {settings.qualified} (replayed already, or never "
                "there); nothing was replayed. See `callvault quarantine list` for the ids there are"
            )
        good: list[tuple[int, Row, str | None]] = []
        stay: list[tuple[int, str, str | None]] = []  # (id, reason, new raw or None)
        for qid, raw, reason, attempts in picked:
            verdict = judge(raw, reason, attempts, rules)
            if verdict.row is not None:
                good.append((qid, verdict.row, verdict.raw))
            else:
                stay.append((qid, verdict.reason or reason, verdict.raw))
        conn.execute(b.stage_ddl(shape))
        written, refused = merge_indexed(conn, settings, [row for _, row, _ in good], 0, shape)
        refused_ids = {good[i][0] for i, _ in refused}
        stay += [(good[i][0], why, good[i][2]) for i, why in refused]  # refused by the database: stays, and why
        if stay:
            with conn.cursor() as cur:
                cur.executemany(
                    sql.SQL(
                        "UPDATE {} SET reason = %s, raw = coalesce(%s, raw), attempts = attempts + 1, "
                        "last_tried_at = now() WHERE id = %s"
                    ).format(Q),
                    [(why, raw, qid) for qid, why, raw in stay],
                )
        landed = [qid for qid, _, _ in good if qid not in refused_ids]
        conn.execute(sql.SQL("DELETE FROM {} WHERE id = ANY(%s)").format(Q), (landed,))
    return ReplayReport(
        tried=len(picked),
        written=written,
        duplicates=len(landed) - written,
        still_bad=len(stay),
        refused=tuple(sorted((qid, why) for qid, why, _ in stay)),
    )
