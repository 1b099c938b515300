"""Transcript search (``Reader.search``, ``callvault calls --search``, ``callvault search index``):
pinned to one tenant and a window, row-level security in force, hot partitions and archived weeks alike.

A table is filled in every partition that has begun (rows placed from the partitions' own bounds), its
transcripts set to a few known texts by row, the search indexes built, and the oldest weeks archived with
the clock moved past retention (``--at``). Every expectation is computed in Python from a snapshot of
the rows taken as the owner before the archive."""

from __future__ import annotations

import os
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import psycopg
import pytest
from psycopg import sql

from callvault import catalog
from callvault.embedded import Cluster
from callvault.errors import InvalidSetting
from callvault.plans import walk
from callvault.query import Reader
from callvault.query_base import recent
from callvault.search import Match
from tests.conftest import _template_for
from tests.helpers import new_dir, run, run_json
from tests.test_archive import AT, TENANTS
from tests.test_tenancy import drop_roles
from tests.test_tiers import World, build

# the texts rows get, by id modulo 6 (one row in six of every tenant and week holds each)
TEXTS = [
    "Hello, the caller asked for a Refund of 100% of the fee.",
    "refunds are processed weekly; nobody asked for a refund here",
    "The agent offered a refund; she asked politely.",
    "code 1000x was read out twice",
    "[bold]markup[/bold] and 50_percent under_score",
    "nothing of note: greeting and goodbye",
]
SECRET = "zqxj-secret-phrase"  # never in any row: an error must not repeat it


def _texts(dsn: str, language: str = "simple") -> None:
    with psycopg.connect(dsn, autocommit=True) as c:
        cases = sql.SQL(" ").join(
            sql.SQL("WHEN {} THEN {}").format(sql.Literal(i), sql.Literal(t)) for i, t in enumerate(TEXTS)
        )
        c.execute(sql.SQL("UPDATE call_logs SET transcript = CASE id % 6 {} END").format(cases))
    built = run_json("search", "index", "--dsn", dsn, "--language", language)
    assert all(ix["valid"] for ix in built["indexes"])


@pytest.fixture(scope="module")
def world(cluster: Cluster, tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    template = _template_for(cluster, "4.7")
    name = f"cv_search_{os.getpid()}"
    with psycopg.connect(cluster.dsn("postgres"), autocommit=True) as c:
        c.execute(sql.SQL("CREATE DATABASE {} TEMPLATE {}").format(sql.Identifier(name), sql.Identifier(template)))
    dsn = cluster.dsn(name)
    w = build(dsn, new_dir(tmp_path_factory.mktemp("search") / "store"), before_archive=_texts)
    yield w
    drop_roles(dsn, w.roles)
    with psycopg.connect(cluster.dsn("postgres"), autocommit=True) as c:
        c.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name)))


def contains(text: str | None, phrase: str) -> bool:
    return text is not None and phrase.lower() in text.lower()


def all_pages(reader: Reader, tenant: str, text: str, w: World, **kw: Any) -> list[Any]:
    got: list[Any] = []
    cursor = None
    while True:
        page = reader.search(tenant, text, since=w.since, until=w.until, limit=7, cursor=cursor, **kw)
        got += page.calls
        if not page.next_cursor:
            return got
        cursor = page.next_cursor


@pytest.mark.parametrize("phrase", ["asked for a refund", "REFUND", "100%", "50_percent", "[bold]"])
def test_a_phrase_finds_exactly_the_calls_holding_it_hot_and_archived(world: World, phrase: str) -> None:
    with psycopg.connect(world.app(), prepare_threshold=None) as conn:
        reader = Reader(conn, world.settings, store_url=world.store)
        for tenant in TENANTS[:3]:
            hits = all_pages(reader, tenant, phrase, world)
            want = [r for r in world.expected(tenant) if contains(r.transcript, phrase)]
            assert [h.id for h in hits] == [r.id for r in want], "every match, newest first, nothing else"
            assert {h.tier for h in hits} == {"hot", "archive"}, "the window spans both tiers"
            for h in hits:
                assert h.tier == ("archive" if world.is_archived(h.started_at) else "hot")
                assert h.snippet is not None and "«" in h.snippet and phrase.lower() in h.snippet.lower()


def test_words_match_every_word_in_any_order(world: World) -> None:
    with psycopg.connect(world.app(), prepare_threshold=None) as conn:
        reader = Reader(conn, world.settings, store_url=world.store)
        tenant = TENANTS[1]
        hits = all_pages(reader, tenant, "refund ASKED", world, mode="words")

        def has_words(text: str | None) -> bool:
            import re

            words = set(re.findall(r"\w+", (text or "").lower()))
            return {"refund", "asked"} <= words

        want = [r for r in world.expected(tenant) if has_words(r.transcript)]
        assert [h.id for h in hits] == [r.id for r in want]
        assert {h.tier for h in hits} == {"hot", "archive"}
        assert all(h.snippet and "«" in h.snippet for h in hits)


def test_a_tenant_never_finds_another_tenants_calls(world: World) -> None:
    """The app role reads one tenant (row-level security) and the statement is pinned to it."""
    with psycopg.connect(world.app(), prepare_threshold=None) as conn:
        reader = Reader(conn, world.settings, store_url=world.store)
        mine = {r.id for r in world.rows if str(r.tenant_id) == TENANTS[0]}
        hits = all_pages(reader, TENANTS[0], "refund", world)
        assert hits and {h.id for h in hits} <= mine


def test_explain_touches_only_the_windows_partitions(world: World) -> None:
    s = world.settings
    with psycopg.connect(world.dsn) as conn:
        parts = [p.info for p in catalog.list_partitions(conn, s) if not p.info.is_default]
        (first,) = [p for p in parts if p.start == world.hot_start]  # the oldest hot week, exactly
        reader = Reader(conn, s)
        for mode in ("phrase", "words"):
            match = Match.parse("asked for a refund", mode)
            read = recent(reader, TENANTS[0], world.hot_start, world.hot_start + timedelta(days=7), 100, None,
                          match=match)  # fmt: skip
            plan = conn.execute(sql.SQL("EXPLAIN (FORMAT JSON) {}").format(read.statement), read.params).fetchone()
            assert plan is not None
            scanned, _ = walk(plan[0][0]["Plan"])
            assert set(scanned) == {first.name}, f"{mode}: {scanned}"
        conn.rollback()
    for extra in ([], ["--words"]):  # the same proof from the CLI, as the app role
        doc = run_json("calls", "--dsn", world.app(), "--tenant-id", TENANTS[0], "--since", world.hot_start.isoformat(),
                       "--until", (world.hot_start + timedelta(days=7)).isoformat(), "--search", "asked for a refund",
                       *extra, "--explain")  # fmt: skip
        assert doc["scanned"] == [first.name] and doc["partitions_total"] > 5


def test_the_indexes_are_on_every_partition_and_on_partitions_made_later(world: World) -> None:
    st = run_json("search", "status", "--dsn", world.dsn)
    assert st["language"] == "simple" and all(ix["valid"] and ix["bytes"] > 0 for ix in st["indexes"])
    run("maintain", "--dsn", world.dsn, "--at", AT)  # new partitions ahead of the moved clock
    with psycopg.connect(world.dsn) as conn:
        parts = [p.info.name for p in catalog.list_partitions(conn, world.settings) if not p.info.is_default]
        for name in parts:
            defs = [r[0] for r in conn.execute("SELECT indexdef FROM pg_indexes WHERE tablename = %s", (name,))]
            assert any("gin_trgm_ops" in d for d in defs) and any("to_tsvector" in d for d in defs), name
    again = run_json("search", "status", "--dsn", world.dsn)
    assert all(ix["valid"] for ix in again["indexes"])


def test_cli_calls_search_json_pages_with_snippets(world: World) -> None:
    base = ["calls", "--dsn", world.app(), "--tenant-id", TENANTS[2], "--since", world.since.isoformat(),
            "--until", world.until.isoformat(), "--store-url", world.store,
            "--search", "asked for a refund"]  # fmt: skip
    ids: list[int] = []
    cursor: list[str] = []
    while True:
        doc = run_json(*base, "--limit", "5", *cursor)
        ids += [c["id"] for c in doc["calls"]]
        assert all("«" in c["snippet"] for c in doc["calls"])
        if not doc["next_cursor"]:
            break
        cursor = ["--cursor", doc["next_cursor"]]
    want = [r.id for r in world.expected(TENANTS[2]) if contains(r.transcript, "asked for a refund")]
    assert ids == want
    text = run(*base, "--limit", "3").stdout
    assert "snippet" in text and "«" in text


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        (["--search", ""], "empty"),
        (["--search", "ab"], "at least 3"),
        (["--search", SECRET * 20], "at most 200"),
        (["--search", SECRET, "--since", "2020-01-01"], "window"),
        (["--search", SECRET, "--tenant-id", "not-a-uuid"], "not-a-uuid"),
        (["--words", "--search", "!!! ???"], "no words"),
        (["--words"], "--search"),
    ],
)
def test_bad_search_input_is_one_line_without_the_text(world: World, args: list[str], needle: str) -> None:
    base = {"--tenant-id": TENANTS[0], "--since": world.since.isoformat(), "--until": world.until.isoformat()}
    for i, a in enumerate(args):
        if a in base:
            base[a] = args[i + 1]
    rest = [a for i, a in enumerate(args) if a not in base and (i == 0 or args[i - 1] not in base)]
    cmd = ["calls", "--dsn", world.dsn, "--store-url", world.store, *(x for kv in base.items() for x in kv), *rest]
    done = run(*cmd, ok=False)
    assert done.exit_code == 2, done.stderr
    lines = [ln for ln in done.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and needle in lines[0] and "Traceback" not in done.stderr
    assert SECRET not in done.stderr, "the search text is call content: never repeated"


def test_match_parse_is_pure_and_escapes_like(tmp_path: Path) -> None:
    m = Match.parse("  100%_x\\  ")
    assert m.text == "100%_x\\" and m.like_pattern() == "%100\\%\\_x\\\\%"
    assert Match.parse("Refund asked, refund!", "words").words() == ["refund", "asked"]
    with pytest.raises(InvalidSetting, match="language"):
        Match.parse("refund", "words", "en glish")
    with pytest.raises(InvalidSetting, match="mode"):
        Match.parse("refund", "regex")


def test_search_index_bad_input(world: World) -> None:
    done = run("search", "index", "--dsn", world.dsn, "--language", "klingon", ok=False)
    assert done.exit_code == 2 and "klingon" in done.stderr and "simple" in done.stderr
    done = run("search", "index", "--dsn", world.dsn, "--no-phrase", "--no-words", ok=False)
    assert done.exit_code == 2 and len(done.stderr.strip().splitlines()) == 1


def test_an_english_index_stems_and_the_reader_learns_its_language(dsn: str, tmp_path: Path) -> None:
    w = build(dsn, new_dir(tmp_path / "store"), before_archive=lambda d: _texts(d, "english"))
    try:
        assert run_json("search", "status", "--dsn", dsn)["language"] == "english"
        with psycopg.connect(w.app(), prepare_threshold=None) as conn:
            reader = Reader(conn, w.settings)  # hot only: stemming is Postgres's
            hot_since = w.hot_start
            page = reader.search(TENANTS[0], "refunding", since=hot_since, until=w.until, limit=1000, mode="words")
            want = [
                r.id for r in w.expected(TENANTS[0], hot_since, w.until) if "refund" in (r.transcript or "").lower()
            ]
            assert sorted(c.id for c in page) == sorted(want), "english stems refunds/refunding/refund alike"
    finally:
        drop_roles(dsn, w.roles)
