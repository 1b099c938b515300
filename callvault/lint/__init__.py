"""Static SQL linter: the partition-key checklist for ``call_logs``, over Postgres's own parser.

``lint_sql(text)`` parses SQL (a file or a string; psycopg ``%s`` / ``%(name)s`` placeholders are
allowed) with pglast, finds every reference to the table that a SELECT/UPDATE/DELETE reads (in FROM,
JOIN, subqueries, CTEs, INSERT ... SELECT) and runs the rules of :mod:`callvault.lint.rules` on each.
This module finds what to check; ``rules`` decides what is wrong with it.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from typing import Any

from pglast import ast
from pglast.enums import JoinType
from pglast.parser import ParseError, parse_sql, scan

from callvault.lint.rules import RULES, Finding, Scope, scope_findings, walk

__all__ = ["RULES", "Finding", "lint_sql"]

# psycopg placeholders are not SQL: each becomes "$1" padded to its own length, so offsets (lines) stay put.
_PLACEHOLDER = re.compile(r"%%|%[sbt]|%\([^)]*\)[sbt]")


def _substitute(match: re.Match[str]) -> str:
    text = match.group()
    return "% " if text == "%%" else "$1".ljust(len(text))


def _line(text: str, offset: int) -> int:
    return text.count("\n", 0, offset) + 1


def _syntax_error(text: str, message: str, offset: int | None) -> Finding:
    if offset is None or offset < 0:  # "at end of input" has no location
        offset = len(text.rstrip())
    try:
        statement = 1 + sum(token.name == "ASCII_59" for token in scan(text[:offset]))  # semicolons before it
    except (ParseError, UnicodeError):  # the prefix itself does not scan: count naively
        statement = 1 + text.count(";", 0, offset)
    return Finding(
        "CV000",
        _line(text, offset),
        statement,
        f"SQL does not parse: {message}",
        "nothing in the input can be checked until it parses",
        "fix the syntax (psycopg %s / %(name)s placeholders are accepted, other templating is not)",
    )


def _parse(sql: str) -> tuple[Any, ...] | Finding:
    """The statements of ``sql``, or the CV000 finding saying why there are none."""
    if "\x00" in sql:  # the C parser would silently stop there
        return _syntax_error(sql, "NUL character in the input", sql.index("\x00"))
    try:
        return parse_sql(sql)
    except ParseError as error:
        offset = error.args[1] if len(error.args) > 1 and isinstance(error.args[1], int) else None
        return _syntax_error(sql, str(error.args[0]), offset)
    except UnicodeEncodeError as error:  # lone surrogates, e.g. from a file read with errors="surrogateescape"
        return _syntax_error(sql, f"not valid UTF-8 ({error.reason})", error.start)


# -- the references to the table -------------------------------------------------------------------


def _matches(node: Any, table: str) -> bool:
    schema, _, name = table.rpartition(".")
    return isinstance(node, ast.RangeVar) and node.relname == name and (not schema or node.schemaname in (None, schema))


def _from(item: Any, table: str, filters: dict[int, list[Any]], quals: list[Any]) -> list[Any]:
    """References to ``table`` under a FROM item. Collects every ON condition in ``quals`` and, per reference,
    ``filters[id(ref)] = [ref, *the ON conditions that restrict its rows]``."""
    if isinstance(item, ast.RangeVar) and _matches(item, table):
        filters[id(item)] = [item]
        return [item]
    if not isinstance(item, ast.JoinExpr):
        return []  # other tables; subselects and functions are query levels of their own
    left, right = _from(item.larg, table, filters, quals), _from(item.rarg, table, filters, quals)
    if item.quals is not None:
        quals.append(item.quals)
        # ON restricts both sides of an inner join, only the nullable side of an outer one.
        restricted = left + right if item.jointype == JoinType.JOIN_INNER else []
        restricted += right if item.jointype == JoinType.JOIN_LEFT else []
        restricted += left if item.jointype == JoinType.JOIN_RIGHT else []
        for ref in restricted:
            filters[id(ref)].append(item.quals)
    return left + right


def _level(node: Any) -> tuple[list[Any], Any] | None:
    """(FROM items, WHERE) of a query level that reads tables, else None. INSERT ... VALUES has none."""
    if isinstance(node, ast.SelectStmt):
        return list(node.fromClause or ()), node.whereClause
    if isinstance(node, ast.UpdateStmt):
        return [node.relation, *(node.fromClause or ())], node.whereClause
    if isinstance(node, ast.DeleteStmt):
        return [node.relation, *(node.usingClause or ())], node.whereClause
    return None


def _scopes(stmt: Any, table: str, key: str) -> Iterator[Scope]:
    """Every reference to ``table`` read by a SELECT/UPDATE/DELETE anywhere in ``stmt``."""
    for node in walk(stmt, into_subqueries=True):
        level = _level(node)
        if level is None:
            continue
        items, where = level
        filters: dict[int, list[Any]] = {}
        quals: list[Any] = []
        for item in items:
            _from(item, table, filters, quals)
        for ref, *on in filters.values():
            qualifier = ref.alias.aliasname if ref.alias else ref.relname
            restricting = tuple(c for c in (where, *on) if c is not None)
            every = tuple(c for c in (where, *quals) if c is not None)
            yield Scope(qualifier, f"{qualifier}.{key}" if ref.alias else key, ref.location, restricting, every)


def lint_sql(
    text: str, *, table: str = "call_logs", key: str = "started_at", tenant: str = "tenant_id"
) -> list[Finding]:
    """Findings for the statements in ``text`` that read ``table`` (bare or schema-qualified name).

    In statement order; within a statement, per reference to the table: what is wrong in its
    conditions (CV002/CV003, in source order), then the missing bound (CV001/CV004/CV005).
    A syntax error gives a single CV000 finding instead of raising.
    """
    sql = _PLACEHOLDER.sub(_substitute, text)
    statements = _parse(sql)
    if isinstance(statements, Finding):
        return [statements]
    found: list[Finding] = []
    for number, raw in enumerate(statements, 1):
        for s in _scopes(raw.stmt, table, key):
            for offset, rule, message, why, fix in scope_findings(s, table=table, key=key, tenant=tenant):
                finding = Finding(rule, _line(sql, offset), number, message, why, fix)
                if finding not in found:  # an unqualified key in a self-join is seen once per reference
                    found.append(finding)
    return found
