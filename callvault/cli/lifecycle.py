"""Table lifecycle commands: init, audit, migrate-names, maintain, plan, status, health, metrics, history,
schedule, explain, lint, quarantine."""

from __future__ import annotations

import sys

import click
from rich.markup import escape

from callvault import commands, config, render, schedule
from callvault import maintain as maintenance
from callvault.cli.base import (
    at_option,
    emit,
    err,
    json_option,
    main,
    out,
    parse_at,
    role_option,
    settings_of,
    table_command,
    target_options,
)
from callvault.errors import InvalidSetting, Unhealthy


@main.command()
@target_options
@click.option("--interval", default="weekly", show_default=True, help="Partition size: daily, weekly or monthly.")
@click.option("--premake", default=4, show_default=True, type=int, help="Partitions kept ready ahead of now.")
@click.option("--retention", default="90 days", show_default=True, help="Hot retention, e.g. '90 days', or 'none'.")
@click.option("--default-partition/--no-default-partition", default=False, show_default=True,
              help="Keep a default partition (policy: none; see docs/design.md).")  # fmt: skip
@click.option(
    "--roles",
    "with_roles",
    is_flag=True,
    help="Also create the owner, ingest, app and tenant_writer roles and their grants (needs a superuser).",
)
@role_option
@click.option("--distributed/--no-distributed", default=None,
              help="Citus: distribute the table by tenant_id [default: when the database is a Citus coordinator "
                   "with workers].")  # fmt: skip
@click.option("--shard-count", type=int, default=None, metavar="N",
              help="Citus: shards per partition [default: 16, see docs/scaling.md].")  # fmt: skip
@click.option("--sql", "print_sql", is_flag=True, help="Print the DDL that would run; change nothing.")
@json_option
def init(dsn: str | None, schema: str, table: str, interval: str, premake: int, retention: str,
         default_partition: bool, with_roles: bool, role_prefix: str, distributed: bool | None,
         shard_count: int | None, print_sql: bool, as_json: bool) -> None:  # fmt: skip
    """Create the partitioned table, hand it to pg_partman, enforce tenant isolation (idempotent)."""
    lifecycle = config.lifecycle_from(interval, premake, retention)
    s = settings_of(dsn, schema, table, lifecycle=lifecycle, default_partition=default_partition,
                    role_prefix=role_prefix, start_embedded=not print_sql)  # fmt: skip
    if print_sql:
        click.echo(commands.init_sql(s, roles=with_roles, distributed=distributed, shard_count=shard_count), nl=False)
        return
    report = commands.init(s, roles=with_roles, distributed=distributed, shard_count=shard_count)
    if as_json:
        emit({"table": s.qualified, "changed": report.changed, "steps": [st.what for st in report.steps],
              "secured": report.secured, "roles": s.roles.as_dict() if with_roles else None})  # fmt: skip
        return
    if not report.changed:
        out.print(f"{s.qualified} is already initialised; nothing to do")
    for step in report.steps:
        out.print(f"  done: {step.what}")
    if report.secured:
        out.print(f"  secured: {render.secured_summary(report.secured)}", soft_wrap=True)
    if with_roles and report.steps:
        r = s.roles
        out.print(f"roles: owner {r.owner}, ingest {r.ingest}, app {r.app}, tenant_writer {r.tenant_writer} "
                  "(LOGIN without a password: set one with ALTER ROLE ... PASSWORD, see docs/tenancy.md)")  # fmt: skip


@main.command(name="audit")
@target_options
@role_option
@click.option("--fix", is_flag=True, help="Repair partitions first (policy, RLS, grants, owner), as maintain does.")
@json_option
def audit_cmd(dsn: str | None, schema: str, table: str, role_prefix: str, fix: bool, as_json: bool) -> None:
    """Prove tenant isolation on the parent and every partition; exit 3 naming each leak or gap."""
    s = settings_of(dsn, schema, table, role_prefix=role_prefix)
    report = commands.audit(s, fix=fix)
    emit(report.to_dict()) if as_json else render.audit(out, report)
    if report.failed:
        first = report.failed[0]
        raise Unhealthy(f"tenant isolation of {s.qualified}: {first.problem}"
                        + (f" (+{len(report.failed) - 1} more)" if len(report.failed) > 1 else ""))  # fmt: skip


@main.command(name="migrate-names")
@target_options
@click.option("--dry-run", is_flag=True, help="List the renames; change nothing.")
@json_option
def migrate_names_cmd(dsn: str | None, schema: str, table: str, dry_run: bool, as_json: bool) -> None:
    """Rename ISO-week partitions (p2026w37) to pg_partman 5.x's names (p20260907), before or after
    `ALTER EXTENSION pg_partman UPDATE`: one transaction under the lock budget, while writes continue."""
    rep = commands.migrate_names(settings_of(dsn, schema, table, start_embedded=not dry_run), dry_run=dry_run)
    if as_json:
        emit(rep.to_dict())
        return
    if not rep.renames and rep.pattern_before == rep.pattern_after:
        out.print(f"{rep.table}: partitions are named {rep.pattern_before!s} already; nothing to rename", markup=False)
        return
    verb = "would rename" if dry_run else "renamed"
    for old, new in rep.renames:
        out.print(f"{verb} {old} -> {new}", markup=False)
    out.print(f"{rep.table}: datetime_string {rep.pattern_before} -> {rep.pattern_after}"
              + (" (dry run: nothing changed)" if dry_run else ""), markup=False)  # fmt: skip


@main.command()
@target_options
@at_option
@click.option("--wait", is_flag=True, help="Wait for a running maintenance instead of exiting 75.")
@json_option
def maintain(dsn: str | None, schema: str, table: str, at: str | None, wait: bool, as_json: bool) -> None:
    """Run pg_partman maintenance now and report partitions created/detached/dropped."""
    report = maintenance.maintain(settings_of(dsn, schema, table), at=parse_at(at), wait=wait)
    emit(report.to_dict()) if as_json else render.maintenance(out, report)


@table_command(at=True)
def plan(dsn: str | None, schema: str, table: str, at: str | None, as_json: bool) -> None:
    """Show what maintenance and retention will do (at --at), without changing anything."""
    s = settings_of(dsn, schema, table, start_embedded=False)
    when = parse_at(at)  # a bad --at is named before any connection
    p = commands.plan(s, when)
    emit(p.to_dict()) if as_json else render.plan(out, p)


@table_command(at=True)
def status(dsn: str | None, schema: str, table: str, at: str | None, as_json: bool) -> None:
    """Partitions, sizes, premake horizon, default rows, retention and last maintenance."""
    s = settings_of(dsn, schema, table)
    when = parse_at(at)
    st = commands.status(s, when)
    emit(st.to_dict()) if as_json else render.status(out, st)


@main.command()
@target_options
@click.option("--partition-warn", default=config.DEFAULT_PARTITION_WARN, show_default=True,
              help="Warn when the table has more partitions than this.")  # fmt: skip
@json_option
def health(dsn: str | None, schema: str, table: str, partition_warn: int, as_json: bool) -> None:
    """Exit 0 when healthy, 3 with a one-line reason otherwise."""
    s = settings_of(dsn, schema, table, partition_warn=partition_warn)
    h = commands.health(s)
    if as_json:
        emit(h.to_dict())
    if h.problems:
        raise Unhealthy(h.problems[0] + (f" (+{len(h.problems) - 1} more)" if len(h.problems) > 1 else ""))
    if not as_json:
        out.print(f"ok: {s.qualified} horizon {h.horizon:%Y-%m-%d}, {h.partitions} partitions")


@main.command(name="metrics")
@target_options
@click.option("--textfile", default=None, metavar="PATH",
              help="Write them to PATH (*.prom, atomically) for node_exporter's textfile collector.")  # fmt: skip
@json_option
def metrics_cmd(dsn: str | None, schema: str, table: str, textfile: str | None, as_json: bool) -> None:
    """The table's Prometheus metrics, once (text format). `worker --metrics-port` serves them."""
    from pathlib import Path

    from callvault import metrics

    s = settings_of(dsn, schema, table)
    if as_json and textfile is not None:
        raise InvalidSetting("--json and --textfile: choose one (the textfile is the Prometheus text format)")
    if as_json:
        emit(metrics.samples_json(metrics.render(s)))
        return
    if textfile is None:
        sys.stdout.buffer.write(metrics.render(s))
        sys.stdout.flush()
        return
    metrics.write_textfile(s, Path(textfile))
    err.print(f"wrote {textfile}")


@main.command(name="history")
@target_options
@click.option("--job", type=click.Choice(["maintain", "archive", "prune"]), default=None, help="Only this job.")
@click.option("--outcome", type=click.Choice(["ok", "failed", "blocked"]), default=None, help="Only this outcome.")
@click.option(
    "--since", default=None, metavar="TS", help="Only runs that finished at or after TS (ISO 8601, or 12h, 7d)."
)
@click.option("--limit", default=50, show_default=True, type=click.IntRange(min=1), help="At most this many runs.")
@json_option
def history_cmd(dsn: str | None, schema: str, table: str, job: str | None, outcome: str | None, since: str | None,
                limit: int, as_json: bool) -> None:  # fmt: skip
    """What maintenance, archive and prune did and when (newest first), kept CALLVAULT_HISTORY_DAYS days."""
    s = settings_of(dsn, schema, table, start_embedded=True)
    found = commands.history(s, job=job, outcome=outcome, since=since, limit=limit)
    if as_json:
        emit([r.to_dict() for r in found])
        return
    render.history(out, s.qualified, found)


@main.command(name="schedule")
@target_options
@click.option("--pg-cron", "pg_cron", is_flag=True, required=True, help="Schedule with pg_cron in the database.")
@click.option("--every", default=schedule.DEFAULT_EVERY, show_default=True, help="15m, 1h, 1d or a cron expression.")
@click.option("--remove", is_flag=True, help="Remove the job instead.")
@json_option
def schedule_cmd(dsn: str | None, schema: str, table: str, pg_cron: bool, every: str, remove: bool,
                 as_json: bool) -> None:  # fmt: skip
    """Install (or --remove) the periodic maintenance job in pg_cron."""
    if not pg_cron:
        raise InvalidSetting("only --pg-cron is built in; for cron/systemd/Kubernetes see docs/operations.md")
    result = schedule.schedule(settings_of(dsn, schema, table), every, remove)
    emit({"removed" if remove else "scheduled": result}) if as_json else out.print(result)


@main.command(name="explain")
@target_options
@click.argument("query")
@click.option("--param", "-p", "params", multiple=True, metavar="VALUE",
              help="Value of the next placeholder, in order: $1, $2... or psycopg's %s (repeatable).")  # fmt: skip
@click.option("--analyze", is_flag=True, help="EXPLAIN ANALYZE (runs the query; rolled back).")
@click.option("--max-partitions", type=int, default=None, help="Fail when more partitions than this are scanned.")
@json_option
def explain_cmd(
    dsn: str | None, schema: str, table: str, query: str, params: tuple[str, ...], analyze: bool,
    max_partitions: int | None, as_json: bool,
) -> None:  # fmt: skip
    """Which partitions a query reads; exit 4 when it scans all of them (or more than --max-partitions).

    Exit 4: the query reads every partition (or more than --max-partitions). 2: the query does not parse,
    its placeholders and --param values do not match, or the server refuses it. 66: the table does not exist.
    """
    from callvault.explain import NotPruned, prepare

    prepare(query, params)  # a query that cannot run is named before any connection
    s = settings_of(dsn, schema, table)
    report = commands.explain(s, query, list(params), analyze=analyze, max_partitions=max_partitions)
    if as_json:
        emit(report.to_dict())
    else:
        for line in report.plan:
            out.print(line, soft_wrap=True, markup=False)
        out.print(
            f"{s.qualified}: {len(report.scanned)} of {report.partitions_total} partitions in the plan; "
            f"pruning: {report.pruning}; subplans removed at executor start: {report.subplans_removed}"
            + (f"; Citus tasks: {report.tasks}" if report.tasks is not None else "")
        )
    if report.problem:
        raise NotPruned(report.problem)


@main.command(name="lint")
@click.argument("files", nargs=-1)
@click.option("--table", envvar="CALLVAULT_TABLE", default="call_logs", show_default=True, help="Table to check.")
@json_option
def lint_cmd(files: tuple[str, ...], table: str, as_json: bool) -> None:
    """Static check of SQL files (or - for stdin): partition-key rules CV001-CV005; exit 4 on findings.

    $1 and psycopg %s / %(name)s placeholders are SQL here. A statement that does not parse is reported
    (CV000) and every other statement is still checked. Exit 0: clean; 4: findings; 5: a statement does
    not parse (CV000); 2: a file cannot be read (the others are still checked).
    """

    from callvault.lint import lint_paths

    run = lint_paths(files, table=table)
    if as_json:
        emit(run.findings)
    else:
        for row in run.findings:  # the message quotes the SQL: arr[i] is not markup
            where = escape(f"{row['file']}:{row['line']}:")
            out.print(f"{where} [bold]{row['rule']}[/bold] {escape(str(row['message']))}", soft_wrap=True)
            out.print(f"    why: {row['why']}\n    fix: {row['fix']}", soft_wrap=True, markup=False)
        if run.read:
            out.print(f"{len(run.findings)} finding(s)")
    failure = run.failure()
    if failure:
        raise failure


@main.group()
def quarantine() -> None:
    """Rows the writer set aside (with the reason), and replaying them once fixed."""


@quarantine.command(name="list")
@target_options
@click.option("--limit", default=50, show_default=True, help="Newest rows to show.")
@json_option
def quarantine_list(dsn: str | None, schema: str, table: str, limit: int, as_json: bool) -> None:
    """Show quarantined rows, newest first: id, when, why, and the row as JSON."""

    s = settings_of(dsn, schema, table)
    listing = commands.quarantine_list(s, limit)
    if as_json:
        emit([r.to_dict() for r in listing.rows])
        return
    out.print(f"{listing.total} row(s) in quarantine for {s.qualified}")
    for r in listing.rows:
        out.print(f"[bold]#{r.id}[/bold] {r.received_at:%Y-%m-%d %H:%M:%S} (tries: {r.attempts}) {r.reason}")
        out.print(f"    {r.raw[:300]}", soft_wrap=True, markup=False)


@quarantine.command(name="replay")
@target_options
@click.option("--id", "ids", multiple=True, type=int, help="Only these ids (repeatable). Default: all.")
@click.option("--assume-utc", is_flag=True, help="Treat naive timestamps as UTC this time.")
@json_option
def quarantine_replay(
    dsn: str | None, schema: str, table: str, ids: tuple[int, ...], assume_utc: bool, as_json: bool
) -> None:
    """Validate quarantined rows again; insert the good ones (idempotently) and remove them."""

    s = settings_of(dsn, schema, table)
    report = commands.quarantine_replay(s, list(ids), assume_utc=assume_utc)
    if as_json:
        emit(report.to_dict())
    else:
        out.print(
            f"replayed {report.tried}: {report.written} written, {report.duplicates} already present, "
            f"{report.still_bad} still bad (see `callvault quarantine list`)"
        )
