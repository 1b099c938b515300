"""Small helpers shared by the database tests."""

from __future__ import annotations

import json
from datetime import UTC, datetime
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
