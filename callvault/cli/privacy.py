"""Privacy commands: privacy subject, hold (place, release, list), erase (status, resume, list)."""

from __future__ import annotations

from typing import Any

import click

from callvault import commands
from callvault.cli.base import (
    at_option,
    emit,
    json_option,
    main,
    out,
    parse_at,
    settings_of,
    store_option,
    target_options,
)


def _hold_line(h: Any) -> str:
    scope = f"subject sha256:{h.subject_digest}" if h.subject_digest else "all calls"
    released = f", released by {h.released_by} {h.released_at:%Y-%m-%d %H:%M}" if h.released_at else ""
    return f"hold {h.id}: tenant {h.tenant_id}, {scope}: {h.reason} (placed by {h.placed_by} " \
           f"{h.placed_at:%Y-%m-%d %H:%M} UTC{released})"  # fmt: skip


def _receipt_lines(r: Any) -> list[str]:
    state = "done" if r.done else f"at step {r.step}" + (f" (last error: {r.error})" if r.error else "")
    removed = ", ".join(f"{k} {v}" for k, v in sorted(r.counts.items())) or "nothing yet"
    return [f"erase request {r.id}: tenant {r.tenant_id}, {r.kind}, {state}", f"  removed: {removed}"]


@main.group(name="privacy")
def privacy_group() -> None:
    """Who a call belongs to (the subject), for erasure and holds."""


@privacy_group.command(name="subject")
@target_options
@click.option("--metadata-key", default=None, metavar="PATH",
              help="The metadata key holding the caller, e.g. caller or caller.number. Without it: show.")  # fmt: skip
@json_option
def privacy_subject(dsn: str | None, schema: str, table: str, metadata_key: str | None, as_json: bool) -> None:
    """Show or set the subject (the caller) and build its index on every partition."""
    got = commands.privacy_subject(settings_of(dsn, schema, table), metadata_key)
    if as_json:
        emit(got)
    elif got["subject"] is None:
        out.print(f"{got['table']}: no subject set (callvault privacy subject --metadata-key caller)")
    else:
        out.print(f"{got['table']}: subject {got['subject']} (index {got['index']})")


@privacy_group.command(name="transcripts")
@target_options
@click.option("--tenant-id", "--tenant", "tenant", default=None, metavar="UUID",
              help="This tenant's policy (default: the table's).")  # fmt: skip
@click.option("--keep", default=None, help="How long transcripts live, e.g. '30 days' (metadata stays).")
@click.option("--clear", is_flag=True, help="Remove the policy (transcripts live as long as their call).")
@json_option
def privacy_transcripts(dsn: str | None, schema: str, table: str, tenant: str | None, keep: str | None, clear: bool,
                        as_json: bool) -> None:  # fmt: skip
    """Show or set how long transcripts are kept, shorter than the calls (per tenant like archive policy)."""
    got = commands.transcript_policy(settings_of(dsn, schema, table), keep=keep, clear=clear, tenant_id=tenant)
    if as_json:
        emit(got)
        return
    out.print(f"default: transcripts kept {got['default'] or 'as long as their call'}")
    for t, k in dict(got["tenants"]).items():  # type: ignore[call-overload]
        out.print(f"{t}: transcripts kept {k}")


@privacy_group.command(name="expire")
@target_options
@store_option
@at_option
@click.option("--batch-rows", default=5_000, show_default=True, type=click.IntRange(1, 1_000_000),
              help="Rows per short transaction.")  # fmt: skip
@click.option("--max-rows", default=None, type=click.IntRange(1), help="Stop after this many rows (run again later).")
@json_option
def privacy_expire(dsn: str | None, schema: str, table: str, store_url: str | None, at: str | None, batch_rows: int,
                   max_rows: int | None, as_json: bool) -> None:  # fmt: skip
    """Empty transcripts past their time: hot partitions in short batches, archived objects rewritten."""
    rep = commands.expire_transcripts(settings_of(dsn, schema, table), at=parse_at(at), batch_rows=batch_rows,
                                      max_rows=max_rows, store_url=store_url)  # fmt: skip
    if as_json:
        emit(rep.to_dict())
        return
    more = "; more to do: run again" if rep.more else ""
    out.print(f"transcripts emptied: {rep.hot_rows:,} hot rows in {rep.batches} batches ({rep.wal_bytes:,} bytes "
              f"of WAL), {rep.archive_periods} archived tenant-periods rewritten{more}")  # fmt: skip


@main.group(name="hold")
def hold_group() -> None:
    """Legal holds: data that erase and archive prune must not remove."""


@hold_group.command(name="place")
@target_options
@click.option("--tenant-id", "--tenant", "tenant", required=True, metavar="UUID", help="The tenant (UUID).")
@click.option("--subject", default=None, help="Only this subject's calls (its value). Default: all the tenant's.")
@click.option("--reason", required=True, help="Why (a case or ticket number): recorded with the hold.")
@json_option
def hold_place(dsn: str | None, schema: str, table: str, tenant: str, subject: str | None, reason: str,
               as_json: bool) -> None:  # fmt: skip
    """Place a legal hold on a tenant or one subject of it."""
    h = commands.hold_place(settings_of(dsn, schema, table), tenant, reason, subject)
    emit(h.to_dict()) if as_json else out.print(_hold_line(h), markup=False)


@hold_group.command(name="release")
@target_options
@click.argument("hold_id", type=int)
@json_option
def hold_release(dsn: str | None, schema: str, table: str, hold_id: int, as_json: bool) -> None:
    """Release a hold (it stays on record, with who released it and when)."""
    h = commands.hold_release(settings_of(dsn, schema, table), hold_id)
    emit(h.to_dict()) if as_json else out.print(_hold_line(h), markup=False)


@hold_group.command(name="list")
@target_options
@click.option("--all", "released", is_flag=True, help="Released holds too.")
@json_option
def hold_list(dsn: str | None, schema: str, table: str, released: bool, as_json: bool) -> None:
    """The active holds (every hold ever placed with --all)."""
    found = commands.hold_list(settings_of(dsn, schema, table), released=released)
    if as_json:
        emit([h.to_dict() for h in found])
        return
    for h in found:
        out.print(_hold_line(h), markup=False)
    if not found:
        out.print("no holds")


@main.group(name="erase", invoke_without_command=True)
@target_options
@store_option
@click.option("--tenant-id", "--tenant", "tenant", default=None, metavar="UUID", help="The tenant (UUID).")
@click.option("--subject", default=None, help="Erase this subject's calls (the value of the subject key).")
@click.option("--call-id", "call_ids", multiple=True, metavar="UUID", help="Erase this call (repeatable).")
@click.option("--all-calls", is_flag=True, help="Erase every call of the tenant (needs --yes).")
@click.option("--yes", is_flag=True, help="Confirm --all-calls.")
@json_option
@click.pass_context
def erase_cmd(ctx: click.Context, dsn: str | None, schema: str, table: str, store_url: str | None,
              tenant: str | None, subject: str | None, call_ids: tuple[str, ...], all_calls: bool, yes: bool,
              as_json: bool) -> None:  # fmt: skip
    """Erase a subject's calls, given calls or a whole tenant from every tier (hot, awaiting archive,
    quarantine, archive); prints the request id and what was removed (`erase status ID`)."""
    if ctx.invoked_subcommand is not None:
        return
    if tenant is None:
        raise click.UsageError("--tenant-id is required (or a subcommand: status, resume, list)", ctx=ctx)
    r = commands.erase(settings_of(dsn, schema, table), tenant, subject=subject, call_ids=call_ids,
                       all_calls=all_calls, yes=yes, store_url=store_url)  # fmt: skip
    if as_json:
        emit(r.to_dict())
        return
    for line in _receipt_lines(r):
        out.print(line, markup=False)


@erase_cmd.command(name="status")
@target_options
@click.argument("request")
@json_option
def erase_status(dsn: str | None, schema: str, table: str, request: str, as_json: bool) -> None:
    """The receipt of an erase request: what was removed from each tier, when, by whom."""
    r = commands.erase_status(settings_of(dsn, schema, table), request)
    if as_json:
        emit(r.to_dict())
        return
    for line in _receipt_lines(r):
        out.print(line, markup=False)


@erase_cmd.command(name="resume")
@target_options
@store_option
@click.argument("request", required=False)
@json_option
def erase_resume(dsn: str | None, schema: str, table: str, store_url: str | None, request: str | None,
                 as_json: bool) -> None:  # fmt: skip
    """Finish an interrupted erase request (default: every unfinished one)."""
    done = commands.erase_resume(settings_of(dsn, schema, table), request, store_url)
    if as_json:
        emit([r.to_dict() for r in done])
        return
    for r in done:
        for line in _receipt_lines(r):
            out.print(line, markup=False)
    if not done:
        out.print("no unfinished erase requests")


@erase_cmd.command(name="list")
@target_options
@json_option
def erase_list(dsn: str | None, schema: str, table: str, as_json: bool) -> None:
    """Every erase request of the table, newest first."""
    found = commands.erase_list(settings_of(dsn, schema, table))
    if as_json:
        emit([r.to_dict() for r in found])
        return
    for r in found:
        out.print(_receipt_lines(r)[0], markup=False)
    if not found:
        out.print("no erase requests")
