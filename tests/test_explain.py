"""callvault explain: partitions in the plan, plan-time vs executor-start pruning, verdict exit codes."""

from __future__ import annotations

import os
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta

import psycopg
import pytest
from psycopg import sql

from callvault.embedded import Cluster
from callvault.explain import NotPruned, walk
from tests.conftest import TEMPLATE, _drop_db
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


# -- issue 13: placeholders, bad SQL, and every failure one line -----------------------------------


@pytest.fixture(scope="module")
def db(cluster: Cluster) -> Iterator[str]:
    """One initialised database for the read-only explain tests below (explain always rolls back)."""
    name = f"cv_explain_{os.getpid()}"  # conftest's own counter may be another module's copy: a name of its own
    with psycopg.connect(cluster.dsn("postgres"), autocommit=True) as conn:
        conn.execute(sql.SQL("CREATE DATABASE {} TEMPLATE {}").format(sql.Identifier(name), sql.Identifier(TEMPLATE)))
    dsn = cluster.dsn(name)
    run("init", "--dsn", dsn)
    yield dsn
    _drop_db(cluster, name)


def explain_error(dsn: str, *args: str) -> tuple[int, str]:
    res = run("explain", "--dsn", dsn, *args, ok=False)
    assert res.stdout == ""
    assert res.stderr.count("\n") == 1 and res.stderr.startswith("error: "), res.stderr
    return res.exit_code, res.stderr.removeprefix("error: ").rstrip("\n")


DOLLARS = "SELECT count(*) FROM call_logs WHERE tenant_id = $1 AND started_at >= $2 AND started_at < $3"
TENANT = "7a8b9c0d-1e2f-4a5b-8c6d-7e8f9a0b1c2d"


def test_dollar_placeholders_without_values_say_how_to_pass_them(db: str) -> None:
    assert explain_error(db, DOLLARS) == (
        2,
        "the query has placeholders $1, $2, $3 and no --param: pass one --param/-p VALUE per placeholder, "
        "in order ($1 first): -p VALUE1 -p VALUE2 -p VALUE3",
    )


def test_dollar_placeholders_with_values_are_explained(db: str) -> None:
    since, until = _window()
    report = run_json("explain", "--dsn", db, DOLLARS, "-p", TENANT, "-p", since, "--param", until)
    assert report["ok"] and report["pruning"] == "plan-time"
    assert 1 <= report["partitions_scanned"] <= 2 < report["partitions_total"]
    analyzed = run_json("explain", "--dsn", db, DOLLARS, "-p", TENANT, "-p", since, "-p", until, "--analyze")
    assert analyzed["ok"] and analyzed["partitions_scanned"] == report["partitions_scanned"]
    human = run("explain", "--dsn", db, DOLLARS, "-p", TENANT, "-p", since, "-p", until).stdout.splitlines()
    total = report["partitions_total"]
    assert human[-1] == (
        f"public.call_logs: {report['partitions_scanned']} of {total} partitions in the plan; pruning: plan-time; "
        "subplans removed at executor start: 0"
    )


def test_dollar_placeholders_take_values_by_number_not_by_position(db: str) -> None:
    since, until = _window()
    q = "SELECT count(*) FROM call_logs WHERE started_at < $2 AND started_at >= $1 AND $1 <= started_at"
    report = run_json("explain", "--dsn", db, q, "-p", since, "-p", until)
    assert report["ok"] and 1 <= report["partitions_scanned"] <= 2


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (
            [DOLLARS, "-p", TENANT],
            "the query uses $1..$3 but 1 --param value(s) were given: pass exactly 3, in order ($1 first)",
        ),
        (
            ["SELECT count(*) FROM call_logs WHERE started_at >= now()", "-p", "2026-01-01"],
            "1 --param value(s) given but the query has no placeholder: drop --param, or put $1, $2... (or %s) "
            "where the values go",
        ),
        (
            ["SELECT count(*) FROM call_logs WHERE started_at >= %s AND started_at < %s"],
            "the query has 2 psycopg placeholder(s) (%s) and no --param: pass one --param/-p VALUE per placeholder, "
            "in order: -p VALUE1 -p VALUE2",
        ),
        (
            ["SELECT count(*) FROM call_logs WHERE started_at >= %s AND started_at < %s", "-p", "2026-01-01"],
            "the query has 2 psycopg placeholder(s) (%s) but 1 --param value(s) were given: pass one per %s, in "
            "order (a literal % is written %% in a query with %s placeholders)",
        ),
        (
            ["SELECT count(*) FROM call_logs WHERE started_at >= %(since)s", "-p", "2026-01-01"],
            "the query uses named placeholders (%(since)s): --param values go in order, so write $1, $2... (or %s) "
            "instead",
        ),
        (
            ["SELECT count(*) FROM call_logs WHERE started_at >= $1 AND started_at < %s", "-p", "2026-01-01"],
            "the query mixes $n and psycopg %s placeholders: use one style ($1, $2... with one -p each)",
        ),
    ],
)
def test_placeholder_mistakes_are_one_line_before_connecting(args: list[str], message: str) -> None:
    # the DSN points nowhere: the query is judged before any connection is tried
    assert explain_error("postgresql://callvault@127.0.0.1:1/nowhere", *args) == (2, message)


@pytest.mark.parametrize(
    ("query", "message"),
    [
        (
            "SELEC nonsense",
            'cannot EXPLAIN the query: it does not parse: syntax error at or near "SELEC" (line 1, column 1); fix '
            "the SQL (`callvault lint -` checks it offline)",
        ),
        (
            "SELECT *\nFROM call_logs\nWHERE started_at >= = now()",
            'cannot EXPLAIN the query: it does not parse: syntax error at or near "=" (line 3, column 21); fix '
            "the SQL (`callvault lint -` checks it offline)",
        ),
        (
            "SELECT * FROM call_logs WHERE",
            "cannot EXPLAIN the query: it does not parse: syntax error at end of input (line 1, column 30); fix "
            "the SQL (`callvault lint -` checks it offline)",
        ),
        ("   -- nothing\n", "the query is empty: pass one SELECT, INSERT, UPDATE, DELETE or MERGE statement"),
        (
            "SELECT 1 FROM call_logs WHERE started_at >= now(); DELETE FROM call_logs",
            "the query holds 2 statements: explain takes one; run it once per statement (`callvault lint` checks "
            "files of many)",
        ),
        (
            "EXPLAIN SELECT * FROM call_logs",
            "drop the leading EXPLAIN from the query: callvault adds it (--analyze for EXPLAIN ANALYZE)",
        ),
        (
            "VACUUM call_logs",
            "EXPLAIN cannot take a VACUUM statement: pass a SELECT, INSERT, UPDATE, DELETE or MERGE",
        ),
    ],
)
def test_bad_sql_is_one_line_before_connecting(query: str, message: str) -> None:
    assert explain_error("postgresql://callvault@127.0.0.1:1/nowhere", query) == (2, message)


def test_a_second_statement_is_never_run(db: str) -> None:
    code, _ = explain_error(db, "SELECT 1 FROM call_logs WHERE started_at >= now(); DROP TABLE call_logs")
    assert code == 2
    since, until = _window()
    assert run_json("explain", "--dsn", db, PINNED.format(since=since, until=until))["ok"]  # the table is still there


def test_what_the_server_refuses_is_one_line(db: str) -> None:
    q = "SELECT count(*) FROM call_logs WHERE started_at >= $1"
    assert explain_error(db, q, "-p", "last tuesday") == (
        2,
        'cannot EXPLAIN the query: invalid input syntax for type timestamp with time zone: "last tuesday"; '
        "check the --param values (and the SQL)",
    )
    assert explain_error(db, "SELECT nope FROM call_logs WHERE started_at >= now()") == (
        2,
        'cannot EXPLAIN the query: column "nope" does not exist (line 1, column 8); fix the SQL',
    )
    assert explain_error(db, "SELECT * FROM calls WHERE started_at >= now()") == (
        2,
        'cannot EXPLAIN the query: relation "calls" does not exist (line 1, column 15); fix the SQL (the managed '
        "table is public.call_logs)",
    )


def test_a_query_that_does_not_read_the_table_is_not_a_pass(db: str) -> None:
    assert explain_error(db, "SELECT 1") == (
        2,
        "the query does not name public.call_logs and its plan reads none of its partitions: nothing to judge; "
        "explain a query on public.call_logs, or pass --schema/--table for the table it reads",
    )


def test_every_partition_pruned_is_plan_time_pruning(db: str) -> None:
    report = run_json("explain", "--dsn", db, "SELECT * FROM call_logs WHERE started_at >= '2200-01-01'")
    assert report["ok"] and report["partitions_scanned"] == 0 and report["pruning"] == "plan-time"


def test_percent_in_a_plain_query_is_sql(db: str) -> None:
    since, until = _window()
    window = f"started_at >= '{since}' AND started_at < '{until}'"
    q = f"SELECT * FROM call_logs WHERE transcript LIKE '%sorry%' AND {window}"
    assert run_json("explain", "--dsn", db, q)["ok"]
    q = "SELECT * FROM call_logs WHERE transcript LIKE '%%sorry%%' AND started_at >= %s AND started_at < %s"
    report = run_json("explain", "--dsn", db, q, "-p", since, "-p", until)
    assert report["ok"] and any("'%sorry%'" in line for line in report["plan"])


def test_table_not_initialised_is_one_line(dsn: str) -> None:
    assert explain_error(dsn, PINNED.format(since="2026-01-01", until="2026-01-08")) == (
        66,
        "public.call_logs does not exist in this database: run `callvault init` first, or pass --schema/--table "
        "for the table you mean",
    )


def test_help_says_how_to_pass_parameters() -> None:
    from click.testing import CliRunner

    from callvault.cli import main

    text = " ".join(CliRunner().invoke(main, ["explain", "--help"]).stdout.split())
    assert "-p, --param VALUE Value of the next placeholder, in order: $1, $2... or psycopg's %s (repeatable)." in text
    assert "Exit 4: the query reads every partition" in text
    assert "2: the query does not parse, its placeholders and --param values do not match" in text


def test_a_query_nested_deeper_than_python_recurses_is_still_judged(db: str) -> None:
    since, _ = _window()
    q = f"SELECT count(*) FROM call_logs WHERE {'NOT ' * 1200}NOT started_at >= '{since}'"  # started_at < since
    report = run_json("explain", "--dsn", db, q)
    assert report["ok"] and report["pruning"] == "plan-time"
    assert 1 <= report["partitions_scanned"] < report["partitions_total"]
