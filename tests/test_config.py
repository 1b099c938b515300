"""One configuration (callvault.config.load) and one-line errors from the CLI (callvault.failure)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import psycopg
import pytest
from psycopg import conninfo

from callvault import config
from callvault.config import Settings, load
from callvault.db import connect
from callvault.errors import InvalidSetting
from tests.helpers import run

CLI = str(Path(sys.executable).parent / "callvault")


def cli(*args: str, env: dict[str, str] | None = None, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([CLI, *args], capture_output=True, text=True, env={**os.environ, **(env or {})}, cwd=cwd)


def one_line_error(res: subprocess.CompletedProcess[str]) -> None:
    assert res.returncode != 0
    assert "Traceback" not in res.stderr and 1 <= len(res.stderr.strip().splitlines()) <= 3, res.stderr


# ---------------------------------------------------------------- the loader (pure)


def test_flags_beat_env_beat_file_beat_defaults(tmp_path: Path) -> None:
    f = tmp_path / "callvault.toml"
    f.write_text('table = "from_file"\nschema = "filed"\nlock_timeout_ms = 1234\narchive_url = "file:///a"\n')
    env = {"CALLVAULT_SCHEMA": "from_env", "CALLVAULT_CONFIG": str(f)}
    got = load({"table": "from_flag"}, environ=env)
    assert (got.settings.table, got.settings.schema, got.settings.lock_timeout_ms) == ("from_flag", "from_env", 1234)
    assert got.sources["table"] == "flag" and got.sources["schema"] == "env CALLVAULT_SCHEMA"
    assert got.sources["lock_timeout_ms"] == f"file {f}" and got.sources["partition_warn"] == "default"
    assert got.settings.archive_url == "file:///a"


def test_libpq_environment_is_a_configured_server_and_the_library_never_embeds() -> None:
    got = load({}, environ={"PGHOST": "db.internal"}, embedded_default=True)
    assert got.settings.dsn == "" and "PGHOST" in got.sources["dsn"] and not got.settings.embedded
    assert load({}, environ={}, embedded_default=True).settings.embedded
    lib = load({}, environ={}).settings
    assert lib.dsn is None and not lib.embedded
    with pytest.raises(InvalidSetting, match="CALLVAULT_DSN"):
        connect(lib)  # names the fix; never runs initdb for a new embedded cluster


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("tabel = 'x'\n", "unknown setting(s) tabel"),
        ("lock_timeout_ms = 'soon'\n", "is not an integer"),
        ("table = \n", "not valid TOML"),
        ("table = 'x\\'y'\n", "not valid TOML"),
    ],
)
def test_bad_config_files_are_named(tmp_path: Path, text: str, message: str) -> None:
    f = tmp_path / "callvault.toml"
    f.write_text(text)
    with pytest.raises(InvalidSetting, match=r"callvault\.toml") as info:
        load({}, environ={}, config_file=f)
    assert message in str(info.value)


def test_from_env_and_settings_agree_with_the_loader() -> None:
    env = {"CALLVAULT_DSN": "postgresql://a@b/c", "CALLVAULT_LOCK_TIMEOUT_MS": "4321", "CALLVAULT_APP_ROLE": "web"}
    s = config.from_env(env)
    assert (s.dsn, s.lock_timeout_ms, s.roles.app, s.roles.owner) == ("postgresql://a@b/c", 4321, "web",
                                                                     "callvault_owner")  # fmt: skip


# ---------------------------------------------------------------- the CLI


def test_config_show_reports_value_and_source(tmp_path: Path) -> None:
    res = cli("config", "show", "--json", env={"CALLVAULT_LOCK_TIMEOUT_MS": "9999", "CALLVAULT_DSN": ""},
              cwd=tmp_path)  # fmt: skip
    doc = json.loads(res.stdout)
    assert doc["lock_timeout_ms"] == {"value": 9999, "source": "env CALLVAULT_LOCK_TIMEOUT_MS",
                                      "env": "CALLVAULT_LOCK_TIMEOUT_MS"}  # fmt: skip
    secret = cli("--dsn", "postgresql://u:hunter2@h/db", "config", "show", cwd=tmp_path)
    assert "hunter2" not in secret.stdout and "***" in secret.stdout


def test_global_options_work_before_the_subcommand(dsn: str) -> None:
    run("init", "--dsn", dsn)
    res = cli("--dsn", dsn, "--json", "status")
    assert res.returncode == 0, res.stderr
    assert json.loads(res.stdout)["partition_count"] >= 5
    lock = cli("--dsn", dsn, "maintain", env={"CALLVAULT_LOCK_TIMEOUT_MS": "2500"})
    assert lock.returncode == 0, lock.stderr


def test_an_option_where_it_is_not_used_is_an_error(tmp_path: Path) -> None:
    res = cli("archive", "--format", "csv", "list", "--to", tmp_path.as_uri())
    one_line_error(res)
    assert res.returncode == 2 and "--format" in res.stderr


def test_commands_that_change_nothing_never_start_the_embedded_cluster(tmp_path: Path) -> None:
    home = tmp_path / "home"
    env = {"CALLVAULT_HOME": str(home)}
    res = cli("plan", env=env)
    one_line_error(res)
    assert "dev up" in res.stderr
    sql = cli("init", "--sql", env=env)
    assert sql.returncode == 0 and "CREATE TABLE" in sql.stdout
    assert not (home / "data").exists() and not any(home.glob("*/PG_VERSION")), "no cluster was created"


def test_bad_connections_are_one_line_with_distinct_codes(dsn: str) -> None:
    params = conninfo.conninfo_to_dict(dsn)
    wrong_pw = conninfo.make_conninfo(dsn, password="wrong")
    res = cli("status", "--dsn", wrong_pw)
    one_line_error(res)
    assert res.returncode == 77 and "authentication" in res.stderr
    missing = conninfo.make_conninfo(dsn, dbname="no_such_db_here")
    res = cli("status", "--dsn", missing)
    one_line_error(res)
    assert res.returncode == 69 and "no_such_db_here" in res.stderr
    res = cli("status", "--dsn", dsn)  # pg_partman there, table not initialised
    one_line_error(res)
    assert res.returncode == 66 and "init" in res.stderr
    with psycopg.connect(dsn, autocommit=True) as c:
        c.execute("DROP ROLE IF EXISTS cv_nobody")
        c.execute("CREATE ROLE cv_nobody LOGIN PASSWORD 'pw'")
    try:
        run("init", "--dsn", dsn)
        nobody = conninfo.make_conninfo(dsn, user="cv_nobody", password="pw")
        res = cli("maintain", "--dsn", nobody)
        one_line_error(res)
        assert res.returncode == 77 and "owner role" in res.stderr, res.stderr
    finally:
        with psycopg.connect(dsn, autocommit=True) as c:
            c.execute(f"DROP OWNED BY cv_nobody; DROP ROLE cv_nobody")  # noqa: F541
    assert params["dbname"]


def test_debug_shows_the_traceback() -> None:
    res = cli("--debug", "plan", "--at", "notadate")
    assert res.returncode != 0 and "Traceback" in res.stderr
    plain = cli("plan", "--at", "notadate")
    one_line_error(plain)
    assert plain.returncode == 2


def test_settings_direct_still_work_for_library_users(dsn: str) -> None:
    with connect(Settings(dsn=dsn)) as c:
        assert c.execute("SELECT 1").fetchone() == (1,)


@pytest.mark.parametrize("args", [["list"], ["query", "SELECT count(*) FROM call_logs"]])
def test_reading_a_store_that_does_not_exist_is_an_error(dsn: str, tmp_path: Path, args: list[str]) -> None:
    run("init", "--dsn", dsn)
    res = cli("archive", *args, "--dsn", dsn, "--to", (tmp_path / "typo").as_uri())
    one_line_error(res)
    assert res.returncode == 69 and "does not exist" in res.stderr
    res = cli("archive", "--to", (tmp_path / "typo").as_uri(), "--dsn", dsn, *args)  # given to the group
    assert res.returncode == 69 and "does not exist" in res.stderr, res.stderr


def test_writer_with_a_wrong_password_fails_at_once_naming_authentication(dsn: str) -> None:
    import asyncio
    import time

    from callvault.errors import AuthenticationFailed, DatabaseUnavailable
    from callvault.ingest import AsyncWriter, Writer

    run("init", "--dsn", dsn)
    wrong = conninfo.make_conninfo(dsn, password="wrong")
    t0 = time.monotonic()
    with pytest.raises(AuthenticationFailed, match="authentication failed"):
        Writer(wrong)
    with pytest.raises(DatabaseUnavailable, match=r"127\.0\.0\.1"):
        Writer(conninfo.make_conninfo(dsn, port="1"))

    async def go() -> None:
        with pytest.raises(AuthenticationFailed, match="authentication failed"):
            await AsyncWriter(wrong).open()

    asyncio.run(go())
    assert time.monotonic() - t0 < 15, "within the connect timeout, not the pool's 30 s"


def test_every_command_takes_json() -> None:
    from click.testing import CliRunner

    from callvault.cli import main

    def commands(group: object, path: list[str]) -> list[list[str]]:
        out = []
        for name, cmd in getattr(group, "commands", {}).items():
            out.append([*path, name])
            out += commands(cmd, [*path, name])
        return out

    missing = []
    for path in commands(main, []):
        text = CliRunner().invoke(main, [*path, "--help"]).output
        if "--json" not in text and "Commands:" not in text:
            missing.append(" ".join(path))
    assert missing == [], f"commands without --json: {missing}"


def test_init_and_demo_json(dsn: str) -> None:
    res = cli("init", "--dsn", dsn, "--json")
    assert res.returncode == 0, res.stderr
    doc = json.loads(res.stdout)
    assert doc["changed"] and doc["steps"] and doc["table"] == "public.call_logs"
    demo = cli("demo", "--dsn", dsn, "--calls", "200", "--json")
    assert demo.returncode == 0, demo.stderr
    d = json.loads(demo.stdout)
    assert d["calls"] == 200 and d["isolation"]["tenants_seen"] == 1
    assert (
        d["explain"]["partitions_scanned"]
        and len(d["explain"]["partitions_scanned"]) < d["explain"]["partitions_total"]
    )


@pytest.mark.parametrize(
    "args",
    [["status", "--bogus"], ["quarantine", "replay", "--id", "abc"], ["nosuchcmd"], ["archive", "list", "--at", "x"]],
)
def test_usage_errors_are_one_line(args: list[str]) -> None:
    res = cli(*args)
    one_line_error(res)
    assert res.returncode == 2 and "--help" in res.stderr


def test_the_cli_and_python_callers_share_one_command_layer(dsn: str) -> None:
    from callvault import commands

    s = Settings(dsn=dsn)
    assert commands.init(s).changed
    assert not commands.init(s).changed  # idempotent
    py = commands.status(s).to_dict()
    res = cli("status", "--dsn", dsn, "--json")
    assert json.loads(res.stdout)["partition_count"] == py["partition_count"]
    h = commands.health(s)
    assert h.healthy and h.to_dict()["partitions"] == py["partition_count"]
    assert commands.plan(s).to_dict()["create"] == []
    via_cli = json.loads(cli("audit", "--dsn", dsn, "--json").stdout)
    assert commands.audit(s).to_dict()["findings"] == via_cli["findings"]  # one layer, one answer
    assert commands.archive_policy(s, keep="7 years").to_dict()["default"].startswith("7 year")


def test_old_keyword_names_still_work_with_a_deprecation_warning(dsn: str, tmp_path: Path) -> None:
    from callvault import commands
    from callvault.archive.prune import clear_policy, set_policy

    run("init", "--dsn", dsn)
    s = Settings(dsn=dsn)
    t = "00000000-0000-4000-8000-000000000001"
    with pytest.warns(DeprecationWarning, match=r"tenant_id="):
        set_policy(s, "2 years", tenant=t)
    assert commands.archive_policy(s).tenants == {t: "2 years"}
    with pytest.warns(DeprecationWarning):
        clear_policy(s, tenant=t)
    assert commands.archive_policy(s, keep="3 years", tenant_id=t).tenants == {t: "3 years"}
    with pytest.warns(DeprecationWarning, match=r"format="):
        rep = commands.archive(s, store_url=tmp_path.as_uri(), fmt="csv", dry_run=True)
    assert rep.fmt == "csv"
    with pytest.raises(InvalidSetting, match="not both"), pytest.warns(DeprecationWarning):
        commands.archive(s, store_url=tmp_path.as_uri(), fmt="csv", format="parquet", dry_run=True)
