"""Per-tenant archive retention: ``callvault archive policy`` and ``callvault archive prune``.

Policy rows live in ``callvault.archive_policy``: one default per table (``tenant_id IS NULL``) and
any per-tenant overrides (e.g. 7 years for HIPAA tenants). Without a row the default is
``DEFAULT_KEEP``. A tenant's objects of a period expire when the period's end plus the tenant's
``keep`` is in the past; pruning deletes that tenant's prefix for the period (a prefix operation, thanks
to the Hive layout) and marks the tenant ``pruned_at`` in the period's manifest, which stays as the
record of what was archived and when it was deleted (no call content is in it).
"""

from __future__ import annotations

import dataclasses
import logging
import uuid
from dataclasses import dataclass, field
from datetime import datetime, timedelta

from psycopg import sql

from callvault import history
from callvault._compat import renamed
from callvault.archive import layout
from callvault.archive.journal import ensure_tables
from callvault.archive.layout import Manifest, TenantEntry
from callvault.archive.location import read_store_url
from callvault.archive.store import open_store
from callvault.config import META_SCHEMA, Settings
from callvault.db import Conn, connect, server_now
from callvault.logs import event, get_logger
from callvault.plan import Retention
from callvault.tenancy.ids import tenant_value

DEFAULT_KEEP = Retention(months=12, days=0)  # one year in the archive unless a policy says otherwise

_POLICY = sql.Identifier(META_SCHEMA, "archive_policy")

log = get_logger("prune")


@dataclass
class PruneReport:
    """What one prune deleted (or, with ``dry_run``, would delete): one entry per tenant and period,
    with its object and row counts, judged at ``at``."""

    store: str
    at: datetime
    dry_run: bool
    deleted: list[dict[str, object]] = field(default_factory=list)  # tenant, period, objects, rows

    def to_dict(self) -> dict[str, object]:
        """The report as JSON-ready values (``callvault archive prune --json``)."""
        return {"store": self.store, "at": self.at.isoformat(), "dry_run": self.dry_run, "deleted": self.deleted}


def _tenant(value: str) -> str:
    return tenant_value(value)


def set_policy(
    settings: Settings, keep: str, tenant_id: str | uuid.UUID | None = None, *, tenant: str | None = None
) -> None:
    """Keep archived data of ``tenant`` (None: the table default) for ``keep`` (e.g. '7 years').

    :raises InvalidSetting: ``keep`` is not a retention (see :meth:`callvault.plan.Retention.parse`) or
        ``tenant`` is not a UUID (exit code 2).
    """
    given = renamed("set_policy", "tenant", tenant, "tenant_id", tenant_id)
    tenant = None if given is None else str(given)
    ret = Retention.parse(keep)
    with connect(settings, autocommit=True) as conn:
        ensure_tables(conn)
        conn.execute(
            sql.SQL(
                "INSERT INTO {} AS p (parent_table, tenant_id, keep) VALUES (%s, %s, %s::interval) "
                "ON CONFLICT (parent_table, tenant_id) DO UPDATE SET keep = excluded.keep, updated_at = now()"
            ).format(_POLICY),
            (settings.qualified, _tenant(tenant) if tenant else None, ret.to_pg()),
        )
    event(log, logging.INFO, "archive policy set", table=settings.qualified, tenant=tenant or "default",
          keep=ret.to_pg())  # fmt: skip


def clear_policy(settings: Settings, tenant_id: str | uuid.UUID | None = None, *, tenant: str | None = None) -> bool:
    """Remove the keep period of ``tenant`` (None: the table default, which falls back to
    :data:`DEFAULT_KEEP`); removing one that is not set changes nothing. Returns whether one was set.

    :raises InvalidSetting: ``tenant`` is not a UUID (exit code 2).
    """
    given = renamed("clear_policy", "tenant", tenant, "tenant_id", tenant_id)
    tenant = None if given is None else str(given)
    with connect(settings, autocommit=True) as conn:
        ensure_tables(conn)
        cur = conn.execute(
            sql.SQL("DELETE FROM {} WHERE parent_table = %s AND tenant_id IS NOT DISTINCT FROM %s").format(_POLICY),
            (settings.qualified, _tenant(tenant) if tenant else None),
        )
    event(log, logging.INFO, "archive policy cleared", table=settings.qualified, tenant=tenant or "default")
    return cur.rowcount > 0


def policies(conn: Conn, settings: Settings) -> tuple[Retention, dict[str, Retention]]:
    """(table default, per-tenant overrides)."""
    rows = conn.execute(
        sql.SQL(
            "SELECT tenant_id::text, (extract(year FROM keep) * 12 + extract(month FROM keep))::int, "
            "extract(day FROM keep)::int FROM {} WHERE parent_table = %s"
        ).format(_POLICY),
        (settings.qualified,),
    ).fetchall()
    default, per = DEFAULT_KEEP, {}
    for tenant, months, days in rows:
        r = Retention(months=months, days=days)
        if tenant is None:
            default = r
        else:
            per[tenant] = r
    return default, per


def expires(ret: Retention, period_end: datetime) -> datetime:
    """When a period ending at ``period_end`` leaves the archive under ``ret`` (pure)."""
    # Retention.cutoff(now) = now - keep; solve now - keep >= end by adding the parts back.
    months, days = ret.months, ret.days
    year, month0 = divmod(period_end.month - 1 + months, 12)
    shifted = period_end.replace(year=period_end.year + year, month=month0 + 1, day=1)
    import calendar

    day = min(period_end.day, calendar.monthrange(shifted.year, shifted.month)[1])
    return shifted.replace(day=day) + timedelta(days=days)


def prune(settings: Settings, *, store_url: str | None = None, at: datetime | None = None,
          dry_run: bool = False) -> PruneReport:  # fmt: skip
    """Delete archived objects whose tenant's keep period is over; record it in the manifests.

    :param store_url: the archive store (default the configured one; a store that does not exist yet
        has nothing to prune).
    :param at: judge expiry at this moment instead of the database server's now.
    :param dry_run: report what would be deleted, delete nothing.
    :raises InvalidSetting: no store is configured (exit code 2).
    :raises StoreUnavailable: the store cannot be reached, read or written (exit code 69).
    """
    if dry_run:
        return _prune(settings, store_url, at, True)
    with history.run(settings, "prune") as run:
        report = _prune(settings, store_url, at, False)
        run.counts = {
            "tenant_periods": len(report.deleted),
            "objects": sum(int(str(d["objects"])) for d in report.deleted),
            "rows": sum(int(str(d["rows"] or 0)) for d in report.deleted),
        }
    return report


def _prune(settings: Settings, store_url: str | None, at: datetime | None, dry_run: bool) -> PruneReport:
    store = open_store(read_store_url(settings, store_url))  # none yet: nothing to prune
    with connect(settings, autocommit=True) as conn:
        now = at or server_now(conn)
        report = PruneReport(store=store.url, at=now, dry_run=dry_run)
        ensure_tables(conn)
        default, per = policies(conn, settings)
        from callvault.privacy import holds

        held = {h.tenant_id: h for h in holds.holds(conn, settings)}
    event(log, logging.DEBUG, "archive policies", table=settings.qualified, at=now, default=default.to_pg(),
          overrides=len(per), dry_run=dry_run)  # fmt: skip
    tdir = layout.table_dir(settings.schema, settings.table)
    keys = [o.key for o in list(store.iter_objects(layout.manifests_prefix(tdir))) if o.key.endswith(".json")]
    manifests = [(k, Manifest.from_json(store.get_bytes(k))) for k in keys]
    if held and not dry_run:  # a legal hold: refuse before anything is deleted
        for _, manifest in manifests:
            for tenant, entry in manifest.tenants.items():
                if tenant in held and not entry.pruned_at and expires(per.get(tenant, default), manifest.end) <= now:
                    with connect(settings, autocommit=True) as conn:
                        holds.refuse_if_held(conn, settings, tenant, f"archive prune of {manifest.period}")
    objects = 0
    for key, manifest in manifests:
        changed = dict(manifest.tenants)
        for tenant, entry in manifest.tenants.items():
            if entry.pruned_at or expires(per.get(tenant, default), manifest.end) > now:
                continue
            report.deleted.append(
                {
                    "tenant": tenant,
                    "period": manifest.period.isoformat(),
                    "objects": len(entry.objects),
                    "rows": entry.fingerprint.rows,
                }
            )
            objects += len(entry.objects)
            if dry_run:
                event(log, logging.INFO, "would prune", tenant=tenant, period=manifest.period,
                      objects=len(entry.objects), rows=entry.fingerprint.rows)  # fmt: skip
                continue
            store.delete([o.key for o in entry.objects])
            event(log, logging.INFO, "pruned", tenant=tenant, period=manifest.period, objects=len(entry.objects),
                  rows=entry.fingerprint.rows)  # fmt: skip
            changed[tenant] = TenantEntry(entry.fingerprint, entry.objects, pruned_at=now.isoformat())
        if changed != manifest.tenants and not dry_run:
            updated = dataclasses.replace(manifest, tenants=changed)
            store.put_bytes(key, updated.to_json())
            event(log, logging.DEBUG, "manifest updated", key=key)
    event(log, logging.INFO, "prune done", table=settings.qualified, store=store.url, dry_run=dry_run,
          tenant_periods=len(report.deleted), objects=objects)  # fmt: skip
    return report
