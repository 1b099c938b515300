"""The command layer: one function per ``callvault`` command, settings in, a report out, owning its
connections. The CLI only parses, calls one of these and renders the report (``to_dict()`` for
``--json``); Python callers use the same functions::

    from callvault import commands
    from callvault.config import from_env

    report = commands.status(from_env(dsn="postgresql://..."))
    print(report.to_dict()["premake_horizon"])

Commands whose work already lives in one library function take the same shape there and are re-exported
here: :func:`maintain`, :func:`archive`, :func:`restore`, :func:`prune`, :func:`schedule`,
:func:`list_archived`.

Errors: what callvault anticipates is a :class:`callvault.errors.CallvaultError` subclass whose
``exit_code`` is the CLI's exit code (2 bad input, 65 data does not match, 66 not initialised, 69
unavailable, 70 embedded cluster, 75 try again later, 77 authentication). Other database errors
propagate as ``psycopg.Error``; the CLI turns those into one line and an exit code too
(``callvault.failure``). A report is returned, never an exit code: ``health`` and ``audit`` report
problems, the CLI decides to exit 3 on them.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any, cast
from uuid import UUID

from callvault import bootstrap, db, monitor, tenancy
from callvault import maintain as maintenance
from callvault.archive.pipeline import ArchiveReport, archive
from callvault.archive.prune import PruneReport, prune
from callvault.archive.restore import RestoreReport, list_archived, restore
from callvault.config import Settings
from callvault.db import connect
from callvault.errors import DatabaseUnavailable, EmbeddedError, InvalidSetting
from callvault.ingest import quarantine as q
from callvault.maintain import MaintenanceReport, maintain
from callvault.plan import Plan
from callvault.renaming import RenameReport, migrate_names
from callvault.schedule import schedule
from callvault.tenancy.audit import AuditReport

if TYPE_CHECKING:  # pglast loads only when a query is explained
    from callvault.explain import ExplainReport
    from callvault.history import JobRun
    from callvault.query import Page

__all__ = [
    "ArchiveReport", "AuditReport", "Health", "MaintenanceReport", "Plan", "Policies", "PruneReport",
    "QuarantineListing", "RenameReport", "RestoreReport", "archive", "archive_policy", "audit", "calls", "explain",
    "health", "history", "init", "init_sql", "list_archived", "maintain", "migrate_names", "parse_time", "plan",
    "prune", "quarantine_list", "quarantine_replay", "restore", "schedule", "status",
]  # fmt: skip


def init(
    settings: Settings, *, roles: bool = False, distributed: bool | None = None, shard_count: int | None = None
) -> bootstrap.InitReport:
    """``callvault init``: create the table, hand it to pg_partman, secure it (idempotent).

    One transaction: a failure changes nothing; a second run executes nothing. The lifecycle
    (interval, premake, retention) comes from ``settings.lifecycle`` and is stored in pg_partman's
    ``part_config``.

    :param roles: also create the four roles (``settings.roles``) and their grants.
    :param distributed: on Citus, distribute the table by ``tenant_id`` before its partitions exist
        (None: when the database is a Citus coordinator with active workers; True: required, with a
        preflight; False: a local table). ``shard_count``: shards per partition.
    :return: the steps executed and the partitions secured.
    :raises SchemaMismatch: the table exists with another shape; nothing was changed (exit code 65).
    :raises InvalidSetting: the table exists with another partition interval (a data migration is
        needed), or a setting is unusable (exit code 2).
    :raises ExtensionMissing: pg_partman is not available on the server (exit code 69).
    :raises DatabaseUnavailable: the database cannot be reached (exit code 69).

    Example:

        from callvault.config import from_env, lifecycle_from

        report = commands.init(from_env(dsn=dsn, lifecycle=lifecycle_from("weekly", 4, "90 days")))
        [step.what for step in report.steps]     # [] on a second run
    """
    with connect(settings) as conn:
        return bootstrap.init(conn, settings, roles=roles, distributed=distributed, shard_count=shard_count)


def init_sql(
    settings: Settings, *, roles: bool = False, distributed: bool | None = None, shard_count: int | None = None
) -> str:
    """``callvault init --sql``: the DDL init would run here; offline (an empty database assumed)
    when the database cannot be reached. Never starts the embedded cluster.

    :param roles: include the role and grant statements.
    :return: the SQL script; offline it starts with a ``-- offline`` comment saying why.
    :raises SchemaMismatch: the table exists with another shape (exit code 65).
    :raises InvalidSetting: the table exists with another partition interval (exit code 2).
    """
    try:
        with connect(settings.with_(start_embedded=False)) as conn:
            steps = bootstrap.init_steps(conn, settings, roles=roles, distributed=distributed, shard_count=shard_count)
            return bootstrap.render(steps, conn)
    except (DatabaseUnavailable, EmbeddedError) as exc:
        head = (
            f"-- offline (database unreachable: {exc}); assuming an empty database, pg_partman "
            f"{bootstrap.OFFLINE_PARTMAN.version}\n"
        )
        steps = bootstrap.init_steps(None, settings, roles=roles, distributed=distributed, shard_count=shard_count)
        return head + bootstrap.render(steps, None)


def audit(settings: Settings, *, fix: bool = False) -> AuditReport:
    """``callvault audit``: prove tenant isolation on the parent and every partition.

    :param fix: first repair what can be repaired (tenant policy, grants, owner), in one transaction
        under the lock budget; repairs that failed are listed as ``FAILED ...``.
    :return: the findings (``report.failed`` are the ones the CLI exits 3 on).
    :raises NotInitialised: the table does not exist (exit code 66).
    """
    with connect(settings) as conn:
        return tenancy.audit(conn, settings, fix=fix)


def plan(settings: Settings, at: datetime | None = None) -> Plan:
    """``callvault plan``: what maintenance and retention will do at ``at`` (default: the server's now).

    Changes nothing and never starts the embedded cluster.

    :param at: the moment to plan for (timezone-aware).
    :raises NotInitialised: the table is not managed by pg_partman yet (exit code 66).
    :raises EmbeddedError: the settings name the embedded cluster and it is not running (run
        ``callvault dev up``; exit code 70).
    :raises InvalidSetting: ``at`` is naive (exit code 2).

    Example:

        for line in commands.plan(settings, at=datetime(2026, 6, 1, tzinfo=UTC)).describe():
            print(line)             # e.g. "create call_logs_p2026w27 [2026-06-29 .. 2026-07-06)"
    """
    with connect(settings.with_(start_embedded=False)) as conn:
        pm = maintenance.require_partman(conn, settings)
        return maintenance.current_plan(conn, settings, pm, at or db.server_now(conn))


def status(settings: Settings, at: datetime | None = None) -> monitor.Status:
    """``callvault status``: partitions, sizes, horizon, default rows, retention, worker, archive.

    Read only; ``status.problems`` are the health verdicts (see :func:`callvault.monitor.collect`).

    :param at: judge at this moment instead of the server's clock.
    :raises NotInitialised: the table is not managed by pg_partman yet (exit code 66).
    """
    with connect(settings) as conn:
        return monitor.collect(conn, settings, at)


def explain(
    settings: Settings, query: str, params: list[str] | None = None, *, analyze: bool = False,
    max_partitions: int | None = None,
) -> ExplainReport:  # fmt: skip
    """``callvault explain``: the partitions a query's plan touches, and whether pruning happened.

    :param query: one SELECT, INSERT, UPDATE, DELETE or MERGE, with ``$n`` or ``%s`` placeholders.
    :param params: one text value per placeholder (bound server-side).
    :param analyze: EXPLAIN ANALYZE (the query runs, in a transaction that is rolled back).
    :param max_partitions: fail the check when the plan keeps more partitions than this.
    :return: the report; ``report.problem`` is set when the query fails the check (the CLI then raises
        :class:`callvault.explain.NotPruned`, exit code 4).
    :raises InvalidSetting: the query is refused or rejected by the server (exit code 2).
    :raises NotInitialised: the table does not exist or has no partitions (exit code 66).

    Example:

        q = "SELECT * FROM call_logs WHERE tenant_id = $1 AND started_at >= $2 AND started_at < $3"
        report = commands.explain(settings, q, [tenant, "2026-05-04T00:00:00Z", "2026-05-11T00:00:00Z"])
        print(report.pruning, report.problem)    # plan-time None
    """
    from callvault.explain import explain as run_explain

    with connect(settings) as conn:
        return run_explain(conn, settings, query, params or [], analyze=analyze, max_partitions=max_partitions)


@dataclass(frozen=True)
class Health:
    """The verdict of ``callvault health``: the problems ``status`` found (one line each, with the fix),
    the premake horizon and the number of partitions."""

    table: str
    problems: list[str]
    horizon: datetime | None
    partitions: int

    @property
    def healthy(self) -> bool:
        """No problems (the CLI exits 0; otherwise 3, :class:`callvault.errors.Unhealthy`)."""
        return not self.problems

    def to_dict(self) -> dict[str, object]:
        """``{"table", "healthy", "problems", "premake_horizon", "partitions"}`` (``--json``)."""
        return {
            "table": self.table, "healthy": self.healthy, "problems": self.problems,
            "premake_horizon": self.horizon.isoformat() if self.horizon else None, "partitions": self.partitions,
        }  # fmt: skip


def health(settings: Settings) -> Health:
    """``callvault health``: the problems ``status`` finds, each one line with its fix.

    :raises NotInitialised: the table is not managed by pg_partman yet (exit code 66).

    Example:

        h = commands.health(settings)
        if not h.healthy:
            print("\n".join(h.problems))
    """
    st = status(settings)
    return Health(settings.qualified, st.problems, st.premake_horizon, len(st.partitions))


@dataclass(frozen=True)
class QuarantineListing:
    """The newest quarantined rows of the table (``rows``, newest first) and how many there are in all."""

    table: str
    total: int
    rows: list[q.QuarantinedRow]

    def to_dict(self) -> dict[str, object]:
        """``{"table", "total", "rows"}`` (``callvault quarantine list --json``)."""
        return {"table": self.table, "total": self.total, "rows": [r.to_dict() for r in self.rows]}


def quarantine_list(settings: Settings, limit: int = 50) -> QuarantineListing:
    """``callvault quarantine list``: the newest quarantined rows and how many there are.

    :param limit: at most this many rows.
    """
    with connect(settings) as conn:
        return QuarantineListing(settings.qualified, q.count(conn, settings), q.list_rows(conn, settings, limit))


def quarantine_replay(settings: Settings, ids: list[int] | None = None, *, assume_utc: bool = False) -> q.ReplayReport:
    """``callvault quarantine replay``: validate again, land the good rows exactly once.

    One transaction: the good rows are inserted (duplicates ignored) and leave the quarantine; the
    others stay, with the reason.

    :param ids: replay only these quarantine ids; default the oldest rows, up to the replay limit.
    :param assume_utc: read naive timestamps as UTC this time (as ``Writer(assume_utc=True)``).
    """
    with connect(settings) as conn:
        report = q.replay(conn, settings, ids=ids or None, assume_utc=assume_utc)
        conn.commit()
        return report


@dataclass(frozen=True)
class Policies:
    """Archive retention: the table's default keep period and per-tenant overrides (tenant UUID to
    keep period), as text such as ``1 year``."""

    default: str
    tenants: dict[str, str]

    def to_dict(self) -> dict[str, object]:
        """``{"default", "tenants"}`` (``callvault archive policy --json``)."""
        return {"default": self.default, "tenants": self.tenants}


def history(settings: Settings, *, job: str | None = None, outcome: str | None = None, since: str | None = None,
            limit: int = 50) -> list[JobRun]:  # fmt: skip
    """``callvault history``: the job runs, newest first. ``since``: an ISO 8601 time, or a period
    before the server's now (``30m``, ``12h``, ``7d``).

    :raises InvalidSetting: ``since`` is neither (exit code 2)."""
    from callvault import history as runs_of
    from callvault.worker import parse_every

    with connect(settings) as conn:
        when: datetime | None = None
        if since is not None:
            t = since.strip().lower()
            if t[-1:] in ("s", "m", "h", "d") and t[:-1].isdigit():
                try:
                    when = db.server_now(conn) - timedelta(seconds=parse_every(t))
                except InvalidSetting:
                    raise InvalidSetting(f"--since {since!r} must be a positive period, e.g. 12h or 7d") from None
            else:
                when = parse_time(since, "--since")
        return runs_of.runs(conn, settings, job=job, outcome=outcome, since=when, limit=limit)


def parse_uuid(text: str, flag: str) -> str:
    """``text`` as canonical UUID text, or InvalidSetting naming the option, the value and the form
    (:func:`callvault.tenancy.ids.as_uuid`, the one UUID parser)."""
    from callvault.tenancy.ids import as_uuid

    return as_uuid(text, flag, f": pass the tenant's UUID, e.g. {flag} 6f1c2a4e-0b7d-4c3e-9a51-2d8e4f6a7b90")


def parse_time(text: str, flag: str = "--at") -> datetime:
    """``text`` as an ISO 8601 time in UTC (naive means UTC), or InvalidSetting naming ``flag`` (the CLI's
    ``--at``, ``--since``, ``--until`` all read times with it)."""
    try:
        ts = datetime.fromisoformat(text.strip().replace(" ", "T") if "T" not in text else text.strip())
    except ValueError:
        raise InvalidSetting(f"{flag} {text!r} is not an ISO 8601 time; e.g. 2026-12-01T00:00:00Z") from None
    return ts.replace(tzinfo=UTC) if ts.tzinfo is None else ts.astimezone(UTC)


def archive_policy(
    settings: Settings,
    *,
    keep: str | None = None,
    clear: bool = False,
    tenant_id: str | UUID | None = None,
    tenant: str | UUID | None = None,
) -> Policies:
    """``callvault archive policy``: set (``keep``), remove (``clear``) or show archive retention.

    :param keep: keep archived data this long, e.g. ``7 years`` (see :meth:`callvault.plan.Retention.parse`).
    :param clear: remove the policy, so the default (or :data:`callvault.archive.prune.DEFAULT_KEEP`) applies.
    :param tenant_id: a tenant (UUID or its text) to set or clear an override for; default the table's
        default. ``tenant=`` is its deprecated name.
    :return: the policies after the change.
    :raises InvalidSetting: both ``keep`` and ``clear``, a ``keep`` that is not a retention, or a tenant
        that is not a UUID (exit code 2).

    Example:

        commands.archive_policy(settings, keep="7 years", tenant_id=tenant_id)   # a HIPAA tenant
        commands.archive_policy(settings).to_dict()   # {"default": "1 year", "tenants": {"<uuid>": "7 years"}}
    """
    from callvault._compat import renamed
    from callvault.archive import prune as pr
    from callvault.archive.journal import ensure_tables

    tenant_id = cast("str | UUID | None", renamed("archive_policy", "tenant", tenant, "tenant_id", tenant_id))
    if keep and clear:
        raise InvalidSetting("pass either --keep or --clear, not both")
    if keep:
        pr.set_policy(settings, keep, tenant_id)
    elif clear and not pr.clear_policy(settings, tenant_id) and tenant_id is not None:
        raise InvalidSetting(
            f"--tenant {tenant_id}: no archive policy of its own to clear (it follows the table's default); "
            "see `callvault archive policy`"
        )
    with connect(settings) as conn:
        ensure_tables(conn)
        default, per = pr.policies(conn, settings)
    return Policies(str(default), {t: str(r) for t, r in sorted(per.items())})


def calls(
    settings: Settings, tenant_id: str | UUID, *, since: datetime, until: datetime | None = None, limit: int = 100,
    cursor: str | None = None, store_url: str | None = None, search: str | None = None, mode: str = "phrase",
    language: str | None = None,
) -> Page:  # fmt: skip
    """``callvault calls``: one page of a tenant's calls in ``[since, until)``, newest first, from
    whichever tier holds them: attached partitions from Postgres, archived weeks from the store
    (:meth:`callvault.query.Reader.recent_calls` with a store; each call's ``tier`` says which).

    The store is ``store_url``, else the configured ``archive_url`` (``CALLVAULT_ARCHIVE_URL``), else,
    with the embedded database, ``<callvault home>/archive`` when it exists. Reads as the connected role
    with row-level security in force (an app role sees the tenant's rows only).

    :param until: exclusive end; default now.
    :param limit: calls per page (1..10,000).
    :param cursor: the previous page's ``next_cursor``: the next, older page.
    :param search: only calls whose transcript matches it (:meth:`callvault.query.Reader.search`:
        ``mode`` ``phrase`` or ``words``, ``language`` for ``words``); each call then has a ``snippet``.
    :return: the :class:`callvault.query.Page` (``to_dict()`` is the ``--json`` document).
    :raises InvalidSetting: a bad tenant id, window, limit or cursor; or the window reaches before the
        oldest attached partition and no archive store is configured (exit code 2).
    :raises StoreUnavailable: a store named explicitly does not exist or cannot be read (exit code 69).

    Example:

        page = commands.calls(settings, tenant_id, since=datetime(2026, 7, 1, tzinfo=UTC),
                              until=datetime(2026, 9, 1, tzinfo=UTC), store_url="s3://calls-archive/prod")
        [(c.started_at, c.tier) for c in page]
    """
    from callvault import query as reads
    from callvault.archive.location import default_store_url, read_store_url, recorded_stores
    from callvault.archive.store import LocalStore, open_store

    # bad input is named before connecting
    if search is not None:
        from callvault.search import Match

        Match.parse(search, mode, language)
    window = reads.window_params(tenant_id, since, until, reads.max_window_of(settings))
    reads.check_limit(limit)
    if cursor:
        reads.decode_cursor(cursor)
    url = store_url or settings.archive_url
    if not store_url and recorded_stores(settings):  # the journal knows where archived weeks went
        url = read_store_url(settings)
        hot_only_ok = True
    elif url is None and settings.dsn is None:  # the embedded database: its home's archive, once there is one
        default = default_store_url(settings)
        store = open_store(default)
        url = None if isinstance(store, LocalStore) and not store.root.is_dir() else default
        hot_only_ok = True
    else:
        hot_only_ok = url is not None
    with connect(settings) as conn:
        conn.execute("RESET row_security")  # a tenant read: row-level security filters, it does not refuse
        conn.commit()
        if not hot_only_ok:
            starts = [lo for lo, _ in reads.attached_ranges(conn, settings)]
            conn.commit()
            if not starts or window["since"] < min(starts):
                oldest = f"starts {min(starts):%Y-%m-%d}" if starts else "does not exist"
                raise InvalidSetting(
                    f"the window from {window['since']:%Y-%m-%d %H:%M} reaches before the oldest hot partition of "
                    f"{settings.qualified} ({oldest}), and no archive store is configured to read older weeks from: "
                    "pass --store-url s3://bucket/prefix (or file:///dir), or set CALLVAULT_ARCHIVE_URL"
                )
        reader = reads.Reader(conn, settings, store_url=url)
        if search is not None:
            return reader.search(tenant_id, search, since=since, until=until, limit=limit, cursor=cursor, mode=mode,
                                 language=language)  # fmt: skip
        return reader.recent_calls(tenant_id, since=since, until=until, limit=limit, cursor=cursor)


def explain_calls(
    settings: Settings,
    tenant_id: str | UUID,
    *,
    since: datetime,
    until: datetime | None = None,
    limit: int = 100,
    search: str | None = None,
    mode: str = "phrase",
    language: str | None = None,
) -> Any:
    """``callvault calls --explain``: the EXPLAIN of the hot half of that read, as the Reader sends it (the
    tenant and window pinned, the search condition in it): which partitions it touches, out of all.
    Returns an :class:`callvault.explain.ExplainReport`; nothing is executed."""
    from callvault import query_base as qb
    from callvault.explain import explain_read
    from callvault.query import Reader
    from callvault.search import WORDS, Match

    match = Match.parse(search, mode, language) if search is not None else None
    with connect(settings) as conn:
        conn.execute("RESET row_security")
        conn.commit()
        reader = Reader(conn, settings)
        if match is not None and match.mode == WORDS and language is None:
            from dataclasses import replace as _replace

            match = _replace(match, language=reader._search_language())
        read = qb.recent(reader, tenant_id, since, until, limit, None, match=match)
        return explain_read(conn, settings, read.statement, read.params)


def usage(
    settings: Settings, tenant_id: str | UUID, *, since: datetime, until: datetime | None = None, by: str = "day"
) -> list[Any]:
    """``callvault usage``: the tenant's calls and talk seconds per day, hour or dimension value from the
    usage rollup (:meth:`callvault.query.Reader.usage`), archived and dropped weeks included."""
    from callvault import query_base as qb
    from callvault.query import Reader

    qb.check_window(since, until, qb.USAGE_MAX_HOURS if by == "hour" else qb.USAGE_MAX_WINDOW)  # before connecting
    with connect(settings) as conn:
        conn.execute("RESET row_security")
        conn.commit()
        from callvault import usage as rollup

        rollup.require_installed(conn, settings, reading=True)
        conn.commit()
        return Reader(conn, settings).usage(tenant_id, since=since, until=until, by=by)


def usage_check(settings: Settings, *, store_url: str | None = None, rebuild: bool = False) -> Any:
    """``callvault usage --check`` / ``--rebuild``: the rollup against a recount of the calls in the
    attached and detached partitions and the archive; ``rebuild`` replaces it by the recount."""
    from callvault import usage as rollup

    with connect(settings, autocommit=True) as conn:
        return (rollup.rebuild if rebuild else rollup.check)(conn, settings, store_url)


def usage_dimension(settings: Settings, metadata_key: str | None, *, store_url: str | None = None) -> Any:
    """``callvault usage --dimension KEY`` (``--no-dimension``): count usage by a metadata key, recounted."""
    from callvault import usage as rollup

    with connect(settings, autocommit=True) as conn:
        return rollup.set_dimension(conn, settings, metadata_key, store_url)


def search_index(settings: Settings, *, language: str = "simple", phrase: bool = True, words: bool = True) -> Any:
    """``callvault search index``: the transcript search indexes on every partition, built without
    blocking writes (:func:`callvault.search_index.build_indexes`); ``to_dict()`` says what exists."""
    from callvault import search_index as search

    with connect(settings, autocommit=True) as conn:
        return search.build_indexes(conn, settings, language=language, phrase=phrase, words=words)


def search_status(settings: Settings) -> Any:
    """``callvault search status``: the search indexes, valid or not, their size and language."""
    from callvault import search_index as search

    with connect(settings, autocommit=True) as conn:
        return search.index_status(conn, settings)


# re-exported so ``commands`` is the one place to look
_ = (archive, list_archived, maintain, migrate_names, prune, restore, schedule)


# -- privacy: the subject, legal holds, erasure (callvault.privacy) ---------------------------------------
def privacy_subject(settings: Settings, metadata_key: str | None = None) -> dict[str, object]:
    """Show the table's subject, or set it (``metadata_key``: ``caller`` or ``caller.number``) and build
    its index; ``{"table", "subject", "index"}``."""
    from callvault.privacy import subject as subjects

    with connect(settings, autocommit=True) as conn:
        if metadata_key is not None:
            chosen = subjects.Subject.parse(metadata_key)
            index = subjects.set_subject(conn, settings, chosen)
            return {"table": settings.qualified, "subject": chosen.name, "index": index}
        found = subjects.load(conn, settings)
    return {"table": settings.qualified, "subject": found.name if found else None,
            "index": found.index_name(settings) if found else None}  # fmt: skip


def hold_place(settings: Settings, tenant_id: str, reason: str, subject: str | None = None) -> Any:
    """Place a legal hold (:func:`callvault.privacy.holds.place`)."""
    from callvault.privacy import holds

    with connect(settings, autocommit=True) as conn:
        return holds.place(conn, settings, parse_uuid(tenant_id, "--tenant-id"), reason, subject)


def hold_release(settings: Settings, hold_id: int) -> Any:
    from callvault.privacy import holds

    with connect(settings, autocommit=True) as conn:
        return holds.release(conn, settings, hold_id)


def hold_list(settings: Settings, *, released: bool = False) -> list[Any]:
    from callvault.privacy import holds

    with connect(settings, autocommit=True) as conn:
        return holds.holds(conn, settings, active_only=not released)


def erase(settings: Settings, tenant_id: str, *, subject: str | None = None, call_ids: tuple[str, ...] = (),
          all_calls: bool = False, yes: bool = False, store_url: str | None = None) -> Any:  # fmt: skip
    """``callvault erase``: :func:`callvault.privacy.erase.erase`; a whole tenant needs ``yes``."""
    from callvault.privacy import erase as eraser

    if all_calls and not yes:
        raise InvalidSetting(
            f"--all-calls erases every call of tenant {tenant_id} from every tier and cannot be undone: add --yes"
        )
    tenant = parse_uuid(tenant_id, "--tenant-id")
    return eraser.erase(settings, tenant, subject=subject, call_ids=list(call_ids) or None, all_calls=all_calls,
                        store_url=store_url)  # fmt: skip


def erase_status(settings: Settings, request: str) -> Any:
    from callvault.privacy import erase as eraser

    return eraser.status(settings, request)


def erase_resume(settings: Settings, request: str | None = None, store_url: str | None = None) -> list[Any]:
    from callvault.privacy import erase as eraser

    return eraser.resume(settings, request, store_url=store_url)


def erase_list(settings: Settings) -> list[Any]:
    from callvault.privacy import erase as eraser

    return eraser.requests(settings)


def transcript_policy(settings: Settings, *, keep: str | None = None, clear: bool = False,
                      tenant_id: str | None = None) -> dict[str, object]:  # fmt: skip
    """Show, set or clear how long transcripts are kept (a table default and per tenant);
    ``{"table", "default", "tenants"}``."""
    from callvault.privacy import transcripts

    if keep is not None and clear:
        raise InvalidSetting("--keep and --clear cannot be used together")
    tenant = parse_uuid(tenant_id, "--tenant-id") if tenant_id else None
    with connect(settings, autocommit=True) as conn:
        if keep is not None:
            transcripts.set_policy(conn, settings, keep, tenant)
        elif clear:
            transcripts.clear_policy(conn, settings, tenant)
        default, per = transcripts.policies(conn, settings)
    return {"table": settings.qualified, "default": default.to_pg() if default else None,
            "tenants": {t: r.to_pg() for t, r in sorted(per.items())}}  # fmt: skip


def expire_transcripts(settings: Settings, *, at: datetime | None = None, batch_rows: int = 5_000,
                       max_rows: int | None = None, store_url: str | None = None) -> Any:  # fmt: skip
    """``callvault privacy expire``: :func:`callvault.privacy.transcripts.expire`."""
    from callvault.privacy import transcripts

    return transcripts.expire(settings, at=at, batch_rows=batch_rows, max_rows=max_rows, store_url=store_url)


def columns_list(settings: Settings) -> list[Any]:
    """``callvault columns list``: the table's own columns (name, type, not null, indexed)."""
    from callvault import extra_columns

    with connect(settings) as conn:
        return extra_columns.list_extras(conn, settings)


def columns_add(settings: Settings, name: str, type_text: str, *, index: bool = False) -> Any:
    """``callvault columns add NAME TYPE [--index]``: add a column of the platform's own under the lock
    budget (and its index, built without blocking writes)."""
    from callvault import extra_columns

    with connect(settings, autocommit=True) as conn:
        return extra_columns.add_column(conn, settings, name, type_text, index=index)


def adopt(settings: Settings, source: str, *, time_column: str | None, tenant_column: str | None,
          id_column: str = "id", renames: dict[str, str] | None = None, time_zone: str = "UTC",
          default_tenant: str | None = None, keep_old: bool = False, roles: bool = True, batch_rows: int = 5_000,
          dry_run: bool = False, store_url: str | None = None, new_store: bool = False,
          progress: Any = None) -> Any:  # fmt: skip
    """``callvault adopt SOURCE``: take over an existing table online (see :mod:`callvault.adopt`)."""
    from callvault import adopt as adoption

    def check_store() -> None:
        from callvault.archive.location import default_store_url, require_write_store
        from callvault.archive.store import open_store

        store = open_store(store_url or default_store_url(settings))
        require_write_store(settings, store, explicit=store_url is not None, new_store=new_store)

    def archive_old() -> int:
        report = archive(settings, store_url=store_url, new_store=new_store)
        if report.failed:
            raise report_error(report)
        return len(report.partitions)

    with connect(settings) as conn:
        return adoption.adopt(
            conn, settings, adoption.parse_source(source, settings.schema), time_column=time_column,
            tenant_column=tenant_column, id_column=id_column, renames=renames, time_zone=time_zone,
            default_tenant=default_tenant, keep_old=keep_old, roles=roles, batch_rows=batch_rows, dry_run=dry_run,
            progress=progress, archive=(check_store, archive_old),
        )  # fmt: skip


def report_error(report: ArchiveReport) -> Exception:
    from callvault.errors import CallvaultError

    first = report.failed[0]
    return CallvaultError(
        f"adopted, but archiving the rows past retention stopped at {first.partition}: {first.error}; "
        "run `callvault archive` to finish (nothing was dropped unarchived)"
    )
