"""Transcripts with a shorter life than the rest of a call: ``callvault privacy transcripts --keep '30 days'``
(a table default, and per tenant like ``archive policy``), applied by ``callvault privacy expire`` (and by
the worker's maintenance pass).

After its time a call keeps its metadata, times and duration (readable through the Reader, in both tiers)
and loses its transcript:

* **Hot partitions**: ``UPDATE ... SET transcript = NULL`` in batches of ``batch_rows`` rows (one short
  transaction each, found through ``ctid`` within one partition), never one statement over a whole week:
  each batch writes its rows' new versions (the transcript's TOAST chunks become dead, reclaimed by
  autovacuum), so WAL and bloat grow by at most one batch between commits, and ``max_rows`` bounds a run
  (``callvault privacy expire --max-rows``: run it off-peak, or often with a small bound). The figures are
  in docs/privacy.md.
* **Archived periods** past a tenant's transcript time whose objects still hold transcripts: the objects
  are rewritten with the transcript column empty (Arrow, the archive's schema, zstd), checked column by
  column against the old ones, uploaded, the manifest updated, the old objects deleted (every S3 version).
  Keys to delete are queued in ``callvault.purge_queue`` before the manifest changes, so a killed run still
  deletes them on the next one.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field, replace
from datetime import datetime
from typing import Any

from psycopg import sql

from callvault import catalog
from callvault.archive import layout
from callvault.archive.layout import Manifest, ObjectEntry, TenantEntry
from callvault.archive.prune import expires
from callvault.archive.store import Store, sha256_file
from callvault.archive.verify import _fetch, duck_fingerprints
from callvault.config import META_SCHEMA, Settings
from callvault.db import Conn, connect, server_now
from callvault.errors import ArchiveVerifyFailed, InvalidSetting
from callvault.lifecycle import Retention
from callvault.logs import event, get_logger
from callvault.privacy.subject import ensure
from callvault.tenancy.ids import tenant_value

log = get_logger(__name__)

POLICY = sql.Identifier(META_SCHEMA, "transcript_policy")
PURGE = sql.Identifier(META_SCHEMA, "purge_queue")
DEFAULT_BATCH_ROWS = 5_000


@dataclass
class ExpireReport:
    """What ``privacy expire`` did: transcripts emptied in each tier, the WAL it wrote, what it left."""

    at: datetime
    hot_rows: int = 0
    batches: int = 0
    wal_bytes: int = 0
    archive_periods: int = 0
    archive_objects_rewritten: int = 0
    archive_objects_deleted: int = 0
    more: bool = False  # max_rows stopped it: run again
    policies: dict[str, str] = field(default_factory=dict)

    def to_dict(self) -> dict[str, object]:
        """JSON-ready (``privacy expire --json``)."""
        return {"at": self.at.isoformat(), "hot_rows": self.hot_rows, "batches": self.batches,
                "wal_bytes": self.wal_bytes, "archive_periods": self.archive_periods,
                "archive_objects_rewritten": self.archive_objects_rewritten,
                "archive_objects_deleted": self.archive_objects_deleted, "more": self.more,
                "policies": self.policies}  # fmt: skip


def set_policy(conn: Conn, settings: Settings, keep: str, tenant_id: str | None = None) -> Retention:
    """Keep transcripts of ``tenant_id`` (None: the table default) for ``keep`` (e.g. '30 days')."""
    ret = Retention.parse(keep)
    ensure(conn)
    conn.execute(
        sql.SQL(
            "INSERT INTO {} (parent_table, tenant_id, keep) VALUES (%s, %s, %s::interval) "
            "ON CONFLICT (parent_table, tenant_id) DO UPDATE SET keep = excluded.keep, updated_at = now()"
        ).format(POLICY),
        (settings.qualified, tenant_value(tenant_id) if tenant_id else None, ret.to_pg()),
    )
    return ret


def clear_policy(conn: Conn, settings: Settings, tenant_id: str | None = None) -> None:
    """Transcripts of ``tenant_id`` (None: the default) live as long as their call again."""
    ensure(conn)
    gone = conn.execute(
        sql.SQL("DELETE FROM {} WHERE parent_table = %s AND tenant_id IS NOT DISTINCT FROM %s").format(POLICY),
        (settings.qualified, tenant_value(tenant_id) if tenant_id else None),
    ).rowcount
    if not gone:
        who = f"tenant {tenant_id}" if tenant_id else "the table"
        raise InvalidSetting(f"{who} has no transcript policy of its own: nothing to clear")


def policies(conn: Conn, settings: Settings) -> tuple[Retention | None, dict[str, Retention]]:
    """(table default or None, per-tenant overrides); none on an install older than the policies (reading
    never creates tables: the worker runs this every cycle, as a role that may not)."""
    if not catalog.meta_table_exists(conn, "transcript_policy"):
        return None, {}
    rows = conn.execute(
        sql.SQL(
            "SELECT tenant_id::text, (extract(year FROM keep) * 12 + extract(month FROM keep))::int, "
            "extract(day FROM keep)::int FROM {} WHERE parent_table = %s"
        ).format(POLICY),
        (settings.qualified,),
    ).fetchall()
    default: Retention | None = None
    per: dict[str, Retention] = {}
    for tenant, months, days in rows:
        if tenant is None:
            default = Retention(months=months, days=days)
        else:
            per[tenant] = Retention(months=months, days=days)
    return default, per


def expire(
    settings: Settings, *, at: datetime | None = None, batch_rows: int = DEFAULT_BATCH_ROWS,
    max_rows: int | None = None, store_url: str | None = None,
) -> ExpireReport:  # fmt: skip
    """Empty the transcripts past their time, hot and archived (see the module docstring)."""
    if batch_rows < 1 or (max_rows is not None and max_rows < 1):
        raise InvalidSetting("--batch-rows and --max-rows must be positive")
    with connect(settings, autocommit=True) as conn:
        now = at or server_now(conn)
        report = ExpireReport(at=now)
        default, per = policies(conn, settings)
        report.policies = {"default": default.to_pg() if default else "none",
                           **{t: r.to_pg() for t, r in per.items()}}  # fmt: skip
        if default is None and not per:
            return report
        wal0 = _wal(conn)
        _expire_hot(conn, settings, report, now, default, per, batch_rows, max_rows)
        report.wal_bytes = _wal(conn) - wal0
        from callvault.privacy.erase import _stores

        for store in _stores(settings, store_url):
            _purge_queued(conn, store, report)
            _expire_archive(conn, settings, store, report, now, default, per)
            _purge_queued(conn, store, report)
    event(log, logging.INFO, "transcripts expired", table=settings.qualified, hot_rows=report.hot_rows,
          batches=report.batches, wal_bytes=report.wal_bytes, archive_periods=report.archive_periods,
          more=report.more)  # fmt: skip
    return report


def _wal(conn: Conn) -> int:
    row = conn.execute("SELECT pg_wal_lsn_diff(pg_current_wal_insert_lsn(), '0/0')::bigint").fetchone()
    return int(row[0]) if row else 0


def _expire_hot(
    conn: Conn, settings: Settings, report: ExpireReport, now: datetime, default: Retention | None,
    per: dict[str, Retention], batch_rows: int, max_rows: int | None,
) -> None:  # fmt: skip
    rules: list[tuple[sql.Composable, list[Any], datetime]] = [
        (sql.SQL("tenant_id = %s"), [t], r.cutoff(now)) for t, r in per.items()
    ]
    if default is not None:
        rules.append((sql.SQL("tenant_id <> ALL(%s::uuid[])"), [list(per)], default.cutoff(now)))
    for row in catalog.list_partitions(conn, settings):
        info = row.info
        if info.start is None or info.end is None:
            continue
        table = sql.Identifier(settings.schema, info.name)
        for who, args, cutoff in rules:
            if info.start >= cutoff:
                continue
            stmt = sql.SQL(
                "UPDATE {t} SET transcript = NULL WHERE ctid = ANY(ARRAY(SELECT ctid FROM {t} WHERE started_at < %s "
                "AND transcript IS NOT NULL AND {who} LIMIT %s))"
            ).format(t=table, who=who)
            while True:
                if max_rows is not None and report.hot_rows >= max_rows:
                    report.more = True
                    return
                take = batch_rows if max_rows is None else min(batch_rows, max_rows - report.hot_rows)
                done = conn.execute(stmt, [cutoff, *args, take]).rowcount  # one short transaction (autocommit)
                if done <= 0:
                    break
                report.hot_rows += done
                report.batches += 1


def _purge_queued(conn: Conn, store: Store, report: ExpireReport) -> None:
    keys = [str(r[0]) for r in conn.execute(sql.SQL("SELECT key FROM {} WHERE store_url = %s").format(PURGE),
                                            (store.url,))]  # fmt: skip
    if keys:
        store.purge(keys)
        conn.execute(sql.SQL("DELETE FROM {} WHERE store_url = %s AND key = ANY(%s)").format(PURGE), (store.url, keys))
        report.archive_objects_deleted += len(keys)


def _expire_archive(
    conn: Conn, settings: Settings, store: Store, report: ExpireReport, now: datetime, default: Retention | None,
    per: dict[str, Retention],
) -> None:  # fmt: skip
    tdir = layout.table_dir(settings.schema, settings.table)
    keys = [o.key for o in list(store.iter_objects(layout.manifests_prefix(tdir))) if o.key.endswith(".json")]
    for mkey in keys:
        manifest = Manifest.from_json(store.get_bytes(mkey))
        changed = dict(manifest.tenants)
        for tenant, entry in manifest.tenants.items():
            keep = per.get(tenant, default)
            if keep is None or entry.pruned_at or expires(keep, manifest.end) > now or not _has_transcripts(entry):
                continue
            if manifest.fmt != "parquet":
                event(log, logging.WARNING, "transcripts of a CSV archive are not expired", period=manifest.period)
                continue
            changed[tenant] = _rewrite(conn, settings, store, manifest, tenant, entry)
            report.archive_periods += 1
            report.archive_objects_rewritten += len(changed[tenant].objects)
        if changed != manifest.tenants:
            store.put_bytes(mkey, replace(manifest, tenants=changed).to_json())


def _has_transcripts(entry: TenantEntry) -> bool:
    check = entry.fingerprint.check
    if check is None or "transcript_n" not in check:
        return entry.fingerprint.rows > 0  # an md5 fingerprint does not say: look
    return int(check["transcript_n"]) > 0


def _rewrite(conn: Conn, settings: Settings, store: Store, manifest: Manifest, tenant: str,
             entry: TenantEntry) -> TenantEntry:  # fmt: skip
    import duckdb
    import pyarrow as pa
    import pyarrow.parquet as pq

    from callvault.privacy.erase import _workdir

    tdir = layout.table_dir(settings.schema, settings.table)
    with _workdir(settings) as work:
        files = _fetch(store, entry, work, [])
        old = pa.concat_tables([pq.read_table(p) for p in files])
        i = old.schema.get_field_index("transcript")
        new = old.set_column(i, old.schema.field(i), pa.nulls(old.num_rows, old.schema.field(i).type))
        path = work / "expired.parquet"
        pq.write_table(new, path, compression="zstd", write_statistics=True)
        back = pq.read_table(path)
        same = back.drop(["transcript"]).equals(old.drop(["transcript"]))
        if not same or back["transcript"].null_count != back.num_rows:
            raise ArchiveVerifyFailed(f"the transcript-free {manifest.period} object of tenant {tenant} does not "
                                      "read back as the old one without transcripts; nothing was changed")  # fmt: skip
        con = duckdb.connect()
        try:
            fp = duck_fingerprints({"t": [path]}, "parquet", con, layout.SUMS_HASH)["t"]
        finally:
            con.close()
        prefix = layout.period_prefix(tdir, tenant, manifest.interval, manifest.start)
        key = f"{prefix}/part-00000-t{manifest.period:%Y%m%d}.parquet"
        digest = sha256_file(path)
        info = store.put_file(key, path, digest)
        if store.head(key) is None:
            raise ArchiveVerifyFailed(f"{key} in {store.url} did not read back after upload")
    old_keys = [o.key for o in entry.objects if o.key != key]
    if old_keys:
        conn.execute(
            sql.SQL("INSERT INTO {} (store_url, key) SELECT %s, unnest(%s::text[]) ON CONFLICT DO NOTHING").format(
                PURGE
            ),
            (store.url, old_keys),
        )  # queued before the manifest stops naming them
    return TenantEntry(fp, (ObjectEntry(key, new.num_rows, info.size, digest),))
