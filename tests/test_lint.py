"""The static SQL linter: partition-key rules CV000-CV005 over pglast, no database needed."""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from callvault.lint import RULES, Finding, lint_sql

GOOD = (
    "SELECT * FROM call_logs WHERE tenant_id = $1 AND started_at >= '2026-05-01' AND started_at < '2026-05-08' "
    "ORDER BY started_at DESC LIMIT 100"
)
BAD = "SELECT * FROM call_logs WHERE date_trunc('day', started_at) = '2026-05-04'"
PINNED = "started_at >= $1 AND started_at < $2"


def rules(sql: str, **kwargs: str) -> list[str]:
    return [f.rule for f in lint_sql(sql, **kwargs)]


def where(condition: str) -> list[str]:
    return rules(f"SELECT * FROM call_logs WHERE {condition}")


# -- the seed's own examples -----------------------------------------------------------------------


def test_pinned_query_is_clean() -> None:
    assert lint_sql(GOOD) == []


def test_date_trunc_query_reports_cv002_then_cv001() -> None:
    found = lint_sql(BAD)
    assert [f.rule for f in found] == ["CV002", "CV001"]
    cv002 = found[0]
    assert (cv002.line, cv002.statement) == (1, 1)
    assert "date_trunc" in cv002.message
    assert cv002.fix == "started_at >= '2026-05-04' AND started_at < '2026-05-04'::date + 1"
    assert "prun" in cv002.why
    assert found[1].fix == "add AND started_at >= $since AND started_at < $until"


def test_empty_and_comment_only_input() -> None:
    assert lint_sql("") == []
    assert lint_sql("  \n-- nothing here\n/* or here */\n") == []
    assert lint_sql(";;") == []


# -- CV001: no bound on the key --------------------------------------------------------------------


@pytest.mark.parametrize(
    "sql",
    [
        "SELECT * FROM call_logs",
        "SELECT count(*) FROM call_logs WHERE duration_ms > 1000",
        "SELECT * FROM call_logs WHERE started_at IS NOT NULL",
        "SELECT * FROM call_logs WHERE started_at <> $1",
        "SELECT * FROM call_logs WHERE NOT (started_at >= $1)",
        "SELECT * FROM call_logs WHERE started_at NOT BETWEEN $1 AND $2",
        "SELECT * FROM call_logs WHERE started_at NOT IN ($1, $2)",
        "SELECT * FROM call_logs a WHERE a.started_at = started_at",
        "SELECT * FROM call_logs c JOIN agents a ON a.id = c.agent_id WHERE a.started_at >= $1",
        "SELECT * FROM call_logs c LEFT JOIN agents a ON a.id = c.agent_id AND c.started_at >= $1",
        "SELECT * FROM call_logs c FULL JOIN agents a ON a.id = c.agent_id AND c.started_at >= $1",
        "SELECT * FROM call_logs WHERE id IN (SELECT call_id FROM flags WHERE started_at >= $1)",
        "SELECT * FROM call_logs WHERE EXISTS (SELECT 1 FROM flags f WHERE f.started_at >= $1)",
        "UPDATE call_logs SET status = 'done' WHERE id = $1",
        "DELETE FROM call_logs WHERE status = 'spam'",
        "DELETE FROM ONLY call_logs",
        "INSERT INTO archive SELECT * FROM call_logs WHERE status = 'old'",
        "SELECT * FROM other WHERE id IN (SELECT id FROM call_logs)",
        "SELECT * FROM (SELECT * FROM call_logs) s",
        "SELECT * FROM agents UNION ALL SELECT * FROM call_logs",
        "CREATE VIEW v AS SELECT * FROM call_logs",
        "EXPLAIN SELECT * FROM call_logs",
    ],
)
def test_cv001_no_bound(sql: str) -> None:
    assert rules(sql) == ["CV001"]


@pytest.mark.parametrize(
    "condition",
    [
        PINNED,
        "started_at >= $1",
        "started_at > $1",
        "started_at < $1",
        "started_at <= $1",
        "started_at = $1",
        "$1 <= started_at",
        "now() - interval '7 days' < started_at",
        "started_at >= now() - interval '7 days'",
        "started_at >= '2026-05-01'::timestamptz",
        "started_at IN ($1, $2)",
        "started_at = ANY($1)",
        "call_logs.started_at >= $1",
        "public.call_logs.started_at >= $1",
        "status = 'x' AND (started_at >= $1 AND started_at < $2)",
        "started_at >= (SELECT max(started_at) FROM call_logs WHERE started_at > $1)",
        "(started_at >= $1 AND tenant_id = 1) OR (started_at >= $2 AND tenant_id = 2)",
        "started_at < $1 OR started_at >= $2",
        "started_at >= $1 OR (status = 'x' AND started_at >= $2)",
    ],
)
def test_usable_bounds(condition: str) -> None:
    assert where(condition) == []


@pytest.mark.parametrize(
    "sql",
    [
        "SELECT * FROM call_logs c WHERE c.started_at >= $1",
        "SELECT * FROM call_logs AS c WHERE started_at >= $1",
        "SELECT * FROM public.call_logs WHERE started_at >= $1",
        "SELECT * FROM public.call_logs p WHERE p.started_at >= $1 AND p.started_at < $2",
        "SELECT * FROM call_logs c JOIN agents a ON a.id = c.agent_id WHERE c.started_at >= $1",
        "SELECT * FROM agents a JOIN call_logs c ON a.id = c.agent_id AND c.started_at >= $1",
        "SELECT * FROM agents a LEFT JOIN call_logs c ON a.id = c.agent_id AND c.started_at >= $1",
        "SELECT * FROM call_logs c RIGHT JOIN agents a ON a.id = c.agent_id AND c.started_at >= $1",
        "SELECT * FROM agents a, call_logs c WHERE a.id = c.agent_id AND c.started_at >= $1",
        "UPDATE call_logs SET status = 'done' WHERE id = $1 AND started_at >= $2 AND started_at < $3",
        "UPDATE call_logs c SET status = a.x FROM agents a WHERE a.id = c.agent_id AND c.started_at >= $1",
        "DELETE FROM call_logs WHERE started_at < now() - interval '90 days'",
        "DELETE FROM call_logs c USING agents a WHERE a.id = c.agent_id AND c.started_at < $1",
        "INSERT INTO archive SELECT * FROM call_logs WHERE started_at < $1",
        "WITH w AS (SELECT * FROM call_logs WHERE started_at >= $1) SELECT * FROM w",
        "SELECT * FROM agents WHERE id IN (SELECT agent_id FROM call_logs WHERE started_at >= $1)",
    ],
)
def test_aliases_joins_and_statements_with_a_bound_are_clean(sql: str) -> None:
    assert rules(sql) == []


@pytest.mark.parametrize(
    "sql",
    [
        "SELECT * FROM agents",
        "SELECT date_trunc('day', started_at) FROM sessions WHERE started_at BETWEEN $1 AND $2",
        "SELECT * FROM call_logs_archive",
        "SELECT * FROM other_schema_view WHERE call_logs = 1",
        "INSERT INTO call_logs (tenant_id, started_at) VALUES ($1, $2), ($3, $4)",
        "INSERT INTO call_logs SELECT * FROM staging",
        "CREATE TABLE call_logs (id bigint, started_at timestamptz) PARTITION BY RANGE (started_at)",
        "CREATE INDEX ON call_logs (tenant_id, started_at)",
        "ALTER TABLE call_logs ADD COLUMN x int",
        "VACUUM call_logs",
        "SET search_path = public",
        "WITH call_logs AS (SELECT 1 AS x) SELECT 2",
    ],
)
def test_statements_that_do_not_read_the_table_are_ignored(sql: str) -> None:
    assert rules(sql) == []


def test_a_bound_outside_does_not_excuse_a_subquery_or_cte() -> None:
    sql = "WITH w AS (SELECT * FROM call_logs WHERE status = 'x') SELECT * FROM w WHERE started_at >= $1"
    assert rules(sql) == ["CV001"]
    sql = "SELECT * FROM (SELECT * FROM call_logs) s WHERE s.started_at >= $1"
    assert rules(sql) == ["CV001"]


def test_every_reference_of_a_self_join_needs_its_own_bound() -> None:
    sql = "SELECT * FROM call_logs a JOIN call_logs b ON b.parent_id = a.id WHERE a.started_at >= $1"
    (finding,) = lint_sql(sql)
    assert finding.rule == "CV001"
    assert "call_logs b" in finding.message
    assert finding.fix == "add AND b.started_at >= $since AND b.started_at < $until"
    assert rules(sql + " AND b.started_at >= $2") == []


def test_fix_spells_the_alias() -> None:
    (finding,) = lint_sql("SELECT * FROM call_logs c WHERE c.status = 'x'")
    assert finding.fix == "add AND c.started_at >= $since AND c.started_at < $until"


# -- CV002: the key wrapped ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("condition", "fix"),
    [
        (
            "date_trunc('day', started_at) = '2026-05-04'",
            "started_at >= '2026-05-04' AND started_at < '2026-05-04'::date + 1",
        ),
        ("date_trunc('day', started_at) >= $1", "started_at >= $1"),
        ("date_trunc('day', started_at) > $1", "started_at >= $1::date + 1"),
        ("date_trunc('day', started_at) < $1", "started_at < $1"),
        ("date_trunc('day', started_at) <= $1", "started_at < $1::date + 1"),
        ("$1 >= date_trunc('day', started_at)", "started_at < $1::date + 1"),
        (
            "date_trunc('week', started_at) = $1",
            "started_at >= $1 AND started_at < $1::timestamptz + interval '1 week'",
        ),
        ("date_trunc('MONTH', started_at) > $1", "started_at >= $1::timestamptz + interval '1 month'"),
        ("started_at::date = '2026-05-04'", "started_at >= '2026-05-04' AND started_at < '2026-05-04'::date + 1"),
        ("CAST(started_at AS date) = $1", "started_at >= $1 AND started_at < $1::date + 1"),
        ("started_at::date BETWEEN $1 AND $2", "started_at >= $1 AND started_at < $2::date + 1"),
        (
            "started_at::date = current_date - 1",
            "started_at >= CURRENT_DATE - 1 AND started_at < (CURRENT_DATE - 1)::date + 1",
        ),
        ("started_at AT TIME ZONE 'UTC' >= $1", "started_at >= $1 AT TIME ZONE 'UTC'"),
        (
            "started_at AT TIME ZONE 'America/New_York' < '2026-05-04'",
            "started_at < '2026-05-04' AT TIME ZONE 'America/New_York'",
        ),
        (
            "started_at AT TIME ZONE 'UTC' BETWEEN $1 AND $2",
            "started_at >= $1 AT TIME ZONE 'UTC' AND started_at < $2 AT TIME ZONE 'UTC'",
        ),
    ],
)
def test_cv002_concrete_rewrites(condition: str, fix: str) -> None:
    found = lint_sql(f"SELECT * FROM call_logs WHERE {condition}")
    assert [f.rule for f in found] == ["CV002", "CV001"]
    assert found[0].fix == fix
    assert lint_sql(f"SELECT * FROM call_logs WHERE {fix}") == []  # the rewrite is itself clean


@pytest.mark.parametrize(
    "condition",
    [
        "extract(hour from started_at) = 3",
        "extract(epoch from started_at) > $1",
        "date_part('dow', started_at) = 0",
        "to_char(started_at, 'YYYY-MM') = '2026-05'",
        "started_at::timestamp > $1",
        "started_at::text LIKE '2026-05%'",
        "started_at + interval '1 day' > now()",
        "now() - started_at < interval '1 hour'",
        "date_trunc($1, started_at) = $2",
        "date_trunc('day', started_at AT TIME ZONE 'UTC') = $1",
        "date_trunc('day', started_at) IN ($1, $2)",
        "coalesce(started_at::date, current_date) = $1",
        "age(started_at) < interval '7 days'",
        "lower(started_at::text) = $1",
    ],
)
def test_cv002_wrappers_with_a_generic_fix(condition: str) -> None:
    found = lint_sql(f"SELECT * FROM call_logs c WHERE {condition}")
    assert [f.rule for f in found] == ["CV002", "CV001"]
    assert "c.started_at >= <start> AND c.started_at < <end>" in found[0].fix


@pytest.mark.parametrize(
    "sql",
    [
        f"SELECT * FROM call_logs WHERE {PINNED} AND extract(hour from started_at) = 3",
        f"SELECT * FROM call_logs WHERE {PINNED} AND (status = 'x' OR started_at::date = $3)",
        f"SELECT * FROM call_logs c JOIN agents a ON a.day = c.started_at::date WHERE c.{PINNED}",
        f"UPDATE call_logs SET x = 1 WHERE {PINNED} AND to_char(started_at, 'HH24') = '03'",
        f"DELETE FROM call_logs WHERE {PINNED} AND started_at AT TIME ZONE 'UTC' > $3",
    ],
)
def test_cv002_alone_when_a_raw_bound_exists(sql: str) -> None:
    assert rules(sql) == ["CV002"]


@pytest.mark.parametrize(
    "sql",
    [
        f"SELECT date_trunc('day', started_at) AS day, count(*) FROM call_logs WHERE {PINNED} GROUP BY 1",
        f"SELECT started_at::date FROM call_logs WHERE {PINNED} ORDER BY started_at AT TIME ZONE 'UTC'",
        f"SELECT * FROM call_logs c JOIN agents a ON date_trunc('day', a.started_at) = a.day WHERE c.{PINNED}",
        f"SELECT * FROM call_logs WHERE {PINNED} AND ended_at::date = $3",
        f"SELECT * FROM call_logs WHERE {PINNED} AND started_at >= $3::date",
        f"SELECT * FROM call_logs WHERE {PINNED} AND started_at >= date_trunc('day', now())",
        f"SELECT * FROM call_logs WHERE {PINNED} AND id IN (SELECT id FROM x WHERE started_at::date = $3)",
    ],
)
def test_functions_elsewhere_or_on_other_columns_are_fine(sql: str) -> None:
    assert rules(sql) == []


def test_cv002_line_points_at_the_expression() -> None:
    sql = "SELECT *\nFROM call_logs\nWHERE started_at >= $1\n  AND started_at < $2\n  AND started_at::date <> $3"
    (finding,) = lint_sql(sql)
    assert (finding.rule, finding.line) == ("CV002", 5)


# -- CV003: BETWEEN on the key ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("condition", "fix"),
    [
        ("started_at BETWEEN $1 AND $2", "started_at >= $1 AND started_at < $2"),
        (
            "started_at BETWEEN '2026-05-01' AND '2026-05-08'",
            "started_at >= '2026-05-01' AND started_at < '2026-05-08'",
        ),
        ("started_at BETWEEN SYMMETRIC $1 AND $2", "started_at >= $1 AND started_at < $2"),
        ("tenant_id = $3 AND started_at BETWEEN $1 AND $2", "started_at >= $1 AND started_at < $2"),
    ],
)
def test_cv003_between(condition: str, fix: str) -> None:
    (finding,) = lint_sql(f"SELECT * FROM call_logs WHERE {condition}")
    assert finding.rule == "CV003"
    assert finding.fix.startswith(fix)
    assert "upper bound" in finding.message


def test_cv003_with_alias_and_not_on_other_columns() -> None:
    (finding,) = lint_sql("SELECT * FROM call_logs c WHERE c.started_at BETWEEN $1 AND $2")
    assert finding.fix.startswith("c.started_at >= $1 AND c.started_at < $2")
    assert where(f"{PINNED} AND ended_at BETWEEN $3 AND $4") == []
    assert where(f"{PINNED} AND $3 BETWEEN started_at AND ended_at") == []


# -- CV004: tenant filter alone --------------------------------------------------------------------


@pytest.mark.parametrize(
    "sql",
    [
        "SELECT * FROM call_logs WHERE tenant_id = $1",
        "SELECT * FROM call_logs WHERE tenant_id = $1 ORDER BY started_at DESC LIMIT 50",
        "SELECT * FROM call_logs WHERE tenant_id IN ($1, $2) AND status = 'x'",
        "SELECT * FROM call_logs c WHERE c.tenant_id = $1",
        "SELECT * FROM call_logs WHERE (tenant_id = 1 OR tenant_id = 2)",
        "DELETE FROM call_logs WHERE tenant_id = $1",
        "UPDATE call_logs SET x = 1 WHERE tenant_id = $1 AND id = $2",
    ],
)
def test_cv004_tenant_only(sql: str) -> None:
    found = lint_sql(sql)
    assert [f.rule for f in found] == ["CV004"]  # replaces CV001
    assert "pin the window" in found[0].fix


def test_cv004_with_a_wrapped_key_and_not_for_another_tables_tenant() -> None:
    assert where("tenant_id = $1 AND started_at::date = $2") == ["CV002", "CV004"]
    assert rules("SELECT * FROM call_logs c JOIN agents a ON a.id = c.agent_id WHERE a.tenant_id = $1") == ["CV001"]


def test_tenant_argument() -> None:
    assert rules("SELECT * FROM call_logs WHERE org_id = $1", tenant="org_id") == ["CV004"]
    assert rules("SELECT * FROM call_logs WHERE tenant_id = $1", tenant="org_id") == ["CV001"]


# -- CV005: OR defeating pruning -------------------------------------------------------------------


@pytest.mark.parametrize(
    "condition",
    [
        "started_at >= $1 OR tenant_id = $2",
        "tenant_id = $2 OR started_at >= $1",
        "status = 'x' OR (started_at >= $1 AND started_at < $2)",
        "tenant_id = $3 AND (started_at >= $1 OR status = 'open')",
        "(started_at >= $1 AND tenant_id = 1) OR tenant_id = 2",
        "started_at >= $1 OR started_at::date = $2",
        "started_at >= $1 OR started_at IS NULL",
    ],
)
def test_cv005_bound_only_in_some_or_branches(condition: str) -> None:
    found = [r for r in where(condition) if r != "CV002"]
    assert found == ["CV005"]  # replaces CV001/CV004


def test_cv005_fix() -> None:
    (finding,) = lint_sql("SELECT * FROM call_logs WHERE started_at >= $1 OR tenant_id = $2")
    assert "out of the OR" in finding.fix
    assert "UNION ALL" in finding.fix


# -- placeholders, lines, statements ---------------------------------------------------------------


@pytest.mark.parametrize(
    ("sql", "expected"),
    [
        ("SELECT * FROM call_logs WHERE tenant_id = %s AND started_at >= %s AND started_at < %s", []),
        ("SELECT * FROM call_logs WHERE tenant_id = %(tenant)s AND started_at >= %(since)s", []),
        ("SELECT * FROM call_logs WHERE tenant_id = %s", ["CV004"]),
        ("SELECT * FROM call_logs WHERE tenant_id = %(t)s", ["CV004"]),
        ("SELECT * FROM call_logs WHERE started_at >= %b AND note LIKE 'a%%'", []),
        ("SELECT * FROM call_logs WHERE started_at >= %s AND x %% 2 = 0", []),
        ("SELECT * FROM call_logs WHERE date_trunc('day', started_at) = %(day)s", ["CV002", "CV001"]),
    ],
)
def test_psycopg_placeholders(sql: str, expected: list[str]) -> None:
    assert rules(sql) == expected


def test_placeholders_keep_line_numbers() -> None:
    sql = "SELECT %(a_long_name)s, %s;\nSELECT *\n  FROM call_logs\n WHERE started_at::date = %(day)s"
    assert [(f.rule, f.line, f.statement) for f in lint_sql(sql)] == [("CV002", 4, 2), ("CV001", 3, 2)]


def test_placeholder_fix_uses_a_param() -> None:
    (cv002, _) = lint_sql("SELECT * FROM call_logs WHERE started_at::date = %s")
    assert cv002.fix == "started_at >= $1 AND started_at < $1::date + 1"


MULTI = """\
-- daily report: fine
SELECT tenant_id, count(*)
  FROM call_logs
 WHERE started_at >= $1 AND started_at < $2
 GROUP BY 1;

/* the dashboard; "started_at" mentioned in a comment
   does not count */
SELECT *
  FROM call_logs c
  JOIN agents a ON a.id = c.agent_id
 WHERE c.tenant_id = $1;

SELECT 1; -- not about call_logs

WITH recent AS (
  SELECT * FROM public.call_logs
   WHERE started_at BETWEEN $1 AND $2
)
SELECT * FROM recent;
DELETE FROM call_logs
 WHERE date_trunc('month', started_at) < $1
"""


def test_multi_statement_file() -> None:
    found = [(f.rule, f.line, f.statement) for f in lint_sql(MULTI)]
    assert found == [("CV004", 10, 2), ("CV003", 18, 4), ("CV002", 22, 5), ("CV001", 21, 5)]
    cv002 = lint_sql(MULTI)[-2]
    assert cv002.fix == "started_at < $1"


def test_statement_index_counts_statements_not_semicolons_in_strings() -> None:
    sql = "SELECT ';;' ;\n\nSELECT * FROM call_logs WHERE note = 'a;b'"
    (finding,) = lint_sql(sql)
    assert (finding.rule, finding.line, finding.statement) == ("CV001", 3, 2)


# -- table / key arguments -------------------------------------------------------------------------


def test_table_argument() -> None:
    sql = "SELECT * FROM events WHERE tenant_id = $1; SELECT * FROM call_logs"
    assert [(f.rule, f.statement) for f in lint_sql(sql, table="events")] == [("CV004", 1)]
    assert [(f.rule, f.statement) for f in lint_sql(sql)] == [("CV001", 2)]
    (finding,) = lint_sql("SELECT * FROM events", table="events")
    assert "events" in finding.message
    assert "events" in finding.why


def test_schema_qualified_table_argument() -> None:
    assert rules("SELECT * FROM public.call_logs", table="public.call_logs") == ["CV001"]
    assert rules("SELECT * FROM call_logs", table="public.call_logs") == ["CV001"]
    assert rules("SELECT * FROM archive.call_logs", table="public.call_logs") == []
    assert rules("SELECT * FROM archive.call_logs") == ["CV001"]


def test_key_argument() -> None:
    assert rules("SELECT * FROM call_logs WHERE created_at >= $1", key="created_at") == []
    assert rules("SELECT * FROM call_logs WHERE started_at >= $1", key="created_at") == ["CV001"]
    assert rules("SELECT * FROM call_logs WHERE created_at::date = $1", key="created_at") == ["CV002", "CV001"]


# -- CV000: does not parse -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("sql", "line", "statement"),
    [
        ("SELECT * FROM", 1, 1),
        ("SELEC * FROM call_logs", 1, 1),
        ("SELECT 1;\n\nSELECT * FROM call_logs WHERE started_at >= = $1", 3, 2),
        ("SELECT 1;\nSELECT 2;\nSELECT 'unterminated", 3, 3),
        ("SELECT 1; /* unterminated\n comment", 1, 2),
        ("SELECT * FROM call_logs WHERE x = {{ jinja }}", 1, 1),
        ("SELECT 1;\nSELECT \x00", 2, 2),
        ("SELECT '\ud800'", 1, 1),
    ],
)
def test_cv000_syntax_error(sql: str, line: int, statement: int) -> None:
    (finding,) = lint_sql(sql)
    assert (finding.rule, finding.line, finding.statement) == ("CV000", line, statement)
    assert finding.message.startswith("SQL does not parse: ")


def test_cv000_carries_the_parser_message() -> None:
    (finding,) = lint_sql("SELECT * FROM call_logs WHERE started_at >= = $1")
    assert 'syntax error at or near "="' in finding.message


@given(st.text(max_size=200))
def test_never_raises(text: str) -> None:
    for finding in lint_sql(text):
        assert finding.rule in RULES


@given(st.sampled_from(["SELECT", "FROM", "call_logs", "WHERE", "started_at", ">=", "$1", "AND", "OR", "(", ")", ";"]))
def test_never_raises_on_sql_shaped_input(word: str) -> None:
    text = f"SELECT * FROM call_logs WHERE {word} {word}"
    assert all(f.rule in RULES for f in lint_sql(text))


# -- the API ---------------------------------------------------------------------------------------


def test_finding_shape() -> None:
    finding = lint_sql(BAD)[0]
    assert finding.to_dict() == {
        "rule": "CV002",
        "line": 1,
        "statement": 1,
        "message": finding.message,
        "why": finding.why,
        "fix": finding.fix,
    }
    with pytest.raises(dataclasses.FrozenInstanceError):
        finding.rule = "CV999"  # type: ignore[misc]
    assert isinstance(finding, Finding)


def test_rules_table() -> None:
    assert set(RULES) == {"CV000", "CV001", "CV002", "CV003", "CV004", "CV005"}
    assert all(title and "\n" not in title for title in RULES.values())


@pytest.mark.parametrize(
    "sql",
    [
        BAD,
        MULTI,
        "SELECT * FROM call_logs WHERE started_at >= $1 OR tenant_id = $2",
        "SELECT * FROM",
        "SELECT 1 FROM call_logs",
    ],
)
def test_every_finding_is_complete(sql: str) -> None:
    for finding in lint_sql(sql):
        assert finding.rule in RULES
        assert finding.line >= 1 and finding.statement >= 1
        assert finding.message and finding.why and finding.fix


# -- issue 13: a statement that does not parse hides nothing else -----------------------------------

BROKEN_MIDDLE = """\
SELECT * FROM call_logs;
SELEC tenant_id FROM call_logs;
SELECT * FROM call_logs WHERE tenant_id = $1;
"""


def test_a_statement_that_does_not_parse_does_not_hide_the_others() -> None:
    found = lint_sql(BROKEN_MIDDLE)
    assert [(f.rule, f.line, f.statement) for f in found] == [("CV001", 1, 1), ("CV000", 2, 2), ("CV004", 3, 3)]
    assert found[1].message == 'SQL does not parse: syntax error at or near "SELEC"'
    assert found[1].why == "this statement cannot be checked until it parses; every other statement was checked"


@pytest.mark.parametrize(
    ("sql", "expected"),
    [
        # the scanner stops at a bad token; the statements after it are still found
        (
            "SELECT 123abc FROM call_logs;\nSELECT * FROM call_logs",
            [("CV000", 1, 1), ("CV001", 2, 2)],
        ),
        (
            "SELECT * FROM call_logs WHERE x = 0x;\nSELECT * FROM call_logs WHERE tenant_id = $1",
            [("CV000", 1, 1), ("CV004", 2, 2)],
        ),
        # an unterminated string swallows the rest, for Postgres too
        ("SELECT * FROM call_logs;\nSELECT 'oops;\nSELECT * FROM call_logs", [("CV001", 1, 1), ("CV000", 2, 2)]),
        (
            "SELECT * FROM call_logs;\nSELECT '\x00';\nSELECT * FROM call_logs",
            [("CV001", 1, 1), ("CV000", 2, 2), ("CV001", 3, 3)],
        ),
        (
            "SELECT * FROM call_logs;\nSELECT '\udcff';\nSELECT * FROM call_logs",
            [("CV001", 1, 1), ("CV000", 2, 2), ("CV001", 3, 3)],
        ),
        # empty statements are not counted, in either path
        (
            "SELECT * FROM call_logs;;\nSELEC;\n;SELECT * FROM call_logs",
            [("CV001", 1, 1), ("CV000", 2, 2), ("CV001", 3, 3)],
        ),
        # a SQL-standard function body keeps its semicolons
        (
            "CREATE FUNCTION f() RETURNS int LANGUAGE sql\nBEGIN ATOMIC SELECT 1; SELECT 2; END;\n"
            "SELEC;\nSELECT * FROM call_logs",
            [("CV000", 3, 2), ("CV001", 4, 3)],
        ),
    ],
)
def test_every_parsable_statement_is_checked(sql: str, expected: list[tuple[str, int, int]]) -> None:
    assert [(f.rule, f.line, f.statement) for f in lint_sql(sql)] == expected


def test_statement_numbers_agree_whether_or_not_something_fails() -> None:
    good = "CREATE FUNCTION f() RETURNS int LANGUAGE sql\nBEGIN ATOMIC SELECT 1; SELECT 2; END;\nSELECT 1;\n"
    tail = "SELECT * FROM call_logs"
    assert [(f.line, f.statement) for f in lint_sql(good + tail)] == [(4, 3)]
    assert [(f.line, f.statement) for f in lint_sql(good.replace("SELECT 1;\n", "SELEC;\n") + tail)] == [
        (3, 2),
        (4, 3),
    ]


@pytest.mark.parametrize(
    ("bad", "message", "fix"),
    [
        ("SELECT '\x00'", "SQL does not parse: NUL character in the input", "remove the NUL character"),
        ("SELECT '\udcff'", "SQL does not parse: byte 0xff is not valid UTF-8", "save the file as UTF-8"),
        ("SELECT '\ud800'", "SQL does not parse: lone surrogate U+D800 is not valid UTF-8", "save the file as UTF-8"),
        (
            "SELECT * FROM call_logs WHERE x = {{ jinja }}",
            'SQL does not parse: syntax error at or near "{"',
            "fix the syntax",
        ),
    ],
)
def test_cv000_says_what_to_do(bad: str, message: str, fix: str) -> None:
    (finding,) = lint_sql(bad)
    assert finding.message == message
    assert finding.fix.startswith(fix)


def test_a_statement_nested_too_deeply_to_check_is_cv000_not_a_crash() -> None:
    deep = "SELECT * FROM call_logs WHERE " + "abs(" * 3000 + "started_at" + ")" * 3000 + " > 0"
    found = lint_sql(f"SELECT * FROM call_logs;\n{deep};\nSELECT * FROM call_logs WHERE tenant_id = $1")
    assert [(f.rule, f.line, f.statement) for f in found] == [("CV001", 1, 1), ("CV000", 2, 2), ("CV004", 3, 3)]
    assert found[1].message == "SQL too deeply nested to check"


# -- issue 13: placeholders ------------------------------------------------------------------------

EQUIVALENT_BOUNDS = [
    "started_at >= {0}",
    "started_at >= {0} AND started_at < {1}",
    "{0} <= started_at",
    "started_at IN ({0}, {1})",
    "tenant_id = {0} AND started_at >= {1}",
    "tenant_id = {0}",
    "started_at >= {0} OR tenant_id = {1}",
    "date_trunc('day', started_at) = {0}",
    "started_at::date = {0}",
    "started_at BETWEEN {0} AND {1}",
    "started_at AT TIME ZONE 'UTC' >= {0}",
]


@pytest.mark.parametrize("condition", EQUIVALENT_BOUNDS)
def test_placeholders_pin_the_key_exactly_like_literals(condition: str) -> None:
    literal = where(condition.format("'2026-05-01'", "'2026-05-08'"))
    assert where(condition.format("$1", "$2")) == literal
    assert where(condition.format("%s", "%s")) == literal
    assert where(condition.format("%(since)s", "%(until)s")) == literal
    assert where(condition.format("$1::timestamptz", "$2::timestamptz")) == literal


def test_psycopg_placeholders_are_numbered_in_order() -> None:
    (finding,) = lint_sql("SELECT * FROM call_logs WHERE started_at BETWEEN %s AND %s")
    assert finding.message == "BETWEEN on started_at includes the upper bound: started_at BETWEEN $1 AND $2"
    assert finding.fix.startswith("started_at >= $1 AND started_at < $2 ")


def test_psycopg_placeholders_are_numbered_per_statement() -> None:
    sql = "SELECT %s, %s, %s;\nSELECT * FROM call_logs WHERE tenant_id = %s AND started_at BETWEEN %s AND %s"
    (finding,) = lint_sql(sql)
    assert (finding.rule, finding.line, finding.statement) == ("CV003", 2, 2)
    assert finding.fix.startswith("started_at >= $2 AND started_at < $3 ")


def test_named_placeholders_are_spelled_as_written() -> None:
    cv002, _ = lint_sql("SELECT * FROM call_logs WHERE started_at::date = %(day)s")
    assert cv002.message == "started_at is wrapped in a cast to date: CAST(started_at AS date) = %(day)s"
    assert cv002.fix == "started_at >= %(day)s AND started_at < %(day)s::date + 1"
    (cv003,) = lint_sql("SELECT * FROM call_logs WHERE started_at BETWEEN %(a)s AND %(b)s AND tenant_id = %(a)s")
    assert cv003.fix.startswith("started_at >= %(a)s AND started_at < %(b)s ")


def test_ten_or_more_placeholders_keep_lines() -> None:
    sql = "SELECT * FROM call_logs\n WHERE x IN (" + ", ".join(["%s"] * 12) + ")\n   AND started_at::date = %s"
    cv002, cv001 = lint_sql(sql)
    assert (cv002.rule, cv002.line, cv002.fix) == ("CV002", 3, "started_at >= $13 AND started_at < $13::date + 1")
    assert (cv001.rule, cv001.line) == ("CV001", 1)


def test_percent_in_a_plain_string_literal_is_harmless() -> None:
    assert rules("SELECT * FROM call_logs WHERE transcript LIKE '%sorry%' AND started_at >= $1") == []
    assert rules("SELECT * FROM call_logs WHERE transcript LIKE '%sorry%'") == ["CV001"]


# -- issue 13: the command -------------------------------------------------------------------------


def lint_cli(*args: str, stdin: bytes | None = None) -> tuple[int, str, str]:
    from click.testing import CliRunner

    from callvault.cli import main

    res = CliRunner().invoke(main, ["lint", *args], input=stdin, catch_exceptions=False)
    return res.exit_code, res.stdout, res.stderr


@pytest.fixture
def sql_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.chdir(tmp_path)
    (tmp_path / "good.sql").write_text("SELECT * FROM call_logs WHERE started_at >= $1 AND started_at < $2;\n")
    (tmp_path / "bad.sql").write_text("SELECT * FROM call_logs WHERE tenant_id = $1;\n")
    (tmp_path / "broken.sql").write_text(BROKEN_MIDDLE)
    return tmp_path


def test_cli_clean_file_exits_zero(sql_dir: Path) -> None:
    assert lint_cli("good.sql") == (0, "0 finding(s)\n", "")


def test_cli_findings_exit_4(sql_dir: Path) -> None:
    code, out, err = lint_cli("good.sql", "bad.sql")
    assert code == 4
    assert out.splitlines()[0] == "bad.sql:1: CV004 call_logs is filtered on tenant_id but not on started_at"
    assert out.splitlines()[-1] == "1 finding(s)"
    assert err == "error: 1 lint finding(s) (bad.sql:1): rewrite each as its fix says, then run again\n"


def test_cli_parse_error_has_its_own_exit_code_and_hides_nothing(sql_dir: Path) -> None:
    code, out, err = lint_cli("broken.sql", "bad.sql")
    assert code == 5
    heads = [line for line in out.splitlines() if not line.startswith("    ")]
    assert heads == [
        "broken.sql:1: CV001 call_logs is read with no bound on started_at",
        'broken.sql:2: CV000 SQL does not parse: syntax error at or near "SELEC"',
        "broken.sql:3: CV004 call_logs is filtered on tenant_id but not on started_at",
        "bad.sql:1: CV004 call_logs is filtered on tenant_id but not on started_at",
        "4 finding(s)",
    ]
    assert err == (
        "error: 1 statement(s) do not parse (broken.sql:2): fix the syntax and run again; "
        "every other statement was checked (3 other finding(s))\n"
    )


def test_cli_json_keeps_its_shape_with_a_parse_error(sql_dir: Path) -> None:
    import json

    code, out, err = lint_cli("broken.sql", "--json")
    assert code == 5
    assert [(f["file"], f["rule"], f["line"], f["statement"]) for f in json.loads(out)] == [
        ("broken.sql", "CV001", 1, 1),
        ("broken.sql", "CV000", 2, 2),
        ("broken.sql", "CV004", 3, 3),
    ]
    assert err.count("\n") == 1 and err.startswith("error: 1 statement(s) do not parse (broken.sql:2)")


def test_cli_missing_file_is_one_line(sql_dir: Path) -> None:
    assert lint_cli("nope.sql") == (
        2,
        "",
        "error: cannot read nope.sql: no such file: pass an existing SQL file, or - to read stdin\n",
    )


def test_cli_directory_is_one_line(sql_dir: Path) -> None:
    (sql_dir / "queries").mkdir()
    assert lint_cli("queries") == (
        2,
        "",
        "error: cannot read queries: it is a directory: pass the SQL files in it (e.g. queries/*.sql)\n",
    )


def test_cli_unreadable_file_is_one_line(sql_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (sql_dir / "secret.sql").write_text("SELECT 1")
    (sql_dir / "secret.sql").chmod(0)
    if os.geteuid() == 0:  # root reads anything: fail the read the way chmod 0 does for anyone else
        real = Path.read_bytes

        def read_bytes(self: Path) -> bytes:
            if self.name == "secret.sql":
                raise PermissionError(13, "Permission denied", str(self))
            return real(self)

        monkeypatch.setattr(Path, "read_bytes", read_bytes)
    assert lint_cli("secret.sql") == (
        2,
        "",
        "error: cannot read secret.sql: permission denied: make it readable (chmod) or run as a user who can\n",
    )


def test_cli_missing_file_does_not_hide_the_other_files(sql_dir: Path) -> None:
    code, out, err = lint_cli("bad.sql", "gone.sql", "good.sql")
    assert code == 2
    assert out.splitlines()[0] == "bad.sql:1: CV004 call_logs is filtered on tenant_id but not on started_at"
    assert out.splitlines()[-1] == "1 finding(s)"
    assert err == (
        "error: cannot read gone.sql: no such file: pass an existing SQL file, or - to read stdin; "
        "the files that could be read have 1 finding(s)\n"
    )


def test_cli_file_that_is_not_utf8(sql_dir: Path) -> None:
    (sql_dir / "latin1.sql").write_bytes(
        b"SELECT * FROM call_logs;\nSELECT * FROM call_logs WHERE note = 'caf\xe9';\nSELECT 1 FROM call_logs c\n"
    )
    code, out, _ = lint_cli("latin1.sql")
    assert code == 5
    heads = [line for line in out.splitlines() if not line.startswith("    ")]
    assert heads == [
        "latin1.sql:1: CV001 call_logs is read with no bound on started_at",
        "latin1.sql:2: CV000 SQL does not parse: byte 0xe9 is not valid UTF-8",
        "latin1.sql:3: CV001 call_logs c is read with no bound on started_at",
        "3 finding(s)",
    ]
    assert "    fix: save the file as UTF-8" in out


def test_cli_utf16_and_bom_files_are_read(sql_dir: Path) -> None:
    (sql_dir / "utf16.sql").write_bytes("SELECT * FROM call_logs WHERE tenant_id = $1\n".encode("utf-16"))
    (sql_dir / "bom.sql").write_bytes(b"\xef\xbb\xbfSELECT * FROM call_logs\n")
    code, out, _ = lint_cli("utf16.sql", "bom.sql")
    assert code == 4
    assert [line for line in out.splitlines() if not line.startswith("    ")] == [
        "utf16.sql:1: CV004 call_logs is filtered on tenant_id but not on started_at",
        "bom.sql:1: CV001 call_logs is read with no bound on started_at",
        "2 finding(s)",
    ]


def test_cli_stdin(sql_dir: Path) -> None:
    code, out, _ = lint_cli("-", stdin=b"SELECT * FROM call_logs WHERE started_at::date = %s")
    assert code == 4
    assert out.splitlines()[0] == "-:1: CV002 started_at is wrapped in a cast to date: CAST(started_at AS date) = $1"
    assert lint_cli(stdin=b"SELECT * FROM call_logs WHERE started_at >= $1") == (0, "0 finding(s)\n", "")
    assert lint_cli("-", stdin=b"SELECT 'caf\xe9'")[0] == 5


def test_cli_help_documents_the_exit_codes() -> None:
    code, out, _ = lint_cli("--help")
    assert code == 0
    text = " ".join(out.split())
    assert "Exit 0: clean; 4: findings; 5: a statement does not parse (CV000)" in text
    assert "2: a file cannot be read" in text


def test_cli_prints_sql_that_looks_like_markup_as_it_is(sql_dir: Path) -> None:
    (sql_dir / "[i]weird.sql").write_text("SELECT * FROM call_logs WHERE started_at::date = days[i]")
    code, out, _ = lint_cli("[i]weird.sql")
    assert code == 4
    assert out.splitlines()[0] == (
        "[i]weird.sql:1: CV002 started_at is wrapped in a cast to date: CAST(started_at AS date) = (days)[i]"
    )
