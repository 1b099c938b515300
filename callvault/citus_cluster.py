"""A local Citus cluster for development and tests: a coordinator and workers, each an embedded
cluster (:class:`callvault.embedded.Cluster`) with Citus preloaded. ``callvault dev up --citus`` starts
it where Citus is installed for the server (docs/scaling.md); callvault never installs Citus."""

from __future__ import annotations

import functools
import os
from pathlib import Path

import psycopg
from psycopg import sql

from callvault import _pgbin
from callvault.config import default_home
from callvault.embedded import Cluster
from callvault.engines import citus_available, citus_missing_reason
from callvault.errors import EmbeddedError, ExtensionMissing

CITUS_SETTINGS: dict[str, str] = {
    "shared_buffers": "'256MB'",  # three servers on one box
    "max_connections": "200",  # the coordinator's connections to the workers count on both sides
    "max_worker_processes": "16",  # Citus' maintenance daemon per database, beside pg_cron
    "citus.enable_statistics_collection": "off",
    # node to node on loopback: no TLS (the server's libpq would otherwise look for a client certificate
    # in the invoking user's home, which the server's OS user may not read)
    "citus.node_conninfo": "'sslmode=disable'",
}


@functools.lru_cache(maxsize=8)
def _has_setting(postgres: str, name: str) -> bool:
    """Whether the server binary knows a setting (a name it does not know in a config file is fatal)."""
    try:
        return name.encode() in Path(postgres).read_bytes()
    except OSError:
        return False


class CitusCluster:
    """A local Citus cluster under ``<home>/citus``: a coordinator and ``workers`` workers on 127.0.0.1,
    each a :class:`Cluster` with ``shared_preload_libraries = 'citus,...'`` and the coordinator's
    superuser password (the coordinator reaches the workers with it, through ``pg_dist_authinfo``).
    ``callvault dev up --citus`` starts it; tests use it with their own home."""

    def __init__(
        self,
        home: Path | None = None,
        *,
        workers: int = 2,
        env: dict[str, str | None] | None = None,
        settings: dict[str, str] | None = None,
    ) -> None:
        self.extra_settings = settings or {}
        if workers < 1:
            raise EmbeddedError(f"--workers {workers}: a Citus cluster needs at least one worker")
        self.home = ((home or default_home()) / "citus").absolute()
        self.env = env
        self.workers_wanted = workers
        self.coordinator = self._node("coordinator", None)

    def _settings(self) -> dict[str, str]:
        bindir = _pgbin.find_bindir()
        cron = (bindir.parent / "lib" / "pg_cron.so").exists()
        preload = "'citus,pg_cron'" if cron else "'citus'"
        extra = {}
        if _has_setting(str(bindir / "postgres"), "output_plugin_libraries"):
            # servers that restrict logical decoding plugins: Citus' shard moves, tenant isolation and
            # change data capture decode with its own plugin
            extra["output_plugin_libraries"] = "'pgoutput, test_decoding, citus'"
        return {**CITUS_SETTINGS, "shared_preload_libraries": preload, **extra, **self.extra_settings}

    def _node(self, name: str, password: str | None) -> Cluster:
        return Cluster(self.home / name, settings=self._settings(), env=self.env, password=password)

    def worker_nodes(self) -> list[Cluster]:
        """The workers (their clusters; they may not exist yet)."""
        state = self.coordinator._state()
        password = state.password if state else None
        return [self._node(f"worker{i}", password) for i in range(1, self.workers_wanted + 1)]

    def up(self) -> str:
        """Create (once) and start every node, create the citus extension in the database on each, register
        the workers with the coordinator (again when a port moved); return the coordinator's DSN.

        :raises ExtensionMissing: Citus is not installed for these server binaries (exit code 69).
        :raises EmbeddedError: a node did not start (exit code 70)."""
        if not citus_available():
            raise ExtensionMissing(f"--citus: {citus_missing_reason()}; nothing was started")
        dsn = self.coordinator.up()
        for worker in self.worker_nodes():
            worker.up()
            self._trust_loopback(worker)
        self.register()
        return dsn

    TRUST = "host all all 127.0.0.1/32 trust  # callvault: the coordinator's connections as each role\n"

    def _trust_loopback(self, worker: Cluster) -> None:
        """Workers accept loopback connections without a password: the coordinator connects to them as
        whichever role runs a query (the ingest role, the app role...), whose password only the
        coordinator checks. A local development cluster only (workers listen on 127.0.0.1); in
        production use pg_dist_authinfo or certificates (docs/scaling.md)."""
        state = worker._state()
        assert state is not None
        hba = worker.data_dir(state.major) / "pg_hba.conf"
        text = hba.read_text()
        if self.TRUST in text:
            return
        st = hba.stat()
        hba.write_text(self.TRUST + text)
        os.chown(hba, st.st_uid, st.st_gid)
        worker._pg_ctl(state, "reload")

    def down(self) -> bool:
        """Stop every node; False when none was running."""
        stopped = [w.down() for w in self.worker_nodes()]
        return self.coordinator.down() or any(stopped)

    def database(self, name: str, template: str | None = None) -> str:
        """Create database ``name`` on every node (from ``template``), with Citus and the workers registered
        in it (Citus' metadata is per database); return its DSN on the coordinator."""
        for node in [self.coordinator, *self.worker_nodes()]:
            with psycopg.connect(node.dsn("postgres"), autocommit=True) as conn:
                if conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", (name,)).fetchone() is None:
                    stmt = sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name))
                    if template:
                        stmt = sql.SQL("{} TEMPLATE {}").format(stmt, sql.Identifier(template))
                    conn.execute(stmt)
        self.register(name)
        return self.coordinator.dsn(name)

    def drop_database(self, name: str) -> None:
        """Drop database ``name`` on every node."""
        for node in [self.coordinator, *self.worker_nodes()]:
            with psycopg.connect(node.dsn("postgres"), autocommit=True) as conn:
                conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name)))

    def register(self, database: str | None = None) -> None:
        """In ``database`` (default the cluster's): citus on every node, the coordinator's host, every
        worker added (or moved to its current port)."""
        state = self.coordinator._state()
        assert state is not None
        db_name = database or state.database
        workers = self.worker_nodes()
        auth = f"password={state.password}"
        for node in [*workers, self.coordinator]:
            with psycopg.connect(node.dsn(db_name), autocommit=True) as conn:
                conn.execute("CREATE EXTENSION IF NOT EXISTS citus")
                conn.execute(
                    "INSERT INTO pg_dist_authinfo (nodeid, rolename, authinfo) SELECT 0, current_user, %s "
                    "WHERE NOT EXISTS (SELECT 1 FROM pg_dist_authinfo WHERE nodeid = 0 AND rolename = current_user)",
                    (auth,),
                )
        with psycopg.connect(self.coordinator.dsn(db_name), autocommit=True) as conn:
            conn.execute("SELECT citus_set_coordinator_host('127.0.0.1', %s)", (state.port,))
            ports = [w._state().port for w in workers if w._state() is not None]  # type: ignore[union-attr]
            known = {
                int(p): int(n) for n, p in conn.execute("SELECT nodeid, nodeport FROM pg_dist_node WHERE groupid <> 0")
            }
            stale = [n for p, n in known.items() if p not in ports]  # a worker that came back on another port
            for port in ports:
                if port in known:
                    continue
                if stale:
                    conn.execute("SELECT citus_update_node(%s, '127.0.0.1', %s)", (stale.pop(0), port))
                else:
                    conn.execute("SELECT citus_add_node('127.0.0.1', %s)", (port,))

    def status(self) -> dict[str, object]:
        """Each node: where it lives, its port, whether it runs."""
        out: dict[str, object] = {}
        for node in [self.coordinator, *self.worker_nodes()]:
            st = node._state()
            out[node.home.name] = {"home": str(node.home), "port": st.port if st else None,
                                   "running": bool(st and node._running(st))}  # fmt: skip
        return out
