"""Is a running server on the installed binaries? After a package upgrade replaces them, a server
started before loads new extension libraries into its old executable ("undefined symbol"): these pure
checks (and the /proc and ``postgres --version`` reads they need) tell ``status``/``health`` to say so."""

from __future__ import annotations

import functools
import os
import re
import subprocess
from dataclasses import dataclass
from pathlib import Path

RESTART_FIX = "restart it with `callvault dev down && callvault dev up`"


@dataclass(frozen=True)
class ServerBinary:
    """What the running postmaster executes, as /proc shows it."""

    pid: int
    exe: str  # readlink of /proc/<pid>/exe; ends in " (deleted)" once a package upgrade replaced the file
    file_id: tuple[int, int] | None  # (st_dev, st_ino) of the image it runs (readable even when deleted)


def running_binary(pid: int) -> ServerBinary | None:
    """The executable of process ``pid``, or None when /proc does not show it (no such process, no
    permission: only the server's OS user and root may look)."""
    proc = Path(f"/proc/{pid}/exe")
    try:
        exe = os.readlink(proc)
    except OSError:
        return None
    try:
        st = os.stat(proc)
        file_id: tuple[int, int] | None = (st.st_dev, st.st_ino)
    except OSError:
        file_id = None
    return ServerBinary(pid=pid, exe=exe, file_id=file_id)


def version_tuple(text: str | None) -> tuple[int, ...] | None:
    """``"15.18 (Debian 15.18-0+deb12u1)"`` / ``"postgres (PostgreSQL) 15.18"`` -> ``(15, 18)`` (pure)."""
    match = re.search(r"(\d+)(?:\.(\d+))?", text or "")
    if match is None:
        return None
    return tuple(int(g) for g in match.groups() if g is not None)


def installed_version(postgres: Path) -> str | None:
    """``X.Y`` of the installed server binary (``postgres --version``), None when it does not run."""
    try:
        st = os.stat(postgres)
    except OSError:
        return None
    return _version_of(str(postgres), st.st_dev, st.st_ino, st.st_mtime_ns)


@functools.lru_cache(maxsize=8)
def _version_of(postgres: str, _dev: int, _ino: int, _mtime_ns: int) -> str | None:
    """Cached per file identity: health and status ask on every run; an upgrade makes a new file."""
    try:
        out = subprocess.run([str(postgres), "--version"], capture_output=True, text=True, check=False, timeout=30)
    except (OSError, subprocess.SubprocessError):
        return None
    match = re.search(r"\) (\d+(?:\.\d+)*)", out.stdout)
    return match.group(1) if out.returncode == 0 and match else None


def stale_verdict(
    running: ServerBinary | None,
    installed_path: str,
    installed_id: tuple[int, int] | None,
    installed_ver: str | None,
    running_ver: str | None = None,
) -> str | None:
    """Why a running server needs a restart to match the installed binaries, or None (pure).

    Stale when the file it runs was deleted or replaced (a package upgrade renames the new binary over
    the old one: /proc shows ``(deleted)``, the inode differs from the installed file's), or when the
    server reports another version than the installed binary (``running_ver``, from ``server_version``).
    Such a server loads the *new* extension libraries into the *old* executable: "undefined symbol".
    """
    if installed_id is None:
        return (
            f"running, but the installed PostgreSQL binaries are gone ({installed_path} is missing): reinstall "
            f"PostgreSQL (or set CALLVAULT_PG_BIN), then {RESTART_FIX}"
        )
    reasons = []
    if running is not None and running.exe.endswith(" (deleted)"):
        reasons.append(f"{running.exe.removesuffix(' (deleted)')} was replaced on disk after the server started")
    elif running is not None and running.file_id is not None and running.file_id != installed_id:
        reasons.append(f"it runs {running.exe}, not the installed {installed_path}")
    have, want = version_tuple(running_ver), version_tuple(installed_ver)
    if running_ver and have is not None and want is not None and have != want:
        reasons.append(f"the server reports PostgreSQL {running_ver.split()[0]}")
    if not reasons:
        return None
    installed = f"PostgreSQL {installed_ver}" if installed_ver else f"PostgreSQL at {installed_path}"
    age = "newer" if have is not None and want is not None and have > want else "older"
    return f"running, but on binaries {age} than the installed {installed}: {RESTART_FIX} ({'; '.join(reasons)})"
