"""Small helpers shared by the database tests."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from click.testing import CliRunner, Result

from callvault.cli import main


def run(*args: str, ok: bool = True) -> Result:
    result = CliRunner().invoke(main, list(args), catch_exceptions=False)
    if ok:
        assert result.exit_code == 0, f"exit {result.exit_code}: {result.output}{result.stderr}"
    return result


def run_json(*args: str) -> Any:
    return json.loads(run(*args, "--json").stdout)


def ts(text: str) -> datetime:
    return datetime.fromisoformat(text).astimezone(UTC)


def make_calls(n: int, *, tenants: int = 5, start: datetime | None = None, spacing_s: float = 1.0, seed: int = 7):
    """n valid calls, time-ordered from ``start`` (default: two days ago), as dicts."""
    import random
    import uuid
    from datetime import timedelta

    rng = random.Random(seed)
    tenant_ids = [uuid.UUID(int=rng.getrandbits(128), version=4) for _ in range(tenants)]
    t0 = start or datetime.now(UTC) - timedelta(days=2)
    out = []
    for i in range(n):
        started = t0 + timedelta(seconds=i * spacing_s)
        out.append(
            {
                "tenant_id": tenant_ids[i % tenants],
                "call_id": uuid.UUID(int=rng.getrandbits(128), version=4),
                "started_at": started,
                "ended_at": started + timedelta(seconds=30),
                "transcript": f"call {i}: hello, how can I help?",
                "metadata": {"n": i},
            }
        )
    return out


def pg_fingerprints(conn: Any, name: str, schema: str = "public") -> dict[str, dict[str, tuple[object, ...]]]:
    """Per tenant of table ``name``: what Postgres computes of each fingerprint version (md5, and the
    sums+hash check sums), to compare with any manifest entry via :func:`fingerprints_match`."""
    from psycopg import sql

    from callvault.archive import layout

    ident = sql.Identifier(schema, name)
    md5 = layout.pg_fingerprints(conn, ident, None, layout.MD5)
    sums = layout.pg_fingerprints(conn, ident, None, layout.SUMS_HASH)
    return {t: {layout.MD5: md5[t].postgres_part(), layout.SUMS_HASH: sums[t].postgres_part()} for t in md5}


def manifest_view(tenants: dict[str, Any]) -> dict[str, tuple[str, tuple[object, ...]]]:
    """A manifest's ``tenants`` as {tenant: (algo, the part Postgres can recompute)}."""
    from callvault.archive.layout import Fingerprint

    out = {}
    for t, e in tenants.items():
        fp = Fingerprint.from_dict(e)
        out[t] = (fp.algo, fp.postgres_part())
    return out


def fingerprints_match(tenants: dict[str, Any], expected: dict[str, dict[str, tuple[object, ...]]]) -> bool:
    """Whether a manifest's ``tenants`` hold exactly ``expected``'s tenants with the same rows."""
    view = manifest_view(tenants)
    return set(view) == set(expected) and all(expected[t][algo] == part for t, (algo, part) in view.items())


def new_dir(path: Path) -> Path:
    """``path``, created (with its parents): a store directory that exists, as a user makes one before
    archiving there (callvault refuses to start a store in a directory that does not exist)."""
    path.mkdir(mode=0o700, parents=True, exist_ok=True)
    path.chmod(0o700)  # private, as callvault makes the directories it creates
    return path
