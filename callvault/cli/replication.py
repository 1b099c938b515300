"""Replication commands: mirror create/status/drop, publish."""

from __future__ import annotations

import json
from collections.abc import Callable

import click

from callvault.cli.base import F, emit, json_option, main, out, settings_of, target_options


def rows_options(verb: str, more: str) -> Callable[[F], F]:
    """--columns and --tenant: which columns and tenants' rows to ``verb`` (mirror, publish)."""

    def apply(f: F) -> F:
        only = f"{verb.capitalize()} only this tenant's rows (repeatable); default every tenant."
        f = click.option("--tenant", "--tenant-id", "tenants", multiple=True, metavar="UUID", help=only)(f)
        return click.option("--columns", default="all", show_default=True, metavar="all|metadata|c1,c2",
                            help=f"Columns to {verb}; metadata = all but the transcript{more}.")(f)  # fmt: skip

    return apply


@main.group(name="mirror")
def mirror_group() -> None:
    """Mirror the table (or its metadata) into another Postgres by logical replication."""


@mirror_group.command(name="create")
@target_options
@click.option("--to", "target", required=True, metavar="DSN", help="The target database (another Postgres).")
@click.option("--name", default=None, help="Mirror name (lower-case letters, digits, _) [default: from the target].")
@rows_options("mirror", "")
@click.option(
    "--truncate-target",
    is_flag=True,
    help="The target's table may hold rows (an earlier mirror's): delete them first; without it, refused.",
)
@click.option(
    "--patroni",
    default=None,
    metavar="URL",
    help="Patroni's REST API (http://member:8008): declare the slot permanent, kept across failovers.",
)
@json_option
def mirror_create(dsn: str | None, schema: str, table: str, target: str, name: str | None, columns: str,
                  tenants: tuple[str, ...], truncate_target: bool, patroni: str | None,
                  as_json: bool) -> None:  # fmt: skip
    """Publication here, the table with its own lifecycle there, a subscription with the initial copy."""
    from callvault import mirror

    rep = mirror.create(settings_of(dsn, schema, table), target, name=name, columns=columns, tenants=tenants,
                        truncate_target=truncate_target, patroni=patroni)  # fmt: skip
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


@mirror_group.command(name="resync")
@target_options
@click.option("--name", required=True, help="The mirror (as `mirror status` names it, with or without the prefix).")
@click.option("--to", "target", default=None, metavar="DSN",
              help="The target [default: the one recorded when the mirror was made].")  # fmt: skip
@json_option
def mirror_resync(dsn: str | None, schema: str, table: str, name: str, target: str | None, as_json: bool) -> None:
    """Subscribe a mirror again from the start (after a failover lost its slot): the target's table is
    emptied and copied again, every row once."""
    from callvault import mirror

    rep = mirror.resync(settings_of(dsn, schema, table), name, target_dsn=target)
    if as_json:
        emit(rep.to_dict())
        return
    for step in rep.steps:
        out.print(step, markup=False, soft_wrap=True)


@main.command(name="publish")
@target_options
@click.option("--name", default=None, help="Publication name [default: callvault_<table>].")
@rows_options("publish", "; a list must hold the primary key")
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
