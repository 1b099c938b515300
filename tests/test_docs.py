"""Docs a user can run: every command has help, and docs/cli.md matches the CLI."""

from __future__ import annotations

from pathlib import Path

import pytest

from callvault import clidoc

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.parametrize(("path", "cmd"), clidoc.commands(), ids=lambda v: " ".join(v) if isinstance(v, list) else "")
def test_every_command_has_help(path: list[str], cmd: object) -> None:
    assert getattr(cmd, "help", None), f"{' '.join(path)} has no help text"


def test_cli_reference_is_current() -> None:
    assert (ROOT / "docs" / "cli.md").read_text() == clidoc.render(), "run `make docs`"


def test_readme_starts_with_the_two_commands() -> None:
    head = (ROOT / "README.md").read_text()[:1500]
    assert "make demo" in head and "make test" in head
