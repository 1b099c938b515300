"""Archive commands: archive (list, query, prune, policy), calls, restore, worker."""

from __future__ import annotations

import sys
from typing import Any

import click

from callvault import commands, render
from callvault.cli.base import (
    at_option,
    emit,
    json_option,
    main,
    out,
    parse_at,
    parse_uuid,
    settings_of,
    store_option,
    target_options,
)
from callvault.errors import CallvaultError, InvalidSetting
from callvault.termprogress import terminal_progress


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
@click.option("--search", default=None, metavar="TEXT",
              help="Only calls whose transcript contains TEXT (ignoring case; at least 3 characters).")  # fmt: skip
@click.option(
    "--words",
    is_flag=True,
    help="With --search: every word of TEXT, by full-text search (the index's language), not the phrase.",
)
@click.option(
    "--language",
    default=None,
    metavar="CONFIG",
    help="With --search --words: the text search configuration [default: the index's, else simple].",
)
@click.option(
    "--explain",
    "explain_",
    is_flag=True,
    help="Print the EXPLAIN of the read's hot half instead (the partitions it touches, of all).",
)
@json_option
def calls_cmd(dsn: str | None, schema: str, table: str, store_url: str | None, tenant: str, since: str,
              until: str | None, limit: int, cursor: str | None, search: str | None, words: bool,
              language: str | None, explain_: bool, as_json: bool) -> None:  # fmt: skip
    """A tenant's calls in [--since, --until), newest first, one page: attached partitions from Postgres,
    archived weeks from the store (DuckDB), merged; each call says which tier served it.

    The window is at most the hot retention wide (90 days by default). Pass the printed next cursor as
    --cursor for the next page. With --search, only the calls whose transcript matches, each with a
    snippet of the match (`callvault search index` builds the indexes that make it fast). Exit 2: bad
    input, or the window reaches archived weeks and no store is configured; 69: the store cannot be read."""
    if (words or language) and search is None:
        raise InvalidSetting("--words and --language are for --search TEXT: add --search, or drop them")
    tenant_id = parse_uuid(tenant, "--tenant-id")
    lo = parse_at(since, "--since")
    hi = parse_at(until, "--until")
    assert lo is not None
    if hi is not None and hi <= lo:
        raise InvalidSetting(
            f"--until {until} is not after --since {since}: the window is [since, until); pass a later --until"
        )
    s = settings_of(dsn, schema, table)
    if explain_:
        from callvault.explain import NotPruned

        report = commands.explain_calls(s, tenant_id, since=lo, until=hi, limit=limit, search=search,
                                        mode="words" if words else "phrase", language=language)  # fmt: skip
        if as_json:
            emit(report.to_dict())
        else:
            for line in report.plan:
                out.print(line, soft_wrap=True, markup=False)
            out.print(f"{s.qualified}: {len(report.scanned)} of {report.partitions_total} partitions in the plan; "
                      f"pruning: {report.pruning}", markup=False)  # fmt: skip
        if report.problem:
            raise NotPruned(report.problem)
        return
    page = commands.calls(s, tenant_id, since=lo, until=hi, limit=limit, cursor=cursor, store_url=store_url,
                          search=search, mode="words" if words else "phrase", language=language)  # fmt: skip
    if as_json:
        emit(page.to_dict())
    else:
        render.calls(out, page)


@main.command(name="usage")
@target_options
@store_option
@click.option("--tenant-id", "--tenant", "tenant", default=None, metavar="UUID", help="The tenant (UUID).")
@click.option("--since", default=None, metavar="TS", help="Window start (inclusive), ISO 8601; naive means UTC.")
@click.option("--until", default=None, metavar="TS", help="Window end (exclusive); default now.")
@click.option(
    "--by",
    default="day",
    show_default=True,
    metavar="day|hour|KEY",
    help="Per UTC day, per hour, or per value of the usage dimension (its metadata key).",
)
@click.option(
    "--check", "check_", is_flag=True, help="Compare the rollup with a recount of hot, detached and archived calls."
)
@click.option("--rebuild", is_flag=True, help="Replace the rollup by a recount of hot, detached and archived calls.")
@click.option(
    "--dimension",
    default=None,
    metavar="KEY",
    help="Count usage by this metadata key (e.g. agent) from now on; the past is recounted.",
)
@click.option("--no-dimension", is_flag=True, help="Stop counting by a dimension (recounted).")
@json_option
def usage_cmd(dsn: str | None, schema: str, table: str, store_url: str | None, tenant: str | None, since: str | None,
              until: str | None, by: str, check_: bool, rebuild: bool, dimension: str | None, no_dimension: bool,
              as_json: bool) -> None:  # fmt: skip
    """Calls and talk seconds per tenant and day (or hour, or dimension value) from the usage rollup, which
    outlives retention: weeks archived and dropped are still counted. --check / --rebuild compare with /
    replace by a recount from the hot table, detached partitions and the archive; --dimension sets the
    metadata key usage is also counted by. Exit 3 when --check finds a difference."""
    modes = [m for m, on in (("--check", check_), ("--rebuild", rebuild), ("--dimension", dimension is not None),
                             ("--no-dimension", no_dimension)) if on]  # fmt: skip
    s = settings_of(dsn, schema, table)
    if len(modes) > 1:
        raise InvalidSetting(f"{' and '.join(modes)} do different things: give one of them")
    if modes:
        if tenant or since or until or by != "day":
            raise InvalidSetting(f"{modes[0]} works on the whole table: drop --tenant-id/--since/--until/--by")
        if check_ or rebuild:
            rep = commands.usage_check(s, store_url=store_url, rebuild=rebuild)
        else:
            rep = commands.usage_dimension(s, None if no_dimension else dimension, store_url=store_url)
        if as_json:
            emit(rep.to_dict())
        elif not (check_ or rebuild):  # a new dimension: every key changes; the recount is the news
            counted = ", ".join(f"{k} {v:,}" for k, v in rep.sources.items())
            what = f"by metadata.{dimension}" if dimension else "without a dimension"
            out.print(f"{rep.table}: usage is now counted {what}; recounted {rep.keys_checked:,} tenant-hour keys "
                      f"(calls: {counted})", markup=False)  # fmt: skip
        else:
            counted = ", ".join(f"{k} {v:,}" for k, v in rep.sources.items())
            out.print(f"{rep.table}: {rep.keys_checked:,} tenant-hours, calls counted: {counted}; "
                      + (f"{len(rep.differences):,} differed" + (" (replaced)" if rep.rebuilt else "")
                         if rep.differences else "the rollup matches"), markup=False)  # fmt: skip
            for d in rep.differences[:20]:
                line = (f"  {d['tenant_id']} {d['hour']} {d['dimension'] or '-'}: rollup {d['calls']} calls / "
                        f"{d['seconds']} s, counted {d['calls_counted']} / {d['seconds_counted']} s")  # fmt: skip
                out.print(line, markup=False)
        if check_ and rep.differences:
            from callvault.errors import Unhealthy

            raise Unhealthy(f"usage of {rep.table}: {len(rep.differences):,} tenant-hours differ from a recount; "
                            "`callvault usage --rebuild` replaces the rollup by the recount")  # fmt: skip
        return
    if tenant is None or since is None:
        raise InvalidSetting("usage needs --tenant-id and --since (or one of --check, --rebuild, --dimension)")
    tenant_id = parse_uuid(tenant, "--tenant-id")
    lo, hi = parse_at(since, "--since"), parse_at(until, "--until")
    assert lo is not None
    rows = commands.usage(s, tenant_id, since=lo, until=hi, by=by)
    if as_json:
        emit({"tenant_id": tenant_id, "by": by, "rows": [r.to_dict() for r in rows],
              "calls": sum(r.calls for r in rows), "seconds": sum(r.seconds for r in rows)})  # fmt: skip
        return
    for r in rows:
        label = (
            r.period.strftime("%Y-%m-%d %H:%M" if by == "hour" else "%Y-%m-%d") if r.period else (r.dimension or "-")
        )
        out.print(f"{label:20} {r.calls:>10,} calls {r.seconds:>12,} s", markup=False)
    out.print(
        f"{'total':20} {sum(r.calls for r in rows):>10,} calls {sum(r.seconds for r in rows):>12,} s", markup=False
    )


@main.group(name="search")
def search_group() -> None:
    """Transcript search: its indexes (searching is `callvault calls --search`)."""


@search_group.command(name="index")
@target_options
@click.option(
    "--language",
    default="simple",
    show_default=True,
    metavar="CONFIG",
    help="Text search configuration of the full-text index (simple: words as they are, mixed languages).",
)
@click.option("--phrase/--no-phrase", default=True, show_default=True,
              help="The trigram index (pg_trgm) for phrases and substrings.")  # fmt: skip
@click.option("--words/--no-words", default=True, show_default=True, help="The full-text index for --words.")
@json_option
def search_index_cmd(dsn: str | None, schema: str, table: str, language: str, phrase: bool, words: bool,
                     as_json: bool) -> None:  # fmt: skip
    """Build the search indexes on every partition without blocking writes (each partition CONCURRENTLY,
    then attached); partitions made later get them. Run again to resume, or to change the language."""
    if not phrase and not words:
        raise InvalidSetting("--no-phrase and --no-words leave nothing to build: drop one of them")
    rep = commands.search_index(settings_of(dsn, schema, table), language=language, phrase=phrase, words=words)
    _search_report(rep, as_json)


@search_group.command(name="status")
@target_options
@json_option
def search_status_cmd(dsn: str | None, schema: str, table: str, as_json: bool) -> None:
    """The search indexes: built on every partition (valid) or not, size, language."""
    _search_report(commands.search_status(settings_of(dsn, schema, table)), as_json)


def _search_report(rep: Any, as_json: bool) -> None:
    if as_json:
        emit(rep.to_dict())
        return
    for ix in rep.indexes:
        state = "valid" if ix["valid"] else ("INVALID (run `callvault search index` again)" if ix["exists"] else "none")
        out.print(f"{ix['mode']:7} {ix['index']}: {state}, {int(str(ix['bytes'])) / 1e6:,.1f} MB", markup=False)
    out.print(f"language: {rep.language or '-'}", markup=False)


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
