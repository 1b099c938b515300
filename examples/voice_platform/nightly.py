"""The nightly job: archive what aged out, check the archive in place, and prove a week restores.

    python -m examples.voice_platform.nightly --to file:///srv/voice-archive            # or s3://bucket/prefix
    python -m examples.voice_platform.nightly --to file:///srv/voice-archive --dry-run  # look first

1. **archive** (:func:`callvault.commands.archive`): every partition past hot retention is detached,
   exported to Parquet, uploaded, read back and verified, then dropped; resumable, so a failed night
   is finished by the next one.
2. **query the archive in place** (:func:`callvault.archive.reader.query`, DuckDB over the Parquet files,
   nothing restored): calls and tenants per archived week for the newest ``--report-weeks`` weeks,
   each checked against the row count its manifest recorded when it was archived.
3. **restore drill** (:func:`callvault.commands.restore`): the newest archived week (or ``--restore-week``)
   is loaded into a side table and verified against its manifest (Postgres recomputes every tenant's
   fingerprint), then the side table is dropped (``--keep`` keeps it for an investigation; a table that
   existed before the run is never dropped). An archive nobody ever restored is a hope, not a backup.

Runs as the owner role (``--dsn``, else ``VOICE_OWNER_DSN``, else ``CALLVAULT_DSN``): archiving reads
every tenant's rows. Exit code 0 when every step succeeded; otherwise callvault's exit code of the first
failure (65 a read-back did not match, 69 store or database unavailable, 75 busy: retry later), or 1.
Schedule it with cron or a Kubernetes CronJob; keep maintenance running too (``callvault schedule
--pg-cron``, or ``callvault maintain`` in the same job). ``callvault worker`` is the long-running
alternative to this job (archive + maintain + prune every 15 minutes).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, date, datetime
from typing import TextIO, TypeVar

from psycopg import sql

from callvault import commands
from callvault.archive import layout
from callvault.archive.layout import Manifest
from callvault.archive.reader import query
from callvault.config import Settings, from_env
from callvault.db import connect
from callvault.errors import CallvaultError, StoreUnavailable
from callvault.failure import translate

DEFAULT_REPORT_WEEKS = 4
T = TypeVar("T")


@dataclass(frozen=True)
class PeriodCount:
    """One archived period as DuckDB counts it in the store, next to what its manifest recorded."""

    period: date
    calls: int
    tenants: int
    manifest_rows: int

    @property
    def ok(self) -> bool:
        return self.calls == self.manifest_rows


@dataclass
class NightlyReport:
    table: str
    store: str
    dry_run: bool
    archive: commands.ArchiveReport | None = None
    periods: list[PeriodCount] = field(default_factory=list)
    restore_week: date | None = None
    restore_into: str | None = None
    restore: commands.RestoreReport | None = None
    side_table_dropped: bool = False
    errors: list[tuple[str, CallvaultError]] = field(default_factory=list)  # (step, error)
    notes: list[str] = field(default_factory=list)

    @property
    def exit_code(self) -> int:
        if self.errors:
            return self.errors[0][1].exit_code or 1
        return 0

    def to_dict(self) -> dict[str, object]:
        return {
            "table": self.table,
            "store": self.store,
            "dry_run": self.dry_run,
            "archive": self.archive.to_dict() if self.archive else None,
            "archive_query": [
                {
                    "period": p.period.isoformat(),
                    "calls": p.calls,
                    "tenants": p.tenants,
                    "manifest_rows": p.manifest_rows,
                    "ok": p.ok,
                }
                for p in self.periods
            ],
            "restore": {
                "week": self.restore_week.isoformat() if self.restore_week else None,
                "into": self.restore_into,
                "report": self.restore.to_dict() if self.restore else None,
                "side_table_dropped": self.side_table_dropped,
            },
            "errors": [{"step": step, "error": str(exc), "exit_code": exc.exit_code} for step, exc in self.errors],
            "notes": self.notes,
            "exit_code": self.exit_code,
        }


def _manifest_rows(m: Manifest) -> int:
    """Rows the store still holds for a period: pruned tenants' objects are gone (their entries stay)."""
    return sum(t.fingerprint.rows for t in m.tenants.values() if not t.pruned_at)


def query_periods(settings: Settings, manifests: list[Manifest]) -> list[PeriodCount]:
    """Calls and tenants per archived period, counted by DuckDB over the objects in the store. The
    filter on the period column (from the object paths) means only those periods' files are opened."""
    if not manifests:
        return []
    period = layout.PERIOD_KEY[manifests[0].interval]  # week, day or month: the table's interval
    first = min(m.start for m in manifests).astimezone(UTC).date()
    table = '"' + settings.table.replace('"', '""') + '"'
    rows = query(
        f"SELECT {period} AS period, count(*) AS calls, count(DISTINCT tenant_id) AS tenants FROM {table} "
        f"WHERE {period} >= DATE '{first.isoformat()}' GROUP BY 1 ORDER BY 1",
        settings=settings,
    ).to_pylist()
    counted = {r["period"]: (int(r["calls"]), int(r["tenants"])) for r in rows}
    out = []
    for m in manifests:
        day = m.start.astimezone(UTC).date()
        calls, tenants = counted.get(day, (0, 0))
        out.append(PeriodCount(day, calls, tenants, _manifest_rows(m)))
    return out


def _exists(settings: Settings, name: str) -> bool:
    with connect(settings) as conn:
        cur = conn.execute("SELECT to_regclass(format('%%I.%%I', %s::text, %s::text))", (settings.schema, name))
        return bool(cur.fetchone() != (None,))


def _drop(settings: Settings, name: str) -> bool:
    with connect(settings) as conn:
        conn.execute(sql.SQL("DROP TABLE {}").format(sql.Identifier(settings.schema, name)))
        conn.commit()
    return True


def _failed(message: str, exit_code: int) -> CallvaultError:
    exc = CallvaultError(message)
    exc.exit_code = exit_code or 1
    return exc


def run_nightly(
    settings: Settings,
    *,
    at: datetime | None = None,
    dry_run: bool = False,
    report_weeks: int = DEFAULT_REPORT_WEEKS,
    restore_week: date | None = None,
    restore_into: str | None = None,
    restore_tenant: str | None = None,
    keep: bool = False,
    restore: bool = True,
) -> NightlyReport:
    """The three steps; a step that fails is recorded in ``errors`` and the next ones still run when they can."""
    store = settings.archive_url or "(the embedded cluster's archive)"
    report = NightlyReport(table=settings.qualified, store=store, dry_run=dry_run)

    def step(name: str, fn: Callable[[], T]) -> T | None:
        try:
            return fn()
        except CallvaultError as exc:
            report.errors.append((name, exc))
        except Exception as exc:  # a database, store or DuckDB error: one line, as the CLI says it
            report.errors.append((name, translate(exc)))
        return None

    report.archive = step("archive", lambda: commands.archive(settings, at=at, dry_run=dry_run))
    if report.archive is not None:
        report.store = report.archive.store
        for p in report.archive.failed:  # kept in the database; the next run resumes it
            report.errors.append(("archive", _failed(f"{p.partition}: {p.error}", p.exit_code)))

    manifests: list[Manifest] = []
    try:
        manifests = commands.list_archived(settings)
    except StoreUnavailable as exc:
        archived = report.archive is not None and any(p.step_after == "dropped" for p in report.archive.partitions)
        if archived and not dry_run:
            report.errors.append(("archive list", exc))
        else:
            # Until the first partition ages out nothing creates the store, and callvault's readers refuse a
            # store that does not exist (a typo in the URL must not read as an empty archive). Say it, and go on.
            report.notes.append(f"no archive to read yet: {exc}")
    except Exception as exc:
        report.errors.append(("archive list", exc if isinstance(exc, CallvaultError) else translate(exc)))
    newest = manifests[-report_weeks:] if report_weeks > 0 else []
    report.periods = step("archive query", lambda: query_periods(settings, newest)) or []
    for c in report.periods:
        if not c.ok:
            why = (
                f"{c.period}: the store holds {c.calls} calls, its manifest {c.manifest_rows}: run `callvault "
                f"restore --week {c.period} --into <table>`, whose SHA-256 checks name the damaged object"
            )
            report.errors.append(("archive query", _failed(why, 65)))

    if not restore:
        return report
    if restore_week is None and manifests:
        restore_week = manifests[-1].start.astimezone(UTC).date()
    report.restore_week = restore_week
    report.restore_into = into = restore_into or f"{settings.table}_restore_drill"
    if restore_week is None or dry_run:
        return report
    week = restore_week
    existed = step("restore", lambda: _exists(settings, into))
    if existed is None:
        return report
    report.restore = step("restore", lambda: commands.restore(settings, week, tenant_id=restore_tenant, into=into))
    if report.restore is not None and not keep and not existed:
        report.side_table_dropped = bool(step("restore", lambda: _drop(settings, into)))
    return report


def render(report: NightlyReport, out: TextIO) -> None:
    def say(line: str = "") -> None:
        print(line, file=out)

    say(
        f"nightly: {report.table}, archive store {report.store}"
        + ("  (dry run: nothing changes)" if report.dry_run else "")
    )
    say("1. archive: partitions past hot retention")
    if report.archive is None:
        say("   failed (below)")
    elif not report.archive.partitions:
        say("   nothing past retention")
    for p in report.archive.partitions if report.archive else []:
        span = f"{p.partition}  [{p.start:%Y-%m-%d} .. {p.end:%Y-%m-%d})"
        if report.dry_run:
            say(f"   {span}  would be archived (journal step now: {p.step_before})")
            continue
        rows = f"{p.rows:,} rows" if p.rows is not None else "? rows"
        done = f"  FAILED: {p.error}" if p.error else ""
        say(f"   {span}  {p.step_before} -> {p.step_after}  {rows}  {p.seconds:.1f} s{done}")
    say("2. archive query (DuckDB over the store, in place): newest archived periods")
    for note in report.notes:
        say(f"   note: {note}")
    if not report.periods and not report.notes:
        say("   nothing archived yet")
    for c in report.periods:
        check = "ok" if c.ok else f"MISMATCH (manifest {c.manifest_rows:,})"
        say(f"   {c.period}  {c.calls:>9,} calls  {c.tenants:>5,} tenants  {check}")
    say("3. restore drill")
    if report.restore_week is None:
        say("   nothing archived yet: nothing to restore")
    elif report.dry_run:
        say(f"   would restore {report.restore_week} into {report.restore_into} and verify it")
    elif report.restore is not None:
        r = report.restore
        say(
            f"   {r.period} -> {r.target}: {sum(r.tenants.values()):,} rows of {len(r.tenants)} tenants verified "
            f"against the manifest (inserted {r.inserted:,}, already there {r.already_present:,})"
        )
        say(f"   {r.target} dropped" if report.side_table_dropped else f"   {r.target} kept: DROP TABLE it when done")
    for step_name, exc in report.errors:
        say(f"ERROR in {step_name}: {exc}")
    say("ok" if not report.errors else f"failed (exit {report.exit_code})")


def _aware(text: str) -> datetime:
    ts = datetime.fromisoformat(text)
    if ts.tzinfo is None:
        raise argparse.ArgumentTypeError(f"{text!r} has no time zone; e.g. 2026-06-01T00:00:00+00:00")
    return ts


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="nightly", description=__doc__.split("\n\n")[0] if __doc__ else None)
    p.add_argument("--dsn", help="the owner role's DSN (default VOICE_OWNER_DSN, then CALLVAULT_DSN)")
    p.add_argument(
        "--to", metavar="URL", help="archive store, s3://bucket/prefix or file:///dir (default CALLVAULT_ARCHIVE_URL)"
    )
    p.add_argument("--dry-run", action="store_true", help="archive nothing, restore nothing: show what would happen")
    p.add_argument("--at", type=_aware, help="act as at this moment (catching up, or testing); default now")
    p.add_argument(
        "--report-weeks", type=int, default=DEFAULT_REPORT_WEEKS, help="archived periods to count (default %(default)s)"
    )
    p.add_argument(
        "--restore-week", type=date.fromisoformat, help="any day of the period to restore (default the newest archived)"
    )
    p.add_argument("--restore-into", metavar="TABLE", help="side table (default <table>_restore_drill)")
    p.add_argument("--restore-tenant", metavar="UUID", help="restore one tenant only")
    p.add_argument("--keep", action="store_true", help="keep the side table (default: drop it once verified)")
    p.add_argument("--no-restore", action="store_true", help="skip the restore drill")
    p.add_argument("--json", action="store_true", help="print the report as JSON")
    return p


def main(argv: Sequence[str] | None = None, *, out: TextIO | None = None) -> int:
    args = parser().parse_args(argv)
    out = out or sys.stdout
    try:
        settings = from_env(dsn=args.dsn or os.environ.get("VOICE_OWNER_DSN") or None, archive_url=args.to)
    except CallvaultError as exc:
        print(f"nightly: {exc}", file=sys.stderr)
        return exc.exit_code
    report = run_nightly(
        settings,
        at=args.at,
        dry_run=args.dry_run,
        report_weeks=args.report_weeks,
        restore_week=args.restore_week,
        restore_into=args.restore_into,
        restore_tenant=args.restore_tenant,
        keep=args.keep,
        restore=not args.no_restore,
    )
    if args.json:
        print(json.dumps(report.to_dict(), indent=2, default=str), file=out)
    else:
        render(report, out)
    return report.exit_code


if __name__ == "__main__":
    sys.exit(main())
