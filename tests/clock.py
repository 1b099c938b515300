"""A controllable clock for a real Postgres server: libfaketime with a timestamp file.

How it works (see docs/design.md, "Time is an input"):

* The server is started with ``LD_PRELOAD=libfaketime.so.1`` and ``FAKETIME_TIMESTAMP_FILE=<file>``
  (``FAKETIME_NO_CACHE=1``: the file is read on every clock call), so :meth:`FakeClock.set` moves the
  clock of the *running* server — no restart — by rewriting the file.
* The file holds an offset from the real clock (``+12345.678s``): the faked clock keeps ticking from
  the instant set. The real time is read from a child process without libfaketime, so this works
  when the test process itself runs under ``faketime`` (CI's calendar checks do that).
* ``FAKETIME`` / ``FAKETIME_SHARED`` inherited from an outer ``faketime`` are removed from the
  server's environment: libfaketime prefers ``FAKETIME`` over the file.
* callvault takes "now" from the server (:func:`callvault.db.server_now`), so the library, the CLI
  and pg_partman all see the same faked instant.

Known limit: while a backend waits in ``epoll_wait`` libfaketime reports the *real* time to signal
handlers, so server-side ``statement_timeout``/``lock_timeout`` never fire when the faked clock is
ahead of the real one. Tests on a faked server must not rely on them (nothing here does).
"""

from __future__ import annotations

import glob
import os
import subprocess
from datetime import UTC, datetime
from pathlib import Path

INSTALL = "apt-get install faketime (Debian package; `make test` installs it)"


def libfaketime() -> str:
    found = sorted(glob.glob("/usr/lib/*/faketime/libfaketime.so.1") + glob.glob("/usr/lib/faketime/libfaketime.so.1"))
    if not found:
        raise RuntimeError(f"libfaketime is not installed: {INSTALL}")
    return found[0]


def real_now() -> datetime:
    """The machine's real clock, even when this process runs under libfaketime."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("FAKETIME") and k != "LD_PRELOAD"}
    out = subprocess.run(["date", "+%s.%N"], env=env, capture_output=True, text=True, check=True).stdout
    return datetime.fromtimestamp(float(out), UTC)


class FakeClock:
    """The clock of every server started with :meth:`server_env`."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.set(real_now())

    def server_env(self) -> dict[str, str | None]:
        return {
            "LD_PRELOAD": libfaketime(),
            "FAKETIME_TIMESTAMP_FILE": str(self.path),
            "FAKETIME_NO_CACHE": "1",
            "FAKETIME": None,
            "FAKETIME_SHARED": None,
        }

    def freeze(self, when: datetime) -> None:
        """Stop the clock at ``when`` (whole seconds, UTC): every ``now()`` returns exactly that until
        the next :meth:`set`/:meth:`freeze`. For comparisons at an exact instant (Thursday 12:00:00)."""
        self._write(f"{when.astimezone(UTC):%Y-%m-%d %H:%M:%S}\n")

    def set(self, when: datetime) -> None:
        """Move the clock to ``when`` (aware); it keeps ticking from there."""
        if when.tzinfo is None:
            raise ValueError(f"{when} has no timezone")
        offset = (when - real_now()).total_seconds()
        self._write(f"{offset:+.6f}s\n")

    def _write(self, spec: str) -> None:
        tmp = self.path.with_suffix(".tmp")
        tmp.write_text(spec)
        tmp.chmod(0o644)
        os.replace(tmp, self.path)
