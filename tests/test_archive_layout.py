"""Pure archive logic: object keys, manifest round trip, archive retention maths, URL parsing."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest
from hypothesis import given
from hypothesis import strategies as st

from callvault.archive import layout
from callvault.archive.layout import Fingerprint, Manifest, ObjectEntry, TenantEntry
from callvault.archive.prune import expires
from callvault.archive.store import LocalStore, S3Store, open_store
from callvault.errors import InvalidSetting
from callvault.plan import Interval, Retention
from callvault.worker import parse_every

T = "00000000-0000-4000-8000-000000000001"
WEEK = datetime(2026, 8, 24, tzinfo=UTC)


def test_keys_are_hive_style_per_tenant_and_period() -> None:
    assert layout.data_key("call_logs", T.upper(), Interval.WEEKLY, WEEK, 0, "parquet") == (
        f"call_logs/tenant_id={T}/week=2026-08-24/part-00000.parquet"
    )
    assert layout.data_key("s.t", T, Interval.MONTHLY, datetime(2026, 8, 1, tzinfo=UTC), 3, "csv").endswith(
        "/month=2026-08-01/part-00003.csv"
    )
    assert layout.manifest_key("call_logs", Interval.DAILY, WEEK) == "call_logs/_manifests/day=2026-08-24.json"
    assert layout.table_dir("public", "call_logs") == "call_logs"
    assert layout.table_dir("tenant data", "call_logs") == "tenant data.call_logs"


def test_manifest_round_trip() -> None:
    entry = TenantEntry(Fingerprint(3, "123", 1, 2), (ObjectEntry("k", 3, 10, "ab"),))
    m = Manifest("public.call_logs", "call_logs_p2026w35", Interval.WEEKLY, WEEK, WEEK.replace(day=31), "parquet",
                 {T: entry}, created_at="now")  # fmt: skip
    again = Manifest.from_json(m.to_json())
    assert again == m and again.rows == 3 and again.period.isoformat() == "2026-08-24"
    pruned = TenantEntry(entry.fingerprint, entry.objects, pruned_at="2027-01-01")
    assert TenantEntry.from_dict(pruned.to_dict()) == pruned


def test_newer_manifest_is_refused_with_the_fix() -> None:
    doc = Manifest("a.b", "p", Interval.WEEKLY, WEEK, WEEK, "parquet", schema_version=99).to_json()
    with pytest.raises(ValueError, match="upgrade callvault"):
        Manifest.from_json(doc)


def test_expiry_adds_months_then_days() -> None:
    end = datetime(2026, 8, 31, tzinfo=UTC)
    assert expires(Retention(months=84, days=0), end) == datetime(2033, 8, 31, tzinfo=UTC)
    assert expires(Retention(months=1, days=0), end) == datetime(2026, 9, 30, tzinfo=UTC)  # clamped
    assert expires(Retention(months=0, days=30), end) == datetime(2026, 9, 30, tzinfo=UTC)


@given(st.dates(min_value=datetime(2000, 1, 1).date(), max_value=datetime(2100, 1, 1).date()))
def test_partition_suffix_round_trips(day: object) -> None:
    ts = datetime.fromisoformat(f"{day}T12:00:00+00:00")
    for interval in Interval:
        start = interval.floor(ts)
        assert interval.from_suffix(interval.suffix(start)) == start
    assert Interval.WEEKLY.from_suffix("p2026w54") is None and Interval.DAILY.from_suffix("default") is None


def test_store_urls() -> None:
    assert isinstance(open_store("file:///tmp/x"), LocalStore) and isinstance(open_store("/tmp/x"), LocalStore)
    assert isinstance(open_store("s3://bucket/some/prefix"), S3Store)
    for bad in ("ftp://h/p", "s3:///nobucket", "file://host/p", "relative/dir"):
        with pytest.raises(InvalidSetting, match=r"archive URL|file URL"):
            open_store(bad)
    with pytest.raises(InvalidSetting, match="escapes"):
        LocalStore(__import__("pathlib").Path("/tmp/x"))._path("../etc/passwd")


def test_worker_period_parsing() -> None:
    assert parse_every("15m") == 900 and parse_every("30s") == 30 and parse_every("2h") == 7200
    assert parse_every("45") == 45
    for bad in ("", "0m", "fast", "-1m"):
        with pytest.raises(InvalidSetting, match="--every"):
            parse_every(bad)
