"""Human output (rich) for status, plan and maintenance reports. JSON output lives in ``to_dict``."""

from __future__ import annotations

from datetime import datetime

from rich.console import Console
from rich.markup import escape
from rich.table import Table
from rich.text import Text

from callvault.archive.pipeline import ArchiveReport
from callvault.history import JobRun
from callvault.maintain import MaintenanceReport
from callvault.monitor import Status
from callvault.plan import Plan
from callvault.query import Page
from callvault.tenancy.audit import AuditReport


def _d(ts: datetime | None) -> str:
    if ts is None:
        return "-"
    return ts.strftime("%Y-%m-%d" if (ts.hour, ts.minute, ts.second) == (0, 0, 0) else "%Y-%m-%d %H:%M")


def size(n: float) -> str:
    for unit in ("B", "kB", "MB", "GB", "TB"):
        if abs(n) < 1024 or unit == "TB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} TB"


def status(console: Console, st: Status) -> None:
    table = Table(title=f"{st.table} — partitions", title_justify="left")
    for col, just in (("partition", "left"), ("from", "left"), ("to", "left"), ("rows (est.)", "right"),
                      ("size", "right"), ("state", "left")):  # fmt: skip
        table.add_column(col, justify=just, no_wrap=True)  # type: ignore[arg-type]
    styles = {"past": "dim", "current": "bold green", "future": "cyan", "default": "red"}
    for p in st.partitions:
        rows = "-" if p.rows_estimate is None else f"{p.rows_estimate:,}"
        table.add_row(p.name, _d(p.start), _d(p.end), rows, size(p.bytes), p.state, style=styles[p.state])
    table.add_section()
    table.add_row("total", "", "", f"{st.total_rows_estimate:,}", size(st.total_bytes), f"{len(st.partitions)} parts")
    console.print(table)
    lc = st.config
    lines = [
        f"pg_partman {st.partman_version}; interval {lc.interval}, premake {lc.premake}, "
        f"retention {lc.retention or 'none (keep forever)'}",
        f"premake horizon: {_d(st.premake_horizon)} (partitions exist up to here)",
        f"oldest partition: {_d(st.oldest)}; retention cutoff: {_d(st.retention_cutoff)}",
        f"rows in default partition: {st.default_rows}",
        f"detached, awaiting archive: {len(st.detached)}"
        + (
            f" ({', '.join(n for n, _ in st.detached[:4])}{'...' if len(st.detached) > 4 else ''})"
            if st.detached
            else ""
        ),
        f"last maintenance: {_d(st.last_maintenance)}",
    ]
    for line in lines:
        console.print(line)
    for note in st.notes:
        console.print(f"[yellow]note:[/yellow] {note}")
    if st.problems:
        for problem in st.problems:
            console.print(f"[red]unhealthy:[/red] {problem}")
    else:
        console.print("[green]healthy[/green]")


def plan(console: Console, p: Plan) -> None:
    console.print(f"plan for {p.table} at {_d(p.at)} UTC ({p.interval}):")
    lines = p.describe()
    for line in lines or ["nothing to do"]:
        console.print(f"  {line}")


def bench_ingest(console: Console, r: dict[str, object]) -> None:
    table = Table(title=f"ingest: {r['rows']:,} rows of ~{r['row_bytes']} bytes", title_justify="left")
    table.add_column("method")
    table.add_column("rows/s", justify="right")
    table.add_column("vs raw COPY", justify="right")
    raw = float(str(r["raw_copy_rows_per_s"]))
    for label, key in (
        ("callvault Writer (sync)", "writer"), ("callvault AsyncWriter", "async_writer"),
        ("raw server-side COPY (ceiling)", "raw_copy"), ("Writer, idempotent re-send", "writer_idempotent"),
        ("per-row INSERT, 1 connection", "per_row_insert"), ("per-row INSERT, 16 connections", "per_row_insert_16conn"),
    ):  # fmt: skip
        rate = float(str(r[f"{key}_rows_per_s"]))
        table.add_row(label, f"{rate:,.0f}", f"{rate / raw:.2f}")
    console.print(table)
    console.print(
        f"writer/raw COPY {r['writer_vs_raw_copy']}, writer/per-row {r['writer_vs_per_row']}x, "
        f"writer peak RSS {r['writer_peak_rss_mb']} MB; PostgreSQL {r['postgres_version']}, psycopg "
        f"{r['psycopg_version']}, {r['settings']}"
    )


def maintenance(console: Console, r: MaintenanceReport) -> None:
    when = f" as of {_d(r.at)}" if r.at else ""
    console.print(f"maintenance of {r.table}{when}: {r.seconds:.2f}s, {r.attempts} attempt(s)")
    for label, names in (("created", r.created), ("detached", r.detached), ("dropped", r.dropped)):
        console.print(f"  {label}: {len(names)}" + (f"  {', '.join(names)}" if names else ""))
    if r.secured:
        console.print(f"  secured: {secured_summary(r.secured)}", soft_wrap=True)
    for failed in r.unsecured:
        console.print(f"  [red]not secured[/red]: {escape(failed)}", soft_wrap=True)


def secured_summary(repairs: list[str]) -> str:
    """'<relation>: <what>' repairs as one line: how many relations, and which."""
    names = sorted({r.split(":", 1)[0] for r in repairs})
    return f"{len(names)} relation(s) given the tenant policy / RLS / owner / no grants: {', '.join(names)}"


def audit(console: Console, r: AuditReport) -> None:
    for what in r.repaired:
        console.print(f"  repaired: {what}", soft_wrap=True)
    colour = {"leak": "red", "error": "red", "warning": "yellow"}
    for f in r.findings:
        console.print(f"[{colour[f.severity]}]{f.severity.upper()}[/] {escape(f.problem)}. Fix: {escape(f.fix)}",
                      soft_wrap=True, highlight=False)  # fmt: skip
    verdict = "FAILED" if r.failed else "ok"
    console.print(f"tenant isolation of {r.table}: {verdict} ({r.partitions} partitions checked, "
                  f"{len(r.failed)} problems, {len(r.findings) - len(r.failed)} warnings)")  # fmt: skip


def archive(console: Console, r: ArchiveReport) -> None:
    verb = "would archive" if r.dry_run else "archived"
    if not r.partitions:
        console.print(f"nothing past retention to archive for {r.table}")
        return
    for p in r.partitions:
        if p.error:
            console.print(f"[red]{p.partition}[/red] stopped at step {p.step_after}: {p.error}", soft_wrap=True)
        elif r.dry_run:
            console.print(f"{verb} {p.partition} [{p.start:%Y-%m-%d} .. {p.end:%Y-%m-%d}) from step {p.step_before}")
        else:
            rows = f"{p.rows:,} rows, " if p.rows is not None else ""
            console.print(f"{verb} {p.partition} ({rows}{size(p.bytes)}) {p.step_before} -> {p.step_after} "
                          f"in {p.seconds:.2f}s")  # fmt: skip
    console.print(f"store: {r.store} ({r.fmt})")


def calls(console: Console, page: Page) -> None:
    """One page of ``callvault calls``: a row per call (with its tier), then the cursor and pruned weeks."""
    if not page.calls:
        console.print("no calls in the window")
    else:
        table = Table()
        for col, just in (("started_at", "left"), ("call_id", "left"), ("duration", "right"), ("tier", "left"),
                          ("id", "right")):  # fmt: skip
            table.add_column(col, justify=just, no_wrap=True)  # type: ignore[arg-type]
        snippets = any(c.snippet is not None for c in page.calls)
        if snippets:  # a search: the match in its context
            table.add_column("snippet", justify="left", overflow="fold")
        for c in page.calls:
            duration = "-" if c.duration_sec is None else f"{c.duration_sec} s"
            cells = [f"{c.started_at:%Y-%m-%d %H:%M:%S}", str(c.call_id), duration, c.tier, str(c.id)]
            table.add_row(*cells, *([Text(c.snippet or "")] if snippets else []),  # Text: no markup from transcripts
                          style="cyan" if c.tier == "archive" else None)  # fmt: skip
        console.print(table)
    if page.pruned:
        console.print("pruned by archive retention (those calls are gone): "
                      + ", ".join(d.isoformat() for d in page.pruned), markup=False)  # fmt: skip
    if page.next_cursor:
        console.print(f"more: --cursor {page.next_cursor}", markup=False, soft_wrap=True)


def history(console: Console, table_name: str, runs: list[JobRun]) -> None:
    """``callvault history``: one line per run, newest first."""
    if not runs:
        console.print(f"no runs recorded for {table_name} yet (maintain, archive and prune record each run)")
        return
    table = Table(title=f"{table_name} — job history", title_justify="left")
    for col, just in (("finished (UTC)", "left"), ("job", "left"), ("outcome", "left"), ("took", "right"),
                      ("what", "left")):  # fmt: skip
        table.add_column(col, justify=just, no_wrap=col != "what")  # type: ignore[arg-type]
    styles = {"ok": "green", "failed": "bold red", "blocked": "yellow"}
    for r in runs:
        counts = ", ".join(f"{k} {v}" for k, v in r.counts.items() if v not in (0, False, None))
        what = counts + (f" — {r.error}" if r.error else "")
        outcome = f"[{styles.get(r.outcome, '')}]{r.outcome}[/]"
        table.add_row(r.finished_at.strftime("%Y-%m-%d %H:%M:%S"), r.job, outcome, f"{r.seconds:.1f} s",
                      escape(what or "-"))  # fmt: skip
    console.print(table)
