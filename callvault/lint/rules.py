"""The partition-key checklist as rules over Postgres's own parse tree (pglast).

Each rule looks at one *scope*: a reference to the table in one query level (found by
:mod:`callvault.lint`) with the WHERE and JOIN ON conditions of that level. Subqueries and CTEs are
levels of their own, so a bound in an outer query never excuses an inner one.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import asdict, dataclass
from typing import Any

from pglast import ast
from pglast.enums import A_Expr_Kind, BoolExprType
from pglast.stream import RawStream

RULES: dict[str, str] = {
    "CV000": "SQL does not parse",
    "CV001": "no predicate on the partition key",
    "CV002": "partition key wrapped in a function, cast or expression",
    "CV003": "BETWEEN on the timestamp partition key",
    "CV004": "tenant filter without a time bound",
    "CV005": "partition-key bound only inside an OR",
}

_COMPARE = {"<": ">", "<=": ">=", "=": "=", ">=": "<=", ">": "<"}  # operator -> same test, sides swapped
_ARITHMETIC = {"+", "-", "*", "/", "%", "||"}
_BETWEEN = {A_Expr_Kind.AEXPR_BETWEEN, A_Expr_Kind.AEXPR_BETWEEN_SYM}
_IN_ANY = {A_Expr_Kind.AEXPR_IN, A_Expr_Kind.AEXPR_OP_ANY}  # key IN (...) / key = ANY(...)


@dataclass(frozen=True)
class Finding:
    """One problem: where it is, what is wrong, why it matters and how to rewrite it."""

    rule: str
    line: int
    statement: int
    message: str
    why: str
    fix: str

    def to_dict(self) -> dict[str, object]:
        return asdict(self)


@dataclass(frozen=True)
class Scope:
    """One reference to the table in one query level, with the conditions around it."""

    qualifier: str  # what its columns may be qualified with: the alias, else the table name
    col: str  # the key as the fix should spell it (``c.started_at`` under an alias)
    location: int
    filters: tuple[Any, ...]  # WHERE plus the JOIN ON conditions that restrict this reference's rows
    conditions: tuple[Any, ...]  # WHERE plus every JOIN ON condition of the level


# -- tree helpers ---------------------------------------------------------------------------------


def children(node: Any) -> Iterator[Any]:
    stack = [getattr(node, name) for name in node]
    while stack:
        value = stack.pop(0)
        if isinstance(value, ast.Node):
            yield value
        elif isinstance(value, tuple):
            stack[:0] = value


def walk(node: Any, *, into_subqueries: bool = False) -> Iterator[Any]:
    """``node`` and its descendants; subqueries are skipped unless asked (they are levels of their own)."""
    yield node
    if into_subqueries or not isinstance(node, ast.SelectStmt):
        for child in children(node):
            yield from walk(child, into_subqueries=into_subqueries)


def _sql(node: Any) -> str:
    return str(RawStream(special_functions=True)(node))


def _op(node: Any) -> str | None:
    if isinstance(node, ast.A_Expr) and node.kind == A_Expr_Kind.AEXPR_OP and node.name:
        return str(node.name[-1].sval)
    return None


def _is_column(node: Any, column: str, qualifier: str | None = None) -> bool:
    """``node`` is ``column``: bare, or (given a qualifier) qualified by it, or (given none) by anything."""
    if not isinstance(node, ast.ColumnRef) or not node.fields:
        return False
    fields = [getattr(f, "sval", None) for f in node.fields]
    return fields[-1] == column and (len(fields) == 1 or qualifier is None or fields[-2] == qualifier)


def _has_column(node: Any, column: str, qualifier: str | None = None) -> bool:
    return any(_is_column(n, column, qualifier) for n in walk(node))


def _location(node: Any, default: int) -> int:
    found = [n.location for n in walk(node) if isinstance(getattr(n, "location", None), int) and n.location >= 0]
    return min(found, default=default)


def _conjuncts(expr: Any) -> Iterator[Any]:
    if isinstance(expr, ast.BoolExpr) and expr.boolop == BoolExprType.AND_EXPR:
        for arg in expr.args or ():
            yield from _conjuncts(arg)
    else:
        yield expr


# -- CV001 / CV004 / CV005: is there a bound that holds for every row? ---------------------------


def _is_comparison(expr: Any, s: Scope, key: str) -> bool:
    """``key <op> x``, ``x <op> key``, ``key BETWEEN x AND y``, ``key IN (x)``, ``key = ANY(x)``; x free of the key."""
    if not isinstance(expr, ast.A_Expr):
        return False
    lexpr, rexpr = expr.lexpr, expr.rexpr
    if _op(expr) in _COMPARE:
        return (_is_column(lexpr, key, s.qualifier) and not _has_column(rexpr, key)) or (
            _is_column(rexpr, key, s.qualifier) and not _has_column(lexpr, key)
        )
    is_any = expr.kind in _IN_ANY and expr.name and expr.name[-1].sval == "="
    if expr.kind in _BETWEEN or is_any:
        values = rexpr if isinstance(rexpr, tuple) else (rexpr,)
        return _is_column(lexpr, key, s.qualifier) and not any(_has_column(v, key) for v in values)
    return False


def _is_bound(expr: Any, s: Scope, key: str) -> bool:
    """A bound for every row ``expr`` lets through: a comparison, any AND-ed one, one in every OR branch."""
    if isinstance(expr, ast.BoolExpr) and expr.boolop == BoolExprType.AND_EXPR:
        return any(_is_bound(arg, s, key) for arg in expr.args or ())
    if isinstance(expr, ast.BoolExpr) and expr.boolop == BoolExprType.OR_EXPR:
        return all(_is_bound(arg, s, key) for arg in expr.args or ())
    return _is_comparison(expr, s, key)


def _bound_under_or(s: Scope, key: str) -> bool:
    ors = [n for c in s.filters for n in walk(c) if isinstance(n, ast.BoolExpr) and n.boolop == BoolExprType.OR_EXPR]
    return any(_is_comparison(n, s, key) for o in ors for n in walk(o))


def _missing_bound(s: Scope, table: str, key: str, tenant: str) -> tuple[str, str, str] | None:
    """(rule, message, fix) when no bound on the key holds for every row read, else None."""
    if any(_is_bound(c, s, key) for c in s.filters):
        return None
    window = f"{s.col} >= $since AND {s.col} < $until"
    ref = table if s.col == key else f"{table} {s.qualifier}"
    if _bound_under_or(s, key):
        return (
            "CV005",
            f"the bound on {key} is inside an OR with a branch that has none",
            f"move the bound out of the OR (WHERE {window} AND (... OR ...)), or UNION ALL separately pinned queries",
        )
    if any(_has_column(c, tenant, s.qualifier) for f in s.filters for c in _conjuncts(f)):
        return "CV004", f"{ref} is filtered on {tenant} but not on {key}", f"pin the window: add AND {window}"
    return "CV001", f"{ref} is read with no bound on {key}", f"add AND {window}"


# -- CV002: the key wrapped; CV003: BETWEEN on the key ---------------------------------------------


def _funcname(node: Any) -> str:
    return ".".join(str(getattr(part, "sval", "")) for part in node.funcname or ())


def _typename(cast: Any) -> str:
    return str(cast.typeName.names[-1].sval)


def _wrapper(node: Any, s: Scope, key: str) -> str | None:
    """How ``node`` wraps the key (``date_trunc()``, ``a cast to date``, ``AT TIME ZONE``...), else None."""
    is_wrapper = isinstance(node, ast.FuncCall | ast.TypeCast) or _op(node) in _ARITHMETIC
    if not is_wrapper or not any(_is_column(n, key, s.qualifier) for c in children(node) for n in walk(c)):
        return None
    if isinstance(node, ast.FuncCall):
        name = _funcname(node)
        return "AT TIME ZONE" if name == "pg_catalog.timezone" else f"{name.removeprefix('pg_catalog.')}()"
    if isinstance(node, ast.TypeCast):
        return f"a cast to {_typename(node)}"
    return f"arithmetic ({_op(node)})"


def _wrapped(node: Any, s: Scope, key: str, cmp: Any = None) -> Iterator[tuple[Any, str, Any]]:
    """(wrapper, how, the comparison it is a side of or None) for each outermost wrapper of the key."""
    how = _wrapper(node, s, key)
    if how:
        yield node, how, cmp
    elif not isinstance(node, ast.SelectStmt):
        is_cmp = _op(node) in _COMPARE or getattr(node, "kind", None) in _BETWEEN
        for child in children(node):
            yield from _wrapped(child, s, key, node if is_cmp else None)


def _unwrap(wrapper: Any, s: Scope, key: str) -> tuple[str, str] | None:
    """("unit", unit) for ``key::date`` / ``date_trunc('unit', key)``, ("zone", zone) for ``key AT TIME ZONE zone``."""
    if isinstance(wrapper, ast.TypeCast) and _typename(wrapper) == "date":
        return ("unit", "day") if _is_column(wrapper.arg, key, s.qualifier) else None
    args: tuple[Any, ...] = tuple(getattr(wrapper, "args", None) or ())
    if not isinstance(wrapper, ast.FuncCall) or len(args) != 2 or not _is_column(args[1], key, s.qualifier):
        return None
    unit = getattr(getattr(args[0], "val", None), "sval", None)
    if _funcname(wrapper) == "date_trunc" and unit:
        return "unit", str(unit).lower()
    return ("zone", _sql(args[0])) if _funcname(wrapper) == "pg_catalog.timezone" else None


def _sides(cmp: Any, wrapper: Any) -> tuple[str, Any, Any] | None:
    """(operator read with the wrapper on the left, value, upper value for BETWEEN) of a comparison."""
    if cmp.kind in _BETWEEN:
        return ("BETWEEN", cmp.rexpr[0], cmp.rexpr[1]) if cmp.lexpr is wrapper else None
    op = str(_op(cmp))
    return (op, cmp.rexpr, None) if cmp.lexpr is wrapper else (_COMPARE[op], cmp.lexpr, None)


def _paren(node: Any) -> str:
    text = _sql(node)
    return text if isinstance(node, ast.A_Const | ast.ParamRef | ast.ColumnRef) else f"({text})"


def _rewrite(wrapper: Any, cmp: Any, s: Scope, key: str) -> str | None:
    """``cmp`` as a half-open range on the raw column, for the wrappers with a clean inverse."""
    how = _unwrap(wrapper, s, key) if cmp is not None else None
    sides = _sides(cmp, wrapper) if how else None
    if how is None or sides is None:
        return None
    (kind, arg), (op, lo, hi), col = how, sides, s.col
    if kind == "zone":  # key AT TIME ZONE z <op> t  <=>  key <op> t AT TIME ZONE z

        def at(v: Any) -> str:
            return f"{_paren(v)} AT TIME ZONE {arg}"

        return f"{col} >= {at(lo)} AND {col} < {at(hi)}" if hi is not None else f"{col} {op} {at(lo)}"

    def end(v: Any) -> str:  # the start of the unit after the one v starts
        return f"{_paren(v)}::date + 1" if arg == "day" else f"{_paren(v)}::timestamptz + interval '1 {arg}'"

    if hi is not None:
        return f"{col} >= {_sql(lo)} AND {col} < {end(hi)}"
    forms = {"=": f"{col} >= {_sql(lo)} AND {col} < {end(lo)}", ">=": f"{col} >= {_sql(lo)}"}
    return (forms | {">": f"{col} >= {end(lo)}", "<": f"{col} < {_sql(lo)}", "<=": f"{col} < {end(lo)}"})[op]


def _wrapped_findings(s: Scope, key: str) -> Iterator[tuple[int, str, str, str]]:
    for cond in s.conditions:
        for wrapper, how, cmp in _wrapped(cond, s, key):
            fix = _rewrite(wrapper, cmp, s, key) or (
                f"compare the raw column with a half-open range, computing the bounds on the other side: "
                f"{s.col} >= <start> AND {s.col} < <end>"
            )
            text = _sql(cmp if cmp is not None else wrapper)
            yield (
                _location(cmp if cmp is not None else wrapper, s.location),
                "CV002",
                f"{key} is wrapped in {how}: {text}",
                fix,
            )


def _between_findings(s: Scope, key: str) -> Iterator[tuple[int, str, str, str]]:
    for cond in s.conditions:
        for n in walk(cond):
            if isinstance(n, ast.A_Expr) and n.kind in _BETWEEN and _is_column(n.lexpr, key, s.qualifier):
                lo, hi = _sql(n.rexpr[0]), _sql(n.rexpr[1])  # type: ignore[index]
                fix = f"{s.col} >= {lo} AND {s.col} < {hi} (with {hi} the start of the next window)"
                yield _location(n, s.location), "CV003", f"BETWEEN on {key} includes the upper bound: {_sql(n)}", fix


_WHY = {
    "CV001": "without a bound on {key} the planner cannot prune: every partition of {table} is read",
    "CV002": "pruning matches only conditions on the raw column; through a function, cast or expression "
    "the planner cannot map the condition to partitions and reads them all",
    "CV003": "BETWEEN includes its upper bound, so a row exactly on a boundary is counted in both adjacent "
    "windows (it still prunes: this is about correctness)",
    "CV004": "the {tenant} index of each partition is used, but with no time bound every partition's index is "
    "probed: one more per week of retention",
    "CV005": "a row can pass the OR without meeting the {key} bound, so no bound holds for every row and "
    "no partition is pruned",
}


def scope_findings(s: Scope, *, table: str, key: str, tenant: str) -> list[tuple[int, str, str, str, str]]:
    """(offset, rule, message, why, fix) for one scope: its expression findings in order, then a missing bound."""
    hits = sorted([*_wrapped_findings(s, key), *_between_findings(s, key)], key=lambda hit: hit[0])
    missing = _missing_bound(s, table, key, tenant)
    if missing:
        hits.append((s.location, *missing))
    return [
        (at, rule, message, _WHY[rule].format(key=key, table=table, tenant=tenant), fix)
        for at, rule, message, fix in hits
    ]
