"""The project's benchmarks (``callvault bench ...``): ratios against baselines run in the same process."""

from __future__ import annotations

import click

from callvault import render
from callvault.cli.base import emit, err, json_option, main, out, settings_of, store_option, target_options
from callvault.errors import InvalidSetting


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


@bench.command(name="erase")
@target_options
@click.option("--weeks", default=52, show_default=True, help="Archived weeks (a year: 52).")
@click.option("--tenants", default=20, show_default=True, help="Tenants.")
@click.option("--calls", default=500, show_default=True, help="Calls a tenant-week.")
@json_option
def bench_erase(dsn: str | None, schema: str, table: str, weeks: int, tenants: int, calls: int,
                as_json: bool) -> None:  # fmt: skip
    """Erasing one caller from a year of archived weeks: with the subject filters vs without."""
    from callvault.bench import erase as eb

    result = eb.run(settings_of(dsn, schema, table), weeks=weeks, tenants=tenants, calls=calls)
    if as_json:
        emit(result)
        return
    for label in ("with_filters", "without_filters"):
        r = result[label]
        out.print(
            f"{label:16} erase {r['erase_seconds']:>7.3f} s  objects read {r['objects_read']:>4}  rewritten "
            f"{r['objects_rewritten']}  periods skipped {r['periods_skipped']}  rows {r['rows_erased']}"
        )
    out.print(
        f"objects read with/without filters: {result['objects_read_ratio']}; seconds: {result['erase_seconds_ratio']}"
    )


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
    from callvault.citus_cluster import CitusCluster

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


@bench.command(name="search")
@target_options
@click.option("--rows", default=300_000, show_default=True, help="Calls written into each of the three tables.")
@click.option("--heavy-share", default=0.3, show_default=True, help="The heavy tenant's share of the calls.")
@click.option(
    "--samples",
    default=30,
    show_default=True,
    type=click.IntRange(2, 10_000),
    help="Timed searches per query, after a warm-up.",
)
@json_option
def bench_search(dsn: str | None, schema: str, table: str, rows: int, heavy_share: float, samples: int,
                 as_json: bool) -> None:  # fmt: skip
    """Ingest without the usage rollup, with it, and with the search indexes (rows/s and ratios); a heavy
    tenant's 7-day and ~90-day search, p50/p95, with and without the indexes."""
    from callvault.bench import search as sb

    result = sb.run(
        settings_of(dsn, schema, table), rows, heavy_share, lambda msg: err.print(f"[dim]{msg}[/dim]"), samples
    )
    if as_json:
        emit(result)
        return
    for key, value in result.items():
        out.print(f"{key:32} {value}")


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


@bench.command(name="adopt")
@target_options
@click.option("--rows", default=2_000_000, show_default=True, help="Rows of the table adopted (~1.2 KB each).")
@click.option("--weeks", default=13, show_default=True, help="Weeks the rows span, up to now.")
@click.option("--writes-per-s", default=500.0, show_default=True, help="The application's INSERTs a second.")
@click.option("--batch-rows", default=5_000, show_default=True, help="Rows adopt moves per transaction.")
@json_option
def bench_adopt(dsn: str | None, schema: str, table: str, rows: int, weeks: int, writes_per_s: float,
                batch_rows: int, as_json: bool) -> None:  # fmt: skip
    """Adopting a plain table while an application inserts through its name: stall, rows/s, disk."""
    from callvault.bench import adopt as ab

    result = ab.run(settings_of(dsn, schema, table), rows=rows, weeks=weeks, writes_per_s=writes_per_s,
                    batch_rows=batch_rows)  # fmt: skip
    if as_json:
        emit(result)
        return
    for key, value in result.items():
        out.print(f"{key:28} {value}", markup=False)


@bench.command(name="scale")
@target_options
@click.option("--rows", default=20_000_000, show_default=True, help="Calls of ~1.2 KB over 13 weeks (20M: 25 GB+).")
@click.option("--heavy-share", default=0.3, show_default=True, help="The heavy tenant's share of the rows.")
@click.option("--daily-partitions", default=500, show_default=True, help="Partitions of the daily table compared.")
@click.option("--plot", "plot_path", default=None, metavar="PNG", help="Also draw the figures into this file.")
@json_option
def bench_scale(dsn: str | None, schema: str, table: str, rows: int, heavy_share: float, daily_partitions: int,
                plot_path: str | None, as_json: bool) -> None:  # fmt: skip
    """callvault at a tenant's size: reads (18 vs 500 partitions, idle and under ingest), operations,
    archive of a big week against raw COPY and COPY | zstd, bytes per call."""
    from callvault.bench import scale

    result = scale.run(settings_of(dsn, schema, table), rows=rows, heavy_share=heavy_share,
                       daily_partitions=daily_partitions, progress=lambda m: err.print(m))  # fmt: skip
    if plot_path:
        scale.plot(result, plot_path)
    if as_json:
        emit(result)
        return
    for key, value in result.items():
        out.print(f"{key:44} {value}", markup=False)
