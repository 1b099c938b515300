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
