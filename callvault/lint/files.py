"""``callvault lint`` on files: read each one (or stdin), lint it, and decide the exit code.

A file that cannot be read is one line naming it, and the other files are still linted. Exit codes:
0 clean, 4 findings, 5 a statement does not parse (CV000; every other statement was still checked),
2 a file cannot be read. The worst wins: 2, then 5, then 4.
"""

from __future__ import annotations

import codecs
import shlex
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from callvault.errors import CallvaultError, InvalidSetting
from callvault.lint.check import lint_sql

STDIN = "-"
MAX_NAMED = 5  # locations named in the one-line summary


class LintFindings(CallvaultError):
    """The linted SQL has findings (CV001-CV005)."""

    exit_code = 4


class DoesNotParse(CallvaultError):
    """A statement does not parse (CV000): it was not checked; every other statement was."""

    exit_code = 5


class Unreadable(InvalidSetting):
    """A file given to lint cannot be read (missing, a directory, no permission)."""

    exit_code = 2


def decode(data: bytes) -> str:
    """Text of a SQL file: UTF-8 (a BOM is dropped) or UTF-16 with its BOM. Invalid UTF-8 bytes are kept as
    lone surrogates, so that the statement holding them is reported (CV000) and the others are checked."""
    if data.startswith((codecs.BOM_UTF16_LE, codecs.BOM_UTF16_BE)):
        try:
            return data.decode("utf-16")
        except UnicodeDecodeError:
            pass
    return data.decode("utf-8-sig", "surrogateescape")


def _stdin() -> bytes:
    buffer = getattr(sys.stdin, "buffer", None)
    return buffer.read() if buffer is not None else sys.stdin.read().encode("utf-8", "surrogateescape")


def read_source(path: str) -> str:
    """The text of the SQL file ``path`` (``-``: stdin), or :class:`Unreadable` naming it and the fix."""
    name = shlex.quote(path)
    try:
        return decode(_stdin() if path == STDIN else Path(path).read_bytes())
    except FileNotFoundError:
        why = "no such file: pass an existing SQL file, or - to read stdin"
    except IsADirectoryError:
        why = f"it is a directory: pass the SQL files in it (e.g. {shlex.quote(path.rstrip('/') or '/')}/*.sql)"
    except PermissionError:
        why = "permission denied: make it readable (chmod) or run as a user who can"
    except OSError as exc:
        why = f"{(exc.strerror or str(exc)).lower()}: check the path"
    raise Unreadable(f"cannot read {name}: {why}")


@dataclass
class LintRun:
    """What linting some files found: one dict per finding (with its file), and the files not read."""

    findings: list[dict[str, object]] = field(default_factory=list)
    unreadable: list[str] = field(default_factory=list)  # one message per file
    read: int = 0

    def failure(self) -> CallvaultError | None:
        """The one-line error the command exits with, or None when the SQL is clean."""
        bad = [f for f in self.findings if f["rule"] == "CV000"]
        others = len(self.findings) - len(bad)
        if self.unreadable:
            message = "; ".join(self.unreadable)
            if self.findings:
                message += f"; the files that could be read have {len(self.findings)} finding(s)"
            return Unreadable(message)
        if bad:
            return DoesNotParse(
                f"{len(bad)} statement(s) do not parse ({_where(bad)}): fix the syntax and run again; "
                f"every other statement was checked ({others} other finding(s))"
            )
        if self.findings:
            return LintFindings(
                f"{len(self.findings)} lint finding(s) ({_where(self.findings)}): rewrite each as its fix says, "
                "then run again"
            )
        return None


def _where(findings: list[dict[str, object]]) -> str:
    named = [f"{f['file']}:{f['line']}" for f in findings[:MAX_NAMED]]
    return ", ".join(named) + (", ..." if len(findings) > MAX_NAMED else "")


def lint_paths(paths: Sequence[str], *, table: str = "call_logs") -> LintRun:
    """Lint each file (``-``: stdin) in order; a file that cannot be read is noted and skipped."""
    run = LintRun()
    for path in paths or (STDIN,):
        try:
            text = read_source(path)
        except Unreadable as exc:
            run.unreadable.append(str(exc))
            continue
        run.read += 1
        run.findings += [{"file": path, **finding.to_dict()} for finding in lint_sql(text, table=table)]
    return run
