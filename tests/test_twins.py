"""The sync and async twins cannot drift: the generated sync I/O module is current, and every read and
write scenario runs against both twins (and, for reads, over a connection and over a pool) with the same
inputs, expecting the same results and the same callvault exception types."""

from __future__ import annotations

import asyncio
import importlib.util
import inspect
import subprocess
import sys
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any
from uuid import UUID, uuid4

import psycopg
import pytest
from psycopg_pool import AsyncConnectionPool, ConnectionPool

from callvault.config import Settings
from callvault.errors import CallvaultError, InvalidSetting, NotInitialised
from callvault.ingest import AsyncWriter, Writer
from callvault.query import AsyncReader, Page, Reader, WindowRefused
from tests.helpers import make_calls, run
from tests.test_tenancy import Env, env  # noqa: F401 - the fixture

ROOT = Path(__file__).resolve().parent.parent


def _twins() -> list[Any]:
    spec = importlib.util.spec_from_file_location("async_to_sync", ROOT / "scripts/async_to_sync.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up
    spec.loader.exec_module(module)
    return list(module.TWINS)


@pytest.mark.parametrize("twin", _twins(), ids=lambda t: t.target)
def test_every_sync_twin_is_generated_from_its_async_source(twin: Any) -> None:
    made = subprocess.run(
        [sys.executable, str(ROOT / "scripts/async_to_sync.py"), str(ROOT / twin.source)],
        capture_output=True, text=True, check=True,
    )  # fmt: skip
    assert made.stdout == (ROOT / twin.target).read_text(), (
        f"{twin.target} is out of date: edit {twin.source} and run `make sync-twins`"
    )


class Twin:
    """Runs a twin's methods the same way from a test: awaits coroutines on one private loop."""

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self.loop = asyncio.new_event_loop() if kind.startswith("async") else None

    def __call__(self, value: Any) -> Any:
        if inspect.isawaitable(value):
            assert self.loop is not None
            return self.loop.run_until_complete(value)
        return value

    def close(self) -> None:
        if self.loop is not None:
            self.loop.close()


READERS = ["sync-conn", "sync-pool", "async-conn", "async-pool"]


@pytest.fixture(params=READERS)
def reader(request: pytest.FixtureRequest, env: Env) -> Iterator[tuple[Twin, Any, Env]]:  # noqa: F811
    twin, dsn = Twin(request.param), env.as_("app")
    kw = {"prepare_threshold": None}
    if request.param == "sync-conn":
        source: Any = psycopg.connect(dsn, **kw)
        yield twin, Reader(source, env.settings), env
        source.close()
    elif request.param == "sync-pool":
        source = ConnectionPool(dsn, min_size=1, max_size=2, kwargs=kw, open=True)
        yield twin, Reader(source, env.settings), env
        source.close()
    elif request.param == "async-conn":
        source = twin(psycopg.AsyncConnection.connect(dsn, **kw))
        yield twin, AsyncReader(source, env.settings), env
        twin(source.close())
    else:
        source = AsyncConnectionPool(dsn, min_size=1, max_size=2, kwargs=kw, open=False)
        twin(source.open())
        yield twin, AsyncReader(source, env.settings), env
        twin(source.close())
    twin.close()


def test_reads_agree_across_twins_and_sources(reader: tuple[Twin, Any, Env]) -> None:
    twin, r, e = reader
    for t in e.tenants:
        for tid in (t, str(t)):  # UUID or its text, both typed UUID | str
            assert twin(r.count_calls(tid, since=e.since, until=e.until)) == e.counts[t]
        seen, cursor = [], None
        while True:
            page = twin(r.recent_calls(str(t), since=e.since, until=e.until, limit=97, cursor=cursor))
            assert isinstance(page, Page) and len(page) <= 97
            seen += [c.call_id for c in page]  # Page is iterable
            if page.next_cursor is None:
                break
            cursor = page.next_cursor
        assert len(seen) == len(set(seen)) == e.counts[t]
        got = twin(r.get_call(str(t), str(seen[0])))
        assert got is not None and got.tenant_id == t and got.call_id == seen[0]
        assert twin(r.get_call(t, seen[0], got.started_at)) == got
        other = next(x for x in e.tenants if x != t)
        assert twin(r.get_call(other, seen[0])) is None, "another tenant's call is invisible"
        days = twin(r.daily_stats(t, since=e.since, until=e.until))
        assert sum(d.calls for d in days) == e.counts[t]


@pytest.mark.parametrize(
    ("call", "error"),
    [
        (lambda r, e: r.count_calls("not-a-uuid", since=e.since, until=e.until), InvalidSetting),
        (lambda r, e: r.get_call(e.tenants[0], "123"), InvalidSetting),
        (lambda r, e: r.get_call(42, uuid4()), InvalidSetting),
        (lambda r, e: r.recent_calls(e.tenants[0]), WindowRefused),
        (lambda r, e: r.recent_calls(e.tenants[0], since=e.until, until=e.since), WindowRefused),
        (lambda r, e: r.recent_calls(e.tenants[0], since=e.since, cursor="garbage!"), InvalidSetting),
        (lambda r, e: r.recent_calls(e.tenants[0], since=e.since, limit=0), InvalidSetting),
        (lambda r, e: r.daily_stats(e.tenants[0], since=e.since - timedelta(days=3650)), WindowRefused),
    ],
)
def test_bad_read_inputs_raise_the_same_errors(reader: tuple[Twin, Any, Env], call: Any, error: type) -> None:
    twin, r, e = reader
    with pytest.raises(error):
        twin(call(r, e))


# ---------------------------------------------------------------- writers


def _writer(kind: str, twin: Twin, target: Any) -> Any:
    if kind == "sync":
        return Writer(target)
    w = AsyncWriter(target)
    twin(w.open())
    return w


@pytest.fixture
def ready(dsn: str) -> str:
    run("init", "--dsn", dsn)
    return dsn


@pytest.mark.parametrize("kind", ["sync", "async"])
def test_writers_land_quarantine_and_dedupe_alike(ready: str, kind: str) -> None:
    twin = Twin(kind)
    calls = make_calls(3_000, tenants=7)
    bad = [
        dict(calls[0], call_id=uuid4(), tenant_id="nope"),
        dict(calls[1], call_id=uuid4(), started_at=calls[1]["started_at"].replace(tzinfo=None)),
        dict(calls[2], call_id=uuid4(), duration_sec=-5),
        {"tenant_id": calls[3]["tenant_id"], "call_id": uuid4(), "started_at": calls[3]["started_at"], "transcrpt": ""},
    ]
    w = _writer(kind, twin, ready)
    twin(w.write_many(calls + bad))
    first = twin(w.flush())
    twin(w.write_many(calls[:500]))  # a re-send: exactly once
    again = twin(w.flush())
    twin(w.close())
    twin.close()
    assert (first.written, first.quarantined) == (3_000, 4)
    assert (again.written, again.duplicates) == (0, 500)
    with psycopg.connect(ready) as c:
        per = dict(c.execute("SELECT tenant_id, count(*) FROM call_logs GROUP BY 1").fetchall())
        reasons = [r[0] for r in c.execute("SELECT reason FROM callvault.quarantine ORDER BY id").fetchall()]
    want: dict[UUID, int] = {}
    for x in calls:
        want[x["tenant_id"]] = want.get(x["tenant_id"], 0) + 1
    assert per == want
    assert len(reasons) == 4 and any("tenant" in r for r in reasons) and any("transcrpt" in r for r in reasons)


@pytest.mark.parametrize("kind", ["sync", "async"])
def test_writers_refuse_an_uninitialised_table_alike(dsn: str, kind: str) -> None:
    twin = Twin(kind)
    with pytest.raises(NotInitialised):  # nothing there
        _writer(kind, twin, dsn)
    run("init", "--dsn", dsn)
    with psycopg.connect(dsn, autocommit=True) as c:
        c.execute("DROP TABLE call_logs")  # the quarantine table stays: the case that drifted
    with pytest.raises(NotInitialised, match="run `callvault init`"):
        _writer(kind, twin, dsn)
    twin.close()


@pytest.mark.parametrize("kind", ["sync", "async"])
def test_writers_fail_alike_on_bad_targets(dsn: str, kind: str) -> None:
    twin = Twin(kind)
    from psycopg import conninfo

    for target, error in [
        (conninfo.make_conninfo(dsn, password="wrong"), "AuthenticationFailed"),
        (conninfo.make_conninfo(dsn, port="1"), "DatabaseUnavailable"),
        ("not a dsn", "InvalidSetting"),
        (Settings(), "InvalidSetting"),  # library code never starts the embedded cluster by itself
    ]:
        with pytest.raises(CallvaultError) as info:
            _writer(kind, twin, target)
        assert type(info.value).__name__ == error, (target, info.value)
    twin.close()


@pytest.mark.parametrize("kind", ["sync", "async"])
def test_quarantine_is_logged_and_handed_to_on_quarantine_alike(
    ready: str, kind: str, caplog: pytest.LogCaptureFixture
) -> None:
    import logging

    from callvault.ingest._batch import QuarantineEvent

    twin = Twin(kind)
    secret = "the caller said their card number is 4111"
    calls = make_calls(20, tenants=2)
    bad = [
        dict(calls[0], call_id=uuid4(), transcript=secret, started_at=calls[0]["started_at"].replace(tzinfo=None)),
        dict(calls[1], call_id=uuid4(), tenant_id="nope", transcript=secret),
    ]
    seen: list[QuarantineEvent] = []
    w = Writer(ready, on_quarantine=seen.extend) if kind == "sync" else AsyncWriter(ready, on_quarantine=seen.extend)
    if kind == "async":
        twin(w.open())
    with caplog.at_level(logging.DEBUG, logger="callvault"):
        twin(w.write_many(calls + bad))
        twin(w.flush())
        twin(w.close())
    twin.close()
    assert sorted((e.tenant_id, e.call_id) for e in seen) == sorted(
        (str(b["tenant_id"]), str(b["call_id"])) for b in bad
    )
    assert all(e.reason for e in seen)
    records = [r for r in caplog.records if r.name == "callvault.ingest"]
    assert any(r.levelno == logging.WARNING and "quarantined rows=2" in r.getMessage() for r in records)
    assert all(secret not in r.getMessage() for r in caplog.records), "transcripts are never logged"
