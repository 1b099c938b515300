"""The embedded cluster: lifecycle, the DSN, the server's OS user, and each documented failure."""

from __future__ import annotations

import os
import pwd
import socket
import tempfile
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest

from callvault.embedded import Cluster
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
    uid = os.stat(f"/proc/{pid}").st_uid
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
