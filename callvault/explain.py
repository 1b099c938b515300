"""``callvault explain``: does a query prune partitions? EXPLAIN it and count.

Reports the partitions of the managed table that appear in the plan against all its partitions,
whether pruning happened at plan time (partitions absent from the plan) or at executor start
("Subplans Removed", what generic plans of prepared statements do), and a verdict: a query that
scans every partition, or more than ``max_partitions``, fails.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

import psycopg
from psycopg import sql

from callvault import catalog
from callvault.config import Settings
from callvault.db import Conn
from callvault.errors import CallvaultError, InvalidSetting


class NotPruned(CallvaultError):
    """The query reads more partitions than allowed."""

    exit_code = 4


@dataclass
class ExplainReport:
    table: str
    partitions_total: int
    scanned: list[str]
    subplans_removed: int
    plan: list[str] = field(default_factory=list)
    max_partitions: int | None = None

    @property
    def pruning(self) -> str:
        if self.subplans_removed:
            return "executor-start"
        if self.scanned and len(self.scanned) < self.partitions_total:
            return "plan-time"
        return "none" if self.scanned else "not-applicable"

    @property
    def problem(self) -> str | None:
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
        return {
            "table": self.table, "partitions_total": self.partitions_total, "partitions_scanned": len(self.scanned),
            "scanned": self.scanned, "subplans_removed": self.subplans_removed, "pruning": self.pruning,
            "ok": self.problem is None, "problem": self.problem, "plan": self.plan,
        }  # fmt: skip


def walk(node: dict[str, Any]) -> tuple[list[str], int]:
    """(relation names in the plan, total Subplans Removed) of one EXPLAIN JSON plan node (pure)."""
    rels = [str(node["Relation Name"])] if "Relation Name" in node else []
    removed = int(node.get("Subplans Removed", 0))
    for child in node.get("Plans", []):
        r, n = walk(child)
        rels += r
        removed += n
    return rels, removed


def explain(
    conn: Conn, settings: Settings, query: str, params: list[str] | None = None, *, analyze: bool = False,
    max_partitions: int | None = None,
) -> ExplainReport:  # fmt: skip
    """EXPLAIN (without ANALYZE unless asked) ``query`` with ``%s`` parameters and judge its pruning."""
    names = {r.info.name for r in catalog.list_partitions(conn, settings)}
    opts = sql.SQL("ANALYZE, " if analyze else "")
    try:
        with conn.transaction(force_rollback=True):  # ANALYZE executes: never keep its effects
            raw = conn.execute(
                sql.SQL("EXPLAIN ({}FORMAT JSON) ").format(opts) + sql.SQL(query),
                params or None,
            ).fetchone()
            text = conn.execute(
                sql.SQL("EXPLAIN ({}COSTS OFF) ").format(opts) + sql.SQL(query),
                params or None,
            ).fetchall()
    except psycopg.Error as exc:
        raise InvalidSetting(f"cannot EXPLAIN the query: {exc.diag.message_primary or exc}") from exc
    assert raw is not None
    doc = raw[0] if not isinstance(raw[0], str) else json.loads(raw[0])
    rels, removed = walk(doc[0]["Plan"])
    return ExplainReport(
        table=settings.qualified, partitions_total=len(names), scanned=sorted(set(rels) & names),
        subplans_removed=removed, plan=[r[0] for r in text], max_partitions=max_partitions,
    )  # fmt: skip
