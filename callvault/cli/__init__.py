"""The ``callvault`` command: a thin shell over the library, one module per command group. Each command
parses its options, calls the library (``callvault.commands`` or the call it maps to one to one) and
renders the result; the shared options, error handling and ``main`` live in :mod:`callvault.cli.base`."""

from callvault.cli import archive, bench, dev, lifecycle, privacy, replication, table  # noqa: F401 - each registers its commands
from callvault.cli.base import main

__all__ = ["main"]
