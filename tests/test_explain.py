"""callvault explain: partitions in the plan, plan-time vs executor-start pruning, verdict exit codes."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from callvault.explain import NotPruned, walk
from tests.helpers import run, run_json

PINNED = (
    "SELECT * FROM call_logs WHERE tenant_id = '7a8b9c0d-1e2f-4a5b-8c6d-7e8f9a0b1c2d' "
    "AND started_at >= '{since}' AND started_at < '{until}' ORDER BY started_at DESC LIMIT 100"
)
DATE_TRUNC = "SELECT * FROM call_logs WHERE date_trunc('day', started_at) = '{day}'"


def _window() -> tuple[str, str]:
    now = datetime.now(UTC)
    return (now - timedelta(days=1)).date().isoformat(), now.date().isoformat()


def test_pinned_query_prunes_and_exits_zero(dsn: str) -> None:
    run("init", "--dsn", dsn)
    since, until = _window()
    report = run_json("explain", "--dsn", dsn, PINNED.format(since=since, until=until))
    assert report["ok"] and report["pruning"] == "plan-time"
    assert 1 <= report["partitions_scanned"] <= 2 < report["partitions_total"]
    human = run("explain", "--dsn", dsn, PINNED.format(since=since, until=until)).stdout
    assert "pruning: plan-time" in human


def test_date_trunc_query_scans_everything_and_exits_nonzero(dsn: str) -> None:
    run("init", "--dsn", dsn)
    res = run("explain", "--dsn", dsn, DATE_TRUNC.format(day=_window()[1]), ok=False)
    assert res.exit_code == NotPruned.exit_code == 4
    assert "scans all" in res.stderr and "started_at >=" in res.stderr


def test_parameters_and_executor_start_pruning(dsn: str) -> None:
    run("init", "--dsn", dsn)
    q = "SELECT count(*) FROM call_logs WHERE started_at >= %s AND started_at < now()"
    report = run_json("explain", "--dsn", dsn, q, "--param", _window()[0])
    assert report["ok"] and report["pruning"] in {"executor-start", "plan-time"}
    assert report["subplans_removed"] >= 1 or report["partitions_scanned"] < report["partitions_total"]


def test_max_partitions_threshold(dsn: str) -> None:
    run("init", "--dsn", dsn)
    now = datetime.now(UTC)
    q = PINNED.format(since=(now - timedelta(days=40)).date(), until=now.date())
    res = run("explain", "--dsn", dsn, q, "--max-partitions", "2", ok=False)
    assert res.exit_code == 4 and "more than --max-partitions 2" in res.stderr


def test_bad_sql_is_a_clear_error(dsn: str) -> None:
    run("init", "--dsn", dsn)
    res = run("explain", "--dsn", dsn, "SELEC nonsense", ok=False)
    assert res.exit_code == 2 and "cannot EXPLAIN" in res.stderr


def test_walk_counts_relations_and_removed_subplans() -> None:
    plan = {"Node Type": "Append", "Subplans Removed": 3, "Plans": [
        {"Node Type": "Index Scan", "Relation Name": "call_logs_p2026w01"},
        {"Node Type": "Seq Scan", "Relation Name": "call_logs_p2026w02"},
    ]}  # fmt: skip
    assert walk(plan) == (["call_logs_p2026w01", "call_logs_p2026w02"], 3)


def test_lint_cli_exit_codes(tmp_path: object) -> None:
    import json
    import pathlib

    from click.testing import CliRunner

    from callvault.cli import main

    good = pathlib.Path(str(tmp_path)) / "good.sql"
    good.write_text(PINNED.format(since="2026-05-01", until="2026-05-08") + ";\n")
    assert CliRunner().invoke(main, ["lint", str(good)]).exit_code == 0
    bad = DATE_TRUNC.format(day="2026-05-04")
    res = CliRunner().invoke(main, ["lint", "-", "--json"], input=bad)
    assert res.exit_code == 4
    rules = [f["rule"] for f in json.loads(res.stdout)]
    assert rules[0] == "CV002" and "CV001" in rules
