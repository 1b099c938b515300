"""A SQL text as statements, one at a time, the way Postgres's own scanner and parser see it (pure).

``prepare(text)`` turns psycopg placeholders into ``$n`` (numbered per statement, lines kept) and
``statements(source)`` yields each statement's parse tree, or why it does not parse. The whole text
is parsed at once when it can be; when it cannot, it is cut at the scanner's semicolons and every
piece is parsed on its own, so one broken statement hides nothing else.
"""

from __future__ import annotations

import contextlib
import re
from bisect import bisect_right
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

from pglast.parser import ParseError, parse_sql, scan

# psycopg's placeholders, as psycopg itself finds them (also inside string literals).
PLACEHOLDER = re.compile(r"%%|%[sbt]|%\([^)]*\)[sbt]")
# What the C scanner cannot take: it stops at NUL, and lone surrogates do not encode to UTF-8.
_UNSCANNABLE = re.compile("[\x00\ud800-\udfff]")
_RESUME = re.compile(r"[\s;]")


def _offset(error: ParseError) -> int | None:
    at = error.args[1] if len(error.args) > 1 else None
    return at if isinstance(at, int) and at >= 0 else None


def semicolons(text: str) -> list[int]:
    """Offsets of the semicolons that end statements (not those in strings, comments or dollar quotes).

    An unterminated string or comment runs to the end of the text, as it does for Postgres. After
    any other token the scanner rejects (``123abc``, ``0x``), scanning resumes at the next blank or
    semicolon, so the statements after it are still found.
    """
    clean = _UNSCANNABLE.sub(" ", text)
    found: list[int] = []
    pos = 0
    while pos < len(clean):
        try:
            found += [pos + t.start for t in scan(clean[pos:]) if t.name == "ASCII_59"]
            break
        except ParseError as error:
            at = _offset(error)
            if at is None:
                break
            with contextlib.suppress(ParseError):  # the text before the bad token
                found += [pos + t.start for t in scan(clean[pos : pos + at]) if t.name == "ASCII_59"]
            resume = _RESUME.search(clean, pos + at + 1)
            if str(error.args[0]).startswith("unterminated") or resume is None:
                break
            pos = resume.start()
    return found


@dataclass(frozen=True)
class Source:
    """The text as parsed: psycopg placeholders replaced, cut into the spans between semicolons."""

    sql: str
    spans: list[tuple[int, int]]  # [start, end) of the text between semicolons, in ``sql``
    names: list[dict[str, str]] = field(default_factory=list)  # per span: "$n" -> "%(name)s" as written

    def spelled(self, text: str, at: int) -> str:
        """``text`` (a message about the statement at offset ``at``) with named placeholders as written."""
        names = self.names[max(bisect_right([s for s, _ in self.spans], at) - 1, 0)] if self.names else {}
        if not names:
            return text
        return re.sub(r"\$\d+(?!\d)", lambda m: names.get(m.group(), m.group()), text)


def prepare(text: str) -> Source:
    """``text`` with each psycopg placeholder as ``$n``: numbered from 1 in each statement, one number per
    name; padded so that lines never move (``%%`` becomes ``%``)."""
    bounds = semicolons(text)
    starts, ends = [0, *(b + 1 for b in bounds)], [*bounds, len(text)]
    parts: list[str] = []
    names: list[dict[str, str]] = []
    for start, end in zip(starts, ends, strict=True):
        numbers: dict[str, int] = {}
        named: dict[str, str] = {}

        def number(match: re.Match[str], numbers: dict[str, int] = numbers, named: dict[str, str] = named) -> str:
            placeholder = match.group()
            if placeholder == "%%":
                return "% "
            if placeholder.startswith("%("):
                n = numbers.setdefault(placeholder, len(numbers) + 1)
                named[f"${n}"] = placeholder
            else:
                n = numbers[f"#{len(numbers)}"] = len(numbers) + 1
            newlines = placeholder.count("\n")  # a name may hold one: keep the line count
            return f"${n}".ljust(len(placeholder) - newlines) + "\n" * newlines

        parts.append(PLACEHOLDER.sub(number, text[start:end]))
        names.append(named)
    spans, at = [], 0
    for part in parts:
        spans.append((at, at + len(part)))
        at += len(part) + 1
    return Source(";".join(parts), spans, names if any(names) else [])


@dataclass(frozen=True)
class Unit:
    """One statement: its parse tree (locations count from ``base``), or why it has none."""

    number: int
    base: int
    stmt: Any = None
    at: int = 0  # where the statement starts in the whole text
    error: str | None = None
    error_at: int = 0  # offset in the whole text
    error_kind: str = "syntax"  # syntax | nul | encoding


def _parse(sql: str, start: int, end: int) -> tuple[Any, ...] | Unit:
    piece = sql[start:end]
    if "\x00" in piece:  # the C parser would silently stop there
        return Unit(
            0, start, error="NUL character in the input", error_at=start + piece.index("\x00"), error_kind="nul"
        )
    try:
        piece.encode("utf-8")
    except UnicodeEncodeError as error:  # invalid bytes of a file read with surrogateescape, or lone surrogates
        char = ord(piece[error.start])
        what = f"byte 0x{char - 0xDC00:02x}" if 0xDC80 <= char <= 0xDCFF else f"lone surrogate U+{char:04X}"
        return Unit(0, start, error=f"{what} is not valid UTF-8", error_at=start + error.start, error_kind="encoding")
    try:
        return tuple(parse_sql(piece))
    except ParseError as error:
        at = _offset(error)
        if at is None:  # "at end of input" has no location
            at = len(piece.rstrip())
        return Unit(0, start, error=str(error.args[0]), error_at=start + at)


def statements(source: Source) -> Iterator[Unit]:
    """Every statement of ``source``, numbered in order (empty statements are not counted)."""
    sql, spans = source.sql, source.spans
    if not _UNSCANNABLE.search(sql):
        try:
            raws = parse_sql(sql)
        except ParseError:
            pass
        else:
            for number, raw in enumerate(raws, 1):
                yield Unit(number, 0, raw.stmt, raw.stmt_location or 0)
            return
    number, i = 0, 0
    while i < len(spans):
        start, end = spans[i]
        parsed = _parse(sql, start, end)
        if isinstance(parsed, Unit) and parsed.error_kind == "syntax" and "atomic" in sql[start:end].lower():
            for j in range(i + 1, len(spans)):  # BEGIN ATOMIC ... END: the body's semicolons are its own
                merged = _parse(sql, start, spans[j][1])
                if not isinstance(merged, Unit):
                    parsed, i = merged, j
                    break
        i += 1
        if isinstance(parsed, Unit):
            number += 1
            yield Unit(number, start, error=parsed.error, error_at=parsed.error_at, error_kind=parsed.error_kind)
            continue
        for raw in parsed:
            number += 1
            yield Unit(number, start, raw.stmt, start + (raw.stmt_location or 0))
