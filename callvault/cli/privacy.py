"""Privacy commands: privacy subject, hold (place, release, list), erase (status, resume, list)."""

from __future__ import annotations

from typing import Any

import click

from callvault import commands
from callvault.cli import base
from callvault.cli.base import main


def _hold_line(h: Any) -> str:
    scope = f"subject sha256:{h.subject_digest}" if h.subject_digest else "all calls"
    released = f", released by {h.released_by} {h.released_at:%Y-%m-%d %H:%M}" if h.released_at else ""
    return f"hold {h.id}: tenant {h.tenant_id}, {scope}: {h.reason} (placed by {h.placed_by} " \
           f"{h.placed_at:%Y-%m-%d %H:%M} UTC{released})"  # fmt: skip


def _receipt(r: Any, as_json: bool) -> None:
    if as_json:
        base.emit(r.to_dict())
        return
    for line in _receipt_lines(r):
        base.out.print(line, markup=False)


def _receipts(found: list[Any], as_json: bool, none: str, *, first_line_only: bool = False) -> None:
    if as_json:
        base.emit([r.to_dict() for r in found])
        return
    for r in found:
        for line in _receipt_lines(r)[: 1 if first_line_only else None]:
            base.out.print(line, markup=False)
    if not found:
        base.out.print(none)


def _receipt_lines(r: Any) -> list[str]:
    state = "done" if r.done else f"at step {r.step}" + (f" (last error: {r.error})" if r.error else "")
    removed = ", ".join(f"{k} {v}" for k, v in sorted(r.counts.items())) or "nothing yet"
    return [f"erase request {r.id}: tenant {r.tenant_id}, {r.kind}, {state}", f"  removed: {removed}"]


@main.group(name="privacy")
def privacy_group() -> None:
    """Who a call belongs to (the subject), for erasure and holds."""


@privacy_group.command(name="subject")
@base.target_options
@click.option("--metadata-key", default=None, metavar="PATH",
              help="The metadata key holding the caller, e.g. caller or caller.number. Without it: show.")  # fmt: skip
@base.json_option
def privacy_subject(dsn: str | None, schema: str, table: str, metadata_key: str | None, as_json: bool) -> None:
    """Show or set the subject (the caller) and build its index on every partition."""
    got = commands.privacy_subject(base.settings_of(dsn, schema, table), metadata_key)
    if as_json:
        base.emit(got)
    elif got["subject"] is None:
        base.out.print(f"{got['table']}: no subject set (callvault privacy subject --metadata-key caller)")
    else:
        base.out.print(f"{got['table']}: subject {got['subject']} (index {got['index']})")


@privacy_group.command(name="transcripts")
@base.target_options
@click.option("--tenant-id", "--tenant", "tenant", default=None, metavar="UUID",
              help="This tenant's policy (default: the table's).")  # fmt: skip
@click.option("--keep", default=None, help="How long transcripts live, e.g. '30 days' (metadata stays).")
@click.option("--clear", is_flag=True, help="Remove the policy (transcripts live as long as their call).")
@base.json_option
def privacy_transcripts(dsn: str | None, schema: str, table: str, tenant: str | None, keep: str | None, clear: bool,
                        as_json: bool) -> None:  # fmt: skip
    """Show or set how long transcripts are kept, shorter than the calls (per tenant like archive policy)."""
    got = commands.transcript_policy(base.settings_of(dsn, schema, table), keep=keep, clear=clear, tenant_id=tenant)
    if as_json:
        base.emit(got)
        return
    base.out.print(f"default: transcripts kept {got['default'] or 'as long as their call'}")
    for t, k in dict(got["tenants"]).items():  # type: ignore[call-overload]
        base.out.print(f"{t}: transcripts kept {k}")


@privacy_group.command(name="expire")
@base.target_options
@base.store_option
@base.at_option
@click.option("--batch-rows", default=5_000, show_default=True, type=click.IntRange(1, 1_000_000),
              help="Rows per short transaction.")  # fmt: skip
@click.option("--max-rows", default=None, type=click.IntRange(1), help="Stop after this many rows (run again later).")
@base.json_option
def privacy_expire(dsn: str | None, schema: str, table: str, store_url: str | None, at: str | None, batch_rows: int,
                   max_rows: int | None, as_json: bool) -> None:  # fmt: skip
    """Empty transcripts past their time: hot partitions in short batches, archived objects rewritten."""
    rep = commands.expire_transcripts(base.settings_of(dsn, schema, table), at=base.parse_at(at), batch_rows=batch_rows,
                                      max_rows=max_rows, store_url=store_url)  # fmt: skip
    if as_json:
        base.emit(rep.to_dict())
        return
    more = "; more to do: run again" if rep.more else ""
    base.out.print(f"transcripts emptied: {rep.hot_rows:,} hot rows in {rep.batches} batches ({rep.wal_bytes:,} bytes "
              f"of WAL), {rep.archive_periods} archived tenant-periods rewritten{more}")  # fmt: skip


@main.group(name="hold")
def hold_group() -> None:
    """Legal holds: data that erase and archive prune must not remove."""


@hold_group.command(name="place")
@base.target_options
@click.option("--tenant-id", "--tenant", "tenant", required=True, metavar="UUID", help="The tenant (UUID).")
@click.option("--subject", default=None, help="Only this subject's calls (its value). Default: all the tenant's.")
@click.option("--reason", required=True, help="Why (a case or ticket number): recorded with the hold.")
@base.json_option
def hold_place(dsn: str | None, schema: str, table: str, tenant: str, subject: str | None, reason: str,
               as_json: bool) -> None:  # fmt: skip
    """Place a legal hold on a tenant or one subject of it."""
    h = commands.hold_place(base.settings_of(dsn, schema, table), tenant, reason, subject)
    base.emit(h.to_dict()) if as_json else base.out.print(_hold_line(h), markup=False)


@hold_group.command(name="release")
@base.target_options
@click.argument("hold_id", type=int)
@base.json_option
def hold_release(dsn: str | None, schema: str, table: str, hold_id: int, as_json: bool) -> None:
    """Release a hold (it stays on record, with who released it and when)."""
    h = commands.hold_release(base.settings_of(dsn, schema, table), hold_id)
    base.emit(h.to_dict()) if as_json else base.out.print(_hold_line(h), markup=False)


@hold_group.command(name="list")
@base.target_options
@click.option("--all", "released", is_flag=True, help="Released holds too.")
@base.json_option
def hold_list(dsn: str | None, schema: str, table: str, released: bool, as_json: bool) -> None:
    """The active holds (every hold ever placed with --all)."""
    found = commands.hold_list(base.settings_of(dsn, schema, table), released=released)
    if as_json:
        base.emit([h.to_dict() for h in found])
        return
    for h in found:
        base.out.print(_hold_line(h), markup=False)
    if not found:
        base.out.print("no holds")


@main.group(name="erase", invoke_without_command=True)
@base.target_options
@base.store_option
@click.option("--tenant-id", "--tenant", "tenant", default=None, metavar="UUID", help="The tenant (UUID).")
@click.option("--subject", default=None, help="Erase this subject's calls (the value of the subject key).")
@click.option("--call-id", "call_ids", multiple=True, metavar="UUID", help="Erase this call (repeatable).")
@click.option("--all-calls", is_flag=True, help="Erase every call of the tenant (needs --yes).")
@click.option("--yes", is_flag=True, help="Confirm --all-calls.")
@base.json_option
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
    r = commands.erase(base.settings_of(dsn, schema, table), tenant, subject=subject, call_ids=call_ids,
                       all_calls=all_calls, yes=yes, store_url=store_url)  # fmt: skip
    _receipt(r, as_json)


@erase_cmd.command(name="status")
@base.target_options
@click.argument("request")
@base.json_option
def erase_status(dsn: str | None, schema: str, table: str, request: str, as_json: bool) -> None:
    """The receipt of an erase request: what was removed from each tier, when, by whom."""
    _receipt(commands.erase_status(base.settings_of(dsn, schema, table), request), as_json)


@erase_cmd.command(name="resume")
@base.target_options
@base.store_option
@click.argument("request", required=False)
@base.json_option
def erase_resume(dsn: str | None, schema: str, table: str, store_url: str | None, request: str | None,
                 as_json: bool) -> None:  # fmt: skip
    """Finish an interrupted erase request (default: every unfinished one)."""
    found = commands.erase_resume(base.settings_of(dsn, schema, table), request, store_url)
    _receipts(found, as_json, "no unfinished erase requests")


@erase_cmd.command(name="list")
@base.target_options
@base.json_option
def erase_list(dsn: str | None, schema: str, table: str, as_json: bool) -> None:
    """Every erase request of the table, newest first."""
    found = commands.erase_list(base.settings_of(dsn, schema, table))
    _receipts(found, as_json, "no erase requests", first_line_only=True)
