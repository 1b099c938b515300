"""The ``callvault`` command: a thin shell over the library. Library errors become one clean line
on stderr and the error's exit code (see docs/cli.md for the table)."""

from __future__ import annotations

import json
import logging
import sys
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any, TypeVar

import click
from psycopg import sql
from rich.console import Console
from rich.markup import escape

from callvault import bootstrap, catalog, commands, config, db, demo, logs, monitor, render, schedule, tenancy
from callvault import maintain as maintenance
from callvault.db import connect
from callvault.embedded import Cluster
from callvault.errors import CallvaultError, InvalidSetting, Unhealthy
from callvault.plan import Interval
from callvault.termprogress import terminal_progress

F = TypeVar("F", bound=Callable[..., Any])
# Piped output (make, CI, logs) gets a wide fixed width instead of rich's 80-column default.
PIPE_WIDTH = 160
out = Console(highlight=False, width=None if sys.stdout.isatty() else PIPE_WIDTH)
err = Console(stderr=True, highlight=False, width=None if sys.stderr.isatty() else PIPE_WIDTH)


_log = logs.get_logger("cli")


class Cli(click.Group):
    """Errors become one line and an exit code (callvault.failure); ``--debug`` shows the traceback.
    Usage errors (unknown option, bad value) are one line too, naming the command's --help.
    Logging (``-v``/``-q``, set up by ``main``) is undone on the way out, for in-process callers."""

    def main(self, *args: Any, **kwargs: Any) -> Any:
        kwargs["standalone_mode"] = False
        with logs.scoped():
            return self._main(*args, **kwargs)

    def _main(self, *args: Any, **kwargs: Any) -> Any:
        try:
            return super().main(*args, **kwargs)
        except click.exceptions.Exit as exc:
            sys.exit(exc.exit_code)
        except click.exceptions.Abort:
            err.print("[red]error:[/red] interrupted")
            sys.exit(130)
        except click.ClickException as exc:
            where = ""
            if isinstance(exc, click.UsageError) and exc.ctx is not None:
                where = f" (see `{exc.ctx.command_path} --help`)"
            err.print(f"[red]error:[/red] {escape(exc.format_message())}{escape(where)}", soft_wrap=True)
            sys.exit(exc.exit_code)

    def invoke(self, ctx: click.Context) -> Any:
        """Run the command; with ``-v``, an INFO line on ``callvault.cli`` says how it ended and how long it took."""
        t0 = time.perf_counter()
        code: object = 0
        try:
            return self._invoke(ctx)
        except SystemExit as exc:
            code = exc.code
            raise
        except BaseException:
            code = None  # --debug: the traceback follows
            raise
        finally:
            if ctx.invoked_subcommand:
                logs.event(_log, logging.INFO, "command finished", command=ctx.invoked_subcommand, exit=code,
                           seconds=time.perf_counter() - t0)  # fmt: skip

    def _invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except (click.exceptions.Exit, click.ClickException, click.Abort):
            raise
        except CallvaultError as exc:
            if ctx.params.get("debug"):
                raise
            err.print(f"[red]error:[/red] {escape(str(exc))}", soft_wrap=True)
            sys.exit(exc.exit_code)
        except (Exception, KeyboardInterrupt) as exc:
            if ctx.params.get("debug"):
                raise
            from callvault.failure import translate

            failed = translate(exc)
            err.print(f"[red]error:[/red] {escape(str(failed))}", soft_wrap=True)
            sys.exit(failed.exit_code)


def _inherit(name: str) -> Callable[[click.Context, click.Parameter, Any], Any]:
    """An option not given on a subcommand takes the value given before it (``callvault --dsn X status``)."""

    def callback(ctx: click.Context, param: click.Parameter, value: Any) -> Any:
        if value not in (None, False):
            return value
        parent = ctx.parent
        while parent is not None:
            got = parent.params.get(name)
            if got not in (None, False):
                return got
            parent = parent.parent
        return value

    return callback


def target_options(f: F) -> F:
    """--dsn/--schema/--table: which database and table (env: CALLVAULT_DSN, _SCHEMA, _TABLE)."""
    f = click.option("--table", default=None, callback=_inherit("table"),
                     help="Partitioned table name [CALLVAULT_TABLE; default: call_logs].")(f)  # fmt: skip
    f = click.option("--schema", default=None, callback=_inherit("schema"),
                     help="Schema of the table [CALLVAULT_SCHEMA; default: public].")(f)  # fmt: skip
    return click.option("--dsn", default=None, callback=_inherit("dsn"),
                        help="Postgres URL [CALLVAULT_DSN, libpq's PGHOST/PGSERVICE...; default: the embedded "
                             "cluster, started when needed].")(f)  # fmt: skip


def role_option(f: F) -> F:
    return click.option("--role-prefix", default=None,
                        help="[CALLVAULT_ROLE_PREFIX; default: callvault] Roles are <prefix>_owner, _ingest, _app, "
                        "_tenant_writer; "
                        "CALLVAULT_OWNER_ROLE, _INGEST_ROLE, _APP_ROLE, _TENANT_WRITER_ROLE name one "
                        "each.")(f)  # fmt: skip


def store_option(f: F) -> F:
    return click.option("--to", "--store-url", "store_url", default=None, metavar="URL", callback=_inherit("store_url"),
                        help="Archive store: s3://bucket/prefix or file:///dir. Default: CALLVAULT_ARCHIVE_URL, or "
                             "<callvault home>/archive with the embedded database.")(f)  # fmt: skip


def json_option(f: F) -> F:
    return click.option("--json", "as_json", is_flag=True, callback=_inherit("as_json"),
                        help="Machine-readable output.")(f)  # fmt: skip


def at_option(f: F) -> F:
    return click.option("--at", "at", default=None, metavar="TS",
                        help="Reference time, ISO 8601 (naive means UTC). Default: now.")(f)  # fmt: skip


def parse_at(text: str | None, flag: str = "--at") -> datetime | None:
    if text is None:
        return None
    try:
        ts = datetime.fromisoformat(text.strip().replace(" ", "T") if "T" not in text else text.strip())
    except ValueError:
        raise InvalidSetting(f"{flag} {text!r} is not an ISO 8601 time; e.g. 2026-12-01T00:00:00Z") from None
    return ts.replace(tzinfo=UTC) if ts.tzinfo is None else ts.astimezone(UTC)


def parse_uuid(text: str, flag: str) -> str:
    """``text`` as canonical UUID text, or InvalidSetting naming the option, the value and the form."""
    import uuid

    try:
        return str(uuid.UUID(text.strip()))
    except ValueError:
        raise InvalidSetting(
            f"{flag} {text!r} is not a UUID: pass the tenant's UUID, e.g. {flag} 6f1c2a4e-0b7d-4c3e-9a51-2d8e4f6a7b90"
        ) from None


def settings_of(dsn: str | None, schema: str | None, table: str | None, **more: Any) -> config.Settings:
    """The one loader (callvault.config.load): flags > CALLVAULT_* > callvault.toml > defaults; with no
    server configured anywhere, the embedded cluster."""
    flags = {"dsn": dsn, "schema": schema, "table": table}
    flags.update({k: v for k, v in more.items() if k in config.OPTION_KEYS})
    extra = {k: v for k, v in more.items() if k not in config.OPTION_KEYS}
    return config.load(flags, config_file=_root_param("config_file"), embedded_default=True, **extra).settings


def _root_param(name: str) -> Any:
    ctx = click.get_current_context(silent=True)
    return ctx.find_root().params.get(name) if ctx is not None else None


def emit(data: object) -> None:
    click.echo(json.dumps(data, indent=2, default=str))


@click.group(cls=Cli, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="callvault")
@click.option("--dsn", default=None, help="Postgres URL for every subcommand (same as the subcommand's --dsn).")
@click.option("--schema", default=None, help="Schema of the table, for every subcommand.")
@click.option("--table", default=None, help="Partitioned table, for every subcommand.")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output, for every subcommand.")
@click.option("--config", "config_file", default=None, metavar="FILE",
              help="A callvault.toml [CALLVAULT_CONFIG; default: ./callvault.toml when it exists].")  # fmt: skip
@click.option("--debug", is_flag=True, help="Show the traceback of an error.")
@click.option("-v", "--verbose", count=True,
              help="Log to stderr: -v what was done and warnings (lock retries...), -vv details. Default: errors "
                   "only, so a failure is one line.")  # fmt: skip
@click.option("-q", "--quiet", is_flag=True, help="Log nothing (the command's output and its error line stay).")
@click.pass_context
def main(ctx: click.Context, dsn: str | None, schema: str | None, table: str | None, as_json: bool,
         config_file: str | None, debug: bool, verbose: int, quiet: bool) -> None:  # fmt: skip
    """Keep AI voice-agent call logs in partitioned Postgres, fast for years."""
    if verbose and quiet:
        raise click.UsageError("-v/--verbose and -q/--quiet cannot be used together", ctx=ctx)
    # the worker writes JSON lines on stderr: log records join them as {"event": "log", ...} lines
    logs.configure(-1 if quiet else verbose, json_lines=ctx.invoked_subcommand == "worker")


@main.group(name="config")
def config_group() -> None:
    """The effective configuration."""


@config_group.command(name="show")
@target_options
@json_option
def config_show(dsn: str | None, schema: str | None, table: str | None, as_json: bool) -> None:
    """Every effective setting and where it came from (flag, env, file, default); secrets redacted."""
    loaded = config.load({"dsn": dsn, "schema": schema, "table": table}, config_file=_root_param("config_file"),
                         embedded_default=True)  # fmt: skip
    doc = loaded.to_dict()
    if as_json:
        emit(doc)
        return
    for key, item in doc.items():
        assert isinstance(item, dict)
        value = "" if item["value"] is None else item["value"]
        out.print(f"{key:20} {value!s:50} ({item['source']})", soft_wrap=True, markup=False)


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


@main.group(name="mirror")
def mirror_group() -> None:
    """Mirror the table (or its metadata) into another Postgres by logical replication."""


@mirror_group.command(name="create")
@target_options
@click.option("--to", "target", required=True, metavar="DSN", help="The target database (another Postgres).")
@click.option("--name", default=None, help="Mirror name (lower-case letters, digits, _) [default: from the target].")
@click.option(
    "--columns",
    default="all",
    show_default=True,
    metavar="all|metadata|c1,c2",
    help="Columns to mirror; metadata = all but the transcript.",
)
@click.option(
    "--tenant",
    "--tenant-id",
    "tenants",
    multiple=True,
    metavar="UUID",
    help="Mirror only this tenant's rows (repeatable); default every tenant.",
)
@click.option(
    "--truncate-target",
    is_flag=True,
    help="The target's table may hold rows (an earlier mirror's): delete them first; without it, refused.",
)
@json_option
def mirror_create(dsn: str | None, schema: str, table: str, target: str, name: str | None, columns: str,
                  tenants: tuple[str, ...], truncate_target: bool, as_json: bool) -> None:  # fmt: skip
    """Publication here, the table with its own lifecycle there, a subscription with the initial copy."""
    from callvault import mirror

    rep = mirror.create(settings_of(dsn, schema, table), target, name=name, columns=columns, tenants=tenants,
                        truncate_target=truncate_target)  # fmt: skip
    if as_json:
        emit(rep.to_dict())
        return
    out.print(f"mirror {rep.name} -> {rep.target}", markup=False, soft_wrap=True)
    for step in rep.steps:
        out.print(f"  {step}", markup=False, soft_wrap=True)


@mirror_group.command(name="status")
@target_options
@click.option("--to", "target", default=None, metavar="DSN", help="Also report the target's side.")
@json_option
def mirror_status(dsn: str | None, schema: str, table: str, target: str | None, as_json: bool) -> None:
    """callvault's replication slots here (lag, WAL retained) and, with --to, the target's subscription."""
    from callvault import mirror

    rep = mirror.status(settings_of(dsn, schema, table), target)
    if as_json:
        emit(rep)
        return
    slots = rep["slots"]
    assert isinstance(slots, list)
    if not slots:
        out.print("no callvault mirror slots on this server")
    for sl in slots:
        out.print(f"{sl['slot']}: {'active' if sl['active'] else 'INACTIVE'}, lag {sl['lag_bytes']} bytes"
                  f" ({sl['lag_seconds']} s), WAL retained {sl['wal_retained_bytes']} bytes", markup=False)  # fmt: skip
    for sl in rep.get("tablesync_slots") or []:  # type: ignore[attr-defined]
        owner = sl["mirror"] or (f"maybe {', '.join(sl['maybe_mirrors'])}" if sl["maybe_mirrors"] else "no live mirror")
        out.print(f"{sl['slot']}: tablesync slot of {owner}{' (left over)' if sl['orphan'] else ''}, "
                  f"{'active' if sl['active'] else 'INACTIVE'}, WAL retained {sl['wal_retained_bytes']} bytes",
                  markup=False, soft_wrap=True)  # fmt: skip
    if "target" in rep:
        out.print(json.dumps(rep["target"], indent=2, default=str), markup=False, highlight=False)
    for problem in rep.get("problems") or []:  # type: ignore[attr-defined]
        out.print(f"PROBLEM: {problem}", markup=False, soft_wrap=True)


@mirror_group.command(name="drop")
@target_options
@click.option("--name", required=True, help="The mirror (as `mirror status` names it, with or without the prefix).")
@click.option("--to", "target", default=None, metavar="DSN", help="The target, to drop its subscription too.")
@click.option("--force", is_flag=True,
              help="Target unreachable or unknown: drop the primary's side only (slots, publication).")  # fmt: skip
@json_option
def mirror_drop(dsn: str | None, schema: str, table: str, name: str, target: str | None, force: bool,
                as_json: bool) -> None:  # fmt: skip
    """Remove the subscription (target) and the slot and publication (here); the target's rows stay."""
    from callvault import mirror

    rep = mirror.drop(settings_of(dsn, schema, table), name, target_dsn=target, force=force)
    if as_json:
        emit(rep.to_dict())
        return
    for step in rep.steps:
        out.print(step, markup=False, soft_wrap=True)


@main.command(name="publish")
@target_options
@click.option("--name", default=None, help="Publication name [default: callvault_<table>].")
@click.option(
    "--columns",
    default="all",
    show_default=True,
    metavar="all|metadata|c1,c2",
    help="Columns to publish; metadata = all but the transcript; a list must hold the primary key.",
)
@click.option(
    "--tenant",
    "--tenant-id",
    "tenants",
    multiple=True,
    metavar="UUID",
    help="Publish only this tenant's rows (repeatable); default every tenant.",
)
@click.option("--replace", is_flag=True, help="Alter a publication of that name that has other options.")
@click.option("--sql", "sql_only", is_flag=True, help="Print the statements; change nothing.")
@json_option
def publish_cmd(dsn: str | None, schema: str, table: str, name: str | None, columns: str, tenants: tuple[str, ...],
                replace: bool, sql_only: bool, as_json: bool) -> None:  # fmt: skip
    """A logical-replication publication of the table via its partition root (idempotent)."""
    from callvault.publication import publish

    rep = publish(settings_of(dsn, schema, table), name=name, columns=columns, tenants=tenants, replace=replace,
                  sql_only=sql_only)  # fmt: skip
    if as_json:
        emit(rep.to_dict())
    elif sql_only:
        out.print(";\n".join(rep.statements) + ";", markup=False, highlight=False, soft_wrap=True)
    else:
        what = {"created": "created", "replaced": "altered", "unchanged": "already as asked"}[rep.action]
        cols = "all columns" if len(rep.columns) == 8 else ", ".join(rep.columns)
        who = f"tenants {', '.join(rep.tenants)}" if rep.tenants else "every tenant"
        out.print(f"publication {rep.name} {what}: {rep.table} via its partition root, {cols}, {who}",
                  markup=False, soft_wrap=True)  # fmt: skip


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


@main.command()
@target_options
@at_option
@json_option
def plan(dsn: str | None, schema: str, table: str, at: str | None, as_json: bool) -> None:
    """Show what maintenance and retention will do (at --at), without changing anything."""
    s = settings_of(dsn, schema, table, start_embedded=False)
    when = parse_at(at)  # a bad --at is named before any connection
    p = commands.plan(s, when)
    emit(p.to_dict()) if as_json else render.plan(out, p)


@main.command()
@target_options
@at_option
@json_option
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
    from callvault import history

    s = settings_of(dsn, schema, table, start_embedded=True)
    with connect(s) as conn:
        when = _since(conn, since)
        found = history.runs(conn, s, job=job, outcome=outcome, since=when, limit=limit)
    if as_json:
        emit([r.to_dict() for r in found])
        return
    render.history(out, s.qualified, found)


def _since(conn: db.Conn, text: str | None) -> datetime | None:
    """``--since``: an ISO 8601 time, or a period before the server's now (``30m``, ``12h``, ``7d``)."""
    if text is None:
        return None
    t = text.strip().lower()
    if t[-1:] in ("s", "m", "h", "d") and t[:-1].isdigit():
        from callvault.worker import parse_every

        try:
            return db.server_now(conn) - timedelta(seconds=parse_every(t))
        except InvalidSetting:
            raise InvalidSetting(f"--since {text!r} must be a positive period, e.g. 12h or 7d") from None
    return parse_at(text, "--since")


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
    from rich.markup import escape

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


@main.group()
def bench() -> None:
    """The project's benchmarks: ratios against baselines run in the same process."""


@bench.command(name="ingest")
@target_options
@click.option("--rows", default=300_000, show_default=True, help="Rows per method.")
@click.option("--row-bytes", default=1200, show_default=True, help="Approximate bytes per row.")
@json_option
def bench_ingest(dsn: str | None, schema: str, table: str, rows: int, row_bytes: int, as_json: bool) -> None:
    """Writer (sync, async) vs raw server-side COPY vs per-row INSERT (1 and 16 connections)."""
    from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

    from callvault.bench.ingest import IngestBench

    s = settings_of(dsn, schema, table)
    with Progress(TextColumn("{task.description}"), BarColumn(), TimeElapsedColumn(), console=err) as bar:
        task = bar.add_task("setup", total=rows * 2)

        def progress(what: str, n: int) -> None:
            if what.startswith("phase:"):
                bar.update(task, description=what[6:])
            else:
                bar.advance(task, n)

        result = IngestBench(s, rows, row_bytes, progress).run().to_dict()
    if as_json:
        emit(result)
        return
    render.bench_ingest(out, result)


@bench.command(name="query")
@target_options
@click.option("--rows", default=2_000_000, show_default=True, help="Rows to load (ignored with --sizes).")
@click.option("--sizes", default=None, help="Several sizes, e.g. 1e6,5e6,2e7: one run each, plus a plot.")
@click.option("--plot", "plot_path", default="bench-query.png", show_default=True, help="PNG written with --sizes.")
@json_option
def bench_query(
    dsn: str | None, schema: str, table: str, rows: int, sizes: str | None, plot_path: str, as_json: bool
) -> None:
    """Read latency (p50/p95/p99): partitioned vs flat, pinned vs date_trunc, idle vs under ingest."""
    from callvault.bench import query as qb

    try:
        counts = [int(float(x)) for x in sizes.split(",")] if sizes else [rows]
    except ValueError:
        raise InvalidSetting(f"--sizes {sizes!r}: give comma-separated row counts, e.g. 1e6,5e6") from None
    s = settings_of(dsn, schema, table)
    results = []
    for n in counts:
        results.append(qb.run(s, n, progress=lambda msg: err.print(f"[dim]{msg}[/dim]")))
    if sizes:
        qb.plot(results, plot_path)
        err.print(f"plot written to {plot_path}")
    result = dict(results[-1], sizes=[{k: r[k] for k in r if k.endswith("p95_ms") or k == "rows"} for r in results])
    if as_json:
        emit(result)
        return
    for key, value in result.items():
        if key != "sizes":
            out.print(f"{key:34} {value}")


@bench.command(name="replication")
@target_options
@click.option("--seconds", default=60.0, show_default=True, help="How long the writer ingests for each mirror.")
@json_option
def bench_replication(dsn: str | None, schema: str, table: str, seconds: float, as_json: bool) -> None:
    """A mirror's lag (p50/p95/max) and apply rate while the Writer ingests at full speed; metadata and full."""
    from callvault.bench import replication as rb

    result = rb.run(settings_of(dsn, schema, table), seconds, lambda msg: err.print(f"[dim]{msg}[/dim]"))
    if as_json:
        emit(result)
        return
    for m in result["mirrors"]:
        out.print("  ".join(f"{k}={v}" for k, v in m.items()), markup=False, soft_wrap=True)


@bench.command(name="metrics")
@target_options
@click.option("--partitions", default=500, show_default=True, help="Weekly partitions in the bench table.")
@click.option("--samples", default=50, show_default=True, type=click.IntRange(min=5), help="Timed collections.")
@click.option("--seconds", default=8.0, show_default=True, help="Seconds of ingest with and without collections.")
@json_option
def bench_metrics(dsn: str | None, schema: str, table: str, partitions: int, samples: int, seconds: float,
                  as_json: bool) -> None:  # fmt: skip
    """One metrics collection at N partitions vs one catalog round trip; writer latency while collecting."""
    from callvault.bench import metrics as mb

    result = mb.run(
        settings_of(dsn, schema, table), partitions, samples, lambda m: err.print(f"[dim]{m}[/dim]"), seconds
    )
    if as_json:
        emit(result)
        return
    for key, value in result.items():
        out.print(f"{key:34} {value}")


@bench.command(name="citus")
@target_options
@click.option("--citus-dsn", default=None, metavar="DSN",
              help="The Citus coordinator [default: the `callvault dev up --citus` cluster].")  # fmt: skip
@click.option("--rows", default=300_000, show_default=True, help="Rows loaded on each engine.")
@json_option
def bench_citus(dsn: str | None, schema: str, table: str, citus_dsn: str | None, rows: int, as_json: bool) -> None:
    """Single node vs Citus, same run: partition DDL by shard count, Writer rows/s, tenant window p50/p95/p99."""
    from callvault.bench import citus as cb
    from callvault.embedded import CitusCluster

    single = settings_of(dsn, schema, table)
    target = citus_dsn or CitusCluster().up()
    result = cb.run(single, single.with_(dsn=target, embedded=False), rows, lambda m: err.print(f"[dim]{m}[/dim]"))
    if as_json:
        emit(result)
        return
    for key, value in result.items():
        out.print(f"{key:34} {value}", markup=False, soft_wrap=True)


@bench.command(name="keys")
@target_options
@click.option("--rows", default=1_000_000, show_default=True, help="Rows per layout.")
@json_option
def bench_keys(dsn: str | None, schema: str, table: str, rows: int, as_json: bool) -> None:
    """callvault's keys vs the seed's: load rate, index size, window and call-lookup latency."""
    from callvault.bench import keys

    result = keys.run(settings_of(dsn, schema, table), rows)
    if as_json:
        emit(result)
        return
    for name, r in result["layouts"].items():
        out.print(f"{name:14} " + "  ".join(f"{k}={v}" for k, v in r.items()))


@bench.command(name="archive")
@target_options
@store_option
@click.option("--rows", default=500_000, show_default=True, help="Rows in the archived partition.")
@json_option
def bench_archive(dsn: str | None, schema: str, table: str, store_url: str | None, rows: int, as_json: bool) -> None:
    """Archive throughput vs raw COPY TO of the same partition; a writer's worst wait during detach/drop."""
    from callvault.bench import archive as ab

    result = ab.run(settings_of(dsn, schema, table), rows, store_url, lambda msg: err.print(f"[dim]{msg}[/dim]"))
    if as_json:
        emit(result)
        return
    for key, value in result.items():
        out.print(f"{key:32} {value}")


@main.group()
@click.pass_context
def dev(ctx: click.Context) -> None:
    """The embedded private Postgres (used when no DSN is configured)."""
    root = ctx.find_root()
    given = [f"--{n}" for n in ("dsn", "schema", "table")
             if root.get_parameter_source(n) == click.core.ParameterSource.COMMANDLINE]  # fmt: skip
    if given:
        raise InvalidSetting(
            f"{', '.join(given)} is not used by `callvault dev`: it manages the embedded cluster itself, not a table "
            "or another server; drop it"
        )


@dev.command()
@click.option("--port", type=int, default=None, help="Port on 127.0.0.1 (default: a free one, kept).")
@click.option("--citus", "citus_", is_flag=True, help="A local Citus cluster instead: a coordinator and workers.")
@click.option("--workers", type=click.IntRange(min=1), default=2, show_default=True, help="Citus workers.")
@json_option
def up(port: int | None, citus_: bool, workers: int, as_json: bool) -> None:
    """Create (once) and start the embedded cluster (with --citus: a coordinator and workers)."""
    if citus_:
        from callvault.embedded import CitusCluster

        if port is not None:
            raise InvalidSetting("--port is for the single embedded cluster; Citus nodes pick free ports")
        lab = CitusCluster(workers=workers)
        dsn = lab.up()
        if as_json:
            emit({"up": True, "dsn": dsn, "nodes": lab.status()})
            return
        out.print(f"Citus coordinator is up: {dsn}", soft_wrap=True)
        for name, node in lab.status().items():
            out.print(f"  {name}: 127.0.0.1:{node['port']}" if isinstance(node, dict) else f"  {name}")
        out.print(f"use it with: export CALLVAULT_DSN='{dsn}'", soft_wrap=True)
        return
    dsn = Cluster().up(port)
    emit({"up": True, "dsn": dsn}) if as_json else out.print(f"embedded Postgres is up: {dsn}", soft_wrap=True)


@dev.command()
@click.option("--citus", "citus_", is_flag=True, help="Stop the local Citus cluster instead.")
@click.option("--workers", type=click.IntRange(min=1), default=2, show_default=True, help="Citus workers.")
@json_option
def down(citus_: bool, workers: int, as_json: bool) -> None:
    """Stop the embedded cluster."""
    from callvault.embedded import CitusCluster

    stopped = CitusCluster(workers=workers).down() if citus_ else Cluster().down()
    emit({"stopped": stopped}) if as_json else out.print("stopped" if stopped else "not running")


@dev.command(name="status")
@click.option("--citus", "citus_", is_flag=True, help="The local Citus cluster's nodes instead.")
@click.option("--workers", type=click.IntRange(min=1), default=2, show_default=True, help="Citus workers.")
@json_option
def dev_status(citus_: bool, workers: int, as_json: bool) -> None:
    """Where the embedded cluster lives and whether it runs."""
    if citus_:
        from callvault.embedded import CitusCluster

        nodes = CitusCluster(workers=workers).status()
        if as_json:
            emit(nodes)
            return
        for name, node in nodes.items():
            assert isinstance(node, dict)
            state = "running" if node["running"] else "stopped"
            out.print(f"{name:12} {state:8} port {node['port']}  {node['home']}", soft_wrap=True)
        return
    from callvault.embedded import CitusCluster

    st = Cluster().status()
    citus = {n: v for n, v in CitusCluster(workers=workers).status().items() if isinstance(v, dict) and v["running"]}
    if as_json:
        emit({**st.__dict__, "citus_running": sorted(citus)})
        return
    for key, value in st.__dict__.items():
        out.print(f"{key:12} {value}")
    if citus:
        out.print(f"{'citus':12} running: {', '.join(sorted(citus))} (`callvault dev status --citus`)")


@dev.command()
@click.option("--citus", "citus_", is_flag=True, help="The local Citus cluster's coordinator instead.")
@click.option("--workers", type=click.IntRange(min=1), default=2, show_default=True, help="Citus workers.")
@json_option
def url(citus_: bool, workers: int, as_json: bool) -> None:
    """Print the embedded cluster's DSN (starting it if needed; with --citus the coordinator's)."""
    from callvault.embedded import CitusCluster

    dsn = CitusCluster(workers=workers).up() if citus_ else Cluster().up()
    emit({"dsn": dsn}) if as_json else click.echo(dsn)


@dev.group(name="replica")
def dev_replica() -> None:
    """A streaming hot standby of the embedded cluster (read-only; for read replicas)."""


@dev_replica.command(name="up")
@click.option("--port", type=int, default=None, help="Port on 127.0.0.1 (default: a free one, kept).")
@json_option
def replica_up(port: int | None, as_json: bool) -> None:
    """Create (once, pg_basebackup) and start the standby; the primary is started first if needed."""
    dsn = Cluster().replica_up(port)
    emit({"up": True, "dsn": dsn}) if as_json else out.print(f"embedded standby is up: {dsn}", soft_wrap=True)


@dev_replica.command(name="down")
@json_option
def replica_down(as_json: bool) -> None:
    """Stop the standby."""
    stopped = Cluster().replica_down()
    emit({"stopped": stopped}) if as_json else out.print("stopped" if stopped else "not running")


@dev_replica.command(name="url")
@json_option
def replica_url(as_json: bool) -> None:
    """Print the standby's DSN (creating and starting it if needed)."""
    dsn = Cluster().replica_up()
    emit({"dsn": dsn}) if as_json else click.echo(dsn)


@main.command(name="demo")
@target_options
@click.option("--calls", default=5000, show_default=True, help="Synthetic calls to write.")
@json_option
def demo_cmd(dsn: str | None, schema: str, table: str, calls: int, as_json: bool) -> None:
    """init, write synthetic calls (13 weeks back, 1 ahead), maintain, status and a pruned EXPLAIN."""
    import io

    from callvault.query import explain_window

    console = Console(file=io.StringIO()) if as_json else out  # --json: one document at the end

    s = settings_of(dsn, schema, table)
    with connect(s) as conn:
        report = bootstrap.init(conn, s, roles=True)
        console.rule("init --roles")
        console.print("initialised" if report.changed else f"{s.qualified} already initialised")
        seeded = demo.seed(conn, s, calls)
        conn.execute(sql.SQL("ANALYZE {}").format(sql.Identifier(s.schema, s.table)))
        conn.commit()
        console.print(f"wrote {seeded.rows:,} calls for {len(seeded.tenants)} tenants, {seeded.first:%Y-%m-%d} .. "
                  f"{seeded.last:%Y-%m-%d}")  # fmt: skip
    console.rule("maintain")
    maintained = maintenance.maintain(s)
    render.maintenance(console, maintained)
    with connect(s) as conn:
        console.rule("status")
        status = monitor.collect(conn, s)
        render.status(console, status)
        now = db.server_now(conn)
        since = Interval.DAILY.floor(now - timedelta(days=7))
        lines, scanned = explain_window(conn, s, seeded.tenants[0], since, now)
        total = len([r for r in catalog.list_partitions(conn, s)])
    console.rule("EXPLAIN: one tenant's last 7 days")
    for line in lines:
        console.print(line, soft_wrap=True)
    console.print(f"partitions scanned: {len(scanned)} of {total} ({', '.join(scanned)})")
    with connect(s) as conn:
        iso = demo.isolation(conn, s, seeded.tenants[0])
        audit = tenancy.audit(conn, s)
    console.rule(f"tenant isolation: reading as {iso.role}")
    console.print(f"no tenant set: {iso.no_tenant} rows (of {iso.total:,}); tenant {seeded.tenants[0]} set: "
                  f"{iso.own:,} rows, {iso.tenants_seen} tenant; partition {iso.partition} by name: "
                  f"{'permission denied' if iso.partition_denied else 'READABLE'}")  # fmt: skip
    render.audit(console, audit)
    if as_json:
        emit({"table": s.qualified, "calls": seeded.rows, "tenants": [str(t) for t in seeded.tenants],
              "maintain": maintained.to_dict(), "status": status.to_dict(),
              "explain": {"partitions_scanned": scanned, "partitions_total": total},
              "isolation": {"role": iso.role, "rows_without_tenant": iso.no_tenant, "rows_own_tenant": iso.own,
                            "tenants_seen": iso.tenants_seen, "partition_by_name_denied": iso.partition_denied},
              "audit": audit.to_dict()})  # fmt: skip


@main.group(name="archive", invoke_without_command=True)
@target_options
@store_option
@click.option("--format", "fmt", type=click.Choice(["parquet", "csv"]), default="parquet", show_default=True,
              help="File format of the archived data.")  # fmt: skip
@at_option
@click.option("--dry-run", is_flag=True, help="List the partitions that would be archived; change nothing.")
@click.option(
    "--new-store",
    is_flag=True,
    help="Start a new store on purpose: another than earlier periods went to, or a directory not made yet.",
)
@json_option
@click.pass_context
def archive_cmd(ctx: click.Context, dsn: str | None, schema: str, table: str, store_url: str | None, fmt: str,
                at: str | None, dry_run: bool, new_store: bool, as_json: bool) -> None:  # fmt: skip
    """Archive partitions past retention: detach, export, upload, verify, then drop (resumable).

    Without a subcommand: run the archive. Exit 65 when a read-back did not match (nothing dropped),
    69 when the store is unreachable (nothing detached or dropped)."""
    if ctx.invoked_subcommand is not None:
        misplaced = [f"--{n.replace('_', '-')}" for n in ("fmt", "at", "dry_run", "new_store")
                     if ctx.get_parameter_source(n) == click.core.ParameterSource.COMMANDLINE]  # fmt: skip
        if misplaced:
            raise InvalidSetting(
                f"{', '.join(misplaced).replace('--fmt', '--format')} belong(s) to `callvault archive` itself, not to "
                f"`archive {ctx.invoked_subcommand}`: put it after the subcommand if it takes it, or drop it"
            )
        return
    from callvault.archive.pipeline import archive

    s = settings_of(dsn, schema, table, start_embedded=not dry_run)
    with terminal_progress() as progress:
        rep = archive(
            s, store_url=store_url, format=fmt, at=parse_at(at), dry_run=dry_run, progress=progress, new_store=new_store
        )
    if as_json:
        emit(rep.to_dict())
    else:
        render.archive(out, rep)
    if rep.failed:
        first = rep.failed[0]
        exc = CallvaultError(f"{len(rep.failed)} partition(s) not archived; {first.partition}: {first.error}")
        exc.exit_code = first.exit_code  # 65: read-back mismatch, 69: store/spool unavailable
        raise exc


@main.command(name="calls")
@target_options
@store_option
@click.option("--tenant-id", "--tenant", "tenant", required=True, metavar="UUID", help="The tenant (UUID).")
@click.option("--since", required=True, metavar="TS", help="Window start (inclusive), ISO 8601; naive means UTC.")
@click.option("--until", default=None, metavar="TS",
              help="Window end (exclusive), ISO 8601; naive means UTC. Default: now.")  # fmt: skip
@click.option("--limit", default=100, show_default=True, type=click.IntRange(1, 10_000), help="Calls per page.")
@click.option("--cursor", default=None, help="next_cursor of the previous page: print the next, older page.")
@json_option
def calls_cmd(dsn: str | None, schema: str, table: str, store_url: str | None, tenant: str, since: str,
              until: str | None, limit: int, cursor: str | None, as_json: bool) -> None:  # fmt: skip
    """A tenant's calls in [--since, --until), newest first, one page: attached partitions from Postgres,
    archived weeks from the store (DuckDB), merged; each call says which tier served it.

    The window is at most the hot retention wide (90 days by default). Pass the printed next cursor as
    --cursor for the next page. Exit 2: bad input, or the window reaches archived weeks and no store is
    configured; 69: the store cannot be read."""
    tenant_id = parse_uuid(tenant, "--tenant-id")
    lo = parse_at(since, "--since")
    hi = parse_at(until, "--until")
    assert lo is not None
    if hi is not None and hi <= lo:
        raise InvalidSetting(
            f"--until {until} is not after --since {since}: the window is [since, until); pass a later --until"
        )
    s = settings_of(dsn, schema, table)
    page = commands.calls(s, tenant_id, since=lo, until=hi, limit=limit, cursor=cursor, store_url=store_url)
    if as_json:
        emit(page.to_dict())
    else:
        render.calls(out, page)


@archive_cmd.command(name="list")
@target_options
@store_option
@json_option
def archive_list(dsn: str | None, schema: str, table: str, store_url: str | None, as_json: bool) -> None:
    """Archived periods in the store (from their manifests): rows and tenants."""
    from callvault.archive.restore import list_archived

    s = settings_of(dsn, schema, table)
    manifests = list_archived(s, store_url)
    rows = [
        {"period": m.period.isoformat(), "partition": m.partition, "format": m.fmt, "rows": m.rows,
         "tenants": len(m.tenants), "pruned_tenants": sum(1 for t in m.tenants.values() if t.pruned_at)}
        for m in manifests
    ]  # fmt: skip
    if as_json:
        emit(rows)
        return
    for r in rows:
        out.print(f"{r['period']}  {r['partition']:28} {r['format']:7} {r['rows']:>12,} rows  {r['tenants']} tenants"
                  + (f" ({r['pruned_tenants']} pruned)" if r["pruned_tenants"] else ""))  # fmt: skip
    if not rows:
        out.print("nothing archived yet")


@archive_cmd.command(name="query")
@target_options
@store_option
@click.argument("query")
@json_option
def archive_query(dsn: str | None, schema: str, table: str, store_url: str | None, query: str, as_json: bool) -> None:
    """Run SQL (DuckDB) over the archive in place; the archive is the table named like the hot one.

    Example: callvault archive query "SELECT count(*) FROM call_logs WHERE week = DATE '2026-08-24'"
    """
    from callvault.archive.reader import query as run_query

    s = settings_of(dsn, schema, table)
    result = run_query(query, settings=s, store_url=store_url)
    rows = result.to_pylist()
    if as_json:
        emit(rows)
        return
    from rich.table import Table

    t = Table(*result.column_names)
    for r in rows:
        t.add_row(*(str(v) for v in r.values()))
    out.print(t)


@archive_cmd.command(name="prune")
@target_options
@store_option
@at_option
@click.option("--dry-run", is_flag=True, help="Show what would be deleted; delete nothing.")
@json_option
def archive_prune(dsn: str | None, schema: str, table: str, store_url: str | None, at: str | None, dry_run: bool,
                  as_json: bool) -> None:  # fmt: skip
    """Delete archived objects past each tenant's archive retention (see `archive policy`)."""
    from callvault.archive.prune import prune

    s = settings_of(dsn, schema, table, start_embedded=not dry_run)
    rep = prune(s, store_url=store_url, at=parse_at(at), dry_run=dry_run)
    if as_json:
        emit(rep.to_dict())
        return
    verb = "would delete" if dry_run else "deleted"
    for d in rep.deleted:
        out.print(f"{verb} tenant {d['tenant']} period {d['period']}: {d['objects']} object(s), {d['rows']:,} rows")
    if not rep.deleted:
        out.print("nothing past its archive retention")


@archive_cmd.command(name="policy")
@target_options
@click.option("--tenant", "--tenant-id", "tenant", default=None, help="Tenant UUID; omit for the table's default.")
@click.option("--keep", default=None, help="How long to keep archived data, e.g. '7 years', '400 days'.")
@click.option("--clear", is_flag=True, help="Remove the policy (the tenant falls back to the default).")
@json_option
def archive_policy(dsn: str | None, schema: str, table: str, tenant: str | None, keep: str | None, clear: bool,
                   as_json: bool) -> None:  # fmt: skip
    """Show or set archive retention: a table default and per-tenant overrides (e.g. HIPAA: 7 years)."""

    s = settings_of(dsn, schema, table)
    pol = commands.archive_policy(s, keep=keep, clear=clear, tenant_id=tenant)
    if as_json:
        emit(pol.to_dict())
        return
    out.print(f"default: keep {pol.default}")
    for t, r in pol.tenants.items():
        out.print(f"{t}: keep {r}")


@main.command(name="restore")
@target_options
@store_option
@click.option("--week", "--period", "period", required=True, metavar="DATE",
              help="Any date inside the archived partition, e.g. 2026-08-24.")  # fmt: skip
@click.option("--tenant", "--tenant-id", "tenant", default=None,
              help="Only this tenant (UUID). Default: every tenant of that period.")  # fmt: skip
@click.option("--into", default=None, metavar="TABLE",
              help="Target: the hot table (default; attaches the partition) or a side table name.")  # fmt: skip
@json_option
def restore_cmd(dsn: str | None, schema: str, table: str, store_url: str | None, period: str, tenant: str | None,
                into: str | None, as_json: bool) -> None:  # fmt: skip
    """Load an archived period back, verified against its manifest (all or nothing)."""
    from datetime import date

    from callvault.archive.restore import restore

    try:
        day = date.fromisoformat(period)
    except ValueError:
        raise InvalidSetting(f"--week {period!r} is not a date; use YYYY-MM-DD") from None
    s = settings_of(dsn, schema, table)
    with terminal_progress() as progress:
        rep = restore(s, day, tenant_id=tenant, into=into, store_url=store_url, progress=progress)
    if as_json:
        emit(rep.to_dict())
        return
    how = "attached as a partition of" if rep.attached else "into"
    out.print(f"restored {sum(rep.tenants.values()):,} rows of {len(rep.tenants)} tenant(s), period {rep.period}, "
              f"{how} {rep.target} ({rep.inserted:,} inserted, {rep.already_present:,} already there); verified "
              "against the manifest")  # fmt: skip


@main.command(name="worker")
@target_options
@store_option
@click.option("--every", default="15m", show_default=True, help="Cycle period: 30s, 15m, 1h ...")
@click.option("--format", "fmt", type=click.Choice(["parquet", "csv"]), default="parquet", show_default=True)
@click.option("--once", is_flag=True, help="Run one cycle and exit (exit 1 when it had errors).")
@click.option("--no-prune", is_flag=True, help="Do not prune expired archive objects.")
@click.option("--metrics-port", type=click.IntRange(0, 65535), default=None, metavar="PORT",
              help="Serve Prometheus /metrics and /healthz on this port while running (0: any free port).")  # fmt: skip
@click.option("--metrics-host", default="", metavar="ADDR", help="Address to serve metrics on [default: all].")
@click.option("--json", "as_json", is_flag=True, help="Accepted for uniformity: the worker always logs JSON lines.")
def worker_cmd(dsn: str | None, schema: str, table: str, store_url: str | None, every: str, fmt: str, once: bool,
               no_prune: bool, metrics_port: int | None, metrics_host: str, as_json: bool) -> None:  # fmt: skip
    """Archive + maintain + prune every period; one instance per table; SIGTERM exits cleanly."""
    from callvault import worker

    s = settings_of(dsn, schema, table)
    opts = worker.WorkerOptions(every_s=worker.parse_every(every), store_url=store_url, fmt=fmt, once=once,
                                prune=not no_prune, metrics_port=metrics_port, metrics_host=metrics_host)  # fmt: skip
    sys.exit(worker.run(s, opts))
