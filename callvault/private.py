"""Files that hold call data: private to the running user, in directories callvault created or checked.

Transcripts are personal data. Everything callvault writes that holds rows (the archive spool, the
verify and restore work directories, objects and manifests of a ``file://`` store) is created 0600
inside 0700 directories owned by the running user. A directory that already exists is used only if
it is a real directory (not a symlink) owned by this user; group/other access is then removed (spool)
or, for a directory the operator chose (an archive store), refused when others may write to it.

Work directories are named ``<kind>-<pid>-<random>`` so the next run can remove what a killed run left
behind (:func:`sweep`): the pid is no longer alive.
"""

from __future__ import annotations

import os
import shutil
import stat
import tempfile
from pathlib import Path

from callvault.errors import InvalidSetting

DIR_MODE = 0o700
FILE_MODE = 0o600


def private_dir(path: Path, what: str, *, fix_mode: bool = True) -> Path:
    """Create ``path`` (and missing parents) 0700, or check an existing one.

    ``fix_mode``: remove group/other bits of an existing directory of ours (the spool); otherwise
    only refuse one that others may write to (a store directory the operator chose)."""
    try:
        missing = []
        d = path
        while not os.path.lexists(d):
            missing.append(d)
            d = d.parent
        for d in reversed(missing):  # every directory callvault creates is 0700, not only the last
            d.mkdir(mode=DIR_MODE)
            os.chmod(d, DIR_MODE)  # mkdir's mode is masked by the umask
        if missing:
            return path
    except FileExistsError:
        pass
    except OSError as exc:
        raise InvalidSetting(
            f"{what} {path} cannot be created ({exc.strerror}): fix its parent or choose another"
        ) from exc
    st = os.lstat(path)
    if stat.S_ISLNK(st.st_mode) or not stat.S_ISDIR(st.st_mode):
        raise InvalidSetting(
            f"{what} {path} exists and is not a plain directory (a symlink or a file): callvault will not write call "
            "data through it. Remove it, or choose another directory"
        )
    if st.st_uid != os.getuid():
        raise InvalidSetting(
            f"{what} {path} belongs to uid {st.st_uid}, not to you (uid {os.getuid()}): another user created it, "
            "so they could read or replace call data written there. Remove it, or choose a directory of your own"
        )
    if st.st_mode & 0o077:
        if fix_mode:
            os.chmod(path, DIR_MODE)
        elif st.st_mode & 0o022:
            raise InvalidSetting(
                f"{what} {path} is writable by other users (mode {stat.S_IMODE(st.st_mode):04o}): they could replace "
                f"archived objects. Run `chmod go-w {path}` (callvault's objects in it are 0600), or choose another"
            )
    return path


def private_file(path: Path) -> Path:
    os.chmod(path, FILE_MODE)
    return path


def open_private(path: Path) -> int:
    """A new file descriptor on ``path`` created (or truncated) 0600 for writing."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | getattr(os, "O_NOFOLLOW", 0), FILE_MODE)
    os.fchmod(fd, FILE_MODE)  # an existing file keeps its mode through O_CREAT
    return fd


def work_dir(parent: Path, kind: str) -> Path:
    """A fresh 0700 directory ``parent/<kind>-<pid>-<random>`` (remove it when done; :func:`sweep`
    removes it when the process was killed first)."""
    return Path(tempfile.mkdtemp(prefix=f"{kind}-{os.getpid()}-", dir=parent))


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def sweep(parent: Path, kind: str) -> list[Path]:
    """Remove ``parent/<kind>-<pid>-*`` left by processes that are gone. Returns what was removed."""
    removed: list[Path] = []
    if not parent.is_dir():
        return removed
    for entry in parent.glob(f"{kind}-*-*"):
        try:
            pid = int(entry.name[len(kind) + 1 :].split("-", 1)[0])
        except ValueError:
            continue
        if pid != os.getpid() and not _alive(pid):
            shutil.rmtree(entry, ignore_errors=True)
            removed.append(entry)
    return removed
