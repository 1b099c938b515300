"""EXPLAIN (FORMAT JSON) plans, read in one place (pure): which relations a plan scans and how many
subplans the executor removed at startup. Used by ``callvault explain`` and the Reader's
``explain_window``.

A Citus coordinator's plan is a ``Custom Scan (Citus Adaptive)`` whose ``Distributed Query`` holds the
job's ``Task Count`` and the tasks shown, each with the worker's ``Remote Plan``: the walk descends into
them, and the shards' names (``<partition>_<shard id>``) are read as their partitions' names by
:func:`partition_of`."""

from __future__ import annotations

import re
from collections.abc import Collection
from typing import Any

_SHARD_SUFFIX = re.compile(r"_\d+$")


def walk(node: dict[str, Any]) -> tuple[list[str], int]:
    """(relation names in the plan, total Subplans Removed) of one EXPLAIN JSON plan node."""
    rels = [str(node["Relation Name"])] if "Relation Name" in node else []
    removed = int(node.get("Subplans Removed", 0))
    for child in node.get("Plans", []):
        r, n = walk(child)
        rels += r
        removed += n
    for remote in _remote_plans(node):
        r, n = walk(remote)
        rels += r
        removed += n
    return rels, removed


def _jobs(node: dict[str, Any]) -> list[dict[str, Any]]:
    dq = node.get("Distributed Query")
    return [dq["Job"]] if isinstance(dq, dict) and isinstance(dq.get("Job"), dict) else []


def _remote_plans(node: dict[str, Any]) -> list[dict[str, Any]]:
    out = []
    for job in _jobs(node):
        for task in job.get("Tasks", []):
            for group in task.get("Remote Plan", []):
                for doc in group if isinstance(group, list) else [group]:
                    if isinstance(doc, dict) and isinstance(doc.get("Plan"), dict):
                        out.append(doc["Plan"])
    return out


def task_count(node: dict[str, Any]) -> int | None:
    """The tasks a Citus plan runs on workers (summed over its jobs), None for a plain PostgreSQL plan."""
    counts: list[int] = []

    def visit(n: dict[str, Any]) -> None:
        counts.extend(int(job.get("Task Count", 0)) for job in _jobs(n))
        for child in n.get("Plans", []):
            visit(child)

    visit(node)
    return sum(counts) if counts else None


def partition_of(relation: str, partitions: Collection[str]) -> str | None:
    """The partition a scanned relation is: itself, or the partition a Citus shard (``name_<id>``) belongs to."""
    if relation in partitions:
        return relation
    base = _SHARD_SUFFIX.sub("", relation)
    return base if base != relation and base in partitions else None
