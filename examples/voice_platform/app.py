"""A FastAPI service for a voice platform's call logs, on callvault.

Run it (see README.md beside this file for the database side)::

    uvicorn examples.voice_platform.app:app --port 8000

* ``POST /calls``: one finished call, for the caller's tenant. Validated here (pydantic for the shape,
  then callvault's own rules), handed to a lifespan-managed :class:`callvault.AsyncWriter` connected as
  the trusted ingest role, which batches rows into binary ``COPY``. Answers ``202 Accepted`` once the row
  is buffered (committed within ``flush_interval``, 200 ms); ``?wait=true`` answers ``201`` once it is
  committed. The tenant is the one the bearer token maps to: a body naming another tenant is refused.
* ``GET /tenants/{tenant}/calls?since=&until=&cursor=&limit=``: the tenant's calls in ``[since, until)``,
  newest first, one page at a time (``next_cursor``); ``GET /tenants/{tenant}/calls/{call_id}``: one
  call with its transcript. Both read through an :class:`callvault.query.AsyncReader` on a pool connected
  as the row-level-security-bound app role, and ``{tenant}`` must be the caller's own (403 otherwise).
* ``GET /healthz``: the database answers through the read pool; with ``VOICE_OWNER_DSN`` also
  ``callvault health`` (partitions ahead, retention, archive worker).

Errors are JSON ``{"detail": "..."}``: 400 with callvault's own message for a bad id, window, cursor
or limit; 401 without a known token; 403 for another tenant; 404 for an unknown call; 422 for a body
that does not validate; 503 when the database is unreachable.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Annotated, Any
from uuid import UUID

import psycopg
from fastapi import Depends, FastAPI, HTTPException, Query, Request, Response, status
from fastapi.responses import JSONResponse
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from psycopg_pool import AsyncConnectionPool, PoolTimeout
from pydantic import AwareDatetime, BaseModel, ConfigDict, Field

from callvault import commands
from callvault.db import probe
from callvault.errors import CallvaultError, InvalidSetting, WriterError
from callvault.ingest import AsyncWriter, Rejected, Rules
from callvault.ingest.validate import validate
from callvault.query import DEFAULT_LIMIT, MAX_LIMIT, AsyncReader, CallRecord, CallSummary
from callvault.tenancy import tenant_value

from .config import Config

log = logging.getLogger("voice_platform")

# pydantic checks the shape; these are callvault's own rules (NUL bytes, sizes, ended before started,
# NaN in metadata...), so a bad call is a 422 now instead of a row in callvault.quarantine later. The
# partition range is the one rule left to the writer: a call outside every partition is quarantined
# with its reason (`callvault quarantine list`) and lands on `callvault quarantine replay`.
RULES = Rules()


# -- the service's state, made and closed by the lifespan --------------------------------------------
@dataclass
class Service:
    config: Config
    writer: AsyncWriter  # as the ingest role
    pool: AsyncConnectionPool[Any]  # as the app role
    reader: AsyncReader  # on that pool
    quarantined: Quarantined  # the writer's on_quarantine: which calls it set aside, and why


QUARANTINE_MEMORY = 10_000  # quarantined calls remembered for ?wait=true answers (oldest forgotten first)


class Quarantined:
    """The writer's ``on_quarantine`` callback: (tenant, call id) -> reason of the calls it set aside,
    so a ``?wait=true`` request can say its call was quarantined instead of stored. Bounded."""

    def __init__(self, limit: int = QUARANTINE_MEMORY) -> None:
        self.limit = limit
        self.reasons: dict[tuple[str | None, str | None], str] = {}

    def __call__(self, events: list[Any]) -> None:
        for e in events:
            self.reasons[(e.tenant_id, e.call_id)] = e.reason
        while len(self.reasons) > self.limit:
            del self.reasons[next(iter(self.reasons))]

    def pop(self, tenant_id: str, call_id: str) -> str | None:
        return self.reasons.pop((tenant_id, call_id), None)


BYPASS_SQL = "SELECT current_user, rolsuper OR rolbypassrls FROM pg_roles WHERE rolname = current_user"


async def _check_read_role(pool: AsyncConnectionPool[Any]) -> None:
    """Reads must go through a role row-level security binds: refuse to serve tenants otherwise."""
    async with pool.connection() as conn:
        row = await (await conn.execute(BYPASS_SQL)).fetchone()
    if row is None or row[1]:
        raise RuntimeError(
            f"VOICE_APP_DSN connects as {row[0] if row else '?'}, which bypasses row-level security: every tenant's "
            "rows would be one bad query away. Connect it as the app role (callvault_app) made by "
            "`callvault init --roles`"
        )


@asynccontextmanager
async def lifespan(app: FastAPI) -> AsyncIterator[None]:
    config: Config = app.state.config or Config.from_env()
    async with AsyncExitStack() as stack:
        # a wrong password or a closed port is said now, with the server's message, instead of a pool
        # timing out 30 s later
        await asyncio.to_thread(probe, config.app_dsn)
        pool = AsyncConnectionPool(
            config.app_dsn,
            min_size=1,
            max_size=config.pool_size,
            open=False,
            name="voice-reads",
            # psycopg prepares a statement on its 6th use; behind PgBouncer (transaction mode) that breaks.
            # callvault's readers never prepare; this keeps any query of your own safe too.
            kwargs={"prepare_threshold": None},
            check=AsyncConnectionPool.check_connection,  # a connection that died while idle is replaced
        )
        await pool.open(wait=True, timeout=10)
        stack.push_async_callback(pool.close)
        await _check_read_role(pool)
        # The writer refuses to start as a role row-level security binds (COPY would fail), and says so.
        quarantined = Quarantined()
        writer = AsyncWriter(config.as_role(config.ingest_dsn), on_quarantine=quarantined)
        await writer.open()
        stack.push_async_callback(writer.close)  # closed first: flushes what is buffered, then the pool closes
        app.state.service = Service(config, writer, pool, AsyncReader(pool, config.settings), quarantined)
        log.info("voice platform service started on %s", config.settings.qualified)
        yield
        app.state.service = None


def service(request: Request) -> Service:
    svc: Service | None = request.app.state.service
    if svc is None:  # a request outside the lifespan
        raise HTTPException(status.HTTP_503_SERVICE_UNAVAILABLE, "the service is starting or stopping")
    return svc


Svc = Annotated[Service, Depends(service)]


# -- authentication: REPLACE with your platform's ---------------------------------------------------------
# The example maps a bearer token to a tenant through a static table (VOICE_TOKENS / VOICE_TOKENS_FILE).
# Keep the shape: a dependency that authenticates the request and returns its tenant, which the rest of
# the service takes as the only truth about "whose data". Never take the tenant from the body or path.
bearer = HTTPBearer(auto_error=False, description="a token from VOICE_TOKENS: it decides the tenant")


async def caller_tenant(svc: Svc, creds: Annotated[HTTPAuthorizationCredentials | None, Depends(bearer)]) -> str:
    tenant = svc.config.tokens.tenant_for(creds.credentials) if creds else None
    if tenant is None:
        raise HTTPException(
            status.HTTP_401_UNAUTHORIZED,
            "missing or unknown bearer token: send 'Authorization: Bearer <token>'",
            headers={"WWW-Authenticate": "Bearer"},
        )
    return tenant


Caller = Annotated[str, Depends(caller_tenant)]


def own_tenant(path_tenant: str, caller: str) -> str:
    """The path's tenant, if it is the caller's (400 with callvault's message when it is not a UUID)."""
    wanted = tenant_value(path_tenant)
    if wanted != caller:
        raise HTTPException(status.HTTP_403_FORBIDDEN, f"tenant {wanted} is not yours: your token is for {caller}")
    return wanted


# -- the API's shapes ------------------------------------------------------------------------------------
class CallIn(BaseModel):
    """One finished call. The tenant is the caller's: ``tenant_id`` may be left out, and when given it
    must be the caller's own tenant. Unknown fields are refused (a typo would lose data)."""

    model_config = ConfigDict(extra="forbid")

    call_id: UUID
    started_at: AwareDatetime = Field(description="with a time zone; also the key a retry deduplicates on")
    ended_at: AwareDatetime | None = None
    duration_sec: int | None = Field(default=None, ge=0, description="derived from ended_at when left out")
    transcript: str | None = None
    metadata: dict[str, Any] | None = None
    tenant_id: UUID | None = Field(default=None, description="optional; must be the caller's tenant")


class Accepted(BaseModel):
    tenant_id: str
    call_id: UUID
    started_at: datetime
    status: str = Field(
        description="'accepted': buffered, committed within 200 ms; 'stored': committed; 'quarantined' "
        "(with ?wait=true): set aside with its reason, see `callvault quarantine list`"
    )
    reason: str | None = Field(default=None, description="why the call was quarantined (never its content)")


class CallSummaryOut(BaseModel):
    id: int
    call_id: UUID
    started_at: datetime
    ended_at: datetime | None
    duration_sec: int | None

    @classmethod
    def of(cls, c: CallSummary) -> CallSummaryOut:
        return cls(
            id=c.id, call_id=c.call_id, started_at=c.started_at, ended_at=c.ended_at, duration_sec=c.duration_sec
        )


class PageOut(BaseModel):
    tenant_id: str
    since: datetime
    until: datetime = Field(description="pass the same since and until with cursor for the next page")
    calls: list[CallSummaryOut]
    next_cursor: str | None = Field(description="null on the last page")


class CallOut(BaseModel):
    id: int
    tenant_id: UUID
    call_id: UUID
    started_at: datetime
    ended_at: datetime | None
    duration_sec: int | None
    transcript: str | None
    metadata: dict[str, Any] | None

    @classmethod
    def of(cls, c: CallRecord) -> CallOut:
        return cls(**dataclasses.asdict(c))


# -- the app -----------------------------------------------------------------------------------------------
def create_app(config: Config | None = None) -> FastAPI:
    """The service; ``config`` default: :meth:`Config.from_env`, read when the app starts (not on import)."""
    app = FastAPI(title="voice platform call logs (callvault example)", lifespan=lifespan)
    app.state.config = config
    app.state.service = None

    @app.exception_handler(InvalidSetting)
    async def bad_input(request: Request, exc: InvalidSetting) -> JSONResponse:
        # callvault refuses bad ids, windows, cursors and limits before any SQL, with a message naming
        # the value and the fix: pass it on as it is.
        return JSONResponse({"detail": str(exc)}, status_code=status.HTTP_400_BAD_REQUEST)

    @app.exception_handler(WriterError)
    async def writer_down(request: Request, exc: WriterError) -> JSONResponse:
        # the writer retried for retry_for (60 s) and gave up: the database is away. Restart the service
        # once it is back (the rows it held are in exc.unwritten and in the log).
        log.error("ingest writer stopped: %s", exc)
        return JSONResponse({"detail": f"ingest unavailable: {exc}"}, status_code=status.HTTP_503_SERVICE_UNAVAILABLE)

    @app.exception_handler(psycopg.OperationalError)
    @app.exception_handler(PoolTimeout)
    async def db_down(request: Request, exc: Exception) -> JSONResponse:
        log.warning("database unavailable: %s", exc)
        return JSONResponse(
            {"detail": "database unavailable, try again"}, status_code=status.HTTP_503_SERVICE_UNAVAILABLE
        )

    @app.post(
        "/calls",
        status_code=status.HTTP_202_ACCEPTED,
        response_model=Accepted,
        responses={201: {"model": Accepted, "description": "committed (with ?wait=true)"}},
    )
    async def post_call(
        body: CallIn,
        svc: Svc,
        caller: Caller,
        response: Response,
        wait: Annotated[bool, Query(description="answer once the call is committed (201)")] = False,
    ) -> Accepted:
        if body.tenant_id is not None and str(body.tenant_id) != caller:
            raise HTTPException(
                status.HTTP_403_FORBIDDEN,
                f"tenant_id {body.tenant_id} in the body is not your tenant ({caller}): leave it out, your token "
                "decides the tenant",
            )
        row = body.model_dump(exclude={"tenant_id"}) | {"tenant_id": caller}
        checked = validate(row, RULES)
        if isinstance(checked, Rejected):
            raise HTTPException(status.HTTP_422_UNPROCESSABLE_CONTENT, checked.reason)
        await svc.writer.write(row)
        if wait:  # everything written before this flush is committed (or quarantined) when it returns
            await svc.writer.flush()
            why = svc.quarantined.pop(caller, str(body.call_id))
            if why is not None:  # not stored: 202, as for any call the writer sets aside
                return Accepted(tenant_id=caller, call_id=body.call_id, started_at=body.started_at,
                                status="quarantined", reason=why)  # fmt: skip
            response.status_code = status.HTTP_201_CREATED
        return Accepted(
            tenant_id=caller, call_id=body.call_id, started_at=body.started_at, status="stored" if wait else "accepted"
        )

    @app.get("/tenants/{tenant}/calls", response_model=PageOut)
    async def list_calls(
        tenant: str,
        svc: Svc,
        caller: Caller,
        since: Annotated[
            datetime | None, Query(description="required; ISO 8601 with a zone, e.g. ...T00:00:00Z")
        ] = None,
        until: Annotated[datetime | None, Query(description="default: now")] = None,
        cursor: Annotated[str | None, Query(description="next_cursor of the previous page")] = None,
        limit: Annotated[int, Query(description=f"1..{MAX_LIMIT}")] = DEFAULT_LIMIT,
    ) -> PageOut:
        who = own_tenant(tenant, caller)
        until = until or datetime.now(UTC)
        page = await svc.reader.recent_calls(who, since=since, until=until, cursor=cursor, limit=limit)
        assert since is not None  # the reader refused a missing since (400)
        return PageOut(
            tenant_id=who,
            since=since,
            until=until,
            calls=[CallSummaryOut.of(c) for c in page],
            next_cursor=page.next_cursor,
        )

    @app.get("/tenants/{tenant}/calls/{call_id}", response_model=CallOut)
    async def get_call(
        tenant: str,
        call_id: str,
        svc: Svc,
        caller: Caller,
        started_at: Annotated[datetime | None, Query(description="if known: reads one partition")] = None,
    ) -> CallOut:
        who = own_tenant(tenant, caller)
        call = await svc.reader.get_call(who, call_id, started_at)
        if call is None:  # another tenant's call is "not found" too: row-level security never shows it
            raise HTTPException(status.HTTP_404_NOT_FOUND, f"no call {call_id} for tenant {who}")
        return CallOut.of(call)

    @app.get("/healthz")
    async def healthz(svc: Svc) -> JSONResponse:
        # Unauthenticated, like most probes: serve it on an internal port only if table names and
        # partition counts are more than your load balancer should see.
        try:
            async with svc.pool.connection(timeout=5) as conn:
                await conn.execute("SELECT 1")
        except (psycopg.Error, PoolTimeout) as exc:
            return JSONResponse(
                {"status": "unavailable", "database": str(exc).strip() or type(exc).__name__},
                status_code=status.HTTP_503_SERVICE_UNAVAILABLE,
            )
        body: dict[str, object] = {"status": "ok", "database": "ok"}
        if svc.config.owner_dsn:
            # The table's own health (partitions ahead, retention, archive worker) is for alerting, not for
            # taking this instance out of rotation: reads and writes work while it reports a problem. It opens
            # one owner connection per call: cache the result if your probes come every few seconds.
            try:
                health = await asyncio.to_thread(commands.health, svc.config.as_role(svc.config.owner_dsn))
                body["callvault"] = health.to_dict()
            except (CallvaultError, psycopg.Error) as exc:
                body["callvault"] = {"error": str(exc)}
        return JSONResponse(body)

    return app


app = create_app()
