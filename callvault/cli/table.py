"""The table's shape: columns (list, add) of the platform's own, and adopt (take over an existing table)."""

from __future__ import annotations

import sys
from typing import Any

import click

from callvault import commands
from callvault.cli import base
from callvault.cli.base import main
from callvault.errors import InvalidSetting


@main.group(name="columns")
def columns_group() -> None:
    """The table's own columns (beyond callvault's): written, read, archived, restored, mirrored."""


@columns_group.command(name="list")
@base.target_options
@base.json_option
def columns_list(dsn: str | None, schema: str, table: str, as_json: bool) -> None:
    """List the table's own columns (name, type, indexed)."""
    found = commands.columns_list(base.settings_of(dsn, schema, table))
    if as_json:
        base.emit([c.to_dict() for c in found])
        return
    for c in found:
        flags = ", ".join(f for f, on in (("not null", c.not_null), ("indexed", c.indexed)) if on)
        base.out.print(f"{c.name}  {c.type}" + (f"  ({flags})" if flags else ""), markup=False)
    if not found:
        base.out.print("no columns beyond callvault's own (add one: callvault columns add NAME TYPE)")


@columns_group.command(name="add")
@base.target_options
@click.argument("name")
@click.argument("type_text", metavar="TYPE")
@click.option("--index", is_flag=True, help="Also index (tenant_id, NAME, started_at), built without blocking writes.")
@base.json_option
def columns_add(dsn: str | None, schema: str, table: str, name: str, type_text: str, index: bool,
                as_json: bool) -> None:  # fmt: skip
    """Add a column of your own, e.g. `callvault columns add agent_id text --index` (lock-budgeted)."""
    c = commands.columns_add(base.settings_of(dsn, schema, table), name, type_text, index=index)
    if as_json:
        base.emit(c.to_dict())
    else:
        base.out.print(f"column {c.name} ({c.type}) is on the table" + (", indexed" if c.indexed else ""))


def _renames(pairs: tuple[str, ...]) -> dict[str, str]:
    out = {}
    for pair in pairs:
        old, eq, new = pair.partition("=")
        if not eq or not old or not new:
            raise InvalidSetting(f"--map {pair!r} is not OLD=NEW: e.g. --map duration=duration_sec")
        out[old.strip()] = new.strip()
    return out


def _progress(report: Any) -> None:
    if sys.stderr.isatty():
        click.echo(f"\r  moved {report.moved:,} rows, quarantined {report.quarantined:,}", err=True, nl=False)


@main.command(name="adopt")
@base.target_options
@click.argument("source")
@click.option("--time-column", default=None, help="The source's column holding when the call started.")
@click.option("--tenant-column", default=None, help="The source's column holding the tenant (uuid, or text of UUIDs).")
@click.option("--id-column", default="id", show_default=True, help="The source's integer id (bigserial).")
@click.option("--map", "maps", multiple=True, metavar="OLD=NEW",
              help="A source column holding one of callvault's: call_id, ended_at, duration_sec, transcript, "
                   "metadata (same-named columns are mapped by themselves).")  # fmt: skip
@click.option("--time-zone", default="UTC", show_default=True, help="The zone of timestamps without one.")
@click.option("--default-tenant", default=None, metavar="UUID", help="Tenant for rows without one (else quarantined).")
@click.option("--keep-old", is_flag=True, help="Keep rows past retention for the next `callvault archive`.")
@click.option("--store", "store_url", default=None, help="Archive store for rows past retention.")
@click.option(
    "--roles/--no-roles",
    default=True,
    show_default=True,
    help="Create callvault's roles and grants (init --roles) for the new table.",
)
@click.option("--new-store", is_flag=True, help="Start a new archive store on purpose (see `callvault archive`).")
@click.option("--batch-rows", default=5_000, show_default=True, type=int, help="Rows moved per transaction.")
@click.option("--dry-run", is_flag=True, help="Print the plan and the time it expects; change nothing.")
@base.json_option
def adopt(dsn: str | None, schema: str, table: str, source: str, time_column: str | None,
          tenant_column: str | None, id_column: str, maps: tuple[str, ...], time_zone: str,
          default_tenant: str | None, keep_old: bool, store_url: str | None, roles: bool, new_store: bool,
          batch_rows: int, dry_run: bool, as_json: bool) -> None:  # fmt: skip
    """Take over an existing call-log table while the application keeps writing through its name.

    SOURCE (schema.table) becomes a view over callvault's partitioned table (--table); its rows move into
    their weeks in batches. Run it again to resume after an interruption."""
    r = commands.adopt(
        base.settings_of(dsn, schema, table), source, time_column=time_column, tenant_column=tenant_column,
        id_column=id_column, renames=_renames(maps), time_zone=time_zone, default_tenant=default_tenant,
        keep_old=keep_old, roles=roles, batch_rows=batch_rows, dry_run=dry_run, store_url=store_url,
        new_store=new_store, progress=None if as_json else _progress,
    )  # fmt: skip
    if as_json:
        base.emit(r.to_dict())
        return
    if sys.stderr.isatty() and not dry_run:
        click.echo("", err=True)
    p = r.plan
    lines = [f"{p.source} -> {p.target}: {'plan (dry run)' if r.dry_run else r.phase}"]
    lines.append(
        f"  time {p.time_column} ({p.time_type}), tenant {p.tenant_column} ({p.tenant_type}), id {p.id_column}"
    )
    if p.mapped:
        lines.append("  mapped: " + ", ".join(f"{o} -> {n}" for o, n in p.mapped.items()))
    if p.extras:
        lines.append("  your columns: " + ", ".join(f"{n} {t}" for n, t in p.extras.items()))
    span = f"{p.oldest:%Y-%m-%d} .. {p.newest:%Y-%m-%d}" if p.oldest and p.newest else "empty"
    lines.append(f"  {p.rows:,} rows ({p.bytes / 2**20:,.0f} MB), {p.weeks} weeks, {span}")
    lines += [f"  {n}" for n in p.notes]
    if r.dry_run:
        free = f"{p.free_bytes / 2**20:,.0f} MB free" if p.free_bytes is not None else "free disk unknown"
        lines.append(f"  needs ~{p.bytes * 1.5 / 2**20:,.0f} MB extra on the database's disk ({free})")
        lines.append(f"  expected time: ~{p.seconds:,.0f} s; writers pause at most ~0.3 s at the switch")
    else:
        lines.append(f"  moved {r.moved:,} rows, quarantined {r.quarantined:,} in {r.seconds:,.1f} s")
        lines += [f"    {n} x {why}" for why, n in sorted(r.reasons.items())]
        if r.archived:
            lines.append(f"  archived {r.archived} partition(s) past retention")
    for line in lines:
        base.out.print(line, markup=False)
