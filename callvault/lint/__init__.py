"""Static SQL linter: the partition-key checklist for ``call_logs``, over Postgres's own parser.

``lint_sql(text)`` parses SQL (a file or a string; ``$1`` and psycopg ``%s`` / ``%(name)s``
placeholders are allowed) with pglast statement by statement (:mod:`callvault.lint.split`), finds
every reference to the table that a SELECT/UPDATE/DELETE reads (in FROM, JOIN, subqueries, CTEs,
INSERT ... SELECT) and runs the rules of :mod:`callvault.lint.rules` on each. :mod:`callvault.lint.check`
finds what to check; ``rules`` decides what is wrong with it; :mod:`callvault.lint.files` reads files
for the command and turns the result into its exit code.
"""

from __future__ import annotations

from callvault.lint.check import lint_sql, reads_table
from callvault.lint.files import DoesNotParse, LintFindings, LintRun, Unreadable, lint_paths, read_source
from callvault.lint.rules import RULES, Finding

__all__ = [
    "RULES",
    "DoesNotParse",
    "Finding",
    "LintFindings",
    "LintRun",
    "Unreadable",
    "lint_paths",
    "lint_sql",
    "read_source",
    "reads_table",
]
