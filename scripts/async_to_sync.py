#!/usr/bin/env python3
"""Generate each sync twin from its asyncio source (psycopg's approach, by line rules).

    scripts/async_to_sync.py            # rewrite every sync twin (``make sync-twins``)
    scripts/async_to_sync.py SOURCE     # print SOURCE's sync twin (``tests/test_twins.py`` compares)

The asyncio module is the one that is edited; its twin is generated. Rules, in order:

* ``if True:  # ASYNC`` ... ``else:`` ...: the sync twin keeps only the ``else`` body (dedented); the
  async source runs only the first.
* Lines from ``# begin async-only`` to ``# end async-only`` are left out of the sync twin.
* A line ending in ``# sync: <code>`` becomes ``<code>`` (same indentation).
* The twin's own text replacements (``TWINS``), then ``async def`` -> ``def``, ``async with`` ->
  ``with``, ``async for`` -> ``for``, ``await `` dropped.
* The module docstring is replaced by a "generated" banner pointing at the source; imports are
  sorted, unused ones dropped, and the text formatted with the project's ruff settings.
"""

from __future__ import annotations

import re
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


@dataclass(frozen=True)
class Twin:
    source: str  # the asyncio module, edited by hand
    target: str  # its sync twin, generated
    words: list[tuple[str, str]] = field(default_factory=list)  # whole-word renames, in order
    text: list[tuple[str, str]] = field(default_factory=list)  # literal replacements, applied first


_CONN = [("AConn", "Conn"), ("AsyncConnection", "Connection")]
_WRITER_DOC = (
    "``async with AsyncWriter(...) as w`` (the sync\n    twin, :class:`callvault.ingest.Writer`, "
    "is ready when constructed and thread-safe: ``with Writer(...)``).",
    "``with Writer(...) as w``; ready when constructed,\n    thread-safe (generated from its asyncio twin, "
    ":mod:`callvault.ingest.aio`).",
)
_READER_DOC = (
    " for asyncio (the sync twin, :class:`callvault.query.Reader`,\n    is the same class without the awaiting)",
    " (sync; generated from its asyncio\n    twin, :mod:`callvault._async_reader`)",
)
TWINS = [
    Twin("callvault/ingest/_async_io.py", "callvault/ingest/_sync_io.py", _CONN),
    Twin(
        "callvault/tenancy/_async_session.py",
        "callvault/tenancy/_sync_session.py",
        [("atenant", "tenant"), ("asynccontextmanager", "contextmanager"), ("AsyncIterator", "Iterator"), *_CONN],
    ),
    Twin(
        "callvault/_async_reader.py",
        "callvault/_sync_reader.py",
        [
            ("AsyncReader", "Reader"),
            ("atenant", "tenant"),
            ("_async_session", "_sync_session"),
            ("AsyncConnectionPool", "ConnectionPool"),
            *_CONN,
        ],
        text=[("await asyncio.to_thread(fetch)", "fetch()"), _READER_DOC],
    ),
    Twin(
        "callvault/ingest/aio.py",
        "callvault/ingest/writer.py",
        [
            ("AsyncWriter", "Writer"),
            ("AsyncFailoverPool", "FailoverPool"),
            ("AsyncConnectionPool", "ConnectionPool"),
            ("_async_io", "_sync_io"),
            ("__aenter__", "__enter__"),
            ("__aexit__", "__exit__"),
            ("aclose", "close"),
            ("asyncio.Queue", "queue.Queue"),
            ("asyncio.QueueEmpty", "queue.Empty"),
            ("asyncio.Event", "threading.Event"),
            *_CONN,
        ],
        text=[("await asyncio.sleep(", "time.sleep("), _WRITER_DOC],
    ),
]

_SYNC = re.compile(r"^(\s*).*?#\s*sync:\s*(.*)$")
_IF_ASYNC = re.compile(r"^(\s*)if True:\s*# ASYNC\b")
_GENERIC = [
    (re.compile(r"\basync def\b"), "def"),
    (re.compile(r"\basync with\b"), "with"),
    (re.compile(r"\basync for\b"), "for"),
    (re.compile(r"\bawait "), ""),
]


def _indent(line: str) -> int:
    return len(line) - len(line.lstrip())


def _blocks(lines: list[str]) -> list[str]:
    """Resolve ``if True:  # ASYNC`` / ``else:`` blocks and ``async-only`` regions (see the module doc)."""
    out: list[str] = []
    i, skipping = 0, False
    while i < len(lines):
        line = lines[i]
        if line.strip() == "# begin async-only":
            skipping = True
        elif line.strip() == "# end async-only":
            skipping = False
        elif skipping:
            pass
        elif m := _IF_ASYNC.match(line):
            base = len(m.group(1))
            i += 1
            while i < len(lines) and not (lines[i].strip() == "else:" and _indent(lines[i]) == base):
                i += 1  # the async body
            i += 1
            while i < len(lines) and (not lines[i].strip() or _indent(lines[i]) > base):
                out.append(lines[i][4:] if lines[i].strip() else "")  # the sync body, one level out
                i += 1
            continue
        else:
            out.append(line)
        i += 1
    return out


def convert(twin: Twin, source: str) -> str:
    body = source
    if body.startswith('"""'):
        body = body[body.index('"""', 3) + 3 :].lstrip("\n")
    module = twin.source.removesuffix(".py").replace("/", ".")
    banner = (
        f'"""GENERATED from {Path(twin.source).name} by scripts/async_to_sync.py: do not edit; edit the async '
        "source and run\n"
        f"``make sync-twins``. The synchronous twin of :mod:`{module}` (see there for the why).\n" + '"""\n'
    )
    for old, new in twin.text:
        body = body.replace(old, new)
    out = []
    for line in _blocks(body.splitlines()):
        m = _SYNC.match(line)
        if m:
            out.append(m.group(1) + m.group(2).rstrip())
            continue
        for pattern, repl in _GENERIC:
            line = pattern.sub(repl, line)
        for old, new in twin.words:
            line = re.sub(rf"(?<!\w){re.escape(old)}\b", new, line)
        out.append(line)
    text = "\n".join(out) + "\n"
    text = text.replace("(conn.execute(", "conn.execute(").replace(")).rowcount", ").rowcount")
    return _tidy(banner + "\n" + text, twin.target)


def _tidy(text: str, name: str) -> str:
    """Apply ruff's safe fixes (imports sorted, unused ones dropped, nested `with`s joined) and format."""
    ruff = str(Path(sys.executable).parent / "ruff")
    for args in (["check", "--fix", "--quiet"], ["format", "--quiet"]):
        done = subprocess.run([ruff, *args, "--stdin-filename", name, "-"], input=text, capture_output=True, text=True)
        if done.returncode not in (0, 1) or not done.stdout:
            raise SystemExit(f"ruff {args[0]} failed: {done.stderr}")
        text = done.stdout
    return text


def twin_of(source: str) -> Twin:
    rel = str(Path(source).resolve().relative_to(ROOT))
    for twin in TWINS:
        if twin.source == rel:
            return twin
    raise SystemExit(f"{source} is not an asyncio source with a sync twin (see TWINS in {__file__})")


def main() -> None:
    if len(sys.argv) > 1:
        twin = twin_of(sys.argv[1])
        sys.stdout.write(convert(twin, (ROOT / twin.source).read_text()))
        return
    for twin in TWINS:
        (ROOT / twin.target).write_text(convert(twin, (ROOT / twin.source).read_text()))
        print(f"{twin.target} <- {twin.source}")


if __name__ == "__main__":
    main()
