"""Find the machine's PostgreSQL server binaries (initdb, pg_ctl, postgres)."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

from callvault import config
from callvault.errors import EmbeddedError

DEBIAN_ROOT = Path("/usr/lib/postgresql")
INSTALL_HINT = (
    "install the server: on Debian/Ubuntu `apt-get install postgresql-15 postgresql-15-partman "
    "postgresql-15-cron` (or run `make demo`, which does it), or set CALLVAULT_PG_BIN to the directory "
    "holding initdb and pg_ctl"
)


def _has_server(bindir: Path) -> bool:
    return (bindir / "initdb").is_file() and (bindir / "pg_ctl").is_file()


def _pg_config_bindir() -> Path | None:
    exe = shutil.which("pg_config")
    if exe is None:
        return None
    out = subprocess.run([exe, "--bindir"], capture_output=True, text=True, check=False)
    return Path(out.stdout.strip()) if out.returncode == 0 and out.stdout.strip() else None


def _debian_bindirs() -> list[Path]:
    if not DEBIAN_ROOT.is_dir():
        return []
    majors = sorted((d for d in DEBIAN_ROOT.iterdir() if d.name.isdigit()), key=lambda d: int(d.name))
    return [d / "bin" for d in reversed(majors)]


def find_bindir() -> Path:
    """The directory with initdb/pg_ctl: $CALLVAULT_PG_BIN, pg_config --bindir, then Debian's paths."""
    explicit = config.knob("CALLVAULT_PG_BIN")
    if explicit:
        if not _has_server(Path(explicit)):
            raise EmbeddedError(f"CALLVAULT_PG_BIN={explicit} has no initdb/pg_ctl: {INSTALL_HINT}")
        return Path(explicit)
    candidates = [_pg_config_bindir(), *_debian_bindirs()]
    for cand in candidates:
        if cand is not None and _has_server(cand):
            return cand
    raise EmbeddedError(f"no PostgreSQL server binaries found (looked at pg_config and {DEBIAN_ROOT}): {INSTALL_HINT}")


def server_major(bindir: Path) -> int:
    out = subprocess.run([str(bindir / "postgres"), "--version"], capture_output=True, text=True, check=False)
    match = re.search(r"(\d+)(?:\.\d+)?", out.stdout)
    if not match:
        raise EmbeddedError(f"cannot read the server version from {bindir / 'postgres'} --version: {out.stdout!r}")
    return int(match.group(1))
