"""Optional server software installed beside the PostgreSQL binaries: Citus and pg_partman's majors.

Neither Citus nor pg_partman 5.x is a Debian bookworm package for PostgreSQL 15, and the project never
builds outside source: where an operator installed them, the tests that need them run; elsewhere they
are skipped with one line naming what is missing. ``python -m callvault.engines`` prints that line
(``make test`` does, at its start).
"""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

from callvault import _pgbin

# pg_partman versions callvault knows (init refuses others: callvault.partman.check_version).
PARTMAN_MAJORS = (4, 5)


def _bindir(bindir: Path | None) -> Path:
    return bindir or _pgbin.find_bindir()


def citus_available(bindir: Path | None = None) -> bool:
    """Whether the Citus extension is installed for the server binaries (``citus.so`` beside them)."""
    return (_bindir(bindir).parent / "lib" / "citus.so").exists()


def citus_missing_reason(bindir: Path | None = None) -> str:
    """The one line saying Citus is not installed for these server binaries, and where to get it."""
    return (
        f"Citus is not installed for PostgreSQL {_pgbin.server_major(_bindir(bindir))}: see docs/scaling.md "
        "(Citus' packages for your distribution, or a managed Citus service)"
    )


def sharedir(bindir: Path | None = None) -> Path:
    """The server's share directory (extension scripts live in ``<sharedir>/extension``)."""
    b = _bindir(bindir)
    pg_config = b / "pg_config"
    if pg_config.is_file():
        out = subprocess.run([str(pg_config), "--sharedir"], capture_output=True, text=True, check=False)
        if out.returncode == 0 and out.stdout.strip():
            return Path(out.stdout.strip())
    return Path("/usr/share/postgresql") / b.parent.name  # Debian's layout


def partman_versions(bindir: Path | None = None) -> list[str]:
    """Every pg_partman version that ``CREATE EXTENSION pg_partman VERSION 'v'`` can install, oldest first."""
    found = []
    for path in (sharedir(bindir) / "extension").glob("pg_partman--*.sql"):
        match = re.fullmatch(r"pg_partman--(\d+)\.(\d+)\.(\d+)\.sql", path.name)
        if match:
            found.append(tuple(int(x) for x in match.groups()))
    return [".".join(map(str, v)) for v in sorted(found)]


def partman_latest(major: int, bindir: Path | None = None) -> str | None:
    """The newest installable pg_partman of ``major`` (None when none is installed)."""
    versions = [v for v in partman_versions(bindir) if int(v.split(".")[0]) == major]
    return versions[-1] if versions else None


def partman5_missing_reason(bindir: Path | None = None) -> str:
    return (
        f"pg_partman 5.x is not installed for PostgreSQL {_pgbin.server_major(_bindir(bindir))}: "
        "see docs/partman.md (installing it beside Debian's 4.7)"
    )


def summary() -> str:
    """One line: which optional engines the tests will use here, and which they skip."""
    citus = "Citus tests run" if citus_available() else f"{citus_missing_reason()}: the Citus tests are skipped"
    p5 = partman_latest(5)
    partman = (
        f"pg_partman {p5} tests run" if p5 else f"{partman5_missing_reason()}: the pg_partman 5.x tests are skipped"
    )
    return f"callvault: {citus}; {partman}"


if __name__ == "__main__":
    print(summary())
