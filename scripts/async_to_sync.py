#!/usr/bin/env python3
"""Generate a sync twin from its asyncio source (psycopg's approach, by line rules).

    scripts/async_to_sync.py callvault/ingest/_async_io.py > callvault/ingest/_sync_io.py

Rules: a line ending in ``# sync: <code>`` becomes ``<code>`` (same indentation); otherwise
``async def`` -> ``def``, ``async with`` -> ``with``, ``async for`` -> ``for``, ``await `` is dropped,
``AConn`` -> ``Conn``, ``AsyncConnection`` -> ``Connection``. The module docstring's first paragraph is
replaced by a "generated" banner. ``tests/test_twins.py`` checks the checked-in twin is what this prints.
"""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

BANNER = '''"""GENERATED from _async_io.py by scripts/async_to_sync.py: do not edit; edit the async source and run
``make sync-twins``. The synchronous twin of :mod:`callvault.ingest._async_io` (see there for the why).
"""
'''
_SYNC = re.compile(r"^(\s*).*?#\s*sync:\s*(.*)$")
_WORDS = [
    (re.compile(r"\basync def\b"), "def"),
    (re.compile(r"\basync with\b"), "with"),
    (re.compile(r"\basync for\b"), "for"),
    (re.compile(r"\bawait "), ""),
    (re.compile(r"\bAConn\b"), "Conn"),
    (re.compile(r"\bAsyncConnection\b"), "Connection"),
]


def convert(source: str) -> str:
    body = source
    if body.startswith('"""'):
        end = body.index('"""', 3) + 3
        body = body[end:].lstrip("\n")
    out = []
    for line in body.splitlines():
        m = _SYNC.match(line)
        if m:
            out.append(m.group(1) + m.group(2).rstrip())
            continue
        for pattern, repl in _WORDS:
            line = pattern.sub(repl, line)
        out.append(line)
    text = "\n".join(out) + "\n"
    text = text.replace("(conn.execute(", "conn.execute(").replace(")).rowcount", ").rowcount")
    return _tidy(BANNER + "\n" + text)


def _tidy(text: str) -> str:
    """Sort imports, drop unused ones and format, with the project's ruff settings."""
    ruff = str(Path(sys.executable).parent / "ruff")
    name = "callvault/ingest/_sync_io.py"
    for args in (["check", "--select", "I,F401", "--fix", "--quiet"], ["format", "--quiet"]):
        done = subprocess.run([ruff, *args, "--stdin-filename", name, "-"], input=text, capture_output=True, text=True)
        if done.returncode not in (0, 1) or not done.stdout:
            raise SystemExit(f"ruff {args[0]} failed: {done.stderr}")
        text = done.stdout
    return text


def main() -> None:
    path = Path(sys.argv[1] if len(sys.argv) > 1 else "callvault/ingest/_async_io.py")
    sys.stdout.write(convert(path.read_text()))


if __name__ == "__main__":
    main()
