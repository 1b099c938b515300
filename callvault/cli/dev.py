"""The embedded cluster (``callvault dev ...``) and the demo."""

from __future__ import annotations

from collections.abc import Callable

import click
from rich.console import Console

from callvault import demo, render
from callvault.cli.base import F, emit, json_option, main, out, settings_of, target_options
from callvault.embedded import Cluster
from callvault.errors import InvalidSetting


def citus_options(what: str) -> Callable[[F], F]:
    """--citus (``what`` it does instead) and --workers, for the dev commands that take both."""

    def apply(f: F) -> F:
        f = click.option("--workers", type=click.IntRange(min=1), default=2, show_default=True,
                         help="Citus workers.")(f)  # fmt: skip
        return click.option("--citus", "citus_", is_flag=True, help=what)(f)

    return apply


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


def ha_option(what: str) -> Callable[[F], F]:
    """--ha: the local Patroni + etcd cluster (callvault.ha_cluster) instead."""
    return click.option("--ha", is_flag=True, help=what)


@dev.command()
@click.option("--port", type=int, default=None, help="Port on 127.0.0.1 (default: a free one, kept).")
@citus_options("A local Citus cluster instead: a coordinator and workers.")
@ha_option("A local HA cluster instead: etcd and three Patroni-managed nodes (synchronous mode).")
@click.option("--async", "asynchronous", is_flag=True, help="With --ha: Patroni's synchronous mode off.")
@json_option
def up(port: int | None, citus_: bool, workers: int, ha: bool, asynchronous: bool, as_json: bool) -> None:
    """Create (once) and start the embedded cluster (with --citus: a coordinator and workers; with --ha:
    etcd and three Patroni-managed nodes)."""
    if ha:
        from callvault.ha_cluster import HACluster

        if port is not None or citus_:
            raise InvalidSetting("--ha starts its own nodes on free ports: drop --port / --citus")
        ha_lab = HACluster(synchronous=not asynchronous)
        dsn = ha_lab.up()
        readers = ha_lab.dsn(readers=True)
        if as_json:
            emit({"up": True, "dsn": dsn, "readers_dsn": readers, "primary": ha_lab.primary()})
            return
        out.print(f"HA cluster is up (primary: {ha_lab.primary()}): {dsn}", soft_wrap=True)
        out.print(f"readers: {readers}", soft_wrap=True)
        out.print(f"use it with: export CALLVAULT_DSN='{dsn}'", soft_wrap=True)
        return
    if asynchronous:
        raise InvalidSetting("--async is for --ha (Patroni's synchronous mode off)")
    if citus_:
        from callvault.citus_cluster import CitusCluster

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
@citus_options("Stop the local Citus cluster instead.")
@ha_option("Stop the local HA cluster (its nodes, then etcd) instead.")
@json_option
def down(citus_: bool, workers: int, ha: bool, as_json: bool) -> None:
    """Stop the embedded cluster."""
    from callvault.citus_cluster import CitusCluster

    if ha:
        from callvault.ha_cluster import HACluster

        stopped = HACluster().down()
    else:
        stopped = CitusCluster(workers=workers).down() if citus_ else Cluster().down()
    emit({"stopped": stopped}) if as_json else out.print("stopped" if stopped else "not running")


@dev.command(name="status")
@citus_options("The local Citus cluster's nodes instead.")
@ha_option("The local HA cluster's nodes and their roles instead.")
@json_option
def dev_status(citus_: bool, workers: int, ha: bool, as_json: bool) -> None:
    """Where the embedded cluster lives and whether it runs."""
    if ha:
        from callvault.ha_cluster import HACluster

        ha_st = HACluster().status()
        if as_json:
            emit(ha_st)
            return
        roles = {str(m.get("name")): f"{m.get('role')} ({m.get('state')})" for m in ha_st.get("members", [])}
        out.print(f"home         {ha_st['home']}", soft_wrap=True)
        for name, node in (ha_st.get("nodes") or {}).items():
            state = "running" if node["running"] else "stopped"
            out.print(f"{name:12} {state:8} port {node['port']}  {roles.get(name, '-')}", soft_wrap=True)
        return
    if citus_:
        from callvault.citus_cluster import CitusCluster

        nodes = CitusCluster(workers=workers).status()
        if as_json:
            emit(nodes)
            return
        for name, node in nodes.items():
            assert isinstance(node, dict)
            state = "running" if node["running"] else "stopped"
            out.print(f"{name:12} {state:8} port {node['port']}  {node['home']}", soft_wrap=True)
        return
    from callvault.citus_cluster import CitusCluster

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
@citus_options("The local Citus cluster's coordinator instead.")
@ha_option("The local HA cluster's multi-host DSN (writers: read-write) instead.")
@click.option("--readers", is_flag=True, help="With --ha: the readers' DSN (target_session_attrs=prefer-standby).")
@json_option
def url(citus_: bool, workers: int, ha: bool, readers: bool, as_json: bool) -> None:
    """Print the embedded cluster's DSN (starting it if needed; with --citus the coordinator's)."""
    from callvault.citus_cluster import CitusCluster

    if ha or readers:
        from callvault.ha_cluster import HACluster

        if not ha:
            raise InvalidSetting("--readers is for --ha: `callvault dev url --ha --readers`")
        ha_lab = HACluster()
        ha_lab.up()
        dsn = ha_lab.dsn(readers=readers)
        emit({"dsn": dsn, "readers": readers}) if as_json else click.echo(dsn)
        return

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

    console = Console(file=io.StringIO()) if as_json else out  # --json: one document at the end
    s = settings_of(dsn, schema, table)
    rep = demo.run(s, calls)
    console.rule("init --roles")
    console.print("initialised" if rep.initialised else f"{s.qualified} already initialised")
    seeded = rep.seeded
    console.print(f"wrote {seeded.rows:,} calls for {len(seeded.tenants)} tenants, {seeded.first:%Y-%m-%d} .. "
                  f"{seeded.last:%Y-%m-%d}")  # fmt: skip
    console.rule("maintain")
    render.maintenance(console, rep.maintained)
    console.rule("status")
    render.status(console, rep.status)
    console.rule("EXPLAIN: one tenant's last 7 days")
    for line in rep.explain_lines:
        console.print(line, soft_wrap=True)
    console.print(f"partitions scanned: {len(rep.scanned)} of {rep.total} ({', '.join(rep.scanned)})")
    iso = rep.isolation
    console.rule(f"tenant isolation: reading as {iso.role}")
    console.print(f"no tenant set: {iso.no_tenant} rows (of {iso.total:,}); tenant {seeded.tenants[0]} set: "
                  f"{iso.own:,} rows, {iso.tenants_seen} tenant; partition {iso.partition} by name: "
                  f"{'permission denied' if iso.partition_denied else 'READABLE'}")  # fmt: skip
    render.audit(console, rep.audit)
    if as_json:
        emit(rep.to_dict())
