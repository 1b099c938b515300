"""A real PgBouncer in front of the embedded test cluster, in transaction pooling mode.

``PgBouncer(cluster).start()`` runs the ``pgbouncer`` binary (Debian package ``pgbouncer``, installed
by ``scripts/install-system-deps.sh``) on a free port on 127.0.0.1 with ``pool_mode = transaction``
and **one server connection per (database, user) pool**: consecutive transactions of different
clients run on the same server connection, which is what makes anything that outlives a transaction
(a session setting, a server-side prepared statement) show up in a test instead of in production.

Clients log in with SCRAM against an ``auth_file`` holding the same passwords as the cluster's roles,
and PgBouncer logs in to the server with them (the embedded cluster uses ``scram-sha-256``).
``route(dsn)`` takes any DSN of the cluster, registers its user and password with the pooler and
returns the same DSN through the pooler. Like Postgres, PgBouncer refuses to run as root: when the
tests run as root it runs as the OS user that runs the embedded server. A missing ``pgbouncer``
fails the tests that need it with the fix; nothing is skipped.
"""

from __future__ import annotations

import contextlib
import os
import pwd
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import quote, unquote, urlsplit, urlunsplit

import psycopg
import pytest
from psycopg.rows import dict_row

from callvault.embedded import Cluster

START_TIMEOUT_S = 15.0
PORT_ATTEMPTS = 5
INSTALL_HINT = "install it with scripts/install-system-deps.sh (Debian package `pgbouncer`, 1.18 on bookworm)"


def _child_env() -> dict[str, str]:
    """This environment without ``FAKETIME_SHARED``: under an outer ``faketime`` (root's semaphore, mode
    0600) libfaketime in a process of another OS user cannot open it and pgbouncer died at start ("sem_open
    failed ... Permission denied", seen at a faked Sunday). ``FAKETIME`` is an offset (``+N``), so the
    clock is the same without the shared start."""
    return {k: v for k, v in os.environ.items() if k != "FAKETIME_SHARED"}


class PgBouncerError(RuntimeError):
    pass


def pgbouncer_binary() -> str:
    found = shutil.which("pgbouncer") or next(
        (p for p in ("/usr/sbin/pgbouncer", "/usr/local/sbin/pgbouncer") if os.access(p, os.X_OK)), None
    )
    if found is None:
        raise PgBouncerError(f"pgbouncer is not installed (not on PATH, not in /usr/sbin): {INSTALL_HINT}")
    return found


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _quote_auth(value: str) -> str:
    return '"' + value.replace('"', '""') + '"'


class PgBouncer:
    """One pgbouncer process pointed at ``cluster`` (every database on it: a ``*`` fallback entry)."""

    def __init__(self, cluster: Cluster, *, pool_size: int = 1) -> None:
        server = urlsplit(cluster.dsn())
        if server.username is None or server.password is None or server.port is None:
            raise PgBouncerError(f"cannot read the cluster's superuser and port from {cluster.dsn()!r}")
        self.server_port = server.port
        self.admin = (unquote(server.username), unquote(server.password))
        self.os_user = cluster.status().os_user or pwd.getpwuid(os.geteuid()).pw_name
        self.pool_size = pool_size
        self.port = 0
        self.dir = Path(tempfile.mkdtemp(prefix="callvault-pgbouncer-", dir="/tmp"))
        self.users: dict[str, str] = {self.admin[0]: self.admin[1]}
        self.proc: subprocess.Popen[bytes] | None = None

    # -- files -------------------------------------------------------------------------------------
    @property
    def log_file(self) -> Path:
        return self.dir / "pgbouncer.log"

    def _own(self, path: Path, mode: int) -> None:
        path.chmod(mode)
        if os.geteuid() == 0:
            user = pwd.getpwnam(self.os_user)
            os.chown(path, user.pw_uid, user.pw_gid)

    def _write_auth_file(self) -> None:
        path = self.dir / "userlist.txt"
        path.write_text("".join(f"{_quote_auth(u)} {_quote_auth(p)}\n" for u, p in sorted(self.users.items())))
        self._own(path, 0o600)

    def _write_config(self) -> Path:
        text = f"""\
[databases]
* = host=127.0.0.1 port={self.server_port} pool_size={self.pool_size}

[pgbouncer]
listen_addr = 127.0.0.1
listen_port = {self.port}
unix_socket_dir =
auth_type = scram-sha-256
auth_file = {self.dir / "userlist.txt"}
admin_users = {self.admin[0]}
pool_mode = transaction
default_pool_size = {self.pool_size}
max_client_conn = 200
max_db_connections = 0
query_wait_timeout = 60
server_login_retry = 1
logfile = {self.log_file}
log_connections = 0
log_disconnections = 0
"""
        path = self.dir / "pgbouncer.ini"
        path.write_text(text)
        self._own(path, 0o600)
        return path

    # -- process -----------------------------------------------------------------------------------
    def start(self) -> PgBouncer:
        binary = pgbouncer_binary()
        self._own(self.dir, 0o700)
        self._write_auth_file()
        kwargs: dict[str, Any] = {}
        if os.geteuid() == 0:  # pgbouncer refuses root; run it as the embedded server's OS user
            user = pwd.getpwnam(self.os_user)
            kwargs = {"user": user.pw_uid, "group": user.pw_gid, "extra_groups": []}
        for _attempt in range(PORT_ATTEMPTS):
            self.port = _free_port()
            config = self._write_config()
            with (self.dir / "stderr.log").open("ab") as err:
                self.proc = subprocess.Popen(
                    [binary, str(config)], cwd=self.dir, stdin=subprocess.DEVNULL, stdout=err, stderr=err,
                    env=_child_env(), **kwargs,
                )  # fmt: skip
            if self._wait_listening():
                return self
            if "Address already in use" not in self.logs():
                break  # not a port race: report pgbouncer's own error
        raise PgBouncerError(f"pgbouncer did not start on 127.0.0.1:{self.port}:\n{self.logs()[-2000:]}")

    def _wait_listening(self) -> bool:
        assert self.proc is not None
        deadline = time.monotonic() + START_TIMEOUT_S
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                return False
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=1):
                    return True
            except OSError:
                time.sleep(0.05)
        self.stop()
        return False

    def logs(self) -> str:
        return "".join(p.read_text(errors="replace") for p in (self.dir / "stderr.log", self.log_file) if p.exists())

    def stop(self) -> None:
        proc, self.proc = self.proc, None
        if proc is not None and proc.poll() is None:
            proc.terminate()  # SIGTERM: immediate shutdown
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=10)

    def close(self) -> None:
        self.stop()
        shutil.rmtree(self.dir, ignore_errors=True)

    # -- clients -----------------------------------------------------------------------------------
    def admin_console(self) -> psycopg.Connection[dict[str, Any]]:
        """PgBouncer's admin console (``SHOW ...``, ``RELOAD``): simple queries, autocommit."""
        user, password = self.admin
        return psycopg.connect(
            host="127.0.0.1", port=self.port, dbname="pgbouncer", user=user, password=password,
            autocommit=True, row_factory=dict_row,
        )  # fmt: skip

    def show(self, what: str) -> list[dict[str, Any]]:
        with self.admin_console() as c:
            return c.execute(f"SHOW {what}").fetchall()

    @contextlib.contextmanager
    def explained(self, server_dsn: str) -> Iterator[None]:
        """Re-raise a client's ``query_wait_timeout`` (it waited 60 s for a server connection) with what the
        pooler and the server were doing: a rare CI failure that never reproduced alone."""
        try:
            yield
        except psycopg.Error as exc:
            if "query_wait_timeout" not in str(exc):
                raise
            lines = [f"{type(exc).__name__}: {exc}"]
            for what in ("POOLS", "SERVERS", "CLIENTS"):
                with contextlib.suppress(Exception):
                    lines += [f"SHOW {what}: {row}" for row in self.show(what)]
            with contextlib.suppress(Exception), psycopg.connect(server_dsn, autocommit=True) as c:
                lines += [
                    f"pg_stat_activity: {row}"
                    for row in c.execute(
                        "SELECT datname, usename, state, count(*), max(now() - state_change) FROM pg_stat_activity "
                        "GROUP BY 1, 2, 3 ORDER BY 4 DESC"
                    )
                ]
            with contextlib.suppress(Exception):
                lines += self.log_file.read_text().splitlines()[-40:]
            raise AssertionError("\n".join(lines)) from exc

    def add_user(self, user: str, password: str) -> None:
        """Let ``user`` log in through the pooler (the auth_file is re-read by ``RELOAD``)."""
        if self.users.get(user) == password:
            return
        self.users[user] = password
        self._write_auth_file()
        with self.admin_console() as c:
            c.execute("RELOAD")

    def route(self, dsn: str) -> str:
        """The same URL DSN (user, password, database) through the pooler; registers the user."""
        u = urlsplit(dsn)
        if u.username is None or u.password is None:
            raise PgBouncerError(f"route() needs a URL DSN with a user and password, got {dsn!r}")
        self.add_user(unquote(u.username), unquote(u.password))
        netloc = f"{quote(unquote(u.username), safe='')}:{quote(unquote(u.password), safe='')}@127.0.0.1:{self.port}"
        return urlunsplit(u._replace(netloc=netloc))


@pytest.fixture(scope="module", name="pgbouncer")
def pgbouncer_fixture(cluster: Cluster) -> Iterator[PgBouncer]:
    """A real pgbouncer (transaction pooling, one server connection per pool) for the module.

    Fails with the install hint when pgbouncer is missing or does not start: never skips."""
    bouncer = PgBouncer(cluster)
    try:
        bouncer.start()
    except PgBouncerError as exc:
        bouncer.close()
        pytest.fail(str(exc), pytrace=False)
    yield bouncer
    bouncer.close()
