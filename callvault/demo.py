"""``callvault demo``: synthetic calls over the last 13 weeks and the next one, on the embedded default."""

from __future__ import annotations

import random
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING

import psycopg
from psycopg import sql

from callvault import catalog
from callvault.config import Settings
from callvault.db import Conn
from callvault.ingest import Call, Writer
from callvault.tenancy import tenant

if TYPE_CHECKING:
    from callvault.maintain import MaintenanceReport
    from callvault.monitor import Status
    from callvault.tenancy.audit import AuditReport

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


def synthetic_calls(n: int, start: datetime, end: datetime, rng: random.Random) -> Iterator[Call]:
    tenants = tenant_ids()
    span = (end - start).total_seconds()
    for _ in range(n):
        started = start + timedelta(seconds=rng.uniform(0, span))
        duration = rng.randint(5, 900)
        yield Call(
            tenant_id=rng.choice(tenants),
            call_id=uuid.UUID(int=rng.getrandbits(128), version=4),
            started_at=started,
            ended_at=min(started + timedelta(seconds=duration), end),
            transcript=" ".join(rng.choice(PHRASES) for _ in range(rng.randint(3, 12))),
            metadata={"agent": f"agent-{rng.randint(1, 8)}", "lang": rng.choice(["en", "de", "es"])},
        )


def seed(
    conn: Conn, settings: Settings, calls: int, now: datetime | None = None, seed: int | None = None
) -> SeedReport:
    """Write ``calls`` synthetic calls inside the live partition range, through the batching Writer."""
    now = now or datetime.now(UTC)
    bounds = catalog.partition_bounds(conn, settings)
    conn.commit()
    oldest = bounds[0][0] if bounds else now
    horizon = max(end for _, end in bounds) if bounds else now
    start, end = max(now - HISTORY, oldest), min(now + AHEAD, horizon - timedelta(seconds=1))
    rng = random.Random(seed)  # noqa: S311 - synthetic data, not secrets
    with Writer(settings) as writer:
        writer.write_many(synthetic_calls(calls, start, end, rng))
        result = writer.flush()
    return SeedReport(rows=result.written, tenants=tenant_ids(), first=start, last=end)


@dataclass(frozen=True)
class IsolationReport:
    role: str
    total: int  # rows in the table (all tenants)
    no_tenant: int  # what the app role sees with no tenant set
    own: int  # ... with one tenant set
    tenants_seen: int  # distinct tenants in those rows (1)
    partition: str
    partition_denied: bool  # reading that partition by name was refused


def isolation(conn: Conn, settings: Settings, tenant_id: uuid.UUID) -> IsolationReport:
    """Read as the RLS-bound app role (``SET LOCAL ROLE``, rolled back): no tenant, one tenant, and one
    partition by name. Needs ``init --roles`` and a connection that may ``SET ROLE`` to the app role."""
    parent = sql.Identifier(settings.schema, settings.table)
    count = sql.SQL("SELECT count(*), count(DISTINCT tenant_id) FROM {}")
    total = conn.execute(count.format(parent)).fetchone() or (0, 0)
    first = catalog.list_partitions(conn, settings)[0].info.name
    with conn.transaction(force_rollback=True):
        conn.execute(sql.SQL("SET LOCAL ROLE {}").format(sql.Identifier(settings.roles.app)))
        conn.execute("SET LOCAL row_security TO on")  # callvault's own sessions run with it off
        none = conn.execute(count.format(parent)).fetchone() or (0, 0)
        with tenant(conn, tenant_id):
            own = conn.execute(count.format(parent)).fetchone() or (0, 0)
        try:
            with conn.transaction():
                conn.execute(count.format(sql.Identifier(settings.schema, first)))
            denied = False
        except psycopg.errors.InsufficientPrivilege:
            denied = True
    return IsolationReport(settings.roles.app, total[0], none[0], own[0], own[1], first, denied)


@dataclass
class DemoReport:
    """What ``callvault demo`` did: init, the seeded calls, maintenance, status, the EXPLAIN of one
    tenant's last 7 days, reading as the app role, and the audit (``to_dict()`` is ``--json``)."""

    table: str
    initialised: bool
    seeded: SeedReport
    maintained: MaintenanceReport
    status: Status
    explain_lines: list[str]
    scanned: list[str]
    total: int
    isolation: IsolationReport
    audit: AuditReport

    def to_dict(self) -> dict[str, object]:
        """The report as JSON-ready values."""
        iso = self.isolation
        return {"table": self.table, "calls": self.seeded.rows, "tenants": [str(t) for t in self.seeded.tenants],
                "maintain": self.maintained.to_dict(), "status": self.status.to_dict(),
                "explain": {"partitions_scanned": self.scanned, "partitions_total": self.total},
                "isolation": {"role": iso.role, "rows_without_tenant": iso.no_tenant, "rows_own_tenant": iso.own,
                              "tenants_seen": iso.tenants_seen, "partition_by_name_denied": iso.partition_denied},
                "audit": self.audit.to_dict()}  # fmt: skip


def run(settings: Settings, calls: int) -> DemoReport:
    """The demo's main job: ``init --roles``, ``calls`` synthetic calls (13 weeks back, 1 ahead),
    ``maintain``, ``status``, the pruned EXPLAIN of one tenant's last 7 days, reading as the app role,
    and the audit."""
    from callvault import bootstrap, db, monitor, tenancy
    from callvault.lifecycle import Interval
    from callvault.maintain import maintain
    from callvault.query import explain_window

    with db.connect(settings) as conn:
        initialised = bootstrap.init(conn, settings, roles=True).changed
        seeded = seed(conn, settings, calls)
        conn.execute(sql.SQL("ANALYZE {}").format(sql.Identifier(settings.schema, settings.table)))
        conn.commit()
    maintained = maintain(settings)
    with db.connect(settings) as conn:
        status = monitor.collect(conn, settings)
        now = db.server_now(conn)
        since = Interval.DAILY.floor(now - timedelta(days=7))
        lines, scanned = explain_window(conn, settings, seeded.tenants[0], since, now)
        total = len(catalog.list_partitions(conn, settings))
    with db.connect(settings) as conn:
        iso = isolation(conn, settings, seeded.tenants[0])
        audit = tenancy.audit(conn, settings)
    return DemoReport(settings.qualified, initialised, seeded, maintained, status, lines, scanned, total, iso, audit)
