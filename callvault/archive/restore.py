"""``callvault restore``: load an archived period back, verified against its manifest.

* Into the hot table (default): when the period's partition is gone, a new table is filled, checked
  against the partition bounds and attached (``ATTACH PARTITION`` takes only a SHARE UPDATE EXCLUSIVE
  lock on the parent: writers go on); when it is still attached, rows are added with ``ON CONFLICT DO
  NOTHING``. Everything happens in one transaction: a failed restore leaves nothing behind. A restored
  period that is past retention is archived again (same objects) and dropped by the next archive run;
  restore into a side table to keep it for longer.
* Into a side table (``--into <name>``): a plain table shaped like the hot one, created if missing;
  restoring twice adds nothing (``ON CONFLICT DO NOTHING``).

Afterwards the fingerprint of each restored tenant's rows, computed by Postgres over the target,
must equal the manifest's (``md5``: all of it; ``sums+hash``: the check sums, after each object's
SHA-256 was checked on download); otherwise the transaction is rolled back.
"""

from __future__ import annotations

import logging
import shutil
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, date, datetime
from pathlib import Path

from psycopg import sql

from callvault import catalog, partman, private, tenancy
from callvault._compat import renamed
from callvault.archive import layout
from callvault.archive.journal import relation_state
from callvault.archive.layout import Manifest
from callvault.archive.load import insert_from_stage, stage
from callvault.archive.location import SPOOL_ENV, default_spool, read_store, require_free_space
from callvault.archive.progress import Sink, Tracker
from callvault.archive.store import Store
from callvault.config import Settings, check_identifier
from callvault.db import connect
from callvault.errors import ArchiveVerifyFailed, CallvaultError, StoreUnavailable
from callvault.logs import event, get_logger
from callvault.maintain import require_partman
from callvault.plan import Interval
from callvault.tenancy.facts import side_mark
from callvault.tenancy.ids import tenant_value

log = get_logger("restore")


@dataclass
class RestoreReport:
    """What one restore did: the period (its first day), the target table, rows verified per tenant,
    whether a new partition was attached, rows added and rows the target already held."""

    period: date
    target: str
    tenants: dict[str, int] = field(default_factory=dict)  # tenant -> rows verified in the target
    attached: bool = False
    inserted: int = 0  # rows the restore added
    already_present: int = 0  # archived rows the target held already (ON CONFLICT DO NOTHING)

    def to_dict(self) -> dict[str, object]:
        """The report as JSON-ready values (``callvault restore --json``)."""
        return {
            "period": self.period.isoformat(), "target": self.target, "tenants": self.tenants,
            "rows": sum(self.tenants.values()), "attached_partition": self.attached,
            "inserted": self.inserted, "already_present": self.already_present,
        }  # fmt: skip


def load_manifest(store: Store, settings: Settings, interval: Interval, start: datetime) -> Manifest:
    """The manifest of the archived partition that starts at ``start``.

    :raises CallvaultError: the store holds no archive of that period.
    :raises StoreUnavailable: the store cannot be read (exit code 69).
    """
    key = layout.manifest_key(layout.table_dir(settings.schema, settings.table), interval, start)
    if store.head(key) is None:
        raise CallvaultError(
            f"no archive of {settings.qualified} for the {layout.PERIOD_KEY[interval]} of {start.date()} in "
            f"{store.url} ({key} is missing): see `callvault archive list` for what is archived"
        )
    return Manifest.from_json(store.get_bytes(key))


@contextmanager
def _work_dir(settings: Settings) -> Iterator[Path]:
    """A private directory in the archive spool for downloaded objects; a killed restore's is removed
    by the next run (see :mod:`callvault.private`)."""
    spool = private.private_dir(default_spool(settings), f"archive spool directory (set {SPOOL_ENV} to move it)")
    swept = private.sweep(spool, "restore")
    if swept:
        event(log, logging.INFO, "swept work directories of killed restores", spool=spool,
              removed=sorted(p.name for p in swept))  # fmt: skip
    work = private.work_dir(spool, "restore")
    try:
        yield work
    finally:
        shutil.rmtree(work, ignore_errors=True)


def restore(
    settings: Settings,
    period: date,
    *,
    tenant_id: str | uuid.UUID | None = None,
    into: str | None = None,
    store_url: str | None = None,
    tenant: str | None = None,
    progress: Sink | None = None,
) -> RestoreReport:
    """Restore the archived partition containing ``period`` (optionally one tenant) and verify it.

    One transaction: the rows are staged from the store, inserted (``ON CONFLICT DO NOTHING``), and
    each tenant's rows in the target must match the manifest's fingerprint, or nothing is kept.

    :param period: any day in the period; the table's interval (from pg_partman) gives the partition.
    :param tenant: restore only this tenant's rows (a UUID); default every tenant in the archive.
    :param into: a side table in the table's schema (created if missing, shaped like the hot table);
        default (or the hot table's own name) the hot table: the partition is recreated and attached
        when it is gone, else the rows are added to it.
    :param store_url: the archive store (default the one the journal recorded for that period, else the
        configured ``archive_url``).
    :param progress: called with a :class:`~callvault.archive.progress.ProgressUpdate` (rows loaded,
        rate, ETA) while the objects are loaded, at most twice a second.
    :raises InvalidSetting: ``tenant`` is not a UUID, ``into`` is not a usable table name, or no store is
        configured (exit code 2).
    :raises NotInitialised: the table is not managed by pg_partman (exit code 66).
    :raises ArchiveVerifyFailed: the restored rows do not match the manifest; nothing was restored (exit
        code 65).
    :raises StoreUnavailable: the store cannot be reached or read (exit code 69).
    :raises CallvaultError: no archive of that period, the tenant has no rows in it (or they were
        pruned), the partition still exists detached, or its range overlaps existing partitions.

    Example:

        report = restore(settings, date(2024, 3, 4), tenant=str(tenant), into="investigation")
        report.tenants          # {'<tenant uuid>': 1200}: rows verified in public.investigation
    """
    given = renamed("restore", "tenant", tenant, "tenant_id", tenant_id)
    tenant = None if given is None else str(given)
    t0 = time.perf_counter()
    if tenant is not None:
        tenant = tenant_value(tenant)
    with connect(settings) as conn:
        pm = require_partman(conn, settings)
        config = partman.read_config(conn, settings, pm)
        assert config is not None
        interval = config.interval
        start = interval.floor(datetime(period.year, period.month, period.day, tzinfo=UTC))
        store = read_store(settings, store_url, period=start)  # the store the journal says it went to
        manifest = load_manifest(store, settings, interval, start)
        live = {t: e for t, e in manifest.tenants.items() if not e.pruned_at}
        if tenant is not None and tenant not in live:
            why = "was pruned from" if tenant in manifest.tenants else "has no rows in"
            raise CallvaultError(f"tenant {tenant} {why} the archive of {manifest.partition}; nothing to restore")
        tenants = [tenant] if tenant else sorted(live)
        hot = into is None or into == settings.table
        name = manifest.partition if hot else check_identifier(str(into), "--into table")
        report = RestoreReport(period=start.date(), target=f"{settings.schema}.{settings.table if hot else name}")
        event(log, logging.INFO, "restore starting", partition=manifest.partition, period=report.period,
              target=report.target, tenants=len(tenants), store=store.url)  # fmt: skip
        parent = sql.Identifier(settings.schema, settings.table)
        target = sql.Identifier(settings.schema, name)
        objects = [o for t in tenants for o in live[t].objects]
        with conn.transaction(), _work_dir(settings) as tmp:
            # objects are downloaded one at a time: the largest must fit
            require_free_space(Path(tmp), max((o.size for o in objects), default=0),
                               f"restoring {manifest.partition}", "nothing was restored")  # fmt: skip
            conn.execute("SELECT set_config('lock_timeout', %s, true)", (f"{settings.lock_timeout_ms}ms",))
            tracker = None
            if progress is not None:
                tracker = Tracker(progress, "restore", manifest.partition,
                                  rows_total=sum(live[t].fingerprint.rows for t in tenants),
                                  bytes_total=sum(o.size for o in objects))  # fmt: skip
                tracker.start("load")
            shape = catalog.table_shape(conn, settings)  # the table's own columns too (NULL where older)
            stage(conn, store, manifest, tenants, Path(tmp), tracker.advance if tracker else None, shape)
            if tracker is not None:
                tracker.finish()
            event(log, logging.DEBUG, "restore staged", partition=manifest.partition, tenants=tenants,
                  rows=sum(live[t].fingerprint.rows for t in tenants))  # fmt: skip
            state = relation_state(conn, settings, name)
            event(log, logging.DEBUG, "restore target", target=report.target, hot=hot, state=state)
            if hot and state in ("detached", "pending"):
                raise CallvaultError(
                    f"{name} still exists (detached, waiting to be archived): its rows were never dropped; "
                    "run `callvault archive` to finish it, or restore --into a side table"
                )
            if hot and state == "missing":
                overlap = [
                    b for b in catalog.partition_bounds(conn, settings) if b[0] < manifest.end and manifest.start < b[1]
                ]
                if overlap:
                    raise CallvaultError(
                        f"partition range [{manifest.start}, {manifest.end}) overlaps existing partitions {overlap}: "
                        "restore --into a side table instead"
                    )
                conn.execute(
                    sql.SQL("CREATE TABLE {} (LIKE {} INCLUDING DEFAULTS INCLUDING CONSTRAINTS)").format(target, parent)
                )
                report.inserted, report.already_present = insert_from_stage(conn, target)
                check = sql.Identifier(f"{name}_restore_bound")
                bounds = (sql.Literal(manifest.start), sql.Literal(manifest.end))
                conn.execute(
                    sql.SQL("ALTER TABLE {} ADD CONSTRAINT {} CHECK (started_at >= {} AND started_at < {})").format(
                        target, check, *bounds
                    )
                )
                conn.execute(
                    sql.SQL("ALTER TABLE {} ATTACH PARTITION {} FOR VALUES FROM ({}) TO ({})").format(
                        parent, target, *bounds
                    )
                )
                conn.execute(sql.SQL("ALTER TABLE {} DROP CONSTRAINT {}").format(target, check))
                # the new partition gets the tenant policy before anyone can see it, or nothing is restored
                tenancy.secure(conn, settings).require(f"restore of {name}", only=name)
                report.attached = True
            elif hot:
                from callvault.usage import SKIP_SQL

                conn.execute(SKIP_SQL)  # these calls were counted in the usage rollup when first written
                report.inserted, report.already_present = insert_from_stage(conn, parent)
            else:
                conn.execute(
                    sql.SQL(
                        "CREATE TABLE IF NOT EXISTS {} (LIKE {} INCLUDING DEFAULTS INCLUDING CONSTRAINTS "
                        "INCLUDING INDEXES)"
                    ).format(target, parent)
                )
                # a side table holds every restored tenant: the partitions' rules (policy, owner, no
                # grants) apply to it before any row lands, even if it existed already
                conn.execute(sql.SQL("COMMENT ON TABLE {} IS {}").format(target, sql.Literal(side_mark(settings))))
                tenancy.secure(conn, settings).require(f"restore into {name}", only=name)
                report.inserted, report.already_present = insert_from_stage(conn, target)
            check_target = parent if hot else target
            for t in tenants:
                where = sql.SQL("WHERE tenant_id = {} AND started_at >= {} AND started_at < {}").format(
                    sql.Literal(t), sql.Literal(manifest.start), sql.Literal(manifest.end)
                )
                expected = live[t].fingerprint
                got = layout.pg_fingerprints(conn, check_target, where, expected.algo).get(t)
                if got is None or got.postgres_part() != expected.postgres_part():
                    event(log, logging.WARNING, "restore verify failed, rolled back", partition=manifest.partition,
                          tenant=t, rows=got.rows if got else 0, expected=live[t].fingerprint.rows)  # fmt: skip
                    raise ArchiveVerifyFailed(
                        f"restored rows of tenant {t} do not match the manifest of {manifest.partition} "
                        f"({got.rows if got else 0} rows vs {live[t].fingerprint.rows}); the target already held "
                        "other rows in that range, or the archive is damaged. Nothing was restored"
                    )
                report.tenants[t] = got.rows
                event(log, logging.DEBUG, "restore verified", partition=manifest.partition, tenant=t, rows=got.rows)
    event(log, logging.INFO, "restored", partition=manifest.partition, period=report.period, target=report.target,
          tenants=len(report.tenants), rows=sum(report.tenants.values()), inserted=report.inserted,
          already_present=report.already_present, attached=report.attached,
          seconds=time.perf_counter() - t0)  # fmt: skip
    return report


def list_archived(settings: Settings, store_url: str | None = None) -> list[Manifest]:
    """The manifests of every archived partition of the table, oldest first (``callvault archive list``).

    :raises InvalidSetting: no store is configured (exit code 2).
    :raises StoreUnavailable: the store cannot be reached, or a manifest cannot be read (exit code 69).
    """
    store = read_store(settings, store_url)
    prefix = layout.manifests_prefix(layout.table_dir(settings.schema, settings.table))
    out = []
    try:
        for obj in store.iter_objects(prefix):
            if obj.key.endswith(".json"):
                out.append(Manifest.from_json(store.get_bytes(obj.key)))
    except ValueError as exc:
        raise StoreUnavailable(f"a manifest under {store.url}/{prefix} cannot be read: {exc}") from exc
    return sorted(out, key=lambda m: m.start)
