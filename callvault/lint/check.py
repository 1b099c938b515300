"""What to check: every reference to the table a statement reads, the rules run on each (see the
package docstring). :func:`lint_sql` is the linter; :mod:`callvault.lint.files` runs it over files."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from pglast import ast
from pglast.enums import JoinType

from callvault.lint.rules import Finding, Scope, scope_findings, walk
from callvault.lint.split import Source, Unit, prepare, statements

_UNPARSED = "this statement cannot be checked until it parses; every other statement was checked"
_NOT_CHECKED = {  # kind -> (why, fix)
    "syntax": (
        _UNPARSED,
        "fix the syntax (psycopg %s / %(name)s and $1 placeholders are accepted, other templating is not)",
    ),
    "nul": (_UNPARSED, "remove the NUL character (a UTF-16 or binary file? save it as UTF-8 text)"),
    "encoding": (_UNPARSED, "save the file as UTF-8 (e.g. iconv -f latin1 -t utf-8 FILE)"),
    "deep": (
        "the checker stops at Python's recursion limit; every other statement was checked",
        "split the expression (fewer nested calls or parentheses), or judge this one with `callvault explain`",
    ),
}


def _line(text: str, offset: int) -> int:
    return text.count("\n", 0, offset) + 1


def _not_checked(source: Source, number: int, at: int, message: str, kind: str) -> Finding:
    why, fix = _NOT_CHECKED[kind]
    return Finding("CV000", _line(source.sql, at), number, message, why, fix)


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


def reads_table(stmt: Any, table: str = "call_logs", key: str = "started_at") -> bool:
    """Whether a SELECT/UPDATE/DELETE anywhere in ``stmt`` (one parsed statement) reads ``table``."""
    return any(True for _ in _scopes(stmt, table, key))


def _unit_findings(source: Source, unit: Unit, table: str, key: str, tenant: str) -> list[Finding]:
    found: list[Finding] = []
    for s in _scopes(unit.stmt, table, key):
        for offset, rule, message, why, fix in scope_findings(s, table=table, key=key, tenant=tenant):
            at = unit.base + offset
            finding = Finding(
                rule, _line(source.sql, at), unit.number, source.spelled(message, at), why, source.spelled(fix, at)
            )
            if finding not in found:  # an unqualified key in a self-join is seen once per reference
                found.append(finding)
    return found


def lint_sql(
    text: str, *, table: str = "call_logs", key: str = "started_at", tenant: str = "tenant_id"
) -> list[Finding]:
    """Findings for the statements in ``text`` that read ``table`` (bare or schema-qualified name).

    In statement order; within a statement, per reference to the table: what is wrong in its
    conditions (CV002/CV003, in source order), then the missing bound (CV001/CV004/CV005).
    A statement that does not parse gives one CV000 finding, and every other statement is still
    checked. psycopg placeholders count as ``$1``, ``$2``... of their statement; messages spell named
    ones as written. Never raises.
    """
    source = prepare(text)
    found: list[Finding] = []
    for unit in statements(source):
        if unit.error is not None:
            found.append(
                _not_checked(source, unit.number, unit.error_at, f"SQL does not parse: {unit.error}", unit.error_kind)
            )
            continue
        try:
            found += _unit_findings(source, unit, table, key, tenant)
        except RecursionError:  # thousands of nested expressions: Postgres parses them, the rules do not
            found.append(_not_checked(source, unit.number, unit.at, "SQL too deeply nested to check", "deep"))
    return found
