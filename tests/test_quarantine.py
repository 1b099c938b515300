"""Quarantine fidelity (issue 12, item 7), against the real database.

What the writer refuses is quarantined with its reason while the good rows of the batch land; the
quarantine keeps every field it can hold faithfully as that field's own JSON value, and a value it
cannot hold is stored in a tagged encoding that marks it as not the original. ``replay`` lands a row
only when it is exactly what the producer sent and the writer's own validation now accepts it, and
it lands it exactly once.
"""

from __future__ import annotations

import asyncio
import json
import threading
import uuid
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal
from typing import Any

import psycopg
import pytest

from callvault.config import Settings
from callvault.db import connect
from callvault.ingest import AsyncWriter, Call, Writer
from callvault.ingest import quarantine as q
from tests.helpers import make_calls, run, run_json


@pytest.fixture
def ready(dsn: str) -> str:
    run("init", "--dsn", dsn)
    return dsn


def count(dsn: str, where: str = "true", params: tuple[object, ...] = ()) -> int:
    with psycopg.connect(dsn) as c:
        return int(c.execute(f"SELECT count(*) FROM call_logs WHERE {where}", params).fetchone()[0])


def quarantine_rows(dsn: str) -> list[tuple[int, str, str, int]]:
    with psycopg.connect(dsn) as c:
        return c.execute("SELECT id, reason, raw, attempts FROM callvault.quarantine ORDER BY id").fetchall()


def fields_of(raw: str) -> dict[str, Any]:
    """The row-shaped part of a quarantined ``raw`` (the stored fields by name; {} when there is none)."""
    doc = json.loads(raw)
    if isinstance(doc, dict) and isinstance(doc.get("$input"), dict):
        doc = doc["$input"]
    return doc if isinstance(doc, dict) else {}


def replay(dsn: str, **kw: Any) -> q.ReplayReport:
    settings = Settings(dsn=dsn)
    with connect(settings) as conn:
        return q.replay(conn, settings, **kw)


def deep(n: int) -> dict[str, Any]:
    d: dict[str, Any] = {"leaf": "bottom"}
    for _ in range(n):
        d = {"d": d}
    return d


def cyclic() -> dict[str, Any]:
    d: dict[str, Any] = {"name": "loop"}
    d["self"] = d
    return d


class BadRepr:
    def __repr__(self) -> str:
        raise RuntimeError("no repr for you")


@dataclass
class Point:
    x: int
    y: int


@dataclass
class NotACall:
    """Has exactly Call's fields, but is not a Call: the writer refuses it."""

    tenant_id: uuid.UUID
    call_id: uuid.UUID
    started_at: datetime
    ended_at: datetime | None = None
    duration_sec: int | None = None
    transcript: str | None = None
    metadata: dict[str, Any] | None = None


NOW = datetime.now(UTC) - timedelta(hours=1)
TENANT = uuid.uuid4()

# name -> (fields to override in a valid row, the field the reason must name)
BAD: dict[str, tuple[dict[str, Any], str]] = {
    "object": ({"metadata": {"o": object()}}, "metadata"),
    "decimal": ({"metadata": {"price": Decimal("1.10")}}, "metadata"),
    "nan": ({"metadata": {"x": float("nan")}}, "metadata"),
    "inf": ({"metadata": {"x": [1, float("inf")]}}, "metadata"),
    "-inf": ({"metadata": {"x": float("-inf")}}, "metadata"),
    "bytes": ({"metadata": {"b": b"\x00\xff"}}, "metadata"),
    "set": ({"metadata": {"s": {1, 2}}}, "metadata"),
    "frozenset": ({"metadata": {"s": frozenset({"a"})}}, "metadata"),
    "tuple-key": ({"metadata": {(1, 2): "x"}}, "metadata"),
    "nan-key": ({"metadata": {float("nan"): "x"}}, "metadata"),
    "huge-int": ({"metadata": {"n": 10**5000}}, "metadata"),
    "uuid-in-metadata": ({"metadata": {"id": uuid.UUID(int=7)}}, "metadata"),
    "datetime-in-metadata": ({"metadata": {"at": NOW}}, "metadata"),
    "date-in-metadata": ({"metadata": {"on": date(2026, 5, 4)}}, "metadata"),
    "dataclass-in-metadata": ({"metadata": {"p": Point(1, 2)}}, "metadata"),
    "bad-repr": ({"metadata": {"r": BadRepr()}}, "metadata"),
    "deep-10000": ({"metadata": deep(10_000)}, "metadata"),
    "cyclic": ({"metadata": cyclic()}, "metadata"),
    "nul-in-metadata": ({"metadata": {"x": "a\x00b"}}, "metadata"),
    "surrogate-in-metadata": ({"metadata": {"x": "\ud800"}}, "metadata"),
    "metadata-not-a-mapping": ({"metadata": '{"a": 1}'}, "metadata"),
    "metadata-dollar-tag-lookalike-and-decimal": ({"metadata": {"$int_hex": "0x1", "d": Decimal(1)}}, "metadata"),
    "nul-in-transcript": ({"transcript": "hello \x00 there"}, "transcript"),
    "surrogate-in-transcript": ({"transcript": "caf\udce9"}, "transcript"),
    "bytes-transcript": ({"transcript": b"hello"}, "transcript"),
    "naive-started_at": ({"started_at": NOW.replace(tzinfo=None), "ended_at": None}, "started_at"),
    "date-started_at": ({"started_at": NOW.date(), "ended_at": None}, "started_at"),
    "object-started_at": ({"started_at": object(), "ended_at": None}, "started_at"),
    "ended-before-started": ({"ended_at": NOW - timedelta(minutes=5)}, "ended_at"),
    "non-uuid-tenant": ({"tenant_id": "acme-corp"}, "tenant_id"),
    "int-tenant": ({"tenant_id": 5}, "tenant_id"),
    "bytes-call_id": ({"call_id": b"0123456789abcdef"}, "call_id"),
    "nan-duration": ({"duration_sec": float("nan")}, "duration_sec"),
    "decimal-duration": ({"duration_sec": Decimal(5)}, "duration_sec"),
    "negative-duration": ({"duration_sec": -1}, "duration_sec"),
    "unknown-field": ({"agent": object()}, "agent"),
}


def bad_row(name: str) -> tuple[dict[str, Any], str]:
    over, field = BAD[name]
    call_id = uuid.uuid5(uuid.NAMESPACE_URL, name)
    base: dict[str, Any] = {
        "tenant_id": TENANT,
        "call_id": call_id,
        "started_at": NOW,
        "ended_at": NOW + timedelta(seconds=30),
        "transcript": f"call {name}: hello",
        "metadata": {"case": name},
    }
    return {**base, **over}, field


def test_bad_rows_are_kept_faithfully_and_never_replayed(ready: str) -> None:
    good = make_calls(40)
    bad = {name: bad_row(name) for name in BAD}
    not_a_call = NotACall(TENANT, uuid.uuid4(), NOW, transcript="not a Call", metadata={"ok": True})
    with Writer(ready) as w:
        w.write_many(good[:20])
        for row, _ in bad.values():
            w.write(row)
        w.write(not_a_call)
        w.write_many(good[20:])
        result = w.flush()
    assert (result.written, result.quarantined) == (40, len(bad) + 1)
    assert count(ready) == 40  # the good rows of the same batches landed

    stored = quarantine_rows(ready)
    problems: list[str] = []
    if len(stored) != len(bad) + 1:
        problems.append(f"{len(stored)} quarantine rows for {len(bad) + 1} refused rows")
    for name, (row, field) in bad.items():
        rec = find(stored, str(row["call_id"]) if isinstance(row["call_id"], uuid.UUID) else f"call {name}: hello")
        if rec is None:
            problems.append(f"{name}: neither its call_id nor its transcript is kept in raw")
            continue
        _, reason, raw, _ = rec
        kept = fields_of(raw)
        if field not in reason:
            problems.append(f"{name}: reason does not name {field}: {reason}")
        if field != "tenant_id" and kept.get("tenant_id") != str(TENANT):
            problems.append(f"{name}: tenant_id not kept: {kept.get('tenant_id')!r}")
        if field != "call_id" and kept.get("call_id") != str(row["call_id"]):
            problems.append(f"{name}: call_id not kept: {kept.get('call_id')!r}")
        if isinstance(row["transcript"], str) and kept.get("transcript") != row["transcript"]:
            problems.append(f"{name}: transcript not kept exactly: {kept.get('transcript')!r}")
        if isinstance(row["started_at"], datetime) and row["started_at"].tzinfo is not None:
            got = kept.get("started_at")
            if not isinstance(got, str) or datetime.fromisoformat(got) != row["started_at"]:
                problems.append(f"{name}: started_at not kept: {kept.get('started_at')!r}")
        if not raw.isascii():
            problems.append(f"{name}: raw is not ASCII")
    if find(stored, str(not_a_call.call_id)) is None:
        problems.append("NotACall: call_id not kept")

    report = replay(ready)
    after = quarantine_rows(ready)
    for name, (row, _) in bad.items():
        if isinstance(row["call_id"], uuid.UUID) and count(ready, "call_id = %s", (row["call_id"],)):
            problems.append(f"{name}: replay landed it, metadata {landed_metadata(ready, row['call_id'])}")
    if count(ready, "call_id = %s", (not_a_call.call_id,)):
        problems.append("NotACall: replay landed it")
    if (report.tried, report.written, report.duplicates, report.still_bad) != (len(stored), 0, 0, len(stored)):
        problems.append(f"replay report {report}")
    if [r[0] for r in after] != [r[0] for r in stored]:
        problems.append(f"{len(stored) - len(after)} quarantine rows left the quarantine")
    if not all(r[3] == 2 for r in after):
        problems.append("attempts not counted")
    if {r[2] for r in after} != {r[2] for r in stored}:
        problems.append("raw changed by replay")
    for (qid, before, _, _), (_, now, _, _) in zip(stored, after, strict=False):
        if before != now:
            problems.append(f"#{qid}: replay changed the reason from {before!r} to {now!r}")
    refused = dict(report.refused)
    problems += [f"#{r[0]} not reported as refused" for r in stored if r[0] not in refused]
    assert not problems, "\n".join(problems)
    again = replay(ready)
    assert (again.written, again.still_bad) == (0, len(bad) + 1)
    assert count(ready) == 40


def find(stored: list[tuple[int, str, str, int]], needle: str) -> tuple[int, str, str, int] | None:
    return next((rec for rec in stored if needle in rec[2]), None)


def landed_metadata(dsn: str, call_id: uuid.UUID) -> str:
    with psycopg.connect(dsn) as c:
        return str(c.execute("SELECT metadata::text FROM call_logs WHERE call_id = %s", (call_id,)).fetchone()[0])


def test_deep_metadata_keeps_the_other_fields(ready: str) -> None:
    """The report: 10,000-deep metadata used to leave {"$repr": "<unrepresentable dict>"} and nothing else."""
    row, _ = bad_row("deep-10000")
    with Writer(ready) as w:
        w.write(row)
        w.write(make_calls(1)[0])
        assert (w.flush().written, w.stats.quarantined) == (1, 1)
    [(_, reason, raw, _)] = quarantine_rows(ready)
    kept = fields_of(raw)
    assert reason.startswith("metadata is nested too deeply")
    assert kept["tenant_id"] == str(TENANT)
    assert kept["call_id"] == str(row["call_id"])
    assert datetime.fromisoformat(kept["started_at"]) == NOW
    assert datetime.fromisoformat(kept["ended_at"]) == NOW + timedelta(seconds=30)
    assert kept["transcript"] == "call deep-10000: hello"
    assert "$deep" in raw  # the part past the bound is kept as JSON text, marked
    assert replay(ready).written == 0 and count(ready) == 1


def test_valid_unusual_metadata_is_not_a_bad_row(ready: str) -> None:
    """2**80, int keys, tuples, "$" keys: the writer accepts these and stores what json.dumps makes of them."""
    meta = {"big": 2**80, 1: "int key", "t": (1, 2), "$ref": "#/x", "nested": {"$only": 1}, "é": "📞"}
    row = dict(make_calls(1)[0], metadata=meta)
    with Writer(ready) as w:
        w.write(row)
        assert w.flush().written == 1
    with psycopg.connect(ready) as c:
        got = c.execute("SELECT metadata FROM call_logs").fetchone()[0]
    assert got == json.loads(json.dumps(meta))
    assert got["big"] == 2**80


def test_fixable_row_lands_exactly_once_with_the_content_sent(ready: str) -> None:
    """Beyond the premake horizon: quarantined, refused while the partition is missing, then landed once."""
    ahead = datetime.now(UTC).replace(microsecond=123456) + timedelta(weeks=30)
    meta = {
        "agent": "a1",
        "big": 2**80,
        1: "int key",
        "t": (1, 2.5, None, True),
        "$ref": "#/x",
        "only": {"$literal": {"$x": 1}},
        "deep": deep(50),
        "é": "📞 \\u0000 not a NUL",
        "neg": -0.0,
    }
    call = Call(TENANT, uuid.uuid4(), ahead, ahead + timedelta(seconds=61), None, "héllo 📞 transcript", meta)
    twin = Call(TENANT, uuid.uuid4(), datetime.now(UTC) - timedelta(hours=2), None, None, "twin", meta)
    with Writer(ready) as w:
        w.write(call)
        w.write(twin)  # same metadata, written directly: what landing it as sent looks like
        assert (w.flush().written, w.stats.quarantined) == (1, 1)
        w.write(call)  # the producer re-sends it: two quarantine rows for one call
        w.flush()
    first = quarantine_rows(ready)
    assert len(first) == 2 and all("premake horizon" in r[1] for r in first)

    still = replay(ready)
    assert (still.tried, still.written, still.still_bad) == (2, 0, 2)
    assert [r[3] for r in quarantine_rows(ready)] == [2, 2]

    run("init", "--dsn", ready, "--premake", "40")
    run("maintain", "--dsn", ready)
    report = replay(ready)
    assert (report.tried, report.written, report.duplicates, report.still_bad) == (2, 1, 1, 0)
    assert quarantine_rows(ready) == []
    assert count(ready, "call_id = %s", (call.call_id,)) == 1
    with psycopg.connect(ready) as c:
        c.execute("SET timezone TO 'UTC'")
        got = c.execute(
            "SELECT tenant_id, started_at, ended_at, duration_sec, transcript, metadata::text FROM call_logs "
            "WHERE call_id = %s",
            (call.call_id,),
        ).fetchone()
        twin_meta = c.execute("SELECT metadata::text FROM call_logs WHERE call_id = %s", (twin.call_id,)).fetchone()[0]
    assert got[:5] == (TENANT, ahead, ahead + timedelta(seconds=61), 61, "héllo 📞 transcript")
    assert got[5] == twin_meta  # metadata byte for byte what the writer lands for what was sent
    again = replay(ready)
    assert (again.tried, again.written) == (0, 0)
    assert count(ready, "call_id = %s", (call.call_id,)) == 1
    assert run_json("quarantine", "list", "--dsn", ready) == []


def test_concurrent_replays_land_a_row_once(ready: str) -> None:
    ahead = datetime.now(UTC) + timedelta(weeks=30)
    calls = [dict(c, started_at=ahead + timedelta(seconds=i), ended_at=None) for i, c in enumerate(make_calls(50))]
    with Writer(ready) as w:
        w.write_many(calls)
        assert w.flush().quarantined == 50
    run("init", "--dsn", ready, "--premake", "40")
    run("maintain", "--dsn", ready)
    reports: list[q.ReplayReport] = []
    threads = [threading.Thread(target=lambda: reports.append(replay(ready))) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sum(r.written for r in reports) == 50
    assert sum(r.duplicates for r in reports) == 0
    assert count(ready) == 50 and quarantine_rows(ready) == []


def test_legacy_rewritten_rows_are_not_replayed(ready: str) -> None:
    """Rows an older writer quarantined with values rewritten (repr strings) are not landed; its partition-wait
    rows still are."""
    tenant, ok_call, bad_call = TENANT, uuid.uuid4(), uuid.uuid4()
    ts = (datetime.now(UTC) - timedelta(hours=3)).isoformat()
    rewritten = {"tenant_id": str(tenant), "call_id": str(bad_call), "started_at": ts,
                 "metadata": {"price": "Decimal('1.10')", "o": "<object object at 0x7f0000000000>"}}  # fmt: skip
    waiting = {"tenant_id": str(tenant), "call_id": str(ok_call), "started_at": ts, "metadata": {"a": 1}}
    with psycopg.connect(ready) as c:
        c.execute(
            "INSERT INTO callvault.quarantine (target_table, reason, raw) VALUES (%s, %s, %s), (%s, %s, %s)",
            (
                "public.call_logs",
                "metadata is not JSON-serialisable: Object of type Decimal is not JSON serializable; "
                "convert such values first (str(), isoformat())",
                json.dumps(rewritten),
                "public.call_logs",
                f"started_at {ts} is beyond the premake horizon (x): run `callvault maintain` (or raise --premake), "
                "then `callvault quarantine replay`",
                json.dumps(waiting),
            ),
        )
    report = replay(ready)
    assert (report.written, report.still_bad) == (1, 1)
    assert count(ready, "call_id = %s", (ok_call,)) == 1
    assert count(ready, "call_id = %s", (bad_call,)) == 0
    [(_, reason, raw, attempts)] = quarantine_rows(ready)
    assert json.loads(raw) == rewritten and attempts == 2
    assert "older" in reason


def test_operator_fix_of_an_encoded_row_lands(ready: str) -> None:
    """The way out for a tagged row: put the value to store in raw (keeping "$format"), then replay."""
    row, _ = bad_row("decimal")
    with Writer(ready) as w:
        w.write(row)
        w.flush()
    [(qid, reason, raw, _)] = quarantine_rows(ready)
    assert '"price":{"$decimal":"1.10"}' in raw and 'metadata["price"] as $decimal' in reason
    assert replay(ready).refused == ((qid, reason),)

    doc = json.loads(raw)
    doc["metadata"]["price"] = "1.10"
    without_format = {k: v for k, v in doc.items() if k != "$format"}
    with psycopg.connect(ready) as c:
        c.execute("UPDATE callvault.quarantine SET raw = %s WHERE id = %s", (json.dumps(without_format), qid))
    again = replay(ready)  # no "$format": read as an older callvault's row, which is not trusted
    assert again.written == 0 and again.refused[0][1].startswith("written by an older callvault")
    with psycopg.connect(ready) as c:
        c.execute("UPDATE callvault.quarantine SET raw = %s WHERE id = %s", (json.dumps(doc), qid))
    fixed = replay(ready)
    assert (fixed.written, fixed.still_bad) == (1, 0) and quarantine_rows(ready) == []
    with psycopg.connect(ready) as c:
        meta = c.execute("SELECT metadata FROM call_logs WHERE call_id = %s", (row["call_id"],)).fetchone()[0]
    assert meta == {"price": "1.10"}


def test_rows_the_database_refuses_keep_their_content_and_their_id(ready: str) -> None:
    with psycopg.connect(ready, autocommit=True) as c:
        c.execute("ALTER TABLE call_logs ADD CONSTRAINT short_transcripts CHECK (length(transcript) < 40)")
    meta = {"agent": "a1", "big": 2**80, "$ref": "#/x", "only": {"$x": [1, {"$y": None}]}, "é": "📞"}
    long = Call(TENANT, uuid.uuid4(), NOW, NOW + timedelta(seconds=9), None, "y" * 100 + " é", meta)
    with Writer(ready) as w:
        w.write_many([*make_calls(10), long])
        result = w.flush()
    assert (result.written, result.quarantined) == (10, 1)
    [(qid, reason, raw, _)] = quarantine_rows(ready)
    assert "short_transcripts" in reason
    kept = fields_of(raw)
    assert kept["transcript"] == long.transcript and kept["call_id"] == str(long.call_id)
    assert kept["metadata"]["only"] == {"$literal": {"$x": [1, {"$literal": {"$y": None}}]}}

    still = replay(ready)  # refused by the database again: the same quarantine row stays, one more attempt
    assert (still.written, still.still_bad) == (0, 1)
    [(qid_after, reason_after, raw_after, attempts)] = quarantine_rows(ready)
    assert (qid_after, raw_after, attempts) == (qid, raw, 2) and "short_transcripts" in reason_after

    with psycopg.connect(ready, autocommit=True) as c:
        c.execute("ALTER TABLE call_logs DROP CONSTRAINT short_transcripts")
    assert replay(ready).written == 1 and quarantine_rows(ready) == []
    with psycopg.connect(ready) as c:
        c.execute("SET timezone TO 'UTC'")
        got = c.execute(
            "SELECT tenant_id, started_at, ended_at, duration_sec, transcript, metadata FROM call_logs "
            "WHERE call_id = %s",
            (long.call_id,),
        ).fetchall()
    assert got == [(TENANT, NOW, NOW + timedelta(seconds=9), 9, long.transcript, json.loads(json.dumps(meta)))]


def test_async_writer_quarantines_the_same_way(ready: str) -> None:
    row, _ = bad_row("deep-10000")
    other, _ = bad_row("object")

    async def go() -> None:
        async with AsyncWriter(ready) as w:
            await w.write_many([row, other, *make_calls(3)])
            result = await w.flush()
            assert (result.written, result.quarantined) == (3, 2)

    asyncio.run(go())
    stored = quarantine_rows(ready)
    assert sorted(fields_of(r[2])["call_id"] for r in stored) == sorted([str(row["call_id"]), str(other["call_id"])])
    assert all(fields_of(r[2])["tenant_id"] == str(TENANT) for r in stored)
    assert replay(ready).written == 0 and count(ready) == 3


def test_an_older_partition_wait_row_is_re_encoded_when_still_refused(ready: str) -> None:
    ahead = (datetime.now(UTC) + timedelta(weeks=30)).isoformat()
    old = {"tenant_id": str(TENANT), "call_id": str(uuid.uuid4()), "started_at": ahead, "metadata": {"$ref": 1}}
    with psycopg.connect(ready) as c:
        c.execute(
            "INSERT INTO callvault.quarantine (target_table, reason, raw) VALUES (%s, %s, %s)",
            ("public.call_logs", f"started_at {ahead} is beyond the premake horizon (x): run ...", json.dumps(old)),
        )
    assert replay(ready).still_bad == 1
    [(_, reason, raw, attempts)] = quarantine_rows(ready)
    assert attempts == 2 and "premake horizon" in reason
    assert json.loads(raw) == {"$format": "callvault/2", **old, "metadata": {"$literal": {"$ref": 1}}}
    run("init", "--dsn", ready, "--premake", "40")
    run("maintain", "--dsn", ready)
    assert replay(ready).written == 1
    with psycopg.connect(ready) as c:
        assert c.execute("SELECT metadata FROM call_logs").fetchone()[0] == {"$ref": 1}
