"""The command layer: one function per ``callvault`` command, settings in, a report out, owning its
connections. The CLI only parses, calls one of these and renders the report (``to_dict()`` for
``--json``); Python callers use the same functions::

    from callvault import commands
    from callvault.config import from_env

    report = commands.status(from_env(dsn="postgresql://..."))
    print(report.to_dict()["premake_horizon"])

Commands whose work already lives in one library function take the same shape there and are re-exported
here: :func:`maintain`, :func:`archive`, :func:`restore`, :func:`prune`, :func:`schedule`.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING

from callvault import bootstrap, db, monitor, tenancy
from callvault import maintain as maintenance
from callvault.archive.pipeline import ArchiveReport, archive
from callvault.archive.prune import PruneReport, prune
from callvault.archive.restore import RestoreReport, list_archived, restore
from callvault.config import Settings
from callvault.db import connect
from callvault.errors import DatabaseUnavailable, EmbeddedError, InvalidSetting
from callvault.ingest import quarantine as q
from callvault.maintain import MaintenanceReport, maintain
from callvault.plan import Plan
from callvault.schedule import schedule
from callvault.tenancy.audit import AuditReport

if TYPE_CHECKING:  # pglast loads only when a query is explained
    from callvault.explain import ExplainReport

__all__ = [
    "ArchiveReport", "AuditReport", "Health", "MaintenanceReport", "Plan", "Policies", "PruneReport",
    "QuarantineListing", "RestoreReport", "archive", "archive_policy", "audit", "explain", "health", "init", "init_sql",
    "list_archived", "maintain", "plan", "prune", "quarantine_list", "quarantine_replay", "restore", "schedule",
    "status",
]  # fmt: skip


def init(settings: Settings, *, roles: bool = False) -> bootstrap.InitReport:
    """``callvault init``: create the table, hand it to pg_partman, secure it (idempotent)."""
    with connect(settings) as conn:
        return bootstrap.init(conn, settings, roles=roles)


def init_sql(settings: Settings, *, roles: bool = False) -> str:
    """``callvault init --sql``: the DDL init would run here; offline (an empty database assumed)
    when the database cannot be reached. Never starts the embedded cluster."""
    try:
        with connect(settings.with_(start_embedded=False)) as conn:
            return bootstrap.render(bootstrap.init_steps(conn, settings, roles=roles), conn)
    except (DatabaseUnavailable, EmbeddedError) as exc:
        head = (
            f"-- offline (database unreachable: {exc}); assuming an empty database, pg_partman "
            f"{bootstrap.OFFLINE_PARTMAN.version}\n"
        )
        return head + bootstrap.render(bootstrap.init_steps(None, settings, roles=roles), None)


def audit(settings: Settings, *, fix: bool = False) -> AuditReport:
    """``callvault audit``: prove tenant isolation on the parent and every partition."""
    with connect(settings) as conn:
        return tenancy.audit(conn, settings, fix=fix)


def plan(settings: Settings, at: datetime | None = None) -> Plan:
    """``callvault plan``: what maintenance and retention will do at ``at`` (default: the server's now)."""
    with connect(settings.with_(start_embedded=False)) as conn:
        pm = maintenance.require_partman(conn, settings)
        return maintenance.current_plan(conn, settings, pm, at or db.server_now(conn))


def status(settings: Settings, at: datetime | None = None) -> monitor.Status:
    """``callvault status``: partitions, sizes, horizon, default rows, retention, worker, archive."""
    with connect(settings) as conn:
        return monitor.collect(conn, settings, at)


def explain(
    settings: Settings, query: str, params: list[str] | None = None, *, analyze: bool = False,
    max_partitions: int | None = None,
) -> ExplainReport:  # fmt: skip
    """``callvault explain``: the partitions a query's plan touches, and whether pruning happened."""
    from callvault.explain import explain as run_explain

    with connect(settings) as conn:
        return run_explain(conn, settings, query, params or [], analyze=analyze, max_partitions=max_partitions)


@dataclass(frozen=True)
class Health:
    table: str
    problems: list[str]
    horizon: datetime | None
    partitions: int

    @property
    def healthy(self) -> bool:
        return not self.problems

    def to_dict(self) -> dict[str, object]:
        return {
            "table": self.table, "healthy": self.healthy, "problems": self.problems,
            "premake_horizon": self.horizon.isoformat() if self.horizon else None, "partitions": self.partitions,
        }  # fmt: skip


def health(settings: Settings) -> Health:
    """``callvault health``: the problems ``status`` finds, each one line with its fix."""
    st = status(settings)
    return Health(settings.qualified, st.problems, st.premake_horizon, len(st.partitions))


@dataclass(frozen=True)
class QuarantineListing:
    table: str
    total: int
    rows: list[q.QuarantinedRow]

    def to_dict(self) -> dict[str, object]:
        return {"table": self.table, "total": self.total, "rows": [r.to_dict() for r in self.rows]}


def quarantine_list(settings: Settings, limit: int = 50) -> QuarantineListing:
    """``callvault quarantine list``: the newest quarantined rows and how many there are."""
    with connect(settings) as conn:
        return QuarantineListing(settings.qualified, q.count(conn, settings), q.list_rows(conn, settings, limit))


def quarantine_replay(settings: Settings, ids: list[int] | None = None, *, assume_utc: bool = False) -> q.ReplayReport:
    """``callvault quarantine replay``: validate again, land the good rows exactly once."""
    with connect(settings) as conn:
        report = q.replay(conn, settings, ids=ids or None, assume_utc=assume_utc)
        conn.commit()
        return report


@dataclass(frozen=True)
class Policies:
    default: str
    tenants: dict[str, str]

    def to_dict(self) -> dict[str, object]:
        return {"default": self.default, "tenants": self.tenants}


def archive_policy(
    settings: Settings, *, keep: str | None = None, clear: bool = False, tenant: str | None = None
) -> Policies:
    """``callvault archive policy``: set (``keep``), remove (``clear``) or show archive retention."""
    from callvault.archive import prune as pr
    from callvault.archive.journal import ensure_tables

    if keep and clear:
        raise InvalidSetting("pass either --keep or --clear, not both")
    if keep:
        pr.set_policy(settings, keep, tenant)
    elif clear:
        pr.clear_policy(settings, tenant)
    with connect(settings) as conn:
        ensure_tables(conn)
        default, per = pr.policies(conn, settings)
    return Policies(str(default), {t: str(r) for t, r in sorted(per.items())})


# re-exported so ``commands`` is the one place to look
_ = (archive, list_archived, maintain, prune, restore, schedule)
