"""EXPLAIN (FORMAT JSON) plans, read in one place (pure): which relations a plan scans and how many
subplans the executor removed at startup. Used by ``callvault explain`` and the Reader's
``explain_window``."""

from __future__ import annotations

from typing import Any


def walk(node: dict[str, Any]) -> tuple[list[str], int]:
    """(relation names in the plan, total Subplans Removed) of one EXPLAIN JSON plan node."""
    rels = [str(node["Relation Name"])] if "Relation Name" in node else []
    removed = int(node.get("Subplans Removed", 0))
    for child in node.get("Plans", []):
        r, n = walk(child)
        rels += r
        removed += n
    return rels, removed
