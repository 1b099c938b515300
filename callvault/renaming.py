"""``callvault migrate-names``: take a table off pg_partman 4.x's ISO-week names, which 5.x refuses.

pg_partman 5.0 dropped ISO weekly (``datetime_string = 'IYYY"w"IW'``, children ``p2026w37``) and
quarterly partitioning: its ``run_maintenance()`` raises for such a table, so premaking stops and,
once the premade weeks run out, every call is refused. The migration pg_partman documents
(``doc/pg_partman_5.0.1_upgrade.md``, "Weekly Migration") renames every child to the start of its week
(``p20260907``) and sets ``datetime_string = 'YYYYMMDD'`` — which pg_partman 4.7 maintains as well, so it
can run before or after ``ALTER EXTENSION pg_partman UPDATE``.

callvault does it in one transaction holding its table lock (no maintain/archive meanwhile), with a
``SET LOCAL lock_timeout`` budget, retried: each ``ALTER TABLE ... RENAME`` takes a brief ACCESS
EXCLUSIVE lock on one child, so writers wait at most the budget, and a failure leaves every name as it
was. Detached weeks waiting for the archive keep their old names (the archive reads both).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from psycopg import sql

from callvault import catalog, naming, partman
from callvault.config import Settings
from callvault.db import connect
from callvault.logs import get_logger
from callvault.maintain import lock_holders, require_partman, retry_locks, table_lock

log = get_logger("callvault.maintain")
TARGET = naming.PARTMAN5  # the pattern pg_partman 5.x gives every interval of a day or more


@dataclass
class RenameReport:
    """What ``migrate-names`` did (or would do): the renames, the pattern before and after."""

    table: str
    pattern_before: str | None
    pattern_after: str | None
    renames: list[tuple[str, str]] = field(default_factory=list)
    dry_run: bool = False

    def to_dict(self) -> dict[str, object]:
        """The report as JSON-ready values (``callvault migrate-names --json``)."""
        return {"table": self.table, "datetime_string_before": self.pattern_before,
                "datetime_string_after": self.pattern_after, "dry_run": self.dry_run,
                "renames": [{"from": a, "to": b} for a, b in self.renames]}  # fmt: skip


def needs_migration(pattern: str | None) -> bool:
    """Whether a table named with ``pattern`` must be migrated before pg_partman 5.x maintains it."""
    return pattern in naming.UNSUPPORTED_IN_5


def migrate_names(settings: Settings, *, dry_run: bool = False) -> RenameReport:
    """Rename the children of an ISO-weekly (or quarterly) table to pg_partman 5.x's ``YYYYMMDD`` names
    and update ``part_config`` (see the module docstring). A table already named otherwise: nothing to do.

    :raises NotInitialised: pg_partman does not manage the table (exit code 66).
    :raises Blocked: a session held a partition past the lock budget on every retry; nothing was renamed
        (exit code 75)."""
    with connect(settings, autocommit=True) as conn:
        pm = require_partman(conn, settings)
        pattern = partman.datetime_string(conn, settings, pm)
        report = RenameReport(settings.qualified, pattern, pattern, dry_run=dry_run)
        if not needs_migration(pattern):
            return report
        report.pattern_after = TARGET
        for row in catalog.list_partitions(conn, settings):
            p = row.info
            if p.start is not None and not p.is_default:
                new = naming.name(settings.table, TARGET, p.start)
                if new != p.name:
                    report.renames.append((p.name, new))
        if dry_run:
            return report
        parent = sql.Identifier(settings.schema, settings.table)
        config = sql.Identifier(pm.schema, "part_config")

        def attempt() -> None:
            with conn.transaction():
                conn.execute("SELECT set_config('lock_timeout', %s, true)", (f"{settings.lock_timeout_ms}ms",))
                for old, new in report.renames:
                    stmt = sql.SQL("ALTER TABLE {} RENAME TO {}")
                    conn.execute(stmt.format(sql.Identifier(settings.schema, old), sql.Identifier(new)))
                conn.execute(
                    sql.SQL("UPDATE {} SET datetime_string = %s WHERE parent_table = %s").format(config),
                    (TARGET, settings.qualified),
                )

        with table_lock(conn, settings, "renaming partitions", logger=log):
            retry_locks(attempt, f"renaming the partitions of {settings.qualified}",
                        lambda: lock_holders(conn, parent), logger=log)  # fmt: skip
        log.info("renamed %d partitions of %s to pg_partman 5.x names", len(report.renames), settings.qualified)
        return report
