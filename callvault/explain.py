"""``callvault explain``: does a query prune partitions? EXPLAIN it and count.

Reports the partitions of the managed table that appear in the plan against all its partitions,
whether pruning happened at plan time (partitions absent from the plan) or at executor start
("Subplans Removed", what generic plans of prepared statements do), and a verdict: a query that
scans every partition, or more than ``max_partitions``, fails.

The query is judged before anything is sent (:func:`prepare`, pure): exactly one statement that
EXPLAIN takes, and one ``--param`` value per placeholder, ``$1, $2...`` (taken by number) or
psycopg's ``%s`` (in order, with psycopg's ``%%``). Postgres then gets it with ``$n`` placeholders and
the values bound server-side in the unnamed statement (nothing is prepared by name, so PgBouncer is
fine), exactly as an application's parameterised query; every failure is one line.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import psycopg
from pglast import ast
from pglast.parser import ParseError, parse_sql, scan
from psycopg import sql

from callvault import catalog
from callvault.config import Settings
from callvault.db import Conn
from callvault.errors import CallvaultError, DatabaseUnavailable, InvalidSetting, NotInitialised
from callvault.lint import reads_table
from callvault.lint.rules import walk as walk_tree
from callvault.lint.split import PLACEHOLDER
from callvault.plans import partition_of, task_count, walk


class NotPruned(CallvaultError):
    """The query reads more partitions than allowed."""

    exit_code = 4


@dataclass
class ExplainReport:
    """What EXPLAIN says about one query on the managed table: the partitions in its plan
    (``scanned``) out of ``partitions_total``, the subplans removed at executor start, the plan's text,
    and the verdict (:attr:`pruning`, :attr:`problem`)."""

    table: str
    partitions_total: int
    scanned: list[str]
    subplans_removed: int
    plan: list[str] = field(default_factory=list)
    max_partitions: int | None = None
    reads: bool = False  # the query reads the table (so no partition in the plan means all were pruned)
    tasks: int | None = None  # Citus: the tasks the coordinator sends to workers (1: one tenant, one worker)

    @property
    def pruning(self) -> str:
        """When partitions were pruned: ``plan-time``, ``executor-start`` ("Subplans Removed"),
        ``none``, or ``not-applicable`` (the plan reads no partition and the query does not read the table)."""
        if self.subplans_removed:
            return "executor-start"
        if self.scanned and len(self.scanned) < self.partitions_total:
            return "plan-time"
        if not self.scanned:
            return "plan-time" if self.reads and self.partitions_total else "not-applicable"
        return "none"

    @property
    def problem(self) -> str | None:
        """Why the query fails the check (it scans every partition, or more than ``max_partitions``),
        with the fix; ``None`` when it passes. ``callvault explain`` exits 4 (:class:`NotPruned`) on one."""
        n, total = len(self.scanned), self.partitions_total
        if n and total > 1 and n >= total:
            return (
                f"scans all {total} partitions of {self.table}: pin started_at with raw bounds "
                "(started_at >= $since AND started_at < $until), never a function of it"
            )
        if self.max_partitions is not None and n > self.max_partitions:
            return f"scans {n} partitions of {self.table}, more than --max-partitions {self.max_partitions}"
        return None

    def to_dict(self) -> dict[str, object]:
        """The report as JSON-ready values (``callvault explain --json``), with ``ok`` and ``problem``."""
        return {
            "table": self.table, "partitions_total": self.partitions_total, "partitions_scanned": len(self.scanned),
            "scanned": self.scanned, "subplans_removed": self.subplans_removed, "pruning": self.pruning,
            "ok": self.problem is None, "problem": self.problem, "plan": self.plan, "tasks": self.tasks,
        }  # fmt: skip


EXPLAINABLE = (ast.SelectStmt, ast.InsertStmt, ast.UpdateStmt, ast.DeleteStmt, ast.MergeStmt)
_KINDS = "SELECT, INSERT, UPDATE, DELETE or MERGE"
_LITERALS = {"SCONST", "USCONST", "BCONST", "XCONST", "SQL_COMMENT", "C_COMMENT"}


@dataclass(frozen=True)
class Prepared:
    """A query EXPLAIN can take: one statement, ``$n`` placeholders, a value for each."""

    text: str
    params: list[str]
    stmt: Any  # its parse tree (pglast)

    def names(self, settings: Settings) -> bool:
        """Whether the query names the table anywhere (bare, or in its schema); True when too deep to tell."""
        try:
            return any(
                isinstance(n, ast.RangeVar) and n.relname == settings.table and n.schemaname in (None, settings.schema)
                for n in walk_tree(self.stmt, into_subqueries=True)
            )
        except RecursionError:
            return True

    def reads(self, settings: Settings) -> bool:
        """Whether a SELECT/UPDATE/DELETE in the query reads the table; False when too deep to tell."""
        try:
            return reads_table(self.stmt, f"{settings.schema}.{settings.table}")
        except RecursionError:
            return False


def _where(text: str, offset: int) -> str:
    line, line_start = text.count("\n", 0, offset) + 1, text.rfind("\n", 0, offset) + 1
    return f"line {line}, column {offset - line_start + 1}"


def _unparsable(text: str, message: str, offset: int | None) -> InvalidSetting:
    at = offset if offset is not None and offset >= 0 else len(text.rstrip())
    return InvalidSetting(
        f"cannot EXPLAIN the query: it does not parse: {message} ({_where(text, at)}); fix the SQL "
        "(`callvault lint -` checks it offline)"
    )


def _tokens(query: str) -> list[Any]:
    try:
        query.encode("utf-8")
        return list(scan(query))
    except ParseError as exc:
        at = exc.args[1] if len(exc.args) > 1 and isinstance(exc.args[1], int) else None
        raise _unparsable(query, str(exc.args[0]), at) from None
    except UnicodeEncodeError as exc:
        raise _unparsable(query, "not valid UTF-8", exc.start) from None


def _example(n: int) -> str:
    return " ".join(f"-p VALUE{i}" for i in range(1, n + 1))


def _psycopg_to_dollars(query: str) -> tuple[str, int, list[str]]:
    """(query with %s/%b/%t as $1, $2... and %% as %, how many, the named ones) — as psycopg reads it."""
    count, named = 0, []

    def number(match: re.Match[str]) -> str:
        nonlocal count
        text = match.group()
        if text == "%%":
            return "%"
        if text.startswith("%("):
            named.append(text)
            return text
        count += 1
        return f"${count}"

    return PLACEHOLDER.sub(number, query), count, named


def _named(named: list[str]) -> InvalidSetting:
    return InvalidSetting(
        f"the query uses named placeholders ({', '.join(dict.fromkeys(named))}): --param values go in order, so "
        "write $1, $2... (or %s) instead"
    )


def prepare(query: str, params: Sequence[str] = ()) -> Prepared:
    """Check ``query`` and its ``params`` before anything is sent (pure); raise InvalidSetting saying how."""
    values = list(params)
    if "\x00" in query:
        raise _unparsable(query, "NUL character in the query", query.index("\x00"))
    tokens = _tokens(query)
    dollars = sorted({int(query[t.start + 1 : t.end + 1]) for t in tokens if t.name == "PARAM"})
    code: list[str] = list(query)  # the query with its string literals and comments blanked, for psycopg's placeholders
    for t in tokens:
        if t.name in _LITERALS:
            code[t.start : t.end + 1] = [" "] * (t.end + 1 - t.start)
    outside = [m.group() for m in PLACEHOLDER.finditer("".join(code)) if m.group() != "%%"]
    if dollars and outside:
        raise InvalidSetting(
            "the query mixes $n and psycopg %s placeholders: use one style ($1, $2... with one -p each)"
        )
    if any(p.startswith("%(") for p in outside):
        raise _named([p for p in outside if p.startswith("%(")])
    text = query
    if dollars:
        n = dollars[-1]
        if not values:
            listed = ", ".join(f"${i}" for i in dollars)
            raise InvalidSetting(
                f"the query has placeholders {listed} and no --param: pass one --param/-p VALUE per placeholder, "
                f"in order ($1 first): {_example(n)}"
            )
        if len(values) != n:
            raise InvalidSetting(
                f"the query uses $1..${n} but {len(values)} --param value(s) were given: pass exactly {n}, "
                "in order ($1 first)"
            )
    elif values:
        text, count, named = _psycopg_to_dollars(query)
        if named:
            raise _named(named)
        if not count:
            raise InvalidSetting(
                f"{len(values)} --param value(s) given but the query has no placeholder: drop --param, or put "
                "$1, $2... (or %s) where the values go"
            )
        if count != len(values):
            raise InvalidSetting(
                f"the query has {count} psycopg placeholder(s) (%s) but {len(values)} --param value(s) were given: "
                "pass one per %s, in order (a literal % is written %% in a query with %s placeholders)"
            )
    elif outside:
        raise InvalidSetting(
            f"the query has {len(outside)} psycopg placeholder(s) (%s) and no --param: pass one --param/-p VALUE "
            f"per placeholder, in order: {_example(len(outside))}"
        )
    try:
        raws = parse_sql(text)
    except ParseError as exc:
        at = exc.args[1] if len(exc.args) > 1 and isinstance(exc.args[1], int) else None
        raise _unparsable(text, str(exc.args[0]), at) from None
    if not raws:
        raise InvalidSetting(f"the query is empty: pass one {_KINDS} statement")
    if len(raws) > 1:
        raise InvalidSetting(
            f"the query holds {len(raws)} statements: explain takes one; run it once per statement "
            "(`callvault lint` checks files of many)"
        )
    stmt = raws[0].stmt
    if isinstance(stmt, ast.ExplainStmt):
        raise InvalidSetting(
            "drop the leading EXPLAIN from the query: callvault adds it (--analyze for EXPLAIN ANALYZE)"
        )
    if not isinstance(stmt, EXPLAINABLE):
        first = next(t for t in tokens if t.name not in ("SQL_COMMENT", "C_COMMENT"))
        kind = query[first.start : first.end + 1].upper()
        raise InvalidSetting(f"EXPLAIN cannot take a {kind} statement: pass a {_KINDS}")
    return Prepared(text, values, stmt)


def _refused(exc: psycopg.Error, prepared: Prepared, prefix_len: int, settings: Settings) -> CallvaultError:
    """The one line for what the server refused."""
    state = exc.sqlstate or ""
    diag = exc.diag
    message = (diag.message_primary or str(exc) or type(exc).__name__).strip().splitlines()[0]
    if state.startswith("08") or (isinstance(exc, psycopg.OperationalError) and not state):
        return DatabaseUnavailable(f"the connection failed while explaining the query: {message}; run again")
    position = int(diag.statement_position) - 1 - prefix_len if diag.statement_position else -1
    where = f" ({_where(prepared.text, position)})" if 0 <= position <= len(prepared.text) else ""
    hint = f" ({diag.message_hint})" if diag.message_hint else ""
    if state.startswith("22") and prepared.params:  # data exception: a value that does not fit its type
        fix = "check the --param values (and the SQL)"
    elif state == "42P01":
        fix = f"fix the SQL (the managed table is {settings.qualified})"
    else:
        fix = "fix the SQL"
    error = InvalidSetting if state[:2] in ("22", "42") else CallvaultError
    return error(f"cannot EXPLAIN the query: {message}{where}{hint}; {fix}")


def explain(
    conn: Conn, settings: Settings, query: str, params: Sequence[str] | None = None, *, analyze: bool = False,
    max_partitions: int | None = None,
) -> ExplainReport:  # fmt: skip
    """EXPLAIN (without ANALYZE unless asked) ``query`` with its ``$n`` or ``%s`` parameters and judge its pruning.

    Raises InvalidSetting (one line, saying how) for a query :func:`prepare` refuses or the server
    rejects, NotInitialised when the table does not exist or has no partitions, NotPruned never (the
    caller decides from ``report.problem``).

    :param params: one text value per placeholder, bound server-side (Postgres casts them).
    :param analyze: run ``EXPLAIN ANALYZE``: the query is executed, in a transaction always rolled back.
    :param max_partitions: a query whose plan keeps more partitions than this fails the check.
    :raises InvalidSetting: the query is refused before it is sent, the server rejects it (syntax, a
        value that does not fit), or it neither names the table nor reads a partition of it (exit code 2).
    :raises NotInitialised: the table does not exist or has no partitions (exit code 66).
    :raises DatabaseUnavailable: the connection failed while explaining (exit code 69).

    Example:

        window = ["2026-05-04T00:00:00Z", "2026-05-11T00:00:00Z"]
        sql = "SELECT count(*) FROM call_logs WHERE started_at >= $1 AND started_at < $2"
        report = explain(conn, settings, sql, window)
        report.scanned, report.pruning, report.problem      # ['call_logs_p2026w19'], 'plan-time', None
    """
    prepared = prepare(query, params or ())
    if not catalog.table_exists(conn, settings):
        raise NotInitialised(
            f"{settings.qualified} does not exist in this database: run `callvault init` first, or pass "
            "--schema/--table for the table you mean"
        )
    names = {r.info.name for r in catalog.list_partitions(conn, settings)}
    if not names:
        raise NotInitialised(
            f"{settings.qualified} has no partitions, so there is nothing to prune: run `callvault init` (it creates "
            "them), or pass --schema/--table for the partitioned table"
        )
    opts = "ANALYZE, " if analyze else ""
    json_prefix, text_prefix = f"EXPLAIN ({opts}FORMAT JSON) ", f"EXPLAIN ({opts}COSTS OFF) "
    cur = psycopg.RawCursor(conn)  # $n placeholders as they are; values bound server-side, unnamed statement
    prefix_len = len(json_prefix)
    try:
        with conn.transaction(force_rollback=True):  # ANALYZE executes: never keep its effects
            raw = cur.execute(sql.SQL(json_prefix) + sql.SQL(prepared.text), prepared.params or None).fetchone()
            prefix_len = len(text_prefix)
            text = cur.execute(sql.SQL(text_prefix) + sql.SQL(prepared.text), prepared.params or None).fetchall()
    except psycopg.Error as exc:
        raise _refused(exc, prepared, prefix_len, settings) from exc
    assert raw is not None
    doc = raw[0] if not isinstance(raw[0], str) else json.loads(raw[0])
    rels, removed = walk(doc[0]["Plan"])
    scanned = sorted({p for r in rels if (p := partition_of(r, names)) is not None})
    if not scanned and not prepared.names(settings):
        raise InvalidSetting(
            f"the query does not name {settings.qualified} and its plan reads none of its partitions: nothing to "
            f"judge; explain a query on {settings.qualified}, or pass --schema/--table for the table it reads"
        )
    reads = prepared.reads(settings)
    return ExplainReport(
        table=settings.qualified, partitions_total=len(names), scanned=scanned, subplans_removed=removed,
        plan=[r[0] for r in text], max_partitions=max_partitions, reads=reads, tasks=task_count(doc[0]["Plan"]),
    )  # fmt: skip


def explain_read(conn: Conn, settings: Settings, statement: sql.Composable, params: Mapping[str, Any]) -> ExplainReport:
    """EXPLAIN a statement callvault composed itself — a Reader's read with its parameters, e.g. the hot
    half of ``callvault calls --search`` — judged as :func:`explain` judges a query (never executed)."""
    names = {r.info.name for r in catalog.list_partitions(conn, settings)}
    with conn.transaction(force_rollback=True):
        raw = conn.execute(sql.SQL("EXPLAIN (FORMAT JSON) {}").format(statement), params).fetchone()
        text = conn.execute(sql.SQL("EXPLAIN (COSTS OFF) {}").format(statement), params).fetchall()
    assert raw is not None
    doc = raw[0] if not isinstance(raw[0], str) else json.loads(raw[0])
    rels, removed = walk(doc[0]["Plan"])
    scanned = sorted({p for r in rels if (p := partition_of(r, names)) is not None})
    return ExplainReport(
        table=settings.qualified, partitions_total=len(names), scanned=scanned, subplans_removed=removed,
        plan=[r[0] for r in text], reads=True, tasks=task_count(doc[0]["Plan"]),
    )  # fmt: skip
