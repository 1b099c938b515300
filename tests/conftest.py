"""Real Postgres for every test: one embedded cluster per session, a fresh database per test.

The cluster is built by the same code users run (:class:`callvault.embedded.Cluster`). If it cannot
start, every database test errors: nothing is skipped. Each test gets its own database cloned from a
template that already has pg_partman installed, so tests are isolated and fast.
"""

from __future__ import annotations

import itertools
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest
from hypothesis import settings as hypothesis_settings
from psycopg import sql

from callvault.archive.location import SPOOL_ENV
from callvault.citus_cluster import CitusCluster
from callvault.config import Settings
from callvault.embedded import Cluster
from callvault.engines import citus_available, citus_missing_reason, partman5_missing_reason, partman_latest, summary
from tests.clock import FakeClock
from tests.faketime_site import sitecustomize

# libfaketime 0.9.10 breaks time.sleep (see tests/faketime_site/sitecustomize.py): importing it mended this
# process; every Python process the tests start imports it from PYTHONPATH.
_FAKETIME_SITE = str(Path(sitecustomize.__file__).parent)
os.environ["PYTHONPATH"] = os.pathsep.join(p for p in (_FAKETIME_SITE, os.environ.get("PYTHONPATH")) if p)

# Property tests draw the same examples on every run (a suite that passes Monday and fails Thursday is
# broken); `pytest --hypothesis-seed=random`-style exploration is for a session hunting bugs, not CI.
# CALLVAULT_HYPOTHESIS=explore draws new random examples each run (to hunt, then pin what it finds).
hypothesis_settings.register_profile("callvault", derandomize=True, print_blob=True)
hypothesis_settings.register_profile("explore", derandomize=False, print_blob=True)
hypothesis_settings.load_profile(os.environ.get("CALLVAULT_HYPOTHESIS", "callvault"))

TEMPLATE = "cv_template"
TEMPLATE_5 = "cv_template_partman5"  # the same with pg_partman 5.x, where it is installed
PARTMAN_5 = partman_latest(5)
# Durability is not under test here and fsync dominates DDL-heavy tests; benchmarks use real settings.
TEST_SERVER_SETTINGS = {"fsync": "off", "full_page_writes": "off"}
_counter = itertools.count()


@pytest.fixture(scope="session", autouse=True)
def own_spool(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """This run's archive spool (``$CALLVAULT_ARCHIVE_SPOOL``, inherited by every CLI the tests start). The
    default, /tmp/callvault-spool-<uid>, is shared by every run of the user: a second suite's live work
    directories, or a killed run's whose pid was taken again (pid_max can be 32768), were not leftovers to
    remove, and a test that counts leftovers failed."""
    spool = tmp_path_factory.mktemp("spool")
    old = os.environ.get(SPOOL_ENV)
    os.environ[SPOOL_ENV] = str(spool)
    yield spool
    if old is None:
        os.environ.pop(SPOOL_ENV, None)
    else:
        os.environ[SPOOL_ENV] = old


@pytest.fixture(scope="session")
def cluster() -> Iterator[Cluster]:
    # Under /tmp with mode 0755 so the unprivileged server user can reach it when tests run as root.
    home = Path(tempfile.mkdtemp(prefix="callvault-test-", dir="/tmp"))
    home.chmod(0o755)
    old_home = os.environ.get("CALLVAULT_HOME")
    os.environ["CALLVAULT_HOME"] = str(home)  # the CLI's embedded default is this cluster
    os.environ.pop("CALLVAULT_DSN", None)
    c = Cluster(home, settings=TEST_SERVER_SETTINGS)
    c.up()
    _template(c)
    yield c
    c.down()
    if old_home is None:
        os.environ.pop("CALLVAULT_HOME", None)
    else:
        os.environ["CALLVAULT_HOME"] = old_home
    shutil.rmtree(home, ignore_errors=True)


def _create_db(cluster: Cluster, template: str) -> str:
    name = f"cv_test_{os.getpid()}_{next(_counter)}"
    with psycopg.connect(cluster.dsn("postgres"), autocommit=True) as conn:
        conn.execute(sql.SQL("CREATE DATABASE {} TEMPLATE {}").format(sql.Identifier(name), sql.Identifier(template)))
    return name


def _drop_db(cluster: Cluster, name: str) -> None:
    with psycopg.connect(cluster.dsn("postgres"), autocommit=True) as conn:
        conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name)))


def _template(c: Cluster, name: str = TEMPLATE, version: str | None = None) -> None:
    """A template database with pg_partman in schema ``partman`` (``version``: that one, else the default)."""
    with psycopg.connect(c.dsn("postgres"), autocommit=True) as conn:
        conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    with psycopg.connect(c.dsn(name), autocommit=True) as conn:
        conn.execute("CREATE SCHEMA partman")
        if version is None:
            conn.execute("CREATE EXTENSION pg_partman WITH SCHEMA partman")
        else:
            conn.execute(
                sql.SQL("CREATE EXTENSION pg_partman WITH SCHEMA partman VERSION {}").format(sql.Literal(version))
            )


def _template_for(c: Cluster, partman: str) -> str:
    """The template database for a test's pg_partman major (``4.7`` or ``5.x``), made on first use."""
    if partman == "4.7":
        return TEMPLATE
    if PARTMAN_5 is None:
        pytest.skip(partman5_missing_reason())
    with psycopg.connect(c.dsn("postgres"), autocommit=True) as conn:
        found = conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", (TEMPLATE_5,)).fetchone()
    if found is None:
        _template(c, TEMPLATE_5, PARTMAN_5)
    return TEMPLATE_5


@pytest.fixture(scope="session")
def clocked() -> Iterator[tuple[Cluster, FakeClock]]:
    """A second embedded cluster whose clock the test sets (libfaketime; see tests/clock.py).

    Fails, never skips, when libfaketime is missing. Each test takes a database with ``clocked_dsn``.
    """
    home = Path(tempfile.mkdtemp(prefix="callvault-clock-", dir="/tmp"))
    home.chmod(0o755)
    clock = FakeClock(home / "faketime")
    c = Cluster(home, settings=TEST_SERVER_SETTINGS, env=clock.server_env())
    c.up()
    _template(c)
    yield c, clock
    c.down()
    shutil.rmtree(home, ignore_errors=True)


@pytest.fixture
def clocked_dsn(clocked: tuple[Cluster, FakeClock], partman: str) -> Iterator[str]:
    """A fresh database (pg_partman installed: the test's ``partman`` major) on the clocked cluster."""
    name = _create_db(clocked[0], _template_for(clocked[0], partman))
    yield clocked[0].dsn(name)
    _drop_db(clocked[0], name)


@pytest.fixture(scope="session")
def realtime_cluster(cluster: Cluster) -> Iterator[Cluster]:
    """A cluster on the machine's real clock, for tests that need server-side timeouts to fire
    (``lock_timeout``): under an outer ``faketime`` set ahead they never do (tests/clock.py).
    Without an outer libfaketime this is the session cluster."""
    if "faketime" not in os.environ.get("LD_PRELOAD", ""):
        yield cluster
        return
    home = Path(tempfile.mkdtemp(prefix="callvault-realtime-", dir="/tmp"))
    home.chmod(0o755)
    real = {"LD_PRELOAD": None, "FAKETIME": None, "FAKETIME_SHARED": None, "FAKETIME_TIMESTAMP_FILE": None}
    c = Cluster(home, settings=TEST_SERVER_SETTINGS, env=real)
    c.up()
    _template(c)
    yield c
    c.down()
    shutil.rmtree(home, ignore_errors=True)


@pytest.fixture
def realtime_dsn(realtime_cluster: Cluster) -> Iterator[str]:
    name = _create_db(realtime_cluster, TEMPLATE)
    yield realtime_cluster.dsn(name)
    _drop_db(realtime_cluster, name)


def pytest_report_header() -> str:
    """One line at the start of the run: whether the Citus and pg_partman 5.x tests run or are skipped."""
    return summary()


# Test modules whose database tests run on both engines: single-node PostgreSQL and a local Citus
# cluster (a coordinator and two workers, built by callvault.citus_cluster.CitusCluster). Their `dsn` is
# parametrized by `engine`; `callvault init` distributes the table on Citus by itself.
BOTH_ENGINES = {"test_citus", "test_query", "test_tenancy", "test_ingest", "test_maintain", "test_archive"}


# Test modules whose database tests run on both pg_partman majors, 4.7 (Debian's, always) and 5.x
# (where an operator installed it: docs/partman.md; skipped elsewhere with the reason). Their `dsn` and
# `clocked_dsn` are parametrized by `partman`. The Citus engine runs 4.7 only (its dev cluster's).
BOTH_PARTMAN = {
    "test_maintain", "test_archive", "test_tiers", "test_tenancy", "test_calendar", "test_year", "test_publish",
    "test_quarantine", "test_wrong_answers",
}  # fmt: skip


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    module = metafunc.module.__name__.rsplit(".", 1)[-1]
    if module in BOTH_ENGINES and "dsn" in metafunc.fixturenames:
        # @pytest.mark.single_node("why"): what the test checks is PostgreSQL's own behaviour
        single = metafunc.definition.get_closest_marker("single_node") is not None
        metafunc.parametrize("engine", ["postgres"] if single else ["postgres", "citus"], indirect=True)
    if module in BOTH_PARTMAN and {"dsn", "clocked_dsn"} & set(metafunc.fixturenames):
        metafunc.parametrize("partman", ["4.7", "5.x"], indirect=True)


@pytest.fixture
def partman(request: pytest.FixtureRequest) -> str:
    """``4.7`` or ``5.x``: the pg_partman of the test's database (``4.7`` unless its module runs on both)."""
    return str(getattr(request, "param", "4.7"))


@pytest.fixture
def engine(request: pytest.FixtureRequest) -> str:
    """``postgres`` or ``citus``: what the test's ``dsn`` is (``postgres`` unless its module runs on both)."""
    return str(getattr(request, "param", "postgres"))


@pytest.fixture(scope="session")
def citus_cluster() -> Iterator[CitusCluster]:
    """A local Citus cluster for the session: a coordinator and two workers (skipped where Citus is not built)."""
    if not citus_available():
        pytest.skip(citus_missing_reason())
    home = Path(tempfile.mkdtemp(prefix="callvault-citus-", dir="/tmp"))
    home.chmod(0o755)
    lab = CitusCluster(home, workers=2, settings=TEST_SERVER_SETTINGS)
    lab.up()
    yield lab
    lab.down()
    shutil.rmtree(home, ignore_errors=True)


@pytest.fixture
def dsn(request: pytest.FixtureRequest, engine: str, partman: str, cluster: Cluster) -> Iterator[str]:
    """A fresh database with pg_partman installed (the test's ``partman`` major; not yet initialised by
    callvault); on the Citus engine, a database on the coordinator and both workers with the workers
    registered."""
    if engine == "citus":
        if partman != "4.7":
            pytest.skip("the Citus dev cluster runs Debian's pg_partman 4.7 (5.x is tested on single nodes)")
        lab: CitusCluster = request.getfixturevalue("citus_cluster")
        name = f"cv_citus_{os.getpid()}_{next(_counter)}"
        yield lab.database(name)
        lab.drop_database(name)
        return
    name = _create_db(cluster, _template_for(cluster, partman))
    yield cluster.dsn(name)
    _drop_db(cluster, name)


@pytest.fixture
def empty_dsn(cluster: Cluster) -> Iterator[str]:
    """A fresh database without any extension."""
    name = _create_db(cluster, "template1")
    yield cluster.dsn(name)
    _drop_db(cluster, name)


@pytest.fixture
def settings(dsn: str) -> Settings:
    return Settings(dsn=dsn)


@pytest.fixture
def conn(dsn: str) -> Iterator[psycopg.Connection[tuple[object, ...]]]:
    with psycopg.connect(dsn, autocommit=True) as c:
        c.execute("SET timezone TO 'UTC'")
        yield c


@pytest.fixture(scope="session")
def s3_server() -> Iterator[str]:
    """A real S3-compatible HTTP server (moto's server mode) on a free local port, for the session.

    boto3 (and the CLI in subprocesses) find it through the standard AWS environment variables.
    """
    import socket

    from moto.server import ThreadedMotoServer

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    saved = {k: os.environ.get(k) for k in _AWS_ENV}
    os.environ.update(
        {
            "AWS_ENDPOINT_URL": f"http://127.0.0.1:{port}",
            "AWS_ACCESS_KEY_ID": "callvault-test",
            "AWS_SECRET_ACCESS_KEY": "callvault-test",
            "AWS_REGION": "us-east-1",
            "AWS_DEFAULT_REGION": "us-east-1",
        }
    )
    yield f"http://127.0.0.1:{port}"
    server.stop()
    for k, v in saved.items():
        if v is None:
            os.environ.pop(k, None)
        else:
            os.environ[k] = v


_AWS_ENV = ("AWS_ENDPOINT_URL", "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_REGION", "AWS_DEFAULT_REGION")


@pytest.fixture
def bucket(s3_server: str) -> str:
    """A fresh bucket on the local S3 server; returns its ``s3://`` URL with a prefix."""
    import boto3

    name = f"cv-test-{os.getpid()}-{next(_counter)}"
    boto3.client("s3").create_bucket(Bucket=name)
    return f"s3://{name}/archive"
