"""The ``callvault`` command's shell: the ``main`` group, its error handling, and the options and
helpers every command group shares. Library errors become one clean line on stderr and the error's
exit code (see docs/cli.md for the table). The command groups live beside it, one module each."""

from __future__ import annotations

import json
import logging
import sys
import time
from collections.abc import Callable
from datetime import datetime
from typing import Any, TypeVar

import click
from rich.console import Console
from rich.markup import escape

from callvault import commands, config, logs
from callvault.errors import CallvaultError

F = TypeVar("F", bound=Callable[..., Any])
# Piped output (make, CI, logs) gets a wide fixed width instead of rich's 80-column default.
PIPE_WIDTH = 160
out = Console(highlight=False, width=None if sys.stdout.isatty() else PIPE_WIDTH)
err = Console(stderr=True, highlight=False, width=None if sys.stderr.isatty() else PIPE_WIDTH)


_log = logs.get_logger("cli")


class Cli(click.Group):
    """Errors become one line and an exit code (callvault.failure); ``--debug`` shows the traceback.
    Usage errors (unknown option, bad value) are one line too, naming the command's --help.
    Logging (``-v``/``-q``, set up by ``main``) is undone on the way out, for in-process callers."""

    def main(self, *args: Any, **kwargs: Any) -> Any:
        kwargs["standalone_mode"] = False
        with logs.scoped():
            return self._main(*args, **kwargs)

    def _main(self, *args: Any, **kwargs: Any) -> Any:
        try:
            return super().main(*args, **kwargs)
        except click.exceptions.Exit as exc:
            sys.exit(exc.exit_code)
        except click.exceptions.Abort:
            err.print("[red]error:[/red] interrupted")
            sys.exit(130)
        except click.ClickException as exc:
            where = ""
            if isinstance(exc, click.UsageError) and exc.ctx is not None:
                where = f" (see `{exc.ctx.command_path} --help`)"
            err.print(f"[red]error:[/red] {escape(exc.format_message())}{escape(where)}", soft_wrap=True)
            sys.exit(exc.exit_code)

    def invoke(self, ctx: click.Context) -> Any:
        """Run the command; with ``-v``, an INFO line on ``callvault.cli`` says how it ended and how long it took."""
        t0 = time.perf_counter()
        code: object = 0
        try:
            return self._invoke(ctx)
        except SystemExit as exc:
            code = exc.code
            raise
        except BaseException:
            code = None  # --debug: the traceback follows
            raise
        finally:
            if ctx.invoked_subcommand:
                logs.event(_log, logging.INFO, "command finished", command=ctx.invoked_subcommand, exit=code,
                           seconds=time.perf_counter() - t0)  # fmt: skip

    def _invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except (click.exceptions.Exit, click.ClickException, click.Abort):
            raise
        except CallvaultError as exc:
            if ctx.params.get("debug"):
                raise
            err.print(f"[red]error:[/red] {escape(str(exc))}", soft_wrap=True)
            sys.exit(exc.exit_code)
        except (Exception, KeyboardInterrupt) as exc:
            if ctx.params.get("debug"):
                raise
            from callvault.failure import translate

            failed = translate(exc)
            err.print(f"[red]error:[/red] {escape(str(failed))}", soft_wrap=True)
            sys.exit(failed.exit_code)


def _inherit(name: str) -> Callable[[click.Context, click.Parameter, Any], Any]:
    """An option not given on a subcommand takes the value given before it (``callvault --dsn X status``)."""

    def callback(ctx: click.Context, param: click.Parameter, value: Any) -> Any:
        if value not in (None, False):
            return value
        parent = ctx.parent
        while parent is not None:
            got = parent.params.get(name)
            if got not in (None, False):
                return got
            parent = parent.parent
        return value

    return callback


def target_options(f: F) -> F:
    """--dsn/--schema/--table: which database and table (env: CALLVAULT_DSN, _SCHEMA, _TABLE)."""
    f = click.option("--table", default=None, callback=_inherit("table"),
                     help="Partitioned table name [CALLVAULT_TABLE; default: call_logs].")(f)  # fmt: skip
    f = click.option("--schema", default=None, callback=_inherit("schema"),
                     help="Schema of the table [CALLVAULT_SCHEMA; default: public].")(f)  # fmt: skip
    return click.option("--dsn", default=None, callback=_inherit("dsn"),
                        help="Postgres URL [CALLVAULT_DSN, libpq's PGHOST/PGSERVICE...; default: the embedded "
                             "cluster, started when needed].")(f)  # fmt: skip


def role_option(f: F) -> F:
    return click.option("--role-prefix", default=None,
                        help="[CALLVAULT_ROLE_PREFIX; default: callvault] Roles are <prefix>_owner, _ingest, _app, "
                        "_tenant_writer; "
                        "CALLVAULT_OWNER_ROLE, _INGEST_ROLE, _APP_ROLE, _TENANT_WRITER_ROLE name one "
                        "each.")(f)  # fmt: skip


def store_option(f: F) -> F:
    return click.option("--to", "--store-url", "store_url", default=None, metavar="URL", callback=_inherit("store_url"),
                        help="Archive store: s3://bucket/prefix or file:///dir. Default: CALLVAULT_ARCHIVE_URL, or "
                             "<callvault home>/archive with the embedded database.")(f)  # fmt: skip


def json_option(f: F) -> F:
    return click.option("--json", "as_json", is_flag=True, callback=_inherit("as_json"),
                        help="Machine-readable output.")(f)  # fmt: skip


def at_option(f: F) -> F:
    return click.option("--at", "at", default=None, metavar="TS",
                        help="Reference time, ISO 8601 (naive means UTC). Default: now.")(f)  # fmt: skip


def table_command(name: str | None = None, *, at: bool = False) -> Callable[[F], click.Command]:
    """A ``callvault`` command about one table: --dsn/--schema/--table, --at when ``at``, and --json."""

    def apply(f: F) -> click.Command:
        f = json_option(f)
        if at:
            f = at_option(f)
        return main.command(name=name)(target_options(f))

    return apply


def parse_at(text: str | None, flag: str = "--at") -> datetime | None:
    return None if text is None else commands.parse_time(text, flag)


def parse_uuid(text: str, flag: str) -> str:
    """``text`` as canonical UUID text, or InvalidSetting naming the option, the value and the form."""
    return commands.parse_uuid(text, flag)


def settings_of(dsn: str | None, schema: str | None, table: str | None, **more: Any) -> config.Settings:
    """The one loader (callvault.config.load): flags > CALLVAULT_* > callvault.toml > defaults; with no
    server configured anywhere, the embedded cluster."""
    flags = {"dsn": dsn, "schema": schema, "table": table}
    flags.update({k: v for k, v in more.items() if k in config.OPTION_KEYS})
    extra = {k: v for k, v in more.items() if k not in config.OPTION_KEYS}
    return config.load(flags, config_file=_root_param("config_file"), embedded_default=True, **extra).settings


def _root_param(name: str) -> Any:
    ctx = click.get_current_context(silent=True)
    return ctx.find_root().params.get(name) if ctx is not None else None


def emit(data: object) -> None:
    click.echo(json.dumps(data, indent=2, default=str))


@click.group(cls=Cli, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="callvault")
@click.option("--dsn", default=None, help="Postgres URL for every subcommand (same as the subcommand's --dsn).")
@click.option("--schema", default=None, help="Schema of the table, for every subcommand.")
@click.option("--table", default=None, help="Partitioned table, for every subcommand.")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output, for every subcommand.")
@click.option("--config", "config_file", default=None, metavar="FILE",
              help="A callvault.toml [CALLVAULT_CONFIG; default: ./callvault.toml when it exists].")  # fmt: skip
@click.option("--debug", is_flag=True, help="Show the traceback of an error.")
@click.option("-v", "--verbose", count=True,
              help="Log to stderr: -v what was done and warnings (lock retries...), -vv details. Default: errors "
                   "only, so a failure is one line.")  # fmt: skip
@click.option("-q", "--quiet", is_flag=True, help="Log nothing (the command's output and its error line stay).")
@click.pass_context
def main(ctx: click.Context, dsn: str | None, schema: str | None, table: str | None, as_json: bool,
         config_file: str | None, debug: bool, verbose: int, quiet: bool) -> None:  # fmt: skip
    """Keep AI voice-agent call logs in partitioned Postgres, fast for years."""
    if verbose and quiet:
        raise click.UsageError("-v/--verbose and -q/--quiet cannot be used together", ctx=ctx)
    # the worker writes JSON lines on stderr: log records join them as {"event": "log", ...} lines
    logs.configure(-1 if quiet else verbose, json_lines=ctx.invoked_subcommand == "worker")


@main.group(name="config")
def config_group() -> None:
    """The effective configuration."""


@config_group.command(name="show")
@target_options
@json_option
def config_show(dsn: str | None, schema: str | None, table: str | None, as_json: bool) -> None:
    """Every effective setting and where it came from (flag, env, file, default); secrets redacted."""
    loaded = config.load({"dsn": dsn, "schema": schema, "table": table}, config_file=_root_param("config_file"),
                         embedded_default=True)  # fmt: skip
    doc = loaded.to_dict()
    if as_json:
        emit(doc)
        return
    for key, item in doc.items():
        assert isinstance(item, dict)
        value = "" if item["value"] is None else item["value"]
        out.print(f"{key:20} {value!s:50} ({item['source']})", soft_wrap=True, markup=False)
