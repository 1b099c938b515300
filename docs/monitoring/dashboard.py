"""The Grafana dashboard of callvault, in code (grafanalib): ``python docs/monitoring/dashboard.py`` writes
``docs/monitoring/callvault-dashboard.json`` (tests/test_monitoring.py checks the file is current and that
every panel's query names only metrics callvault exports). Import the JSON in Grafana (Dashboards ->
Import) and pick the Prometheus data source that scrapes the worker and your application."""

from __future__ import annotations

import json
import sys
from pathlib import Path

from grafanalib import core as g
from grafanalib._gen import DashboardEncoder

OUT = Path(__file__).with_name("callvault-dashboard.json")
DS = "${datasource}"
SEL = 'table=~"$table"'


def _t(expr: str, legend: str) -> g.Target:
    return g.Target(expr=expr, legendFormat=legend, refId="A", datasource=DS)


def stat(title: str, expr: str, unit: str = "none", x: int = 0, y: int = 0, w: int = 4, red_above: float = 0.5,
         description: str = "") -> g.Stat:  # fmt: skip
    return g.Stat(
        title=title, description=description, dataSource=DS, targets=[_t(expr, "{{table}}")], format=unit,
        reduceCalc="lastNotNull", graphMode="none", gridPos=g.GridPos(h=4, w=w, x=x, y=y),
        thresholdType="absolute",
        thresholds=[{"color": "green", "value": None}, {"color": "red", "value": red_above}],
    )  # fmt: skip


def series(title: str, targets: list[tuple[str, str]], unit: str, x: int, y: int, w: int = 12,
           description: str = "") -> g.TimeSeries:  # fmt: skip
    return g.TimeSeries(
        title=title, description=description, dataSource=DS, unit=unit, gridPos=g.GridPos(h=8, w=w, x=x, y=y),
        targets=[g.Target(expr=e, legendFormat=leg, refId=chr(65 + i), datasource=DS) for i, (e, leg) in
                 enumerate(targets)],
    )  # fmt: skip


def dashboard() -> g.Dashboard:
    panels: list[g.Panel] = [
        g.RowPanel(title="Health", gridPos=g.GridPos(h=1, w=24, x=0, y=0)),
        stat("Health problems", f"callvault_health_problems{{{SEL}}}", x=0, y=1,
             description="What `callvault health` reports; 0 is healthy."),
        stat("Metrics up", f"callvault_up{{{SEL}}}", x=4, y=1, red_above=2),
        stat("Rows in default partition", f"callvault_default_partition_rows{{{SEL}}}", x=8, y=1),
        stat("Isolation leaks", f'callvault_isolation_problems{{{SEL},severity="leak"}}', x=12, y=1),
        stat("Partition gaps", f"callvault_partition_gaps{{{SEL}}}", x=16, y=1),
        stat("Archive stuck", f'callvault_archive_backlog_partitions{{{SEL},stage="stuck"}}', x=20, y=1),
        g.RowPanel(title="Lifecycle", gridPos=g.GridPos(h=1, w=24, x=0, y=5)),
        series("Premake horizon vs required", [
            (f"callvault_premake_horizon_seconds{{{SEL}}}", "horizon {{table}}"),
            (f"callvault_premake_horizon_min_seconds{{{SEL}}}", "required {{table}}"),
        ], "s", 0, 6, description="Seconds of partitions ready ahead of now; below 'required' health fails."),
        series("Partitions by state", [(f"callvault_partitions{{{SEL}}}", "{{state}}")], "none", 12, 6),
        series("Table size", [(f"callvault_table_bytes{{{SEL}}}", "{{table}}")], "bytes", 0, 14),
        series("Oldest partition vs retention", [
            (f"callvault_oldest_partition_age_seconds{{{SEL}}}", "oldest {{table}}"),
            (f"callvault_retention_seconds{{{SEL}}}", "retention {{table}}"),
        ], "s", 12, 14),
        series("Job runs per hour", [
            (f"sum by (operation, outcome) (increase(callvault_job_runs_total{{{SEL}}}[1h]))", "{{operation}} {{outcome}}"),
        ], "none", 0, 22),
        series("Since last success", [
            (f"time() - callvault_job_last_success_timestamp_seconds{{{SEL}}}", "{{operation}}"),
        ], "s", 12, 22),
        g.RowPanel(title="Archive", gridPos=g.GridPos(h=1, w=24, x=0, y=30)),
        series("Archive backlog", [(f"callvault_archive_backlog_partitions{{{SEL}}}", "{{stage}}")], "none", 0, 31),
        series("Archived per day", [
            (f"increase(callvault_archived_rows_total{{{SEL}}}[1d])", "rows"),
            (f"increase(callvault_archive_pruned_objects_total{{{SEL}}}[1d])", "objects pruned"),
        ], "none", 12, 31),
        series("Archive step time (mean)", [
            (f"rate(callvault_archive_step_seconds_sum{{{SEL}}}[1d]) / rate(callvault_archive_step_seconds_count"
             f"{{{SEL}}}[1d])", "{{step}}"),
        ], "s", 0, 39),
        series("Verify failures", [(f"increase(callvault_archive_verify_failures_total{{{SEL}}}[1d])", "{{table}}")],
               "none", 12, 39),
        g.RowPanel(title="Ingest and quarantine", gridPos=g.GridPos(h=1, w=24, x=0, y=47)),
        series("Writer rows/s", [
            (f"sum by (table) (rate(callvault_writer_rows_written_total{{{SEL}}}[5m]))", "written"),
            (f"sum by (table) (rate(callvault_writer_rows_duplicate_total{{{SEL}}}[5m]))", "duplicates"),
            (f"sum by (table, reason) (rate(callvault_writer_rows_quarantined_total{{{SEL}}}[5m]))",
             "quarantined {{reason}}"),
        ], "rowsps", 0, 48),
        series("Writer flush latency", [
            (f"histogram_quantile(0.99, sum by (le) (rate(callvault_writer_flush_seconds_bucket{{{SEL}}}[5m])))", "p99"),
            (f"histogram_quantile(0.5, sum by (le) (rate(callvault_writer_flush_seconds_bucket{{{SEL}}}[5m])))", "p50"),
        ], "s", 12, 48),
        series("Writer queue, retries, failures", [
            (f"sum by (table) (callvault_writer_queue_batches{{{SEL}}})", "queued batches"),
            (f"sum by (table) (rate(callvault_writer_retries_total{{{SEL}}}[5m]))", "retries/s"),
            (f"sum by (table) (rate(callvault_writer_connection_failures_total{{{SEL}}}[5m]))", "connection failures/s"),
            (f"sum by (table) (increase(callvault_writer_failures_total{{{SEL}}}[5m]))", "gave up"),
            (f"sum by (table, path) (rate(callvault_writer_batches_total{{{SEL}}}[5m]))", "batches/s {{path}}"),
        ], "none", 0, 56),
        series("Quarantine waiting", [(f"callvault_quarantine_rows{{{SEL}}}", "{{reason}}")], "none", 12, 56),
        g.RowPanel(title="Replication", gridPos=g.GridPos(h=1, w=24, x=0, y=64)),
        series("Replication lag", [(f"callvault_replication_lag_seconds{{{SEL}}}", "{{slot}}")], "s", 0, 65),
        series("WAL retained by slots", [
            (f"callvault_replication_slot_wal_retained_bytes{{{SEL}}}", "{{slot}}"),
            (f"callvault_replication_slot_wal_limit_bytes{{{SEL}}}", "limit"),
        ], "bytes", 12, 65),
    ]  # fmt: skip
    return g.Dashboard(
        title="callvault",
        uid="callvault",
        description="Partition lifecycle, archive, tenancy, quarantine, writers and mirrors of callvault tables.",
        tags=["callvault", "postgres"],
        timezone="utc",
        refresh="1m",
        time=g.Time("now-24h", "now"),
        templating=g.Templating(list=[
            g.Template(name="datasource", type="datasource", query="prometheus", label="Data source", default=""),
            g.Template(name="table", label="Table", dataSource=DS, query="label_values(callvault_up, table)",
                       includeAll=True, multi=True, default="All", refresh=2),
        ]),  # fmt: skip
        panels=panels,
    ).auto_panel_ids()


def render() -> str:
    """The dashboard's JSON text, as committed."""
    return json.dumps(dashboard().to_json_data(), cls=DashboardEncoder, indent=2, sort_keys=True) + "\n"


if __name__ == "__main__":
    if "--check" in sys.argv:
        sys.exit(0 if OUT.read_text() == render() else 1)
    OUT.write_text(render())
