"""A local high-availability cluster for development and tests: etcd and three Patroni-managed
PostgreSQL nodes (a primary and two standbys) on 127.0.0.1, with pg_partman and pg_cron.

``callvault dev up --ha`` starts it, ``dev down --ha`` stops it, ``dev url --ha`` prints the multi-host
DSNs (writers: ``target_session_attrs=read-write``; readers: ``prefer-standby``). Layout under
``<home>/ha``::

    ha.json           ports, passwords, binaries (mode 0600, owned by the invoking user)
    etcd/             etcd's data (one member: enough for a lab; production runs three or five)
    node1/ ... node3/ patroni.yml, patroni.log, data/ (the node's data directory)

etcd comes from Debian (``etcd-server``) and Patroni from PyPI (the ``ha`` extra); callvault starts them
as the server's unprivileged OS user (:func:`callvault.embedded.server_os_user`). Synchronous mode is on
by default: a commit the application saw acknowledged is on a standby too, and Patroni promotes only
that standby (docs/ha.md says what asynchronous mode can lose).
"""

from __future__ import annotations

import contextlib
import importlib.util
import json
import os
import pwd
import secrets
import shutil
import signal
import site
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import psycopg
from psycopg import sql

from callvault import _pgbin, config
from callvault.config import default_home
from callvault.embedded import DATABASE, SUPERUSER, _free_port, server_os_user
from callvault.errors import EmbeddedError

NODES = ("node1", "node2", "node3")
SCOPE = "callvault"
REPLICATOR = "replicator"
TTL_S = 20  # Patroni's minimum: a primary that dies is replaced ~TTL_S later
LOOP_WAIT_S = 1
RETRY_TIMEOUT_S = 5
START_TIMEOUT_S = 120
# ``python -S -m patroni``, except that a ``sitecustomize`` on PYTHONPATH is still imported (-S skips it):
# the tests' mend of libfaketime's broken sleep (tests/faketime_site) must reach Patroni too.
PATRONI_MAIN = (
    "import importlib.util, runpy; importlib.util.find_spec('sitecustomize') and __import__('sitecustomize'); "
    "runpy.run_module('patroni', run_name='__main__', alter_sys=True)"
)
ETCD_INSTALL = "apt-get install etcd-server"
PATRONI_INSTALL = "pip install 'callvault[ha]'  (Patroni with its etcd3 client)"
# Cluster-wide settings (Patroni keeps them in etcd and applies them on every node).
PARAMETERS: dict[str, object] = {
    "max_connections": 100,
    "shared_buffers": "128MB",  # three servers on one box
    "wal_level": "logical",  # publish / mirrors; logical slots are kept across failovers (permanent slots)
    "hot_standby": "on",
    "wal_log_hints": "on",  # pg_rewind: a failed primary rejoins as a standby
    "max_wal_senders": 10,
    "max_replication_slots": 10,
    "timezone": "UTC",
    "log_timezone": "UTC",
    "jit": "off",
    "cron.database_name": "postgres",
    # pg_cron's jobs run in background workers: no libpq login of their own (the nodes take passwords only)
    "cron.use_background_workers": "on",
    "max_worker_processes": 16,
}


@dataclass
class HAState:
    """What ``ha.json`` records: every port, the superuser's and replication user's passwords, the
    server binaries, the OS user, and whether synchronous mode was asked for."""

    etcd_port: int
    etcd_peer_port: int
    pg_ports: dict[str, int]
    api_ports: dict[str, int]
    password: str
    replication_password: str
    bindir: str
    os_user: str
    synchronous: bool = True
    superuser: str = SUPERUSER
    database: str = DATABASE
    extra: dict[str, str] = field(default_factory=dict)


def missing_software() -> str | None:
    """One line naming what the HA lab needs and is not installed (with the install command), or None."""
    if shutil.which("etcd") is None and not Path("/usr/bin/etcd").exists():
        return f"etcd is not installed: {ETCD_INSTALL}"
    if importlib.util.find_spec("patroni") is None:
        return f"Patroni is not installed: {PATRONI_INSTALL}"
    return None


class HACluster:
    """The lab under ``<home>/ha``. ``up()`` is idempotent: create once, start what is stopped, wait for a
    primary; ``down()`` stops the nodes, then etcd."""

    def __init__(self, home: Path | None = None, *, synchronous: bool = True,
                 env: dict[str, str | None] | None = None) -> None:  # fmt: skip
        self.home = ((home or default_home()) / "ha").absolute()
        self.state_file = self.home / "ha.json"
        self.synchronous = synchronous
        self.env_overrides = env or {}

    # -- state -----------------------------------------------------------------------------------
    def _state(self) -> HAState | None:
        if not self.state_file.exists():
            return None
        try:
            return HAState(**json.loads(self.state_file.read_text()))
        except (ValueError, TypeError) as exc:
            raise EmbeddedError(
                f"{self.state_file} is corrupt ({exc}); `callvault dev down --ha` and remove {self.home}"
            ) from exc

    def _save(self, state: HAState) -> None:
        fd, tmp = tempfile.mkstemp(dir=self.home, prefix=".ha.")
        with os.fdopen(fd, "w") as fh:
            json.dump(asdict(state), fh, indent=2)
        os.chmod(tmp, 0o600)
        os.replace(tmp, self.state_file)

    def _need(self) -> HAState:
        state = self._state()
        if state is None:
            raise EmbeddedError(f"no HA cluster at {self.home}: run `callvault dev up --ha`")
        return state

    def node_dir(self, name: str) -> Path:
        return self.home / name

    # -- DSNs ------------------------------------------------------------------------------------
    def dsn(self, *, readers: bool = False, database: str | None = None) -> str:
        """The multi-host URL of every node: for writers ``target_session_attrs=read-write`` (libpq tries
        the hosts in turn and keeps the primary), for readers ``prefer-standby``."""
        state = self._need()
        hosts = ",".join(f"127.0.0.1:{state.pg_ports[n]}" for n in NODES)
        attrs = "prefer-standby" if readers else "read-write"
        return (f"postgresql://{state.superuser}:{state.password}@{hosts}/{database or state.database}"
                f"?target_session_attrs={attrs}&connect_timeout=3")  # fmt: skip

    def api_url(self, name: str | None = None) -> str:
        """Patroni's REST API of ``name`` (default: the first node), e.g. for ``mirror create --patroni``."""
        state = self._need()
        return f"http://127.0.0.1:{state.api_ports[name or NODES[0]]}"

    def node_dsn(self, name: str, database: str | None = None) -> str:
        """One node's URL (whatever its role)."""
        state = self._need()
        return (f"postgresql://{state.superuser}:{state.password}@127.0.0.1:{state.pg_ports[name]}/"
                f"{database or state.database}?connect_timeout=3")  # fmt: skip

    # -- lifecycle ---------------------------------------------------------------------------------
    def up(self) -> str:
        """Create (once) and start etcd and the three nodes; wait for a primary and the database.

        :raises EmbeddedError: etcd or Patroni is not installed (the install command), or no primary
            came up within the start budget (the log to read) (exit code 70)."""
        if (why := missing_software()) is not None:
            raise EmbeddedError(why)
        state = self._state() or self._create()
        self._start_etcd(state)
        for name in NODES:
            self.start_node(name)
        primary = self.wait_primary(START_TIMEOUT_S)
        self._ensure_database(state, primary)
        return self.dsn()

    def down(self) -> bool:
        """Stop every node (Patroni stops its Postgres), then etcd. False when nothing ran."""
        state = self._state()
        if state is None:
            return False
        stopped = False
        for name in NODES:
            stopped = self.stop_node(name) or stopped
            stopped = self._stop_postmaster(name) or stopped
        stopped = self._stop_pid(self.home / "etcd.pid", "etcd") or stopped
        return stopped

    def _stop_postmaster(self, name: str, timeout: float = 30) -> bool:
        """Stop a Postgres its Patroni left running (Patroni restarting a standby to load a copied slot
        when it was told to stop, seen in the tests): fast shutdown, then SIGKILL."""
        try:
            pid = int((self.node_dir(name) / "data" / "postmaster.pid").read_text().split()[0])
            os.kill(pid, 0)
        except (OSError, ValueError, IndexError):
            return False
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGINT)  # fast shutdown
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                os.kill(pid, 0)
            except ProcessLookupError:
                return True
            time.sleep(0.2)
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
        return True

    def start_node(self, name: str) -> None:
        """Start the node's Patroni (it starts, or bootstraps, or joins as a standby its Postgres)."""
        state = self._need()
        pidfile = self.node_dir(name) / "patroni.pid"
        if self._alive(pidfile, "patroni"):
            return
        conf = self._write_patroni_conf(state, name)
        log = self.node_dir(name) / "patroni.log"
        python, env = self._patroni_python(state)
        self._spawn(state, [python, "-S", "-c", PATRONI_MAIN, str(conf)], log, pidfile, env)

    def stop_node(self, name: str) -> bool:
        """Stop a node cleanly (Patroni hands the leader key over when it was the primary)."""
        return self._stop_pid(self.node_dir(name) / "patroni.pid", "patroni", timeout=60)

    def kill_node(self, name: str) -> None:
        """The node dies: SIGKILL to its Patroni and its postmaster (the leader key then expires)."""
        pid = self._pid(self.node_dir(name) / "patroni.pid")
        if pid is not None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        post = self.node_dir(name) / "data" / "postmaster.pid"
        with contextlib.suppress(OSError, ValueError, ProcessLookupError):
            os.kill(int(post.read_text().split()[0]), signal.SIGKILL)

    def isolate_node(self, name: str) -> None:
        """The node is cut off from the cluster's consensus: its Patroni is frozen (SIGSTOP), so it stops
        renewing the leader key, while its Postgres keeps running and serving the clients it has — a
        partition between the primary and etcd. A standby is promoted once the key expires; the frozen
        node's commits wait for a synchronous standby that no longer follows it. :meth:`heal_node` ends it."""
        pid = self._pid(self.node_dir(name) / "patroni.pid")
        if pid is not None:
            os.kill(pid, signal.SIGSTOP)

    def heal_node(self, name: str) -> None:
        """End :meth:`isolate_node`: Patroni resumes, finds another leader, demotes its Postgres (clients cut
        off, pg_rewind where it was ahead) and rejoins as a standby."""
        pid = self._pid(self.node_dir(name) / "patroni.pid")
        if pid is not None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGCONT)

    # -- cluster view (Patroni's REST API) -------------------------------------------------------------
    def members(self) -> list[dict[str, Any]]:
        """Patroni's view of the members (name, role, state, lag, ...), from the first node that answers."""
        state = self._need()
        for name in NODES:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{state.api_ports[name]}/cluster", timeout=2) as r:
                    members: list[dict[str, Any]] = json.loads(r.read())["members"]
                    return members
            except (OSError, ValueError, KeyError):
                continue
        return []

    def primary(self) -> str | None:
        """The name of the node that runs as primary now, if any."""
        for m in self.members():
            if m.get("role") == "leader" and m.get("state") == "running":
                return str(m["name"])
        return None

    def wait_primary(self, timeout: float, *, other_than: str | None = None) -> str:
        """Wait until a node (not ``other_than``) runs as primary and accepts writes; its name."""
        deadline = time.monotonic() + timeout
        while True:
            name = self.primary()
            if name is not None and name != other_than and self._writable(name):
                return name
            if time.monotonic() > deadline:
                raise EmbeddedError(
                    f"no primary within {timeout:.0f} s (members: {self.members() or 'none answer'}); see "
                    f"{self.home}/node*/patroni.log"
                )
            time.sleep(0.5)

    def wait_streaming(self, timeout: float, standbys: int = 2) -> None:
        """Wait until ``standbys`` standbys stream from the primary."""
        deadline = time.monotonic() + timeout
        while True:
            streaming = [m for m in self.members() if m.get("role") in ("replica", "sync_standby", "quorum_standby")
                         and m.get("state") == "streaming"]  # fmt: skip
            if len(streaming) >= standbys:
                return
            if time.monotonic() > deadline:
                raise EmbeddedError(f"{len(streaming)} of {standbys} standbys streaming after {timeout:.0f} s: "
                                    f"{self.members()}")  # fmt: skip
            time.sleep(0.5)

    def wait_healthy(self, timeout: float) -> str:
        """Wait until a primary runs, every other node streams from it on its timeline and, in synchronous
        mode, one is its synchronous standby (what a failover needs to lose nothing); the primary's name."""
        deadline = time.monotonic() + timeout
        state = self._need()
        while True:
            members = self.members()
            leader = [m for m in members if m.get("role") == "leader" and m.get("state") == "running"]
            others = [m for m in members if m.get("role") != "leader"]
            if leader and len(members) == len(NODES):
                tl = leader[0].get("timeline")
                streaming = all(m.get("state") == "streaming" and m.get("timeline") == tl for m in others)
                sync = any(m.get("role") == "sync_standby" for m in others) or not state.synchronous
                if streaming and sync:
                    return str(leader[0]["name"])
            if time.monotonic() > deadline:
                raise EmbeddedError(f"the HA cluster is not healthy after {timeout:.0f} s: {members}")
            time.sleep(0.5)

    def switchover(self, candidate: str | None = None) -> str:
        """A planned switchover (as ``patronictl switchover``): the primary hands over to ``candidate`` (or
        the sync standby); returns the new primary's name."""
        state = self._need()
        leader = self.primary()
        if leader is None:
            raise EmbeddedError("no primary to switch over from")
        body: dict[str, str] = {"leader": leader}
        if candidate:
            body["candidate"] = candidate
        req = urllib.request.Request(
            f"http://127.0.0.1:{state.api_ports[leader]}/switchover", data=json.dumps(body).encode(),
            headers={"Content-Type": "application/json"}, method="POST",
        )  # fmt: skip
        try:
            with urllib.request.urlopen(req, timeout=60) as r:  # noqa: S310 (http://127.0.0.1, built here)
                r.read()
        except urllib.error.HTTPError as exc:
            raise EmbeddedError(f"switchover refused: {exc.read().decode(errors='replace').strip()}") from exc
        return self.wait_primary(60, other_than=leader)

    def status(self) -> dict[str, Any]:
        state = self._state()
        if state is None:
            return {"home": str(self.home), "created": False}
        return {
            "home": str(self.home), "created": True, "synchronous": state.synchronous,
            "etcd": {"port": state.etcd_port, "running": self._alive(self.home / "etcd.pid", "etcd")},
            "nodes": {n: {"port": state.pg_ports[n], "api_port": state.api_ports[n],
                          "running": self._alive(self.node_dir(n) / "patroni.pid", "patroni")} for n in NODES},
            "members": self.members(),
        }  # fmt: skip

    # -- steps -------------------------------------------------------------------------------------
    def _create(self) -> HAState:
        bindir = _pgbin.find_bindir()
        user = server_os_user()
        self.home.mkdir(parents=True, exist_ok=True)
        self.home.chmod(0o711)
        ports = [_free_port() for _ in range(2 + 2 * len(NODES))]
        while len(set(ports)) != len(ports):
            ports = [_free_port() for _ in range(2 + 2 * len(NODES))]
        state = HAState(
            etcd_port=ports[0], etcd_peer_port=ports[1],
            pg_ports={n: ports[2 + i] for i, n in enumerate(NODES)},
            api_ports={n: ports[2 + len(NODES) + i] for i, n in enumerate(NODES)},
            password=secrets.token_urlsafe(24), replication_password=secrets.token_urlsafe(24),
            bindir=str(bindir), os_user=user.pw_name, synchronous=self.synchronous,
        )  # fmt: skip
        for d in (self.home / "etcd", *(self.node_dir(n) for n in NODES)):
            d.mkdir(mode=0o700, exist_ok=True)
            self._own(d)
        self._save(state)
        return state

    def _own(self, path: Path) -> None:
        if os.geteuid() == 0:
            user = pwd.getpwnam(self._need().os_user if self.state_file.exists() else server_os_user().pw_name)
            os.chown(path, user.pw_uid, user.pw_gid)

    def _start_etcd(self, state: HAState) -> None:
        pidfile = self.home / "etcd.pid"
        if self._alive(pidfile, "etcd"):
            return
        client, peer = f"http://127.0.0.1:{state.etcd_port}", f"http://127.0.0.1:{state.etcd_peer_port}"
        cmd = [shutil.which("etcd") or "/usr/bin/etcd", "--name", "callvault", "--data-dir", str(self.home / "etcd"),
               "--listen-client-urls", client, "--advertise-client-urls", client, "--listen-peer-urls", peer,
               "--initial-advertise-peer-urls", peer, "--initial-cluster", f"callvault={peer}",
               "--log-level", "warn"]  # fmt: skip
        self._spawn(state, cmd, self.home / "etcd.log", pidfile)
        deadline = time.monotonic() + 30
        while True:
            try:
                with urllib.request.urlopen(f"{client}/health", timeout=1) as r:  # noqa: S310 (http://127.0.0.1, built here)
                    if json.loads(r.read()).get("health") in ("true", True):
                        return
            except (OSError, ValueError):
                pass
            if time.monotonic() > deadline or not self._alive(pidfile, "etcd"):
                raise EmbeddedError(f"etcd did not start on 127.0.0.1:{state.etcd_port}; see {self.home}/etcd.log")
            time.sleep(0.3)

    def _write_patroni_conf(self, state: HAState, name: str) -> Path:
        node = self.node_dir(name)
        preload = "pg_cron" if (Path(state.bindir).parent / "lib" / "pg_cron.so").exists() else ""
        params: dict[str, object] = {**PARAMETERS, **({"shared_preload_libraries": preload} if preload else {})}
        conf = {
            "scope": SCOPE,
            "name": name,
            "restapi": {
                "listen": f"127.0.0.1:{state.api_ports[name]}",
                "connect_address": f"127.0.0.1:{state.api_ports[name]}",
            },
            "etcd3": {"hosts": [f"127.0.0.1:{state.etcd_port}"]},
            "bootstrap": {
                "dcs": {
                    "ttl": TTL_S,
                    "loop_wait": LOOP_WAIT_S,
                    "retry_timeout": RETRY_TIMEOUT_S,
                    "maximum_lag_on_failover": 1024 * 1024,
                    "synchronous_mode": state.synchronous,
                    # Patroni drops replication slots it was not told of; a mirror's slot (CREATE SUBSCRIPTION
                    # makes it) is callvault's: leave logical ones alone (docs/ha.md: permanent slots)
                    "ignore_slots": [{"type": "logical", "plugin": "pgoutput"}],
                    "postgresql": {"use_pg_rewind": True, "use_slots": True, "parameters": params},
                },
                "initdb": [{"encoding": "UTF8"}, "no-locale", {"auth": "scram-sha-256"}],
            },
            "postgresql": {
                "listen": f"127.0.0.1:{state.pg_ports[name]}",
                "connect_address": f"127.0.0.1:{state.pg_ports[name]}",
                "data_dir": str(node / "data"),
                "bin_dir": state.bindir,
                "pgpass": str(node / "pgpass"),
                "basebackup": [{"checkpoint": "fast"}],  # a new standby does not wait for the next checkpoint
                "authentication": {
                    "superuser": {"username": state.superuser, "password": state.password},
                    "replication": {"username": REPLICATOR, "password": state.replication_password},
                    "rewind": {"username": state.superuser, "password": state.password},
                },
                "parameters": {"unix_socket_directories": str(node)},
                "pg_hba": [
                    "local all all scram-sha-256",
                    "host all all 127.0.0.1/32 scram-sha-256",
                    f"host replication {REPLICATOR} 127.0.0.1/32 scram-sha-256",
                    f"host replication {state.superuser} 127.0.0.1/32 scram-sha-256",
                ],
            },
            "tags": {},
        }
        path = node / "patroni.yml"
        path.write_text(json.dumps(conf, indent=2))  # JSON is YAML: no YAML writer needed
        path.chmod(0o600)
        self._own(path)
        return path

    def _ensure_database(self, state: HAState, primary: str) -> None:
        with psycopg.connect(self.node_dsn(primary, "postgres"), autocommit=True) as conn:
            if not conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", (state.database,)).fetchone():
                conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(state.database)))
            loaded = conn.execute("SELECT current_setting('shared_preload_libraries') ~ 'pg_cron'").fetchone()
            if loaded == (True,):
                conn.execute("CREATE EXTENSION IF NOT EXISTS pg_cron")

    def _writable(self, name: str) -> bool:
        try:
            with psycopg.connect(self.node_dsn(name, "postgres"), autocommit=True) as conn:
                return conn.execute("SELECT NOT pg_is_in_recovery()").fetchone() == (True,)
        except psycopg.Error:
            return False

    # -- processes ---------------------------------------------------------------------------------
    def _patroni_python(self, state: HAState) -> tuple[str, dict[str, str]]:
        """An interpreter the server's OS user can run, with this environment's packages (Patroni's) on
        its path: this one, or the system's of the same version when this one is private (a pyenv under
        /root, say). ``-S``: the system's own site-packages stay out."""
        paths = [p for p in (*site.getsitepackages(), site.getusersitepackages()) if Path(p).is_dir()]
        inherited = [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p]  # e.g. a sitecustomize
        env = {"PYTHONPATH": os.pathsep.join(dict.fromkeys([*paths, *inherited]))}
        version = f"python{sys.version_info.major}.{sys.version_info.minor}"
        for python in dict.fromkeys([sys.executable, os.path.realpath(sys.executable), f"/usr/bin/{version}",
                                     shutil.which(version) or ""]):  # fmt: skip
            if python and Path(python).exists() and self._run_as(state, [python, "-S", "-c", "import patroni"], env):
                return python, env
        raise EmbeddedError(
            f"no Python {sys.version_info.major}.{sys.version_info.minor} that OS user {state.os_user!r} can run "
            f"finds Patroni ({sys.executable} is not reachable by it): install Debian's python3 "
            f"(`apt-get install python3`) or create the virtualenv from it"
        )

    def _run_as(self, state: HAState, cmd: list[str], env: dict[str, str]) -> bool:
        kwargs: dict[str, Any] = {}
        if os.geteuid() == 0:
            user = pwd.getpwnam(state.os_user)
            kwargs = {"user": user.pw_uid, "group": user.pw_gid, "extra_groups": []}
        try:
            done = subprocess.run(cmd, capture_output=True, cwd="/", env={**config.process_environment(), **env},
                                  timeout=60, check=False, **kwargs)  # fmt: skip
        except OSError:
            return False
        return done.returncode == 0

    def _spawn(self, state: HAState, cmd: list[str], log: Path, pidfile: Path,
               extra_env: dict[str, str] | None = None) -> None:  # fmt: skip
        kwargs: dict[str, Any] = {}
        if os.geteuid() == 0:
            user = pwd.getpwnam(state.os_user)
            kwargs = {"user": user.pw_uid, "group": user.pw_gid, "extra_groups": []}
        env = {**config.process_environment(), "LC_ALL": "C.UTF-8", **(extra_env or {}), **self.env_overrides}
        with open(log, "ab") as out:
            proc = subprocess.Popen(
                cmd, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, cwd=self.home,
                env={k: v for k, v in env.items() if v is not None}, start_new_session=True, **kwargs,
            )  # fmt: skip
        self._own(log)
        pidfile.write_text(str(proc.pid))

    @staticmethod
    def _pid(pidfile: Path) -> int | None:
        try:
            return int(pidfile.read_text().strip())
        except (OSError, ValueError):
            return None

    def _alive(self, pidfile: Path, what: str) -> bool:
        pid = self._pid(pidfile)
        if pid is None:
            return False
        try:
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
            stat = Path(f"/proc/{pid}/stat").read_text()
        except OSError:
            return False
        return what.encode() in cmdline and stat.rsplit(")", 1)[1].split()[0] != "Z"

    def _stop_pid(self, pidfile: Path, what: str, timeout: float = 30) -> bool:
        if not self._alive(pidfile, what):
            pidfile.unlink(missing_ok=True)
            return False
        pid = self._pid(pidfile)
        assert pid is not None
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGCONT)  # a node isolated (frozen) by isolate_node answers SIGTERM only then
            os.kill(pid, signal.SIGTERM)
        deadline = time.monotonic() + timeout
        while self._alive(pidfile, what) and time.monotonic() < deadline:
            with contextlib.suppress(ChildProcessError):
                os.waitpid(pid, os.WNOHANG)
            time.sleep(0.2)
        if self._alive(pidfile, what):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        pidfile.unlink(missing_ok=True)
        return True
