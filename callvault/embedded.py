"""The embedded default: a private PostgreSQL cluster callvault creates and starts itself.

Layout under the callvault home (``$CALLVAULT_HOME``; default ``/var/lib/callvault`` for root,
``$XDG_DATA_HOME/callvault`` or ``~/.local/share/callvault`` otherwise)::

    cluster.json      port, superuser password, binaries (mode 0600, owned by the invoking user)
    pg<major>/        the data directory, owned by the server's OS user; the unix socket lives here

Postgres refuses to run as root, so when callvault runs as root the server runs as an unprivileged
OS user: ``$CALLVAULT_PG_USER``, else ``postgres`` when it exists, else a ``callvault`` system user
created on first use. The server listens on 127.0.0.1 only, on a free port chosen at creation, with
password authentication; ``dsn()`` gives a URL any client can use.
"""

from __future__ import annotations

import json
import os
import pwd
import secrets
import shutil
import socket
import subprocess
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import psycopg
from psycopg import sql

from callvault import _pgbin, config
from callvault.binaries import RESTART_FIX as RESTART_FIX
from callvault.binaries import ServerBinary as ServerBinary
from callvault.binaries import installed_version as installed_version
from callvault.binaries import running_binary as running_binary
from callvault.binaries import stale_verdict as stale_verdict
from callvault.binaries import version_tuple as version_tuple
from callvault.config import default_home
from callvault.errors import EmbeddedError

SUPERUSER = "callvault"
DATABASE = "callvault"
START_TIMEOUT_S = 60
PORT_ATTEMPTS = 5  # an auto-chosen port can be grabbed between probe and bind; retry with another

# Tuned for a small (2-core) development box; the cluster is private, bulk-ingest heavy, short queries.
SERVER_SETTINGS: dict[str, str] = {
    "listen_addresses": "'127.0.0.1'",
    "max_connections": "100",
    "shared_buffers": "'512MB'",
    "effective_cache_size": "'4GB'",
    "work_mem": "'16MB'",
    "maintenance_work_mem": "'256MB'",
    "max_wal_size": "'4GB'",  # large COPY batches: avoid checkpoints every few seconds
    "checkpoint_timeout": "'15min'",
    "max_worker_processes": "8",
    "max_parallel_workers": "2",
    "max_parallel_workers_per_gather": "1",
    "jit": "off",  # JIT only costs time on millisecond queries
    "timezone": "'UTC'",  # partition math is UTC; pg_partman computes in the session time zone
    "log_timezone": "'UTC'",
    "log_min_messages": "warning",
    "cron.database_name": "'postgres'",  # pg_cron lives here; jobs target any db via schedule_in_database
    "wal_level": "logical",  # `callvault publish` / mirrors (changing it needs a restart)
    "max_replication_slots": "10",
    "max_wal_senders": "10",
}


@dataclass
class ClusterState:
    """What ``cluster.json`` records about a created cluster: its port, superuser password, server
    binaries and major version, the OS user the server runs as, and the superuser and database names."""

    port: int
    password: str
    bindir: str
    major: int
    os_user: str
    superuser: str = SUPERUSER
    database: str = DATABASE


@dataclass(frozen=True)
class ClusterStatus:
    """What ``callvault dev status`` shows: where the cluster lives, whether it is initialised and
    running, its port, OS user, DSN (password included) and log file, and ``state`` in words."""

    home: str
    data_dir: str
    initialised: bool
    running: bool
    port: int | None
    os_user: str | None
    dsn: str | None
    log_file: str
    # "running", "stopped", "not initialised", or, when the binaries were replaced under the running
    # server, "running, but on binaries older than the installed PostgreSQL X.Y: restart it with ..."
    state: str = "stopped"


def _port_free(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        # Like Postgres itself: a port whose last connections linger in TIME_WAIT is still usable.
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def server_os_user() -> pwd.struct_passwd:
    """The OS account the server runs as: the caller, or an unprivileged user when we are root."""
    if os.geteuid() != 0:
        return pwd.getpwuid(os.geteuid())
    wanted = config.knob("CALLVAULT_PG_USER")
    names = [wanted] if wanted else ["postgres", "callvault"]
    for name in names:
        try:
            return pwd.getpwnam(name)
        except KeyError:
            continue
    name = wanted or "callvault"
    cmd = ["useradd", "--system", "--no-create-home", "--shell", "/usr/sbin/nologin", name]
    done = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise EmbeddedError(f"cannot create OS user {name!r} to run Postgres: {done.stderr.strip()}")
    return pwd.getpwnam(name)


class Cluster:
    """One private cluster rooted at ``home``. ``up()`` is idempotent: init once, start if stopped."""

    def __init__(
        self,
        home: Path | None = None,
        *,
        settings: dict[str, str] | None = None,
        env: dict[str, str | None] | None = None,
        password: str | None = None,
    ) -> None:
        self.home = (home or default_home()).absolute()
        self.password = password  # the superuser's password when the cluster is created (default: random)
        self.state_file = self.home / "cluster.json"
        self.extra_settings = settings or {}
        # Environment of initdb/pg_ctl and so of the server: a value of None removes the variable.
        # Tests use it to run the server under libfaketime with a clock they set (tests/clock.py).
        self.env_overrides = env or {}

    # -- paths and state -------------------------------------------------------------------
    def _state(self) -> ClusterState | None:
        if not self.state_file.exists():
            return None
        try:
            return ClusterState(**json.loads(self.state_file.read_text()))
        except (ValueError, TypeError) as exc:
            raise EmbeddedError(
                f"{self.state_file} is corrupt ({exc}); remove it and {self.home} to start over"
            ) from exc

    def _save(self, state: ClusterState) -> None:
        fd, tmp = tempfile.mkstemp(dir=self.home, prefix=".cluster.")
        with os.fdopen(fd, "w") as fh:
            json.dump(asdict(state), fh, indent=2)
        os.chmod(tmp, 0o600)
        os.replace(tmp, self.state_file)

    def data_dir(self, major: int) -> Path:
        """The data directory for PostgreSQL ``major``: ``<home>/pg<major>``."""
        return self.home / f"pg{major}"

    def log_file(self, major: int) -> Path:
        """The server's log file in the data directory of ``major``."""
        return self.data_dir(major) / "server.log"

    # -- public API ------------------------------------------------------------------------
    def dsn(self, database: str | None = None) -> str:
        """The URL to connect to ``database`` (default ``callvault``) as the cluster's superuser; does
        not start anything.

        :raises EmbeddedError: the cluster was never created here (run ``callvault dev up``), or its
            ``cluster.json`` is corrupt (exit code 70).
        """
        state = self._state()
        if state is None:
            raise EmbeddedError(f"no embedded cluster at {self.home}: run `callvault dev up`")
        db = database or state.database
        return f"postgresql://{state.superuser}:{state.password}@127.0.0.1:{state.port}/{db}"

    def status(self) -> ClusterStatus:
        """Whether the cluster is created and running, and where; changes nothing.

        :raises EmbeddedError: no PostgreSQL server binaries are installed and the cluster was never
            created, or ``cluster.json`` is corrupt (exit code 70).
        """
        state = self._state()
        major = state.major if state else _pgbin.server_major(_pgbin.find_bindir())
        running = state is not None and self._running(state)
        initialised = state is not None and (self.data_dir(major) / "PG_VERSION").exists()
        restart = self.restart_needed() if running else None
        return ClusterStatus(
            home=str(self.home),
            data_dir=str(self.data_dir(major)),
            initialised=initialised,
            running=running,
            port=state.port if state else None,
            os_user=state.os_user if state else None,
            dsn=self.dsn() if state else None,
            log_file=str(self.log_file(major)),
            state=restart or ("running" if running else "stopped" if initialised else "not initialised"),
        )

    def postmaster_pid(self) -> int | None:
        """The running postmaster's pid from ``postmaster.pid`` (None when there is none)."""
        state = self._state()
        if state is None:
            return None
        try:
            first = (self.data_dir(state.major) / "postmaster.pid").read_text().split("\n", 1)[0]
        except OSError:
            return None
        return int(first) if first.strip().isdigit() else None

    def restart_needed(self, running_version: str | None = None) -> str | None:
        """Why the running server must be restarted: it runs binaries other than the installed ones
        (see :func:`stale_verdict`); None when it is current, stopped, or /proc cannot tell."""
        state = self._state()
        pid = self.postmaster_pid()
        if state is None or pid is None:
            return None
        running = running_binary(pid)
        if running is None and running_version is None:
            return None
        installed = Path(state.bindir) / "postgres"
        try:
            st = os.stat(installed)
            installed_id: tuple[int, int] | None = (st.st_dev, st.st_ino)
        except OSError:
            installed_id = None
        if running_version is None and stale_verdict(running, str(installed), installed_id, None) is None:
            return None  # the file it runs is the installed one: no need to run `postgres --version`
        version = installed_version(installed) if installed_id is not None else None
        return stale_verdict(running, str(installed), installed_id, version, running_version)

    def serves(self, conn: psycopg.Connection[Any]) -> bool:
        """Whether ``conn`` is connected to this cluster (its port on 127.0.0.1/localhost, or its socket)."""
        state = self._state()
        if state is None:
            return False
        info = conn.info
        host = (info.hostaddr or info.host or "").rstrip("/")
        local = host in ("127.0.0.1", "localhost", "::1") or host == str(self.data_dir(state.major))
        return local and info.port == state.port

    def up(self, port: int | None = None) -> str:
        """Create (once) and start the cluster; return its DSN. ``port`` pins the port.

        :raises EmbeddedError: no server binaries, ``initdb`` or the start failed, or the cluster already
            runs on another port than ``port`` (exit code 70).

        Example:

            dsn = Cluster().up()            # postgresql://callvault:...@127.0.0.1:<port>/callvault
            settings = Settings(dsn=dsn)
        """
        state = self._state() or self._create(port)
        if self._running(state):
            if port is not None and port != state.port:
                raise EmbeddedError(
                    f"the embedded cluster already runs on port {state.port}; `callvault dev down` first "
                    f"to move it to port {port}"
                )
            return self.dsn()
        self._start(state, port)
        self._ensure_database(self._state() or state)
        return self.dsn()

    def down(self) -> bool:
        """Stop the server (fast shutdown). Returns False when it was not running."""
        state = self._state()
        if state is None or not self._running(state):
            return False
        self._pg_ctl(state, "stop", "-m", "fast", "-w", "-t", str(START_TIMEOUT_S))
        return True

    # -- a streaming standby --------------------------------------------------------------
    def replica(self) -> Cluster:
        """The standby of this cluster: a cluster of its own at ``<home>/replica`` (may not exist yet)."""
        return Cluster(self.home / "replica", settings=self.extra_settings, env=self.env_overrides)

    def replica_up(self, port: int | None = None) -> str:
        """Start (creating it once, with ``pg_basebackup``) a streaming hot standby of this cluster, which
        is started first if needed; return the standby's DSN (same superuser and databases, read only).

        :raises EmbeddedError: the base backup or the start failed (exit code 70).
        """
        self.up()
        primary = self._state()
        assert primary is not None
        rep = self.replica()
        state = rep._state()
        if state is None:
            user = server_os_user()
            rep._prepare_home(user)
            data = rep.data_dir(primary.major)
            if data.exists():  # a base backup killed half-way: start it over
                shutil.rmtree(data)
            rep._prepare_data_dir(data, user)
            state = ClusterState(
                port=port or _free_port(), password=primary.password, bindir=primary.bindir, major=primary.major,
                os_user=primary.os_user, superuser=primary.superuser, database=primary.database,
            )  # fmt: skip
            # -R: standby.signal and primary_conninfo (with the password) written into the copy
            rep.env_overrides = {**rep.env_overrides, "PGPASSWORD": primary.password}
            try:
                rep._run(state, [str(Path(primary.bindir) / "pg_basebackup"), "-D", str(data), "-h", "127.0.0.1",
                                 "-p", str(primary.port), "-U", primary.superuser, "-X", "stream", "-R",
                                 "--checkpoint=fast"])  # fmt: skip
            finally:
                rep.env_overrides = {k: v for k, v in rep.env_overrides.items() if k != "PGPASSWORD"}
            rep._save(state)
        if rep._running(state):
            return rep.dsn()
        rep._start(state, port)  # its own callvault.conf (port, socket) replaces the primary's copy
        return rep.dsn()

    def replica_down(self) -> bool:
        """Stop the standby (if it runs)."""
        return self.replica().down()

    # -- steps -----------------------------------------------------------------------------
    def _create(self, port: int | None) -> ClusterState:
        bindir = _pgbin.find_bindir()
        major = _pgbin.server_major(bindir)
        user = server_os_user()
        self._prepare_home(user)
        data = self.data_dir(major)
        self._prepare_data_dir(data, user)
        state = ClusterState(
            port=port or _free_port(), password=self.password or secrets.token_urlsafe(24), bindir=str(bindir),
            major=major, os_user=user.pw_name,
        )  # fmt: skip
        if not (data / "PG_VERSION").exists():
            self._initdb(state, data, user)
        self._save(state)
        return state

    def _prepare_home(self, user: pwd.struct_passwd) -> None:
        try:
            self.home.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise EmbeddedError(f"cannot create callvault home {self.home}: {exc}; set CALLVAULT_HOME") from exc
        if user.pw_uid != os.geteuid():
            # The server user must be able to traverse every ancestor of the data directory.
            self.home.chmod(self.home.stat().st_mode | 0o711)
            for parent in [self.home, *self.home.parents]:
                if not parent.stat().st_mode & 0o001:
                    raise EmbeddedError(
                        f"OS user {user.pw_name!r} (which runs Postgres) cannot reach {self.home}: {parent} is "
                        f"not traversable by others; set CALLVAULT_HOME to a directory outside it "
                        f"(e.g. /var/lib/callvault) or `chmod o+x {parent}`"
                    )

    def _prepare_data_dir(self, data: Path, user: pwd.struct_passwd) -> None:
        if data.exists():
            owner = data.stat().st_uid
            if owner != user.pw_uid:
                who = _user_name(owner)
                raise EmbeddedError(
                    f"data directory {data} is owned by {who}, but the server runs as {user.pw_name!r}: "
                    f"`chown -R {user.pw_name} {data}`, or set CALLVAULT_HOME to a directory of your own"
                )
            if any(data.iterdir()) and not (data / "PG_VERSION").exists():
                raise EmbeddedError(f"{data} is not empty and is not a Postgres data directory: remove it")
            return
        data.mkdir(mode=0o700)
        if user.pw_uid != os.geteuid():
            os.chown(data, user.pw_uid, user.pw_gid)

    def _initdb(self, state: ClusterState, data: Path, user: pwd.struct_passwd) -> None:
        pwfile = self.home / f".pwfile-{os.getpid()}"  # outside the data dir: initdb wants it empty
        pwfile.write_text(state.password + "\n")
        os.chmod(pwfile, 0o600)
        if user.pw_uid != os.geteuid():
            os.chown(pwfile, user.pw_uid, user.pw_gid)
        try:
            self._run(
                state,
                [str(Path(state.bindir) / "initdb"), "-D", str(data), "-U", state.superuser,
                 f"--pwfile={pwfile}", "--auth=scram-sha-256", "-E", "UTF8", "--no-locale"],
            )  # fmt: skip
        finally:
            pwfile.unlink(missing_ok=True)
        conf = data / "postgresql.conf"
        with conf.open("a") as fh:
            fh.write("\n# callvault: settings live in callvault.conf\ninclude_if_exists = 'callvault.conf'\n")

    def _write_conf(self, state: ClusterState) -> None:
        data = self.data_dir(state.major)
        lines = {**SERVER_SETTINGS, "port": str(state.port), "unix_socket_directories": f"'{data}'"}
        if (Path(state.bindir).parent / "lib" / "pg_cron.so").exists():
            lines["shared_preload_libraries"] = "'pg_cron'"
        lines.update(self.extra_settings)
        text = "".join(f"{k} = {v}\n" for k, v in lines.items())
        conf = data / "callvault.conf"
        conf.write_text("# written by callvault on every start; edit callvault/embedded.py instead\n" + text)
        st = data.stat()
        os.chown(conf, st.st_uid, st.st_gid)

    def _start(self, state: ClusterState, port: int | None) -> None:
        for _attempt in range(PORT_ATTEMPTS):
            if port is not None:
                state.port = port
            if not _port_free(state.port):
                if port is not None:
                    raise EmbeddedError(
                        f"port {port} on 127.0.0.1 is taken: choose another with `callvault dev up --port N` "
                        "or stop what listens there"
                    )
                state.port = _free_port()
            self._save(state)
            self._write_conf(state)
            done = self._pg_ctl(
                state, "start", "-w", "-t", str(START_TIMEOUT_S), "-l", str(self.log_file(state.major)),
                check=False,
            )  # fmt: skip
            if done.returncode == 0:
                return
            if port is not None or _port_free(state.port):
                break  # not a port race: report the server's own error
        raise EmbeddedError(
            f"the embedded Postgres did not start: {done.stderr.strip() or done.stdout.strip()}; "
            f"see {self.log_file(state.major)}"
        )

    def _ensure_database(self, state: ClusterState) -> None:
        with psycopg.connect(self.dsn("postgres"), autocommit=True) as conn:
            exists = conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", (state.database,)).fetchone()
            if not exists:
                conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(state.database)))
            loaded = conn.execute("SELECT current_setting('shared_preload_libraries') ~ 'pg_cron'").fetchone()
            if loaded == (True,):
                conn.execute("CREATE EXTENSION IF NOT EXISTS pg_cron")

    # -- process helpers -------------------------------------------------------------------
    def _running(self, state: ClusterState) -> bool:
        if not (self.data_dir(state.major) / "postmaster.pid").exists():
            return False
        return self._pg_ctl(state, "status", check=False).returncode == 0

    def _pg_ctl(self, state: ClusterState, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        cmd = [str(Path(state.bindir) / "pg_ctl"), "-D", str(self.data_dir(state.major)), *args]
        return self._run(state, cmd, check=check)

    def _run(self, state: ClusterState, cmd: list[str], *, check: bool = True) -> subprocess.CompletedProcess[str]:
        kwargs: dict[str, Any] = {}
        if os.geteuid() == 0:
            user = pwd.getpwnam(state.os_user)
            kwargs = {"user": user.pw_uid, "group": user.pw_gid, "extra_groups": []}
        env = {**config.process_environment(), "LC_ALL": "C.UTF-8", **self.env_overrides}
        done = subprocess.run(
            cmd, capture_output=True, text=True, check=False, cwd=self.home,
            env={k: v for k, v in env.items() if v is not None}, **kwargs,
        )  # fmt: skip
        if check and done.returncode != 0:
            raise EmbeddedError(f"{Path(cmd[0]).name} failed: {done.stderr.strip() or done.stdout.strip()}")
        return done


def _user_name(uid: int) -> str:
    try:
        return repr(pwd.getpwuid(uid).pw_name)
    except KeyError:
        return f"uid {uid}"


def restart_needed(conn: psycopg.Connection[Any]) -> str | None:
    """When ``conn`` is on the embedded cluster (``$CALLVAULT_HOME``) and that server runs binaries other
    than the installed ones: the one-line reason with the fix (``running, but on binaries older than
    ...``). None for any other server: a remote server's binaries are not this machine's."""
    cluster = Cluster()
    try:
        if not cluster.serves(conn):
            return None
    except (EmbeddedError, OSError):
        return None  # an unreadable or corrupt cluster.json is `dev status`'s to report, not every command's
    return cluster.restart_needed(conn.info.parameter_status("server_version"))


def require_current_binaries(conn: psycopg.Connection[Any], what: str) -> None:
    """Refuse ``what`` on an embedded server whose binaries were replaced under it (it would load the
    new extension libraries into the old executable and fail with "undefined symbol")."""
    reason = restart_needed(conn)
    if reason is not None:
        raise EmbeddedError(f"{what}: the embedded Postgres at {Cluster().home} is {reason}")
