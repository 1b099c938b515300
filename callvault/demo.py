"""``callvault demo``: synthetic calls over the last 13 weeks and the next one, on the embedded default."""

from __future__ import annotations

import json
import random
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from psycopg import sql

from callvault import catalog
from callvault.config import Settings
from callvault.db import Conn

TENANTS = 20
HISTORY = timedelta(weeks=13)
AHEAD = timedelta(weeks=1)
PHRASES = (
    "Hi, I'd like to reschedule my appointment.", "Sure, what day works for you?",
    "Can you confirm my insurance details?", "Your order has shipped and arrives Thursday.",
    "I was charged twice this month.", "Let me transfer you to a specialist.",
    "Thanks for calling, is there anything else?", "The clinic opens at nine tomorrow.",
)  # fmt: skip


@dataclass(frozen=True)
class SeedReport:
    rows: int
    tenants: list[uuid.UUID]
    first: datetime
    last: datetime


def tenant_ids(n: int = TENANTS) -> list[uuid.UUID]:
    """Stable tenant ids, so running the demo twice adds calls to the same tenants."""
    return [uuid.uuid5(uuid.NAMESPACE_URL, f"callvault-demo-tenant-{i}") for i in range(n)]


def synthetic_calls(n: int, start: datetime, end: datetime, rng: random.Random) -> Iterator[tuple[object, ...]]:
    tenants = tenant_ids()
    span = (end - start).total_seconds()
    for _ in range(n):
        started = start + timedelta(seconds=rng.uniform(0, span))
        duration = rng.randint(5, 900)
        transcript = " ".join(rng.choice(PHRASES) for _ in range(rng.randint(3, 12)))
        meta = {"agent": f"agent-{rng.randint(1, 8)}", "lang": rng.choice(["en", "de", "es"])}
        yield (
            rng.choice(tenants), uuid.UUID(int=rng.getrandbits(128), version=4), started,
            min(started + timedelta(seconds=duration), end), duration, transcript, json.dumps(meta),
        )  # fmt: skip


def seed(
    conn: Conn, settings: Settings, calls: int, now: datetime | None = None, seed: int | None = None
) -> SeedReport:
    """Write ``calls`` synthetic calls inside the live partition range (binary COPY, one transaction)."""
    now = now or datetime.now(UTC)
    parts = [r.info for r in catalog.list_partitions(conn, settings) if not r.info.is_default]
    oldest = min(p.start for p in parts if p.start) if parts else now
    horizon = max(p.end for p in parts if p.end) if parts else now
    start, end = max(now - HISTORY, oldest), min(now + AHEAD, horizon - timedelta(seconds=1))
    rng = random.Random(seed)  # noqa: S311 - synthetic data, not secrets
    cols = ["tenant_id", "call_id", "started_at", "ended_at", "duration_sec", "transcript", "metadata"]
    copy = sql.SQL("COPY {} ({}) FROM STDIN").format(
        sql.Identifier(settings.schema, settings.table), sql.SQL(", ").join(map(sql.Identifier, cols))
    )
    with conn.transaction(), conn.cursor() as cur, cur.copy(copy) as cp:
        for row in synthetic_calls(calls, start, end, rng):
            cp.write_row(row)
    return SeedReport(rows=calls, tenants=tenant_ids(), first=start, last=end)
