"""Docs a user can run: every command has help, and docs/cli.md matches the CLI."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import psycopg
import pytest

from callvault import clidoc
from tests.helpers import run

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.parametrize(("path", "cmd"), clidoc.commands(), ids=lambda v: " ".join(v) if isinstance(v, list) else "")
def test_every_command_has_help(path: list[str], cmd: object) -> None:
    assert getattr(cmd, "help", None), f"{' '.join(path)} has no help text"


def test_cli_reference_is_current() -> None:
    assert (ROOT / "docs" / "cli.md").read_text() == clidoc.render(), "run `make docs`"


def test_readme_starts_with_the_two_commands() -> None:
    head = (ROOT / "README.md").read_text()[:1500]
    assert "make demo" in head and "make test" in head


def snippet(name: str) -> str:
    """The README's Python block marked ``<!-- snippet: name -->``."""
    text = (ROOT / "README.md").read_text()
    marker = f"<!-- snippet: {name} -->\n```python\n"
    assert marker in text, f"README.md has no snippet {name!r}"
    return text.split(marker, 1)[1].split("\n```", 1)[0]


def test_readme_snippets_run(clocked: Any, clocked_dsn: str, tmp_path: Path) -> None:
    """The README's "Managing the table" and archive snippets, as written, against a real cluster whose
    clock has moved past retention: only the server address and the store URL are swapped in."""
    from psycopg import sql

    from tests.clock import real_now
    from tests.test_archive import TENANTS, fill
    from tests.test_tenancy import PASSWORD, role_dsn

    _, clock = clocked
    t0 = datetime(2026, 3, 4, 12, 0, tzinfo=UTC)
    clock.set(t0)
    try:
        run("init", "--roles", "--dsn", clocked_dsn)
        with psycopg.connect(clocked_dsn, autocommit=True) as conn:
            conn.execute(sql.SQL("ALTER ROLE callvault_owner PASSWORD {}").format(sql.Literal(PASSWORD)))
            fill(conn)
        clock.set(t0 + timedelta(days=120))
        owner = role_dsn(clocked_dsn, "callvault_owner")
        store = tmp_path / "archive"
        manage = snippet("manage").replace('"postgresql://callvault_owner@db/calls"', repr(owner))
        archive = snippet("archive").replace('"s3://calls-archive/prod"', repr(store.as_uri()))
        archive = archive.replace('"6f1c2a4e-0b7d-4c3e-9a51-2d8e4f6a7b90"', repr(TENANTS[1]))
        scope: dict[str, Any] = {}
        exec(compile(manage, "README.md#manage", "exec"), scope)
        exec(compile(archive, "README.md#archive", "exec"), scope)
        assert scope["report"].partitions and not [p for p in scope["report"].partitions if p.error]
        assert scope["calls"].num_rows > 0 and scope["page"].calls
    finally:
        clock.set(real_now())
