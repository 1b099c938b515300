"""The benchmark commands run end to end at a tiny size and report every documented field.

No timing is asserted here: the figures come from running the commands (see docs/benchmarks.md).
"""

from __future__ import annotations

import pathlib

import pytest

from tests.clock import FakeClock, real_now
from tests.helpers import run_json

INGEST_FIELDS = (
    "rows", "row_bytes", "writer_rows_per_s", "async_writer_rows_per_s", "raw_copy_rows_per_s",
    "per_row_insert_rows_per_s", "per_row_insert_16conn_rows_per_s", "writer_vs_raw_copy", "writer_vs_per_row",
    "writer_idempotent_rows_per_s", "writer_peak_rss_mb", "postgres_version", "psycopg_version", "settings",
)  # fmt: skip


def test_bench_ingest_reports_every_field(dsn: str) -> None:
    result = run_json("bench", "ingest", "--dsn", dsn, "--rows", "3000", "--row-bytes", "400")
    for field in INGEST_FIELDS:
        assert field in result, field
    assert result["rows"] == 3000 and result["row_bytes"] == 400
    assert result["writer_rows_per_s"] > 0 and result["raw_copy_rows_per_s"] > 0
    assert result["settings"]["synchronous_commit"] == "on"


def test_bench_keys_compares_layouts(dsn: str) -> None:
    result = run_json("bench", "keys", "--dsn", dsn, "--rows", "3000")
    assert set(result["layouts"]) == {"seed", "seed_call_idx", "callvault"}
    for layout in result["layouts"].values():
        assert layout["load_rows_per_s"] > 0 and layout["index_mb"] > 0
        assert layout["window_p95_ms"] > 0 and layout["get_call_p95_ms"] > 0


QUERY_FIELDS = (
    "rows", "partitions", "window_p50_ms", "window_p95_ms", "window_p99_ms", "get_call_p99_ms",
    "get_call_no_ts_p99_ms", "flat_window_p95_ms", "window_p95_under_ingest_ms", "date_trunc_p95_ms",
    "day_pinned_p95_ms", "ingest_rows_per_s_during",
)  # fmt: skip


def test_bench_query_reports_every_field_and_plots(dsn: str, tmp_path: object) -> None:
    import pathlib

    png = pathlib.Path(str(tmp_path)) / "q.png"
    result = run_json("bench", "query", "--dsn", dsn, "--sizes", "4000,6000", "--plot", str(png))
    for field in QUERY_FIELDS:
        assert field in result, field
    assert result["rows"] == 6000 and result["partitions"] >= 13
    assert [s["rows"] for s in result["sizes"]] == [4000, 6000]
    assert png.stat().st_size > 10_000


REPLICATION_FIELDS = (
    "columns", "ingested_rows", "ingest_rows_per_s", "apply_rows_per_s", "apply_vs_ingest", "lag_s_p50",
    "lag_s_p95", "lag_s_max", "lag_bytes_max", "catch_up_s", "samples",
)  # fmt: skip


def test_bench_replication_reports_both_mirrors(dsn: str) -> None:
    result = run_json("bench", "replication", "--dsn", dsn, "--seconds", "2")
    assert [m["columns"] for m in result["mirrors"]] == ["metadata", "all"]
    for m in result["mirrors"]:
        for field in REPLICATION_FIELDS:
            assert field in m, field
        assert m["ingested_rows"] > 0 and m["samples"] > 0 and m["catch_up_s"] >= 0


def test_bench_erase_reads_fewer_objects_with_the_subject_filters(dsn: str) -> None:
    result = run_json("bench", "erase", "--dsn", dsn, "--weeks", "8", "--tenants", "3", "--calls", "20")
    with_f, without = result["with_filters"], result["without_filters"]
    assert with_f["rows_erased"] == without["rows_erased"] == 4, "the caller's four calls, from either archive"
    assert with_f["objects_rewritten"] == without["objects_rewritten"] == 4
    assert without["objects_read"] >= 8 and without["periods_skipped"] == 0
    # each period the filter rules out is not read (a 1 % false positive may still be read: not exact)
    assert with_f["objects_read"] + with_f["periods_skipped"] == without["objects_read"]
    assert with_f["objects_read"] >= 4 and with_f["periods_skipped"] >= 2
    assert result["objects_read_ratio"] == round(with_f["objects_read"] / without["objects_read"], 3)


def test_bench_metrics_reports_every_field(dsn: str) -> None:
    result = run_json("bench", "metrics", "--dsn", dsn, "--partitions", "30", "--samples", "5", "--seconds", "0.5")
    assert result["partitions"] >= 29
    fields = ("collect_statements", "collect_p50_ms", "catalog_round_trip_p50_ms", "collect_vs_catalog_round_trip",
              "writer_batch_p99_ms_idle", "writer_batch_p99_ms_collecting", "collections_during_ingest")  # fmt: skip
    for field in fields:
        assert result[field] > 0, field


def test_bench_citus_reports_both_engines(dsn: str, citus_cluster: object) -> None:
    from callvault.citus_cluster import CitusCluster

    assert isinstance(citus_cluster, CitusCluster)
    name = f"cv_bench_citus_{id(citus_cluster)}"
    target = citus_cluster.database(name)
    try:
        result = run_json("bench", "citus", "--dsn", dsn, "--citus-dsn", target, "--rows", "4000")
    finally:
        citus_cluster.drop_database(name)
    assert set(result["partition_ddl_ms_by_shard_count"]) == {"4", "8", "16", "32", "64"}
    assert result["ingest_rows_per_s_single"] > 0 and result["ingest_rows_per_s_citus"] > 0
    assert result["window_citus"]["tasks"] == 1 and result["window_single"]["tasks"] is None


def test_bench_adopt_reports_every_field(dsn: str) -> None:
    result = run_json("bench", "adopt", "--dsn", dsn, "--rows", "6000", "--weeks", "3", "--writes-per-s", "50",
                      "--batch-rows", "1000")  # fmt: skip
    # the table's 6000 rows and what the application wrote before the switch
    assert result["moved"] >= 6000 and result["quarantined"] == 0 and result["app_errors"] == 0
    # every row adopted, and every application insert during the adoption (and in the second after it)
    assert result["target_rows_after"] >= result["moved"] and result["app_rows_acknowledged"] > 0
    assert result["app_rows_lost"] == 0, "every INSERT the application saw commit is in the adopted table"
    for key in (
        "rows_per_s_moved",
        "offline_copy_rows_per_s",
        "adopt_vs_offline_copy",
        "longest_write_stall_ms",
        "app_insert_p99_ms_before",
        "app_insert_p99_ms_during",
        "extra_disk_mb_peak",
        "adopt_seconds",
    ):
        assert result[key] is not None, key


# A Sunday evening (the retention cutoff's week started a day before the oldest partition) and a Thursday
# afternoon, on the server's clock (libfaketime): each bench derives its weeks from the partitions it finds.
BENCH_INSTANTS = ("2026-12-06T20:00:00+00:00", "2026-12-03T13:00:00+00:00")


@pytest.mark.parametrize("instant", BENCH_INSTANTS, ids=["sunday-evening", "thursday-afternoon"])
def test_benches_run_at_any_instant_of_the_server_clock(
    clocked: tuple[object, FakeClock], clocked_dsn: str, instant: str, tmp_path: pathlib.Path
) -> None:
    from datetime import datetime

    clocked[1].set(datetime.fromisoformat(instant))
    try:
        archived = run_json("bench", "archive", "--dsn", clocked_dsn, "--rows", "4000")
        assert archived["rows"] == 4000 and archived["archive_vs_raw_copy"] > 0
        assert archived["writer_commits_during_archive"] >= 0 and archived["archiver_peak_rss_mb"] > 0
        query = run_json("bench", "query", "--dsn", clocked_dsn, "--sizes", "3000", "--plot", str(tmp_path / "q.png"))
        assert query["rows"] == 3000 and query["partitions"] >= 13 and query["window_p95_ms"] > 0
        metrics = run_json("bench", "metrics", "--dsn", clocked_dsn, "--partitions", "20", "--samples", "5",
                           "--seconds", "0.3")  # fmt: skip
        assert metrics["partitions"] >= 19
        found = run_json("bench", "search", "--dsn", clocked_dsn, "--rows", "3000", "--samples", "3")
        assert found["indexed_phrase_90d_hits"] > 0 and found["ingest_indexed_rows_per_s"] > 0
    finally:
        clocked[1].set(real_now())


def test_bench_search_reports_every_figure(dsn: str) -> None:
    r = run_json("bench", "search", "--dsn", dsn, "--rows", "4000", "--samples", "5")
    for key in ("ingest_live_plain_rows_per_s", "ingest_live_usage_rows_per_s", "live_usage_vs_plain",
                "ingest_plain_rows_per_s", "ingest_usage_rows_per_s", "ingest_indexed_rows_per_s", "usage_vs_plain",
                "indexed_vs_usage", "trgm_index_mb", "fts_index_mb"):  # fmt: skip
        assert r[key] > 0, key
    for kind in ("indexed", "noindex"):
        for name in ("phrase", "words", "rare"):
            for window in ("7d", "90d"):
                assert r[f"{kind}_{name}_{window}_p50_ms"] > 0 and r[f"{kind}_{name}_{window}_p95_ms"] > 0
    # one page of the heavy tenant's matches, the same with and without the indexes
    assert r["indexed_phrase_90d_hits"] == r["noindex_phrase_90d_hits"] > 0
    assert r["indexed_words_90d_hits"] == r["noindex_words_90d_hits"] > 0


def test_bench_scale_reports_every_figure(dsn: str, tmp_path: object) -> None:
    """``bench scale`` at a reduced size (the full-size run is in docs/benchmarks.md)."""
    import pathlib

    png = pathlib.Path(str(tmp_path)) / "scale.png"
    r = run_json("bench", "scale", "--dsn", dsn, "--rows", "20000", "--daily-partitions", "40", "--plot", str(png))
    assert r["rows"] == 20000 and r["weekly_partitions"] >= 14 and r["daily_partitions"] >= 40
    for table in ("weekly", "daily"):
        for read in ("window_light", "window_heavy", "get_call", "daily_90d"):
            for when in ("", "_under_ingest"):
                for q in (50, 95, 99):
                    assert r[f"{table}_{read}{when}_p{q}_ms"] > 0, (table, read, when, q)
        for op in ("maintain", "status", "health", "audit", "metrics_collect"):
            assert r[f"{table}_{op}_s"] >= 0
        assert r[f"{table}_planning_ms"] > 0 and r[f"{table}_prepared_generic_p99_ms"] > 0
        assert r[f"{table}_prepared_custom_p99_ms"] > 0 and r[f"{table}_ingest_rows_per_s_during"] > 0
    for key in (
        "archive_s",
        "archiver_peak_rss_mb",
        "raw_copy_s",
        "hand_copy_zstd_s",
        "archive_vs_raw_copy",
        "archive_vs_hand_copy_zstd",
        "writer_p99_ms_before_archive",
        "writer_p99_ms_during_archive",
        "hot_bytes_per_call",
        "archived_bytes_per_call",
        "p99_window_500_vs_18",
    ):
        assert r[key] is not None and r[key] > 0, key
    assert r["archive_week_rows"] == 20000 * 0.2  # the archived week holds its share of the rows
    assert png.stat().st_size > 10_000
