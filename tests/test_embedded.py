"""The embedded cluster: lifecycle, the DSN, the server's OS user, and each documented failure."""

from __future__ import annotations

import json
import os
import pwd
import shutil
import socket
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest

from callvault import embedded
from callvault.embedded import Cluster, ServerBinary, installed_version, running_binary, stale_verdict, version_tuple
from callvault.errors import EmbeddedError
from tests.helpers import run


@pytest.fixture
def scratch_home() -> Iterator[Path]:
    home = Path(tempfile.mkdtemp(prefix="callvault-scratch-", dir="/tmp"))
    home.chmod(0o755)
    yield home
    Cluster(home).down()


def test_session_cluster_is_usable(cluster: Cluster) -> None:
    st = cluster.status()
    assert st.initialised and st.running and st.port
    with psycopg.connect(cluster.dsn()) as conn:
        assert conn.execute("SHOW timezone").fetchone() == ("UTC",)
        assert conn.execute("SELECT count(*) FROM pg_available_extensions WHERE name = 'pg_partman'").fetchone() == (1,)
        assert "pg_cron" in conn.execute("SHOW shared_preload_libraries").fetchone()[0]
        assert conn.execute("SHOW listen_addresses").fetchone() == ("127.0.0.1",)
        pid = conn.execute("SELECT pg_backend_pid()").fetchone()[0]
        uid = os.stat(f"/proc/{pid}").st_uid  # while the backend lives: it exits once the connection closes
    assert uid != 0, "Postgres must not run as root"
    assert pwd.getpwuid(uid).pw_name == st.os_user
    assert Path(st.data_dir, f".s.PGSQL.{st.port}").is_socket()  # socket lives in the data dir


def test_up_is_idempotent_and_cli_uses_embedded_default(cluster: Cluster) -> None:
    assert cluster.up() == cluster.dsn()
    assert run("dev", "url").stdout.strip() == cluster.dsn()
    assert "running" in run("dev", "status").stdout


def test_restart_keeps_data_and_port(scratch_home: Path) -> None:
    c = Cluster(scratch_home)
    dsn = c.up()
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute("CREATE TABLE kept (x int)")
    assert c.down() is True
    assert c.down() is False
    assert not c.status().running
    assert c.up() == dsn
    with psycopg.connect(dsn) as conn:
        assert conn.execute("SELECT to_regclass('kept')").fetchone() == ("kept",)


def test_port_taken_is_a_clear_error(scratch_home: Path) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        port = s.getsockname()[1]
        with pytest.raises(EmbeddedError, match=rf"port {port} on 127.0.0.1 is taken"):
            Cluster(scratch_home).up(port=port)


def test_auto_port_moves_when_taken(scratch_home: Path) -> None:
    c = Cluster(scratch_home)
    c.up()
    old = c.status().port
    c.down()
    with socket.socket() as s:
        s.bind(("127.0.0.1", old))
        s.listen()
        c.up()
        assert c.status().port != old and c.status().running


@pytest.mark.skipif(os.geteuid() != 0, reason="changing a directory's owner needs root")
def test_data_dir_owned_by_someone_else(scratch_home: Path) -> None:
    c = Cluster(scratch_home)
    from callvault import _pgbin

    data = c.data_dir(_pgbin.server_major(_pgbin.find_bindir()))
    data.mkdir(mode=0o700)
    os.chown(data, 65534, 65534)  # nobody
    with pytest.raises(EmbeddedError, match=r"is owned by .* but the server runs as .*chown -R"):
        c.up()


@pytest.mark.skipif(os.geteuid() != 0, reason="the server user differs from the caller only as root")
def test_home_the_server_user_cannot_reach(tmp_path: Path) -> None:
    private = tmp_path / "private"
    private.mkdir(mode=0o700)
    with pytest.raises(EmbeddedError, match="cannot reach"):
        Cluster(private / "home").up()


# -- a server running binaries older than the installed ones (issue 13) ---------------------------


def test_stale_verdict_rules() -> None:
    installed, same, other = "/usr/lib/postgresql/15/bin/postgres", (8, 100), (8, 101)
    fix = "restart it with `callvault dev down && callvault dev up`"
    deleted = ServerBinary(7, installed + " (deleted)", other)
    verdict = stale_verdict(deleted, installed, same, "15.18")
    assert verdict is not None
    assert verdict.startswith(f"running, but on binaries older than the installed PostgreSQL 15.18: {fix}")
    assert f"{installed} was replaced on disk" in verdict
    assert stale_verdict(ServerBinary(7, installed, same), installed, same, "15.18") is None
    moved = stale_verdict(ServerBinary(7, "/opt/pg/bin/postgres", other), installed, same, "15.18")
    assert moved is not None and "it runs /opt/pg/bin/postgres, not the installed" in moved
    # what the server itself reports (server_version), with or without /proc
    for running in (ServerBinary(7, installed, same), None):
        older = stale_verdict(running, installed, same, "15.18", "15.17 (Debian 15.17-0+deb12u1)")
        assert (
            older is not None
            and "older than the installed PostgreSQL 15.18" in older
            and "reports PostgreSQL 15.17" in older
        )
        assert stale_verdict(running, installed, same, "15.18", "15.18 (Debian 15.18-0+deb12u1)") is None
    newer = stale_verdict(None, installed, same, "15.18", "16.2")
    assert newer is not None and newer.startswith("running, but on binaries newer than")
    gone = stale_verdict(ServerBinary(7, installed + " (deleted)", other), installed, None, None)
    assert gone is not None and f"{installed} is missing" in gone and fix in gone


def test_version_tuple() -> None:
    assert version_tuple("15.18 (Debian 15.18-0+deb12u1)") == (15, 18)
    assert version_tuple("postgres (PostgreSQL) 15.18") == (15, 18)
    assert version_tuple("16devel") == (16,)
    assert version_tuple("") is None and version_tuple(None) is None


def test_running_server_is_current(cluster: Cluster) -> None:
    """The session cluster's real postmaster, seen through /proc, runs the installed binary."""
    pid = cluster.postmaster_pid()
    assert pid is not None
    running = running_binary(pid)
    assert running is not None
    bindir = Path(json.loads((cluster.home / "cluster.json").read_text())["bindir"])
    installed = os.stat(bindir / "postgres")
    assert running.file_id == (installed.st_dev, installed.st_ino)
    assert not running.exe.endswith("(deleted)")
    assert cluster.restart_needed() is None
    st = cluster.status()
    assert st.state == "running"
    with psycopg.connect(cluster.dsn()) as conn:
        assert cluster.serves(conn)
        assert embedded.restart_needed(conn) is None
        # the same process, as if it reported an older minor than the installed binary
        older = cluster.restart_needed("15.0" if installed_version(bindir / "postgres") != "15.0" else "14.0")
        assert older is not None and older.startswith("running, but on binaries older than the installed PostgreSQL")


@pytest.fixture
def copied_install(monkeypatch: pytest.MonkeyPatch) -> Iterator[tuple[Cluster, Path, Path]]:
    """A cluster whose binaries are copies (postgres, pg_ctl, initdb) under its home, in the layout the
    real ones have so the server finds its libraries and share files relative to itself. Returns the
    cluster, the copied bin directory and the real one; the CLI's embedded default is this cluster."""
    from callvault import _pgbin

    real = _pgbin.find_bindir()
    home = Path(tempfile.mkdtemp(prefix="callvault-stale-", dir="/tmp"))
    home.chmod(0o755)
    out = subprocess.run([str(real / "pg_config"), "--pkglibdir", "--sharedir"], capture_output=True, text=True,
                         check=True).stdout.split()  # fmt: skip
    root = home / "install"
    bindir = root / real.relative_to("/")
    bindir.mkdir(parents=True)
    for name in ("postgres", "pg_ctl", "initdb"):
        shutil.copy2(real / name, bindir / name)
    for shared in map(Path, out):
        (root / shared.relative_to("/")).parent.mkdir(parents=True, exist_ok=True)
        (root / shared.relative_to("/")).symlink_to(shared)
    for d in [root, *root.rglob("*")]:
        if d.is_dir() and not d.is_symlink():
            d.chmod(0o755)
    monkeypatch.setenv("CALLVAULT_PG_BIN", str(bindir))
    monkeypatch.setenv("CALLVAULT_HOME", str(home))
    monkeypatch.delenv("CALLVAULT_DSN", raising=False)
    c = Cluster(home, settings={"fsync": "off"})
    yield c, bindir, real
    c.down()
    shutil.rmtree(home, ignore_errors=True)


def _flat(text: str) -> str:
    return " ".join(text.split())  # rich wraps long lines on a pipe


def test_server_on_replaced_binaries_is_reported_until_restarted(copied_install: tuple[Cluster, Path, Path]) -> None:
    """A package upgrade renames new binaries over the ones a running server was started from: `dev
    status`, `health` and `init` say so, with the fix; after `dev down && dev up` all is well."""
    c, bindir, real = copied_install
    c.up()
    assert json.loads((c.home / "cluster.json").read_text())["bindir"] == str(bindir)
    run("init")
    run("health")
    assert "binaries" not in run("dev", "status").stdout
    # what dpkg does: write the new file beside it, rename it over the old one
    shutil.copy2(real / "postgres", bindir / "postgres.dpkg-new")
    os.replace(bindir / "postgres.dpkg-new", bindir / "postgres")
    pid = c.postmaster_pid()
    assert pid is not None and os.readlink(f"/proc/{pid}/exe").endswith(" (deleted)")

    version = installed_version(bindir / "postgres")
    assert version is not None
    fix = "restart it with `callvault dev down && callvault dev up`"
    wanted = f"running, but on binaries older than the installed PostgreSQL {version}: {fix}"
    st = c.status()
    assert st.running and st.state.startswith(wanted) and st.state == c.restart_needed()
    assert wanted in _flat(run("dev", "status").stdout)
    as_json = run_json_plain("dev", "status", "--json")
    assert as_json["running"] is True and str(as_json["state"]).startswith(wanted)

    res = run("health", ok=False)
    assert res.exit_code == 3 and wanted in _flat(res.stderr) and "Traceback" not in res.stderr
    res = run("health", "--dsn", c.dsn(), ok=False)  # the same server named by its DSN
    assert res.exit_code == 3 and wanted in _flat(res.stderr)
    res = run("init", ok=False)
    assert res.exit_code == EmbeddedError.exit_code and "Traceback" not in res.stderr
    assert f"init of public.call_logs: the embedded Postgres at {c.home} is {wanted}" in _flat(res.stderr)

    run("dev", "down")
    run("dev", "up")
    assert c.status().state == "running" and c.restart_needed() is None
    run("init")
    run("health")


def run_json_plain(*args: str) -> dict[str, object]:
    result = run(*args)
    data = json.loads(result.stdout)
    assert isinstance(data, dict)
    return data


def test_dev_citus_without_citus_is_one_line_exit_69(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Server binaries with no citus.so beside them (a symlinked bin directory whose lib/ is empty):
    `dev up --citus` and `dev url --citus` say what is missing and where the docs are, exit 69, and start
    nothing; `dev status --citus` shows every node stopped."""
    from callvault import _pgbin

    real = _pgbin.find_bindir()
    bindir = tmp_path / "15" / "bin"
    bindir.mkdir(parents=True)
    (tmp_path / "15" / "lib").mkdir()
    for name in ("postgres", "pg_ctl", "initdb", "pg_config"):
        (bindir / name).symlink_to(real / name)
    monkeypatch.setenv("CALLVAULT_PG_BIN", str(bindir))
    monkeypatch.setenv("CALLVAULT_HOME", str(tmp_path / "home"))
    for args in (["dev", "up", "--citus", "--workers", "2"], ["dev", "url", "--citus"]):
        result = run(*args, ok=False)
        assert result.exit_code == 69, result.output
        lines = result.stderr.strip().splitlines()
        assert len(lines) == 1 and "Traceback" not in result.output
        assert "Citus is not installed for PostgreSQL 15: see docs/scaling.md" in lines[0]
        assert result.stdout == ""
    nodes = json.loads(run("dev", "status", "--citus", "--json").stdout)
    assert set(nodes) == {"coordinator", "worker1", "worker2"}
    assert not any(n["running"] for n in nodes.values())
    assert not (tmp_path / "home" / "citus").exists() or not any((tmp_path / "home" / "citus").rglob("PG_VERSION"))
