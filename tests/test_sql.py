"""Pure SQL builders and parsers: no database needed."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from callvault.catalog import parse_bound
from callvault.config import Settings, lifecycle_from
from callvault.db import redact
from callvault.partman import PartmanInfo, configure_sql, create_parent_sql
from callvault.schema import COLUMNS, describe_shape_problems

START = datetime(2026, 8, 24, tzinfo=UTC)


@pytest.mark.parametrize(
    ("interval", "v4", "v5"),
    [("daily", "'daily'", "'1 day'"), ("weekly", "'1 week'", "'1 week'"), ("monthly", "'monthly'", "'1 month'")],
)
def test_create_parent_speaks_both_partman_apis(interval: str, v4: str, v5: str) -> None:
    s = Settings(lifecycle=lifecycle_from(interval))
    old = create_parent_sql(s, PartmanInfo("4.7.2", "partman"), START).as_string()
    new = create_parent_sql(s, PartmanInfo("5.2.4", "partman"), START).as_string()
    assert f"p_interval => {v4}" in old and "p_type => 'native'" in old and "p_default_table" not in old
    assert f"p_interval => {v5}" in new and "p_type => 'range'" in new and "p_default_table => false" in new
    for text in (old, new):
        assert "p_start_partition => '2026-08-24 00:00:00+00'" in text
        assert "p_parent_table => 'public.call_logs'" in text


def test_identifiers_and_literals_are_quoted() -> None:
    s = Settings(schema='we"ird', table='t"x')  # a single quote is refused: see test_init
    text = create_parent_sql(s, PartmanInfo("4.7.2", 'part"man'), START).as_string()
    assert '"part""man"."create_parent"' in text
    assert "p_parent_table => 'we\"ird.t\"x'" in text
    conf = configure_sql(s, PartmanInfo("4.7.2", "partman")).as_string()
    assert "retention = '90 days'" in conf and "retention_keep_table = true" in conf


def test_parse_bound() -> None:
    start, end, default = parse_bound("FOR VALUES FROM ('2026-11-16 00:00:00+00') TO ('2026-11-23 00:00:00+00')")
    assert (start, end, default) == (datetime(2026, 11, 16, tzinfo=UTC), datetime(2026, 11, 23, tzinfo=UTC), False)
    assert parse_bound("DEFAULT") == (None, None, True)
    assert parse_bound("FOR VALUES FROM (MINVALUE) TO ('2026-01-01 00:00:00+00')") == (None, None, False)


def test_shape_problems() -> None:
    good = {name: (typ, name in {"id", "tenant_id", "call_id", "started_at"}) for name, typ in COLUMNS.items()}
    assert describe_shape_problems(good, "started_at") == []
    bad = dict(good, tenant_id=("text", True))
    del bad["transcript"]
    problems = describe_shape_problems(bad, None)
    assert "column tenant_id is text, expected uuid" in problems
    assert "column transcript (text) is missing" in problems
    assert any("not partitioned" in p for p in problems)


@pytest.mark.parametrize(
    ("dsn", "shown"),
    [
        ("postgresql://u:secret@h:5432/db", "postgresql://u:***@h:5432/db"),
        ("host=h password=secret dbname=x", "host=h password=*** dbname=x"),
        ("postgresql://h/db", "postgresql://h/db"),
    ],
)
def test_redact(dsn: str, shown: str) -> None:
    assert redact(dsn) == shown
